//! Group commit's writer (`ledger.rs::run_ingest_batch`) handed batches of the tests' own making,
//! so what shares a transaction is known: on SQLite and, when `TEST_DATABASE_URL` is set, on
//! PostgreSQL. (A file of its own: `ledger.rs` may not name the engines' stores, which use it.)

use chrono::Utc;
use futures_util::future::BoxFuture;

use crate::config::DatabaseConfig;
use crate::domain::ledger::{EventPlan, EventStatus, Recorded};
use crate::store::batch::Job;
use crate::store::error::StoreError;
use crate::store::ledger::{Delivery, IngestJob, LedgerStore, NewEvent};
use crate::store::postgres::PgStore;
use crate::store::seam::{Engine, Store};
use crate::store::sqlite::SqliteStore;

/// A store whose ledger writer a test can hand a batch, and run SQL on (triggers).
trait Writer: LedgerStore {
    fn run(&self, jobs: Vec<IngestJob>) -> BoxFuture<'_, ()>;
    fn execute<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, ()>;
    /// The one text column `sql` reads, row by row.
    fn column<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Vec<String>>;
}

impl Writer for SqliteStore {
    fn run(&self, jobs: Vec<IngestJob>) -> BoxFuture<'_, ()> {
        Box::pin(async move { SqliteStore::run_ingest_batch(&self.batch_parts(), jobs).await })
    }
    fn execute<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(sql).execute(&self.batch_parts().pool).await.unwrap();
        })
    }
    fn column<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move { sqlx::query_scalar(sql).fetch_all(&self.batch_parts().pool).await.unwrap() })
    }
}

impl Writer for PgStore {
    fn run(&self, jobs: Vec<IngestJob>) -> BoxFuture<'_, ()> {
        Box::pin(async move { PgStore::run_ingest_batch(&self.batch_parts(), jobs).await })
    }
    fn execute<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(sql).execute(&self.batch_parts().pool).await.unwrap();
        })
    }
    fn column<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move { sqlx::query_scalar(sql).fetch_all(&self.batch_parts().pool).await.unwrap() })
    }
}

pub(super) fn config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: url.to_owned().into(),
        max_connections: 4,
        acquire_timeout: std::time::Duration::from_secs(10),
        migrate_on_start: false,
        ingest_writers: 4,
    }
}

/// A migrated SQLite database in a directory of its own (kept while the directory lives).
pub(super) async fn sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let store = SqliteStore::connect(&url, &config(&url)).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

/// A migrated database of its own on the `TEST_DATABASE_URL` server, or None when that is unset:
/// then the test `test` (its name, for the message) says it was skipped, on the real stderr
/// (libtest captures `eprintln!` of a passing test, and a skip nobody sees is a silent pass).
async fn postgres(test: &str) -> Option<PgStore> {
    postgres_with(&format!("store::ledger_tests::{test}"), config("").max_connections).await
}

/// As [`postgres`], with a pool of `max_connections`; `test` is the test's whole name.
pub(super) async fn postgres_with(test: &str, max_connections: u32) -> Option<PgStore> {
    use sqlx::Connection;
    let Some(admin) = std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs PostgreSQL, and TEST_DATABASE_URL is not set");
        return None;
    };
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("TEST_DATABASE_URL is reachable");
    let name = format!("tollgate_test_unit_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    conn.close().await.ok();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    let config = DatabaseConfig { max_connections, ..config(url.as_str()) };
    let store = PgStore::connect(url.as_str(), &config).await.unwrap();
    store.migrate().await.unwrap();
    Some(store)
}

fn delivery(id: &str) -> Delivery {
    let event = NewEvent {
        event_id: id.to_owned(),
        kind: "charge.updated".to_owned(),
        livemode: false,
        api_version: None,
        created: 0,
        payload: br#"{"object": "event"}"#.to_vec(),
        provider: "stripe",
    };
    // The reason names the event, so an answer shows whose it is.
    Delivery { event, plan: EventPlan::Ignore(format!("a test of {id}")), now: Utc::now() }
}

