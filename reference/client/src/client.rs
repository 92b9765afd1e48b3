//! The high-level client: an account on a server, its keys and sessions,
//! and the send/receive loop.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatify_core::{Device, MAX_RESERVED_SENDS, SafetyNumber, SecretBuf, Session, VerifiedBundle};
use chatify_proto::content::MAX_BODY_LEN;
use chatify_proto::frame::{self, Address, Deliver};
use chatify_proto::{Body, Content, ConversationId, Envelope, MessageId};
use rand::Rng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ClientError;
use crate::connection::{Connection, Push, expect, tls_config};
use crate::delivery::{Arrival, SendSeq};
use crate::state::{Pin, State, StateFile, StoredMessage};
use crate::vault::Passphrase;

/// How long [`Client::login`] and [`Client::resume`] wait for another
/// owner of the home directory to let go before failing with
/// [`ClientError::HomeInUse`].
pub const OWNER_WAIT: Duration = Duration::from_secs(2);

/// One-time prekeys a device keeps published.
pub const PREKEY_TARGET: u32 = 100;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `ws://host:port` or `wss://host:port`.
    pub url: String,
    /// Trust anchors for `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ConnectOptions {
    /// Plain options for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            tls: None,
        }
    }

    /// Trusts the CA certificates in a PEM file (for `wss://`).
    pub fn with_ca_cert(mut self, pem: &Path) -> Result<Self, ClientError> {
        self.tls = Some(tls_config(pem)?);
        Ok(self)
    }
}

/// A decrypted incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The sender device (as the server says; the session authenticates it).
    pub from: Address,
    /// The conversation.
    pub conversation: ConversationId,
    /// The sender's message id.
    pub message_id: MessageId,
    /// The server's acceptance time, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// When the sender sealed it, by the sender's clock (authenticated).
    pub sealed_at_ms: u64,
    /// The sender device's sequence number in this conversation.
    pub seq: u64,
    /// Set when later messages from the same device arrived first: the
    /// server held this one back (or the network reordered it).
    pub late: Option<Late>,
    /// The plaintext.
    pub text: Vec<u8>,
    /// Why the sender device is not trusted as the user it claims to be, if
    /// it is not: warn on this message, as on every message until the user
    /// confirms; sending to the user is blocked until then.
    pub warning: Option<IdentityWarning>,
    /// When this client had the plaintext (before the batch's durable commit
    /// and acknowledgement): what end-to-end latency is measured to.
    pub decrypted_at: Instant,
}

impl Incoming {
    /// Whether the sender is not (yet) trusted as the user it claims to be:
    /// a changed identity or an unconfirmed device ([`Incoming::warning`]).
    pub fn identity_changed(&self) -> bool {
        self.warning.is_some()
    }
}

/// A decrypted delivery: plaintext, trust warning, sender identity key.
type Opened = (Zeroizing<Vec<u8>>, Option<IdentityWarning>, [u8; 32]);

/// How late a message arrived ([`Incoming::late`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// Later messages from the same device that arrived before it.
    pub behind: u64,
    /// Since this client noticed it was missing, in ms.
    pub waited_ms: u64,
}

/// How long a gap may stay open before it is reported by default.
pub const MISSING_GRACE: Duration = Duration::from_secs(30);

/// Why a message's sender is not trusted as the user it claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityWarning {
    /// The device presented an identity other than the one pinned for it.
    Changed,
    /// A device of the user this client has not seen before, while another
    /// device of the user is pinned: it may be the server's, not the user's.
    NewDevice,
}

/// What [`Client::next_event`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message, decrypted and stored; it was acknowledged to the server.
    Message(Incoming),
    /// An envelope that did not decrypt or verify (tampered, replayed,
    /// forged, misdirected). It was acknowledged and dropped.
    Rejected {
        /// The claimed sender.
        from: Address,
        /// The server's sequence number.
        seq: u64,
        /// Why, as the core reported it.
        reason: String,
    },
    /// A redelivery of a message already shown (dropped, acknowledged again).
    Duplicate {
        /// The sender.
        from: Address,
        /// The message id.
        message_id: MessageId,
    },
    /// Messages from `from` that never arrived: a later one did, and the
    /// grace period passed. The server dropped or is withholding them (or
    /// they are still on their way). Reported once per gap.
    Missing {
        /// The sender device.
        from: Address,
        /// How many messages.
        count: u64,
    },
    /// The server asked for prekeys and this many were published.
    KeysReplenished(u32),
    /// The server closed the connection (code and reason if it gave them).
    Disconnected(Option<(u16, String)>),
}

