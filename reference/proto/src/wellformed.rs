//! The shape every frame must have before its fields are read
//! (docs/PROTOCOL.md §9.1): definite lengths only, each head in its
//! shortest form, and no map with a key twice. A decoder that let the last
//! of two equal keys win would read a different frame than one that kept
//! the first; refusing both spellings leaves one meaning per frame.
//!
//! Unknown keys stay allowed (a newer peer may add fields); the order of
//! keys is not checked.

use crate::error::DecodeError;

/// Deepest nesting a frame may have (the deepest frame of the protocol
/// nests four levels).
const MAX_DEPTH: usize = 16;

/// Checks that `bytes` holds one CBOR item of the required shape followed
/// by nothing else.
pub(crate) fn check(bytes: &[u8]) -> Result<(), DecodeError> {
    let end = item(bytes, 0, 0)?;
    if end != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - end));
    }
    Ok(())
}

/// A head: major type, its argument, and where the item's content starts.
struct Head {
    major: u8,
    arg: u64,
    content: usize,
}

fn head(bytes: &[u8], at: usize) -> Result<Head, DecodeError> {
    let first = *bytes
        .get(at)
        .ok_or(DecodeError::malformed("end of input", at))?;
    let (major, info) = (first >> 5, first & 0x1f);
    let width = match info {
        0..=23 => {
            return Ok(Head {
                major,
                arg: u64::from(info),
                content: at + 1,
            });
        }
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 => return Err(DecodeError::malformed("indefinite length", at)),
        _ => {
            return Err(DecodeError::malformed(
                "reserved additional information",
                at,
            ));
        }
    };
    let raw = bytes
        .get(at + 1..at + 1 + width)
        .ok_or(DecodeError::malformed("end of input", at))?;
    let arg = raw.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
    // Shortest form: the argument needs this width. Floats (major 7, widths
    // 2, 4, 8) carry their bits, not a number, and are left alone.
    let shortest = match width {
        1 => arg >= 24,
        2 => arg > 0xff,
        4 => arg > 0xffff,
        _ => arg > 0xffff_ffff,
    };
    let float = major == 7 && width > 1;
    if !(shortest || float) {
        return Err(DecodeError::NonCanonical);
    }
    Ok(Head {
        major,
        arg,
        content: at + 1 + width,
    })
}

/// Walks the item at `at`; returns where it ends.
fn item(bytes: &[u8], at: usize, depth: usize) -> Result<usize, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::malformed("nested too deeply", at));
    }
    let h = head(bytes, at)?;
    match h.major {
        0 | 1 | 7 => Ok(h.content),
        2 | 3 => {
            let len = usize::try_from(h.arg)
                .map_err(|_| DecodeError::malformed("length out of range", at))?;
            let end = h
                .content
                .checked_add(len)
                .filter(|e| *e <= bytes.len())
                .ok_or(DecodeError::malformed("end of input", at))?;
            Ok(end)
        }
        4 => {
            let mut next = h.content;
            for _ in 0..h.arg {
                next = item(bytes, next, depth + 1)?;
            }
            Ok(next)
        }
        5 => {
            let mut next = h.content;
            let mut keys: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
            for _ in 0..h.arg {
                let key_end = item(bytes, next, depth + 1)?;
                let key = bytes
                    .get(next..key_end)
                    .ok_or(DecodeError::malformed("end of input", next))?;
                if !keys.insert(key) {
                    return Err(DecodeError::malformed("a map key appears twice", next));
                }
                next = item(bytes, key_end, depth + 1)?;
            }
            Ok(next)
        }
        // Tags (major 6): none is part of the protocol.
        _ => Err(DecodeError::malformed("tagged item", at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_items_pass() {
        for ok in [
            &[0x00][..],
            &[0x18, 0x18],
            &[0x19, 0x01, 0x00],
            &[0x84, 0x01, 0x0a, 0x07, 0xa0],
            &[0xa2, 0x00, 0x41, 0xff, 0x01, 0xf6],
            &[0xa2, 0x01, 0x00, 0x00, 0x00], // keys in any order
            &[0xfb, 0, 0, 0, 0, 0, 0, 0, 0], // a float keeps its width
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:02x?}");
        }
    }

    /// Each rule, broken once.
    #[test]
    fn each_rule_is_enforced() {
        for (bad, why) in [
            (&[0xa2, 0x00, 0x01, 0x00, 0x02][..], "duplicate key"),
            (&[0x9f, 0x01, 0xff], "indefinite array"),
            (&[0x5f, 0x41, 0x00, 0xff], "indefinite byte string"),
            (&[0x18, 0x05], "non-minimal 5"),
            (&[0x19, 0x00, 0xff], "non-minimal 255"),
            (&[0x81, 0x1a, 0x00, 0x00, 0x00, 0x01], "non-minimal inside"),
            (&[0xc1, 0x00], "tag"),
            (&[0x1c], "reserved"),
            (&[0x82, 0x01], "short array"),
            (&[0x42, 0x00], "short bytes"),
            (&[0x01, 0x02], "trailing"),
        ] {
            assert!(check(bad).is_err(), "{why}: {bad:02x?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n(0x81, MAX_DEPTH + 2)
            .chain([0x00])
            .collect();
        assert!(check(&deep).is_err(), "nesting");
    }
}
