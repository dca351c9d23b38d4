//! Loading: every section parsed from the layered sources, then (for `load`) the production checks.

use std::fmt;

use super::layer::layer;
use super::sources::Sources;
use super::types::Config;
use super::{auth, database, http, licence, logging, mail, nowpayments, payments, server, stripe, tls, webhooks};

/// Everything wrong with a configuration, each line naming the variable and never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem{}):", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Loads and validates the configuration. In production this also applies [`Config::problems`],
    /// so a server that would run unsafely never starts. Every problem is reported at once.
    pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
        let (config, mut errors) = Config::parse_all(sources);
        errors.extend(config.problems());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Parses the configuration without the production safety checks (`migrate` needs only the
    /// database settings).
    pub fn parse(sources: &Sources) -> Result<Config, ConfigErrors> {
        let (config, errors) = Config::parse_all(sources);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Parses everything, returning the malformed settings as errors and a configuration in which
    /// each malformed value is replaced by its default, so the production checks can still run
    /// and every problem is reported at once.
    pub fn parse_all(sources: &Sources) -> (Config, Vec<String>) {
        let raw = layer(sources);
        let mut errors = raw.errors.clone();
        let server = server::parse(&raw, &mut errors);
        let database = database::parse(&raw, &mut errors);
        let redis_url = database::redis_url(&raw, &mut errors);
        let redis_key_prefix = database::redis_key_prefix(&raw, &mut errors);
        let redis_ca_file = database::redis_ca_file(&raw, redis_url.as_ref(), &mut errors);
        let http = http::parse(&raw, &mut errors);
        let tls = tls::parse(&raw, &server, &mut errors);
        let log_filter = logging::filter(&raw, &mut errors);
        let log_format = logging::format(&raw, &mut errors);
        let stripe = stripe::parse(&raw, &mut errors);
        let nowpayments = nowpayments::parse(&raw, &mut errors);
        let auth = auth::parse(&raw, &mut errors);
        let payments = payments::parse(&raw, &server.public_url, &mut errors);
        let licence = licence::parse(&raw, &mut errors);
        let mail = mail::parse(&raw, &mut errors);
        let webhooks = webhooks::parse(&raw, server.env, &mut errors);
        let config = Config {
            env: server.env,
            env_explicit: server.env_explicit,
            bind: server.bind,
            public_url: server.public_url,
            database,
            redis_url,
            redis_key_prefix,
            redis_ca_file,
            http,
            tls,
            log_filter,
            log_format,
            stripe,
            nowpayments,
            auth,
            payments,
            licence,
            mail,
            webhooks,
        };
        (config, errors)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use crate::config::environment::Environment;
    use crate::config::sources::fixtures::*;
    use crate::config::types::{Config, PaymentProvider};

    #[test]
    fn defaults_are_a_development_sqlite_sandbox() {
        let c = Config::load(&sources(&[])).unwrap();
        assert_eq!(c.env, Environment::Development);
        assert_eq!(c.database.url.expose_secret(), "sqlite://tollgate.db");
        assert_eq!(c.stripe.provider, PaymentProvider::Sandbox);
        assert_eq!(c.http.body_limit, 1024 * 1024);
        assert_eq!(c.http.max_connections, 1024);
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(75));
        assert!(!c.env_explicit && c.binds_loopback_only() && c.development_exposed().is_none());
        assert!(!c.warnings().is_empty());
    }

    #[test]
    fn a_safe_production_configuration_loads() {
        let c = Config::load(&sources(&production_ok())).unwrap();
        assert!(c.is_production());
        assert_eq!(c.stripe.provider, PaymentProvider::Stripe);
    }

    #[test]
    fn production_lists_every_problem_at_once_and_never_a_value() {
        let err = Config::load(&sources(&[
            ("TOLLGATE_ENV", "production"),
            ("TOLLGATE_CORS_ORIGINS", "*"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_short"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "STRIPE_SECRET_KEY is missing",
            "TOLLGATE_LICENCE_KEY is missing",
            "STRIPE_WEBHOOK_SECRET is shorter than 32 bytes",
            "sandbox payment provider",
            "TOLLGATE_CORS_ORIGINS allows every origin",
            "TOLLGATE_PUBLIC_URL is http",
            "neither TLS",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from {text}");
        }
        assert!(!text.contains("whsec_short"));
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let text = Config::load(&sources(&[
            ("TOLLGATE_BODY_LIMIT", "lots"),
            ("TOLLGATE_CORS_ORIGINS", "https://ok.example,https://bad.example/path"),
            ("TOLLGATE_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("DATABASE_URL", "mysql://root@localhost/x"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(text.contains("TOLLGATE_BODY_LIMIT"));
        assert!(text.contains("bad.example/path"));
        assert!(text.contains("TOLLGATE_TRUSTED_PROXIES"));
        assert!(text.contains("DATABASE_URL: must start with"));
        assert!(!text.contains("mysql://root"), "a database URL may hold a password");
    }

    #[test]
    fn a_licence_lifetime_out_of_range_is_refused() {
        for ttl in ["30s", "100000000d"] {
            let text = Config::load(&sources(&[("TOLLGATE_LICENCE_TTL", ttl)])).unwrap_err().to_string();
            assert!(text.contains("TOLLGATE_LICENCE_TTL: must be between 1m and 3660d"), "{ttl}: {text}");
        }
        assert_eq!(Config::load(&sources(&[("TOLLGATE_LICENCE_TTL", "1h")])).unwrap().licence.ttl, Duration::from_secs(3600));
    }

    #[test]
    fn malformed_settings_and_production_problems_are_listed_together() {
        let mut env = production_ok();
        env.retain(|(k, _)| *k != "STRIPE_SECRET_KEY");
        env.push(("TOLLGATE_BODY_LIMIT", "lots"));
        let text = Config::load(&sources(&env)).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_BODY_LIMIT") && text.contains("STRIPE_SECRET_KEY is missing"), "{text}");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = Config::load(&sources(&production_ok())).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(STRONG_KEY));
        assert!(!debug.contains(STRONG_WHSEC));
        assert!(!debug.contains(STRONG_LICENCE_KEY));
    }

    #[test]
    fn the_licence_settings_default_to_30_days_and_a_development_key() {
        let c = Config::load(&sources(&[])).unwrap();
        assert_eq!(c.licence.ttl, Duration::from_secs(30 * 86400));
        assert!(c.licence.key.is_none() && c.licence.previous_key.is_none());
        let c = Config::load(&sources(&production_ok())).unwrap();
        assert_eq!(c.licence.key.as_ref().unwrap().expose_secret(), STRONG_LICENCE_KEY);
        let text = Config::load(&sources(&[("TOLLGATE_LICENCE_TTL", "forever")])).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_LICENCE_TTL"), "{text}");
    }
}
