//! Access tokens: HS256 JWTs, hand-rolled so the algorithm is pinned by construction. A token whose
//! header says anything but `"alg":"HS256"` (including `none`) is refused before any key is used.
//! `kid` names the signing secret, so a new secret can take over while the previous one still
//! verifies the tokens it signed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    /// The refresh-token family this access token belongs to: revoking it ends the token too.
    pub fam: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

struct Key {
    kid: String,
    /// HMAC keyed with the secret once (keying costs two SHA-256 blocks); cloned per token.
    keyed: HmacSha256,
    /// The header this key's tokens carry, base64url-encoded: a token whose header is exactly
    /// this needs no decoding or parsing of it.
    header: String,
}

impl Key {
    fn new(secret: SecretString) -> Key {
        // A name for the key that reveals nothing about it.
        let digest = Sha256::digest([b"tollgate kid:".as_slice(), secret.expose_secret().as_bytes()].concat());
        let kid: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let keyed = <HmacSha256 as Mac>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes any key length");
        let header = URL_SAFE_NO_PAD.encode(serde_json::json!({ "alg": "HS256", "typ": "JWT", "kid": kid }).to_string());
        Key { kid, keyed, header }
    }

    fn mac(&self) -> HmacSha256 {
        self.keyed.clone()
    }
}

