//! The Double Ratchet (Perrin and Marlinspike, 2016) over X25519, with the
//! chain and root KDFs of [`crate::kdf`].
//!
//! Two departures from the specification's pseudo-code, neither visible on
//! the wire:
//! - **Transactional receive.** [`Ratchet::receive`] derives every key it
//!   needs into temporaries, lets the caller authenticate the message with the
//!   candidate key, and only then commits. A message that fails leaves the
//!   state exactly as it was.
//! - **Lazy sending step.** After a DH ratchet step on receive, the new
//!   sending key pair and chain are created when the next message is sent,
//!   not at once. The keys derived are the same as the specification's; the
//!   receive path needs no randomness. [`Ratchet::prepare_sending`] takes
//!   the step early, so that a device can save its state with the new
//!   sending chain before it needs it.
//! - **Reserved sends.** A saved state holds its sending chain
//!   [`Ratchet::reserved_until`] messages ahead of the live one (the keys in
//!   between are derived and erased at save time). A device that saved may
//!   send up to that counter without saving again: after a crash the
//!   restored chain starts past every key that may have been used, so no
//!   message key is ever used twice. The peer sees a gap, which it bridges
//!   as skipped messages (at most [`MAX_RESERVED_SENDS`]).

use std::collections::{HashMap, VecDeque};

use chatify_proto::MessageHeader;
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::Error;
use crate::kdf;
use crate::secret::Key32;

/// Most message keys skipped within one receiving chain for one message.
pub const MAX_SKIP: u32 = 1000;

/// Most skipped message keys a session holds; the oldest are erased first.
pub const MAX_SKIPPED_TOTAL: usize = 2000;

/// Most sends one save may cover (see [`Ratchet::reserve_sends`]); well
/// under [`MAX_SKIP`], so that the gap a restored sender leaves is always
/// bridged by its peer.
pub const MAX_RESERVED_SENDS: u32 = 64;

/// A DH whose output is rejected when all zero (a low-order public key).
pub(crate) fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, Error> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(Error::NonContributory);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

pub(crate) struct Chain {
    pub(crate) key: Key32,
    pub(crate) counter: u32,
}

/// The result of walking a chain forward to a message: the chain after it,
/// the keys of the messages skipped on the way, and the message's own key.
struct Advanced {
    chain: Chain,
    skipped: Vec<(u32, Key32)>,
    key: Key32,
}

impl Chain {
    /// Keys of messages `counter..target` (skipped) and of `target`, and the
    /// chain after `target`. Does not modify `self`.
    fn advance(&self, target: u32) -> Result<Advanced, Error> {
        let after = target.checked_add(1).ok_or(Error::TooManySkipped {
            needed: u64::from(target),
            limit: MAX_SKIP,
        })?;
        let mut skipped = Vec::with_capacity(target.saturating_sub(self.counter) as usize);
        let mut key = self.key.clone();
        for n in self.counter..target {
            let (mk, next) = kdf::chain_step(&key);
            skipped.push((n, mk));
            key = next;
        }
        let (mk, next) = kdf::chain_step(&key);
        Ok(Advanced {
            chain: Chain {
                key: next,
                counter: after,
            },
            skipped,
            key: mk,
        })
    }
}

/// `chain` walked forward to `target` (itself when already there or past).
pub(crate) fn advance_to(chain: &Chain, target: u32) -> Chain {
    let mut key = chain.key.clone();
    for _ in chain.counter..target {
        key = kdf::chain_step(&key).1;
    }
    Chain {
        key,
        counter: target.max(chain.counter),
    }
}

fn check_skip(from: u32, to: u32) -> Result<(), Error> {
    let needed = u64::from(to).saturating_sub(u64::from(from));
    if needed > u64::from(MAX_SKIP) {
        return Err(Error::TooManySkipped {
            needed,
            limit: MAX_SKIP,
        });
    }
    Ok(())
}

/// Message keys of messages not yet received, by (ratchet key, counter).
#[derive(Default)]
pub(crate) struct SkippedKeys {
    pub(crate) keys: HashMap<([u8; 32], u32), Key32>,
    pub(crate) order: VecDeque<([u8; 32], u32)>,
}

impl SkippedKeys {
    pub(crate) fn insert(&mut self, ratchet_key: [u8; 32], n: u32, mk: Key32) {
        if self.keys.insert((ratchet_key, n), mk).is_none() {
            self.order.push_back((ratchet_key, n));
        }
        while self.keys.len() > MAX_SKIPPED_TOTAL {
            match self.order.pop_front() {
                Some(old) => {
                    self.keys.remove(&old);
                }
                None => break,
            }
        }
    }