/// Hands `ids` to the writer as one batch, in that order; each one's answer, in the same order.
async fn batch(store: &impl Writer, ids: &[&str]) -> Vec<Result<Recorded, StoreError>> {
    let (jobs, answers): (Vec<_>, Vec<_>) = ids.iter().map(|id| Job::new(delivery(id))).unzip();
    store.run(jobs).await;
    let mut out = Vec::new();
    for answer in answers {
        out.push(answer.await.expect("every job of a batch is answered"));
    }
    out
}

/// The event's status and its history lines' statuses, oldest first.
async fn stored(store: &impl Writer, id: &str) -> Option<(EventStatus, Vec<String>)> {
    let (row, history) = store.event(id).await.unwrap()?;
    let mut lines: Vec<_> = history.into_iter().map(|h| (h.at, h.status)).collect();
    lines.sort();
    Some((row.status, lines.into_iter().map(|(_, s)| s).collect()))
}

fn stored_as(answer: &Result<Recorded, StoreError>, id: &str, retried_expected: bool) {
    match answer {
        Ok(Recorded::Stored { status: EventStatus::Ignored, detail, retried }) => {
            assert!(detail.contains(&format!("a test of {id}")), "{id}'s answer is {detail:?}");
            assert_eq!(*retried, retried_expected, "{id}");
        }
        other => panic!("{id}: {other:?}"),
    }
}

/// Makes the database refuse the history line of `id` (unless it records a failure), with
/// `RAISE(ABORT)` (the statement fails) or `RAISE(ROLLBACK)` (SQLite ends the transaction).
async fn refuse_history_of(store: &impl Writer, engine: Engine, id: &str, raise: &str) {
    let sql = match engine {
        Engine::Sqlite => format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON stripe_event_history
             WHEN NEW.event_id = '{id}' AND NEW.status <> 'failed'
             BEGIN SELECT RAISE({raise}, 'injected'); END;"
        ),
        Engine::Postgres => format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.event_id = '{id}' AND NEW.status <> 'failed' THEN RAISE EXCEPTION 'injected'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON stripe_event_history FOR EACH ROW EXECUTE FUNCTION refuse();"
        ),
    };
    store.execute(&sql).await;
}

async fn many_events_share_one_batch_and_each_gets_its_own_answer(store: &impl Writer) {
    // Out of order: the writer sorts a batch by id, and still answers each job its own.
    let ids: Vec<String> = (0..40).map(|i| format!("evt_many_{:02}", (i * 7) % 40)).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let answers = batch(store, &ids).await;
    for (id, answer) in ids.iter().zip(&answers) {
        stored_as(answer, id, false);
        assert_eq!(stored(store, id).await, Some((EventStatus::Ignored, vec!["ignored".to_owned()])), "{id}");
    }
}

async fn a_duplicate_within_a_batch_is_stored_once_and_answered_with_the_first_s_status(store: &impl Writer, engine: Engine) {
    // Without savepoints (no event fails).
    let answers = batch(store, &["evt_dup_b", "evt_dup_a", "evt_dup_b"]).await;
    stored_as(&answers[0], "evt_dup_b", false);
    stored_as(&answers[1], "evt_dup_a", false);
    assert!(matches!(answers[2], Ok(Recorded::Duplicate { status: EventStatus::Ignored })), "{:?}", answers[2]);
    assert_eq!(stored(store, "evt_dup_b").await, Some((EventStatus::Ignored, vec!["ignored".to_owned()])));

    // With savepoints (one event fails, so the batch is carried out again with them).
    refuse_history_of(store, engine, "evt_dup_fails", "ABORT").await;
    let answers = batch(store, &["evt_dup_d", "evt_dup_fails", "evt_dup_c", "evt_dup_d"]).await;
    stored_as(&answers[0], "evt_dup_d", false);
    assert!(answers[1].is_err(), "{:?}", answers[1]);
    stored_as(&answers[2], "evt_dup_c", false);
    assert!(matches!(answers[3], Ok(Recorded::Duplicate { status: EventStatus::Ignored })), "{:?}", answers[3]);
    assert_eq!(stored(store, "evt_dup_d").await, Some((EventStatus::Ignored, vec!["ignored".to_owned()])));
    assert_eq!(stored(store, "evt_dup_fails").await, None, "rolled back (its caller records it failed)");
}

