//! The client's local state, persisted so a client survives restarts:
//! `state.cbor` holds the account and token, device keys, sessions and
//! pinned peer identities (rewritten atomically on every change; it grows
//! only with prekeys, sessions and the base keys of accepted sessions); `messages.cbor` is the append-only log of decrypted
//! messages, from which the ids of messages already received are rebuilt on
//! load (a message is logged before the state that consumed its key is saved).
//!
//! **One owner.** A client holds an exclusive lock on `DIR/lock` (which
//! records its process id) for its whole life, so two processes never share
//! a device's state; a second one gets [`ClientError::HomeInUse`].
//!
//! **Durable, monotone saves.** The files hold private keys, session state
//! and decrypted messages. They are created with mode 0600 in a directory
//! created with mode 0700. The state is written to a temporary file of its
//! own, flushed to disk (`fsync`), renamed over the previous one, and the
//! directory is flushed; a failure of any step is a failed save. So a crash
//! leaves either the old or the new state. Each encoding carries a
//! generation number and a save older than the last one written is
//! dropped, so a save whose caller was cancelled can never land after, and
//! undo, a newer one. The message log is appended and flushed
//! (`fdatasync`).
//!
//! **Encrypted at rest.** Both files are sealed under the home's data key,
//! which `key.cbor` keeps wrapped under the user's passphrase
//! ([`crate::vault`], docs/PROTOCOL.md §13.2): a handle reads and writes
//! only once [`StateFile::unlock`]ed. Files of a version that did not
//! encrypt are encrypted by the first owner that unlocks them. Secret
//! buffers are zeroized after use.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatify_core::{Device, PublicIdentity, SavedAt, SecretBuf, Session};
use chatify_proto::content::FileRef;
use chatify_proto::frame::Address;
use chatify_proto::{ConversationId, MessageId};
use minicbor::Decoder;
use minicbor::bytes::ByteSlice;
use rand::Rng;
use zeroize::Zeroizing;

use crate::ClientError;
use crate::delivery::{Gap, Outbox, Pending, RecvSeq, SendSeq};
use crate::records::{
    GapRecord, MessageRecord, Nullable, OutboxRecord, PeerSessions, PendingRecord, PinRecord,
    RecvSeqRecord, SendSeqRecord, StateRecord,
};
use crate::storage::{OsStorage, Storage};
use crate::vault::{Passphrase, Purpose, STATE_MAGIC, Vault};

/// The largest sealed record of the message log (a length prefix above it
/// is damage); below 2^24, so a sealed log's first byte is 0, and a
/// plaintext log of an older version (whose first byte is 0x85) tells
/// itself apart.
const MAX_LOG_RECORD: usize = 1 << 23;

/// Message ids remembered to drop duplicates.
pub const MAX_SEEN: usize = 10_000;

/// Sessions kept per peer device (the active one and older ones).
pub const MAX_SESSIONS_PER_PEER: usize = 4;

const STATE_VERSION: u64 = 1;

/// What the client knows of a user's identity, which all the user's devices
/// share (docs/PROTOCOL.md §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The identity trusted for this user.
    pub identity: PublicIdentity,
    /// The user compared safety numbers and confirmed them.
    pub verified: bool,
    /// A device of the user presented a different identity; sending to the
    /// user is blocked until the user verifies it. Holds the presented
    /// identity.
    pub changed_to: Option<PublicIdentity>,
}

/// A decrypted message kept locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Sender device.
    pub from: Address,
    /// The server's acceptance time, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// The message id.
    pub message_id: MessageId,
    /// The plaintext (a file's caption, if it carries one).
    pub text: Vec<u8>,
    /// The encrypted file the message carries (its key included: the log
    /// is sealed).
    pub file: Option<FileRef>,
    /// The group the message was sent to, if it was a group message.
    pub group: Option<[u8; 16]>,
}

/// The whole local state.
pub struct State {
    /// Server URL.
    pub server: String,
    /// Own user name.
    pub user: String,
    /// Own device number.
    pub device_number: u32,
    /// Session token from the last login.
    pub token: Option<Zeroizing<Vec<u8>>>,
    /// Own keys.
    pub device: Device,
    /// Sessions by peer device, the active one first. Older ones are kept
    /// (at most [`MAX_SESSIONS_PER_PEER`]) so that messages sent on them
    /// still decrypt, as happens when both sides start a session at once.
    pub sessions: BTreeMap<Address, Vec<Session>>,
    /// Pinned peer identities, by user.
    pub pins: BTreeMap<String, Pin>,
    seen: HashSet<MessageId>,
    seen_order: VecDeque<MessageId>,
    /// This device's sequence numbers, by conversation (PROTOCOL §7.1).
    pub send_seqs: BTreeMap<ConversationId, SendSeq>,
    /// What this device received of each sender device, by conversation
    /// and the sender's identity key (a reinstalled device, or one whose
    /// identity a server substituted, numbers its messages afresh).
    pub recv_seqs: BTreeMap<RecvKey, RecvSeq>,
    /// Sent messages the server stored and no receipt has covered yet, by
    /// conversation and recipient device (PROTOCOL §7.2).
    pub outbox: BTreeMap<(ConversationId, Address), Outbox>,
    /// Ids of the latest control contents received (receipts, retry
    /// requests; at most [`MAX_CONTROL_IDS`]): they are not in the message
    /// log, so this is how a redelivery after a restart is known as one.
    pub control_ids: VecDeque<MessageId>,
}

/// Control-content ids remembered across restarts.
pub const MAX_CONTROL_IDS: usize = 256;

/// Whose sequence a [`RecvSeq`] follows: conversation, sender device and the
/// sender's X25519 identity key.
pub type RecvKey = (ConversationId, Address, [u8; 32]);

/// What a save reserved ([`State::encode_reserving`]).
#[derive(Debug)]
pub struct Reserved {
    sessions: Vec<(Address, usize, SavedAt)>,
    seqs: Vec<(ConversationId, u64)>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("server", &self.server)
            .field("user", &self.user)
            .field("device_number", &self.device_number)
            .field("has_token", &self.token.is_some())
            .field("device", &self.device)
            .field("sessions", &self.sessions.len())
            .field("pins", &self.pins.len())
            .finish()
    }
}

fn bad(source: minicbor::decode::Error) -> ClientError {
    ClientError::Malformed {
        what: "state file",
        source,
    }
}

fn identity_bytes(id: &PublicIdentity) -> [u8; 64] {
    id.to_bytes()
}

