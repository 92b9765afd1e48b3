//! The high-level client: an account on a server, its keys and sessions,
//! and the send/receive loop.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatify_core::{Device, MAX_RESERVED_SENDS, SafetyNumber, SecretBuf, Session, VerifiedBundle};
use chatify_proto::content::MAX_BODY_LEN;
use chatify_proto::content::{FileRef, MAX_RETRY_IDS, Receipt, Retry};
use chatify_proto::frame::{self, Address, Deliver};
use chatify_proto::{Body, Content, ConversationId, Envelope, MessageId};
use rand::Rng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub(crate) mod files;
pub(crate) mod groups;

use crate::ClientError;
use crate::connection::{Connection, Push, expect, tls_config};
use crate::delivery::{Arrival, Pending, SendSeq};
use crate::state::{Pin, RecvKey, State, StateFile, StoredMessage};
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
    /// The conversation (the group's id for a group message).
    pub conversation: ConversationId,
    /// The group, if it is a group message (PROTOCOL §16.3).
    pub group: Option<chatify_core::group::GroupId>,
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
    /// The plaintext (a file's caption, if it carries one).
    pub text: Vec<u8>,
    /// The encrypted file the message carries: fetch it with
    /// [`Client::save_file`].
    pub file: Option<Box<FileRef>>,
    /// Why the sender device is not trusted as the user it claims to be, if
    /// it is not: warn on this message, as on every message until the user
    /// confirms; sending to the user is blocked until then.
    pub warning: Option<IdentityWarning>,
    /// When this client had the plaintext (before the batch's durable commit
    /// and acknowledgement): what end-to-end latency is measured to.
    pub decrypted_at: Instant,
    /// How long its decryption took.
    pub decrypt_time: Duration,
}

impl Incoming {
    /// Whether the sender is not (yet) trusted as the user it claims to be
    /// ([`Incoming::warning`]).
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

/// How long a sent message may go without the recipient device's receipt
/// before it is reported undelivered, by default.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(300);

/// How long a device waits after a message arrives before sending its
/// receipt, by default: messages arriving meanwhile share one receipt.
pub const RECEIPT_DELAY: Duration = Duration::from_millis(200);

/// A device asks one sender device to send messages again at most this
/// often (further ids wait for the next request).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Bytes of sent texts kept, in all, to send them again if the recipient
/// cannot open them (PROTOCOL §7.3); only session-setup messages are kept
/// (no other can be asked for again), and beyond this budget a message is
/// tracked without its text.
pub const MAX_KEPT_TEXT: usize = 256 * 1024;

/// Why a message's sender is not trusted as the user it claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityWarning {
    /// The device presented an identity other than the one pinned for its
    /// user: it was not linked by the user (a device the server made, or a
    /// reinstall), or the user changed identity.
    Changed,
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
    /// The recipient device's encrypted receipt covers these messages:
    /// they reached it and it decrypted them (PROTOCOL §7.2). The list may
    /// be empty (a receipt that covered nothing new).
    Delivered {
        /// The recipient device.
        to: Address,
        /// The messages.
        message_ids: Vec<MessageId>,
    },
    /// Messages the server stored for `to` that no receipt of its covered
    /// within the delivery grace period: not delivered yet (the recipient is
    /// offline, or the server lost or withholds them). Reported once; a
    /// receipt arriving later still reports them [`Event::Delivered`].
    Undelivered {
        /// The recipient device.
        to: Address,
        /// The messages.
        message_ids: Vec<MessageId>,
        /// More messages whose tracking was dropped past the bound of
        /// messages tracked per recipient (their ids are not kept).
        unlisted: u64,
    },
    /// `from` could not open these messages of ours and asked for them
    /// again on a new session (PROTOCOL §7.3); what is sent again follows
    /// as [`Event::Resent`] or [`Event::NotResent`].
    RetryRequested {
        /// The device that asked.
        from: Address,
        /// How many messages it named.
        count: usize,
    },
    /// A message `to` could not open, sent again on a new session.
    Resent {
        /// The recipient device.
        to: Address,
        /// The message.
        message_id: MessageId,
    },
    /// A message `to` could not open and that cannot be sent again (its
    /// text is no longer kept, or sending failed): the user should send it
    /// again.
    NotResent {
        /// The recipient device.
        to: Address,
        /// The message.
        message_id: MessageId,
    },
    /// A group changed, or a member device gave this device its key for
    /// the group (`changes` empty): told by `from` over its session, and
    /// checked (PROTOCOL §16.2). Each change names who made it.
    GroupChanged {
        /// The group.
        group: chatify_core::group::GroupId,
        /// The device that sent it.
        from: Address,
        /// The changes, oldest first.
        changes: Vec<groups::GroupChange>,
    },
    /// The server asked for prekeys and this many were published.
    KeysReplenished(u32),
    /// The server closed the connection (code and reason if it gave them).
    Disconnected(Option<(u16, String)>),
}

/// The server's receipt for a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReceipt {
    /// The server's sequence number (of the copy for the first device).
    pub seq: u64,
    /// The message id.
    pub message_id: MessageId,
    /// How many devices a copy was stored for.
    pub devices: u32,
}

/// How long a user's device list is used before it is asked for again.
pub const DEVICE_LIST_TTL: Duration = Duration::from_secs(60);

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

