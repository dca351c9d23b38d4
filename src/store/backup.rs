//! An online copy of a SQLite database (`tollgate db backup`). `VACUUM INTO` reads one consistent
//! snapshot (a read transaction: the server keeps writing meanwhile, in WAL mode), and the copy is
//! checked before it is reported. PostgreSQL has pg_dump for this.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::error::StoreError;

/// What `sqlite_backup` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The copy's size in bytes.
    pub bytes: u64,
    /// How many tables it holds (migrations' own included).
    pub tables: i64,
}

/// Writes a consistent copy of the SQLite database at `url` to `dest`, which must not exist, then
/// opens the copy read-only and runs `PRAGMA integrity_check` on it. Never creates or migrates the
/// source.
pub async fn sqlite_backup(url: &str, dest: &Path) -> Result<Backup, StoreError> {
    let dest_text = dest.to_str().ok_or_else(|| StoreError::Rule(format!("{} is not a UTF-8 path", dest.display())))?.to_owned();
    let source = SqliteConnectOptions::from_str(url)?
        .create_if_missing(false)
        // Not read-only: a read-only connection to a WAL database left alone would leave -wal and
        // -shm files behind. VACUUM INTO only reads; the last connection to close checkpoints.
        .busy_timeout(Duration::from_secs(10))
        .disable_statement_logging();
    let mut conn = source.connect().await?;
    // Claimed atomically (never an existing file, nor one created meanwhile), readable by its owner
    // only (the copy holds password hashes); SQLite fills an empty file.
    claim(dest)?;
    // The file name is a bound value, not SQL text: any name is safe.
    let copied = sqlx::query("VACUUM INTO $1").bind(&dest_text).execute(&mut conn).await;
    let _ = conn.close().await;
    if let Err(e) = copied {
        let _ = std::fs::remove_file(dest);
        return Err(e.into());
    }

    let copy = SqliteConnectOptions::new().filename(dest).read_only(true).disable_statement_logging();
    let mut conn = copy.connect().await?;
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await?;
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetch_one(&mut conn).await?;
    conn.close().await?;
    if verdict != "ok" {
        return Err(StoreError::Rule(format!("the copy at {dest_text} fails SQLite's integrity check: {verdict}")));
    }
    let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    Ok(Backup { bytes, tables })
}

/// Creates `dest` empty, failing if anything is there already.
fn claim(dest: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(dest).map(drop).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            StoreError::Rule(format!("{} already exists; a backup never overwrites", dest.display()))
        }
        _ => StoreError::Rule(format!("cannot create {}: {e}", dest.display())),
    })
}
