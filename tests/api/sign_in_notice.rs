//! "A new sign-in to your account" (`TOLLGATE_MAIL_NEW_SIGN_IN`, off by default): a sign-in from a
//! client the account does not know writes one `new_sign_in` email in the transaction that
//! remembers the client; a known client, or the setting off, writes none.

use std::time::Duration;

use crate::helpers::accounts::{login, register, PASSWORD};
use crate::helpers::database::rows;
use crate::helpers::{spawn_app_with, TestApp};

/// (recipient, status, payload) of every `new_sign_in` row, read straight from the database.
async fn notices(app: &TestApp) -> Vec<(String, String, String)> {
    rows(app, "SELECT recipient, status, payload FROM outbox WHERE kind = 'email' AND event_type = 'new_sign_in' ORDER BY id")
        .await
}

#[tokio::test]
async fn a_sign_in_from_a_new_client_writes_one_notice_and_a_known_client_none() {
    let app = spawn_app_with(&[("TOLLGATE_MAIL_NEW_SIGN_IN", "true")]).await;
    register(&app, "watchful@example.com").await;
    let before = notices(&app).await.len();
    // The first sign-in from this address: the account did not know it.
    login(&app, "watchful@example.com", PASSWORD).await;
    let after_first = notices(&app).await;
    assert_eq!(after_first.len(), before + 1, "one notice for the new client: {after_first:?}");
    let (to, _, payload) = after_first.last().unwrap();
    assert_eq!(to, "watchful@example.com");
    let data: serde_json::Value = serde_json::from_str(payload).unwrap();
    assert_eq!(data["ip"], "127.0.0.1");
    assert!(data["at"].is_string() && data["user_agent"].is_string(), "{data}");
    // The same address again, and a token login from it: known now, no further notice.
    login(&app, "watchful@example.com", PASSWORD).await;
    crate::helpers::accounts::tokens(&app, "watchful@example.com", PASSWORD).await;
    assert_eq!(notices(&app).await.len(), before + 1, "a known client is not news");
    // The notice goes out through the configured mailer (the development log transport).
    for _ in 0..100 {
        if notices(&app).await.iter().all(|(_, status, _)| status == "delivered") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the new sign-in notice was not delivered: {:?}", notices(&app).await);
}

#[tokio::test]
async fn no_sign_in_notice_is_written_when_the_setting_is_off() {
    let app = spawn_app_with(&[]).await;
    register(&app, "quiet@example.com").await;
    login(&app, "quiet@example.com", PASSWORD).await;
    assert!(notices(&app).await.is_empty(), "TOLLGATE_MAIL_NEW_SIGN_IN is off by default");
}
