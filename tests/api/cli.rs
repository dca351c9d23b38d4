//! The binary itself: configuration verdicts, refusal to start, logs, signals.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::binary::{drain, output_text, serve, serve_with, start, tollgate};

const WEAK: &str = "whsec_tooshort_1234";
const STRONG_KEY: &str = "sk_live_51H8qwertyuiopasdfghjklzxcvbnm0123456789QWERTY";
const STRONG_WHSEC: &str = "whsec_3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

fn production_env(whsec: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("TOLLGATE_ENV", "production"),
        ("TOLLGATE_PUBLIC_URL", "https://pay.example.org"),
        ("TOLLGATE_TRUSTED_PROXIES", "10.0.0.0/8"),
        ("TOLLGATE_BIND", "127.0.0.1:0"),
        ("TOLLGATE_JWT_SECRET", "jwt-5e1f0c9a8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f"),
        ("TOLLGATE_LICENCE_KEY", "MC4CAQAwBQYDK2VwBCIEIDATgY59DYsMR8dfBlCFR+Y/7F2uHRFOFUD8x89rrUA4"),
        ("STRIPE_SECRET_KEY", STRONG_KEY),
        ("STRIPE_WEBHOOK_SECRET", whsec),
    ]
}

#[test]
fn production_with_a_weak_secret_refuses_to_start_naming_the_variable_not_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = tollgate(dir.path(), &production_env(WEAK)).arg("serve").output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "it exits instead of serving");
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains("refuses to start"), "{text}");
    assert!(text.contains("STRIPE_WEBHOOK_SECRET is shorter than 32 bytes"), "{text}");
    assert!(!text.contains(WEAK), "the value is never printed: {text}");
    assert!(!dir.path().join("tollgate.db").exists(), "nothing was created before refusing");
}

#[test]
fn production_lists_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TOLLGATE_ENV", "production"), ("TOLLGATE_CORS_ORIGINS", "*"), ("STRIPE_WEBHOOK_SECRET", "changeme")];
    let out = tollgate(dir.path(), &env).arg("serve").output().unwrap();
    assert!(!out.status.success());
    let text = output_text(&out);
    for expected in [
        "STRIPE_SECRET_KEY is missing",
        "STRIPE_WEBHOOK_SECRET is a known placeholder",
        "sandbox payment provider",
        "TOLLGATE_CORS_ORIGINS allows every origin",
        "TOLLGATE_PUBLIC_URL is http",
        "neither TLS",
    ] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
}

#[test]
fn check_config_prints_the_same_verdict_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let out = tollgate(dir.path(), &production_env(WEAK)).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = output_text(&out);
    assert!(
        text.contains("STRIPE_WEBHOOK_SECRET is shorter than 32 bytes") && text.contains("verdict: refuse to start"),
        "{text}"
    );
    assert!(!text.contains(WEAK));

    let out = tollgate(dir.path(), &production_env(STRONG_WHSEC)).arg("check-config").output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("verdict: ok"), "{text}");
    assert!(!text.contains(STRONG_KEY) && !text.contains(STRONG_WHSEC), "{text}");

    let out = tollgate(dir.path(), &[]).arg("check-config").output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "development defaults are fine: {text}");
    assert!(text.contains("warning: the sandbox payment provider would be used"), "{text}");
    assert!(!dir.path().join("tollgate.db").exists(), "check-config touches no database");
}

#[test]
fn without_tollgate_env_a_non_loopback_bind_is_refused_by_serve_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TOLLGATE_BIND", "0.0.0.0:0")];
    let out = tollgate(dir.path(), &env).arg("check-config").output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("TOLLGATE_ENV is not set") && text.contains("TOLLGATE_ENV=production"), "{text}");
    assert!(text.contains("verdict: refuse to start"), "{text}");

    let started = Instant::now();
    let out = tollgate(dir.path(), &env).arg("serve").output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "it exits instead of serving");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refuses to start") && text.contains("TOLLGATE_ENV is not set"), "{text}");
    assert!(!dir.path().join("tollgate.db").exists(), "nothing was created before refusing");
}

#[test]
fn explicit_development_beyond_loopback_starts_with_a_loud_warning() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TOLLGATE_ENV", "development"), ("TOLLGATE_BIND", "0.0.0.0:0")];
    let out = tollgate(dir.path(), &env).arg("check-config").output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("warning: DEVELOPMENT MODE"), "{text}");

    let mut cmd = tollgate(dir.path(), &env);
    cmd.arg("serve");
    let server = start(cmd);
    let warning = server
        .startup
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with("DEVELOPMENT MODE")))
        .unwrap_or_else(|| panic!("a warning before listening: {:?}", server.startup));
    assert_eq!(warning["level"], "WARN");
    assert!(warning["message"].as_str().unwrap().contains("any user mark their own orders paid"), "{warning}");
}

#[test]
fn production_names_an_http_stripe_api_base_and_too_broad_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = production_env(STRONG_WHSEC);
    env.push(("STRIPE_API_BASE", "http://api.stripe.com"));
    let out = tollgate(dir.path(), &env).arg("check-config").output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("STRIPE_API_BASE is not https"), "{text}");

    let mut env = production_env(STRONG_WHSEC);
    env.retain(|(k, _)| *k != "TOLLGATE_TRUSTED_PROXIES");
    env.push(("TOLLGATE_TRUSTED_PROXIES", "0.0.0.0/1,128.0.0.0/1"));
    let out = tollgate(dir.path(), &env).arg("serve").output().unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    for net in ["0.0.0.0/1", "128.0.0.0/1"] {
        assert!(
            text.lines().any(|l| l.contains("TOLLGATE_TRUSTED_PROXIES") && l.contains(net)),
            "{net} named with the variable: {text}"
        );
    }
}

