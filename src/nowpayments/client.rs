//! The NOWPayments API client: `POST /v1/invoice` and `GET /v1/payment/{id}` with `x-api-key`,
//! timeouts, and retries (GETs only: an invoice has no idempotency key, so a POST is tried once
//! and a failure leaves the order unpayable rather than with two invoices). Errors never hold the
//! key.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::canonical::{parse, Value};
use super::{InvoiceCreated, InvoiceRequest, NowPayments, ProviderError};
use crate::domain::catalog::to_decimal;

/// Attempts per GET, the first included.
const ATTEMPTS: u32 = 3;

pub struct NowPaymentsClient {
    http: reqwest::Client,
    base: Url,
    key: SecretString,
    backoff: Duration,
}

/// Names only; the key stays out of `Debug`.
impl std::fmt::Debug for NowPaymentsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NowPaymentsClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

/// A JSON string literal (serde_json escapes it; no float is involved anywhere in the body).
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The body of `POST /v1/invoice`. `price_amount` is written as a JSON number built from the
/// integer minor units (`1299` usd → `12.99`), never through a float.
pub fn invoice_body(r: &InvoiceRequest) -> String {
    format!(
        "{{\"price_amount\":{},\"price_currency\":{},\"order_id\":{},\"order_description\":{},\"ipn_callback_url\":{},\"success_url\":{},\"cancel_url\":{}}}",
        to_decimal(r.amount, &r.currency),
        json_string(&r.currency),
        json_string(&r.order_id),
        json_string(&r.description),
        json_string(&r.ipn_callback_url),
        json_string(&r.success_url),
        json_string(&r.cancel_url),
    )
}

/// A field as text, whether the API sent it as a string or a number.
fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_text).filter(|s| !s.is_empty())
}

impl NowPaymentsClient {
    pub fn new(base: Url, key: SecretString) -> Result<NowPaymentsClient, ProviderError> {
        let refusal = "NOWPAYMENTS_API_BASE must be https (plain http only to this machine): the API key would travel in clear";
        let http = crate::stripe::client::provider_http(&base, refusal)?;
        Ok(NowPaymentsClient { http, base, key, backoff: Duration::from_millis(250) })
    }

    /// A shorter pause between attempts (tests).
    pub fn with_backoff(mut self, backoff: Duration) -> NowPaymentsClient {
        self.backoff = backoff;
        self
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        self.base.join(path).map_err(|e| ProviderError::Malformed(format!("bad URL: {e}")))
    }

    async fn call(&self, method: Method, url: Url, body: Option<String>) -> Result<Vec<u8>, ProviderError> {
        let attempts = if method == Method::GET { ATTEMPTS } else { 1 };
        let mut last = ProviderError::Network("no attempt made".to_owned());
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff * 2u32.pow(attempt - 1)).await;
            }
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header("x-api-key", self.key.expose_secret())
                .header("accept", "application/json");
            if let Some(body) = &body {
                request = request.header("content-type", "application/json").body(body.clone());
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = ProviderError::Network(format!("NOWPayments: {}", e.without_url()));
                    tracing::warn!(attempt, error = %last, "nowpayments request failed");
                    continue;
                }
            };
            let status = response.status();
            let bytes = response.bytes().await.unwrap_or_default().to_vec();
            if status.is_success() {
                return Ok(bytes);
            }
            let error = parse(&bytes).ok();
            let field = |k: &str| error.as_ref().and_then(|e| text(e, k)).unwrap_or_default();
            last = if status == StatusCode::NOT_FOUND {
                ProviderError::NotFound
            } else {
                ProviderError::Api {
                    status: status.as_u16(),
                    kind: "nowpayments".to_owned(),
                    code: field("code"),
                    message: field("message"),
                }
            };
            let retry = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            tracing::warn!(attempt, status = status.as_u16(), retry, error = %last, "nowpayments request refused");
            if !retry {
                break;
            }
        }
        Err(last)
    }
}

#[async_trait]
impl NowPayments for NowPaymentsClient {
    async fn create_invoice(&self, request: &InvoiceRequest) -> Result<InvoiceCreated, ProviderError> {
        let bytes = self.call(Method::POST, self.url("/v1/invoice")?, Some(invoice_body(request))).await?;
        let answer = parse(&bytes).map_err(|e| ProviderError::Malformed(format!("NOWPayments invoice: {e}")))?;
        let id = text(&answer, "id").ok_or_else(|| ProviderError::Malformed("NOWPayments invoice without an id".to_owned()))?;
        let url = text(&answer, "invoice_url")
            .filter(|u| Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "https" | "http")))
            .ok_or_else(|| ProviderError::Malformed("NOWPayments invoice without an invoice_url".to_owned()))?;
        Ok(InvoiceCreated { id, url })
    }

    async fn payment(&self, payment_id: &str) -> Result<Vec<u8>, ProviderError> {
        // Ids are digits; anything else is refused rather than put in a path.
        if payment_id.is_empty() || payment_id.len() > 64 || !payment_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ProviderError::Malformed("not a NOWPayments payment id".to_owned()));
        }
        self.call(Method::GET, self.url(&format!("/v1/payment/{payment_id}"))?, None).await
    }

    fn live(&self) -> bool {
        !self.base.host_str().is_some_and(|h| h.contains("sandbox")) && !crate::stripe::client::is_loopback(&self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invoice_body_carries_a_decimal_made_without_floats() {
        let r = InvoiceRequest {
            order_id: "ord_1".into(),
            amount: 1299,
            currency: "usd".into(),
            description: "Pro \"month\"".into(),
            ipn_callback_url: "https://pay.example.org/api/v1/webhooks/nowpayments".into(),
            success_url: "https://app.example.org/done".into(),
            cancel_url: "https://app.example.org/cancel".into(),
        };
        let body = invoice_body(&r);
        assert!(body.starts_with("{\"price_amount\":12.99,\"price_currency\":\"usd\",\"order_id\":\"ord_1\""), "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["order_description"], "Pro \"month\"");
        assert!(format!(
            "{:?}",
            NowPaymentsClient::new(Url::parse("https://api.nowpayments.io").unwrap(), SecretString::from("k-secret")).unwrap()
        )
        .find("k-secret")
        .is_none());
        assert!(NowPaymentsClient::new(Url::parse("http://api.nowpayments.io").unwrap(), SecretString::from("k")).is_err());
    }
}
