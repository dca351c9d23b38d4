//! Email: the transport (log, SMTP, SendGrid), From and Reply-To, the product name, the optional
//! new-sign-in notice. What is unsafe only in production is judged in `checks.rs`.

use std::path::PathBuf;

use lettre::message::Mailbox;
use percent_encoding::percent_decode_str;
use secrecy::SecretString;
use url::Url;

use super::layer::Raw;
use super::types::{MailConfig, MailTransport, SmtpConfig, SmtpTls};
use super::values::parse_bool;

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> MailConfig {
    let transport = match raw.get("mail_transport").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("log") => MailTransport::Log,
        Some("smtp") => match raw.get("smtp_url") {
            None => {
                errors.push("TOLLGATE_MAIL_TRANSPORT is smtp but TOLLGATE_SMTP_URL is not set".to_owned());
                MailTransport::Log
            }
            Some(url) => match smtp_url(url.trim()) {
                Ok(mut smtp) => {
                    smtp.ca_file = smtp_ca_file(raw, errors);
                    MailTransport::Smtp(smtp)
                }
                Err(why) => {
                    errors.push(raw.bad("smtp_url", why));
                    MailTransport::Log
                }
            },
        },
        Some("sendgrid") => {
            let api_base = raw.get("sendgrid_api_base").and_then(|v| Url::parse(v.trim()).ok()).unwrap_or_else(|| {
                errors.push(raw.bad("sendgrid_api_base", "must be a URL"));
                Url::parse("https://api.sendgrid.com").expect("constant URL")
            });
            match raw.get("sendgrid_api_key") {
                Some(key) => MailTransport::SendGrid { api_key: SecretString::from(key.trim().to_owned()), api_base },
                None => {
                    errors.push("TOLLGATE_MAIL_TRANSPORT is sendgrid but SENDGRID_API_KEY is not set".to_owned());
                    MailTransport::Log
                }
            }
        }
        Some(_) => {
            errors.push(raw.bad("mail_transport", "must be log, smtp or sendgrid"));
            MailTransport::Log
        }
    };
    if raw.get("smtp_ca_file").is_some() && !matches!(transport, MailTransport::Smtp(_)) {
        errors.push(raw.bad("smtp_ca_file", "is only used with TOLLGATE_MAIL_TRANSPORT=smtp"));
    }
    let product_name = raw.get("product_name").unwrap_or("tollgate").trim().to_owned();
    if product_name.chars().count() > 100 || product_name.chars().any(char::is_control) {
        errors.push(raw.bad("product_name", "must be 1 to 100 characters, no control characters"));
    }
    let new_sign_in = parse_bool(raw.get("mail_new_sign_in").or(Some("false"))).unwrap_or_else(|| {
        errors.push(raw.bad("mail_new_sign_in", "must be true or false"));
        false
    });
    MailConfig {
        transport,
        from: mailbox(raw, "mail_from", errors),
        reply_to: mailbox(raw, "mail_reply_to", errors),
        product_name,
        new_sign_in,
    }
}

/// A mailbox (`Name <addr@host>` or `addr@host`) in its canonical form.
fn mailbox(raw: &Raw, key: &str, errors: &mut Vec<String>) -> Option<String> {
    let value = raw.get(key)?.trim();
    match value.parse::<Mailbox>() {
        Ok(m) if !value.contains(['\r', '\n']) => Some(m.to_string()),
        _ => {
            errors.push(raw.bad(key, "must be an address such as `Example Shop <receipts@example.com>`"));
            None
        }
    }
}

/// `smtps://` implicit TLS (465), `smtp+starttls://` or `smtp://…?tls=required` STARTTLS (587),
/// `smtp://` plain (25); user and password percent-encoded. The reason never holds the URL.
pub(crate) fn smtp_url(text: &str) -> Result<SmtpConfig, &'static str> {
    let url = Url::parse(text).map_err(|_| "must be an smtp://, smtps:// or smtp+starttls:// URL")?;
    let query: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let tls_query = match query.as_slice() {
        [] => None,
        [(k, v)] if k == "tls" && v == "required" => Some(SmtpTls::StartTls),
        _ => return Err("takes no query except ?tls=required (STARTTLS); opportunistic TLS can be stripped, so it is refused"),
    };
    let tls = match (url.scheme(), tls_query) {
        ("smtps", None) => SmtpTls::Implicit,
        ("smtp+starttls", None) | ("smtp", Some(SmtpTls::StartTls)) => SmtpTls::StartTls,
        ("smtp", None) => SmtpTls::Plain,
        ("smtp" | "smtps" | "smtp+starttls", Some(_)) => return Err("?tls=required goes with smtp:// only"),
        _ => return Err("must be an smtp://, smtps:// or smtp+starttls:// URL"),
    };
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("must name the SMTP server's host")?.to_owned();
    if url.path() != "" && url.path() != "/" || url.fragment().is_some() {
        return Err("must be only smtp(s)://[USER:PASS@]HOST[:PORT]");
    }
    let decode =
        |s: &str| percent_decode_str(s).decode_utf8().map(|c| c.into_owned()).map_err(|_| "user or password is not UTF-8");
    let user = Some(decode(url.username())?).filter(|u| !u.is_empty());
    let password = url.password().map(decode).transpose()?.map(SecretString::from);
    if password.is_some() && user.is_none() {
        return Err("has a password without a user");
    }
    let port = url.port().unwrap_or(match tls {
        SmtpTls::Implicit => 465,
        SmtpTls::StartTls => 587,
        SmtpTls::Plain => 25,
    });
    Ok(SmtpConfig { host, port, tls, user, password, ca_file: None })
}

