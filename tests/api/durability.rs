//! A crash never loses an acknowledged delivery: SIGKILL the real binary in the middle of a stream
//! of webhook deliveries, restart it on the same database, re-send what was not acknowledged, and
//! find every event in the ledger exactly once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tollgate::stripe::webhook::sign;

use crate::helpers::binary::serve;
use crate::helpers::stripe::{event, WHSEC};

#[tokio::test]
async fn sigkill_mid_stream_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let pg = crate::helpers::fresh_postgres_database().await;
    let database_url = match &pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.path().join("tollgate.db").display()),
    };
    let env = [("DATABASE_URL", database_url.as_str()), ("STRIPE_WEBHOOK_SECRET", WHSEC)];
    let events: Vec<(String, Vec<u8>)> =
        (0..200).map(|_| event("checkout.session.completed", "checkout.session").build()).collect();

    let mut first = serve(dir.path(), &env);
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let client = crate::helpers::client();
    let url = format!("http://{}/api/v1/webhooks/stripe", first.addr);
    // Eight senders stream the events; the server is killed while they are mid-flight.
    let senders: Vec<_> = (0..8)
        .map(|w| {
            let (client, url, acknowledged) = (client.clone(), url.clone(), acknowledged.clone());
            let mine: Vec<(String, Vec<u8>)> = events.iter().skip(w).step_by(8).cloned().collect();
            tokio::spawn(async move {
                for (id, body) in mine {
                    let header = sign(&body, WHSEC, chrono::Utc::now().timestamp());
                    match client.post(&url).header("stripe-signature", header).body(body).send().await {
                        Ok(r) if r.status() == 200 => {
                            acknowledged.lock().unwrap().insert(id);
                        }
                        _ => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 60 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    first.child.kill().unwrap(); // SIGKILL: no graceful anything
    first.child.wait().unwrap();
    for s in senders {
        s.await.unwrap();
    }
    let before_crash: BTreeSet<String> = acknowledged.lock().unwrap().clone();
    assert!(
        before_crash.len() >= 60 && before_crash.len() < events.len(),
        "killed mid-stream: {} acknowledged",
        before_crash.len()
    );

    // Restart on the same database; Stripe re-sends whatever was not acknowledged.
    let second = serve(dir.path(), &env);
    let url = format!("http://{}/api/v1/webhooks/stripe", second.addr);
    for (id, body) in events.iter().filter(|(id, _)| !before_crash.contains(id)) {
        let header = sign(body, WHSEC, chrono::Utc::now().timestamp());
        let r = client.post(&url).header("stripe-signature", header).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{id}");
    }

    let store = tollgate::store::connect(&tollgate::config::DatabaseConfig {
        url: secrecy::SecretString::from(database_url.clone()),
        max_connections: 2,
        ingest_writers: 4,
        acquire_timeout: std::time::Duration::from_secs(5),
        migrate_on_start: false,
    })
    .await
    .unwrap();
    let rows = store.list_events(None, None, 1000, None).await.unwrap();
    let stored: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let unique: BTreeSet<&str> = stored.iter().copied().collect();
    assert_eq!(stored.len(), events.len(), "every event exactly once");
    assert_eq!(unique.len(), events.len());
    for id in &before_crash {
        assert!(unique.contains(id.as_str()), "{id} was acknowledged before the crash and survived it");
    }
    for (id, body) in &events {
        let (row, _) = store.event(id).await.unwrap().unwrap();
        assert_eq!(&row.payload, body, "{id}: the exact bytes");
    }
    store.close().await;
}
