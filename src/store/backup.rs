//! An online copy of a SQLite database (`tollgate db backup`). `VACUUM INTO` reads one consistent
//! snapshot (a read transaction: the server keeps writing meanwhile, in WAL mode), and the copy is
//! checked before it is given its name. PostgreSQL has pg_dump for this.
//!
//! Where the copy goes: SQLite opens with URI filenames enabled, so a name starting with `file:`
//! would be read as a URI (`file:copy.db?mode=…`); every name SQLite sees here is absolute (it
//! starts with `/`, which is never a URI), so `file:copy.db` is the file of that name. SQLite
//! writes a temporary file this process created (0600, `create_new`) in the destination's
//! directory; once written, synced and checked, it is hard-linked to the destination, which fails
//! if anything is there (never an overwrite, even of a file created meanwhile), and the temporary
//! name is removed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::error::StoreError;

/// What `sqlite_backup` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// Where: the destination made absolute (its directory canonicalised).
    pub path: PathBuf,
    /// The copy's size in bytes.
    pub bytes: u64,
    /// How many tables it holds (migrations' own included).
    pub tables: i64,
}

/// Writes a consistent copy of the SQLite database at `url` to `dest`, which must not exist, after
/// checking it (`PRAGMA integrity_check`, read-only). Never creates or migrates the source; on any
/// failure nothing is left at `dest` nor beside it.
pub async fn sqlite_backup(url: &str, dest: &Path) -> Result<Backup, StoreError> {
    let dest = absolute(dest)?;
    let dir = dest.parent().expect("an absolute path with a file name has a parent").to_owned();
    if std::fs::symlink_metadata(&dest).is_ok() {
        return Err(exists(&dest));
    }
    let source = SqliteConnectOptions::from_str(url)?
        .create_if_missing(false)
        // Not read-only: a read-only connection to a WAL database left alone would leave -wal and
        // -shm files behind. VACUUM INTO only reads; the last connection to close checkpoints.
        .busy_timeout(Duration::from_secs(10))
        .disable_statement_logging();
    let mut conn = source.connect().await?;
    let (temp, file) = match claim_temporary(&dir) {
        Ok(claimed) => claimed,
        Err(e) => {
            let _ = conn.close().await;
            return Err(e);
        }
    };
    let written = write_and_check(&mut conn, &temp, &file, &dest).await;
    let _ = conn.close().await;
    // The temporary name goes whatever happened; on success the copy lives on under `dest`.
    let _ = std::fs::remove_file(&temp);
    let tables = written?;
    let _ = File::open(&dir).and_then(|d| d.sync_all());
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Backup { path: dest, bytes, tables })
}

/// VACUUM INTO `temp` (the file this process holds open as `file`), sync it, check it, then link
/// it to `dest`. The number of tables.
async fn write_and_check(conn: &mut sqlx::SqliteConnection, temp: &Path, file: &File, dest: &Path) -> Result<i64, StoreError> {
    let temp_text = temp.to_str().ok_or_else(|| StoreError::Rule(format!("{} is not a UTF-8 path", temp.display())))?;
    // The file name is a bound value, not SQL text: any name is safe.
    sqlx::query("VACUUM INTO $1").bind(temp_text).execute(&mut *conn).await?;
    same_file(file, temp)?;
    file.sync_all().map_err(|e| StoreError::Rule(format!("cannot sync the copy: {e}")))?;

    let copy = SqliteConnectOptions::new().filename(temp).read_only(true).disable_statement_logging();
    let mut check = copy.connect().await?;
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut check).await?;
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetch_one(&mut check).await?;
    check.close().await?;
    if verdict != "ok" {
        return Err(StoreError::Rule(format!(
            "the copy fails SQLite's integrity check ({verdict}); {} was not written",
            dest.display()
        )));
    }
    same_file(file, temp)?;
    // link(2) never replaces: AlreadyExists if anything took the name meanwhile.
    std::fs::hard_link(temp, dest).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => exists(dest),
        _ => StoreError::Rule(format!("cannot create {}: {e}", dest.display())),
    })?;
    if let Err(e) = same_file(file, dest) {
        let _ = std::fs::remove_file(dest);
        return Err(e);
    }
    Ok(tables)
}

/// `dest` as an absolute path: its directory canonicalised (it must exist), then its file name.
fn absolute(dest: &Path) -> Result<PathBuf, StoreError> {
    let name = match dest.file_name() {
        Some(name) if !dest.as_os_str().to_string_lossy().ends_with('/') => name,
        _ => return Err(StoreError::Rule(format!("{} names no file to back up to", dest.display()))),
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(parent)
        .map_err(|e| StoreError::Rule(format!("cannot use the directory {}: {e}", parent.display())))?;
    let path = dir.join(name);
    if path.to_str().is_none() {
        return Err(StoreError::Rule(format!("{} is not a UTF-8 path", path.display())));
    }
    Ok(path)
}

fn exists(dest: &Path) -> StoreError {
    StoreError::Rule(format!("{} already exists; a backup never overwrites", dest.display()))
}

/// A new empty file in `dir`, readable by its owner only (the copy holds password hashes), under a
/// name nobody else chose: (its path, the open file).
fn claim_temporary(dir: &Path) -> Result<(PathBuf, File), StoreError> {
    let mut last = None;
    for _ in 0..8 {
        let path = dir.join(format!(".tollgate-backup-{}.tmp", uuid::Uuid::new_v4().simple()));
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(StoreError::Rule(format!("cannot create a file in {}: {e}", dir.display()))),
        }
    }
    Err(StoreError::Rule(format!("cannot create a file in {}: {}", dir.display(), last.expect("tried"))))
}

/// That the name `path` is the file this process created (not a file or link put there instead).
fn same_file(file: &File, path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata().map_err(|e| StoreError::Rule(format!("cannot stat the copy: {e}")))?;
        let named = std::fs::symlink_metadata(path)
            .map_err(|e| StoreError::Rule(format!("the copy at {} vanished: {e}", path.display())))?;
        if !named.file_type().is_file() || (held.dev(), held.ino()) != (named.dev(), named.ino()) {
            return Err(StoreError::Rule(format!(
                "{} was replaced while the copy was written; nothing was backed up",
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = (file, path);
    Ok(())
}
