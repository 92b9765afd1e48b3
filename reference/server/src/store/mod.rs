//! Storage behind a trait: accounts, tokens, the key directory, the mailbox
//! and ciphertext history.
//!
//! Every method is synchronous, called from a blocking thread
//! ([`tokio::task::spawn_blocking`]) or, for the message path of a store
//! whose commits never wait for the disk ([`Store::fast_commits`]), from an
//! async worker; a method returns only after its effect is committed, so a
//! reply sent after it describes durable state.

pub mod blob;
mod group;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

pub use blob::{BlobExpiry, BlobGrantOutcome, BlobInfo, BlobPutOutcome, Blobs};
pub use postgres::{PgOptions, PgStore};
pub use sqlite::SqliteStore;

use std::time::Duration;

use chatify_proto::frame::{Address, Deliver};
use chatify_proto::{
    ConversationId, DeviceKeys, MessageId, OneTimePrekey, PrekeyBundle, SignedPrekey,
};

/// Bytes a `History` frame takes besides its items (header, map, array).
pub(crate) const HISTORY_FRAME_OVERHEAD: usize = 32;

/// Bytes an item of a `History` frame takes besides its envelope: its map,
/// sequence number, sender (a user name of at most 64 bytes and a device),
/// conversation and message ids, time and the envelope's length prefix.
pub(crate) const HISTORY_ITEM_OVERHEAD: usize = 192;

/// What a store can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The user name is taken.
    #[error("user exists")]
    UserExists,
    /// A sequence number in an acknowledgement is not the caller's.
    #[error("not the caller's envelope")]
    NotYours,
    /// The request breaks a rule of the key directory (PROTOCOL §11): a
    /// one-time prekey id already held with another key, or more one-time
    /// prekeys than a device may hold.
    #[error("refused: {0}")]
    Refused(&'static str),
    /// The database failed.
    #[error("database: {0}")]
    Database(String),
}

/// A session token as stored: hashed, with its owner and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The user.
    pub user: String,
    /// The device.
    pub device: u32,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// An account's second factor as stored (docs/PROTOCOL.md §9.5).
#[derive(Clone, PartialEq, Eq)]
pub struct MfaRecord {
    /// The TOTP secret, sealed under the server's MFA key.
    pub sealed_secret: Vec<u8>,
    /// Confirmed (logins need a code); else pending confirmation.
    pub enabled: bool,
    /// The latest TOTP step whose code was accepted: a code of this step or
    /// an earlier one is refused (a replayed code).
    pub last_step: i64,
}

impl std::fmt::Debug for MfaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaRecord")
            .field("sealed_secret", &self.sealed_secret.len())
            .field("enabled", &self.enabled)
            .field("last_step", &self.last_step)
            .finish()
    }
}

/// A listener told of each envelope as it is committed: its sequence
/// number and the envelope. Called on the committing thread, after the
/// commit and before [`Store::enqueue`] returns for it, and in commit
/// order: every envelope of one store object is announced after every
/// envelope committed before it. Within one node that is sequence order,
/// which is what lets a connection push an announced envelope without
/// reading it back (several nodes sharing a database commit in an order of
/// their own; a node hears of the others' envelopes through its mailbox
/// reads). It must not block: it runs while the next commit waits. It
/// returns whether it still listens: one that returns `false` (its node
/// has stopped) is forgotten.
pub type Announce = std::sync::Arc<dyn Fn(u64, &NewEnvelope) -> bool + Send + Sync>;

/// The listeners a store tells of its commits.
#[derive(Default)]
pub(crate) struct Announcers(std::sync::RwLock<Vec<Announce>>);

impl std::fmt::Debug for Announcers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcers").finish_non_exhaustive()
    }
}

