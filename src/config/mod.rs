//! Layered configuration: built-in defaults → optional `tollgate.toml` → environment.
//!
//! Every setting has one canonical environment variable (`TOLLGATE_*`, or the standard name users
//! already know such as `DATABASE_URL`) and the same key in lower case without the prefix in the
//! TOML file. Secrets may also come from `<NAME>_FILE`. Loading collects *every* problem instead
//! of stopping at the first, and no message ever contains a secret's value.
//!
//! This file only declares the parts and re-exports their public items: `settings` (every
//! variable, its default and meaning), `sources` and `layer` (where values come from and how
//! they stack), one parser per section (`server`, `database`, `http`, `tls`, `logging`, `stripe`,
//! `auth`, `payments`, `licence`, `mail`) composed by `load`, the shapes in `types`, and the production `checks`.
//! The parts import each other directly, never through this file.

mod auth;
mod checks;
mod database;
mod environment;
mod http;
mod layer;
mod licence;
mod load;
mod logging;
mod mail;
mod nowpayments;
mod payments;
mod server;
mod settings;
mod sources;
mod stripe;
mod tls;
mod types;
mod values;
mod webhooks;

pub use self::checks::{weak_secret, MIN_SECRET_BYTES, MIN_TRUSTED_PREFIX_V4, MIN_TRUSTED_PREFIX_V6};
pub use self::environment::Environment;
pub use self::load::ConfigErrors;
pub use self::settings::{Setting, SETTINGS};
pub use self::sources::Sources;
pub use self::types::{
    AuthConfig, Config, CorsOrigins, DatabaseConfig, HttpConfig, LicenceConfig, LogFormat, NowPaymentsConfig, PaymentProvider,
    PaymentsConfig, StripeConfig, TlsConfig, WebhooksConfig,
};
pub use self::types::{MailConfig, MailTransport, SmtpConfig, SmtpTls};
pub use self::values::parse_duration;
