//! Client <-> server frames.
//!
//! A frame is one binary WebSocket message holding the CBOR array
//! `[version, type, id, body]`: `version` is [`PROTOCOL_VERSION`], `type` the
//! number in the table of [`Body`], `id` the request id chosen by the client
//! (echoed in the reply; 0 for pushes the server sends on its own), and `body`
//! a CBOR map with small unsigned integer keys as each struct below lists.

use core::fmt;

use minicbor::{Decode, Decoder, Encode, Encoder};

pub(crate) use crate::hex::Hex;
use crate::keys::{DeviceKeys, OneTimePrekey, PrekeyBundle, SignedPrekey};
use crate::limits::{
    BLOB_PART_LEN, MAX_ENVELOPE_LEN, MAX_FRAME_LEN, MAX_GROUP_DEVICES, MAX_LINK_BLOB_LEN,
    MAX_LIST_LEN, MAX_ONE_TIME_PREKEYS_PER_PUBLISH, MAX_PASSWORD_LEN, MAX_TEXT_LEN, MAX_TOKEN_LEN,
    MAX_USERNAME_LEN,
};
use crate::{ConversationId, DecodeError, ErrorCode, MessageId, PROTOCOL_VERSION};

/// One frame: a request id and a typed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The request id. Replies carry the id of the request they answer;
    /// server pushes carry 0.
    pub id: u64,
    /// What the frame says.
    pub body: Body,
}

impl Frame {
    /// Encodes the frame as the bytes of one WebSocket binary message.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        let mut e = Encoder::new(&mut buf);
        // Writing to a Vec cannot fail and no Encode impl in this crate raises
        // an error of its own, so every `?` below is on an infallible path.
        let result: Result<(), minicbor::encode::Error<core::convert::Infallible>> = (|| {
            e.array(4)?
                .u8(PROTOCOL_VERSION)?
                .u32(self.body.type_number())?
                .u64(self.id)?;
            self.body.encode_body(&mut e)
        })();
        debug_assert!(result.is_ok());
        buf
    }

    /// Decodes one frame, enforcing every limit in [`crate::limits`].
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        if bytes.len() > MAX_FRAME_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let mut d = Decoder::new(bytes);
        let (ty, id) = decode_prefix(&mut d)?;
        crate::wellformed::check(bytes)?;
        let body = Body::decode_body(ty, &mut d)?;
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - d.position()));
        }
        body.check_limits()?;
        Result::Ok(Frame { id, body })
    }

    /// The request id of a frame whose body may be undecodable, so that an
    /// error reply can name the request it answers.
    pub fn peek_id(bytes: &[u8]) -> Option<u64> {
        let mut d = Decoder::new(bytes);
        decode_prefix(&mut d).ok().map(|(_, id)| id)
    }
}

/// The frame's version (checked before anything else, PROTOCOL §9.1),
/// type and id.
fn decode_prefix(d: &mut Decoder<'_>) -> Result<(u64, u64), DecodeError> {
    let len = d.array()?;
    let version = d.u64()?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if len != Some(4) {
        return Err(DecodeError::malformed("frame is not an array of 4", 0));
    }
    let ty = d.u64()?;
    let id = d.u64()?;
    Result::Ok((ty, id))
}

pub(crate) fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        Err(DecodeError::FieldTooLong { field, max })
    } else {
        Result::Ok(())
    }
}

pub(crate) fn to_vec<T: Encode<()>>(value: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    // Infallible: see `Frame::encode`.
    let result = minicbor::encode(value, &mut buf);
    debug_assert!(result.is_ok());
    buf
}

pub(crate) fn decode_exact<'b, T: Decode<'b, ()>>(
    bytes: &'b [u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let mut d = Decoder::new(bytes);
    let value = d.decode()?;
    if d.position() != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - d.position()));
    }
    Result::Ok(value)
}

/// Prints a byte string's length only: used where the bytes are a message
/// body, a password or a token, which must never reach a log.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.0)
    }
}