fn identity_from(bytes: &ByteSlice) -> Result<PublicIdentity, ClientError> {
    if bytes.len() != 64 {
        return Err(ClientError::State("identity of the wrong length".into()));
    }
    let mut signing_key = [0u8; 32];
    let mut identity_key = [0u8; 32];
    signing_key.copy_from_slice(bytes.get(..32).unwrap_or_default());
    identity_key.copy_from_slice(bytes.get(32..).unwrap_or_default());
    Ok(PublicIdentity {
        signing_key,
        identity_key,
    })
}

impl State {
    /// A fresh state for a newly logged-in device.
    pub fn new(server: String, user: String, device_number: u32, device: Device) -> Self {
        State {
            server,
            user,
            device_number,
            token: None,
            device,
            sessions: BTreeMap::new(),
            pins: BTreeMap::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            send_seqs: BTreeMap::new(),
            recv_seqs: BTreeMap::new(),
            outbox: BTreeMap::new(),
            control_ids: VecDeque::new(),
        }
    }

    /// Own address.
    pub fn address(&self) -> Address {
        Address {
            user: self.user.clone(),
            device: self.device_number,
        }
    }

    /// The active session with a peer device.
    pub fn active_session(&mut self, peer: &Address) -> Option<&mut Session> {
        self.sessions.get_mut(peer).and_then(|l| l.first_mut())
    }

    /// Makes `session` the active one with `peer`, keeping older ones.
    pub fn push_session(&mut self, peer: Address, session: Session) {
        let list = self.sessions.entry(peer).or_default();
        list.insert(0, session);
        list.truncate(MAX_SESSIONS_PER_PEER);
    }

    /// Whether a message id was seen before.
    pub fn seen(&self, id: &MessageId) -> bool {
        self.seen.contains(id)
    }

    /// Remembers a message id (the oldest are forgotten past [`MAX_SEEN`]).
    pub fn mark_seen(&mut self, id: MessageId) {
        if self.seen.insert(id) {
            self.seen_order.push_back(id);
            while self.seen_order.len() > MAX_SEEN {
                if let Some(old) = self.seen_order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }

    /// Remembers the id of a control content received (and marks it seen).
    pub fn mark_control(&mut self, id: MessageId) {
        self.mark_seen(id);
        self.control_ids.push_back(id);
        while self.control_ids.len() > MAX_CONTROL_IDS {
            self.control_ids.pop_front();
        }
    }

    /// Whether a message from a device of `user`, whose session presents
    /// `identity`, may be shown as from `user`: `None` when it is the
    /// identity pinned for the user (even while another one awaits
    /// confirmation: a message on a session with the pinned identity is from
    /// that identity), else why not.
    pub fn trust_of(
        &self,
        user: &str,
        identity: &PublicIdentity,
    ) -> Option<crate::IdentityWarning> {
        match self.pins.get(user) {
            Some(pin) if pin.identity == *identity => None,
            _ => Some(crate::IdentityWarning::Changed),
        }
    }

    /// The state file's bytes.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        self.encode_sessions(
            self.sessions
                .iter()
                .map(|(a, list)| (a.clone(), list.iter().map(Session::to_bytes).collect())),
            &self.seqs_to_save(),
        )
    }

    /// The sequence numbers a save writes, reserving ahead (they are not
    /// bounded by the peer, so every save may).
    fn seqs_to_save(&self) -> Vec<(ConversationId, u64)> {
        self.send_seqs
            .iter()
            .map(|(c, s)| (*c, s.to_save()))
            .collect()
    }

    /// The state file's bytes, reserving `sends` sends (docs/PROTOCOL.md
    /// §13.1): on the active session with `peer` when the save is made for a
    /// send to it ([`Session::to_bytes_reserving`]); with `peer` `None`, on
    /// each active session only if its sending chain was created in this
    /// lifetime ([`Session::to_bytes_reserving_new_chain`]), and not at all
    /// when `sends` is 0. Every other session is written without a new
    /// reservation. Once the bytes are durable, [`State::confirm_saved`]
    /// lets the reserved messages leave without another save.
    pub fn encode_reserving(
        &mut self,
        peer: Option<&Address>,
        sends: u32,
    ) -> (Zeroizing<Vec<u8>>, Reserved) {
        let mut reserved = Vec::new();
        let sessions: Vec<(Address, Vec<Zeroizing<Vec<u8>>>)> = self
            .sessions
            .iter_mut()
            .map(|(a, list)| {
                let encoded = list
                    .iter_mut()
                    .enumerate()
                    .map(|(i, session)| {
                        let (bytes, at) = match peer {
                            _ if i > 0 || sends == 0 => return session.to_bytes(),
                            Some(p) if p == a => session.to_bytes_reserving(sends),
                            Some(_) => return session.to_bytes(),
                            None => session.to_bytes_reserving_new_chain(sends),
                        };
                        reserved.push((a.clone(), i, at));
                        bytes
                    })
                    .collect();
                (a.clone(), encoded)
            })
            .collect();
        let seqs = self.seqs_to_save();
        let bytes = self.encode_sessions(sessions, &seqs);
        (
            bytes,
            Reserved {
                sessions: reserved,
                seqs,
            },
        )
    }

    /// The state file's bytes around already serialized sessions.
    fn encode_sessions(
        &self,
        sessions: impl IntoIterator<Item = (Address, Vec<Zeroizing<Vec<u8>>>)>,
        seqs: &[(ConversationId, u64)],
    ) -> Zeroizing<Vec<u8>> {
        let sessions: Vec<(Address, Vec<Zeroizing<Vec<u8>>>)> = sessions.into_iter().collect();
        let device = self.device.to_bytes();
        // A hint: SecretBuf wipes what it outgrows, so no estimate is unsafe.
        let capacity = 1024
            + device.len()
            + sessions
                .iter()
                .flat_map(|(_, list)| list.iter().map(|s| s.len() + 16))
                .sum::<usize>()
            + 256 * (self.pins.len() + self.recv_seqs.len() + self.sessions.len())
            + 20 * self.control_ids.len()
            + self
                .outbox
                .values()
                .flat_map(|o| o.pending.values())
                .map(|p| 80 + p.text.as_ref().map_or(0, |t| t.len()))
                .sum::<usize>();
        let pins: Vec<([u8; 64], Option<[u8; 64]>)> = self
            .pins
            .values()
            .map(|p| {
                (
                    identity_bytes(&p.identity),
                    p.changed_to.as_ref().map(identity_bytes),
                )
            })
            .collect();
        let record = StateRecord {
            version: STATE_VERSION,
            server: &self.server,
            user: &self.user,
            device_number: self.device_number,
            token: self.token.as_ref().map(|t| t.as_slice().into()),
            device: device.as_slice().into(),
            sessions: sessions
                .iter()
                .map(|(addr, list)| PeerSessions {
                    user: &addr.user,
                    device: addr.device,
                    sessions: list.iter().map(|s| s.as_slice().into()).collect(),
                })
                .collect(),
            pins: self
                .pins
                .iter()
                .zip(&pins)
                .map(|((user, pin), (identity, changed_to))| PinRecord {
                    user,
                    identity: identity.as_slice().into(),
                    verified: pin.verified,
                    changed_to: changed_to.as_ref().map(|c| c.as_slice().into()),
                })
                .collect(),
            send_seqs: Some(
                seqs.iter()
                    .map(|(conversation, saved)| SendSeqRecord {
                        conversation: conversation.as_slice().into(),
                        saved: *saved,
                    })
                    .collect(),
            ),
            recv_seqs: Some(self.recv_seqs.iter().map(recv_seq_record).collect()),
            outbox: Some(self.outbox.iter().map(outbox_record).collect()),
            control_ids: Some(
                self.control_ids
                    .iter()
                    .map(|id| id.as_slice().into())
                    .collect(),
            ),
        };
        let mut buf = SecretBuf::with_capacity(capacity);
        let result = minicbor::encode(&record, &mut buf);
        debug_assert!(result.is_ok());
        buf.into_inner()
    }

