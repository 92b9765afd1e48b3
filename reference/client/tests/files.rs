//! Encrypted files end to end through the real server (PROTOCOL §15):
//! sent, saved under their name, deleted from the server once fetched;
//! uploads and downloads that resume, also across a restart; limits and
//! quotas; and a server that alters, drops, reorders, cuts or swaps a
//! blob's parts, caught every time with nothing saved under the name.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use chatify_client::{Client, ClientError, FileProgress};
use chatify_proto::ErrorCode;
use chatify_proto::content::FileRef;
use chatify_proto::frame::{Address, BlobId};
use chatify_proto::limits::BLOB_PART_LEN;
use chatify_server::Config;
use chatify_server::store::{
    BlobExpiry, BlobGrantOutcome, BlobInfo, BlobPutOutcome, Blobs, SqliteStore, Store, StoreError,
};

mod common;

use common::{config, next_message, server_with, user};

/// What the blob store below does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Fault {
    #[default]
    None,
    /// Fails every upload of a part from this index on (the server breaks
    /// down mid-upload).
    FailPutsFrom(u32),
    /// Fails every download of a part from this index on.
    FailGetsFrom(u32),
    /// Flips a bit of part 1.
    Flip,
    /// Serves part 2 for part 1 and part 1 for part 2.
    Reorder,
    /// Serves nothing past part 1 (the blob cut at a part boundary).
    Cut,
    /// Serves the first part only, a byte short.
    Short,
    /// Serves another blob's parts under the one asked for.
    Swap,
}

/// A blob store over SQLite that counts what it writes and serves, and
/// misbehaves as told.
struct Hostile {
    inner: SqliteStore,
    fault: Mutex<Fault>,
    puts_written: AtomicU32,
    parts_served: AtomicU32,
    other: Mutex<Option<(Address, BlobId)>>,
}

impl Hostile {
    fn new() -> Arc<Hostile> {
        Arc::new(Hostile {
            inner: SqliteStore::in_memory().unwrap(),
            fault: Mutex::default(),
            puts_written: AtomicU32::new(0),
            parts_served: AtomicU32::new(0),
            other: Mutex::default(),
        })
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }
}

fn broken() -> StoreError {
    StoreError::Database("disk on fire".into())
}

impl Store for Hostile {
    chatify_server::forward_store!(self => self.inner;
        create_user, password_hash, create_token, token, revoke_tokens, prune_tokens,
        publish_keys, take_bundle, one_time_prekey_count, fast_commits, fast_reads, enqueue,
        pending, ack, history, prune_history, devices, remove_device, put_link, take_link, mfa,
        mfa_begin, mfa_enable, mfa_use_step, mfa_use_recovery, mfa_disable);

    fn blobs(&self) -> &dyn Blobs {
        self
    }
}

impl Blobs for Hostile {
    fn blob_create(
        &self,
        owner: &Address,
        id: &BlobId,
        size: u64,
        quota: u64,
        expires_ms: u64,
    ) -> Result<bool, StoreError> {
        self.inner.blob_create(owner, id, size, quota, expires_ms)
    }

