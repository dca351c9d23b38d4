//! Password hashing: argon2id with OWASP's parameters, off the async runtime, in a bounded pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};

/// OWASP: argon2id, m = 19 MiB, t = 2, p = 1.
pub const M_COST_KIB: u32 = 19_456;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

fn argon2_with(m: u32, t: u32, p: u32) -> Argon2<'static> {
    let params = Params::new(m, t, p, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes and verifies passwords on a few dedicated threads: one fewer than the machine has cores
/// (at least one), running at a lower OS priority (nice 10), so a flood of logins queues here while
/// every other route keeps getting the CPU it needs (`bench/login_flood.py`).
#[derive(Clone)]
pub struct PasswordHasherPool {
    jobs: std::sync::mpsc::Sender<Job>,
    params: (u32, u32, u32),
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// A hash of a random password with this pool's parameters, made on first use.
    dummy: Arc<OnceLock<String>>,
}

type Job = Box<dyn FnOnce() + Send>;

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

impl PasswordHasherPool {
    pub fn new() -> PasswordHasherPool {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        PasswordHasherPool::with_params(cores.saturating_sub(1).max(1), (M_COST_KIB, T_COST, P_COST))
    }

    /// `workers` threads hashing with argon2id parameters `(m KiB, t, p)`.
    pub fn with_params(workers: usize, params: (u32, u32, u32)) -> PasswordHasherPool {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..workers.max(1) {
            let queue = queue.clone();
            // A worker ends when the pool (every sender) is dropped.
            let _ = std::thread::Builder::new().name(format!("tollgate-hash-{i}")).spawn(move || {
                lower_thread_priority();
                loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        }
        PasswordHasherPool {
            jobs,
            params,
            in_flight: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
            dummy: Arc::new(OnceLock::new()),
        }
    }

    /// The most hashes that ever ran at once.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let (in_flight, peak) = (self.in_flight.clone(), self.peak.clone());
        let job: Job = Box::new(move || {
            // The request was dropped (timeout, disconnect) while queued: spend nothing on it.
            if done.is_closed() {
                return;
            }
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let out = f();
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = done.send(out);
        });
        self.jobs.send(job).map_err(|_| anyhow::anyhow!("password hashing workers are gone"))?;
        result.await.map_err(|_| anyhow::anyhow!("password hashing worker failed"))
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub async fn hash(&self, password: &SecretString) -> anyhow::Result<String> {
        let password = password.clone();
        let (m, t, p) = self.params;
        self.run(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon2_with(m, t, p)
                .hash_password(password.expose_secret().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
        })
        .await?
    }

    /// Verifies against `stored`; with `None` (unknown user) verifies against a dummy hash so the
    /// answer takes as long as for a real account. A stored hash with cheaper, older parameters is
    /// padded with a dummy verification too, so it does not answer faster.
    pub async fn verify(&self, password: &SecretString, stored: Option<&str>) -> anyhow::Result<Verified> {
        let password = password.clone();
        let stored = stored.map(str::to_owned);
        let (m, t, p) = self.params;
        let dummy_cell = self.dummy.clone();
        self.run(move || {
            let dummy = dummy_cell.get_or_init(|| dummy_hash(m, t, p)).as_str();
            let real = stored.is_some();
            let phc = stored.as_deref().unwrap_or(dummy);
            let Ok(parsed) = PasswordHash::new(phc) else {
                // A corrupt stored hash: spend the same time, then refuse.
                let _ = verify_phc(dummy, password.expose_secret());
                return Verified { ok: false, needs_rehash: false };
            };
            let ok = Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok() && real;
            let current = parsed.algorithm.as_str() == "argon2id"
                && Params::try_from(&parsed).is_ok_and(|pp| pp.m_cost() == m && pp.t_cost() == t && pp.p_cost() == p);
            if real && !current {
                let _ = verify_phc(dummy, password.expose_secret());
            }
            Verified { ok, needs_rehash: ok && !current }
        })
        .await
    }
}

impl Default for PasswordHasherPool {
    fn default() -> Self {
        PasswordHasherPool::new()
    }
}

fn verify_phc(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash of a random password with the given parameters.
fn dummy_hash(m: u32, t: u32, p: u32) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2_with(m, t, p)
        .hash_password(crate::domain::crypto::random_token().as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn older_parameters_ask_for_a_rehash() {
        let old = PasswordHasherPool::with_params(1, (4096, 1, 1));
        let pw = SecretString::from("correct horse battery staple 42".to_owned());
        let phc = old.hash(&pw).await.unwrap();
        let v = PasswordHasherPool::new().verify(&pw, Some(&phc)).await.unwrap();
        assert!(v.ok && v.needs_rehash);
    }
}