macro_rules! bodies {
    ($( $(#[$doc:meta])* $num:literal => $name:ident ),* $(,)?) => {
        /// The body of a frame. The number before each variant is its `type` on the wire.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Body {
            $( $(#[$doc])* $name($name), )*
        }

        impl Body {
            /// The frame type number on the wire.
            pub const fn type_number(&self) -> u32 {
                match self { $( Body::$name(_) => $num, )* }
            }

            /// The frame type's name, as docs/PROTOCOL.md spells it.
            pub const fn name(&self) -> &'static str {
                match self { $( Body::$name(_) => stringify!($name), )* }
            }

            /// Every frame type: its number and name (for docs and tests).
            pub const TYPES: &'static [(u32, &'static str)] = &[ $( ($num, stringify!($name)), )* ];

            fn encode_body<W: minicbor::encode::Write>(
                &self,
                e: &mut Encoder<W>,
            ) -> Result<(), minicbor::encode::Error<W::Error>> {
                match self { $( Body::$name(b) => { e.encode(b)?; } )* }
                Result::Ok(())
            }

            fn decode_body(ty: u64, d: &mut Decoder<'_>) -> Result<Body, DecodeError> {
                match ty {
                    $( $num => Result::Ok(Body::$name(d.decode()?)), )*
                    other => Err(DecodeError::UnknownFrameType(other)),
                }
            }
        }

        $( impl From<$name> for Body {
            fn from(b: $name) -> Body { Body::$name(b) }
        } )*
    };
}

bodies! {
    /// Client: create an account.
    1 => Register,
    /// Client: obtain a session token for one device.
    2 => Login,
    /// Client: the first frame on a WebSocket connection; binds it to a session.
    3 => Authenticate,
    /// Client: revoke the connection's session token.
    4 => Logout,
    /// Client: publish identity keys, the signed prekey, and one-time prekeys.
    5 => PublishKeys,
    /// Client: fetch a device's prekey bundle (consumes one one-time prekey).
    6 => FetchBundle,
    /// Client: relay an E2EE envelope to a device.
    7 => Send,
    /// Client: acknowledge delivered envelopes so they leave the mailbox.
    8 => Ack,
    /// Client: fetch ciphertext history of a conversation.
    9 => FetchHistory,
    /// Either side: liveness probe.
    10 => Ping,
    /// Client: list a user's devices that have published keys.
    11 => FetchDevices,
    /// Client: remove one of the caller's own devices (keys, tokens, mailbox).
    12 => RemoveDevice,
    /// Client: leave the sealed identity for a device being linked.
    13 => PutLink,
    /// Client: take the sealed identity left for this account.
    14 => TakeLink,
    /// Client: start turning on a second factor (TOTP); the server makes a secret.
    15 => MfaSetup,
    /// Client: prove the authenticator app holds the secret; turns MFA on.
    16 => MfaConfirm,
    /// Client: turn MFA off, with a current code or a recovery code.
    17 => MfaDisable,
    /// Client: start uploading a blob (an encrypted file) of a given size.
    18 => BlobCreate,
    /// Client: upload the next part of one of the caller's blobs.
    19 => BlobPut,
    /// Client: how much of a blob the server holds (to resume).
    20 => BlobStatus,
    /// Client: let these devices download one of the caller's complete blobs.
    21 => BlobGrant,
    /// Client: download one part of a complete blob the caller may read.
    22 => BlobGet,
    /// Client: drop the caller's hold on a blob (deleted when none is left).
    23 => BlobRelease,
    /// Client: relay one group message to each of these devices.
    24 => SendGroup,
    /// Server: the request succeeded and has nothing to return.
    64 => Ok,
    /// Server: the request failed.
    65 => Error,
    /// Server: reply to [`Login`].
    66 => LoginOk,
    /// Server: reply to [`Authenticate`].
    67 => AuthOk,
    /// Server: reply to [`FetchBundle`].
    68 => Bundle,
    /// Server: reply to [`Send`]; the envelope is durable.
    69 => SendOk,
    /// Server: an envelope for this device (pushed, or replayed from the mailbox).
    70 => Deliver,
    /// Server: reply to [`FetchHistory`].
    71 => History,
    /// Server: the device's one-time prekey pool is running low.
    72 => PrekeysLow,
    /// Either side: reply to [`Ping`].
    73 => Pong,
    /// Server: reply to [`FetchDevices`].
    74 => Devices,
    /// Server: reply to [`TakeLink`].
    75 => Link,
    /// Server: reply to [`MfaSetup`].
    76 => MfaSecret,
    /// Server: reply to [`MfaConfirm`].
    77 => MfaEnabled,
    /// Server: reply to [`BlobCreate`], [`BlobPut`] and [`BlobStatus`].
    78 => BlobState,
    /// Server: reply to [`BlobGet`].
    79 => BlobPart,
}

