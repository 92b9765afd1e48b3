//! Sessions: X3DH-style setup and the encrypt/decrypt API over the ratchet.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use chatify_proto::limits::MAX_PLAINTEXT_LEN;
use chatify_proto::{ConversationId, Envelope, PrekeyHeader};
use ed25519_dalek::VerifyingKey;
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::bundle::VerifiedBundle;
use crate::fingerprint::{Hex, SafetyNumber};
use crate::identity::{Device, PublicIdentity};
use crate::kdf::{self, labels};
use crate::ratchet::{Ratchet, dh};
use crate::{Error, aead};

/// An end-to-end-encrypted session between this device and one peer device.
///
/// Created by [`Session::initiate`] from a [`VerifiedBundle`], or by
/// [`Device::accept`] from the peer's first message.
pub struct Session {
    pub(crate) local: PublicIdentity,
    pub(crate) remote: PublicIdentity,
    /// The initiator's X3DH base key: identifies the session on both sides.
    pub(crate) base_key: [u8; 32],
    /// The initiator attaches this to every message until the peer answers.
    pub(crate) pending_prekey: Option<PrekeyHeader>,
    pub(crate) ratchet: Ratchet,
    /// Set once the session has been serialized (or was restored): from
    /// then on a restore could bring back a used key, so every message key
    /// must be covered by a confirmed save before it is used (§13.1). A
    /// session that was never serialized cannot be restored and needs none.
    pub(crate) persisted: AtomicBool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("base_key", &Hex(&self.base_key))
            .field("awaiting_reply", &self.pending_prekey.is_some())
            .field("ratchet_key", &Hex(&self.ratchet.dhs_public))
            .field(
                "peer_ratchet_key",
                &self.ratchet.dhr.as_ref().map(|k| Hex(k)),
            )
            .field(
                "sent_in_chain",
                &self.ratchet.sending.as_ref().map(|c| c.counter),
            )
            .field(
                "received_in_chain",
                &self.ratchet.receiving.as_ref().map(|c| c.counter),
            )
            .field("skipped_keys", &self.ratchet.skipped.len())
            .finish()
    }
}

/// HKDF info of the setup secret: the label and both identities, initiator first.
fn x3dh_info(initiator: &PublicIdentity, responder: &PublicIdentity) -> Vec<u8> {
    let mut info = Vec::with_capacity(labels::X3DH.len() + 128);
    info.extend_from_slice(labels::X3DH);
    info.extend_from_slice(&initiator.to_bytes());
    info.extend_from_slice(&responder.to_bytes());
    info
}

/// AEAD associated data: label || sender || recipient || envelope header part.
fn associated_data(sender: &PublicIdentity, recipient: &PublicIdentity, env: &Envelope) -> Vec<u8> {
    let header = env.associated_data();
    let mut ad = Vec::with_capacity(labels::AD.len() + 128 + header.len());
    ad.extend_from_slice(labels::AD);
    ad.extend_from_slice(&sender.to_bytes());
    ad.extend_from_slice(&recipient.to_bytes());
    ad.extend_from_slice(&header);
    ad
}

impl Session {
    /// Starts a session with the owner of a verified bundle (the initiator's
    /// side of the setup).
    pub fn initiate<R: CryptoRng + ?Sized>(
        device: &Device,
        bundle: VerifiedBundle,
        rng: &mut R,
    ) -> Result<Session, Error> {
        let (spk_id, spk) = bundle.signed_prekey;
        let base = StaticSecret::random_from_rng(rng);
        let base_key = PublicKey::from(&base).to_bytes();
        let dh1 = dh(&device.identity.dh, &spk)?;
        let dh2 = dh(&base, &bundle.identity.identity_key)?;
        let dh3 = dh(&base, &spk)?;
        let dh4 = match &bundle.one_time_prekey {
            Some((_, otk)) => Some(dh(&base, otk)?),
            None => None,
        };
        let local = device.public_identity();
        let info = x3dh_info(&local, &bundle.identity);
        let shared = match &dh4 {
            Some(dh4) => kdf::x3dh_secret(&[&dh1, &dh2, &dh3, dh4], &info),
            None => kdf::x3dh_secret(&[&dh1, &dh2, &dh3], &info),
        };
        let ratchet = Ratchet::initiator(shared, spk, rng)?;
        Ok(Session {
            local,
            remote: bundle.identity,
            base_key,
            pending_prekey: Some(PrekeyHeader {
                signing_key: local.signing_key,
                identity_key: local.identity_key,
                base_key,
                signed_prekey_id: spk_id,
                one_time_prekey_id: bundle.one_time_prekey.map(|(id, _)| id),
            }),
            ratchet,
            persisted: AtomicBool::new(false),
        })
    }

