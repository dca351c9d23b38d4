//! The outbox's settling writer (`settle.rs::run_settle_batch`, group commit of the dispatcher's
//! delivery attempts) handed batches of the tests' own making, so what shares a transaction is
//! known: on SQLite and, when `TEST_DATABASE_URL` is set, on PostgreSQL. (A file of its own, as
//! `ledger_tests.rs`, whose stores it borrows: `settle.rs` may not name the engines' stores.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::BoxFuture;

use crate::store::batch::Job;
use crate::store::error::StoreError;
use crate::store::ledger_tests::{config, postgres_with, sqlite};
use crate::store::outbox::{AttemptDone, EndpointRow, NextStep, OutboxStore};
use crate::store::postgres::PgStore;
use crate::store::seam::{Engine, Store};
use crate::store::settle::{FailingSince, SettleJob};
use crate::store::sqlite::SqliteStore;

/// A store whose settling writer a test can hand a batch, and run SQL on.
trait Writer: OutboxStore {
    fn engine(&self) -> Engine;
    fn run(&self, jobs: Vec<SettleJob>) -> BoxFuture<'_, ()>;
    fn execute<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, ()>;
    /// From now on, counts the transactions that commit attempts (see [`Counter`]).
    fn count_transactions(&self) -> BoxFuture<'_, Counter>;
    fn transactions<'a>(&'a self, counter: &'a Counter) -> BoxFuture<'a, usize>;
}

/// SQLite: commits on the one connection of an in-memory database (SQLite's commit hook; nothing
/// else commits meanwhile). PostgreSQL: the distinct transaction ids that inserted an attempt.
enum Counter {
    Commits(Arc<AtomicUsize>),
    AttemptTransactions,
}

impl Writer for SqliteStore {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }
    fn run(&self, jobs: Vec<SettleJob>) -> BoxFuture<'_, ()> {
        Box::pin(async move { SqliteStore::run_settle_batch(&self.batch_parts(), jobs).await })
    }
    fn execute<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(sql).execute(&self.batch_parts().pool).await.unwrap();
        })
    }
    fn count_transactions(&self) -> BoxFuture<'_, Counter> {
        Box::pin(async move {
            let parts = self.batch_parts();
            assert!(parts.in_memory, "commits are counted on the one connection of an in-memory database");
            let commits = Arc::new(AtomicUsize::new(0));
            let mut conn = parts.pool.acquire().await.unwrap();
            let counted = commits.clone();
            conn.lock_handle().await.unwrap().set_commit_hook(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                true
            });
            Counter::Commits(commits)
        })
    }
    fn transactions<'a>(&'a self, counter: &'a Counter) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            match counter {
                Counter::Commits(n) => n.load(Ordering::SeqCst),
                Counter::AttemptTransactions => unreachable!("SQLite counts commits"),
            }
        })
    }
}

impl Writer for PgStore {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }
    fn run(&self, jobs: Vec<SettleJob>) -> BoxFuture<'_, ()> {
        Box::pin(async move { PgStore::run_settle_batch(&self.batch_parts(), jobs).await })
    }
    fn execute<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(sql).execute(&self.batch_parts().pool).await.unwrap();
        })
    }
    fn count_transactions(&self) -> BoxFuture<'_, Counter> {
        Box::pin(async move {
            self.execute(
                "CREATE TABLE attempt_transactions (txid BIGINT NOT NULL);
                 CREATE FUNCTION note_transaction() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO attempt_transactions VALUES (txid_current()); RETURN NEW; END $$;
                 CREATE TRIGGER note_transaction AFTER INSERT ON outbox_attempts FOR EACH ROW EXECUTE FUNCTION note_transaction();",
            )
            .await;
            Counter::AttemptTransactions
        })
    }
    fn transactions<'a>(&'a self, _: &'a Counter) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar("SELECT count(DISTINCT txid) FROM attempt_transactions")
                .fetch_one(&self.batch_parts().pool)
                .await
                .unwrap();
            n as usize
        })
    }
}