    fn blob_put(
        &self,
        owner: &Address,
        id: &BlobId,
        part: u32,
        data: &[u8],
        expiry: BlobExpiry,
    ) -> Result<BlobPutOutcome, StoreError> {
        if let Fault::FailPutsFrom(from) = self.fault()
            && part >= from
        {
            return Err(broken());
        }
        let before = self.inner.blob_state(owner, id)?;
        let outcome = self.inner.blob_put(owner, id, part, data, expiry)?;
        if matches!(outcome, BlobPutOutcome::Stored(after) if Some(after) != before) {
            self.puts_written.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    fn blob_state(&self, device: &Address, id: &BlobId) -> Result<Option<BlobInfo>, StoreError> {
        self.inner.blob_state(device, id)
    }

    fn blob_grant(
        &self,
        owner: &Address,
        id: &BlobId,
        to: &[Address],
    ) -> Result<BlobGrantOutcome, StoreError> {
        self.inner.blob_grant(owner, id, to)
    }

    fn blob_part(
        &self,
        device: &Address,
        id: &BlobId,
        part: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let real = |p: u32| self.inner.blob_part(device, id, p);
        let served = match self.fault() {
            Fault::FailGetsFrom(from) if part >= from => return Err(broken()),
            Fault::Flip if part == 1 => real(1)?.map(|mut d| {
                d[100] ^= 1;
                d
            }),
            Fault::Reorder if part == 1 => real(2)?,
            Fault::Reorder if part == 2 => real(1)?,
            Fault::Cut if part >= 1 => None,
            Fault::Short if part == 0 => real(0)?.map(|mut d| {
                d.pop();
                d
            }),
            Fault::Swap => {
                let (owner, other) = self.other.lock().unwrap().clone().unwrap();
                self.inner.blob_part(&owner, &other, part)?
            }
            _ => real(part)?,
        };
        self.parts_served.fetch_add(1, Ordering::Relaxed);
        Ok(served)
    }

    fn blob_release(&self, device: &Address, id: &BlobId) -> Result<bool, StoreError> {
        self.inner.blob_release(device, id)
    }

    fn blob_usage(&self, user: &str) -> Result<u64, StoreError> {
        self.inner.blob_usage(user)
    }

    fn prune_blobs(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.inner.prune_blobs(now_ms)
    }
}

/// Bytes that look like a file: a counter mixed so that no two 16-byte
/// windows repeat, with a canary at the start.
fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut out = b"CANARY-FILE-7f3a".to_vec();
    let mut x = u64::from(seed) + 1;
    while out.len() < len {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn quiet() -> impl FnMut(FileProgress) {
    |_| {}
}

async fn setup(
    config: Config,
) -> (
    tempfile::TempDir,
    Arc<Hostile>,
    chatify_server::Server,
    chatify_client::ConnectOptions,
    Client,
    Client,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = Hostile::new();
    let (server, options) = server_with(store.clone(), config).await;
    let alice = user(&options, &dir.path().join("alice"), "alice").await;
    let bob = user(&options, &dir.path().join("bob"), "bob").await;
    (dir, store, server, options, alice, bob)
}

/// Bob's next message, which must carry a file.
async fn next_file(bob: &mut Client) -> ([u8; 16], FileRef) {
    let m = next_message(bob).await;
    (m.message_id, *m.file.expect("a file"))
}

fn saved_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_file_travels_sealed_is_saved_under_its_name_and_leaves_the_server() {
    let (dir, store, _server, _options, mut alice, mut bob) = setup(config()).await;
    let downloads = dir.path().join("downloads");
    for (name, len) in [
        ("photo.png", 3 * BLOB_PART_LEN + 77),
        ("empty.txt", 0),
        ("photo.png", 65_536),
    ] {
        let path = dir.path().join("out").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = content(len, len as u8);
        std::fs::write(&path, &bytes).unwrap();
        let mut seen = Vec::new();
        alice
            .send_file("bob", &path, "look", &mut |p| seen.push(p))
            .await
            .unwrap();
        let last = seen.last().unwrap();
        assert_eq!(last.done, last.total, "progress ends at the whole blob");
        assert_eq!(
            store.blob_usage("alice").unwrap(),
            last.total,
            "held for bob"
        );
        let m = next_message(&mut bob).await;
        assert_eq!(m.text, b"look");
        let file = *m.file.clone().unwrap();
        assert_eq!((file.name.as_str(), file.size), (name, len as u64));
        // Alice's hold is gone once the message is sent; bob's remains.
        let blob = (0..=(len / BLOB_PART_LEN) as u32)
            .filter_map(|p| store.inner.blob_part(&m.from, &file.blob, p).unwrap())
            .flatten()
            .collect::<Vec<u8>>();
        assert!(blob.is_empty(), "alice released her hold");
        let saved = bob
            .save_file(&m.message_id, &file, &downloads, &mut quiet())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&saved.path).unwrap(), bytes);
        assert_eq!(
            store.blob_usage("alice").unwrap(),
            0,
            "deleted once fetched"
        );
    }
    assert_eq!(
        saved_names(&downloads),
        ["empty.txt", "photo (2).png", "photo.png"],
        "no file replaced, no partial file left"
    );
    assert!(bob.unsaved_files().unwrap().is_empty());
}

#[tokio::test]
async fn the_server_never_holds_a_files_plaintext() {
    let (dir, store, _server, _options, mut alice, mut bob) = setup(config()).await;
    let path = dir.path().join("secret.bin");
    let bytes = content(2 * BLOB_PART_LEN, 9);
    std::fs::write(&path, &bytes).unwrap();
    alice
        .send_file("bob", &path, "", &mut quiet())
        .await
        .unwrap();
    let (_, file) = next_file(&mut bob).await;
    let bob_addr = common::addr("bob", 1);
    let mut blob = Vec::new();
    for p in 0.. {
        match store.inner.blob_part(&bob_addr, &file.blob, p).unwrap() {
            Some(d) => blob.extend_from_slice(&d),
            None => break,
        }
    }
    assert_eq!(
        blob.len() as u64,
        chatify_core::file::sealed_len(bytes.len() as u64)
    );
    let canary = b"CANARY-FILE-7f3a";
    assert!(!blob.windows(canary.len()).any(|w| w == canary));
    assert!(
        !blob
            .windows(32)
            .any(|w| bytes.windows(32).take(4096).any(|b| b == w))
    );
    // The mutant: a blob that holds the plaintext is caught by the same check.
    assert!(bytes.windows(canary.len()).any(|w| w == canary));
}

#[tokio::test]
async fn an_interrupted_upload_resumes_after_a_restart_without_sending_parts_twice() {
    let (dir, store, _server, options, mut alice, mut bob) = setup(config()).await;
    let path = dir.path().join("big.bin");
    let bytes = content(5 * BLOB_PART_LEN + 3, 4);
    std::fs::write(&path, &bytes).unwrap();
    store.set(Fault::FailPutsFrom(2));
    let err = alice
        .send_file("bob", &path, "", &mut quiet())
        .await
        .unwrap_err();
    assert!(
        chatify_client::connection::is_code(&err, ErrorCode::Internal),
        "{err}"
    );
    assert_eq!(store.puts_written.load(Ordering::Relaxed), 2);
    alice.close().await;
    store.set(Fault::None);
    let mut alice = Client::resume(&dir.path().join("alice"), &common::pass(), Some(&options))
        .await
        .unwrap();
    alice
        .send_file("bob", &path, "", &mut quiet())
        .await
        .unwrap();
    assert_eq!(sealed_parts(bytes.len()), 6);
    assert_eq!(
        store.puts_written.load(Ordering::Relaxed),
        6,
        "resumed after the two parts held: each part written once"
    );
    let (id, file) = next_file(&mut bob).await;
    let saved = bob
        .save_file(&id, &file, &dir.path().join("in"), &mut quiet())
        .await
        .unwrap();
    assert_eq!(std::fs::read(saved.path).unwrap(), bytes);
}

#[tokio::test]
async fn an_interrupted_download_resumes_from_what_is_on_disk() {
    let (dir, store, _server, options, mut alice, mut bob) = setup(config()).await;
    let path = dir.path().join("big.bin");
    let bytes = content(4 * BLOB_PART_LEN, 5);
    std::fs::write(&path, &bytes).unwrap();
    alice
        .send_file("bob", &path, "", &mut quiet())
        .await
        .unwrap();
    let _ = next_file(&mut bob).await;
    store.set(Fault::FailGetsFrom(3));
    let into = dir.path().join("in");
    let pending = bob.unsaved_files().unwrap();
    assert_eq!(pending.len(), 1);
    let file = pending[0].file.clone().unwrap();
    let err = bob
        .save_file(&pending[0].message_id, &file, &into, &mut quiet())
        .await
        .unwrap_err();
    assert!(
        chatify_client::connection::is_code(&err, ErrorCode::Internal),
        "{err}"
    );
    assert!(!into.join("big.bin").exists());
    bob.close().await;
    store.set(Fault::None);
    let served = store.parts_served.load(Ordering::Relaxed);
    let mut bob = Client::resume(&dir.path().join("bob"), &common::pass(), Some(&options))
        .await
        .unwrap();
    let pending = bob.unsaved_files().unwrap();
    assert_eq!(pending.len(), 1, "still to save after the restart");
    let saved = bob
        .save_file(&pending[0].message_id, &file, &into, &mut quiet())
        .await
        .unwrap();
    assert_eq!(std::fs::read(saved.path).unwrap(), bytes);
    let parts = sealed_parts(bytes.len());
    assert_eq!(
        store.parts_served.load(Ordering::Relaxed) - served,
        parts - 3,
        "only the parts not on disk"
    );
    assert!(bob.unsaved_files().unwrap().is_empty());
    assert_eq!(saved_names(&into), ["big.bin"]);
}

fn sealed_parts(len: usize) -> u32 {
    chatify_core::file::sealed_len(len as u64).div_ceil(BLOB_PART_LEN as u64) as u32
}

#[tokio::test]
async fn a_blob_the_server_altered_is_never_saved() {
    let (dir, store, _server, _options, mut alice, mut bob) = setup(config()).await;
    let path = dir.path().join("doc.pdf");
    std::fs::write(&path, content(3 * BLOB_PART_LEN + 10, 6)).unwrap();
    let decoy = dir.path().join("decoy.pdf");
    std::fs::write(&decoy, content(3 * BLOB_PART_LEN + 10, 7)).unwrap();
    // A decoy of the same size, held by bob, for the swap.
    alice
        .send_file("bob", &decoy, "", &mut quiet())
        .await
        .unwrap();
    let (_, decoy_file) = next_file(&mut bob).await;
    *store.other.lock().unwrap() = Some((common::addr("bob", 1), decoy_file.blob));
    for fault in [
        Fault::Flip,
        Fault::Reorder,
        Fault::Cut,
        Fault::Short,
        Fault::Swap,
    ] {
        store.set(Fault::None);
        alice
            .send_file("bob", &path, "", &mut quiet())
            .await
            .unwrap();
        let (id, file) = next_file(&mut bob).await;
        store.set(fault);
        let into = dir.path().join(format!("{fault:?}"));
        let result = bob.save_file(&id, &file, &into, &mut quiet()).await;
        match (fault, result) {
            (Fault::Cut, Err(e)) => {
                assert!(
                    chatify_client::connection::is_code(&e, ErrorCode::NotFound),
                    "{e}"
                );
            }
            (_, Err(ClientError::File(_))) => {}
            (_, other) => panic!("{fault:?}: {other:?}"),
        }
        assert_eq!(saved_names(&into), Vec::<String>::new(), "{fault:?}");
        store.set(Fault::None);
        assert_eq!(
            store
                .blob_state(&common::addr("bob", 1), &file.blob)
                .unwrap(),
            None,
            "{fault:?}: released, not tried again"
        );
    }
    assert!(bob.unsaved_files().unwrap().len() == 1, "only the decoy");
}

#[tokio::test]
async fn sizes_quotas_and_access_are_enforced_with_clear_errors() {
    let limits = Config {
        max_blob_size: 4 * BLOB_PART_LEN as u64,
        blob_quota: 6 * BLOB_PART_LEN as u64,
        ..config()
    };
    let (dir, store, _server, options, mut alice, mut bob) = setup(limits).await;
    let eve = user(&options, &dir.path().join("eve"), "eve").await;
    let big = dir.path().join("big.bin");
    std::fs::write(&big, content(4 * BLOB_PART_LEN, 1)).unwrap();
    let err = alice
        .send_file("bob", &big, "", &mut quiet())
        .await
        .unwrap_err();
    assert!(
        chatify_client::connection::is_code(&err, ErrorCode::TooLarge),
        "{err}"
    );
    let three = dir.path().join("three.bin");
    std::fs::write(&three, content(3 * BLOB_PART_LEN, 2)).unwrap();
    alice
        .send_file("bob", &three, "", &mut quiet())
        .await
        .unwrap();
    let err = alice
        .send_file("bob", &three, "", &mut quiet())
        .await
        .unwrap_err();
    assert!(
        chatify_client::connection::is_code(&err, ErrorCode::QuotaExceeded),
        "{err}"
    );
    let (id, file) = next_file(&mut bob).await;
    // Eve knows the blob's name (say it leaked): the server still refuses her.
    let conn = eve.connection();
    for body in [
        chatify_proto::Body::from(chatify_proto::frame::BlobGet {
            blob: file.blob,
            part: 0,
        }),
        chatify_proto::frame::BlobStatus { blob: file.blob }.into(),
        chatify_proto::frame::BlobRelease { blob: file.blob }.into(),
        chatify_proto::frame::BlobGrant {
            blob: file.blob,
            to: vec![common::addr("eve", 1)],
        }
        .into(),
    ] {
        let err = conn.request(body).await.unwrap_err();
        assert!(
            chatify_client::connection::is_code(&err, ErrorCode::NotFound),
            "{err}"
        );
    }
    bob.save_file(&id, &file, &dir.path().join("in"), &mut quiet())
        .await
        .unwrap();
    assert_eq!(store.blob_usage("alice").unwrap(), 0, "the quota is freed");
    alice
        .send_file("bob", &three, "", &mut quiet())
        .await
        .unwrap();
    let err = alice
        .send_file("bob", &dir.path().join("missing.bin"), "", &mut quiet())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Io { .. }), "{err}");
}