    /// Takes the Double Ratchet's pending sending step of every active
    /// session now, so that a save made next can reserve on the new chains.
    pub fn prepare_sending(&mut self) {
        for list in self.sessions.values_mut() {
            if let Some(active) = list.first_mut() {
                // A failure here (a peer ratchet key with no contributory
                // DH) is reported by the send that would need the chain.
                let _ = active.prepare_sending(&mut rand::rng());
            }
        }
    }

    /// The bytes of [`State::encode_reserving`] are durable.
    pub fn confirm_saved(&mut self, reserved: Reserved) {
        for (addr, i, at) in reserved.sessions {
            if let Some(session) = self.sessions.get_mut(&addr).and_then(|l| l.get_mut(i)) {
                session.confirm_saved(at);
            }
        }
        for (conversation, saved) in reserved.seqs {
            if let Some(s) = self.send_seqs.get_mut(&conversation) {
                s.reserved = s.reserved.max(saved);
            }
        }
    }

    /// A save failed: every session's next send saves first.
    pub fn forget_reservations(&mut self) {
        for session in self.sessions.values_mut().flatten() {
            session.forget_reservation();
        }
    }

    /// Parses a state file.
    pub fn decode(bytes: &[u8]) -> Result<State, ClientError> {
        let mut d = Decoder::new(bytes);
        // Files written before authenticated delivery have 8 fields.
        let fields = d.array().map_err(bad)?;
        if !matches!(fields, Some(8 | 10 | 11 | 12)) || d.u64().map_err(bad)? != STATE_VERSION {
            return Err(ClientError::State("unsupported state file version".into()));
        }
        let mut d = Decoder::new(bytes);
        let record: StateRecord<'_> = d.decode().map_err(bad)?;
        if d.position() != bytes.len() {
            return Err(ClientError::State(
                "trailing bytes in the state file".into(),
            ));
        }
        let device = Device::from_bytes(record.device)?;
        let mut state = State::new(
            record.server.to_owned(),
            record.user.to_owned(),
            record.device_number,
            device,
        );
        state.token = record.token.map(|t| Zeroizing::new(t.to_vec()));
        for peer in record.sessions {
            let list = peer
                .sessions
                .into_iter()
                .map(|s| Session::from_bytes(s))
                .collect::<Result<Vec<_>, _>>()?;
            let addr = Address {
                user: peer.user.to_owned(),
                device: peer.device,
            };
            state.sessions.insert(addr, list);
        }
        for pin in record.pins {
            state.restore_pin(pin)?;
        }
        for s in record.send_seqs.unwrap_or_default() {
            state.send_seqs.insert(
                fixed(s.conversation, "conversation id")?,
                SendSeq::restored(s.saved),
            );
        }
        for r in record.recv_seqs.unwrap_or_default() {
            let (key, seq) = recv_seq_from(r)?;
            state.recv_seqs.insert(key, seq);
        }
        for o in record.outbox.unwrap_or_default() {
            let (key, outbox) = outbox_from(o)?;
            state.outbox.insert(key, outbox);
        }
        for id in record.control_ids.unwrap_or_default() {
            state.mark_control(fixed(id, "message id")?);
        }
        Ok(state)
    }

    /// Pins are per user; files of earlier versions pinned each device: the
    /// first device's identity becomes the user's, and another one a change
    /// awaiting confirmation.
    fn restore_pin(&mut self, pin: PinRecord<'_>) -> Result<(), ClientError> {
        let identity = identity_from(pin.identity)?;
        let changed_to = pin.changed_to.map(identity_from).transpose()?;
        match self.pins.get_mut(pin.user) {
            None => {
                self.pins.insert(
                    pin.user.to_owned(),
                    Pin {
                        identity,
                        verified: pin.verified,
                        changed_to,
                    },
                );
            }
            Some(existing) => {
                let other = changed_to
                    .filter(|c| *c != existing.identity)
                    .or((identity != existing.identity).then_some(identity));
                if existing.changed_to.is_none() {
                    existing.changed_to = other;
                }
                existing.verified &= pin.verified;
            }
        }
        Ok(())
    }
}

/// A fixed-length field of a record.
fn fixed<const N: usize>(bytes: &ByteSlice, what: &str) -> Result<[u8; N], ClientError> {
    <[u8; N]>::try_from(&**bytes)
        .map_err(|_| ClientError::State(format!("{what} of the wrong length")))
}

fn recv_seq_record<'a>(
    ((conversation, from, identity), r): (&'a RecvKey, &'a RecvSeq),
) -> RecvSeqRecord<'a> {
    RecvSeqRecord {
        conversation: conversation.as_slice().into(),
        user: &from.user,
        device: from.device,
        identity: identity.as_slice().into(),
        expected: r.expected,
        forgotten: r.forgotten,
        gaps: r
            .gaps
            .iter()
            .map(|g| GapRecord {
                from: g.from,
                to: g.to,
                noticed_ms: g.noticed_ms,
                reported: g.reported,
                skipped: Some(g.skipped),
            })
            .collect(),
        known_from: Some(r.known_from),
    }
}

