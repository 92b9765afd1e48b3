//! Authenticated delivery: the sender's per-conversation sequence numbers,
//! and the recipient's view of them (PROTOCOL §7.1).
//!
//! ```text
//!  sender (one device, one conversation)        recipient, per sender device
//!  next ──seal──▶ Content { seq, floor } ──▶    expected: 0 1 2 _ 4      (3 missing since t)
//!  reserved: saved ahead, like sends (§13.1)    3 arrives: late by 1 message, (now - t)
//!  restored: next = floor = reserved            floor 70 > expected: 5..70 unknown, not missing
//! ```
//!
//! A gap is a run of sequence numbers the recipient has not received while
//! a later one arrived; after a grace period it is reported ("2 messages
//! from bob are missing"). A number below the sender's `floor` is never
//! reported: after a restart the sender cannot know which numbers of its
//! reservation it used.
//!
//! The recipient's device tells the sender what it received with an
//! encrypted receipt ([`RecvSeq::receipt`], PROTOCOL §7.2); the sender keeps
//! each message the server stored in an [`Outbox`] until a receipt covers
//! it, and reports it undelivered after a grace period.
//!
//! ```text
//!  sender                     server                   recipient
//!  Outbox += seq 7 ◀─SendOk── stored ──Deliver──▶      RecvSeq: 0..8 received
//!  Outbox -= 0..8  ◀──────── Receipt { received_below 8, missing [] } (sealed)
//! ```

use std::collections::{BTreeMap, VecDeque};

use chatify_proto::MessageId;
use chatify_proto::content::{MAX_RECEIPT_GAPS, Receipt};
use zeroize::Zeroizing;

/// Sequence numbers a save reserves ahead for a conversation (they are not
/// bounded by the peer, so every save may reserve).
pub const SEQ_RESERVATION: u64 = 64;

/// Gaps remembered per sender device. Past it, the oldest gap already
/// reported is forgotten; if none is, the oldest is, and the messages it
/// spans are still reported ([`RecvSeq::forgotten`]).
pub const MAX_GAPS: usize = 256;

/// The sending side of one conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSeq {
    /// The next sequence number to use.
    pub next: u64,
    /// The lowest number this lifetime may use (numbers below it, not
    /// received by the peer, may never have been sent).
    pub floor: u64,
    /// Numbers below this are covered by a durable save.
    pub reserved: u64,
}

impl SendSeq {
    /// Restored from a save that held `saved`: this lifetime starts past
    /// every number the last one may have used.
    pub fn restored(saved: u64) -> Self {
        SendSeq {
            next: saved,
            floor: saved,
            reserved: saved,
        }
    }

    /// What a save writes: the reservation extended when less than half of
    /// it is left.
    pub fn to_save(&self) -> u64 {
        if self.reserved >= self.next + SEQ_RESERVATION / 2 {
            self.reserved
        } else {
            self.next + SEQ_RESERVATION
        }
    }

    /// The next number, if a durable save covers it.
    pub fn take(&mut self) -> Option<(u64, u64)> {
        (self.next < self.reserved).then(|| {
            let seq = self.next;
            self.next += 1;
            (seq, self.floor)
        })
    }
}

/// A run of sequence numbers not received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First missing number.
    pub from: u64,
    /// One past the last missing number.
    pub to: u64,
    /// When the gap was noticed (ms since the Unix epoch).
    pub noticed_ms: u64,
    /// Already reported to the user.
    pub reported: bool,
    /// Skipped below the sender's floor (it may never have sent them): not
    /// received, but never reported missing.
    pub skipped: bool,
}

impl Gap {
    /// How many messages it spans.
    pub fn len(&self) -> u64 {
        self.to - self.from
    }

    /// Whether it spans nothing.
    pub fn is_empty(&self) -> bool {
        self.to <= self.from
    }
}

