//! Encryption of the client's files at rest (docs/PROTOCOL.md §13.2).
//!
//! ```text
//!   passphrase ──Argon2id(salt, cost)──▶ wrapping key ──AES-256-GCM──▶ data key
//!                                         (key.cbor: salt, cost, wrapped data key)
//!   data key ──AES-256-GCM, random nonce──▶ state.cbor, each record of messages.cbor
//! ```
//!
//! A random 32-byte data key encrypts the state file and every record of
//! the message log; the key file `key.cbor` holds it wrapped under a key
//! derived from the user's passphrase with Argon2id. A wrong passphrase
//! fails to unwrap it ([`ClientError::WrongPassphrase`]); changing the
//! passphrase rewrites only the key file. Each sealed item is bound to what
//! it is (state or log record) by the AEAD's associated data, so one cannot
//! be put in place of the other.

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use aes_gcm::{Aes256Gcm, Key};
use argon2::{Algorithm, Argon2, Params, Version};
use minicbor::{Decoder, Encoder};
use rand::Rng;
use zeroize::Zeroizing;

use crate::ClientError;

/// AES-GCM nonce length.
const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Version of `key.cbor`.
const KEY_FILE_VERSION: u64 = 1;
/// The first bytes of an encrypted state file.
pub(crate) const STATE_MAGIC: &[u8; 8] = b"CHATIFY\x01";

/// Argon2id cost of turning a passphrase into the wrapping key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
}

impl KdfCost {
    /// The default: 64 MiB, 3 passes (about 0.2 s on one core of the
    /// reference machine), above OWASP's minimum for Argon2id.
    pub const DEFAULT: KdfCost = KdfCost {
        memory_kib: 64 * 1024,
        iterations: 3,
    };
    /// The smallest cost [`Passphrase::with_cost`] accepts (8 MiB, 1
    /// pass), for tests and harness runs that open thousands of homes.
    pub const MINIMUM: KdfCost = KdfCost {
        memory_kib: 8 * 1024,
        iterations: 1,
    };
    /// The largest cost a key file may ask for (2 GiB, 64 passes): a
    /// damaged or planted key file cannot make the client allocate more.
    const MAXIMUM: KdfCost = KdfCost {
        memory_kib: 2 * 1024 * 1024,
        iterations: 64,
    };

    fn check(self) -> Result<Self, ClientError> {
        if self.memory_kib < Self::MINIMUM.memory_kib
            || self.iterations < Self::MINIMUM.iterations
            || self.memory_kib > Self::MAXIMUM.memory_kib
            || self.iterations > Self::MAXIMUM.iterations
        {
            return Err(ClientError::State(format!(
                "key derivation cost out of range: {} KiB, {} passes",
                self.memory_kib, self.iterations
            )));
        }
        Ok(self)
    }
}

/// The passphrase that protects a home directory, and the cost at which a
/// new key file derives from it (an existing key file keeps its own).
/// Zeroized when dropped; never printed.
pub struct Passphrase {
    secret: Zeroizing<String>,
    cost: KdfCost,
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passphrase")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl Passphrase {
    /// A passphrase at [`KdfCost::DEFAULT`]. An empty passphrase is allowed:
    /// the files are then encrypted, but anyone who can read them can
    /// decrypt them (docs/THREAT_MODEL.md).
    pub fn new(secret: impl Into<String>) -> Self {
        Passphrase {
            secret: Zeroizing::new(secret.into()),
            cost: KdfCost::DEFAULT,
        }
    }

    /// A passphrase whose new key files use `cost` (at least
    /// [`KdfCost::MINIMUM`]).
    pub fn with_cost(secret: impl Into<String>, cost: KdfCost) -> Result<Self, ClientError> {
        Ok(Passphrase {
            secret: Zeroizing::new(secret.into()),
            cost: cost.check()?,
        })
    }

    fn derive(&self, salt: &[u8; 16], cost: KdfCost) -> Result<Zeroizing<[u8; 32]>, ClientError> {
        let params =
            Params::new(cost.memory_kib, cost.iterations, 1, Some(32)).map_err(ClientError::Kdf)?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(self.secret.as_bytes(), salt, out.as_mut_slice())
            .map_err(ClientError::Kdf)?;
        Ok(out)
    }
}

/// The data key of a home directory, unwrapped.
pub(crate) struct Vault {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

/// What a sealed item is; bound into its associated data.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    State,
    LogRecord,
    Transfers,
    Groups,
}