#[test]
fn secrets_can_come_from_files_and_malformed_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("whsec");
    std::fs::write(&secret_file, format!("{STRONG_WHSEC}\n")).unwrap();
    let mut env = production_env(STRONG_WHSEC);
    env.retain(|(k, _)| *k != "STRIPE_WEBHOOK_SECRET");
    let path = secret_file.to_string_lossy().to_string();
    let mut cmd = tollgate(dir.path(), &env);
    cmd.env("STRIPE_WEBHOOK_SECRET_FILE", &path);
    let out = cmd.arg("check-config").output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    let out = tollgate(dir.path(), &[("TOLLGATE_BODY_LIMIT", "huge"), ("TOLLGATE_BIND", "nowhere")])
        .arg("check-config")
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success());
    assert!(text.contains("TOLLGATE_BODY_LIMIT") && text.contains("TOLLGATE_BIND"), "both problems at once: {text}");
}

#[test]
fn a_dotenv_file_is_read_in_development_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "TOLLGATE_BODY_LIMIT=oops\n").unwrap();
    let out = tollgate(dir.path(), &[]).arg("check-config").output().unwrap();
    assert!(output_text(&out).contains("TOLLGATE_BODY_LIMIT"), "development reads .env");
    let out = tollgate(dir.path(), &production_env(STRONG_WHSEC)).arg("check-config").output().unwrap();
    assert!(out.status.success(), "production ignores .env: {}", output_text(&out));
}

#[test]
fn migrate_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = tollgate(dir.path(), &[]).arg("migrate").output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let applied: usize = text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(applied >= 2 && text.contains("migration(s) applied on sqlite"), "{text}");
    let out = tollgate(dir.path(), &[]).arg("migrate").output().unwrap();
    assert!(output_text(&out).contains("0 migration(s) applied"));
}

#[test]
fn every_command_has_help_and_version_prints() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["serve", "migrate", "check-config", "version"] {
        let out = tollgate(dir.path(), &[]).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: tollgate"), "{cmd}");
    }
    let out = tollgate(dir.path(), &[]).arg("version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("tollgate {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn request_logs_are_json_with_request_fields_and_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let client = crate::helpers::client();
    let secrets =
        ["Bearer eyJhbGciOiJIUzI1NiJ9.SECRET-BEARER", "tollgate_session=SECRET-COOKIE", "t=1,v1=SECRET-SIGNATURE", "SECRET-CSRF"];
    let r = client
        .get(format!("http://{}/healthz?token=SECRET-QUERY", server.addr))
        .header("authorization", secrets[0])
        .header("cookie", secrets[1])
        .header("stripe-signature", secrets[2])
        .header("x-csrf-token", secrets[3])
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines = drain(&server.lines, Duration::from_millis(500));
    let all = lines.join("\n");
    for s in secrets.iter().map(|s| s.rsplit(['.', '=', ' ']).next().unwrap()).chain(["SECRET-QUERY"]) {
        assert!(!all.contains(s), "{s} leaked into the logs:\n{all}");
    }
    let line = lines.iter().find(|l| l.contains("log-test-1")).unwrap_or_else(|| panic!("a line for the request:\n{all}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["status"], 200);
    assert!(v["latency_ms"].is_number());
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["span"]["method"], "GET");
    assert_eq!(v["span"]["route"], "/healthz");
    assert_eq!(v["span"]["request_id"], "log-test-1");
}

#[tokio::test]
async fn sigterm_stops_the_server_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &[]);
    let client = crate::helpers::client();
    assert_eq!(client.get(format!("http://{}/readyz", server.addr)).send().await.unwrap().status(), 200);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    let all = drain(&server.lines, Duration::from_millis(200)).join("\n");
    assert!(all.contains("shutdown requested") && all.contains("\"stopped\""), "{all}");
}

#[tokio::test]
async fn serve_no_migrate_leaves_the_schema_alone_until_migrate_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), &[], &["--no-migrate"]);
    let client = crate::helpers::client();
    let r = client.get(format!("http://{}/readyz", server.addr)).send().await.unwrap();
    assert_eq!(r.status(), 503, "not ready: migrations pending");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["checks"]["database"].as_str().unwrap().contains("pending"), "{body}");

    let out = tollgate(dir.path(), &[]).arg("migrate").output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let r = client.get(format!("http://{}/readyz", server.addr)).send().await.unwrap();
    assert_eq!(r.status(), 200, "ready once `tollgate migrate` ran");
}

#[tokio::test]
async fn admin_create_reads_the_password_from_stdin_and_makes_an_admin() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let create = |email: &str, password: &str| {
        let mut child = tollgate(dir.path(), &[])
            .args(["admin", "create", "--email", email, "--name", "Root"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = create("root@example.com", "password1234");
    assert!(!out.status.success(), "the password policy applies to admins too");
    assert!(output_text(&out).contains("password"), "{}", output_text(&out));

    let passphrase = "an admin passphrase that is long 31";
    let out = create("root@example.com", passphrase);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("created admin usr_") && !text.contains(passphrase), "{text}");
    assert!(!output_text(&create("root@example.com", passphrase)).contains("created"), "only once per email");

    let server = serve(dir.path(), &[]);
    let client = crate::helpers::client();
    let base = format!("http://{}", server.addr);
    let r = client
        .post(format!("{base}/api/v1/auth/token"))
        .json(&serde_json::json!({"email": "root@example.com", "password": passphrase}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let access = r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let me: serde_json::Value =
        client.get(format!("{base}/api/v1/me")).bearer_auth(&access).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["role"], "admin");
    assert_eq!(client.get(format!("{base}/api/v1/admin/users")).bearer_auth(&access).send().await.unwrap().status(), 200);
}
