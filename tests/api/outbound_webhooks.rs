//! Outbound webhooks to the merchant's app (issue 11): messages born in the fact's transaction,
//! one per fact and endpoint whatever is redelivered; Standard Webhooks signatures checked by the
//! `standardwebhooks` PyPI library; retries with the same id and a fresh timestamp; two
//! dispatchers on one database; SSRF refusals recorded as attempts; rotation; replay; ping.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};

use crate::helpers::database::rows;
use crate::helpers::shop::{completed, shop, Shop};
use crate::helpers::{assert_problem, in_ci, skip, spawn_app_with};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Statuses to answer, in order; 200 once empty.
    script: Arc<Mutex<VecDeque<u16>>>,
    /// Answer with a redirect there instead.
    redirect_to: Option<String>,
    delay: Duration,
    /// Message ids being answered right now, and how often one arrived while already in flight.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    overlaps: Arc<Mutex<usize>>,
    /// When set, the first request is answered only once the test adds a permit.
    hold_first: Option<Arc<tokio::sync::Semaphore>>,
    /// The message id of the request being held.
    held: Arc<Mutex<Option<String>>>,
}

impl Receiver {
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn of_type(&self, t: &str) -> Vec<Got> {
        self.got().into_iter().filter(|g| serde_json::from_str::<Value>(&g.body).unwrap()["type"] == t).collect()
    }
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let got = Got { id: h("webhook-id"), timestamp: h("webhook-timestamp"), signature: h("webhook-signature"), body };
    {
        let mut inflight = r.in_flight.lock().unwrap();
        let n = inflight.entry(got.id.clone()).or_default();
        if *n > 0 {
            *r.overlaps.lock().unwrap() += 1;
        }
        *n += 1;
    }
    r.got.lock().unwrap().push(got.clone());
    if let Some(gate) = &r.hold_first {
        let first = {
            let mut held = r.held.lock().unwrap();
            let first = held.is_none();
            if first {
                *held = Some(got.id.clone());
            }
            first
        };
        if first {
            gate.acquire().await.unwrap().forget();
        }
    }
    tokio::time::sleep(r.delay).await;
    *r.in_flight.lock().unwrap().get_mut(&got.id).unwrap() -= 1;
    if let Some(to) = &r.redirect_to {
        return (StatusCode::FOUND, [("location", to.clone())], "moved").into_response();
    }
    let status = r.script.lock().unwrap().pop_front().unwrap_or(200);
    (StatusCode::from_u16(status).unwrap(), format!("answer {status}")).into_response()
}

/// A receiver on 127.0.0.1, port 0; its URL.
async fn receiver(r: Receiver) -> (String, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), r)
}

