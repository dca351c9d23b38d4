//! Licences verifiable offline: Ed25519 keys (PKCS#8 / SPKI, PEM or base64), their JWK and
//! RFC 7638 thumbprint (`kid`), the claims a licence carries and its `exp` rule, and the compact
//! JWS that signs them (`alg` EdDSA, `typ` `tollgate-licence+jwt`). Pure: no storage, no HTTP.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::orders::{DisputeState, OrderFacts};

/// The JWS `typ` of a licence.
pub const LICENCE_TYP: &str = "tollgate-licence+jwt";
/// The only algorithm a licence is signed or verified with.
pub const LICENCE_ALG: &str = "EdDSA";

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) } followed by the 32-byte key.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why a key cannot be read. Never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not PEM nor base64")]
    Encoding,
    #[error("not an Ed25519 private key in PKCS#8 (openssl genpkey -algorithm ed25519)")]
    NotPrivateKey,
    #[error("not an Ed25519 private key (PKCS#8) nor public key (SPKI)")]
    NotKey,
}

/// The DER inside a PEM block labelled `label`, or base64 DER; `None` when neither.
fn der_of(text: &str, label: &str) -> Result<Option<Vec<u8>>, KeyError> {
    let text = text.trim();
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = if text.starts_with("-----BEGIN ") {
        let Some(rest) = text.strip_prefix(&begin) else { return Ok(None) };
        let Some(end_at) = rest.find(&end) else { return Err(KeyError::Encoding) };
        &rest[..end_at]
    } else {
        text
    };
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(compact.as_bytes()).map(Some).map_err(|_| KeyError::Encoding)
}

/// An Ed25519 private key: PEM (`-----BEGIN PRIVATE KEY-----`, PKCS#8 v1 as OpenSSL writes it,
/// or v2 with the public key) or the base64 of the same DER.
pub fn parse_private_key(text: &str) -> Result<SigningKey, KeyError> {
    let der = der_of(text, "PRIVATE KEY")?.ok_or(KeyError::NotPrivateKey)?;
    SigningKey::from_pkcs8(&der)
}

/// A key to verify with: a private key (its public half), or an SPKI public key (PEM
/// `-----BEGIN PUBLIC KEY-----` or base64 DER).
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey, KeyError> {
    if let Ok(private) = parse_private_key(text) {
        return Ok(private.verifying_key());
    }
    let der = der_of(text, "PUBLIC KEY").ok().flatten().ok_or(KeyError::NotKey)?;
    match der.strip_prefix(&SPKI_PREFIX[..]) {
        Some(x) if x.len() == 32 => {
            let mut key = [0u8; 32];
            key.copy_from_slice(x);
            Ok(VerifyingKey::new(key))
        }
        _ => Err(KeyError::NotKey),
    }
}

/// The private key that signs licences, and its `kid`. Its `Debug` shows the `kid` only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.public.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// From PKCS#8 DER, v1 (no public key, as OpenSSL writes it) or v2.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| KeyError::NotPrivateKey)?;
        let mut x = [0u8; 32];
        x.copy_from_slice(pair.public_key().as_ref());
        Ok(SigningKey { pair, public: VerifyingKey::new(x) })
    }

    /// A new random key: its PKCS#8 (v2) DER, to keep, and the key.
    pub fn generate() -> Result<(Vec<u8>, SigningKey), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::NotPrivateKey)?;
        let key = SigningKey::from_pkcs8(doc.as_ref())?;
        Ok((doc.as_ref().to_vec(), key))
    }

    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.public.clone()
    }

    /// `claims` as a compact JWS signed with this key.
    pub fn sign(&self, claims: &LicenceClaims) -> String {
        let header =
            Header { alg: LICENCE_ALG.to_owned(), kid: Some(self.public.kid.clone()), typ: Some(LICENCE_TYP.to_owned()) };
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let input = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(self.pair.sign(input.as_bytes()).as_ref());
        format!("{input}.{signature}")
    }
}

/// An Ed25519 public key and its `kid` (the RFC 7638 thumbprint of its JWK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    pub x: [u8; 32],
    pub kid: String,
}

/// A public key as a JWKS lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub kid: String,
    pub x: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
}

impl VerifyingKey {
    pub fn new(x: [u8; 32]) -> VerifyingKey {
        VerifyingKey { kid: thumbprint(&x), x }
    }

    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            kid: self.kid.clone(),
            x: URL_SAFE_NO_PAD.encode(self.x),
            use_: "sig".to_owned(),
            alg: LICENCE_ALG.to_owned(),
        }
    }
}

