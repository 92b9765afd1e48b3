//! What a client seals inside an envelope: the message body with the
//! metadata that must be authenticated with it (PROTOCOL §7.1).
//!
//! The server sees none of this; it is the plaintext of the AEAD. Binding
//! the message id and a per-conversation sender sequence into the
//! encryption lets the recipient detect what a server can otherwise do
//! silently: give a new message the id of an old one (so that it is dropped
//! as a duplicate), hold a message back and release it later, or drop it.
//!
//! Encoding: a canonical CBOR map with keys `0` message id (bstr 16), `1`
//! sequence (uint), `2` floor (uint), `3` the sender's clock in ms since
//! the Unix epoch (uint), `4` body (bstr). Decoding accepts only the
//! canonical encoding.

use core::fmt;

use minicbor::{Decode, Encode, Encoder};

use crate::limits::MAX_PLAINTEXT_LEN;
use crate::{DecodeError, MessageId};

/// Bytes the content's fields other than the body take at most.
pub const CONTENT_OVERHEAD: usize = 64;

/// Largest body a client may send in one message.
pub const MAX_BODY_LEN: usize = MAX_PLAINTEXT_LEN - CONTENT_OVERHEAD;

/// A message as sealed by its sender. The body is borrowed: from the
/// sender's text when encoding, from the decrypted plaintext when decoding,
/// so that no copy of it is made here.
#[derive(Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Content<'a> {
    /// The message id; it must equal the id the server delivers it under.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub message_id: MessageId,
    /// The sender device's sequence number in this conversation, from 0,
    /// one more for each message it sends.
    #[n(1)]
    pub seq: u64,
    /// Every sequence number below this one that the recipient has not
    /// received may never have been sent (the sender restarted and could not
    /// know which it had used): they are not reported missing.
    #[n(2)]
    pub floor: u64,
    /// When the sender sealed it (its own clock, ms since the Unix epoch).
    #[n(3)]
    pub sent_at_ms: u64,
    /// The message itself.
    #[b(4)]
    #[cbor(with = "minicbor::bytes")]
    pub body: &'a [u8],
}

impl fmt::Debug for Content<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Content")
            .field("message_id", &crate::frame::Hex(&self.message_id))
            .field("seq", &self.seq)
            .field("floor", &self.floor)
            .field("sent_at_ms", &self.sent_at_ms)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl<'a> Content<'a> {
    /// Writes the canonical encoding to `w` (a zeroizing buffer: the body is
    /// plaintext).
    pub fn encode<W: minicbor::encode::Write>(
        &self,
        w: W,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        Encoder::new(w).encode(self).map(|_| ())
    }

    /// An upper bound of the encoded length.
    pub fn encoded_len_max(&self) -> usize {
        self.body.len() + CONTENT_OVERHEAD
    }

    /// Decodes content borrowing its body from `bytes`, accepting only the
    /// canonical encoding (checked by comparing a re-encoding with the input
    /// as it is produced, without a copy).
    pub fn decode(bytes: &'a [u8]) -> Result<Content<'a>, DecodeError> {
        if bytes.len() > MAX_PLAINTEXT_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let mut d = minicbor::Decoder::new(bytes);
        let content: Content<'a> = d.decode()?;
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - d.position()));
        }
        let mut same = SameAs {
            expected: bytes,
            at: 0,
        };
        if content.encode(&mut same).is_err() || same.at != bytes.len() {
            return Err(DecodeError::NonCanonical);
        }
        Ok(content)
    }
}

/// A writer that only checks that what is written is `expected`, in order.
struct SameAs<'a> {
    expected: &'a [u8],
    at: usize,
}

/// What [`SameAs`] reports when the bytes differ.
#[derive(Debug)]
struct Differs;

impl minicbor::encode::Write for SameAs<'_> {
    type Error = Differs;

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Differs> {
        let end = self.at.checked_add(buf.len()).ok_or(Differs)?;
        if self.expected.get(self.at..end) != Some(buf) {
            return Err(Differs);
        }
        self.at = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn round_trip_worst_case_overhead_and_canonical_only() {
        let body = vec![1; MAX_BODY_LEN];
        let c = Content {
            message_id: [7; 16],
            seq: u64::MAX,
            floor: u64::MAX,
            sent_at_ms: u64::MAX,
            body: &body,
        };
        let mut buf = Vec::new();
        c.encode(&mut buf).unwrap();
        assert!(buf.len() <= c.encoded_len_max() && buf.len() <= MAX_PLAINTEXT_LEN);
        assert_eq!(Content::decode(&buf).unwrap(), c);
        // The same content with a non-shortest integer is refused.
        let small = Content {
            seq: 1,
            body: b"x",
            ..c
        };
        let mut buf = Vec::new();
        small.encode(&mut buf).unwrap();
        let at = buf.iter().position(|&b| b == 0x01).unwrap();
        let mut long = buf[..at].to_vec();
        long.extend_from_slice(&[0x18, 0x01]);
        long.extend_from_slice(&buf[at + 1..]);
        assert!(Content::decode(&long).is_err());
        assert!(Content::decode(&buf[..buf.len() - 1]).is_err());
    }
}
