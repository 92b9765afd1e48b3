//! Group messages with sender keys (docs/PROTOCOL.md §16): each member
//! device encrypts a group message once, under its own symmetric chain,
//! and signs it; the other members hold the chain and the public signing
//! key, which the sender gave them over the pairwise sessions (§5–§7).
//!
//! ```text
//!  sender:   chain₀ ─HMAC 02─▶ chain₁ ─▶ chain₂ …      signing key (Ed25519, secret)
//!              │HMAC 01          │
//!              ▼                 ▼
//!            mk₀               mk₁ ─HKDF─▶ AES-256-GCM key, nonce
//!  message:  01 ‖ group ‖ key id ‖ iteration ‖ AES-GCM(pad(text)) ‖ Ed25519 signature
//!  members:  chainₙ + public signing key, from the sender's distribution
//! ```
//!
//! Holding a member's chain lets a device read that member's messages, not
//! write them: every message is signed with a key only the sender holds,
//! and checked before anything else. A chain moves forward only: a message
//! key is derived once and then deleted, so a member who receives a chain
//! at iteration *n* reads nothing sent before *n*. When a member leaves,
//! every remaining member starts a new chain (a new key id) and gives it
//! only to the remaining members: the one who left reads nothing after.
//!
//! ```
//! use chatify_core::group::{ReceiverKey, SenderKey};
//! use rand_chacha::ChaCha20Rng;
//! use rand_chacha::rand_core::SeedableRng;
//!
//! let mut rng = ChaCha20Rng::from_seed([3; 32]);
//! let mut alice = SenderKey::generate([9; 16], 1, &mut rng);
//! // Sent to each member over its pairwise session:
//! let distribution = alice.distribution().to_bytes();
//! let mut at_bob = ReceiverKey::from_distribution_bytes(&distribution).unwrap();
//! let message = alice.encrypt(b"hello, group").unwrap();
//! assert_eq!(&at_bob.decrypt(&message).unwrap()[..], b"hello, group");
//! assert!(at_bob.decrypt(&message).is_err(), "a replay");
//! ```

pub mod roster;

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use zeroize::Zeroizing;

use crate::secret::Key32;
use crate::{Error, aead, kdf};

/// The version byte that opens every group message.
pub const GROUP_MESSAGE_VERSION: u8 = 1;
/// Bytes before the ciphertext: version, group id, key id, iteration.
pub const GROUP_HEADER_LEN: usize = 1 + 16 + 4 + 4;
/// Bytes of an Ed25519 signature, at the end of every group message.
pub const GROUP_SIGNATURE_LEN: usize = 64;
/// Iterations a receiver skips at most for one message.
pub const MAX_GROUP_SKIP: u32 = 2000;
/// Skipped message keys a receiver keeps at most (the oldest go first).
pub const MAX_GROUP_SKIPPED: usize = 2000;
/// Bytes of an encoded [`SenderKeyDistribution`].
pub const DISTRIBUTION_LEN: usize = 1 + 16 + 4 + 4 + 32 + 32;

const SIGNATURE_CONTEXT: &[u8] = b"chatify/v1/group-message";
const AD_CONTEXT: &[u8] = b"chatify/v1/group-ad";

/// A group's id: 16 random bytes chosen by its creator.
pub type GroupId = [u8; 16];

/// This device's sending chain in one group: the chain key, its
/// iteration and the signing key. Wiped when dropped; `Debug` shows no
/// key.
pub struct SenderKey {
    group: GroupId,
    key_id: u32,
    iteration: u32,
    chain: Key32,
    signing: SigningKey,
}

impl std::fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKey")
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

/// What a sender gives each member (over their pairwise session) so that
/// the member can read its group messages from `iteration` on.
#[derive(Clone, PartialEq, Eq)]
pub struct SenderKeyDistribution {
    /// The group.
    pub group: GroupId,
    /// The chain's id (a new one on every rotation).
    pub key_id: u32,
    /// The iteration the chain key is at.
    pub iteration: u32,
    /// The chain key at `iteration` (secret).
    pub chain_key: Zeroizing<[u8; 32]>,
    /// The sender's public signing key for this chain.
    pub signing_key: [u8; 32],
}