/// `user` (every device of the user: `None`) or `user:device`.
pub fn parse_target(peer: &str) -> Result<(String, Option<u32>), ClientError> {
    if peer.contains(':') {
        let a = parse_peer(peer)?;
        return Ok((a.user, Some(a.device)));
    }
    if peer.is_empty() {
        return Err(ClientError::Usage("empty peer name".into()));
    }
    Ok((peer.to_owned(), None))
}

/// `user` or `user:device` (device 1 by default).
pub fn parse_peer(peer: &str) -> Result<Address, ClientError> {
    let (user, device) = match peer.split_once(':') {
        Some((u, d)) => (
            u,
            d.parse::<u32>()
                .ok()
                .filter(|d| *d > 0)
                .ok_or_else(|| ClientError::Usage(format!("bad device number in {peer:?}")))?,
        ),
        None => (peer, 1),
    };
    if user.is_empty() {
        return Err(ClientError::Usage("empty peer name".into()));
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

/// A login (see [`Client::login_request`]). `Debug` shows neither the
/// password nor the codes.
#[derive(Clone, Copy)]
pub struct LoginRequest<'a> {
    /// The user name.
    pub user: &'a str,
    /// The password.
    pub password: &'a str,
    /// This device's number within the account.
    pub device: u32,
    /// A link code from [`Client::create_link`] on another device of the
    /// account: this (new) device takes the account's identity.
    pub link_code: Option<&'a str>,
    /// A code from the account's authenticator app, or a recovery code.
    pub second_factor: Option<&'a str>,
}

impl std::fmt::Debug for LoginRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("user", &self.user)
            .field("device", &self.device)
            .field("link_code", &self.link_code.map(|_| ".."))
            .field("second_factor", &self.second_factor.map(|_| ".."))
            .finish_non_exhaustive()
    }
}

/// A second factor's secret, to enter into an authenticator app. Wiped
/// when dropped; `Debug` shows neither field.
pub struct MfaSecret {
    /// The 20-byte TOTP secret.
    pub secret: Zeroizing<Vec<u8>>,
    /// The same as an `otpauth://` URI.
    pub uri: Zeroizing<String>,
}