/// An in-memory SQLite database (a pool of its one connection), migrated.
async fn sqlite_in_memory() -> SqliteStore {
    let url = "sqlite::memory:";
    let store = SqliteStore::connect(url, &config(url)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

async fn postgres(test: &str) -> Option<PgStore> {
    postgres_with(&format!("store::outbox_tests::{test}"), config("").max_connections).await
}

/// A fixed second, so what is stored compares exactly on both engines.
fn at(second: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(second)
}

/// As SQL text both engines read as that time.
fn sql_time(t: DateTime<Utc>) -> String {
    format!("'{}'", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
}

async fn endpoint(store: &impl Writer, id: &str, failing_since: Option<DateTime<Utc>>) {
    let row = EndpointRow {
        id: id.to_owned(),
        url: "https://example.com/hook".to_owned(),
        events: "[]".to_owned(),
        description: None,
        disabled: false,
        secret: "whsec_test".to_owned(),
        previous_secret: None,
        previous_until: None,
        failing_since,
        created_at: at(0),
        updated_at: at(0),
    };
    store.insert_endpoint(&row).await.unwrap();
}

/// A pending message leased to `owner`: a webhook to the endpoint `recipient` (`we_…`), else an
/// email to that address.
async fn message(store: &impl Writer, id: &str, recipient: &str, owner: &str) {
    let kind = if recipient.starts_with("we_") { "webhook" } else { "email" };
    let (t, until) = (sql_time(at(0)), sql_time(Utc::now() + chrono::Duration::hours(1)));
    let sql = format!(
        "INSERT INTO outbox (id, kind, recipient, event_type, payload, fact_key, occurred_at, status, attempts, next_attempt_at,
                             lease_owner, lease_until, created_at)
         VALUES ('{id}', '{kind}', '{recipient}', 'ping', '{{}}', 'fact_{id}', {t}, 'pending', 0, {t}, '{owner}', {until}, {t})"
    );
    store.execute(&sql).await;
}

/// What a dispatcher holding the lease as `owner` reports of one attempt at `id`.
fn done(id: &str, owner: &str, second: i64, next: NextStep) -> AttemptDone {
    let failed = next != NextStep::Delivered;
    AttemptDone {
        message_id: id.to_owned(),
        lease_owner: owner.to_owned(),
        at: at(second),
        status_code: Some(if failed { 503 } else { 200 }),
        error: failed.then(|| format!("{id} failed")),
        response: Some(format!("answer to {id}")),
        duration_ms: second,
        next,
    }
}

/// Hands `dones` to the writer as one batch, in that order; each one's answer, in the same order.
async fn batch(store: &impl Writer, dones: Vec<AttemptDone>) -> Vec<Result<bool, StoreError>> {
    let (jobs, answers): (Vec<_>, Vec<_>) = dones.into_iter().map(Job::new).unzip();
    store.run(jobs).await;
    let mut out = Vec::new();
    for answer in answers {
        out.push(answer.await.expect("every job of a batch is answered"));
    }
    out
}

/// The attempt rows of `id`: (number, status code, error), in order.
async fn attempts(store: &impl Writer, id: &str) -> Vec<(i64, Option<i64>, Option<String>)> {
    let rows = store.message_attempts(id).await.unwrap();
    rows.into_iter().map(|a| (a.attempt, a.status_code, a.error)).collect()
}

/// The message settled as `d` says, by the dispatcher that held its lease.
async fn settled_as(store: &impl Writer, d: &AttemptDone) {
    let m = store.outbox_message(&d.message_id).await.unwrap().expect("the message is there");
    let id = &d.message_id;
    let (status, attempts, next_at, delivered_at) = match d.next {
        NextStep::Delivered => ("delivered", 0, d.at, Some(d.at)),
        NextStep::RetryAt(t) => ("pending", 1, t, None),
        NextStep::Failed => ("failed", 1, d.at, None),
    };
    assert_eq!(m.status, status, "{id}");
    assert_eq!(m.attempts, attempts, "{id}");
    assert_eq!(m.next_attempt_at, next_at, "{id}");
    assert_eq!(m.delivered_at, delivered_at, "{id}");
    assert_eq!(m.last_error, d.error, "{id}");
    assert_eq!((m.lease_owner, m.lease_until), (None, None), "{id}: the lease is given back");
    let rows = store.message_attempts(id).await.unwrap();
    let last = rows.last().expect("the attempt is recorded");
    assert_eq!(
        (last.at, last.status_code, &last.error, &last.response, last.duration_ms),
        (d.at, d.status_code, &d.error, &d.response, d.duration_ms),
        "{id}"
    );
}

async fn failing_since(store: &impl Writer, id: &str) -> Option<DateTime<Utc>> {
    store.endpoint(id).await.unwrap().expect("the endpoint is there").failing_since
}

/// Makes the database refuse any attempt at `id` with `RAISE(ABORT)` (the statement fails) or, on
/// SQLite, `RAISE(ROLLBACK)` (SQLite ends the whole transaction on its own).
async fn refuse_attempts_of(store: &impl Writer, id: &str, raise: &str) {
    let sql = match store.engine() {
        Engine::Sqlite => format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox_attempts WHEN NEW.message_id = '{id}'
             BEGIN SELECT RAISE({raise}, 'injected'); END;"
        ),
        Engine::Postgres => format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.message_id = '{id}' THEN RAISE EXCEPTION 'injected'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON outbox_attempts FOR EACH ROW EXECUTE FUNCTION refuse();"
        ),
    };
    store.execute(&sql).await;
}

