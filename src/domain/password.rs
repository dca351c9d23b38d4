//! Password hashing: argon2id with OWASP's parameters, off the async runtime, in a bounded pool.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// OWASP: argon2id, m = 19 MiB, t = 2, p = 1.
pub const M_COST_KIB: u32 = 19_456;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

fn argon2_with(m: u32, t: u32, p: u32) -> Argon2<'static> {
    let params = Params::new(m, t, p, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes and verifies passwords on blocking threads, never more at once than the machine has
/// cores, so a flood of logins queues here instead of starving every other route.
#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    params: (u32, u32, u32),
}

pub struct Verified {
    pub ok: bool,
    /// The stored hash uses other parameters than today's: re-hash now that we know the password.
    pub needs_rehash: bool,
}

impl PasswordHasherPool {
    pub fn new() -> PasswordHasherPool {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        PasswordHasherPool::with_params(cores, (M_COST_KIB, T_COST, P_COST))
    }

    pub fn with_params(concurrency: usize, params: (u32, u32, u32)) -> PasswordHasherPool {
        PasswordHasherPool { permits: Arc::new(Semaphore::new(concurrency.max(1))), params }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let _permit = self.permits.acquire().await?;
        Ok(tokio::task::spawn_blocking(f).await?)
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
    /// answer takes as long as for a real account.
    pub async fn verify(&self, password: &SecretString, stored: Option<&str>) -> anyhow::Result<Verified> {
        let password = password.clone();
        let stored = stored.map(str::to_owned);
        let (m, t, p) = self.params;
        self.run(move || {
            let dummy = dummy_hash(m, t, p);
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

/// A hash of a random password with today's parameters, made once.
fn dummy_hash(m: u32, t: u32, p: u32) -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon2_with(m, t, p)
            .hash_password(crate::domain::crypto::random_token().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
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

    #[tokio::test]
    async fn older_parameters_ask_for_a_rehash() {
        let old = PasswordHasherPool::with_params(1, (4096, 1, 1));
        let pw = SecretString::from("correct horse battery staple 42".to_owned());
        let phc = old.hash(&pw).await.unwrap();
        let v = PasswordHasherPool::new().verify(&pw, Some(&phc)).await.unwrap();
        assert!(v.ok && v.needs_rehash);
    }
}
