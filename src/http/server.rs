//! The accept loop: our own, over hyper-util, so that slow or silent clients cannot make the service
//! unreachable.
//!
//! - At most `max_connections` connections are served, and one more socket is open: when no slot
//!   is free, the loop still accepts the next client (so it knows one is waiting), logs a warning
//!   (at most every 10 s) and holds it until a slot frees; later clients queue in the kernel's
//!   listen backlog. File descriptors stay bounded. While a client waits, every kept-alive
//!   connection with no request in flight is closed, and HTTP/1 responses say `Connection: close`,
//!   so waiting clients are not held back by idle ones (a connection that has not sent a request
//!   yet keeps its slot until its header-read timeout).
//! - A watchdog per connection closes it when it stops making progress: no complete request head
//!   (TLS handshake included) within `header_read_timeout` of accepting it; on HTTP/1, no complete
//!   head within `header_read_timeout` of a later request's first byte; no request at all for
//!   `idle_timeout` once the previous one is answered; an outstanding response that makes no progress
//!   for `stall_timeout` (the client stopped reading). It closes gracefully (a response hyper has
//!   already taken is still written) and cuts the connection off after 1 s.
//!
//! hyper's own HTTP/1 `header_read_timeout` is switched off: hyper-util's `auto` builder detects the
//! protocol before hyper starts that timer, without a timer of its own, so a client that sends
//! nothing (or one byte) was never closed; and once running, the same timer also cuts the wait
//! between keep-alive requests, so header-read and idle time could not differ.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, Version};
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

/// HTTP/2 pings while streams are open; a peer that does not answer one in time is gone.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent requests on one HTTP/2 connection.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// How long a connection the watchdog closes may take to end gracefully before it is cut off.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// No client arriving for this long while connections are full means nobody is waiting any more.
const PRESSURE_OVER: Duration = Duration::from_millis(100);
/// The connection-limit warning is logged at most this often.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Which listener these limits are for, as logged (`main` or `redirect`).
    pub listener: &'static str,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// An outstanding response that makes no progress this long ends its connection.
    pub stall_timeout: Duration,
    /// How long in-flight requests may finish once a shutdown is asked for.
    pub shutdown_timeout: Duration,
}

/// Serves `router` on `listener` (over TLS when `tls` is set) until `stop` turns true; then stops
/// accepting, lets in-flight requests finish within the shutdown timeout and closes the rest.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let shared = Arc::new(Shared {
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        make_service: router.into_make_service_with_connect_info::<SocketAddr>(),
        builder: builder(),
        limits,
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (drain, draining) = watch::channel(false);
    let (at_limit, at_limit_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut last_limit_warning: Option<Instant> = None;
    let mut last_accept_warning: Option<Instant> = None;
    let mut stop_requested = pin!(stopped(stop));

    loop {
        while connections.try_join_next().is_some() {}
        let free_slot = slots.clone().try_acquire_owned().ok();
        if free_slot.is_some() {
            at_limit.send_if_modified(|at| std::mem::replace(at, false));
        }
        // Without a free slot, the next client is still taken (one socket beyond the bound), so
        // that the connections know someone is waiting; it is served once a slot frees.
        let accepted = loop {
            tokio::select! {
                accepted = listener.accept() => break Some(accepted),
                () = &mut stop_requested => break None,
                () = tokio::time::sleep(PRESSURE_OVER), if *at_limit.borrow() => {
                    at_limit.send_replace(false);
                }
            }
        };
        let (tcp, peer) = match accepted {
            Some(Ok(accepted)) => accepted,
            Some(Err(e)) => {
                drop(free_slot);
                accept_failed(&e, &limits, &slots, &mut last_accept_warning).await;
                continue;
            }
            None => break,
        };
        let slot = match free_slot {
            Some(slot) => slot,
            None => {
                if last_limit_warning.is_none_or(|t| t.elapsed() >= LIMIT_WARNING_EVERY) {
                    last_limit_warning = Some(Instant::now());
                    tracing::warn!(
                        listener = limits.listener,
                        open_connections = limits.max_connections - slots.available_permits(),
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait for a free slot (TOLLGATE_MAX_CONNECTIONS)"
                    );
                }
                // Until a slot is seen free, or no client turns up for a while, clients are waiting.
                at_limit.send_if_modified(|at| !std::mem::replace(at, true));
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => slot,
                    () = &mut stop_requested => break,
                };
                match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                }
            }
        };
        let signals = Signals { draining: draining.clone(), at_limit: at_limit_seen.clone() };
        connections.spawn(connection(tcp, peer, shared.clone(), signals, slot));
    }

    // New clients are refused from here on; connections finish what they are doing.
    drop(listener);
    let _ = drain.send(true);
    let finished =
        tokio::time::timeout(limits.shutdown_timeout, async { while connections.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(connections = connections.len(), "shutdown timeout reached; closing the remaining connections");
        connections.shutdown().await;
    }
    Ok(())
}