impl Announcers {
    pub(crate) fn add(&self, announce: Announce) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(announce);
    }

    /// Tells every listener of `envelopes`, committed in this order, and
    /// forgets those that no longer listen.
    pub(crate) fn tell<'a>(&self, envelopes: impl IntoIterator<Item = (u64, &'a NewEnvelope)>) {
        let mut gone: Vec<Announce> = Vec::new();
        {
            let listeners = self.0.read().unwrap_or_else(|p| p.into_inner());
            if listeners.is_empty() {
                return;
            }
            for (seq, e) in envelopes {
                for l in listeners.iter() {
                    if !l(seq, e) && !gone.iter().any(|g| std::sync::Arc::ptr_eq(g, l)) {
                        gone.push(std::sync::Arc::clone(l));
                    }
                }
            }
        }
        if !gone.is_empty() {
            self.0
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|l| !gone.iter().any(|g| std::sync::Arc::ptr_eq(g, l)));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod announcers_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn listeners_hear_every_envelope_in_order_and_a_stopped_one_is_forgotten() {
        let announcers = Announcers::default();
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = Arc::clone(&heard);
        announcers.add(Arc::new(move |seq, _| {
            h.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
            true
        }));
        let stopped_calls = Arc::new(AtomicUsize::new(0));
        let calls = Arc::clone(&stopped_calls);
        announcers.add(Arc::new(move |_, _| {
            calls.fetch_add(1, Ordering::Relaxed);
            false
        }));
        let e = super::group::tests::envelope();
        announcers.tell([(4, &e), (5, &e)]);
        assert_eq!(announcers.len(), 1, "the stopped listener stays");
        announcers.tell([(9, &e)]);
        assert_eq!(*heard.lock().unwrap_or_else(|p| p.into_inner()), [4, 5, 9]);
        // Told of the first batch (both envelopes), then forgotten.
        assert_eq!(stopped_calls.load(Ordering::Relaxed), 2);
    }
}

/// An envelope accepted for relay.
#[derive(Debug, Clone)]
pub struct NewEnvelope {
    /// The authenticated sender.
    pub from: Address,
    /// The recipient device.
    pub to: Address,
    /// The conversation.
    pub conversation: ConversationId,
    /// The sender's message id.
    pub message_id: MessageId,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The opaque envelope.
    pub envelope: Vec<u8>,
}

/// Where [`Store::enqueue_linked`] stored an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Its sequence number.
    pub seq: u64,
    /// The sequence number of the envelope stored for the same device just
    /// before it (acknowledged or not; 0 when there was none), if the store
    /// knows it for certain: no envelope of that device lies between the
    /// two, now or later.
    pub prev: Option<u64>,
}

/// Rate-limit state every node sees: a store shared by several nodes
/// keeps the limits that must hold across them (failed logins, bundle
/// fetches), so that a client cannot multiply its budget by the number of
/// nodes. Times are the database's clock, one for every node.
pub trait SharedLimits: Send + Sync {
    /// How many events each key had within the last `window`, in the
    /// order of `keys`.
    fn recent_events(&self, keys: &[String], window: Duration) -> Result<Vec<u32>, StoreError>;
    /// Records one event for each key, now.
    fn record_event(&self, keys: &[String]) -> Result<(), StoreError>;
    /// Takes `amount` tokens from the key's bucket (refilled at
    /// `per_second`, at most `burst`, full when first used), all or none;
    /// `false` when it has fewer.
    fn take_tokens(
        &self,
        key: &str,
        amount: f64,
        per_second: f64,
        burst: f64,
    ) -> Result<bool, StoreError>;
    /// Takes one token (see [`SharedLimits::take_tokens`]).
    fn take_token(&self, key: &str, per_second: f64, burst: f64) -> Result<bool, StoreError> {
        self.take_tokens(key, 1.0, per_second, burst)
    }
    /// Publishes this `node`'s open connections per client address
    /// (replacing what it published before) and returns the other nodes'
    /// totals per address, from nodes heard from within `fresh` (a node
    /// that stopped publishing, killed say, counts for nothing after it).
    fn exchange_connections(
        &self,
        node: &str,
        open: &[(String, u32)],
        fresh: Duration,
    ) -> Result<Vec<(String, u32)>, StoreError>;
    /// Forgets events older than `age` and buckets unused that long.
    fn prune_limits(&self, age: Duration) -> Result<u64, StoreError>;
}

