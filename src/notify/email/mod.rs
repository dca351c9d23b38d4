//! STUB (OUTBOX part) with exactly the interface the EMAIL part builds in this folder; the
//! coordinator replaces this file with theirs at merge. It only logs the recipient and subject.

use std::sync::Arc;

use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    #[error("transient: {0}")]
    Transient(String),
    #[error("permanent: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError>;
}

#[derive(Debug, Clone)]
pub struct MailSettings {
    pub from: String,
    pub reply_to: Option<String>,
    pub product_name: String,
    pub public_url: url::Url,
}

/// `None` for a kind it does not know.
pub fn render(kind: &str, data: &serde_json::Value, settings: &MailSettings) -> Option<OutgoingMail> {
    let subject = match kind {
        "receipt" => "Your receipt",
        "refund" => "Your refund",
        "password_changed" => "Your password was changed",
        "new_sign_in" => "New sign-in",
        "endpoint_disabled" => "A webhook endpoint was disabled",
        _ => return None,
    };
    let to = data["to"].as_str()?.to_owned();
    let text = format!("{} — {subject}", settings.product_name);
    Some(OutgoingMail { to, subject: subject.to_owned(), html: text.clone(), text })
}

struct LogMailer;

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        tracing::info!(to = %mail.to, subject = %mail.subject, "mail (log transport)");
        Ok(())
    }
}

pub fn mailer_from_config(_config: &crate::config::Config) -> Arc<dyn Mailer> {
    Arc::new(LogMailer)
}