impl std::fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

impl SenderKeyDistribution {
    /// `01 ‖ group ‖ key id (u32 BE) ‖ iteration (u32 BE) ‖ chain key ‖
    /// signing key`: [`DISTRIBUTION_LEN`] bytes.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(DISTRIBUTION_LEN));
        out.push(GROUP_MESSAGE_VERSION);
        out.extend_from_slice(&self.group);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(self.chain_key.as_ref());
        out.extend_from_slice(&self.signing_key);
        out
    }

    /// Parses [`SenderKeyDistribution::to_bytes`]'s encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        const BAD: Error = Error::State("malformed sender key distribution");
        if bytes.len() != DISTRIBUTION_LEN || bytes.first() != Some(&GROUP_MESSAGE_VERSION) {
            return Err(BAD);
        }
        let field = |at: usize, len: usize| bytes.get(at..at + len).ok_or(BAD);
        let group: GroupId = field(1, 16)?.try_into().map_err(|_| BAD)?;
        let key_id = u32::from_be_bytes(field(17, 4)?.try_into().map_err(|_| BAD)?);
        let iteration = u32::from_be_bytes(field(21, 4)?.try_into().map_err(|_| BAD)?);
        let mut chain_key = Zeroizing::new([0u8; 32]);
        chain_key.copy_from_slice(field(25, 32)?);
        let signing_key: [u8; 32] = field(57, 32)?.try_into().map_err(|_| BAD)?;
        Ok(SenderKeyDistribution {
            group,
            key_id,
            iteration,
            chain_key,
            signing_key,
        })
    }
}

fn header(group: &GroupId, key_id: u32, iteration: u32) -> [u8; GROUP_HEADER_LEN] {
    let mut h = [0u8; GROUP_HEADER_LEN];
    h[0] = GROUP_MESSAGE_VERSION;
    h[1..17].copy_from_slice(group);
    h[17..21].copy_from_slice(&key_id.to_be_bytes());
    h[21..25].copy_from_slice(&iteration.to_be_bytes());
    h
}

fn ad(header: &[u8]) -> Vec<u8> {
    [AD_CONTEXT, header].concat()
}

fn signed(bytes: &[u8]) -> Vec<u8> {
    [SIGNATURE_CONTEXT, bytes].concat()
}

impl SenderKey {
    /// A new chain for `group` with id `key_id`, at iteration 0.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(
        group: GroupId,
        key_id: u32,
        rng: &mut R,
    ) -> SenderKey {
        let mut chain = [0u8; 32];
        rng.fill_bytes(&mut chain);
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        let key = SenderKey {
            group,
            key_id,
            iteration: 0,
            chain: Key32::new(chain),
            signing: SigningKey::from_bytes(&seed),
        };
        chain.fill(0);
        key
    }

    /// A chain from its secrets, at iteration 0 (test vectors, and a
    /// second implementation checking itself against them).
    pub fn from_secrets(
        group: GroupId,
        key_id: u32,
        chain_key: &[u8; 32],
        signing_seed: &[u8; 32],
    ) -> SenderKey {
        SenderKey {
            group,
            key_id,
            iteration: 0,
            chain: Key32::new(*chain_key),
            signing: SigningKey::from_bytes(signing_seed),
        }
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The chain's id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The next message's iteration.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// What a member needs to read this chain from its current iteration.
    pub fn distribution(&self) -> SenderKeyDistribution {
        SenderKeyDistribution {
            group: self.group,
            key_id: self.key_id,
            iteration: self.iteration,
            chain_key: Zeroizing::new(*self.chain.as_bytes()),
            signing_key: self.signing.verifying_key().to_bytes(),
        }
    }

    /// The chain's whole state, to be kept sealed on this device: its
    /// distribution ([`DISTRIBUTION_LEN`] bytes) followed by the 32-byte
    /// signing seed.
    pub fn to_state(&self) -> Zeroizing<Vec<u8>> {
        let mut out = self.distribution().to_bytes();
        out.extend_from_slice(self.signing.as_bytes());
        out
    }

    /// A chain from [`SenderKey::to_state`]'s bytes.
    pub fn from_state(bytes: &[u8]) -> Result<SenderKey, Error> {
        const BAD: Error = Error::State("malformed sender key state");
        let (d, seed) = bytes.split_at_checked(DISTRIBUTION_LEN).ok_or(BAD)?;
        let d = SenderKeyDistribution::from_bytes(d)?;
        let seed: &[u8; 32] = seed.try_into().map_err(|_| BAD)?;
        let signing = SigningKey::from_bytes(seed);
        if signing.verifying_key().to_bytes() != d.signing_key {
            return Err(BAD);
        }
        Ok(SenderKey {
            group: d.group,
            key_id: d.key_id,
            iteration: d.iteration,
            chain: Key32::new(*d.chain_key),
            signing,
        })
    }

    /// Encrypts and signs one group message; the chain moves on.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        if plaintext.len() > chatify_proto::limits::MAX_PLAINTEXT_LEN {
            return Err(Error::PlaintextTooLong(plaintext.len()));
        }
        let next_iteration = self
            .iteration
            .checked_add(1)
            .ok_or(Error::State("sender key exhausted; start a new one"))?;
        let (mk, next) = kdf::chain_step(&self.chain);
        let h = header(&self.group, self.key_id, self.iteration);
        let mut out = h.to_vec();
        out.extend_from_slice(&aead::seal(&mk, &ad(&h), plaintext));
        let signature = self.signing.sign(&signed(&out));
        out.extend_from_slice(&signature.to_bytes());
        self.chain = next;
        self.iteration = next_iteration;
        Ok(out)
    }
}

