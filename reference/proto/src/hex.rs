//! Hexadecimal, the one implementation the workspace uses: for `Debug`
//! output of public values (ids, keys, envelopes' lengths are elsewhere),
//! for test vectors and for the strings people type (link codes).

use core::fmt;

/// Lower-case hex of a byte string, for `Debug` and `Display` output. Used
/// for public values only: secrets are never printed.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Lower-case hex.
pub fn lower(bytes: &[u8]) -> String {
    Hex(bytes).to_string()
}

/// Upper-case hex.
pub fn upper(bytes: &[u8]) -> String {
    lower(bytes).to_ascii_uppercase()
}

/// Decodes hex of either case; `None` for an odd length or a character
/// that is not a hex digit.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let value = |c: u8| (c as char).to_digit(16);
    digits
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some((value(*hi)? * 16 + value(*lo)?) as u8),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&lower(&bytes)).unwrap(), bytes);
        assert_eq!(decode(&upper(&bytes)).unwrap(), bytes);
        assert_eq!(lower(&[0x0a, 0xff]), "0aff");
        assert_eq!(upper(&[0x0a, 0xff]), "0AFF");
        assert_eq!(format!("{:?}", Hex(&[1, 2])), "0102");
        for bad in ["0", "0g", "zz", "+1", "é1"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert_eq!(decode(""), Some(vec![]));
    }
}
