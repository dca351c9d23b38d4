//! The messages: each kind's text and HTML from one list of parts, so both say the same; every
//! value is HTML-escaped in the HTML part, and values bound for headers must be header-safe.
//!
//! The data each kind reads (extra keys are ignored; a missing or malformed one: no mail):
//!
//! | kind | keys |
//! |---|---|
//! | `receipt` | `to`, `product` (or `product_name`), `amount` (integer minor units), `currency`, `order_id`, `paid_at` |
//! | `refund` | `to`, `amount`, `currency`, `order_id`, `refunded_at`; optional `product` |
//! | `password_changed` | `to`, `at`; optional `ip` |
//! | `new_sign_in` | `to`, `at`, `ip`, `user_agent` |
//! | `endpoint_disabled` | `to` (an admin), `url` (or `endpoint_url`), `since` |
//!
//! Times are RFC 3339 strings or Unix seconds; they are shown in UTC.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::money::format_amount;
use super::types::{header_safe, MailSettings, OutgoingMail};

/// The kinds [`render`] knows.
pub const KINDS: &[&str] = &["receipt", "refund", "password_changed", "new_sign_in", "endpoint_disabled"];

/// The mail of `kind` for `data`; `None` for an unknown kind, or data that is missing a key, has a
/// non-integer amount, or would put a control character into a header.
pub fn render(kind: &str, data: &Value, settings: &MailSettings) -> Option<OutgoingMail> {
    let to = text(data, &["to"], 320)?;
    let product_name = settings.product_name.as_str();
    let (subject, body) = match kind {
        "receipt" => {
            let product = text(data, &["product", "product_name"], 200)?;
            let amount = format_amount(integer(data, "amount")?, &currency(data)?);
            let subject = format!("Your receipt from {product_name}: {product}");
            let body = Body {
                title: format!("Receipt for {product}"),
                intro: format!("Thank you for your purchase. This is your receipt for {amount}."),
                rows: vec![
                    ("Product", product),
                    ("Amount", amount),
                    ("Order", text(data, &["order_id"], 100)?),
                    ("Paid", time(data, "paid_at")?),
                ],
                outro: "Keep this mail for your records.".to_owned(),
            };
            (subject, body)
        }
        "refund" => {
            let amount = format_amount(integer(data, "amount")?, &currency(data)?);
            let mut rows = vec![("Amount", amount.clone()), ("Order", text(data, &["order_id"], 100)?)];
            if let Some(product) = text(data, &["product", "product_name"], 200) {
                rows.insert(0, ("Product", product));
            }
            rows.push(("Refunded", time(data, "refunded_at")?));
            let body = Body {
                title: "Refund issued".to_owned(),
                intro: format!("We refunded {amount} to your original payment method."),
                rows,
                outro: "Depending on your bank it can take 5 to 10 business days to show on your statement.".to_owned(),
            };
            (format!("{product_name}: refund of {amount}"), body)
        }
        "password_changed" => {
            let mut rows = vec![("Account", to.clone()), ("When", time(data, "at")?)];
            if let Some(ip) = text(data, &["ip"], 64) {
                rows.push(("From IP address", ip));
            }
            let body = Body {
                title: "Your password was changed".to_owned(),
                intro: format!("The password of your {product_name} account was changed."),
                rows,
                outro: "If this was you, there is nothing to do. If it was not, reset your password now: someone may \
                        have access to your account. Every other session was signed out."
                    .to_owned(),
            };
            (format!("{product_name}: your password was changed"), body)
        }
        "new_sign_in" => {
            let body = Body {
                title: "New sign-in to your account".to_owned(),
                intro: format!("Your {product_name} account was just signed in to."),
                rows: vec![
                    ("Account", to.clone()),
                    ("When", time(data, "at")?),
                    ("IP address", text(data, &["ip"], 64)?),
                    ("Browser or app", text(data, &["user_agent"], 200)?),
                ],
                outro: "If this was you, there is nothing to do. If it was not, change your password now.".to_owned(),
            };
            (format!("{product_name}: new sign-in to your account"), body)
        }
        "endpoint_disabled" => {
            let since = time(data, "since")?;
            let body = Body {
                title: "A webhook endpoint was disabled".to_owned(),
                intro: format!(
                    "Every delivery to this endpoint has failed since {since}, so {product_name} stopped sending to it."
                ),
                rows: vec![("Endpoint", text(data, &["url", "endpoint_url"], 2048)?), ("Failing since", since)],
                outro: "Messages are kept. Once the receiver works again, enable the endpoint and replay the messages \
                        since the time above."
                    .to_owned(),
            };
            (format!("{product_name}: webhook endpoint disabled"), body)
        }
        _ => return None,
    };
    let subject = shorten_subject(subject);
    if !header_safe(&to) || !to.contains('@') || !header_safe(&subject) {
        return None;
    }
    Some(OutgoingMail { text: body.text(settings), html: body.html(settings), to, subject, message_id: None })
}