/// A member's copy of another member's chain: reads that member's group
/// messages from the distribution's iteration on, each once.
#[derive(Clone)]
pub struct ReceiverKey {
    group: GroupId,
    key_id: u32,
    iteration: u32,
    chain: Key32,
    verifying: VerifyingKey,
    skipped: BTreeMap<u32, Key32>,
}

impl std::fmt::Debug for ReceiverKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverKey")
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// A group message's header fields, read before anything is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHeader {
    /// The group.
    pub group: GroupId,
    /// The sender's chain.
    pub key_id: u32,
    /// The message's iteration in that chain.
    pub iteration: u32,
}

impl GroupHeader {
    /// The header of a group message (its first [`GROUP_HEADER_LEN`] bytes).
    pub fn parse(message: &[u8]) -> Result<GroupHeader, Error> {
        if message.len() < GROUP_HEADER_LEN + aead::TAG_LEN + GROUP_SIGNATURE_LEN
            || message.first() != Some(&GROUP_MESSAGE_VERSION)
        {
            return Err(Error::Decrypt);
        }
        let field = |at: usize| -> [u8; 4] {
            let mut b = [0u8; 4];
            b.copy_from_slice(message.get(at..at + 4).unwrap_or(&[0; 4]));
            b
        };
        let mut group = [0u8; 16];
        group.copy_from_slice(message.get(1..17).unwrap_or(&[0; 16]));
        Ok(GroupHeader {
            group,
            key_id: u32::from_be_bytes(field(17)),
            iteration: u32::from_be_bytes(field(21)),
        })
    }
}

impl ReceiverKey {
    /// The chain a distribution gives.
    pub fn from_distribution(d: &SenderKeyDistribution) -> Result<ReceiverKey, Error> {
        let verifying = VerifyingKey::from_bytes(&d.signing_key)
            .map_err(|_| Error::State("sender key distribution with an invalid signing key"))?;
        Ok(ReceiverKey {
            group: d.group,
            key_id: d.key_id,
            iteration: d.iteration,
            chain: Key32::new(*d.chain_key),
            verifying,
            skipped: BTreeMap::new(),
        })
    }

    /// As [`ReceiverKey::from_distribution`], from its encoding.
    pub fn from_distribution_bytes(bytes: &[u8]) -> Result<ReceiverKey, Error> {
        Self::from_distribution(&SenderKeyDistribution::from_bytes(bytes)?)
    }

