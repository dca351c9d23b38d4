//! Token primitives: random tokens, hashes at rest, constant-time comparison.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// 256 random bits from the OS, base64url without padding (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How a token is stored: its SHA-256, hex. A database leak does not yield usable tokens.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The CSRF token of a session: an HMAC of a fixed label keyed by the session token. Nothing to
/// store, unguessable without the (HttpOnly) cookie, and different from anything in the database.
pub fn csrf_token_for(session_token: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(session_token.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"tollgate csrf v1");
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// HMAC-SHA256 of `label` keyed by `key`: a 256-bit key for one purpose, derived from a secret.
pub fn derive_key(key: &[u8], label: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

/// A token sealed for whoever holds `holder` (another token): XOR with a pad derived from
/// `holder`. Sound as a one-time pad because `token` and `holder` are independent 256-bit random
/// values and each holder seals exactly one token. `None` if `token` is not one of ours.
pub fn seal_token(token: &str, holder: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok().filter(|b| b.len() == 32)?;
    let pad = derive_key(holder.as_bytes(), "tollgate refresh successor v1");
    let sealed: Vec<u8> = bytes.iter().zip(pad.iter()).map(|(a, b)| a ^ b).collect();
    Some(URL_SAFE_NO_PAD.encode(sealed))
}

/// The token [`seal_token`] sealed for `holder`.
pub fn unseal_token(sealed: &str, holder: &str) -> Option<String> {
    seal_token(sealed, holder)
}

/// A device cookie for `user_id` at credential epoch `epoch`: `v2.<user id>.<epoch>.<nonce>.<mac>`,
/// unforgeable without `key`. It stops counting as known once the user's epoch moves on (a
/// password change, a disable).
pub fn device_cookie(key: &[u8; 32], user_id: &str, epoch: i64) -> String {
    let body = format!("v2.{user_id}.{epoch}.{}", random_token());
    let mac = derive_key(key, &body);
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac))
}

/// What a genuine device cookie made with `key` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCookie<'a> {
    pub user_id: &'a str,
    pub epoch: i64,
    pub nonce: &'a str,
}

/// The contents of a device cookie made with `key`, if it is genuine.
pub fn device_cookie_owner<'a>(key: &[u8; 32], cookie: &'a str) -> Option<DeviceCookie<'a>> {
    let (body, mac) = cookie.rsplit_once('.')?;
    let expected = URL_SAFE_NO_PAD.encode(derive_key(key, body));
    if !constant_time_eq(mac.as_bytes(), expected.as_bytes()) {
        return None;
    }
    let mut parts = body.splitn(4, '.');
    match (parts.next(), parts.next(), parts.next().and_then(|e| e.parse().ok()), parts.next()) {
        (Some("v2"), Some(user_id), Some(epoch), Some(nonce)) => Some(DeviceCookie { user_id, epoch, nonce }),
        _ => None,
    }
}

/// `plaintext` sealed (ChaCha20-Poly1305) for whoever holds `secret`, bound to `context`:
/// `1 ‖ nonce ‖ ciphertext ‖ tag`. Without `secret` it can be neither read nor altered.
pub fn seal_bytes(secret: &[u8], context: &str, plaintext: &[u8]) -> Vec<u8> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
    let key = derive_key(secret, &format!("tollgate sealed bytes v1 {context}"));
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key"));
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut sealed)
        .expect("ChaCha20-Poly1305 seals any length we store");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// What [`seal_bytes`] sealed, if `secret` and `context` are the ones it was sealed with and
/// nothing was altered.
pub fn open_bytes(secret: &[u8], context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
    let (version, rest) = sealed.split_first()?;
    if *version != 1 || rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let key = derive_key(secret, &format!("tollgate sealed bytes v1 {context}"));
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = ciphertext.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer).ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_their_secret_and_context_and_unaltered() {
        let sealed = seal_bytes(b"key-1", "usr_a", b"{\"client_secret\":\"pi_1_secret_x\"}");
        assert!(!sealed.windows(9).any(|w| w == b"pi_1_secr"), "nothing readable at rest");
        assert_eq!(open_bytes(b"key-1", "usr_a", &sealed).unwrap(), b"{\"client_secret\":\"pi_1_secret_x\"}");
        assert!(open_bytes(b"key-2", "usr_a", &sealed).is_none());
        assert!(open_bytes(b"key-1", "usr_b", &sealed).is_none());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(open_bytes(b"key-1", "usr_a", &altered).is_none());
        assert_ne!(seal_bytes(b"key-1", "usr_a", b"x"), seal_bytes(b"key-1", "usr_a", b"x"), "a fresh nonce each time");
    }

    #[test]
    fn a_sealed_token_opens_only_with_its_holder() {
        let (token, holder) = (random_token(), random_token());
        let sealed = seal_token(&token, &holder).unwrap();
        assert_ne!(sealed, token);
        assert_eq!(unseal_token(&sealed, &holder).unwrap(), token);
        assert_ne!(unseal_token(&sealed, &random_token()).unwrap(), token);
        assert!(seal_token("not a token", &holder).is_none());
    }

    #[test]
    fn device_cookies_cannot_be_forged_or_moved_to_another_user() {
        let key = derive_key(b"server secret", "device");
        let cookie = device_cookie(&key, "usr_1", 3);
        let read = device_cookie_owner(&key, &cookie).unwrap();
        assert_eq!((read.user_id, read.epoch), ("usr_1", 3));
        let other_key = derive_key(b"another secret", "device");
        assert!(device_cookie_owner(&other_key, &cookie).is_none());
        let moved = cookie.replacen("usr_1", "usr_2", 1);
        assert!(device_cookie_owner(&key, &moved).is_none());
        let older = cookie.replacen(".3.", ".2.", 1);
        assert!(device_cookie_owner(&key, &older).is_none(), "the epoch is signed too");
        assert!(device_cookie_owner(&key, "v2.usr_1.x").is_none());
    }

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let a = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token());
        assert_eq!(token_hash("x"), token_hash("x"));
        assert_eq!(token_hash("x").len(), 64);
        assert_ne!(csrf_token_for(&a), csrf_token_for(&random_token()));
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"abc", b"ab"));
    }
}
