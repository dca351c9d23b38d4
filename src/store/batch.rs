//! Group commit: requests queue their work to a few writer tasks; a writer takes everything
//! queued (up to [`MAX_BATCH`]) and carries it out in one transaction, then answers each request.
//! Nothing waits for a batch to fill: a batch is whatever arrived while the previous one ran.
//!
//! This file knows nothing of what the work is (`ledger.rs` supplies the function that runs a
//! batch of verified events, `settle.rs` one that settles a batch of delivery attempts); it only
//! queues, hands out batches, and makes sure every request gets an answer: a
//! writer that fails or panics answers its batch with an error and goes on with the next one.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::error::StoreError;
use super::health::Health;

/// The most requests one transaction carries.
pub(crate) const MAX_BATCH: usize = 256;

/// Requests waiting for a writer; more wait for room (the queue pushes back on its senders).
const QUEUE: usize = 4 * MAX_BATCH;

/// One queued request: what to do, and where its answer goes.
pub(crate) struct Job<W, A> {
    pub work: W,
    reply: oneshot::Sender<Result<A, StoreError>>,
}

impl<W, A> Job<W, A> {
    /// A job not queued through a [`Batcher`] (tests hand a writer a batch of their own making),
    /// and where its answer will come.
    #[cfg(test)]
    pub fn new(work: W) -> (Self, oneshot::Receiver<Result<A, StoreError>>) {
        let (reply, answer) = oneshot::channel();
        (Job { work, reply }, answer)
    }

    /// Answers the request (that it may have gone away meanwhile changes nothing).
    pub fn answer(self, answer: Result<A, StoreError>) {
        let _ = self.reply.send(answer);
    }
}

/// Answers every job of `jobs` with an error saying `why` (the batch's transaction failed, so none
/// of them was done). What kind of failure it was passes through: an unreachable database stays
/// [`StoreError::Unavailable`] (503) and a storage fault or a lost connection becomes
/// [`StoreError::Fault`], so no caller writes to a database that just faulted (each would record
/// its event `failed`, a burst of up to [`MAX_BATCH`] writes); anything else is a
/// [`StoreError::Batch`].
pub(crate) fn fail_all<W, A>(jobs: Vec<Job<W, A>>, why: &StoreError) {
    for job in jobs {
        let error = match why {
            StoreError::Unavailable => StoreError::Unavailable,
            fault if fault.is_fault() => {
                StoreError::Fault(format!("the transaction this was part of met a database fault: {fault}"))
            }
            other => StoreError::Batch(format!("the transaction this was part of failed: {other}")),
        };
        job.answer(Err(error));
    }
}

/// What a writer needs of its engine: the pool, what the errors said, and (SQLite) the writers' turn.
pub(crate) struct Parts<DB: sqlx::Database> {
    pub pool: sqlx::Pool<DB>,
    pub health: Arc<Health>,
    pub max_connections: u32,
    /// An SQLite database in memory: it lives in its one connection, so that connection is never
    /// closed (a new one would be a new, empty database), whatever it went through.
    pub in_memory: bool,
    pub turn: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The store's read view: users a batch changed are forgotten once it is over.
    pub view: super::view::View,
}

impl<DB: sqlx::Database> Parts<DB> {
    /// The right to write (SQLite: the one writer's turn; PostgreSQL: none needed).
    pub async fn turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.turn {
            Some(turn) => Some(turn.lock().await),
            None => None,
        }
    }

    /// A connection and the right to write, for one transaction. The connection comes first, so
    /// the other writers are not kept waiting while this one waits for the pool (every other
    /// writer takes the turn first and a connection then). That order is safe only while the
    /// turn's holder can still get a connection: two writers take this path on SQLite (the
    /// ledger's and the dispatcher's attempts', `settle.rs`), and each may hold a connection while
    /// waiting for the turn, so with a pool of two or fewer (one: an in-memory database) the
    /// turn's holder would wait for a connection until its acquire timeout; there the turn comes
    /// first, as everywhere else.
    pub async fn writer(&self) -> Result<(sqlx::pool::PoolConnection<DB>, Option<tokio::sync::MutexGuard<'_, ()>>), StoreError> {
        if self.max_connections > 2 {
            let conn = super::pool::acquire(&self.pool, &self.health, self.max_connections).await?;
            Ok((conn, self.turn().await))
        } else {
            let turn = self.turn().await;
            Ok((super::pool::acquire(&self.pool, &self.health, self.max_connections).await?, turn))
        }
    }
}

/// Runs one batch and answers every job in it.
pub(crate) type RunBatch<W, A> = Arc<dyn Fn(Vec<Job<W, A>>) -> BoxFuture<'static, ()> + Send + Sync>;

pub(crate) struct Batcher<W, A> {
    writers: usize,
    run: RunBatch<W, A>,
    /// Started on first use, so the writers run on the runtime that uses the store.
    queue: OnceLock<mpsc::Sender<Job<W, A>>>,
}

impl<W: Send + 'static, A: Send + 'static> Batcher<W, A> {
    pub fn new(writers: usize, run: RunBatch<W, A>) -> Self {
        Batcher { writers: writers.max(1), run, queue: OnceLock::new() }
    }

