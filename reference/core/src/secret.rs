//! Secret key material as types: boxed (so moves do not leave copies on the
//! stack), zeroized on drop, never `Debug`-printed or serialized by derive.

use core::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 bytes of secret key material (a root, chain or message key).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Key32(Box<[u8; 32]>);

impl Key32 {
    pub(crate) fn new(bytes: [u8; 32]) -> Self {
        let mut bytes = bytes;
        let key = Key32(Box::new(bytes));
        bytes.zeroize();
        key
    }

    /// Takes the first 32 bytes of `bytes` (callers pass at least 32).
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut key = Key32(Box::new([0u8; 32]));
        key.0.copy_from_slice(bytes.get(..32)?);
        Some(key)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32(<redacted>)")
    }
}

/// A growable buffer for bytes that hold secrets (serialized keys,
/// plaintext), zeroized when dropped and when it grows: a `Vec` that
/// reallocates leaves the old copy in freed memory, so growing here copies
/// into a larger zeroizing buffer and wipes the old one. Encode into it with
/// a `minicbor::Encoder`; no capacity estimate can be wrong.
#[derive(Default)]
pub struct SecretBuf(zeroize::Zeroizing<Vec<u8>>);

impl SecretBuf {
    /// An empty buffer with room for `capacity` bytes (a hint).
    pub fn with_capacity(capacity: usize) -> Self {
        SecretBuf(zeroize::Zeroizing::new(Vec::with_capacity(capacity)))
    }

    /// Appends `bytes`, growing (and wiping the old buffer) when needed.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let needed = self.0.len().saturating_add(bytes.len());
        if needed > self.0.capacity() {
            let mut bigger = Vec::with_capacity(needed.max(self.0.capacity().saturating_mul(2)));
            bigger.extend_from_slice(&self.0);
            // The old buffer is wiped (its whole capacity) when replaced.
            self.0 = zeroize::Zeroizing::new(bigger);
        }
        self.0.extend_from_slice(bytes);
    }

    /// The bytes written.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The buffer, still zeroizing.
    pub fn into_inner(self) -> zeroize::Zeroizing<Vec<u8>> {
        self.0
    }
}

impl minicbor::encode::Write for SecretBuf {
    type Error = core::convert::Infallible;

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.extend_from_slice(buf);
        Ok(())
    }
}

impl fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBuf(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Growing keeps every byte in order and never reallocates in place: the
    /// capacity a write needs is always there before `Vec::extend` runs.
    #[test]
    fn a_secret_buffer_grows_by_copying_not_by_reallocating() {
        let mut b = SecretBuf::with_capacity(4);
        let mut expected = Vec::new();
        for i in 0..200u8 {
            let chunk = vec![i; usize::from(i % 7) + 1];
            let before = b.0.capacity();
            let fits = b.0.len() + chunk.len() <= before;
            let ptr = b.0.as_ptr();
            b.extend_from_slice(&chunk);
            if fits {
                assert_eq!(b.0.as_ptr(), ptr, "grew although it fitted");
            }
            expected.extend_from_slice(&chunk);
        }
        assert_eq!(b.as_slice(), &expected[..]);
    }
}
