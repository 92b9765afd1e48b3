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
//! the Unix epoch (uint), `4` body (bstr), and at most one of `5` a
//! delivery receipt, `6` a retry request (PROTOCOL §7.2, §7.3) and `8` a
//! group control (§16.2), which make it a *control* content: empty body, `seq` and `floor` 0, not shown
//! and outside the sequence. Decoding accepts only the canonical encoding.

use core::fmt;

use minicbor::{Decode, Encode, Encoder};

use crate::limits::{MAX_FILE_NAME_LEN, MAX_PLAINTEXT_LEN};
use crate::{DecodeError, MessageId};

/// Bytes the content's fields other than the body take at most.
pub const CONTENT_OVERHEAD: usize = 64;

/// Gaps a receipt lists at most (the oldest are left out beyond it).
pub const MAX_RECEIPT_GAPS: usize = 256;

/// Message ids one retry request names at most.
pub const MAX_RETRY_IDS: usize = 64;

/// What a device received of one sender device's messages in one
/// conversation (PROTOCOL §7.2): every number from `known_from` up to
/// `received_below` except those in `missing` (`[from, to)` ranges,
/// ascending). Nothing is said of numbers below `known_from`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Receipt {
    /// One past the highest sequence number received.
    #[n(0)]
    pub received_below: u64,
    /// Ranges between `known_from` and `received_below` that did not
    /// arrive (including numbers skipped below the sender's floor).
    #[n(1)]
    pub missing: Vec<[u64; 2]>,
    /// Where what the receipt says starts.
    #[n(2)]
    pub known_from: u64,
}

/// Message ids a device could not open (PROTOCOL §7.3): the sender sets up
/// a new session (this request arrives on one) and sends them again.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Retry {
    /// The ids, as the server delivered them.
    #[n(0)]
    pub message_ids: Vec<minicbor::bytes::ByteArray<16>>,
}

/// Largest body a client may send in one message.
pub const MAX_BODY_LEN: usize = MAX_PLAINTEXT_LEN - CONTENT_OVERHEAD;

/// A message as sealed by its sender. The body is borrowed: from the
/// sender's text when encoding, from the decrypted plaintext when decoding,
/// so that no copy of it is made here.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
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
    /// A delivery receipt for the peer's messages (a control content).
    #[n(5)]
    pub receipt: Option<Receipt>,
    /// A request to send these messages again (a control content).
    #[n(6)]
    pub retry: Option<Retry>,
    /// An encrypted file the message carries (PROTOCOL §15); the body is
    /// then its caption, possibly empty.
    #[n(7)]
    pub file: Option<FileRef>,
    /// A group's membership changes and the sender's key for it (PROTOCOL
    /// §16.2), sent over the pairwise session (a control content).
    #[b(8)]
    pub group: Option<GroupControl<'a>>,
}

/// What members send each other over their pairwise sessions about a group
/// (PROTOCOL §16.2): signed membership changes, oldest first (the whole
/// chain from the creation for a member who has none of it), and the
/// sending device's sender key distribution (secret: borrowed from the
/// decrypted plaintext, never copied here). `Debug` shows only counts.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct GroupControl<'a> {
    /// The group.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub group: [u8; 16],
    /// Signed changes (each a `SignedChange` encoding), oldest first.
    #[b(1)]
    pub changes: Vec<&'a minicbor::bytes::ByteSlice>,
    /// The sender's key distribution for the group, if it sends one.
    #[b(2)]
    #[cbor(with = "minicbor::bytes")]
    pub sender_key: Option<&'a [u8]>,
}

impl fmt::Debug for GroupControl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupControl")
            .field("group", &crate::frame::Hex(&self.group))
            .field("changes", &self.changes.len())
            .field("sender_key", &self.sender_key.is_some())
            .finish()
    }
}

impl GroupControl<'_> {
    /// Bytes its encoding takes at most.
    pub fn encoded_len_max(&self) -> usize {
        let changes: usize = self.changes.iter().map(|c| c.len() + 9).sum();
        32 + changes + self.sender_key.map_or(0, |k| k.len() + 9)
    }
}

/// What a recipient needs to fetch and open an encrypted file (PROTOCOL
/// §15): the blob's name on the server, the file's key, its plaintext size
/// and the blob's SHA-256 digest, which name exactly one blob, and the
/// file's name. `Debug` shows only the size.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct FileRef {
    /// The blob on the server.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub blob: crate::frame::BlobId,
    /// The file key.
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub key: [u8; 32],
    /// The plaintext's size in bytes.
    #[n(2)]
    pub size: u64,
    /// SHA-256 of the whole blob.
    #[n(3)]
    #[cbor(with = "minicbor::bytes")]
    pub digest: [u8; 32],
    /// The file's name (UTF-8, no path), at most [`MAX_FILE_NAME_LEN`] bytes.
    #[n(4)]
    pub name: String,
}

