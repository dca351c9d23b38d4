//! Checkout: where buyers return, how long sessions stay open, how often a user may start one.

use std::time::Duration;

use url::Url;

use super::layer::Raw;
use super::types::PaymentsConfig;

/// `public_url` gives the default return URL (tollgate's own order page).
pub(super) fn parse(raw: &Raw, public_url: &Url, errors: &mut Vec<String>) -> PaymentsConfig {
    let default_return = format!("{}api/v1/orders/{{ORDER_ID}}", public_url.as_str());
    let success_url = return_url(raw, "checkout_success_url", errors).unwrap_or(default_return);
    let cancel_url = return_url(raw, "checkout_cancel_url", errors).unwrap_or_else(|| success_url.clone());
    let checkout_ttl = raw.duration("checkout_expires_after", errors);
    if !(Duration::from_secs(30 * 60)..=Duration::from_secs(24 * 3600)).contains(&checkout_ttl) {
        errors.push(raw.bad("checkout_expires_after", "must be between 30m and 24h (Stripe's limits)"));
    }
    PaymentsConfig { success_url, cancel_url, checkout_ttl, checkout_limit: raw.count("checkout_limit", errors) }
}

/// An http(s) URL once `{ORDER_ID}` is filled in; `None` when unset or malformed.
fn return_url(raw: &Raw, key: &str, errors: &mut Vec<String>) -> Option<String> {
    match raw.get(key).map(str::trim) {
        None => None,
        Some(v) if Url::parse(&v.replace("{ORDER_ID}", "ord_x")).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) => {
            Some(v.to_owned())
        }
        Some(_) => {
            errors.push(raw.bad(key, "must be an http(s) URL"));
            None
        }
    }
}
