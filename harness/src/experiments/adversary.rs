//! The malicious server: the real server over an adversarial store.
//!
//! ```text
//!  reference clients ──ws──▶ chatify-server (unchanged) ──▶ AdversaryStore ──▶ SQLite
//!                                                          │ tampers, replays, drops,
//!                                                          │ reorders, redirects, forges,
//!                                                          │ substitutes keys, withholds
//!                                                          ▼ bundles
//!  per attack: honest setup ─▶ armed phase ─▶ clients' events ─▶ checks ─▶ verdicts
//! ```
//!
//! Everything a server knows passes through its store: what it relays, what
//! it redelivers after a reconnect or a restart, and the key directory. An
//! adversarial store therefore plays every attack a malicious server can
//! make on ciphertext, metadata and keys, while the server's protocol code
//! stays the real one. Each attack runs against fresh accounts; its checks
//! are the same everywhere: nothing forged, altered, replayed or
//! misattributed is shown as genuine, the client's expected reaction
//! happens, and the next honest message still gets through.

use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatify_client::{Client, ClientError, ConnectOptions, Event};
use chatify_core::{Device, Session, VerifiedBundle};
use chatify_proto::frame::{Address, BlobId};
use chatify_proto::limits::BLOB_PART_LEN;
use chatify_proto::{DeviceKeys, Envelope, PrekeyBundle, SignedPrekey};
use chatify_server::store::{
    BlobExpiry, BlobGrantOutcome, BlobInfo, BlobPutOutcome, Blobs, NewEnvelope, SqliteStore, Store,
    StoreError,
};
use chatify_server::{Config, Server};

use crate::load::home_passphrase;
use crate::report;
use crate::report::adversary::AttackRow;
use crate::topology::CHEAP_ARGON2;

mod groups;

/// One attack of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Attack {
    FlipCiphertext,
    FlipTag,
    FlipHeaderCounter,
    FlipRatchetKey,
    FlipConversation,
    RelabelConversation,
    ReplayAtOnce,
    ReplayAfterReconnect,
    ReplayAfterRestart,
    Drop,
    Reorder,
    RedirectRecipient,
    ForgeSender,
    HugeCounter,
    BundleBadSignature,
    BundleLowOrderKey,
    KeySubstitution,
    PersistentKeySubstitution,
    GhostDevice,
    WithheldPrekeyReplayedSetup,
    Downgrade,
    IdReuse,
    WithheldThenReleased,
    PrekeyServedTwice,
    DatabaseRollback,
    FileChunkFlipped,
    FilePartsReordered,
    FileChunkDropped,
    FileTruncated,
    FileBlobSwapped,
    GroupForgedSender,
    GroupReplayed,
    GroupToRemovedMember,
    GroupGhostDevice,
    GroupChangeForged,
}

pub(crate) const ALL: &[Attack] = &[
    Attack::FlipCiphertext,
    Attack::FlipTag,
    Attack::FlipHeaderCounter,
    Attack::FlipRatchetKey,
    Attack::FlipConversation,
    Attack::RelabelConversation,
    Attack::ReplayAtOnce,
    Attack::ReplayAfterReconnect,
    Attack::ReplayAfterRestart,
    Attack::Drop,
    Attack::Reorder,
    Attack::RedirectRecipient,
    Attack::ForgeSender,
    Attack::HugeCounter,
    Attack::BundleBadSignature,
    Attack::BundleLowOrderKey,
    Attack::KeySubstitution,
    Attack::PersistentKeySubstitution,
    Attack::GhostDevice,
    Attack::WithheldPrekeyReplayedSetup,
    Attack::Downgrade,
    Attack::IdReuse,
    Attack::WithheldThenReleased,
    Attack::PrekeyServedTwice,
    Attack::DatabaseRollback,
    Attack::FileChunkFlipped,
    Attack::FilePartsReordered,
    Attack::FileChunkDropped,
    Attack::FileTruncated,
    Attack::FileBlobSwapped,
    Attack::GroupForgedSender,
    Attack::GroupReplayed,
    Attack::GroupToRemovedMember,
    Attack::GroupGhostDevice,
    Attack::GroupChangeForged,
];

/// What the client is expected to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Expect {
    /// The envelope is rejected (an `Event::Rejected`).
    Rejected,
    /// Nothing is shown for it, the rest arrives intact, the recipient is
    /// told that a message from the sender is missing, and the sender that
    /// it was not delivered.
    ReportedBothWays,
    /// The recipient cannot open it and rejects it, asks for it again, and
    /// the sender sends it again: it is shown once, and the sender is told.
    Resent,
    /// The genuine messages arrive, out of order, each once, the late one
    /// flagged as late.
    Reordered,
    /// The held message is reported missing while held, then shown once,
    /// flagged as late.
    ReportedLate,
    /// Sending fails with an error; nothing leaves the client.
    SendRefused,
    /// The message is shown flagged as from a changed identity, and sending
    /// to that peer is blocked until the user confirms the new number.
    KeyChangeAlert,
    /// The message that sends a file is shown (it is genuine), but the file
    /// is not saved: saving it fails, and nothing appears under its name.
    FileRefused,
    /// The group message is shown to the genuine member, and nothing (no
    /// key, no copy) is sent to the device the server made.
    NothingToGhost,
}

