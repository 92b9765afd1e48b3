//! The store test suite: every case runs against each backend (SQLite in
//! memory, SQLite on disk at durability `Full`, PostgreSQL in a schema of
//! its own), through the [`Store`] trait only.
//!
//! The PostgreSQL cases read the server's address from `CHATIFY_PG_URL`;
//! without it they say so and pass, except under CI (`CI` set), where a
//! missing database fails them.

use std::sync::{Arc, Barrier};

use chatify_proto::frame::Address;
use chatify_proto::{DeviceKeys, OneTimePrekey, SignedPrekey};

use super::{NewEnvelope, PgOptions, PgStore, Store, StoreError, TokenRecord};

fn addr(user: &str, device: u32) -> Address {
    Address {
        user: user.into(),
        device,
    }
}

fn envelope_to(to: &Address, sent_at_ms: u64) -> NewEnvelope {
    NewEnvelope {
        from: addr("alice", 1),
        to: to.clone(),
        conversation: [1; 16],
        message_id: [2; 16],
        sent_at_ms,
        envelope: vec![3; 10],
    }
}

fn identity(tag: u8) -> DeviceKeys {
    DeviceKeys {
        signing_key: [tag; 32],
        identity_key: [tag.wrapping_add(1); 32],
        identity_signature: [tag.wrapping_add(2); 64],
    }
}

fn spk() -> SignedPrekey {
    SignedPrekey {
        id: 1,
        public_key: [9; 32],
        signature: [8; 64],
    }
}

fn otks(ids: std::ops::Range<u32>) -> Vec<OneTimePrekey> {
    ids.map(|id| OneTimePrekey {
        id,
        public_key: [u8::try_from(id % 251).unwrap_or(0); 32],
    })
    .collect()
}

/// An account whose device 1 has published keys (and `n` one-time prekeys).
fn account(store: &dyn Store, user: &str, n: u32) -> Address {
    match store.create_user(user, "$argon2id$x") {
        Ok(()) | Err(StoreError::UserExists) => {}
        Err(e) => panic!("{e}"),
    }
    let device = addr(user, 1);
    store
        .publish_keys(&device, &identity(1), &spk(), &otks(0..n))
        .unwrap();
    device
}

/// Node `i` of a deployment's stores (round robin).
fn node(nodes: &[Arc<dyn Store>], i: usize) -> &Arc<dyn Store> {
    nodes
        .get(i % nodes.len().max(1))
        .expect("a deployment has a node")
}

fn first(nodes: &[Arc<dyn Store>]) -> &dyn Store {
    node(nodes, 0).as_ref()
}

fn seqs(items: &[chatify_proto::frame::Deliver]) -> Vec<u64> {
    items.iter().map(|d| d.seq).collect()
}

pub(super) fn accounts_are_unique_and_keep_their_hash(store: &dyn Store) {
    store.create_user("bob", "hash-1").unwrap();
    assert!(matches!(
        store.create_user("bob", "hash-2"),
        Err(StoreError::UserExists)
    ));
    assert_eq!(
        store.password_hash("bob").unwrap().as_deref(),
        Some("hash-1")
    );
    assert_eq!(store.password_hash("nobody").unwrap(), None);
}

pub(super) fn tokens_are_found_revoked_and_pruned(store: &dyn Store) {
    store.create_user("bob", "h").unwrap();
    let record = |device, expires_at| TokenRecord {
        user: "bob".into(),
        device,
        expires_at,
    };
    store.create_token(&[1; 32], &record(1, 100)).unwrap();
    store.create_token(&[2; 32], &record(1, 900)).unwrap();
    store.create_token(&[3; 32], &record(2, 900)).unwrap();
    assert_eq!(store.token(&[2; 32]).unwrap(), Some(record(1, 900)));
    assert_eq!(store.token(&[4; 32]).unwrap(), None);
    assert_eq!(store.prune_tokens(100).unwrap(), 1);
    assert_eq!(store.token(&[1; 32]).unwrap(), None);
    store.revoke_tokens(&addr("bob", 1)).unwrap();
    assert_eq!(store.token(&[2; 32]).unwrap(), None);
    assert_eq!(store.token(&[3; 32]).unwrap(), Some(record(2, 900)));
}

