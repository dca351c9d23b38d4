//! Everything that knows Stripe's wire format: the webhook signature verifier and event envelope,
//! what events mean for orders, the API client, and the sandbox that stands in for Stripe in
//! development. Both providers sit behind [`Provider`].

pub mod client;
pub mod events;
pub mod sandbox;
pub mod webhook;

use async_trait::async_trait;
use serde_json::Value;

/// A hosted Checkout Session for one order.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub order_id: String,
    pub product_name: String,
    /// Per unit, from the catalog.
    pub unit_amount: i64,
    pub currency: String,
    pub quantity: i64,
    pub stripe_price_id: Option<String>,
    pub customer_email: Option<String>,
    pub success_url: String,
    pub cancel_url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct CheckoutCreated {
    pub id: String,
    pub url: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct PaymentIntentRequest {
    pub order_id: String,
    /// The order's total, from the catalog.
    pub amount: i64,
    pub currency: String,
    pub description: String,
}

/// No `Debug`: the client secret lets a browser confirm the payment.
#[derive(Clone)]
pub struct PaymentIntentCreated {
    pub id: String,
    pub client_secret: String,
}

#[derive(Debug, Clone)]
pub struct RefundRequest {
    /// Our refund id: the Idempotency-Key is derived from it.
    pub refund_id: String,
    pub order_id: String,
    pub payment_intent_id: String,
    /// None: the whole remaining amount.
    pub amount: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RefundCreated {
    pub id: String,
    /// Stripe's word; a status tollgate does not know counts as `unknown` (still counted).
    pub status: crate::domain::orders::RefundStatus,
    pub amount: i64,
}

/// A page of Stripe's Events API.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// Each event as Stripe serialised it.
    pub events: Vec<(String, Vec<u8>)>,
    pub has_more: bool,
}

/// Why a provider call failed (Stripe's or NOWPayments'). The text is for logs: it never holds the API key.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("network error talking to the payment provider: {0}")]
    Network(String),
    #[error("the payment provider answered {status}: {kind} {code}")]
    Api { status: u16, kind: String, code: String, message: String },
    #[error("unexpected answer from the payment provider: {0}")]
    Malformed(String),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("no such object at the provider")]
    NotFound,
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn create_checkout_session(&self, request: &CheckoutRequest) -> Result<CheckoutCreated, ProviderError>;
    /// The session as Stripe serialises it (read by `events::session_fact`).
    async fn retrieve_checkout_session(&self, id: &str) -> Result<Value, ProviderError>;
    async fn create_payment_intent(&self, request: &PaymentIntentRequest) -> Result<PaymentIntentCreated, ProviderError>;
    async fn create_refund(&self, request: &RefundRequest) -> Result<RefundCreated, ProviderError>;
    /// Events created at or after `created_gte` (Unix seconds), newest first, after `starting_after`.
    async fn list_events(&self, created_gte: i64, starting_after: Option<&str>) -> Result<EventPage, ProviderError>;
}
