//! Versioned serialization of session and device state, so a client survives
//! restarts.
//!
//! The output holds secret keys: it is written into a [`SecretBuf`] (which
//! wipes what it outgrows) and returned in a [`Zeroizing`] buffer, and the
//! caller must store it protected (PROTOCOL §13; the reference client seals
//! it under its vault). Format: minicbor-derived CBOR arrays whose first
//! element is [`STATE_VERSION`]; docs/PROTOCOL.md §13 lists the fields.

use std::collections::BTreeMap;

use chatify_proto::PrekeyHeader;
use ed25519_dalek::SigningKey;
use minicbor::bytes::ByteSlice;
use minicbor::{Decode, Decoder, Encode};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::Error;
use crate::identity::{
    Device, IdentityKeyPair, PrekeySecret, PublicIdentity, SeenBaseKeys, SignedPrekeySecret,
};
use crate::ratchet::{Chain, Ratchet, SkippedKeys};
use crate::secret::{Key32, SecretBuf};
use crate::session::Session;

/// Version of the persisted state format.
pub const STATE_VERSION: u8 = 1;

const SESSION_TAG: u8 = 0x53; // 'S'
const DEVICE_TAG: u8 = 0x44; // 'D'

type EncResult = Result<(), minicbor::encode::Error<core::convert::Infallible>>;

// The records: each persisted type as minicbor-derived arrays borrowing
// from the live state when encoding (no copy of a secret is made) and from
// the input when decoding. docs/PROTOCOL.md §13 lists the fields.

/// `[version, 'S', local, remote, base_key, pending_prekey | null, root,
/// dhs, dhr | null, sending | null, receiving | null, previous_sending,
/// [skipped…]]`.
#[derive(Encode, Decode)]
struct SessionRecord<'a> {
    #[n(0)]
    version: u8,
    #[n(1)]
    tag: u8,
    #[b(2)]
    local: &'a ByteSlice,
    #[b(3)]
    remote: &'a ByteSlice,
    #[b(4)]
    base_key: &'a ByteSlice,
    #[n(5)]
    pending_prekey: Option<PrekeyHeader>,
    #[b(6)]
    root: &'a ByteSlice,
    #[b(7)]
    dhs: &'a ByteSlice,
    #[b(8)]
    dhr: Option<&'a ByteSlice>,
    #[b(9)]
    sending: Option<ChainRecord<'a>>,
    #[b(10)]
    receiving: Option<ChainRecord<'a>>,
    #[n(11)]
    previous_sending: u32,
    #[b(12)]
    skipped: Vec<SkippedRecord<'a>>,
}

/// `[chain key, counter]`.
#[derive(Encode, Decode)]
struct ChainRecord<'a> {
    #[b(0)]
    key: &'a ByteSlice,
    #[n(1)]
    counter: u32,
}

/// `[ratchet key, counter, message key]`.
#[derive(Encode, Decode)]
struct SkippedRecord<'a> {
    #[b(0)]
    ratchet_key: &'a ByteSlice,
    #[n(1)]
    counter: u32,
    #[b(2)]
    key: &'a ByteSlice,
}

/// `[version, 'D', signing key, identity DH key, next prekey id,
/// [signed prekey…], [one-time prekey…]]`.
#[derive(Encode, Decode)]
struct DeviceRecord<'a> {
    #[n(0)]
    version: u8,
    #[n(1)]
    tag: u8,
    #[b(2)]
    signing: &'a ByteSlice,
    #[b(3)]
    dh: &'a ByteSlice,
    #[n(4)]
    next_prekey_id: u32,
    #[b(5)]
    signed_prekeys: Vec<SignedPrekeyRecord<'a>>,
    #[b(6)]
    one_time_prekeys: Vec<OneTimeRecord<'a>>,
}

/// `[id, secret, signature, [base keys seen…]]`.
#[derive(Encode, Decode)]
struct SignedPrekeyRecord<'a> {
    #[n(0)]
    id: u32,
    #[b(1)]
    secret: &'a ByteSlice,
    #[b(2)]
    signature: &'a ByteSlice,
    #[b(3)]
    seen_base_keys: Vec<&'a ByteSlice>,
}

