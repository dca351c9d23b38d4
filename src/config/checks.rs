//! Production checks: what makes a configuration unsafe to serve (weak or missing secrets, the
//! sandbox, http, proxies trusted too broadly) and the rule that development without
//! `TOLLGATE_ENV` serves loopback only. Findings name the variable, never its value.

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use super::environment::Environment;
use super::types::{Config, CorsOrigins, MailTransport, PaymentProvider, SmtpTls};

/// Values that are obviously not real secrets, whatever their length.
const PLACEHOLDER_WORDS: &[&str] =
    &["changeme", "change_me", "change-me", "replace_me", "replace-me", "placeholder", "example", "your_", "xxxxxxxx"];
const PLACEHOLDER_EXACT: &[&str] = &["secret", "password", "test", "default", "token", "key"];

/// Secrets shorter than this are refused in production.
pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
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
        if self.licence.key.is_none() {
            out.push("TOLLGATE_LICENCE_KEY is missing (generate one with `openssl genpkey -algorithm ed25519`)".to_owned());
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
        match (&self.nowpayments.api_key, &self.nowpayments.ipn_secret) {
            (Some(_), None) => {
                out.push("NOWPAYMENTS_API_KEY is set but NOWPAYMENTS_IPN_SECRET is not: IPNs could not be verified (NOWPayments stays off)".to_owned())
            }
            (None, Some(_)) => {
                out.push("NOWPAYMENTS_IPN_SECRET is set but NOWPAYMENTS_API_KEY is not set: no invoice could be made (NOWPayments stays off)".to_owned())
            }
            _ => {}
        }
        if self.nowpayments.api_base.scheme() != "https" {
            out.push("NOWPAYMENTS_API_BASE is not https; the NOWPayments API key would travel in clear".to_owned());
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
        out.extend(self.mail_findings());
        if self.tls.is_none() && self.http.trusted_proxies.is_empty() {
            out.push("neither TLS (TOLLGATE_TLS_CERT/TOLLGATE_TLS_KEY) nor a TLS-terminating proxy (TOLLGATE_TRUSTED_PROXIES) is configured".to_owned());
        }
        out
    }
}

impl Config {
    /// Mail that would leave unprotected, or without a sender.
    fn mail_findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.mail.transport {
            MailTransport::Log => {}
            MailTransport::Smtp(smtp) => {
                // The relay chose the password's length; a placeholder is still refused.
                if let Some(password) = &smtp.password {
                    out.extend(placeholder_secret("the password in TOLLGATE_SMTP_URL", password));
                }
                if smtp.tls == SmtpTls::Plain && !smtp.is_loopback() {
                    out.push(
                        "TOLLGATE_SMTP_URL is plain smtp:// to another machine; use smtps:// or smtp+starttls:// (mail and \
                         the relay's password would travel in clear)"
                            .to_owned(),
                    );
                }
            }
            MailTransport::SendGrid { api_key, api_base } => {
                out.extend(weak_secret("SENDGRID_API_KEY", api_key));
                if api_base.scheme() != "https" {
                    out.push("SENDGRID_API_BASE is not https; the SendGrid API key would travel in clear".to_owned());
                }
            }
        }
        if !matches!(self.mail.transport, MailTransport::Log) && self.mail.from.is_none() {
            out.push(
                "TOLLGATE_MAIL_FROM is missing (the address mail is sent from, e.g. `Shop <receipts@shop.example>`)".to_owned(),
            );
        }
        out
    }

    /// Worth saying in every environment, refused in none: production mailing to the log.
    pub fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.is_production() && matches!(self.mail.transport, MailTransport::Log) {
            out.push(
                "TOLLGATE_MAIL_TRANSPORT is log: receipts and security notices are written to the log, not sent \
                 (set smtp or sendgrid)"
                    .to_owned(),
            );
        }
        out
    }
}

/// Shortest trusted prefixes: an IPv4 net shorter than /8 or an IPv6 net shorter than /24 spans
/// public address space no deployment's proxies need (CDNs publish ranges of /13 and narrower for
/// IPv4, /29 and narrower for IPv6; a regional registry's /16 or /12 is not a proxy).
pub const MIN_TRUSTED_PREFIX_V4: u8 = 8;
pub const MIN_TRUSTED_PREFIX_V6: u8 = 24;

/// IPv6 prefixes that carry an IPv4 address at a fixed offset (IPv4-mapped, NAT64's well-known
/// prefix, 6to4): a net inside one is judged as the IPv4 net it carries, and a net holding one
/// trusts every IPv4 address through it.
const IPV4_EMBEDDING: [(&str, u8); 3] = [("::ffff:0:0/96", 96), ("64:ff9b::/96", 96), ("2002::/16", 16)];

