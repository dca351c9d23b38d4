//! What every handler can reach, and the cookie names it answers with. Built by `App::build`;
//! the HTTP layer owns the type so that nothing in it depends on the application that runs it.

use std::sync::Arc;

use crate::config::Config;
use crate::domain::auth::AuthService;
use crate::domain::keys::ApiKeyService;
use crate::domain::licensing::LicenceService;
use crate::domain::payments::PaymentsService;
use crate::meters::Meters;
use crate::store::Store;
use crate::stripe::sandbox::Sandbox;

/// What every handler can reach: one pointer, so that the clone axum makes for every layer and
/// handler of every request is one reference count, not one per service (measured: with eleven
/// `Arc`s, cloning and dropping the state was about a tenth of a request's CPU on `/healthz`).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub auth: Arc<AuthService>,
    pub payments: Arc<PaymentsService>,
    /// API keys for the merchant's servers.
    pub keys: Arc<ApiKeyService>,
    pub licences: Arc<LicenceService>,
    /// The sandbox provider's pages, when it is the provider.
    pub sandbox: Option<Arc<Sandbox>>,
    pub cookie: CookieSettings,
    /// The OpenAPI document, generated once at start.
    pub openapi: Arc<String>,
    /// What `/metrics` reports.
    pub meters: Arc<Meters>,
    /// The rate limiter every service shares (on Redis when configured).
    pub limiter: Arc<dyn crate::ratelimit::RateLimiter>,
}

/// The session cookie: `__Host-tollgate_session` with `Secure` whenever users reach us over https;
/// the plain name without `Secure` only in development over http.
#[derive(Clone, Debug)]
pub struct CookieSettings {
    pub name: &'static str,
    /// The device cookie: marks a browser that logged in to an account before (login limits).
    pub device_name: &'static str,
    pub secure: bool,
}

impl CookieSettings {
    pub fn for_config(config: &Config) -> CookieSettings {
        let https = config.public_url.scheme() == "https" || config.tls.is_some() || config.is_production();
        if https {
            CookieSettings { name: "__Host-tollgate_session", device_name: "__Host-tollgate_device", secure: true }
        } else {
            CookieSettings { name: "tollgate_session", device_name: "tollgate_device", secure: false }
        }
    }
}