/// 40 attempts (webhooks to two endpoints, and emails; delivered, to be retried, failed) handed to
/// the writer as one batch: each answered that its message moved, each message settled as its
/// attempt says with exactly one new attempt row (numbered on from the message's earlier rounds),
/// each endpoint's `failing_since` as its attempts, in order, make it, and ONE transaction for all.
async fn many_attempts_are_settled_in_one_transaction(store: &impl Writer) {
    endpoint(store, "we_a", None).await;
    endpoint(store, "we_b", Some(at(-100))).await;
    let recipient = |i: usize| match i % 4 {
        0 => format!("buyer{i}@example.com"),
        1 | 2 => "we_a".to_owned(),
        _ => "we_b".to_owned(),
    };
    let ids: Vec<String> = (0..40).map(|i| format!("msg_{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        message(store, id, &recipient(i), "dsp_a").await;
    }
    // Two attempts of an earlier round (a retry now restarted `attempts` at 0): this one is the third.
    store
        .execute(&format!(
            "INSERT INTO outbox_attempts (message_id, attempt, at, status_code, error, response, duration_ms)
             VALUES ('msg_05', 1, {t}, 500, 'old', NULL, 1), ('msg_05', 2, {t}, 500, 'old', NULL, 1)",
            t = sql_time(at(-50))
        ))
        .await;
    let next = |i: usize| match i {
        // we_a: a failure, then deliveries: no longer failing.
        1 => NextStep::RetryAt(at(1000)),
        // we_b: deliveries, then failures from msg_31 on: failing since msg_31's attempt.
        31 | 35 => NextStep::RetryAt(at(2000)),
        39 => NextStep::Failed,
        // An email that failed for good.
        8 => NextStep::Failed,
        _ => NextStep::Delivered,
    };
    let dones: Vec<AttemptDone> = ids.iter().enumerate().map(|(i, id)| done(id, "dsp_a", 10 + i as i64, next(i))).collect();

    let counter = store.count_transactions().await;
    let answers = batch(store, dones.clone()).await;
    assert_eq!(store.transactions(&counter).await, 1, "one transaction settled the whole batch");

    for (d, answer) in dones.iter().zip(answers) {
        assert!(matches!(answer, Ok(true)), "{}: {answer:?}", d.message_id);
        settled_as(store, d).await;
        let rows = attempts(store, &d.message_id).await;
        let expected = if d.message_id == "msg_05" { 3 } else { 1 };
        assert_eq!(rows.len() as i64, expected, "{}: one attempt recorded: {rows:?}", d.message_id);
        assert_eq!(rows.last().unwrap().0, expected, "{}", d.message_id);
    }
    assert_eq!(failing_since(store, "we_a").await, None);
    assert_eq!(failing_since(store, "we_b").await, Some(at(10 + 31)));
}

/// One batch with: a delivered webhook, an attempt whose message is gone (false), one whose lease
/// another dispatcher took (its attempt is recorded, the message does not move: false), one the
/// database refuses (its own error; nothing of it kept, its endpoint untouched), and a delivered
/// email. The batch's transaction fails; each is settled alone and answered as it would have been
/// without group commit. Then the same writer settles the refused one once the database takes it.
async fn a_refused_attempt_costs_the_rest_of_its_batch_nothing(store: &impl Writer, raise: &str) {
    endpoint(store, "we_ok", Some(at(-100))).await;
    endpoint(store, "we_stolen", Some(at(-100))).await;
    endpoint(store, "we_victim", None).await;
    message(store, "msg_ok", "we_ok", "dsp_a").await;
    message(store, "msg_stolen", "we_stolen", "dsp_other").await;
    message(store, "msg_victim", "we_victim", "dsp_a").await;
    message(store, "msg_mail", "buyer@example.com", "dsp_a").await;
    refuse_attempts_of(store, "msg_victim", raise).await;
    let dones = vec![
        done("msg_ok", "dsp_a", 1, NextStep::Delivered),
        done("msg_gone", "dsp_a", 2, NextStep::Delivered),
        done("msg_stolen", "dsp_a", 3, NextStep::Delivered),
        done("msg_victim", "dsp_a", 4, NextStep::RetryAt(at(500))),
        done("msg_mail", "dsp_a", 5, NextStep::Delivered),
    ];
    let answers = batch(store, dones.clone()).await;
    assert!(matches!(answers[0], Ok(true)), "{:?}", answers[0]);
    assert!(matches!(answers[1], Ok(false)), "{:?}", answers[1]);
    assert!(matches!(answers[2], Ok(false)), "{:?}", answers[2]);
    match &answers[3] {
        Err(e) => assert!(e.to_string().contains("injected"), "{e}"),
        other => panic!("the refused attempt: {other:?}"),
    }
    assert!(matches!(answers[4], Ok(true)), "{:?}", answers[4]);

    settled_as(store, &dones[0]).await;
    settled_as(store, &dones[4]).await;
    assert_eq!(failing_since(store, "we_ok").await, None);
    assert_eq!(store.outbox_message("msg_gone").await.unwrap(), None);
    assert!(attempts(store, "msg_gone").await.is_empty());
    // Recorded, not moved: the lease is the other dispatcher's.
    let stolen = store.outbox_message("msg_stolen").await.unwrap().unwrap();
    assert_eq!((stolen.status.as_str(), stolen.attempts, stolen.lease_owner.as_deref()), ("pending", 0, Some("dsp_other")));
    assert_eq!(attempts(store, "msg_stolen").await, [(1, Some(200), None)]);
    assert_eq!(failing_since(store, "we_stolen").await, None, "its endpoint learned of the delivery");
    // Nothing of the refused one: still leased, no attempt, its endpoint not marked failing.
    let victim = store.outbox_message("msg_victim").await.unwrap().unwrap();
    assert_eq!((victim.status.as_str(), victim.attempts, victim.lease_owner.as_deref()), ("pending", 0, Some("dsp_a")));
    assert!(attempts(store, "msg_victim").await.is_empty());
    assert_eq!(failing_since(store, "we_victim").await, None);

    // The writer (and, on SQLite, its connection) goes on: the refused attempt, now taken, and
    // another in the same batch.
    store
        .execute(match store.engine() {
            Engine::Sqlite => "DROP TRIGGER refuse",
            Engine::Postgres => "DROP TRIGGER refuse ON outbox_attempts",
        })
        .await;
    message(store, "msg_later", "we_ok", "dsp_a").await;
    let again = vec![dones[3].clone(), done("msg_later", "dsp_a", 6, NextStep::Delivered)];
    let answers = batch(store, again.clone()).await;
    assert!(answers.iter().all(|a| matches!(a, Ok(true))), "{answers:?}");
    settled_as(store, &again[0]).await;
    settled_as(store, &again[1]).await;
    assert_eq!(failing_since(store, "we_victim").await, Some(at(4)));
}

/// Two attempts at one message in one batch (a dispatcher that lost its lease and the one that
/// took it over): carried out in order, as one after the other: numbered 1 and 2, the first moves
/// the message, the second finds it moved.
async fn two_attempts_at_one_message_in_a_batch_are_settled_in_order(store: &impl Writer) {
    endpoint(store, "we_twice", None).await;
    message(store, "msg_twice", "we_twice", "dsp_b").await;
    let answers = batch(
        store,
        vec![done("msg_twice", "dsp_b", 1, NextStep::RetryAt(at(100))), done("msg_twice", "dsp_a", 2, NextStep::Delivered)],
    )
    .await;
    assert!(matches!(answers[..], [Ok(true), Ok(false)]), "{answers:?}");
    let m = store.outbox_message("msg_twice").await.unwrap().unwrap();
    assert_eq!((m.status.as_str(), m.attempts, m.next_attempt_at), ("pending", 1, at(100)));
    assert_eq!(attempts(store, "msg_twice").await, [(1, Some(503), Some("msg_twice failed".to_owned())), (2, Some(200), None)]);
    assert_eq!(failing_since(store, "we_twice").await, None, "the later delivery ends the failing run");
}

#[tokio::test]
async fn the_settling_writer_on_sqlite() {
    many_attempts_are_settled_in_one_transaction(&sqlite_in_memory().await).await;
    let (store, _dir) = sqlite().await;
    a_refused_attempt_costs_the_rest_of_its_batch_nothing(&store, "ABORT").await;
    two_attempts_at_one_message_in_a_batch_are_settled_in_order(&store).await;
}

/// `RAISE(ROLLBACK)`: the refused attempt ends the batch's transaction on its own (and again when
/// settled alone); the connection is brought back in line each time, on a file and in memory.
#[tokio::test]
async fn the_settling_writer_on_sqlite_when_a_failure_ends_the_transaction() {
    let (store, _dir) = sqlite().await;
    a_refused_attempt_costs_the_rest_of_its_batch_nothing(&store, "ROLLBACK").await;
    a_refused_attempt_costs_the_rest_of_its_batch_nothing(&sqlite_in_memory().await, "ROLLBACK").await;
}

#[tokio::test]
async fn the_settling_writer_on_postgres() {
    for test in [
        "many_attempts_are_settled_in_one_transaction",
        "a_refused_attempt_costs_the_rest_of_its_batch_nothing",
        "two_attempts_at_one_message_in_a_batch_are_settled_in_order",
    ] {
        let Some(store) = postgres(&format!("the_settling_writer_on_postgres ({test})")).await else { return };
        match test {
            "many_attempts_are_settled_in_one_transaction" => many_attempts_are_settled_in_one_transaction(&store).await,
            "a_refused_attempt_costs_the_rest_of_its_batch_nothing" => {
                a_refused_attempt_costs_the_rest_of_its_batch_nothing(&store, "EXCEPTION").await
            }
            _ => two_attempts_at_one_message_in_a_batch_are_settled_in_order(&store).await,
        }
    }
}

/// PostgreSQL only: a fault in the middle of a batch: the connection is lost (a trigger ends its
/// own backend), or the database reports a storage fault (`disk_full`, injected) and the
/// connection lives on. Every attempt of the batch is answered with a fault and none is recorded,
/// not even alone (no more writes to a database that just faulted; their leases will expire and
/// the messages be sent again); once the database takes them, the same attempts are settled.
#[tokio::test]
async fn a_fault_inside_a_batch_answers_every_attempt_with_a_fault_and_records_none() {
    let faults = [
        ("a lost connection", "PERFORM pg_terminate_backend(pg_backend_pid());"),
        ("a full disk", "RAISE EXCEPTION 'injected: disk full' USING ERRCODE = '53100';"),
    ];
    for (fault, raise) in faults {
        let test = format!("a_fault_inside_a_batch_answers_every_attempt_with_a_fault_and_records_none ({fault})");
        let Some(store) = postgres(&test).await else { return };
        endpoint(&store, "we_fault", None).await;
        for id in ["msg_a", "msg_fault", "msg_b"] {
            message(&store, id, "we_fault", "dsp_a").await;
        }
        store
            .execute(&format!(
                "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF NEW.message_id = 'msg_fault' THEN {raise} END IF;
                   RETURN NEW;
                 END $$;
                 CREATE TRIGGER fault BEFORE INSERT ON outbox_attempts FOR EACH ROW EXECUTE FUNCTION fault();"
            ))
            .await;
        let dones: Vec<AttemptDone> =
            ["msg_a", "msg_fault", "msg_b"].iter().zip(1..).map(|(id, s)| done(id, "dsp_a", s, NextStep::Delivered)).collect();
        for (d, answer) in dones.iter().zip(batch(&store, dones.clone()).await) {
            match answer {
                Err(e) => assert!(e.is_fault(), "{fault}: {}: {e:?}", d.message_id),
                other => panic!("{fault}: {}: {other:?}", d.message_id),
            }
            assert!(attempts(&store, &d.message_id).await.is_empty(), "{fault}: {}", d.message_id);
            let m = store.outbox_message(&d.message_id).await.unwrap().unwrap();
            assert_eq!((m.status.as_str(), m.lease_owner.as_deref()), ("pending", Some("dsp_a")), "{fault}: {}", d.message_id);
        }
        assert_eq!(failing_since(&store, "we_fault").await, None);

        store.execute("DROP TRIGGER fault ON outbox_attempts").await;
        // The store may refuse connections for a moment after the fault (`health.rs`): nothing is done then.
        let mut answers = batch(&store, dones.clone()).await;
        for _ in 0..50 {
            if !answers.iter().any(|a| matches!(a, Err(StoreError::Unavailable))) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            answers = batch(&store, dones.clone()).await;
        }
        assert!(answers.iter().all(|a| matches!(a, Ok(true))), "{fault}: {answers:?}");
        for d in &dones {
            settled_as(&store, d).await;
            assert_eq!(attempts(&store, &d.message_id).await.len(), 1, "{fault}: {}", d.message_id);
        }
    }
}

/// A run of attempts folded into one statement leaves `failing_since` as one statement per
/// attempt, in order, did: every run of up to 5 attempts, from either starting value.
#[test]
fn a_folded_run_of_attempts_leaves_failing_since_as_one_statement_each_did() {
    let one_each = |before: Option<DateTime<Utc>>, run: &[(bool, DateTime<Utc>)]| {
        run.iter().fold(before, |f, &(delivered, t)| if delivered { None } else { f.or(Some(t)) })
    };
    for len in 0..=5u32 {
        for bits in 0..(1u32 << len) {
            let run: Vec<(bool, DateTime<Utc>)> = (0..len).map(|i| (bits & (1 << i) != 0, at(i64::from(i) + 1))).collect();
            let folded = run.iter().fold(FailingSince::default(), |f, &(delivered, t)| f.then(delivered, t));
            for before in [None, Some(at(-1))] {
                assert_eq!(folded.applied_to(before), one_each(before, &run), "{run:?} from {before:?}");
            }
        }
    }
}
