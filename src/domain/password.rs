//! Password work: argon2id hashing and verification with OWASP's parameters, and the strength
//! check, on a few dedicated threads off the async runtime, behind a bounded queue.
//!
//! Memory is predictable: each worker keeps one argon2 block buffer (19 MiB at today's
//! parameters) for its whole life instead of allocating and freeing one per hash, which the
//! allocator kept around (RSS grew from 17 MB to over 230 MB after a few dozen logins).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};

use super::crypto::constant_time_eq;

/// OWASP: argon2id, m = 19 MiB, t = 2, p = 1.
pub const M_COST_KIB: u32 = 19_456;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

/// Jobs waiting for a worker, at most; beyond that a request is answered 503 at once.
pub const DEFAULT_QUEUE: usize = 32;

/// The most a stored hash may make a worker spend when verifying it (a corrupt or planted hash must
/// not make it allocate gigabytes, or run for hours).
const MAX_VERIFY_M_KIB: u32 = 256 * 1024;
const MAX_VERIFY_T: u32 = 16;
const MAX_VERIFY_P: u32 = 16;

/// Why password work was not done.
#[derive(Debug, thiserror::Error)]
pub enum PasswordWorkError {
    /// The queue is full: answered at once instead of waiting behind everyone else.
    #[error("password work queue is full")]
    Busy,
    #[error("password work failed: {0}")]
    Failed(String),
}

