//! IPN verification: `x-nowpayments-sig` is the hex HMAC-SHA512, keyed with the IPN secret, of
//! the body's canonical form (`canonical.rs`). It carries no timestamp and IPNs are re-sent, so a
//! replay verifies: the ledger's dedup key and the status re-check (`GET /v1/payment/{id}`) are
//! what make a replay or a leaked secret harmless.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha512;
use subtle::ConstantTimeEq;

use super::canonical::{canonicalize, CanonicalError, Value};

type HmacSha512 = Hmac<Sha512>;

/// Why an IPN was refused. The variants say what to log; the sender only ever gets a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpnError {
    #[error("missing or malformed x-nowpayments-sig header")]
    Malformed,
    #[error("the signature does not match")]
    Mismatch,
    #[error(transparent)]
    Body(#[from] CanonicalError),
    #[error("NOWPayments is not enabled: there is no IPN secret to verify with")]
    Disabled,
}

/// The hex HMAC-SHA512 of `canonical` with `secret`.
pub fn sign(canonical: &str, secret: &SecretString) -> String {
    let mut mac = <HmacSha512 as Mac>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes any key length");
    mac.update(canonical.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// Verifies `body` against the header value (`None`: absent) and returns the parsed body. The
/// body must have a canonical form (one JSON object, no duplicate keys) before anything is
/// compared; the comparison is in constant time.
pub fn verify_ipn(body: &[u8], header: Option<&str>, secret: &SecretString) -> Result<Value, IpnError> {
    let presented = header.map(str::trim).and_then(decode_hex).filter(|s| s.len() == 64).ok_or(IpnError::Malformed)?;
    let (value, canonical) = canonicalize(body)?;
    let mut mac = <HmacSha512 as Mac>::new_from_slice(secret.expose_secret().as_bytes()).map_err(|_| IpnError::Mismatch)?;
    mac.update(canonical.as_bytes());
    let expected = mac.finalize().into_bytes();
    if bool::from(expected.as_slice().ct_eq(&presented)) {
        Ok(value)
    } else {
        Err(IpnError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_over_the_canonical_form_verifies_whatever_the_layout() {
        let secret = SecretString::from("ipn-secret");
        let sig = sign(r#"{"a":1,"b":"x"}"#, &secret);
        assert!(verify_ipn(b"{ \"b\": \"x\",\n \"a\": 1.0 }", Some(&sig), &secret).is_ok());
        assert!(verify_ipn(b"{\"a\":1,\"b\":\"x\"}", Some(&sig.to_uppercase()), &secret).is_ok());
        assert_eq!(verify_ipn(b"{\"a\":2,\"b\":\"x\"}", Some(&sig), &secret), Err(IpnError::Mismatch));
        assert_eq!(verify_ipn(b"{\"a\":1,\"b\":\"x\"}", Some(&sig), &SecretString::from("other")), Err(IpnError::Mismatch));
        assert_eq!(verify_ipn(b"{\"a\":1,\"b\":\"x\"}", None, &secret), Err(IpnError::Malformed));
        assert_eq!(verify_ipn(b"{\"a\":1,\"b\":\"x\"}", Some("zz"), &secret), Err(IpnError::Malformed));
        assert_eq!(verify_ipn(b"{\"a\":1,\"a\":1}", Some(&sig), &secret), Err(IpnError::Body(CanonicalError::DuplicateKey)));
    }
}
