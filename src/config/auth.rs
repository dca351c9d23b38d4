//! Accounts and sessions: token secrets and lifetimes, login limits, the password queue.

use std::time::Duration;

use secrecy::SecretString;

use super::layer::Raw;
use super::types::AuthConfig;
use super::values::parse_duration;

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> AuthConfig {
    AuthConfig {
        jwt_secret: raw.get("jwt_secret").map(|v| SecretString::from(v.to_owned())),
        jwt_previous_secret: raw.get("jwt_previous_secret").map(|v| SecretString::from(v.to_owned())),
        session_idle_timeout: raw.duration("session_idle_timeout", errors),
        session_lifetime: raw.duration("session_lifetime", errors),
        access_token_ttl: raw.duration("access_token_ttl", errors),
        refresh_token_ttl: raw.duration("refresh_token_ttl", errors),
        login_max_failures: raw.count("login_max_failures", errors),
        login_failure_window: raw.duration("login_failure_window", errors),
        login_ip_limit: raw.count("login_ip_limit", errors),
        login_ip_window: raw.duration("login_ip_window", errors),
        login_account_ceiling: raw.count("login_account_ceiling", errors),
        password_queue: raw.count("password_queue", errors),
        api_key_limit: raw.count("api_key_limit", errors),
        refresh_grace: match raw.get("refresh_grace").and_then(parse_duration) {
            Some(d) if d <= Duration::from_secs(300) => d,
            _ => {
                errors.push(raw.bad("refresh_grace", "must be a duration from 0s to 5m"));
                Duration::from_secs(30)
            }
        },
    }
}
