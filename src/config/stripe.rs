//! The payment provider and Stripe: keys, webhook secrets, API base and signature tolerance.

use secrecy::SecretString;
use url::Url;

use super::layer::Raw;
use super::types::{PaymentProvider, StripeConfig};
use super::values::split_list;

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> StripeConfig {
    let secret_key = raw.get("stripe_secret_key").map(|v| SecretString::from(v.trim().to_owned()));
    let webhook_secrets: Vec<SecretString> =
        split_list(raw.get("stripe_webhook_secret").unwrap_or("")).into_iter().map(SecretString::from).collect();
    let provider = match raw.get("payment_provider").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None if secret_key.is_some() => PaymentProvider::Stripe,
        None => PaymentProvider::Sandbox,
        Some("stripe") => PaymentProvider::Stripe,
        Some("sandbox") => PaymentProvider::Sandbox,
        Some(_) => {
            errors.push(raw.bad("payment_provider", "must be stripe or sandbox"));
            PaymentProvider::Sandbox
        }
    };
    if provider == PaymentProvider::Stripe && secret_key.is_none() {
        errors.push("TOLLGATE_PAYMENT_PROVIDER is stripe but STRIPE_SECRET_KEY is not set".to_owned());
    }
    let api_base = raw.get("stripe_api_base").and_then(|v| Url::parse(v.trim()).ok()).unwrap_or_else(|| {
        errors.push(raw.bad("stripe_api_base", "must be a URL"));
        Url::parse("https://api.stripe.com").expect("constant URL")
    });
    StripeConfig {
        secret_key,
        webhook_secrets,
        api_base,
        provider,
        webhook_tolerance: raw.duration("stripe_webhook_tolerance", errors),
    }
}
