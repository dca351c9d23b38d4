//! Building and running the application: `App::build` opens the database, migrates, binds (port 0
//! in tests) and returns the bound address; `run_until_stopped` serves until SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use secrecy::ExposeSecret;

use crate::config::{Config, PaymentProvider, TlsConfig};
use crate::domain::apikeys::KeyMode;
use crate::domain::auth::AuthService;
use crate::domain::jwt::JwtKeys;
use crate::domain::keys::ApiKeyService;
use crate::domain::ledger::key_is_live;
use crate::domain::licensing::{LicenceKeys, LicenceService};
use crate::domain::password::PasswordHasherPool;
use crate::domain::payments::PaymentsService;
use crate::http::server::{fit_open_file_limit, reserved_descriptors, Limits};
use crate::http::state::{AppParts, AppState, CookieSettings};
use crate::http::tls::{reload_on_sighup, server_config, Hangups, ReloadableCert};
use crate::ratelimit::{MemoryRateLimiter, RateLimiter, RedisRateLimiter, SharedRateLimiter};
use crate::store::{self, Store};
use crate::stripe::client::StripeClient;
use crate::stripe::sandbox::Sandbox;
use crate::stripe::Provider;

/// The rate limiter for `config`: on Redis when `REDIS_URL` is set (shared by every instance,
/// falling back to memory while Redis is away), else in this process's memory.
pub fn rate_limiter(config: &Config) -> anyhow::Result<Arc<dyn RateLimiter>> {
    Ok(match &config.redis_url {
        Some(url) => {
            let redis = RedisRateLimiter::with_ca(url.expose_secret(), &config.redis_key_prefix, config.redis_ca_file.as_deref())
                .context("REDIS_URL")?;
            Arc::new(SharedRateLimiter::new(redis))
        }
        None => Arc::new(MemoryRateLimiter::new()),
    })
}

/// The accounts service for `config` (the server and the `admin` CLI share it).
pub fn auth_service(config: &Config, store: Arc<dyn Store>, limiter: Arc<dyn RateLimiter>) -> AuthService {
    let secret = config.auth.jwt_secret.clone().unwrap_or_else(|| {
        // Production refuses to start without one; development gets a secret per process.
        tracing::warn!("TOLLGATE_JWT_SECRET is not set; access tokens are signed with a random per-process secret");
        secrecy::SecretString::from(crate::domain::crypto::random_token())
    });
    let issuer = config.public_url.origin().ascii_serialization();
    let ttl = i64::try_from(config.auth.access_token_ttl.as_secs()).unwrap_or(900);
    let device_key = crate::domain::crypto::derive_key(secret.expose_secret().as_bytes(), "tollgate device cookie v1");
    let jwt = JwtKeys::new(secret, config.auth.jwt_previous_secret.clone(), issuer, "tollgate".to_owned(), ttl);
    let hasher = PasswordHasherPool::with_queue(usize::try_from(config.auth.password_queue).unwrap_or(32));
    AuthService::new(store, hasher, limiter, jwt, config.auth.clone(), device_key).with_new_sign_in_mail(config.mail.new_sign_in)
}

/// The API-key service for `config`: keys of the server's mode (live with a live Stripe key, else
/// test), each limited to `TOLLGATE_API_KEY_LIMIT` requests a minute. The server and the CLI share it.
pub fn apikey_service(config: &Config, store: Arc<dyn Store>, limiter: Arc<dyn RateLimiter>) -> ApiKeyService {
    let mode = match config.stripe.provider {
        PaymentProvider::Stripe => {
            KeyMode::of_server(config.stripe.secret_key.as_ref().map(secrecy::ExposeSecret::expose_secret))
        }
        // The sandbox is test, whatever key is configured beside it.
        _ => KeyMode::Test,
    };
    ApiKeyService::new(store, limiter, mode, config.auth.api_key_limit)
}

