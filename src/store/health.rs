//! What a store knows about its database from the errors it met: whether the database looks
//! unreachable (then callers are refused at once instead of each waiting out the acquire timeout),
//! and when it last failed to write (a full disk, an I/O error), which readiness reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the database counts as down after a connection failure before one caller may try it
/// again (the others keep failing fast while that one tries).
pub const RETRY_DOWN_AFTER: Duration = Duration::from_secs(1);

/// How long readiness reports a storage fault after the last one.
pub const FAULT_REPORTED_FOR: Duration = Duration::from_secs(10);

/// How long one readiness write answers for: probes in between share it, so hammering `/readyz`
/// costs at most one write a second.
pub const PROBE_ANSWERS_FOR: Duration = Duration::from_secs(1);

/// What kind of trouble an error from the database driver means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database refused to write: disk full, I/O error, corruption. The connection that saw
    /// it is discarded.
    Storage,
    /// The database could not be reached (refused, reset, timed out, shutting down).
    Unreachable,
}

/// Classifies a driver error: SQLite result codes (primary code in the low byte), PostgreSQL
/// SQLSTATEs, each asked of its own engine's error type.
pub fn classify(e: &sqlx::Error) -> Option<Fault> {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code()?;
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLITE_IOERR 10, SQLITE_CORRUPT 11, SQLITE_FULL 13, SQLITE_CANTOPEN 14, SQLITE_NOTADB 26.
                let primary = code.parse::<i32>().ok()? & 0xff;
                return matches!(primary, 10 | 11 | 13 | 14 | 26).then_some(Fault::Storage);
            }
            match code.as_ref() {
                // disk_full, out_of_memory, io_error, data_corrupted, index_corrupted
                "53100" | "53200" | "58030" | "XX001" | "XX002" => Some(Fault::Storage),
                // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
                "57P01" | "57P02" | "57P03" | "53300" => Some(Fault::Unreachable),
                _ => None,
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Some(Fault::Unreachable),
        _ => None,
    }
}