impl Body {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Body::Register(b) => {
                check_len("username", b.username.len(), MAX_USERNAME_LEN)?;
                check_len("password", b.password.len(), MAX_PASSWORD_LEN)
            }
            Body::Login(b) => {
                check_len("username", b.username.len(), MAX_USERNAME_LEN)?;
                check_len("password", b.password.len(), MAX_PASSWORD_LEN)?;
                check_len(
                    "second_factor",
                    b.second_factor.as_ref().map_or(0, String::len),
                    MAX_TEXT_LEN,
                )
            }
            Body::Authenticate(b) => check_len("token", b.token.len(), MAX_TOKEN_LEN),
            Body::PublishKeys(b) => check_len(
                "one_time_prekeys",
                b.one_time_prekeys.len(),
                MAX_ONE_TIME_PREKEYS_PER_PUBLISH,
            ),
            Body::FetchBundle(b) => b.device.check_limits(),
            Body::Send(b) => {
                b.to.check_limits()?;
                check_len("envelope", b.envelope.len(), MAX_ENVELOPE_LEN)
            }
            Body::Ack(b) => check_len("seqs", b.seqs.len(), MAX_LIST_LEN),
            Body::FetchHistory(b) => check_len("limit", b.limit as usize, MAX_LIST_LEN),
            Body::Error(b) => check_len("message", b.message.len(), MAX_TEXT_LEN),
            Body::LoginOk(b) => {
                check_len("token", b.token.len(), MAX_TOKEN_LEN)?;
                check_len("user", b.user.len(), MAX_USERNAME_LEN)
            }
            Body::AuthOk(b) => check_len("user", b.user.len(), MAX_USERNAME_LEN),
            Body::Bundle(b) => b.bundle.check_limits(),
            Body::Deliver(b) => b.check_limits(),
            Body::History(b) => {
                check_len("items", b.items.len(), MAX_LIST_LEN)?;
                b.items.iter().try_for_each(Deliver::check_limits)
            }
            Body::FetchDevices(b) => check_len("user", b.user.len(), MAX_USERNAME_LEN),
            Body::PutLink(b) => check_len("blob", b.blob.len(), MAX_LINK_BLOB_LEN),
            Body::Link(b) => check_len("blob", b.blob.len(), MAX_LINK_BLOB_LEN),
            Body::MfaConfirm(MfaConfirm { code }) | Body::MfaDisable(MfaDisable { code }) => {
                check_len("code", code.len(), MAX_TEXT_LEN)
            }
            Body::MfaSecret(b) => {
                check_len("secret", b.secret.len(), MAX_TEXT_LEN)?;
                check_len("uri", b.uri.len(), MAX_TEXT_LEN)
            }
            Body::MfaEnabled(b) => {
                check_len("recovery_codes", b.recovery_codes.len(), MAX_LIST_LEN)?;
                b.recovery_codes
                    .iter()
                    .try_for_each(|c| check_len("recovery code", c.len(), MAX_TEXT_LEN))
            }
            Body::SendGroup(b) => {
                check_len("to", b.to.len(), MAX_GROUP_DEVICES)?;
                b.to.iter().try_for_each(Address::check_limits)?;
                check_len("envelope", b.envelope.len(), MAX_ENVELOPE_LEN)
            }
            Body::BlobPut(b) => check_len("data", b.data.len(), BLOB_PART_LEN),
            Body::BlobPart(b) => check_len("data", b.data.len(), BLOB_PART_LEN),
            Body::BlobGrant(b) => {
                check_len("to", b.to.len(), MAX_LIST_LEN)?;
                b.to.iter().try_for_each(Address::check_limits)
            }
            Body::Devices(b) => {
                check_len("user", b.user.len(), MAX_USERNAME_LEN)?;
                check_len("devices", b.devices.len(), MAX_LIST_LEN)
            }
            Body::BlobCreate(_)
            | Body::BlobStatus(_)
            | Body::BlobGet(_)
            | Body::BlobRelease(_)
            | Body::BlobState(_)
            | Body::RemoveDevice(_)
            | Body::TakeLink(_)
            | Body::MfaSetup(_)
            | Body::Logout(_)
            | Body::Ping(_)
            | Body::Ok(_)
            | Body::SendOk(_)
            | Body::PrekeysLow(_)
            | Body::Pong(_) => Result::Ok(()),
        }
    }
}

