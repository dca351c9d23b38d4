//! PostgreSQL's change feed for the read view (`view.rs`): triggers on users and token families
//! (`migrations/postgres/…_change_notifications.sql`) notify `tollgate_changes` with the user id
//! of every committed change, whatever wrote it (this instance, another one, the CLI). One
//! connection per instance (`application_name = tollgate-changes`) listens and invalidates.
//!
//! The feed vouches for itself: every `HEARTBEAT_EVERY` the instance notifies the channel through
//! a connection of its own (not the request pool; `application_name = tollgate-heartbeat`), and
//! the view counts the channel live while its last heartbeat sent less than `LIVE_FOR` ago came
//! back. A listener that hears nothing (not even its own heartbeats) for [`SILENT_FOR`] drops its
//! connection and listens again (a connection cut silently, with no reset, never errors on its
//! own). A lost connection flushes the view when listening again (what was notified in between is
//! lost), and until heartbeats come back entries only live `MAX_AGE`: a change is seen everywhere
//! within a second even with the channel cut.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;

use super::view::{View, HEARTBEAT_EVERY};

pub const CHANNEL: &str = "tollgate_changes";
/// How the listening connection shows in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "tollgate-changes";
/// How the heartbeat's connection shows in `pg_stat_activity`.
pub const HEARTBEAT_APPLICATION_NAME: &str = "tollgate-heartbeat";
/// Between attempts to listen again.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// A listener that received nothing for this long (ten heartbeats) reconnects.
pub const SILENT_FOR: Duration = Duration::from_secs(2);

/// Listens until the task is aborted (on shutdown), reconnecting as often as needed.
pub(crate) async fn follow(options: PgConnectOptions, view: View) {
    let heartbeats = tokio::spawn(heartbeat(options.clone(), view.clone()));
    let _stop_heartbeats = AbortOnDrop(heartbeats);
    let mut quiet = false;
    loop {
        // A new pool for every attempt: a dropped `PgListener` hands its connection back to its
        // pool only after an `UNLISTEN`, which on a silently cut connection never completes.
        match listen(&pool_of_one(&options, APPLICATION_NAME), &view).await {
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

/// A pool of one connection, named `name`: never one the requests wait for (nor do the heartbeats
/// wait for a busy request pool), and named so an operator (or a test) can find it.
fn pool_of_one(options: &PgConnectOptions, name: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.clone().application_name(name))
}

/// One listening connection, for as long as it lasts.
async fn listen(pool: &PgPool, view: &View) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Listening from now on: what was held may have missed changes before this point.
    view.channel_connected();
    tracing::debug!("change feed listening");
    loop {
        let Ok(received) = tokio::time::timeout(SILENT_FOR, listener.try_recv()).await else {
            // Not even our own heartbeats: the connection may be cut without a word. The listener
            // is dropped (its pool with it) and `follow` listens on a new connection.
            return Err(sqlx::Error::Protocol(format!("nothing received for {SILENT_FOR:?}")));
        };
        match received? {
            Some(n) => view.notified(n.payload()),
            // The connection was lost and is listening again (sqlx reconnects eagerly).
            None => {
                view.channel_lost();
                view.channel_connected();
            }
        }
    }
}

/// Notifies the channel with this view's heartbeat, every `HEARTBEAT_EVERY`, on its own connection.
async fn heartbeat(options: PgConnectOptions, view: View) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pool = pool_of_one(&options, HEARTBEAT_APPLICATION_NAME);
    loop {
        every.tick().await;
        let notify = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(view.heartbeat());
        match tokio::time::timeout(SILENT_FOR, notify.execute(&pool)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "change feed heartbeat not sent"),
            Err(_) => {
                // Possibly cut silently: a new connection (the stuck one is left to its pool).
                tracing::debug!("change feed heartbeat unanswered; reconnecting");
                pool = pool_of_one(&options, HEARTBEAT_APPLICATION_NAME);
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