async fn a_failed_event_redelivered_within_a_batch_is_processed_again_once(store: &impl Writer) {
    let failed = delivery("evt_redo");
    store.mark_event_failed(&failed.event, "processing failed: a test", Utc::now()).await.unwrap();
    let answers = batch(store, &["evt_redo", "evt_redo_other", "evt_redo"]).await;
    stored_as(&answers[0], "evt_redo", true);
    stored_as(&answers[1], "evt_redo_other", false);
    assert!(matches!(answers[2], Ok(Recorded::Duplicate { status: EventStatus::Ignored })), "{:?}", answers[2]);
    assert_eq!(
        stored(store, "evt_redo").await,
        Some((EventStatus::Ignored, vec!["failed".to_owned(), "ignored".to_owned()])),
        "processed again, once"
    );
}

/// Both tries carry a batch out in event id order, whatever order it arrived in: the order
/// the history lines are written in (logged by a trigger) shows it. Runs after
/// [`a_duplicate_within_a_batch_is_stored_once_and_answered_with_the_first_s_status`], whose
/// `evt_dup_fails` the database still refuses.
async fn both_tries_carry_a_batch_out_in_event_id_order(store: &impl Writer, engine: Engine) {
    store
        .execute(match engine {
            Engine::Sqlite => {
                "CREATE TABLE history_order (n INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL);
                 CREATE TRIGGER log_order AFTER INSERT ON stripe_event_history
                 BEGIN INSERT INTO history_order (event_id) VALUES (NEW.event_id); END;"
            }
            Engine::Postgres => {
                "CREATE TABLE history_order (n bigserial PRIMARY KEY, event_id text NOT NULL);
                 CREATE FUNCTION log_order() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO history_order (event_id) VALUES (NEW.event_id); RETURN NULL; END $$;
                 CREATE TRIGGER log_order AFTER INSERT ON stripe_event_history FOR EACH ROW EXECUTE FUNCTION log_order();"
            }
        })
        .await;
    // Without savepoints.
    batch(store, &["evt_ord_c", "evt_ord_a", "evt_ord_b"]).await;
    // With savepoints (one event fails; its try without them was rolled back, log included).
    batch(store, &["evt_ord_f", "evt_ord_e", "evt_dup_fails", "evt_ord_d"]).await;
    let order = store.column("SELECT event_id FROM history_order ORDER BY n").await;
    assert_eq!(order, ["evt_ord_a", "evt_ord_b", "evt_ord_c", "evt_ord_d", "evt_ord_e", "evt_ord_f"]);
}

/// One pending order, `ord_look`, of a credits product, paid through Checkout Session
/// `cs_look`; it has no PaymentIntent yet.
async fn an_order_to_look_up(store: &impl Writer) {
    store
        .execute(
            "INSERT INTO products (id, name, description, active, version, amount, currency, stripe_price_id, grant_spec, created_at, updated_at)
             VALUES ('prod_look', 'Credits', NULL, TRUE, 1, 1999, 'usd', NULL, '{\"kind\":\"credits\",\"amount\":50}', '2026-12-01T00:00:00.000000+00:00', '2026-12-01T00:00:00.000000+00:00');
             INSERT INTO product_versions (product_id, version, amount, currency, stripe_price_id, grant_spec, created_at)
             VALUES ('prod_look', 1, 1999, 'usd', NULL, '{\"kind\":\"credits\",\"amount\":50}', '2026-12-01T00:00:00.000000+00:00');
             INSERT INTO users (id, email, email_key, password_hash, created_at, updated_at, password_changed_at)
             VALUES ('usr_look', 'look@example.com', 'look@example.com', 'x', '2026-12-01T00:00:00.000000+00:00', '2026-12-01T00:00:00.000000+00:00', '2026-12-01T00:00:00.000000+00:00');
             INSERT INTO orders (id, user_id, product_id, product_version, quantity, amount, currency, grant_spec, flow, status, checkout_session_id, created_at, updated_at)
             VALUES ('ord_look', 'usr_look', 'prod_look', 1, 1, 1999, 'usd', '{\"kind\":\"credits\",\"amount\":50}', 'checkout', 'pending', 'cs_look',
                     '2026-12-01T00:00:00.000000+00:00', '2026-12-01T00:00:00.000000+00:00');",
        )
        .await;
}

