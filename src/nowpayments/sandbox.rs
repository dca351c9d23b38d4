//! NOWPayments' stand-in in development (no keys): invoices live in memory; the buyer's choice on
//! `/sandbox/nowpayments/{invoice}` becomes the IPNs NOWPayments would send, signed with the
//! sandbox's IPN secret and POSTed over HTTP to our own `/api/v1/webhooks/nowpayments`; and
//! `GET /v1/payment/{id}` (the status re-check before fulfilling) is answered from the same memory.
//! Development only: production never builds it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::json;
use url::Url;

use super::canonical::canonicalize;
use super::signature::sign;
use super::{InvoiceCreated, InvoiceRequest, NowPayments, ProviderError};
use crate::domain::catalog::to_decimal;

#[derive(Debug, Clone)]
struct Invoice {
    order_id: String,
    amount: i64,
    currency: String,
    success_url: String,
    cancel_url: String,
    /// The payment made on it, once the buyer chose, and its status.
    payment: Option<(u64, &'static str)>,
}

/// What the buyer chose on the sandbox page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoChoice {
    /// `confirming`, then `finished`.
    Pay,
    /// `partially_paid`: half the crypto arrives.
    PayPart,
    /// `expired`: nothing arrives.
    Expire,
}

impl CryptoChoice {
    pub fn parse(s: &str) -> Option<CryptoChoice> {
        match s {
            "pay" => Some(CryptoChoice::Pay),
            "partial" => Some(CryptoChoice::PayPart),
            "expire" => Some(CryptoChoice::Expire),
            _ => None,
        }
    }
}

/// What the sandbox page shows.
#[derive(Debug, Clone)]
pub struct InvoicePage {
    pub order_id: String,
    /// `12.99 USD`.
    pub price: String,
    /// The payment's status, once there is one.
    pub status: Option<&'static str>,
    pub success_url: String,
    pub cancel_url: String,
}

pub struct NowPaymentsSandbox {
    invoices: Mutex<HashMap<String, Invoice>>,
    public_url: Url,
    ipn_url: Url,
    secret: SecretString,
    http: reqwest::Client,
}

impl std::fmt::Debug for NowPaymentsSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NowPaymentsSandbox").field("ipn_url", &self.ipn_url.as_str()).finish_non_exhaustive()
    }
}

impl NowPaymentsSandbox {
    /// `ipn_url` is our own IPN endpoint; IPNs are signed with `secret`.
    pub fn new(public_url: Url, ipn_url: Url, secret: SecretString) -> Result<NowPaymentsSandbox, ProviderError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            // Our own listener on loopback, whatever name its development certificate carries.
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| ProviderError::Network(e.to_string()))?;
        Ok(NowPaymentsSandbox { invoices: Mutex::new(HashMap::new()), public_url, ipn_url, secret, http })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Invoice>> {
        self.invoices.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn page(&self, invoice_id: &str) -> Option<InvoicePage> {
        self.lock().get(invoice_id).map(|i| InvoicePage {
            order_id: i.order_id.clone(),
            price: format!("{} {}", to_decimal(i.amount, &i.currency), i.currency.to_uppercase()),
            status: i.payment.map(|(_, s)| s),
            success_url: i.success_url.clone(),
            cancel_url: i.cancel_url.clone(),
        })
    }

    /// Carries out the buyer's choice and delivers the IPNs NOWPayments would send, in order.
    pub async fn choose(&self, invoice_id: &str, choice: CryptoChoice) -> Result<(), ProviderError> {
        let (invoice, payment_id) = {
            let mut invoices = self.lock();
            let invoice = invoices.get_mut(invoice_id).ok_or(ProviderError::NotFound)?;
            if invoice.payment.is_some() {
                return Err(ProviderError::Unsupported("this invoice was already paid or expired"));
            }
            let payment_id = 5_000_000_000 + rand::random::<u32>() as u64;
            invoice.payment = Some((payment_id, "waiting"));
            (invoice.clone(), payment_id)
        };
        let steps: &[&'static str] = match choice {
            CryptoChoice::Pay => &["confirming", "finished"],
            CryptoChoice::PayPart => &["partially_paid"],
            CryptoChoice::Expire => &["expired"],
        };
        for (i, status) in steps.iter().enumerate() {
            // The API answers the new status before the IPN that announces it goes out.
            if let Some(stored) = self.lock().get_mut(invoice_id) {
                stored.payment = Some((payment_id, status));
            }
            let body = payment_json(invoice_id, &invoice, payment_id, status, i);
            self.deliver(&body).await?;
        }
        Ok(())
    }

    async fn deliver(&self, body: &[u8]) -> Result<(), ProviderError> {
        let (_, canonical) = canonicalize(body).map_err(|e| ProviderError::Malformed(e.to_string()))?;
        let response = self
            .http
            .post(self.ipn_url.clone())
            .header("content-type", "application/json")
            .header("x-nowpayments-sig", sign(&canonical, &self.secret))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| ProviderError::Network(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(ProviderError::Api {
                status: response.status().as_u16(),
                kind: "ipn".to_owned(),
                code: "delivery_refused".to_owned(),
                message: format!("our IPN endpoint answered {}", response.status()),
            });
        }
        Ok(())
    }
}

