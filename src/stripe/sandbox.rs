//! The sandbox provider: Checkout without a Stripe account or a network. Sessions live in memory;
//! paying, declining or canceling one on `/sandbox/checkout/{id}` sends Stripe-shaped events,
//! signed with the webhook secret, over HTTP to our own webhook endpoint: the path Stripe uses.
//! Development only; production refuses to start with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use url::Url;

use super::client::STRIPE_VERSION;
use super::webhook::sign;
use super::{
    CheckoutCreated, CheckoutRequest, EventPage, PaymentIntentCreated, PaymentIntentRequest, Provider, ProviderError,
    RefundCreated, RefundRequest,
};

#[derive(Debug, Clone)]
struct Payment {
    order_id: String,
    amount: i64,
    currency: String,
    /// `cs_…` for Checkout, absent for the PaymentIntent flow.
    session_id: Option<String>,
    payment_intent_id: String,
    status: SessionState,
    payment_status: &'static str,
    amount_refunded: i64,
    success_url: String,
    cancel_url: String,
    expires_at: i64,
}

/// Where a sandbox checkout stands (Stripe's Checkout Session statuses, and `canceled` for a
/// PaymentIntent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Open,
    Complete,
    Expired,
    Canceled,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Open => "open",
            SessionState::Complete => "complete",
            SessionState::Expired => "expired",
            SessionState::Canceled => "canceled",
        }
    }
}

/// What the buyer chose on the sandbox page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Pay,
    Decline,
    Cancel,
}

impl Choice {
    pub fn parse(s: &str) -> Option<Choice> {
        match s {
            "pay" => Some(Choice::Pay),
            "decline" => Some(Choice::Decline),
            "cancel" => Some(Choice::Cancel),
            _ => None,
        }
    }
}

/// What the sandbox page shows.
#[derive(Debug, Clone)]
pub struct PageInfo {
    pub order_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: SessionState,
    pub success_url: String,
    pub cancel_url: String,
}

pub struct Sandbox {
    payments: Mutex<HashMap<String, Payment>>,
    public_url: Url,
    webhook_url: Url,
    secret: SecretString,
    http: reqwest::Client,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("webhook_url", &self.webhook_url.as_str()).finish_non_exhaustive()
    }
}

fn sandbox_id(prefix: &str) -> String {
    format!("{prefix}_sandbox_{}", uuid::Uuid::new_v4().simple())
}

impl Sandbox {
    /// `webhook_url` is our own webhook endpoint; events are signed with `secret`.
    pub fn new(public_url: Url, webhook_url: Url, secret: SecretString) -> Result<Sandbox, ProviderError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            // Our own listener on loopback, whatever name its development certificate carries.
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| ProviderError::Network(e.to_string()))?;
        Ok(Sandbox { payments: Mutex::new(HashMap::new()), public_url, webhook_url, secret, http })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Payment>> {
        self.payments.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checkout page details for a session or PaymentIntent id.
    pub fn page(&self, id: &str) -> Option<PageInfo> {
        self.lock().get(id).map(|p| PageInfo {
            order_id: p.order_id.clone(),
            amount: p.amount,
            currency: p.currency.clone(),
            status: p.status,
            success_url: p.success_url.clone(),
            cancel_url: p.cancel_url.clone(),
        })
    }

    /// Carries out the buyer's choice and delivers the events Stripe would send.
    pub async fn choose(&self, id: &str, choice: Choice) -> Result<(), ProviderError> {
        let events = {
            let mut payments = self.lock();
            let p = payments.get_mut(id).ok_or(ProviderError::NotFound)?;
            if p.status != SessionState::Open {
                return Err(ProviderError::Unsupported("this checkout is no longer open"));
            }
            match (choice, p.session_id.is_some()) {
                (Choice::Pay, true) => {
                    p.status = SessionState::Complete;
                    p.payment_status = "paid";
                    vec![event("checkout.session.completed", session_object(p))]
                }
                (Choice::Pay, false) => {
                    p.status = SessionState::Complete;
                    vec![event("payment_intent.succeeded", intent_object(p, "succeeded", true))]
                }
                // A declined card: the page stays open for another try, as Stripe's does.
                (Choice::Decline, _) => {
                    vec![event("payment_intent.payment_failed", intent_object(p, "requires_payment_method", false))]
                }
                (Choice::Cancel, true) => {
                    p.status = SessionState::Expired;
                    vec![event("checkout.session.expired", session_object(p))]
                }
                (Choice::Cancel, false) => {
                    p.status = SessionState::Canceled;
                    vec![event("payment_intent.canceled", intent_object(p, "canceled", false))]
                }
            }
        };
        for e in events {
            self.deliver(&e).await?;
        }
        Ok(())
    }

    async fn deliver(&self, event: &Value) -> Result<(), ProviderError> {
        let body = serde_json::to_vec(event).map_err(|e| ProviderError::Malformed(e.to_string()))?;
        let signature = sign(&body, self.secret.expose_secret(), chrono::Utc::now().timestamp());
        let response = self
            .http
            .post(self.webhook_url.clone())
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| ProviderError::Network(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(ProviderError::Api {
                status: response.status().as_u16(),
                kind: "webhook".to_owned(),
                code: "delivery_refused".to_owned(),
                message: format!("our webhook endpoint answered {}", response.status()),
            });
        }
        Ok(())
    }
}

