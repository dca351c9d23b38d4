//! API keys for the merchant's servers: what a key may do (its scopes) and which mode it belongs
//! to. Pure rules; the keys themselves are stored by `store/` and checked by `http/apikey.rs`.

use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::crypto::{constant_time_eq, token_hash};
use super::FieldError;

/// What an API key may do. Deny by default: a key works only on the routes its scopes name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Scope {
    #[serde(rename = "entitlements:read")]
    EntitlementsRead,
    #[serde(rename = "users:read")]
    UsersRead,
    #[serde(rename = "credits:write")]
    CreditsWrite,
    #[serde(rename = "licences:issue")]
    LicencesIssue,
    #[serde(rename = "orders:read")]
    OrdersRead,
    #[serde(rename = "tokens:introspect")]
    TokensIntrospect,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::EntitlementsRead,
        Scope::UsersRead,
        Scope::CreditsWrite,
        Scope::LicencesIssue,
        Scope::OrdersRead,
        Scope::TokensIntrospect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EntitlementsRead => "entitlements:read",
            Scope::UsersRead => "users:read",
            Scope::CreditsWrite => "credits:write",
            Scope::LicencesIssue => "licences:issue",
            Scope::OrdersRead => "orders:read",
            Scope::TokensIntrospect => "tokens:introspect",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// Live or test: follows the payment provider's (a Stripe test key or the sandbox is `test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    Live,
    Test,
}

impl KeyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::Live => "live",
            KeyMode::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<KeyMode> {
        match s {
            "live" => Some(KeyMode::Live),
            "test" => Some(KeyMode::Test),
            _ => None,
        }
    }

    /// The server's mode: `live` with a live Stripe key (`sk_live_`/`rk_live_`), else `test` (a
    /// test key, or the sandbox).
    pub fn of_server(stripe_secret_key: Option<&str>) -> KeyMode {
        if super::ledger::key_is_live(stripe_secret_key) {
            KeyMode::Live
        } else {
            KeyMode::Test
        }
    }

    /// What every key of this mode starts with.
    pub fn key_prefix(self) -> &'static str {
        match self {
            KeyMode::Live => "tg_live_",
            KeyMode::Test => "tg_test_",
        }
    }
}

/// Scopes as one text column: their names, space-separated, in a stable order.
pub fn scopes_to_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
}

/// The scopes a text column holds (unknown names are dropped: deny by default).
pub fn scopes_from_text(text: &str) -> Vec<Scope> {
    text.split_whitespace().filter_map(Scope::parse).collect()
}

