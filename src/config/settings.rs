//! The settings table: every variable tollgate reads, its TOML key, default and meaning.

/// One configuration setting: its TOML key, the environment names that set it (first is canonical),
/// its default, whether it is a secret, and what it means (used for `--help` style listings).
pub struct Setting {
    pub key: &'static str,
    pub env: &'static [&'static str],
    pub default: Option<&'static str>,
    pub secret: bool,
    pub meaning: &'static str,
}

impl Setting {
    pub fn env_name(&self) -> &'static str {
        self.env[0]
    }
}

/// Every setting tollgate reads. The README's configuration table and `.env.example` list the same.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "env",
        env: &["TOLLGATE_ENV"],
        default: None,
        secret: false,
        meaning: "development or production; production refuses unsafe settings; unset means development, refused on a non-loopback bind",
    },
    Setting {
        key: "bind",
        env: &["TOLLGATE_BIND"],
        default: Some("127.0.0.1:8080"),
        secret: false,
        meaning: "address and port to listen on",
    },
    Setting {
        key: "public_url",
        env: &["TOLLGATE_PUBLIC_URL"],
        default: Some("http://localhost:8080"),
        secret: false,
        meaning: "the URL users reach tollgate at (https in production)",
    },
    Setting {
        key: "database_url",
        env: &["DATABASE_URL", "TOLLGATE_DATABASE_URL"],
        default: Some("sqlite://tollgate.db"),
        secret: true,
        meaning: "sqlite://PATH or postgres://USER@HOST/DB (sslmode honoured)",
    },
    Setting {
        key: "database_max_connections",
        env: &["TOLLGATE_DATABASE_MAX_CONNECTIONS"],
        default: Some("10"),
        secret: false,
        meaning: "database pool size",
    },
    Setting {
        key: "database_ingest_writers",
        env: &["TOLLGATE_DATABASE_INGEST_WRITERS"],
        default: Some("2"),
        secret: false,
        meaning: "PostgreSQL: transactions of webhook events run side by side (at most half the pool)",
    },
    Setting {
        key: "database_acquire_timeout",
        env: &["TOLLGATE_DATABASE_ACQUIRE_TIMEOUT"],
        default: Some("5s"),
        secret: false,
        meaning: "how long a request waits for a pooled connection",
    },
    Setting {
        key: "migrate_on_start",
        env: &["TOLLGATE_MIGRATE_ON_START"],
        default: Some("true"),
        secret: false,
        meaning: "serve runs pending migrations at start",
    },
    Setting {
        key: "redis_url",
        env: &["REDIS_URL", "TOLLGATE_REDIS_URL"],
        default: None,
        secret: true,
        meaning: "redis://HOST:PORT or rediss:// (TLS); when set, rate limits are kept there, shared by every instance, and /readyz checks it",
    },
    Setting {
        key: "redis_ca_file",
        env: &["TOLLGATE_REDIS_CA_FILE"],
        default: None,
        secret: false,
        meaning: "PEM file of the CA certificate(s) a rediss:// server must present a chain to, instead of the public web roots",
    },
    Setting {
        key: "redis_key_prefix",
        env: &["TOLLGATE_REDIS_KEY_PREFIX"],
        default: Some("tollgate:"),
        secret: false,
        meaning: "prefix of every rate-limit key on Redis (<prefix>rl:...), to share one Redis between deployments",
    },
    Setting {
        key: "cors_origins",
        env: &["TOLLGATE_CORS_ORIGINS"],
        default: Some(""),
        secret: false,
        meaning: "comma-separated exact origins allowed by CORS (with credentials)",
    },
    Setting {
        key: "trusted_proxies",
        env: &["TOLLGATE_TRUSTED_PROXIES"],
        default: Some(""),
        secret: false,
        meaning: "comma-separated CIDRs whose X-Forwarded-For/-Proto are believed",
    },
    Setting {
        key: "metrics_token",
        env: &["TOLLGATE_METRICS_TOKEN"],
        default: None,
        secret: true,
        meaning: "bearer token that opens GET /metrics to non-loopback clients (at least 32 characters); unset: loopback clients only",
    },
    Setting {
        key: "body_limit",
        env: &["TOLLGATE_BODY_LIMIT"],
        default: Some("1048576"),
        secret: false,
        meaning: "largest request body in bytes (larger: 413)",
    },
    Setting {
        key: "request_timeout",
        env: &["TOLLGATE_REQUEST_TIMEOUT"],
        default: Some("30s"),
        secret: false,
        meaning: "time a request may take (longer: 408)",
    },
    Setting {
        key: "shutdown_timeout",
        env: &["TOLLGATE_SHUTDOWN_TIMEOUT"],
        default: Some("20s"),
        secret: false,
        meaning: "how long in-flight requests may finish after SIGTERM",
    },
    Setting {
        key: "max_connections",
        env: &["TOLLGATE_MAX_CONNECTIONS"],
        default: Some("1024"),
        secret: false,
        meaning: "client connections served at once; more wait until one closes (lowered to fit the open-file limit)",
    },
    Setting {
        key: "header_read_timeout",
        env: &["TOLLGATE_HEADER_READ_TIMEOUT"],
        default: Some("10s"),
        secret: false,
        meaning: "a new connection must complete TLS and send a request head within this; so must each later request from its first byte",
    },
    Setting {
        key: "idle_timeout",
        env: &["TOLLGATE_IDLE_TIMEOUT"],
        default: Some("75s"),
        secret: false,
        meaning: "a kept-alive connection with no request in flight this long is closed",
    },
    Setting {
        key: "tls_cert",
        env: &["TOLLGATE_TLS_CERT"],
        default: None,
        secret: false,
        meaning: "PEM certificate chain; with tls_key, tollgate serves https itself",
    },
    Setting {
        key: "tls_key",
        env: &["TOLLGATE_TLS_KEY"],
        default: None,
        secret: false,
        meaning: "PEM private key file for tls_cert",
    },
    Setting {
        key: "http_redirect_bind",
        env: &["TOLLGATE_HTTP_REDIRECT_BIND"],
        default: None,
        secret: false,
        meaning: "address and port of a plain-http listener that answers every request 308 to public_url's https origin (needs TLS)",
    },
    Setting {
        key: "log",
        env: &["TOLLGATE_LOG"],
        default: Some("info"),
        secret: false,
        meaning: "log filter (tracing EnvFilter syntax)",
    },
    Setting { key: "log_format", env: &["TOLLGATE_LOG_FORMAT"], default: Some("json"), secret: false, meaning: "json or text" },
    Setting {
        key: "payment_provider",
        env: &["TOLLGATE_PAYMENT_PROVIDER"],
        default: None,
        secret: false,
        meaning: "stripe or sandbox; default: stripe when STRIPE_SECRET_KEY is set, else sandbox",
    },
    Setting {
        key: "jwt_secret",
        env: &["TOLLGATE_JWT_SECRET"],
        default: None,
        secret: true,
        meaning: "signs access tokens (HS256, at least 32 bytes); development without it uses a random per-process secret",
    },
    Setting {
        key: "jwt_previous_secret",
        env: &["TOLLGATE_JWT_PREVIOUS_SECRET"],
        default: None,
        secret: true,
        meaning: "the previous signing secret, still accepted during a rotation",
    },
    Setting {
        key: "licence_key",
        env: &["TOLLGATE_LICENCE_KEY"],
        default: None,
        secret: true,
        meaning: "Ed25519 private key that signs licences (PKCS#8 PEM as `openssl genpkey -algorithm ed25519` writes it, or its base64 DER); required in production; development without it generates one and keeps it in the database",
    },
    Setting {
        key: "licence_previous_key",
        env: &["TOLLGATE_LICENCE_PREVIOUS_KEY"],
        default: None,
        secret: true,
        meaning: "the previous licence key (private, or its public key as SPKI PEM/base64): published in the JWKS during a rotation, never used to sign",
    },
    Setting {
        key: "licence_ttl",
        env: &["TOLLGATE_LICENCE_TTL"],
        default: Some("30d"),
        secret: false,
        meaning: "longest lifetime of a licence (it also ends with the earliest access it carries)",
    },
    Setting {
        key: "session_idle_timeout",
        env: &["TOLLGATE_SESSION_IDLE_TIMEOUT"],
        default: Some("30m"),
        secret: false,
        meaning: "a browser session unused this long ends",
    },
    Setting {
        key: "session_lifetime",
        env: &["TOLLGATE_SESSION_LIFETIME"],
        default: Some("12h"),
        secret: false,
        meaning: "a browser session ends this long after login, used or not",
    },
    Setting {
        key: "access_token_ttl",
        env: &["TOLLGATE_ACCESS_TOKEN_TTL"],
        default: Some("15m"),
        secret: false,
        meaning: "lifetime of an access JWT",
    },
    Setting {
        key: "refresh_token_ttl",
        env: &["TOLLGATE_REFRESH_TOKEN_TTL"],
        default: Some("30d"),
        secret: false,
        meaning: "lifetime of a refresh token",
    },
    Setting {
        key: "login_max_failures",
        env: &["TOLLGATE_LOGIN_MAX_FAILURES"],
        default: Some("10"),
        secret: false,
        meaning: "failed logins allowed per account from one client (a device, else an address) per window (then 429 for that client)",
    },
    Setting {
        key: "login_failure_window",
        env: &["TOLLGATE_LOGIN_FAILURE_WINDOW"],
        default: Some("15m"),
        secret: false,
        meaning: "the window of login_max_failures",
    },
    Setting {
        key: "login_ip_limit",
        env: &["TOLLGATE_LOGIN_IP_LIMIT"],
        default: Some("30"),
        secret: false,
        meaning: "login attempts allowed per client IP per window (then 429)",
    },
    Setting {
        key: "login_ip_window",
        env: &["TOLLGATE_LOGIN_IP_WINDOW"],
        default: Some("1m"),
        secret: false,
        meaning: "the window of login_ip_limit",
    },
    Setting {
        key: "login_account_ceiling",
        env: &["TOLLGATE_LOGIN_ACCOUNT_CEILING"],
        default: Some("100"),
        secret: false,
        meaning: "failed logins per account per window from clients that never logged in to it, all together; beyond it they are slowed",
    },
    Setting {
        key: "password_queue",
        env: &["TOLLGATE_PASSWORD_QUEUE"],
        default: Some("32"),
        secret: false,
        meaning: "password hashing and strength checks allowed to wait; beyond it 503 with Retry-After at once",
    },
    Setting {
        key: "api_key_limit",
        env: &["TOLLGATE_API_KEY_LIMIT"],
        default: Some("600"),
        secret: false,
        meaning: "requests one API key may make per minute (then 429 with Retry-After)",
    },
    Setting {
        key: "api_hourly_limit",
        env: &["TOLLGATE_API_HOURLY_LIMIT"],
        default: Some("50"),
        secret: false,
        meaning: "requests each client (the user when authenticated, else the IP) may make per hour on API routes without a limit of their own",
    },
    Setting {
        key: "api_daily_limit",
        env: &["TOLLGATE_API_DAILY_LIMIT"],
        default: Some("200"),
        secret: false,
        meaning: "the same client budget per day",
    },
    Setting {
        key: "webhook_limit",
        env: &["TOLLGATE_WEBHOOK_LIMIT"],
        default: Some("600"),
        secret: false,
        meaning: "webhook deliveries per minute per IP whose signature does not verify (then 429); verified deliveries are never limited",
    },
    Setting {
        key: "refresh_grace",
        env: &["TOLLGATE_REFRESH_GRACE"],
        default: Some("30s"),
        secret: false,
        meaning: "a just-spent refresh token presented again this soon gets the same new refresh token (0s: never)",
    },
    Setting {
        key: "checkout_success_url",
        env: &["TOLLGATE_CHECKOUT_SUCCESS_URL"],
        default: None,
        secret: false,
        meaning:
            "where Checkout sends the buyer after paying; {ORDER_ID} is replaced (default: public_url/api/v1/orders/{ORDER_ID})",
    },
    Setting {
        key: "checkout_cancel_url",
        env: &["TOLLGATE_CHECKOUT_CANCEL_URL"],
        default: None,
        secret: false,
        meaning: "where Checkout sends a buyer who cancels; {ORDER_ID} is replaced (default: same as the success URL)",
    },
    Setting {
        key: "checkout_expires_after",
        env: &["TOLLGATE_CHECKOUT_EXPIRES_AFTER"],
        default: Some("1h"),
        secret: false,
        meaning: "how long a Checkout Session stays open (Stripe allows 30m to 24h)",
    },
    Setting {
        key: "checkout_limit",
        env: &["TOLLGATE_CHECKOUT_LIMIT"],
        default: Some("10"),
        secret: false,
        meaning: "checkouts and payment intents one user may start per minute",
    },
    Setting {
        key: "stripe_secret_key",
        env: &["STRIPE_SECRET_KEY"],
        default: None,
        secret: true,
        meaning: "Stripe API secret key (sk_live_… / sk_test_…)",
    },
    Setting {
        key: "stripe_webhook_secret",
        env: &["STRIPE_WEBHOOK_SECRET"],
        default: None,
        secret: true,
        meaning: "webhook signing secret(s), comma-separated during rotation",
    },
    Setting {
        key: "stripe_webhook_tolerance",
        env: &["STRIPE_WEBHOOK_TOLERANCE"],
        default: Some("300s"),
        secret: false,
        meaning: "how far a webhook signature's timestamp may be from now, either way",
    },
    Setting {
        key: "stripe_api_base",
        env: &["STRIPE_API_BASE"],
        default: Some("https://api.stripe.com"),
        secret: false,
        meaning: "Stripe API base URL (tests point it at a mock)",
    },
    Setting {
        key: "mail_transport",
        env: &["TOLLGATE_MAIL_TRANSPORT"],
        default: Some("log"),
        secret: false,
        meaning: "how email leaves: log (development: recipient and subject written to the log, nothing sent), smtp or sendgrid",
    },
    Setting {
        key: "smtp_url",
        env: &["TOLLGATE_SMTP_URL"],
        default: None,
        secret: true,
        meaning: "the SMTP relay: smtps://USER:PASS@HOST:465 (implicit TLS), smtp+starttls://…:587 or smtp://…?tls=required (STARTTLS), smtp://HOST:25 (plain: loopback or development only); user and password percent-encoded",
    },
    Setting {
        key: "smtp_ca_file",
        env: &["TOLLGATE_SMTP_CA_FILE"],
        default: None,
        secret: false,
        meaning: "PEM file of CA certificate(s) trusted for the SMTP relay besides the public web roots (a private relay)",
    },
    Setting {
        key: "sendgrid_api_key",
        env: &["SENDGRID_API_KEY"],
        default: None,
        secret: true,
        meaning: "SendGrid API key (mail send permission) for TOLLGATE_MAIL_TRANSPORT=sendgrid",
    },
    Setting {
        key: "sendgrid_api_base",
        env: &["SENDGRID_API_BASE"],
        default: Some("https://api.sendgrid.com"),
        secret: false,
        meaning: "SendGrid API base URL (https://api.eu.sendgrid.com for EU subusers; tests point it at a mock)",
    },
    Setting {
        key: "mail_from",
        env: &["TOLLGATE_MAIL_FROM"],
        default: None,
        secret: false,
        meaning: "From of every mail, e.g. `Example Shop <receipts@example.com>`; required in production with smtp or sendgrid (development: PRODUCT_NAME <noreply@public_url's host>)",
    },
    Setting {
        key: "mail_reply_to",
        env: &["TOLLGATE_MAIL_REPLY_TO"],
        default: None,
        secret: false,
        meaning: "Reply-To of every mail (unset: none)",
    },
    Setting {
        key: "product_name",
        env: &["TOLLGATE_PRODUCT_NAME"],
        default: Some("tollgate"),
        secret: false,
        meaning: "the name mails sign with and put in their subjects",
    },
    Setting {
        key: "mail_new_sign_in",
        env: &["TOLLGATE_MAIL_NEW_SIGN_IN"],
        default: Some("false"),
        secret: false,
        meaning: "email users a notice of each new sign-in to their account (when, from which IP and user agent)",
    },
    Setting {
        key: "nowpayments_api_key",
        env: &["NOWPAYMENTS_API_KEY"],
        default: None,
        secret: true,
        meaning: "NOWPayments API key (crypto invoices); NOWPayments is enabled when this and NOWPAYMENTS_IPN_SECRET are set",
    },
    Setting {
        key: "nowpayments_ipn_secret",
        env: &["NOWPAYMENTS_IPN_SECRET"],
        default: None,
        secret: true,
        meaning: "NOWPayments IPN secret: verifies x-nowpayments-sig on /api/v1/webhooks/nowpayments",
    },
    Setting {
        key: "nowpayments_api_base",
        env: &["NOWPAYMENTS_API_BASE"],
        default: Some("https://api.nowpayments.io"),
        secret: false,
        meaning: "NOWPayments API base URL (https://api-sandbox.nowpayments.io for their sandbox; tests point it at a mock)",
    },
    Setting {
        key: "webhook_allow_private",
        env: &["TOLLGATE_WEBHOOK_ALLOW_PRIVATE"],
        default: None,
        secret: false,
        meaning: "outbound webhooks may reach loopback, private, link-local and metadata addresses (unset: true in development, false in production)",
    },
    Setting {
        key: "webhook_retry_schedule",
        env: &["TOLLGATE_WEBHOOK_RETRY_SCHEDULE"],
        default: Some("0s,5s,5m,30m,2h,5h,10h,10h"),
        secret: false,
        meaning: "waits before each outbound webhook attempt (the first, then one per failure); after the last the message fails",
    },
];

/// The setting with TOML key `key`; every key the parsers name is in [`SETTINGS`].
pub(super) fn setting(key: &str) -> &'static Setting {
    SETTINGS.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("unknown setting {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_documented_in_the_readme_and_env_example() {
        let readme = include_str!("../../README.md");
        let example = include_str!("../../.env.example");
        for s in SETTINGS {
            assert!(readme.contains(&format!("`{}`", s.env_name())), "README lacks {}", s.env_name());
            assert!(readme.contains(&format!("`{}`", s.key)), "README lacks key {}", s.key);
            assert!(example.contains(&format!("{}=", s.env_name())), ".env.example lacks {}", s.env_name());
        }
    }
}
