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
/// header: header injection), not empty, at most 998 bytes (RFC 5322's line limit).
pub fn header_safe(value: &str) -> bool {
    !value.trim().is_empty() && value.len() <= 998 && !value.chars().any(char::is_control)
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
        for bad in ["a@b.example\r\nBcc: x@y.example", "Receipt\nBcc: x@y.example", "x\ry", "", "  ", "tab\there"] {
            assert!(!header_safe(bad), "{bad:?}");
        }
        assert!(header_safe("Your receipt from Café <Shop> & co"));
        let mail = OutgoingMail {
            to: "buyer@example.com".into(),
            subject: "Hi\r\nBcc: victim@example.com".into(),
            text: String::new(),
            html: String::new(),
        };
        assert!(matches!(check_headers(&mail), Err(MailError::Permanent(_))));
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