/// Several nodes: a file uploaded through one node is granted, announced
/// and fetched through another (blobs live in the shared PostgreSQL
/// store). Needs `CHATIFY_PG_URL` and `CHATIFY_NATS_URL`; without them it
/// says so and passes, except under CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_through_one_node_is_saved_through_another() {
    let Some(nodes) = common::two_nodes("files").await else {
        return;
    };
    let (at_one, at_two) = (&nodes.options[0], &nodes.options[1]);
    let store = nodes.store.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut alice = user(at_one, &dir.path().join("alice"), "alice").await;
    let mut bob = user(at_two, &dir.path().join("bob"), "bob").await;
    let path = dir.path().join("across.bin");
    let bytes = content(3 * BLOB_PART_LEN + 5, 3);
    std::fs::write(&path, &bytes).unwrap();
    alice
        .send_file("bob", &path, "via node one", &mut quiet())
        .await
        .unwrap();
    let (id, file) = next_file(&mut bob).await;
    let saved = bob
        .save_file(&id, &file, &dir.path().join("in"), &mut quiet())
        .await
        .unwrap();
    assert_eq!(std::fs::read(saved.path).unwrap(), bytes);
    let usage = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.blobs().blob_usage("alice").unwrap())
            .await
            .unwrap()
    };
    assert_eq!(usage, 0, "deleted once fetched");
    alice.close().await;
    bob.close().await;
    nodes.finish().await;
}