/// The payments service for `config` with its provider: Stripe when configured, else the sandbox
/// (which posts its signed events to `webhook_url`). The server and the CLI share it.
pub fn payments_service(
    config: &Config,
    store: Arc<dyn Store>,
    webhook_url: url::Url,
    limiter: Arc<dyn RateLimiter>,
) -> anyhow::Result<(PaymentsService, Option<Arc<Sandbox>>)> {
    let (provider, sandbox): (Arc<dyn Provider>, Option<Arc<Sandbox>>) =
        match (&config.stripe.provider, &config.stripe.secret_key) {
            (PaymentProvider::Stripe, Some(key)) => {
                (Arc::new(StripeClient::new(config.stripe.api_base.clone(), key.clone())?), None)
            }
            _ => {
                // `App::build` gives the sandbox a secret the endpoint verifies; the CLI never delivers.
                let secret = config
                    .stripe
                    .webhook_secrets
                    .first()
                    .cloned()
                    .unwrap_or_else(|| crate::domain::crypto::random_token().into());
                let sandbox = Arc::new(Sandbox::new(config.public_url.clone(), webhook_url.clone(), secret)?);
                (sandbox.clone(), Some(sandbox))
            }
        };
    let key_live = key_is_live(config.stripe.secret_key.as_ref().map(secrecy::ExposeSecret::expose_secret));
    let mut service = PaymentsService::new(store, provider, limiter, config.payments.clone(), key_live);
    if let Some((key, ipn_secret)) = config.nowpayments.credentials() {
        let api = crate::nowpayments::client::NowPaymentsClient::new(config.nowpayments.api_base.clone(), key.clone())?;
        let ipn_callback_url = format!("{}api/v1/webhooks/nowpayments", config.public_url.as_str());
        service = service.with_nowpayments(crate::domain::payments::NowPaymentsLink {
            api: Arc::new(api),
            ipn_secret: ipn_secret.clone(),
            ipn_callback_url,
            sandbox: None,
        });
    } else if config.stripe.provider == PaymentProvider::Sandbox
        && config.nowpayments.api_key.is_none()
        && config.nowpayments.ipn_secret.is_none()
    {
        // Development without keys: NOWPayments' stand-in, signing its IPNs with a secret of its own.
        let ipn_url = webhook_url.join("/api/v1/webhooks/nowpayments")?;
        let ipn_secret: secrecy::SecretString = crate::domain::crypto::random_token().into();
        let sandbox = Arc::new(crate::nowpayments::sandbox::NowPaymentsSandbox::new(
            config.public_url.clone(),
            ipn_url.clone(),
            ipn_secret.clone(),
        )?);
        service = service.with_nowpayments(crate::domain::payments::NowPaymentsLink {
            api: sandbox.clone(),
            ipn_secret,
            ipn_callback_url: ipn_url.to_string(),
            sandbox: Some(sandbox),
        });
    }
    Ok((service, sandbox))
}

/// The licence service for `config`, issuing as the public URL. Its keys are loaded now when
/// configured or when the database is migrated (the development key is kept there), else at
/// first use.
pub async fn licence_service(
    config: &Config,
    store: Arc<dyn Store>,
    payments: Arc<PaymentsService>,
    limiter: Arc<dyn RateLimiter>,
) -> anyhow::Result<LicenceService> {
    let issuer = config.public_url.as_str().trim_end_matches('/').to_owned();
    let service = LicenceService::new(store, payments, limiter, config.licence.clone(), issuer);
    if config.licence.key.is_some() || config.database.migrate_on_start {
        service.keys().await.context("cannot load the licence signing key")?;
    }
    Ok(service)
}