/// After `accept()` failed: a client that gave up while queued is its own business; anything else
/// (out of file descriptors, …) is ours: say so (at most every 10 s), and do not spin.
async fn accept_failed(e: &io::Error, limits: &Limits, slots: &Semaphore, last_warning: &mut Option<Instant>) {
    if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted) {
        return;
    }
    if last_warning.is_none_or(|t| t.elapsed() >= LIMIT_WARNING_EVERY) {
        *last_warning = Some(Instant::now());
        tracing::warn!(
            listener = limits.listener,
            error = %e,
            open_connections = limits.max_connections - slots.available_permits(),
            "cannot accept connections"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Completes once `stop` is true; never when every sender is gone (nobody can ask any more).
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The watchdog bounds header reads (see the module documentation).
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    builder
}

/// What every connection is served with.
struct Shared {
    tls: Option<tokio_rustls::TlsAcceptor>,
    make_service: IntoMakeServiceWithConnectInfo<Router, SocketAddr>,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
}

/// What the accept loop tells every connection.
struct Signals {
    /// Shutting down: finish in-flight requests, take no more.
    draining: watch::Receiver<bool>,
    /// No slot is free and a client is waiting for one.
    at_limit: watch::Receiver<bool>,
}

async fn connection(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, signals: Signals, _slot: OwnedSemaphorePermit) {
    let Signals { draining, at_limit } = signals;
    let _ = tcp.set_nodelay(true);
    let activity = Arc::new(Activity::new(shared.limits, at_limit.clone()));
    let service = match shared.make_service.clone().oneshot(peer).await {
        Ok(service) => service,
        Err(never) => match never {},
    };
    let close = Notify::new();
    let signals = Signals { draining, at_limit: at_limit.clone() };
    let mut serve = pin!(async {
        match &shared.tls {
            None => serve_io(tcp, &activity, service, &shared.builder, signals, &close).await,
            Some(acceptor) => match acceptor.accept(tcp).await {
                Ok(stream) => serve_io(stream, &activity, service, &shared.builder, signals, &close).await,
                Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            },
        }
    });
    let reason = tokio::select! {
        () = serve.as_mut() => return,
        reason = watchdog(&activity, &shared.limits, at_limit) => reason,
    };
    tracing::debug!(%peer, reason, "closing the connection");
    // Gracefully first, so that a response hyper has taken but not yet written still goes out; a
    // peer that does not let the connection end within the grace period is cut off.
    close.notify_one();
    let _ = tokio::time::timeout(CLOSE_GRACE, serve).await;
}

async fn serve_io<IO>(
    io: IO,
    activity: &Arc<Activity>,
    service: axum::middleware::AddExtension<Router, axum::extract::ConnectInfo<SocketAddr>>,
    builder: &auto::Builder<TokioExecutor>,
    signals: Signals,
    close: &Notify,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Signals { mut draining, at_limit } = signals;
    let io = TokioIo::new(Tracked { inner: io, activity: activity.clone() });
    let activity = activity.clone();
    let hyper_service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let version = request.version();
        let in_flight = InFlight::start(activity.clone(), version);
        let service = service.clone();
        let at_limit = at_limit.clone();
        async move {
            let mut response = match service.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // While clients wait for a slot, an HTTP/1 client is told this connection ends here,
            // so it opens a new one (and queues) instead of sending into one about to close.
            if version < Version::HTTP_2 && *at_limit.borrow() {
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            // The request stays in flight until hyper has taken the whole body.
            Ok::<_, Infallible>(response.map(move |body| {
                body.map_frame(move |frame| {
                    in_flight.progressed();
                    frame
                })
            }))
        }
    });
    let mut connection = pin!(builder.serve_connection(io, hyper_service));
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = draining.wait_for(|d| *d) => {}
        () = close.notified() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// What the watchdog knows about one connection.
///
/// The watchdog is woken only when a change brings the connection's deadline *earlier* than the
/// one it sleeps until (or leaves it idle while clients wait for a slot): a later deadline is
/// found when the earlier one expires. A busy keep-alive connection so costs no wake-up per
/// request (measured: three per request before, each a task switch).
struct Activity {
    state: Mutex<State>,
    changed: Notify,
    limits: Limits,
    at_limit: watch::Receiver<bool>,
}

struct State {
    accepted: Instant,
    requests: u64,
    in_flight: usize,
    h2: bool,
    /// When the last response was handed over (or the connection accepted).
    idle_since: Instant,
    /// HTTP/1: when the first byte of the next request arrived, while none is in flight.
    head_started: Option<Instant>,
    /// When an outstanding response last made progress (or its request arrived).
    progress: Instant,
    /// The deadline the watchdog sleeps until (`None` before it first looked).
    armed: Option<Instant>,
}

impl State {
    /// Kept alive between requests: one was answered, none is in flight or (HTTP/1) arriving.
    fn idle_between_requests(&self) -> bool {
        self.in_flight == 0 && self.requests > 0 && (self.h2 || self.head_started.is_none())
    }

    fn deadline(&self, limits: &Limits) -> (Instant, &'static str) {
        if self.in_flight > 0 {
            (self.progress + limits.stall_timeout, "response stalled: the client stopped reading")
        } else if self.requests == 0 {
            (self.accepted + limits.header_read_timeout, "header read timeout: no complete request")
        } else if let (false, Some(started)) = (self.h2, self.head_started) {
            (started + limits.header_read_timeout, "header read timeout: request not complete")
        } else {
            (self.idle_since + limits.idle_timeout, "idle timeout")
        }
    }
}

impl Activity {
    fn new(limits: Limits, at_limit: watch::Receiver<bool>) -> Activity {
        let now = Instant::now();
        Activity {
            state: Mutex::new(State {
                accepted: now,
                requests: 0,
                in_flight: 0,
                h2: false,
                idle_since: now,
                head_started: None,
                progress: now,
                armed: None,
            }),
            changed: Notify::new(),
            limits,
            at_limit,
        }
    }

    /// After a change to `state`: wakes the watchdog if it now has to act sooner than it planned.
    fn settle(&self, state: MutexGuard<'_, State>) {
        let (deadline, _) = state.deadline(&self.limits);
        let sooner = state.armed.is_none_or(|armed| deadline < armed);
        let wake = sooner || (state.idle_between_requests() && *self.at_limit.borrow());
        drop(state);
        if wake {
            self.changed.notify_one();
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_read(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && s.requests > 0 && !s.h2 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            self.settle(s);
        }
    }
}

/// Closes the connection (by returning) once it has made no progress in time, or when it is idle
/// between requests while the connection limit is reached.
async fn watchdog(activity: &Activity, limits: &Limits, mut at_limit: watch::Receiver<bool>) -> &'static str {
    loop {
        let (deadline, reason, idle) = {
            let mut state = activity.state();
            let (deadline, reason) = state.deadline(limits);
            state.armed = Some(deadline);
            (deadline, reason, state.idle_between_requests())
        };
        if Instant::now() >= deadline {
            return reason;
        }
        if idle && *at_limit.borrow_and_update() {
            return "idle while the connection limit is reached";
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = activity.changed.notified() => {}
            Ok(()) = at_limit.changed() => {}
        }
    }
}

/// One request, from its head to the end of its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>, version: Version) -> InFlight {
        let mut s = activity.state();
        s.requests += 1;
        s.in_flight += 1;
        s.h2 |= version == Version::HTTP_2;
        s.head_started = None;
        s.progress = Instant::now();
        activity.settle(s);
        InFlight(activity)
    }

    fn progressed(&self) {
        self.0.state().progress = Instant::now();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
        }
        self.0.settle(s);
    }
}

