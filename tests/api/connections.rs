//! Slow and silent clients cannot hold the service: header-read and idle timeouts close them, a
//! client that stops reading is disconnected, and the number of open connections is bounded.
//! Timeouts are set to 1 or 2 s here; "closed" means the socket reads EOF or is reset within 10 s.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::binary::{drain, serve, start, tollgate};
use crate::helpers::spawn_app_with;

const CLOSED_WITHIN: Duration = Duration::from_secs(10);

/// Reads until the server closes the connection (EOF or reset) and returns what it sent; fails the
/// test if the connection is still open after [`CLOSED_WITHIN`].
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let outcome = tokio::time::timeout(CLOSED_WITHIN, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the connection is still open after {CLOSED_WITHIN:?}");
    received
}

/// One HTTP/1.1 response (headers and a Content-Length body) read from `stream`.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(CLOSED_WITHIN, stream.read(&mut buf)).await.expect("a response").expect("read");
        assert!(n > 0, "the server closed the connection instead of answering: {}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let app = spawn_app_with(&[("TOLLGATE_HEADER_READ_TIMEOUT", "1s")]).await;
    // Nothing at all; one byte (hyper-util's protocol detection waits for more, without a timer);
    // the start of an HTTP/2 preface.
    for sent in [&b""[..], b"G", b"PRI * HTTP/2.0\r\n"] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let received = read_until_closed(&mut stream).await;
        assert!(received.is_empty(), "nothing is answered: {}", String::from_utf8_lossy(&received));
    }
    assert_eq!(app.get("/healthz").await.status(), 200, "the server still serves");
}

