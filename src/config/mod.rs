//! Layered configuration: built-in defaults → optional `tollgate.toml` → environment.
//!
//! Every setting has one canonical environment variable (`TOLLGATE_*`, or the standard name users
//! already know such as `DATABASE_URL`) and the same key in lower case without the prefix in the
//! TOML file. Secrets may also come from `<NAME>_FILE`. Loading collects *every* problem instead
//! of stopping at the first, and no message ever contains a secret's value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

mod environment;
mod layer;
mod settings;
mod sources;
mod types;
mod values;

pub use self::environment::Environment;
use self::layer::layer;
use self::settings::setting;
pub use self::settings::{Setting, SETTINGS};
pub use self::sources::Sources;
pub use self::types::{
    AuthConfig, Config, CorsOrigins, DatabaseConfig, HttpConfig, LogFormat, PaymentProvider, PaymentsConfig, StripeConfig,
    TlsConfig,
};
pub use self::values::parse_duration;
use self::values::{parse_bool, split_list};

/// Values that are obviously not real secrets, whatever their length.
const PLACEHOLDER_WORDS: &[&str] =
    &["changeme", "change_me", "change-me", "replace_me", "replace-me", "placeholder", "example", "your_", "xxxxxxxx"];
const PLACEHOLDER_EXACT: &[&str] = &["secret", "password", "test", "default", "token", "key"];

/// Secrets shorter than this are refused in production.
pub const MIN_SECRET_BYTES: usize = 32;

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

/// An exact CORS origin: `scheme://host[:port]` with nothing after it.
fn parse_origin(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    let origin = url.origin().ascii_serialization();
    // A path, query or trailing slash means it is not an origin; never silently fix it.
    (origin == text.trim_end_matches('/') && !text.ends_with('/')).then_some(origin)
}