impl Attack {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Attack::FlipCiphertext => "flip-ciphertext",
            Attack::FlipTag => "flip-tag",
            Attack::FlipHeaderCounter => "flip-header-counter",
            Attack::FlipRatchetKey => "flip-ratchet-key",
            Attack::FlipConversation => "flip-conversation",
            Attack::RelabelConversation => "relabel-conversation",
            Attack::ReplayAtOnce => "replay-at-once",
            Attack::ReplayAfterReconnect => "replay-after-reconnect",
            Attack::ReplayAfterRestart => "replay-after-restart",
            Attack::Drop => "drop",
            Attack::Reorder => "reorder",
            Attack::RedirectRecipient => "redirect-recipient",
            Attack::ForgeSender => "forge-sender",
            Attack::HugeCounter => "huge-counter",
            Attack::BundleBadSignature => "bundle-bad-signature",
            Attack::BundleLowOrderKey => "bundle-low-order-key",
            Attack::KeySubstitution => "key-substitution",
            Attack::PersistentKeySubstitution => "persistent-key-substitution",
            Attack::GhostDevice => "ghost-device",
            Attack::WithheldPrekeyReplayedSetup => "withheld-prekey-replayed-setup",
            Attack::Downgrade => "downgrade",
            Attack::IdReuse => "id-reuse",
            Attack::WithheldThenReleased => "withheld-then-released",
            Attack::PrekeyServedTwice => "prekey-served-twice",
            Attack::DatabaseRollback => "database-rollback",
            Attack::FileChunkFlipped => "file-chunk-flipped",
            Attack::FilePartsReordered => "file-parts-reordered",
            Attack::FileChunkDropped => "file-chunk-dropped",
            Attack::FileTruncated => "file-truncated",
            Attack::FileBlobSwapped => "file-blob-swapped",
            Attack::GroupForgedSender => "group-forged-sender",
            Attack::GroupReplayed => "group-replayed",
            Attack::GroupToRemovedMember => "group-to-removed-member",
            Attack::GroupGhostDevice => "group-ghost-device",
            Attack::GroupChangeForged => "group-change-forged",
        }
    }

    pub(crate) fn description(self) -> &'static str {
        match self {
            Attack::FlipCiphertext => "one bit of the ciphertext flipped",
            Attack::FlipTag => "one bit of the AEAD tag flipped",
            Attack::FlipHeaderCounter => "the ratchet header's counter changed (AD-bound)",
            Attack::FlipRatchetKey => "one bit of the header's ratchet key flipped",
            Attack::FlipConversation => "the envelope's conversation id changed (AD-bound)",
            Attack::RelabelConversation => {
                "the server's conversation label changed, envelope intact"
            }
            Attack::ReplayAtOnce => "an envelope relayed again under a fresh message id",
            Attack::ReplayAfterReconnect => {
                "an accepted envelope replayed after the recipient reconnects"
            }
            Attack::ReplayAfterRestart => "an accepted envelope replayed after a server restart",
            Attack::Drop => "an envelope acknowledged to the sender and never delivered",
            Attack::Reorder => "two envelopes delivered in swapped order",
            Attack::RedirectRecipient => "Alice's envelope for Bob delivered to Carol",
            Attack::ForgeSender => "Alice's envelope for Bob delivered as from Carol",
            Attack::HugeCounter => "a counter of 4 000 000 announced (skipped-key exhaustion)",
            Attack::BundleBadSignature => {
                "the bundle's signed prekey replaced (signature no longer verifies)"
            }
            Attack::BundleLowOrderKey => {
                "Bob's bundle replaced by the server's own, with a low-order signed prekey"
            }
            Attack::KeySubstitution => {
                "a session set up by the server with its own identity, delivered as from Alice"
            }
            Attack::PersistentKeySubstitution => {
                "as key-substitution, with three messages on the server's session"
            }
            Attack::GhostDevice => {
                "a device alice:2 made by the server, with its own identity, writes to Bob three times"
            }
            Attack::WithheldPrekeyReplayedSetup => {
                "one-time prekeys withheld, then Alice's setup message replayed"
            }
            Attack::Downgrade => "the key directory says Bob has no keys (no E2EE)",
            Attack::IdReuse => {
                "a new envelope delivered under the message id of one already delivered"
            }
            Attack::WithheldThenReleased => {
                "an envelope held back while the next is delivered, released later"
            }
            Attack::PrekeyServedTwice => {
                "Bob's bundle, one-time prekey included, served to Erin and then to Frank"
            }
            Attack::DatabaseRollback => {
                "the database restored from a copy older than one acknowledged envelope: \
                 it is lost, and one already delivered comes back"
            }
            Attack::FileChunkFlipped => "one bit of an encrypted file's blob flipped",
            Attack::FilePartsReordered => "an encrypted file's first two blob parts swapped",
            Attack::FileChunkDropped => {
                "an encrypted file's second chunk cut out of its blob, the rest served in place"
            }
            Attack::FileTruncated => "an encrypted file's blob served up to its last part only",
            Attack::FileBlobSwapped => {
                "another file's blob, of the same size and also granted to Bob, served in its place"
            }
            Attack::GroupForgedSender => {
                "Carol's group message delivered to Bob as from Alice (a member whose key Bob holds)"
            }
            Attack::GroupReplayed => "a group message relayed again under a fresh message id",
            Attack::GroupToRemovedMember => {
                "a group message sent after Carol's removal delivered to her anyway"
            }
            Attack::GroupGhostDevice => {
                "a device of the server's own published for Bob before Alice sends to the group"
            }
            Attack::GroupChangeForged => {
                "the server adds Erin to the group: a signed Add pushed to Bob from a device of Alice's it made"
            }
        }
    }

    /// What the rejection must say (a substring of the client's reason).
    pub(crate) fn reason(self) -> Option<&'static str> {
        match self {
            Attack::FlipCiphertext
            | Attack::FlipTag
            | Attack::FlipHeaderCounter
            | Attack::FlipRatchetKey => Some("decryption failed"),
            Attack::FlipConversation
            | Attack::RelabelConversation
            | Attack::RedirectRecipient
            | Attack::ForgeSender => Some("conversation does not match"),
            Attack::ReplayAtOnce
            | Attack::ReplayAfterReconnect
            | Attack::ReplayAfterRestart
            | Attack::WithheldPrekeyReplayedSetup => Some("duplicate or replayed"),
            Attack::HugeCounter => Some("too far ahead"),
            Attack::BundleBadSignature => Some("bad signature"),
            Attack::BundleLowOrderKey => Some("non-contributory"),
            Attack::Downgrade => Some("no such device"),
            Attack::IdReuse => Some("message id does not match"),
            Attack::PrekeyServedTwice => Some("unknown prekey"),
            Attack::WithheldThenReleased | Attack::DatabaseRollback => None,
            Attack::GroupForgedSender => Some("decryption failed"),
            Attack::GroupReplayed => Some("duplicate or replayed"),
            Attack::GroupToRemovedMember => Some("no longer in"),
            Attack::GroupChangeForged => Some("not confirmed"),
            Attack::GroupGhostDevice => None,
            Attack::FileChunkFlipped
            | Attack::FilePartsReordered
            | Attack::FileChunkDropped
            | Attack::FileTruncated
            | Attack::FileBlobSwapped => None,
            Attack::Drop
            | Attack::Reorder
            | Attack::KeySubstitution
            | Attack::PersistentKeySubstitution
            | Attack::GhostDevice => None,
        }
    }

    /// Whether the attack is on an encrypted file's blob.
    pub(crate) fn on_files(self) -> bool {
        matches!(
            self,
            Attack::FileChunkFlipped
                | Attack::FilePartsReordered
                | Attack::FileChunkDropped
                | Attack::FileTruncated
                | Attack::FileBlobSwapped
        )
    }

    /// Whether the attack is on a group.
    pub(crate) fn on_groups(self) -> bool {
        matches!(
            self,
            Attack::GroupForgedSender
                | Attack::GroupReplayed
                | Attack::GroupToRemovedMember
                | Attack::GroupGhostDevice
                | Attack::GroupChangeForged
        )
    }

    pub(crate) fn expect(self) -> Expect {
        match self {
            Attack::Drop | Attack::DatabaseRollback => Expect::ReportedBothWays,
            Attack::PrekeyServedTwice => Expect::Resent,
            Attack::Reorder => Expect::Reordered,
            Attack::WithheldThenReleased => Expect::ReportedLate,
            Attack::BundleBadSignature | Attack::BundleLowOrderKey | Attack::Downgrade => {
                Expect::SendRefused
            }
            Attack::KeySubstitution | Attack::PersistentKeySubstitution | Attack::GhostDevice => {
                Expect::KeyChangeAlert
            }
            a if a.on_files() => Expect::FileRefused,
            Attack::GroupGhostDevice => Expect::NothingToGhost,
            _ => Expect::Rejected,
        }
    }
}

// ---------------------------------------------------------------------------
// The adversarial store.

/// What the armed adversary does, and what it captured.
#[derive(Default)]
struct AdvState {
    attack: Option<Attack>,
    /// Whose envelopes to Bob are attacked.
    from: String,
    /// Envelopes from `from` to `to` seen while armed.
    seen: usize,
    held: Option<NewEnvelope>,
    captured: Vec<NewEnvelope>,
    /// Bundles handed out while armed.
    bundles: usize,
    /// Bob's bundle as first handed out while armed (to hand it out again).
    served: Option<(PrekeyBundle, u32)>,
    /// Blobs created while armed, in order (the last is the target).
    blobs: Vec<BlobId>,
}

/// The real SQLite store, with an adversary in front of it.
pub(crate) struct AdversaryStore {
    inner: SqliteStore,
    state: Mutex<AdvState>,
    /// The server's own device, for key substitution.
    mallory: Mutex<Device>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fresh_id(id: &[u8; 16]) -> [u8; 16] {
    let mut out = *id;
    out[0] ^= 0xa5;
    out[15] ^= 0x5a;
    out
}

fn reencode(bytes: &[u8], f: impl FnOnce(&mut Envelope)) -> Vec<u8> {
    match Envelope::decode(bytes) {
        Ok(mut env) => {
            f(&mut env);
            env.encode()
        }
        Err(_) => bytes.to_vec(),
    }
}

fn addr(user: &str) -> Address {
    Address {
        user: user.into(),
        device: 1,
    }
}

impl AdversaryStore {
    fn new() -> Result<Self> {
        Ok(AdversaryStore {
            inner: SqliteStore::in_memory()?,
            state: Mutex::default(),
            mallory: Mutex::new(Device::generate(&mut rand::rng())),
        })
    }

    fn arm(&self, attack: Attack, from: &str) {
        *lock(&self.state) = AdvState {
            attack: Some(attack),
            from: from.into(),
            ..AdvState::default()
        };
    }

    /// Stores the envelope the adversary held back.
    fn release_held(&self) -> Result<()> {
        let held = lock(&self.state).held.take().context("nothing held")?;
        self.inner.enqueue(&held)?;
        Ok(())
    }