/// The scopes a request names: a non-empty list of known names, each once (sorted). An unknown
/// one is an error naming it.
pub fn parse_scopes(field: &str, names: &[String]) -> Result<Vec<Scope>, Vec<FieldError>> {
    if names.is_empty() {
        return Err(vec![FieldError::new(field, "must name at least one scope")]);
    }
    let mut errors = Vec::new();
    let mut scopes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match Scope::parse(name) {
            Some(s) => scopes.push(s),
            None => errors.push(FieldError::new(
                format!("{field}[{i}]"),
                format!(
                    "unknown scope {:?}; known: {}",
                    name.chars().take(64).collect::<String>(),
                    Scope::ALL.map(Scope::as_str).join(", ")
                ),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// A key's display name: 1–100 characters, no control characters (trimmed).
pub fn parse_key_name(field: &str, input: &str) -> Result<String, FieldError> {
    let t = input.trim();
    if t.is_empty() || t.chars().count() > 100 || t.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must be 1 to 100 characters without control characters"));
    }
    Ok(t.to_owned())
}

/// When a key stops working: must be in the future.
pub fn check_expiry(field: &str, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<(), FieldError> {
    match expires_at {
        Some(t) if t <= now => Err(FieldError::new(field, "must be in the future")),
        _ => Ok(()),
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 32 bytes in base 62 always fit in 43 digits (62^43 > 2^256).
const SECRET_CHARS: usize = 43;
/// How much of the random part the lookup prefix keeps (47 bits: for finding the row, not a secret).
const PREFIX_CHARS: usize = 8;

/// `bytes` as a big-endian number in base 62, left-padded with `0` to [`SECRET_CHARS`].
fn base62(bytes: &[u8; 32]) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(SECRET_CHARS);
    while number.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in number.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        digits.push(BASE62[rem as usize]);
    }
    while digits.len() < SECRET_CHARS {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// A new key: the secret (shown once), its non-secret lookup prefix and the hash that is stored.
pub struct GeneratedKey {
    pub secret: SecretString,
    pub prefix: String,
    pub hash: String,
}

/// The secret never prints.
impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// `tg_live_…`/`tg_test_…` followed by 32 random bytes from the OS in base 62.
pub fn generate_key(mode: KeyMode) -> GeneratedKey {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = format!("{}{}", mode.key_prefix(), base62(&bytes));
    let presented = PresentedKey::parse(&key).expect("a generated key parses");
    GeneratedKey { prefix: presented.prefix, hash: token_hash(&key), secret: SecretString::from(key) }
}

/// A string that has the shape of one of our keys (`Authorization: Bearer tg_…`).
pub fn looks_like_key(s: &str) -> bool {
    s.starts_with(KeyMode::Live.key_prefix()) || s.starts_with(KeyMode::Test.key_prefix())
}

/// Whether `text` holds something shaped like a key anywhere (a key in a URL).
pub fn mentions_key(text: &str) -> bool {
    text.contains(KeyMode::Live.key_prefix()) || text.contains(KeyMode::Test.key_prefix())
}

/// A key as a client presented it, well-formed: its mode, lookup prefix and hash.
pub struct PresentedKey {
    pub mode: KeyMode,
    pub prefix: String,
    pub hash: String,
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedKey").field("mode", &self.mode).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl PresentedKey {
    /// `None` unless `key` is `tg_live_`/`tg_test_` and 43 base-62 characters.
    pub fn parse(key: &str) -> Option<PresentedKey> {
        let (mode, random) =
            [KeyMode::Live, KeyMode::Test].into_iter().find_map(|m| key.strip_prefix(m.key_prefix()).map(|rest| (m, rest)))?;
        if random.len() != SECRET_CHARS || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(PresentedKey { mode, prefix: format!("{}{}", mode.key_prefix(), &random[..PREFIX_CHARS]), hash: token_hash(key) })
    }

    /// Whether this is the key whose stored hash is `stored_hash` (constant time).
    pub fn matches(&self, stored_hash: &str) -> bool {
        constant_time_eq(self.hash.as_bytes(), stored_hash.as_bytes())
    }
}

/// Why an identified key may not be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Revoked,
    Expired,
    /// A live key on a test server or the other way round.
    OtherMode,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
            Refusal::OtherMode => "other_mode",
        }
    }
}

/// Whether a stored key of `mode`, revoked at `revoked_at` and expiring at `expires_at`, may be
/// used at `now` on a server of `server_mode`.
pub fn refusal(
    mode: KeyMode,
    revoked_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    server_mode: KeyMode,
    now: DateTime<Utc>,
) -> Option<Refusal> {
    if revoked_at.is_some_and(|t| t <= now) {
        Some(Refusal::Revoked)
    } else if expires_at.is_some_and(|t| t <= now) {
        Some(Refusal::Expired)
    } else if mode != server_mode {
        Some(Refusal::OtherMode)
    } else {
        None
    }
}

/// Exposes a generated key's secret (the one time it is shown).
pub fn reveal(key: &GeneratedKey) -> &str {
    key.secret.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_mode_then_43_base62_characters() {
        for mode in [KeyMode::Live, KeyMode::Test] {
            let k = generate_key(mode);
            let s = reveal(&k);
            assert!(s.starts_with(mode.key_prefix()), "{}", mode.as_str());
            let random = &s[mode.key_prefix().len()..];
            assert_eq!(random.len(), 43);
            assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(k.prefix, format!("{}{}", mode.key_prefix(), &random[..8]));
            assert_eq!(k.hash, token_hash(s));
            assert!(!format!("{k:?}").contains(random), "Debug never shows the secret");
            let presented = PresentedKey::parse(s).unwrap();
            assert_eq!((presented.mode, presented.prefix.as_str()), (mode, k.prefix.as_str()));
            assert!(presented.matches(&k.hash));
            assert!(!presented.matches(&generate_key(mode).hash));
        }
        assert_ne!(reveal(&generate_key(KeyMode::Test)), reveal(&generate_key(KeyMode::Test)));
    }

    #[test]
    fn base62_is_a_fixed_width_number() {
        assert_eq!(base62(&[0; 32]), "0".repeat(43));
        let mut one = [0u8; 32];
        one[31] = 61;
        assert_eq!(base62(&one), format!("{}z", "0".repeat(42)));
        one[31] = 62;
        assert_eq!(base62(&one), format!("{}10", "0".repeat(41)));
        assert_eq!(base62(&[0xff; 32]).len(), 43);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let good = reveal(&generate_key(KeyMode::Test)).to_owned();
        assert!(PresentedKey::parse(&good).is_some());
        for bad in [
            String::new(),
            "tg_test_".to_owned(),
            good[..good.len() - 1].to_owned(),
            format!("{good}0"),
            good.replace("tg_test_", "tg_prod_"),
            format!("{}-{}", &good[..20], &good[21..]),
        ] {
            assert!(PresentedKey::parse(&bad).is_none(), "{bad}");
        }
        assert!(looks_like_key("tg_live_x") && looks_like_key("tg_test_") && !looks_like_key("eyJhbGciOi"));
        assert!(mentions_key("a=1&key=tg_live_abc") && !mentions_key("tg_other"));
    }

    #[test]
    fn scopes_are_known_names_and_at_least_one() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_scopes("scopes", &names(&["users:read", "entitlements:read", "users:read"])).unwrap(),
            vec![Scope::EntitlementsRead, Scope::UsersRead]
        );
        assert_eq!(parse_scopes("scopes", &[]).unwrap_err()[0].field, "scopes");
        let e = parse_scopes("scopes", &names(&["users:read", "admin:all"])).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "scopes[1]");
        assert!(e[0].message.contains("admin:all"), "{}", e[0].message);
        let all: Vec<Scope> = Scope::ALL.to_vec();
        assert_eq!(scopes_from_text(&scopes_to_text(&all)), all);
        assert_eq!(scopes_from_text("users:read retired:scope"), vec![Scope::UsersRead]);
    }

    #[test]
    fn names_expiry_and_refusals() {
        assert_eq!(parse_key_name("name", "  billing  ").unwrap(), "billing");
        assert!(parse_key_name("name", " ").is_err() && parse_key_name("name", &"x".repeat(101)).is_err());
        assert!(parse_key_name("name", "a\u{7}b").is_err());
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(1);
        assert!(check_expiry("expires_at", Some(now), now).is_err() && check_expiry("expires_at", Some(later), now).is_ok());
        assert_eq!(refusal(KeyMode::Test, None, None, KeyMode::Test, now), None);
        assert_eq!(refusal(KeyMode::Test, Some(now), Some(later), KeyMode::Test, now), Some(Refusal::Revoked));
        assert_eq!(refusal(KeyMode::Test, None, Some(now), KeyMode::Test, now), Some(Refusal::Expired));
        assert_eq!(refusal(KeyMode::Live, None, Some(later), KeyMode::Test, now), Some(Refusal::OtherMode));
        assert_eq!(KeyMode::of_server(Some("rk_live_x")), KeyMode::Live);
        assert_eq!(KeyMode::of_server(Some("sk_test_x")), KeyMode::Test);
        assert_eq!(KeyMode::of_server(None), KeyMode::Test);
    }

    #[test]
    fn scopes_round_trip_through_their_names() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
            assert_eq!(serde_json::to_value(scope).unwrap(), scope.as_str());
        }
        assert_eq!(Scope::parse("admin"), None);
    }
}
