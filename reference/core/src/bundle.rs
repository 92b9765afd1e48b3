//! Verifying a prekey bundle: the first state of session setup.

use core::fmt;

use chatify_proto::PrekeyBundle;

use crate::Error;
use crate::fingerprint::Hex;
use crate::identity::{PublicIdentity, signed_message, verify_signature};
use crate::kdf::labels;

/// A prekey bundle whose signatures have been checked. Only this type can
/// start a session ([`Session::initiate`](crate::Session::initiate)), so a
/// session cannot exist before its peer's signed prekey was verified.
#[derive(Clone)]
pub struct VerifiedBundle {
    pub(crate) user: String,
    pub(crate) device: u32,
    pub(crate) identity: PublicIdentity,
    pub(crate) signed_prekey: (u32, [u8; 32]),
    pub(crate) one_time_prekey: Option<(u32, [u8; 32])>,
}

impl fmt::Debug for VerifiedBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedBundle")
            .field("user", &self.user)
            .field("device", &self.device)
            .field("identity", &self.identity)
            .field(
                "signed_prekey",
                &(self.signed_prekey.0, Hex(&self.signed_prekey.1)),
            )
            .field(
                "one_time_prekey",
                &self.one_time_prekey.as_ref().map(|(id, k)| (*id, Hex(k))),
            )
            .finish()
    }
}

impl VerifiedBundle {
    /// Checks the identity-key binding and the signed-prekey signature
    /// (Ed25519, strict verification).
    pub fn verify(bundle: &PrekeyBundle) -> Result<Self, Error> {
        let id = &bundle.identity;
        verify_signature(
            &id.signing_key,
            &signed_message(labels::IDENTITY_KEY, None, &id.identity_key),
            &id.identity_signature,
        )?;
        let spk = &bundle.signed_prekey;
        verify_signature(
            &id.signing_key,
            &signed_message(labels::SIGNED_PREKEY, Some(spk.id), &spk.public_key),
            &spk.signature,
        )?;
        Ok(VerifiedBundle {
            user: bundle.user.clone(),
            device: bundle.device,
            identity: PublicIdentity {
                signing_key: id.signing_key,
                identity_key: id.identity_key,
            },
            signed_prekey: (spk.id, spk.public_key),
            one_time_prekey: bundle
                .one_time_prekey
                .as_ref()
                .map(|o| (o.id, o.public_key)),
        })
    }

    /// The bundle owner's identity (compare it with a pinned one before use).
    pub fn identity(&self) -> &PublicIdentity {
        &self.identity
    }

    /// The bundle owner's user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The device number.
    pub fn device(&self) -> u32 {
        self.device
    }

    /// Whether the bundle carried a one-time prekey.
    pub fn has_one_time_prekey(&self) -> bool {
        self.one_time_prekey.is_some()
    }
}
