//! Faults under load: the disk fills in the middle of a stream of webhook deliveries and frees
//! again. Whatever was answered 200 is in the database after a restart, and the server recovers
//! by itself once there is space. SQLite: the database on a small tmpfs. PostgreSQL: the test
//! database in a tablespace on a small tmpfs (table files fill; the server's WAL does not).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate::stripe::webhook::sign;

use crate::helpers::binary::serve;
use crate::helpers::stripe::{event, WHSEC};
use crate::helpers::{in_ci, skip};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop. Needs root (CI runs as root).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes `path` until the file system says it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5au8; 64 * 1024];
    while f.write_all(&chunk).and_then(|_| f.flush()).is_ok() {}
    let _ = f.sync_all();
    // Whatever a smaller write can still take goes too.
    let small = vec![0x5au8; 512];
    while f.write_all(&small).and_then(|_| f.flush()).is_ok() {}
}

/// The database under test, on the tmpfs.
enum Target {
    Sqlite { url: String },
    Postgres { url: String, admin: String, db: String, tablespace: String },
}

impl Target {
    fn url(&self) -> &str {
        match self {
            Target::Sqlite { url } | Target::Postgres { url, .. } => url,
        }
    }
}

async fn target_on(mnt: &Path) -> Result<Target, String> {
    let Some(admin) = std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        return Ok(Target::Sqlite { url: format!("sqlite://{}", mnt.join("tollgate.db").display()) });
    };
    use sqlx::Connection;
    // PostgreSQL writes the tablespace as its own OS user.
    let dir: PathBuf = mnt.join("pg");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let chown = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().map_err(|e| e.to_string())?;
    if !chown.success() {
        return Err("cannot hand the tablespace directory to the postgres user".to_owned());
    }
    let mut conn = sqlx::PgConnection::connect(&admin).await.map_err(|e| e.to_string())?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (tablespace, db) = (format!("tollgate_full_{suffix}"), format!("tollgate_test_{suffix}"));
    sqlx::query(&format!("CREATE TABLESPACE {tablespace} LOCATION '{}'", dir.display()))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("CREATE TABLESPACE (is PostgreSQL on this machine?): {e}"))?;
    sqlx::query(&format!("CREATE DATABASE {db} TABLESPACE {tablespace}")).execute(&mut conn).await.map_err(|e| e.to_string())?;
    let mut url = url::Url::parse(&admin).map_err(|e| e.to_string())?;
    url.set_path(&db);
    Ok(Target::Postgres { url: url.to_string(), admin, db, tablespace })
}

async fn drop_target(target: &Target) {
    if let Target::Postgres { admin, db, tablespace, .. } = target {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&mut conn).await;
            let _ = sqlx::query(&format!("DROP TABLESPACE IF EXISTS {tablespace}")).execute(&mut conn).await;
        }
    }
}

