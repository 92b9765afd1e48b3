//! The records of `state.cbor` and of the message log, as minicbor-derived
//! CBOR arrays (docs/PROTOCOL.md §13 lists the fields). They borrow: from
//! the live state when a file is written, so no secret is copied, and from
//! the opened plaintext when it is read.
//!
//! Older versions wrote shorter arrays; their fields decode as absent
//! (`Option`), and [`State::decode`](crate::state::State::decode) fills in
//! what a newer version keeps. The one record whose layout changed inside
//! (a pin, once per device, now per user) is decoded by hand.

use minicbor::bytes::ByteSlice;
use minicbor::decode::{self, Decoder};
use minicbor::encode::{self, Encoder, Write};
use minicbor::{Decode, Encode};

/// A value written as CBOR null when absent, also as the last element of
/// an array (a derived array leaves a trailing `None` out, which would
/// change the files' bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Nullable<T>(pub(crate) Option<T>);

impl<C, T: Encode<C>> Encode<C> for Nullable<T> {
    fn encode<W: Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), encode::Error<W::Error>> {
        match &self.0 {
            Some(v) => v.encode(e, ctx),
            None => {
                e.null()?;
                Ok(())
            }
        }
    }
}

impl<'b, C, T: Decode<'b, C>> Decode<'b, C> for Nullable<T> {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> Result<Self, decode::Error> {
        Ok(Nullable(Option::<T>::decode(d, ctx)?))
    }

    fn nil() -> Option<Self> {
        Some(Nullable(None))
    }
}

/// `state.cbor`'s plaintext: `[version, server, user, device number,
/// token | null, device, [peer sessions…], [pins…], [send seqs…],
/// [receive seqs…], [outboxes…], [control ids…]]`. Files written before
/// authenticated delivery end after the pins (8 fields), before receipts
/// after the receive sequences (10), before control ids after the outboxes
/// (11).
#[derive(Encode, Decode)]
pub(crate) struct StateRecord<'a> {
    #[n(0)]
    pub(crate) version: u64,
    #[b(1)]
    pub(crate) server: &'a str,
    #[b(2)]
    pub(crate) user: &'a str,
    #[n(3)]
    pub(crate) device_number: u32,
    #[b(4)]
    pub(crate) token: Option<&'a ByteSlice>,
    #[b(5)]
    pub(crate) device: &'a ByteSlice,
    #[b(6)]
    pub(crate) sessions: Vec<PeerSessions<'a>>,
    #[b(7)]
    pub(crate) pins: Vec<PinRecord<'a>>,
    #[b(8)]
    pub(crate) send_seqs: Option<Vec<SendSeqRecord<'a>>>,
    #[b(9)]
    pub(crate) recv_seqs: Option<Vec<RecvSeqRecord<'a>>>,
    #[b(10)]
    pub(crate) outbox: Option<Vec<OutboxRecord<'a>>>,
    #[b(11)]
    pub(crate) control_ids: Option<Vec<&'a ByteSlice>>,
}

/// `[user, device, [session…]]`: a peer device's sessions, the active one
/// first, each as the core serialized it.
#[derive(Encode, Decode)]
pub(crate) struct PeerSessions<'a> {
    #[b(0)]
    pub(crate) user: &'a str,
    #[n(1)]
    pub(crate) device: u32,
    #[b(2)]
    pub(crate) sessions: Vec<&'a ByteSlice>,
}

/// `[user, identity, verified, changed_to | null]`. Versions that pinned
/// each device wrote `[user, device, identity, verified, changed_to |
/// null(, unconfirmed)]`; such a record decodes without its device.
pub(crate) struct PinRecord<'a> {
    pub(crate) user: &'a str,
    pub(crate) identity: &'a ByteSlice,
    pub(crate) verified: bool,
    pub(crate) changed_to: Option<&'a ByteSlice>,
}

impl<C> Encode<C> for PinRecord<'_> {
    fn encode<W: Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), encode::Error<W::Error>> {
        e.array(4)?
            .str(self.user)?
            .bytes(self.identity)?
            .bool(self.verified)?;
        Nullable(self.changed_to).encode(e, ctx)
    }
}

impl<'b, C> Decode<'b, C> for PinRecord<'b> {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, decode::Error> {
        let fields = d.array()?;
        let user = d.str()?;
        if fields != Some(4) {
            d.u32()?;
        }
        let identity: &ByteSlice = d.bytes()?.into();
        let verified = d.bool()?;
        let changed_to = Option::<&ByteSlice>::decode(d, &mut ())?;
        if fields == Some(6) {
            d.bool()?;
        }
        Ok(PinRecord {
            user,
            identity,
            verified,
            changed_to,
        })
    }
}