pub(super) fn publishing_keys_follows_the_directory_rules(store: &dyn Store) {
    store.create_user("bob", "h").unwrap();
    let bob = addr("bob", 1);
    assert_eq!(store.one_time_prekey_count(&bob).unwrap(), None);
    assert_eq!(
        store
            .publish_keys(&bob, &identity(1), &spk(), &otks(0..5))
            .unwrap(),
        5
    );
    // The same ids with the same keys: a retry.
    assert_eq!(
        store
            .publish_keys(&bob, &identity(1), &spk(), &otks(3..8))
            .unwrap(),
        8
    );
    // An id held with another key: refused, and nothing of the call kept.
    let mut bad = otks(8..10);
    bad.push(OneTimePrekey {
        id: 2,
        public_key: [0xee; 32],
    });
    assert!(matches!(
        store.publish_keys(&bob, &identity(1), &spk(), &bad),
        Err(StoreError::Refused(_))
    ));
    assert_eq!(store.one_time_prekey_count(&bob).unwrap(), Some(8));
    // More than a device may hold: refused as a whole.
    let max = u32::try_from(chatify_proto::limits::MAX_ONE_TIME_PREKEYS_HELD).unwrap_or(1000);
    assert!(matches!(
        store.publish_keys(&bob, &identity(1), &spk(), &otks(100..100 + max)),
        Err(StoreError::Refused(_))
    ));
    assert_eq!(store.one_time_prekey_count(&bob).unwrap(), Some(8));
    // A new identity discards the old identity's one-time prekeys.
    assert_eq!(
        store
            .publish_keys(&bob, &identity(7), &spk(), &otks(50..52))
            .unwrap(),
        2
    );
    let (bundle, remaining) = store.take_bundle(&bob).unwrap().unwrap();
    assert_eq!(bundle.identity.signing_key, identity(7).signing_key);
    assert_eq!(bundle.one_time_prekey.map(|k| k.id), Some(50));
    assert_eq!(remaining, 1);
}

pub(super) fn bundles_serve_each_one_time_prekey_once(store: &dyn Store) {
    let bob = account(store, "bob", 3);
    assert!(store.take_bundle(&addr("bob", 2)).unwrap().is_none());
    assert!(store.take_bundle(&addr("nobody", 1)).unwrap().is_none());
    let mut served = Vec::new();
    for left in [2, 1, 0] {
        let (bundle, remaining) = store.take_bundle(&bob).unwrap().unwrap();
        assert_eq!(remaining, left);
        served.push(bundle.one_time_prekey.unwrap().id);
    }
    assert_eq!(served, vec![0, 1, 2]);
    // Out of one-time prekeys: the bundle still serves, without one.
    let (bundle, remaining) = store.take_bundle(&bob).unwrap().unwrap();
    assert!(bundle.one_time_prekey.is_none());
    assert_eq!(remaining, 0);
    assert_eq!(bundle.signed_prekey, spk());
}

/// Fetches at once (on every node, on as many connections as each has)
/// never get the same one-time prekey, and none is lost.
pub(super) fn concurrent_fetches_never_share_a_one_time_prekey(nodes: Vec<Arc<dyn Store>>) {
    const KEYS: u32 = 200;
    const THREADS: usize = 8;
    let bob = account(first(&nodes), "bob", KEYS);
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let store = Arc::clone(node(&nodes, i));
            let (bob, start) = (bob.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let mut got = Vec::new();
                for _ in 0..40 {
                    let (bundle, _) = store.take_bundle(&bob).unwrap().unwrap();
                    got.extend(bundle.one_time_prekey.map(|k| k.id));
                }
                got
            })
        })
        .collect();
    let mut all: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a one-time prekey was served twice");
    assert_eq!(
        n, KEYS as usize,
        "320 fetches of 200 keys served {n} of them"
    );
}

pub(super) fn second_factors_are_confirmed_once_and_codes_used_once(store: &dyn Store) {
    account(store, "alice", 0);
    assert_eq!(store.mfa("alice").unwrap(), None);
    assert!(store.mfa_begin("alice", b"sealed-1").unwrap());
    assert!(
        store.mfa_begin("alice", b"sealed-2").unwrap(),
        "a pending one is replaced"
    );
    let pending = store.mfa("alice").unwrap().unwrap();
    assert!(!pending.enabled);
    assert_eq!(pending.sealed_secret, b"sealed-2");
    assert!(!store.mfa_use_step("alice", 10).unwrap(), "not on yet");
    assert!(
        !store.mfa_enable("alice", b"sealed-1", 100, &[]).unwrap(),
        "only the pending secret can be confirmed"
    );
    let codes = [[1u8; 32], [2u8; 32]];
    assert!(store.mfa_enable("alice", b"sealed-2", 100, &codes).unwrap());
    assert!(
        !store.mfa_enable("alice", b"sealed-2", 100, &codes).unwrap(),
        "once"
    );
    assert!(
        !store.mfa_begin("alice", b"sealed-3").unwrap(),
        "on: setup refused"
    );
    let on = store.mfa("alice").unwrap().unwrap();
    assert!(on.enabled && on.last_step == 100 && on.sealed_secret == b"sealed-2");
    assert!(
        !store.mfa_use_step("alice", 100).unwrap(),
        "the confirming code's step"
    );
    assert!(!store.mfa_use_step("alice", 99).unwrap(), "an earlier step");
    assert!(store.mfa_use_step("alice", 101).unwrap());
    assert!(!store.mfa_use_step("alice", 101).unwrap(), "replayed");
    assert!(store.mfa_use_recovery("alice", &[1u8; 32]).unwrap());
    assert!(
        !store.mfa_use_recovery("alice", &[1u8; 32]).unwrap(),
        "used up"
    );
    assert!(
        !store.mfa_use_recovery("alice", &[3u8; 32]).unwrap(),
        "never issued"
    );
    account(store, "bob", 0);
    assert!(
        !store.mfa_use_recovery("bob", &[2u8; 32]).unwrap(),
        "alice's code"
    );
    store.mfa_disable("alice").unwrap();
    assert_eq!(store.mfa("alice").unwrap(), None);
    assert!(
        !store.mfa_use_recovery("alice", &[2u8; 32]).unwrap(),
        "gone with it"
    );
    assert!(
        store.mfa_begin("alice", b"sealed-4").unwrap(),
        "set up again"
    );
}