/// Creates an endpoint as the shop's admin; (id, secret).
async fn endpoint(s: &Shop, url: &str, events: &[&str]) -> (String, String) {
    let r = s.post(&s.admin, "/api/v1/admin/webhook-endpoints", json!({"url": url, "events": events})).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    (v["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned())
}

async fn messages(s: &Shop, endpoint: &str) -> Vec<Value> {
    let r = s.get(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{endpoint}/messages?limit=100")).await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["data"].as_array().unwrap().clone()
}

/// Waits (at most 30 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits (at most 30 s) until the endpoint's messages satisfy `done`.
async fn until_messages(s: &Shop, endpoint: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..300 {
        let m = messages(s, endpoint).await;
        if done(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// (kind, recipient, event_type) of every outbox row, read straight from the database.
async fn outbox_rows(s: &Shop) -> Vec<(String, String, String)> {
    rows(&s.app, "SELECT kind, recipient, event_type FROM outbox ORDER BY id").await
}

/// The status of every email row, read straight from the database.
async fn email_statuses(s: &Shop) -> Vec<String> {
    rows::<(String,)>(&s.app, "SELECT status FROM outbox WHERE kind = 'email' ORDER BY id")
        .await
        .into_iter()
        .map(|r| r.0)
        .collect()
}

/// A Python with the `standardwebhooks` library: target/standardwebhooks-venv's, or python3's.
fn standardwebhooks_python() -> Option<String> {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/standardwebhooks-venv/bin/python3");
    [venv, "python3"].into_iter().map(str::to_owned).find(|p| {
        std::process::Command::new(p).args(["-c", "import standardwebhooks"]).output().is_ok_and(|o| o.status.success())
    })
}

/// Verifies each request with `standardwebhooks.Webhook(secret).verify(body, headers)`; how many
/// verified, per secret given.
fn verify_with_library(test: &str, got: &[Got], secrets: &[&str]) -> Option<Vec<usize>> {
    let Some(python) = standardwebhooks_python() else {
        assert!(!in_ci(), "standardwebhooks (PyPI) is needed in CI");
        skip(test, "python3 with standardwebhooks not found (pip install standardwebhooks into target/standardwebhooks-venv)");
        return None;
    };
    let cases: Vec<Value> = got
        .iter()
        .map(|g| json!({"body": g.body, "headers": {"webhook-id": g.id, "webhook-timestamp": g.timestamp, "webhook-signature": g.signature}}))
        .collect();
    let input = json!({"cases": cases, "secrets": secrets}).to_string();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
spec = json.load(sys.stdin)
counts = []
for secret in spec["secrets"]:
    ok = 0
    for c in spec["cases"]:
        try:
            Webhook(secret).verify(c["body"], c["headers"])
            ok += 1
        except Exception:
            pass
    counts.append(ok)
print(json.dumps(counts))
"#;
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The same with the `standardwebhooks` npm package (target/standardwebhooks-node), when present.
fn verify_with_node(test: &str, got: &[Got], secrets: &[&str]) -> Option<Vec<usize>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/standardwebhooks-node");
    let present = std::path::Path::new(dir).join("node_modules/standardwebhooks/package.json").exists()
        && std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !present {
        assert!(!in_ci(), "the standardwebhooks npm package is needed in CI (npm install --prefix target/standardwebhooks-node standardwebhooks@1)");
        skip(test, "node with standardwebhooks not found (npm install --prefix target/standardwebhooks-node standardwebhooks@1)");
        return None;
    }
    let cases: Vec<Value> = got
        .iter()
        .map(|g| json!({"body": g.body, "headers": {"webhook-id": g.id, "webhook-timestamp": g.timestamp, "webhook-signature": g.signature}}))
        .collect();
    let input = json!({"cases": cases, "secrets": secrets}).to_string();
    let script = r#"
const { Webhook } = require("standardwebhooks");
let text = "";
process.stdin.on("data", (d) => (text += d));
process.stdin.on("end", () => {
  const spec = JSON.parse(text);
  const counts = spec.secrets.map((secret) =>
    spec.cases.filter((c) => { try { new Webhook(secret).verify(c.body, c.headers); return true; } catch (e) { return false; } }).length);
  console.log(JSON.stringify(counts));
});
"#;
    use std::io::Write;
    let mut child = std::process::Command::new("node")
        .args(["-e", script])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

async fn paid_order(s: &Shop) -> (Value, Vec<u8>) {
    let product = s
        .product(json!({"name": "Pro <b>", "amount": 1500, "currency": "usd", "grant": {"kind": "access", "feature": "pro"}}))
        .await;
    let checkout = s.checkout(&product).await;
    let (_, body) = completed(&checkout, 1500);
    (checkout, body)
}

#[tokio::test]
async fn one_checkout_delivered_five_times_at_once_makes_one_signed_order_paid_per_endpoint() {
    let s = shop(&[]).await;
    let (url_a, a) = receiver(Receiver::default()).await;
    let (url_b, b) = receiver(Receiver::default()).await;
    let (ep_a, secret_a) = endpoint(&s, &url_a, &["order.paid", "entitlement.granted"]).await;
    let (_, secret_b) = endpoint(&s, &url_b, &["order.paid"]).await;
    let (checkout, body) = paid_order(&s).await;

    let deliveries = (0..5).map(|_| s.deliver(&body));
    let statuses = futures_util::future::join_all(deliveries).await;
    assert!(statuses.iter().all(|st| *st == 200), "{statuses:?}");
    // And the same event again later, as Stripe's retries would.
    assert_eq!(s.deliver(&body).await, 200);

    until("both receivers", || a.got().len() >= 2 && !b.got().is_empty()).await;
    // Time for any duplicate to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.of_type("order.paid").len(), 1);
    assert_eq!(a.of_type("entitlement.granted").len(), 1);
    assert_eq!(b.of_type("order.paid").len(), 1);
    assert_eq!(b.got().len(), 1, "b subscribed to order.paid only");

    // In the database: one row per (fact, endpoint), and one receipt for the buyer.
    let rows = outbox_rows(&s).await;
    let count = |kind: &str, t: &str| rows.iter().filter(|r| r.0 == kind && r.2 == t).count();
    assert_eq!(count("webhook", "order.paid"), 2);
    assert_eq!(count("email", "receipt"), 1);
    assert!(rows.iter().any(|r| r.0 == "email" && r.1 == "buyer@example.com"));
    // The receipt goes through the mailer (the development `log` transport) and is delivered.
    for _ in 0..100 {
        if email_statuses(&s).await == vec!["delivered".to_owned()] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(email_statuses(&s).await, vec!["delivered".to_owned()]);

    // What the merchant needs without calling back.
    let paid: Value = serde_json::from_str(&a.of_type("order.paid")[0].body).unwrap();
    let order_id = checkout["order_id"].as_str().unwrap();
    assert_eq!(paid["data"]["order"]["id"], order_id);
    assert_eq!(paid["data"]["order"]["amount"], 1500);
    assert_eq!(paid["data"]["order"]["currency"], "usd");
    assert_eq!(paid["data"]["order"]["product_name"], "Pro <b>");
    assert_eq!(paid["data"]["user"]["id"], s.user_id.as_str());
    assert_eq!(paid["data"]["user"]["email"], "buyer@example.com");
    assert!(paid["data"]["occurred_at"].is_string() && paid["timestamp"].is_string());
    let granted: Value = serde_json::from_str(&a.of_type("entitlement.granted")[0].body).unwrap();
    assert_eq!(granted["data"]["grant"]["feature"], "pro");
    assert_eq!(granted["data"]["grant"]["status"], "active");
    assert!(
        granted["data"]["sequence"].as_i64().unwrap() > paid["data"]["sequence"].as_i64().unwrap(),
        "the grant follows the payment in the user's sequence"
    );

    // The admin sees them delivered, one attempt each.
    let m = messages(&s, &ep_a).await;
    assert_eq!(m.len(), 2);
    assert!(m.iter().all(|m| m["status"] == "delivered" && m["attempts"].as_array().unwrap().len() == 1));

    // Standard Webhooks' own library verifies every request with the endpoint's secret, and
    // refuses it with another endpoint's.
    if let Some(counts) = verify_with_library("one_checkout_delivered_five_times", &a.got(), &[&secret_a, &secret_b]) {
        assert_eq!(counts, vec![2, 0]);
    }
    if let Some(counts) = verify_with_library("one_checkout_delivered_five_times", &b.got(), &[&secret_b]) {
        assert_eq!(counts, vec![1]);
    }
    if let Some(counts) = verify_with_node("one_checkout_delivered_five_times", &a.got(), &[&secret_a, &secret_b]) {
        assert_eq!(counts, vec![2, 0]);
    }
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_the_same_message_id_with_a_fresh_timestamp() {
    let s = shop(&[("TOLLGATE_WEBHOOK_RETRY_SCHEDULE", "0s,2s,2s,2s,2s")]).await;
    let r = Receiver { script: Arc::new(Mutex::new([500, 503, 404].into())), ..Receiver::default() };
    let (url, r) = receiver(r).await;
    let (ep, secret) = endpoint(&s, &url, &["order.paid"]).await;
    let (_, body) = paid_order(&s).await;
    assert_eq!(s.deliver(&body).await, 200);

    let m = until_messages(&s, &ep, "delivered after 3 failures", |m| m.len() == 1 && m[0]["status"] == "delivered").await;
    let got = r.got();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|g| g.id == got[0].id && g.id.starts_with("msg_")), "one webhook-id on every attempt");
    assert_eq!(m[0]["id"], got[0].id.as_str());
    let stamps: Vec<i64> = got.iter().map(|g| g.timestamp.parse().unwrap()).collect();
    assert!(stamps.windows(2).all(|w| w[1] > w[0]), "a fresh timestamp each attempt: {stamps:?}");
    assert!(got.iter().all(|g| g.body == got[0].body), "the same body each attempt");
    let codes: Vec<i64> = m[0]["attempts"].as_array().unwrap().iter().map(|a| a["status_code"].as_i64().unwrap()).collect();
    assert_eq!(codes, vec![500, 503, 404, 200]);
    assert_eq!(m[0]["attempts"][0]["response"], "answer 500");
    if let Some(counts) = verify_with_library("a_receiver_failing_three_times", &got, &[&secret]) {
        assert_eq!(counts, vec![4]);
    }
}

#[tokio::test]
async fn a_message_that_exhausts_the_schedule_fails_and_retry_now_delivers_it() {
    let s = shop(&[("TOLLGATE_WEBHOOK_RETRY_SCHEDULE", "0s,1s")]).await;
    let r = Receiver { script: Arc::new(Mutex::new([500, 500].into())), ..Receiver::default() };
    let (url, r) = receiver(r).await;
    let (ep, _) = endpoint(&s, &url, &["ping"]).await;
    let ping = s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/ping"), json!({})).await;
    assert_eq!(ping.status(), 202);
    let id = ping.json::<Value>().await.unwrap()["message_id"].as_str().unwrap().to_owned();
    let m = until_messages(&s, &ep, "failed", |m| m.len() == 1 && m[0]["status"] == "failed").await;
    assert_eq!(m[0]["attempts"].as_array().unwrap().len(), 2);
    let metrics = s.app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("tollgate_outbox_messages{status=\"failed\"} 1"), "{metrics}");
    let retry = s.post(&s.admin, &format!("/api/v1/admin/webhook-messages/{id}/retry"), json!({})).await;
    assert_eq!(retry.status(), 202);
    until_messages(&s, &ep, "delivered on retry", |m| m[0]["status"] == "delivered").await;
    assert_eq!(r.got().len(), 3);
    assert!(r.got().iter().all(|g| g.id == id));
    let missing = s.post(&s.admin, "/api/v1/admin/webhook-messages/msg_nope/retry", json!({})).await;
    assert_eq!(missing.status(), 404);
    // A delivered message is not sent again by retry (replay does that): 409, nothing sent.
    let again = s.post(&s.admin, &format!("/api/v1/admin/webhook-messages/{id}/retry"), json!({})).await;
    assert_eq!(again.status(), 409);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.got().len(), 3);
}

#[tokio::test]
async fn two_dispatchers_on_one_database_never_send_one_message_at_the_same_time() {
    let s = shop(&[]).await;
    // A second application (its own dispatcher) on the same database.
    let other = spawn_app_with(&[("DATABASE_URL", s.app.database_url.as_str())]).await;
    let r = Receiver { delay: Duration::from_millis(150), ..Receiver::default() };
    let (url, r) = receiver(r).await;
    let (ep, _) = endpoint(&s, &url, &["ping"]).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let ping = s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/ping"), json!({})).await;
        assert_eq!(ping.status(), 202);
        ids.push(ping.json::<Value>().await.unwrap()["message_id"].as_str().unwrap().to_owned());
    }
    until("40 pings", || r.got().len() >= 40).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = r.got();
    assert_eq!(got.len(), 40, "each message sent once");
    let mut seen: Vec<&str> = got.iter().map(|g| g.id.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 40);
    assert_eq!(*r.overlaps.lock().unwrap(), 0);
    drop(other);
}

#[tokio::test]
async fn a_message_leased_by_a_dispatcher_that_died_is_sent_once_its_lease_expires() {
    let s = shop(&[]).await;
    let (url, r) = receiver(Receiver::default()).await;
    let (ep, _) = endpoint(&s, &url, &["ping"]).await;
    // A dispatcher that claimed the message and died before sending it: the row and its lease
    // (3 s from now) written in one statement, with no wake-up, so the live dispatcher can never
    // claim it first.
    let now = chrono::Utc::now();
    let lease_until = now + chrono::Duration::seconds(3);
    {
        use sqlx::Connection;
        const SQL: &str = "INSERT INTO outbox (id, kind, recipient, event_type, payload, fact_key, occurred_at, status, attempts,
                                               next_attempt_at, lease_owner, lease_until, created_at)
                           VALUES ('msg_dead', 'webhook', $1, 'ping', $2, 'ping:dead', $3, 'pending', 0, $3, 'dsp_dead', $4, $3)";
        let body = json!({"type": "ping", "timestamp": now, "data": {"endpoint_id": ep}}).to_string();
        match s.app.store.engine() {
            tollgate::store::Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&s.app.database_url).await.unwrap();
                sqlx::query(SQL).bind(&ep).bind(&body).bind(now).bind(lease_until).execute(&mut c).await.unwrap();
            }
            tollgate::store::Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&s.app.database_url).await.unwrap();
                sqlx::query(SQL).bind(&ep).bind(&body).bind(now).bind(lease_until).execute(&mut c).await.unwrap();
            }
        }
    }
    // The live dispatcher polls every second: during the lease it leaves the row alone...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(r.got().is_empty(), "leased to the dead dispatcher");
    // ...then sends it, once, and only after the lease ended.
    until("the message", || !r.got().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.got().len(), 1);
    assert_eq!(r.got()[0].id, "msg_dead");
    let attempts = s.app.store.message_attempts("msg_dead").await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].at >= lease_until, "attempted at {} under a lease that ran until {lease_until}", attempts[0].at);
}