    fn extend(&mut self, ratchet_key: [u8; 32], keys: Vec<(u32, Key32)>) {
        for (n, mk) in keys {
            self.insert(ratchet_key, n, mk);
        }
    }

    fn take(&mut self, id: &([u8; 32], u32)) {
        if self.keys.remove(id).is_some() {
            self.order.retain(|k| k != id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

pub(crate) struct Ratchet {
    pub(crate) root: Key32,
    pub(crate) dhs: StaticSecret,
    pub(crate) dhs_public: [u8; 32],
    pub(crate) dhr: Option<[u8; 32]>,
    /// `None` after a receiving step until the next message is sent.
    pub(crate) sending: Option<Chain>,
    pub(crate) receiving: Option<Chain>,
    /// Length of the previous sending chain (the header's `previous_chain_length`).
    pub(crate) previous_sending: u32,
    pub(crate) skipped: SkippedKeys,
    /// Memory only: the counter of the current sending chain at which the
    /// last save left it (0 when nothing is reserved).
    pub(crate) reserved_until: u32,
    /// Memory only: the current sending chain derived ahead to the counter
    /// of the next save, so that saves in a row do not derive it again.
    pub(crate) reserved: Option<Chain>,
    /// Memory only: the sending chain was created in this lifetime (not
    /// restored). A chain is created in exactly one lifetime, so a save
    /// that reserves on it without a send does so once per chain.
    pub(crate) created_here: bool,
}

impl Ratchet {
    /// The initiator's first state: a fresh ratchet key against the
    /// responder's signed prekey.
    pub(crate) fn initiator<R: CryptoRng + ?Sized>(
        shared: Key32,
        remote_signed_prekey: [u8; 32],
        rng: &mut R,
    ) -> Result<Self, Error> {
        let dhs = StaticSecret::random_from_rng(rng);
        let (root, ck) = kdf::root_step(&shared, &*dh(&dhs, &remote_signed_prekey)?);
        Ok(Ratchet {
            root,
            dhs_public: PublicKey::from(&dhs).to_bytes(),
            dhs,
            dhr: Some(remote_signed_prekey),
            sending: Some(Chain {
                key: ck,
                counter: 0,
            }),
            receiving: None,
            previous_sending: 0,
            skipped: SkippedKeys::default(),
            reserved_until: 0,
            reserved: None,
            created_here: true,
        })
    }

    /// The responder's first state: its signed prekey is its first ratchet key.
    pub(crate) fn responder(shared: Key32, signed_prekey: StaticSecret) -> Self {
        Ratchet {
            root: shared,
            dhs_public: PublicKey::from(&signed_prekey).to_bytes(),
            dhs: signed_prekey,
            dhr: None,
            sending: None,
            receiving: None,
            previous_sending: 0,
            skipped: SkippedKeys::default(),
            reserved_until: 0,
            reserved: None,
            created_here: false,
        }
    }

    /// Creates the sending chain now if a receiving step left none (the
    /// lazy step taken early). A no-op when a sending chain exists or the
    /// peer's ratchet key is not known yet.
    pub(crate) fn prepare_sending<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<(), Error> {
        if self.sending.is_some() {
            return Ok(());
        }
        let Some(dhr) = self.dhr else {
            return Ok(());
        };
        let dhs = StaticSecret::random_from_rng(rng);
        let (root, ck) = kdf::root_step(&self.root, &*dh(&dhs, &dhr)?);
        self.root = root;
        self.dhs_public = PublicKey::from(&dhs).to_bytes();
        self.dhs = dhs;
        self.sending = Some(Chain {
            key: ck,
            counter: 0,
        });
        self.reserved_until = 0;
        self.reserved = None;
        self.created_here = true;
        Ok(())
    }

    /// Extends the reservation for the save about to be written so that at
    /// least `n / 2` more sends (at most [`MAX_RESERVED_SENDS`]) lie before
    /// it; when it does not, derives the chain `n` messages ahead, starting
    /// from the previous reservation. A save in a row with few sends between
    /// derives nothing.
    pub(crate) fn reserve(&mut self, n: u32) {
        let Some(live) = &self.sending else {
            return;
        };
        let n = n.min(MAX_RESERVED_SENDS);
        let ahead = self.reserved.as_ref().filter(|r| r.counter >= live.counter);
        if ahead.is_some_and(|r| r.counter >= live.counter.saturating_add(n / 2)) {
            return;
        }
        let target = live.counter.saturating_add(n);
        self.reserved = Some(advance_to(ahead.unwrap_or(live), target));
    }

    /// The sending chain a save that reserves nothing writes: where the
    /// last confirmed save left it, if that is ahead of the live chain.
    pub(crate) fn saved_chain(&self) -> Option<Chain> {
        let live = self.sending.as_ref()?;
        let target = live.counter.max(self.reserved_until);
        let from = self
            .reserved
            .as_ref()
            .filter(|r| r.counter >= live.counter && r.counter <= target)
            .unwrap_or(live);
        Some(advance_to(from, target))
    }

    /// The sending chain a reserving save writes ([`Ratchet::reserve`] has
    /// run): the reservation, never behind an earlier confirmed save.
    pub(crate) fn reserved_chain(&self) -> Option<Chain> {
        let live = self.sending.as_ref()?;
        match &self.reserved {
            Some(r) if r.counter >= live.counter.max(self.reserved_until) => {
                Some(advance_to(r, r.counter))
            }
            _ => self.saved_chain(),
        }
    }

    /// A save holding the sending chain at `counter` is durable.
    pub(crate) fn confirm_reserved(&mut self, counter: u32) {
        if self.sending.is_some() {
            self.reserved_until = self.reserved_until.max(counter);
        }
    }

    /// Forgets every reservation (a save failed: the next send saves first).
    pub(crate) fn forget_reserved(&mut self) {
        self.reserved_until = 0;
        self.reserved = None;
    }

    /// Whether the next message's key lies before what the last durable
    /// save reserved, so it can be sent without saving first.
    pub(crate) fn next_send_reserved(&self) -> bool {
        self.sending
            .as_ref()
            .is_some_and(|c| c.counter < self.reserved_until)
    }

    /// The header and message key of the next message to send.
    pub(crate) fn next_sending<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<(MessageHeader, Key32), Error> {
        if self.sending.is_none() {
            if self.dhr.is_none() {
                return Err(Error::State("no peer ratchet key yet"));
            }
            self.prepare_sending(rng)?;
        }
        let chain = self
            .sending
            .as_mut()
            .ok_or(Error::State("no sending chain"))?;
        let counter = chain.counter;
        chain.counter = counter
            .checked_add(1)
            .ok_or(Error::State("sending chain exhausted"))?;
        let (mk, next) = kdf::chain_step(&chain.key);
        chain.key = next;
        Ok((
            MessageHeader {
                ratchet_key: self.dhs_public,
                previous_chain_length: self.previous_sending,
                counter,
            },
            mk,
        ))
    }

    /// Finds the key for `header`, calls `open` with it, and commits the new
    /// state only when `open` succeeds.
    pub(crate) fn receive<T>(
        &mut self,
        header: &MessageHeader,
        open: impl FnOnce(&Key32) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let id = (header.ratchet_key, header.counter);
        if let Some(mk) = self.skipped.keys.get(&id) {
            let out = open(mk)?;
            self.skipped.take(&id);
            return Ok(out);
        }

        if self.dhr == Some(header.ratchet_key) {
            let chain = self.receiving.as_ref().ok_or(Error::Decrypt)?;
            if header.counter < chain.counter {
                return Err(Error::Duplicate);
            }
            check_skip(chain.counter, header.counter)?;
            let step = chain.advance(header.counter)?;
            let out = open(&step.key)?;
            self.receiving = Some(step.chain);
            self.skipped.extend(header.ratchet_key, step.skipped);
            return Ok(out);
        }

        // A new ratchet key: finish the current receiving chain up to the
        // peer's previous chain length, then step the root.
        let old = match (&self.receiving, self.dhr) {
            (Some(chain), Some(dhr)) if header.previous_chain_length > chain.counter => {
                check_skip(chain.counter, header.previous_chain_length)?;
                let mut rest = chain.advance(header.previous_chain_length - 1)?;
                rest.skipped
                    .push((header.previous_chain_length - 1, rest.key));
                Some((dhr, rest.skipped))
            }
            _ => None,
        };
        check_skip(0, header.counter)?;
        let (root, ck) = kdf::root_step(&self.root, &*dh(&self.dhs, &header.ratchet_key)?);
        let step = Chain {
            key: ck,
            counter: 0,
        }
        .advance(header.counter)?;
        let out = open(&step.key)?;

        if let Some((dhr, keys)) = old {
            self.skipped.extend(dhr, keys);
        }
        self.skipped.extend(header.ratchet_key, step.skipped);
        self.root = root;
        self.dhr = Some(header.ratchet_key);
        self.receiving = Some(step.chain);
        if let Some(sending) = self.sending.take() {
            self.previous_sending = sending.counter;
        }
        self.reserved_until = 0;
        self.reserved = None;
        Ok(out)
    }
}