pub(super) fn a_code_presented_at_several_nodes_at_once_is_accepted_once(
    nodes: Vec<Arc<dyn Store>>,
) {
    const THREADS: usize = 8;
    let store = first(&nodes);
    account(store, "alice", 0);
    assert!(store.mfa_begin("alice", b"sealed").unwrap());
    let recovery: Vec<[u8; 32]> = (0..THREADS as u8).map(|i| [i; 32]).collect();
    assert!(store.mfa_enable("alice", b"sealed", 0, &recovery).unwrap());
    for round in 1..=20i64 {
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let store = Arc::clone(node(&nodes, i));
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    let step = store.mfa_use_step("alice", round).unwrap();
                    let code = store.mfa_use_recovery("alice", &[0u8; 32]).unwrap();
                    (step, code)
                })
            })
            .collect();
        let results: Vec<(bool, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let steps = results.iter().filter(|r| r.0).count();
        assert_eq!(
            steps, 1,
            "round {round}: the step's code accepted {steps} times"
        );
        let codes = results.iter().filter(|r| r.1).count();
        assert_eq!(
            codes,
            usize::from(round == 1),
            "round {round}: a recovery code used {codes} times"
        );
    }
}

const PART: usize = chatify_proto::limits::BLOB_PART_LEN;

fn expiry(at: u64) -> crate::store::BlobExpiry {
    crate::store::BlobExpiry {
        idle_ms: at,
        complete_ms: at + 1000,
    }
}

