//! What the rest of tollgate sees of email: a rendered mail, the one way to send it, and how a
//! send can fail.

use std::fmt;

use async_trait::async_trait;
use url::Url;

use crate::config::Config;

/// One rendered mail to one recipient. `to` and `subject` never hold CR or LF ([`header_safe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// What makes this mail's `Message-ID` (`<id@from-domain>`): the same id, the same
    /// Message-ID, so a send retried after a lost reply is the same message to the recipient's
    /// server. `None` (what [`render`](super::render) gives): a fresh random one each attempt.
    pub message_id: Option<String>,
}

impl OutgoingMail {
    /// This mail with a stable id (the outbox row's), from which every attempt derives the
    /// same `Message-ID`.
    pub fn with_id(self, id: &str) -> Self {
        OutgoingMail { message_id: Some(id.to_owned()), ..self }
    }

    /// `<id@domain>`: the id as it is when it is made of RFC 5322 atext and dots (a row id, a
    /// UUID), hex-encoded after an `x` otherwise, so it is always a valid msg-id; a random UUID
    /// without an id.
    pub(super) fn message_id_at(&self, domain: &str) -> String {
        let left = match self.message_id.as_deref() {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 128
                    && id.bytes().all(is_id_char)
                    && !id.starts_with('.')
                    && !id.ends_with('.')
                    && !id.contains("..") =>
            {
                id.to_owned()
            }
            Some(id) => format!("x{}", id.bytes().map(|b| format!("{b:02x}")).collect::<String>()),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        format!("<{left}@{domain}>")
    }
}

/// RFC 5322 atext without the characters some servers mishandle (`/`, `=`, quotes), or a dot.
fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&*+-?^_{|}~.".contains(&b)
}

/// Why a send failed. `Transient`: try again later (the outbox backs off); `Permanent`: this mail
/// will never go (the outbox marks it failed). The text is the server's or the cause's own words,
/// never a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailError {
    Transient(String),
    Permanent(String),
}

impl MailError {
    pub fn is_transient(&self) -> bool {
        matches!(self, MailError::Transient(_))
    }
}

impl fmt::Display for MailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailError::Transient(why) => write!(f, "transient mail failure: {why}"),
            MailError::Permanent(why) => write!(f, "permanent mail failure: {why}"),
        }
    }
}

impl std::error::Error for MailError {}

/// A transport: SMTP, SendGrid, or the log.
#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError>;
}

/// What every mail says about who sends it.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// The From mailbox (`Name <addr>`).
    pub from: String,
    pub reply_to: Option<String>,
    pub product_name: String,
    /// Where users reach tollgate (links in mails point here).
    pub public_url: Url,
}

impl MailSettings {
    /// The configured sender; without `TOLLGATE_MAIL_FROM` (development, or the log transport),
    /// `PRODUCT_NAME <noreply@HOST>` with the public URL's host.
    pub fn from_config(config: &Config) -> MailSettings {
        let from = config.mail.from.clone().unwrap_or_else(|| default_from(&config.mail.product_name, &config.public_url));
        MailSettings {
            from,
            reply_to: config.mail.reply_to.clone(),
            product_name: config.mail.product_name.clone(),
            public_url: config.public_url.clone(),
        }
    }
}

fn default_from(product_name: &str, public_url: &Url) -> String {
    let host = public_url.host_str().filter(|h| h.contains('.') && !h.starts_with('[')).unwrap_or("localhost");
    // The display name is quoted so that any character of the product name is safe in it.
    let name: String = product_name.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
    format!("\"{name}\" <noreply@{host}>")
}

/// A value that may go into a header: no control characters at all (CR/LF would start a new
/// header: header injection; U+0085 NEL is a C1 control), no Unicode line or paragraph separator
/// (U+2028, U+2029: line breaks to some readers), not empty, at most 998 characters (RFC 5322's line
/// limit, counted in characters: a non-ASCII value is sent encoded and folded, RFC 2047).
pub fn header_safe(value: &str) -> bool {
    !value.trim().is_empty()
        && value.chars().count() <= 998
        && !value.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

/// Refuses a mail whose `to` or `subject` could inject headers (every transport checks).
pub(super) fn check_headers(mail: &OutgoingMail) -> Result<(), MailError> {
    if !header_safe(&mail.to) {
        return Err(MailError::Permanent("the recipient address holds control characters or is empty".to_owned()));
    }
    if !header_safe(&mail.subject) {
        return Err(MailError::Permanent("the subject holds control characters or is empty".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_with_cr_or_lf_are_refused() {
        for bad in [
            "a@b.example\r\nBcc: x@y.example",
            "Receipt\nBcc: x@y.example",
            "x\ry",
            "",
            "  ",
            "tab\there",
            "Receipt\u{2028}Bcc: x@y.example",
            "Receipt\u{2029}Bcc: x@y.example",
            "Receipt\u{85}Bcc: x@y.example",
        ] {
            assert!(!header_safe(bad), "{bad:?}");
        }
        assert!(header_safe("Your receipt from Café <Shop> & co"));
        let mail = OutgoingMail {
            to: "buyer@example.com".into(),
            subject: "Hi\r\nBcc: victim@example.com".into(),
            text: String::new(),
            html: String::new(),
            message_id: None,
        };
        assert!(matches!(check_headers(&mail), Err(MailError::Permanent(_))));
        for separator in ['\u{2028}', '\u{2029}', '\u{85}'] {
            let mail = OutgoingMail { subject: format!("Hi{separator}Bcc: victim@example.com"), ..mail.clone() };
            assert!(matches!(check_headers(&mail), Err(MailError::Permanent(_))), "{separator:?}");
        }
    }

    #[test]
    fn the_same_id_gives_the_same_message_id_and_no_id_a_fresh_one() {
        let mail = OutgoingMail {
            to: "b@example.com".into(),
            subject: "s".into(),
            text: String::new(),
            html: String::new(),
            message_id: None,
        };
        assert_ne!(mail.message_id_at("shop.example"), mail.message_id_at("shop.example"));
        let with = mail.clone().with_id("outbox-42");
        assert_eq!(with.message_id_at("shop.example"), "<outbox-42@shop.example>");
        assert_eq!(with.message_id_at("shop.example"), with.clone().message_id_at("shop.example"));
        // An id that is not atext cannot break the header: hex, and still stable.
        let odd = mail.with_id("a b>\r\nBcc: x@y");
        let id = odd.message_id_at("shop.example");
        assert_eq!(id, odd.message_id_at("shop.example"));
        assert!(id.starts_with("<x") && header_safe(&id) && !id[1..id.len() - 1].contains(['<', '>', ' ']), "{id}");
    }

    #[test]
    fn the_default_sender_is_the_product_at_the_public_host() {
        let url = Url::parse("https://pay.example.org").unwrap();
        assert_eq!(default_from("Shop \"Deluxe\"", &url), "\"Shop Deluxe\" <noreply@pay.example.org>");
        let local = Url::parse("http://localhost:8080").unwrap();
        assert_eq!(default_from("tollgate", &local), "\"tollgate\" <noreply@localhost>");
        assert!(default_from("x", &local).parse::<lettre::message::Mailbox>().is_ok());
    }
}
