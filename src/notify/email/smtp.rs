//! SMTP with lettre on rustls (ring): implicit TLS, required STARTTLS, or plain (loopback or
//! development only, see config/checks.rs); AUTH when a user is configured. One connection a mail.
//!
//! The dialog is driven step by step (lettre's connection, our sequence: connect and greet,
//! STARTTLS, AUTH, MAIL FROM, RCPT TO, DATA) so that a refusal is judged by the step that drew
//! it: the same 550 means "this relay will not take our mail" before RCPT and "this recipient
//! does not exist" at RCPT.

use std::time::Duration;

use async_trait::async_trait;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::Message;
use secrecy::ExposeSecret;

use crate::config::{SmtpConfig, SmtpTls};

use super::types::{check_headers, MailError, MailSettings, Mailer, OutgoingMail};

/// Connecting, greeting and each command's reply must each come within this.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How the connection is protected.
enum Protection {
    Plain,
    /// TLS from the first byte (smtps://, 465).
    Implicit(TlsParameters),
    /// STARTTLS, required: a server that does not offer it gets nothing.
    StartTls(TlsParameters),
}

pub struct SmtpMailer {
    host: String,
    port: u16,
    hello: ClientId,
    protection: Protection,
    credentials: Option<Credentials>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    /// The right-hand side of our Message-IDs (the From address's domain).
    id_domain: String,
}

/// The step of the dialog a reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Connecting, the greeting, EHLO, STARTTLS and AUTH: the transport and its credentials.
    Connect,
    /// MAIL FROM: whether this relay takes mail from our sender.
    Sender,
    /// RCPT TO: whether the recipient exists and takes mail.
    Recipient,
    /// DATA and the message: whether this message is accepted.
    Data,
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
        let hello = match settings.public_url.host_str().filter(|h| h.contains('.') && !h.starts_with('[')) {
            Some(ehlo) => ClientId::Domain(ehlo.to_owned()),
            None => ClientId::default(),
        };
        let protection = if smtp.tls == SmtpTls::Plain {
            Protection::Plain
        } else {
            let mut params = TlsParameters::builder(host.clone());
            if let Some(path) = &smtp.ca_file {
                let pem = std::fs::read(path).map_err(|e| format!("TOLLGATE_SMTP_CA_FILE cannot be read ({})", e.kind()))?;
                let cert = Certificate::from_pem(&pem).map_err(|_| "TOLLGATE_SMTP_CA_FILE is not PEM".to_owned())?;
                params = params.add_root_certificate(cert);
            }
            let params = params.build().map_err(|e| format!("SMTP TLS settings: {e}"))?;
            match smtp.tls {
                SmtpTls::Implicit => Protection::Implicit(params),
                _ => Protection::StartTls(params),
            }
        };
        let credentials = smtp.user.as_ref().map(|user| {
            let password = smtp.password.as_ref().map(|p| p.expose_secret().to_owned()).unwrap_or_default();
            Credentials::new(user.clone(), password)
        });
        let id_domain = from.email.domain().to_owned();
        Ok(SmtpMailer { host, port: smtp.port, hello, protection, credentials, from, reply_to, id_domain })
    }

    fn message(&self, mail: &OutgoingMail) -> Result<Message, MailError> {
        check_headers(mail)?;
        let to: Mailbox =
            mail.to.parse().map_err(|_| MailError::Permanent("the recipient is not an email address".to_owned()))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .message_id(Some(mail.message_id_at(&self.id_domain)));
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone()))
            .map_err(|e| MailError::Permanent(format!("the mail cannot be built: {e}")))
    }

    /// Connects, protects and authenticates.
    async fn connect(&self) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        let wrapper = match &self.protection {
            Protection::Implicit(params) => Some(params.clone()),
            _ => None,
        };
        let mut conn =
            AsyncSmtpConnection::connect_tokio1((self.host.as_str(), self.port), Some(TIMEOUT), &self.hello, wrapper, None)
                .await?;
        if let Protection::StartTls(params) = &self.protection {
            // Errs when the server does not offer STARTTLS: nothing goes in clear.
            conn.starttls(params.clone(), &self.hello).await?;
        }
        if let Some(credentials) = &self.credentials {
            if let Err(e) = conn.auth(DEFAULT_MECHANISMS, credentials).await {
                conn.abort().await;
                return Err(e);
            }
        }
        Ok(conn)
    }

    /// MAIL FROM, RCPT TO, DATA on a ready connection.
    async fn transact(conn: &mut AsyncSmtpConnection, envelope: &Envelope, bytes: &[u8]) -> Result<(), MailError> {
        let mut options = Vec::new();
        // What lettre's own send checks: 8-bit content and non-ASCII addresses need the
        // server's word (another relay, or this one reconfigured, takes them: transient).
        if !bytes.is_ascii() {
            if !conn.server_info().supports_feature(Extension::EightBitMime) {
                return Err(MailError::Transient("SMTP client: the server does not take 8-bit mail (no 8BITMIME)".into()));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let non_ascii = |a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii();
        if envelope.from().is_some_and(non_ascii) || envelope.to().iter().any(non_ascii) {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(MailError::Transient(
                    "SMTP client: the server does not take non-ASCII addresses (no SMTPUTF8)".into(),
                ));
            }
            options.push(MailParameter::SmtpUtfEight);
        }
        conn.command(Mail::new(envelope.from().cloned(), options)).await.map_err(|e| classify(Step::Sender, &e))?;
        for to in envelope.to() {
            conn.command(Rcpt::new(to.clone(), vec![])).await.map_err(|e| classify(Step::Recipient, &e))?;
        }
        conn.command(Data).await.map_err(|e| classify(Step::Data, &e))?;
        conn.message(bytes).await.map_err(|e| classify(Step::Data, &e))?;
        Ok(())
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let message = self.message(mail)?;
        let bytes = message.formatted();
        let mut conn = self.connect().await.map_err(|e| classify(Step::Connect, &e))?;
        let result = Self::transact(&mut conn, message.envelope(), &bytes).await;
        if result.is_ok() {
            // The mail is accepted; a failed QUIT changes nothing.
            let _ = conn.quit().await;
        } else {
            conn.abort().await;
        }
        result
    }
}

