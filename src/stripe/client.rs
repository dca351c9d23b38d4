//! The Stripe API client: form-encoded POSTs with an `Idempotency-Key` derived from our own ids,
//! `Stripe-Version` pinned, timeouts, and retries with backoff on network errors, 429 and 5xx
//! (`Stripe-Should-Retry` decides when Stripe sends it). Retries reuse the key, so a retry can
//! never create a second session or refund.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use super::{
    CheckoutCreated, CheckoutRequest, EventPage, PaymentIntentCreated, PaymentIntentRequest, Provider, ProviderError,
    RefundCreated, RefundRequest,
};
use crate::domain::orders::RefundStatus;

/// The API version every request asks for; event and object shapes are read for this version.
pub const STRIPE_VERSION: &str = "2024-06-20";
/// Attempts per call, the first included.
const ATTEMPTS: u32 = 3;

pub struct StripeClient {
    http: reqwest::Client,
    base: Url,
    key: SecretString,
    backoff: Duration,
}

/// Names only; the key stays out of `Debug`.
impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

/// The HTTP client for a payment provider's API at `base`. Its key rides on every request: never in
/// clear beyond this machine, whatever the command (production's check-config says so too; the
/// sync commands never ran those checks), so a non-https base off loopback is `refusal`.
pub(crate) fn provider_http(base: &Url, refusal: &'static str) -> Result<reqwest::Client, ProviderError> {
    if base.scheme() != "https" && !is_loopback(base) {
        return Err(ProviderError::Unsupported(refusal));
    }
    // reqwest is built without a bundled crypto provider: ring, as in the server.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Network(e.to_string()))
}

/// Whether `url` names this machine (a mock or a tunnel on loopback).
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl StripeClient {
    pub fn new(base: Url, key: SecretString) -> Result<StripeClient, ProviderError> {
        let refusal = "STRIPE_API_BASE must be https (plain http only to this machine): the secret key would travel in clear";
        let http = provider_http(&base, refusal)?;
        Ok(StripeClient { http, base, key, backoff: Duration::from_millis(250) })
    }

    /// A shorter pause between attempts (tests).
    pub fn with_backoff(mut self, backoff: Duration) -> StripeClient {
        self.backoff = backoff;
        self
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        self.base.join(path).map_err(|e| ProviderError::Malformed(format!("bad URL: {e}")))
    }

    /// One call, retried when that is safe and useful. POSTs carry `idempotency_key`.
    async fn call(
        &self,
        method: Method,
        url: Url,
        form: Option<String>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ProviderError> {
        let mut last = ProviderError::Network("no attempt made".to_owned());
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let jitter = Duration::from_millis(rand::random::<u64>() % 100);
                tokio::time::sleep(self.backoff * 2u32.pow(attempt - 1) + jitter).await;
            }
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(self.key.expose_secret())
                .header("Stripe-Version", STRIPE_VERSION);
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = &form {
                request = request.header("Content-Type", "application/x-www-form-urlencoded").body(body.clone());
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    // reqwest's error text names the URL, never the Authorization header.
                    last = ProviderError::Network(e.without_url().to_string());
                    tracing::warn!(attempt, error = %last, "stripe request failed");
                    continue;
                }
            };
            let status = response.status();
            let should_retry = response.headers().get("stripe-should-retry").and_then(|v| v.to_str().ok()).map(|v| v == "true");
            let body = response.bytes().await.unwrap_or_default();
            if status.is_success() {
                return serde_json::from_slice(&body).map_err(|e| ProviderError::Malformed(e.to_string()));
            }
            let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let field = |k: &str| error["error"][k].as_str().unwrap_or("").to_owned();
            last = if status == StatusCode::NOT_FOUND {
                ProviderError::NotFound
            } else {
                ProviderError::Api {
                    status: status.as_u16(),
                    kind: field("type"),
                    code: field("code"),
                    message: field("message"),
                }
            };
            let retry = should_retry.unwrap_or(status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error());
            tracing::warn!(attempt, status = status.as_u16(), retry, error = %last, "stripe request refused");
            if !retry {
                break;
            }
        }
        Err(last)
    }

    async fn post(&self, path: &str, form: &[(String, String)], idempotency_key: &str) -> Result<Value, ProviderError> {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        self.call(Method::POST, self.url(path)?, Some(body), Some(idempotency_key)).await
    }
}

fn pair(k: &str, v: impl ToString) -> (String, String) {
    (k.to_owned(), v.to_string())
}

fn required_str(value: &Value, key: &str) -> Result<String, ProviderError> {
    value[key].as_str().map(str::to_owned).ok_or_else(|| ProviderError::Malformed(format!("no {key} in the answer")))
}