/// A payment as NOWPayments serialises it (in an IPN and from `GET /v1/payment/{id}`), paid in
/// sandbox "BTC" at a made-up rate: the crypto amounts are decimal texts, never computed floats.
fn payment_json(invoice_id: &str, invoice: &Invoice, payment_id: u64, status: &str, step: usize) -> Vec<u8> {
    let pay_amount = "0.00021";
    let actually_paid = match status {
        "finished" | "confirming" => "0.00021",
        "partially_paid" => "0.0001",
        _ => "0",
    };
    let body = json!({
        "payment_id": payment_id,
        "invoice_id": invoice_id.parse::<u64>().unwrap_or_default(),
        "payment_status": status,
        "pay_address": "tb1qsandboxsandboxsandboxsandboxsandbox",
        "price_amount": to_decimal(invoice.amount, &invoice.currency),
        "price_currency": invoice.currency,
        "pay_amount": pay_amount,
        "actually_paid": actually_paid,
        "pay_currency": "btc",
        "order_id": invoice.order_id,
        "order_description": "sandbox",
        "purchase_id": payment_id.to_string(),
        "outcome_amount": actually_paid,
        "outcome_currency": "btc",
        "created_at": chrono::Utc::now().to_rfc3339(),
        // Milliseconds, distinct per step, as NOWPayments' are.
        "updated_at": chrono::Utc::now().timestamp_millis() + step as i64,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[async_trait]
impl NowPayments for NowPaymentsSandbox {
    async fn create_invoice(&self, r: &InvoiceRequest) -> Result<InvoiceCreated, ProviderError> {
        let id = (4_000_000_000 + rand::random::<u32>() as u64).to_string();
        let mut url = self.public_url.clone();
        url.set_path(&format!("/sandbox/nowpayments/{id}"));
        let invoice = Invoice {
            order_id: r.order_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
            success_url: r.success_url.clone(),
            cancel_url: r.cancel_url.clone(),
            payment: None,
        };
        self.lock().insert(id.clone(), invoice);
        Ok(InvoiceCreated { id, url: url.to_string() })
    }

    async fn payment(&self, payment_id: &str) -> Result<Vec<u8>, ProviderError> {
        let invoices = self.lock();
        let (invoice_id, invoice, status) = invoices
            .iter()
            .find_map(|(id, i)| i.payment.filter(|(p, _)| p.to_string() == payment_id).map(|(_, s)| (id, i, s)))
            .ok_or(ProviderError::NotFound)?;
        Ok(payment_json(invoice_id, invoice, payment_id.parse().unwrap_or_default(), status, 0))
    }

    fn live(&self) -> bool {
        false
    }
}