    fn captured(&self) -> usize {
        lock(&self.state).captured.len()
    }

    fn disarm(&self) -> Option<NewEnvelope> {
        let mut s = lock(&self.state);
        s.attack = None;
        s.held.take()
    }

    /// Relays a captured envelope again under a fresh message id.
    fn replay_captured(&self, k: usize) -> Result<()> {
        let e = lock(&self.state)
            .captured
            .get(k)
            .cloned()
            .context("nothing captured to replay")?;
        let mut again = e;
        again.message_id = fresh_id(&again.message_id);
        self.inner.enqueue(&again)?.context("replay not stored")?;
        Ok(())
    }

    /// Envelopes from the server's own device: one new session with `to`
    /// (from `to`'s real bundle) carrying `texts`, delivered as from
    /// `claimed`.
    fn forge_session_from(&self, claimed: &Address, to: &str, texts: &[&str]) -> Result<()> {
        self.forge_contents(claimed, to, texts.len(), |seq, message_id| {
            let text = texts.get(seq as usize).copied().unwrap_or_default();
            chatify_proto::Content::message(message_id, seq, 0, 0, text.as_bytes())
        })
    }

    /// As [`AdversaryStore::forge_session_from`], with `count` contents
    /// made by `content(seq, message_id)`.
    fn forge_contents<'a>(
        &self,
        claimed: &Address,
        to: &str,
        count: usize,
        content: impl Fn(u64, [u8; 16]) -> chatify_proto::Content<'a>,
    ) -> Result<()> {
        let (bundle, _) = self.inner.take_bundle(&addr(to))?.context("no bundle")?;
        let verified = VerifiedBundle::verify(&bundle)?;
        let conversation = chatify_client::conversation_id(&claimed.user, to);
        let mallory = lock(&self.mallory);
        let mut session = Session::initiate(&mallory, verified, &mut rand::rng())?;
        for seq in 0..count as u64 {
            let mut message_id = [0u8; 16];
            rand::Rng::fill_bytes(&mut rand::rng(), &mut message_id);
            // Sealed as any client seals a message (PROTOCOL §7.1).
            let mut plaintext = Vec::new();
            content(seq, message_id).encode(&mut plaintext)?;
            let env = session.encrypt(conversation, &plaintext, &mut rand::rng())?;
            self.inner.enqueue(&NewEnvelope {
                from: claimed.clone(),
                to: addr(to),
                conversation,
                message_id,
                sent_at_ms: 0,
                envelope: env.encode(),
            })?;
        }
        Ok(())
    }

    /// The server's own bundle in Bob's name, its signed prekey a low-order
    /// point (u = 0), validly signed by the server's own identity (PROTOCOL
    /// §4's signed messages), so that only the DH check can refuse it.
    fn low_order_bundle(&self, user: &str) -> PrekeyBundle {
        use ed25519_dalek::{Signer, SigningKey};
        let mut seed = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
        let signer = SigningKey::from_bytes(&seed);
        let sign = |label: &[u8], id: Option<u32>, key: &[u8; 32]| {
            let mut m = label.to_vec();
            if let Some(id) = id {
                m.extend_from_slice(&id.to_be_bytes());
            }
            m.extend_from_slice(key);
            signer.sign(&m).to_bytes()
        };
        rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
        let identity_key =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(seed)).to_bytes();
        let spk = [0u8; 32];
        PrekeyBundle {
            user: user.into(),
            device: 1,
            identity: DeviceKeys {
                signing_key: signer.verifying_key().to_bytes(),
                identity_key,
                identity_signature: sign(b"chatify/v1/identity-key", None, &identity_key),
            },
            signed_prekey: SignedPrekey {
                id: 1,
                public_key: spk,
                signature: sign(b"chatify/v1/signed-prekey", Some(1), &spk),
            },
            one_time_prekey: None,
        }
    }
}

impl Store for AdversaryStore {
    chatify_server::forward_store!(self => self.inner;
        create_user, password_hash, create_token, token, revoke_tokens, prune_tokens, publish_keys, one_time_prekey_count, fast_commits, pending, ack, history, prune_history, devices, remove_device, put_link, take_link, mfa, mfa_begin, mfa_enable, mfa_use_step, mfa_use_recovery, mfa_disable);

    fn take_bundle(&self, device: &Address) -> Result<Option<(PrekeyBundle, u32)>, StoreError> {
        let attack = {
            let mut s = lock(&self.state);
            s.bundles += 1;
            s.attack
        };
        let real = self.inner.take_bundle(device)?;
        Ok(match (attack, real) {
            (Some(Attack::Downgrade), _) => None,
            (Some(Attack::BundleBadSignature), Some((mut b, n))) => {
                b.signed_prekey.public_key[3] ^= 0x10;
                Some((b, n))
            }
            (Some(Attack::BundleLowOrderKey), Some((_, n))) => {
                Some((self.low_order_bundle(&device.user), n))
            }
            (Some(Attack::WithheldPrekeyReplayedSetup), Some((mut b, n))) => {
                b.one_time_prekey = None;
                Some((b, n))
            }
            (Some(Attack::PrekeyServedTwice), real) if device.user == "bob" => {
                let mut s = lock(&self.state);
                match s.served.take() {
                    Some(first) => Some(first),
                    None => {
                        s.served = real.clone();
                        real
                    }
                }
            }
            (_, real) => real,
        })
    }
    fn enqueue(&self, e: &NewEnvelope) -> Result<Option<u64>, StoreError> {
        let mut s = lock(&self.state);
        let Some(attack) = s.attack else {
            drop(s);
            return self.inner.enqueue(e);
        };
        if attack.on_groups() {
            drop(s);
            return self.group_enqueue(attack, e);
        }
        // The attacks target one sender's messages to Bob.
        if e.from.user != s.from || e.to.user != "bob" {
            drop(s);
            return self.inner.enqueue(e);
        }
        let k = s.seen;
        s.seen += 1;
        s.captured.push(e.clone());
        let mut out = e.clone();
        // The first message of the armed phase is the target.
        let target = k == 0;
        match attack {
            Attack::DatabaseRollback if k == 1 => {
                // Acknowledged, then lost when the database goes back to a
                // copy taken before it; the copy still holds the envelope
                // Bob acknowledged since, which is delivered again.
                if let Some(old) = s.captured.first().cloned() {
                    drop(s);
                    self.inner.enqueue(&old)?;
                }
                return Ok(Some(u64::MAX / 2 + 1));
            }
            Attack::DatabaseRollback => {}
            Attack::IdReuse if k == 1 => {
                if let Some(first) = s.captured.first() {
                    out.message_id = first.message_id;
                }
            }
            _ if !target && attack != Attack::Reorder => {}
            Attack::WithheldThenReleased => {
                s.held = Some(out);
                return Ok(Some(u64::MAX / 2));
            }
            Attack::FlipCiphertext => {
                let at = out.envelope.len().saturating_sub(24);
                if let Some(b) = out.envelope.get_mut(at) {
                    *b ^= 0x01;
                }
            }
            Attack::FlipTag => {
                if let Some(b) = out.envelope.last_mut() {
                    *b ^= 0x80;
                }
            }
            Attack::FlipHeaderCounter => {
                // One ahead: the key the receiver derives is not the one
                // that sealed it (one behind would be a used key, rejected
                // as a duplicate instead).
                out.envelope = reencode(&out.envelope, |env| {
                    env.header.counter = env.header.counter.wrapping_add(1);
                });
            }
            Attack::FlipRatchetKey => {
                out.envelope = reencode(&out.envelope, |env| env.header.ratchet_key[7] ^= 0x04);
            }
            Attack::FlipConversation => {
                out.envelope = reencode(&out.envelope, |env| env.conversation[0] ^= 0x01);
            }
            Attack::RelabelConversation => out.conversation[0] ^= 0x01,
            Attack::ReplayAtOnce => {
                let stored = self.inner.enqueue(&out)?;
                let mut again = out.clone();
                again.message_id = fresh_id(&again.message_id);
                self.inner.enqueue(&again)?;
                return Ok(stored);
            }
            Attack::Drop => {
                // Tell the sender it is stored; store nothing.
                return Ok(Some(u64::MAX / 2 + k as u64));
            }
            Attack::Reorder => {
                if target {
                    s.held = Some(out);
                    return Ok(Some(u64::MAX / 2));
                }
                let stored = self.inner.enqueue(&out)?;
                if let Some(held) = s.held.take() {
                    self.inner.enqueue(&held)?;
                }
                return Ok(stored);
            }
            Attack::RedirectRecipient => out.to = addr("carol"),
            Attack::ForgeSender => out.from = addr("carol"),
            Attack::HugeCounter => {
                out.envelope = reencode(&out.envelope, |env| env.header.counter = 4_000_000);
            }
            Attack::ReplayAfterReconnect
            | Attack::ReplayAfterRestart
            | Attack::BundleBadSignature
            | Attack::BundleLowOrderKey
            | Attack::KeySubstitution
            | Attack::PersistentKeySubstitution
            | Attack::GhostDevice
            | Attack::WithheldPrekeyReplayedSetup
            | Attack::Downgrade
            | Attack::IdReuse
            | Attack::PrekeyServedTwice
            | Attack::FileChunkFlipped
            | Attack::FilePartsReordered
            | Attack::FileChunkDropped
            | Attack::FileTruncated
            | Attack::FileBlobSwapped => {}
            // Played by `group_enqueue`, above.
            _ => {}
        }
        drop(s);
        self.inner.enqueue(&out)
    }