/// A delivery of event `id` that applies `fact` to the order `r` names.
fn applying(
    id: &str,
    r: crate::domain::orders::OrderRef,
    fact: crate::domain::orders::PaymentFact,
) -> (IngestJob, tokio::sync::oneshot::Receiver<Result<Recorded, StoreError>>) {
    let mut d = delivery(id);
    d.event.kind = "payment_intent.succeeded".to_owned();
    d.plan = EventPlan::Apply(r, fact);
    Job::new(d)
}

/// A batch reads, in one statement, which orders its events name, and carries out without a
/// lookup the events before the first that names one (`ledger::certain_no_order`). An event
/// after it looks its order up itself, and finds what an earlier event of the batch changed: here
/// the order gets its PaymentIntent from the batch's second event, and the third event names only
/// that PaymentIntent (which no order had when the batch began), and pays the order.
async fn an_event_finds_the_payment_intent_an_earlier_event_of_its_batch_gave_an_order(store: &impl Writer) {
    use crate::domain::orders::{OrderRef, PaymentFact};
    an_order_to_look_up(store).await;
    let by = |session: Option<&str>, intent: Option<&str>| OrderRef {
        checkout_session_id: session.map(str::to_owned),
        payment_intent_id: intent.map(str::to_owned),
        ..OrderRef::default()
    };
    let paid = PaymentFact::Paid { amount: 1999, currency: "usd".to_owned(), payment_intent_id: Some("pi_look".to_owned()) };
    // A failed event delivered again, and a duplicate, among those certain to find no order.
    let failed = applying("evt_look_0", by(Some("cs_nobody_yet"), None), paid.clone()).0;
    store.mark_event_failed(&failed.work.event, "processing failed: a test", Utc::now()).await.unwrap();
    // In the order the writer carries them out (by event id).
    let jobs = vec![
        applying("evt_look_0", by(Some("cs_nobody_yet"), None), paid.clone()),
        applying("evt_look_1", by(Some("cs_nobody"), None), paid.clone()),
        applying("evt_look_1", by(Some("cs_nobody"), None), paid.clone()),
        applying(
            "evt_look_2",
            by(Some("cs_look"), None),
            PaymentFact::Processing { payment_intent_id: Some("pi_look".to_owned()) },
        ),
        applying("evt_look_3", by(None, Some("pi_look")), paid.clone()),
        applying("evt_look_4", by(Some("cs_nobody_either"), None), paid),
    ];
    let (jobs, answers): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
    store.run(jobs).await;
    let mut answers: Vec<_> = futures_util::future::join_all(answers).await.into_iter().map(|a| a.expect("answered")).collect();
    match answers.remove(0) {
        Ok(Recorded::Stored { status: EventStatus::Unmatched, detail, retried: true }) => {
            assert_eq!(detail, "processed again after a failure: no order matches this event")
        }
        other => panic!("evt_look_0: {other:?}"),
    }
    assert!(
        matches!(answers.remove(1), Ok(Recorded::Duplicate { status: EventStatus::Unmatched })),
        "the duplicate of evt_look_1"
    );
    let mut details = Vec::new();
    for answer in answers {
        match answer {
            Ok(Recorded::Stored { status, detail, retried: false }) => details.push((status, detail)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(details[0], (EventStatus::Unmatched, "no order matches this event".to_owned()));
    assert_eq!(details[1].0, EventStatus::Processed, "{:?}", details[1]);
    assert_eq!(details[2].0, EventStatus::Processed, "{:?}", details[2]);
    assert!(details[2].1.starts_with("order ord_look paid"), "{:?}", details[2]);
    assert_eq!(details[3], (EventStatus::Unmatched, "no order matches this event".to_owned()));
    assert_eq!(store.column("SELECT status FROM orders WHERE id = 'ord_look'").await, ["paid"]);
    for (id, status) in
        [("evt_look_1", "unmatched"), ("evt_look_2", "processed"), ("evt_look_3", "processed"), ("evt_look_4", "unmatched")]
    {
        let (row, history) = stored(store, id).await.unwrap_or_else(|| panic!("{id} is stored"));
        assert_eq!((row.as_str(), history), (status, vec![status.to_owned()]), "{id}: stored once, with one history line");
    }
    let (row, history) = stored(store, "evt_look_0").await.unwrap();
    assert_eq!((row, history), (EventStatus::Unmatched, vec!["failed".to_owned(), "unmatched".to_owned()]), "its status updated");
}

#[tokio::test]
async fn the_writer_carries_out_batches_on_sqlite() {
    let (store, _dir) = sqlite().await;
    many_events_share_one_batch_and_each_gets_its_own_answer(&store).await;
    a_duplicate_within_a_batch_is_stored_once_and_answered_with_the_first_s_status(&store, Engine::Sqlite).await;
    a_failed_event_redelivered_within_a_batch_is_processed_again_once(&store).await;
    both_tries_carry_a_batch_out_in_event_id_order(&store, Engine::Sqlite).await;
    an_event_finds_the_payment_intent_an_earlier_event_of_its_batch_gave_an_order(&store).await;
}

#[tokio::test]
async fn the_writer_carries_out_batches_on_postgres() {
    let Some(store) = postgres("the_writer_carries_out_batches_on_postgres").await else { return };
    many_events_share_one_batch_and_each_gets_its_own_answer(&store).await;
    a_duplicate_within_a_batch_is_stored_once_and_answered_with_the_first_s_status(&store, Engine::Postgres).await;
    a_failed_event_redelivered_within_a_batch_is_processed_again_once(&store).await;
    both_tries_carry_a_batch_out_in_event_id_order(&store, Engine::Postgres).await;
    an_event_finds_the_payment_intent_an_earlier_event_of_its_batch_gave_an_order(&store).await;
}

/// SQLite only: PostgreSQL never ends a transaction on its own.
#[tokio::test]
async fn an_event_whose_failure_ends_the_transaction_fails_alone_and_the_rest_of_its_batch_commits() {
    let (store, _dir) = sqlite().await;
    refuse_history_of(&store, Engine::Sqlite, "evt_end_victim", "ROLLBACK").await;
    let ids = ["evt_end_c", "evt_end_victim", "evt_end_a", "evt_end_b", "evt_end_c"];
    let answers = batch(&store, &ids).await;
    match &answers[1] {
        Err(e) => assert!(e.to_string().contains("injected"), "{e}"),
        other => panic!("{other:?}"),
    }
    stored_as(&answers[0], "evt_end_c", false);
    stored_as(&answers[2], "evt_end_a", false);
    stored_as(&answers[3], "evt_end_b", false);
    assert!(matches!(answers[4], Ok(Recorded::Duplicate { status: EventStatus::Ignored })), "{:?}", answers[4]);
    for id in ["evt_end_a", "evt_end_b", "evt_end_c"] {
        assert_eq!(stored(&store, id).await, Some((EventStatus::Ignored, vec!["ignored".to_owned()])), "{id}, once");
    }
    assert_eq!(stored(&store, "evt_end_victim").await, None);
    // Two victims in one batch: each fails alone.
    store
        .execute(
            "CREATE TRIGGER refuse_too BEFORE INSERT ON stripe_event_history
             WHEN NEW.event_id = 'evt_end_victim_2' BEGIN SELECT RAISE(ROLLBACK, 'injected'); END;",
        )
        .await;
    let answers = batch(&store, &["evt_end_victim_2", "evt_end_d", "evt_end_victim"]).await;
    assert!(answers[0].is_err() && answers[2].is_err(), "{answers:?}");
    stored_as(&answers[1], "evt_end_d", false);
    // The writer goes on: the next batch commits.
    stored_as(&batch(&store, &["evt_end_e"]).await[0], "evt_end_e", false);
}

/// SQLite in memory (`sqlite::memory:`, a pool of one connection, in which the database lives):
/// after a failure that ended the shared transaction, the connection is brought back in line and
/// kept, not closed (a new one would be a new, empty database). The other event of the batch is
/// stored, and so is the next batch; the schema is still there.
#[tokio::test]
async fn an_ended_transaction_keeps_an_in_memory_database() {
    let url = "sqlite::memory:";
    let store = SqliteStore::connect(url, &config(url)).await.unwrap();
    store.migrate().await.unwrap();
    refuse_history_of(&store, Engine::Sqlite, "evt_mem_victim", "ROLLBACK").await;
    // Without savepoints (the first try is rolled back whole) and with them (the victim ends the
    // transaction inside its savepoint).
    let answers = batch(&store, &["evt_mem_a", "evt_mem_victim"]).await;
    stored_as(&answers[0], "evt_mem_a", false);
    match &answers[1] {
        Err(e) => assert!(e.to_string().contains("injected"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(stored(&store, "evt_mem_a").await, Some((EventStatus::Ignored, vec!["ignored".to_owned()])));
    // The victim alone in its batch (without savepoints only), then a batch after it.
    assert!(batch(&store, &["evt_mem_victim"]).await[0].is_err());
    stored_as(&batch(&store, &["evt_mem_b"]).await[0], "evt_mem_b", false);
    assert_eq!(stored(&store, "evt_mem_b").await, Some((EventStatus::Ignored, vec!["ignored".to_owned()])));
    // The connection is outside any transaction: what it writes now is committed.
    store.mark_event_failed(&delivery("evt_mem_victim").event, "a test", Utc::now()).await.unwrap();
    assert_eq!(stored(&store, "evt_mem_victim").await, Some((EventStatus::Failed, vec!["failed".to_owned()])));
}

/// PostgreSQL only: a constraint trigger checked at COMMIT (SQLite has none).
#[tokio::test]
async fn a_failed_commit_acknowledges_nothing_and_a_redelivery_processes_the_batch() {
    let Some(store) = postgres("a_failed_commit_acknowledges_nothing_and_a_redelivery_processes_the_batch").await else { return };
    store
        .execute(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.event_id = 'evt_commit_victim' THEN RAISE EXCEPTION 'injected at commit'; END IF;
               RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON stripe_event_history
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();",
        )
        .await;
    let ids = ["evt_commit_a", "evt_commit_victim", "evt_commit_b", "evt_commit_a"];
    for answer in batch(&store, &ids).await {
        match answer {
            Err(StoreError::Batch(why)) => assert!(why.contains("injected at commit"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    for id in ids {
        assert_eq!(stored(&store, id).await, None, "{id}: nothing committed");
    }
    store.execute("DROP TRIGGER refuse_at_commit ON stripe_event_history").await;
    let answers = batch(&store, &ids).await;
    stored_as(&answers[0], "evt_commit_a", false);
    stored_as(&answers[1], "evt_commit_victim", false);
    stored_as(&answers[2], "evt_commit_b", false);
    assert!(matches!(answers[3], Ok(Recorded::Duplicate { .. })), "{:?}", answers[3]);
}

/// PostgreSQL only: several events of one batch keep meeting deadlocks (injected: a trigger raising
/// SQLSTATE 40P01 for them on every try). Each is carried out alone after the commit (with a pool
/// of 16, four side by side), runs out of tries and is answered with its error, once; the rest of
/// the batch is committed.
#[tokio::test]
async fn events_that_keep_meeting_deadlocks_are_each_answered_once_with_their_error() {
    let test = "events_that_keep_meeting_deadlocks_are_each_answered_once_with_their_error";
    let Some(store) = postgres_with(&format!("store::ledger_tests::{test}"), 16).await else { return };
    store
        .execute(
            "CREATE FUNCTION deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.event_id LIKE 'evt_dl_victim_%' AND NEW.status <> 'failed' THEN
                 RAISE EXCEPTION 'injected deadlock' USING ERRCODE = '40P01';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER deadlock BEFORE INSERT ON stripe_event_history FOR EACH ROW EXECUTE FUNCTION deadlock();",
        )
        .await;
    let ids = ["evt_dl_victim_1", "evt_dl_a", "evt_dl_victim_2", "evt_dl_b", "evt_dl_victim_3", "evt_dl_victim_4"];
    let answers = batch(&store, &ids).await;
    for (id, answer) in ids.iter().zip(&answers) {
        if id.starts_with("evt_dl_victim_") {
            match answer {
                Err(e) => assert!(e.to_string().contains("injected deadlock"), "{id}: {e}"),
                other => panic!("{id}: {other:?}"),
            }
            assert_eq!(stored(&store, id).await, None, "{id}: rolled back (its caller records it failed)");
        } else {
            stored_as(answer, id, false);
            assert_eq!(stored(&store, id).await, Some((EventStatus::Ignored, vec!["ignored".to_owned()])), "{id}");
        }
    }
}

/// PostgreSQL only: two writers' batches, each sorted by event id, settle the same two refunds in
/// opposite orders (a trigger makes each update slow, so both hold their first refund while they
/// ask for the second). PostgreSQL fails one of them with a deadlock; that batch is carried out
/// again, and every event of both batches is stored once and both refunds are settled.
#[tokio::test]
async fn two_writers_locking_the_same_refunds_in_opposite_orders_both_commit_everything() {
    use crate::domain::orders::RefundStatus;
    let Some(store) = postgres("two_writers_locking_the_same_refunds_in_opposite_orders_both_commit_everything").await else {
        return;
    };
    store
        .execute(
            "ALTER TABLE refunds DROP CONSTRAINT refunds_order_id_fkey;
             INSERT INTO refunds (id, order_id, amount, currency, status, requested_by, created_at) VALUES
               ('re_1', 'ord_x', 100, 'eur', 'pending', 'a test', now()),
               ('re_2', 'ord_x', 100, 'eur', 'pending', 'a test', now());
             CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$;
             CREATE TRIGGER slow AFTER UPDATE ON refunds FOR EACH ROW EXECUTE FUNCTION slow();",
        )
        .await;
    let settle = |id: &str, refund: &str| {
        let mut d = delivery(id);
        d.plan = EventPlan::SettleRefund {
            refund_id: refund.to_owned(),
            stripe_refund_id: format!("sr_{id}"),
            status: RefundStatus::Succeeded,
        };
        Job::new(d)
    };
    // Writer a: re_1 then re_2; writer b: re_2 then re_1.
    let (a, a_answers): (Vec<_>, Vec<_>) = [settle("evt_lock_a1", "re_1"), settle("evt_lock_a2", "re_2")].into_iter().unzip();
    let (b, b_answers): (Vec<_>, Vec<_>) = [settle("evt_lock_b1", "re_2"), settle("evt_lock_b2", "re_1")].into_iter().unzip();
    tokio::join!(store.run(a), store.run(b));
    let ids = ["evt_lock_a1", "evt_lock_a2", "evt_lock_b1", "evt_lock_b2"];
    for (id, answer) in ids.into_iter().zip(a_answers.into_iter().chain(b_answers)) {
        let answer = answer.await.expect("every job of a batch is answered");
        assert!(matches!(answer, Ok(Recorded::Stored { .. })), "{id}: {answer:?}");
        let (_, history) = stored(&store, id).await.unwrap_or_else(|| panic!("{id} is stored"));
        assert_eq!(history.len(), 1, "{id}: {history:?}");
    }
    assert_eq!(store.column("SELECT status FROM refunds ORDER BY id").await, ["succeeded", "succeeded"]);
}

/// SQLite's batch statements use `?` (a `$N` is looked up among all earlier names: quadratic in a
/// batch's thousand parameters); PostgreSQL's number them (it accepts nothing else).
#[test]
fn batch_statements_number_placeholders_only_on_postgres() {
    // Checked when compiled (the engines' names are constants).
    const { assert!(!SqliteStore::NUMBERED) };
    const { assert!(PgStore::NUMBERED) };
}

/// Statement journals stay in memory (`PRAGMA temp_store = MEMORY` on every connection): a batch's
/// multi-row statements need one, and on disk each of its pages was written out.
#[tokio::test]
async fn sqlite_keeps_statement_journals_in_memory() {
    let (store, _dir) = sqlite().await;
    let pool = store.batch_parts().pool;
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(pool.acquire().await.unwrap());
    }
    for conn in &mut conns {
        let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(temp_store, 2, "2 is MEMORY");
    }
}
