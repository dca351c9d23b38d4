//! One delivery of a webhook message, per the Standard Webhooks specification: `webhook-id` (the
//! message's id, the same on every attempt), `webhook-timestamp` (this attempt's, in seconds) and
//! `webhook-signature` (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed with the
//! base64-decoded part of `whsec_…` after the prefix; one per signing secret, space-separated).
//! 15 s timeout, redirects not followed (a 3xx is a failure), any 2xx delivered, at most 4 KiB of
//! the answer kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ssrf::FilteringResolver;

pub const TIMEOUT: Duration = Duration::from_secs(15);
/// How much of a receiver's answer the attempt log keeps.
pub const RESPONSE_KEPT: usize = 4096;
pub const SECRET_PREFIX: &str = "whsec_";

/// A new endpoint secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(key))
}

/// The key a `whsec_…` secret stands for (a secret not in that form is used as its bytes).
fn key_of(secret: &str) -> Vec<u8> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_else(|_| secret.as_bytes().to_vec())
}

/// The `webhook-signature` value: one `v1,<sig>` per secret, space-separated.
pub fn signature(msg_id: &str, timestamp: i64, body: &[u8], secrets: &[&str]) -> String {
    secrets
        .iter()
        .map(|secret| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key_of(secret)) else {
                return String::new();
            };
            mac.update(msg_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The client deliveries go through: no proxy (a proxy would resolve names itself, past the
/// filter), no redirects, the timeout, and — unless private addresses are allowed — the
/// resolver that drops forbidden addresses.
pub fn client(allow_private: bool) -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a crypto provider of its own: ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("tollgate-webhooks/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        b = b.dns_resolver(Arc::new(FilteringResolver));
    }
    Ok(b.build()?)
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response: Option<String>,
    pub duration: Duration,
}

impl Attempt {
    pub fn delivered(&self) -> bool {
        self.error.is_none() && self.status_code.is_some_and(|s| (200..300).contains(&s))
    }

    pub fn refused(why: String) -> Attempt {
        Attempt { status_code: None, error: Some(why), response: None, duration: Duration::ZERO }
    }
}

/// Posts `body` to `url` as message `msg_id`, signed with `secrets`, timestamped now.
pub async fn deliver(client: &reqwest::Client, url: &url::Url, msg_id: &str, body: &str, secrets: &[&str]) -> Attempt {
    let ts = chrono::Utc::now().timestamp();
    let started = Instant::now();
    let sent = client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature(msg_id, ts, body.as_bytes(), secrets))
        .body(body.to_owned())
        .send()
        .await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => return Attempt { status_code: None, error: Some(describe(&e)), response: None, duration: started.elapsed() },
    };
    let status = resp.status().as_u16();
    let mut kept = Vec::new();
    while kept.len() < RESPONSE_KEPT {
        match resp.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk[..chunk.len().min(RESPONSE_KEPT - kept.len())]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    let error = match status {
        200..=299 => None,
        300..=399 => Some(format!("HTTP {status}: redirects are not followed")),
        _ => Some(format!("HTTP {status}")),
    };
    Attempt { status_code: Some(status), error, response: Some(text), duration: started.elapsed() }
}

/// A transport error in words, with its causes (the resolver's refusal among them), never the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let line = s.to_string();
        if !out.contains(&line) {
            out.push_str(": ");
            out.push_str(&line);
        }
        source = s.source();
    }
    out.chars().take(1000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_example() {
        // The specification's example (standard-webhooks spec/standard-webhooks.md).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, &[secret]);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_secrets_make_two_signatures() {
        let sig = signature("msg_1", 1, b"{}", &["whsec_AAAA", "whsec_BBBB"]);
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn new_secrets_are_whsec_and_32_bytes() {
        let s = new_secret();
        assert!(s.starts_with("whsec_"));
        assert_eq!(key_of(&s).len(), 32);
    }
}