/// Subjects longer than this many characters are cut, ending in `…` (the body has the whole
/// name). Characters, not bytes: a product name in Greek or Japanese is as long as in English.
pub const MAX_SUBJECT_CHARS: usize = 200;

fn shorten_subject(subject: String) -> String {
    if subject.chars().count() <= MAX_SUBJECT_CHARS {
        return subject;
    }
    let kept: String = subject.chars().take(MAX_SUBJECT_CHARS - 1).collect();
    format!("{}…", kept.trim_end())
}

/// One message's parts, rendered once as text and once as HTML.
struct Body {
    title: String,
    intro: String,
    rows: Vec<(&'static str, String)>,
    outro: String,
}

impl Body {
    fn text(&self, settings: &MailSettings) -> String {
        let width = self.rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 1;
        let mut out = format!("{}\n\n{}\n\n", self.title, self.intro);
        for (label, value) in &self.rows {
            out.push_str(&format!("{:width$} {value}\n", format!("{label}:")));
        }
        out.push_str(&format!("\n{}\n\n-- \n{}\n{}\n", self.outro, settings.product_name, settings.public_url));
        out
    }

    fn html(&self, settings: &MailSettings) -> String {
        let mut rows = String::new();
        for (label, value) in &self.rows {
            rows.push_str(&format!(
                "<tr><th align=\"left\" style=\"padding:4px 16px 4px 0;color:#555;font-weight:normal\">{}</th>\
                 <td style=\"padding:4px 0\">{}</td></tr>\n",
                escape(label),
                escape(value)
            ));
        }
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
             <body style=\"font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#222;line-height:1.5\">\n\
             <h1 style=\"font-size:20px\">{title}</h1>\n<p>{intro}</p>\n<table role=\"presentation\">\n{rows}</table>\n\
             <p>{outro}</p>\n<p style=\"color:#777;font-size:12px\">{product}<br>{url}</p>\n</body></html>\n",
            title = escape(&self.title),
            intro = escape(&self.intro),
            outro = escape(&self.outro),
            product = escape(&settings.product_name),
            url = escape(settings.public_url.as_str()),
        )
    }
}

/// `value` safe as HTML text and inside a quoted attribute.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The first of `keys` holding a non-blank string, cut to `max` characters.
fn text(data: &Value, keys: &[&str], max: usize) -> Option<String> {
    let v = keys.iter().find_map(|k| data.get(*k)?.as_str().map(str::trim).filter(|s| !s.is_empty()))?;
    Some(v.chars().take(max).collect())
}

/// An integer (a float, even 1999.0, is refused: money is never a float).
fn integer(data: &Value, key: &str) -> Option<i64> {
    data.get(key)?.as_i64()
}

fn currency(data: &Value) -> Option<String> {
    let c = data.get("currency")?.as_str()?;
    (c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic())).then(|| c.to_ascii_lowercase())
}

