//! Key derivation: HKDF-SHA256 for roots and message keys, HMAC-SHA256 for
//! chain steps. Every derivation carries its own label (docs/PROTOCOL.md §KDF).

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secret::Key32;

/// Labels, one per derivation; they make every output domain-separated.
pub mod labels {
    /// Signature context binding a device's X25519 identity key to its Ed25519 key.
    pub const IDENTITY_KEY: &[u8] = b"chatify/v1/identity-key";
    /// Signature context of a signed prekey.
    pub const SIGNED_PREKEY: &[u8] = b"chatify/v1/signed-prekey";
    /// HKDF info prefix of the session-setup secret.
    pub const X3DH: &[u8] = b"chatify/v1/x3dh";
    /// HKDF info of the root-key ratchet step.
    pub const ROOT: &[u8] = b"chatify/v1/root";
    /// HKDF info expanding a message key into an AES-256-GCM key and nonce.
    pub const MESSAGE: &[u8] = b"chatify/v1/message";
    /// Prefix of the AEAD associated data.
    pub const AD: &[u8] = b"chatify/v1/ad";
    /// Hash prefix of a safety-number half.
    pub const SAFETY_NUMBER: &[u8] = b"chatify/v1/safety-number";
}

/// HMAC input bytes of the chain step (as in the Signal Double Ratchet spec).
const CHAIN_MESSAGE_KEY: u8 = 0x01;
const CHAIN_NEXT: u8 = 0x02;

/// `KDF_RK`: HKDF(salt = root, ikm = dh_out, info = ROOT) -> (new root, chain key).
pub(crate) fn root_step(root: &Key32, dh_out: &[u8; 32]) -> (Key32, Key32) {
    let mut okm = Zeroizing::new([0u8; 64]);
    let hk = Hkdf::<Sha256>::new(Some(root.as_bytes()), dh_out);
    expand(&hk, labels::ROOT, okm.as_mut());
    split64(&okm)
}

/// The session-setup secret: HKDF(salt = 32 zero bytes, ikm = 0xFF*32 || dh..., info).
pub(crate) fn x3dh_secret(dh_outputs: &[&[u8; 32]], info: &[u8]) -> Key32 {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (1 + dh_outputs.len())));
    ikm.extend_from_slice(&[0xFF; 32]);
    for dh in dh_outputs {
        ikm.extend_from_slice(dh.as_slice());
    }
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm);
    let mut okm = Zeroizing::new([0u8; 32]);
    expand(&hk, info, okm.as_mut());
    Key32::new(*okm)
}

/// `KDF_CK`: (message key, next chain key) = (HMAC(ck, 0x01), HMAC(ck, 0x02)).
pub(crate) fn chain_step(chain: &Key32) -> (Key32, Key32) {
    (hmac(chain, CHAIN_MESSAGE_KEY), hmac(chain, CHAIN_NEXT))
}

/// Message key -> (AES-256 key, 96-bit nonce) with HKDF(salt = none, ikm = mk, info = MESSAGE).
pub(crate) fn message_keys(mk: &Key32) -> Zeroizing<[u8; 44]> {
    let hk = Hkdf::<Sha256>::new(None, mk.as_bytes());
    let mut okm = Zeroizing::new([0u8; 44]);
    expand(&hk, labels::MESSAGE, okm.as_mut());
    okm
}

fn hmac(key: &Key32, byte: u8) -> Key32 {
    // HMAC accepts keys of any length, so construction cannot fail; the
    // fallback is unreachable and keeps this path free of panics.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return Key32::new([0u8; 32]),
    };
    mac.update(&[byte]);
    let out = mac.finalize().into_bytes();
    Key32::from_slice(out.as_slice()).unwrap_or_else(|| Key32::new([0u8; 32]))
}

fn expand(hk: &Hkdf<Sha256>, info: &[u8], okm: &mut [u8]) {
    // Output lengths here are at most 64 bytes, far below HKDF's 255*32 limit.
    let result = hk.expand(info, okm);
    debug_assert!(result.is_ok());
}

fn split64(okm: &[u8; 64]) -> (Key32, Key32) {
    let (a, b) = okm.split_at(32);
    (
        Key32::from_slice(a).unwrap_or_else(|| Key32::new([0u8; 32])),
        Key32::from_slice(b).unwrap_or_else(|| Key32::new([0u8; 32])),
    )
}