/// The server's receipt for a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReceipt {
    /// The server's sequence number.
    pub seq: u64,
    /// The message id.
    pub message_id: MessageId,
}

/// The conversation id of two users: the first 16 bytes of
/// `SHA-256("chatify/v1/conversation" || len || name || len || name)`, names sorted.
pub fn conversation_id(a: &str, b: &str) -> ConversationId {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    h.update(b"chatify/v1/conversation");
    for name in [x, y] {
        h.update((name.len() as u32).to_be_bytes());
        h.update(name.as_bytes());
    }
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(digest.as_slice().get(..16).unwrap_or(&[0u8; 16]));
    id
}

/// `user` or `user:device` (device 1 by default).
pub fn parse_peer(peer: &str) -> Result<Address, ClientError> {
    let (user, device) = match peer.split_once(':') {
        Some((u, d)) => (
            u,
            d.parse::<u32>()
                .ok()
                .filter(|d| *d > 0)
                .ok_or_else(|| ClientError::State(format!("bad device number in {peer:?}")))?,
        ),
        None => (peer, 1),
    };
    if user.is_empty() {
        return Err(ClientError::State("empty peer name".into()));
    }
    Ok(Address {
        user: user.to_owned(),
        device,
    })
}

/// How long the E2EE work of the last operations took (for measurements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// The last encryption (`Session::encrypt`).
    pub encrypt: Option<Duration>,
    /// The last decryption (`Session::decrypt` or `Device::accept`).
    pub decrypt: Option<Duration>,
    /// The last session setup (bundle fetch, verification, `Session::initiate`).
    pub setup: Option<Duration>,
}

/// A timestamped step of the client's work, for event timelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    /// When.
    pub at: Instant,
    /// What: `bundle requested`, `bundle verified`, `session set up`,
    /// `encrypted`, `state saved`, `sent`, `stored (SendOk)`, `delivered`,
    /// `decrypted`, `acked`.
    pub what: &'static str,
}

/// A logged-in client.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    state: State,
    file: StateFile,
    timings: Timings,
    decrypt_times: Vec<Duration>,
    trace: Option<Vec<TraceEvent>>,
    send_reservation: u32,
    missing_grace: Duration,
    queued: std::collections::VecDeque<Event>,
}

async fn authenticate(conn: &Connection, token: &[u8]) -> Result<(), ClientError> {
    let reply = conn
        .request(frame::Authenticate {
            token: token.to_vec(),
        })
        .await?;
    expect(reply, |b| matches!(b, Body::AuthOk(_)).then_some(()))
}

impl Client {
    /// Creates an account.
    pub async fn register(
        options: &ConnectOptions,
        user: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        let conn = Connection::connect(&options.url, options.tls.clone()).await?;
        let reply = conn
            .request(frame::Register {
                username: user.to_owned(),
                password: password.to_owned(),
            })
            .await;
        conn.shutdown().await;
        expect(reply?, |b| matches!(b, Body::Ok(_)).then_some(()))
    }

    /// Logs in as `device` of `user`, keeping state in `home`, encrypted
    /// under `passphrase` (docs/PROTOCOL.md §13.2): reuses the device keys
    /// found there for the same account, or creates them, and publishes
    /// them.
    pub async fn login(
        options: &ConnectOptions,
        home: &Path,
        passphrase: &Passphrase,
        user: &str,
        password: &str,
        device: u32,
    ) -> Result<Client, ClientError> {
        let file = StateFile::acquire(home, OWNER_WAIT)?.unlock(passphrase)?;
        Self::login_with(options, file, user, password, device).await
    }