/// Hashes, verifies and judges passwords on a few dedicated threads: one fewer than the machine
/// has cores (at least one), running at a lower OS priority (nice 10), so a flood of logins or
/// registrations queues here while every other route keeps getting the CPU it needs
/// (`bench/login_flood.py`). At most `queue` jobs wait for a new request; more are refused with
/// [`PasswordWorkError::Busy`]. A request's later steps (`then_*`: the hash after a registration's
/// strength check, the strength check and hash after a password change's verification) and the
/// checks of clients the account knows (`admitted`) are always taken, in a lane the workers serve
/// first, so a flood of new requests can neither refuse nor delay them.
#[derive(Clone)]
pub struct PasswordHasherPool {
    jobs: Arc<Lanes>,
    params: (u32, u32, u32),
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Jobs handed over and not yet picked up by a worker, and how many new ones may be.
    waiting: Arc<AtomicUsize>,
    _owner: Arc<Owner>,
    queue: usize,
    /// A hash of a random password with this pool's parameters, made on first use.
    dummy: Arc<OnceLock<String>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The jobs waiting for a worker, in two lanes: later steps of requests already admitted go
/// first, so a flood of new requests cannot hold them back.
struct Lanes {
    state: std::sync::Mutex<LaneState>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct LaneState {
    admitted: std::collections::VecDeque<Job>,
    new: std::collections::VecDeque<Job>,
    /// The pool is gone: workers end once the lanes are empty.
    closed: bool,
}

impl Lanes {
    fn push(&self, admitted: bool, job: Job) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if admitted {
            state.admitted.push_back(job);
        } else {
            state.new.push_back(job);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// The next job, admitted ones first; `None` once the pool is gone and nothing is left.
    fn next(&self) -> Option<Job> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(job) = state.admitted.pop_front().or_else(|| state.new.pop_front()) {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).closed = true;
        self.ready.notify_all();
    }
}

/// Held by every clone of a pool; the last one dropped lets the workers end.
struct Owner(Arc<Lanes>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.close();
    }
}

pub struct Verified {
    pub ok: bool,
    /// The stored hash uses other parameters than today's: re-hash now that we know the password.
    pub needs_rehash: bool,
}

/// Lowers the calling thread's scheduling priority (Linux: per thread).
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory-safety preconditions; who = 0 is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

thread_local! {
    /// This worker's argon2 memory, grown to the largest parameters it has needed and reused.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// argon2 of `password` and `salt` into `out`, in this thread's reusable memory.
fn compute(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> argon2::Result<()> {
    let needed = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    BLOCKS.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < needed {
            blocks.resize(needed, Block::default());
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
    })
}

/// A PHC string of `password` with argon2id and the given parameters and a new random salt.
fn hash_phc(password: &[u8], (m, t, p): (u32, u32, u32)) -> Result<String, PasswordWorkError> {
    let failed = |e: &dyn std::fmt::Display| PasswordWorkError::Failed(e.to_string());
    let params = Params::new(m, t, p, Some(Params::DEFAULT_OUTPUT_LEN)).map_err(|e| failed(&e))?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut salt_bytes = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut salt_bytes).map_err(|e| failed(&e))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    compute(Algorithm::Argon2id, Version::V0x13, params.clone(), password, raw_salt, &mut out).map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (any argon2 variant, version and parameters
/// it names), and whether those parameters are `current`. `None`: not a usable argon2 hash.
fn verify_phc(phc: &str, password: &[u8], current: (u32, u32, u32)) -> Option<(bool, bool)> {
    let parsed = PasswordHash::new(phc).ok()?;
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = parsed.version.map(Version::try_from).transpose().ok()?.unwrap_or_default();
    let params = Params::try_from(&parsed).ok()?;
    if params.m_cost() > MAX_VERIFY_M_KIB || params.t_cost() > MAX_VERIFY_T || params.p_cost() > MAX_VERIFY_P {
        return None;
    }
    let is_current = algorithm == Algorithm::Argon2id
        && (params.m_cost(), params.t_cost(), params.p_cost()) == current
        && version == Version::V0x13;
    let expected = parsed.hash?;
    let mut salt_bytes = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt_bytes).ok()?;
    let mut out = vec![0u8; expected.len()];
    compute(algorithm, version, params, password, salt, &mut out).ok()?;
    Some((constant_time_eq(&out, expected.as_bytes()), is_current))
}

impl PasswordHasherPool {
    pub fn new() -> PasswordHasherPool {
        PasswordHasherPool::with_queue(DEFAULT_QUEUE)
    }

    /// Today's parameters on cores − 1 workers, with at most `queue` jobs waiting.
    pub fn with_queue(queue: usize) -> PasswordHasherPool {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        PasswordHasherPool::build(cores.saturating_sub(1).max(1), (M_COST_KIB, T_COST, P_COST), queue)
    }

    /// `workers` threads hashing with argon2id parameters `(m KiB, t, p)`.
    pub fn with_params(workers: usize, params: (u32, u32, u32)) -> PasswordHasherPool {
        PasswordHasherPool::build(workers, params, DEFAULT_QUEUE)
    }

    pub fn build(workers: usize, params: (u32, u32, u32), queue: usize) -> PasswordHasherPool {
        let lanes = Arc::new(Lanes { state: std::sync::Mutex::new(LaneState::default()), ready: std::sync::Condvar::new() });
        for i in 0..workers.max(1) {
            let lanes = lanes.clone();
            // A worker ends when the pool (every clone) is dropped and its lanes are empty.
            let _ = std::thread::Builder::new().name(format!("tollgate-hash-{i}")).spawn(move || {
                lower_thread_priority();
                while let Some(job) = lanes.next() {
                    job();
                }
            });
        }
        PasswordHasherPool {
            jobs: lanes.clone(),
            params,
            in_flight: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
            waiting: Arc::new(AtomicUsize::new(0)),
            _owner: Arc::new(Owner(lanes)),
            queue,
            dummy: Arc::new(OnceLock::new()),
        }
    }

    /// Whether the queue is full now: a request that needs password work can be answered 503
    /// before it spends anything else (database reads included) on a job that would be refused.
    pub fn is_full(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) >= self.queue
    }

    /// The most jobs that ever ran at once.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Queues `f` for a worker: a new request's first job only while fewer than `queue` jobs
    /// wait (`admitted`: a later step of a request already let in, always queued).
    async fn run<T: Send + 'static>(
        &self,
        admitted: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordWorkError> {
        let waiting_now = self.waiting.fetch_add(1, Ordering::SeqCst);
        if !admitted && waiting_now >= self.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(PasswordWorkError::Busy);
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let (in_flight, peak, waiting) = (self.in_flight.clone(), self.peak.clone(), self.waiting.clone());
        let job: Job = Box::new(move || {
            waiting.fetch_sub(1, Ordering::SeqCst);
            // The request was dropped (timeout, disconnect) while queued: spend nothing on it.
            if done.is_closed() {
                return;
            }
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // A panic (a bug in a dependency, a strange input) fails this request, not the worker.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            in_flight.fetch_sub(1, Ordering::SeqCst);
            if let Ok(out) = out {
                let _ = done.send(out);
            }
        });
        self.jobs.push(admitted, job);
        result.await.map_err(|_| PasswordWorkError::Failed("password hashing worker failed".to_owned()))
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub async fn hash(&self, password: &SecretString) -> Result<String, PasswordWorkError> {
        self.hash_step(false, password).await
    }

    /// [`PasswordHasherPool::hash`] as a later step of a request already admitted.
    pub async fn then_hash(&self, password: &SecretString) -> Result<String, PasswordWorkError> {
        self.hash_step(true, password).await
    }

    async fn hash_step(&self, admitted: bool, password: &SecretString) -> Result<String, PasswordWorkError> {
        let password = password.clone();
        let params = self.params;
        self.run(admitted, move || hash_phc(password.expose_secret().as_bytes(), params)).await?
    }

    /// Verifies against `stored`; with `None` (unknown user) verifies against a dummy hash so the
    /// answer takes as long as for a real account. A stored hash with cheaper, older parameters is
    /// padded with a dummy verification too, so it does not answer faster.
    pub async fn verify(&self, password: &SecretString, stored: Option<&str>) -> Result<Verified, PasswordWorkError> {
        self.verify_step(false, password, stored).await
    }

    /// [`PasswordHasherPool::verify`] for a request admitted whatever the queue holds (a client
    /// the account knows).
    pub async fn verify_admitted(&self, password: &SecretString, stored: Option<&str>) -> Result<Verified, PasswordWorkError> {
        self.verify_step(true, password, stored).await
    }

    async fn verify_step(
        &self,
        admitted: bool,
        password: &SecretString,
        stored: Option<&str>,
    ) -> Result<Verified, PasswordWorkError> {
        let password = password.clone();
        let stored = stored.map(str::to_owned);
        let params = self.params;
        let dummy_cell = self.dummy.clone();
        self.run(admitted, move || {
            let pw = password.expose_secret().as_bytes();
            let dummy = dummy_cell.get_or_init(|| dummy_hash(params)).as_str();
            let Some(stored) = stored else {
                let _ = verify_phc(dummy, pw, params);
                return Verified { ok: false, needs_rehash: false };
            };
            match verify_phc(&stored, pw, params) {
                None => {
                    // A corrupt stored hash: spend the same time, then refuse.
                    let _ = verify_phc(dummy, pw, params);
                    Verified { ok: false, needs_rehash: false }
                }
                Some((ok, current)) => {
                    if !current {
                        let _ = verify_phc(dummy, pw, params);
                    }
                    Verified { ok, needs_rehash: ok && !current }
                }
            }
        })
        .await
    }

    /// zxcvbn's score (0–4) for `password` with `known` words, on the pool (it can take a
    /// noticeable fraction of a second on long passwords full of look-alike symbols).
    pub async fn strength(&self, password: &SecretString, known: Vec<String>) -> Result<u8, PasswordWorkError> {
        self.strength_step(false, password, known).await
    }

    /// [`PasswordHasherPool::strength`] as a later step of a request already admitted.
    pub async fn then_strength(&self, password: &SecretString, known: Vec<String>) -> Result<u8, PasswordWorkError> {
        self.strength_step(true, password, known).await
    }

    async fn strength_step(&self, admitted: bool, password: &SecretString, known: Vec<String>) -> Result<u8, PasswordWorkError> {
        let password = password.clone();
        self.run(admitted, move || {
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            super::account::strength_score(password.expose_secret(), &known)
        })
        .await
    }
}

impl Default for PasswordHasherPool {
    fn default() -> Self {
        PasswordHasherPool::new()
    }
}

/// A hash of a random password with the given parameters.
fn dummy_hash(params: (u32, u32, u32)) -> String {
    hash_phc(crate::domain::crypto::random_token().as_bytes(), params).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let pool = PasswordHasherPool::new();
        let pw = SecretString::from("correct horse battery staple 42".to_owned());
        let phc = pool.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let v = pool.verify(&pw, Some(&phc)).await.unwrap();
        assert!(v.ok && !v.needs_rehash);
        assert!(!pool.verify(&SecretString::from("wrong".to_owned()), Some(&phc)).await.unwrap().ok);
        assert!(!pool.verify(&pw, None).await.unwrap().ok, "unknown user never verifies");
        assert!(!pool.verify(&pw, Some("garbage")).await.unwrap().ok);
    }

    #[tokio::test]
    async fn hashes_agree_with_the_argon2_crates_own_hasher_both_ways() {
        let pool = PasswordHasherPool::with_params(1, (8192, 1, 1));
        let pw = "correct horse battery staple 42";
        let ours = pool.hash(&SecretString::from(pw.to_owned())).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(pw.as_bytes(), &parsed).is_ok(), "the crate verifies ours");
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(8192, 1, 1, None).unwrap())
            .hash_password(pw.as_bytes(), &salt)
            .unwrap()
            .to_string();
        let v = pool.verify(&SecretString::from(pw.to_owned()), Some(&theirs)).await.unwrap();
        assert!(v.ok && !v.needs_rehash, "we verify the crate's");
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::new(4096, 3, 1, None).unwrap())
            .hash_password(pw.as_bytes(), &salt)
            .unwrap()
            .to_string();
        let v = pool.verify(&SecretString::from(pw.to_owned()), Some(&argon2i)).await.unwrap();
        assert!(v.ok && v.needs_rehash, "another variant verifies and asks for a rehash");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_hashes_run_at_once_than_the_pool_allows() {
        let pool = PasswordHasherPool::with_params(2, (8192, 1, 1));
        let pw = SecretString::from("correct horse battery staple 42".to_owned());
        let jobs: Vec<_> = (0..12)
            .map(|_| {
                let (pool, pw) = (pool.clone(), pw.clone());
                tokio::spawn(async move { pool.hash(&pw).await })
            })
            .collect();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert_eq!(pool.peak_concurrency(), 2, "12 concurrent requests, 2 hashing at a time");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_full_queue_refuses_at_once() {
        // One worker, two places in the queue: of 12 concurrent hashes, the ones beyond 1 + 2
        // are refused immediately instead of waiting.
        let pool = PasswordHasherPool::build(1, (32768, 3, 1), 2);
        let pw = SecretString::from("correct horse battery staple 42".to_owned());
        let jobs: Vec<_> = (0..12)
            .map(|_| {
                let (pool, pw) = (pool.clone(), pw.clone());
                tokio::spawn(async move { pool.hash(&pw).await })
            })
            .collect();
        let mut done = 0;
        let mut busy = 0;
        for j in jobs {
            match j.await.unwrap() {
                Ok(_) => done += 1,
                Err(PasswordWorkError::Busy) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(busy >= 12 - 3, "{busy} refused, {done} done");
        assert!(done >= 1);
        assert!(!pool.is_full(), "nothing waits once they are answered");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_request_already_admitted_is_never_refused_its_next_step() {
        let pool = PasswordHasherPool::build(1, (8192, 1, 1), 1);
        let pw = SecretString::from("correct horse battery staple 42".to_owned());
        // Waits (without timing assumptions: a loaded machine may take any time) until `ready`.
        async fn until(ready: impl Fn() -> bool) {
            for _ in 0..2000 {
                if ready() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            panic!("the pool never reached the state the test waits for");
        }
        // The one worker is busy (until released) and the one place in the queue is taken.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(false, move || {
                    let _ = gate.recv();
                })
                .await
            })
        };
        until(|| pool.in_flight.load(Ordering::SeqCst) == 1).await;
        // The order in which the worker runs the jobs, as the jobs themselves see it.
        let served = Arc::new(AtomicUsize::new(0));
        let queued = {
            let (pool, served) = (pool.clone(), served.clone());
            tokio::spawn(async move { pool.run(false, move || served.fetch_add(1, Ordering::SeqCst)).await.unwrap() })
        };
        until(|| pool.waiting.load(Ordering::SeqCst) == 1).await;
        assert!(pool.is_full());
        assert!(matches!(pool.hash(&pw).await, Err(PasswordWorkError::Busy)), "a new request is refused");
        // A later step of a request already admitted still gets its turn, and before the queued
        // new one.
        // (`then_hash` and the other later steps are `run(true, …)`.)
        let later = {
            let (pool, served) = (pool.clone(), served.clone());
            tokio::spawn(async move { pool.run(true, move || served.fetch_add(1, Ordering::SeqCst)).await.unwrap() })
        };
        until(|| pool.waiting.load(Ordering::SeqCst) == 2).await;
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!((later.await.unwrap(), queued.await.unwrap()), (0, 1), "the admitted lane is served first");
        assert!(pool.then_hash(&pw).await.is_ok(), "and a later step hashes");
    }

    #[tokio::test]
    async fn older_parameters_ask_for_a_rehash() {
        let old = PasswordHasherPool::with_params(1, (4096, 1, 1));
        let pw = SecretString::from("correct horse battery staple 42".to_owned());
        let phc = old.hash(&pw).await.unwrap();
        let v = PasswordHasherPool::new().verify(&pw, Some(&phc)).await.unwrap();
        assert!(v.ok && v.needs_rehash);
    }

    #[test]
    fn a_hash_asking_for_absurd_work_is_refused_not_computed() {
        for absurd in [
            "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
            "$argon2id$v=19$m=8192,t=4294967295,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
            "$argon2id$v=19$m=8192,t=1,p=255$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
        ] {
            assert!(verify_phc(absurd, b"x", (M_COST_KIB, T_COST, P_COST)).is_none(), "{absurd}");
        }
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_request_and_the_worker_goes_on() {
        let pool = PasswordHasherPool::build(1, (8192, 1, 1), 4);
        let panicked = pool.run(false, || -> u8 { panic!("a bug in a dependency") }).await;
        assert!(matches!(panicked, Err(PasswordWorkError::Failed(_))));
        let pw = SecretString::from("correct horse battery staple 42".to_owned());
        assert!(pool.hash(&pw).await.is_ok(), "the one worker is still there");
        assert!(!pool.is_full());
    }
}