/// A device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
#[cbor(map)]
pub struct Address {
    /// The user name.
    #[n(0)]
    pub user: String,
    /// The device number within the account.
    #[n(1)]
    pub device: u32,
}

impl Address {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len("user", self.user.len(), MAX_USERNAME_LEN)
    }
}

/// `1 Register`: create an account.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Register {
    /// 1 to 64 bytes of UTF-8.
    #[n(0)]
    pub username: String,
    /// The password; the server stores only an Argon2id hash.
    #[n(1)]
    pub password: String,
}

impl fmt::Debug for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Register")
            .field("username", &self.username)
            .field("password", &Redacted(self.password.len()))
            .finish()
    }
}

/// `2 Login`: exchange a password (and second factor) for a session token.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Login {
    /// The user name.
    #[n(0)]
    pub username: String,
    /// The password.
    #[n(1)]
    pub password: String,
    /// The device the token is for.
    #[n(2)]
    pub device: u32,
    /// A one-time code when the account has a second factor.
    #[n(3)]
    pub second_factor: Option<String>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &Redacted(self.password.len()))
            .field("device", &self.device)
            .field(
                "second_factor",
                &self.second_factor.as_ref().map(|s| Redacted(s.len())),
            )
            .finish()
    }
}

/// `3 Authenticate`: the first frame of every WebSocket connection.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Authenticate {
    /// The session token from [`LoginOk`].
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub token: Vec<u8>,
}

impl fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticate")
            .field("token", &Redacted(self.token.len()))
            .finish()
    }
}

/// `4 Logout`: revoke the token the connection authenticated with.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Logout {}

/// `5 PublishKeys`: publish the device's keys to the key directory.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PublishKeys {
    /// Identity keys. Must equal what the device published before, unless
    /// this is its first publication.
    #[n(0)]
    pub identity: DeviceKeys,
    /// The current signed prekey (replaces the previous one).
    #[n(1)]
    pub signed_prekey: SignedPrekey,
    /// One-time prekeys added to the pool.
    #[n(2)]
    pub one_time_prekeys: Vec<OneTimePrekey>,
}

/// `6 FetchBundle`: ask for a device's prekey bundle.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct FetchBundle {
    /// The device.
    #[n(0)]
    pub device: Address,
}

/// `7 Send`: relay an envelope. The server answers [`SendOk`] once the
/// envelope is durable.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Send {
    /// The recipient device.
    #[n(0)]
    pub to: Address,
    /// The conversation the envelope belongs to (for history).
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub conversation: ConversationId,
    /// The sender's message id (duplicates are dropped by recipients).
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub message_id: MessageId,
    /// The encoded [`Envelope`](crate::Envelope): opaque to the server.
    #[n(3)]
    #[cbor(with = "minicbor::bytes")]
    pub envelope: Vec<u8>,
}

