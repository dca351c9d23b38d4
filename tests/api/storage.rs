use tollgate::store::{Engine, NewAuditEntry};

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_suite_runs_on_the_engine_test_database_url_names() {
    let app = spawn_app().await;
    match std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(_) => assert_eq!(app.store.engine(), Engine::Postgres),
        None => {
            assert_eq!(app.store.engine(), Engine::Sqlite);
            crate::helpers::skip(
                "the PostgreSQL run of this suite",
                "TEST_DATABASE_URL is not set; this run used SQLite (run `TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test` for PostgreSQL)",
            );
        }
    }
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let app = spawn_app().await;
    let status = app.store.migration_status().await.unwrap();
    assert!(status.pending.is_empty());
    assert!(!status.applied.is_empty());
    assert!(app.store.migrate().await.unwrap().is_empty(), "nothing left to apply");
}

#[tokio::test]
async fn the_audit_log_is_append_only() {
    let app = spawn_app().await;
    let id = app
        .store
        .append_audit(NewAuditEntry {
            actor: Some("usr_1".into()),
            action: "test.append".into(),
            ip: Some("192.0.2.1".into()),
            detail: serde_json::json!({"k": "v"}),
            ..Default::default()
        })
        .await
        .unwrap();
    let entries = app.store.list_audit(10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, id);
    assert_eq!(entries[0].action, "test.append");
    assert_eq!(entries[0].detail, serde_json::json!({"k": "v"}));

    // Straight to the database: even SQL cannot rewrite or remove history.
    let url = app.database_url.clone();
    let (update, delete) = match app.store.engine() {
        Engine::Sqlite => {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let u = sqlx::query("UPDATE audit_log SET action = 'forged'").execute(&mut c).await;
            let d = sqlx::query("DELETE FROM audit_log").execute(&mut c).await;
            (u.is_err(), d.is_err())
        }
        Engine::Postgres => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let u = sqlx::query("UPDATE audit_log SET action = 'forged'").execute(&mut c).await;
            let d = sqlx::query("DELETE FROM audit_log").execute(&mut c).await;
            (u.is_err(), d.is_err())
        }
    };
    assert!(update && delete, "update refused: {update}, delete refused: {delete}");
    assert_eq!(app.store.list_audit(10).await.unwrap()[0].action, "test.append");
}
