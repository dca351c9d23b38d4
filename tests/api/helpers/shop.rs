//! A shop: an app with a known webhook secret, an admin and a buyer (bearer tokens), the calls
//! the payments tests make as them, and the Stripe events about the buyer's orders.

use serde_json::{json, Value};
use tollgate::domain::account::Role;
use tollgate::stripe::webhook::sign;
use wiremock::MockServer;

use super::accounts::bearer_for;
use super::app::{spawn_app_with, TestApp};
use super::stripe::{deliver, event, WHSEC};
use super::stripe_api::SK;

/// An app that sells: its admin and its buyer, each with an access token.
pub struct Shop {
    pub app: TestApp,
    /// The admin's access token.
    pub admin: String,
    /// The buyer's access token.
    pub user: String,
    /// The buyer's id.
    pub user_id: String,
}

/// An app with a known webhook secret: the sandbox provider unless `extra` configures Stripe.
pub async fn shop(extra: &[(&str, &str)]) -> Shop {
    let mut env = vec![("STRIPE_WEBHOOK_SECRET", WHSEC)];
    env.extend_from_slice(extra);
    let app = spawn_app_with(&env).await;
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let (user, user_id) = bearer_for(&app, "buyer@example.com", Role::User).await;
    Shop { app, admin, user, user_id }
}

/// A shop whose Stripe is `mock` (see [`super::stripe_api`]).
pub async fn stripe_shop(mock: &MockServer, extra: &[(&str, &str)]) -> Shop {
    let uri = mock.uri();
    let mut env = vec![("STRIPE_SECRET_KEY", SK), ("STRIPE_API_BASE", uri.as_str())];
    env.extend_from_slice(extra);
    shop(&env).await
}

impl Shop {
    /// `method path` as `token`, with `body` as JSON if any.
    pub async fn send(&self, method: reqwest::Method, token: &str, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut r = self.app.client.request(method, self.app.url(path)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, token, path, Some(body)).await
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, token, path, None).await
    }

    /// A new catalog product (`body` as the admin sends it); its id.
    pub async fn product(&self, body: Value) -> String {
        let r = self.post(&self.admin, "/api/v1/admin/products", body).await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    /// A new product that grants `credits` for `amount` cents (USD); its id.
    pub async fn credits_product(&self, amount: i64, credits: i64) -> String {
        self.product(
            json!({"name": "Credits", "amount": amount, "currency": "usd", "grant": {"kind": "credits", "amount": credits}}),
        )
        .await
    }

    /// The buyer checks `product_id` out: the checkout session's answer.
    pub async fn checkout(&self, product_id: &str) -> Value {
        let r = self.post(&self.user, "/api/v1/checkout/sessions", json!({"product_id": product_id})).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// The buyer's order `id`, as the buyer reads it.
    pub async fn order(&self, id: &str) -> Value {
        let r = self.get(&self.user, &format!("/api/v1/orders/{id}")).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// What the buyer is entitled to now.
    pub async fn entitlements(&self) -> Value {
        let r = self.get(&self.user, "/api/v1/me/entitlements").await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Delivers a Stripe event, signed now with [`WHSEC`]; the status the webhook answered.
    pub async fn deliver(&self, body: &[u8]) -> u16 {
        deliver(&self.app, body, &sign(body, WHSEC, chrono::Utc::now().timestamp())).await.status().as_u16()
    }

    /// Grants the database holds for `order_id` (the UNIQUE constraint says at most one).
    pub async fn grants(&self, order_id: &str) -> Vec<tollgate::store::payments::GrantRow> {
        self.app.store.grants_for_user(&self.user_id).await.unwrap().into_iter().filter(|g| g.order_id == order_id).collect()
    }

    /// Presses a button on the sandbox's checkout page for `checkout`.
    pub async fn sandbox(&self, checkout: &Value, choice: &str) -> u16 {
        let page = url::Url::parse(checkout["checkout_url"].as_str().unwrap()).unwrap();
        let form = self.app.client.post(self.app.url(page.path())).header("content-type", "application/x-www-form-urlencoded");
        form.body(format!("choice={choice}")).send().await.unwrap().status().as_u16()
    }

    /// The ledger status of event `id`.
    pub async fn event_status(&self, id: &str) -> String {
        self.app.store.event(id).await.unwrap().expect("in the ledger").0.status.as_str().to_owned()
    }
}

/// The payment intent id the order events below give the order `order_id`.
pub fn pi_of(order_id: &str) -> String {
    format!("pi_for_{order_id}")
}

/// The fields of a checkout session for `checkout` (what [`Shop::checkout`] answered).
pub fn session_fields(checkout: &Value, status: &str, payment_status: &str, amount: i64, currency: &str) -> Value {
    let order_id = checkout["order_id"].as_str().unwrap();
    json!({
        "id": checkout["checkout_session_id"], "client_reference_id": order_id, "metadata": {"order_id": order_id},
        "status": status, "payment_status": payment_status, "amount_total": amount, "currency": currency,
        "payment_intent": pi_of(order_id),
    })
}

/// `checkout.session.completed`: `checkout` was paid `amount` (USD).
pub fn completed(checkout: &Value, amount: i64) -> (String, Vec<u8>) {
    event("checkout.session.completed", "checkout.session")
        .with(session_fields(checkout, "complete", "paid", amount, "usd"))
        .build()
}

/// `checkout.session.expired` for `checkout`.
pub fn expired(checkout: &Value) -> (String, Vec<u8>) {
    event("checkout.session.expired", "checkout.session").with(session_fields(checkout, "expired", "unpaid", 0, "usd")).build()
}

/// `charge.refunded` for `checkout`: `amount_refunded` of `amount` refunded so far.
pub fn refunded(checkout: &Value, amount: i64, amount_refunded: i64) -> (String, Vec<u8>) {
    let order_id = checkout["order_id"].as_str().unwrap();
    event("charge.refunded", "charge")
        .with(json!({"id": format!("ch_for_{order_id}"), "amount": amount, "amount_captured": amount, "amount_refunded": amount_refunded,
               "currency": "usd", "payment_intent": pi_of(order_id), "metadata": {"order_id": order_id},
               "refunded": amount_refunded >= amount, "captured": true}))
        .build()
}

/// A dispute event `kind` with `status` on the charge of `checkout`.
pub fn dispute(checkout: &Value, kind: &str, status: &str) -> (String, Vec<u8>) {
    let order_id = checkout["order_id"].as_str().unwrap();
    event(kind, "dispute")
        .with(json!({"charge": format!("ch_for_{order_id}"), "payment_intent": pi_of(order_id), "status": status}))
        .build()
}