impl Purpose {
    fn ad(self) -> &'static [u8] {
        match self {
            Purpose::State => b"chatify state v1",
            Purpose::LogRecord => b"chatify log record v1",
            Purpose::Transfers => b"chatify transfers v1",
            Purpose::Groups => b"chatify groups v1",
        }
    }
}

fn wrap_ad(cost: KdfCost) -> Vec<u8> {
    let mut ad = b"chatify key file v1".to_vec();
    ad.extend_from_slice(&cost.memory_kib.to_le_bytes());
    ad.extend_from_slice(&cost.iterations.to_le_bytes());
    ad
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key))
}

fn seal_with(cipher: &Aes256Gcm, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let body = out.get_mut(NONCE_LEN..).unwrap_or_default();
    // Sealing an in-memory buffer below GCM's 64 GiB limit cannot fail.
    match cipher.encrypt_inout_detached(&Nonce::<Aes256Gcm>::from(nonce), ad, body.into()) {
        Ok(tag) => out.extend_from_slice(tag.as_slice()),
        Err(_) => out.clear(),
    }
    out
}

fn open_with(cipher: &Aes256Gcm, ad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let (nonce, rest) = sealed.split_at_checked(NONCE_LEN)?;
    let (ct, tag) = rest.split_at_checked(rest.len().checked_sub(TAG_LEN)?)?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
    let mut buf = Zeroizing::new(ct.to_vec());
    cipher
        .decrypt_inout_detached(
            &Nonce::<Aes256Gcm>::from(nonce),
            ad,
            buf.as_mut_slice().into(),
            &tag.into(),
        )
        .ok()?;
    Some(buf)
}

/// Seals `plaintext` under a 32-byte key: nonce || ciphertext || tag.
pub(crate) fn seal_with_key(key: &[u8; 32], ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with(&cipher(key), ad, plaintext)
}

/// Opens what [`seal_with_key`] sealed.
pub(crate) fn open_with_key(
    key: &[u8; 32],
    ad: &[u8],
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    open_with(&cipher(key), ad, sealed)
}

