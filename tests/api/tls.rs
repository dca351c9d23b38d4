use crate::helpers::spawn_app_with;

#[tokio::test]
async fn tollgate_serves_https_itself_with_hsts() {
    let _ = crate::helpers::client();
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();

    let app =
        spawn_app_with(&[("TOLLGATE_TLS_CERT", cert_path.to_str().unwrap()), ("TOLLGATE_TLS_KEY", key_path.to_str().unwrap())])
            .await;
    assert!(app.base.starts_with("https://"));
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("strict-transport-security").unwrap(), "max-age=63072000; includeSubDomains");

    let plain = crate::helpers::client().get(format!("http://localhost:{}/healthz", app.addr.port())).send().await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true), "plain http is not served on the TLS port");
}

// ---- TLS operations: `cert dev`, SIGHUP reload, protocol versions, the http→https redirect ----

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::SupportedProtocolVersion;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::helpers::binary::{self, Server};

const ALL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn self_signed() -> rcgen::CertifiedKey {
    rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap()
}

/// Writes `pair` as cert.pem and key.pem in `dir`.
fn write_pair(dir: &Path, pair: &rcgen::CertifiedKey) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// A rustls client (ring) trusting only `trusted`, speaking only `versions`; it never resumes a
/// session, so every connection makes a full handshake and sees the certificate served now.
fn client_config(
    trusted: &[CertificateDer<'static>],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add(c.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

async fn tls_connect(addr: &str, name: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await.unwrap()
}

/// The leaf certificate the server presented on `stream`.
fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

/// One HTTP/1.1 request on a kept-alive connection: the status and body of its response.
async fn http1_get<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, path: &str) -> (u16, String) {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                return (status, String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "the connection closed before the response was complete: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The next log line of `server` with this message (earlier ones are skipped).
fn wait_for_log(server: &Server, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let line = server
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line {message:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == message {
            return v;
        }
    }
}

fn hang_up(server: &Server) {
    let status = std::process::Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn serve_tls(dir: &Path, cert: &Path, key: &Path, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("TOLLGATE_TLS_CERT", cert.to_str().unwrap()), ("TOLLGATE_TLS_KEY", key.to_str().unwrap())];
    env.extend_from_slice(extra);
    binary::serve(dir, &env)
}

#[tokio::test]
async fn cert_dev_writes_a_certificate_that_is_served_and_trusted_by_a_client_trusting_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let run = |args: &[&str]| binary::tollgate(dir.path(), &[]).args(args).output().unwrap();
    let outdir = out.to_str().unwrap();

    let first = run(&["cert", "dev", "--out", outdir, "--host", "tollgate.test"]);
    let text = binary::output_text(&first);
    assert!(first.status.success(), "{text}");
    let (cert_path, key_path) = (out.join("tollgate-dev-cert.pem"), out.join("tollgate-dev-key.pem"));
    for expected in [
        // Paths in commands are shell-quoted.
        format!("TOLLGATE_TLS_CERT='{}'", cert_path.display()),
        format!("TOLLGATE_TLS_KEY='{}'", key_path.display()),
        format!("curl --cacert '{}'", cert_path.display()),
        "update-ca-certificates".to_owned(),
        "security add-trusted-cert".to_owned(),
        "Firefox".to_owned(),
        "localhost, 127.0.0.1, ::1, tollgate.test".to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected:?} missing from {text}");
    }
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    assert!(!text.contains(key_pem.lines().nth(1).unwrap()), "the key is never printed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // Existing files are kept unless --force.
    let cert_pem = std::fs::read_to_string(&cert_path).unwrap();
    let again = run(&["cert", "dev", "--out", outdir]);
    assert!(!again.status.success());
    assert!(binary::output_text(&again).contains("--force"), "{}", binary::output_text(&again));
    assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), cert_pem);
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key_pem);

    // Served as written, trusted by a client that trusts nothing else.
    let server = serve_tls(dir.path(), &cert_path, &key_path, &[]);
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let trusting = client_config(std::slice::from_ref(&cert), ALL_VERSIONS);
    for name in ["localhost", "127.0.0.1", "tollgate.test"] {
        let mut stream = tls_connect(&server.addr, name, trusting.clone()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(presented(&stream), cert.as_ref());
        let (status, body) = http1_get(&mut stream, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#), "{name}");
    }
    // A name the certificate does not cover, and a client trusting another certificate, fail.
    assert!(tls_connect(&server.addr, "example.com", trusting).await.is_err());
    assert!(tls_connect(&server.addr, "localhost", client_config(&[self_signed().cert.der().clone()], ALL_VERSIONS))
        .await
        .is_err());
    drop(server);

    let forced = run(&["cert", "dev", "--out", outdir, "--force"]);
    assert!(forced.status.success(), "{}", binary::output_text(&forced));
    assert_ne!(std::fs::read_to_string(&cert_path).unwrap(), cert_pem);
    assert_ne!(std::fs::read_to_string(&key_path).unwrap(), key_pem);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections_while_an_open_connection_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (self_signed(), self_signed());
    let (cert, key) = write_pair(dir.path(), &old);
    let server = serve_tls(dir.path(), &cert, &key, &[]);
    let loaded =
        server.startup.iter().find(|l| l.contains("TLS certificate loaded")).expect("the certificate is logged at start");
    assert!(loaded.contains(&tollgate::http::tls::fingerprint_sha256(old.cert.der())), "{loaded}");
    let client = client_config(&[old.cert.der().clone(), new.cert.der().clone()], ALL_VERSIONS);

    let mut before = tls_connect(&server.addr, "localhost", client.clone()).await.unwrap();
    assert_eq!(presented(&before), old.cert.der().as_ref());
    assert_eq!(http1_get(&mut before, "/healthz").await.0, 200);

    write_pair(dir.path(), &new);
    hang_up(&server);
    let reloaded = wait_for_log(&server, "TLS certificate reloaded");
    assert_eq!(reloaded["level"], "INFO");
    assert_eq!(reloaded["fingerprint_sha256"], tollgate::http::tls::fingerprint_sha256(new.cert.der()));
    let expiry = tollgate::http::tls::not_after(new.cert.der()).unwrap().to_rfc3339();
    assert_eq!(reloaded["not_after"], expiry);
    let line = reloaded.to_string();
    assert!(!line.contains("PRIVATE KEY") && !line.contains(new.key_pair.serialize_pem().lines().nth(1).unwrap()));

    let mut after = tls_connect(&server.addr, "localhost", client).await.unwrap();
    assert_eq!(presented(&after), new.cert.der().as_ref(), "a new connection gets the new certificate");
    assert_eq!(http1_get(&mut after, "/healthz").await.0, 200);
    // The connection opened before the reload is still served, with the certificate it began with.
    assert_eq!(http1_get(&mut before, "/healthz").await, (200, r#"{"status":"ok"}"#.to_owned()));
    assert_eq!(presented(&before), old.cert.der().as_ref());
}

#[tokio::test]
async fn a_bad_certificate_pair_on_sighup_is_logged_and_the_previous_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (self_signed(), self_signed());
    let (cert, key) = write_pair(dir.path(), &good);
    let server = serve_tls(dir.path(), &cert, &key, &[]);
    let client = client_config(&[good.cert.der().clone(), other.cert.der().clone()], ALL_VERSIONS);
    let mut open = tls_connect(&server.addr, "localhost", client.clone()).await.unwrap();

    // A certificate whose key is not the one beside it, then a key file that is not a key.
    std::fs::write(&cert, other.cert.pem()).unwrap();
    for (bad_key, expected) in [(good.key_pair.serialize_pem(), "do not match"), ("not a key\n".to_owned(), "TOLLGATE_TLS_KEY")] {
        std::fs::write(&key, &bad_key).unwrap();
        hang_up(&server);
        let refused = wait_for_log(&server, "cannot reload the TLS certificate; still serving the previous one");
        assert_eq!(refused["level"], "ERROR");
        assert!(refused["error"].as_str().unwrap().contains(expected), "{refused}");
        assert_eq!(refused["fingerprint_sha256"], tollgate::http::tls::fingerprint_sha256(good.cert.der()));
        assert!(!refused.to_string().contains("PRIVATE KEY"), "{refused}");

        let mut fresh = tls_connect(&server.addr, "localhost", client.clone()).await.unwrap();
        assert_eq!(presented(&fresh), good.cert.der().as_ref(), "the previous pair is still served");
        assert_eq!(http1_get(&mut fresh, "/healthz").await.0, 200);
    }
    assert_eq!(http1_get(&mut open, "/healthz").await.0, 200);

    // Once a good pair is in place, the next SIGHUP takes it.
    std::fs::write(&key, other.key_pair.serialize_pem()).unwrap();
    hang_up(&server);
    wait_for_log(&server, "TLS certificate reloaded");
    let fresh = tls_connect(&server.addr, "localhost", client).await.unwrap();
    assert_eq!(presented(&fresh), other.cert.der().as_ref());
}

/// The TLS listener of an in-process app with a fresh self-signed certificate for localhost.
async fn tls_app() -> (crate::helpers::app::TestApp, rcgen::CertifiedKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed();
    let (cert, key) = write_pair(dir.path(), &pair);
    let app = spawn_app_with(&[("TOLLGATE_TLS_CERT", cert.to_str().unwrap()), ("TOLLGATE_TLS_KEY", key.to_str().unwrap())]).await;
    (app, pair, dir)
}

#[tokio::test]
async fn clients_restricted_to_tls_1_2_or_to_tls_1_3_both_connect() {
    let (app, pair, _dir) = tls_app().await;
    let addr = app.addr.to_string();
    for (version, expected) in
        [(&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2), (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3)]
    {
        let mut stream = tls_connect(&addr, "localhost", client_config(&[pair.cert.der().clone()], &[version])).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(http1_get(&mut stream, "/healthz").await.0, 200, "{expected:?}");
    }
}

/// A ClientHello record as a TLS client of `version` (0x0302 = TLS 1.1, 0x0303 = TLS 1.2) sends it:
/// no supported_versions extension, so `version` is all it offers; SNI localhost, ECDHE suites
/// (GCM for 1.2, CBC as 1.1 clients had) and the extensions a TLS 1.2 server needs.
fn client_hello(version: u16) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend(u16::try_from(data.len()).unwrap().to_be_bytes());
        out.extend(data);
    }
    let mut extensions = Vec::new();
    let name = b"localhost";
    let mut sni = Vec::new();
    sni.extend(u16::try_from(name.len() + 3).unwrap().to_be_bytes());
    sni.push(0); // host_name
    sni.extend(u16::try_from(name.len()).unwrap().to_be_bytes());
    sni.extend(name);
    extension(&mut extensions, 0x0000, &sni);
    extension(&mut extensions, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // groups: x25519, secp256r1
    extension(&mut extensions, 0x000b, &[1, 0]); // point formats: uncompressed
    extension(&mut extensions, 0x000d, &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]); // signature algorithms
    extension(&mut extensions, 0xff01, &[0]); // renegotiation_info
    let suites: [u16; 5] = [0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f];
    let mut body = Vec::new();
    body.extend(version.to_be_bytes());
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    body.extend(u16::try_from(suites.len() * 2).unwrap().to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null only
    body.extend(u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![1]; // client_hello
    handshake.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16];
    record.extend(version.to_be_bytes());
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends `hello` and reads what comes back: everything until the server closes, or the first
/// complete record when it keeps the connection open (a ServerHello waits for our next flight).
async fn answer_to(addr: &str, hello: &[u8]) -> (Vec<u8>, bool) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read =
            tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk)).await.expect("the server answers or closes");
        match read {
            Ok(0) | Err(_) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
        if got.len() >= 5 && got.len() >= 5 + usize::from(u16::from_be_bytes([got[3], got[4]])) && got[0] == 0x16 {
            return (got, false);
        }
    }
}

