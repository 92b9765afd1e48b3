//! Public key material as it travels between clients and the key directory.
//!
//! The server stores and serves these values; it never checks signatures
//! (it has no signature code). Clients verify them (`chatify-core`).

use core::fmt;

use minicbor::{Decode, Encode};

use crate::frame::Hex;

use crate::limits::MAX_USERNAME_LEN;

/// A device's long-term public identity: an Ed25519 signing key and an X25519
/// identity key, bound together by a signature of the first over the second.
#[derive(Clone, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(map)]
pub struct DeviceKeys {
    /// Ed25519 public key (32 bytes).
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub signing_key: [u8; 32],
    /// X25519 identity public key (32 bytes).
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub identity_key: [u8; 32],
    /// Ed25519 signature by `signing_key` over
    /// `"chatify/v1/identity-key" || identity_key`.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub identity_signature: [u8; 64],
}

/// A medium-term X25519 prekey signed by the device's Ed25519 key.
#[derive(Clone, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(map)]
pub struct SignedPrekey {
    /// The prekey's identifier, chosen by the device.
    #[n(0)]
    pub id: u32,
    /// X25519 public key (32 bytes).
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub public_key: [u8; 32],
    /// Ed25519 signature over `"chatify/v1/signed-prekey" || id (u32 BE) || public_key`.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub signature: [u8; 64],
}

/// A single-use X25519 prekey.
#[derive(Clone, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(map)]
pub struct OneTimePrekey {
    /// The prekey's identifier, chosen by the device.
    #[n(0)]
    pub id: u32,
    /// X25519 public key (32 bytes).
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub public_key: [u8; 32],
}

/// What the key directory returns for one device: everything an initiator
/// needs to start a session with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(map)]
pub struct PrekeyBundle {
    /// The device owner's user name.
    #[n(0)]
    pub user: String,
    /// The device number within that account.
    #[n(1)]
    pub device: u32,
    /// The device's identity keys.
    #[n(2)]
    pub identity: DeviceKeys,
    /// The device's current signed prekey.
    #[n(3)]
    pub signed_prekey: SignedPrekey,
    /// One one-time prekey, removed from the directory when it was served;
    /// absent when the device's pool is empty.
    #[n(4)]
    pub one_time_prekey: Option<OneTimePrekey>,
}

impl PrekeyBundle {
    pub(crate) fn check_limits(&self) -> Result<(), crate::DecodeError> {
        crate::frame::check_len("user", self.user.len(), MAX_USERNAME_LEN)
    }

    /// Encodes the bundle on its own (as the key directory stores it).
    pub fn encode(&self) -> Vec<u8> {
        crate::frame::to_vec(self)
    }

    /// Decodes a bundle encoded by [`PrekeyBundle::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        let bundle: Self = crate::frame::decode_exact(bytes, crate::limits::MAX_FRAME_LEN)?;
        bundle.check_limits()?;
        Ok(bundle)
    }
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("signing_key", &Hex(&self.signing_key))
            .field("identity_key", &Hex(&self.identity_key))
            .field("identity_signature", &Hex(&self.identity_signature))
            .finish()
    }
}

impl fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPrekey")
            .field("id", &self.id)
            .field("public_key", &Hex(&self.public_key))
            .field("signature", &Hex(&self.signature))
            .finish()
    }
}

impl fmt::Debug for OneTimePrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePrekey")
            .field("id", &self.id)
            .field("public_key", &Hex(&self.public_key))
            .finish()
    }
}