    /// The chain's id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The chain's state, to be kept sealed on this device: the
    /// distribution at the current iteration, then the number of skipped
    /// message keys (u32 BE) and each as its iteration (u32 BE) and key.
    pub fn to_state(&self) -> Zeroizing<Vec<u8>> {
        let d = SenderKeyDistribution {
            group: self.group,
            key_id: self.key_id,
            iteration: self.iteration,
            chain_key: Zeroizing::new(*self.chain.as_bytes()),
            signing_key: self.verifying.to_bytes(),
        };
        let mut out = d.to_bytes();
        out.reserve(4 + self.skipped.len() * 36);
        out.extend_from_slice(&(self.skipped.len() as u32).to_be_bytes());
        for (i, key) in &self.skipped {
            out.extend_from_slice(&i.to_be_bytes());
            out.extend_from_slice(key.as_bytes());
        }
        out
    }

    /// A chain from [`ReceiverKey::to_state`]'s bytes.
    pub fn from_state(bytes: &[u8]) -> Result<ReceiverKey, Error> {
        const BAD: Error = Error::State("malformed receiver key state");
        let (d, rest) = bytes.split_at_checked(DISTRIBUTION_LEN).ok_or(BAD)?;
        let mut key = Self::from_distribution_bytes(d)?;
        let (count, mut rest) = rest.split_first_chunk::<4>().ok_or(BAD)?;
        let count = u32::from_be_bytes(*count) as usize;
        if count > MAX_GROUP_SKIPPED || rest.len() != count * 36 {
            return Err(BAD);
        }
        while let Some((i, tail)) = rest.split_first_chunk::<4>() {
            let (k, tail) = tail.split_at_checked(32).ok_or(BAD)?;
            let i = u32::from_be_bytes(*i);
            if i >= key.iteration {
                return Err(BAD);
            }
            key.skipped.insert(i, Key32::from_slice(k).ok_or(BAD)?);
            rest = tail;
        }
        Ok(key)
    }

    /// The sender's public signing key.
    pub fn signing_key(&self) -> [u8; 32] {
        self.verifying.to_bytes()
    }

    /// Checks the signature, then opens the message; each iteration opens
    /// once. State changes only when the message opens.
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let h = GroupHeader::parse(message)?;
        if h.group != self.group || h.key_id != self.key_id {
            return Err(Error::Decrypt);
        }
        let (body, signature) = message.split_at(message.len() - GROUP_SIGNATURE_LEN);
        let signature = Signature::from_slice(signature).map_err(|_| Error::Decrypt)?;
        self.verifying
            .verify(&signed(body), &signature)
            .map_err(|_| Error::Decrypt)?;
        let (head, sealed) = body.split_at(GROUP_HEADER_LEN);
        if h.iteration < self.iteration {
            let mk = self.skipped.get(&h.iteration).ok_or(Error::Duplicate)?;
            let plaintext = aead::open(mk, &ad(head), sealed)?;
            self.skipped.remove(&h.iteration);
            return Ok(plaintext);
        }
        let ahead = h.iteration - self.iteration;
        if ahead > MAX_GROUP_SKIP {
            return Err(Error::TooManySkipped {
                needed: u64::from(ahead),
                limit: MAX_GROUP_SKIP,
            });
        }
        // Staged: the chain and the skipped keys change only on success.
        let mut chain = self.chain.clone();
        let mut skipped = Vec::with_capacity(ahead as usize);
        for i in self.iteration..h.iteration {
            let (mk, next) = kdf::chain_step(&chain);
            skipped.push((i, mk));
            chain = next;
        }
        let (mk, next) = kdf::chain_step(&chain);
        let plaintext = aead::open(&mk, &ad(head), sealed)?;
        self.skipped.extend(skipped);
        while self.skipped.len() > MAX_GROUP_SKIPPED {
            self.skipped.pop_first();
        }
        self.chain = next;
        self.iteration = h.iteration + 1;
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    fn pair() -> (SenderKey, ReceiverKey) {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let sender = SenderKey::generate([1; 16], 7, &mut rng);
        let receiver = ReceiverKey::from_distribution(&sender.distribution()).unwrap();
        (sender, receiver)
    }

    #[test]
    fn messages_open_once_in_any_order_within_the_window() {
        let (mut s, mut r) = pair();
        let m: Vec<Vec<u8>> = (0..5)
            .map(|i| s.encrypt(format!("m{i}").as_bytes()).unwrap())
            .collect();
        for i in [3, 0, 4, 1, 2] {
            assert_eq!(&r.decrypt(&m[i]).unwrap()[..], format!("m{i}").as_bytes());
        }
        for msg in &m {
            assert_eq!(r.decrypt(msg).unwrap_err(), Error::Duplicate);
        }
    }