/// A blob is written by its creator part by part in order only, read only
/// whole and only by its creator and the devices it was granted to, counts
/// against its account's quota until it is deleted, and is deleted when
/// the last hold is released or when it expires.
pub(super) fn blobs_are_written_in_order_read_when_granted_and_deleted_unheld(store: &dyn Store) {
    use crate::store::{BlobGrantOutcome as G, BlobInfo, BlobPutOutcome as P};
    let alice = account(store, "alice", 1);
    let bob = account(store, "bob", 2);
    let eve = account(store, "eve", 3);
    let alice2 = addr("alice", 2);
    let blobs = store.blobs();
    let size = (2 * PART + 7) as u64;
    assert!(
        blobs
            .blob_create(&alice, &[1; 16], size, 3 * size, 50)
            .unwrap()
    );
    assert!(
        blobs
            .blob_create(&alice2, &[2; 16], size, 3 * size, 50)
            .unwrap()
    );
    assert!(
        !blobs
            .blob_create(&alice, &[3; 16], size + 1, 3 * size, 50)
            .unwrap(),
        "the account's quota counts both devices' blobs"
    );
    assert_eq!(blobs.blob_usage("alice").unwrap(), 2 * size);
    let part = |i: u8, len: usize| vec![i; len];
    let at = |received: usize| BlobInfo {
        size,
        received: received as u64,
    };
    assert_eq!(
        blobs
            .blob_put(&alice, &[1; 16], 1, &part(1, PART), expiry(60))
            .unwrap(),
        P::Refused(at(0)),
        "not the next part"
    );
    assert_eq!(
        blobs
            .blob_put(&alice, &[1; 16], 0, &part(0, 7), expiry(60))
            .unwrap(),
        P::Refused(at(0)),
        "not the part's length"
    );
    assert_eq!(
        blobs
            .blob_put(&alice2, &[1; 16], 0, &part(0, PART), expiry(60))
            .unwrap(),
        P::NotFound,
        "another device of the same account"
    );
    assert_eq!(
        blobs
            .blob_put(&alice, &[1; 16], 0, &part(0, PART), expiry(60))
            .unwrap(),
        P::Stored(at(PART))
    );
    assert_eq!(
        blobs
            .blob_put(&alice, &[1; 16], 0, &part(9, PART), expiry(60))
            .unwrap(),
        P::Stored(at(PART)),
        "a part held already is acknowledged, not rewritten"
    );
    assert_eq!(
        blobs
            .blob_grant(&alice, &[1; 16], std::slice::from_ref(&bob))
            .unwrap(),
        G::Incomplete
    );
    assert_eq!(
        blobs.blob_part(&alice, &[1; 16], 0).unwrap(),
        None,
        "incomplete"
    );
    blobs
        .blob_put(&alice, &[1; 16], 1, &part(1, PART), expiry(60))
        .unwrap();
    assert_eq!(
        blobs
            .blob_put(&alice, &[1; 16], 2, &part(2, 7), expiry(60))
            .unwrap(),
        P::Stored(at(2 * PART + 7))
    );
    assert_eq!(blobs.blob_state(&bob, &[1; 16]).unwrap(), None);
    assert_eq!(
        blobs
            .blob_grant(&bob, &[1; 16], std::slice::from_ref(&bob))
            .unwrap(),
        G::NotFound
    );
    assert_eq!(
        blobs
            .blob_grant(&alice, &[1; 16], &[bob.clone(), bob.clone()])
            .unwrap(),
        G::Granted
    );
    assert_eq!(
        blobs.blob_state(&bob, &[1; 16]).unwrap(),
        Some(at(2 * PART + 7))
    );
    assert_eq!(
        blobs.blob_part(&bob, &[1; 16], 0).unwrap(),
        Some(part(0, PART))
    );
    assert_eq!(
        blobs.blob_part(&bob, &[1; 16], 2).unwrap(),
        Some(part(2, 7))
    );
    assert_eq!(blobs.blob_part(&bob, &[1; 16], 3).unwrap(), None);
    assert_eq!(
        blobs.blob_part(&eve, &[1; 16], 0).unwrap(),
        None,
        "not granted"
    );
    assert!(!blobs.blob_release(&eve, &[1; 16]).unwrap());
    assert!(blobs.blob_release(&alice, &[1; 16]).unwrap());
    assert_eq!(
        blobs.blob_part(&alice, &[1; 16], 0).unwrap(),
        None,
        "released"
    );
    assert_eq!(
        blobs.blob_part(&bob, &[1; 16], 0).unwrap(),
        Some(part(0, PART))
    );
    assert_eq!(blobs.blob_usage("alice").unwrap(), 2 * size, "held by bob");
    assert!(blobs.blob_release(&bob, &[1; 16]).unwrap());
    assert_eq!(
        blobs.blob_usage("alice").unwrap(),
        size,
        "deleted once unheld"
    );
    assert_eq!(blobs.blob_state(&bob, &[1; 16]).unwrap(), None);
    assert!(!blobs.blob_release(&bob, &[1; 16]).unwrap());
    // Expiry: the idle upload (expiring at 50) goes, a complete one stays
    // until its retention.
    assert!(blobs.blob_create(&bob, &[4; 16], 1, size, 50).unwrap());
    blobs.blob_put(&bob, &[4; 16], 0, &[4], expiry(60)).unwrap();
    assert_eq!(blobs.prune_blobs(51).unwrap(), 1);
    assert_eq!(blobs.blob_usage("alice").unwrap(), 0);
    assert_eq!(
        blobs.blob_state(&bob, &[4; 16]).unwrap(),
        Some(BlobInfo {
            size: 1,
            received: 1
        })
    );
    assert_eq!(blobs.prune_blobs(1061).unwrap(), 1);
    assert_eq!(blobs.blob_state(&bob, &[4; 16]).unwrap(), None);
}

/// A removed device's holds on blobs go with it: a blob only it held is
/// deleted, one another device holds stays.
pub(super) fn a_removed_device_releases_its_blobs(store: &dyn Store) {
    let alice = account(store, "alice", 1);
    let bob = account(store, "bob", 1);
    let carol = account(store, "carol", 1);
    let blobs = store.blobs();
    for id in [[1u8; 16], [2; 16]] {
        assert!(blobs.blob_create(&alice, &id, 1, 100, 50).unwrap());
        blobs.blob_put(&alice, &id, 0, &[7], expiry(60)).unwrap();
    }
    blobs
        .blob_grant(&alice, &[1; 16], std::slice::from_ref(&bob))
        .unwrap();
    blobs
        .blob_grant(&alice, &[2; 16], &[bob.clone(), carol.clone()])
        .unwrap();
    assert!(blobs.blob_release(&alice, &[1; 16]).unwrap());
    assert!(blobs.blob_release(&alice, &[2; 16]).unwrap());
    assert!(store.remove_device(&bob).unwrap());
    assert_eq!(blobs.blob_state(&bob, &[1; 16]).unwrap(), None);
    assert_eq!(
        blobs.blob_usage("alice").unwrap(),
        1,
        "only the one carol holds"
    );
    assert_eq!(blobs.blob_part(&carol, &[2; 16], 0).unwrap(), Some(vec![7]));
}