/// An RFC 3339 string or Unix seconds, shown as `2026-12-01 09:24 UTC`.
fn time(data: &Value, key: &str) -> Option<String> {
    let at: DateTime<Utc> = match data.get(key)? {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim()).ok()?.with_timezone(&Utc),
        Value::Number(n) => DateTime::from_timestamp(n.as_i64()?, 0)?,
        _ => return None,
    };
    Some(at.format("%Y-%m-%d %H:%M UTC").to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use url::Url;

    use super::*;

    fn settings() -> MailSettings {
        MailSettings {
            from: "\"Shop\" <receipts@shop.example>".into(),
            reply_to: None,
            product_name: "Example Shop".into(),
            public_url: Url::parse("https://pay.shop.example").unwrap(),
        }
    }

    fn receipt(product: &str) -> Value {
        json!({"to": "buyer@example.com", "product": product, "amount": 123456, "currency": "usd",
               "order_id": "ord_42", "paid_at": "2026-12-01T09:24:00Z"})
    }

    #[test]
    fn a_receipt_holds_product_amount_order_and_date_in_both_parts() {
        let mail = render("receipt", &receipt("Pro plan"), &settings()).unwrap();
        assert_eq!(mail.to, "buyer@example.com");
        assert_eq!(mail.subject, "Your receipt from Example Shop: Pro plan");
        for part in [&mail.text, &mail.html] {
            for expected in ["Pro plan", "1,234.56 USD", "ord_42", "2026-12-01 09:24 UTC", "Example Shop"] {
                assert!(part.contains(expected), "{expected} in {part}");
            }
        }
        assert!(mail.text.contains("Amount:  1,234.56 USD"), "{}", mail.text);
        assert!(mail.html.starts_with("<!DOCTYPE html>"));
    }

    #[test]
    fn html_injection_in_a_product_name_comes_out_escaped() {
        let attack = "<script>alert(1)</script><img src=x onerror=\"steal()\"> & 'co'";
        let mail = render("receipt", &receipt(attack), &settings()).unwrap();
        assert!(!mail.html.contains("<script>") && !mail.html.contains("<img"), "{}", mail.html);
        assert!(mail
            .html
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&quot;steal()&quot;&gt; &amp; &#39;co&#39;"));
        assert!(mail.text.contains(attack), "the text part shows it as typed");
        let mut s = settings();
        s.product_name = "<b>Shop</b>".into();
        let mail = render("password_changed", &json!({"to": "u@example.com", "at": 0}), &s).unwrap();
        assert!(!mail.html.contains("<b>") && mail.html.contains("&lt;b&gt;Shop&lt;/b&gt;"));
    }

    #[test]
    fn cr_or_lf_bound_for_a_header_means_no_mail() {
        assert!(render("receipt", &receipt("Pro\r\nBcc: victim@example.com"), &settings()).is_none());
        let mut data = receipt("Pro");
        data["to"] = json!("buyer@example.com\r\nBcc: victim@example.com");
        assert!(render("receipt", &data, &settings()).is_none());
        let mut s = settings();
        s.product_name = "Shop\nBcc: victim@example.com".into();
        assert!(render(
            "refund",
            &json!({"to": "b@example.com", "amount": 1, "currency": "usd", "order_id": "o", "refunded_at": 1}),
            &s
        )
        .is_none());
    }

    #[test]
    fn a_long_non_ascii_product_name_cuts_the_subject_and_keeps_the_mail() {
        // A 100-character shop name and a 200-character product of 2, 3 and 4 bytes each: with
        // emoji the subject was 1,220 bytes, over the 998-byte limit, and render gave None.
        for c in ['ü', '日', '😀'] {
            let product = c.to_string().repeat(200);
            let mut s = settings();
            s.product_name = c.to_string().repeat(100);
            let mail = render("receipt", &receipt(&product), &s).unwrap_or_else(|| panic!("{c}: no mail"));
            assert_eq!(mail.subject.chars().count(), MAX_SUBJECT_CHARS, "{}", mail.subject);
            assert!(mail.subject.starts_with("Your receipt from ") && mail.subject.ends_with('…'), "{}", mail.subject);
            assert!(mail.text.contains(&product) && mail.html.contains(&product), "the body has the whole name");
        }
        // A short one is untouched.
        assert_eq!(render("receipt", &receipt("Café"), &settings()).unwrap().subject, "Your receipt from Example Shop: Café");
        // Separators that break lines for some readers are no more welcome than CR/LF.
        for sep in ['\u{2028}', '\u{2029}', '\u{85}'] {
            assert!(render("receipt", &receipt(&format!("Pro{sep}Bcc: victim@example.com")), &settings()).is_none(), "{sep:?}");
        }
    }

    #[test]
    fn unknown_kinds_and_malformed_data_render_nothing() {
        assert!(render("invoice", &receipt("Pro"), &settings()).is_none());
        for (key, bad) in [
            ("amount", json!(1234.56)),
            ("amount", json!(1999.0)),
            ("amount", json!("1999")),
            ("currency", json!("dollars")),
            ("paid_at", json!("yesterday")),
            ("order_id", json!(null)),
            ("to", json!("not-an-address")),
        ] {
            let mut data = receipt("Pro");
            data[key] = bad.clone();
            assert!(render("receipt", &data, &settings()).is_none(), "{key}: {bad}");
        }
    }

    #[test]
    fn every_kind_renders_and_none_carries_a_secret() {
        let at = "2026-12-01T10:00:00+01:00";
        let cases = [
            ("receipt", receipt("Pro")),
            ("refund", json!({"to": "b@example.com", "amount": 500, "currency": "jpy", "order_id": "ord_1", "refunded_at": at})),
            ("password_changed", json!({"to": "b@example.com", "at": at, "ip": "203.0.113.9", "token": "rt_secret_value"})),
            (
                "new_sign_in",
                json!({"to": "b@example.com", "at": at, "ip": "203.0.113.9", "user_agent": "Firefox/133", "password": "hunter2"}),
            ),
            (
                "endpoint_disabled",
                json!({"to": "admin@example.com", "url": "https://app.example.com/hooks?a=1&b=2", "since": 1764583200}),
            ),
        ];
        for ((kind, data), expected) in
            cases.iter().zip(["1,234.56 USD", "500 JPY", "203.0.113.9", "Firefox/133", "since 2025-12-01 10:00 UTC"])
        {
            let mail = render(kind, data, &settings()).unwrap_or_else(|| panic!("{kind}"));
            assert!(mail.text.contains(expected) && mail.html.contains(&escape(expected)), "{kind}: {expected} in {mail:?}");
            for secret in ["rt_secret_value", "hunter2"] {
                assert!(!format!("{mail:?}").contains(secret), "{kind}");
            }
        }
        let mail = render("refund", &cases[1].1, &settings()).unwrap();
        assert!(mail.text.contains("2026-12-01 09:00 UTC"), "times are shown in UTC: {}", mail.text);
        let mail = render("endpoint_disabled", &cases[4].1, &settings()).unwrap();
        assert!(mail.html.contains("https://app.example.com/hooks?a=1&amp;b=2"));
        assert_eq!(KINDS.len(), cases.len());
    }
}