/// `[id, secret]`.
#[derive(Encode, Decode)]
struct OneTimeRecord<'a> {
    #[n(0)]
    id: u32,
    #[b(1)]
    secret: &'a ByteSlice,
}

fn bad(_: minicbor::decode::Error) -> Error {
    Error::State("malformed state")
}

fn fixed<const N: usize>(bytes: &ByteSlice) -> Result<[u8; N], Error> {
    <[u8; N]>::try_from(&**bytes).map_err(|_| Error::State("field of the wrong length"))
}

fn key(bytes: &ByteSlice) -> Result<Key32, Error> {
    if bytes.len() != 32 {
        return Err(Error::State("key of the wrong length"));
    }
    Key32::from_slice(bytes).ok_or(Error::State("key of the wrong length"))
}

fn static_secret(bytes: &ByteSlice) -> Result<StaticSecret, Error> {
    let mut bytes = Zeroizing::new(fixed::<32>(bytes)?);
    let secret = StaticSecret::from(*bytes);
    zeroize::Zeroize::zeroize(&mut *bytes);
    Ok(secret)
}

/// Checks the version and the kind before the record is decoded, so that a
/// file of another version is named as such rather than as malformed.
fn check_header(bytes: &[u8], tag: u8) -> Result<(), Error> {
    let mut d = Decoder::new(bytes);
    d.array().map_err(bad)?;
    if d.u64().map_err(bad)? != u64::from(STATE_VERSION) {
        return Err(Error::State("unsupported state version"));
    }
    if d.u8().map_err(bad)? != tag {
        return Err(Error::State("not this kind of state"));
    }
    Ok(())
}

/// Decodes a whole record: nothing may follow it.
fn decode_record<'a, T: Decode<'a, ()>>(bytes: &'a [u8], tag: u8) -> Result<T, Error> {
    check_header(bytes, tag)?;
    let mut d = Decoder::new(bytes);
    let record = d.decode::<T>().map_err(bad)?;
    if d.position() != bytes.len() {
        return Err(Error::State("trailing bytes"));
    }
    Ok(record)
}

fn finish(buf: SecretBuf, result: EncResult) -> Zeroizing<Vec<u8>> {
    // Encoding into memory cannot fail; see chatify-proto's Frame::encode.
    debug_assert!(result.is_ok());
    buf.into_inner()
}

fn chain_record(chain: &Option<Chain>) -> Option<ChainRecord<'_>> {
    chain.as_ref().map(|c| ChainRecord {
        key: c.key.as_bytes().as_slice().into(),
        counter: c.counter,
    })
}

fn chain_from(record: Option<ChainRecord<'_>>) -> Result<Option<Chain>, Error> {
    record
        .map(|c| {
            Ok(Chain {
                key: key(c.key)?,
                counter: c.counter,
            })
        })
        .transpose()
}