/// The (content type, first payload byte, second payload byte) of every record in `bytes`.
fn records(bytes: &[u8]) -> Vec<(u8, u8, u8)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 7 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        out.push((rest[0], rest[5], rest[6]));
        rest = &rest[(5 + len).min(rest.len())..];
    }
    out
}

#[tokio::test]
async fn a_tls_1_1_client_hello_is_refused_without_a_server_hello() {
    let (app, pair, _dir) = tls_app().await;
    let addr = app.addr.to_string();

    // The same hand-built hello offering TLS 1.2 gets a ServerHello: the bytes are a valid hello.
    let (answer, _) = answer_to(&addr, &client_hello(0x0303)).await;
    let first = records(&answer);
    assert_eq!(first.first().map(|r| (r.0, r.1)), Some((0x16, 2)), "a ServerHello for TLS 1.2: {answer:02x?}");

    // Offering TLS 1.1 at most: a fatal protocol_version (70) or handshake_failure (40) alert, or
    // nothing, then the connection is closed; never a ServerHello.
    let (answer, closed) = answer_to(&addr, &client_hello(0x0302)).await;
    assert!(closed, "the connection is closed: {answer:02x?}");
    let got = records(&answer);
    assert!(got.iter().all(|r| r.0 != 0x16), "no handshake record comes back: {answer:02x?}");
    assert!(
        answer.is_empty() || matches!(got.as_slice(), [(0x15, 2, 70 | 40)]),
        "a fatal protocol_version or handshake_failure alert: {answer:02x?}"
    );
    // The server is still serving.
    let mut stream = tls_connect(&addr, "localhost", client_config(&[pair.cert.der().clone()], ALL_VERSIONS)).await.unwrap();
    assert_eq!(http1_get(&mut stream, "/healthz").await.0, 200);
}

