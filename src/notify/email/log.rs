//! The development transport: nothing is sent; the recipient and subject go to the log at INFO
//! (the body is not logged: it is the buyer's business, and the log is not a mailbox).

use async_trait::async_trait;

use super::types::{check_headers, MailError, Mailer, OutgoingMail};

pub struct LogMailer;

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        check_headers(mail)?;
        tracing::info!(target: "tollgate::mail", to = %mail.to, subject = %mail.subject, "mail not sent (TOLLGATE_MAIL_TRANSPORT=log)");
        Ok(())
    }
}