/// The receiving side: one sender device in one conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecvSeq {
    /// The next number expected.
    pub expected: u64,
    /// Numbers not received below `expected`, oldest first.
    pub gaps: VecDeque<Gap>,
    /// Messages of gaps forgotten before they were reported (a server
    /// opening more than [`MAX_GAPS`] gaps within a grace period): reported
    /// by the next [`RecvSeq::overdue`].
    pub forgotten: u64,
    /// Below this, gaps may have been forgotten: a receipt says nothing of
    /// these numbers.
    pub known_from: u64,
}

/// How a sequence number fits what was received before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one, or past a gap (the gap is recorded).
    InOrder,
    /// One that was missing: it arrives after `behind` later messages and
    /// `waited_ms` after the gap was noticed.
    Late {
        /// Later messages that arrived before it.
        behind: u64,
        /// Since the gap was noticed.
        waited_ms: u64,
    },
    /// Already received (a sender never uses a number twice).
    Duplicate,
}

impl RecvSeq {
    /// Records the arrival of `seq` with the sender's `floor` at `now_ms`.
    pub fn arrive(&mut self, seq: u64, floor: u64, now_ms: u64) -> Arrival {
        // Numbers between what we expected and the sender's floor may
        // never have been sent: skip them without reporting (but remember
        // them, so that no receipt says they arrived).
        if floor > self.expected && seq >= floor {
            self.gaps.push_back(Gap {
                from: self.expected,
                to: floor,
                noticed_ms: now_ms,
                reported: true,
                skipped: true,
            });
            self.expected = floor;
            self.bound();
        }
        if seq >= self.expected {
            if seq > self.expected {
                self.gaps.push_back(Gap {
                    from: self.expected,
                    to: seq,
                    noticed_ms: now_ms,
                    reported: false,
                    skipped: false,
                });
                self.bound();
            }
            self.expected = seq + 1;
            return Arrival::InOrder;
        }
        let Some(i) = self.gaps.iter().position(|g| g.from <= seq && seq < g.to) else {
            return Arrival::Duplicate;
        };
        let Some(gap) = self.gaps.get(i).copied() else {
            return Arrival::Duplicate;
        };
        let behind = self.expected - 1 - seq;
        let waited_ms = now_ms.saturating_sub(gap.noticed_ms);
        let before = Gap { to: seq, ..gap };
        let after = Gap {
            from: seq + 1,
            ..gap
        };
        self.gaps.remove(i);
        for part in [before, after] {
            if !part.is_empty() {
                self.gaps.push_back(part);
            }
        }
        self.gaps.make_contiguous().sort_by_key(|g| g.from);
        self.bound();
        Arrival::Late { behind, waited_ms }
    }

    /// Keeps at most [`MAX_GAPS`] gaps, forgetting reported ones first and
    /// counting the messages of unreported ones it has to forget.
    fn bound(&mut self) {
        while self.gaps.len() > MAX_GAPS {
            let i = self.gaps.iter().position(|g| g.reported).unwrap_or(0);
            if let Some(g) = self.gaps.remove(i) {
                if !g.reported {
                    self.forgotten = self.forgotten.saturating_add(g.len());
                }
                self.known_from = self.known_from.max(g.to);
            }
        }
    }

    /// What this device received, as a receipt for the sender (PROTOCOL
    /// §7.2): the newest [`MAX_RECEIPT_GAPS`] gaps at most, skipped ones
    /// included.
    pub fn receipt(&self) -> Receipt {
        let listed: Vec<&Gap> = self
            .gaps
            .iter()
            .filter(|g| g.to > self.known_from)
            .collect();
        let start = listed.len().saturating_sub(MAX_RECEIPT_GAPS);
        let listed = listed.get(start..).unwrap_or_default();
        let mut known_from = self.known_from;
        if start > 0
            && let Some(first) = listed.first()
        {
            known_from = known_from.max(first.from);
        }
        Receipt {
            received_below: self.expected,
            missing: listed
                .iter()
                .map(|g| [g.from.max(known_from), g.to])
                .filter(|[f, t]| f < t)
                .collect(),
            known_from,
        }
    }