impl fmt::Debug for Send {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Send")
            .field("to", &self.to)
            .field("conversation", &Hex(&self.conversation))
            .field("message_id", &Hex(&self.message_id))
            .field("envelope", &Redacted(self.envelope.len()))
            .finish()
    }
}

/// `8 Ack`: the device has processed these deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Ack {
    /// Sequence numbers from [`Deliver::seq`].
    #[n(0)]
    pub seqs: Vec<u64>,
}

/// `9 FetchHistory`: a page of a conversation's ciphertext history, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct FetchHistory {
    /// The conversation.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub conversation: ConversationId,
    /// Only items with a smaller sequence number (for paging); absent for the newest.
    #[n(1)]
    pub before: Option<u64>,
    /// Most items to return (at most [`MAX_LIST_LEN`]).
    #[n(2)]
    pub limit: u32,
}

/// `10 Ping`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Ping {}

/// `11 FetchDevices`: the devices of a user that have published keys.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct FetchDevices {
    /// The user.
    #[n(0)]
    pub user: String,
}

/// `12 RemoveDevice`: remove one of the caller's own devices: its keys,
/// one-time prekeys, session tokens and mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct RemoveDevice {
    /// The device number.
    #[n(0)]
    pub device: u32,
}

/// `13 PutLink`: leave a sealed identity for a device of the caller's
/// account to take ([`TakeLink`]); single use, kept for 10 minutes. The
/// server cannot open it (PROTOCOL §12).
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PutLink {
    /// Derived from the link code; names the blob.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub link_id: [u8; 16],
    /// The sealed identity.
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: Vec<u8>,
}

impl fmt::Debug for PutLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutLink")
            .field("link_id", &Hex(&self.link_id))
            .field("blob", &Redacted(self.blob.len()))
            .finish()
    }
}

/// `14 TakeLink`: take (and delete) the sealed identity left under
/// `link_id` for the caller's account.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct TakeLink {
    /// As in [`PutLink`].
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub link_id: [u8; 16],
}

/// `15 MfaSetup`: make a new TOTP secret for the caller's account
/// (docs/PROTOCOL.md §9.5). It takes effect with [`MfaConfirm`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct MfaSetup {}

/// `16 MfaConfirm`: a code computed from the secret of [`MfaSecret`]; turns
/// the second factor on.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct MfaConfirm {
    /// The six-digit code.
    #[n(0)]
    pub code: String,
}

/// `17 MfaDisable`: turn the second factor off.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct MfaDisable {
    /// A current six-digit code, or an unused recovery code.
    #[n(0)]
    pub code: String,
}

/// A blob's name: 16 random bytes the server chooses.
pub type BlobId = [u8; 16];

/// `18 BlobCreate`: reserve room for a blob of `size` bytes (within the
/// server's largest blob and the account's quota); answered with
/// [`BlobState`], which names the new blob. Blobs are opaque to the server:
/// a client uploads only ciphertext (PROTOCOL §15).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct BlobCreate {
    /// The blob's exact size in bytes, at least 1.
    #[n(0)]
    pub size: u64,
}

/// `19 BlobPut`: part `part` of a blob the calling device created. Part
/// `i` covers bytes `i × BLOB_PART_LEN` onwards and is exactly
/// [`BLOB_PART_LEN`] bytes long except the last. Parts are accepted in
/// order: the next one the server lacks; one it already holds is answered
/// as a success without being written again (a retry after a lost reply).
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct BlobPut {
    /// The blob.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: BlobId,
    /// The part's index.
    #[n(1)]
    pub part: u32,
    /// The part's bytes.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for BlobPut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobPut")
            .field("blob", &Hex(&self.blob))
            .field("part", &self.part)
            .field("data", &Redacted(self.data.len()))
            .finish()
    }
}