    fn blobs(&self) -> &dyn Blobs {
        self
    }
}

impl AdversaryStore {
    /// The target blob's whole content as stored, read part by part.
    fn whole_blob(&self, device: &Address, id: &BlobId) -> Result<Vec<u8>, StoreError> {
        let mut blob = Vec::new();
        for part in 0.. {
            match self.inner.blob_part(device, id, part)? {
                Some(data) => blob.extend_from_slice(&data),
                None => break,
            }
        }
        Ok(blob)
    }

    /// Part `part` of the target blob as the armed attack serves it.
    fn tampered_part(
        &self,
        attack: Attack,
        device: &Address,
        id: &BlobId,
        decoy: Option<BlobId>,
        part: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let real = |p: u32| self.inner.blob_part(device, id, p);
        Ok(match attack {
            Attack::FileChunkFlipped => real(part)?.map(|mut d| {
                if part == 1
                    && let Some(b) = d.get_mut(1000)
                {
                    *b ^= 0x01;
                }
                d
            }),
            Attack::FilePartsReordered => real(match part {
                0 => 1,
                1 => 0,
                p => p,
            })?,
            Attack::FileChunkDropped => {
                let mut blob = self.whole_blob(device, id)?;
                let chunk = chatify_core::file::SEALED_CHUNK_LEN;
                blob.drain(chunk..(2 * chunk).min(blob.len()));
                blob.chunks(BLOB_PART_LEN)
                    .nth(part as usize)
                    .map(<[u8]>::to_vec)
            }
            Attack::FileTruncated => {
                let parts = self.whole_blob(device, id)?.len().div_ceil(BLOB_PART_LEN);
                if part as usize + 1 >= parts {
                    None
                } else {
                    real(part)?
                }
            }
            Attack::FileBlobSwapped => match decoy {
                Some(other) => self.inner.blob_part(device, &other, part)?,
                None => real(part)?,
            },
            _ => real(part)?,
        })
    }
}

impl Blobs for AdversaryStore {
    fn blob_create(
        &self,
        owner: &Address,
        id: &BlobId,
        size: u64,
        quota: u64,
        expires_ms: u64,
    ) -> Result<bool, StoreError> {
        let made = self.inner.blob_create(owner, id, size, quota, expires_ms)?;
        let mut s = lock(&self.state);
        if made && s.attack.is_some() && owner.user == s.from {
            s.blobs.push(*id);
        }
        Ok(made)
    }

    fn blob_put(
        &self,
        owner: &Address,
        id: &BlobId,
        part: u32,
        data: &[u8],
        expiry: BlobExpiry,
    ) -> Result<BlobPutOutcome, StoreError> {
        self.inner.blob_put(owner, id, part, data, expiry)
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
        let (attack, target, decoy) = {
            let s = lock(&self.state);
            let n = s.blobs.len();
            (
                s.attack,
                s.blobs.last().copied(),
                n.checked_sub(2).and_then(|i| s.blobs.get(i).copied()),
            )
        };
        match attack {
            Some(a) if a.on_files() && target == Some(*id) && device.user == "bob" => {
                self.tampered_part(a, device, id, decoy, part)
            }
            _ => self.inner.blob_part(device, id, part),
        }
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

// ---------------------------------------------------------------------------
// Running an attack.

/// What the clients did while an attack ran.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Observed {
    /// (recipient, claimed sender, text, identity changed) of every message shown.
    pub(crate) shown: Vec<(String, String, String, bool)>,
    /// (recipient, reason) of every rejection.
    pub(crate) rejected: Vec<(String, String)>,
    /// Redeliveries dropped by message id.
    pub(crate) duplicates: usize,
    /// Texts of messages shown flagged as late.
    pub(crate) late: Vec<String>,
    /// (recipient, sender, count) of every report of missing messages.
    pub(crate) missing: Vec<(String, String, u64)>,
    /// (sender, recipient, text) of every message reported not delivered.
    pub(crate) undelivered: Vec<(String, String, String)>,
    /// (sender, recipient, text) of every message sent again on request.
    pub(crate) resent: Vec<(String, String, String)>,
    /// The id and text of every message sent, to name what is reported.
    #[serde(skip)]
    pub(crate) sent: BTreeMap<[u8; 16], String>,
    /// Errors the sending client got.
    pub(crate) send_errors: Vec<String>,
    /// Envelopes that left the attacked sender for Bob while armed.
    pub(crate) left_sender: usize,
    /// Sending back to the attacked peer was blocked (key-change alert).
    pub(crate) reply_blocked: bool,
    /// (recipient, message id, caption, file) of every message that sent a file.
    #[serde(skip)]
    pub(crate) files: Vec<(String, [u8; 16], String, chatify_proto::content::FileRef)>,
    /// Files saved, and why saving the others failed.
    pub(crate) files_saved: usize,
    pub(crate) files_refused: Vec<String>,
    /// The next honest message after the attack was shown.
    pub(crate) next_honest_delivered: bool,
    /// Users a member's client lists in a group though no member added them.
    pub(crate) members_added: Vec<String>,
}

/// (sender, recipient, text) of every genuine message.
type Genuine = Vec<(String, String, String)>;

/// One check of one attack.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct CheckResult {
    pub(crate) name: &'static str,
    pub(crate) pass: bool,
    pub(crate) evidence: String,
}

/// Nothing forged, altered, replayed or misattributed was shown as genuine:
/// every message shown without an identity-change flag is one its claimed
/// sender sent to that recipient, shown once.
pub(crate) fn no_forgery(o: &Observed, genuine: &Genuine) -> CheckResult {
    let mut bad = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (to, from, text, changed) in &o.shown {
        if *changed {
            continue;
        }
        let real = genuine
            .iter()
            .any(|(f, t, x)| f == from && t == to && x == text);
        if !real {
            bad.push(format!("{to} shown {text:?} as from {from}"));
        } else if !seen.insert((to.clone(), from.clone(), text.clone())) {
            bad.push(format!("{to} shown {text:?} twice"));
        }
    }
    CheckResult {
        name: "nothing forged shown as genuine",
        pass: bad.is_empty(),
        evidence: if bad.is_empty() {
            format!("{} messages shown, all genuine and once", o.shown.len())
        } else {
            bad.join("; ")
        },
    }
}

