//! Stripe events as Stripe sends them: built from Stripe's own example objects
//! (`tests/fixtures/stripe/fixtures3.json`, vendored), signed with a known webhook secret and
//! delivered to the webhook endpoint.

use serde_json::{json, Value};
use tollgate::stripe::client::STRIPE_VERSION;

use super::app::TestApp;

/// The webhook signing secret the test apps are configured with.
pub const WHSEC: &str = "whsec_test_0123456789abcdef0123456789abcdef";

/// Stripe's example objects, read and parsed once per test binary.
fn fixtures() -> &'static Value {
    static FIXTURES: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    FIXTURES.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stripe/fixtures3.json");
        let text = std::fs::read_to_string(path).expect("tests/fixtures/stripe/fixtures3.json");
        serde_json::from_str(&text).unwrap()
    })
}

/// Stripe's example object `name` (`checkout.session`, `charge`, `refund`, …).
pub fn fixture(name: &str) -> Value {
    let object = fixtures()["resources"][name].clone();
    assert!(object.is_object(), "fixture {name}");
    object
}

/// Stripe's example object `name` with `fields` set over its own.
pub fn fixture_with(name: &str, fields: Value) -> Value {
    let mut object = fixture(name);
    for (k, v) in fields.as_object().expect("fields are an object") {
        object[k] = v.clone();
    }
    object
}

/// A Stripe event of type `kind` around the example object `object`: test mode, a fresh id, our
/// pinned API version. `.with(fields)` sets fields of the object, `.live()` makes it a live-mode
/// event; `.build()` gives its id and its bytes.
pub fn event(kind: &str, object: &str) -> Event {
    Event { kind: kind.to_owned(), object: object.to_owned(), fields: json!({}), livemode: false }
}

/// An event being built; see [`event`].
pub struct Event {
    kind: String,
    object: String,
    fields: Value,
    livemode: bool,
}

impl Event {
    /// Sets `fields` of the event's object over the example's.
    pub fn with(mut self, fields: Value) -> Event {
        self.fields = fields;
        self
    }

    /// A live-mode event (the fixtures are test mode).
    pub fn live(mut self) -> Event {
        self.livemode = true;
        self
    }

    /// The event's id and the bytes Stripe would send.
    pub fn build(self) -> (String, Vec<u8>) {
        let mut e = fixture("event");
        let id = format!("evt_test{}", uuid::Uuid::new_v4().simple());
        e["id"] = json!(id);
        e["type"] = json!(self.kind);
        e["livemode"] = json!(self.livemode);
        e["api_version"] = json!(STRIPE_VERSION);
        e["data"]["object"] = fixture_with(&self.object, self.fields);
        (id, serde_json::to_vec_pretty(&e).unwrap())
    }
}

/// POSTs `body` to the webhook endpoint with the `Stripe-Signature` header `signature`.
pub async fn deliver(app: &TestApp, body: &[u8], signature: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}
