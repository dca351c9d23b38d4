//! The one error type of the storage seam.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (expected sqlite: or postgres://)")]
    UnsupportedUrl,
    /// A uniqueness constraint refused the write.
    #[error("conflict with an existing record")]
    Conflict,
    /// The stored data broke a domain rule (an illegal order transition, an unreadable grant).
    #[error("{0}")]
    Rule(String),
    /// The database cannot be reached now (it failed a moment ago and is not tried again yet, or
    /// no connection could be opened): nothing was done.
    #[error("the database is unavailable")]
    Unavailable,
    /// The transaction this work shared with others (group commit) failed, or its writer
    /// stopped: none of it was committed.
    #[error("{0}")]
    Batch(String),
    /// The transaction this work shared with others (group commit) met a storage fault or lost
    /// its connection (what `health::classify` recognises): none of it was committed, and the
    /// database just faulted, so nothing more should be written now.
    #[error("{0}")]
    Fault(String),
}

impl StoreError {
    /// Whether nothing could be done because the database was unreachable (retrying later may work).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable)
    }

    /// Whether the database refused to write (a full disk, an I/O error, corruption) or the
    /// connection broke (`health::classify`): nothing was committed, and writing again at once
    /// would most likely meet the same fault.
    pub fn is_fault(&self) -> bool {
        match self {
            StoreError::Fault(_) => true,
            StoreError::Database(e) => super::health::classify(e).is_some(),
            _ => false,
        }
    }
}