/// The relay's extra CA certificate(s): a readable PEM file holding at least one.
fn smtp_ca_file(raw: &Raw, errors: &mut Vec<String>) -> Option<PathBuf> {
    let path = PathBuf::from(raw.get("smtp_ca_file")?.trim());
    match std::fs::read(&path) {
        Err(e) => errors.push(raw.bad("smtp_ca_file", &format!("cannot be read ({})", e.kind()))),
        Ok(pem) => {
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----")
                || lettre::transport::smtp::client::Certificate::from_pem(&pem).is_err()
            {
                errors.push(raw.bad("smtp_ca_file", "must be a PEM file of CA certificates"));
            }
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::smtp_url;
    use crate::config::sources::fixtures::*;
    use crate::config::types::{Config, MailTransport, SmtpTls};

    #[test]
    fn the_default_is_the_log_transport_with_no_sign_in_notices() {
        let c = Config::load(&sources(&[])).unwrap();
        assert!(matches!(c.mail.transport, MailTransport::Log));
        assert!(!c.mail.new_sign_in && c.mail.from.is_none() && c.mail.reply_to.is_none());
        assert_eq!(c.mail.product_name, "tollgate");
    }

    #[test]
    fn smtp_urls_choose_the_tls_mode_port_and_credentials() {
        let s = smtp_url("smtps://mailer%40shop:p%40ss%3Aword@smtp.example.com").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.tls), ("smtp.example.com", 465, SmtpTls::Implicit));
        assert_eq!(s.user.as_deref(), Some("mailer@shop"));
        assert_eq!(s.password.as_ref().unwrap().expose_secret(), "p@ss:word");
        let s = smtp_url("smtp+starttls://smtp.example.com").unwrap();
        assert_eq!((s.port, s.tls, s.user.is_none()), (587, SmtpTls::StartTls, true));
        let s = smtp_url("smtp://u:p@smtp.example.com:2525?tls=required").unwrap();
        assert_eq!((s.port, s.tls), (2525, SmtpTls::StartTls));
        let s = smtp_url("smtp://127.0.0.1:1025").unwrap();
        assert_eq!((s.port, s.tls, s.is_loopback()), (1025, SmtpTls::Plain, true));
        assert!(smtp_url("smtp://[::1]:25").unwrap().is_loopback());
        assert!(!smtp_url("smtp://mail.example.com").unwrap().is_loopback());
        for bad in [
            "smtp://h?tls=opportunistic",
            "smtps://h?tls=required",
            "http://h",
            "smtp://h/path",
            "smtp://:pw@h",
            "smtp://",
            "smtp:h",
        ] {
            assert!(smtp_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mail_settings_are_checked_and_never_echo_a_secret() {
        let text = Config::load(&sources(&[
            ("TOLLGATE_MAIL_TRANSPORT", "smtp"),
            ("TOLLGATE_SMTP_URL", "ftp://user:hunter2secret@mail.example.com"),
            ("TOLLGATE_MAIL_FROM", "not an address"),
            ("TOLLGATE_MAIL_REPLY_TO", "a@b.example\r\nBcc: victim@example.com"),
            ("TOLLGATE_PRODUCT_NAME", "Shop\r\nBcc: x@example.com"),
            ("TOLLGATE_MAIL_NEW_SIGN_IN", "sometimes"),
        ]))
        .unwrap_err()
        .to_string();
        for expected in [
            "TOLLGATE_SMTP_URL: must be",
            "TOLLGATE_MAIL_FROM",
            "TOLLGATE_MAIL_REPLY_TO",
            "TOLLGATE_PRODUCT_NAME",
            "TOLLGATE_MAIL_NEW_SIGN_IN",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        assert!(!text.contains("hunter2secret"), "{text}");
        let text = Config::load(&sources(&[("TOLLGATE_MAIL_TRANSPORT", "sendgrid")])).unwrap_err().to_string();
        assert!(text.contains("SENDGRID_API_KEY is not set"), "{text}");
        let text = Config::load(&sources(&[("TOLLGATE_MAIL_TRANSPORT", "pigeon")])).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_MAIL_TRANSPORT: must be log, smtp or sendgrid"), "{text}");
        let text = Config::load(&sources(&[("TOLLGATE_SMTP_CA_FILE", "/nonexistent.pem")])).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_SMTP_CA_FILE"), "{text}");
    }

    #[test]
    fn a_sendgrid_or_smtp_configuration_loads() {
        let c = Config::load(&sources(&[
            ("TOLLGATE_MAIL_TRANSPORT", "sendgrid"),
            ("SENDGRID_API_KEY", "SG.test-key"),
            ("TOLLGATE_MAIL_FROM", "Example Shop <receipts@shop.example>"),
            ("TOLLGATE_MAIL_NEW_SIGN_IN", "true"),
        ]))
        .unwrap();
        assert!(
            matches!(&c.mail.transport, MailTransport::SendGrid { api_base, .. } if api_base.as_str() == "https://api.sendgrid.com/")
        );
        assert_eq!(c.mail.from.as_deref(), Some("Example Shop <receipts@shop.example>"));
        assert!(c.mail.new_sign_in);
        assert!(!format!("{c:?}").contains("SG.test-key"), "the key is redacted in Debug");
        let c = Config::load(&sources(&[
            ("TOLLGATE_MAIL_TRANSPORT", "smtp"),
            ("TOLLGATE_SMTP_URL", "smtps://u:pw-secret-value@smtp.example.com"),
        ]))
        .unwrap();
        assert!(matches!(&c.mail.transport, MailTransport::Smtp(s) if s.tls == SmtpTls::Implicit));
        assert!(!format!("{c:?}").contains("pw-secret-value"));
    }

    #[test]
    fn production_refuses_unsafe_mail_settings_and_warns_of_the_log_transport() {
        let mut env = production_ok();
        env.push(("TOLLGATE_MAIL_TRANSPORT", "smtp"));
        env.push(("TOLLGATE_SMTP_URL", "smtp://u:p@mail.example.com"));
        env.push(("SENDGRID_API_BASE", "http://api.sendgrid.com"));
        let text = Config::load(&sources(&env)).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_MAIL_FROM is missing"), "{text}");
        assert!(text.contains("TOLLGATE_SMTP_URL is plain smtp:// to another machine"), "{text}");

        let mut env = production_ok();
        env.push(("TOLLGATE_MAIL_TRANSPORT", "sendgrid"));
        env.push(("SENDGRID_API_KEY", "SG.a-real-looking-key-0123456789abcdefghijklmnop"));
        env.push(("SENDGRID_API_BASE", "http://api.sendgrid.com"));
        env.push(("TOLLGATE_MAIL_FROM", "Shop <receipts@shop.example>"));
        let text = Config::load(&sources(&env)).unwrap_err().to_string();
        assert!(text.contains("SENDGRID_API_BASE is not https"), "{text}");

        let mut env = production_ok();
        env.push(("TOLLGATE_MAIL_TRANSPORT", "smtp"));
        env.push(("TOLLGATE_SMTP_URL", "smtp://127.0.0.1:25"));
        env.push(("TOLLGATE_MAIL_FROM", "Shop <receipts@shop.example>"));
        let c = Config::load(&sources(&env)).unwrap();
        assert!(c.notices().is_empty(), "a local relay in clear is fine: {:?}", c.notices());

        // .env.example's placeholder password is refused, and not echoed; a real one of any
        // length (the relay chose it) is not.
        let mut env = production_ok();
        env.push(("TOLLGATE_MAIL_TRANSPORT", "smtp"));
        env.push(("TOLLGATE_SMTP_URL", "smtps://mailer:replace_me_with_the_relay_password@smtp.example.com"));
        env.push(("TOLLGATE_MAIL_FROM", "Shop <receipts@shop.example>"));
        let text = Config::load(&sources(&env)).unwrap_err().to_string();
        assert!(text.contains("the password in TOLLGATE_SMTP_URL is a known placeholder"), "{text}");
        assert!(!text.contains("replace_me_with"), "{text}");
        env.retain(|(k, _)| *k != "TOLLGATE_SMTP_URL");
        env.push(("TOLLGATE_SMTP_URL", "smtps://mailer:kq7Vw2pXr9Lm@smtp.example.com"));
        Config::load(&sources(&env)).unwrap();

        let c = Config::load(&sources(&production_ok())).unwrap();
        assert!(c.notices().iter().any(|n| n.contains("TOLLGATE_MAIL_TRANSPORT is log")), "{:?}", c.notices());
        let dev = Config::load(&sources(&[])).unwrap();
        assert!(dev.notices().is_empty(), "development mails to the log quietly");
        let dev =
            Config::load(&sources(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", "smtp://mail.example.com")]))
                .unwrap();
        assert!(dev.warnings().iter().any(|w| w.contains("TOLLGATE_SMTP_URL is plain")), "{:?}", dev.warnings());
    }
}
