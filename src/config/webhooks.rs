//! Outbound webhooks: whether deliveries may reach private addresses, and the retry schedule.

use std::time::Duration;

use super::environment::Environment;
use super::layer::Raw;
use super::types::WebhooksConfig;
use super::values::{parse_bool, parse_duration};

/// Svix's: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (the setting's default too).
const DEFAULT_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

fn schedule(text: &str) -> Option<Vec<Duration>> {
    let s = text.split(',').map(|d| parse_duration(d.trim())).collect::<Option<Vec<_>>>()?;
    (!s.is_empty() && s.len() <= 20).then_some(s)
}

pub(super) fn parse(raw: &Raw, env: Environment, errors: &mut Vec<String>) -> WebhooksConfig {
    let allow_private = match raw.get("webhook_allow_private") {
        None => env != Environment::Production,
        Some(v) => parse_bool(Some(v)).unwrap_or_else(|| {
            errors.push(raw.bad("webhook_allow_private", "must be true or false"));
            env != Environment::Production
        }),
    };
    let retry_schedule = match raw.get("webhook_retry_schedule").map(schedule) {
        Some(Some(s)) => s,
        None => schedule(DEFAULT_SCHEDULE).unwrap_or_default(),
        Some(None) => {
            errors.push(raw.bad("webhook_retry_schedule", "must be 1 to 20 comma-separated durations such as 0s,5s,5m"));
            schedule(DEFAULT_SCHEDULE).unwrap_or_default()
        }
    };
    WebhooksConfig { allow_private, retry_schedule }
}
