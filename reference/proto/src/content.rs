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

/// A message as sealed by its sender.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Content {
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
    #[n(4)]
    #[cbor(with = "minicbor::bytes")]
    pub body: Vec<u8>,
}

impl fmt::Debug for Content {
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

impl Content {
    /// Appends the canonical encoding to `buf` (pass a zeroizing buffer
    /// with room for [`Content::encoded_len_max`] bytes: the body is
    /// plaintext).
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        let result = Encoder::new(buf).encode(self).map(|_| ());
        // Writing to a Vec cannot fail.
        debug_assert!(result.is_ok());
    }

    /// An upper bound of the encoded length.
    pub fn encoded_len_max(&self) -> usize {
        self.body.len() + CONTENT_OVERHEAD
    }

    /// Decodes content, accepting only its canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Content, DecodeError> {
        if bytes.len() > MAX_PLAINTEXT_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let mut d = minicbor::Decoder::new(bytes);
        let content: Content = d.decode()?;
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - d.position()));
        }
        let mut again = Vec::with_capacity(bytes.len());
        content.encode_into(&mut again);
        if again != bytes {
            return Err(DecodeError::NonCanonical);
        }
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn round_trip_worst_case_overhead_and_canonical_only() {
        let c = Content {
            message_id: [7; 16],
            seq: u64::MAX,
            floor: u64::MAX,
            sent_at_ms: u64::MAX,
            body: vec![1; MAX_BODY_LEN],
        };
        let mut buf = Vec::new();
        c.encode_into(&mut buf);
        assert!(buf.len() <= c.encoded_len_max() && buf.len() <= MAX_PLAINTEXT_LEN);
        assert_eq!(Content::decode(&buf).unwrap(), c);
        // The same content with a non-shortest integer is refused.
        let small = Content {
            seq: 1,
            body: b"x".to_vec(),
            ..c
        };
        let mut buf = Vec::new();
        small.encode_into(&mut buf);
        let at = buf.iter().position(|&b| b == 0x01).unwrap();
        let mut long = buf[..at].to_vec();
        long.extend_from_slice(&[0x18, 0x01]);
        long.extend_from_slice(&buf[at + 1..]);
        assert!(Content::decode(&long).is_err());
        assert!(Content::decode(&buf[..buf.len() - 1]).is_err());
    }
}