/// One per store, shared with the pool's connection hooks.
pub struct Health {
    origin: Instant,
    /// Milliseconds since `origin` until which the database counts as down; 0 when it is up.
    down_until: AtomicU64,
    /// A caller is trying the database while it counts as down.
    probing: AtomicBool,
    /// Milliseconds since `origin` of the last storage fault, plus one; 0 when there was none.
    last_fault: AtomicU64,
    last_fault_text: Mutex<String>,
    /// How many storage faults and failures to reach the database were met (for `/metrics`).
    storage_faults: AtomicU64,
    unreachable_faults: AtomicU64,
    /// The last readiness write and when it was made; held while one is being made.
    probe: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// May a caller use the database now?
pub enum Admission<'a> {
    Go,
    /// The database counts as down, but it is this caller's turn to try it.
    Probe(ProbeGuard<'a>),
    Refused,
}

/// Ends a probe when dropped, however the probing caller ends (a dropped request included).
pub struct ProbeGuard<'a>(&'a Health);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::SeqCst);
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            origin: Instant::now(),
            down_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            last_fault: AtomicU64::new(0),
            last_fault_text: Mutex::new(String::new()),
            storage_faults: AtomicU64::new(0),
            unreachable_faults: AtomicU64::new(0),
            probe: tokio::sync::Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    pub fn admit(&self) -> Admission<'_> {
        let until = self.down_until.load(Ordering::SeqCst);
        if until == 0 {
            return Admission::Go;
        }
        if self.now_ms() < until || self.probing.swap(true, Ordering::SeqCst) {
            return Admission::Refused;
        }
        Admission::Probe(ProbeGuard(self))
    }

    /// A connection was had: the database is up.
    pub fn reached(&self) {
        self.down_until.store(0, Ordering::SeqCst);
    }

    /// The database could not be reached.
    pub fn unreachable(&self) {
        self.unreachable_faults.fetch_add(1, Ordering::Relaxed);
        let until = self.now_ms() + u64::try_from(RETRY_DOWN_AFTER.as_millis()).unwrap_or(1000);
        self.down_until.store(until, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down_until.load(Ordering::SeqCst) != 0
    }

    /// Notes `e` if it says the database could not write; returns its kind. Only a failure to
    /// connect counts the database as down ([`Health::unreachable`], from the pool): one broken
    /// connection (a terminated backend, a reset socket) is that connection's problem.
    pub fn observe(&self, e: &sqlx::Error) -> Option<Fault> {
        let fault = classify(e)?;
        match fault {
            Fault::Storage => self.storage_faults.fetch_add(1, Ordering::Relaxed),
            Fault::Unreachable => self.unreachable_faults.fetch_add(1, Ordering::Relaxed),
        };
        if fault == Fault::Storage {
            *self.last_fault_text.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
            self.last_fault.store(self.now_ms(), Ordering::SeqCst);
        }
        Some(fault)
    }

    /// How many faults were met since start: (storage, unreachable). A failure to connect and an
    /// error that says the database went away each count once.
    pub fn fault_counts(&self) -> (u64, u64) {
        (self.storage_faults.load(Ordering::Relaxed), self.unreachable_faults.load(Ordering::Relaxed))
    }

    /// The last storage fault, if it is recent enough to report.
    pub fn recent_storage_fault(&self) -> Option<String> {
        let at = self.last_fault.load(Ordering::SeqCst);
        if at == 0 || self.now_ms().saturating_sub(at) > u64::try_from(FAULT_REPORTED_FOR.as_millis()).unwrap_or(10_000) {
            return None;
        }
        Some(self.last_fault_text.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// The answer of a readiness write made at most [`PROBE_ANSWERS_FOR`] ago, or of `probe` run
    /// now; concurrent callers wait for the one probe in flight.
    pub async fn probe_once<F>(&self, probe: F) -> Result<(), String>
    where
        F: std::future::Future<Output = Result<(), String>>,
    {
        let mut last = self.probe.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < PROBE_ANSWERS_FOR {
                return answer.clone();
            }
        }
        let answer = probe.await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    /// Whether a connection opened `age` ago predates the last storage fault (and so may have
    /// seen it): such a connection is closed instead of being used again.
    pub fn predates_last_fault(&self, age: Duration) -> bool {
        let at = self.last_fault.load(Ordering::SeqCst);
        let opened = self.now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        at != 0 && opened <= at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_at_a_time_tries_a_database_that_is_down() {
        let h = Health::new();
        assert!(matches!(h.admit(), Admission::Go));
        h.unreachable();
        assert!(matches!(h.admit(), Admission::Refused), "refused at once while down");
        std::thread::sleep(RETRY_DOWN_AFTER + Duration::from_millis(20));
        let probe = h.admit();
        assert!(matches!(probe, Admission::Probe(_)));
        assert!(matches!(h.admit(), Admission::Refused), "only one probe at a time");
        drop(probe);
        assert!(matches!(h.admit(), Admission::Probe(_)), "a dropped probe lets the next caller try");
        h.reached();
        assert!(matches!(h.admit(), Admission::Go));
    }

    #[test]
    fn connections_older_than_a_storage_fault_are_not_reused() {
        let h = Health::new();
        assert!(!h.predates_last_fault(Duration::from_secs(3600)), "no fault yet");
        std::thread::sleep(Duration::from_millis(20));
        h.last_fault.store(h.now_ms(), Ordering::SeqCst);
        assert!(h.predates_last_fault(Duration::from_millis(15)), "opened before the fault");
        assert!(h.predates_last_fault(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!h.predates_last_fault(Duration::ZERO), "opened after the fault");
        assert!(h.recent_storage_fault().is_some());
    }

    #[test]
    fn driver_errors_are_classified() {
        assert_eq!(classify(&sqlx::Error::PoolClosed), Some(Fault::Unreachable));
        assert_eq!(classify(&sqlx::Error::Io(std::io::Error::other("reset"))), Some(Fault::Unreachable));
        assert_eq!(classify(&sqlx::Error::RowNotFound), None);
    }

    #[test]
    fn faults_are_counted_by_kind() {
        let h = Health::new();
        assert_eq!(h.observe(&sqlx::Error::RowNotFound), None);
        h.observe(&sqlx::Error::PoolClosed);
        h.unreachable();
        assert_eq!(h.fault_counts(), (0, 2));
    }
}