impl std::fmt::Debug for MfaSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MfaSecret(..)")
    }
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
    delivery_grace: Duration,
    receipt_delay: Duration,
    queued: std::collections::VecDeque<Event>,
    /// Receipts to send, by whose sequence they report, and when.
    receipts_due: BTreeMap<RecvKey, u64>,
    /// Message ids to ask each sender device for again, and when it was
    /// last asked.
    retries: BTreeMap<Address, (Vec<MessageId>, Option<Instant>)>,
    /// Messages to send again (conversation, recipient, sequence number).
    resends: Vec<(ConversationId, Address, u64)>,
    /// The outbox changed since the last save.
    outbox_dirty: bool,
    /// Device lists of users, and when they were fetched.
    device_lists: std::collections::HashMap<String, (Vec<u32>, Instant)>,
    /// The groups, once loaded from the home (PROTOCOL §16).
    groups: Option<BTreeMap<chatify_core::group::GroupId, groups::Group>>,
    /// The groups changed since they were last saved.
    groups_dirty: bool,
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
        Self::login_inner(options, file, user, password, device, None, None).await
    }

    /// Logs in as a new `device` of `user` that takes the identity another
    /// device of the user left under `code` ([`Client::create_link`]), with
    /// prekeys of its own, and publishes them: contacts see it as the user,
    /// with the same safety number (docs/PROTOCOL.md §12). The home in `file`
    /// (unlocked) must hold no state yet.
    pub async fn login_linked(
        options: &ConnectOptions,
        file: StateFile,
        user: &str,
        password: &str,
        device: u32,
        code: &str,
    ) -> Result<Client, ClientError> {
        let secret = parse_link_code(code)?;
        Self::login_inner(options, file, user, password, device, Some(secret), None).await
    }

    /// As [`Client::login_with`] or [`Client::login_linked`] (when
    /// `request.link_code` is set), for an account that may have a second
    /// factor on (docs/PROTOCOL.md §9.5): `request.second_factor` is a code
    /// from its authenticator app or a recovery code. Without one, such an
    /// account's login fails with `SecondFactorRequired`.
    pub async fn login_request(
        options: &ConnectOptions,
        file: StateFile,
        request: &LoginRequest<'_>,
    ) -> Result<Client, ClientError> {
        let link = request.link_code.map(parse_link_code).transpose()?;
        Self::login_inner(
            options,
            file,
            request.user,
            request.password,
            request.device,
            link,
            request.second_factor,
        )
        .await
    }

    async fn login_inner(
        options: &ConnectOptions,
        file: StateFile,
        user: &str,
        password: &str,
        device: u32,
        link: Option<Zeroizing<[u8; 16]>>,
        second_factor: Option<&str>,
    ) -> Result<Client, ClientError> {
        if link.is_some() && file.load()?.is_some() {
            return Err(ClientError::Usage(
                "this home already holds a device's keys; link into a new --home".into(),
            ));
        }
        let conn = Connection::connect(&options.url, options.tls.clone()).await?;
        let reply = conn
            .request(frame::Login {
                username: user.to_owned(),
                password: password.to_owned(),
                device,
                second_factor: second_factor.map(str::to_owned),
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
        state.server = options.url.clone();
        state.token = Some(Zeroizing::new(ok.token));
        authenticate(&conn, state.token.as_deref().map_or(&[][..], |t| &t[..])).await?;
        if let Some(secret) = link {
            let (link_id, key) = link_keys(&secret);
            let reply = conn.request(frame::TakeLink { link_id }).await?;
            let blob = expect(reply, |b| match b {
                Body::Link(l) => Some(l.blob),
                _ => None,
            })?;
            let secrets = crate::vault::open_with_key(&key, &link_ad(&ok.user), &blob)
                .filter(|s| s.len() == 64)
                .ok_or_else(|| {
                    ClientError::State("the link does not open with this code".into())
                })?;
            let mut identity = Zeroizing::new([0u8; 64]);
            identity.copy_from_slice(&secrets);
            state.device = Device::with_identity(&identity, &mut rand::rng());
        }
        let fresh = state.device.one_time_prekey_count() == 0;
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
            delivery_grace: DELIVERY_GRACE,
            receipt_delay: RECEIPT_DELAY,
            queued: std::collections::VecDeque::new(),
            receipts_due: BTreeMap::new(),
            retries: BTreeMap::new(),
            resends: Vec::new(),
            outbox_dirty: false,
            device_lists: std::collections::HashMap::new(),
            groups: None,
            groups_dirty: false,
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
                .map_err(ClientError::from)
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

    /// Records the identity a device of `user` presented. The user's first
    /// identity is trusted on first use; a device presenting another one is
    /// recorded as a change awaiting confirmation (and returns the warning)
    /// until the user confirms. Every device the user linked presents the
    /// same identity (docs/PROTOCOL.md §12).
    fn check_identity(
        &mut self,
        user: &str,
        presented: &chatify_core::PublicIdentity,
    ) -> Option<IdentityWarning> {
        match self.state.pins.get_mut(user) {
            None => {
                self.state.pins.insert(
                    user.to_owned(),
                    Pin {
                        identity: *presented,
                        verified: false,
                        changed_to: None,
                    },
                );
                None
            }
            Some(pin) => {
                if pin.identity != *presented {
                    pin.changed_to = Some(*presented);
                }
                self.state.trust_of(user, presented)
            }
        }
    }

    /// Whether sending to `user` is blocked: a device of theirs presented
    /// an identity the user has not confirmed (`chatify verify --confirm`
    /// lifts it).
    pub fn is_blocked(&self, user: &str) -> bool {
        self.blocked(user)
    }

    /// Whether sending to `user` is blocked: a device of theirs presented
    /// an identity the user has not confirmed.
    fn blocked(&self, user: &str) -> bool {
        self.state
            .pins
            .get(user)
            .is_some_and(|p| p.changed_to.is_some())
    }

    /// The devices of `user` that have published keys, as the server lists
    /// them (kept for [`DEVICE_LIST_TTL`]; a message from a device not on
    /// the list refreshes it).
    async fn devices_of(&mut self, user: &str) -> Result<Vec<u32>, ClientError> {
        if let Some((list, at)) = self.device_lists.get(user)
            && at.elapsed() < DEVICE_LIST_TTL
        {
            return Ok(list.clone());
        }
        let reply = self
            .conn
            .request(frame::FetchDevices {
                user: user.to_owned(),
            })
            .await?;
        let list = expect(reply, |b| match b {
            Body::Devices(d) => Some(d.devices),
            _ => None,
        })?;
        self.device_lists
            .insert(user.to_owned(), (list.clone(), Instant::now()));
        Ok(list)
    }

    /// Encrypts `text` for `peer` and relays it with a fresh random message
    /// id: to every device of the user that has published keys (`user`), or
    /// to one (`user:device`). Returns once the server has stored every copy
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
        self.send_content(peer, text, None, message_id).await
    }

    /// The devices a message to `user` (or `user:device`) goes to.
    async fn targets(
        &mut self,
        user: &str,
        device: Option<u32>,
    ) -> Result<Vec<Address>, ClientError> {
        Ok(match device {
            Some(device) => vec![Address {
                user: user.to_owned(),
                device,
            }],
            None => {
                let mut list = self.devices_of(user).await?;
                // A user with no keys published answers as one device would.
                if list.is_empty() {
                    list.push(1);
                }
                list.into_iter()
                    .map(|device| Address {
                        user: user.to_owned(),
                        device,
                    })
                    .collect()
            }
        })
    }

    /// Sends `text` (with `file`, if any) to `peer` under `message_id`.
    async fn send_content(
        &mut self,
        peer: &str,
        text: &[u8],
        file: Option<&FileRef>,
        message_id: MessageId,
    ) -> Result<SendReceipt, ClientError> {
        let (user, device) = parse_target(peer)?;
        let room = MAX_BODY_LEN - file.map_or(0, |_| FileRef::ENCODED_LEN_MAX);
        if text.len() > room {
            return Err(chatify_core::Error::PlaintextTooLong(text.len()).into());
        }
        if self.blocked(&user) {
            return Err(ClientError::IdentityChanged { peer: user });
        }
        let targets = self.targets(&user, device).await?;
        // Every session first: a device that presents an identity the user
        // has not confirmed stops the send before anything leaves.
        for to in &targets {
            if self.state.sessions.get(to).is_none_or(Vec::is_empty) {
                self.set_up_session(to).await?;
            }
        }
        let conversation = conversation_id(&self.state.user, &user);
        let mut seq_floor = None;
        let mut first = None;
        for to in &targets {
            self.ensure_reserved(to, conversation, seq_floor.is_none())
                .await?;
            let (seq, floor) = match seq_floor {
                Some(taken) => taken,
                None => {
                    let taken = self
                        .state
                        .send_seqs
                        .get_mut(&conversation)
                        .and_then(SendSeq::take)
                        .ok_or_else(|| ClientError::State("no sequence number reserved".into()))?;
                    seq_floor = Some(taken);
                    taken
                }
            };
            let sealed_at_ms = now_ms();
            let content = Content {
                file: file.cloned(),
                ..Content::message(message_id, seq, floor, sealed_at_ms, text)
            };
            // Only a session-setup message can be asked for again (§7.3):
            // its text is kept until the receipt; later ones are tracked
            // without it, which keeps every save small.
            let setup = self
                .state
                .active_session(to)
                .is_some_and(|s| s.awaiting_reply());
            let ok = self.seal_and_send(to, conversation, &content).await?;
            first.get_or_insert(ok.seq);
            // Tracked until the device's receipt covers it (saved with the
            // next save, and by `close`); its text is kept within a budget.
            // (A file's reference is not kept: asked for again, it is
            // reported not resent, and the user sends the file again.)
            let keep = setup && file.is_none() && self.kept_text() + text.len() <= MAX_KEPT_TEXT;
            self.state
                .outbox
                .entry((conversation, to.clone()))
                .or_default()
                .stored(
                    seq,
                    Pending {
                        message_id,
                        floor,
                        sealed_at_ms,
                        stored_at_ms: now_ms(),
                        reported: false,
                        text: keep.then(|| Zeroizing::new(text.to_vec())),
                    },
                );
            self.outbox_dirty = true;
        }
        Ok(SendReceipt {
            seq: first.unwrap_or_default(),
            message_id,
            devices: targets.len() as u32,
        })
    }

    /// Bytes of sent texts kept in the outbox.
    fn kept_text(&self) -> usize {
        self.state
            .outbox
            .values()
            .flat_map(|o| o.pending.values())
            .filter_map(|p| p.text.as_ref().map(|t| t.len()))
            .sum()
    }

    /// Fetches `to`'s bundle and makes a new session with it the active
    /// one (refused, with the pin updated, if the identity is not trusted).
    async fn set_up_session(&mut self, to: &Address) -> Result<(), ClientError> {
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
        if self.check_identity(&to.user, &identity).is_some() {
            self.persist(None).await?;
            return Err(ClientError::IdentityChanged {
                peer: to.user.clone(),
            });
        }
        self.state.push_session(to.clone(), session);
        self.timings.setup = Some(started.elapsed());
        self.mark("session set up");
        Ok(())
    }

    /// A crash must never make this device reuse a message key or a
    /// sequence number: unless the last save reserved the next ones, save
    /// first, reserving them and the next ones (the core refuses to encrypt
    /// otherwise, §13.1).
    async fn ensure_reserved(
        &mut self,
        to: &Address,
        conversation: ConversationId,
        needs_seq: bool,
    ) -> Result<(), ClientError> {
        let seq_reserved = !needs_seq
            || self
                .state
                .send_seqs
                .get(&conversation)
                .is_some_and(|s| s.next < s.reserved);
        let reserved = self
            .state
            .active_session(to)
            .is_some_and(|s| s.next_send_reserved());
        if !reserved || !seq_reserved {
            self.persist(Some(to)).await?;
            self.outbox_dirty = false;
            self.mark("state saved");
        }
        Ok(())
    }

    /// Seals `content` on the active session with `to` and relays it;
    /// returns once the server stored it.
    async fn seal_and_send(
        &mut self,
        to: &Address,
        conversation: ConversationId,
        content: &Content<'_>,
    ) -> Result<frame::SendOk, ClientError> {
        let mut plaintext = SecretBuf::with_capacity(content.encoded_len_max());
        content
            .encode(&mut plaintext)
            .map_err(|e| ClientError::State(format!("encoding the message: {e}")))?;
        let session = self
            .state
            .active_session(to)
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
                to: to.clone(),
                conversation,
                message_id: content.message_id,
                envelope,
            })
            .await?;
        let ok = expect(reply, |b| match b {
            Body::SendOk(ok) => Some(ok),
            _ => None,
        })?;
        self.mark("stored (SendOk)");
        Ok(ok)
    }

    /// Sends a control content (a receipt or a retry request) to `to` on
    /// the active session, outside the sequence and the trace.
    async fn send_control(
        &mut self,
        to: &Address,
        receipt: Option<Receipt>,
        retry: Option<Retry>,
    ) -> Result<(), ClientError> {
        self.send_control_content(to, |empty| Content {
            receipt,
            retry,
            ..empty
        })
        .await
    }

    /// Sends a control content to `to` on the active session, outside the
    /// sequence and the trace: `fill` sets its control fields on an empty
    /// content with a fresh message id. Refused if it cannot fit.
    pub(crate) async fn send_control_content<'c>(
        &mut self,
        to: &Address,
        fill: impl FnOnce(Content<'c>) -> Content<'c>,
    ) -> Result<(), ClientError> {
        let mut message_id = [0u8; 16];
        rand::rng().fill_bytes(&mut message_id);
        let content = fill(Content::message(message_id, 0, 0, now_ms(), b""));
        if content.encoded_len_max() > chatify_proto::limits::MAX_PLAINTEXT_LEN {
            return Err(ClientError::Usage(
                "the control message is too long to send in one message".into(),
            ));
        }
        let trace = self.trace.take();
        let result = async {
            let conversation = conversation_id(&self.state.user, &to.user);
            self.ensure_reserved(to, conversation, false).await?;
            self.seal_and_send(to, conversation, &content).await
        }
        .await;
        self.trace = trace;
        result.map(|_| ())
    }

    /// Sends what is due: receipts whose delay passed (all with `all`),
    /// requests to send again (at most one per sender device per
    /// [`RETRY_INTERVAL`]), and messages a recipient asked for again.
    /// Returns the events of what was sent again.
    async fn flush(&mut self, all: bool) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        for (conversation, to, seq) in std::mem::take(&mut self.resends) {
            events.extend(self.resend(conversation, &to, seq).await?);
        }
        let now = now_ms();
        let due: Vec<RecvKey> = self
            .receipts_due
            .iter()
            .filter(|(_, at)| all || **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.receipts_due.remove(&key);
            let (_, from, identity) = &key;
            // A receipt speaks of one identity's sequence: it goes on a
            // session with that identity only.
            let session_matches = self
                .state
                .active_session(from)
                .is_some_and(|s| s.remote_identity().identity_key == *identity);
            let Some(receipt) = self.state.recv_seqs.get(&key).map(|r| r.receipt()) else {
                continue;
            };
            if session_matches {
                let sent = self.send_control(&from.clone(), Some(receipt), None).await;
                tolerate(sent)?;
            }
        }
        let asks: Vec<Address> = self
            .retries
            .iter()
            .filter(|(_, (ids, last))| {
                !ids.is_empty() && last.is_none_or(|t| t.elapsed() >= RETRY_INTERVAL)
            })
            .map(|(a, _)| a.clone())
            .collect();
        for from in asks {
            let Some((ids, last)) = self.retries.get_mut(&from) else {
                continue;
            };
            let take = ids.len().min(MAX_RETRY_IDS);
            let batch: Vec<MessageId> = ids.drain(..take).collect();
            *last = Some(Instant::now());
            // The request travels on a new session: the one the sender set
            // up is the one that failed.
            match self.set_up_session(&from).await {
                Ok(()) => {}
                // An identity not trusted, or no keys: nothing is sent to it.
                Err(ClientError::IdentityChanged { .. })
                | Err(ClientError::Server { .. })
                | Err(ClientError::Crypto(_)) => continue,
                Err(e) => return Err(e),
            }
            let retry = Retry {
                message_ids: batch.into_iter().map(Into::into).collect(),
            };
            let sent = self.send_control(&from, None, Some(retry)).await;
            tolerate(sent)?;
        }
        Ok(events)
    }

    /// Sends the pending message `seq` to `to` again, on the active session,
    /// with its id, sequence number and floor.
    async fn resend(
        &mut self,
        conversation: ConversationId,
        to: &Address,
        seq: u64,
    ) -> Result<Option<Event>, ClientError> {
        // A receipt that came meanwhile leaves nothing to send again.
        let Some(p) = self
            .state
            .outbox
            .get(&(conversation, to.clone()))
            .and_then(|o| o.pending.get(&seq))
            .cloned()
        else {
            return Ok(None);
        };
        let Some(text) = &p.text else {
            return Ok(Some(Event::NotResent {
                to: to.clone(),
                message_id: p.message_id,
            }));
        };
        // Sent again only to the identity it was meant for.
        let trusted = self
            .state
            .active_session(to)
            .map(|s| *s.remote_identity())
            .is_some_and(|id| self.state.trust_of(&to.user, &id).is_none());
        if !trusted || self.blocked(&to.user) {
            return Ok(Some(Event::NotResent {
                to: to.clone(),
                message_id: p.message_id,
            }));
        }
        self.ensure_reserved(to, conversation, false).await?;
        let content = Content::message(p.message_id, seq, p.floor, p.sealed_at_ms, text);
        let trace = self.trace.take();
        let sent = self.seal_and_send(to, conversation, &content).await;
        self.trace = trace;
        match sent {
            Ok(_) => {
                if let Some(pending) = self
                    .state
                    .outbox
                    .get_mut(&(conversation, to.clone()))
                    .and_then(|o| o.pending.get_mut(&seq))
                {
                    pending.stored_at_ms = now_ms();
                    pending.reported = false;
                }
                self.outbox_dirty = true;
                Ok(Some(Event::Resent {
                    to: to.clone(),
                    message_id: p.message_id,
                }))
            }
            Err(ClientError::Disconnected) => Err(ClientError::Disconnected),
            Err(_) => Ok(Some(Event::NotResent {
                to: to.clone(),
                message_id: p.message_id,
            })),
        }
    }

    /// Periodic work, to call from time to time when no push arrives
    /// ([`Client::next_event`] does it by itself): reports gaps and
    /// undelivered messages whose grace period passed ([`Event::Missing`],
    /// [`Event::Undelivered`]), each once, and sends due receipts and
    /// retry requests. The state is saved when anything changed.
    pub async fn tick(&mut self) -> Result<Vec<Event>, ClientError> {
        let mut events = self.overdue_gaps();
        events.extend(self.overdue_sends());
        events.extend(self.flush(false).await?);
        if !events.is_empty() || self.outbox_dirty {
            self.persist(None).await?;
            self.outbox_dirty = false;
        }
        Ok(events)
    }

    /// Sent messages no receipt covered within the delivery grace period,
    /// reported once each ([`Event::Undelivered`]).
    fn overdue_sends(&mut self) -> Vec<Event> {
        let (now, grace) = (now_ms(), self.delivery_grace.as_millis() as u64);
        let mut out = Vec::new();
        for ((_, to), outbox) in &mut self.state.outbox {
            let (message_ids, unlisted) = outbox.overdue(now, grace);
            if !message_ids.is_empty() || unlisted > 0 {
                out.push(Event::Undelivered {
                    to: to.clone(),
                    message_ids,
                    unlisted,
                });
            }
        }
        out
    }

    /// How long a sent message may go without a receipt before
    /// [`Event::Undelivered`] reports it (default [`DELIVERY_GRACE`]).
    pub fn set_delivery_grace(&mut self, grace: Duration) {
        self.delivery_grace = grace;
    }

    /// How long to wait after a message arrives before sending its receipt
    /// (default [`RECEIPT_DELAY`]).
    pub fn set_receipt_delay(&mut self, delay: Duration) {
        self.receipt_delay = delay;
    }

    /// When the next receipt or retry request falls due.
    fn next_due(&self) -> Option<Instant> {
        let now = now_ms();
        let receipt = self
            .receipts_due
            .values()
            .min()
            .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now)));
        let retry = self
            .retries
            .values()
            .filter(|(ids, _)| !ids.is_empty())
            .map(|(_, last)| last.map_or_else(Instant::now, |t| t + RETRY_INTERVAL))
            .min();
        let resend = (!self.resends.is_empty()).then(Instant::now);
        [receipt, retry, resend].into_iter().flatten().min()
    }

    /// Waits for the next event. `Ok(None)` when the connection is gone.
    ///
    /// Not cancel-safe (it acknowledges and saves state after receiving); in
    /// a `select!`, wait on [`Client::next_push`] and pass the result to
    /// [`Client::handle`] outside the `select!`.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Ok(Some(event));
            }
            let push = match self.next_due() {
                Some(at) => {
                    tokio::select! {
                        push = self.conn.next_push() => push,
                        () = tokio::time::sleep_until(at.into()) => {
                            let events = self.tick().await?;
                            self.queued.extend(events);
                            continue;
                        }
                    }
                }
                None => self.conn.next_push().await,
            };
            let Some(push) = push else {
                return Ok(None);
            };
            let events = self.handle(push).await?;
            self.queued.extend(events);
        }
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
            return Ok(events);
        }
        // Messages asked for again go now; receipts when their delay passed.
        // The batch's messages are the application's already: a failure
        // here must not lose their events (what it could not send is
        // reported by its recipient's sender, or asked for again).
        if !self.resends.is_empty() || self.next_due().is_some_and(|at| at <= Instant::now()) {
            match self.flush(false).await {
                Ok(more) => events.extend(more),
                Err(ClientError::Disconnected) => events.push(Event::Disconnected(None)),
                Err(_) => {}
            }
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
        if groups::is_group_message(&d.envelope) {
            return self.receive_group(d, logged, changed);
        }
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
            Err(e) => {
                if self.should_ask_again(&d, &e) {
                    let (ids, _) = self.retries.entry(d.from.clone()).or_default();
                    if !ids.contains(&d.message_id) {
                        ids.push(d.message_id);
                    }
                }
                return rejected(&d, e.to_string());
            }
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
        if let Some(group) = &content.group {
            self.state.mark_control(d.message_id);
            if content.receipt.is_some()
                || content.retry.is_some()
                || content.file.is_some()
                || !content.body.is_empty()
                || content.seq != 0
            {
                return rejected(&d, "a group control with other content beside it".into());
            }
            return self.group_control(&d, group, warning.is_none());
        }
        if content.is_control() {
            self.state.mark_control(d.message_id);
            return self.control(&d, &content, warning);
        }
        self.accept(d, content, (identity, warning), None, logged)
    }

    /// A message that opened, judged by its sequence number (§7.1): a
    /// duplicate is dropped; otherwise it is logged and becomes the
    /// event. A pairwise message is receipted; a group message (`group`)
    /// is not (§16.3).
    fn accept(
        &mut self,
        d: Deliver,
        content: Content<'_>,
        (identity, warning): ([u8; 32], Option<IdentityWarning>),
        group: Option<chatify_core::group::GroupId>,
        logged: &mut Vec<StoredMessage>,
    ) -> Event {
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
            file: content.file.clone(),
            group,
        });
        self.state.mark_seen(d.message_id);
        if group.is_none() {
            let due = now_ms() + self.receipt_delay.as_millis() as u64;
            self.receipts_due
                .entry((d.conversation, d.from.clone(), identity))
                .or_insert(due);
        }
        Event::Message(Incoming {
            from: d.from,
            conversation: d.conversation,
            group,
            message_id: d.message_id,
            sent_at_ms: d.sent_at_ms,
            sealed_at_ms: content.sent_at_ms,
            seq: content.seq,
            late,
            text,
            file: content.file.map(Box::new),
            warning,
            decrypted_at: Instant::now(),
            decrypt_time: self.timings.decrypt.unwrap_or_default(),
        })
    }

    /// Whether a delivery that failed to open should be asked for again
    /// (PROTOCOL §7.3): a session-setup message this device cannot accept
    /// (a one-time prekey it no longer has, as when a server serves one
    /// twice or restores an old database), or a message from a device it
    /// has no session with. A failure on an existing session (a tampered
    /// or forged envelope) is only rejected.
    fn should_ask_again(&self, d: &Deliver, e: &ClientError) -> bool {
        let is_setup = Envelope::decode(&d.envelope).is_ok_and(|env| env.prekey.is_some());
        let no_session = self.state.sessions.get(&d.from).is_none_or(Vec::is_empty);
        matches!(
            e,
            ClientError::Crypto(chatify_core::Error::UnknownPrekey | chatify_core::Error::Decrypt)
        ) && (is_setup || no_session)
            && d.from != self.state.address()
    }

    /// A receipt or a retry request from `d.from`, authenticated by its
    /// session.
    fn control(
        &mut self,
        d: &Deliver,
        content: &Content<'_>,
        warning: Option<IdentityWarning>,
    ) -> Event {
        // Only the user's confirmed identity speaks for the user's devices:
        // a receipt from another would silence a loss, a retry request from
        // another would have the text sent again to it.
        if warning.is_some() {
            return Event::Rejected {
                from: d.from.clone(),
                seq: d.seq,
                reason: "a receipt or retry request from an identity not confirmed for this \
                         user: ignored"
                    .into(),
            };
        }
        let key = (d.conversation, d.from.clone());
        if let Some(receipt) = &content.receipt {
            let message_ids = self
                .state
                .outbox
                .get_mut(&key)
                .map(|o| o.receipt(receipt))
                .unwrap_or_default();
            return Event::Delivered {
                to: d.from.clone(),
                message_ids,
            };
        }
        let asked = content
            .retry
            .as_ref()
            .map_or(&[][..], |r| &r.message_ids[..]);
        for id in asked {
            // An id already receipted, or never ours, asks for nothing.
            if let Some(seq) = self.state.outbox.get(&key).and_then(|o| o.find(id)) {
                self.resends.push((d.conversation, d.from.clone(), seq));
            }
        }
        Event::RetryRequested {
            from: d.from.clone(),
            count: asked.len(),
        }
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
            tokio::task::spawn_blocking(move || file.append_messages(&batch)).await??;
        }
        if self.groups_dirty {
            self.save_groups().await?;
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
            // A message one session already used the key of is a
            // duplicate, whatever the other sessions say of it.
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
                        let warning = self.state.trust_of(&d.from.user, &identity);
                        return Ok((plaintext, warning, identity.identity_key));
                    }
                    Err(e) if last != chatify_core::Error::Duplicate => last = e,
                    Err(_) => {}
                }
            }
            return Err(last.into());
        }
        let (session, plaintext) = self.state.device.accept(&envelope)?;
        let identity = *session.remote_identity();
        let warning = self.check_identity(&d.from.user, &identity);
        // A device not on the user's list: the list is out of date.
        if self
            .device_lists
            .get(&d.from.user)
            .is_some_and(|(list, _)| !list.contains(&d.from.device))
        {
            self.device_lists.remove(&d.from.user);
        }
        self.state.push_session(d.from.clone(), session);
        Ok((plaintext, warning, identity.identity_key))
    }

    /// The safety number with `peer`'s user (`user` or `user:device`: all
    /// the user's devices share it): of the pinned identity, or of the
    /// changed one awaiting confirmation; `None` if no device of the user
    /// was ever seen.
    pub fn safety_number(&self, peer: &str) -> Option<SafetyNumber> {
        let (user, _) = parse_target(peer).ok()?;
        let pin = self.state.pins.get(&user)?;
        let theirs = pin.changed_to.as_ref().unwrap_or(&pin.identity);
        Some(SafetyNumber::new(
            &self.state.device.public_identity(),
            theirs,
        ))
    }

    /// Marks `peer`'s user verified with the identity it presents now:
    /// accepts a changed identity (dropping sessions with the old one) and
    /// unblocks sending.
    pub fn confirm_peer(&mut self, peer: &str) -> Result<(), ClientError> {
        let (user, _) = parse_target(peer)?;
        let pin = self
            .state
            .pins
            .get_mut(&user)
            .ok_or_else(|| ClientError::State(format!("no identity known for {peer}")))?;
        if let Some(new) = pin.changed_to.take() {
            pin.identity = new;
        }
        pin.verified = true;
        let identity = pin.identity;
        // Sessions with another identity are of no use any more.
        for (addr, list) in self.state.sessions.iter_mut() {
            if addr.user == user {
                list.retain(|s| *s.remote_identity() == identity);
            }
        }
        self.save()
    }

    /// Every device of `user` this client has a session with, with the
    /// safety number of the identity it presents and whether that is not
    /// the user's confirmed one.
    pub fn devices(&self, user: &str) -> Vec<(Address, SafetyNumber, Option<IdentityWarning>)> {
        let own = self.state.device.public_identity();
        self.state
            .sessions
            .iter()
            .filter(|(a, _)| a.user == user)
            .filter_map(|(a, list)| {
                let theirs = *list.first()?.remote_identity();
                Some((
                    a.clone(),
                    SafetyNumber::new(&own, &theirs),
                    self.state.trust_of(user, &theirs),
                ))
            })
            .collect()
    }

    /// The devices of `user` that have published keys, as the server says
    /// now.
    pub async fn device_list(&mut self, user: &str) -> Result<Vec<u32>, ClientError> {
        self.device_lists.remove(user);
        self.devices_of(user).await
    }

    /// Removes a device of this account from the server (its keys, tokens
    /// and mailbox; its open connection is closed). Peers stop sending to it
    /// once their device lists refresh ([`DEVICE_LIST_TTL`]).
    pub async fn remove_device(&mut self, device: u32) -> Result<(), ClientError> {
        let reply = self.conn.request(frame::RemoveDevice { device }).await?;
        expect(reply, |b| matches!(b, Body::Ok(_)).then_some(()))
    }

    /// Leaves this device's identity, sealed under a fresh random link code,
    /// for a new device of the same account to take within 10 minutes
    /// (docs/PROTOCOL.md §12). Returns the code to type on the new device
    /// ([`Client::login_linked`]); the server never sees it.
    pub async fn create_link(&mut self) -> Result<String, ClientError> {
        let mut secret = Zeroizing::new([0u8; 16]);
        rand::rng().fill_bytes(secret.as_mut_slice());
        let (link_id, key) = link_keys(&secret);
        let blob = crate::vault::seal_with_key(
            &key,
            &link_ad(&self.state.user),
            self.state.device.identity_secrets().as_slice(),
        );
        let reply = self.conn.request(frame::PutLink { link_id, blob }).await?;
        expect(reply, |b| matches!(b, Body::Ok(_)).then_some(()))?;
        let hex = chatify_proto::hex::lower(secret.as_slice());
        Ok(hex
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-"))
    }

    /// Starts turning on a second factor for this account
    /// (docs/PROTOCOL.md §9.5): the secret to enter into an authenticator
    /// app. Nothing changes until [`Client::mfa_confirm`].
    pub async fn mfa_setup(&self) -> Result<MfaSecret, ClientError> {
        let reply = self.conn.request(frame::MfaSetup {}).await?;
        let s = expect(reply, |b| match b {
            Body::MfaSecret(s) => Some(s),
            _ => None,
        })?;
        Ok(MfaSecret {
            secret: Zeroizing::new(s.secret),
            uri: Zeroizing::new(s.uri),
        })
    }

    /// Turns the second factor on with a code the app shows; returns the
    /// recovery codes (shown once: the server keeps only their hashes).
    pub async fn mfa_confirm(&self, code: &str) -> Result<Vec<Zeroizing<String>>, ClientError> {
        let reply = self
            .conn
            .request(frame::MfaConfirm {
                code: code.to_owned(),
            })
            .await?;
        let e = expect(reply, |b| match b {
            Body::MfaEnabled(e) => Some(e),
            _ => None,
        })?;
        Ok(e.recovery_codes.into_iter().map(Zeroizing::new).collect())
    }

    /// Turns the second factor off, with a current code or a recovery code.
    pub async fn mfa_disable(&self, code: &str) -> Result<(), ClientError> {
        let reply = self
            .conn
            .request(frame::MfaDisable {
                code: code.to_owned(),
            })
            .await?;
        expect(reply, |b| matches!(b, Body::Ok(_)).then_some(()))
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

    /// Sends the receipts still waiting for their delay, saves what the
    /// outbox learned since the last save, and closes the connection
    /// cleanly (best effort: a failure here loses no message).
    pub async fn close(mut self) {
        let _ = self.flush(true).await;
        if self.outbox_dirty {
            let _ = self.persist(None).await;
        }
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

/// A receipt or retry request the server refused (a device it says does
/// not exist, a rate limit) is not this client's failure: the sender will
/// report what it did not hear about. Only a lost connection is an error.
fn tolerate(sent: Result<(), ClientError>) -> Result<(), ClientError> {
    match sent {
        Err(ClientError::Disconnected) => Err(ClientError::Disconnected),
        Err(e @ (ClientError::Io { .. } | ClientError::Task(_))) => Err(e),
        _ => Ok(()),
    }
}

/// The link id and sealing key of a link code's secret (PROTOCOL §12).
fn link_keys(secret: &[u8; 16]) -> ([u8; 16], Zeroizing<[u8; 32]>) {
    let mut id = [0u8; 16];
    let digest = Sha256::new()
        .chain_update(b"chatify/v1/link-id")
        .chain_update(secret)
        .finalize();
    id.copy_from_slice(digest.as_slice().get(..16).unwrap_or(&[0; 16]));
    let mut key = Zeroizing::new([0u8; 32]);
    let digest = Sha256::new()
        .chain_update(b"chatify/v1/link-key")
        .chain_update(secret)
        .finalize();
    key.copy_from_slice(digest.as_slice());
    (id, key)
}

fn link_ad(user: &str) -> Vec<u8> {
    let mut ad = b"chatify link v1".to_vec();
    ad.extend_from_slice(user.as_bytes());
    ad
}

/// The secret of a link code as [`Client::create_link`] prints it (hex, in
/// groups; dashes and spaces are ignored).
fn parse_link_code(code: &str) -> Result<Zeroizing<[u8; 16]>, ClientError> {
    let digits: String = code.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
    let bytes = Zeroizing::new(chatify_proto::hex::decode(&digits).unwrap_or_default());
    let mut out = Zeroizing::new([0u8; 16]);
    if bytes.len() != 16 {
        return Err(ClientError::State(
            "a link code is 32 hexadecimal digits".into(),
        ));
    }
    out.copy_from_slice(&bytes);
    Ok(out)
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
