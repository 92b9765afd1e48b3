//! Device identities and prekeys: the private half a device keeps and the
//! public half it publishes.

use core::fmt;
use std::collections::{BTreeMap, HashSet, VecDeque};

use chatify_proto::{DeviceKeys, OneTimePrekey, SignedPrekey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::Error;
use crate::fingerprint::Hex;
use crate::kdf::labels;

/// Most one-time prekeys a device keeps unconsumed.
pub const MAX_ONE_TIME_PREKEYS: usize = chatify_proto::limits::MAX_ONE_TIME_PREKEYS_HELD;

/// Most session-setup base keys remembered per signed prekey (replay defence).
pub const MAX_SEEN_BASE_KEYS: usize = 100_000;

/// A device's public identity: what safety numbers are computed from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicIdentity {
    /// Ed25519 public key.
    pub signing_key: [u8; 32],
    /// X25519 identity public key.
    pub identity_key: [u8; 32],
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicIdentity")
            .field("signing_key", &Hex(&self.signing_key))
            .field("identity_key", &Hex(&self.identity_key))
            .finish()
    }
}

impl PublicIdentity {
    /// The 64 bytes `signing_key || identity_key`, as bound into AD and KDF info.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        let (a, b) = out.split_at_mut(32);
        a.copy_from_slice(&self.signing_key);
        b.copy_from_slice(&self.identity_key);
        out
    }
}

/// The long-term identity key pair of a device.
pub(crate) struct IdentityKeyPair {
    pub(crate) signing: SigningKey,
    pub(crate) dh: StaticSecret,
    pub(crate) public: PublicIdentity,
    pub(crate) identity_signature: [u8; 64],
}

impl IdentityKeyPair {
    fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let signing = SigningKey::generate(rng);
        let dh = StaticSecret::random_from_rng(rng);
        Self::from_parts(signing, dh)
    }

    pub(crate) fn from_parts(signing: SigningKey, dh: StaticSecret) -> Self {
        let public = PublicIdentity {
            signing_key: signing.verifying_key().to_bytes(),
            identity_key: PublicKey::from(&dh).to_bytes(),
        };
        let identity_signature = signing
            .sign(&signed_message(
                labels::IDENTITY_KEY,
                None,
                &public.identity_key,
            ))
            .to_bytes();
        IdentityKeyPair {
            signing,
            dh,
            public,
            identity_signature,
        }
    }
}

/// The message an Ed25519 key signs for a bound X25519 key: `label || [id BE] || key`.
pub(crate) fn signed_message(label: &[u8], id: Option<u32>, key: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + 36);
    m.extend_from_slice(label);
    if let Some(id) = id {
        m.extend_from_slice(&id.to_be_bytes());
    }
    m.extend_from_slice(key);
    m
}

/// Verifies an Ed25519 signature strictly (no small-order keys, canonical `S`).
pub(crate) fn verify_signature(
    signing_key: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), Error> {
    let key = VerifyingKey::from_bytes(signing_key)
        .map_err(|_| Error::InvalidBundle("signing key is not a valid Ed25519 point"))?;
    key.verify_strict(message, &Signature::from_bytes(signature))
        .map_err(|_| Error::InvalidBundle("bad signature"))
}

pub(crate) struct PrekeySecret {
    pub(crate) id: u32,
    pub(crate) secret: StaticSecret,
    pub(crate) public: [u8; 32],
}

impl PrekeySecret {
    fn generate<R: CryptoRng + ?Sized>(id: u32, rng: &mut R) -> Self {
        let secret = StaticSecret::random_from_rng(rng);
        Self::from_secret(id, secret)
    }

    pub(crate) fn from_secret(id: u32, secret: StaticSecret) -> Self {
        let public = PublicKey::from(&secret).to_bytes();
        PrekeySecret { id, secret, public }
    }
}

/// A signed prekey with the base keys of the sessions already set up with it.
pub(crate) struct SignedPrekeySecret {
    pub(crate) key: PrekeySecret,
    pub(crate) signature: [u8; 64],
    pub(crate) seen_base_keys: SeenBaseKeys,
}

/// A bounded set of base keys, oldest evicted first.
#[derive(Default)]
pub(crate) struct SeenBaseKeys {
    pub(crate) set: HashSet<[u8; 32]>,
    pub(crate) order: VecDeque<[u8; 32]>,
}

impl SeenBaseKeys {
    pub(crate) fn contains(&self, key: &[u8; 32]) -> bool {
        self.set.contains(key)
    }

    pub(crate) fn insert(&mut self, key: [u8; 32]) {
        if self.set.insert(key) {
            self.order.push_back(key);
            while self.order.len() > MAX_SEEN_BASE_KEYS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// A device: its identity, its signed prekeys (current and the one before),
/// and the private halves of its unconsumed one-time prekeys.
///
/// ```
/// use chatify_core::Device;
/// use rand_chacha::rand_core::SeedableRng;
/// let mut rng = rand_chacha::ChaCha20Rng::from_seed([1; 32]);
/// let mut device = Device::generate(&mut rng);
/// let publish = device.publish_keys(10, &mut rng);
/// assert_eq!(publish.one_time_prekeys.len(), 10);
/// ```
pub struct Device {
    pub(crate) identity: IdentityKeyPair,
    /// Oldest first; the last is current. At most two are kept.
    pub(crate) signed_prekeys: Vec<SignedPrekeySecret>,
    pub(crate) one_time_prekeys: BTreeMap<u32, PrekeySecret>,
    pub(crate) next_prekey_id: u32,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("identity", &self.identity.public)
            .field(
                "signed_prekeys",
                &self
                    .signed_prekeys
                    .iter()
                    .map(|s| (s.key.id, Hex(&s.key.public)))
                    .collect::<Vec<_>>(),
            )
            .field("one_time_prekeys", &self.one_time_prekeys.len())
            .field("next_prekey_id", &self.next_prekey_id)
            .finish()
    }
}

impl Device {
    /// A new device with a fresh identity and a first signed prekey.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut device = Device {
            identity: IdentityKeyPair::generate(rng),
            signed_prekeys: Vec::new(),
            one_time_prekeys: BTreeMap::new(),
            next_prekey_id: 1,
        };
        device.rotate_signed_prekey(rng);
        device
    }