#[tokio::test]
async fn a_request_head_sent_slowly_is_closed_after_the_header_read_timeout() {
    let app = spawn_app_with(&[("TOLLGATE_HEADER_READ_TIMEOUT", "1s")]).await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // A header line every 200 ms: always something arriving, never a complete head.
    let dripping = tokio::spawn(async move {
        writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await?;
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.write_all(format!("X-Drip-{i}: a\r\n").as_bytes()).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let received = read_until_closed(&mut reader).await;
    assert!(received.is_empty(), "the request was never answered: {}", String::from_utf8_lossy(&received));
    dripping.abort();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(&[("TOLLGATE_HEADER_READ_TIMEOUT", "60s"), ("TOLLGATE_IDLE_TIMEOUT", "1s")]).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Then silence: the idle timeout (not the 60 s header-read timeout) closes it.
    assert!(read_until_closed(&mut stream).await.is_empty());
}

#[tokio::test]
async fn a_later_request_on_a_kept_alive_connection_must_complete_its_head_in_time() {
    let app = spawn_app_with(&[("TOLLGATE_HEADER_READ_TIMEOUT", "1s"), ("TOLLGATE_IDLE_TIMEOUT", "60s")]).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // The next request starts and stalls: the header-read timeout (not the 60 s idle one) applies.
    stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    assert!(read_until_closed(&mut stream).await.is_empty());
}

#[tokio::test]
async fn a_connection_in_use_is_never_cut_by_the_timeouts() {
    let app = spawn_app_with(&[("TOLLGATE_HEADER_READ_TIMEOUT", "2s"), ("TOLLGATE_IDLE_TIMEOUT", "2s")]).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Requests 300 ms apart for 3 s, over one connection: all answered.
    for _ in 0..10 {
        stream.write_all(HEALTHZ).await.unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A request whose handler takes longer than either timeout is answered too.
    stream.write_all(b"GET /__test/slow?ms=3000 HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("done"), "{response}");
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const END_STREAM: u8 = 1;
    let app = spawn_app_with(&[("TOLLGATE_HEADER_READ_TIMEOUT", "60s"), ("TOLLGATE_IDLE_TIMEOUT", "1s")]).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Prior-knowledge HTTP/2: GET /healthz (HPACK: :method GET, :scheme http, :path, :authority).
    let mut block = vec![0x82, 0x86, 0x44, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(HEADERS, END_STREAM | 0x4, 1, &block));
    stream.write_all(&hello).await.unwrap();

    // Read frames until stream 1 ends (answering the server's SETTINGS as a client must).
    let mut answered = false;
    while !answered {
        let mut head = [0u8; 9];
        tokio::time::timeout(CLOSED_WITHIN, stream.read_exact(&mut head)).await.expect("frames").expect("read");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if head[3] == SETTINGS && head[4] & 1 == 0 {
            // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) bounds the requests one connection can hold.
            let max_streams = payload.chunks(6).find(|s| s[..2] == [0, 3]).map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
            assert_eq!(max_streams, Some(100));
            stream.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
        }
        if head[3] == HEADERS && id == 1 {
            assert_eq!(payload.first(), Some(&0x88), "HPACK :status 200");
        }
        answered = id == 1 && head[4] & END_STREAM != 0;
    }
    // No stream open from now on: the connection is closed after the idle timeout.
    read_until_closed(&mut stream).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_disconnected() {
    const BIG: usize = 64 * 1024 * 1024;
    let app = spawn_app_with(&[
        ("TOLLGATE_REQUEST_TIMEOUT", "1s"),
        ("TOLLGATE_IDLE_TIMEOUT", "2s"),
        ("TOLLGATE_HEADER_READ_TIMEOUT", "1s"),
    ])
    .await;
    // A client that reads gets all of a large body, however long it takes.
    let body = app.get("/__test/big?bytes=8388608").await.bytes().await.unwrap();
    assert_eq!(body.len(), 8 * 1024 * 1024);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream.write_all(format!("GET /__test/big?bytes={BIG} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    // Not reading for a while: the response stops moving, and after 1 s + 2 s the server gives up.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let received = read_until_closed(&mut stream).await;
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert!(received.len() < BIG, "the connection was closed before the body was sent ({} bytes read)", received.len());
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_after_the_header_read_timeout() {
    let _ = crate::helpers::client();
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let app = spawn_app_with(&[
        ("TOLLGATE_TLS_CERT", cert_path.to_str().unwrap()),
        ("TOLLGATE_TLS_KEY", key_path.to_str().unwrap()),
        ("TOLLGATE_HEADER_READ_TIMEOUT", "1s"),
    ])
    .await;
    // TCP connected, no ClientHello.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    assert!(read_until_closed(&mut stream).await.is_empty());

    // A client that completes the handshake is served.
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    assert_eq!(client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn at_most_max_connections_are_open_and_reaching_the_limit_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[("TOLLGATE_MAX_CONNECTIONS", "8"), ("TOLLGATE_HEADER_READ_TIMEOUT", "60s")]);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // The ninth client waits in the listen backlog while eight connections are open…
    let ninth = tokio::spawn(async move { crate::helpers::client().get(format!("http://{addr}/healthz")).send().await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!ninth.is_finished(), "the ninth request is not served while eight connections are open");
    // …and is served as soon as one of them closes.
    drop(silent.pop());
    let answered = tokio::time::timeout(CLOSED_WITHIN, ninth).await.expect("served once a slot is free").unwrap();
    assert_eq!(answered.unwrap().status(), 200);

    let logs = drain(&server.lines, Duration::from_millis(300));
    let warning = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with("connection limit reached")))
        .unwrap_or_else(|| panic!("the limit is logged:\n{}", logs.join("\n")));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["open_connections"], 8);
    assert_eq!(warning["max_connections"], 8);
}

#[tokio::test]
async fn at_the_limit_idle_kept_alive_connections_make_room_for_waiting_clients() {
    let app = spawn_app_with(&[
        ("TOLLGATE_MAX_CONNECTIONS", "2"),
        ("TOLLGATE_IDLE_TIMEOUT", "60s"),
        ("TOLLGATE_HEADER_READ_TIMEOUT", "60s"),
    ])
    .await;
    // Both slots held by connections kept alive after one request each.
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(HEALTHZ).await.unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        kept.push(stream);
    }
    // A third client does not wait 60 s for them: idle connections are closed to make room.
    let third = tokio::time::timeout(CLOSED_WITHIN, crate::helpers::client().get(app.url("/healthz")).send()).await;
    assert_eq!(third.expect("served while the others are idle").unwrap().status(), 200);
    for mut stream in kept {
        assert!(read_until_closed(&mut stream).await.is_empty());
    }
}

#[tokio::test]
async fn at_the_limit_a_busy_connection_is_told_to_close_after_its_response() {
    let app = spawn_app_with(&[
        ("TOLLGATE_MAX_CONNECTIONS", "1"),
        ("TOLLGATE_IDLE_TIMEOUT", "60s"),
        ("TOLLGATE_HEADER_READ_TIMEOUT", "60s"),
    ])
    .await;
    let mut busy = TcpStream::connect(app.addr).await.unwrap();
    busy.write_all(HEALTHZ).await.unwrap();
    let first = read_response(&mut busy).await.to_ascii_lowercase();
    assert!(!first.contains("connection: close"), "nobody waits yet: {first}");
    busy.write_all(b"GET /__test/slow?ms=1500 HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    // Another client arrives while the only slot is busy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = {
        let url = app.url("/healthz");
        tokio::spawn(async move { crate::helpers::client().get(url).send().await })
    };
    let second = read_response(&mut busy).await.to_ascii_lowercase();
    assert!(second.starts_with("http/1.1 200") && second.contains("connection: close"), "{second}");
    assert!(read_until_closed(&mut busy).await.is_empty());
    let served = tokio::time::timeout(CLOSED_WITHIN, waiting).await.expect("served once the slot is free").unwrap();
    assert_eq!(served.unwrap().status(), 200);
}

/// `tollgate serve` with the open-file limit set to `soft`/`hard`.
#[cfg(target_os = "linux")]
fn serve_with_open_file_limit(
    dir: &std::path::Path,
    env: &[(&str, &str)],
    soft: u64,
    hard: u64,
) -> crate::helpers::binary::Server {
    use std::os::unix::process::CommandExt;
    let mut cmd = tollgate(dir, env);
    cmd.env("TOLLGATE_BIND", "127.0.0.1:0").arg("serve");
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    start(cmd)
}

/// The fault that started this: an open-file limit of 1024 and more silent clients than that made
/// the service unreachable. With a limit of 128, the bound is lowered to fit, nothing fails to
/// accept, and once the silent clients time out the service answers.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_low_open_file_limit_lowers_the_bound_instead_of_exhausting_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with_open_file_limit(dir.path(), &[("TOLLGATE_HEADER_READ_TIMEOUT", "1s")], 128, 128);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let r = crate::helpers::client().get(format!("http://{addr}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "served once the silent clients ahead of it timed out");

    let logs: Vec<String> = server.startup.iter().cloned().chain(drain(&server.lines, Duration::from_millis(300))).collect();
    let all = logs.join("\n");
    let lowered = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.contains("does not fit the open-file limit")))
        .unwrap_or_else(|| panic!("the lowered bound is logged:\n{all}"));
    // 128 descriptors, 64 + 4 × 10 (the database pool) kept for the rest.
    assert_eq!(lowered["max_connections"], 24, "{lowered}");
    assert!(all.contains("connection limit reached"), "{all}");
    assert!(!all.contains("cannot accept connections"), "never out of descriptors:\n{all}");
    drop(silent);
}

/// A soft limit below what the bound needs is raised, within the hard limit, and nothing is lowered.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_low_soft_open_file_limit_is_raised_to_fit_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with_open_file_limit(dir.path(), &[], 256, 4096);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let open_files: Vec<&str> =
        limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().skip(3).take(2).collect();
    // 1024 connections + 64 + 4 × 10 (the database pool).
    assert_eq!(open_files, ["1128", "4096"], "{limits}");
    assert!(!server.startup.join("\n").contains("does not fit the open-file limit"), "{:?}", server.startup);
}

/// The fault: the redirect listener (`TOLLGATE_HTTP_REDIRECT_BIND`) had the main listener's bound
/// and was left out of the open-file budget, so unauthenticated clients holding silent connections
/// to it took the descriptors the https listener needed (accept failed with EMFILE). It now has a
/// bound of its own (an eighth of the main one, at most 64) that the budget includes.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn clients_holding_the_redirect_listener_cannot_starve_the_https_listener() {
    let _ = crate::helpers::client(); // installs the crypto provider
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let env = [
        ("TOLLGATE_TLS_CERT", cert_path.to_str().unwrap()),
        ("TOLLGATE_TLS_KEY", key_path.to_str().unwrap()),
        ("TOLLGATE_PUBLIC_URL", "https://localhost:8443"),
        ("TOLLGATE_HTTP_REDIRECT_BIND", "127.0.0.1:0"),
        ("TOLLGATE_MAX_CONNECTIONS", "200"),
        ("TOLLGATE_HEADER_READ_TIMEOUT", "60s"),
    ];
    // 200 connections + 64 + 4 × 10 (the database pool) fit exactly: before the fix nothing was
    // lowered and the redirect listener could take 201 descriptors of the 304.
    let server = serve_with_open_file_limit(dir.path(), &env, 304, 304);
    let startup = server.startup.join("\n");
    let redirect = server
        .startup
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "redirecting http to https")
        .unwrap_or_else(|| panic!("the redirect listener is logged:\n{startup}"));
    assert_eq!(redirect["max_connections"], 25, "{redirect}");
    let redirect_addr: std::net::SocketAddr = redirect["addr"].as_str().unwrap().parse().unwrap();
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();

    // 150 silent clients on the redirect port (26 accepted, the rest in its listen backlog)…
    let connect = |to: std::net::SocketAddr| async move {
        tokio::time::timeout(CLOSED_WITHIN, TcpStream::connect(to)).await.expect("connected").unwrap()
    };
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(connect(redirect_addr).await);
    }
    // …and 150 on the https port, within its bound (before the fix, 150 + 150 and the process's
    // own descriptors did not fit in 304)…
    for _ in 0..150 {
        silent.push(connect(addr).await);
    }
    // …and a real https client is still served, at once, not after the silent ones time out.
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .timeout(CLOSED_WITHIN)
        .add_root_certificate(reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client.get(format!("https://localhost:{}/healthz", addr.port())).send().await.expect("https is served");
    assert_eq!(r.status(), 200);

    let logs: Vec<String> = server.startup.iter().cloned().chain(drain(&server.lines, Duration::from_millis(300))).collect();
    let all = logs.join("\n");
    assert!(!all.contains("cannot accept connections"), "never out of descriptors:\n{all}");
    let lowered = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.contains("does not fit the open-file limit")))
        .unwrap_or_else(|| panic!("the main bound makes room for the redirect listener's:\n{all}"));
    // 304 − (64 + 4 × 10 + 25 + 2).
    assert_eq!(lowered["max_connections"], 173, "{lowered}");
    drop(silent);
}