/// Why trusting `net` as a proxy would trust far too many clients, if it would.
fn too_broad_to_trust(net: &IpNet) -> Option<String> {
    match net {
        IpNet::V4(v4) => {
            (v4.prefix_len() < MIN_TRUSTED_PREFIX_V4).then(|| format!("an IPv4 prefix shorter than /{MIN_TRUSTED_PREFIX_V4}"))
        }
        IpNet::V6(v6) => {
            for (embedding, offset) in IPV4_EMBEDDING {
                let embedding: ipnet::Ipv6Net = embedding.parse().expect("constant net");
                if embedding.contains(v6) {
                    // 6to4 carries the IPv4 address in the 32 bits after its /16.
                    let v4_prefix = v6.prefix_len().saturating_sub(offset).min(32);
                    return (v4_prefix < MIN_TRUSTED_PREFIX_V4).then(|| {
                        format!("it carries IPv4 addresses ({embedding}), as IPv4 a /{v4_prefix}, shorter than /{MIN_TRUSTED_PREFIX_V4}")
                    });
                }
                if v6.contains(&embedding) {
                    return Some(format!("it holds {embedding}, which carries every IPv4 address"));
                }
            }
            // Unique-local and link-local addresses are private, as 10.0.0.0/8 is.
            let private = ["fc00::/7", "fe80::/10"].map(|n| n.parse::<ipnet::Ipv6Net>().expect("constant net"));
            if private.iter().any(|p| p.contains(v6)) {
                return None;
            }
            let teredo: ipnet::Ipv6Net = "2001::/32".parse().expect("constant net");
            if teredo.contains(v6) || v6.contains(&teredo) {
                return Some("it overlaps Teredo (2001::/32), whose addresses are anyone's tunnels".to_owned());
            }
            (v6.prefix_len() < MIN_TRUSTED_PREFIX_V6).then(|| format!("an IPv6 prefix shorter than /{MIN_TRUSTED_PREFIX_V6}"))
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

/// `Some` when `value` is a placeholder (a known word, a value copied from `.env.example`, one
/// character repeated), naming `name` and never the value. The half of [`weak_secret`] that also
/// fits a secret someone else chose (an SMTP relay's password, whose length is the relay's).
pub fn placeholder_secret(name: &str, value: &SecretString) -> Option<String> {
    let v = value.expose_secret();
    let lower = v.to_ascii_lowercase();
    let placeholder = PLACEHOLDER_EXACT.contains(&lower.as_str())
        || PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w))
        || example_values().any(|e| e == v)
        || v.chars().all(|c| v.starts_with(c));
    placeholder.then(|| format!("{name} is a known placeholder, not a real secret"))
}

/// Why `value` is not acceptable as a production secret, naming `name` and never the value.
pub fn weak_secret(name: &str, value: &SecretString) -> Vec<String> {
    let v = value.expose_secret();
    let mut out: Vec<String> = placeholder_secret(name, value).into_iter().collect();
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
            // A regional registry's block, NAT64's and 6to4's carriers of all IPv4, Teredo.
            ("2a00::/16", "2a00::/16"),
            ("64:ff9b::/96", "64:ff9b::/96"),
            ("2002::/16", "2002::/16"),
            ("2001::/32", "2001::/32"),
        ] {
            let text = Config::load(&production_with("TOLLGATE_TRUSTED_PROXIES", proxies)).unwrap_err().to_string();
            assert!(
                text.lines().any(|l| l.contains("TOLLGATE_TRUSTED_PROXIES") && l.contains(offending) && l.contains("too broad")),
                "{proxies}: {offending} not named in {text}"
            );
        }
        for fine in [
            "10.0.0.0/8",
            "203.0.113.7",
            "172.64.0.0/13, 2400:cb00::/32, 2a06:98c0::/29",
            "::ffff:10.0.0.0/104",
            "64:ff9b::a00:0/104",
            "2002:a00::/24",
            "fd00::/16",
            "fc00::/7",
            "::1",
        ] {
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

    #[test]
    fn a_metrics_token_is_long_and_never_echoed() {
        use secrecy::ExposeSecret;
        let text = Config::load(&sources(&[("TOLLGATE_METRICS_TOKEN", "short-token-value")])).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_METRICS_TOKEN") && !text.contains("short-token-value"), "{text}");
        let long = "m".repeat(32);
        let config = Config::load(&sources(&[("TOLLGATE_METRICS_TOKEN", &long)])).unwrap();
        assert_eq!(config.http.metrics_token.as_ref().map(|t| t.expose_secret().to_owned()), Some(long.clone()));
        assert!(!format!("{config:?}").contains(&long), "redacted in Debug");
        assert!(Config::load(&sources(&[])).unwrap().http.metrics_token.is_none());
    }
}