    /// A new device of the same user: the identity of `secrets` (from
    /// [`Device::identity_secrets`] on a device of the user, handed over by
    /// linking, docs/PROTOCOL.md §12) with prekeys of its own. (Any 64
    /// bytes make an identity: X25519 clamps its scalar.)
    pub fn with_identity<R: CryptoRng + ?Sized>(secrets: &[u8; 64], rng: &mut R) -> Self {
        let mut signing = Zeroizing::new([0u8; 32]);
        let mut dh = Zeroizing::new([0u8; 32]);
        signing.copy_from_slice(secrets.get(..32).unwrap_or(&[0; 32]));
        dh.copy_from_slice(secrets.get(32..).unwrap_or(&[0; 32]));
        let dh = StaticSecret::from(*dh);
        let mut device = Device {
            identity: IdentityKeyPair::from_parts(SigningKey::from_bytes(&signing), dh),
            signed_prekeys: Vec::new(),
            one_time_prekeys: BTreeMap::new(),
            next_prekey_id: 1,
        };
        device.rotate_signed_prekey(rng);
        device
    }

    /// The identity's private keys (Ed25519 secret, then X25519 secret), to
    /// hand to a new device of the same user ([`Device::with_identity`]).
    /// Wiped when dropped; never print it.
    pub fn identity_secrets(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        let (a, b) = out.split_at_mut(32);
        a.copy_from_slice(self.identity.signing.as_bytes());
        b.copy_from_slice(self.identity.dh.as_bytes());
        out
    }

    /// The identity's signing key (group changes are signed with it).
    pub(crate) fn identity_signing_key(&self) -> &SigningKey {
        &self.identity.signing
    }

    /// The device's public identity.
    pub fn public_identity(&self) -> PublicIdentity {
        self.identity.public
    }

    /// The identity keys as published.
    pub fn device_keys(&self) -> DeviceKeys {
        DeviceKeys {
            signing_key: self.identity.public.signing_key,
            identity_key: self.identity.public.identity_key,
            identity_signature: self.identity.identity_signature,
        }
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_prekey_id;
        self.next_prekey_id = self.next_prekey_id.wrapping_add(1).max(1);
        id
    }

    /// The current signed prekey as published.
    pub fn signed_prekey(&self) -> Option<SignedPrekey> {
        self.signed_prekeys.last().map(|s| SignedPrekey {
            id: s.key.id,
            public_key: s.key.public,
            signature: s.signature,
        })
    }

    /// Replaces the signed prekey. The previous one is kept so that sessions
    /// started from an older bundle still complete; the one before is erased.
    pub fn rotate_signed_prekey<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> SignedPrekey {
        let id = self.next_id();
        let key = PrekeySecret::generate(id, rng);
        let signature = self
            .identity
            .signing
            .sign(&signed_message(
                labels::SIGNED_PREKEY,
                Some(id),
                &key.public,
            ))
            .to_bytes();
        let published = SignedPrekey {
            id,
            public_key: key.public,
            signature,
        };
        self.signed_prekeys.push(SignedPrekeySecret {
            key,
            signature,
            seen_base_keys: SeenBaseKeys::default(),
        });
        while self.signed_prekeys.len() > 2 {
            self.signed_prekeys.remove(0);
        }
        published
    }

    /// Generates `count` one-time prekeys (capped so that at most
    /// [`MAX_ONE_TIME_PREKEYS`] are held) and returns their public halves.
    pub fn generate_one_time_prekeys<R: CryptoRng + ?Sized>(
        &mut self,
        count: usize,
        rng: &mut R,
    ) -> Vec<OneTimePrekey> {
        let room = MAX_ONE_TIME_PREKEYS.saturating_sub(self.one_time_prekeys.len());
        (0..count.min(room))
            .map(|_| {
                let id = self.next_id();
                let key = PrekeySecret::generate(id, rng);
                let public = OneTimePrekey {
                    id,
                    public_key: key.public,
                };
                self.one_time_prekeys.insert(id, key);
                public
            })
            .collect()
    }

    /// How many one-time prekeys this device holds unconsumed.
    pub fn one_time_prekey_count(&self) -> usize {
        self.one_time_prekeys.len()
    }

    /// Everything a `PublishKeys` frame carries: identity, current signed
    /// prekey and `count` new one-time prekeys.
    pub fn publish_keys<R: CryptoRng + ?Sized>(
        &mut self,
        count: usize,
        rng: &mut R,
    ) -> chatify_proto::frame::PublishKeys {
        let one_time_prekeys = self.generate_one_time_prekeys(count, rng);
        let signed_prekey = match self.signed_prekey() {
            Some(spk) => spk,
            None => self.rotate_signed_prekey(rng),
        };
        chatify_proto::frame::PublishKeys {
            identity: self.device_keys(),
            signed_prekey,
            one_time_prekeys,
        }
    }

    pub(crate) fn find_signed_prekey(&self, id: u32) -> Option<&SignedPrekeySecret> {
        self.signed_prekeys.iter().find(|s| s.key.id == id)
    }
}