/// Nodes creating blobs for one account at once never take it past its quota.
pub(super) fn concurrent_blob_creations_keep_the_quota(nodes: Vec<Arc<dyn Store>>) {
    const THREADS: usize = 8;
    account(first(&nodes), "alice", 1);
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let store = Arc::clone(node(&nodes, i));
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                (0..5u8)
                    .filter(|j| {
                        let id = [i as u8 * 8 + j; 16];
                        store
                            .blobs()
                            .blob_create(&addr("alice", 1), &id, 10, 100, 50)
                            .unwrap()
                    })
                    .count()
            })
        })
        .collect();
    let made: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(made, 10);
    assert_eq!(first(&nodes).blobs().blob_usage("alice").unwrap(), 100);
}

pub(super) fn envelopes_for_a_device_without_keys_are_not_stored(store: &dyn Store) {
    let bob = addr("bob", 1);
    assert_eq!(store.enqueue(&envelope_to(&bob, 1_000)).unwrap(), None);
    account(store, "bob", 0);
    assert!(store.enqueue(&envelope_to(&bob, 1_000)).unwrap().is_some());
    assert_eq!(store.pending(&bob, 0, 10).unwrap().len(), 1);
}

/// A group message's copies (PROTOCOL §16.3): one per device, in the
/// order given, each in its device's mailbox, none for a device with no
/// keys.
pub(super) fn a_group_messages_copies_land_in_each_mailbox(store: &dyn Store) {
    let devices: Vec<Address> = ["bob", "carol", "dave"]
        .iter()
        .map(|u| account(store, u, 0))
        .collect();
    let mut copies: Vec<NewEnvelope> = devices.iter().map(|d| envelope_to(d, 5)).collect();
    copies.push(envelope_to(&addr("nobody", 1), 5));
    let stored = store.enqueue_many(&copies).unwrap();
    assert_eq!(stored.len(), 4);
    assert!(stored[3].is_none());
    let seqs: Vec<u64> = stored[..3].iter().map(|s| s.unwrap().seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for (d, seq) in devices.iter().zip(&seqs) {
        let mail = store.pending(d, 0, 10).unwrap();
        assert_eq!(mail.len(), 1);
        assert_eq!((mail[0].seq, mail[0].envelope.clone()), (*seq, vec![3; 10]));
    }
}

pub(super) fn the_mailbox_reads_in_order_after_a_cursor(store: &dyn Store) {
    let bob = account(store, "bob", 0);
    let carol = account(store, "carol", 0);
    let mut mine = Vec::new();
    for i in 0..10 {
        mine.push(store.enqueue(&envelope_to(&bob, i)).unwrap().unwrap());
        store.enqueue(&envelope_to(&carol, i)).unwrap().unwrap();
    }
    assert!(mine.windows(2).all(|w| w[0] < w[1]));
    for (after, limit) in [(0, 3), (mine[2], 3), (mine[5], 100), (mine[9], 5)] {
        let want: Vec<u64> = mine
            .iter()
            .copied()
            .filter(|&s| s > after)
            .take(limit as usize)
            .collect();
        assert_eq!(seqs(&store.pending(&bob, after, limit).unwrap()), want);
    }
    let first = &store.pending(&bob, 0, 1).unwrap()[0];
    assert_eq!(first.from, addr("alice", 1));
    assert_eq!(first.conversation, [1; 16]);
    assert_eq!(first.message_id, [2; 16]);
    assert_eq!(first.sent_at_ms, 0);
    assert_eq!(first.envelope, vec![3; 10]);
}

/// While stores for one device run at once (on every node, on several
/// connections each), a reader that always reads on from the last sequence
/// number it saw (as a connection pushing the mailbox does) still sees
/// every envelope: a device's mailbox grows in sequence order.
pub(super) fn a_reader_following_the_mailbox_misses_nothing(nodes: Vec<Arc<dyn Store>>) {
    const WRITERS: usize = 6;
    const EACH: u64 = 60;
    let store = Arc::clone(node(&nodes, 0));
    let bob = account(store.as_ref(), "bob", 0);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = Arc::clone(node(&nodes, i));
            let (bob, done) = (bob.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut stored = Vec::new();
                for i in 0..EACH {
                    stored.push(store.enqueue(&envelope_to(&bob, i)).unwrap().unwrap());
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                stored
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst) == WRITERS;
        let batch = store.pending(&bob, cursor, 16).unwrap();
        if let Some(last) = batch.last() {
            cursor = last.seq;
        }
        let empty = batch.is_empty();
        seen.extend(seqs(&batch));
        if finished && empty {
            break;
        }
    }
    let mut stored: Vec<u64> = writers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    stored.sort_unstable();
    assert_eq!(
        seen,
        stored,
        "the reader missed {} of {} envelopes",
        stored.len() - seen.len().min(stored.len()),
        stored.len()
    );
}

/// Stores and acknowledgements made at once (sharing transactions where
/// the store groups them) each get their own result: a store for a device
/// without keys stores nothing, an acknowledgement of another device's
/// envelope is refused without failing the rest, and every sequence number
/// returned is that job's envelope.
pub(super) fn concurrent_jobs_each_get_their_own_result(nodes: Vec<Arc<dyn Store>>) {
    const THREADS: usize = 24;
    let bob = account(first(&nodes), "bob", 0);
    let carol = account(first(&nodes), "carol", 0);
    let carols = first(&nodes)
        .enqueue(&envelope_to(&carol, 1))
        .unwrap()
        .unwrap();
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let store = Arc::clone(node(&nodes, i));
            let (bob, start) = (bob.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let mut e = envelope_to(&bob, 7);
                e.message_id = [u8::try_from(i).unwrap_or(0); 16];
                match i % 4 {
                    0 => {
                        e.to = addr("nobody", 1);
                        assert_eq!(store.enqueue(&e).unwrap(), None);
                        None
                    }
                    1 => {
                        assert!(matches!(
                            store.ack(&bob, &[carols]),
                            Err(StoreError::NotYours)
                        ));
                        None
                    }
                    _ => Some((store.enqueue(&e).unwrap().unwrap(), e.message_id)),
                }
            })
        })
        .collect();
    let mut stored: Vec<(u64, [u8; 16])> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    stored.sort_unstable();
    let pending: Vec<(u64, [u8; 16])> = first(&nodes)
        .pending(&bob, 0, 100)
        .unwrap()
        .iter()
        .map(|d| (d.seq, d.message_id))
        .collect();
    assert_eq!(pending, stored, "each seq is its own job's envelope");
    assert_eq!(stored.len(), THREADS / 2);
    assert_eq!(first(&nodes).pending(&carol, 0, 10).unwrap().len(), 1);
}