/// The client reacted as the attack's expectation says.
pub(crate) fn reaction(
    expect: Expect,
    reason: Option<&str>,
    o: &Observed,
    target: &str,
    recipient: &str,
) -> CheckResult {
    let shown = |text: &str| o.shown.iter().filter(|s| s.2 == text && !s.3).count();
    let says = |r: &str| reason.is_none_or(|want| r.contains(want));
    let (pass, evidence) = match expect {
        Expect::Rejected => rejected_at(o, reason, target, recipient),
        Expect::ReportedBothWays => {
            let reports: u64 = o
                .missing
                .iter()
                .filter(|(to, _, _)| to == recipient)
                .map(|m| m.2)
                .sum();
            let told = o
                .undelivered
                .iter()
                .any(|(_, to, text)| to == recipient && text == target);
            (
                shown(target) == 0 && o.rejected.is_empty() && reports >= 1 && told,
                format!(
                    "target shown {} time(s), {} rejection(s), {reports} message(s) reported missing at {recipient}; its sender told it was not delivered: {told}",
                    shown(target),
                    o.rejected.len()
                ),
            )
        }
        Expect::Resent => {
            let rejected = o
                .rejected
                .iter()
                .filter(|(to, r)| to == recipient && says(r))
                .count();
            let resent = o
                .resent
                .iter()
                .filter(|(_, to, text)| to == recipient && text == target)
                .count();
            (
                rejected >= 1 && resent >= 1 && shown(target) == 1,
                format!(
                    "{rejected} rejection(s) at {recipient}, {resent} message(s) sent again, target shown {} time(s)",
                    shown(target)
                ),
            )
        }
        Expect::Reordered | Expect::ReportedLate => {
            let at = o.shown.iter().position(|s| s.2 == target);
            let flagged = o.late.iter().any(|t| t == target);
            let reported = o.missing.iter().any(|(to, _, _)| to == recipient);
            let missing_ok = expect == Expect::Reordered || reported;
            (
                shown(target) == 1
                    && at.is_some_and(|i| i > 0)
                    && o.rejected.is_empty()
                    && flagged
                    && missing_ok,
                format!(
                    "target shown {} time(s), at position {} of {} (after its successor), flagged late: {flagged}; reported missing while held: {reported}",
                    shown(target),
                    at.map_or("none".into(), |i| (i + 1).to_string()),
                    o.shown.len()
                ),
            )
        }
        Expect::SendRefused => (
            o.send_errors.iter().any(|e| says(e)) && o.left_sender == 0,
            format!(
                "send error: {}; envelopes that left the sender: {}",
                o.send_errors.first().map_or("none", String::as_str),
                o.left_sender
            ),
        ),
        Expect::FileRefused => file_refused(o, shown(target)),
        Expect::NothingToGhost => (
            shown(target) >= 1 && o.left_sender == 0,
            format!(
                "target shown {} time(s) to the genuine members; envelopes addressed to the server's device: {}",
                shown(target),
                o.left_sender
            ),
        ),
        Expect::KeyChangeAlert => {
            let flagged = o.shown.iter().filter(|s| s.3).count();
            (
                flagged > 0 && o.reply_blocked,
                format!(
                    "{flagged} message(s) flagged as from a changed identity; replying blocked: {}",
                    o.reply_blocked
                ),
            )
        }
    };
    CheckResult {
        name: "expected reaction",
        pass,
        evidence,
    }
}

/// The envelope was rejected at `recipient` (saying `reason`), the target
/// was not shown there, and no member appeared that nobody added.
fn rejected_at(
    o: &Observed,
    reason: Option<&str>,
    target: &str,
    recipient: &str,
) -> (bool, String) {
    let says = |r: &str| reason.is_none_or(|want| r.contains(want));
    // At the recipient: another member of a group may read the same
    // message genuinely (no_forgery judges those).
    let shown_at = |text: &str| {
        o.shown
            .iter()
            .filter(|s| s.0 == recipient && s.2 == text && !s.3)
            .count()
    };
    let rejected: Vec<&(String, String)> = o
        .rejected
        .iter()
        .filter(|(to, r)| to == recipient && says(r))
        .collect();
    (
        !rejected.is_empty() && shown_at(target) == 0 && o.members_added.is_empty(),
        format!(
            "{} rejection(s) at {recipient}{}; target shown there {} time(s); members nobody added: {}",
            rejected.len(),
            rejected
                .first()
                .map(|(_, r)| format!(" ({r})"))
                .unwrap_or_default(),
            shown_at(target),
            if o.members_added.is_empty() {
                "none".into()
            } else {
                o.members_added.join(", ")
            }
        ),
    )
}

/// The file message was shown once, and its file was refused, not saved.
fn file_refused(o: &Observed, shown: usize) -> (bool, String) {
    (
        shown == 1 && o.files_saved == 0 && !o.files_refused.is_empty(),
        format!(
            "its message shown {shown} time(s); files saved: {}; refused: {}",
            o.files_saved,
            o.files_refused.first().map_or("none", String::as_str)
        ),
    )
}

fn next_honest(o: &Observed) -> CheckResult {
    CheckResult {
        name: "next honest message gets through",
        pass: o.next_honest_delivered,
        evidence: if o.next_honest_delivered {
            "delivered and shown".into()
        } else {
            "NOT delivered".into()
        },
    }
}

/// One attack's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Verdict {
    pub(crate) attack: Attack,
    pub(crate) description: &'static str,
    pub(crate) expect: Expect,
    pub(crate) observed: Observed,
    pub(crate) checks: Vec<CheckResult>,
    pub(crate) pass: bool,
}

struct User {
    name: String,
    client: Client,
}

/// How long a connection must stay silent before the events of a phase are
/// taken as complete (generous: the suite runs its attacks concurrently and
/// CI runs it beside other tests).
const QUIET: Duration = Duration::from_millis(1000);

