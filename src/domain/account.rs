//! Accounts: parsed emails, passwords, names and roles. A value that exists is valid.

use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::FieldError;

/// A normalised email address: trimmed, domain lower-cased (the local part keeps its case, as
/// RFC 5321 allows it to matter), at most 254 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(field: &str, input: &str) -> Result<Email, FieldError> {
        let trimmed = input.trim();
        let invalid = || FieldError::new(field, "must be an email address such as name@example.com");
        let (local, domain) = trimmed.rsplit_once('@').ok_or_else(invalid)?;
        let domain_ok = !domain.is_empty()
            && domain.len() <= 253
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '.');
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@' || c == '<' || c == '>');
        if !domain_ok || !local_ok {
            return Err(invalid());
        }
        let email = format!("{local}@{}", domain.to_lowercase());
        if email.len() > 254 {
            return Err(FieldError::new(field, "must be at most 254 bytes"));
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How addresses are compared (unique in the database, and the per-account limiter's key). The
/// local part keeps its case for display, but one mailbox is one account. Folded here, not by the
/// database, so SQLite (ASCII-only `lower`) and PostgreSQL (locale-dependent) agree.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Words zxcvbn should treat as known when judging a user's password: the address, its halves and
/// the words of the name.
pub fn known_words<'a>(email: Option<&'a str>, name: Option<&'a str>) -> Vec<&'a str> {
    let mut words = Vec::new();
    if let Some(e) = email {
        words.push(e);
        words.extend(e.split('@'));
    }
    if let Some(n) = name {
        words.extend(n.split_whitespace());
    }
    words
}

/// A display name: 1–100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(field: &str, input: &str) -> Result<UserName, FieldError> {
        let t = input.trim();
        if t.is_empty() || t.chars().count() > 100 || t.chars().any(char::is_control) {
            return Err(FieldError::new(field, "must be 1 to 100 characters without control characters"));
        }
        Ok(UserName(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub const PASSWORD_MIN_CHARS: usize = 12;
pub const PASSWORD_MAX_CHARS: usize = 128;

/// zxcvbn judges at most this many characters of a password. Its cost grows faster than the
/// length: on long strings of look-alike symbols it took 0.34 s at 64 characters and 0.66 s at 100
/// (release build, this project's 2-core machine). Characters past this bound can only add
/// strength, so a password whose first 64 characters are strong is strong; one whose first 64
/// are weak is refused however it goes on.
pub const STRENGTH_CHECKED_CHARS: usize = 64;

/// zxcvbn's score (0–4) for the first [`STRENGTH_CHECKED_CHARS`] characters of `password`, with
/// `user_inputs` (the user's email and name) as known words. CPU-heavy: run it on the password pool.
pub fn strength_score(password: &str, user_inputs: &[&str]) -> u8 {
    let end = password.char_indices().nth(STRENGTH_CHECKED_CHARS).map_or(password.len(), |(i, _)| i);
    zxcvbn::zxcvbn(&password[..end], user_inputs).score() as u8
}

/// A password that passed the policy: 12–128 characters, not a common password, and not
/// guessable (zxcvbn score ≥ 3, judged with the user's own email and name as known words).
#[derive(Debug)]
pub struct NewPassword(SecretString);

/// A password that passed the cheap checks (length, the common list); its strength is judged
/// next, off the async runtime ([`crate::domain::password::PasswordHasherPool::strength`]).
#[derive(Debug)]
pub struct PasswordCandidate(SecretString);

impl NewPassword {
    /// Every check, here and now (zxcvbn included).
    pub fn parse(field: &str, input: &SecretString, user_inputs: &[&str]) -> Result<NewPassword, FieldError> {
        let candidate = NewPassword::precheck(field, input)?;
        let score = strength_score(candidate.secret().expose_secret(), user_inputs);
        candidate.judge(field, score)
    }

    /// The cheap checks: length and the list of common passwords.
    pub fn precheck(field: &str, input: &SecretString) -> Result<PasswordCandidate, FieldError> {
        let p = input.expose_secret();
        let chars = p.chars().count();
        if !(PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&chars) {
            return Err(FieldError::new(field, format!("must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters")));
        }
        if is_common_password(p) {
            return Err(FieldError::new(field, "is a commonly used password; choose another"));
        }
        Ok(PasswordCandidate(input.clone()))
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl PasswordCandidate {
    pub fn secret(&self) -> &SecretString {
        &self.0
    }

    /// The verdict on zxcvbn's `score` for this password.
    pub fn judge(self, field: &str, score: u8) -> Result<NewPassword, FieldError> {
        if score < 3 {
            return Err(FieldError::new(field, "is too easy to guess; use a longer passphrase or more varied characters"));
        }
        Ok(NewPassword(self.0))
    }
}

/// Passwords of 12+ characters that appear in public breach corpora and that a guessing attack
/// tries first, checked before zxcvbn (which knows most, not all, of them).
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

fn is_common_password(p: &str) -> bool {
    let lower = p.to_lowercase();
    COMMON_PASSWORDS.lines().map(str::trim).any(|c| !c.is_empty() && !c.starts_with('#') && c == lower)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A stored user, password hash included: never serialised.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub password_changed_at: DateTime<Utc>,
    /// Moves on at every password change and every disable; sessions and token families of an
    /// older epoch no longer work.
    pub credential_epoch: i64,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// An id with a type prefix, as API.md describes (`usr_…`, `ses_…`): 48 bits of milliseconds then
/// 48 random bits, in hex, so ids sort by creation and cannot be guessed.
pub fn new_id(prefix: &str) -> String {
    use rand::RngCore;
    let millis = (Utc::now().timestamp_millis().max(0) as u64) & 0xffff_ffff_ffff;
    let mut bytes = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{millis:012x}{random}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised() {
        assert_eq!(Email::parse("email", "  Alice@Example.COM ").unwrap().as_str(), "Alice@example.com");
        for bad in ["", "no-at", "@example.com", "a@", "a@localhost", "a b@example.com", "a@exa mple.com", "a@.example.com"] {
            assert!(Email::parse("email", bad).is_err(), "{bad:?}");
        }
        assert_eq!(Email::parse("email", "x").unwrap_err().field, "email");
    }

    #[test]
    fn password_policy() {
        let check = |p: &str| NewPassword::parse("password", &SecretString::from(p.to_owned()), &["alice@example.com"]);
        assert!(check("short1!").unwrap_err().message.contains("12 to 128"));
        assert!(check(&"x".repeat(129)).is_err());
        for weak in ["password1234", "aaaaaaaaaaaa", "qwertyuiop123", "123456789012", "alice@example.com1"] {
            assert!(check(weak).is_err(), "{weak} accepted");
        }
        assert!(check("correct horse battery staple 42").is_ok());
        assert!(check("vN7#qL2!xR9@wT4z").is_ok());
    }

    #[test]
    fn zxcvbn_sees_at_most_the_first_64_characters() {
        // Weak in its first 64 characters, strong only after them: refused.
        let weak_head = format!("{}{}", "a".repeat(64), "vN7#qL2!xR9@wT4z");
        let check = |p: &str| NewPassword::parse("password", &SecretString::from(p.to_owned()), &[]);
        assert!(check(&weak_head).is_err());
        // Strong within the first 64 characters, whatever follows: accepted.
        let strong_head = format!("vN7#qL2!xR9@wT4z{}", "a".repeat(100));
        assert!(check(&strong_head).is_ok());
        // The look-alike string from the review, at the 128-character maximum: judged on 64.
        let lookalike: String = "4@8({[</369&#!1/|0$5+7%2/".chars().cycle().take(128).collect();
        assert_eq!(strength_score(&lookalike, &[]), strength_score(&lookalike.chars().take(64).collect::<String>(), &[]));
    }

    #[test]
    fn ids_have_prefixes_and_do_not_repeat() {
        let a = new_id("usr");
        assert!(a.starts_with("usr_") && a.len() == 28);
        assert_ne!(a, new_id("usr"));
    }
}