/// The RFC 7638 thumbprint of the Ed25519 key `x`: SHA-256 over its required members in
/// lexicographic order, no whitespace, base64url.
pub fn thumbprint(x: &[u8; 32]) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, URL_SAFE_NO_PAD.encode(x));
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// The Ed25519 signing keys of a JWKS document (`{"keys": [...]}`); other keys are skipped. A key
/// without `kid` gets its thumbprint.
pub fn keys_of_jwks(doc: &serde_json::Value) -> Vec<VerifyingKey> {
    let Some(keys) = doc.get("keys").and_then(|k| k.as_array()) else { return Vec::new() };
    keys.iter()
        .filter(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519")
        .filter(|k| k.get("alg").is_none_or(|a| a == LICENCE_ALG))
        .filter(|k| k.get("use").is_none_or(|u| u == "sig"))
        .filter_map(|k| {
            let x = URL_SAFE_NO_PAD.decode(k["x"].as_str()?).ok()?;
            let x: [u8; 32] = x.try_into().ok()?;
            let mut key = VerifyingKey::new(x);
            if let Some(kid) = k["kid"].as_str() {
                kid.clone_into(&mut key.kid);
            }
            Some(key)
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// One feature a licence grants, until `expires_at` (RFC 3339, whole seconds; null: forever).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenceFeature {
    pub feature: String,
    #[serde(with = "rfc3339_secs")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a licence says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenceClaims {
    /// The issuing tollgate (its public URL).
    pub iss: String,
    /// The user (`usr_…`).
    pub sub: String,
    pub features: Vec<LicenceFeature>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// The licence (`lic_…`), as the revocation list names it.
    pub jti: String,
}

mod rfc3339_secs {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `t` to whole seconds, never later than `t`.
fn floor_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// One entry per feature from the access a user holds (`(feature, end)` per grant, as
/// `effective_access` chains them): its last end, or null when any period is forever. Sorted by
/// feature.
pub fn features_of(access: &[(String, Option<DateTime<Utc>>)]) -> Vec<LicenceFeature> {
    let mut out: Vec<LicenceFeature> = Vec::new();
    let mut sorted: Vec<&(String, Option<DateTime<Utc>>)> = access.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (feature, end) in sorted {
        let end = end.map(floor_secs);
        match out.last_mut() {
            Some(last) if &last.feature == feature => {
                last.expires_at = match (last.expires_at, end) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            _ => out.push(LicenceFeature { feature: feature.clone(), expires_at: end }),
        }
    }
    out
}

/// When a licence issued `now` with `features` expires: `now + ttl`, or the earliest end among
/// its features when that comes first. A licence never outlives the access it carries.
pub fn licence_exp(features: &[LicenceFeature], now: DateTime<Utc>, ttl: chrono::Duration) -> DateTime<Utc> {
    let cap = floor_secs(now.checked_add_signed(ttl).unwrap_or(DateTime::<Utc>::MAX_UTC));
    features.iter().filter_map(|f| f.expires_at).fold(cap, DateTime::min)
}

/// The claims of licence `jti` for user `sub`, issued by `iss` at `now`.
pub fn build_claims(
    iss: &str,
    sub: &str,
    jti: &str,
    access: &[(String, Option<DateTime<Utc>>)],
    now: DateTime<Utc>,
    ttl: chrono::Duration,
) -> LicenceClaims {
    let features = features_of(access);
    let exp = licence_exp(&features, now, ttl);
    LicenceClaims {
        iss: iss.to_owned(),
        sub: sub.to_owned(),
        features,
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: exp.timestamp(),
        jti: jti.to_owned(),
    }
}

/// Why a licence is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a compact JWS (three base64url parts)")]
    Malformed,
    #[error("algorithm {0:?} is not EdDSA")]
    Algorithm(String),
    #[error("type {0:?} is not tollgate-licence+jwt")]
    Type(Option<String>),
    #[error("no key with kid {0:?} in the key set")]
    UnknownKey(Option<String>),
    #[error("the signature does not verify")]
    Signature,
    #[error("the claims are not a licence's")]
    Claims,
    #[error("expired at {0}")]
    Expired(String),
    #[error("not valid before {0}")]
    NotYetValid(String),
}

fn time_text(t: i64) -> String {
    DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Checks `token` against `keys` at `now`: EdDSA, the licence `typ`, a key of the set by `kid`,
/// the signature, then `nbf <= now < exp`. The claims when all hold.
pub fn verify(token: &str, keys: &[VerifyingKey], now: DateTime<Utc>) -> Result<LicenceClaims, VerifyError> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(VerifyError::Malformed);
    };
    let header: Header =
        URL_SAFE_NO_PAD.decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(VerifyError::Malformed)?;
    if header.alg != LICENCE_ALG {
        return Err(VerifyError::Algorithm(header.alg));
    }
    if header.typ.as_deref() != Some(LICENCE_TYP) {
        return Err(VerifyError::Type(header.typ));
    }
    let key = keys.iter().find(|k| Some(&k.kid) == header.kid.as_ref()).ok_or(VerifyError::UnknownKey(header.kid.clone()))?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| VerifyError::Malformed)?;
    let input = &token[..h.len() + 1 + p.len()];
    UnparsedPublicKey::new(&ED25519, key.x).verify(input.as_bytes(), &signature).map_err(|_| VerifyError::Signature)?;
    let claims: LicenceClaims =
        URL_SAFE_NO_PAD.decode(p).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(VerifyError::Claims)?;
    let now = now.timestamp();
    if now >= claims.exp {
        return Err(VerifyError::Expired(time_text(claims.exp)));
    }
    if now < claims.nbf {
        return Err(VerifyError::NotYetValid(time_text(claims.nbf)));
    }
    Ok(claims)
}

/// Why a licence was revoked, as the revocation list says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    Refund,
    Dispute,
    UserDisabled,
}

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Refund => "refund",
            RevocationReason::Dispute => "dispute",
            RevocationReason::UserDisabled => "user_disabled",
        }
    }
}