const PUBLIC_URL: &str = "https://pay.example.test:8443";

/// `tollgate serve` over TLS with the redirect listener on a free port; returns it and that port's address.
fn serve_with_redirect(dir: &Path, extra: &[(&str, &str)]) -> (Server, String, rcgen::CertifiedKey) {
    let pair = self_signed();
    let (cert, key) = write_pair(dir, &pair);
    let mut env = vec![("TOLLGATE_PUBLIC_URL", PUBLIC_URL), ("TOLLGATE_HTTP_REDIRECT_BIND", "127.0.0.1:0")];
    env.extend_from_slice(extra);
    let server = serve_tls(dir, &cert, &key, &env);
    let line = server.startup.iter().find(|l| l.contains("redirecting http to https")).expect("the redirect listener is logged");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["to"], PUBLIC_URL);
    let addr = v["addr"].as_str().unwrap().to_owned();
    (server, addr, pair)
}

/// One raw HTTP/1.1 exchange on a fresh connection (the server closes or answers in full).
async fn raw_http(addr: &str, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk)).await.unwrap().unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn the_redirect_listener_answers_308_to_the_public_https_origin_and_serves_no_api_route() {
    let dir = tempfile::tempdir().unwrap();
    let (server, redirect, pair) = serve_with_redirect(dir.path(), &[("TOLLGATE_HEADER_READ_TIMEOUT", "1s")]);
    let client = crate::helpers::client();
    let base = format!("http://{redirect}");
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/"),
        ("GET", "/api/v1/orders/ord_123?expand=items&x=%20y"),
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/webhooks/stripe"),
        ("GET", "/openapi.json"),
        ("DELETE", "/api/v1/me/sessions"),
    ] {
        let r = client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(r#"{"email":"a@example.com","password":"correct horse battery staple"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 308, "{method} {path}");
        assert_eq!(r.headers()["location"], format!("{PUBLIC_URL}{path}"), "{method} {path}");
        assert!(r.headers().get("set-cookie").is_none());
        assert_eq!(r.bytes().await.unwrap().len(), 0, "{method} {path}: nothing of the API is served");
    }

    // The listener has the main listener's timeouts (its connection bound is its own, smaller:
    // see connections.rs): a silent client is closed after the header-read timeout (1 s here).
    let mut silent = TcpStream::connect(&redirect).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte)).await.expect("the silent client is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The https listener is unaffected.
    let mut tls = tls_connect(&server.addr, "localhost", client_config(&[pair.cert.der().clone()], ALL_VERSIONS)).await.unwrap();
    assert_eq!(http1_get(&mut tls, "/healthz").await.0, 200);
}

