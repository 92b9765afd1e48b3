//! Versioned serialization of session and device state, so a client survives
//! restarts.
//!
//! The output holds secret keys: it is written into a [`SecretBuf`] (which
//! wipes what it outgrows) and returned in a [`Zeroizing`] buffer, and the
//! caller must store it protected (PROTOCOL §13; the reference client keeps
//! it in a file of mode 0600 and does not encrypt it yet). Format: a CBOR array whose first element is [`STATE_VERSION`];
//! docs/PROTOCOL.md §State lists the fields.

use std::collections::BTreeMap;

use chatify_proto::PrekeyHeader;
use ed25519_dalek::SigningKey;
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
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

type W<'a> = Encoder<&'a mut SecretBuf>;
type EncResult = Result<(), minicbor::encode::Error<core::convert::Infallible>>;

fn bad(_: minicbor::decode::Error) -> Error {
    Error::State("malformed state")
}

fn fixed<const N: usize>(d: &mut Decoder<'_>) -> Result<[u8; N], Error> {
    d.bytes()
        .map_err(bad)?
        .try_into()
        .map_err(|_| Error::State("field of the wrong length"))
}

fn key(d: &mut Decoder<'_>) -> Result<Key32, Error> {
    let bytes = d.bytes().map_err(bad)?;
    if bytes.len() != 32 {
        return Err(Error::State("key of the wrong length"));
    }
    Key32::from_slice(bytes).ok_or(Error::State("key of the wrong length"))
}

fn static_secret(d: &mut Decoder<'_>) -> Result<StaticSecret, Error> {
    let mut bytes = Zeroizing::new(fixed::<32>(d)?);
    let secret = StaticSecret::from(*bytes);
    zeroize::Zeroize::zeroize(&mut *bytes);
    Ok(secret)
}

fn array(d: &mut Decoder<'_>) -> Result<u64, Error> {
    d.array()
        .map_err(bad)?
        .ok_or(Error::State("indefinite-length array"))
}

fn is_null(d: &mut Decoder<'_>) -> Result<bool, Error> {
    if d.datatype().map_err(bad)? == Type::Null {
        d.null().map_err(bad)?;
        Ok(true)
    } else {
        Ok(false)
    }
}

fn header(d: &mut Decoder<'_>, tag: u8) -> Result<(), Error> {
    let _ = array(d)?;
    let version = d.u64().map_err(bad)?;
    if version != u64::from(STATE_VERSION) {
        return Err(Error::State("unsupported state version"));
    }
    if d.u8().map_err(bad)? != tag {
        return Err(Error::State("not this kind of state"));
    }
    Ok(())
}

fn finish(buf: SecretBuf, result: EncResult) -> Zeroizing<Vec<u8>> {
    // Encoding into memory cannot fail; see chatify-proto's Frame::encode.
    debug_assert!(result.is_ok());
    buf.into_inner()
}

fn encode_chain(e: &mut W<'_>, chain: &Option<Chain>) -> EncResult {
    match chain {
        Some(c) => {
            e.array(2)?.bytes(c.key.as_bytes())?.u32(c.counter)?;
        }
        None => {
            e.null()?;
        }
    }
    Ok(())
}