impl Vault {
    /// A new random data key and the key file that wraps it under
    /// `passphrase`.
    pub(crate) fn create(passphrase: &Passphrase) -> Result<(Vault, Vec<u8>), ClientError> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut_slice());
        let file = Self::wrap(&key, passphrase)?;
        Ok((
            Vault {
                cipher: cipher(&key),
            },
            file,
        ))
    }

    fn wrap(key: &[u8; 32], passphrase: &Passphrase) -> Result<Vec<u8>, ClientError> {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let cost = passphrase.cost;
        let wrapping = passphrase.derive(&salt, cost)?;
        let wrapped = seal_with(&cipher(&wrapping), &wrap_ad(cost), key);
        let mut out = Vec::with_capacity(128);
        let mut e = Encoder::new(&mut out);
        let result = (|| -> Result<(), minicbor::encode::Error<core::convert::Infallible>> {
            e.array(5)?
                .u64(KEY_FILE_VERSION)?
                .u32(cost.memory_kib)?
                .u32(cost.iterations)?
                .bytes(&salt)?
                .bytes(&wrapped)?;
            Ok(())
        })();
        debug_assert!(result.is_ok());
        Ok(out)
    }

    /// Unwraps the data key of `key_file` with `passphrase`.
    pub(crate) fn unlock(key_file: &[u8], passphrase: &Passphrase) -> Result<Vault, ClientError> {
        Ok(Vault {
            cipher: cipher(&*Self::unwrap(key_file, passphrase)?),
        })
    }

    /// Re-wraps the data key of `key_file` (opened with `old`) under `new`.
    pub(crate) fn rewrap(
        key_file: &[u8],
        old: &Passphrase,
        new: &Passphrase,
    ) -> Result<Vec<u8>, ClientError> {
        Self::wrap(&*Self::unwrap(key_file, old)?, new)
    }

    fn unwrap(
        key_file: &[u8],
        passphrase: &Passphrase,
    ) -> Result<Zeroizing<[u8; 32]>, ClientError> {
        let bad = |what: &str| ClientError::State(format!("key.cbor: {what}"));
        let mut d = Decoder::new(key_file);
        let parse = |d: &mut Decoder<'_>| -> Result<_, minicbor::decode::Error> {
            let n = d.array()?;
            let version = d.u64()?;
            let cost = KdfCost {
                memory_kib: d.u32()?,
                iterations: d.u32()?,
            };
            let salt = d.bytes()?.to_vec();
            let wrapped = d.bytes()?.to_vec();
            Ok((n, version, cost, salt, wrapped))
        };
        let (n, version, cost, salt, wrapped) = parse(&mut d).map_err(|_| bad("unreadable"))?;
        if n != Some(5) || version != KEY_FILE_VERSION || d.position() != key_file.len() {
            return Err(bad("unknown format"));
        }
        let cost = cost.check()?;
        let salt: [u8; 16] = salt.try_into().map_err(|_| bad("bad salt"))?;
        let wrapping = passphrase.derive(&salt, cost)?;
        let key = open_with(&cipher(&wrapping), &wrap_ad(cost), &wrapped)
            .ok_or(ClientError::WrongPassphrase)?;
        if key.len() != 32 {
            return Err(bad("bad key length"));
        }
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&key);
        Ok(out)
    }

    /// Seals `plaintext` as `purpose`: nonce || ciphertext || tag.
    pub(crate) fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.cipher, purpose.ad(), plaintext)
    }

    /// Opens what [`Vault::seal`] sealed as `purpose`.
    pub(crate) fn open(&self, purpose: Purpose, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        open_with(&self.cipher, purpose.ad(), sealed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::with_cost(s, KdfCost::MINIMUM).unwrap()
    }

    #[test]
    fn the_right_passphrase_opens_and_a_wrong_one_does_not() {
        let (vault, file) = Vault::create(&pass("correct horse")).unwrap();
        let sealed = vault.seal(Purpose::State, b"keys");
        let again = Vault::unlock(&file, &pass("correct horse")).unwrap();
        assert_eq!(
            again.open(Purpose::State, &sealed).unwrap().as_slice(),
            b"keys"
        );
        assert!(matches!(
            Vault::unlock(&file, &pass("wrong horse")),
            Err(ClientError::WrongPassphrase)
        ));
    }

    /// A state cannot be read as a log record, nor a changed byte as
    /// anything; a changed passphrase keeps the data key.
    #[test]
    fn purposes_bind_and_tampering_fails_and_rewrap_keeps_the_key() {
        let (vault, file) = Vault::create(&pass("a")).unwrap();
        let sealed = vault.seal(Purpose::State, b"keys");
        assert!(vault.open(Purpose::LogRecord, &sealed).is_none());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(vault.open(Purpose::State, &bad).is_none(), "byte {i}");
        }
        assert!(
            vault
                .open(Purpose::State, &sealed[..sealed.len() - 1])
                .is_none()
        );
        let file2 = Vault::rewrap(&file, &pass("a"), &pass("b")).unwrap();
        let vault2 = Vault::unlock(&file2, &pass("b")).unwrap();
        assert!(vault2.open(Purpose::State, &sealed).is_some());
        assert!(matches!(
            Vault::unlock(&file2, &pass("a")),
            Err(ClientError::WrongPassphrase)
        ));
        assert!(matches!(
            Vault::rewrap(&file, &pass("x"), &pass("b")),
            Err(ClientError::WrongPassphrase)
        ));
    }

    /// A key file cannot ask for an unbounded derivation cost, nor a cost
    /// other than the one its key was wrapped at.
    #[test]
    fn the_cost_is_bounded_and_bound() {
        let (_, file) = Vault::create(&pass("a")).unwrap();
        let mut d = Decoder::new(&file);
        d.array().unwrap();
        d.u64().unwrap();
        let at = d.position();
        // Replace the memory cost (8192 = 0x19 0x20 0x00) by 16384.
        assert_eq!(&file[at..at + 3], &[0x19, 0x20, 0x00]);
        let mut changed = file.clone();
        changed[at + 1] = 0x40;
        assert!(matches!(
            Vault::unlock(&changed, &pass("a")),
            Err(ClientError::WrongPassphrase)
        ));
        let mut huge = file.clone();
        huge.splice(at..at + 3, [0x1a, 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            Vault::unlock(&huge, &pass("a")),
            Err(ClientError::State(_))
        ));
        assert!(
            Passphrase::with_cost(
                "a",
                KdfCost {
                    memory_kib: 1024,
                    iterations: 1
                }
            )
            .is_err()
        );
    }
}