/// Handles every push that arrives until none has for `QUIET`.
async fn drain(u: &mut User, o: &mut Observed) -> Result<()> {
    let mut quiet = false;
    while !quiet {
        let events = match tokio::time::timeout(QUIET, u.client.next_push()).await {
            // Quiet: the periodic work reports what came due and sends
            // what is owed (receipts, retry requests).
            Err(_) => {
                quiet = true;
                u.client.tick().await
            }
            Ok(None) => bail!("{}: connection gone", u.name),
            Ok(Some(push)) => u.client.handle_batch(vec![push]).await,
        }
        .with_context(|| u.name.to_string())?;
        for e in events {
            match e {
                Event::Message(m) => {
                    let text = String::from_utf8_lossy(&m.text).into_owned();
                    if m.late.is_some() {
                        o.late.push(text.clone());
                    }
                    let flagged = m.identity_changed();
                    if let Some(file) = m.file {
                        o.files
                            .push((u.name.clone(), m.message_id, text.clone(), *file));
                    }
                    o.shown.push((u.name.clone(), m.from.user, text, flagged));
                }
                Event::Missing { from, count } => {
                    o.missing.push((u.name.clone(), from.user, count));
                }
                Event::Rejected { reason, .. } => o.rejected.push((u.name.clone(), reason)),
                Event::Duplicate { .. } => o.duplicates += 1,
                Event::Undelivered {
                    to,
                    message_ids,
                    unlisted,
                } => {
                    for id in message_ids {
                        let text = o.sent.get(&id).cloned().unwrap_or_default();
                        o.undelivered.push((u.name.clone(), to.user.clone(), text));
                    }
                    if unlisted > 0 {
                        let text = format!("({unlisted} unlisted)");
                        o.undelivered.push((u.name.clone(), to.user, text));
                    }
                }
                Event::Resent { to, message_id } => {
                    let text = o.sent.get(&message_id).cloned().unwrap_or_default();
                    o.resent.push((u.name.clone(), to.user, text));
                }
                Event::Disconnected(_) => bail!("{}: disconnected", u.name),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The bench's clients report at once what a user would be told after a
/// grace period: a gap as soon as it is seen, a message without a receipt
/// once the drain's quiet period passed; and send receipts at once.
fn tune(client: &mut Client) {
    client.set_missing_grace(Duration::ZERO);
    client.set_delivery_grace(QUIET);
    client.set_receipt_delay(Duration::ZERO);
}

struct Bench {
    store: Arc<AdversaryStore>,
    server: Option<Server>,
    options: ConnectOptions,
    dir: tempfile::TempDir,
    users: BTreeMap<&'static str, User>,
    genuine: Genuine,
}

impl Bench {
    async fn start() -> Result<Bench> {
        let store = Arc::new(AdversaryStore::new()?);
        let server =
            start_server(Arc::clone(&store), "127.0.0.1:0".parse().context("addr")?).await?;
        let options = ConnectOptions::new(format!("ws://{}", server.local_addr()));
        let dir = tempfile::tempdir()?;
        let mut b = Bench {
            store,
            server: Some(server),
            options,
            dir,
            users: BTreeMap::new(),
            genuine: Vec::new(),
        };
        for name in ["alice", "bob", "carol", "erin", "frank"] {
            let password = format!("{name}-adversary-password");
            Client::register(&b.options, name, &password)
                .await
                .with_context(|| format!("register {name}"))?;
            let mut client = Client::login(
                &b.options,
                &b.dir.path().join(name),
                &home_passphrase(),
                name,
                &password,
                1,
            )
            .await
            .with_context(|| format!("login {name}"))?;
            tune(&mut client);
            b.users.insert(
                name,
                User {
                    name: name.into(),
                    client,
                },
            );
        }
        // Sessions both ways between Alice, Bob and Carol (not Erin).
        for (a, z) in [("alice", "bob"), ("alice", "carol"), ("bob", "carol")] {
            let mut scratch = Observed::default();
            b.send(a, z, &format!("hello {z}"), &mut scratch).await?;
            b.drain(z, &mut scratch).await?;
            b.send(z, a, &format!("hello {a}"), &mut scratch).await?;
            b.drain(a, &mut scratch).await?;
            if !scratch.rejected.is_empty() || scratch.shown.len() != 2 {
                bail!("honest setup failed: {scratch:?}");
            }
        }
        Ok(b)
    }

    fn user(&mut self, name: &str) -> Result<&mut User> {
        self.users
            .get_mut(name)
            .with_context(|| format!("no user {name}"))
    }

    async fn send(&mut self, from: &str, to: &str, text: &str, o: &mut Observed) -> Result<()> {
        self.genuine.push((from.into(), to.into(), text.into()));
        let u = self.user(from)?;
        match u.client.send(to, text.as_bytes()).await {
            Ok(receipt) => {
                o.sent.insert(receipt.message_id, text.to_owned());
            }
            Err(e) => o.send_errors.push(e.to_string()),
        }
        Ok(())
    }

    async fn drain(&mut self, name: &str, o: &mut Observed) -> Result<()> {
        let u = self.user(name)?;
        drain(u, o).await
    }

    async fn reconnect(&mut self, name: &str) -> Result<()> {
        let options = self.options.clone();
        let home = self.dir.path().join(name);
        // One owner per home: the old client lets go before the new one
        // takes the state.
        let (key, old) = self
            .users
            .remove_entry(name)
            .with_context(|| format!("no user {name}"))?;
        old.client.close().await;
        let mut client = Client::resume(&home, &home_passphrase(), Some(&options))
            .await
            .with_context(|| format!("resume {name}"))?;
        tune(&mut client);
        self.users.insert(
            key,
            User {
                name: old.name,
                client,
            },
        );
        Ok(())
    }

    /// What the store injected reaches `name` when its connection checks
    /// the mailbox (a malicious server pushes whenever it likes; a new
    /// connection is the push path that needs no help from the relay).
    async fn push_injected(&mut self, name: &str, o: &mut Observed) -> Result<()> {
        self.reconnect(name).await?;
        self.drain(name, o).await
    }

    async fn restart_server(&mut self) -> Result<()> {
        let old = self.server.take().context("no server")?;
        let listen = old.local_addr();
        old.shutdown().await;
        self.server = Some(start_server(Arc::clone(&self.store), listen).await?);
        for name in ["alice", "bob", "carol", "erin", "frank"] {
            self.reconnect(name).await?;
        }
        Ok(())
    }
}

async fn start_server(store: Arc<AdversaryStore>, listen: std::net::SocketAddr) -> Result<Server> {
    let config = Config {
        listen,
        password_cost: CHEAP_ARGON2,
        ..Config::default()
    };
    let mut last = String::new();
    for _ in 0..50 {
        match Server::start(config.clone(), store.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(anyhow!("cannot start the server: {last}"))
}

/// Runs one attack against fresh accounts.
pub(crate) async fn run_attack(attack: Attack) -> Result<Verdict> {
    let mut b = Bench::start().await?;
    let mut o = Observed::default();
    let (target, recipient, next_from) = match attack {
        Attack::BundleBadSignature
        | Attack::BundleLowOrderKey
        | Attack::Downgrade
        | Attack::WithheldPrekeyReplayedSetup => ("erin-1", "bob", "erin"),
        Attack::RedirectRecipient => ("attack-1", "carol", "alice"),
        Attack::GroupForgedSender => ("attack-1", "bob", "carol"),
        Attack::GroupToRemovedMember => ("attack-1", "carol", "alice"),
        Attack::GroupChangeForged => ("attack-1", "bob", "carol"),
        Attack::PrekeyServedTwice => ("frank-1", "bob", "frank"),
        Attack::IdReuse => ("attack-2", "bob", "alice"),
        _ => ("attack-1", "bob", "alice"),
    };
    // The attacked sender is the one whose next honest message follows.
    b.store.arm(attack, next_from);
    play(attack, &mut b, &mut o, target).await?;
    if b.store.disarm().is_some() {
        bail!("the adversary still held an envelope");
    }
    // The next honest message (Bob's client still works, whatever the
    // attack did to his sessions).
    let mut after = Observed::default();
    b.send(next_from, "bob", "after the attack", &mut after)
        .await?;
    b.drain("bob", &mut after).await?;
    o.next_honest_delivered = after
        .shown
        .iter()
        .any(|s| s.0 == "bob" && s.1 == next_from && s.2 == "after the attack" && !s.3);
    let expect = attack.expect();
    // Anything shown in either phase is judged for forgery.
    let mut both = o.clone();
    both.shown.extend(after.shown);
    let checks = vec![
        no_forgery(&both, &b.genuine),
        reaction(expect, attack.reason(), &o, target, recipient),
        next_honest(&o),
    ];
    if let Some(server) = b.server.take() {
        server.shutdown().await;
    }
    Ok(Verdict {
        attack,
        description: attack.description(),
        expect,
        pass: checks.iter().all(|c| c.pass),
        observed: o,
        checks,
    })
}

/// What the attack makes the users do while the adversary is armed.
async fn play(attack: Attack, b: &mut Bench, o: &mut Observed, target: &str) -> Result<()> {
    match attack {
        Attack::BundleBadSignature | Attack::BundleLowOrderKey | Attack::Downgrade => {
            b.send("erin", "bob", target, o).await?;
            b.drain("bob", o).await?;
            o.left_sender = b.store.captured();
        }
        Attack::WithheldPrekeyReplayedSetup => b.replayed_setup(target, o).await?,
        Attack::KeySubstitution | Attack::PersistentKeySubstitution | Attack::GhostDevice => {
            b.substituted_keys(attack, o).await?;
        }
        Attack::ReplayAfterReconnect | Attack::ReplayAfterRestart => {
            b.replay_later(attack, target, o).await?;
        }
        Attack::ReplayAtOnce => {
            b.send("alice", "bob", target, o).await?;
            b.drain("bob", o).await?;
            if let Some(i) = o.shown.iter().position(|s| s.2 == target) {
                o.shown.remove(i);
            }
        }
        Attack::IdReuse => {
            b.send("alice", "bob", "attack-1", o).await?;
            b.send("alice", "bob", target, o).await?;
            b.drain("bob", o).await?;
        }
        Attack::WithheldThenReleased => {
            b.send("alice", "bob", target, o).await?;
            b.send("alice", "bob", "attack-2", o).await?;
            b.drain("bob", o).await?;
            b.store.release_held()?;
            b.push_injected("bob", o).await?;
        }
        Attack::PrekeyServedTwice => {
            // Erin gets Bob's bundle first; Frank gets it again.
            b.send("erin", "bob", "erin-1", o).await?;
            b.send("frank", "bob", target, o).await?;
            // Bob rejects Frank's setup and asks for it again; Frank sends
            // it again on Bob's new session; Bob reads it.
            b.drain("bob", o).await?;
            b.drain("frank", o).await?;
            b.drain("bob", o).await?;
        }
        Attack::DatabaseRollback => {
            b.send("alice", "bob", "attack-0", o).await?;
            b.drain("bob", o).await?;
            // The copy the database goes back to was taken before
            // "attack-0" was acknowledged by Bob and "attack-1" stored.
            b.send("alice", "bob", target, o).await?;
            b.send("alice", "bob", "attack-2", o).await?;
            b.drain("bob", o).await?;
            // Bob's receipts reach Alice; hers does not cover the lost one.
            b.drain("alice", o).await?;
        }
        Attack::RedirectRecipient => {
            b.send("alice", "bob", target, o).await?;
            b.send("alice", "bob", "attack-2", o).await?;
            b.drain("bob", o).await?;
            b.push_injected("carol", o).await?;
        }
        a if a.on_files() => b.file_attack(a, target, o).await?,
        a if a.on_groups() => b.group_attack(a, target, o).await?,
        _ => {
            b.send("alice", "bob", target, o).await?;
            b.send("alice", "bob", "attack-2", o).await?;
            b.drain("bob", o).await?;
            if attack.expect() == Expect::ReportedBothWays {
                b.drain("alice", o).await?;
            }
        }
    }
    Ok(())
}

impl Bench {
    /// Alice sends Bob a file (a decoy first, for the swap) with `target`
    /// as its caption; Bob tries to save it.
    async fn file_attack(&mut self, attack: Attack, target: &str, o: &mut Observed) -> Result<()> {
        let size = 5 * 65_536 + 1000;
        let mut captions = vec![target];
        if attack == Attack::FileBlobSwapped {
            captions.insert(0, "decoy");
        }
        for (i, caption) in captions.into_iter().enumerate() {
            let path = self.dir.path().join(format!("file-{i}.bin"));
            let bytes: Vec<u8> = (0..size).map(|n| (n * 31 + i * 7) as u8).collect();
            std::fs::write(&path, bytes)?;
            self.genuine
                .push(("alice".into(), "bob".into(), caption.into()));
            let u = self.user("alice")?;
            match u.client.send_file("bob", &path, caption, &mut |_| {}).await {
                Ok(receipt) => {
                    o.sent.insert(receipt.message_id, caption.to_owned());
                }
                Err(e) => o.send_errors.push(e.to_string()),
            }
        }
        self.drain("bob", o).await?;
        let downloads = self.dir.path().join("downloads");
        let targets: Vec<_> = o
            .files
            .iter()
            .filter(|f| f.0 == "bob" && f.2 == target)
            .cloned()
            .collect();
        for (_, id, _, file) in targets {
            let bob = self.user("bob")?;
            match bob
                .client
                .save_file(&id, &file, &downloads, &mut |_| {})
                .await
            {
                Ok(_) => o.files_saved += 1,
                Err(e) => o.files_refused.push(e.to_string()),
            }
        }
        // Whatever the client said, nothing may be under the file's name.
        if downloads
            .join(format!(
                "file-{}.bin",
                usize::from(attack == Attack::FileBlobSwapped)
            ))
            .exists()
        {
            o.files_saved = o.files_saved.max(1);
        }
        Ok(())
    }

    /// Erin's genuine setup message is accepted; then the server replays it.
    async fn replayed_setup(&mut self, target: &str, o: &mut Observed) -> Result<()> {
        self.send("erin", "bob", target, o).await?;
        self.drain("bob", o).await?;
        // The genuine setup message was accepted; now the replay.
        let first_ok = o.shown.iter().any(|s| s.2 == target);
        o.shown.retain(|s| s.2 != target);
        if !first_ok {
            bail!("the genuine setup message was not shown");
        }
        self.genuine.retain(|g| g.2 != target);
        self.store.replay_captured(0)?;
        self.push_injected("bob", o).await?;
        Ok(())
    }

    /// The server serves keys of its own for Alice (or a device of hers
    /// nobody added) and pushes messages under them; Bob then tries to reply.
    async fn substituted_keys(&mut self, attack: Attack, o: &mut Observed) -> Result<()> {
        let (claimed, texts): (Address, &[&str]) = match attack {
            Attack::KeySubstitution => (addr("alice"), &["attack-forged"]),
            Attack::PersistentKeySubstitution => (
                addr("alice"),
                &["attack-forged", "attack-forged-2", "attack-forged-3"],
            ),
            _ => (
                Address {
                    user: "alice".into(),
                    device: 2,
                },
                &["attack-ghost", "attack-ghost-2", "attack-ghost-3"],
            ),
        };
        self.store.forge_session_from(&claimed, "bob", texts)?;
        self.push_injected("bob", o).await?;
        let bob = self.user("bob")?;
        let reply = bob.client.send("alice", b"are you there?").await;
        o.reply_blocked = matches!(reply, Err(ClientError::IdentityChanged { .. }));
        if let Err(e) = &reply {
            o.send_errors.push(e.to_string());
        }
        Ok(())
    }

    /// A message accepted once is replayed after Bob reconnects, or after
    /// the server restarts.
    async fn replay_later(&mut self, attack: Attack, target: &str, o: &mut Observed) -> Result<()> {
        self.send("alice", "bob", target, o).await?;
        self.drain("bob", o).await?;
        // Accepted once; the replay below must not show it again.
        if attack == Attack::ReplayAfterRestart {
            self.restart_server().await?;
        } else {
            self.reconnect("bob").await?;
        }
        self.store.replay_captured(0)?;
        self.push_injected("bob", o).await?;
        // The genuine first delivery is not what is judged.
        if let Some(i) = o.shown.iter().position(|s| s.2 == target) {
            o.shown.remove(i);
        }
        Ok(())
    }
}

/// Runs the suite and writes report.md, summary.json and fig_security_matrix.svg.
pub(crate) async fn run(out: &Path, only: Option<&str>) -> Result<Vec<Verdict>> {
    let attacks: Vec<Attack> = ALL
        .iter()
        .copied()
        .filter(|a| only.is_none_or(|o| o == a.name()))
        .collect();
    if attacks.is_empty() {
        bail!(
            "no attack named {only:?} (known: {})",
            ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
        );
    }
    eprintln!(
        "running {} attacks, each on its own server and accounts",
        attacks.len()
    );
    let verdicts = run_all(&attacks).await?;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    std::fs::write(
        out.join("report.md"),
        report::adversary::markdown(&rows(&verdicts)),
    )?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&verdicts)?,
    )?;
    report::figures::security_matrix(&out.join("fig_security_matrix.svg"), &rows(&verdicts))?;
    Ok(verdicts)
}

/// Runs attacks concurrently (each has its own server, store and accounts;
/// most of an attack's time is waiting for the network to go quiet), and
/// returns the verdicts in the order given.
pub(crate) async fn run_all(attacks: &[Attack]) -> Result<Vec<Verdict>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &attack) in attacks.iter().enumerate() {
        tasks.spawn(async move { (i, run_attack(attack).await) });
    }
    let mut out: Vec<Option<Verdict>> = attacks.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, verdict) = joined.context("attack task")?;
        let v = verdict.with_context(|| attacks[i].name().to_string())?;
        eprintln!(
            "{}: {}",
            v.attack.name(),
            if v.pass { "defeated" } else { "NOT DEFEATED" }
        );
        out[i] = Some(v);
    }
    Ok(out.into_iter().flatten().collect())
}

