//! Accounts: Argon2id password hashes, random session tokens stored hashed,
//! a limiter for failed logins (per account and per address), and the
//! bounded pool that every password hash runs in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use rand::Rng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy)]
pub struct PasswordCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
}

impl Default for PasswordCost {
    /// OWASP's minimum recommendation for Argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        PasswordCost {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
}

fn argon2(cost: PasswordCost) -> Option<Argon2<'static>> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None).ok()?;
    Some(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string (`$argon2id$v=19$...`).
pub fn hash_password(password: &str, cost: PasswordCost) -> Option<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    argon2(cost)?
        .hash_password_with_salt(password.as_bytes(), &salt)
        .ok()
        .map(|h| h.to_string())
}

/// Checks a password against a PHC string (its own parameters apply).
pub fn verify_password(password: &str, hash: &str) -> bool {
    let verifier = Argon2::default();
    PasswordVerifier::<str>::verify_password(&verifier, password.as_bytes(), hash).is_ok()
}

/// Where Argon2id runs: at most `workers` hashes at once on the blocking
/// pool, and at most `queue` more waiting; beyond that a request is refused
/// at once ([`PasswordWork::run`] returns `None`), so the memory that
/// password hashing can take is bounded by `workers` × the hash's memory
/// cost, whatever the number of concurrent logins.
#[derive(Debug)]
pub(crate) struct PasswordWork {
    workers: Arc<tokio::sync::Semaphore>,
    /// Requests admitted (running or waiting).
    admitted: Arc<AtomicUsize>,
    capacity: usize,
}

/// Releases an admission when the work it admitted is over.
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PasswordWork {
    pub(crate) fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        PasswordWork {
            workers: Arc::new(tokio::sync::Semaphore::new(workers)),
            admitted: Arc::default(),
            capacity: workers + queue,
        }
    }

    /// Runs `f` on the blocking pool once a worker is free, or returns
    /// `None` at once if `workers + queue` requests are already admitted.
    /// The worker stays taken until `f` returns, even if the caller stops
    /// waiting (a closed connection does not free memory still in use).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let admission = Admission(Arc::clone(&self.admitted));
        let permit = Arc::clone(&self.workers).acquire_owned().await.ok()?;
        tokio::task::spawn_blocking(move || {
            let _held = (permit, admission);
            f()
        })
        .await
        .ok()
    }
}

/// A fresh 32-byte bearer token, drawn from the operating system straight
/// into a heap buffer that is wiped when dropped. (The thread-local RNG
/// would leave a copy in its block buffer until it refills.)
pub fn new_token() -> Option<Zeroizing<Vec<u8>>> {
    let mut t = Zeroizing::new(vec![0u8; 32]);
    rand::TryRng::try_fill_bytes(&mut rand::rngs::SysRng, &mut t).ok()?;
    Some(t)
}

/// What the store keeps of a token: its SHA-256. The hasher, which holds
/// the token in its block buffer, is boxed so that it lives on the heap
/// (wiped when freed) and is wiped on drop (sha2's `zeroize` feature).
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    let mut hasher = Box::new(Sha256::new());
    hasher.update(token);
    hasher.finalize_reset().into()
}

/// Sliding-window limits on failed logins.
#[derive(Debug)]
pub struct LoginLimiter {
    window: Duration,
    per_account: usize,
    per_address: usize,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    accounts: HashMap<String, VecDeque<Instant>>,
    addresses: HashMap<IpAddr, VecDeque<Instant>>,
}

fn trim(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
}

impl LoginLimiter {
    /// `per_account` and `per_address` failures allowed within `window`.
    pub fn new(window: Duration, per_account: usize, per_address: usize) -> Self {
        LoginLimiter {
            window,
            per_account,
            per_address,
            failures: Mutex::new(Failures::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether another attempt is allowed now.
    pub fn allowed(&self, account: &str, address: IpAddr, now: Instant) -> bool {
        let mut f = self.lock();
        let window = self.window;
        let a = f.accounts.entry(account.to_owned()).or_default();
        trim(a, now, window);
        let account_ok = a.len() < self.per_account;
        let b = f.addresses.entry(address).or_default();
        trim(b, now, window);
        account_ok && b.len() < self.per_address
    }

    /// Records a failed attempt.
    pub fn failed(&self, account: &str, address: IpAddr, now: Instant) {
        let mut f = self.lock();
        f.accounts
            .entry(account.to_owned())
            .or_default()
            .push_back(now);
        f.addresses.entry(address).or_default().push_back(now);
        // Keep the maps from growing without bound under a spray of names.
        if f.accounts.len() > 100_000 {
            let window = self.window;
            f.accounts.retain(|_, q| {
                trim(q, now, window);
                !q.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Beyond its workers and queue, the pool refuses at once; a worker
    /// stays taken until its work ends, even when the caller gave up.
    #[tokio::test]
    async fn password_work_is_bounded() {
        let work = Arc::new(PasswordWork::new(1, 1));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let running = {
            let (work, wait) = (Arc::clone(&work), Arc::clone(&wait));
            tokio::spawn(async move {
                work.run(move || {
                    let _ = wait.lock().map(|w| w.recv());
                    1
                })
                .await
            })
        };
        let queued = {
            let work = Arc::clone(&work);
            tokio::spawn(async move { work.run(|| 2).await })
        };
        while work.admitted.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(work.run(|| 3).await, None, "a third request is refused");
        // The first caller gives up; its hash still runs, and still counts.
        running.abort();
        let _ = running.await;
        assert_eq!(work.run(|| 3).await, None, "the abandoned work still holds");
        release.send(()).unwrap();
        assert_eq!(queued.await.unwrap(), Some(2));
        assert_eq!(work.run(|| 4).await, Some(4));
        assert_eq!(work.admitted.load(Ordering::Acquire), 0);
    }

    #[test]
    fn passwords_hash_and_verify() {
        let cost = PasswordCost {
            memory_kib: 64,
            iterations: 1,
        };
        let h = hash_password("correct horse", cost).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert_ne!(hash_password("correct horse", cost).unwrap(), h, "salted");
    }

    #[test]
    fn limiter_counts_per_account_and_address() {
        let l = LoginLimiter::new(Duration::from_secs(60), 3, 5);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.allowed("alice", ip, t0));
            l.failed("alice", ip, t0);
        }
        assert!(!l.allowed("alice", ip, t0));
        assert!(
            !l.allowed("alice", other, t0),
            "per account, whatever the address"
        );
        assert!(l.allowed("bob", ip, t0));
        l.failed("bob", ip, t0);
        l.failed("carol", ip, t0);
        assert!(
            !l.allowed("dave", ip, t0),
            "per address, whatever the account"
        );
        assert!(l.allowed("alice", other, t0 + Duration::from_secs(61)));
    }
}
