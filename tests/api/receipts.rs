//! A purchase's receipt end to end: the sandbox pays an order, the outbox row written in that
//! transaction is delivered by the dispatcher through the SMTP transport to a real SMTP server
//! (Python's aiosmtpd), which first defers it (451): the dispatcher retries with backoff and the
//! buyer gets exactly one receipt, with the product and the amount.

use std::time::Duration;

use serde_json::json;

use crate::helpers::database::rows;
use crate::helpers::shop::shop;
use crate::helpers::smtp::SmtpServer;

#[tokio::test]
async fn a_paid_order_mails_one_receipt_through_a_real_smtp_server_that_first_defers_it() {
    let test = "a_paid_order_mails_one_receipt_through_a_real_smtp_server_that_first_defers_it";
    let Some(smtp) = SmtpServer::start(test, &["--fail-first".to_owned(), "1".to_owned()]) else { return };
    let url = format!("smtp://127.0.0.1:{}", smtp.port);
    let s = shop(&[
        ("TOLLGATE_MAIL_TRANSPORT", "smtp"),
        ("TOLLGATE_SMTP_URL", &url),
        ("TOLLGATE_MAIL_FROM", "Example Shop <receipts@example.com>"),
        ("TOLLGATE_PRODUCT_NAME", "Example Shop"),
    ])
    .await;
    let product = s
        .product(json!({"name": "Pro plan", "amount": 1999, "currency": "usd", "grant": {"kind": "access", "feature": "pro"}}))
        .await;
    let checkout = s.checkout(&product).await;
    assert_eq!(s.sandbox(&checkout, "pay").await, 200);

    // The first attempt is deferred (451); the retry comes 24–36 s later (30 s ± 20 %).
    let mut received = Vec::new();
    for _ in 0..900 {
        received = smtp.received();
        if !received.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(received.len(), 1, "the receipt arrived after the deferral: {received:?}, the row: {:?}", email_row(&s.app).await);
    let m = &received[0];
    assert_eq!(m["rcpt_tos"], json!(["buyer@example.com"]));
    assert_eq!(m["headers"]["subject"], "Your receipt from Example Shop: Pro plan");
    let text = m["text"].as_str().unwrap();
    assert!(text.contains("Pro plan") && text.contains("19.99 USD"), "{text}");
    assert!(text.contains(checkout["order_id"].as_str().unwrap()), "the order id is in the receipt: {text}");
    // Delivered once: nothing more arrives, and the row says delivered after two attempts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.received().len(), 1, "exactly one receipt");
    let (status, failed, _) = email_row(&s.app).await;
    assert_eq!((status.as_str(), failed), ("delivered", 1), "delivered after one failed attempt");
    let attempts = attempts(&s.app).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts[0].as_deref().is_some_and(|e| e.contains("451") && e.starts_with("transient")), "{attempts:?}");
    assert_eq!(attempts[1], None, "the second attempt delivered");
}

/// (status, failed attempts, last error) of the one receipt row, read straight from the database.
async fn email_row(app: &crate::helpers::TestApp) -> (String, i64, Option<String>) {
    let mut found =
        rows(app, "SELECT status, attempts, last_error FROM outbox WHERE kind = 'email' AND event_type = 'receipt'").await;
    assert_eq!(found.len(), 1, "one receipt row");
    found.remove(0)
}

/// The error of each attempt of the receipt, in order (None: delivered).
async fn attempts(app: &crate::helpers::TestApp) -> Vec<Option<String>> {
    const SQL: &str = "SELECT a.error FROM outbox_attempts a JOIN outbox o ON o.id = a.message_id
                        WHERE o.kind = 'email' AND o.event_type = 'receipt' ORDER BY a.attempt";
    rows::<(Option<String>,)>(app, SQL).await.into_iter().map(|r| r.0).collect()
}
