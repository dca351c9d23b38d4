//! What both engines do the same way with their pool: hand out a connection unless the database
//! is known to be down, discard one that saw a storage fault, run a transaction on it, and what
//! readiness writes.

use super::error::StoreError;
use super::health::{classify, Admission, Fault, Health};

/// A connection for one operation, unless the database is known to be down: then the answer is
/// `Unavailable` at once (one caller at a time is let through to find out whether it is back),
/// instead of every request waiting out the acquire timeout.
pub(crate) async fn acquire<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    health: &Health,
    max_connections: u32,
) -> Result<sqlx::pool::PoolConnection<DB>, StoreError> {
    let _probe = match health.admit() {
        Admission::Go => None,
        Admission::Probe(guard) => Some(guard),
        Admission::Refused => return Err(StoreError::Unavailable),
    };
    match pool.acquire().await {
        Ok(conn) => {
            health.reached();
            Ok(conn)
        }
        Err(e) => {
            // With every connection busy this is load; with fewer open than allowed, or a refused
            // or broken connect, the database is not answering: refuse others at once until it does.
            let down = match &e {
                sqlx::Error::PoolTimedOut => pool.size() < max_connections,
                other => classify(other) == Some(Fault::Unreachable),
            };
            if down {
                health.unreachable();
                tracing::error!(error = %e, "database unreachable; refusing requests until it answers again");
            } else {
                tracing::warn!(error = %e, "no database connection became free in time");
            }
            // Either way nothing was done, and a retry may work.
            Err(StoreError::Unavailable)
        }
    }
}

/// For a driver error that is a fault (see [`Health::observe`]): noted, and `conn` is closed when
/// dropped instead of going back to the pool.
fn discard_on_fault<DB: sqlx::Database>(health: &Health, conn: &mut sqlx::pool::PoolConnection<DB>, e: &sqlx::Error) {
    if let Some(fault) = health.observe(e) {
        tracing::error!(error = %e, fault = ?fault, "database fault; discarding the connection that saw it");
        conn.close_on_drop();
    }
}

/// The end of a transaction on `conn` (see [`discard_on_fault`]).
pub(crate) fn settle<DB: sqlx::Database, T>(
    health: &Health,
    mut conn: sqlx::pool::PoolConnection<DB>,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    if let Err(StoreError::Database(e)) = &result {
        discard_on_fault(health, &mut conn, e);
    }
    result
}

/// The end of one statement on `conn` (see [`discard_on_fault`]).
pub(crate) fn observe<DB: sqlx::Database, T>(
    health: &Health,
    conn: &mut sqlx::pool::PoolConnection<DB>,
    result: &Result<T, sqlx::Error>,
) {
    if let Err(e) = result {
        discard_on_fault(health, conn, e);
    }
}

/// `conn()`, `observe()` and `settle()` for an engine's store (fields `pool`, `health`,
/// `max_connections`), which `on_conn!` and `transaction!` call.
macro_rules! impl_connections {
    ($store:ty, $db:ty) => {
        impl $store {
            /// A connection, unless the database is known to be unreachable (see `pool::acquire`).
            pub(crate) async fn conn(&self) -> Result<sqlx::pool::PoolConnection<$db>, $crate::store::error::StoreError> {
                $crate::store::pool::acquire(&self.pool, &self.health, self.max_connections).await
            }

            pub(crate) fn observe<T>(&self, conn: &mut sqlx::pool::PoolConnection<$db>, result: &Result<T, sqlx::Error>) {
                $crate::store::pool::observe(&self.health, conn, result)
            }

            pub(crate) fn settle<T>(
                &self,
                conn: sqlx::pool::PoolConnection<$db>,
                result: Result<T, $crate::store::error::StoreError>,
            ) -> Result<T, $crate::store::error::StoreError> {
                $crate::store::pool::settle(&self.health, conn, result)
            }
        }
    };
}
pub(crate) use impl_connections;

/// Runs one statement `$body` on a connection `$c` of its own (see [`acquire`]), passing its
/// answer through [`observe`]; evaluates to the statement's own `Result`.
macro_rules! on_conn {
    ($self:ident, $c:ident => $body:expr) => {{
        let mut $c = $self.conn().await?;
        let result = $body;
        $self.observe(&mut $c, &result);
        result
    }};
}
pub(crate) use on_conn;

/// Runs `$body` inside a transaction `$tx` on a connection of its own (see [`acquire`]); the body
/// commits. Whatever the body returns passes through [`settle`]. The users the body notes with
/// `invalidation::changed_in_transaction` are forgotten by the store's view once the body is over
/// (after its commit), never before (`invalidation::scoped`).
macro_rules! transaction {
    ($self:ident, $tx:ident => $body:block) => {{
        match $self.conn().await {
            Err(e) => Err(e),
            Ok(mut conn) => {
                let result: Result<_, $crate::store::error::StoreError> =
                    $crate::store::invalidation::scoped(|u| $self.view.invalidate(u), async {
                        #[allow(unused_mut)]
                        let mut $tx = sqlx::Connection::begin(&mut *conn).await?;
                        $body
                    })
                    .await;
                $self.settle(conn, result)
            }
        }
    }};
}
pub(crate) use transaction;

/// The bytes readiness writes: about the size of a large Stripe event, random so nothing shrinks them.
pub(crate) fn probe_filler() -> Vec<u8> {
    use rand::RngCore;
    let mut filler = vec![0u8; 16 * 1024];
    rand::rngs::OsRng.fill_bytes(&mut filler);
    filler
}

/// The verdict of a write probe.
pub(crate) fn writable_verdict(health: &Health, probe: Result<(), StoreError>) -> Result<(), String> {
    match probe {
        Err(StoreError::Unavailable) => Err("unavailable".to_owned()),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the database refused a write");
            Err("cannot write".to_owned())
        }
        Ok(()) => match health.recent_storage_fault() {
            Some(fault) => {
                tracing::warn!(error = %fault, "readiness: the database failed a write in the last seconds");
                Err("cannot write (a write failed in the last 10 s)".to_owned())
            }
            None => Ok(()),
        },
    }
}