    /// Gaps noticed at least `grace_ms` before `now_ms` and not reported
    /// yet, and forgotten ones: marks them reported and returns how many
    /// messages they span.
    pub fn overdue(&mut self, now_ms: u64, grace_ms: u64) -> u64 {
        let mut missing = std::mem::take(&mut self.forgotten);
        for gap in &mut self.gaps {
            if !gap.reported && now_ms.saturating_sub(gap.noticed_ms) >= grace_ms {
                gap.reported = true;
                missing += gap.len();
            }
        }
        missing
    }

    /// Messages missing now (reported or not, forgotten included).
    pub fn missing(&self) -> u64 {
        self.gaps
            .iter()
            .filter(|g| !g.skipped)
            .map(Gap::len)
            .sum::<u64>()
            + self.forgotten
    }
}

/// Messages the server stored for one recipient device and that no receipt
/// has covered yet, by sequence number, kept at most.
pub const MAX_PENDING: usize = 1024;

/// A sent message awaiting the recipient device's receipt.
#[derive(Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its id.
    pub message_id: MessageId,
    /// The floor it was sealed with.
    pub floor: u64,
    /// When it was sealed (the sender's clock, ms).
    pub sealed_at_ms: u64,
    /// When the server stored it (ms).
    pub stored_at_ms: u64,
    /// Already reported undelivered.
    pub reported: bool,
    /// The text, kept to send it again if the recipient cannot open it
    /// (PROTOCOL §7.3); dropped when the client's budget for kept texts is
    /// spent.
    pub text: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("stored_at_ms", &self.stored_at_ms)
            .field("reported", &self.reported)
            .field("text_kept", &self.text.is_some())
            .finish_non_exhaustive()
    }
}

/// The sending side's view of one recipient device in one conversation:
/// what was stored and not yet receipted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbox {
    /// By sequence number.
    pub pending: BTreeMap<u64, Pending>,
    /// Messages dropped from `pending` past [`MAX_PENDING`] before they
    /// were reported: reported undelivered by the next
    /// [`Outbox::overdue`].
    pub evicted: u64,
}

impl Outbox {
    /// Records a message the server stored.
    pub fn stored(&mut self, seq: u64, pending: Pending) {
        self.pending.insert(seq, pending);
        while self.pending.len() > MAX_PENDING {
            if let Some((_, p)) = self.pending.pop_first()
                && !p.reported
            {
                self.evicted += 1;
            }
        }
    }

    /// Removes what `receipt` covers; returns their ids.
    pub fn receipt(&mut self, receipt: &Receipt) -> Vec<MessageId> {
        let covered: Vec<u64> = self
            .pending
            .range(receipt.known_from..receipt.received_below)
            .map(|(seq, _)| *seq)
            .filter(|seq| receipt.covers(*seq))
            .collect();
        covered
            .iter()
            .filter_map(|seq| self.pending.remove(seq))
            .map(|p| p.message_id)
            .collect()
    }

    /// Messages stored at least `grace_ms` before `now_ms`, not receipted
    /// and not reported yet: marks them reported; returns their ids and the
    /// number evicted unreported.
    pub fn overdue(&mut self, now_ms: u64, grace_ms: u64) -> (Vec<MessageId>, u64) {
        let mut ids = Vec::new();
        for p in self.pending.values_mut() {
            if !p.reported && now_ms.saturating_sub(p.stored_at_ms) >= grace_ms {
                p.reported = true;
                ids.push(p.message_id);
            }
        }
        (ids, std::mem::take(&mut self.evicted))
    }