fn parse_proxy(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>().ok().or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

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
        let bad = |key: &str, what: &str| {
            let s = setting(key);
            if s.secret {
                format!("{}: {what}", s.env_name())
            } else {
                format!("{}: {what} (got {:?})", s.env_name(), raw.get(key).unwrap_or(""))
            }
        };

        let env_explicit = raw.get("env").is_some();
        let env = match raw.get("env") {
            None => Environment::Development,
            Some(v) => Environment::from_name(v).unwrap_or_else(|| {
                errors.push(bad("env", "must be development or production"));
                Environment::Development
            }),
        };
        let bind = raw.get("bind").and_then(|v| v.trim().parse::<SocketAddr>().ok());
        if bind.is_none() {
            errors.push(bad("bind", "must be an address and port such as 127.0.0.1:8080"));
        }
        let public_url = raw
            .get("public_url")
            .and_then(|v| Url::parse(v.trim()).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if public_url.is_none() {
            errors.push(bad("public_url", "must be an http(s) URL"));
        }

        let database_url = raw.get("database_url").map(str::trim).unwrap_or_default().to_owned();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            errors.push(bad("database_url", "must start with sqlite:, postgres:// or postgresql://"));
        }
        let max_connections = raw.get("database_max_connections").and_then(|v| v.trim().parse::<u32>().ok()).filter(|n| *n > 0);
        if max_connections.is_none() {
            errors.push(bad("database_max_connections", "must be a positive integer"));
        }
        let acquire_timeout = raw.get("database_acquire_timeout").and_then(parse_duration).filter(|d| !d.is_zero());
        if acquire_timeout.is_none() {
            errors.push(bad("database_acquire_timeout", "must be a duration such as 5s or 500ms"));
        }
        let migrate_on_start = parse_bool(raw.get("migrate_on_start"));
        if migrate_on_start.is_none() {
            errors.push(bad("migrate_on_start", "must be true or false"));
        }
        let redis_url = raw.get("redis_url").map(|v| v.trim().to_owned());
        if let Some(r) = &redis_url {
            if !r.starts_with("redis://") || Url::parse(r).is_err() {
                errors.push(bad("redis_url", "must be a redis:// URL (rediss:// is not supported yet)"));
            }
        }

        let cors_raw = split_list(raw.get("cors_origins").unwrap_or(""));
        let cors_origins = if cors_raw.iter().any(|o| o == "*") {
            CorsOrigins::Any
        } else {
            let mut list = Vec::new();
            for o in &cors_raw {
                match parse_origin(o) {
                    Some(origin) => list.push(origin),
                    None => errors.push(format!(
                        "TOLLGATE_CORS_ORIGINS: {o:?} is not an origin (scheme://host[:port], no path or trailing slash)"
                    )),
                }
            }
            CorsOrigins::List(list)
        };
        let mut trusted_proxies = Vec::new();
        for p in split_list(raw.get("trusted_proxies").unwrap_or("")) {
            match parse_proxy(&p) {
                Some(net) => trusted_proxies.push(net.trunc()),
                None => errors.push(format!("TOLLGATE_TRUSTED_PROXIES: {p:?} is not an IP address or CIDR")),
            }
        }
        let body_limit = raw.get("body_limit").and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| *n > 0);
        if body_limit.is_none() {
            errors.push(bad("body_limit", "must be a positive number of bytes"));
        }
        let request_timeout = raw.get("request_timeout").and_then(parse_duration).filter(|d| !d.is_zero());
        if request_timeout.is_none() {
            errors.push(bad("request_timeout", "must be a duration such as 30s"));
        }
        let shutdown_timeout = raw.get("shutdown_timeout").and_then(parse_duration);
        if shutdown_timeout.is_none() {
            errors.push(bad("shutdown_timeout", "must be a duration such as 20s"));
        }
        let tls = match (raw.get("tls_cert"), raw.get("tls_key")) {
            (None, None) => None,
            (Some(c), Some(k)) => Some(TlsConfig { cert_path: PathBuf::from(c.trim()), key_path: PathBuf::from(k.trim()) }),
            _ => {
                errors.push("TOLLGATE_TLS_CERT and TOLLGATE_TLS_KEY must be set together".to_owned());
                None
            }
        };
        if let Some(t) = &tls {
            for (name, path) in [("TOLLGATE_TLS_CERT", &t.cert_path), ("TOLLGATE_TLS_KEY", &t.key_path)] {
                if !Path::new(path).is_file() {
                    errors.push(format!("{name}: file {} does not exist", path.display()));
                }
            }
        }
        let log_filter = raw.get("log").unwrap_or("info").trim().to_owned();
        if tracing_subscriber::EnvFilter::try_new(&log_filter).is_err() {
            errors.push(bad("log", "is not a valid log filter"));
        }
        let log_format = match raw.get("log_format").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(_) => {
                errors.push(bad("log_format", "must be json or text"));
                LogFormat::Json
            }
        };

        let secret_key = raw.get("stripe_secret_key").map(|v| SecretString::from(v.trim().to_owned()));
        let webhook_secrets: Vec<SecretString> =
            split_list(raw.get("stripe_webhook_secret").unwrap_or("")).into_iter().map(SecretString::from).collect();
        let provider = match raw.get("payment_provider").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None if secret_key.is_some() => PaymentProvider::Stripe,
            None => PaymentProvider::Sandbox,
            Some("stripe") => PaymentProvider::Stripe,
            Some("sandbox") => PaymentProvider::Sandbox,
            Some(_) => {
                errors.push(bad("payment_provider", "must be stripe or sandbox"));
                PaymentProvider::Sandbox
            }
        };
        if provider == PaymentProvider::Stripe && secret_key.is_none() {
            errors.push("TOLLGATE_PAYMENT_PROVIDER is stripe but STRIPE_SECRET_KEY is not set".to_owned());
        }
        let api_base = raw.get("stripe_api_base").and_then(|v| Url::parse(v.trim()).ok());
        if api_base.is_none() {
            errors.push(bad("stripe_api_base", "must be a URL"));
        }

        let duration = |key: &str, errors: &mut Vec<String>| {
            let d = raw.get(key).and_then(parse_duration).filter(|d| !d.is_zero());
            if d.is_none() {
                errors.push(bad(key, "must be a duration such as 90s, 30m, 12h or 30d"));
            }
            d.unwrap_or_else(|| setting(key).default.and_then(parse_duration).unwrap_or(Duration::from_secs(60)))
        };
        let count = |key: &str, errors: &mut Vec<String>| {
            let n = raw.get(key).and_then(|v| v.trim().parse::<u32>().ok()).filter(|n| *n > 0);
            if n.is_none() {
                errors.push(bad(key, "must be a positive integer"));
            }
            n.unwrap_or_else(|| setting(key).default.and_then(|d| d.parse().ok()).unwrap_or(1))
        };
        let auth = AuthConfig {
            jwt_secret: raw.get("jwt_secret").map(|v| SecretString::from(v.to_owned())),
            jwt_previous_secret: raw.get("jwt_previous_secret").map(|v| SecretString::from(v.to_owned())),
            session_idle_timeout: duration("session_idle_timeout", &mut errors),
            session_lifetime: duration("session_lifetime", &mut errors),
            access_token_ttl: duration("access_token_ttl", &mut errors),
            refresh_token_ttl: duration("refresh_token_ttl", &mut errors),
            login_max_failures: count("login_max_failures", &mut errors),
            login_failure_window: duration("login_failure_window", &mut errors),
            login_ip_limit: count("login_ip_limit", &mut errors),
            login_ip_window: duration("login_ip_window", &mut errors),
            login_account_ceiling: count("login_account_ceiling", &mut errors),
            password_queue: count("password_queue", &mut errors),
            refresh_grace: match raw.get("refresh_grace").and_then(parse_duration) {
                Some(d) if d <= Duration::from_secs(300) => d,
                _ => {
                    errors.push(bad("refresh_grace", "must be a duration from 0s to 5m"));
                    Duration::from_secs(30)
                }
            },
        };
        let public = public_url.clone().unwrap_or_else(|| Url::parse("http://localhost:8080").expect("constant URL"));
        let default_return = format!("{}api/v1/orders/{{ORDER_ID}}", public.as_str());
        let return_url = |key: &str, errors: &mut Vec<String>| match raw.get(key).map(str::trim) {
            None => None,
            Some(v) if Url::parse(&v.replace("{ORDER_ID}", "ord_x")).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) => {
                Some(v.to_owned())
            }
            Some(_) => {
                errors.push(bad(key, "must be an http(s) URL"));
                None
            }
        };
        let success_url = return_url("checkout_success_url", &mut errors).unwrap_or(default_return);
        let cancel_url = return_url("checkout_cancel_url", &mut errors).unwrap_or_else(|| success_url.clone());
        let checkout_ttl = duration("checkout_expires_after", &mut errors);
        if !(Duration::from_secs(30 * 60)..=Duration::from_secs(24 * 3600)).contains(&checkout_ttl) {
            errors.push(bad("checkout_expires_after", "must be between 30m and 24h (Stripe's limits)"));
        }
        let connection_limit = count("max_connections", &mut errors);
        let header_read_timeout = duration("header_read_timeout", &mut errors);
        let idle_timeout = duration("idle_timeout", &mut errors);
        let payments =
            PaymentsConfig { success_url, cancel_url, checkout_ttl, checkout_limit: count("checkout_limit", &mut errors) };
        let config = Config {
            env,
            env_explicit,
            auth,
            payments,
            bind: bind.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            public_url: public_url.unwrap_or_else(|| Url::parse("http://localhost:8080").expect("constant URL")),
            database: DatabaseConfig {
                url: SecretString::from(database_url),
                max_connections: max_connections.unwrap_or(10),
                acquire_timeout: acquire_timeout.unwrap_or(Duration::from_secs(5)),
                migrate_on_start: migrate_on_start.unwrap_or(true),
            },
            redis_url: redis_url.map(SecretString::from),
            http: HttpConfig {
                body_limit: body_limit.unwrap_or(1024 * 1024),
                request_timeout: request_timeout.unwrap_or(Duration::from_secs(30)),
                shutdown_timeout: shutdown_timeout.unwrap_or(Duration::from_secs(20)),
                cors_origins,
                trusted_proxies,
                max_connections: connection_limit,
                header_read_timeout,
                idle_timeout,
            },
            tls,
            log_filter,
            log_format,
            stripe: StripeConfig {
                secret_key,
                webhook_secrets,
                api_base: api_base.unwrap_or_else(|| Url::parse("https://api.stripe.com").expect("constant URL")),
                provider,
                webhook_tolerance: duration("stripe_webhook_tolerance", &mut errors),
            },
        };
        (config, errors)
    }

    /// What makes this configuration unsafe to serve in production (empty in development, where
    /// the same findings are only [`Config::warnings`]).
    pub fn problems(&self) -> Vec<String> {
        let mut out = if self.env == Environment::Production { self.findings() } else { Vec::new() };
        if !self.env_explicit && !self.binds_loopback_only() {
            out.push(format!(
                "TOLLGATE_ENV is not set and TOLLGATE_BIND ({}) is not a loopback address; set TOLLGATE_ENV=production, \
                 or TOLLGATE_ENV=development (in the environment or the config file, not .env) to serve development beyond \
                 this machine",
                self.bind
            ));
        }
        out
    }

    /// Development on an address other machines can reach: allowed when chosen explicitly, and
    /// worth a loud warning.
    pub fn development_exposed(&self) -> Option<String> {
        (self.env == Environment::Development && !self.binds_loopback_only()).then(|| {
            format!(
                "DEVELOPMENT MODE on {}, reachable beyond this machine: the sandbox lets any user mark their own orders \
                 paid, access tokens may be signed with a random per-process secret, and .env is read; use \
                 TOLLGATE_ENV=production for anything real",
                self.bind
            )
        })
    }

    /// Only this machine can connect (127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104).
    pub fn binds_loopback_only(&self) -> bool {
        match self.bind.ip() {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.is_loopback(), |v4| v4.is_loopback()),
            v4 => v4.is_loopback(),
        }
    }

    /// The production findings, reported as warnings in development.
    pub fn warnings(&self) -> Vec<String> {
        if self.env == Environment::Development {
            self.findings()
        } else {
            Vec::new()
        }
    }

    fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.auth.jwt_secret {
            None => out.push("TOLLGATE_JWT_SECRET is missing".to_owned()),
            Some(s) => out.extend(weak_secret("TOLLGATE_JWT_SECRET", s)),
        }
        if let Some(s) = &self.auth.jwt_previous_secret {
            out.extend(weak_secret("TOLLGATE_JWT_PREVIOUS_SECRET", s));
        }
        match &self.stripe.secret_key {
            None => out.push("STRIPE_SECRET_KEY is missing".to_owned()),
            Some(s) => out.extend(weak_secret("STRIPE_SECRET_KEY", s)),
        }
        if self.stripe.webhook_secrets.is_empty() {
            out.push("STRIPE_WEBHOOK_SECRET is missing".to_owned());
        }
        for (i, s) in self.stripe.webhook_secrets.iter().enumerate() {
            let name = if self.stripe.webhook_secrets.len() == 1 {
                "STRIPE_WEBHOOK_SECRET".to_owned()
            } else {
                format!("STRIPE_WEBHOOK_SECRET (secret #{})", i + 1)
            };
            out.extend(weak_secret(&name, s));
        }
        if self.stripe.provider == PaymentProvider::Sandbox {
            out.push(
                "the sandbox payment provider would be used (set STRIPE_SECRET_KEY and TOLLGATE_PAYMENT_PROVIDER=stripe)"
                    .to_owned(),
            );
        }
        if self.http.cors_origins == CorsOrigins::Any {
            out.push("TOLLGATE_CORS_ORIGINS allows every origin (*); list the exact origins".to_owned());
        }
        if self.public_url.scheme() != "https" {
            out.push("TOLLGATE_PUBLIC_URL is http; users must reach tollgate over https".to_owned());
        }
        if self.stripe.api_base.scheme() != "https" {
            out.push("STRIPE_API_BASE is not https; the Stripe secret key would travel in clear".to_owned());
        }
        for net in &self.http.trusted_proxies {
            if net.prefix_len() == 0 {
                out.push(format!("TOLLGATE_TRUSTED_PROXIES trusts every address ({net}); anyone could forge X-Forwarded-For"));
            } else if let Some(why) = too_broad_to_trust(net) {
                out.push(format!(
                    "TOLLGATE_TRUSTED_PROXIES: {net} is too broad ({why}); anyone in it could forge X-Forwarded-For; \
                     list your proxies' own addresses or subnets"
                ));
            }
        }
        if self.tls.is_none() && self.http.trusted_proxies.is_empty() {
            out.push("neither TLS (TOLLGATE_TLS_CERT/TOLLGATE_TLS_KEY) nor a TLS-terminating proxy (TOLLGATE_TRUSTED_PROXIES) is configured".to_owned());
        }
        out
    }
}