fn event(kind: &str, object: Value) -> Value {
    json!({
        "id": sandbox_id("evt"),
        "object": "event",
        "api_version": STRIPE_VERSION,
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": kind,
        "data": {"object": object},
    })
}

fn session_object(p: &Payment) -> Value {
    json!({
        "id": p.session_id,
        "object": "checkout.session",
        "mode": "payment",
        "livemode": false,
        "amount_subtotal": p.amount,
        "amount_total": p.amount,
        "currency": p.currency,
        "client_reference_id": p.order_id,
        "metadata": {"order_id": p.order_id},
        "payment_intent": p.payment_intent_id,
        "payment_status": p.payment_status,
        "status": p.status.as_str(),
        "expires_at": p.expires_at,
        "success_url": p.success_url,
        "cancel_url": p.cancel_url,
    })
}

fn intent_object(p: &Payment, status: &str, paid: bool) -> Value {
    let received = if paid { p.amount } else { 0 };
    json!({
        "id": p.payment_intent_id,
        "object": "payment_intent",
        "livemode": false,
        "amount": p.amount,
        "amount_received": received,
        "currency": p.currency,
        "metadata": {"order_id": p.order_id},
        "status": status,
    })
}

#[async_trait]
impl Provider for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn create_checkout_session(&self, r: &CheckoutRequest) -> Result<CheckoutCreated, ProviderError> {
        let id = sandbox_id("cs_test");
        let mut url = self.public_url.clone();
        url.set_path(&format!("/sandbox/checkout/{id}"));
        let payment = Payment {
            order_id: r.order_id.clone(),
            amount: r.unit_amount * r.quantity,
            currency: r.currency.clone(),
            session_id: Some(id.clone()),
            payment_intent_id: sandbox_id("pi"),
            status: SessionState::Open,
            payment_status: "unpaid",
            amount_refunded: 0,
            success_url: r.success_url.clone(),
            cancel_url: r.cancel_url.clone(),
            expires_at: r.expires_at,
        };
        self.lock().insert(id.clone(), payment);
        Ok(CheckoutCreated { id, url: url.to_string(), expires_at: r.expires_at })
    }

    async fn retrieve_checkout_session(&self, id: &str) -> Result<Value, ProviderError> {
        self.lock().get(id).map(session_object).ok_or(ProviderError::NotFound)
    }

    async fn create_payment_intent(&self, r: &PaymentIntentRequest) -> Result<PaymentIntentCreated, ProviderError> {
        let id = sandbox_id("pi");
        let client_secret = format!("{id}_secret_{}", uuid::Uuid::new_v4().simple());
        let payment = Payment {
            order_id: r.order_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
            session_id: None,
            payment_intent_id: id.clone(),
            status: SessionState::Open,
            payment_status: "unpaid",
            amount_refunded: 0,
            success_url: String::new(),
            cancel_url: String::new(),
            expires_at: 0,
        };
        self.lock().insert(id.clone(), payment);
        Ok(PaymentIntentCreated { id, client_secret })
    }

    async fn create_refund(&self, r: &RefundRequest) -> Result<RefundCreated, ProviderError> {
        let (charge, amount) = {
            let mut payments = self.lock();
            let p = payments.values_mut().find(|p| p.payment_intent_id == r.payment_intent_id).ok_or(ProviderError::NotFound)?;
            let remaining = p.amount - p.amount_refunded;
            let amount = r.amount.unwrap_or(remaining);
            if amount <= 0 || amount > remaining {
                return Err(ProviderError::Api {
                    status: 400,
                    kind: "invalid_request_error".to_owned(),
                    code: "amount_too_large".to_owned(),
                    message: "refund exceeds the remaining amount".to_owned(),
                });
            }
            p.amount_refunded += amount;
            let charge = json!({
                "id": format!("ch_{}", p.payment_intent_id.trim_start_matches("pi_")),
                "object": "charge",
                "livemode": false,
                "amount": p.amount,
                "amount_captured": p.amount,
                "amount_refunded": p.amount_refunded,
                "currency": p.currency,
                "metadata": {"order_id": p.order_id},
                "paid": true,
                "payment_intent": p.payment_intent_id,
                "refunded": p.amount_refunded >= p.amount,
                "status": "succeeded",
            });
            (charge, amount)
        };
        self.deliver(&event("charge.refunded", charge)).await?;
        Ok(RefundCreated { id: sandbox_id("re"), status: crate::domain::orders::RefundStatus::Succeeded, amount })
    }

    async fn list_events(&self, _created_gte: i64, _starting_after: Option<&str>) -> Result<EventPage, ProviderError> {
        Err(ProviderError::Unsupported("the sandbox has no Events API; it delivers every event as it happens"))
    }
}