impl Session {
    /// Serializes the session (secret: store it protected). The sending
    /// chain is written where the last confirmed reservation left it, if
    /// that is ahead of the live chain (see [`Session::to_bytes_reserving`]);
    /// it reserves nothing new.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        self.encode(self.ratchet.saved_chain()).0
    }

    /// Serializes the session with its sending chain `n` messages ahead
    /// (at most [`crate::ratchet::MAX_RESERVED_SENDS`]): once these bytes
    /// are durable, pass the returned [`SavedAt`] to
    /// [`Session::confirm_saved`] and the next `n` messages may be sent
    /// without saving again. Restoring these bytes never reuses a message
    /// key that the live session may have used.
    pub fn to_bytes_reserving(&mut self, n: u32) -> (Zeroizing<Vec<u8>>, SavedAt) {
        if n == 0 {
            return self.encode(self.ratchet.saved_chain());
        }
        self.ratchet.reserve(n);
        self.encode(self.ratchet.reserved_chain())
    }

    /// Serializes the session for a save that no send asked for (after
    /// receiving, say): it reserves `n` sends only on a sending chain
    /// created since the session was restored, and otherwise reserves
    /// nothing, as [`Session::to_bytes`]. A chain is created in one lifetime
    /// only, so however many lifetimes and saves follow, such saves add at
    /// most one reservation per chain (docs/PROTOCOL.md §13.1); in return a
    /// reply right after a receive needs no save of its own.
    pub fn to_bytes_reserving_new_chain(&mut self, n: u32) -> (Zeroizing<Vec<u8>>, SavedAt) {
        if self.ratchet.created_here {
            self.to_bytes_reserving(n)
        } else {
            self.encode(self.ratchet.saved_chain())
        }
    }

    fn encode(&self, sending: Option<Chain>) -> (Zeroizing<Vec<u8>>, SavedAt) {
        self.persisted
            .store(true, core::sync::atomic::Ordering::Relaxed);
        let r = &self.ratchet;
        let saved = SavedAt {
            ratchet_key: r.dhs_public,
            counter: sending.as_ref().map(|c| c.counter),
        };
        let (local, remote) = (self.local.to_bytes(), self.remote.to_bytes());
        let record = SessionRecord {
            version: STATE_VERSION,
            tag: SESSION_TAG,
            local: local.as_slice().into(),
            remote: remote.as_slice().into(),
            base_key: self.base_key.as_slice().into(),
            pending_prekey: self.pending_prekey,
            root: r.root.as_bytes().as_slice().into(),
            dhs: r.dhs.as_bytes().as_slice().into(),
            dhr: r.dhr.as_ref().map(|k| k.as_slice().into()),
            sending: chain_record(&sending),
            receiving: chain_record(&r.receiving),
            previous_sending: r.previous_sending,
            skipped: r
                .skipped
                .order
                .iter()
                .filter_map(|id| {
                    r.skipped.keys.get(id).map(|mk| SkippedRecord {
                        ratchet_key: id.0.as_slice().into(),
                        counter: id.1,
                        key: mk.as_bytes().as_slice().into(),
                    })
                })
                .collect(),
        };
        let mut buf = SecretBuf::with_capacity(session_capacity(r.skipped.order.len()));
        let result = minicbor::encode(&record, &mut buf);
        (finish(buf, result), saved)
    }

    /// Restores a session serialized by [`Session::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Session, Error> {
        let record: SessionRecord<'_> = decode_record(bytes, SESSION_TAG)?;
        let dhs = static_secret(record.dhs)?;
        let mut skipped = SkippedKeys::default();
        for k in record.skipped {
            skipped.insert(fixed::<32>(k.ratchet_key)?, k.counter, key(k.key)?);
        }
        Ok(Session {
            local: identity(&fixed::<64>(record.local)?),
            remote: identity(&fixed::<64>(record.remote)?),
            base_key: fixed::<32>(record.base_key)?,
            pending_prekey: record.pending_prekey,
            ratchet: Ratchet {
                root: key(record.root)?,
                dhs_public: PublicKey::from(&dhs).to_bytes(),
                dhs,
                dhr: record.dhr.map(fixed::<32>).transpose()?,
                sending: chain_from(record.sending)?,
                receiving: chain_from(record.receiving)?,
                previous_sending: record.previous_sending,
                skipped,
                reserved_until: 0,
                reserved: None,
                created_here: false,
            },
            persisted: core::sync::atomic::AtomicBool::new(true),
        })
    }
}

/// Bytes reserved up front for a serialized session with `skipped` skipped
/// keys, so that the buffer rarely has to grow ([`SecretBuf`] wipes the old
/// copy when it does). Each skipped key takes at most 74 bytes:
/// `[bstr32, u32, bstr32]` is 1 + 34 + 5 + 34.
fn session_capacity(skipped: usize) -> usize {
    1024 + 80 * skipped
}

/// Where a save left a session's sending chain (see
/// [`Session::to_bytes_reserving`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedAt {
    ratchet_key: [u8; 32],
    counter: Option<u32>,
}

impl SavedAt {
    pub(crate) fn matches(&self, ratchet_key: &[u8; 32]) -> bool {
        &self.ratchet_key == ratchet_key
    }

    pub(crate) fn counter(&self) -> Option<u32> {
        self.counter
    }
}

fn identity(bytes: &[u8; 64]) -> PublicIdentity {
    let mut signing_key = [0u8; 32];
    let mut identity_key = [0u8; 32];
    let (a, b) = bytes.split_at(32);
    signing_key.copy_from_slice(a);
    identity_key.copy_from_slice(b);
    PublicIdentity {
        signing_key,
        identity_key,
    }
}