#[tokio::test]
async fn a_foreign_host_cannot_steer_the_redirect_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, redirect, _pair) = serve_with_redirect(dir.path(), &[]);
    let expected = format!("location: {PUBLIC_URL}/steal?next=%2F%2Fevil.example");
    for request in [
        // A foreign Host, and the headers proxies use to say what the client asked for.
        "GET /steal?next=%2F%2Fevil.example HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        "GET /steal?next=%2F%2Fevil.example HTTP/1.1\r\nHost: pay.example.test:8443\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: http\r\nForwarded: host=evil.example\r\n\r\n",
        // An absolute request target naming another authority.
        "GET http://evil.example/steal?next=%2F%2Fevil.example HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        "GET https://evil.example:444/steal?next=%2F%2Fevil.example HTTP/1.1\r\nHost: evil.example:444\r\n\r\n",
        // No Host at all (HTTP/1.0).
        "GET /steal?next=%2F%2Fevil.example HTTP/1.0\r\n\r\n",
    ] {
        let answer = raw_http(&redirect, request).await;
        assert!(answer.lines().next().unwrap_or_default().contains(" 308 "), "{request:?}: {answer}");
        let location = answer.lines().find(|l| l.to_ascii_lowercase().starts_with("location:")).unwrap_or_default();
        assert_eq!(location.to_ascii_lowercase(), expected.to_ascii_lowercase(), "{request:?}");
        assert!(!answer.contains("evil.example/") && !answer.contains("evil.example:"), "{request:?}: {answer}");
    }
    // A path that looks like a network-path reference stays a path on the public origin.
    let answer = raw_http(&redirect, "GET //evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n").await;
    assert!(answer.to_ascii_lowercase().contains(&format!("location: {PUBLIC_URL}//evil.example/x")), "{answer}");
}

