//! What a configuration is: `Config` and its sections, as the rest of tollgate reads them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;
use url::Url;

use super::environment::Environment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Which payment provider serves checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentProvider {
    Stripe,
    /// The built-in stand-in for Stripe Checkout; development only.
    Sandbox,
}

/// CORS origins: an exact allow-list, or (development only) any origin without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    List(Vec<String>),
    Any,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// May embed a password, hence secret.
    pub url: SecretString,
    pub max_connections: u32,
    /// PostgreSQL: how many transactions of verified events run side by side (group commit).
    pub ingest_writers: u32,
    pub acquire_timeout: Duration,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub cors_origins: CorsOrigins,
    pub trusted_proxies: Vec<IpNet>,
    /// Client connections served at once; more wait until one closes.
    pub max_connections: u32,
    /// A new connection's first request head (TLS handshake included), and on HTTP/1 every later
    /// head from its first byte, must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
    /// Opens `GET /metrics` to a client that is not on loopback.
    pub metrics_token: Option<secrecy::SecretString>,
    /// Each client's budget on API routes without a limit of their own, per hour and per day.
    pub api_hourly_limit: u32,
    pub api_daily_limit: u32,
    /// Webhook deliveries a minute per IP that fail verification before they are answered 429.
    pub webhook_limit: u32,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// A plain-http listener that only redirects to `public_url`'s https origin.
    pub redirect_bind: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct StripeConfig {
    pub secret_key: Option<SecretString>,
    /// Several secrets may verify at once, so a rotated secret keeps working during the switch.
    pub webhook_secrets: Vec<SecretString>,
    pub api_base: Url,
    pub provider: PaymentProvider,
    /// How far a webhook's signed timestamp may be from now, either way.
    pub webhook_tolerance: Duration,
}

/// NOWPayments (crypto invoices); enabled when both secrets are set.
#[derive(Debug, Clone)]
pub struct NowPaymentsConfig {
    pub api_key: Option<SecretString>,
    pub ipn_secret: Option<SecretString>,
    pub api_base: Url,
}

impl NowPaymentsConfig {
    /// The API key and IPN secret, when both are set (NOWPayments is enabled).
    pub fn credentials(&self) -> Option<(&SecretString, &SecretString)> {
        self.api_key.as_ref().zip(self.ipn_secret.as_ref())
    }
}

/// Checkout: where buyers return, how long sessions stay open, how often a user may start one.
#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    pub success_url: String,
    pub cancel_url: String,
    pub checkout_ttl: Duration,
    pub checkout_limit: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub env: Environment,
    /// `TOLLGATE_ENV` was set (in the environment or the file, not `.env`); development is the
    /// default only on a loopback address.
    pub env_explicit: bool,
    pub bind: SocketAddr,
    pub public_url: Url,
    pub database: DatabaseConfig,
    pub redis_url: Option<SecretString>,
    /// The rate limiter's keys on Redis start with this (`tollgate:` by default).
    pub redis_key_prefix: String,
    /// For `rediss://`: the CA certificate(s) the server's certificate must chain to, instead of
    /// the public web roots (a private CA, a self-hosted Redis).
    pub redis_ca_file: Option<std::path::PathBuf>,
    pub http: HttpConfig,
    pub tls: Option<TlsConfig>,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub stripe: StripeConfig,
    pub nowpayments: NowPaymentsConfig,
    pub auth: AuthConfig,
    pub payments: PaymentsConfig,
    pub licence: LicenceConfig,
    pub mail: MailConfig,
    pub webhooks: WebhooksConfig,
}

/// Outbound webhooks to the merchant's app.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Deliveries may reach loopback, private, link-local… addresses (development default).
    pub allow_private: bool,
    /// Waits before each attempt: the first is the first attempt's (normally 0), then one per
    /// failure; after the last the message fails.
    pub retry_schedule: Vec<std::time::Duration>,
}

/// Licences: the Ed25519 key that signs them, the previous one still published, their lifetime.
#[derive(Debug, Clone)]
pub struct LicenceConfig {
    /// PKCS#8 PEM or base64 DER. Development without one keeps a generated key in the database.
    pub key: Option<SecretString>,
    /// A private or SPKI public key, only to verify (and publish in the JWKS) during a rotation.
    pub previous_key: Option<SecretString>,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Signs access tokens (HS256). Development without one uses a random per-process secret.
    pub jwt_secret: Option<SecretString>,
    /// Still verifies tokens signed before a rotation (told apart by `kid`).
    pub jwt_previous_secret: Option<SecretString>,
    pub session_idle_timeout: Duration,
    pub session_lifetime: Duration,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub login_max_failures: u32,
    pub login_failure_window: Duration,
    pub login_ip_limit: u32,
    pub login_ip_window: Duration,
    /// Failed logins per account per window from clients it does not know, all of them together;
    /// beyond it such attempts are slowed (see `domain::auth`).
    pub login_account_ceiling: u32,
    /// Password jobs (hashing, verifying, strength) allowed to wait; beyond it 503 at once.
    pub password_queue: u32,
    /// Requests one API key may make per minute (GCRA: a burst of this many, then one per 60/n s).
    pub api_key_limit: u32,
    /// A just-spent refresh token presented again this soon gets the same successor back.
    pub refresh_grace: Duration,
}

impl Config {
    pub fn is_production(&self) -> bool {
        self.env == Environment::Production
    }
}

/// Email: how it leaves, who it is from, what it signs with.
#[derive(Debug, Clone)]
pub struct MailConfig {
    pub transport: MailTransport,
    /// A parsed mailbox (`Name <addr>` or `addr`); `None` in development means a default.
    pub from: Option<String>,
    pub reply_to: Option<String>,
    pub product_name: String,
    /// Mail a notice of each new sign-in (off by default).
    pub new_sign_in: bool,
}

#[derive(Debug, Clone)]
pub enum MailTransport {
    /// Recipient and subject to the log at INFO; nothing is sent (development).
    Log,
    Smtp(SmtpConfig),
    SendGrid {
        api_key: SecretString,
        api_base: Url,
    },
}

impl MailTransport {
    pub fn name(&self) -> &'static str {
        match self {
            MailTransport::Log => "log",
            MailTransport::Smtp(_) => "smtp",
            MailTransport::SendGrid { .. } => "sendgrid",
        }
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// TLS from the first byte (`smtps://`, port 465).
    Implicit,
    /// STARTTLS, required: a server that does not offer it is refused (port 587).
    StartTls,
    /// No TLS: only to this machine, or in development.
    Plain,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    /// Extra CA certificate(s) trusted for the relay, besides the web roots.
    pub ca_file: Option<PathBuf>,
}

impl SmtpConfig {
    /// The relay is this machine (a plain connection never leaves it).
    pub fn is_loopback(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}