    /// As [`Client::login`], with the state in `file`, unlocked (for a
    /// [`StateFile::with_storage`] on another storage).
    pub async fn login_with(
        options: &ConnectOptions,
        file: StateFile,
        user: &str,
        password: &str,
        device: u32,
    ) -> Result<Client, ClientError> {
        let conn = Connection::connect(&options.url, options.tls.clone()).await?;
        let reply = conn
            .request(frame::Login {
                username: user.to_owned(),
                password: password.to_owned(),
                device,
                second_factor: None,
            })
            .await?;
        let ok = expect(reply, |b| match b {
            Body::LoginOk(ok) => Some(ok),
            _ => None,
        })?;
        let mut state = match file.load()? {
            Some(s) if s.user == ok.user && s.device_number == ok.device => s,
            _ => State::new(
                options.url.clone(),
                ok.user.clone(),
                ok.device,
                Device::generate(&mut rand::rng()),
            ),
        };
        let fresh = state.device.one_time_prekey_count() == 0;
        state.server = options.url.clone();
        state.token = Some(Zeroizing::new(ok.token));
        authenticate(&conn, state.token.as_deref().map_or(&[][..], |t| &t[..])).await?;
        let mut client = Client::new(conn, state, file);
        client
            .publish(if fresh { PREKEY_TARGET as usize } else { 0 })
            .await?;
        Ok(client)
    }

    /// Reconnects with the state in `home` (after a restart).
    pub async fn resume(
        home: &Path,
        passphrase: &Passphrase,
        options: Option<&ConnectOptions>,
    ) -> Result<Client, ClientError> {
        let file = StateFile::acquire(home, OWNER_WAIT)?.unlock(passphrase)?;
        Self::resume_with(file, options).await
    }

    /// As [`Client::resume`], with the state in `file`, unlocked.
    pub async fn resume_with(
        file: StateFile,
        options: Option<&ConnectOptions>,
    ) -> Result<Client, ClientError> {
        let state = file.load()?.ok_or(ClientError::NotLoggedIn)?;
        let token = state.token.clone().ok_or(ClientError::NotLoggedIn)?;
        let (url, tls) = match options {
            Some(o) => (o.url.clone(), o.tls.clone()),
            None => (state.server.clone(), None),
        };
        let conn = Connection::connect(&url, tls).await?;
        authenticate(&conn, &token).await?;
        Ok(Client::new(conn, state, file))
    }

    fn new(conn: Connection, state: State, file: StateFile) -> Client {
        Client {
            conn,
            state,
            file,
            timings: Timings::default(),
            decrypt_times: Vec::new(),
            trace: None,
            send_reservation: MAX_RESERVED_SENDS,
            missing_grace: MISSING_GRACE,
            queued: std::collections::VecDeque::new(),
        }
    }

    /// Own address.
    pub fn address(&self) -> Address {
        self.state.address()
    }

    /// The local state (read-only).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// How many sends one save covers (1 to [`MAX_RESERVED_SENDS`]; the
    /// default is the maximum). A process that sends at most one message and
    /// exits (the CLI's `send` and `inbox`) should set 1: every key a save
    /// reserves and the process does not use is a gap its peer must bridge
    /// (docs/PROTOCOL.md §13.1).
    pub fn set_send_reservation(&mut self, sends: u32) {
        self.send_reservation = sends.clamp(1, MAX_RESERVED_SENDS);
    }

    /// Saves the state durably on a blocking thread (the write ends with
    /// fsync, which must not stall the async runtime other clients and tasks
    /// share). With `sending_to`, the save is the one a send needs: it takes
    /// the pending sending step of the active session with that peer and
    /// reserves its next [`Client::set_send_reservation`] keys. Any other
    /// save (after receiving, publishing, logging out) reserves only on
    /// sending chains created in this lifetime, so that a reply needs no
    /// save of its own, and not at all with a reservation of 1: such saves
    /// never move a restored chain, however many lifetimes they span.
    async fn persist(&mut self, sending_to: Option<&Address>) -> Result<(), ClientError> {
        let sends = match sending_to {
            Some(peer) => {
                if let Some(session) = self.state.active_session(peer) {
                    session.prepare_sending(&mut rand::rng())?;
                }
                let conversation = conversation_id(&self.state.user, &peer.user);
                self.state.send_seqs.entry(conversation).or_default();
                self.send_reservation
            }
            None if self.send_reservation > 1 => {
                self.state.prepare_sending();
                self.send_reservation
            }
            None => 0,
        };
        let (bytes, reserved) = self.state.encode_reserving(sending_to, sends);
        let generation = self.file.generation();
        let file = self.file.clone();
        let written =
            tokio::task::spawn_blocking(move || file.write_generation(&bytes, generation))
                .await
                .map_err(|e| ClientError::Io(e.to_string()))
                .and_then(|r| r);
        match written {
            Ok(()) => {
                self.state.confirm_saved(reserved);
                Ok(())
            }
            Err(e) => {
                self.state.forget_reservations();
                Err(e)
            }
        }
    }