    /// The sequence number of a pending message.
    pub fn find(&self, message_id: &MessageId) -> Option<u64> {
        self.pending
            .iter()
            .find(|(_, p)| p.message_id == *message_id)
            .map(|(seq, _)| *seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_gap_late_and_duplicate() {
        let mut r = RecvSeq::default();
        assert_eq!(r.arrive(0, 0, 10), Arrival::InOrder);
        assert_eq!(r.arrive(1, 0, 10), Arrival::InOrder);
        assert_eq!(r.arrive(4, 0, 20), Arrival::InOrder);
        assert_eq!(r.missing(), 2);
        assert_eq!(r.overdue(25, 10), 0, "within the grace period");
        assert_eq!(r.overdue(30, 10), 2);
        assert_eq!(r.overdue(40, 10), 0, "reported once");
        assert_eq!(
            r.arrive(2, 0, 50),
            Arrival::Late {
                behind: 2,
                waited_ms: 30
            }
        );
        assert_eq!(r.missing(), 1);
        assert_eq!(r.arrive(2, 0, 50), Arrival::Duplicate);
        assert_eq!(r.arrive(4, 0, 50), Arrival::Duplicate);
        assert_eq!(
            r.arrive(3, 0, 60),
            Arrival::Late {
                behind: 1,
                waited_ms: 40
            }
        );
        assert_eq!(r.missing(), 0);
    }

    #[test]
    fn numbers_below_a_restarted_senders_floor_are_not_missing() {
        let mut r = RecvSeq::default();
        r.arrive(0, 0, 0);
        r.arrive(1, 0, 0);
        // The sender restarted with its reservation at 64: 2..64 may never
        // have been sent.
        assert_eq!(r.arrive(64, 64, 5), Arrival::InOrder);
        assert_eq!(r.missing(), 0);
        // A gap after the floor still counts.
        r.arrive(66, 64, 6);
        assert_eq!(r.missing(), 1);
    }

    /// A server that drops every other message opens a gap per message:
    /// past the bound, gaps are forgotten, but every dropped message is
    /// still reported, once.
    #[test]
    fn a_flood_of_gaps_is_bounded_and_still_fully_reported() {
        let mut r = RecvSeq::default();
        let dropped = 3 * MAX_GAPS as u64;
        for i in 0..=dropped {
            r.arrive(2 * i, 0, 0);
        }
        assert!(r.gaps.len() <= MAX_GAPS);
        assert_eq!(r.missing(), dropped);
        assert_eq!(r.overdue(10, 10), dropped);
        assert_eq!(r.overdue(20, 10), 0);
        // Reported gaps are forgotten before unreported ones.
        r.arrive(2 * dropped + 2, 0, 20);
        r.arrive(2 * dropped + 4, 0, 20);
        assert!(r.gaps.iter().any(|g| !g.reported));
        assert_eq!(r.overdue(30, 10), 2);
    }

    #[test]
    fn a_senders_reservation_covers_its_numbers_and_restores_past_them() {
        let mut s = SendSeq::default();
        assert_eq!(s.take(), None, "nothing is covered before a save");
        s.reserved = s.to_save();
        assert_eq!(s.take(), Some((0, 0)));
        assert_eq!(s.to_save(), SEQ_RESERVATION, "more than half left");
        let saved = s.to_save();
        let mut restored = SendSeq::restored(saved);
        assert_eq!(restored.take(), None);
        restored.reserved = restored.to_save();
        assert_eq!(restored.take(), Some((saved, saved)));
    }

    fn pending(id: u8, stored_at_ms: u64) -> Pending {
        Pending {
            message_id: [id; 16],
            floor: 0,
            sealed_at_ms: 0,
            stored_at_ms,
            reported: false,
            text: None,
        }
    }

    /// A receipt covers what arrived, never a gap nor a number skipped below
    /// a restarted sender's floor; the outbox keeps exactly what is not
    /// covered, reports it once after the grace period, and lets a later
    /// receipt cover a message that arrived late.
    #[test]
    fn receipts_cover_what_arrived_and_the_outbox_reports_the_rest() {
        let mut r = RecvSeq::default();
        for seq in [0, 1, 3] {
            r.arrive(seq, 0, 0);
        }
        // The sender restarted with its floor at 10: 4..10 are skipped,
        // not missing, and not received either.
        r.arrive(10, 10, 0);
        assert_eq!(r.missing(), 1);
        let mut out = Outbox::default();
        for seq in 0..=10u8 {
            out.stored(u64::from(seq), pending(seq, 100));
        }
        let delivered = out.receipt(&r.receipt());
        assert_eq!(delivered, vec![[0; 16], [1; 16], [3; 16], [10; 16]]);
        let left: Vec<u64> = out.pending.keys().copied().collect();
        assert_eq!(left, vec![2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(
            out.overdue(150, 100),
            (vec![], 0),
            "within the grace period"
        );
        assert_eq!(out.overdue(200, 100).0.len(), 7);
        assert_eq!(out.overdue(300, 100), (vec![], 0), "reported once");
        assert!(matches!(r.arrive(2, 0, 0), Arrival::Late { .. }));
        assert_eq!(out.receipt(&r.receipt()), vec![[2; 16]]);
        assert_eq!(out.find(&[9; 16]), Some(9));
    }

    /// Past the bound of gaps kept, a receipt says nothing of what the
    /// forgotten gaps spanned (it does not claim them received); past the
    /// bound of pending messages, the evicted ones are still reported.
    #[test]
    fn bounds_never_turn_into_false_receipts_or_silence() {
        let mut r = RecvSeq::default();
        let n = MAX_GAPS as u64 + 10;
        for i in 0..=n {
            r.arrive(2 * i, 0, 0);
        }
        let receipt = r.receipt();
        assert!(receipt.known_from > 0);
        for i in 0..n {
            assert!(!receipt.covers(2 * i + 1), "{i}");
        }
        assert!(receipt.covers(2 * n));
        let mut out = Outbox::default();
        for seq in 0..MAX_PENDING as u64 + 5 {
            out.stored(seq, pending(1, 0));
        }
        assert_eq!(out.pending.len(), MAX_PENDING);
        let (ids, evicted) = out.overdue(0, 0);
        assert_eq!((ids.len(), evicted), (MAX_PENDING, 5));
    }

    proptest::proptest! {
        /// Whatever arrives in whatever order, with whatever floors, the
        /// receipt is valid (it encodes and decodes as a control content),
        /// says nothing false (it never covers a number that did not
        /// arrive), and covers every number that arrived at or above its
        /// `known_from`.
        #[test]
        fn every_receipt_is_valid_and_true(
            arrivals in proptest::collection::vec((0u64..3, 0u64..60), 1..400),
        ) {
            let mut r = RecvSeq::default();
            let mut arrived = std::collections::BTreeSet::new();
            let mut floor = 0;
            for (raise, offset) in arrivals {
                if raise == 0 && offset % 7 == 0 {
                    floor += offset;
                }
                let seq = floor + offset;
                if r.arrive(seq, floor, 0) != Arrival::Duplicate {
                    arrived.insert(seq);
                }
            }
            let receipt = r.receipt();
            let content = chatify_proto::Content {
                receipt: Some(receipt.clone()),
                ..chatify_proto::Content::message([1; 16], 0, 0, 0, b"")
            };
            let mut buf = Vec::new();
            content.encode(&mut buf).unwrap();
            proptest::prop_assert_eq!(chatify_proto::Content::decode(&buf).unwrap(), content);
            for seq in 0..receipt.received_below + 5 {
                let covered = receipt.covers(seq);
                proptest::prop_assert!(!covered || arrived.contains(&seq), "{} covered, never arrived", seq);
                if seq >= receipt.known_from && arrived.contains(&seq) {
                    proptest::prop_assert!(covered, "{} arrived, not covered", seq);
                }
            }
        }
    }
}