/// `[conversation, saved]`: the sequence number a save reserved up to.
#[derive(Encode, Decode)]
pub(crate) struct SendSeqRecord<'a> {
    #[b(0)]
    pub(crate) conversation: &'a ByteSlice,
    #[n(1)]
    pub(crate) saved: u64,
}

/// `[conversation, user, device, identity key, expected, forgotten,
/// [gaps…], known_from]` (entries written before receipts end after the
/// gaps).
#[derive(Encode, Decode)]
pub(crate) struct RecvSeqRecord<'a> {
    #[b(0)]
    pub(crate) conversation: &'a ByteSlice,
    #[b(1)]
    pub(crate) user: &'a str,
    #[n(2)]
    pub(crate) device: u32,
    #[b(3)]
    pub(crate) identity: &'a ByteSlice,
    #[n(4)]
    pub(crate) expected: u64,
    #[n(5)]
    pub(crate) forgotten: u64,
    #[n(6)]
    pub(crate) gaps: Vec<GapRecord>,
    #[n(7)]
    pub(crate) known_from: Option<u64>,
}

/// `[from, to, noticed_ms, reported, skipped]` (gaps written before skipped
/// ranges were kept end after `reported`).
#[derive(Encode, Decode)]
pub(crate) struct GapRecord {
    #[n(0)]
    pub(crate) from: u64,
    #[n(1)]
    pub(crate) to: u64,
    #[n(2)]
    pub(crate) noticed_ms: u64,
    #[n(3)]
    pub(crate) reported: bool,
    #[n(4)]
    pub(crate) skipped: Option<bool>,
}

/// `[conversation, user, device, evicted, [pending…]]`.
#[derive(Encode, Decode)]
pub(crate) struct OutboxRecord<'a> {
    #[b(0)]
    pub(crate) conversation: &'a ByteSlice,
    #[b(1)]
    pub(crate) user: &'a str,
    #[n(2)]
    pub(crate) device: u32,
    #[n(3)]
    pub(crate) evicted: u64,
    #[b(4)]
    pub(crate) pending: Vec<PendingRecord<'a>>,
}

/// `[seq, message id, floor, sealed_at_ms, stored_at_ms, reported, text |
/// null]`.
#[derive(Encode, Decode)]
pub(crate) struct PendingRecord<'a> {
    #[n(0)]
    pub(crate) seq: u64,
    #[b(1)]
    pub(crate) message_id: &'a ByteSlice,
    #[n(2)]
    pub(crate) floor: u64,
    #[n(3)]
    pub(crate) sealed_at_ms: u64,
    #[n(4)]
    pub(crate) stored_at_ms: u64,
    #[n(5)]
    pub(crate) reported: bool,
    #[b(6)]
    pub(crate) text: Nullable<&'a ByteSlice>,
}

/// A message log record's plaintext: `[user, device, sent_at_ms,
/// message_id, text]` (what versions before encryption at rest wrote in
/// the clear).
#[derive(Encode, Decode)]
pub(crate) struct MessageRecord<'a> {
    #[b(0)]
    pub(crate) user: &'a str,
    #[n(1)]
    pub(crate) device: u32,
    #[n(2)]
    pub(crate) sent_at_ms: u64,
    #[b(3)]
    pub(crate) message_id: &'a ByteSlice,
    #[b(4)]
    pub(crate) text: &'a ByteSlice,
    /// Absent in records written before files, and for messages without
    /// one (a trailing absent field is left out, so such records keep
    /// their bytes).
    #[n(5)]
    pub(crate) file: Option<chatify_proto::content::FileRef>,
    /// The group of a group message (absent in older records and for
    /// pairwise messages).
    #[n(6)]
    pub(crate) group: Option<minicbor::bytes::ByteArray<16>>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A trailing absent value is written as null, as the files always had
    /// it; a plain `Option` would leave it out.
    #[test]
    fn a_trailing_absent_value_is_written_as_null() {
        #[derive(Encode, Decode)]
        struct Plain {
            #[n(0)]
            a: u8,
            #[n(1)]
            b: Option<u8>,
        }
        #[derive(Encode, Decode)]
        struct Kept {
            #[n(0)]
            a: u8,
            #[n(1)]
            b: Nullable<u8>,
        }
        let plain = minicbor::to_vec(Plain { a: 1, b: None }).unwrap();
        let kept = minicbor::to_vec(Kept {
            a: 1,
            b: Nullable(None),
        })
        .unwrap();
        assert_eq!(plain, [0x81, 0x01], "the derive's own behaviour changed");
        assert_eq!(kept, [0x82, 0x01, 0xf6]);
        let back: Kept = minicbor::decode(&kept).unwrap();
        assert_eq!(back.b, Nullable(None));
        let short: Kept = minicbor::decode(&plain).unwrap();
        assert_eq!(short.b, Nullable(None), "a missing value decodes as absent");
    }
}