/// `20 BlobStatus`: how much of a blob the server holds; for its creator
/// (to resume an upload) and the devices it was granted to.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct BlobStatus {
    /// The blob.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: BlobId,
}

/// `21 BlobGrant`: let these devices download a complete blob the calling
/// device created; each holds the blob until it releases it (or the
/// server's retention passes).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct BlobGrant {
    /// The blob.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: BlobId,
    /// The devices.
    #[n(1)]
    pub to: Vec<Address>,
}

/// `22 BlobGet`: one part of a complete blob the calling device created or
/// was granted; answered with [`BlobPart`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct BlobGet {
    /// The blob.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: BlobId,
    /// The part's index.
    #[n(1)]
    pub part: u32,
}

/// `23 BlobRelease`: the calling device is done with the blob (its creator
/// once it has granted it, a recipient once it has saved the file). The
/// server deletes a blob that nobody holds.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct BlobRelease {
    /// The blob.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: BlobId,
}

/// `24 SendGroup`: relay one group message (PROTOCOL §16.3) to each of
/// these devices. The server stores one copy per device, as if each had
/// been sent with [`Send`], and answers [`SendOk`] once all are durable
/// (with the last one's sequence number); a device that does not exist or
/// has published no keys fails the whole request and nothing is stored.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SendGroup {
    /// The recipient devices: at least one, none twice, not the sender.
    #[n(0)]
    pub to: Vec<Address>,
    /// The group (its id, which is the conversation its messages are in).
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub conversation: ConversationId,
    /// The sender's message id.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub message_id: MessageId,
    /// The group message: opaque to the server.
    #[n(3)]
    #[cbor(with = "minicbor::bytes")]
    pub envelope: Vec<u8>,
}

impl fmt::Debug for SendGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendGroup")
            .field("to", &self.to.len())
            .field("conversation", &Hex(&self.conversation))
            .field("message_id", &Hex(&self.message_id))
            .field("envelope", &Redacted(self.envelope.len()))
            .finish()
    }
}

/// `78 BlobState`: a blob's size and how many of its bytes the server
/// holds (all of them: the blob is complete).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct BlobState {
    /// The blob.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: BlobId,
    /// Its size in bytes.
    #[n(1)]
    pub size: u64,
    /// Bytes held, from the start: the next part to upload is
    /// `received / BLOB_PART_LEN`.
    #[n(2)]
    pub received: u64,
}

/// `79 BlobPart`: one part of a blob.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct BlobPart {
    /// The blob.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: BlobId,
    /// The part's index.
    #[n(1)]
    pub part: u32,
    /// Its bytes.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for BlobPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobPart")
            .field("blob", &Hex(&self.blob))
            .field("part", &self.part)
            .field("data", &Redacted(self.data.len()))
            .finish()
    }
}

/// `76 MfaSecret`: the TOTP secret for the authenticator app.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct MfaSecret {
    /// The secret (20 bytes).
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub secret: Vec<u8>,
    /// The same as an `otpauth://totp/...` URI (base32 secret, issuer,
    /// SHA1, 6 digits, 30 s), what authenticator apps scan.
    #[n(1)]
    pub uri: String,
}

/// `77 MfaEnabled`: the second factor is on; single-use recovery codes,
/// shown once (the server keeps only their hashes).
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct MfaEnabled {
    /// The recovery codes.
    #[n(0)]
    pub recovery_codes: Vec<String>,
}

impl fmt::Debug for MfaConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MfaConfirm")
            .field("code", &Redacted(self.code.len()))
            .finish()
    }
}

impl fmt::Debug for MfaDisable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MfaDisable")
            .field("code", &Redacted(self.code.len()))
            .finish()
    }
}

