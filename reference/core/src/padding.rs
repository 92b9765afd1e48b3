//! Plaintext padding, so that ciphertext length reveals only a coarse bucket
//! of the message length.
//!
//! Scheme: the plaintext is followed by one `0x80` byte and then zero bytes up
//! to [`padded_len`]: `max(len + 1, 32)` rounded up with Padmé (Nikitin et al.,
//! "Reducing Metadata Leakage from Encrypted Files and Communication with
//! PURBs", PETS 2019). Padmé leaks O(log log L) bits of the length and adds at
//! most 12% (and at most 31 bytes below 32 bytes of input).

use zeroize::Zeroizing;

use crate::Error;

/// Smallest padded length: every message costs at least this many bytes.
pub const MIN_PADDED_LEN: usize = 32;

/// The padded length of a plaintext of `len` bytes.
pub fn padded_len(len: usize) -> usize {
    padme(len.saturating_add(1).max(MIN_PADDED_LEN))
}

fn padme(l: usize) -> usize {
    if l < 2 {
        return l;
    }
    let e = usize::BITS - 1 - l.leading_zeros(); // floor(log2 l)
    let s = u32::BITS - e.leading_zeros(); // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (l + mask) & !mask
}

/// Pads `plaintext` as described in the module docs.
pub fn pad(plaintext: &[u8]) -> Zeroizing<Vec<u8>> {
    let target = padded_len(plaintext.len());
    // 16 more bytes so that the AEAD tag can be appended without reallocating
    // (a reallocation would leave an unzeroized copy of the plaintext behind).
    let mut out = Zeroizing::new(Vec::with_capacity(target + 16));
    out.extend_from_slice(plaintext);
    out.push(0x80);
    out.resize(target, 0);
    out
}

/// Removes the padding added by [`pad`], in place.
pub fn unpad(buf: &mut Zeroizing<Vec<u8>>) -> Result<(), Error> {
    let end = buf.iter().rposition(|&b| b != 0).ok_or(Error::Decrypt)?;
    if buf.get(end) != Some(&0x80) || padded_len(end) != buf.len() {
        return Err(Error::Decrypt);
    }
    buf.truncate(end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padme_known_values() {
        // Values from the PURBs paper's definition.
        assert_eq!(padded_len(0), 32);
        assert_eq!(padded_len(31), 32);
        assert_eq!(padded_len(32), 36);
        assert_eq!(padded_len(99), 104);
        assert_eq!(padded_len(1000), 1024);
        assert_eq!(padded_len(65_536), 67_584);
    }

    #[test]
    fn overhead_is_bounded() {
        for len in 0..70_000usize {
            let p = padded_len(len);
            assert!(p > len, "{len}");
            if len >= 32 {
                assert!((p - len - 1) * 100 <= (len + 1) * 12, "{len} -> {p}");
            } else {
                assert_eq!(p, 32);
            }
        }
    }

    #[test]
    fn round_trip_and_rejects_bad_padding() {
        for len in [0usize, 1, 31, 32, 33, 200, 4096] {
            let msg = vec![0u8; len];
            let mut padded = pad(&msg);
            assert_eq!(padded.len(), padded_len(len));
            unpad(&mut padded).unwrap();
            assert_eq!(&padded[..], &msg[..]);
        }
        let mut bad = Zeroizing::new(vec![1u8, 0, 0]);
        assert!(unpad(&mut bad).is_err());
        let mut zeros = Zeroizing::new(vec![0u8; 32]);
        assert!(unpad(&mut zeros).is_err());
        // Right marker, wrong total length.
        let mut short = Zeroizing::new(vec![0x80u8, 0, 0]);
        assert!(unpad(&mut short).is_err());
    }
}