    /// A member holding the chain can read but not write: a message it
    /// makes with the chain key and its own signing key is refused, as is
    /// any altered byte, and a refused message changes nothing.
    #[test]
    fn forged_altered_and_misrouted_messages_are_refused() {
        let (mut s, mut r) = pair();
        let mut forger = SenderKey {
            signing: SigningKey::from_bytes(&[9; 32]),
            ..SenderKey::generate([1; 16], 7, &mut ChaCha20Rng::from_seed([1; 32]))
        };
        forger.chain = Key32::new(*s.distribution().chain_key);
        let forged = forger.encrypt(b"I am alice").unwrap();
        assert_eq!(r.decrypt(&forged).unwrap_err(), Error::Decrypt);
        let good = s.encrypt(b"hello").unwrap();
        for at in [0, 5, 18, 23, GROUP_HEADER_LEN + 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            assert!(r.decrypt(&bad).is_err(), "byte {at}");
        }
        assert!(r.decrypt(&good[..good.len() - 1]).is_err());
        assert_eq!(&r.decrypt(&good).unwrap()[..], b"hello");
    }

    /// Both halves survive a restart: the sender goes on where it was, and
    /// the receiver keeps its skipped keys and still opens each message once.
    #[test]
    fn states_round_trip_and_malformed_states_are_refused() {
        let (mut s, mut r) = pair();
        let m: Vec<Vec<u8>> = (0..4).map(|i| s.encrypt(&[i]).unwrap()).collect();
        assert_eq!(&r.decrypt(&m[3]).unwrap()[..], &[3]);
        let mut s2 = SenderKey::from_state(&s.to_state()).unwrap();
        let mut r2 = ReceiverKey::from_state(&r.to_state()).unwrap();
        assert_eq!(r2.skipped.len(), 3);
        assert_eq!(&r2.decrypt(&m[1]).unwrap()[..], &[1]);
        assert_eq!(r2.decrypt(&m[3]).unwrap_err(), Error::Duplicate);
        let next = s2.encrypt(b"after").unwrap();
        assert_eq!(&r2.decrypt(&next).unwrap()[..], b"after");
        assert!(
            r.decrypt(&s.encrypt(b"x").unwrap()).is_ok(),
            "the old copy is unchanged"
        );
        let state = s.to_state();
        let mut other_seed = state.to_vec();
        other_seed[DISTRIBUTION_LEN] ^= 1;
        assert!(
            SenderKey::from_state(&other_seed).is_err(),
            "seed not the key's"
        );
        assert!(SenderKey::from_state(&state[..state.len() - 1]).is_err());
        let rs = r.to_state();
        assert!(ReceiverKey::from_state(&rs[..rs.len() - 1]).is_err());
        let mut future = rs.to_vec();
        future[DISTRIBUTION_LEN + 4..DISTRIBUTION_LEN + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            ReceiverKey::from_state(&future).is_err(),
            "a skipped key ahead of the chain"
        );
    }

    #[test]
    fn a_late_joiner_reads_nothing_before_and_skips_are_bounded() {
        let (mut s, _) = pair();
        let early = s.encrypt(b"before you joined").unwrap();
        let mut late = ReceiverKey::from_distribution(&s.distribution()).unwrap();
        assert_eq!(late.decrypt(&early).unwrap_err(), Error::Duplicate);
        for _ in 0..MAX_GROUP_SKIP + 1 {
            s.iteration += 1;
            s.chain = kdf::chain_step(&s.chain).1;
        }
        let far = s.encrypt(b"far").unwrap();
        assert!(matches!(
            late.decrypt(&far),
            Err(Error::TooManySkipped { .. })
        ));
        let d = s.distribution();
        assert_eq!(SenderKeyDistribution::from_bytes(&d.to_bytes()).unwrap(), d);
        assert!(!format!("{d:?}").contains("chain_key") && !format!("{s:?}").contains("chain"));
    }
}
