//! Email: the messages tollgate sends (`render`) and the transports that carry them (`Mailer`:
//! SMTP, SendGrid, or the log). The outbox's dispatcher renders a row's kind and data with
//! [`render`], sends it with the [`Mailer`] from [`mailer_from_config`], and retries a
//! [`MailError::Transient`] with backoff; a [`MailError::Permanent`] will never succeed.
//!
//! `types.rs` holds the shared types; `render.rs` the messages (its doc lists each kind's data);
//! `money.rs` amounts; `smtp.rs`, `sendgrid.rs`, `log.rs` the transports.

mod log;
mod money;
mod render;
mod sendgrid;
mod smtp;
mod types;

use std::sync::Arc;

use async_trait::async_trait;

pub use self::money::format_amount;
pub use self::render::{escape, render, KINDS};
pub use self::types::{header_safe, MailError, MailSettings, Mailer, OutgoingMail};

use crate::config::{Config, MailTransport};

/// The configured transport. A configuration that loaded always builds one; should building
/// still fail, every send fails transiently with the reason (the outbox keeps the mail), and
/// the reason is logged once here.
pub fn mailer_from_config(config: &Config) -> Arc<dyn Mailer> {
    let settings = MailSettings::from_config(config);
    let built: Result<Arc<dyn Mailer>, String> = match &config.mail.transport {
        MailTransport::Log => Ok(Arc::new(log::LogMailer)),
        MailTransport::Smtp(smtp) => smtp::SmtpMailer::new(smtp, &settings).map(|m| Arc::new(m) as Arc<dyn Mailer>),
        MailTransport::SendGrid { api_key, api_base } => {
            sendgrid::SendGridMailer::new(api_base, api_key.clone(), &settings).map(|m| Arc::new(m) as Arc<dyn Mailer>)
        }
    };
    built.unwrap_or_else(|why| {
        tracing::error!(transport = config.mail.transport.name(), "mail transport unusable: {why}");
        Arc::new(Unusable(why))
    })
}

/// A transport that could not be built: every send says why.
struct Unusable(String);

#[async_trait]
impl Mailer for Unusable {
    async fn send(&self, _mail: &OutgoingMail) -> Result<(), MailError> {
        Err(MailError::Transient(format!("mail transport unusable: {}", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::load(&Sources { env: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Default::default() })
            .unwrap()
    }

    #[tokio::test]
    async fn a_transport_that_cannot_be_built_fails_every_send_transiently() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let c = config(&[
            ("TOLLGATE_MAIL_TRANSPORT", "smtp"),
            ("TOLLGATE_SMTP_URL", "smtps://localhost:1"),
            ("TOLLGATE_SMTP_CA_FILE", &ca.to_string_lossy()),
        ]);
        // The CA file vanishes between the check and the start.
        std::fs::remove_file(&ca).unwrap();
        let mail = OutgoingMail {
            to: "b@example.com".into(),
            subject: "s".into(),
            text: "t".into(),
            html: "h".into(),
            message_id: None,
        };
        let err = mailer_from_config(&c).send(&mail).await.unwrap_err();
        assert!(matches!(&err, MailError::Transient(why) if why.contains("TOLLGATE_SMTP_CA_FILE")), "{err}");
        // The log transport always builds.
        mailer_from_config(&config(&[])).send(&mail).await.unwrap();
    }
}
