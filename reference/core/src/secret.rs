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
