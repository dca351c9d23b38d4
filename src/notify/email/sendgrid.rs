//! SendGrid's v3 Mail Send API: `POST {base}/v3/mail/send` with a bearer key and one JSON mail
//! (text/plain first, then text/html, as SendGrid requires). 2xx (202) is accepted.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use url::Url;

use super::types::{check_headers, MailError, MailSettings, Mailer, OutgoingMail};

pub struct SendGridMailer {
    http: reqwest::Client,
    endpoint: Url,
    key: SecretString,
    from: Value,
    reply_to: Option<Value>,
    /// The right-hand side of our Message-IDs (the From address's domain).
    id_domain: String,
}

impl SendGridMailer {
    pub fn new(api_base: &Url, key: SecretString, settings: &MailSettings) -> Result<SendGridMailer, String> {
        let from: Mailbox = settings.from.parse().map_err(|_| "TOLLGATE_MAIL_FROM is not a mailbox".to_owned())?;
        let reply_to = match &settings.reply_to {
            Some(r) => Some(address(&r.parse().map_err(|_| "TOLLGATE_MAIL_REPLY_TO is not a mailbox".to_owned())?)),
            None => None,
        };
        let endpoint = Url::parse(&format!("{}/v3/mail/send", api_base.as_str().trim_end_matches('/')))
            .map_err(|_| "SENDGRID_API_BASE is not a base URL".to_owned())?;
        // reqwest is built without a bundled crypto provider: ring, as in the server.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            // The key rides on the request: it goes to the configured host, never where a redirect says.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("SendGrid client: {e}"))?;
        let id_domain = from.email.domain().to_owned();
        Ok(SendGridMailer { http, endpoint, key, from: address(&from), reply_to, id_domain })
    }

    /// The request body for `mail`.
    fn body(&self, mail: &OutgoingMail) -> Result<Value, MailError> {
        check_headers(mail)?;
        let to: Mailbox =
            mail.to.parse().map_err(|_| MailError::Permanent("the recipient is not an email address".to_owned()))?;
        let mut body = json!({
            "personalizations": [{"to": [address(&to)]}],
            "from": self.from,
            "subject": mail.subject,
            "content": [
                {"type": "text/plain", "value": mail.text},
                {"type": "text/html", "value": mail.html},
            ],
            // Receipts and security notices: no link rewriting, no tracking pixel.
            "tracking_settings": {"click_tracking": {"enable": false}, "open_tracking": {"enable": false}},
        });
        if let Some(r) = &self.reply_to {
            body["reply_to"] = r.clone();
        }
        // A mail with an id (the outbox row's) names its Message-ID, the same on every attempt;
        // without one, SendGrid makes its own.
        if mail.message_id.is_some() {
            body["headers"] = json!({"Message-ID": mail.message_id_at(&self.id_domain)});
        }
        Ok(body)
    }
}

/// SendGrid's email object: `{"email": …, "name": …}` (no name when there is none).
fn address(m: &Mailbox) -> Value {
    match &m.name {
        Some(name) if !name.is_empty() => json!({"email": m.email.to_string(), "name": name}),
        _ => json!({"email": m.email.to_string()}),
    }
}

#[async_trait]
impl Mailer for SendGridMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let body = self.body(mail)?;
        let response = self
            .http
            .post(self.endpoint.clone())
            .bearer_auth(self.key.expose_secret())
            .json(&body)
            .send()
            .await
            // reqwest's error names the URL, never the Authorization header.
            .map_err(|e| MailError::Transient(format!("SendGrid unreachable: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = reason(response).await;
        let text = format!("SendGrid answered {}{detail}", status.as_u16());
        Err(match status.as_u16() {
            // 401 (a revoked or rotated key), 403 (a key without the mail.send scope, an
            // unverified sender) and 404 (a wrong SENDGRID_API_BASE) are our configuration, not
            // this mail: fixed, every queued mail goes.
            401 | 403 | 404 | 408 | 429 | 500..=599 => MailError::Transient(text),
            // 400 (this mail is malformed), 413 (too large) and the rest.
            _ => MailError::Permanent(text),
        })
    }
}

/// The most of an error body read: SendGrid's errors are a few hundred bytes; a proxy's page or
/// a hostile server's endless body is not held in memory.
const MAX_ERROR_BODY: usize = 4096;

/// SendGrid's first error message (`{"errors":[{"message":…}]}`) from the first
/// [`MAX_ERROR_BODY`] bytes of the body, cut short.
async fn reason(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BODY - body.len())]),
            _ => break,
        }
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return String::new() };
    match body.pointer("/errors/0/message").and_then(Value::as_str) {
        Some(m) => format!(": {}", m.chars().filter(|c| !c.is_control()).take(200).collect::<String>()),
        None => String::new(),
    }
}
