//! Where configuration comes from: the environment, a TOML file and, in development only, `.env`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use super::environment::Environment;

/// Where configuration comes from: an environment (the process's, or a map in tests) and an
/// optional TOML file.
#[derive(Default, Clone)]
pub struct Sources {
    pub env: HashMap<String, String>,
    pub file: Option<PathBuf>,
    /// Problems found while gathering the sources (a `.env` that tries to choose the environment).
    pub errors: Vec<String>,
}

/// Names only: the environment holds secrets.
impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.env.keys().collect();
        keys.sort();
        f.debug_struct("Sources").field("env_keys", &keys).field("file", &self.file).field("errors", &self.errors).finish()
    }
}

impl Sources {
    /// The process environment, the TOML file named by `--config`/`TOLLGATE_CONFIG` (or
    /// `./tollgate.toml` when present) and, in development only, `./.env`.
    pub fn from_process(config_file: Option<PathBuf>) -> Sources {
        let env: HashMap<String, String> = std::env::vars().collect();
        let file = config_file.or_else(|| env.get("TOLLGATE_CONFIG").map(PathBuf::from)).or_else(|| {
            let default = PathBuf::from("tollgate.toml");
            default.exists().then_some(default)
        });
        let mut sources = Sources { env, file, errors: Vec::new() };
        if let Ok(iter) = dotenvy::from_path_iter(".env") {
            sources.add_dotenv(iter.flatten());
        }
        sources
    }

    /// Adds `.env` entries under the real environment, in development only. The environment is
    /// decided without `.env`, so a production host never reads one; a `.env` that asks for
    /// production (or names another config file) is refused rather than silently ignored.
    pub fn add_dotenv(&mut self, entries: impl IntoIterator<Item = (String, String)>) {
        if self.environment_hint() == Some(Environment::Production) {
            return;
        }
        for (k, v) in entries {
            let chooses_env =
                k == "TOLLGATE_ENV" && !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "development" | "dev");
            if chooses_env || k == "TOLLGATE_CONFIG" {
                self.errors
                    .push(format!("{k} is set in .env, which is read in development only; set it in the real environment"));
                continue;
            }
            // Choosing development is what allows serving beyond loopback; a copied `.env` must
            // not make that choice (and development is what `.env` already implies).
            if k == "TOLLGATE_ENV" {
                continue;
            }
            self.env.entry(k).or_insert(v);
        }
    }

    /// The environment as set by the process or the file, before anything is validated.
    fn environment_hint(&self) -> Option<Environment> {
        // A blank value is unset, as everywhere else: the file's `env` then decides.
        let raw = self.env.get("TOLLGATE_ENV").filter(|v| !v.trim().is_empty()).cloned().or_else(|| {
            let text = std::fs::read_to_string(self.file.as_ref()?).ok()?;
            let table: toml::Table = text.parse().ok()?;
            table.get("env")?.as_str().map(str::to_owned)
        })?;
        Environment::from_name(&raw)
    }
}

/// Sources made of given variables, and a safe production set to vary (unit tests).
#[cfg(test)]
pub(super) mod fixtures {
    use super::Sources;

    pub fn sources(pairs: &[(&str, &str)]) -> Sources {
        Sources { env: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Default::default() }
    }

    pub const STRONG_KEY: &str = "sk_live_51H8abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    pub const STRONG_LICENCE_KEY: &str = "MC4CAQAwBQYDK2VwBCIEIDATgY59DYsMR8dfBlCFR+Y/7F2uHRFOFUD8x89rrUA4";
    pub const STRONG_WHSEC: &str = "whsec_9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddcc";

    pub fn production_ok() -> Vec<(&'static str, &'static str)> {
        vec![
            ("TOLLGATE_ENV", "production"),
            ("TOLLGATE_PUBLIC_URL", "https://pay.example.org"),
            ("TOLLGATE_TRUSTED_PROXIES", "10.0.0.0/8"),
            ("TOLLGATE_JWT_SECRET", "jwt-5e1f0c9a8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f"),
            ("TOLLGATE_LICENCE_KEY", STRONG_LICENCE_KEY),
            ("STRIPE_SECRET_KEY", STRONG_KEY),
            ("STRIPE_WEBHOOK_SECRET", STRONG_WHSEC),
        ]
    }

    pub fn production_with(key: &'static str, value: &'static str) -> Sources {
        let mut env = production_ok();
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
        sources(&env)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::Sources;
    use crate::config::types::Config;

    #[test]
    fn a_dotenv_cannot_choose_production_or_another_config_file() {
        let mut s = sources(&[]);
        s.add_dotenv([
            ("TOLLGATE_ENV".to_owned(), "production".to_owned()),
            ("TOLLGATE_BODY_LIMIT".to_owned(), "2048".to_owned()),
        ]);
        let text = Config::load(&s).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_ENV is set in .env"), "{text}");

        let mut s = sources(&[("TOLLGATE_BODY_LIMIT", "4096")]);
        s.add_dotenv([
            ("TOLLGATE_ENV".to_owned(), "development".to_owned()),
            ("TOLLGATE_BODY_LIMIT".to_owned(), "2048".to_owned()),
        ]);
        assert_eq!(Config::load(&s).unwrap().http.body_limit, 4096, "the real environment wins over .env");

        let mut s = sources(&production_ok());
        s.add_dotenv([("STRIPE_WEBHOOK_SECRET".to_owned(), "x".to_owned())]);
        assert!(Config::load(&s).is_ok(), "production never reads .env");
        assert!(!s.env.contains_key("x"));
    }

    #[test]
    fn a_blank_tollgate_env_leaves_the_files_production_in_charge_of_dotenv() {
        let dir = std::env::temp_dir().join(format!("tollgate-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tollgate.toml");
        std::fs::write(&file, "env = \"production\"\n").unwrap();
        let mut s = Sources { env: [("TOLLGATE_ENV".to_owned(), " ".to_owned())].into(), file: Some(file), ..Default::default() };
        s.add_dotenv([("TOLLGATE_JWT_SECRET".to_owned(), "a-development-secret-of-more-than-32-bytes".to_owned())]);
        assert!(!s.env.contains_key("TOLLGATE_JWT_SECRET"), "production (from the file) never reads .env");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sources_debug_shows_names_not_values() {
        let s = sources(&production_ok());
        let debug = format!("{s:?}");
        assert!(debug.contains("STRIPE_SECRET_KEY"));
        assert!(!debug.contains(STRONG_KEY) && !debug.contains(STRONG_WHSEC), "{debug}");
    }
}