    fn save(&self) -> Result<(), ClientError> {
        self.file.save(&self.state)
    }

    /// Generates `count` one-time prekeys, saves them, then publishes them
    /// with the identity and signed prekey (private halves are durable before
    /// the public halves are served).
    async fn publish(&mut self, count: usize) -> Result<u32, ClientError> {
        let keys = self.state.device.publish_keys(count, &mut rand::rng());
        let n = keys.one_time_prekeys.len() as u32;
        self.persist(None).await?;
        let reply = self.conn.request(keys).await?;
        expect(reply, |b| matches!(b, Body::Ok(_)).then_some(()))?;
        Ok(n)
    }

    /// Records the identity `peer` presented. The first device seen of a
    /// user is trusted on first use; a device whose identity changed, or a
    /// further device of a user already pinned, is recorded as awaiting
    /// confirmation (and returns the warning) until the user confirms.
    fn check_identity(
        &mut self,
        peer: &Address,
        presented: &chatify_core::PublicIdentity,
    ) -> Option<IdentityWarning> {
        let user_known = self.state.pins_of(&peer.user).next().is_some();
        match self.state.pins.get_mut(peer) {
            None => {
                self.state.pins.insert(
                    peer.clone(),
                    Pin {
                        identity: *presented,
                        verified: false,
                        changed_to: None,
                        unconfirmed: user_known,
                    },
                );
                user_known.then_some(IdentityWarning::NewDevice)
            }
            Some(pin) => {
                if pin.identity != *presented {
                    pin.changed_to = Some(*presented);
                }
                self.state.trust_of(peer, presented)
            }
        }
    }

    /// Whether sending to `user` is blocked: one of their devices changed
    /// identity or is new, and the user has not confirmed it.
    fn blocked(&self, user: &str) -> bool {
        self.state
            .pins_of(user)
            .any(|(_, p)| p.changed_to.is_some() || p.unconfirmed)
    }

    /// Encrypts `text` for `peer` (`user` or `user:device`) and relays it
    /// with a fresh random message id. Returns once the server has stored it
    /// durably.
    pub async fn send(&mut self, peer: &str, text: &[u8]) -> Result<SendReceipt, ClientError> {
        let mut message_id = [0u8; 16];
        rand::rng().fill_bytes(&mut message_id);
        self.send_with_id(peer, text, message_id).await
    }