impl fmt::Debug for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRef")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The largest file a FileRef may name: 2²⁴ chunks of 64 KiB (PROTOCOL §15).
pub const MAX_FILE_SIZE: u64 = 1 << 40;

impl FileRef {
    /// Bytes its encoding takes at most.
    pub const ENCODED_LEN_MAX: usize = 16 + 32 + 32 + MAX_FILE_NAME_LEN + 32;

    /// Whether its name is one a recipient may save under: 1 to
    /// [`MAX_FILE_NAME_LEN`] bytes, no path separator, no control
    /// character, not `.` or `..`.
    pub fn name_is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_FILE_NAME_LEN
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control())
    }
}

impl fmt::Debug for Content<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Content")
            .field("message_id", &crate::frame::Hex(&self.message_id))
            .field("seq", &self.seq)
            .field("floor", &self.floor)
            .field("sent_at_ms", &self.sent_at_ms)
            .field("body_len", &self.body.len())
            .field("receipt", &self.receipt)
            .field("retry", &self.retry.as_ref().map(|r| r.message_ids.len()))
            .field("file", &self.file)
            .field("group", &self.group)
            .finish()
    }
}

impl<'a> Content<'a> {
    /// A message carrying `body`.
    pub fn message(
        message_id: MessageId,
        seq: u64,
        floor: u64,
        sent_at_ms: u64,
        body: &'a [u8],
    ) -> Self {
        Content {
            message_id,
            seq,
            floor,
            sent_at_ms,
            body,
            receipt: None,
            retry: None,
            file: None,
            group: None,
        }
    }

    /// Whether this is a control content (a receipt, a retry request, or a
    /// group control).
    pub fn is_control(&self) -> bool {
        self.receipt.is_some() || self.retry.is_some() || self.group.is_some()
    }

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
        let receipt = self
            .receipt
            .as_ref()
            .map_or(0, |r| 24 + 20 * r.missing.len());
        let retry = self
            .retry
            .as_ref()
            .map_or(0, |r| 8 + 18 * r.message_ids.len());
        let file = self.file.as_ref().map_or(0, |_| FileRef::ENCODED_LEN_MAX);
        let group = self.group.as_ref().map_or(0, GroupControl::encoded_len_max);
        self.body.len() + CONTENT_OVERHEAD + receipt + retry + file + group
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
        if let Some(file) = &content.file
            && (content.is_control()
                || !FileRef::name_is_valid(&file.name)
                || file.size > MAX_FILE_SIZE)
        {
            return Err(DecodeError::Invalid("malformed file reference"));
        }
        let control_ok = match (&content.receipt, &content.retry) {
            (None, None) => true,
            (Some(_), Some(_)) => false,
            (receipt, retry) => {
                content.body.is_empty()
                    && content.seq == 0
                    && content.floor == 0
                    && receipt.as_ref().is_none_or(Receipt::is_valid)
                    && retry.as_ref().is_none_or(|r| {
                        !r.message_ids.is_empty() && r.message_ids.len() <= MAX_RETRY_IDS
                    })
            }
        };
        if !control_ok {
            return Err(DecodeError::Invalid("malformed receipt or retry request"));
        }
        Ok(content)
    }
}

impl Receipt {
    /// Ranges ascending, non-empty, not overlapping, within `[known_from,
    /// received_below)`, at most [`MAX_RECEIPT_GAPS`].
    fn is_valid(&self) -> bool {
        let mut floor = self.known_from;
        self.known_from <= self.received_below
            && self.missing.len() <= MAX_RECEIPT_GAPS
            && self.missing.iter().all(|&[from, to]| {
                let ok = from >= floor && from < to && to <= self.received_below;
                floor = to;
                ok
            })
    }

