//! Which kind of deployment this is; decided before anything else is read (it decides whether
//! `.env` is).

/// `development` (the default) or `production`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Production => "production",
        }
    }

    /// `development`/`dev` or `production`/`prod`, in any case and with spaces around.
    pub(super) fn from_name(text: &str) -> Option<Environment> {
        match text.trim().to_ascii_lowercase().as_str() {
            "production" | "prod" => Some(Environment::Production),
            "development" | "dev" => Some(Environment::Development),
            _ => None,
        }
    }
}