/// A store that links its envelopes ([`Store::enqueue_linked`] names the
/// one before) names, for each device, exactly the envelope stored for it
/// just before, however many stores race on however many nodes: the
/// chains have no gap and no fork. A store that does not link says so for
/// every envelope.
pub(super) fn linked_envelopes_chain_each_devices_mailbox(nodes: Vec<Arc<dyn Store>>) {
    const THREADS: usize = 30;
    const EACH: usize = 20;
    let devices: Vec<Address> = ["bob", "carol", "dave"]
        .iter()
        .map(|u| account(first(&nodes), u, 0))
        .collect();
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let store = Arc::clone(node(&nodes, i));
            let start = Arc::clone(&start);
            let devices = devices.clone();
            std::thread::spawn(move || {
                start.wait();
                (0..EACH)
                    .map(|k| {
                        let to = &devices[(i + k) % devices.len()];
                        let stored = store.enqueue_linked(&envelope_to(to, 1)).unwrap();
                        (to.clone(), stored.expect("the device has keys"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<(Address, super::Stored)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let linked = all.iter().filter(|(_, s)| s.prev.is_some()).count();
    if linked == 0 {
        return;
    }
    assert_eq!(linked, all.len(), "a store links every envelope or none");
    for device in &devices {
        let mut chain: Vec<super::Stored> = all
            .iter()
            .filter(|(to, _)| to == device)
            .map(|(_, s)| *s)
            .collect();
        chain.sort_unstable_by_key(|s| s.seq);
        let mut before = 0;
        for s in &chain {
            assert_eq!(s.prev, Some(before), "{device:?}: {s:?} after {before}");
            before = s.seq;
        }
        let mailbox = seqs(&first(&nodes).pending(device, 0, 1000).unwrap());
        let stored: Vec<u64> = chain.iter().map(|s| s.seq).collect();
        assert_eq!(mailbox, stored);
    }
    // A device removed and published again starts a new chain.
    let bob = &devices[0];
    first(&nodes).remove_device(bob).unwrap();
    account(first(&nodes), "bob", 0);
    let fresh = first(&nodes).enqueue_linked(&envelope_to(bob, 1)).unwrap();
    assert_eq!(fresh.and_then(|s| s.prev), Some(0));
}

/// An acknowledgement that names another device's envelope marks none of
/// its envelopes; acknowledging twice, or an unknown seq, is harmless.
pub(super) fn a_refused_acknowledgement_marks_nothing(store: &dyn Store) {
    let bob = account(store, "bob", 0);
    let carol = account(store, "carol", 0);
    let mine = store.enqueue(&envelope_to(&bob, 1)).unwrap().unwrap();
    let theirs = store.enqueue(&envelope_to(&carol, 2)).unwrap().unwrap();
    assert!(matches!(
        store.ack(&bob, &[mine, theirs]),
        Err(StoreError::NotYours)
    ));
    assert_eq!(store.pending(&bob, 0, 10).unwrap().len(), 1);
    store.ack(&bob, &[mine]).unwrap();
    store.ack(&bob, &[mine, 9_999_999]).unwrap();
    assert!(store.pending(&bob, 0, 10).unwrap().is_empty());
    assert_eq!(store.pending(&carol, 0, 10).unwrap().len(), 1);
}

pub(super) fn history_pages_newest_first_for_participants_only(store: &dyn Store) {
    let bob = account(store, "bob", 0);
    let all: Vec<u64> = (0..5)
        .map(|i| store.enqueue(&envelope_to(&bob, i)).unwrap().unwrap())
        .collect();
    store.ack(&bob, &all[..2]).unwrap();
    let page = store.history("bob", &[1; 16], None, 3).unwrap().unwrap();
    assert_eq!(seqs(&page), vec![all[4], all[3], all[2]]);
    let page = store
        .history("alice", &[1; 16], Some(all[2]), 10)
        .unwrap()
        .unwrap();
    assert_eq!(seqs(&page), vec![all[1], all[0]]);
    assert!(store.history("eve", &[1; 16], None, 10).unwrap().is_none());
    assert!(store.history("bob", &[9; 16], None, 10).unwrap().is_none());
    // A page stops before it outgrows a frame (at least one item).
    let mut big = envelope_to(&bob, 9);
    big.envelope = vec![4; chatify_proto::limits::MAX_FRAME_LEN / 3];
    for _ in 0..4 {
        store.enqueue(&big).unwrap().unwrap();
    }
    let page = store.history("bob", &[1; 16], None, 10).unwrap().unwrap();
    assert_eq!(page.len(), 2);
}

pub(super) fn pruning_removes_only_old_acknowledged_envelopes(store: &dyn Store) {
    let bob = account(store, "bob", 0);
    let old_acked = store.enqueue(&envelope_to(&bob, 1_000)).unwrap().unwrap();
    let old_pending = store.enqueue(&envelope_to(&bob, 1_000)).unwrap().unwrap();
    let new_acked = store.enqueue(&envelope_to(&bob, 9_000)).unwrap().unwrap();
    store.ack(&bob, &[old_acked, new_acked]).unwrap();
    assert_eq!(store.prune_history(5_000).unwrap(), 1);
    assert_eq!(
        seqs(&store.pending(&bob, 0, 10).unwrap()),
        vec![old_pending],
        "the mailbox is never pruned"
    );
    let history = store.history("bob", &[1; 16], None, 10).unwrap().unwrap();
    assert_eq!(seqs(&history), vec![new_acked, old_pending]);
}

/// A link is taken once, by its user only, before it expires; a wrong id
/// leaves it in place; a new one replaces the old.
pub(super) fn links_are_single_use_per_user_and_expire(store: &dyn Store) {
    account(store, "bob", 0);
    account(store, "eve", 0);
    store.put_link("bob", &[1; 16], b"old", 1_000).unwrap();
    store.put_link("bob", &[2; 16], b"sealed", 1_000).unwrap();
    assert_eq!(store.take_link("bob", &[1; 16], 10).unwrap(), None);
    assert_eq!(store.take_link("eve", &[2; 16], 10).unwrap(), None);
    assert_eq!(
        store.take_link("bob", &[2; 16], 10).unwrap().as_deref(),
        Some(&b"sealed"[..])
    );
    assert_eq!(store.take_link("bob", &[2; 16], 10).unwrap(), None);
    store.put_link("bob", &[3; 16], b"late", 1_000).unwrap();
    assert_eq!(store.take_link("bob", &[3; 16], 1_000).unwrap(), None);
}

/// A removed device is no longer listed, and its mailbox, prekeys and
/// tokens are gone.
pub(super) fn a_removed_device_is_gone_with_its_mailbox_and_tokens(store: &dyn Store) {
    let bob1 = account(store, "bob", 3);
    let bob2 = addr("bob", 2);
    store
        .publish_keys(&bob2, &identity(4), &spk(), &[])
        .unwrap();
    assert_eq!(store.devices("bob").unwrap(), vec![1, 2]);
    assert!(store.devices("nobody").unwrap().is_empty());
    store.enqueue(&envelope_to(&bob1, 1)).unwrap().unwrap();
    store.enqueue(&envelope_to(&bob2, 1)).unwrap().unwrap();
    let record = TokenRecord {
        user: "bob".into(),
        device: 1,
        expires_at: u64::MAX / 2,
    };
    store.create_token(&[7; 32], &record).unwrap();
    assert!(store.remove_device(&bob1).unwrap());
    assert!(!store.remove_device(&bob1).unwrap());
    assert_eq!(store.devices("bob").unwrap(), vec![2]);
    assert!(store.pending(&bob1, 0, 10).unwrap().is_empty());
    assert_eq!(store.pending(&bob2, 0, 10).unwrap().len(), 1);
    assert_eq!(store.token(&[7; 32]).unwrap(), None);
    assert_eq!(store.one_time_prekey_count(&bob1).unwrap(), None);
}

/// A PostgreSQL store in a schema of its own, dropped afterwards; `None`
/// (the case passes, saying why) when `CHATIFY_PG_URL` is not set outside CI.
pub(crate) fn postgres_store(pool_size: usize) -> Option<Scoped> {
    let Ok(url) = std::env::var("CHATIFY_PG_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CHATIFY_PG_URL is not set: the PostgreSQL store cases cannot run"
        );
        eprintln!("skipped: set CHATIFY_PG_URL to run the PostgreSQL store cases");
        return None;
    };
    let schema = format!("chatify_test_{:016x}", rand::random::<u64>());
    let store = PgStore::connect(
        &url,
        PgOptions {
            pool_size,
            schema: Some(schema),
            ..PgOptions::default()
        },
    )
    .expect("connect to CHATIFY_PG_URL");
    Some(Scoped(Arc::new(store)))
}

/// Three "nodes": stores on one PostgreSQL schema, each with its own pool
/// and its own group commit, as three servers have.
fn postgres_nodes(scoped: &Scoped, pool_size: usize) -> Vec<Arc<dyn Store>> {
    let url = std::env::var("CHATIFY_PG_URL").unwrap_or_default();
    let mut nodes: Vec<Arc<dyn Store>> = vec![scoped.0.clone()];
    for _ in 1..3 {
        nodes.push(Arc::new(
            PgStore::connect(
                &url,
                PgOptions {
                    pool_size,
                    schema: scoped.0.schema().map(str::to_owned),
                    ..PgOptions::default()
                },
            )
            .expect("connect to CHATIFY_PG_URL"),
        ));
    }
    nodes
}

/// A PostgreSQL store whose schema is dropped with it.
pub(crate) struct Scoped(pub(crate) Arc<PgStore>);

impl Drop for Scoped {
    fn drop(&mut self) {
        let _ = self.0.drop_schema();
    }
}

macro_rules! cases {
    (plain: [$($plain:ident),* $(,)?], shared: [$($shared:ident),* $(,)?]) => {
        mod sqlite_memory {
            $(#[test] fn $plain() {
                super::$plain(&crate::store::SqliteStore::in_memory().unwrap());
            })*
            $(#[test] fn $shared() {
                super::$shared(vec![std::sync::Arc::new(crate::store::SqliteStore::in_memory().unwrap())]);
            })*
        }
        mod sqlite_full {
            fn open() -> (tempfile::TempDir, crate::store::SqliteStore) {
                let dir = tempfile::tempdir().unwrap();
                let store = crate::store::SqliteStore::open(
                    &dir.path().join("chatify.db"),
                    crate::store::sqlite::Durability::Full,
                ).unwrap();
                (dir, store)
            }
            $(#[test] fn $plain() {
                let (_dir, store) = open();
                super::$plain(&store);
            })*
            $(#[test] fn $shared() {
                let (_dir, store) = open();
                super::$shared(vec![std::sync::Arc::new(store)]);
            })*
        }
        mod postgres {
            $(#[test] fn $plain() {
                if let Some(store) = super::postgres_store(2) {
                    super::$plain(store.0.as_ref());
                }
            })*
            $(#[test] fn $shared() {
                if let Some(store) = super::postgres_store(4) {
                    super::$shared(super::postgres_nodes(&store, 4));
                }
            })*
        }
    };
}

cases!(
    plain: [
        accounts_are_unique_and_keep_their_hash,
        tokens_are_found_revoked_and_pruned,
        publishing_keys_follows_the_directory_rules,
        bundles_serve_each_one_time_prekey_once,
        envelopes_for_a_device_without_keys_are_not_stored,
        a_group_messages_copies_land_in_each_mailbox,
        the_mailbox_reads_in_order_after_a_cursor,
        a_refused_acknowledgement_marks_nothing,
        history_pages_newest_first_for_participants_only,
        pruning_removes_only_old_acknowledged_envelopes,
        links_are_single_use_per_user_and_expire,
        a_removed_device_is_gone_with_its_mailbox_and_tokens,
        second_factors_are_confirmed_once_and_codes_used_once,
        blobs_are_written_in_order_read_when_granted_and_deleted_unheld,
        a_removed_device_releases_its_blobs,
    ],
    shared: [
        concurrent_fetches_never_share_a_one_time_prekey,
        a_reader_following_the_mailbox_misses_nothing,
        concurrent_jobs_each_get_their_own_result,
        linked_envelopes_chain_each_devices_mailbox,
        a_code_presented_at_several_nodes_at_once_is_accepted_once,
        concurrent_blob_creations_keep_the_quota,
    ]
);