fn recv_seq_from(r: RecvSeqRecord<'_>) -> Result<(RecvKey, RecvSeq), ClientError> {
    let mut seq = RecvSeq {
        expected: r.expected,
        forgotten: r.forgotten,
        known_from: r.known_from.unwrap_or_default(),
        ..RecvSeq::default()
    };
    seq.gaps.extend(r.gaps.into_iter().map(|g| Gap {
        from: g.from,
        to: g.to,
        noticed_ms: g.noticed_ms,
        reported: g.reported,
        skipped: g.skipped.unwrap_or(false),
    }));
    let from = Address {
        user: r.user.to_owned(),
        device: r.device,
    };
    Ok((
        (
            fixed(r.conversation, "conversation id")?,
            from,
            fixed(r.identity, "identity key")?,
        ),
        seq,
    ))
}

fn outbox_record<'a>(
    ((conversation, to), outbox): (&'a (ConversationId, Address), &'a Outbox),
) -> OutboxRecord<'a> {
    OutboxRecord {
        conversation: conversation.as_slice().into(),
        user: &to.user,
        device: to.device,
        evicted: outbox.evicted,
        pending: outbox
            .pending
            .iter()
            .map(|(seq, p)| PendingRecord {
                seq: *seq,
                message_id: p.message_id.as_slice().into(),
                floor: p.floor,
                sealed_at_ms: p.sealed_at_ms,
                stored_at_ms: p.stored_at_ms,
                reported: p.reported,
                text: Nullable(p.text.as_ref().map(|t| t.as_slice().into())),
            })
            .collect(),
    }
}

fn outbox_from(o: OutboxRecord<'_>) -> Result<((ConversationId, Address), Outbox), ClientError> {
    let mut outbox = Outbox {
        evicted: o.evicted,
        ..Outbox::default()
    };
    for p in o.pending {
        outbox.pending.insert(
            p.seq,
            Pending {
                message_id: fixed(p.message_id, "message id")?,
                floor: p.floor,
                sealed_at_ms: p.sealed_at_ms,
                stored_at_ms: p.stored_at_ms,
                reported: p.reported,
                text: p.text.0.map(|t| Zeroizing::new(t.to_vec())),
            },
        );
    }
    let to = Address {
        user: o.user.to_owned(),
        device: o.device,
    };
    Ok(((fixed(o.conversation, "conversation id")?, to), outbox))
}

/// Where the state lives: `DIR/state.cbor`. Clones share the lock and the
/// write order.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    shared: Arc<Shared>,
    storage: Arc<dyn Storage>,
    /// A handle that does not own the directory only reads.
    read_only: bool,
    /// The data key, once unlocked.
    vault: Option<Arc<Vault>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The exclusive lock on `DIR/lock`, held while any clone lives.
    lock: Option<std::fs::File>,
    /// The next generation handed out.
    next: AtomicU64,
    /// The newest generation written; held while writing.
    written: Mutex<u64>,
}

/// A generation of the encoded state ([`StateFile::generation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Generation(u64);