impl fmt::Debug for MfaSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MfaSecret")
            .field("secret", &Redacted(self.secret.len()))
            .field("uri", &Redacted(self.uri.len()))
            .finish()
    }
}

impl fmt::Debug for MfaEnabled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MfaEnabled")
            .field("recovery_codes", &Redacted(self.recovery_codes.len()))
            .finish()
    }
}

/// `74 Devices`: the devices of a user that have published keys, ascending.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Devices {
    /// The user.
    #[n(0)]
    pub user: String,
    /// Device numbers.
    #[n(1)]
    pub devices: Vec<u32>,
}

/// `75 Link`: the sealed identity [`TakeLink`] asked for.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Link {
    /// The sealed identity.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: Vec<u8>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("blob", &Redacted(self.blob.len()))
            .finish()
    }
}

/// `64 Ok`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Ok {}

/// `65 Error`: a typed failure.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Error {
    /// What went wrong.
    #[n(0)]
    pub code: ErrorCode,
    /// A human-readable explanation; never contains request payloads.
    #[n(1)]
    pub message: String,
}

/// `66 LoginOk`.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct LoginOk {
    /// The bearer token for [`Authenticate`].
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub token: Vec<u8>,
    /// Expiry, seconds since the Unix epoch.
    #[n(1)]
    pub expires_at: u64,
    /// The canonical user name.
    #[n(2)]
    pub user: String,
    /// The device the token is for.
    #[n(3)]
    pub device: u32,
}

impl fmt::Debug for LoginOk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginOk")
            .field("token", &Redacted(self.token.len()))
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .field("device", &self.device)
            .finish()
    }
}

/// `67 AuthOk`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct AuthOk {
    /// The authenticated user.
    #[n(0)]
    pub user: String,
    /// The authenticated device.
    #[n(1)]
    pub device: u32,
}

/// `68 Bundle`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Bundle {
    /// The requested device's bundle.
    #[n(0)]
    pub bundle: PrekeyBundle,
}

/// `69 SendOk`: the envelope is durable.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SendOk {
    /// The server's sequence number for the envelope.
    #[n(0)]
    pub seq: u64,
    /// The message id from the [`Send`].
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub message_id: MessageId,
}

/// `70 Deliver`: an envelope for the receiving device.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Deliver {
    /// The server's sequence number, used in [`Ack`].
    #[n(0)]
    pub seq: u64,
    /// The authenticated sender device.
    #[n(1)]
    pub from: Address,
    /// The conversation.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub conversation: ConversationId,
    /// The sender's message id.
    #[n(3)]
    #[cbor(with = "minicbor::bytes")]
    pub message_id: MessageId,
    /// When the server accepted the envelope, milliseconds since the Unix epoch.
    #[n(4)]
    pub sent_at_ms: u64,
    /// The encoded envelope, as the sender sent it.
    #[n(5)]
    #[cbor(with = "minicbor::bytes")]
    pub envelope: Vec<u8>,
}

impl Deliver {
    fn check_limits(&self) -> Result<(), DecodeError> {
        self.from.check_limits()?;
        check_len("envelope", self.envelope.len(), MAX_ENVELOPE_LEN)
    }
}

impl fmt::Debug for Deliver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliver")
            .field("seq", &self.seq)
            .field("from", &self.from)
            .field("conversation", &Hex(&self.conversation))
            .field("message_id", &Hex(&self.message_id))
            .field("sent_at_ms", &self.sent_at_ms)
            .field("envelope", &Redacted(self.envelope.len()))
            .finish()
    }
}

/// `71 History`: ciphertext history, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct History {
    /// The items; `seq` orders them.
    #[n(0)]
    pub items: Vec<Deliver>,
}

/// `72 PrekeysLow`: publish more one-time prekeys.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PrekeysLow {
    /// How many one-time prekeys the directory still holds for the device.
    #[n(0)]
    pub remaining: u32,
}

/// `73 Pong`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Pong {}

impl Error {
    /// An error frame body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
}
