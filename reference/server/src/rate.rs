//! Request rate limits: token buckets per connection, per client address
//! and per (requesting account, fetched device).
//!
//! ```text
//!  frame decoded ─▶ connection bucket ─▶ address bucket ─▶ handled
//!                        │ empty              │ empty
//!                        └──────┬─────────────┘
//!                               ▼
//!        RateLimited ("retry in N ms"), and the connection reads nothing
//!        more until a token is due: a flood costs the server one reply per
//!        token, the rest waits in the peer's TCP buffers
//!
//!  FetchBundle ─▶ (account, device) bucket ─▶ empty: RateLimited
//!  (one account cannot drain another device's one-time prekeys)
//! ```
//!
//! A bucket holds at most `burst` tokens and gains `rate` per second; a
//! request takes one. A rate of 0 turns a limit off.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is due.
    pub(crate) fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.take_n(1.0, rate, burst, now)
    }

    /// Takes `n` more tokens at once (a request that costs more than one),
    /// or none if the bucket holds fewer; says how long until it would.
    pub(crate) fn take_n(
        &mut self,
        n: f64,
        rate: f64,
        burst: f64,
        now: Instant,
    ) -> Result<(), Duration> {
        if rate <= 0.0 || n <= 0.0 {
            return Ok(());
        }
        let gained = now.saturating_duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + gained).min(burst);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / rate))
        }
    }

    /// Whether the bucket is full again at `now` (nothing to remember).
    fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst
    }
}

/// Buckets by key, shared by connections. Memory stays bounded: past
/// `max_keys` buckets, those full again are forgotten (a full bucket is the
/// same as none); if none is, the new key is refused like an empty bucket.
pub(crate) struct Buckets<K> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq> Buckets<K> {
    pub(crate) fn new(rate: f64, burst: f64, max_keys: usize) -> Self {
        Buckets {
            rate,
            burst,
            max_keys,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `key`'s bucket, or says how long until one is due.
    pub(crate) fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= self.max_keys {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| !b.is_full(rate, burst, now));
            if map.len() >= self.max_keys {
                return Err(Duration::from_secs_f64(1.0 / self.rate));
            }
        }
        map.entry(key)
            .or_insert_with(|| Bucket::full(self.burst, now))
            .take(self.rate, self.burst, now)
    }
}

/// A node's share of limits that hold across nodes: tokens it took from
/// a bucket in the shared store (a *lease*), spent locally, so that one
/// store round trip covers a batch of requests. A node holds at most one
/// batch per key unspent, so a deployment of N nodes admits at most N
/// batches beyond the shared bucket's burst and rate.
pub(crate) struct Leases<K> {
    max_keys: usize,
    map: Mutex<HashMap<K, u64>>,
}

impl<K: Hash + Eq> Leases<K> {
    pub(crate) fn new(max_keys: usize) -> Self {
        Leases {
            max_keys,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one leased token of `key`; `false` when none is left (take
    /// a new lease from the shared bucket).
    pub(crate) fn spend(&self, key: &K) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Adds `tokens` newly leased for `key`. Past `max_keys`, keys with
    /// nothing left are forgotten first; if none has, the lease is dropped
    /// (its tokens are lost to the deployment, never over-granted).
    pub(crate) fn add(&self, key: K, tokens: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= self.max_keys {
            map.retain(|_, n| *n > 0);
            if map.len() >= self.max_keys {
                return;
            }
        }
        *map.entry(key).or_insert(0) += tokens;
    }
}

/// How many tokens one lease takes from a shared bucket of `rate` per
/// second: a tenth of a second's worth (at least one), so a node asks the
/// store at most ten times a second per key.
pub(crate) fn lease_size(rate: f64) -> u64 {
    (rate / 10.0).floor().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3.0, t0);
        for _ in 0..3 {
            assert!(b.take(10.0, 3.0, t0).is_ok());
        }
        let wait = b.take(10.0, 3.0, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // A tenth of a second later, one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(10.0, 3.0, t1).is_ok());
        assert!(b.take(10.0, 3.0, t1).is_err());
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(10.0, 3.0, t2).is_ok());
        }
        assert!(b.take(10.0, 3.0, t2).is_err());
        // Rate 0: no limit.
        assert!(b.take(0.0, 3.0, t2).is_ok());
    }

    #[test]
    fn keyed_buckets_are_separate_and_bounded_in_number() {
        let t0 = Instant::now();
        let buckets: Buckets<u32> = Buckets::new(1.0, 2.0, 2);
        assert!(buckets.take(1, t0).is_ok());
        assert!(buckets.take(1, t0).is_ok());
        assert!(buckets.take(1, t0).is_err());
        assert!(buckets.take(2, t0).is_ok());
        // A third key while both others are in use: refused, not stored.
        assert!(buckets.take(3, t0).is_err());
        // Once they are full again they are forgotten and 3 gets one.
        let later = t0 + Duration::from_secs(10);
        assert!(buckets.take(3, later).is_ok());
        assert!(buckets.map.lock().unwrap().len() <= 2);
    }

    #[test]
    fn leases_are_spent_once_and_bounded_in_number() {
        let leases: Leases<u32> = Leases::new(2);
        assert!(!leases.spend(&1), "nothing leased yet");
        leases.add(1, 2);
        assert!(leases.spend(&1) && leases.spend(&1));
        assert!(!leases.spend(&1), "spent");
        leases.add(2, 1);
        leases.add(3, 5);
        assert!(leases.spend(&3), "1 had nothing left and was forgotten");
        leases.add(4, 5);
        assert!(!leases.spend(&4), "no room: dropped, never over-granted");
        assert_eq!(lease_size(10_000.0), 1000);
        assert_eq!(lease_size(5.0), 1);
    }
}