    /// As [`Client::send`] with a caller-chosen message id: retrying a send
    /// whose outcome is unknown with the same id lets the recipient drop the
    /// second copy.
    pub async fn send_with_id(
        &mut self,
        peer: &str,
        text: &[u8],
        message_id: MessageId,
    ) -> Result<SendReceipt, ClientError> {
        let to = parse_peer(peer)?;
        if text.len() > MAX_BODY_LEN {
            return Err(chatify_core::Error::PlaintextTooLong(text.len()).into());
        }
        if self.blocked(&to.user) {
            return Err(ClientError::IdentityChanged { peer: to.user });
        }
        if self.state.sessions.get(&to).is_none_or(Vec::is_empty) {
            let started = Instant::now();
            self.mark("bundle requested");
            let reply = self
                .conn
                .request(frame::FetchBundle { device: to.clone() })
                .await?;
            let bundle = expect(reply, |b| match b {
                Body::Bundle(b) => Some(b.bundle),
                _ => None,
            })?;
            let verified = VerifiedBundle::verify(&bundle)?;
            self.mark("bundle verified");
            // A bundle no session can be made from (a low-order key) pins
            // nothing: the identity is checked once the session exists.
            let identity = *verified.identity();
            let session = Session::initiate(&self.state.device, verified, &mut rand::rng())?;
            if self.check_identity(&to, &identity).is_some() {
                self.persist(None).await?;
                return Err(ClientError::IdentityChanged { peer: to.user });
            }
            self.state.push_session(to.clone(), session);
            self.timings.setup = Some(started.elapsed());
            self.mark("session set up");
        }
        let conversation = conversation_id(&self.state.user, &to.user);
        // A crash must never make this device reuse a message key or a
        // sequence number: unless the last save reserved the next ones,
        // save first, reserving them and the next ones (the core refuses to
        // encrypt otherwise, §13.1).
        let seq_reserved = self
            .state
            .send_seqs
            .get(&conversation)
            .is_some_and(|s| s.next < s.reserved);
        let reserved = self
            .state
            .active_session(&to)
            .is_some_and(|s| s.next_send_reserved());
        if !reserved || !seq_reserved {
            self.persist(Some(&to)).await?;
            self.mark("state saved");
        }
        let (seq, floor) = self
            .state
            .send_seqs
            .get_mut(&conversation)
            .and_then(SendSeq::take)
            .ok_or_else(|| ClientError::State("no sequence number reserved".into()))?;
        let content = Content {
            message_id,
            seq,
            floor,
            sent_at_ms: now_ms(),
            body: text,
        };
        let mut plaintext = SecretBuf::with_capacity(content.encoded_len_max());
        content
            .encode(&mut plaintext)
            .map_err(|e| ClientError::State(format!("encoding the message: {e}")))?;
        let session = self
            .state
            .active_session(&to)
            .ok_or_else(|| ClientError::State("session vanished".into()))?;
        let started = Instant::now();
        let envelope = session
            .encrypt(conversation, plaintext.as_slice(), &mut rand::rng())?
            .encode();
        self.timings.encrypt = Some(started.elapsed());
        self.mark("encrypted");
        self.mark("sent");
        let reply = self
            .conn
            .request(frame::Send {
                to,
                conversation,
                message_id,
                envelope,
            })
            .await?;
        let ok = expect(reply, |b| match b {
            Body::SendOk(ok) => Some(ok),
            _ => None,
        })?;
        self.mark("stored (SendOk)");
        Ok(SendReceipt {
            seq: ok.seq,
            message_id: ok.message_id,
        })
    }

