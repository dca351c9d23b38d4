//! Everything that knows NOWPayments' wire format: the canonical JSON its IPN signatures are
//! computed over, the IPN verifier, what an IPN's status means for an order (`ipn.rs`), and the
//! API client (or the sandbox, `sandbox.rs`, in development). Orders, grants and the ledger never
//! see these shapes; they get the same domain facts Stripe's events produce.

pub mod canonical;
pub mod client;
pub mod ipn;
pub mod sandbox;

pub mod signature;

use async_trait::async_trait;

pub use crate::stripe::ProviderError;

/// An invoice (NOWPayments' hosted payment page) for one order.
#[derive(Debug, Clone)]
pub struct InvoiceRequest {
    pub order_id: String,
    /// The order's total in the currency's minor unit, from the catalog.
    pub amount: i64,
    pub currency: String,
    pub description: String,
    pub ipn_callback_url: String,
    pub success_url: String,
    pub cancel_url: String,
}

#[derive(Debug, Clone)]
pub struct InvoiceCreated {
    pub id: String,
    pub url: String,
}

/// The NOWPayments calls tollgate makes: the real API, or the sandbox.
#[async_trait]
pub trait NowPayments: Send + Sync + 'static {
    /// `POST /v1/invoice`.
    async fn create_invoice(&self, request: &InvoiceRequest) -> Result<InvoiceCreated, ProviderError>;
    /// `GET /v1/payment/{payment_id}`: the payment as the API serialises it.
    async fn payment(&self, payment_id: &str) -> Result<Vec<u8>, ProviderError>;
    /// Whether this is real money (not the sandbox, not NOWPayments' own sandbox API).
    fn live(&self) -> bool;
}
