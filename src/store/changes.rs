//! PostgreSQL's change feed for the read view (`view.rs`): triggers on the rows the view holds
//! (`migrations/postgres/…_change_notifications.sql`) notify `tollgate_changes` with the user id
//! of every committed change, whatever wrote it (this instance, another one, the CLI). One
//! connection per instance (`application_name = tollgate-changes`) listens and invalidates.
//!
//! The feed vouches for itself: every `HEARTBEAT_EVERY` the instance notifies the channel through
//! its pool, and the view counts the channel live while its last heartbeat sent less than
//! `LIVE_FOR` ago came back. A lost connection flushes the view when listening again (what
//! was notified in between is lost), and until heartbeats come back entries only live
//! `MAX_AGE`: a change is seen everywhere within a second even with the channel cut.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;

use super::view::{View, HEARTBEAT_EVERY};

pub const CHANNEL: &str = "tollgate_changes";
/// How the listening connection shows in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "tollgate-changes";
/// Between attempts to listen again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// Listens until the task is aborted (on shutdown), reconnecting as often as needed.
pub(crate) async fn follow(options: PgConnectOptions, pool: PgPool, view: View) {
    let heartbeats = tokio::spawn(heartbeat(pool, view.clone()));
    let _stop_heartbeats = AbortOnDrop(heartbeats);
    // Its own pool of one: the listener's connection is never one the requests wait for, and it
    // is named so an operator (or a test) can find it.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name(APPLICATION_NAME));
    let mut quiet = false;
    loop {
        match listen(&own, &view).await {
            Ok(()) => {}
            Err(e) if quiet => tracing::debug!(error = %e, "change feed: still cannot listen"),
            Err(e) => {
                tracing::warn!(error = %e, "change feed lost; the read view trusts entries for 500 ms only until it is back");
                quiet = true;
            }
        }
        view.channel_lost();
        tokio::time::sleep(RETRY_AFTER).await;
        if view.is_live() {
            quiet = false;
        }
    }
}

/// One listening connection, for as long as it lasts.
async fn listen(pool: &PgPool, view: &View) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Listening from now on: what was held may have missed changes before this point.
    view.channel_connected();
    tracing::debug!("change feed listening");
    loop {
        match listener.try_recv().await? {
            Some(n) => view.notified(n.payload()),
            // The connection was lost and is listening again (sqlx reconnects eagerly).
            None => {
                view.channel_lost();
                view.channel_connected();
            }
        }
    }
}

/// Notifies the channel with this view's heartbeat, every `HEARTBEAT_EVERY`, through the pool.
async fn heartbeat(pool: PgPool, view: View) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(view.heartbeat()).execute(&pool).await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "change feed heartbeat not sent");
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