#[tokio::test]
async fn private_addresses_are_refused_on_save_and_on_the_address_connected_to() {
    let s = shop(&[("TOLLGATE_WEBHOOK_ALLOW_PRIVATE", "false")]).await;
    for url in
        ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://[::ffff:10.0.0.1]/", "http://10.1.2.3/"]
    {
        let r = s.post(&s.admin, "/api/v1/admin/webhook-endpoints", json!({"url": url, "events": ["ping"]})).await;
        let p = crate::helpers::assert_problem(r, 422).await;
        assert_eq!(p["errors"][0]["field"], "url", "{url}: {p}");
    }
    assert!(s.app.store.endpoints().await.unwrap().is_empty());

    // A name is checked where it resolves: `localhost` is 127.0.0.1 (DNS rebinding looks the same).
    let (url, r) = receiver(Receiver::default()).await;
    let by_name = url.replace("127.0.0.1", "localhost");
    let (ep, _) = endpoint(&s, &by_name, &["ping"]).await;
    // And a literal address saved before the setting changed (straight into the database).
    let now = chrono::Utc::now();
    let metadata = tollgate::store::outbox::EndpointRow {
        id: "we_metadata".into(),
        url: "http://169.254.169.254/latest/meta-data".into(),
        events: r#"["ping"]"#.into(),
        description: None,
        disabled: false,
        secret: tollgate::notify::webhook::new_secret(),
        previous_secret: None,
        previous_until: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    s.app.store.insert_endpoint(&metadata).await.unwrap();
    for e in [ep.as_str(), "we_metadata"] {
        assert_eq!(s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{e}/ping"), json!({})).await.status(), 202);
    }
    let m = until_messages(&s, &ep, "a refused attempt", |m| {
        m.first().is_some_and(|m| !m["attempts"].as_array().unwrap().is_empty())
    })
    .await;
    let err = m[0]["attempts"][0]["error"].as_str().unwrap();
    assert!(err.contains("refused") && err.contains("127.0.0.1"), "{err}");
    assert!(m[0]["attempts"][0]["status_code"].is_null());
    let m = until_messages(&s, "we_metadata", "a refused attempt", |m| {
        m.first().is_some_and(|m| !m["attempts"].as_array().unwrap().is_empty())
    })
    .await;
    assert!(m[0]["attempts"][0]["error"].as_str().unwrap().contains("169.254.169.254"));
    assert!(r.got().is_empty(), "the receiver on loopback was never reached");
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_counts_as_a_failure() {
    let s = shop(&[("TOLLGATE_WEBHOOK_RETRY_SCHEDULE", "0s")]).await;
    let (target_url, target) = receiver(Receiver::default()).await;
    let (url, redirecting) = receiver(Receiver { redirect_to: Some(target_url), ..Receiver::default() }).await;
    let (ep, _) = endpoint(&s, &url, &["ping"]).await;
    assert_eq!(s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/ping"), json!({})).await.status(), 202);
    let m = until_messages(&s, &ep, "failed", |m| m.first().is_some_and(|m| m["status"] == "failed")).await;
    assert_eq!(m[0]["attempts"][0]["status_code"], 302);
    assert!(m[0]["attempts"][0]["error"].as_str().unwrap().contains("redirect"));
    assert_eq!(redirecting.got().len(), 1);
    assert!(target.got().is_empty(), "the redirect's target was never called");
}

#[tokio::test]
async fn after_a_rotation_both_secrets_verify_for_24_hours() {
    let s = shop(&[]).await;
    let (url, r) = receiver(Receiver::default()).await;
    let (ep, old) = endpoint(&s, &url, &["ping"]).await;
    let rotated = s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/rotate-secret"), json!({})).await;
    assert_eq!(rotated.status(), 200);
    let v: Value = rotated.json().await.unwrap();
    let new = v["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let until_at = chrono::DateTime::parse_from_rfc3339(v["previous_secret_expires_at"].as_str().unwrap()).unwrap();
    let hours = (until_at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes();
    assert!((23 * 60..=24 * 60).contains(&hours));
    // A second rotation inside the overlap would end the old secret's 24 h early: refused.
    let again = s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/rotate-secret"), json!({})).await;
    assert_problem(again, 409).await;
    assert_eq!(s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/ping"), json!({})).await.status(), 202);
    until("the ping", || !r.got().is_empty()).await;
    let got = r.got();
    assert_eq!(got[0].signature.split(' ').count(), 2, "two signatures during the overlap");
    if let Some(counts) =
        verify_with_library("after_a_rotation", &got, &[&old, &new, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="])
    {
        assert_eq!(counts, vec![1, 1, 0]);
    }
    if let Some(counts) =
        verify_with_node("after_a_rotation", &got, &[&old, &new, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="])
    {
        assert_eq!(counts, vec![1, 1, 0]);
    }
    // The secret is never listed.
    let list = s.get(&s.admin, "/api/v1/admin/webhook-endpoints").await.text().await.unwrap();
    assert!(!list.contains(&new) && !list.contains(&old) && !list.contains("whsec_"));
}

#[tokio::test]
async fn replay_since_t_sends_again_exactly_the_messages_since_t() {
    let s = shop(&[]).await;
    let (url, r) = receiver(Receiver::default()).await;
    let (ep, _) = endpoint(&s, &url, &["ping"]).await;
    let ping = || async {
        s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/ping"), json!({})).await.json::<Value>().await.unwrap()
            ["message_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let before = ping().await;
    until("the first ping", || r.got().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = [ping().await, ping().await];
    until("three pings", || r.got().len() == 3).await;

    let replay = s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/replay"), json!({"since": t})).await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.json::<Value>().await.unwrap()["replayed"], 2);
    until("two replays", || r.got().len() == 5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = r.got();
    assert_eq!(got.len(), 5);
    let mut again: Vec<String> = got[3..].iter().map(|g| g.id.clone()).collect();
    again.sort();
    let mut want = after.to_vec();
    want.sort();
    assert_eq!(again, want, "the same messages (same webhook-id), and not the one before T");
    assert!(!again.contains(&before));

    let bad = s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/replay"), json!({"since": "yesterday"})).await;
    assert!(bad.status().is_client_error());
}

#[tokio::test]
async fn endpoints_are_validated_admin_only_and_audited() {
    let s = shop(&[]).await;
    let bad =
        s.post(&s.admin, "/api/v1/admin/webhook-endpoints", json!({"url": "ftp://x", "events": ["order.paid", "nope"]})).await;
    let p = crate::helpers::assert_problem(bad, 422).await;
    let fields: Vec<&str> = p["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, vec!["url", "events[1]"]);
    let none = s.post(&s.admin, "/api/v1/admin/webhook-endpoints", json!({"url": "https://example.com/h", "events": []})).await;
    crate::helpers::assert_problem(none, 422).await;
    assert!(s.app.store.endpoints().await.unwrap().is_empty());

    let as_user =
        s.post(&s.user, "/api/v1/admin/webhook-endpoints", json!({"url": "https://example.com/h", "events": ["ping"]})).await;
    assert_eq!(as_user.status(), 403);

    let audit_before = s.app.audit_count().await;
    let (ep, _) = endpoint(&s, "https://example.com/h", &["ping"]).await;
    let patched = s
        .send(
            reqwest::Method::PATCH,
            &s.admin,
            &format!("/api/v1/admin/webhook-endpoints/{ep}"),
            Some(json!({"events": ["order.paid"], "disabled": true})),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let v: Value = patched.json().await.unwrap();
    assert_eq!((v["events"].clone(), v["disabled"].clone()), (json!(["order.paid"]), json!(true)));
    let deleted = s.send(reqwest::Method::DELETE, &s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}"), None).await;
    assert_eq!(deleted.status(), 204);
    let again = s.send(reqwest::Method::DELETE, &s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}"), None).await;
    assert_eq!(again.status(), 404);
    assert_eq!(s.app.audit_count().await, audit_before + 3);
}

#[tokio::test]
async fn sigkill_and_restart_between_five_deliveries_still_make_one_order_paid() {
    use crate::helpers::binary::serve;
    use crate::helpers::stripe::WHSEC;
    let dir = tempfile::tempdir().unwrap();
    let pg = crate::helpers::fresh_postgres_database().await;
    let database_url = match &pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.path().join("tollgate.db").display()),
    };
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("STRIPE_WEBHOOK_SECRET", WHSEC),
        ("TOLLGATE_JWT_SECRET", "a-test-jwt-secret-that-is-long-enough-0123456789"),
    ];
    let (url, r) = receiver(Receiver::default()).await;
    let client = crate::helpers::client();

    let mut server = serve(dir.path(), &env);
    let store = tollgate::store::connect(&tollgate::config::DatabaseConfig {
        url: secrecy::SecretString::from(database_url.clone()),
        max_connections: 2,
        ingest_writers: 4,
        acquire_timeout: Duration::from_secs(5),
        migrate_on_start: false,
    })
    .await
    .unwrap();
    let now = chrono::Utc::now();
    store
        .insert_endpoint(&tollgate::store::outbox::EndpointRow {
            id: "we_crash".into(),
            url,
            events: r#"["order.paid"]"#.into(),
            description: None,
            disabled: false,
            secret: tollgate::notify::webhook::new_secret(),
            previous_secret: None,
            previous_until: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    let grant: tollgate::domain::catalog::Grant = serde_json::from_value(json!({"kind": "access", "feature": "pro"})).unwrap();
    store
        .insert_product(&tollgate::store::payments::ProductRow {
            id: "pr_crash".into(),
            name: "Pro".into(),
            description: None,
            active: true,
            version: 1,
            amount: 1500,
            currency: "usd".into(),
            stripe_price_id: None,
            grant_spec: grant.to_json(),
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    let base = format!("http://{}", server.addr);
    let pw = crate::helpers::accounts::PASSWORD;
    let reg = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": "crash@example.com", "password": pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(reg.status(), 201);
    let tok: Value = client
        .post(format!("{base}/api/v1/auth/token"))
        .json(&json!({"email": "crash@example.com", "password": pw}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let checkout: Value = client
        .post(format!("{base}/api/v1/checkout/sessions"))
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .json(&json!({"product_id": "pr_crash"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_, body) = completed(&checkout, 1500);

    for round in 0..5 {
        if round > 0 {
            server = serve(dir.path(), &env);
        }
        let header = tollgate::stripe::webhook::sign(&body, WHSEC, chrono::Utc::now().timestamp());
        let url = format!("http://{}/api/v1/webhooks/stripe", server.addr);
        let answer = client.post(&url).header("stripe-signature", header).body(body.clone()).send().await.unwrap();
        assert_eq!(answer.status(), 200, "round {round}");
        if round < 4 {
            server.child.kill().unwrap(); // SIGKILL, whatever the dispatcher was doing
            server.child.wait().unwrap();
        }
    }
    // The last one runs; a message leased by a killed process comes back when its lease (60 s) ends.
    for _ in 0..900 {
        let m = store.endpoint_messages("we_crash", 10, None).await.unwrap();
        if m.len() == 1 && m[0].status == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let messages = store.endpoint_messages("we_crash", 10, None).await.unwrap();
    assert_eq!(messages.len(), 1, "one order.paid message");
    assert_eq!(messages[0].status, "delivered");
    let mut ids: Vec<String> = r.of_type("order.paid").into_iter().map(|g| g.id).collect();
    assert!(!ids.is_empty());
    ids.dedup();
    assert_eq!(ids, vec![messages[0].id.clone()], "every delivery the receiver saw was that one message");
    drop(server);
    store.close().await;
}

#[tokio::test]
async fn refunds_disputes_and_credits_each_tell_the_merchant_once_in_order() {
    use crate::helpers::shop::{dispute, refunded};
    let s = shop(&[]).await;
    let (url, r) = receiver(Receiver::default()).await;
    let all = [
        "order.paid",
        "order.partially_refunded",
        "order.refunded",
        "order.disputed",
        "order.dispute_closed",
        "entitlement.granted",
        "entitlement.suspended",
        "entitlement.restored",
        "entitlement.revoked",
        "credits.changed",
    ];
    endpoint(&s, &url, &all).await;
    let product = s.credits_product(1000, 50).await;
    let checkout = s.checkout(&product).await;
    let steps: Vec<Vec<u8>> = vec![
        completed(&checkout, 1000).1,
        refunded(&checkout, 1000, 300).1,
        dispute(&checkout, "charge.dispute.created", "needs_response").1,
        dispute(&checkout, "charge.dispute.closed", "won").1,
        refunded(&checkout, 1000, 1000).1,
    ];
    let want: Vec<Vec<&str>> = vec![
        vec!["order.paid", "entitlement.granted", "credits.changed"],
        vec!["order.partially_refunded"],
        vec!["order.disputed", "entitlement.suspended", "credits.changed"],
        vec!["order.dispute_closed", "entitlement.restored", "credits.changed"],
        vec!["order.refunded", "entitlement.revoked", "credits.changed"],
    ];
    let mut expected: Vec<&str> = Vec::new();
    for (body, types) in steps.iter().zip(&want) {
        assert_eq!(s.deliver(body).await, 200);
        expected.extend(types);
        let n = expected.len();
        until("the step's messages", || r.got().len() >= n).await;
    }
    // Every event again (Stripe's redelivery): nothing new.
    for body in &steps {
        assert_eq!(s.deliver(body).await, 200);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got: Vec<Value> = r.got().iter().map(|g| serde_json::from_str(&g.body).unwrap()).collect();
    let mut by_sequence = got.clone();
    by_sequence.sort_by_key(|v| v["data"]["sequence"].as_i64().unwrap());
    let types: Vec<&str> = by_sequence.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(types, expected, "each fact once, numbered in the order it happened");
    let balances: Vec<i64> = by_sequence
        .iter()
        .filter(|v| v["type"] == "credits.changed")
        .map(|v| v["data"]["credits"]["balance"].as_i64().unwrap())
        .collect();
    assert_eq!(balances, vec![50, 0, 50, 0]);
    let refund = by_sequence.iter().find(|v| v["type"] == "order.partially_refunded").unwrap();
    assert_eq!(
        (refund["data"]["refunded_now"].as_i64(), refund["data"]["order"]["amount_refunded"].as_i64()),
        (Some(300), Some(300))
    );
    let closed = by_sequence.iter().find(|v| v["type"] == "order.dispute_closed").unwrap();
    assert_eq!(closed["data"]["outcome"], "won");
    // The buyer: a receipt and two refund notices.
    let rows = outbox_rows(&s).await;
    let mails: Vec<&str> = rows.iter().filter(|r| r.0 == "email").map(|r| r.2.as_str()).collect();
    assert_eq!(mails, vec!["receipt", "refund", "refund"]);
}

#[tokio::test]
async fn a_password_change_writes_one_notice_email_in_its_transaction() {
    use crate::helpers::accounts::{change_password, login, register, NEW_PASSWORD, PASSWORD};
    let s = shop(&[]).await;
    register(&s.app, "changer@example.com").await;
    let b = login(&s.app, "changer@example.com", PASSWORD).await;
    assert_eq!(change_password(&s.app, &b, PASSWORD, NEW_PASSWORD).await.status(), 204);
    assert_eq!(
        change_password(&s.app, &b, PASSWORD, NEW_PASSWORD).await.status().as_u16() / 100,
        4,
        "the old password no longer works"
    );
    let rows = outbox_rows(&s).await;
    let mails: Vec<_> = rows.iter().filter(|r| r.0 == "email" && r.2 == "password_changed").collect();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].1, "changer@example.com");
}

#[tokio::test]
async fn an_endpoint_failing_for_five_days_is_disabled_and_admins_are_emailed() {
    let s = shop(&[]).await;
    let r = Receiver { script: Arc::new(Mutex::new([500, 500, 500].into())), ..Receiver::default() };
    let (url, _r) = receiver(r).await;
    let (ep, _) = endpoint(&s, &url, &["ping"]).await;
    // Its deliveries have failed since six days ago (as the database would have it).
    {
        use sqlx::Connection;
        let since = chrono::Utc::now() - chrono::Duration::days(6);
        const SQL: &str = "UPDATE webhook_endpoints SET failing_since = $1 WHERE id = $2";
        match s.app.store.engine() {
            tollgate::store::Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&s.app.database_url).await.unwrap();
                sqlx::query(SQL).bind(since).bind(&ep).execute(&mut c).await.unwrap();
            }
            tollgate::store::Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&s.app.database_url).await.unwrap();
                sqlx::query(SQL).bind(since).bind(&ep).execute(&mut c).await.unwrap();
            }
        }
    }
    assert_eq!(s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/ping"), json!({})).await.status(), 202);
    for _ in 0..300 {
        if s.app.store.endpoint(&ep).await.unwrap().unwrap().disabled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = s.app.store.endpoint(&ep).await.unwrap().unwrap();
    assert!(e.disabled, "disabled after 5 days of failures");
    let rows = outbox_rows(&s).await;
    let mails: Vec<_> = rows.iter().filter(|r| r.0 == "email" && r.2 == "endpoint_disabled").collect();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].1, "admin@example.com");
    // Replaying a disabled endpoint would send nothing: 409.
    let replay =
        s.post(&s.admin, &format!("/api/v1/admin/webhook-endpoints/{ep}/replay"), json!({"since": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(replay.status(), 409);
    // An email row is not a webhook message: retry does not know it.
    let email_id: String = {
        use sqlx::Connection;
        const SQL: &str = "SELECT id FROM outbox WHERE kind = 'email' AND event_type = 'endpoint_disabled'";
        match s.app.store.engine() {
            tollgate::store::Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&s.app.database_url).await.unwrap();
                sqlx::query_scalar(SQL).fetch_one(&mut c).await.unwrap()
            }
            tollgate::store::Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&s.app.database_url).await.unwrap();
                sqlx::query_scalar(SQL).fetch_one(&mut c).await.unwrap()
            }
        }
    };
    let retry = s.post(&s.admin, &format!("/api/v1/admin/webhook-messages/{email_id}/retry"), json!({})).await;
    assert_eq!(retry.status(), 404);
    // A delivery that succeeds ends a failing run; enabling it again forgets it.
    let enabled = s
        .send(
            reqwest::Method::PATCH,
            &s.admin,
            &format!("/api/v1/admin/webhook-endpoints/{ep}"),
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(enabled.status(), 200);
    assert!(enabled.json::<Value>().await.unwrap()["failing_since"].is_null());
}

/// Debits (balance row, then the user's outbox sequence) racing the payment of credits packs
/// (order, sequence, balance) for one user: one lock order everywhere, so PostgreSQL never
/// aborts one of them with a deadlock (40P01): no 5xx, no failed event, the balance adds up.
#[tokio::test]
async fn debits_racing_credits_packs_being_paid_never_deadlock() {
    use crate::helpers::keys::api_key;
    use futures_util::future::join_all;
    let s = shop(&[]).await;
    let (url, _r) = receiver(Receiver::default()).await;
    endpoint(&s, &url, &["credits.changed"]).await;
    let key = api_key(&s.app, &s.admin, &["credits:write"]).await;
    let product = s.credits_product(1000, 100).await;
    // A starting balance that covers every debit.
    let first = s.checkout(&product).await;
    assert_eq!(s.deliver(&completed(&first, 1000).1).await, 200);
    let mut packs = Vec::new();
    for _ in 0..8 {
        packs.push(completed(&s.checkout(&product).await, 1000));
    }
    let debits = join_all((0..40).map(|i| {
        let (s, key) = (&s, &key);
        async move {
            let path = format!("/api/v1/users/{}/credits/debits", s.user_id);
            let r = s.app.client.post(s.app.url(&path)).bearer_auth(key).header("Idempotency-Key", format!("race-{i}"));
            r.json(&json!({"amount": 1, "reason": "x"})).send().await.unwrap().status().as_u16()
        }
    }));
    let paid = join_all(packs.iter().map(|(_, body)| s.deliver(body)));
    let (debited, paid) = tokio::join!(debits, paid);
    assert!(debited.iter().all(|st| *st == 201), "{debited:?}");
    assert!(paid.iter().all(|st| *st == 200), "{paid:?}");
    for (event, _) in &packs {
        assert_eq!(s.event_status(event).await, "processed", "{event}");
    }
    assert_eq!(s.app.store.credit_balance(&s.user_id).await.unwrap(), 100 + 8 * 100 - 40);
    assert_eq!(s.app.store.check_credits().await.unwrap(), vec![]);
}

/// While an endpoint is disabled its facts are kept, `held` (neither sent nor failed); enabling
/// it again sends them. A PATCH changes only the fields it carries (a description change does
/// not re-enable an endpoint the dispatcher disabled meanwhile).
#[tokio::test]
async fn facts_of_a_disabled_period_are_held_and_sent_once_the_endpoint_is_enabled_again() {
    let s = shop(&[]).await;
    let (url, r) = receiver(Receiver::default()).await;
    let (ep, _) = endpoint(&s, &url, &["order.paid"]).await;
    let path = format!("/api/v1/admin/webhook-endpoints/{ep}");
    let patch = |body: Value| s.send(reqwest::Method::PATCH, &s.admin, &path, Some(body));
    assert_eq!(patch(json!({"disabled": true})).await.status(), 200);
    let (checkout, body) = paid_order(&s).await;
    assert_eq!(s.deliver(&body).await, 200);
    let m = until_messages(&s, &ep, "a held message", |m| m.len() == 1).await;
    assert_eq!(m[0]["status"], "held");
    // Only the description: still disabled.
    let changed = patch(json!({"description": "billing"})).await;
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!((changed["disabled"].as_bool(), changed["description"].as_str()), (Some(true), Some("billing")));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(r.got().is_empty(), "nothing is sent while disabled");
    assert_eq!(messages(&s, &ep).await[0]["status"], "held", "and nothing failed");

    assert_eq!(patch(json!({"disabled": false})).await.status(), 200);
    until("the held order.paid", || r.of_type("order.paid").len() == 1).await;
    let got: Value = serde_json::from_str(&r.got()[0].body).unwrap();
    assert_eq!(got["data"]["order"]["id"], checkout["order_id"]);
    until_messages(&s, &ep, "delivered", |m| m[0]["status"] == "delivered").await;
}

/// 40 messages due at once (pings queued while the endpoint was disabled, then enabled in one
/// commit) are each delivered once and settled `delivered` with exactly one attempt. The receiver
/// holds the first request it gets: the deliveries claimed beside it are settled (and seen
/// `delivered` by the admin) while it is still being sent, so one slow send holds no other
/// attempt's settling back. Then it is answered, and the rest follow.
#[tokio::test]
async fn forty_messages_due_at_once_are_each_settled_delivered_with_one_attempt() {
    const MESSAGES: usize = 40;
    let s = shop(&[]).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (url, r) = receiver(Receiver { hold_first: Some(gate.clone()), ..Receiver::default() }).await;
    let (ep, _) = endpoint(&s, &url, &["ping"]).await;
    let path = format!("/api/v1/admin/webhook-endpoints/{ep}");
    let patch = |body: Value| s.send(reqwest::Method::PATCH, &s.admin, &path, Some(body));
    assert_eq!(patch(json!({"disabled": true})).await.status(), 200);
    for _ in 0..MESSAGES {
        let queued = s.send(reqwest::Method::POST, &s.admin, &format!("{path}/ping"), None).await;
        assert_eq!(queued.status(), 202);
    }
    until_messages(&s, &ep, "every ping held", |m| m.len() == MESSAGES && m.iter().all(|m| m["status"] == "held")).await;
    assert!(r.got().is_empty());
    assert_eq!(patch(json!({"disabled": false})).await.status(), 200);

    let delivered = |m: &[Value]| m.iter().filter(|m| m["status"] == "delivered").count();
    let m = until_messages(&s, &ep, "deliveries settled while the first is held", |m| delivered(m) >= 10).await;
    let held = r.held.lock().unwrap().clone().expect("the first request is held");
    assert!(r.in_flight.lock().unwrap()[&held] > 0, "still being sent");
    let held_row = m.iter().find(|m| m["id"] == held.as_str()).unwrap();
    assert_eq!(held_row["status"], "pending", "{held_row}");
    gate.add_permits(1);

    let m = until_messages(&s, &ep, "every ping delivered", |m| delivered(m) == MESSAGES).await;
    for m in &m {
        let attempts = m["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{m}");
        assert_eq!(attempts[0]["status_code"], 200, "{m}");
    }
    let mut ids: Vec<String> = r.got().into_iter().map(|g| g.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), r.got().len()), (MESSAGES, MESSAGES), "each message sent once");
    assert_eq!(*r.overlaps.lock().unwrap(), 0);
}

/// An admin's browser session changes webhook endpoints only with its CSRF token: without it
/// (what a forged cross-site request carries) 403 and nothing changes.
#[tokio::test]
async fn a_session_without_the_csrf_token_cannot_change_webhook_endpoints() {
    use crate::helpers::accounts::{login, PASSWORD};
    let s = shop(&[]).await;
    let (ep, _) = endpoint(&s, "http://127.0.0.1:9/hook", &["ping"]).await;
    let b = login(&s.app, "admin@example.com", PASSWORD).await;
    let send = |method: reqwest::Method, path: String, csrf: bool| {
        let mut r = s.app.client.request(method, s.app.url(&path)).header("cookie", &b.cookie).json(&json!({"disabled": true}));
        if csrf {
            r = r.header("x-csrf-token", &b.csrf);
        }
        r.send()
    };
    let create = s.app.client.post(s.app.url("/api/v1/admin/webhook-endpoints")).header("cookie", &b.cookie);
    let create = create.json(&json!({"url": "http://127.0.0.1:9/other", "events": ["ping"]})).send().await.unwrap();
    assert_problem(create, 403).await;
    let path = format!("/api/v1/admin/webhook-endpoints/{ep}");
    assert_problem(send(reqwest::Method::PATCH, path.clone(), false).await.unwrap(), 403).await;
    assert_problem(send(reqwest::Method::POST, format!("{path}/rotate-secret"), false).await.unwrap(), 403).await;
    assert_problem(send(reqwest::Method::DELETE, path.clone(), false).await.unwrap(), 403).await;
    let e = s.app.store.endpoint(&ep).await.unwrap().expect("not deleted");
    assert!(!e.disabled, "not changed");
    assert_eq!(s.app.store.endpoints().await.unwrap().len(), 1, "none created");
    // With the token the same session may.
    assert_eq!(send(reqwest::Method::PATCH, path, true).await.unwrap().status(), 200);
}
