//! Layering: defaults → TOML file → environment → `<NAME>_FILE`, into one raw value per setting.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::settings::{setting, SETTINGS};
use super::sources::Sources;
use super::values::parse_duration;

/// Raw values after layering, keyed by the setting's TOML key.
pub(super) struct Raw {
    values: BTreeMap<&'static str, String>,
    pub(super) errors: Vec<String>,
}

impl Raw {
    /// The value of the setting with TOML key `key`; blank counts as unset.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// The problem `what` with `key`'s value, naming its variable; the value is quoted unless it
    /// is a secret.
    pub(super) fn bad(&self, key: &str, what: &str) -> String {
        let s = setting(key);
        if s.secret {
            format!("{}: {what}", s.env_name())
        } else {
            format!("{}: {what} (got {:?})", s.env_name(), without_credentials(self.get(key).unwrap_or("")))
        }
    }

    /// A non-zero duration; when malformed, an error and the setting's default instead.
    pub(super) fn duration(&self, key: &str, errors: &mut Vec<String>) -> Duration {
        let d = self.get(key).and_then(parse_duration).filter(|d| !d.is_zero());
        if d.is_none() {
            errors.push(self.bad(key, "must be a duration such as 90s, 30m, 12h or 30d"));
        }
        d.unwrap_or_else(|| setting(key).default.and_then(parse_duration).unwrap_or(Duration::from_secs(60)))
    }

    /// A positive integer; when malformed, an error and the setting's default instead.
    pub(super) fn count(&self, key: &str, errors: &mut Vec<String>) -> u32 {
        let n = self.get(key).and_then(|v| v.trim().parse::<u32>().ok()).filter(|n| *n > 0);
        if n.is_none() {
            errors.push(self.bad(key, "must be a positive integer"));
        }
        n.unwrap_or_else(|| setting(key).default.and_then(|d| d.parse().ok()).unwrap_or(1))
    }
}

/// Defaults, then the file, then the environment (canonical names over aliases), then `<NAME>_FILE`.
pub(super) fn layer(sources: &Sources) -> Raw {
    let mut values = BTreeMap::new();
    let mut errors = sources.errors.clone();
    for s in SETTINGS {
        if let Some(d) = s.default {
            values.insert(s.key, d.to_owned());
        }
    }
    if let Some(path) = &sources.file {
        file_values(path, &mut values, &mut errors);
    }
    for s in SETTINGS {
        // The canonical name wins over its aliases; later entries are aliases.
        for name in s.env.iter().rev() {
            // An empty value counts as unset, as in most tools that read the environment.
            if let Some(v) = sources.env.get(*name).filter(|v| !v.trim().is_empty()) {
                values.insert(s.key, v.clone());
            }
        }
        if s.secret {
            let file_var = format!("{}_FILE", s.env_name());
            if let Some(path) = sources.env.get(&file_var).filter(|p| !p.is_empty()) {
                if sources.env.get(s.env_name()).is_some_and(|v| !v.trim().is_empty()) {
                    errors.push(format!("{} and {file_var} are both set; set only one", s.env_name()));
                }
                match std::fs::read_to_string(path) {
                    Ok(v) => {
                        values.insert(s.key, v.trim_end_matches(['\r', '\n']).to_owned());
                    }
                    Err(e) => errors.push(format!("{file_var}: file {path} cannot be read ({})", e.kind())),
                }
            }
        }
    }
    Raw { values, errors }
}

/// The TOML file's values, over the defaults in `values`.
fn file_values(path: &Path, values: &mut BTreeMap<&'static str, String>, errors: &mut Vec<String>) {
    match std::fs::read_to_string(path) {
        Err(e) => errors.push(format!("config file {}: cannot be read ({})", path.display(), e.kind())),
        Ok(text) => match text.parse::<toml::Table>() {
            // The TOML parser's message quotes the offending line, which may hold a secret.
            Err(e) => errors.push(format!(
                "config file {}: not valid TOML{}",
                path.display(),
                e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default()
            )),
            Ok(table) => {
                for (k, v) in table {
                    let Some(s) = SETTINGS.iter().find(|s| s.key == k) else {
                        errors.push(format!("config file {}: unknown key `{k}`", path.display()));
                        continue;
                    };
                    let text = match v {
                        toml::Value::Array(items) => {
                            items.iter().map(toml_scalar).collect::<Option<Vec<_>>>().map(|v| v.join(","))
                        }
                        scalar => toml_scalar(&scalar),
                    };
                    let Some(text) = text else {
                        errors.push(format!(
                            "config file {}: `{k}` must be a string, number, boolean or list of them",
                            path.display()
                        ));
                        continue;
                    };
                    values.insert(s.key, text);
                }
            }
        },
    }
}

fn toml_scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(x) => Some(x.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `value` with the user and password of a URL in it blanked (`https://…@host`): a malformed
/// value is quoted back in errors, and a URL's userinfo is a credential.
fn without_credentials(value: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = value.find("://").map(|i| i + 3) else { return value.into() };
    let rest = &value[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}…{}", &value[..scheme_end], &rest[at..]).into(),
        None => value.into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::sources::fixtures::*;
    use crate::config::types::{Config, CorsOrigins};
    use secrecy::ExposeSecret;

    #[test]
    fn a_malformed_url_is_quoted_without_its_credentials() {
        let text =
            Config::load(&sources(&[("TOLLGATE_PUBLIC_URL", "ftp://admin:hunter2@example.com/x")])).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_PUBLIC_URL") && !text.contains("hunter2") && !text.contains("admin"), "{text}");
        assert_eq!(super::without_credentials("https://u:p@h/p@q"), "https://…@h/p@q");
        assert_eq!(super::without_credentials("https://h/p@q"), "https://h/p@q");
        assert_eq!(super::without_credentials("30s"), "30s");
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whsec");
        std::fs::write(&path, format!("{STRONG_WHSEC}\n")).unwrap();
        let mut env = production_ok();
        env.retain(|(k, _)| *k != "STRIPE_WEBHOOK_SECRET");
        let p = path.to_string_lossy().to_string();
        env.push(("STRIPE_WEBHOOK_SECRET_FILE", &p));
        let c = Config::load(&sources(&env)).unwrap();
        assert_eq!(c.stripe.webhook_secrets[0].expose_secret(), STRONG_WHSEC);

        env.push(("STRIPE_WEBHOOK_SECRET", STRONG_WHSEC));
        let text = Config::load(&sources(&env)).unwrap_err().to_string();
        assert!(text.contains("both set"), "{text}");
    }

    #[test]
    fn file_then_environment_layering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:9999\"\nbody_limit = 2048\ncors_origins = [\"https://a.example\", \"https://b.example\"]\n",
        )
        .unwrap();
        let mut s = sources(&[("TOLLGATE_BODY_LIMIT", "4096")]);
        s.file = Some(path);
        let c = Config::load(&s).unwrap();
        assert_eq!(c.bind.port(), 9999);
        assert_eq!(c.http.body_limit, 4096, "environment overrides the file");
        assert_eq!(c.http.cors_origins, CorsOrigins::List(vec!["https://a.example".into(), "https://b.example".into()]));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.toml");
        std::fs::write(&path, "cors_origins = [\"https://a.example\"]\n").unwrap();
        let mut s = sources(&[("TOLLGATE_CORS_ORIGINS", ""), ("TOLLGATE_BODY_LIMIT", " ")]);
        s.file = Some(path);
        let c = Config::load(&s).unwrap();
        assert_eq!(c.http.cors_origins, CorsOrigins::List(vec!["https://a.example".into()]));
        assert_eq!(c.http.body_limit, 1024 * 1024);
    }
}