#[tokio::test]
async fn the_curl_command_cert_dev_prints_works_against_the_served_certificate() {
    // curl over OpenSSL is the reference: a client other than rustls trusting the certificate alone.
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        assert!(!crate::helpers::skip::in_ci(), "curl is missing in CI");
        crate::helpers::skip::skip("the_curl_command_cert_dev_prints_works_against_the_served_certificate", "no curl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A directory with a space, a quote and a command substitution: the printed command is run by
    // sh as printed, so each path must be one shell word and nothing in it may run.
    let out = dir.path().join("dev certs/it's $(touch pwned)");
    let written = binary::tollgate(dir.path(), &[]).args(["cert", "dev", "--out", out.to_str().unwrap()]).output().unwrap();
    assert!(written.status.success(), "{}", binary::output_text(&written));
    let printed = String::from_utf8(written.stdout).unwrap();
    let command = printed.lines().map(str::trim).find(|l| l.starts_with("curl --cacert ")).expect("a curl command");
    let server = serve_tls(dir.path(), &out.join("tollgate-dev-cert.pem"), &out.join("tollgate-dev-key.pem"), &[]);
    let port = server.addr.rsplit(':').next().unwrap();
    let command = command.replace("localhost:8080", &format!("localhost:{port}"));

    let curl = |command: &str| {
        let options = format!("--silent --show-error --noproxy '*' --resolve localhost:{port}:127.0.0.1");
        let line = command.replacen("curl ", &format!("curl {options} "), 1);
        std::process::Command::new("sh").current_dir(dir.path()).args(["-c", &line]).output().unwrap()
    };
    let trusted = curl(&command);
    assert!(trusted.status.success(), "{command}: {}", binary::output_text(&trusted));
    assert_eq!(String::from_utf8_lossy(&trusted.stdout), r#"{"status":"ok"}"#);
    assert!(!dir.path().join("pwned").exists() && !out.join("pwned").exists(), "nothing in the path ran");
    // Without the certificate, curl refuses the server (exit 60: the peer cannot be verified).
    let url = command.split(' ').next_back().unwrap();
    let untrusted = curl(&format!("curl {url}"));
    assert_eq!(untrusted.status.code(), Some(60), "{}", binary::output_text(&untrusted));
}

// ---- SIGHUP at any time, with or without TLS ----

#[tokio::test]
async fn sighup_on_a_server_without_tls_is_logged_and_it_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = binary::serve(dir.path(), &[]);
    for _ in 0..2 {
        hang_up(&server);
        let logged = wait_for_log(&server, "SIGHUP: no TLS certificate to reload");
        assert_eq!(logged["level"], "WARN");
        assert!(server.child.try_wait().unwrap().is_none(), "the server is still running");
        let r = crate::helpers::client().get(format!("http://{}/healthz", server.addr)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// SIGHUP while `serve` is still opening its database (a PostgreSQL server that never answers) does
/// not end the process: it fails later, on its own, with an exit code and its reason.
#[cfg(unix)]
#[tokio::test]
async fn sighup_while_the_database_is_being_opened_does_not_end_the_process() {
    use std::os::unix::process::ExitStatusExt;
    let silent_db = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("postgres://tollgate@{}/tollgate", silent_db.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut child = binary::tollgate(
        dir.path(),
        &[("DATABASE_URL", &url), ("TOLLGATE_DATABASE_ACQUIRE_TIMEOUT", "2s"), ("TOLLGATE_BIND", "127.0.0.1:0")],
    )
    .arg("serve")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Once tollgate connects to the database, `serve` has started: SIGHUP now.
    silent_db.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let _held = loop {
        match silent_db.accept() {
            Ok((held, _)) => break held,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                let _ = child.kill();
                panic!("tollgate never connected to the database: {e}");
            }
        }
    };
    let status = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output();
        out.unwrap()
    })
    .await
    .unwrap();
    let text = binary::output_text(&out);
    assert_eq!(out.status.signal(), None, "not ended by SIGHUP: {text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot open the database"), "{text}");
}