/// Shortest trusted prefixes: an IPv4 net shorter than /8 or an IPv6 net shorter than /16 spans
/// public address space no deployment's proxies need (CDNs publish ranges of /13 and narrower).
pub const MIN_TRUSTED_PREFIX_V4: u8 = 8;
pub const MIN_TRUSTED_PREFIX_V6: u8 = 16;

/// Why trusting `net` as a proxy would trust far too many clients, if it would. An IPv4-mapped IPv6
/// net (inside `::ffff:0:0/96`) counts as the IPv4 net it maps; an IPv6 net that holds all of
/// `::ffff:0:0/96` maps every IPv4 address.
fn too_broad_to_trust(net: &IpNet) -> Option<String> {
    match net {
        IpNet::V4(v4) => {
            (v4.prefix_len() < MIN_TRUSTED_PREFIX_V4).then(|| format!("an IPv4 prefix shorter than /{MIN_TRUSTED_PREFIX_V4}"))
        }
        IpNet::V6(v6) => {
            let mapped: ipnet::Ipv6Net = "::ffff:0:0/96".parse().expect("constant net");
            if mapped.contains(v6) {
                let v4_prefix = v6.prefix_len() - 96;
                (v4_prefix < MIN_TRUSTED_PREFIX_V4)
                    .then(|| format!("IPv4-mapped, as IPv4 a /{v4_prefix}, shorter than /{MIN_TRUSTED_PREFIX_V4}"))
            } else if v6.contains(&mapped) {
                Some("it holds ::ffff:0:0/96, every IPv4 address mapped to IPv6".to_owned())
            } else {
                (v6.prefix_len() < MIN_TRUSTED_PREFIX_V6).then(|| format!("an IPv6 prefix shorter than /{MIN_TRUSTED_PREFIX_V6}"))
            }
        }
    }
}

