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

use std::collections::VecDeque;

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
        // never have been sent: skip them without reporting.
        if floor > self.expected && seq >= floor {
            self.expected = floor;
        }
        if seq >= self.expected {
            if seq > self.expected {
                self.gaps.push_back(Gap {
                    from: self.expected,
                    to: seq,
                    noticed_ms: now_ms,
                    reported: false,
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
            if let Some(g) = self.gaps.remove(i)
                && !g.reported
            {
                self.forgotten = self.forgotten.saturating_add(g.len());
            }
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
        self.gaps.iter().map(Gap::len).sum::<u64>() + self.forgotten
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
}