/// Reply codes that mean our credentials, not the mail: 530 authentication required, 534
/// mechanism too weak, 535 credentials invalid, 538 encryption required for the mechanism
/// (and 454, a temporary authentication failure, which is 4xx anyway).
const AUTH_CODES: &[u16] = &[454, 530, 534, 535, 538];

/// Permanent only for what this mail itself drew: a 5xx to RCPT TO (no such recipient) or to
/// DATA (this message refused). Everything else may pass and is transient, so the outbox
/// retries until its deadline: 4xx replies; any reply before RCPT (the greeting, EHLO, STARTTLS,
/// AUTH: a 535 during a password rotation; MAIL FROM: a relay that does not take our sender yet)
/// and an authentication code at any step (the operator fixes the relay, every queued receipt
/// then goes); refused or dropped connections, timeouts, TLS failures, a server that offers no
/// STARTTLS or no usable AUTH (the server comes back, the operator fixes the certificate, a man
/// in the middle stripping STARTTLS goes away).
fn classify(step: Step, e: &lettre::transport::smtp::Error) -> MailError {
    let text = shorten(&e.to_string());
    let code = e.status().map(u16::from);
    let auth = code.is_some_and(|c| AUTH_CODES.contains(&c));
    if e.is_permanent() && matches!(step, Step::Recipient | Step::Data) && !auth {
        MailError::Permanent(format!("SMTP server refused: {text}"))
    } else if e.is_permanent() {
        let at = match step {
            Step::Sender => "the sender (MAIL FROM)",
            _ => "the connection or its credentials",
        };
        MailError::Transient(format!("SMTP server refused {at}, a relay setting to fix: {text}"))
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