impl StateFile {
    /// The state file in `dir`, for reading only: no lock is taken, so it
    /// never writes (not even the repair of a torn log); saves fail.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateFile {
            read_only: true,
            ..Self::with_storage(dir, Arc::new(OsStorage))
        }
    }

    /// The state file in `dir` on another [`Storage`] (no lock is taken:
    /// the storage's owner keeps it to one client).
    pub fn with_storage(dir: impl Into<PathBuf>, storage: Arc<dyn Storage>) -> Self {
        StateFile {
            dir: dir.into(),
            shared: Arc::new(Shared::default()),
            storage,
            read_only: false,
            vault: None,
        }
    }

    /// The state file in `dir`, owned: takes the exclusive lock on
    /// `DIR/lock` (creating the directory), waiting up to `wait` for a
    /// previous owner to let go. The lock is released when the last clone is
    /// dropped, after any save in flight.
    pub fn acquire(dir: impl Into<PathBuf>, wait: Duration) -> Result<Self, ClientError> {
        let dir = dir.into();
        let path = dir.join("lock");
        let io = |e: std::io::Error| ClientError::io(&path, e);
        OsStorage.create_dir(&dir).map_err(io)?;
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io)?
        };
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = std::io::Read::read_to_string(&mut file, &mut text);
                    return Err(ClientError::HomeInUse {
                        home: dir.display().to_string(),
                        pid: text.trim().parse().ok(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        file.set_len(0).map_err(io)?;
        std::io::Seek::rewind(&mut file).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StateFile {
            dir,
            shared: Arc::new(Shared {
                lock: Some(file),
                ..Shared::default()
            }),
            storage: Arc::new(OsStorage),
            read_only: false,
            vault: None,
        })
    }

    /// The key file's path.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.cbor")
    }

    /// Opens the home with `passphrase`: unwraps the data key of
    /// `key.cbor`, or, on an owned handle where there is none, creates it
    /// and encrypts any files an older version left in the clear. A wrong
    /// passphrase is [`ClientError::WrongPassphrase`].
    pub fn unlock(mut self, passphrase: &Passphrase) -> Result<Self, ClientError> {
        let key_path = self.key_path();
        match self.storage.read(&key_path) {
            Ok(file) => self.vault = Some(Arc::new(Vault::unlock(&file, passphrase)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.read_only {
                    // Nothing to read without a key, unless an older
                    // version left state in the clear (load says so).
                    return Ok(self);
                }
                let (vault, file) = Vault::create(passphrase)?;
                self.write_atomic(&key_path, &file)?;
                self.vault = Some(Arc::new(vault));
            }
            Err(e) => return Err(ClientError::io(&key_path, e)),
        }
        if !self.read_only {
            self.encrypt_plaintext_files()?;
        }
        Ok(self)
    }

    /// Replaces the passphrase: rewrites `key.cbor` only (the data key, and
    /// so the other files, stay as they are).
    pub fn change_passphrase(&self, old: &Passphrase, new: &Passphrase) -> Result<(), ClientError> {
        self.writable()?;
        let key_path = self.key_path();
        let file = self
            .storage
            .read(&key_path)
            .map_err(|e| ClientError::io(&key_path, e))?;
        let rewrapped = Vault::rewrap(&file, old, new)?;
        self.write_atomic(&key_path, &rewrapped)
    }

    /// Encrypts a state file and message log that an older version wrote in
    /// the clear (each replaced atomically, so a crash leaves either form,
    /// and the next unlock finishes the work).
    fn encrypt_plaintext_files(&self) -> Result<(), ClientError> {
        let io = |p: &PathBuf, e: std::io::Error| ClientError::io(p, e);
        let path = self.path();
        match self.storage.read(&path) {
            Ok(bytes) if !bytes.starts_with(STATE_MAGIC) => {
                let bytes = Zeroizing::new(bytes);
                State::decode(&bytes)?;
                self.write_generation(&bytes, self.generation())?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
        let log = self.messages_path();
        match self.storage.read(&log) {
            Ok(bytes) if bytes.first() == Some(&0x85) => {
                let bytes = Zeroizing::new(bytes);
                let mut d = Decoder::new(&bytes);
                let mut records = SecretBuf::with_capacity(bytes.len() + 64);
                while d.position() < bytes.len() {
                    let start = d.position();
                    if decode_message(&mut d).is_err() {
                        break;
                    }
                    let record = bytes.get(start..d.position()).unwrap_or_default();
                    self.push_sealed_record(&mut records, record)?;
                }
                self.write_atomic(&log, records.as_slice())?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&log, e)),
        }
        Ok(())
    }

    fn vault(&self) -> Result<&Vault, ClientError> {
        self.vault.as_deref().ok_or_else(|| {
            ClientError::State(format!(
                "{} is encrypted and was not unlocked",
                self.dir.display()
            ))
        })
    }

    /// Seals one log record and appends it, length first, to `out`.
    fn push_sealed_record(&self, out: &mut SecretBuf, record: &[u8]) -> Result<(), ClientError> {
        let sealed = self.vault()?.seal(Purpose::LogRecord, record);
        if sealed.len() > MAX_LOG_RECORD {
            return Err(ClientError::State("a message too large to log".into()));
        }
        let mut w = |b: &[u8]| minicbor::encode::Write::write_all(out, b);
        let _ = w(&(sealed.len() as u32).to_be_bytes());
        let _ = w(&sealed);
        Ok(())
    }

    fn writable(&self) -> Result<(), ClientError> {
        if self.read_only {
            return Err(ClientError::State(format!(
                "{} was opened for reading only",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Whether this handle owns the directory ([`StateFile::acquire`]).
    pub fn is_owner(&self) -> bool {
        self.shared.lock.is_some()
    }

    /// A new generation, to be taken when the state is encoded: a save
    /// ([`StateFile::write_generation`]) older than one already written is
    /// dropped.
    pub fn generation(&self) -> Generation {
        Generation(self.shared.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join("state.cbor")
    }

    /// Loads the state; `None` if there is none yet. A message log whose
    /// last record a crash cut short is repaired first (cut back to its last
    /// whole record), so that records appended later are read.
    pub fn load(&self) -> Result<Option<State>, ClientError> {
        match self.storage.read(&self.path()) {
            Ok(sealed) => {
                let Some(body) = sealed.strip_prefix(STATE_MAGIC.as_slice()) else {
                    return Err(ClientError::State(format!(
                        "{} was written by an older version, in the clear; \
                         run any command that uses this home to encrypt it",
                        self.path().display()
                    )));
                };
                let bytes = self.vault()?.open(Purpose::State, body).ok_or_else(|| {
                    ClientError::State(format!("{} is damaged", self.path().display()))
                })?;
                let mut state = State::decode(&bytes)?;
                for m in self.read_log(!self.read_only)? {
                    state.mark_seen(m.message_id);
                }
                Ok(Some(state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::io(self.path(), e)),
        }
    }

    /// The message log's path.
    pub fn messages_path(&self) -> PathBuf {
        self.dir.join("messages.cbor")
    }

    /// Appends decrypted messages to the log with one write and one flush to
    /// disk (and a flush of the directory when the write created the log).
    pub fn append_messages(&self, messages: &[StoredMessage]) -> Result<(), ClientError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.writable()?;
        let path = self.messages_path();
        let io = |e: std::io::Error| ClientError::io(&path, e);
        self.storage.create_dir(&self.dir).map_err(io)?;
        let size: usize = messages.iter().map(|m| m.text.len() + 160).sum();
        let mut records = SecretBuf::with_capacity(size);
        for m in messages {
            let mut record = SecretBuf::with_capacity(m.text.len() + 128);
            encode_message(m, &mut record);
            self.push_sealed_record(&mut records, record.as_slice())?;
        }
        let created = self.storage.append(&path, records.as_slice()).map_err(io)?;
        self.storage.sync_data(&path).map_err(io)?;
        if created {
            self.storage.sync_dir(&self.dir).map_err(io)?;
        }
        Ok(())
    }

    /// Every logged message, oldest first, without duplicates (a crash can
    /// log a message twice; its id tells).
    pub fn messages(&self) -> Result<Vec<StoredMessage>, ClientError> {
        self.read_log(false)
    }

    fn read_log(&self, repair: bool) -> Result<Vec<StoredMessage>, ClientError> {
        let path = self.messages_path();
        let io = |e: std::io::Error| ClientError::io(&path, e);
        let bytes = match self.storage.read(&path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        if bytes.first() == Some(&0x85) {
            return Err(ClientError::State(format!(
                "{} was written by an older version, in the clear; \
                 run any command that uses this home to encrypt it",
                path.display()
            )));
        }
        let vault = self.vault()?;
        let mut out = Vec::new();
        let mut ids = HashSet::new();
        let mut whole = 0;
        let mut at = 0;
        while at < bytes.len() {
            match open_record(vault, &bytes, at) {
                Some((record, next)) => {
                    let m = decode_message(&mut Decoder::new(&record)).map_err(|_| {
                        ClientError::State(format!("{} is damaged at byte {at}", path.display()))
                    })?;
                    at = next;
                    whole = next;
                    if ids.insert(m.message_id) {
                        out.push(m);
                    }
                }
                None => {
                    // A record a crash cut short (or left unwritten) ends
                    // the log; one that fails with whole records after it
                    // is damage, not a crash.
                    let mut probe = at;
                    while let Some(next) = record_end(&bytes, probe) {
                        if open_record(vault, &bytes, probe).is_some() {
                            return Err(ClientError::State(format!(
                                "{} is damaged at byte {at}",
                                path.display()
                            )));
                        }
                        probe = next;
                    }
                    break;
                }
            }
        }
        if repair && whole < bytes.len() {
            self.storage
                .truncate(&path, whole as u64)
                .and_then(|()| self.storage.sync(&path))
                .map_err(io)?;
        }
        Ok(out)
    }

    /// Writes the state atomically and durably (temp file, fsync, rename,
    /// directory fsync).
    pub fn save(&self, state: &State) -> Result<(), ClientError> {
        self.write_generation(&state.encode(), self.generation())
    }

    /// Writes an encoded state ([`State::encode`]) atomically and durably.
    pub fn write_encoded(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.write_generation(bytes, self.generation())
    }

    /// Writes an encoded state of generation `generation` atomically and
    /// durably, unless a newer generation is already written (then the
    /// newer state stands and this returns `Ok`). Saves run one at a time.
    pub fn write_generation(
        &self,
        bytes: &[u8],
        generation: Generation,
    ) -> Result<(), ClientError> {
        let mut written = self
            .shared
            .written
            .lock()
            .map_err(|_| ClientError::State("a save panicked".into()))?;
        if generation.0 <= *written {
            return Ok(());
        }
        self.writable()?;
        let mut sealed = STATE_MAGIC.to_vec();
        sealed.extend_from_slice(&self.vault()?.seal(Purpose::State, bytes));
        self.write_atomic(&self.path(), &sealed)?;
        *written = generation.0;
        Ok(())
    }

    /// The file transfers' record (`transfers.cbor`, sealed like the
    /// state): uploads under way, downloads done. Empty if there is none.
    pub(crate) fn transfers(&self) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        self.sealed_record("transfers.cbor", Purpose::Transfers)
    }

    /// Replaces the file transfers' record atomically and durably.
    pub(crate) fn save_transfers(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.save_sealed_record("transfers.cbor", Purpose::Transfers, bytes)
    }

    /// The groups' record (`groups.cbor`, sealed like the state): each
    /// group's chain of changes and keys. Empty if there is none.
    pub(crate) fn groups(&self) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        self.sealed_record("groups.cbor", Purpose::Groups)
    }

    /// Replaces the groups' record atomically and durably.
    pub(crate) fn save_groups(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.save_sealed_record("groups.cbor", Purpose::Groups, bytes)
    }

    /// The plaintext of the home's file `name`, sealed for `purpose`;
    /// empty if there is none.
    fn sealed_record(
        &self,
        name: &str,
        purpose: Purpose,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let path = self.dir.join(name);
        match self.storage.read(&path) {
            Ok(sealed) => self
                .vault()?
                .open(purpose, &sealed)
                .ok_or_else(|| ClientError::State(format!("{} is damaged", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Zeroizing::new(Vec::new())),
            Err(e) => Err(ClientError::io(&path, e)),
        }
    }

    /// Replaces the home's file `name` with `bytes` sealed for `purpose`,
    /// atomically and durably.
    fn save_sealed_record(
        &self,
        name: &str,
        purpose: Purpose,
        bytes: &[u8],
    ) -> Result<(), ClientError> {
        let sealed = self.vault()?.seal(purpose, bytes);
        self.write_atomic(&self.dir.join(name), &sealed)
    }

    /// Replaces `path` atomically and durably: a temporary file of its own,
    /// `fsync`, rename, `fsync` of the directory; any failure is a failure.
    fn write_atomic(&self, path: &std::path::Path, bytes: &[u8]) -> Result<(), ClientError> {
        self.writable()?;
        let io = |e: std::io::Error| ClientError::io(path, e);
        self.storage.create_dir(&self.dir).map_err(io)?;
        let mut suffix = [0u8; 8];
        rand::rng().fill_bytes(&mut suffix);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = self.dir.join(format!(
            "{name}.{}.{}.tmp",
            std::process::id(),
            u64::from_le_bytes(suffix)
        ));
        let result = (|| {
            self.storage.write_new(&tmp, bytes)?;
            self.storage.sync(&tmp)?;
            self.storage.rename(&tmp, path)?;
            // The rename is durable only once the directory is.
            self.storage.sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = self.storage.remove(&tmp);
        }
        result.map_err(io)
    }
}

/// The end of the sealed log record at `at`, if it is whole.
fn record_end(bytes: &[u8], at: usize) -> Option<usize> {
    let len = bytes.get(at..at.checked_add(4)?)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    if len > MAX_LOG_RECORD {
        return None;
    }
    let end = at.checked_add(4)?.checked_add(len)?;
    (end <= bytes.len()).then_some(end)
}

/// Opens the sealed log record at `at`: its plaintext and where the next
/// one starts.
fn open_record(vault: &Vault, bytes: &[u8], at: usize) -> Option<(Zeroizing<Vec<u8>>, usize)> {
    let end = record_end(bytes, at)?;
    let sealed = bytes.get(at + 4..end)?;
    Some((vault.open(Purpose::LogRecord, sealed)?, end))
}

/// A log record's plaintext ([`MessageRecord`]).
fn encode_message<W: minicbor::encode::Write>(m: &StoredMessage, w: W) {
    let record = MessageRecord {
        user: &m.from.user,
        device: m.from.device,
        sent_at_ms: m.sent_at_ms,
        message_id: m.message_id.as_slice().into(),
        text: m.text.as_slice().into(),
        file: m.file.clone(),
        group: m.group.map(Into::into),
    };
    let result = minicbor::encode(&record, w);
    debug_assert!(result.is_ok());
}

fn decode_message(d: &mut Decoder<'_>) -> Result<StoredMessage, ClientError> {
    let record: MessageRecord<'_> = d.decode().map_err(bad)?;
    Ok(StoredMessage {
        from: Address {
            user: record.user.to_owned(),
            device: record.device,
        },
        sent_at_ms: record.sent_at_ms,
        message_id: fixed(record.message_id, "message id")?,
        text: record.text.to_vec(),
        file: record.file,
        group: record.group.map(|g| *g),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::delivery::SEQ_RESERVATION;
    use crate::vault::KdfCost;
    use minicbor::Encoder;

    fn pass(s: &str) -> Passphrase {
        Passphrase::with_cost(s, KdfCost::MINIMUM).unwrap()
    }

    /// What the state file holds, decrypted.
    fn plain(file: &StateFile) -> Vec<u8> {
        let sealed = std::fs::read(file.path()).unwrap();
        let body = sealed.strip_prefix(STATE_MAGIC.as_slice()).unwrap();
        file.vault()
            .unwrap()
            .open(Purpose::State, body)
            .unwrap()
            .to_vec()
    }

    /// Files of earlier versions load: one with 8 fields and a pin per
    /// device (the first device's identity becomes the user's, the other a
    /// change awaiting confirmation), and one with 10 fields whose receive
    /// sequence has 7 fields and its gap 4.
    #[test]
    fn files_of_earlier_versions_still_load() {
        let device = Device::generate(&mut rand::rng());
        let device_bytes = device.to_bytes();
        let first = Device::generate(&mut rand::rng()).public_identity();
        let second = Device::generate(&mut rand::rng()).public_identity();
        let head = |e: &mut Encoder<Vec<u8>>, fields: u64| {
            e.array(fields).unwrap().u64(1).unwrap();
            e.str("ws://x").unwrap().str("me").unwrap().u32(3).unwrap();
            e.null()
                .unwrap()
                .bytes(&device_bytes)
                .unwrap()
                .array(0)
                .unwrap();
            e.array(2).unwrap();
            e.array(5).unwrap().str("bob").unwrap().u32(1).unwrap();
            e.bytes(&first.to_bytes())
                .unwrap()
                .bool(true)
                .unwrap()
                .null()
                .unwrap();
            e.array(6).unwrap().str("bob").unwrap().u32(2).unwrap();
            e.bytes(&second.to_bytes())
                .unwrap()
                .bool(true)
                .unwrap()
                .null()
                .unwrap();
            e.bool(false).unwrap();
        };
        let mut e = Encoder::new(Vec::new());
        head(&mut e, 8);
        let old = State::decode(e.writer()).unwrap();
        assert_eq!(old.user, "me");
        assert_eq!(
            old.pins["bob"],
            Pin {
                identity: first,
                verified: true,
                changed_to: Some(second),
            }
        );
        assert!(old.send_seqs.is_empty() && old.recv_seqs.is_empty() && old.outbox.is_empty());

        let mut e = Encoder::new(Vec::new());
        head(&mut e, 10);
        e.array(1)
            .unwrap()
            .array(2)
            .unwrap()
            .bytes(&[3; 16])
            .unwrap()
            .u64(5)
            .unwrap();
        e.array(1)
            .unwrap()
            .array(7)
            .unwrap()
            .bytes(&[3; 16])
            .unwrap();
        e.str("bob")
            .unwrap()
            .u32(1)
            .unwrap()
            .bytes(&[4; 32])
            .unwrap();
        e.u64(9).unwrap().u64(2).unwrap();
        e.array(1)
            .unwrap()
            .array(4)
            .unwrap()
            .u64(3)
            .unwrap()
            .u64(5)
            .unwrap();
        e.u64(100).unwrap().bool(true).unwrap();
        let newer = State::decode(e.writer()).unwrap();
        let bob = Address {
            user: "bob".into(),
            device: 1,
        };
        let r = &newer.recv_seqs[&([3; 16], bob, [4; 32])];
        assert_eq!((r.expected, r.forgotten, r.known_from), (9, 2, 0));
        let gap = r.gaps.front().unwrap();
        assert_eq!(
            (gap.from, gap.to, gap.reported, gap.skipped),
            (3, 5, true, false)
        );
        assert_eq!(newer.send_seqs[&[3; 16]], SendSeq::restored(5));
        assert!(newer.outbox.is_empty() && newer.control_ids.is_empty());

        // A version this one does not know is named as such.
        let mut e = Encoder::new(Vec::new());
        e.array(8).unwrap().u64(2).unwrap();
        assert!(matches!(
            State::decode(e.writer()),
            Err(ClientError::State(_))
        ));
    }

    /// Sequence numbers, gaps and pins survive a save and a load, with the
    /// longest user names (the encoding's size hints are only hints).
    #[test]
    fn delivery_state_and_pins_round_trip() {
        let long = "u".repeat(64);
        let device = Device::generate(&mut rand::rng());
        let mut state = State::new("ws://x".repeat(300), long.clone(), 7, device);
        let peer = Address {
            user: long.clone(),
            device: u32::MAX,
        };
        let identity = state.device.public_identity();
        state.pins.insert(
            long.clone(),
            Pin {
                identity,
                verified: true,
                changed_to: Some(identity),
            },
        );
        state.send_seqs.insert([3; 16], SendSeq::restored(41));
        let mut r = RecvSeq::default();
        r.arrive(5, 0, 100);
        r.forgotten = 9;
        r.arrive(90, 80, 100);
        r.known_from = 3;
        state
            .recv_seqs
            .insert(([3; 16], peer.clone(), [4; 32]), r.clone());
        let mut outbox = Outbox {
            evicted: 2,
            ..Outbox::default()
        };
        for (seq, text) in [(5, Some(vec![9u8; 300])), (u64::MAX, None)] {
            outbox.stored(
                seq,
                Pending {
                    message_id: [seq as u8; 16],
                    floor: 4,
                    sealed_at_ms: 6,
                    stored_at_ms: 7,
                    reported: true,
                    text: text.map(Zeroizing::new),
                },
            );
        }
        state.outbox.insert(([3; 16], peer.clone()), outbox);
        for i in 0..=MAX_CONTROL_IDS {
            state.mark_control([i as u8; 16]);
        }
        let back = State::decode(&state.encode()).unwrap();
        assert_eq!(back.control_ids, state.control_ids);
        assert!(back.seen(&[5; 16]) && back.control_ids.len() == MAX_CONTROL_IDS);
        assert_eq!(back.pins, state.pins);
        assert_eq!(back.recv_seqs, state.recv_seqs);
        assert_eq!(back.outbox, state.outbox);
        // A load starts past the reservation the save wrote.
        assert_eq!(
            back.send_seqs[&[3; 16]],
            SendSeq::restored(41 + SEQ_RESERVATION)
        );
        assert_eq!(back.server, state.server);
        // A cut file says what failed to decode and keeps the decoder's error.
        let bytes = state.encode();
        match State::decode(&bytes[..bytes.len() / 2]) {
            Err(e @ ClientError::Malformed { .. }) => {
                assert!(std::error::Error::source(&e).is_some(), "{e}");
            }
            other => panic!("expected Malformed, got {:?}", other.map(|_| ())),
        }
    }

    /// A save whose caller gave up (its generation is older) never lands
    /// after a newer one: the newer state stands.
    #[test]
    fn an_older_generation_never_overwrites_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::acquire(dir.path(), Duration::ZERO)
            .unwrap()
            .unlock(&pass("p"))
            .unwrap();
        let (old, new) = (file.generation(), file.generation());
        file.write_generation(b"new", new).unwrap();
        file.write_generation(b"old", old).unwrap();
        assert_eq!(plain(&file), b"new");
        let newest = file.generation();
        file.write_generation(b"newest", newest).unwrap();
        assert_eq!(plain(&file), b"newest");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    /// A handle that does not own the directory never writes: not a save,
    /// not the repair of a torn log (another process may own it).
    #[test]
    fn a_reading_handle_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let owner = StateFile::acquire(dir.path(), Duration::ZERO)
            .unwrap()
            .unlock(&pass("p"))
            .unwrap();
        owner
            .save(&State::new(
                "ws://x".into(),
                "alice".into(),
                1,
                Device::generate(&mut rand::rng()),
            ))
            .unwrap();
        // A record whose length says more than the file holds.
        let torn = [0, 0, 0, 40, 7];
        std::fs::write(owner.messages_path(), torn).unwrap();
        let reader = StateFile::new(dir.path()).unlock(&pass("p")).unwrap();
        assert!(reader.load().unwrap().is_some());
        assert_eq!(
            std::fs::read(owner.messages_path()).unwrap(),
            torn,
            "repaired by a reader"
        );
        assert!(reader.save(&reader.load().unwrap().unwrap()).is_err());
        // The owner repairs it.
        owner.load().unwrap();
        assert!(std::fs::read(owner.messages_path()).unwrap().is_empty());
    }

    fn message(text: &[u8], id: u8) -> StoredMessage {
        StoredMessage {
            from: Address {
                user: "bob".into(),
                device: 1,
            },
            sent_at_ms: 1,
            message_id: [id; 16],
            text: text.to_vec(),
            file: None,
            group: None,
        }
    }

    /// Whether `needle` occurs in `haystack` (the leak check below).
    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Neither file holds a private key, a name or a message in the clear;
    /// the check finds all three in the files an unencrypting version wrote
    /// (its mutant), and only the right passphrase opens them.
    #[test]
    fn files_at_rest_hold_no_secret_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::acquire(dir.path(), Duration::ZERO)
            .unwrap()
            .unlock(&pass("p"))
            .unwrap();
        let state = State::new(
            "ws://x".into(),
            "markeruser".into(),
            1,
            Device::generate(&mut rand::rng()),
        );
        let secrets: Vec<Vec<u8>> = vec![
            state.device.to_bytes().to_vec(),
            b"markeruser".to_vec(),
            b"the secret text".to_vec(),
        ];
        file.save(&state).unwrap();
        file.append_messages(&[message(b"the secret text", 1)])
            .unwrap();
        let check = |state_bytes: &[u8], log_bytes: &[u8]| {
            secrets
                .iter()
                .filter(|s| contains(state_bytes, s) || contains(log_bytes, s))
                .count()
        };
        let on_disk = (
            std::fs::read(file.path()).unwrap(),
            std::fs::read(file.messages_path()).unwrap(),
        );
        assert_eq!(check(&on_disk.0, &on_disk.1), 0);
        // The mutant: the same state and log as an older version wrote them.
        let mut log = Vec::new();
        encode_message(&message(b"the secret text", 1), &mut log);
        assert_eq!(check(&state.encode(), &log), 3);
        // They load with the passphrase, and not without it.
        assert_eq!(file.load().unwrap().unwrap().user, "markeruser");
        assert_eq!(
            file.messages().unwrap(),
            vec![message(b"the secret text", 1)]
        );
        drop(file);
        let wrong = StateFile::acquire(dir.path(), Duration::ZERO)
            .unwrap()
            .unlock(&pass("q"));
        assert!(matches!(wrong, Err(ClientError::WrongPassphrase)));
        let locked = StateFile::new(dir.path());
        assert!(matches!(locked.load(), Err(ClientError::State(_))));
    }

    /// Files an older version left in the clear are encrypted by the first
    /// owner that unlocks them, nothing lost; a passphrase change keeps them.
    #[test]
    fn plaintext_files_are_encrypted_in_place_and_the_passphrase_can_change() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::new(
            "ws://x".into(),
            "alice".into(),
            1,
            Device::generate(&mut rand::rng()),
        );
        std::fs::write(dir.path().join("state.cbor"), state.encode()).unwrap();
        let mut log = Vec::new();
        for (text, id) in [(&b"one"[..], 1u8), (b"two", 2)] {
            encode_message(&message(text, id), &mut log);
        }
        std::fs::write(dir.path().join("messages.cbor"), &log).unwrap();
        // A reader cannot, and says why.
        let reader = StateFile::new(dir.path()).unlock(&pass("p")).unwrap();
        assert!(
            reader
                .load()
                .unwrap_err()
                .to_string()
                .contains("older version")
        );
        let file = StateFile::acquire(dir.path(), Duration::ZERO)
            .unwrap()
            .unlock(&pass("p"))
            .unwrap();
        assert!(!contains(
            &std::fs::read(file.messages_path()).unwrap(),
            b"two"
        ));
        assert!(std::fs::read(file.path()).unwrap().starts_with(STATE_MAGIC));
        assert_eq!(file.load().unwrap().unwrap().user, "alice");
        let expected = vec![message(b"one", 1), message(b"two", 2)];
        assert_eq!(file.messages().unwrap(), expected);
        file.change_passphrase(&pass("p"), &pass("new")).unwrap();
        assert!(matches!(
            file.change_passphrase(&pass("p"), &pass("x")),
            Err(ClientError::WrongPassphrase)
        ));
        drop(file);
        let file = StateFile::acquire(dir.path(), Duration::ZERO)
            .unwrap()
            .unlock(&pass("new"))
            .unwrap();
        assert_eq!(file.messages().unwrap(), expected);
    }

    /// A log cut short or left unwritten at its end by a crash is cut back
    /// to its last whole record; a damaged record with whole ones after it
    /// is an error, not a silent loss of everything after it.
    #[test]
    fn a_torn_log_tail_is_repaired_and_damage_inside_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::acquire(dir.path(), Duration::ZERO)
            .unwrap()
            .unlock(&pass("p"))
            .unwrap();
        file.save(&State::new(
            "ws://x".into(),
            "alice".into(),
            1,
            Device::generate(&mut rand::rng()),
        ))
        .unwrap();
        file.append_messages(&[message(b"one", 1)]).unwrap();
        let one = std::fs::read(file.messages_path()).unwrap();
        file.append_messages(&[message(b"two", 2)]).unwrap();
        let both = std::fs::read(file.messages_path()).unwrap();
        for tail in [&both[one.len()..one.len() + 9], &[0u8; 40][..]] {
            let mut torn = one.clone();
            torn.extend_from_slice(tail);
            std::fs::write(file.messages_path(), &torn).unwrap();
            file.load().unwrap();
            assert_eq!(std::fs::read(file.messages_path()).unwrap(), one);
        }
        let mut damaged = both.clone();
        damaged[10] ^= 1;
        std::fs::write(file.messages_path(), &damaged).unwrap();
        assert!(
            file.messages()
                .unwrap_err()
                .to_string()
                .contains("damaged at byte 0")
        );
    }

    /// A second owner is refused with the first one's process id; the
    /// directory is free again once every clone of the first is dropped.
    #[test]
    fn the_lock_names_its_owner_and_is_released_with_the_last_clone() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateFile::acquire(dir.path(), Duration::ZERO).unwrap();
        let clone = first.clone();
        drop(first);
        match StateFile::acquire(dir.path(), Duration::ZERO) {
            Err(ClientError::HomeInUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected HomeInUse, got {other:?}"),
        }
        drop(clone);
        assert!(
            StateFile::acquire(dir.path(), Duration::ZERO)
                .unwrap()
                .is_owner()
        );
    }
}