#[derive(Default)]
struct Tally {
    acknowledged: BTreeSet<String>,
    /// Status codes seen, in order, with the phase they were sent in.
    answers: Vec<(&'static str, u16)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_never_acknowledges_what_it_did_not_commit_and_recovers_by_itself() {
    const TEST: &str = "faults::a_full_disk_never_acknowledges_what_it_did_not_commit_and_recovers_by_itself";
    let postgres = std::env::var("TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty());
    // Other tests must not create databases on the server while this one keeps a disk full.
    // Polled, never queued for: a queued writer would make a test that holds one read guard (its
    // database) and asks for a second (the app's) wait behind it forever.
    let _full_disk = if postgres {
        let lock = crate::helpers::postgres_disk_lock();
        loop {
            if let Ok(guard) = lock.try_write() {
                break Some(guard);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        None
    };
    // A fresh PostgreSQL database copies its template (about 8 MB) into the tablespace.
    // SQLite: room for the schema, a WAL of 1000 pages (4 MiB) before its checkpoint, and the
    // events of the whole test after the filler goes (8 MiB was too little once the schema grew).
    let size = if postgres { "48m" } else { "16m" };
    let mnt = match Tmpfs::mount(size) {
        Ok(m) => m,
        Err(why) => {
            assert!(!in_ci(), "CI runs as root and must run this test: {why}");
            return skip(TEST, &format!("cannot mount a tmpfs here ({why}); run as root"));
        }
    };
    let target = match target_on(mnt.path()).await {
        Ok(t) => t,
        Err(why) => {
            assert!(!in_ci(), "{why}");
            return skip(TEST, &why);
        }
    };
    let workdir = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL", target.url()), ("STRIPE_WEBHOOK_SECRET", WHSEC)];
    let server = serve(workdir.path(), &env);
    let base = format!("http://{}", server.addr);
    let client = crate::helpers::client();

    let tally = Arc::new(Mutex::new(Tally::default()));
    let phase: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("before"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four senders, distinct events, about 40 a second in all.
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (client, base, tally, phase, stop) = (client.clone(), base.clone(), tally.clone(), phase.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let (id, body) = event("checkout.session.completed", "checkout.session").build();
                    let sent_in = *phase.lock().unwrap();
                    let header = sign(&body, WHSEC, chrono::Utc::now().timestamp());
                    let status = match client
                        .post(format!("{base}/api/v1/webhooks/stripe"))
                        .header("stripe-signature", header)
                        .body(body)
                        .send()
                        .await
                    {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    {
                        let mut t = tally.lock().unwrap();
                        if status == 200 {
                            t.acknowledged.insert(id);
                        }
                        t.answers.push((sent_in, status));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();

    let readyz = |client: reqwest::Client, base: String| async move {
        client.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(readyz(client.clone(), base.clone()).await, 200, "ready before the disk fills");

    // The disk fills, and stays full for 8 s.
    let filler = mnt.path().join("filler");
    *phase.lock().unwrap() = "full";
    fill(&filler);
    let full_since = Instant::now();
    let mut ready_while_full = Vec::new();
    while full_since.elapsed() < Duration::from_secs(8) {
        ready_while_full.push(readyz(client.clone(), base.clone()).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Space returns. For 10 s the server may still be recovering; after that, everything is 200.
    std::fs::remove_file(&filler).unwrap();
    *phase.lock().unwrap() = "recovering";
    tokio::time::sleep(Duration::from_secs(10)).await;
    *phase.lock().unwrap() = "recovered";
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ready_after = readyz(client.clone(), base.clone()).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }

    // A clean stop, then the database as a restarted server would find it.
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    drop(server);
    let store = tollgate::store::connect(&tollgate::config::DatabaseConfig {
        url: secrecy::SecretString::from(target.url().to_owned()),
        max_connections: 2,
        ingest_writers: 4,
        acquire_timeout: Duration::from_secs(5),
        migrate_on_start: false,
    })
    .await
    .unwrap();
    let stored: BTreeSet<String> =
        store.list_events(None, None, 100_000, None).await.unwrap().into_iter().map(|r| r.event_id).collect();
    store.close().await;
    drop_target(&target).await;

    let t = tally.lock().unwrap();
    let count = |p: &str, ok: bool| t.answers.iter().filter(|(ph, s)| *ph == p && (*s == 200) == ok).count();
    let summary = format!(
        "before: {} ok / {} not; full: {} ok / {} not; recovering: {} ok / {} not; recovered: {} ok / {} not; readyz while full: {:?}",
        count("before", true),
        count("before", false),
        count("full", true),
        count("full", false),
        count("recovering", true),
        count("recovering", false),
        count("recovered", true),
        count("recovered", false),
        ready_while_full
    );
    eprintln!("{summary}");
    let lost: Vec<&String> = t.acknowledged.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events are not in the database ({summary})",
        lost.len(),
        t.acknowledged.len()
    );
    assert!(count("full", false) > 0, "the disk filling made deliveries fail ({summary})");
    let failed_after: Vec<u16> = t.answers.iter().filter(|(p, s)| *p == "recovered" && *s != 200).map(|(_, s)| *s).collect();
    assert!(
        failed_after.is_empty(),
        "10 s after space returned every delivery is 200 without a restart: {failed_after:?} ({summary})"
    );
    assert!(count("recovered", true) >= 20, "{summary}");
    assert!(ready_while_full.contains(&503), "/readyz reports a database that cannot write ({summary})");
    assert_eq!(ready_after, 200, "ready again once there is space ({summary})");
}

/// A TCP forwarder to PostgreSQL that the test can cut (every open connection reset, every new
/// one accepted and dropped at once, as a host whose database died would) and restore. It counts
/// the connections it is asked for, cut or not.
struct Cable {
    addr: std::net::SocketAddr,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
    cut: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<Mutex<tokio::task::JoinSet<()>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Cable {
    async fn to(upstream: String) -> Cable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let attempts: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let cut: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let links: Arc<Mutex<tokio::task::JoinSet<()>>> = Arc::default();
        let (a, c, l) = (attempts.clone(), cut.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the peer sees the connection reset
                }
                let upstream = upstream.clone();
                l.lock().unwrap().spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Cable { addr, attempts, cut, links, _accept: accept }
    }

    /// The database "goes down".
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.links.lock().unwrap().abort_all();
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn attempts(&self) -> usize {
        self.attempts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn during_a_database_outage_webhooks_fail_fast_and_service_resumes_when_it_returns() {
    const TEST: &str = "faults::during_a_database_outage_webhooks_fail_fast_and_service_resumes_when_it_returns";
    let Some(db) = crate::helpers::fresh_postgres_database().await else {
        return skip(TEST, "needs PostgreSQL (TEST_DATABASE_URL); an SQLite file cannot become unreachable");
    };
    let db_url = url::Url::parse(&db.url).unwrap();
    let upstream = format!("{}:{}", db_url.host_str().unwrap(), db_url.port().unwrap_or(5432));
    let cable = Cable::to(upstream).await;
    let mut through_cable = db_url.clone();
    through_cable.set_host(Some("127.0.0.1")).unwrap();
    through_cable.set_port(Some(cable.addr.port())).unwrap();
    let app = crate::helpers::spawn_app_with(&[
        ("DATABASE_URL", through_cable.as_str()),
        ("STRIPE_WEBHOOK_SECRET", WHSEC),
        ("TOLLGATE_DATABASE_ACQUIRE_TIMEOUT", "3s"),
    ])
    .await;
    let deliver = || async {
        let (_, body) = event("checkout.session.completed", "checkout.session").build();
        let header = sign(&body, WHSEC, chrono::Utc::now().timestamp());
        let started = Instant::now();
        let r = app
            .client
            .post(app.url("/api/v1/webhooks/stripe"))
            .header("stripe-signature", header)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()), started.elapsed())
    };
    assert_eq!(deliver().await.0, 200);

    cable.cut();
    let (status, _, first) = deliver().await;
    assert_eq!(status, 503, "the delivery that finds the database gone");
    let attempts_before = cable.attempts();
    let started = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(deliver().await);
    }
    let took = started.elapsed();
    let attempts_during = cable.attempts() - attempts_before;
    eprintln!("outage: first failure after {first:?}; the next 20 after {took:?} in all; {attempts_during} connection attempts meanwhile");
    for (status, retry_after, _) in &answers {
        assert_eq!(*status, 503, "refused while the database is known down");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    // Refused at once: the 20 together took less than one acquire timeout (3 s) would, and at
    // most one caller a second asked the database (each used to try it, twice).
    assert!(took < Duration::from_secs(3), "the 20 deliveries waited on the database ({took:?})");
    let allowed = 2 + usize::try_from(took.as_secs()).unwrap();
    assert!(attempts_during <= allowed, "{attempts_during} connection attempts during 20 deliveries in {took:?}");
    let readyz = app.get("/readyz").await;
    assert_eq!(readyz.status(), 503);

    cable.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, _) = deliver().await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "deliveries succeed again once the database is back (last: {status})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn real_driver_errors_are_classified_by_their_own_engine() {
    use sqlx::Connection;
    use tollgate::store::health::{classify, Fault};
    // SQLite: a database that may not grow answers SQLITE_FULL, a real "database or disk is full".
    let mut lite = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
    sqlx::query("CREATE TABLE t (x BLOB)").execute(&mut lite).await.unwrap();
    sqlx::query("PRAGMA max_page_count = 3").execute(&mut lite).await.unwrap();
    let full = sqlx::query("INSERT INTO t VALUES (zeroblob(1000000))").execute(&mut lite).await.unwrap_err();
    assert!(full.to_string().contains("full"), "{full}");
    assert_eq!(classify(&full), Some(Fault::Storage));
    let syntax = sqlx::query("SELEC 1").execute(&mut lite).await.unwrap_err();
    assert_eq!(classify(&syntax), None);

    // PostgreSQL: SQLSTATEs raised for real by the server, including all-digit ones that must not
    // be read as SQLite codes (22026 & 0xff would be SQLITE_IOERR).
    let Some(url) = std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        return skip(
            "faults::real_driver_errors_are_classified_by_their_own_engine (PostgreSQL part)",
            "TEST_DATABASE_URL is not set",
        );
    };
    let mut pg = sqlx::PgConnection::connect(&url).await.unwrap();
    for (code, expected) in [
        ("53100", Some(Fault::Storage)),
        ("58030", Some(Fault::Storage)),
        ("57P01", Some(Fault::Unreachable)),
        ("22026", None),
        ("23505", None),
    ] {
        let e = sqlx::query(&format!("DO $$ BEGIN RAISE EXCEPTION 'probe' USING ERRCODE = '{code}'; END $$"))
            .execute(&mut pg)
            .await
            .unwrap_err();
        assert_eq!(e.as_database_error().and_then(|d| d.code()).as_deref(), Some(code));
        assert_eq!(classify(&e), expected, "SQLSTATE {code}");
    }
}