/// The suite's verdicts as the report's rows.
pub(crate) fn rows(verdicts: &[Verdict]) -> Vec<AttackRow> {
    verdicts
        .iter()
        .map(|v| AttackRow {
            attack: v.attack.name(),
            description: v.description,
            expect: format!("{:?}", v.expect),
            reason: v.attack.reason(),
            checks: v
                .checks
                .iter()
                .map(|c| (c.pass, c.evidence.clone()))
                .collect(),
            pass: v.pass,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn genuine() -> Genuine {
        vec![("alice".into(), "bob".into(), "hi".into())]
    }

    #[test]
    fn the_forgery_check_fails_on_forged_altered_misattributed_and_replayed_messages() {
        let ok = Observed {
            shown: vec![("bob".into(), "alice".into(), "hi".into(), false)],
            ..Observed::default()
        };
        assert!(no_forgery(&ok, &genuine()).pass);
        for bad in [
            ("bob", "alice", "altered"), // altered content
            ("bob", "carol", "hi"),      // misattributed
            ("carol", "alice", "hi"),    // redirected
        ] {
            let o = Observed {
                shown: vec![(bad.0.into(), bad.1.into(), bad.2.into(), false)],
                ..Observed::default()
            };
            assert!(!no_forgery(&o, &genuine()).pass, "{bad:?}");
        }
        let twice = Observed {
            shown: vec![
                ("bob".into(), "alice".into(), "hi".into(), false),
                ("bob".into(), "alice".into(), "hi".into(), false),
            ],
            ..Observed::default()
        };
        assert!(!no_forgery(&twice, &genuine()).pass);
        // A flagged message (identity changed) is an alert, not "genuine".
        let flagged = Observed {
            shown: vec![("bob".into(), "alice".into(), "forged".into(), true)],
            ..Observed::default()
        };
        assert!(no_forgery(&flagged, &genuine()).pass);
    }

    #[test]
    fn the_reaction_check_fails_when_the_client_does_not_react() {
        let silent = Observed::default();
        assert!(!reaction(Expect::Rejected, None, &silent, "t", "bob").pass);
        assert!(!reaction(Expect::SendRefused, None, &silent, "t", "bob").pass);
        assert!(!reaction(Expect::KeyChangeAlert, None, &silent, "t", "bob").pass);
        let in_order = Observed {
            shown: vec![
                ("bob".into(), "alice".into(), "t".into(), false),
                ("bob".into(), "alice".into(), "t2".into(), false),
            ],
            ..Observed::default()
        };
        assert!(
            !reaction(Expect::Reordered, None, &in_order, "t", "bob").pass,
            "not reordered"
        );
        // A drop nobody is told of, or only the recipient, or only the
        // sender, or of another message; and a late message shown as on
        // time.
        assert!(!reaction(Expect::ReportedBothWays, None, &silent, "t", "bob").pass);
        let recipient_told = Observed {
            missing: vec![("bob".into(), "alice".into(), 1)],
            ..Observed::default()
        };
        let sender_told = Observed {
            undelivered: vec![("alice".into(), "bob".into(), "t".into())],
            ..Observed::default()
        };
        let both = Observed {
            undelivered: sender_told.undelivered.clone(),
            ..recipient_told.clone()
        };
        let other = Observed {
            undelivered: vec![("alice".into(), "bob".into(), "t2".into())],
            ..recipient_told.clone()
        };
        for o in [&recipient_told, &sender_told, &other] {
            assert!(!reaction(Expect::ReportedBothWays, None, o, "t", "bob").pass);
        }
        assert!(reaction(Expect::ReportedBothWays, None, &both, "t", "bob").pass);
        // A setup that fails and is never sent again, or sent again and
        // never shown, or shown without the recipient having rejected it.
        let rejected = Observed {
            rejected: vec![("bob".into(), "unknown prekey".into())],
            ..Observed::default()
        };
        let resent = Observed {
            resent: vec![("frank".into(), "bob".into(), "t".into())],
            ..rejected.clone()
        };
        let shown_again = Observed {
            shown: vec![("bob".into(), "frank".into(), "t".into(), false)],
            ..resent.clone()
        };
        let not_rejected = Observed {
            rejected: Vec::new(),
            ..shown_again.clone()
        };
        for o in [&rejected, &resent, &not_rejected] {
            assert!(!reaction(Expect::Resent, Some("prekey"), o, "t", "bob").pass);
        }
        assert!(reaction(Expect::Resent, Some("prekey"), &shown_again, "t", "bob").pass);
        let unflagged = Observed {
            shown: vec![
                ("bob".into(), "alice".into(), "t2".into(), false),
                ("bob".into(), "alice".into(), "t".into(), false),
            ],
            missing: vec![("bob".into(), "alice".into(), 1)],
            ..Observed::default()
        };
        assert!(!reaction(Expect::Reordered, None, &unflagged, "t", "bob").pass);
        assert!(!reaction(Expect::ReportedLate, None, &unflagged, "t", "bob").pass);
        let flagged_late = Observed {
            late: vec!["t".into()],
            ..unflagged.clone()
        };
        assert!(reaction(Expect::ReportedLate, None, &flagged_late, "t", "bob").pass);
        let never_reported = Observed {
            missing: Vec::new(),
            ..flagged_late
        };
        assert!(!reaction(Expect::ReportedLate, None, &never_reported, "t", "bob").pass);
        let wrong_reason = Observed {
            rejected: vec![("bob".into(), "decryption failed".into())],
            ..Observed::default()
        };
        assert!(reaction(Expect::Rejected, None, &wrong_reason, "t", "bob").pass);
        assert!(
            !reaction(
                Expect::Rejected,
                Some("duplicate"),
                &wrong_reason,
                "t",
                "bob"
            )
            .pass,
            "a rejection for another reason is not the expected one"
        );
        let shown = Observed {
            shown: vec![("bob".into(), "alice".into(), "t".into(), false)],
            rejected: vec![("bob".into(), "decrypt".into())],
            ..Observed::default()
        };
        assert!(
            !reaction(Expect::Rejected, None, &shown, "t", "bob").pass,
            "target shown"
        );
        let leaked = Observed {
            send_errors: vec!["no keys".into()],
            left_sender: 1,
            ..Observed::default()
        };
        assert!(!reaction(Expect::SendRefused, None, &leaked, "t", "bob").pass);
    }

    #[test]
    fn the_file_reaction_check_fails_on_a_saved_file_or_an_untried_attack() {
        let refused = Observed {
            shown: vec![("bob".into(), "alice".into(), "t".into(), false)],
            files_refused: vec!["chunk 0 of the file did not authenticate".into()],
            ..Observed::default()
        };
        assert!(reaction(Expect::FileRefused, None, &refused, "t", "bob").pass);
        let saved = Observed {
            files_saved: 1,
            ..refused.clone()
        };
        assert!(
            !reaction(Expect::FileRefused, None, &saved, "t", "bob").pass,
            "a tampered file saved"
        );
        let silent = Observed {
            files_refused: Vec::new(),
            ..refused
        };
        assert!(
            !reaction(Expect::FileRefused, None, &silent, "t", "bob").pass,
            "nothing refused: the attack was not tried"
        );
    }

    #[test]
    fn the_group_reaction_checks_fail_on_a_ghost_sent_to_a_member_added_or_a_read_at_the_recipient()
    {
        let ghost = Observed {
            shown: vec![("bob".into(), "alice".into(), "t".into(), false)],
            ..Observed::default()
        };
        assert!(reaction(Expect::NothingToGhost, None, &ghost, "t", "bob").pass);
        let sent = Observed {
            left_sender: 1,
            ..ghost.clone()
        };
        assert!(!reaction(Expect::NothingToGhost, None, &sent, "t", "bob").pass);
        let unseen = Observed::default();
        assert!(!reaction(Expect::NothingToGhost, None, &unseen, "t", "bob").pass);
        // Rejected at Carol while Bob reads it genuinely: as expected.
        let removed = Observed {
            rejected: vec![("carol".into(), "no longer in the group".into())],
            ..ghost
        };
        assert!(reaction(Expect::Rejected, Some("no longer"), &removed, "t", "carol").pass);
        let read_too = Observed {
            shown: vec![("carol".into(), "alice".into(), "t".into(), false)],
            ..removed.clone()
        };
        assert!(!reaction(Expect::Rejected, Some("no longer"), &read_too, "t", "carol").pass);
        let added = Observed {
            members_added: vec!["erin".into()],
            ..removed
        };
        assert!(!reaction(Expect::Rejected, Some("no longer"), &added, "t", "carol").pass);
    }

    /// Every attack against the real server and clients (in process).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_attack_is_defeated() {
        let verdicts = run_all(ALL).await.unwrap();
        assert_eq!(verdicts.len(), ALL.len());
        let failed: Vec<String> = verdicts
            .iter()
            .filter(|v| !v.pass)
            .map(|v| format!("{}: {:?}", v.attack.name(), v.checks))
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }
}
