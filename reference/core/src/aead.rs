//! AES-256-GCM over padded plaintext, keyed by a Double Ratchet message key.

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use aes_gcm::{Aes256Gcm, Key};
use zeroize::Zeroizing;

use crate::secret::Key32;
use crate::{Error, kdf, padding};

/// AES-256-GCM tag length.
pub const TAG_LEN: usize = 16;

fn cipher_and_nonce(mk: &Key32) -> (Aes256Gcm, Nonce<Aes256Gcm>) {
    let okm = kdf::message_keys(mk);
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    let (k, n) = okm.split_at(32);
    key.copy_from_slice(k);
    nonce.copy_from_slice(n);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    (cipher, Nonce::<Aes256Gcm>::from(nonce))
}

/// Pads and seals `plaintext`; returns ciphertext || tag.
pub(crate) fn seal(mk: &Key32, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let (cipher, nonce) = cipher_and_nonce(mk);
    let mut buf = padding::pad(plaintext);
    // Encryption of an in-memory buffer below GCM's 64 GiB limit cannot fail;
    // the plaintext limit is enforced by the caller.
    match cipher.encrypt_inout_detached(&nonce, ad, buf.as_mut_slice().into()) {
        Ok(tag) => {
            buf.extend_from_slice(tag.as_slice());
            core::mem::take(&mut *buf)
        }
        Err(_) => Vec::new(),
    }
}

/// Opens ciphertext || tag and removes the padding.
pub(crate) fn open(mk: &Key32, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let split = sealed.len().checked_sub(TAG_LEN).ok_or(Error::Decrypt)?;
    let (ct, tag) = sealed.split_at(split);
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| Error::Decrypt)?;
    let (cipher, nonce) = cipher_and_nonce(mk);
    let mut buf = Zeroizing::new(ct.to_vec());
    cipher
        .decrypt_inout_detached(&nonce, ad, buf.as_mut_slice().into(), &tag.into())
        .map_err(|_| Error::Decrypt)?;
    padding::unpad(&mut buf)?;
    Ok(buf)
}
