//! Safety numbers: what two people compare to know that no one sits between
//! their devices.
//!
//! Each device's half is 30 decimal digits derived from
//! `SHA-256("chatify/v1/safety-number" || signing_key || identity_key)`: the
//! first 30 bytes of the hash, in six 5-byte big-endian chunks, each reduced
//! modulo 100000 and written as five digits. The safety number is the two
//! halves, the smaller first, so that both sides compute the same 60 digits.

use core::fmt;

use sha2::{Digest, Sha256};

use crate::identity::PublicIdentity;
use crate::kdf::labels;

/// A 60-digit safety number, shown as twelve groups of five digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// The safety number of two identities (order does not matter).
    pub fn new(a: &PublicIdentity, b: &PublicIdentity) -> Self {
        let (x, y) = (half(a), half(b));
        let (first, second) = if x <= y { (x, y) } else { (y, x) };
        SafetyNumber(first + &second)
    }

    /// The 60 digits without spaces.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.0.as_bytes().chunks(5).enumerate() {
            if i > 0 {
                f.write_str(if i % 4 == 0 { "\n" } else { " " })?;
            }
            f.write_str(core::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.0)
    }
}

fn half(id: &PublicIdentity) -> String {
    let mut h = Sha256::new();
    h.update(labels::SAFETY_NUMBER);
    h.update(id.signing_key);
    h.update(id.identity_key);
    let digest = h.finalize();
    let mut out = String::with_capacity(30);
    for chunk in digest.as_slice().chunks(5).take(6) {
        let n = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        out.push_str(&format!("{:05}", n % 100_000));
    }
    out
}

pub(crate) use chatify_proto::hex::Hex;