fn decode_chain(d: &mut Decoder<'_>) -> Result<Option<Chain>, Error> {
    if is_null(d)? {
        return Ok(None);
    }
    if array(d)? != 2 {
        return Err(Error::State("malformed chain"));
    }
    Ok(Some(Chain {
        key: key(d)?,
        counter: d.u32().map_err(bad)?,
    }))
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
        let mut buf = SecretBuf::with_capacity(session_capacity(r.skipped.order.len()));
        let mut e = Encoder::new(&mut buf);
        let result = (|| -> EncResult {
            e.array(13)?.u8(STATE_VERSION)?.u8(SESSION_TAG)?;
            e.bytes(&self.local.to_bytes())?
                .bytes(&self.remote.to_bytes())?
                .bytes(&self.base_key)?;
            match &self.pending_prekey {
                Some(p) => e.encode(p)?,
                None => e.null()?,
            };
            e.bytes(r.root.as_bytes())?.bytes(r.dhs.as_bytes())?;
            match &r.dhr {
                Some(k) => e.bytes(k)?,
                None => e.null()?,
            };
            encode_chain(&mut e, &sending)?;
            encode_chain(&mut e, &r.receiving)?;
            e.u32(r.previous_sending)?;
            e.array(r.skipped.order.len() as u64)?;
            for id in &r.skipped.order {
                if let Some(mk) = r.skipped.keys.get(id) {
                    e.array(3)?.bytes(&id.0)?.u32(id.1)?.bytes(mk.as_bytes())?;
                }
            }
            Ok(())
        })();
        (finish(buf, result), saved)
    }

    /// Restores a session serialized by [`Session::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Session, Error> {
        let mut d = Decoder::new(bytes);
        header(&mut d, SESSION_TAG)?;
        let local = identity(&fixed::<64>(&mut d)?);
        let remote = identity(&fixed::<64>(&mut d)?);
        let base_key = fixed::<32>(&mut d)?;
        let pending_prekey = if is_null(&mut d)? {
            None
        } else {
            Some(d.decode::<PrekeyHeader>().map_err(bad)?)
        };
        let root = key(&mut d)?;
        let dhs = static_secret(&mut d)?;
        let dhr = if is_null(&mut d)? {
            None
        } else {
            Some(fixed::<32>(&mut d)?)
        };
        let sending = decode_chain(&mut d)?;
        let receiving = decode_chain(&mut d)?;
        let previous_sending = d.u32().map_err(bad)?;
        let mut skipped = SkippedKeys::default();
        for _ in 0..array(&mut d)? {
            if array(&mut d)? != 3 {
                return Err(Error::State("malformed skipped key"));
            }
            let ratchet_key = fixed::<32>(&mut d)?;
            let n = d.u32().map_err(bad)?;
            skipped.insert(ratchet_key, n, key(&mut d)?);
        }
        if d.position() != bytes.len() {
            return Err(Error::State("trailing bytes"));
        }
        Ok(Session {
            local,
            remote,
            base_key,
            pending_prekey,
            ratchet: Ratchet {
                root,
                dhs_public: PublicKey::from(&dhs).to_bytes(),
                dhs,
                dhr,
                sending,
                receiving,
                previous_sending,
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
        let mut buf = SecretBuf::with_capacity(capacity);
        let mut e = Encoder::new(&mut buf);
        let result = (|| -> EncResult {
            e.array(7)?.u8(STATE_VERSION)?.u8(DEVICE_TAG)?;
            let signing = Zeroizing::new(self.identity.signing.to_bytes());
            e.bytes(signing.as_slice())?
                .bytes(self.identity.dh.as_bytes())?
                .u32(self.next_prekey_id)?;
            e.array(self.signed_prekeys.len() as u64)?;
            for s in &self.signed_prekeys {
                e.array(4)?
                    .u32(s.key.id)?
                    .bytes(s.key.secret.as_bytes())?
                    .bytes(&s.signature)?;
                e.array(s.seen_base_keys.order.len() as u64)?;
                for k in &s.seen_base_keys.order {
                    e.bytes(k)?;
                }
            }
            e.array(self.one_time_prekeys.len() as u64)?;
            for k in self.one_time_prekeys.values() {
                e.array(2)?.u32(k.id)?.bytes(k.secret.as_bytes())?;
            }
            Ok(())
        })();
        finish(buf, result)
    }

    /// Restores a device serialized by [`Device::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Device, Error> {
        let mut d = Decoder::new(bytes);
        header(&mut d, DEVICE_TAG)?;
        let signing_bytes = Zeroizing::new(fixed::<32>(&mut d)?);
        let signing = SigningKey::from_bytes(&signing_bytes);
        let dh = static_secret(&mut d)?;
        let next_prekey_id = d.u32().map_err(bad)?;
        let mut signed_prekeys = Vec::new();
        for _ in 0..array(&mut d)?.min(2) {
            if array(&mut d)? != 4 {
                return Err(Error::State("malformed signed prekey"));
            }
            let id = d.u32().map_err(bad)?;
            let key = PrekeySecret::from_secret(id, static_secret(&mut d)?);
            let signature = fixed::<64>(&mut d)?;
            let mut seen_base_keys = SeenBaseKeys::default();
            for _ in 0..array(&mut d)? {
                seen_base_keys.insert(fixed::<32>(&mut d)?);
            }
            signed_prekeys.push(SignedPrekeySecret {
                key,
                signature,
                seen_base_keys,
            });
        }
        let mut one_time_prekeys = BTreeMap::new();
        for _ in 0..array(&mut d)? {
            if array(&mut d)? != 2 {
                return Err(Error::State("malformed one-time prekey"));
            }
            let id = d.u32().map_err(bad)?;
            one_time_prekeys.insert(id, PrekeySecret::from_secret(id, static_secret(&mut d)?));
        }
        if d.position() != bytes.len() {
            return Err(Error::State("trailing bytes"));
        }
        Ok(Device {
            identity: IdentityKeyPair::from_parts(signing, dh),
            signed_prekeys,
            one_time_prekeys,
            next_prekey_id,
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