    /// Encrypts one message of `conversation`.
    ///
    /// **Save before send, enforced.** Once the session has been serialized
    /// (or was restored from bytes), this refuses with [`Error::NotSaved`]
    /// unless a confirmed save ([`Session::to_bytes_reserving`], then
    /// [`Session::confirm_saved`]) covers the next message key: no envelope
    /// can exist whose key a crash and restore could use again. A session
    /// that was never serialized cannot be restored, so it needs no save.
    pub fn encrypt<R: CryptoRng + ?Sized>(
        &mut self,
        conversation: ConversationId,
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<Envelope, Error> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(Error::PlaintextTooLong(plaintext.len()));
        }
        if self.persisted.load(Ordering::Relaxed) && !self.ratchet.next_send_reserved() {
            return Err(Error::NotSaved);
        }
        let (header, mk) = self.ratchet.next_sending(rng)?;
        let mut envelope = Envelope {
            conversation,
            prekey: self.pending_prekey,
            header,
            ciphertext: Vec::new(),
        };
        let ad = associated_data(&self.local, &self.remote, &envelope);
        envelope.ciphertext = aead::seal(&mk, &ad, plaintext);
        Ok(envelope)
    }

    /// Decrypts an envelope from the peer. On any error the session is
    /// unchanged, so the next honest message still decrypts.
    pub fn decrypt(&mut self, envelope: &Envelope) -> Result<Zeroizing<Vec<u8>>, Error> {
        let ad = associated_data(&self.remote, &self.local, envelope);
        let plaintext = self.ratchet.receive(&envelope.header, |mk| {
            aead::open(mk, &ad, &envelope.ciphertext)
        })?;
        // The peer has the session: stop attaching the setup header.
        self.pending_prekey = None;
        Ok(plaintext)
    }

    /// Whether `envelope` is a setup message of this very session (the
    /// initiator repeats the setup header until it hears back); route such
    /// envelopes to [`Session::decrypt`], not to [`Device::accept`].
    pub fn is_setup_of_this_session(&self, envelope: &Envelope) -> bool {
        envelope.prekey.is_some_and(|p| p.base_key == self.base_key)
    }

    /// Creates the next sending chain now if a received message left none
    /// (the Double Ratchet's sending step, otherwise taken lazily by the
    /// next [`Session::encrypt`]), so that a save made now covers it.
    pub fn prepare_sending<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<(), Error> {
        self.ratchet.prepare_sending(rng)
    }

    /// Whether the next [`Session::encrypt`] uses a key that a durable save
    /// already reserved ([`Session::to_bytes_reserving`]). For a session that
    /// has been serialized, [`Session::encrypt`] refuses when this is false.
    pub fn next_send_reserved(&self) -> bool {
        self.ratchet.next_send_reserved()
    }

    /// The bytes of [`Session::to_bytes_reserving`] that returned `saved`
    /// are durable.
    pub fn confirm_saved(&mut self, saved: crate::persist::SavedAt) {
        if saved.matches(&self.ratchet.dhs_public)
            && let Some(counter) = saved.counter()
        {
            self.ratchet.confirm_reserved(counter);
        }
    }

    /// Drops any reservation (after a failed save): the next send must save
    /// first.
    pub fn forget_reservation(&mut self) {
        self.ratchet.forget_reserved();
    }

    /// How many skipped message keys the session holds (messages of the
    /// peer not received yet, or keys a restored peer reserved and never
    /// used).
    pub fn skipped_keys(&self) -> usize {
        self.ratchet.skipped.len()
    }

    /// The peer's identity.
    pub fn remote_identity(&self) -> &PublicIdentity {
        &self.remote
    }

    /// This device's identity.
    pub fn local_identity(&self) -> &PublicIdentity {
        &self.local
    }

    /// The safety number of this session's two identities.
    pub fn safety_number(&self) -> SafetyNumber {
        SafetyNumber::new(&self.local, &self.remote)
    }

    /// True until the initiator has received a message from the responder.
    pub fn awaiting_reply(&self) -> bool {
        self.pending_prekey.is_some()
    }
}

impl Device {
    /// Accepts a peer's first message: completes the setup on the responder's
    /// side and decrypts it. The one-time prekey it used is consumed, and its
    /// base key remembered (a replayed setup is rejected), only on success.
    pub fn accept(&mut self, envelope: &Envelope) -> Result<(Session, Zeroizing<Vec<u8>>), Error> {
        let setup = envelope.prekey.as_ref().ok_or(Error::NotSetupMessage)?;
        let spk = self
            .find_signed_prekey(setup.signed_prekey_id)
            .ok_or(Error::UnknownPrekey)?;
        if spk.seen_base_keys.contains(&setup.base_key) {
            return Err(Error::ReplayedSetup);
        }
        let otk = match setup.one_time_prekey_id {
            Some(id) => Some(self.one_time_prekeys.get(&id).ok_or(Error::UnknownPrekey)?),
            None => None,
        };
        VerifyingKey::from_bytes(&setup.signing_key)
            .map_err(|_| Error::InvalidBundle("signing key is not a valid Ed25519 point"))?;
        let remote = PublicIdentity {
            signing_key: setup.signing_key,
            identity_key: setup.identity_key,
        };
        let dh1 = dh(&spk.key.secret, &setup.identity_key)?;
        let dh2 = dh(&self.identity.dh, &setup.base_key)?;
        let dh3 = dh(&spk.key.secret, &setup.base_key)?;
        let dh4 = match otk {
            Some(otk) => Some(dh(&otk.secret, &setup.base_key)?),
            None => None,
        };
        let local = self.public_identity();
        let info = x3dh_info(&remote, &local);
        let shared = match &dh4 {
            Some(dh4) => kdf::x3dh_secret(&[&dh1, &dh2, &dh3, dh4], &info),
            None => kdf::x3dh_secret(&[&dh1, &dh2, &dh3], &info),
        };
        let mut session = Session {
            local,
            remote,
            base_key: setup.base_key,
            pending_prekey: None,
            ratchet: Ratchet::responder(shared, spk.key.secret.clone()),
            persisted: AtomicBool::new(false),
        };
        let plaintext = session.decrypt(envelope)?;

        if let Some(id) = setup.one_time_prekey_id {
            self.one_time_prekeys.remove(&id);
        }
        if let Some(spk) = self
            .signed_prekeys
            .iter_mut()
            .find(|s| s.key.id == setup.signed_prekey_id)
        {
            spk.seen_base_keys.insert(setup.base_key);
        }
        Ok((session, plaintext))
    }
}