/// The storage interface of the server.
pub trait Store: Send + Sync + 'static {
    /// The rate-limit state shared by every node using this store, if the
    /// store is shared (`None`: the node keeps its limits in memory).
    fn shared_limits(&self) -> Option<&dyn SharedLimits> {
        None
    }

    /// The blob store (encrypted files).
    fn blobs(&self) -> &dyn Blobs;

    /// Creates an account.
    fn create_user(&self, username: &str, password_hash: &str) -> Result<(), StoreError>;
    /// The stored password hash of an account.
    fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError>;
    /// Stores a token hash.
    fn create_token(&self, token_hash: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError>;
    /// Looks a token hash up.
    fn token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;
    /// Revokes every token of a device (a logout signs the device out
    /// wherever it logged in).
    fn revoke_tokens(&self, device: &Address) -> Result<(), StoreError>;
    /// Deletes expired tokens; returns how many.
    fn prune_tokens(&self, now: u64) -> Result<u64, StoreError>;

    /// Publishes a device's keys: identity and signed prekey (replacing
    /// earlier ones; a new identity also discards the device's one-time
    /// prekeys), one-time prekeys (added). Returns how many one-time prekeys
    /// the device now has.
    fn publish_keys(
        &self,
        device: &Address,
        identity: &DeviceKeys,
        signed_prekey: &SignedPrekey,
        one_time_prekeys: &[OneTimePrekey],
    ) -> Result<u32, StoreError>;
    /// Takes a device's bundle, consuming one one-time prekey atomically.
    /// Returns the bundle and how many one-time prekeys remain.
    fn take_bundle(&self, device: &Address) -> Result<Option<(PrekeyBundle, u32)>, StoreError>;
    /// How many one-time prekeys a device has left (`None`: no keys published).
    fn one_time_prekey_count(&self, device: &Address) -> Result<Option<u32>, StoreError>;

    /// Whether every commit returns without waiting for the disk (no fsync
    /// in the commit path), so that the server may call the message-path
    /// methods ([`Store::enqueue`], [`Store::pending`], [`Store::ack`]) on
    /// its async workers instead of handing them to the blocking pool.
    fn fast_commits(&self) -> bool {
        false
    }

    /// Whether [`Store::pending`] never waits for a commit (a connection of
    /// its own for reads, or commits that never wait for the disk), so the
    /// server may call it on its async workers.
    fn fast_reads(&self) -> bool {
        self.fast_commits()
    }

    /// Stores an envelope durably; returns its sequence number, or `None`
    /// (storing nothing) when the recipient device has published no keys.
    fn enqueue(&self, envelope: &NewEnvelope) -> Result<Option<u64>, StoreError>;
    /// [`Store::enqueue`], also telling which envelope came before this one
    /// in the recipient's mailbox ([`Stored::prev`]), when the store knows
    /// it for certain. Several nodes push another node's envelope straight
    /// to its recipient only when the connection has pushed that one;
    /// otherwise the connection reads its mailbox. The default knows
    /// nothing (`prev: None`) and goes through [`Store::enqueue`], so a
    /// wrapper that changes what that stores, or what [`Store::pending`]
    /// returns, is never bypassed.
    fn enqueue_linked(&self, envelope: &NewEnvelope) -> Result<Option<Stored>, StoreError> {
        Ok(self
            .enqueue(envelope)?
            .map(|seq| Stored { seq, prev: None }))
    }
    /// [`Store::enqueue_linked`] for each envelope of one group message
    /// (PROTOCOL §16.3), in order. A store with group commit makes them
    /// durable together (one transaction, one fsync); the default stores
    /// them one by one. The caller has checked that every recipient exists.
    fn enqueue_many(&self, envelopes: &[NewEnvelope]) -> Result<Vec<Option<Stored>>, StoreError> {
        envelopes.iter().map(|e| self.enqueue_linked(e)).collect()
    }
    /// Has the store tell `announce` of every envelope it commits from now
    /// on (see [`Announce`]), beside any earlier listener; returns whether
    /// it will. A store that returns `false` (the default) leaves the server
    /// to tell recipients to read their mailbox instead; a wrapper that
    /// changes what [`Store::pending`] returns must keep the default, or
    /// what it changes would be bypassed.
    fn announce_commits(&self, _announce: Announce) -> bool {
        false
    }
    /// Unacknowledged envelopes for a device with `seq > after`, in order.
    fn pending(&self, device: &Address, after: u64, limit: u32)
    -> Result<Vec<Deliver>, StoreError>;
    /// Acknowledges envelopes; all must be addressed to `device`, else none is.
    fn ack(&self, device: &Address, seqs: &[u64]) -> Result<(), StoreError>;
    /// A page of a conversation's history involving `user`, newest first:
    /// at most `limit` items, and no more than a `History` frame of
    /// `MAX_FRAME_LEN` holds (at least one); `None` when `user` took no
    /// part in the conversation.
    fn history(
        &self,
        user: &str,
        conversation: &ConversationId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Option<Vec<Deliver>>, StoreError>;
    /// Deletes acknowledged envelopes accepted before `before_ms`; returns how many.
    fn prune_history(&self, before_ms: u64) -> Result<u64, StoreError>;

    /// The devices of `user` that have published keys, ascending.
    fn devices(&self, user: &str) -> Result<Vec<u32>, StoreError>;
    /// Removes a device: its keys, one-time prekeys, tokens and unacknowledged
    /// envelopes. Returns whether it existed.
    fn remove_device(&self, device: &Address) -> Result<bool, StoreError>;
    /// Leaves a sealed identity for `user` under `link_id` until `expires_ms`,
    /// replacing any other the user left.
    fn put_link(
        &self,
        user: &str,
        link_id: &[u8; 16],
        blob: &[u8],
        expires_ms: u64,
    ) -> Result<(), StoreError>;
    /// Takes (deletes and returns) what `user` left under `link_id`, if it
    /// has not expired at `now_ms`.
    fn take_link(
        &self,
        user: &str,
        link_id: &[u8; 16],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// `user`'s second factor, if one was set up.
    fn mfa(&self, user: &str) -> Result<Option<MfaRecord>, StoreError>;
    /// Stores a pending secret for `user`, replacing a pending one; `false`
    /// (nothing changed) when the second factor is already on.
    fn mfa_begin(&self, user: &str, sealed_secret: &[u8]) -> Result<bool, StoreError>;
    /// Turns the pending secret `sealed_secret` on, with the step of the code
    /// that confirmed it and the hashes of the recovery codes; `false` when
    /// that secret is no longer the pending one.
    fn mfa_enable(
        &self,
        user: &str,
        sealed_secret: &[u8],
        step: i64,
        recovery: &[[u8; 32]],
    ) -> Result<bool, StoreError>;
    /// Records that a code of `step` was used: `true` only when no code of
    /// that step or a later one was accepted before, atomically (two nodes
    /// given the same code: one wins).
    fn mfa_use_step(&self, user: &str, step: i64) -> Result<bool, StoreError>;
    /// Consumes a recovery code by its hash: `true` only the first time.
    fn mfa_use_recovery(&self, user: &str, hash: &[u8; 32]) -> Result<bool, StoreError>;
    /// Removes `user`'s second factor and recovery codes.
    fn mfa_disable(&self, user: &str) -> Result<(), StoreError>;
}

/// Forwards the named [`Store`] methods to another store, for a wrapper
/// that changes a few methods and passes the rest through (the harness's
/// adversarial store, tests' hostile and mutant stores). Name every method
/// the wrapper does not write itself; one left out that has no default is
/// a compile error, so a method added to the trait is never passed over
/// silently.
///
/// ```
/// use chatify_server::store::{NewEnvelope, SqliteStore, Store, StoreError};
///
/// /// Stores every envelope twice.
/// struct Twice(SqliteStore);
///
/// impl Store for Twice {
///     chatify_server::forward_store!(self => self.0;
///         create_user, password_hash, create_token, token, revoke_tokens, prune_tokens,
///         publish_keys, take_bundle, one_time_prekey_count, pending, ack, history,
///         prune_history, devices, remove_device, put_link, take_link, mfa, mfa_begin,
///         mfa_enable, mfa_use_step, mfa_use_recovery, mfa_disable, blobs);
///
///     fn enqueue(&self, e: &NewEnvelope) -> Result<Option<u64>, StoreError> {
///         self.0.enqueue(e)?;
///         self.0.enqueue(e)
///     }
/// }
/// ```
///
/// Every method: blobs, create_user, password_hash, create_token, token, revoke_tokens, prune_tokens, publish_keys, take_bundle, one_time_prekey_count, fast_commits, fast_reads, enqueue, announce_commits, pending, ack, history, prune_history, devices, remove_device, put_link, take_link, mfa, mfa_begin, mfa_enable, mfa_use_step, mfa_use_recovery, mfa_disable.
#[macro_export]
macro_rules! forward_store {
    ($s:ident => $inner:expr; $($m:ident),* $(,)?) => {
        $( $crate::forward_store!(@ $s => $inner; $m); )*
    };
    (@ $s:ident => $inner:expr; blobs) => {
        fn blobs(&$s) -> &dyn $crate::store::Blobs {
            $inner.blobs()
        }
    };
    (@ $s:ident => $inner:expr; create_user) => {
        fn create_user(&$s, username: &str, password_hash: &str) -> ::core::result::Result<(), $crate::store::StoreError> {
            $inner.create_user(username, password_hash)
        }
    };
    (@ $s:ident => $inner:expr; password_hash) => {
        fn password_hash(&$s, username: &str) -> ::core::result::Result<Option<String>, $crate::store::StoreError> {
            $inner.password_hash(username)
        }
    };
    (@ $s:ident => $inner:expr; create_token) => {
        fn create_token(&$s, token_hash: &[u8; 32], record: &$crate::store::TokenRecord) -> ::core::result::Result<(), $crate::store::StoreError> {
            $inner.create_token(token_hash, record)
        }
    };
    (@ $s:ident => $inner:expr; token) => {
        fn token(&$s, token_hash: &[u8; 32]) -> ::core::result::Result<Option<$crate::store::TokenRecord>, $crate::store::StoreError> {
            $inner.token(token_hash)
        }
    };
    (@ $s:ident => $inner:expr; revoke_tokens) => {
        fn revoke_tokens(&$s, device: &$crate::__proto::frame::Address) -> ::core::result::Result<(), $crate::store::StoreError> {
            $inner.revoke_tokens(device)
        }
    };
    (@ $s:ident => $inner:expr; prune_tokens) => {
        fn prune_tokens(&$s, now: u64) -> ::core::result::Result<u64, $crate::store::StoreError> {
            $inner.prune_tokens(now)
        }
    };
    (@ $s:ident => $inner:expr; publish_keys) => {
        fn publish_keys(&$s, device: &$crate::__proto::frame::Address, identity: &$crate::__proto::DeviceKeys, signed_prekey: &$crate::__proto::SignedPrekey, one_time_prekeys: &[$crate::__proto::OneTimePrekey]) -> ::core::result::Result<u32, $crate::store::StoreError> {
            $inner.publish_keys(device, identity, signed_prekey, one_time_prekeys)
        }
    };
    (@ $s:ident => $inner:expr; take_bundle) => {
        fn take_bundle(&$s, device: &$crate::__proto::frame::Address) -> ::core::result::Result<Option<($crate::__proto::PrekeyBundle, u32)>, $crate::store::StoreError> {
            $inner.take_bundle(device)
        }
    };
    (@ $s:ident => $inner:expr; one_time_prekey_count) => {
        fn one_time_prekey_count(&$s, device: &$crate::__proto::frame::Address) -> ::core::result::Result<Option<u32>, $crate::store::StoreError> {
            $inner.one_time_prekey_count(device)
        }
    };
    (@ $s:ident => $inner:expr; fast_commits) => {
        fn fast_commits(&$s) -> bool {
            $inner.fast_commits()
        }
    };
    (@ $s:ident => $inner:expr; fast_reads) => {
        fn fast_reads(&$s) -> bool {
            $inner.fast_reads()
        }
    };
    (@ $s:ident => $inner:expr; enqueue) => {
        fn enqueue(&$s, envelope: &$crate::store::NewEnvelope) -> ::core::result::Result<Option<u64>, $crate::store::StoreError> {
            $inner.enqueue(envelope)
        }
    };
    (@ $s:ident => $inner:expr; announce_commits) => {
        fn announce_commits(&$s, announce: $crate::store::Announce) -> bool {
            $inner.announce_commits(announce)
        }
    };
    (@ $s:ident => $inner:expr; pending) => {
        fn pending(&$s, device: &$crate::__proto::frame::Address, after: u64, limit: u32) -> ::core::result::Result<Vec<$crate::__proto::frame::Deliver>, $crate::store::StoreError> {
            $inner.pending(device, after, limit)
        }
    };
    (@ $s:ident => $inner:expr; ack) => {
        fn ack(&$s, device: &$crate::__proto::frame::Address, seqs: &[u64]) -> ::core::result::Result<(), $crate::store::StoreError> {
            $inner.ack(device, seqs)
        }
    };
    (@ $s:ident => $inner:expr; history) => {
        fn history(&$s, user: &str, conversation: &$crate::__proto::ConversationId, before: Option<u64>, limit: u32) -> ::core::result::Result<Option<Vec<$crate::__proto::frame::Deliver>>, $crate::store::StoreError> {
            $inner.history(user, conversation, before, limit)
        }
    };
    (@ $s:ident => $inner:expr; prune_history) => {
        fn prune_history(&$s, before_ms: u64) -> ::core::result::Result<u64, $crate::store::StoreError> {
            $inner.prune_history(before_ms)
        }
    };
    (@ $s:ident => $inner:expr; devices) => {
        fn devices(&$s, user: &str) -> ::core::result::Result<Vec<u32>, $crate::store::StoreError> {
            $inner.devices(user)
        }
    };
    (@ $s:ident => $inner:expr; remove_device) => {
        fn remove_device(&$s, device: &$crate::__proto::frame::Address) -> ::core::result::Result<bool, $crate::store::StoreError> {
            $inner.remove_device(device)
        }
    };
    (@ $s:ident => $inner:expr; put_link) => {
        fn put_link(&$s, user: &str, link_id: &[u8; 16], blob: &[u8], expires_ms: u64) -> ::core::result::Result<(), $crate::store::StoreError> {
            $inner.put_link(user, link_id, blob, expires_ms)
        }
    };
    (@ $s:ident => $inner:expr; take_link) => {
        fn take_link(&$s, user: &str, link_id: &[u8; 16], now_ms: u64) -> ::core::result::Result<Option<Vec<u8>>, $crate::store::StoreError> {
            $inner.take_link(user, link_id, now_ms)
        }
    };
    (@ $s:ident => $inner:expr; mfa) => {
        fn mfa(&$s, user: &str) -> ::core::result::Result<Option<$crate::store::MfaRecord>, $crate::store::StoreError> {
            $inner.mfa(user)
        }
    };
    (@ $s:ident => $inner:expr; mfa_begin) => {
        fn mfa_begin(&$s, user: &str, sealed_secret: &[u8]) -> ::core::result::Result<bool, $crate::store::StoreError> {
            $inner.mfa_begin(user, sealed_secret)
        }
    };
    (@ $s:ident => $inner:expr; mfa_enable) => {
        fn mfa_enable(&$s, user: &str, sealed_secret: &[u8], step: i64, recovery: &[[u8; 32]]) -> ::core::result::Result<bool, $crate::store::StoreError> {
            $inner.mfa_enable(user, sealed_secret, step, recovery)
        }
    };
    (@ $s:ident => $inner:expr; mfa_use_step) => {
        fn mfa_use_step(&$s, user: &str, step: i64) -> ::core::result::Result<bool, $crate::store::StoreError> {
            $inner.mfa_use_step(user, step)
        }
    };
    (@ $s:ident => $inner:expr; mfa_use_recovery) => {
        fn mfa_use_recovery(&$s, user: &str, hash: &[u8; 32]) -> ::core::result::Result<bool, $crate::store::StoreError> {
            $inner.mfa_use_recovery(user, hash)
        }
    };
    (@ $s:ident => $inner:expr; mfa_disable) => {
        fn mfa_disable(&$s, user: &str) -> ::core::result::Result<(), $crate::store::StoreError> {
            $inner.mfa_disable(user)
        }
    };
}
