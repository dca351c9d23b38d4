//! Stripe webhook verification, over the exact bytes Stripe sent.
//!
//! `Stripe-Signature: t=<unix seconds>,v1=<hex hmac>[,v1=…][,v0=…]`: the HMAC-SHA256, keyed by the
//! endpoint's signing secret, of `"{t}.{raw body}"`. Every `v1` is tried against every configured
//! secret (Stripe sends one per active secret during a rotation; keeping only the last, as some
//! libraries do, breaks rotation), in constant time; other schemes are ignored; `t` must be within
//! the tolerance in both directions, so neither a replay of an old delivery nor a post-dated
//! forgery passes.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused. The variants say what to log; the client only ever gets a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or malformed Stripe-Signature header")]
    Malformed,
    #[error("no v1 signature in the header")]
    NoV1,
    #[error("timestamp outside the tolerance")]
    Stale,
    #[error("no signature matches any configured secret")]
    Mismatch,
    #[error("no webhook secret is configured")]
    NoSecret,
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Verifies `payload` against the `Stripe-Signature` header value with any of `secrets`.
/// `now` and `tolerance_secs` are in seconds.
pub fn verify_signature(
    payload: &[u8],
    header: &str,
    secrets: &[SecretString],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let mut timestamp: Option<(&str, i64)> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for item in header.split(',') {
        let (key, value) = item.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                let t = value.parse::<i64>().map_err(|_| SignatureError::Malformed)?;
                if timestamp.replace((value, t)).is_some() {
                    return Err(SignatureError::Malformed);
                }
            }
            // A malformed v1 cannot match; skip it rather than let it hide a good one.
            "v1" => signatures.extend(decode_hex(value).filter(|s| s.len() == 32)),
            _ => {}
        }
    }
    let (t_text, t) = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoV1);
    }
    if (now - t).abs() > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let mut matched = false;
    for secret in secrets {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(secret.expose_secret().as_bytes()).map_err(|_| SignatureError::NoSecret)?;
        mac.update(t_text.as_bytes());
        mac.update(b".");
        mac.update(payload);
        let expected = mac.finalize().into_bytes();
        for sig in &signatures {
            // Every comparison runs (no early exit), each in constant time.
            matched |= bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_slice(), sig.as_slice()));
        }
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The header Stripe would send for `payload` signed with `secret` at `t` (tests and the sandbox).
pub fn sign(payload: &[u8], secret: &str, t: i64) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// The envelope of a Stripe event: the fields every event has and the ledger stores.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

impl Event {
    /// Parses a verified payload; `None` when it is not a Stripe event (`object` must be `event`
    /// and the id an `evt_` id).
    pub fn parse(payload: &[u8]) -> Option<Event> {
        let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        if value.get("object").and_then(|o| o.as_str()) != Some("event") {
            return None;
        }
        let event: Event = serde_json::from_value(value).ok()?;
        (event.id.starts_with("evt_") && !event.kind.is_empty()).then_some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret_0123456789abcdef0123456789";
    const NOW: i64 = 1_800_000_000;

    /// Stripe's own example event (tests/fixtures/stripe/fixtures3.json), byte for byte as a delivery.
    fn fixture_event() -> Vec<u8> {
        let text = include_str!("../../tests/fixtures/stripe/fixtures3.json");
        let fixtures: serde_json::Value = serde_json::from_str(text).expect("fixtures are JSON");
        serde_json::to_vec_pretty(&fixtures["resources"]["event"]).unwrap()
    }

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter().map(|s| SecretString::from((*s).to_owned())).collect()
    }

    #[test]
    fn a_genuine_delivery_verifies_and_parses() {
        let body = fixture_event();
        let header = sign(&body, SECRET, NOW);
        assert_eq!(verify_signature(&body, &header, &secrets(&[SECRET]), NOW + 10, 300), Ok(()));
        let event = Event::parse(&body).unwrap();
        assert!(event.id.starts_with("evt_"));
        assert_eq!(event.kind, "plan.created");
        assert!(!event.livemode);
    }