    /// Waits for the next event. `Ok(None)` when the connection is gone.
    ///
    /// Not cancel-safe (it acknowledges and saves state after receiving); in
    /// a `select!`, wait on [`Client::next_push`] and pass the result to
    /// [`Client::handle`] outside the `select!`.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        if let Some(event) = self.queued.pop_front() {
            return Ok(Some(event));
        }
        let Some(push) = self.next_push().await else {
            return Ok(None);
        };
        let events = self.handle(push).await?;
        self.queued.extend(events);
        Ok(self.queued.pop_front())
    }

    /// The next raw push from the server (cancel-safe).
    pub async fn next_push(&mut self) -> Option<Push> {
        self.conn.next_push().await
    }

    /// Processes a push: decrypts, stores and acknowledges a delivery;
    /// publishes prekeys when asked. Returns the push's event, followed by
    /// any report of missing messages ([`Event::Missing`]) that came due.
    pub async fn handle(&mut self, push: Push) -> Result<Vec<Event>, ClientError> {
        self.handle_batch(vec![push]).await
    }

    /// A push that has already arrived, without waiting (cancel-safe).
    pub fn try_next_push(&mut self) -> Option<Push> {
        self.conn.try_next_push()
    }

    /// Processes several pushes with one durable write (group commit): the
    /// deliveries are decrypted, appended to the message log with one flush,
    /// the state is saved once, and all are acknowledged in one `Ack`; so a
    /// crash at any point loses nothing (a message logged twice is dropped by
    /// its id when the log is read). Returns one event per push, in order;
    /// if the connection is lost while acknowledging, the events of what was
    /// logged come back followed by `Event::Disconnected(None)`, and the rest
    /// of the batch is left to the server's redelivery.
    pub async fn handle_batch(&mut self, pushes: Vec<Push>) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::with_capacity(pushes.len());
        let mut logged = Vec::new();
        let mut acks = Vec::new();
        let mut changed = false;
        self.decrypt_times.clear();
        for push in pushes {
            let d = match push {
                Push::Deliver(d) => d,
                other => {
                    // Everything decrypted so far is made durable first.
                    if !self.commit(&mut logged, &mut acks, &mut changed).await? {
                        events.push(Event::Disconnected(None));
                        return Ok(events);
                    }
                    events.push(match other {
                        Push::Closed(info) => Event::Disconnected(info),
                        Push::PrekeysLow(remaining) => {
                            let n = self
                                .publish(PREKEY_TARGET.saturating_sub(remaining) as usize)
                                .await?;
                            Event::KeysReplenished(n)
                        }
                        Push::Deliver(_) => continue,
                    });
                    continue;
                }
            };
            self.mark("delivered");
            acks.push(d.seq);
            let event = self.receive(d, &mut logged, &mut changed);
            events.push(event);
        }
        let overdue = self.overdue_gaps();
        changed |= !overdue.is_empty();
        events.extend(overdue);
        if !self.commit(&mut logged, &mut acks, &mut changed).await? {
            events.push(Event::Disconnected(None));
        }
        Ok(events)
    }

    /// Decrypts one delivery and judges it against what this device received
    /// before (PROTOCOL §7.1): the id sealed inside must be the one it was
    /// delivered under, and its sequence number tells a duplicate, a late
    /// message and a gap.
    fn receive(
        &mut self,
        d: Deliver,
        logged: &mut Vec<StoredMessage>,
        changed: &mut bool,
    ) -> Event {
        let rejected = |d: &Deliver, reason: String| Event::Rejected {
            from: d.from.clone(),
            seq: d.seq,
            reason,
        };
        let (plaintext, warning, identity) = match self.open(&d) {
            Ok(opened) => opened,
            // A redelivery of a message this device already has: its key
            // was used (and the state saved) when it first arrived.
            Err(ClientError::Crypto(
                chatify_core::Error::Duplicate | chatify_core::Error::ReplayedSetup,
            )) if self.state.seen(&d.message_id) => {
                return Event::Duplicate {
                    from: d.from,
                    message_id: d.message_id,
                };
            }
            Err(e) => return rejected(&d, e.to_string()),
        };
        // The session consumed the message key: the state must be saved
        // whatever is decided below.
        *changed = true;
        self.mark("decrypted");
        let Ok(content) = Content::decode(&plaintext) else {
            return rejected(&d, "malformed message content".into());
        };
        if content.message_id != d.message_id {
            return rejected(
                &d,
                "the message id does not match the one sealed in the message".into(),
            );
        }
        if self.state.seen(&content.message_id) {
            return Event::Duplicate {
                from: d.from,
                message_id: d.message_id,
            };
        }
        let arrival = self
            .state
            .recv_seqs
            .entry((d.conversation, d.from.clone(), identity))
            .or_default()
            .arrive(content.seq, content.floor, now_ms());
        let late = match arrival {
            Arrival::Duplicate => {
                return Event::Duplicate {
                    from: d.from,
                    message_id: d.message_id,
                };
            }
            Arrival::InOrder => None,
            Arrival::Late { behind, waited_ms } => Some(Late { behind, waited_ms }),
        };
        let text = content.body.to_vec();
        logged.push(StoredMessage {
            from: d.from.clone(),
            sent_at_ms: d.sent_at_ms,
            message_id: d.message_id,
            text: text.clone(),
        });
        self.state.mark_seen(d.message_id);
        Event::Message(Incoming {
            from: d.from,
            conversation: d.conversation,
            message_id: d.message_id,
            sent_at_ms: d.sent_at_ms,
            sealed_at_ms: content.sent_at_ms,
            seq: content.seq,
            late,
            text,
            warning,
            decrypted_at: Instant::now(),
        })
    }

    /// Gaps that outlived the grace period, reported once each
    /// ([`Event::Missing`]); marks them reported in the state.
    fn overdue_gaps(&mut self) -> Vec<Event> {
        let (now, grace) = (now_ms(), self.missing_grace.as_millis() as u64);
        let mut out = Vec::new();
        for ((_, from, _), r) in &mut self.state.recv_seqs {
            let count = r.overdue(now, grace);
            if count > 0 {
                out.push(Event::Missing {
                    from: from.clone(),
                    count,
                });
            }
        }
        out
    }

    /// Reports messages whose absence outlived the grace period (a later
    /// message from the same device arrived; they did not): call it from
    /// time to time when no push arrives. Each gap is reported once; the
    /// state is saved when there is one.
    pub async fn check_missing(&mut self) -> Result<Vec<Event>, ClientError> {
        let events = self.overdue_gaps();
        if !events.is_empty() {
            self.persist(None).await?;
        }
        Ok(events)
    }

    /// How long a gap may stay open before [`Event::Missing`] reports it
    /// (default [`MISSING_GRACE`]).
    pub fn set_missing_grace(&mut self, grace: Duration) {
        self.missing_grace = grace;
    }

    /// Log, then state, then acknowledgement. Returns whether the
    /// connection is still up: once the messages are in the log they are
    /// the application's, so a connection lost while acknowledging them is
    /// not an error of the batch (the server redelivers what was not
    /// acknowledged, and the log's message ids drop the copies).
    async fn commit(
        &mut self,
        logged: &mut Vec<StoredMessage>,
        acks: &mut Vec<u64>,
        changed: &mut bool,
    ) -> Result<bool, ClientError> {
        if !logged.is_empty() {
            let batch = std::mem::take(logged);
            let file = self.file.clone();
            tokio::task::spawn_blocking(move || file.append_messages(&batch))
                .await
                .map_err(|e| ClientError::Io(e.to_string()))??;
        }
        if std::mem::take(changed) {
            self.persist(None).await?;
            self.mark("state saved");
        }
        if !acks.is_empty() {
            let seqs = std::mem::take(acks);
            let reply = match self.conn.request(frame::Ack { seqs }).await {
                Ok(reply) => reply,
                Err(ClientError::Disconnected) => return Ok(false),
                Err(e) => return Err(e),
            };
            expect(reply, |b| matches!(b, Body::Ok(_)).then_some(()))?;
            self.mark("acked");
        }
        Ok(true)
    }

    /// How long each decryption of the last batch took.
    pub fn decrypt_times(&self) -> &[Duration] {
        &self.decrypt_times
    }

    /// Decrypts a delivery: the plaintext, why its sender is not trusted (if
    /// not), and the sender session's X25519 identity key.
    fn open(&mut self, d: &Deliver) -> Result<Opened, ClientError> {
        let started = Instant::now();
        let result = self.open_timed(d);
        let took = started.elapsed();
        self.timings.decrypt = Some(took);
        self.decrypt_times.push(took);
        result
    }

    fn open_timed(&mut self, d: &Deliver) -> Result<Opened, ClientError> {
        let envelope = Envelope::decode(&d.envelope).map_err(chatify_core::Error::from)?;
        // The conversation is bound into the AEAD's associated data; the
        // server's label of it is not. Both must be the one this client has
        // with the claimed sender, or a server could file a genuine message
        // under another conversation.
        let expected = conversation_id(&self.state.user, &d.from.user);
        if envelope.conversation != expected || d.conversation != expected {
            return Err(ClientError::Protocol(
                "the conversation does not match the sender".into(),
            ));
        }
        let sessions = self.state.sessions.entry(d.from.clone()).or_default();
        // A setup message of a session we have goes to that session; one of a
        // new session goes to `Device::accept`; any other message is tried on
        // each session, the active one first (a failed try changes nothing).
        let candidates: Vec<usize> = match &envelope.prekey {
            Some(_) => sessions
                .iter()
                .position(|s| s.is_setup_of_this_session(&envelope))
                .into_iter()
                .collect(),
            None => (0..sessions.len()).collect(),
        };
        let new_setup = envelope.prekey.is_some() && candidates.is_empty();
        if !new_setup {
            let mut last = chatify_core::Error::Decrypt;
            for i in candidates {
                let Some(session) = sessions.get_mut(i) else {
                    continue;
                };
                match session.decrypt(&envelope) {
                    Ok(plaintext) => {
                        // The peer uses this session: make it the active one.
                        if i > 0 {
                            let s = sessions.remove(i);
                            sessions.insert(0, s);
                        }
                        // Every message is judged, not just a session's
                        // first: an identity not confirmed stays flagged.
                        let identity = *session_identity(sessions, 0)?;
                        let warning = self.state.trust_of(&d.from, &identity);
                        return Ok((plaintext, warning, identity.identity_key));
                    }
                    Err(e) => last = e,
                }
            }
            return Err(last.into());
        }
        let (session, plaintext) = self.state.device.accept(&envelope)?;
        let identity = *session.remote_identity();
        let warning = self.check_identity(&d.from, &identity);
        self.state.push_session(d.from.clone(), session);
        Ok((plaintext, warning, identity.identity_key))
    }

    /// The safety number with `peer`'s (`user` or `user:device`, device 1
    /// by default) pinned identity, or the changed one awaiting
    /// confirmation; `None` if that device was never seen
    /// ([`Client::devices`] lists every device of a user).
    pub fn safety_number(&self, peer: &str) -> Option<SafetyNumber> {
        let pin = self.state.pins.get(&parse_peer(peer).ok()?)?;
        let theirs = pin.changed_to.as_ref().unwrap_or(&pin.identity);
        Some(SafetyNumber::new(
            &self.state.device.public_identity(),
            theirs,
        ))
    }

    /// Marks every device of `peer`'s user verified, as it presents itself
    /// now: accepts changed identities and new devices, and unblocks
    /// sending. (`verify` is about the user: a device left unconfirmed
    /// would keep the user blocked.)
    pub fn confirm_peer(&mut self, peer: &str) -> Result<(), ClientError> {
        let user = parse_peer(peer)?.user;
        let devices: Vec<Address> = self.state.pins_of(&user).map(|(a, _)| a.clone()).collect();
        if devices.is_empty() {
            return Err(ClientError::State(format!("no identity known for {peer}")));
        }
        for addr in devices {
            let Some(pin) = self.state.pins.get_mut(&addr) else {
                continue;
            };
            if let Some(new) = pin.changed_to.take() {
                pin.identity = new;
                // Sessions with the old identity are of no use any more.
                if let Some(list) = self.state.sessions.get_mut(&addr) {
                    list.retain(|s| *s.remote_identity() == new);
                }
            }
            pin.unconfirmed = false;
            pin.verified = true;
        }
        self.save()
    }

    /// Every device of `user` this client has seen, with its safety number
    /// and whether it awaits confirmation.
    pub fn devices(&self, user: &str) -> Vec<(Address, SafetyNumber, Option<IdentityWarning>)> {
        let own = self.state.device.public_identity();
        self.state
            .pins_of(user)
            .map(|(a, pin)| {
                let theirs = pin.changed_to.as_ref().unwrap_or(&pin.identity);
                let warning = if pin.changed_to.is_some() {
                    Some(IdentityWarning::Changed)
                } else if pin.unconfirmed {
                    Some(IdentityWarning::NewDevice)
                } else {
                    None
                };
                (a.clone(), SafetyNumber::new(&own, theirs), warning)
            })
            .collect()
    }

    /// A page of the ciphertext history the server keeps of the conversation
    /// with `peer` (newest first).
    pub async fn history(&self, peer: &str, limit: u32) -> Result<Vec<Deliver>, ClientError> {
        let to = parse_peer(peer)?;
        let reply = self
            .conn
            .request(frame::FetchHistory {
                conversation: conversation_id(&self.state.user, &to.user),
                before: None,
                limit,
            })
            .await?;
        expect(reply, |b| match b {
            Body::History(h) => Some(h.items),
            _ => None,
        })
    }

    /// Revokes the token and forgets it locally.
    pub async fn logout(mut self) -> Result<(), ClientError> {
        let reply = self.conn.request(frame::Logout {}).await?;
        expect(reply, |b| matches!(b, Body::Ok(_)).then_some(()))?;
        self.state.token = None;
        self.persist(None).await?;
        self.conn.shutdown().await;
        Ok(())
    }

    /// Closes the connection cleanly.
    pub async fn close(self) {
        self.conn.shutdown().await;
    }

    /// Starts recording [`TraceEvent`]s (for timelines; off by default).
    pub fn start_trace(&mut self) {
        self.trace = Some(Vec::new());
    }

    /// Takes the events recorded since [`Client::start_trace`] or the last take.
    pub fn take_trace(&mut self) -> Vec<TraceEvent> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn mark(&mut self, what: &'static str) {
        if let Some(t) = &mut self.trace {
            t.push(TraceEvent {
                at: Instant::now(),
                what,
            });
        }
    }

    /// Every message received on this device, oldest first.
    pub fn messages(&self) -> Result<Vec<StoredMessage>, ClientError> {
        self.file.messages()
    }

    /// Durations of the last encryption, decryption and session setup.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// The connection, for requests this type does not wrap.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn session_identity(
    sessions: &[Session],
    i: usize,
) -> Result<&chatify_core::PublicIdentity, ClientError> {
    sessions
        .get(i)
        .map(Session::remote_identity)
        .ok_or_else(|| ClientError::State("session vanished".into()))
}

/// Milliseconds since the Unix epoch by this machine's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
