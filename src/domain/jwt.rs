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
}

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
        JwtKeys { current: Key::new(current), previous: previous.map(Key::new), issuer, audience, ttl_secs }
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
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed);
        };
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
        if claims.exp <= now {
            return Err(JwtError::Expired);
        }
        if claims.nbf > now + LEEWAY_SECS || claims.iat > now + LEEWAY_SECS {
            return Err(JwtError::NotYetValid);
        }
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
        assert_eq!(k.verify(&token, NOW + 10).unwrap(), claims);
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