    /// Whether `seq` is covered: received, or skipped by the receiver.
    pub fn covers(&self, seq: u64) -> bool {
        (self.known_from..self.received_below).contains(&seq)
            && !self.missing.iter().any(|&[f, t]| (f..t).contains(&seq))
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
        let c = Content::message([7; 16], u64::MAX, u64::MAX, u64::MAX, &body);
        let mut buf = Vec::new();
        c.encode(&mut buf).unwrap();
        assert!(buf.len() <= c.encoded_len_max() && buf.len() <= MAX_PLAINTEXT_LEN);
        assert_eq!(Content::decode(&buf).unwrap(), c);
        // The same content with a non-shortest integer is refused.
        let small = Content {
            seq: 1,
            body: b"x",
            ..c.clone()
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

    fn file(name: &str) -> FileRef {
        FileRef {
            blob: [1; 16],
            key: [2; 32],
            size: MAX_FILE_SIZE,
            digest: [3; 32],
            name: name.into(),
        }
    }

    /// A message carrying a file round-trips at its largest, and shows
    /// neither its key nor its name in `Debug`; a file on a control
    /// content, or a name that is a path, is empty or too long, is refused.
    #[test]
    fn file_references_round_trip_and_their_names_are_plain() {
        let longest = "é".repeat(MAX_FILE_NAME_LEN / 2);
        let body = vec![b'c'; MAX_BODY_LEN - FileRef::ENCODED_LEN_MAX];
        let c = Content {
            file: Some(file(&longest)),
            ..Content::message([7; 16], u64::MAX, u64::MAX, u64::MAX, &body)
        };
        assert!(round_trips(&c));
        let mut buf = Vec::new();
        c.encode(&mut buf).unwrap();
        assert!(buf.len() <= MAX_PLAINTEXT_LEN);
        let shown = format!("{c:?}");
        assert!(!shown.contains('é') && !shown.contains("[2, 2") && !shown.contains("2, 2, 2"));
        let mut huge = Vec::new();
        Content {
            file: Some(FileRef {
                size: MAX_FILE_SIZE + 1,
                ..file("a.png")
            }),
            ..Content::message([7; 16], 0, 0, 0, b"")
        }
        .encode(&mut huge)
        .unwrap();
        assert!(Content::decode(&huge).is_err(), "a size past 2^40");
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "..\\x",
            "a\nb",
            &"x".repeat(MAX_FILE_NAME_LEN + 1),
        ] {
            let mut buf = Vec::new();
            Content {
                file: Some(file(name)),
                ..Content::message([7; 16], 0, 0, 0, b"")
            }
            .encode(&mut buf)
            .unwrap();
            assert!(Content::decode(&buf).is_err(), "{name:?}");
        }
        let receipt = Receipt {
            received_below: 1,
            missing: vec![],
            known_from: 0,
        };
        let mut buf = Vec::new();
        Content {
            file: Some(file("a.png")),
            ..control(Some(receipt), None)
        }
        .encode(&mut buf)
        .unwrap();
        assert!(Content::decode(&buf).is_err());
    }

    fn control(receipt: Option<Receipt>, retry: Option<Retry>) -> Content<'static> {
        Content {
            receipt,
            retry,
            ..Content::message([9; 16], 0, 0, 5, b"")
        }
    }

    fn round_trips(c: &Content<'_>) -> bool {
        let mut buf = Vec::new();
        c.encode(&mut buf).unwrap();
        buf.len() <= c.encoded_len_max() && Content::decode(&buf).as_ref() == Ok(c)
    }

    /// Receipts and retry requests round-trip at their largest; anything
    /// that breaks their rules (both at once, a body, a sequence number,
    /// unordered or overlapping gaps, a gap past what was received, too
    /// many entries) is refused.
    #[test]
    fn control_contents_follow_their_rules() {
        let gaps: Vec<[u64; 2]> = (0..MAX_RECEIPT_GAPS as u64)
            .map(|i| [u64::MAX / 2 + 3 * i, u64::MAX / 2 + 3 * i + 2])
            .collect();
        let receipt = Receipt {
            received_below: u64::MAX,
            missing: gaps.clone(),
            known_from: 1,
        };
        assert!(round_trips(&control(Some(receipt.clone()), None)));
        let ids = Retry {
            message_ids: vec![[3; 16].into(); MAX_RETRY_IDS],
        };
        assert!(round_trips(&control(None, Some(ids.clone()))));
        assert!(receipt.covers(1) && !receipt.covers(0) && !receipt.covers(u64::MAX / 2 + 1));
        assert!(receipt.covers(u64::MAX / 2 + 2) && !receipt.covers(u64::MAX));

        let bad = |c: Content<'_>| {
            let mut buf = Vec::new();
            c.encode(&mut buf).unwrap();
            Content::decode(&buf).is_err()
        };
        assert!(bad(control(Some(receipt.clone()), Some(ids.clone()))));
        assert!(bad(Content {
            body: b"x",
            ..control(Some(receipt.clone()), None)
        }));
        assert!(bad(Content {
            seq: 1,
            ..control(None, Some(ids.clone()))
        }));
        assert!(bad(control(
            None,
            Some(Retry {
                message_ids: vec![]
            })
        )));
        assert!(bad(control(
            None,
            Some(Retry {
                message_ids: vec![[3; 16].into(); MAX_RETRY_IDS + 1]
            })
        )));
        // Adjacent ranges (a skipped run, then a gap) are fine.
        let adjacent = Receipt {
            received_below: 10,
            missing: vec![[2, 5], [5, 6]],
            known_from: 0,
        };
        assert!(round_trips(&control(Some(adjacent), None)));
        for missing in [
            vec![[5, 7], [2, 3]],
            vec![[2, 5], [4, 6]],
            vec![[3, 3]],
            vec![[3, 11]],
            vec![[0, 1]; MAX_RECEIPT_GAPS + 1],
        ] {
            let r = Receipt {
                received_below: 10,
                missing,
                known_from: 0,
            };
            assert!(bad(control(Some(r), None)));
        }
        for (known_from, missing) in [(11, vec![]), (4, vec![[3, 5]])] {
            let r = Receipt {
                received_below: 10,
                missing,
                known_from,
            };
            assert!(bad(control(Some(r), None)));
        }
    }
}
