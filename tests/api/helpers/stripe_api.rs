//! Stripe's API as wiremock plays it, for the calls tollgate makes: what the requests carried,
//! and a checkout-session endpoint that answers like Stripe's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::stripe::fixture;

/// The secret key the test apps talking to the mocked Stripe are configured with.
pub const SK: &str = "sk_test_tollgate0123456789abcdefghijklmnop";

/// Answers `POST /v1/checkout/sessions` like Stripe: a new session per call, for the order the
/// form names; counts the calls.
#[derive(Clone, Default)]
pub struct StripeCheckout {
    /// How many sessions were asked for.
    pub calls: Arc<AtomicUsize>,
}

/// The form a request to Stripe's API carried.
fn form(request: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&request.body).into_owned().collect()
}

/// One field of the form a request to Stripe's API carried.
pub fn form_value(request: &Request, key: &str) -> Option<String> {
    form(request).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl Respond for StripeCheckout {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut session = fixture("checkout.session");
        let id = format!("cs_test_{}", uuid::Uuid::new_v4().simple());
        session["id"] = json!(id);
        session["url"] = json!(format!("https://checkout.stripe.com/c/pay/{id}"));
        session["client_reference_id"] = json!(form_value(request, "client_reference_id"));
        session["metadata"] = json!({"order_id": form_value(request, "metadata[order_id]")});
        session["expires_at"] = json!(form_value(request, "expires_at").and_then(|v| v.parse::<i64>().ok()));
        ResponseTemplate::new(200).set_body_json(session)
    }
}

/// Mounts a [`StripeCheckout`] on `mock`.
pub async fn mock_checkout(mock: &MockServer) -> StripeCheckout {
    let responder = StripeCheckout::default();
    Mock::given(method("POST")).and(path("/v1/checkout/sessions")).respond_with(responder.clone()).mount(mock).await;
    responder
}
