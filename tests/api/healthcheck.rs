//! The operations commands of the binary: `tollgate healthcheck` (a container's HEALTHCHECK) and
//! `tollgate db backup` (an online SQLite copy a server can start on).

use std::process::Output;

use crate::helpers::accounts::{tokens, PASSWORD};
use crate::helpers::binary::{output_text, serve_with, tollgate};
use crate::helpers::shop::shop;
use crate::helpers::spawn_app_with;
use crate::helpers::stripe::WHSEC;

/// Runs the binary off the runtime's threads (the server under test shares them), in an empty
/// directory with only `env`.
async fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        tollgate(dir.path(), &env).args(&args).output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn healthcheck_exits_0_against_a_live_server_found_from_its_own_configuration() {
    let app = spawn_app_with(&[]).await;
    let bind = app.addr.to_string();
    let out = run(&[("TOLLGATE_BIND", &bind), ("DATABASE_URL", &app.database_url)], &["healthcheck"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let line = stdout(&out);
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    assert!(line.starts_with(&format!("healthy: http://{bind}/readyz: 200 OK")), "{line}");
    assert!(line.contains("database ok"), "{line}");

    // A server bound to every address is asked on loopback.
    let any = format!("0.0.0.0:{}", app.addr.port());
    let out = run(&[("TOLLGATE_BIND", &any)], &["healthcheck"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stdout(&out).contains(&format!("http://127.0.0.1:{}/readyz", app.addr.port())), "{}", stdout(&out));
}

#[tokio::test]
async fn healthcheck_exits_1_against_a_dead_port_and_a_server_that_never_answers() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let out = run(&[("TOLLGATE_BIND", &dead)], &["healthcheck"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let line = stderr(&out);
    assert!(line.starts_with("unhealthy: ") && line.contains("cannot connect"), "{line}");
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(stdout(&out).is_empty());

    // Accepted by the kernel, never answered: the probe gives up after --timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let out = run(&[("TOLLGATE_BIND", &silent_addr)], &["healthcheck", "--timeout", "1"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    drop(silent);
}

#[tokio::test]
async fn healthcheck_exits_1_when_readyz_is_503_though_the_process_is_alive() {
    // A server started without its migrations: alive (/healthz 200) but not ready (/readyz 503).
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let server = tokio::task::spawn_blocking({
        let (dir, url) = (dir.path().to_owned(), database_url.clone());
        move || serve_with(&dir, &[("DATABASE_URL", &url), ("TOLLGATE_LOG_FORMAT", "json")], &["--no-migrate"])
    })
    .await
    .unwrap();
    let out = run(&[("TOLLGATE_BIND", &server.addr)], &["healthcheck"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let line = stderr(&out);
    assert!(line.contains("503 Service Unavailable") && line.contains("migration(s) pending"), "{line}");

    // Liveness is one --url away, and answers 200 on the same server.
    let live = format!("http://{}/healthz", server.addr);
    let out = run(&[], &["healthcheck", "--url", &live]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stdout(&out).starts_with(&format!("healthy: {live}: 200 OK")), "{}", stdout(&out));

    // A configuration the server itself would refuse is unhealthy, whatever listens.
    let out = run(&[("TOLLGATE_BIND", "not an address")], &["healthcheck"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(stderr(&out).contains("run tollgate check-config"), "{}", stderr(&out));
}

/// A self-signed certificate for `name` marked as a CA, as `openssl req -x509` makes them (webpki
/// refuses such a certificate as a server's), and its key, written to `dir`: (cert path, key path).
fn certificate(dir: &std::path::Path, name: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let certified = params.self_signed(&key_pair).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.pem()).unwrap();
    std::fs::write(&key, key_pair.serialize_pem()).unwrap();
    (cert.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn healthcheck_over_tls_accepts_the_servers_own_certificate_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "pay.example.test");
    let app = spawn_app_with(&[("TOLLGATE_TLS_CERT", &cert), ("TOLLGATE_TLS_KEY", &key)]).await;
    let bind = app.addr.to_string();
    let port = app.addr.port();

    // Pinned: neither the name (not localhost) nor the CA flag matter, only that it is this one.
    let env = [("TOLLGATE_BIND", bind.as_str()), ("TOLLGATE_TLS_CERT", &cert), ("TOLLGATE_TLS_KEY", &key)];
    let out = run(&env, &["healthcheck"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stdout(&out).starts_with(&format!("healthy: https://localhost:{port}/readyz: 200 OK")), "{}", stdout(&out));

    // Another certificate in TOLLGATE_TLS_CERT than the one served (same name): refused.
    let other = tempfile::tempdir().unwrap();
    let (other_cert, other_key) = certificate(other.path(), "pay.example.test");
    let env = [("TOLLGATE_BIND", bind.as_str()), ("TOLLGATE_TLS_CERT", &other_cert), ("TOLLGATE_TLS_KEY", &other_key)];
    let out = run(&env, &["healthcheck"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(stderr(&out).contains("the server's certificate is not the one in TOLLGATE_TLS_CERT"), "{}", stderr(&out));

    // Plain http to the TLS port is no answer either.
    let out = run(&[], &["healthcheck", "--url", &format!("http://{bind}/readyz")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
}

#[tokio::test]
async fn a_backup_of_a_live_sqlite_database_starts_a_server_that_has_its_orders() {
    // SQLite on both runs: the command is SQLite's online backup.
    let dir = tempfile::tempdir().unwrap();
    let live_url = format!("sqlite://{}", dir.path().join("live.db").display());
    let s = shop(&[("DATABASE_URL", &live_url)]).await;
    let product = s.credits_product(1999, 500).await;
    let checkout = s.checkout(&product).await;
    assert_eq!(s.sandbox(&checkout, "pay").await, 200);
    let order_id = checkout["order_id"].as_str().unwrap();
    assert_eq!(s.order(order_id).await["status"], "paid");

    // Taken while the server runs (its last commits still in the WAL).
    let copy = dir.path().join("backup.db");
    let copy_text = copy.to_str().unwrap().to_owned();
    let out = run(&[("DATABASE_URL", &live_url)], &["db", "backup", &copy_text]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stdout(&out).starts_with(&format!("backed up to {copy_text} (")) && stdout(&out).contains("integrity ok"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600, "the owner's only");
    }
    assert_eq!(s.app.get("/readyz").await.status(), 200, "the live server never noticed");

    // A server on the copy: the buyer logs in and finds the order paid and the credits granted.
    let copy_url = format!("sqlite://{copy_text}");
    let restored = spawn_app_with(&[("DATABASE_URL", &copy_url), ("STRIPE_WEBHOOK_SECRET", WHSEC)]).await;
    let (token, _) = tokens(&restored, "buyer@example.com", PASSWORD).await;
    let order =
        restored.client.get(restored.url(&format!("/api/v1/orders/{order_id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(order.status(), 200);
    let order: serde_json::Value = order.json().await.unwrap();
    assert_eq!(order["status"], "paid");
    assert_eq!(order["amount"], 1999);
    let me = restored.client.get(restored.url("/api/v1/me/entitlements")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(me.json::<serde_json::Value>().await.unwrap()["credit_balance"], 500);
}

#[tokio::test]
async fn db_backup_never_overwrites_and_refuses_postgresql_naming_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let live_url = format!("sqlite://{}", dir.path().join("live.db").display());
    let out = run(&[("DATABASE_URL", &live_url)], &["migrate"]).await;
    assert!(out.status.success(), "{}", output_text(&out));

    // Something already at the path stays as it was.
    let taken = dir.path().join("important.txt");
    std::fs::write(&taken, "not a database").unwrap();
    let out = run(&[("DATABASE_URL", &live_url)], &["db", "backup", taken.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(stderr(&out).contains("already exists; a backup never overwrites"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "not a database");

    // A database that does not exist is not created by backing it up.
    let missing = dir.path().join("missing.db");
    let target = dir.path().join("copy.db");
    let out =
        run(&[("DATABASE_URL", &format!("sqlite://{}", missing.display()))], &["db", "backup", target.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(!missing.exists() && !target.exists(), "neither the source nor the copy was created");

    // PostgreSQL: refused before connecting, with the command to use instead.
    let pg = "postgres://tollgate:secret-password@127.0.0.1:1/tollgate";
    let out = run(&[("DATABASE_URL", pg)], &["db", "backup", target.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(stderr(&out).contains("pg_dump --format=custom"), "{}", stderr(&out));
    assert!(!output_text(&out).contains("secret-password"), "the URL's password is never printed");
    assert!(!target.exists());
}

/// Like `run`, in the directory `dir`.
async fn run_in(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        tollgate(&dir, &env).args(&args).output().unwrap()
    })
    .await
    .unwrap()
}

/// The names in `dir`, sorted.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn db_backup_to_a_name_starting_with_file_colon_writes_that_file_not_a_sqlite_uri() {
    // SQLite opens with URI filenames on: given as is, `file:copy.db` would be the URI of
    // ./copy.db (and `?mode=…` its options) while the file claimed 0600 stayed empty.
    let dir = tempfile::tempdir().unwrap();
    let canonical = std::fs::canonicalize(dir.path()).unwrap();
    let live_url = format!("sqlite://{}", dir.path().join("live.db").display());
    let out = run_in(dir.path(), &[("DATABASE_URL", &live_url)], &["migrate"]).await;
    assert!(out.status.success(), "{}", output_text(&out));

    for name in ["file:copy.db", "file:other.db?mode=memory"] {
        let out = run_in(dir.path(), &[("DATABASE_URL", &live_url)], &["db", "backup", name]).await;
        assert_eq!(out.status.code(), Some(0), "{name}: {}", output_text(&out));
        let written = canonical.join(name);
        assert!(
            stdout(&out).starts_with(&format!("backed up to {} (", written.display())) && stdout(&out).contains("integrity ok"),
            "the absolute path of the file written: {}",
            stdout(&out)
        );
        let bytes = std::fs::read(&written).unwrap();
        assert!(bytes.len() > 4096 && bytes.starts_with(b"SQLite format 3\0"), "{name} holds the copy");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&written).unwrap().permissions().mode() & 0o777, 0o600, "the owner's only");
        }
    }
    // Those two files beside the live database (and its -wal and -shm) and nothing else: no
    // copy.db or other.db, no temporary file left.
    let written: Vec<String> = names_in(dir.path()).into_iter().filter(|n| !n.starts_with("live.db")).collect();
    assert_eq!(written, ["file:copy.db", "file:other.db?mode=memory"]);

    // The copy is a database a server starts on.
    let copy_url = format!("sqlite://{}", canonical.join("file:copy.db").display());
    let out = run_in(dir.path(), &[("DATABASE_URL", &copy_url)], &["migrate"]).await;
    assert!(out.status.success(), "{}", output_text(&out));

    // A relative name in a subdirectory is reported absolute.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let out = run_in(dir.path(), &[("DATABASE_URL", &live_url)], &["db", "backup", "sub/copy.db"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stdout(&out).starts_with(&format!("backed up to {} (", canonical.join("sub/copy.db").display())), "{}", stdout(&out));
    assert_eq!(names_in(&dir.path().join("sub")), ["copy.db"]);
}

#[tokio::test]
async fn db_backup_never_writes_through_an_existing_name_or_a_dangling_link() {
    let dir = tempfile::tempdir().unwrap();
    let live_url = format!("sqlite://{}", dir.path().join("live.db").display());
    let out = run_in(dir.path(), &[("DATABASE_URL", &live_url)], &["migrate"]).await;
    assert!(out.status.success(), "{}", output_text(&out));

    // An existing file under a `file:` name stays as it was.
    std::fs::write(dir.path().join("file:taken.db"), "not a database").unwrap();
    let out = run_in(dir.path(), &[("DATABASE_URL", &live_url)], &["db", "backup", "file:taken.db"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(stderr(&out).contains("already exists; a backup never overwrites"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(dir.path().join("file:taken.db")).unwrap(), "not a database");

    // A symbolic link to a file that does not exist (yet): not followed, nothing created there.
    #[cfg(unix)]
    {
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("stolen.db");
        std::os::unix::fs::symlink(&target, dir.path().join("link.db")).unwrap();
        let out = run_in(dir.path(), &[("DATABASE_URL", &live_url)], &["db", "backup", "link.db"]).await;
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
        assert!(stderr(&out).contains("already exists; a backup never overwrites"), "{}", stderr(&out));
        assert!(!target.exists(), "nothing written where the link points");
        assert!(names_in(elsewhere.path()).is_empty());
    }

    // A directory that does not exist, and a name that is a directory: refused, nothing left.
    let out = run_in(dir.path(), &[("DATABASE_URL", &live_url)], &["db", "backup", "nowhere/copy.db"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(stderr(&out).contains("cannot use the directory nowhere"), "{}", stderr(&out));
    let out = run_in(dir.path(), &[("DATABASE_URL", &live_url)], &["db", "backup", "."]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let left: Vec<String> = names_in(dir.path()).into_iter().filter(|n| n.contains("tollgate-backup")).collect();
    assert!(left.is_empty(), "no temporary file left: {left:?}");
}

/// Serves the certificate chain `cert` with the private key `key` (whichever key that is: rustls
/// checks the pair only in `with_single_cert`, not for a resolver), at one TLS version, answering
/// every request `200 {"checks":{"database":"ok"}}`. Its address.
async fn tls_server_with_key(cert: &str, key: &rcgen::KeyPair, version: &'static rustls::SupportedProtocolVersion) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Debug)]
    struct Always(Arc<rustls::sign::CertifiedKey>);
    impl rustls::server::ResolvesServerCert for Always {
        fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<_, _>>().unwrap();
    let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let signing = provider.key_provider.load_private_key(der).unwrap();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signing));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(certified)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"status":"ready","checks":{"database":"ok"}}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn healthcheck_over_tls_refuses_the_pinned_certificate_served_with_another_key() {
    // The pinned certificate is public (anyone who connects gets it): what proves the server is
    // this one is the handshake signed by the certificate's key. Same certificate, another key:
    // refused, at both TLS versions (TLS 1.2 and 1.3 sign differently).
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["pay.example.test".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let own_key = rcgen::KeyPair::generate().unwrap();
    let cert = dir.path().join("pay.crt");
    let key = dir.path().join("pay.key");
    std::fs::write(&cert, params.self_signed(&own_key).unwrap().pem()).unwrap();
    std::fs::write(&key, own_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // The impostor's key: the same algorithm (ECDSA P-256), so only the signature can tell.
    let other_key = rcgen::KeyPair::generate().unwrap();
    assert_eq!(other_key.algorithm(), own_key.algorithm());

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // The control: this test server with the certificate's own key is healthy.
        let honest = tls_server_with_key(cert, &own_key, version).await;
        let env = [("TOLLGATE_BIND", honest.as_str()), ("TOLLGATE_TLS_CERT", cert), ("TOLLGATE_TLS_KEY", key)];
        let out = run(&env, &["healthcheck"]).await;
        assert_eq!(out.status.code(), Some(0), "{:?}: {}", version.version, output_text(&out));

        let impostor = tls_server_with_key(cert, &other_key, version).await;
        let env = [("TOLLGATE_BIND", impostor.as_str()), ("TOLLGATE_TLS_CERT", cert), ("TOLLGATE_TLS_KEY", key)];
        let out = run(&env, &["healthcheck"]).await;
        assert_eq!(out.status.code(), Some(1), "{:?}: {}", version.version, output_text(&out));
        let line = stderr(&out);
        assert!(
            line.starts_with("unhealthy: ")
                && line.contains("presents the certificate in TOLLGATE_TLS_CERT but did not sign the handshake with its key")
                && line.contains("BadSignature"),
            "{:?}: {line}",
            version.version
        );
        assert!(!line.contains("not the one in TOLLGATE_TLS_CERT"), "it is the pinned certificate: {line}");
        assert!(stdout(&out).is_empty());
    }
}
