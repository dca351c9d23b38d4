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
        Ok(SendGridMailer { http, endpoint, key, from: address(&from), reply_to })
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
            408 | 429 | 500..=599 => MailError::Transient(text),
            // 400-403 (a malformed mail, a revoked key, an unverified sender), 413 and the rest.
            _ => MailError::Permanent(text),
        })
    }
}

/// SendGrid's first error message (`{"errors":[{"message":…}]}`), cut short.
async fn reason(response: reqwest::Response) -> String {
    let Ok(body) = response.json::<Value>().await else { return String::new() };
    match body.pointer("/errors/0/message").and_then(Value::as_str) {
        Some(m) => format!(": {}", m.chars().filter(|c| !c.is_control()).take(200).collect::<String>()),
        None => String::new(),
    }
}