/// The values in `.env.example`: a secret that equals one of them was copied, not generated.
fn example_values() -> impl Iterator<Item = &'static str> {
    // Commented-out assignments count too: they are the ones people copy.
    include_str!("../../.env.example")
        .lines()
        .map(|l| l.trim_start_matches(['#', ' ']))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Why `value` is not acceptable as a production secret, naming `name` and never the value.
pub fn weak_secret(name: &str, value: &SecretString) -> Vec<String> {
    let v = value.expose_secret();
    let lower = v.to_ascii_lowercase();
    let mut out = Vec::new();
    let placeholder = PLACEHOLDER_EXACT.contains(&lower.as_str())
        || PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w))
        || example_values().any(|e| e == v)
        || v.chars().all(|c| v.starts_with(c));
    if placeholder {
        out.push(format!("{name} is a known placeholder, not a real secret"));
    }
    if v.len() < MIN_SECRET_BYTES {
        out.push(format!("{name} is shorter than {MIN_SECRET_BYTES} bytes"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sources::fixtures::*;

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
    fn placeholders_are_refused_whatever_their_length() {
        let mut env = production_ok();
        env.retain(|(k, _)| *k != "STRIPE_WEBHOOK_SECRET");
        env.push(("STRIPE_WEBHOOK_SECRET", "changeme-changeme-changeme-changeme-changeme"));
        let text = Config::load(&sources(&env)).unwrap_err().to_string();
        assert!(text.contains("STRIPE_WEBHOOK_SECRET is a known placeholder"), "{text}");
        for example in example_values().filter(|v| v.len() >= MIN_SECRET_BYTES) {
            assert!(!weak_secret("X", &SecretString::from(example.to_owned())).is_empty(), "{example} accepted");
        }
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
    fn malformed_settings_and_production_problems_are_listed_together() {
        let mut env = production_ok();
        env.retain(|(k, _)| *k != "STRIPE_SECRET_KEY");
        env.push(("TOLLGATE_BODY_LIMIT", "lots"));
        let text = Config::load(&sources(&env)).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_BODY_LIMIT") && text.contains("STRIPE_SECRET_KEY is missing"), "{text}");
    }

    #[test]
    fn trusting_every_address_is_refused_in_production() {
        for all in ["0.0.0.0/0", "::/0"] {
            let mut env = production_ok();
            env.retain(|(k, _)| *k != "TOLLGATE_TRUSTED_PROXIES");
            env.push(("TOLLGATE_TRUSTED_PROXIES", all));
            let text = Config::load(&sources(&env)).unwrap_err().to_string();
            assert!(text.contains("trusts every address"), "{all}: {text}");
        }
    }

    #[test]
    fn production_refuses_a_stripe_api_base_that_is_not_https() {
        let text = Config::load(&production_with("STRIPE_API_BASE", "http://api.stripe.com")).unwrap_err().to_string();
        assert!(text.contains("STRIPE_API_BASE is not https"), "{text}");
        assert!(!text.contains("http://api.stripe.com"), "the variable is named, not its value: {text}");
        assert!(Config::load(&production_with("STRIPE_API_BASE", "https://stripe-proxy.internal.example")).is_ok());
        let dev = Config::load(&sources(&[("STRIPE_API_BASE", "http://127.0.0.1:9")])).unwrap();
        assert!(dev.warnings().iter().any(|w| w.contains("STRIPE_API_BASE")), "development only warns (tests use a mock)");
    }

    #[test]
    fn production_refuses_trusted_proxy_ranges_that_span_public_space() {
        for (proxies, offending) in [
            ("0.0.0.0/1,128.0.0.0/1", "0.0.0.0/1"),
            ("0.0.0.0/1,128.0.0.0/1", "128.0.0.0/1"),
            ("10.0.0.1, 64.0.0.0/2", "64.0.0.0/2"),
            ("10.0.0.0/7", "10.0.0.0/7"),
            ("2000::/3", "2000::/3"),
            ("2001:db8::/32, 2001::/15", "2000::/15"),
            // IPv4-mapped IPv6 counts as the IPv4 range it maps.
            ("::ffff:0:0/96", "::ffff:0.0.0.0/96"),
            ("::ffff:128.0.0.0/97", "::ffff:128.0.0.0/97"),
            ("::ffff:10.0.0.0/103", "::ffff:10.0.0.0/103"),
            ("::/80", "::/80"),
        ] {
            let text = Config::load(&production_with("TOLLGATE_TRUSTED_PROXIES", proxies)).unwrap_err().to_string();
            assert!(
                text.lines().any(|l| l.contains("TOLLGATE_TRUSTED_PROXIES") && l.contains(offending) && l.contains("too broad")),
                "{proxies}: {offending} not named in {text}"
            );
        }
        for fine in ["10.0.0.0/8", "203.0.113.7", "172.64.0.0/13, 2400:cb00::/32", "::ffff:10.0.0.0/104", "fd00::/16", "::1"] {
            let loaded = Config::load(&production_with("TOLLGATE_TRUSTED_PROXIES", fine));
            assert!(loaded.is_ok(), "{fine}: {}", loaded.unwrap_err());
        }
    }

    #[test]
    fn without_tollgate_env_only_loopback_is_served() {
        for bind in ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:8080"] {
            let text = Config::load(&sources(&[("TOLLGATE_BIND", bind)])).unwrap_err().to_string();
            assert!(text.contains("TOLLGATE_ENV is not set") && text.contains("TOLLGATE_ENV=production"), "{bind}: {text}");
            let (config, _) = Config::parse_all(&sources(&[("TOLLGATE_BIND", bind)]));
            assert!(config.problems().iter().any(|p| p.contains("TOLLGATE_ENV")), "check-config's verdict too");
        }
        for bind in ["127.0.0.1:8080", "127.0.0.2:0", "[::1]:8080", "[::ffff:127.0.0.1]:8080"] {
            let c = Config::load(&sources(&[("TOLLGATE_BIND", bind)])).unwrap();
            assert!(c.development_exposed().is_none(), "{bind}");
        }
    }

    #[test]
    fn development_beyond_loopback_must_be_chosen_outside_dotenv_and_is_warned_about() {
        let c = Config::load(&sources(&[("TOLLGATE_BIND", "0.0.0.0:8080"), ("TOLLGATE_ENV", "development")])).unwrap();
        assert!(c.env_explicit);
        let warning = c.development_exposed().expect("a warning");
        assert!(warning.contains("any user mark their own orders"), "{warning}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.toml");
        std::fs::write(&path, "env = \"development\"\nbind = \"0.0.0.0:8080\"\n").unwrap();
        let mut s = sources(&[]);
        s.file = Some(path);
        assert!(Config::load(&s).is_ok(), "the config file may choose development");

        let mut s = sources(&[("TOLLGATE_BIND", "0.0.0.0:8080")]);
        s.add_dotenv([("TOLLGATE_ENV".to_owned(), "development".to_owned())]);
        let text = Config::load(&s).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_ENV is not set"), "a .env cannot choose it: {text}");
    }

    #[test]
    fn production_may_bind_every_interface() {
        let c = Config::load(&production_with("TOLLGATE_BIND", "0.0.0.0:8443")).unwrap();
        assert!(c.is_production() && c.development_exposed().is_none());
    }
}
