//! SMTP with lettre on rustls (ring): implicit TLS, required STARTTLS, or plain (loopback or
//! development only, see config/checks.rs); AUTH when a user is configured. One connection a mail.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{SmtpConfig, SmtpTls};

use super::types::{check_headers, MailError, MailSettings, Mailer, OutgoingMail};

/// Connecting, greeting and each command's reply must each come within this.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    /// The right-hand side of our Message-IDs (the From address's domain).
    id_domain: String,
}

impl SmtpMailer {
    /// Fails only on what the configuration check already refuses (a From that is not a
    /// mailbox, a CA file that is not PEM); the reason never holds the password.
    pub fn new(smtp: &SmtpConfig, settings: &MailSettings) -> Result<SmtpMailer, String> {
        let from: Mailbox = settings.from.parse().map_err(|_| "TOLLGATE_MAIL_FROM is not a mailbox".to_owned())?;
        let reply_to = match &settings.reply_to {
            Some(r) => Some(r.parse().map_err(|_| "TOLLGATE_MAIL_REPLY_TO is not a mailbox".to_owned())?),
            None => None,
        };
        // lettre wants the bare host (an IPv6 literal without brackets) for the certificate check.
        let host = smtp.host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone()).port(smtp.port).timeout(Some(TIMEOUT));
        if let Some(ehlo) = settings.public_url.host_str().filter(|h| h.contains('.') && !h.starts_with('[')) {
            builder = builder.hello_name(ClientId::Domain(ehlo.to_owned()));
        }
        if smtp.tls != SmtpTls::Plain {
            let mut params = TlsParameters::builder(host);
            if let Some(path) = &smtp.ca_file {
                let pem = std::fs::read(path).map_err(|e| format!("TOLLGATE_SMTP_CA_FILE cannot be read ({})", e.kind()))?;
                let cert = Certificate::from_pem(&pem).map_err(|_| "TOLLGATE_SMTP_CA_FILE is not PEM".to_owned())?;
                params = params.add_root_certificate(cert);
            }
            let params = params.build().map_err(|e| format!("SMTP TLS settings: {e}"))?;
            builder = builder.tls(match smtp.tls {
                SmtpTls::Implicit => Tls::Wrapper(params),
                _ => Tls::Required(params),
            });
        }
        if let Some(user) = &smtp.user {
            let password = smtp.password.as_ref().map(|p| p.expose_secret().to_owned()).unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let id_domain = from.email.domain().to_owned();
        Ok(SmtpMailer { transport: builder.build(), from, reply_to, id_domain })
    }

    fn message(&self, mail: &OutgoingMail) -> Result<Message, MailError> {
        check_headers(mail)?;
        let to: Mailbox =
            mail.to.parse().map_err(|_| MailError::Permanent("the recipient is not an email address".to_owned()))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .message_id(Some(format!("<{}@{}>", uuid::Uuid::new_v4().simple(), self.id_domain)));
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone()))
            .map_err(|e| MailError::Permanent(format!("the mail cannot be built: {e}")))
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let message = self.message(mail)?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| classify(&e))
    }
}

/// 5xx replies: permanent. Everything else may pass: 4xx replies, refused or dropped
/// connections, timeouts, TLS failures and a server that offers no STARTTLS or no usable AUTH
/// (the server comes back, the operator fixes the certificate or the relay; a man in the middle
/// stripping STARTTLS goes away): transient, so the outbox retries until its deadline.
fn classify(e: &lettre::transport::smtp::Error) -> MailError {
    let text = shorten(&e.to_string());
    if e.is_permanent() {
        MailError::Permanent(format!("SMTP server refused: {text}"))
    } else if e.is_transient() {
        MailError::Transient(format!("SMTP server deferred: {text}"))
    } else if e.is_client() {
        MailError::Transient(format!("SMTP client: {text}"))
    } else if e.is_timeout() {
        MailError::Transient(format!("SMTP timeout: {text}"))
    } else {
        MailError::Transient(format!("SMTP connection: {text}"))
    }
}

/// A server's words, cut short (a log line, an attempt record).
fn shorten(text: &str) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(300).collect();
    one_line.trim().to_owned()
}