/// The outbox's dispatcher for `config`: webhooks (private addresses as configured) and email
/// through the configured mailer.
pub fn dispatcher(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<crate::notify::dispatcher::Dispatcher> {
    let mailer = crate::notify::email::mailer_from_config(config);
    let mail = crate::notify::email::MailSettings::from_config(config);
    crate::notify::dispatcher::Dispatcher::new(
        store,
        config.is_production(),
        config.webhooks.allow_private,
        config.webhooks.retry_schedule.clone(),
        mailer,
        mail,
    )
}

/// Our own webhook endpoint as seen from this host (the sandbox delivers its events there).
fn own_webhook_url(addr: SocketAddr, tls: bool) -> anyhow::Result<url::Url> {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::IpAddr::from([127, 0, 0, 1]),
        ip if ip.is_unspecified() => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    Ok(url::Url::parse(&format!("{scheme}://{}/api/v1/webhooks/stripe", SocketAddr::new(ip, addr.port())))?)
}

pub struct App {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificate in use, reloaded on SIGHUP.
    certs: Option<Arc<ReloadableCert>>,
    /// The plain-http listener that only redirects to https, when configured.
    redirect: Option<std::net::TcpListener>,
    state: AppState,
    limits: Limits,
    /// The redirect listener's: its own small bound, the main listener's timeouts.
    redirect_limits: Limits,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Starts a graceful shutdown: no new connections, in-flight requests get the configured time.
#[derive(Clone)]
pub struct ShutdownHandle {
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        App::build_with(config, Router::new()).await
    }

    /// Like [`App::build`], with `extra` routes served behind the same middleware stack.
    pub async fn build_with(mut config: Config, extra: Router<AppState>) -> anyhow::Result<App> {
        if config.stripe.provider == PaymentProvider::Sandbox && config.stripe.webhook_secrets.is_empty() {
            // Production refuses the sandbox; in development it signs with a per-process secret.
            config
                .stripe
                .webhook_secrets
                .push(secrecy::SecretString::from(format!("whsec_{}", crate::domain::crypto::random_token())));
        }
        // Everything that can be refused without side effects is checked before the database.
        let certs = match &config.tls {
            Some(t) => Some(Arc::new(ReloadableCert::load(t)?)),
            None => None,
        };
        let tls = certs.clone().map(server_config).transpose()?;
        LicenceKeys::configured(&config.licence)?;
        let store = store::connect(&config.database).await.context("cannot open the database")?;
        if config.database.migrate_on_start {
            let applied = store.migrate().await.context("cannot apply migrations")?;
            if !applied.is_empty() {
                tracing::info!(engine = store.engine().as_str(), applied = ?applied, "migrations applied");
            }
        }
        let listener = std::net::TcpListener::bind(config.bind).with_context(|| format!("cannot listen on {}", config.bind))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let redirect = match config.tls.as_ref().and_then(|t| t.redirect_bind) {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen on {addr} (TOLLGATE_HTTP_REDIRECT_BIND)"))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        // One limiter for every service (their keys are namespaced), so one outage warning.
        let limiter = rate_limiter(&config)?;
        let webhook_url = own_webhook_url(local_addr, tls.is_some())?;
        let (payments, sandbox) = payments_service(&config, store.clone(), webhook_url, limiter.clone())?;
        let payments = Arc::new(payments);
        let licences = licence_service(&config, store.clone(), payments.clone(), limiter.clone()).await?;
        let (routes, openapi) = crate::http::api();
        let state = AppState::new(AppParts {
            auth: Arc::new(auth_service(&config, store.clone(), limiter.clone())),
            payments,
            licences: Arc::new(licences),
            keys: Arc::new(apikey_service(&config, store.clone(), limiter.clone())),
            limiter,
            sandbox,
            cookie: CookieSettings::for_config(&config),
            config: Arc::new(config),
            store,
            openapi: Arc::new(openapi),
            meters: crate::meters::Meters::new(),
        });
        let router = crate::http::router(state.clone(), routes.merge(extra), tls.is_some());
        let http = &state.config.http;
        let wanted = usize::try_from(http.max_connections).unwrap_or(usize::MAX);
        // The redirect listener has a small bound of its own, and the descriptors it can hold are
        // kept free beside the database's, so that it can never starve the main listener.
        let redirect_connections = crate::http::redirect::max_connections(wanted);
        let mut reserved = reserved_descriptors(state.config.database.max_connections);
        if redirect.is_some() {
            reserved = reserved.saturating_add(crate::http::redirect::descriptors(redirect_connections));
        }
        let limits = Limits {
            listener: "main",
            max_connections: fit_open_file_limit(wanted, reserved),
            header_read_timeout: http.header_read_timeout,
            idle_timeout: http.idle_timeout,
            // A handler has the request timeout to answer; after that, a response must keep moving.
            stall_timeout: http.request_timeout + http.idle_timeout,
            shutdown_timeout: http.shutdown_timeout,
        };
        let redirect_limits = Limits { listener: "redirect", max_connections: redirect_connections, ..limits };
        let (stop, _) = tokio::sync::watch::channel(false);
        Ok(App { listener, local_addr, router, tls, certs, redirect, state, limits, redirect_limits, stop: Arc::new(stop) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Where the plain-http redirect listener listens, when configured.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { stop: self.stop.clone() }
    }

    /// Serves until SIGTERM or SIGINT, then stops accepting and lets in-flight requests finish
    /// within the shutdown timeout. Every SIGHUP (`hangups`, installed by the caller before
    /// [`App::build`]) reloads the TLS certificate, or is logged when there is none.
    pub async fn run_until_stopped(self, hangups: Hangups) -> anyhow::Result<()> {
        let stop = shutdown_signal()?;
        self.run(stop, Some(hangups)).await
    }

    /// Serves until `stop` completes, then shuts down gracefully (SIGHUP is left alone: tests run
    /// the server in their own process).
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        self.run(stop, None).await
    }

    async fn run(self, stop: impl Future<Output = ()> + Send + 'static, hangups: Option<Hangups>) -> anyhow::Result<()> {
        let shutdown = self.shutdown_handle();
        tokio::spawn(async move {
            stop.await;
            tracing::info!("shutdown requested; finishing in-flight requests");
            shutdown.shutdown();
        });
        let config = &self.state.config;
        if let Some(certs) = &self.certs {
            let summary = certs.summary();
            tracing::info!(
                fingerprint_sha256 = %summary.fingerprint_sha256,
                not_after = summary.not_after.as_deref().unwrap_or("unknown"),
                "TLS certificate loaded (reloaded on SIGHUP)"
            );
        }
        if let Some(hangups) = hangups {
            tokio::spawn(reload_on_sighup(hangups, self.certs.clone()));
        }
        let redirect = match self.redirect {
            Some(listener) => {
                let origin = config.public_url.origin().ascii_serialization();
                let limits = self.redirect_limits;
                tracing::info!(
                    addr = %listener.local_addr()?,
                    to = %origin,
                    max_connections = limits.max_connections,
                    "redirecting http to https"
                );
                let router = crate::http::redirect::router(origin);
                let stop = self.stop.subscribe();
                Some(tokio::spawn(crate::http::server::serve(listener, None, router, limits, stop)))
            }
            None => None,
        };
        tracing::info!(
            addr = %self.local_addr,
            env = config.env.as_str(),
            engine = self.state.store.engine().as_str(),
            tls = self.tls.is_some(),
            max_connections = self.limits.max_connections,
            header_read_timeout_ms = self.limits.header_read_timeout.as_millis(),
            idle_timeout_ms = self.limits.idle_timeout.as_millis(),
            "listening"
        );
        // Hourly (and once at start): idempotency keys older than 24 h are forgotten, and expired
        // sessions, refresh tokens, token families and login clients are purged.
        let (store, auth) = (self.state.store.clone(), self.state.auth.clone());
        let sweeper = tokio::spawn(async move {
            let mut hourly = tokio::time::interval(Duration::from_secs(3600));
            loop {
                hourly.tick().await;
                let cutoff = chrono::Utc::now() - chrono::Duration::hours(crate::store::payments::IDEMPOTENCY_TTL_HOURS);
                match store.sweep_idempotency(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "expired idempotency keys removed"),
                    Err(e) => tracing::warn!(error = %e, "cannot remove expired idempotency keys"),
                }
                match auth.purge_expired().await {
                    Ok(p) => tracing::info!(
                        sessions = p.sessions,
                        refresh_tokens = p.refresh_tokens,
                        families = p.families,
                        login_clients = p.login_clients,
                        "expired credentials purged"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot purge expired credentials"),
                }
            }
        });
        // PostgreSQL: the read view follows every writer's changes (store/changes.rs).
        let feed = self.state.store.follow_changes();
        // The outbox is delivered while serving; on shutdown the batch in hand is finished.
        let dispatcher = dispatcher(&self.state.config, self.state.store.clone())?.spawn(self.stop.subscribe());
        let served = crate::http::server::serve(self.listener, self.tls, self.router, self.limits, self.stop.subscribe()).await;
        sweeper.abort();
        if let Some(feed) = feed {
            feed.abort();
        }
        self.stop.send_replace(true);
        if tokio::time::timeout(self.limits.shutdown_timeout, dispatcher).await.is_err() {
            tracing::warn!("the outbox dispatcher did not stop in time; its leases expire and another instance takes over");
        }
        if let Some(redirect) = redirect {
            match redirect.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the redirect listener failed"),
                Err(e) => tracing::warn!(error = %e, "the redirect listener panicked"),
                Ok(Ok(())) => {}
            }
        }
        self.state.store.close().await;
        served.context("server error")
    }
}

/// SIGTERM or SIGINT. The handlers are registered now, before the server says it is listening,
/// so a signal that arrives at any point after that is a graceful shutdown, never a kill.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// A rustls server config on the ring provider (no second crypto stack), TLS 1.3 and 1.2, HTTP/2
/// and HTTP/1.1, over the certificate and key at `t` (`check-config` reads them as `serve` does).
pub fn load_tls(t: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    server_config(Arc::new(ReloadableCert::load(t)?))
}