/// The connection's IO, telling the watchdog when bytes arrive.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// File descriptors kept free for everything but client connections (database pool, logs, Redis,
/// outgoing HTTPS), given the database pool size.
pub fn reserved_descriptors(database_connections: u32) -> u64 {
    64 + 4 * u64::from(database_connections)
}

/// The connection bound that fits the process's open-file limit: raises the soft limit (up to the
/// hard one) when `wanted` connections plus `reserved` descriptors need it, and otherwise lowers
/// the bound, with a warning, so that accepting never runs out of descriptors.
#[cfg(target_os = "linux")]
pub fn fit_open_file_limit(wanted: usize, reserved: u64) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    let needed = (wanted as u64).saturating_add(reserved);
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < needed {
        let raised = libc::rlimit { rlim_cur: needed.min(limit.rlim_max), rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed {
        return wanted;
    }
    let fitting = usize::try_from(limit.rlim_cur.saturating_sub(reserved)).unwrap_or(wanted).clamp(1, wanted);
    tracing::warn!(
        requested = wanted,
        max_connections = fitting,
        open_file_limit = limit.rlim_cur,
        reserved,
        "TOLLGATE_MAX_CONNECTIONS does not fit the open-file limit (ulimit -n); fewer connections are accepted"
    );
    fitting
}

#[cfg(not(target_os = "linux"))]
pub fn fit_open_file_limit(wanted: usize, _reserved: u64) -> usize {
    wanted
}
