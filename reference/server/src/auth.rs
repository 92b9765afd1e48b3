//! Accounts: Argon2id password hashes, random session tokens stored hashed,
//! a limiter for failed logins (per account and per address), and the
//! bounded pool that every password hash runs in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

thread_local! {
    /// This thread's Argon2 memory, reused by every hash it computes and
    /// wiped after each. Hashes run on the few password threads of
    /// [`PasswordWork`], so what they hold is bounded by their number times
    /// the largest memory cost; a fresh 19 MiB buffer per hash instead left
    /// about 200 MiB resident per thread with the system allocator.
    static BLOCKS: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Argon2 of `password` and `salt` into `out`, in this thread's memory.
fn argon2_into(a: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> bool {
    BLOCKS.with_borrow_mut(|blocks| {
        let n = a.params().block_count();
        if blocks.len() < n {
            blocks.resize(n, Block::new());
        }
        let ok = blocks.get_mut(..n).is_some_and(|m| {
            a.hash_password_into_with_memory(password, salt, out, m)
                .is_ok()
        });
        blocks.iter_mut().for_each(|b| *b = Block::new());
        ok
    })
}

/// Bytes of a password hash's output.
const HASH_LEN: usize = 32;

/// Hashes a password into a PHC string (`$argon2id$v=19$...`).
pub fn hash_password(password: &str, cost: PasswordCost) -> Option<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let a = argon2(cost)?;
    let mut out = Zeroizing::new([0u8; HASH_LEN]);
    if !argon2_into(&a, password.as_bytes(), &salt, out.as_mut()) {
        return None;
    }
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(a.params()).ok()?,
        salt: Some(Salt::new(&salt).ok()?),
        hash: Some(Output::new(out.as_ref()).ok()?),
    };
    Some(phc.to_string())
}

/// Checks a password against a PHC string (its own parameters apply); the
/// outputs are compared in constant time.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(phc) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let version = match phc.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&phc) else {
        return false;
    };
    let a = Argon2::new(algorithm, version, params);
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    argon2_into(&a, password.as_bytes(), salt, &mut out)
        && Output::new(&out).is_ok_and(|computed| &computed == expected)
}

/// Where Argon2id runs: `workers` threads of its own, at most `queue`
/// requests waiting for them; beyond that a request is refused at once
/// ([`PasswordWork::run`] returns `None`). So the memory that password
/// hashing can take is bounded by `workers` × the hash's memory cost,
/// whatever the number of concurrent logins: the same few threads reuse
/// their allocator's memory, where hashes spread over a growing pool of
/// threads each left their buffers in another arena (1.4 GiB after a
/// thousand concurrent logins). The threads run at a lower scheduling
/// priority (nice 10), so that relaying messages goes first when hashing
/// keeps every CPU busy.
#[derive(Debug)]
pub(crate) struct PasswordWork {
    jobs: std::sync::mpsc::Sender<Job>,
    /// Worker threads started.
    workers: usize,
    /// Requests admitted (running or waiting).
    admitted: Arc<AtomicUsize>,
    capacity: usize,
}

type Job = Box<dyn FnOnce() + Send>;

/// Releases an admission when the work it admitted is over.
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Niceness of the password threads (0 is the default; 19 the lowest).
const PASSWORD_NICENESS: i32 = 10;

impl PasswordWork {
    pub(crate) fn new(workers: usize, queue: usize) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let started = (0..workers.max(1))
            .filter(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("password-{i}"))
                    .spawn(move || {
                        let _ = rustix::process::setpriority_process(
                            Some(rustix::thread::gettid()),
                            PASSWORD_NICENESS,
                        );
                        loop {
                            let job = match rx.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => return,
                            };
                            match job {
                                Ok(job) => job(),
                                Err(_) => return, // the server is gone
                            }
                        }
                    })
                    .is_ok()
            })
            .count();
        PasswordWork {
            jobs,
            workers: started,
            admitted: Arc::default(),
            capacity: started + queue,
        }
    }

    /// Runs `f` on a password thread once one is free, or returns `None` at
    /// once if `workers + queue` requests are already admitted. The
    /// admission holds until `f` returns, even if the caller stops waiting
    /// (a closed connection does not free memory still in use).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if self.workers == 0 || self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            if self.workers > 0 {
                self.admitted.fetch_sub(1, Ordering::AcqRel);
            }
            return None;
        }
        let admission = Admission(Arc::clone(&self.admitted));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let value = f();
            // Released before the caller hears: a caller that got its answer
            // finds its admission gone.
            drop(admission);
            let _ = tx.send(value);
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
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

    /// The hashes stay the argon2 crate's own: each side verifies the
    /// other's (stored hashes from before keep working), including a hash
    /// of another memory cost after a larger one on the same thread.
    #[test]
    fn hashes_are_those_of_the_argon2_crate_both_ways() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let theirs = argon2(PasswordCost {
            memory_kib: 256,
            iterations: 2,
        })
        .unwrap()
        .hash_password_with_salt(b"correct horse", &[7u8; 16])
        .unwrap()
        .to_string();
        assert!(verify_password("correct horse", &theirs));
        assert!(!verify_password("correct horsf", &theirs));
        let ours = hash_password(
            "correct horse",
            PasswordCost {
                memory_kib: 64,
                iterations: 1,
            },
        )
        .unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
                .is_ok()
        );
        assert!(!verify_password(
            "correct horse",
            "$argon2id$v=19$m=64,t=1,p=1$bad"
        ));
        assert!(!verify_password("correct horse", "not a hash"));
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