/// The form fields of a Checkout Session (bracket notation, as Stripe expects).
pub fn checkout_form(r: &CheckoutRequest) -> Vec<(String, String)> {
    let mut form = vec![
        pair("mode", "payment"),
        pair("client_reference_id", &r.order_id),
        pair("metadata[order_id]", &r.order_id),
        // Copied onto the PaymentIntent, so its charge, refunds and disputes name the order too.
        pair("payment_intent_data[metadata][order_id]", &r.order_id),
        pair("success_url", &r.success_url),
        pair("cancel_url", &r.cancel_url),
        pair("expires_at", r.expires_at),
        pair("line_items[0][quantity]", r.quantity),
    ];
    match &r.stripe_price_id {
        Some(price) => form.push(pair("line_items[0][price]", price)),
        None => {
            form.push(pair("line_items[0][price_data][currency]", &r.currency));
            form.push(pair("line_items[0][price_data][unit_amount]", r.unit_amount));
            form.push(pair("line_items[0][price_data][product_data][name]", &r.product_name));
        }
    }
    if let Some(email) = &r.customer_email {
        form.push(pair("customer_email", email));
    }
    form
}

#[async_trait]
impl Provider for StripeClient {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn create_checkout_session(&self, r: &CheckoutRequest) -> Result<CheckoutCreated, ProviderError> {
        let session = self.post("/v1/checkout/sessions", &checkout_form(r), &format!("tollgate-checkout-{}", r.order_id)).await?;
        Ok(CheckoutCreated {
            id: required_str(&session, "id")?,
            url: required_str(&session, "url")?,
            expires_at: session["expires_at"].as_i64().unwrap_or(r.expires_at),
        })
    }

    async fn retrieve_checkout_session(&self, id: &str) -> Result<Value, ProviderError> {
        let mut url = self.url("/v1/checkout/sessions/")?;
        url.path_segments_mut().map_err(|()| ProviderError::Malformed("base URL".to_owned()))?.pop_if_empty().push(id);
        self.call(Method::GET, url, None, None).await
    }

    async fn create_payment_intent(&self, r: &PaymentIntentRequest) -> Result<PaymentIntentCreated, ProviderError> {
        let form = vec![
            pair("amount", r.amount),
            pair("currency", &r.currency),
            pair("metadata[order_id]", &r.order_id),
            pair("description", &r.description),
            pair("automatic_payment_methods[enabled]", "true"),
        ];
        let intent = self.post("/v1/payment_intents", &form, &format!("tollgate-payment-intent-{}", r.order_id)).await?;
        Ok(PaymentIntentCreated { id: required_str(&intent, "id")?, client_secret: required_str(&intent, "client_secret")? })
    }

    async fn create_refund(&self, r: &RefundRequest) -> Result<RefundCreated, ProviderError> {
        let mut form = vec![
            pair("payment_intent", &r.payment_intent_id),
            pair("metadata[order_id]", &r.order_id),
            pair("metadata[refund_id]", &r.refund_id),
        ];
        if let Some(amount) = r.amount {
            form.push(pair("amount", amount));
        }
        if let Some(reason) = &r.reason {
            form.push(pair("reason", reason));
        }
        let refund = self.post("/v1/refunds", &form, &format!("tollgate-refund-{}", r.refund_id)).await?;
        Ok(RefundCreated {
            id: required_str(&refund, "id")?,
            status: match refund["status"].as_str() {
                None => RefundStatus::Pending,
                Some(s) => RefundStatus::parse(s).unwrap_or(RefundStatus::Unknown),
            },
            amount: refund["amount"].as_i64().unwrap_or(0),
        })
    }

    async fn list_events(&self, created_gte: i64, starting_after: Option<&str>) -> Result<EventPage, ProviderError> {
        let mut url = self.url("/v1/events")?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", "100").append_pair("created[gte]", &created_gte.to_string());
            if let Some(after) = starting_after {
                q.append_pair("starting_after", after);
            }
        }
        let page = self.call(Method::GET, url, None, None).await?;
        let data = page["data"].as_array().ok_or_else(|| ProviderError::Malformed("no data in the event list".to_owned()))?;
        let mut events = Vec::with_capacity(data.len());
        for e in data {
            let id = required_str(e, "id")?;
            events.push((id, serde_json::to_vec(e).map_err(|e| ProviderError::Malformed(e.to_string()))?));
        }
        Ok(EventPage { events, has_more: page["has_more"].as_bool().unwrap_or(false) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_key_never_travels_in_clear_beyond_this_machine() {
        let key = || SecretString::from("sk_live_0123456789abcdef0123456789".to_owned());
        let refused = StripeClient::new(Url::parse("http://api.stripe.com").unwrap(), key()).err().unwrap();
        assert!(refused.to_string().contains("STRIPE_API_BASE must be https"), "{refused}");
        assert!(!refused.to_string().contains("sk_live"));
        for fine in ["https://api.stripe.com", "http://127.0.0.1:12111", "http://localhost:12111", "http://[::1]:12111"] {
            assert!(StripeClient::new(Url::parse(fine).unwrap(), key()).is_ok(), "{fine}");
        }
    }
}
