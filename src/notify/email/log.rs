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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Where the test's log lines go.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[tokio::test]
    async fn the_log_transport_logs_recipient_and_subject_at_info_and_not_the_body() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt().with_writer(captured.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mail = OutgoingMail {
            to: "buyer@example.com".into(),
            subject: "Your receipt from Shop: Pro".into(),
            text: "the body, the buyer's business".into(),
            html: "<p>the body</p>".into(),
            message_id: None,
        };
        LogMailer.send(&mail).await.unwrap();
        let bad = OutgoingMail { subject: "Hi\r\nBcc: x@example.com".into(), ..mail.clone() };
        assert!(matches!(LogMailer.send(&bad).await, Err(MailError::Permanent(_))));
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains("INFO") && log.contains("buyer@example.com") && log.contains("Your receipt from Shop: Pro"),
            "{log}"
        );
        assert!(!log.contains("the body"), "{log}");
    }
}