    /// Queues `work` and waits for its answer, which comes after the transaction that carried it
    /// out committed (or failed).
    pub async fn submit(&self, work: W) -> Result<A, StoreError> {
        let queue = self.queue.get_or_init(|| self.start());
        let (reply, answer) = oneshot::channel();
        // The writers are gone only when the runtime is shutting down: nothing was done.
        queue.send(Job { work, reply }).await.map_err(|_| StoreError::Unavailable)?;
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Batch("the writer stopped before answering (nothing was acknowledged)".to_owned()))
        })
    }

    fn start(&self) -> mpsc::Sender<Job<W, A>> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..self.writers {
            let (receiver, run) = (receiver.clone(), self.run.clone());
            tokio::spawn(async move {
                while let Some(jobs) = next_batch(&receiver).await {
                    // A panic drops the batch's jobs, which answers each of them with an error.
                    if AssertUnwindSafe(run(jobs)).catch_unwind().await.is_err() {
                        tracing::error!("a batch writer panicked; its batch was answered with an error");
                    }
                }
            });
        }
        sender
    }
}

/// The next batch: waits for one job, then takes whatever else is queued, up to [`MAX_BATCH`].
/// `None` once every sender is gone.
async fn next_batch<W, A>(receiver: &tokio::sync::Mutex<mpsc::Receiver<Job<W, A>>>) -> Option<Vec<Job<W, A>>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut jobs = Vec::with_capacity(MAX_BATCH.min(receiver.len() + 1));
    jobs.push(first);
    while jobs.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batcher whose writer answers each job with its number doubled, and panics on a 0.
    fn doubling() -> Batcher<u32, u32> {
        Batcher::new(
            1,
            Arc::new(|jobs: Vec<Job<u32, u32>>| {
                Box::pin(async move {
                    assert!(jobs.iter().all(|j| j.work != 0), "a writer bug");
                    for job in jobs {
                        let n = job.work;
                        job.answer(Ok(n * 2));
                    }
                })
            }),
        )
    }

    #[tokio::test]
    async fn every_request_is_answered_and_a_panicking_batch_leaves_the_writer_running() {
        let batcher = Arc::new(doubling());
        assert_eq!(batcher.submit(21).await.unwrap(), 42);
        let many: Vec<_> = (1..=600u32)
            .map(|n| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(n).await.unwrap() })
            })
            .collect();
        for (n, answer) in (1..=600u32).zip(many) {
            assert_eq!(answer.await.unwrap(), n * 2);
        }
        let failed = batcher.submit(0).await;
        assert!(matches!(failed, Err(StoreError::Batch(_))), "{failed:?}");
        assert_eq!(batcher.submit(5).await.unwrap(), 10, "the writer goes on after a panic");
    }

    #[tokio::test]
    async fn requests_queued_while_a_batch_runs_share_the_next_batch() {
        const LATER: usize = 50;
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (started, first_started) = oneshot::channel::<()>();
        let started = Arc::new(std::sync::Mutex::new(Some(started)));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let batcher = {
            let (sizes, gate) = (sizes.clone(), gate.clone());
            Arc::new(Batcher::new(
                1,
                Arc::new(move |jobs: Vec<Job<u32, u32>>| {
                    let (sizes, started, gate) = (sizes.clone(), started.clone(), gate.clone());
                    Box::pin(async move {
                        sizes.lock().unwrap().push(jobs.len());
                        // The first batch waits until the test has queued the others.
                        if let Some(started) = started.lock().unwrap().take() {
                            let _ = started.send(());
                        }
                        gate.acquire().await.unwrap().forget();
                        for job in jobs {
                            let n = job.work;
                            job.answer(Ok(n));
                        }
                    }) as BoxFuture<'static, ()>
                }),
            ))
        };
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(0).await.unwrap() }
        });
        first_started.await.unwrap();
        let later: Vec<_> = (1..=LATER as u32)
            .map(|n| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(n).await.unwrap() })
            })
            .collect();
        // Until all of them are queued (no clock involved: the queue's free room says it).
        let queue = batcher.queue.get().unwrap();
        while queue.capacity() > QUEUE - LATER {
            tokio::task::yield_now().await;
        }
        gate.add_permits(2);
        assert_eq!(first.await.unwrap(), 0);
        for (n, answer) in (1..=LATER as u32).zip(later) {
            assert_eq!(answer.await.unwrap(), n);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, LATER], "everything queued meanwhile is one batch");
    }

    #[test]
    fn a_failed_batch_passes_an_unreachable_database_and_a_fault_through_to_each_request() {
        let answers = |why: StoreError| {
            let (jobs, answers): (Vec<_>, Vec<_>) = (0..3u32).map(Job::<u32, u32>::new).unzip();
            fail_all(jobs, &why);
            answers.into_iter().map(|mut a| a.try_recv().unwrap().unwrap_err()).collect::<Vec<_>>()
        };
        assert!(answers(StoreError::Unavailable).iter().all(StoreError::is_unavailable));
        let faults = answers(StoreError::Database(sqlx::Error::Io(std::io::Error::other("reset"))));
        assert!(faults.iter().all(|e| matches!(e, StoreError::Fault(_)) && e.is_fault()), "{faults:?}");
        let other = answers(StoreError::Database(sqlx::Error::RowNotFound));
        assert!(other.iter().all(|e| matches!(e, StoreError::Batch(_)) && !e.is_fault()), "{other:?}");
    }
}