pub struct JwtKeys {
    current: Key,
    previous: Option<Key>,
    pub issuer: String,
    pub audience: String,
    pub ttl_secs: i64,
    /// Tokens verified already (see [`Verified`]): a client sends its token with every request
    /// for up to `ttl_secs`.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

/// A token this process verified: what its signature signed, and its claims. Found by the
/// signature (32 bytes of HMAC, which no one without the key can make for a signing input of
/// their choosing) in a map with SipHash's random keys, then the token's signing input compared
/// with the one kept: a hit is exactly a token verified before, so only the claims' times are
/// checked again. The keys never change in a running process (a new secret is a restart), so an
/// entry never outlives the key that verified it.
struct Verified {
    signing_input: Box<str>,
    claims: std::sync::Arc<Claims>,
}

/// The most verified tokens kept; when full the map starts again empty (tokens live 15 minutes by
/// default, so entries are short-lived anyway, and a miss only costs a verification).
const VERIFIED_KEPT: usize = 4096;

/// Clock skew tolerated on `nbf`/`iat` between replicas.
const LEEWAY_SECS: i64 = 5;

impl JwtKeys {
    pub fn new(
        current: SecretString,
        previous: Option<SecretString>,
        issuer: String,
        audience: String,
        ttl_secs: i64,
    ) -> JwtKeys {
        JwtKeys {
            current: Key::new(current),
            previous: previous.map(Key::new),
            issuer,
            audience,
            ttl_secs,
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    /// A signed token for `sub` in family `fam`, valid from `now` for the configured lifetime.
    pub fn issue(&self, sub: &str, fam: &str, now: i64) -> (String, Claims) {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.to_owned(),
            iat: now,
            nbf: now,
            exp: now + self.ttl_secs,
            jti: crate::domain::account::new_id("jti"),
            fam: fam.to_owned(),
        };
        (self.sign(&claims), claims)
    }

    fn sign(&self, claims: &Claims) -> String {
        let signing_input =
            format!("{}.{}", self.current.header, URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default()));
        let mut mac = self.current.mac();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Checks the header (HS256 only, known `kid`), the signature (constant time), then every
    /// registered claim. `now` is seconds since the epoch.
    ///
    /// A token verified before (same signing input, same signature) is found in memory and only
    /// its times are checked again (see [`Verified`]).
    pub fn verify(&self, token: &str, now: i64) -> Result<std::sync::Arc<Claims>, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed);
        };
        let signing_input = &token[..h.len() + 1 + p.len()];
        // Room for base64's estimate (43 characters may be up to 33 bytes); an HS256 MAC is 32.
        let mut decoded = [0u8; 36];
        let signature: Option<[u8; 32]> = match URL_SAFE_NO_PAD.decode_slice(s, &mut decoded) {
            Ok(32) => decoded[..32].try_into().ok(),
            _ => None,
        };
        if let Some(signature) = signature {
            let known = self
                .verified
                .lock()
                .ok()
                .and_then(|map| map.get(&signature).filter(|v| &*v.signing_input == signing_input).map(|v| v.claims.clone()));
            if let Some(claims) = known {
                Self::check_times(&claims, now)?;
                return Ok(claims);
            }
        }
        let claims = std::sync::Arc::new(self.verify_fully(h, p, s, now)?);
        if let (Some(signature), Ok(mut map)) = (signature, self.verified.lock()) {
            if map.len() >= VERIFIED_KEPT {
                map.clear();
            }
            map.insert(signature, Verified { signing_input: signing_input.into(), claims: claims.clone() });
        }
        Ok(claims)
    }

    /// `exp`, `nbf` and `iat` against `now`.
    fn check_times(claims: &Claims, now: i64) -> Result<(), JwtError> {
        if claims.exp <= now {
            return Err(JwtError::Expired);
        }
        if claims.nbf > now + LEEWAY_SECS || claims.iat > now + LEEWAY_SECS {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }

    /// [`verify`](Self::verify) for a token not verified before: header, signature, claims.
    fn verify_fully(&self, h: &str, p: &str, s: &str, now: i64) -> Result<Claims, JwtError> {
        let ours = std::iter::once(&self.current).chain(self.previous.as_ref()).find(|k| k.header == h);
        let key = match ours {
            // Exactly the header one of our keys writes: HS256 with that key's `kid`.
            Some(key) => key,
            None => {
                let header: Header =
                    URL_SAFE_NO_PAD.decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(JwtError::Malformed)?;
                if header.alg != "HS256" {
                    return Err(JwtError::Algorithm);
                }
                match header.kid.as_deref() {
                    Some(kid) if kid == self.current.kid => &self.current,
                    Some(kid) => self.previous.as_ref().filter(|k| k.kid == kid).ok_or(JwtError::UnknownKey)?,
                    None => return Err(JwtError::UnknownKey),
                }
            }
        };
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
        let mut mac = key.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&signature).map_err(|_| JwtError::Signature)?;

        let claims: Claims =
            URL_SAFE_NO_PAD.decode(p).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(JwtError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(JwtError::Issuer);
        }
        if claims.aud != self.audience {
            return Err(JwtError::Audience);
        }
        Self::check_times(&claims, now)?;
        if claims.sub.is_empty() || claims.jti.is_empty() || claims.fam.is_empty() {
            return Err(JwtError::Malformed);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str, previous: Option<&str>) -> JwtKeys {
        JwtKeys::new(
            SecretString::from(secret.to_owned()),
            previous.map(|p| SecretString::from(p.to_owned())),
            "https://pay.example".into(),
            "tollgate".into(),
            900,
        )
    }

    fn forge(header: serde_json::Value, claims: &Claims, secret: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
        );
        let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn round_trip_and_every_claim_checked() {
        let k = keys("a-very-long-signing-secret-of-32-bytes+", None);
        let (token, claims) = k.issue("usr_1", "fam_1", NOW);
        assert_eq!(*k.verify(&token, NOW + 10).unwrap(), claims);
        assert_eq!(k.verify(&token, NOW + 900), Err(JwtError::Expired));
        assert_eq!(k.verify(&token, NOW - 60), Err(JwtError::NotYetValid));

        let other_iss =
            JwtKeys { issuer: "https://evil.example".into(), ..keys("a-very-long-signing-secret-of-32-bytes+", None) };
        assert_eq!(other_iss.verify(&token, NOW), Err(JwtError::Issuer));
        let other_aud = JwtKeys { audience: "someone-else".into(), ..keys("a-very-long-signing-secret-of-32-bytes+", None) };
        assert_eq!(other_aud.verify(&token, NOW), Err(JwtError::Audience));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let k = keys("a-very-long-signing-secret-of-32-bytes+", None);
        let (_, claims) = k.issue("usr_1", "fam_1", NOW);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        for alg in ["none", "None", "HS512", "RS256", "hs256"] {
            let header = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": alg, "kid": k.current_kid()}).to_string());
            assert_eq!(k.verify(&format!("{header}.{body}."), NOW), Err(JwtError::Algorithm), "{alg}");
        }
    }

    #[test]
    fn a_verified_token_is_remembered_but_its_signature_proves_nothing_else() {
        let k = keys("a-very-long-signing-secret-of-32-bytes+", None);
        let (token, claims) = k.issue("usr_1", "fam_1", NOW);
        let first = k.verify(&token, NOW).unwrap();
        let again = k.verify(&token, NOW + 1).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again), "the second time, the token is found in memory");
        assert_eq!(*again, claims);
        // The remembered signature under another body (another user, a later expiry): refused.
        let (h, rest) = token.split_once('.').unwrap();
        let signature = rest.split_once('.').unwrap().1;
        let other = Claims { sub: "usr_2".into(), exp: NOW + 86_400, ..claims.clone() };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        assert_eq!(k.verify(&format!("{h}.{body}.{signature}"), NOW), Err(JwtError::Signature));
        // ... or under another header.
        let header = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "none", "kid": k.current_kid()}).to_string());
        let body = rest.split_once('.').unwrap().0;
        assert_eq!(k.verify(&format!("{header}.{body}.{signature}"), NOW), Err(JwtError::Algorithm));
        // A remembered token's times are checked every time.
        assert_eq!(k.verify(&token, NOW + 900), Err(JwtError::Expired));
        assert_eq!(k.verify(&token, NOW - 60), Err(JwtError::NotYetValid));
        assert!(k.verify(&token, NOW + 2).is_ok());
    }

    #[test]
    fn remembered_tokens_are_bounded() {
        let k = keys("a-very-long-signing-secret-of-32-bytes+", None);
        for i in 0..=VERIFIED_KEPT {
            let (token, _) = k.issue(&format!("usr_{i}"), "fam_1", NOW);
            assert!(k.verify(&token, NOW).is_ok());
        }
        assert!(k.verified.lock().unwrap().len() <= VERIFIED_KEPT);
    }

    #[test]
    fn another_key_or_a_tampered_body_fails_the_signature() {
        let k = keys("a-very-long-signing-secret-of-32-bytes+", None);
        let (token, mut claims) = k.issue("usr_1", "fam_1", NOW);
        let forged = forge(serde_json::json!({"alg": "HS256", "kid": k.current_kid()}), &claims, b"attacker-secret");
        assert_eq!(k.verify(&forged, NOW), Err(JwtError::Signature));
        claims.sub = "usr_admin".into();
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()), parts[2]);
        assert_eq!(k.verify(&tampered, NOW), Err(JwtError::Signature));
        assert_eq!(k.verify("a.b", NOW), Err(JwtError::Malformed));
        let no_kid = forge(serde_json::json!({"alg": "HS256"}), &claims, b"a-very-long-signing-secret-of-32-bytes+");
        assert_eq!(k.verify(&no_kid, NOW), Err(JwtError::UnknownKey), "a token must name its key");
        let unknown = forge(
            serde_json::json!({"alg": "HS256", "kid": "0000000000000000"}),
            &claims,
            b"a-very-long-signing-secret-of-32-bytes+",
        );
        assert_eq!(k.verify(&unknown, NOW), Err(JwtError::UnknownKey), "no previous key configured");
    }

    #[test]
    fn rotation_keeps_the_previous_secret_verifying() {
        let old = keys("the-old-signing-secret-of-32-bytes-long", None);
        let (old_token, _) = old.issue("usr_1", "fam_1", NOW);
        let rotated = keys("the-new-signing-secret-of-32-bytes-long", Some("the-old-signing-secret-of-32-bytes-long"));
        assert!(rotated.verify(&old_token, NOW).is_ok(), "old tokens verify during the rotation");
        let (new_token, _) = rotated.issue("usr_1", "fam_1", NOW);
        assert!(rotated.verify(&new_token, NOW).is_ok());
        let after = keys("the-new-signing-secret-of-32-bytes-long", None);
        assert_eq!(after.verify(&old_token, NOW), Err(JwtError::UnknownKey), "once the old secret is gone");
    }
}