/// Why the licences carrying an order's grant are revoked when the grant stops being active: a
/// full refund when the order is fully refunded (whatever else happened), else a dispute (open or
/// lost) when there is one, else a refund.
pub fn revocation_reason(facts: &OrderFacts) -> RevocationReason {
    if facts.fully_refunded() {
        return RevocationReason::Refund;
    }
    match facts.dispute {
        Some(DisputeState::Open | DisputeState::Lost) => RevocationReason::Dispute,
        _ => RevocationReason::Refund,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key) and its public key.
    const OPENSSL_PEM: &str =
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIDATgY59DYsMR8dfBlCFR+Y/7F2uHRFOFUD8x89rrUA4\n-----END PRIVATE KEY-----\n";

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn keys_parse_from_pem_and_base64_and_the_public_half_matches() {
        let key = parse_private_key(OPENSSL_PEM).unwrap();
        let b64 = "MC4CAQAwBQYDK2VwBCIEIDATgY59DYsMR8dfBlCFR+Y/7F2uHRFOFUD8x89rrUA4";
        assert_eq!(parse_private_key(b64).unwrap().kid(), key.kid());
        let mut spki = SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&key.verifying_key().x);
        let spki_b64 = STANDARD.encode(&spki);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{spki_b64}\n-----END PUBLIC KEY-----\n");
        assert_eq!(parse_verifying_key(&pem).unwrap(), key.verifying_key());
        assert_eq!(parse_verifying_key(&spki_b64).unwrap(), key.verifying_key());
        assert_eq!(parse_verifying_key(OPENSSL_PEM).unwrap(), key.verifying_key());
        assert!(parse_private_key(&pem).is_err(), "a public key cannot sign");
        assert!(parse_private_key("not a key").is_err());
        assert!(parse_verifying_key("AAAA").is_err());
        assert!(!format!("{key:?}").contains("MC4CAQ"));
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        // RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
        let x = URL_SAFE_NO_PAD.decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        assert_eq!(thumbprint(&x.try_into().unwrap()), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn exp_is_the_earliest_of_the_ttl_and_the_features_ends() {
        let now = t("2026-12-01T10:00:00.5Z");
        let ttl = chrono::Duration::days(30);
        let access = vec![
            ("pro".to_owned(), Some(t("2026-12-10T00:00:00.9Z"))),
            ("pro".to_owned(), Some(t("2027-01-10T00:00:00Z"))),
            ("team".to_owned(), None),
        ];
        let c = build_claims("https://pay.example", "usr_1", "lic_1", &access, now, ttl);
        assert_eq!(c.features.len(), 2);
        assert_eq!(c.features[0].expires_at, Some(t("2027-01-10T00:00:00Z")), "a feature's last end");
        assert_eq!(c.features[1].expires_at, None);
        assert_eq!(c.exp, t("2026-12-31T10:00:00Z").timestamp(), "the TTL comes first");
        let short = vec![("pro".to_owned(), Some(t("2026-12-05T00:00:00.9Z"))), ("team".to_owned(), None)];
        let c = build_claims("i", "u", "l", &short, now, ttl);
        assert_eq!(c.exp, t("2026-12-05T00:00:00Z").timestamp(), "never later than the access");
        let forever = vec![("pro".to_owned(), None), ("pro".to_owned(), Some(t("2026-12-05T00:00:00Z")))];
        assert_eq!(features_of(&forever)[0].expires_at, None);
        let none = build_claims("i", "u", "l", &[], now, ttl);
        assert!(none.features.is_empty());
        assert_eq!(none.exp, t("2026-12-31T10:00:00Z").timestamp());
        assert_eq!((none.iat, none.nbf), (now.timestamp(), now.timestamp()));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["features"][0]["expires_at"], "2026-12-05T00:00:00Z");
        assert!(json["features"][1]["expires_at"].is_null());
    }

    #[test]
    fn a_signed_licence_verifies_and_tampering_expiry_and_other_keys_are_refused() {
        let key = parse_private_key(OPENSSL_PEM).unwrap();
        let (_, other) = SigningKey::generate().unwrap();
        let now = t("2026-12-01T10:00:00Z");
        let claims = build_claims("i", "usr_1", "lic_1", &[("pro".to_owned(), None)], now, chrono::Duration::days(1));
        let token = key.sign(&claims);
        let keys = [key.verifying_key()];
        assert_eq!(verify(&token, &keys, now).unwrap(), claims);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "EdDSA", "kid": key.kid(), "typ": "tollgate-licence+jwt"}));

        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims.clone();
        forged.features[0].feature = "enterprise".to_owned();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(verify(&tampered, &keys, now), Err(VerifyError::Signature));
        assert!(matches!(verify(&token, &keys, now + chrono::Duration::days(1)), Err(VerifyError::Expired(_))));
        assert!(matches!(verify(&token, &keys, now - chrono::Duration::seconds(1)), Err(VerifyError::NotYetValid(_))));
        assert!(matches!(verify(&other.sign(&claims), &keys, now), Err(VerifyError::UnknownKey(_))));
        // Another key claiming our kid: the signature decides.
        let mut impostor = other.verifying_key();
        impostor.kid = key.kid().to_owned();
        assert_eq!(verify(&token, &[impostor], now), Err(VerifyError::Signature));
        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"tollgate-licence+jwt"}"#), parts[1]);
        assert!(matches!(verify(&none_alg, &keys, now), Err(VerifyError::Algorithm(_))));
        let plain_jwt = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#), parts[1], parts[2]);
        assert!(matches!(verify(&plain_jwt, &keys, now), Err(VerifyError::Type(_))));
        assert_eq!(verify("a.b", &keys, now), Err(VerifyError::Malformed));
    }

    #[test]
    fn a_jwks_round_trips() {
        let (_, key) = SigningKey::generate().unwrap();
        let doc = serde_json::json!({"keys": [key.verifying_key().jwk(), {"kty": "RSA", "n": "x", "e": "AQAB"}]});
        assert_eq!(keys_of_jwks(&doc), vec![key.verifying_key()]);
        let jwk = serde_json::to_value(key.verifying_key().jwk()).unwrap();
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], key.kid());
        // A key meant for encryption is not trusted to verify.
        let mut enc = jwk.clone();
        enc["use"] = "enc".into();
        assert!(keys_of_jwks(&serde_json::json!({"keys": [enc]})).is_empty());
    }

    #[test]
    fn a_dispute_or_else_a_refund_revokes() {
        let mut facts = OrderFacts::default();
        assert_eq!(revocation_reason(&facts), RevocationReason::Refund);
        facts.dispute = Some(DisputeState::Open);
        assert_eq!(revocation_reason(&facts).as_str(), "dispute");
        // Fully refunded while a dispute is open: the refund is what ended the access.
        facts.amount = 1000;
        facts.amount_refunded = 1000;
        assert_eq!(revocation_reason(&facts), RevocationReason::Refund);
    }
}