    #[test]
    fn forged_stale_future_and_reserialised_deliveries_fail() {
        let body = fixture_event();
        let header = sign(&body, SECRET, NOW);
        let s = secrets(&[SECRET]);
        assert_eq!(verify_signature(&body, &sign(&body, "whsec_attacker", NOW), &s, NOW, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(&body, &header, &s, NOW + 301, 300), Err(SignatureError::Stale), "replayed later");
        assert_eq!(verify_signature(&body, &header, &s, NOW - 301, 300), Err(SignatureError::Stale), "post-dated");
        // The same JSON re-serialised (compact instead of pretty) is not the signed bytes.
        let reserialised = serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&body).unwrap()).unwrap();
        assert_ne!(reserialised, body);
        assert_eq!(verify_signature(&reserialised, &header, &s, NOW, 300), Err(SignatureError::Mismatch));
        // A body changed after signing.
        let mut tampered = body.clone();
        let at = tampered.iter().position(|b| *b == b'1').unwrap();
        tampered[at] = b'2';
        assert_eq!(verify_signature(&tampered, &header, &s, NOW, 300), Err(SignatureError::Mismatch));
    }

    #[test]
    fn every_v1_and_every_secret_are_tried() {
        let body = fixture_event();
        let good = sign(&body, SECRET, NOW);
        let good_v1 = good.split_once(",v1=").unwrap().1;
        let bad_v1 = "00".repeat(32);
        // Stripe sends one v1 per active secret; the matching one may come first or last.
        for header in [
            format!("t={NOW},v1={bad_v1},v1={good_v1}"),
            format!("t={NOW},v1={good_v1},v1={bad_v1}"),
            format!("t={NOW},v0=abc,v1={good_v1}"),
        ] {
            assert_eq!(verify_signature(&body, &header, &secrets(&[SECRET]), NOW, 300), Ok(()), "{header}");
        }
        // Rotation: several configured secrets, the delivery signed with either.
        let rotated = secrets(&["whsec_new_secret_abcdefabcdefabcdefabcdef", SECRET]);
        assert_eq!(verify_signature(&body, &good, &rotated, NOW, 300), Ok(()));
        assert_eq!(
            verify_signature(&body, &sign(&body, "whsec_new_secret_abcdefabcdefabcdefabcdef", NOW), &rotated, NOW, 300),
            Ok(())
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let body = fixture_event();
        let s = secrets(&[SECRET]);
        let v1 = sign(&body, SECRET, NOW).split_once(",v1=").unwrap().1.to_owned();
        for (header, err) in [
            ("".to_owned(), SignatureError::Malformed),
            (format!("v1={v1}"), SignatureError::Malformed),
            (format!("t=soon,v1={v1}"), SignatureError::Malformed),
            (format!("t={NOW},t={NOW},v1={v1}"), SignatureError::Malformed),
            (format!("t={NOW}"), SignatureError::NoV1),
            (format!("t={NOW},v0={v1}"), SignatureError::NoV1),
            (format!("t={NOW},v1=zz"), SignatureError::NoV1),
        ] {
            assert_eq!(verify_signature(&body, &header, &s, NOW, 300), Err(err), "{header:?}");
        }
        assert_eq!(verify_signature(&body, &sign(&body, SECRET, NOW), &[], NOW, 300), Err(SignatureError::NoSecret));
    }

    #[test]
    fn only_stripe_events_parse() {
        assert!(Event::parse(
            b"{\"id\":\"evt_1\",\"object\":\"charge\",\"type\":\"x\",\"created\":1,\"livemode\":false,\"data\":{\"object\":{}}}"
        )
        .is_none());
        assert!(Event::parse(b"not json").is_none());
        assert!(Event::parse(b"{\"object\":\"event\"}").is_none());
    }
}