impl Device {
    /// Serializes the device's private keys (secret: store it protected).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let seen: usize = self
            .signed_prekeys
            .iter()
            .map(|s| s.seen_base_keys.order.len())
            .sum();
        let capacity =
            512 + 160 * self.signed_prekeys.len() + 48 * self.one_time_prekeys.len() + 36 * seen;
        let signing = Zeroizing::new(self.identity.signing.to_bytes());
        let record = DeviceRecord {
            version: STATE_VERSION,
            tag: DEVICE_TAG,
            signing: signing.as_slice().into(),
            dh: self.identity.dh.as_bytes().as_slice().into(),
            next_prekey_id: self.next_prekey_id,
            signed_prekeys: self
                .signed_prekeys
                .iter()
                .map(|s| SignedPrekeyRecord {
                    id: s.key.id,
                    secret: s.key.secret.as_bytes().as_slice().into(),
                    signature: s.signature.as_slice().into(),
                    seen_base_keys: s
                        .seen_base_keys
                        .order
                        .iter()
                        .map(|k| k.as_slice().into())
                        .collect(),
                })
                .collect(),
            one_time_prekeys: self
                .one_time_prekeys
                .values()
                .map(|k| OneTimeRecord {
                    id: k.id,
                    secret: k.secret.as_bytes().as_slice().into(),
                })
                .collect(),
        };
        let mut buf = SecretBuf::with_capacity(capacity);
        let result = minicbor::encode(&record, &mut buf);
        finish(buf, result)
    }

    /// Restores a device serialized by [`Device::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Device, Error> {
        let record: DeviceRecord<'_> = decode_record(bytes, DEVICE_TAG)?;
        let signing_bytes = Zeroizing::new(fixed::<32>(record.signing)?);
        let signing = SigningKey::from_bytes(&signing_bytes);
        let dh = static_secret(record.dh)?;
        let mut signed_prekeys = Vec::new();
        // A device keeps its current and its previous signed prekey.
        for s in record.signed_prekeys.into_iter().take(2) {
            let mut seen_base_keys = SeenBaseKeys::default();
            for k in s.seen_base_keys {
                seen_base_keys.insert(fixed::<32>(k)?);
            }
            signed_prekeys.push(SignedPrekeySecret {
                key: PrekeySecret::from_secret(s.id, static_secret(s.secret)?),
                signature: fixed::<64>(s.signature)?,
                seen_base_keys,
            });
        }
        let mut one_time_prekeys = BTreeMap::new();
        for k in record.one_time_prekeys {
            one_time_prekeys.insert(
                k.id,
                PrekeySecret::from_secret(k.id, static_secret(k.secret)?),
            );
        }
        Ok(Device {
            identity: IdentityKeyPair::from_parts(signing, dh),
            signed_prekeys,
            one_time_prekeys,
            next_prekey_id: record.next_prekey_id,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::ratchet::MAX_SKIPPED_TOTAL;
    use crate::secret::Key32;
    use rand_chacha::rand_core::SeedableRng;

    /// The zeroizing buffer is sized for the worst case, so it is never
    /// reallocated while keys are written into it.
    #[test]
    fn a_full_session_fits_the_buffer_reserved_for_it() {
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([3; 32]);
        let alice = Device::generate(&mut rng);
        let mut bob = Device::generate(&mut rng);
        let keys = bob.publish_keys(1, &mut rng);
        let bundle = chatify_proto::PrekeyBundle {
            user: "bob".into(),
            device: 1,
            identity: keys.identity,
            signed_prekey: keys.signed_prekey,
            one_time_prekey: keys.one_time_prekeys.first().cloned(),
        };
        let verified = crate::VerifiedBundle::verify(&bundle).unwrap();
        let mut session = Session::initiate(&alice, verified, &mut rng).unwrap();
        for n in 0..MAX_SKIPPED_TOTAL {
            // Counters near u32::MAX take the longest encoding.
            let counter = u32::MAX - n as u32;
            session.ratchet.skipped.insert(
                [0xff; 32],
                counter,
                Key32::from_slice(&[7; 32]).unwrap(),
            );
        }
        let bytes = session.to_bytes();
        assert!(
            bytes.len() <= session_capacity(MAX_SKIPPED_TOTAL),
            "{} bytes written into {} reserved",
            bytes.len(),
            session_capacity(MAX_SKIPPED_TOTAL)
        );
    }
}
