//! Blobs: encrypted files, opaque to the server (PROTOCOL §15), stored in
//! parts of [`BLOB_PART_LEN`] bytes beside the mailbox.
//!
//! ```text
//!  BlobCreate{size} ──▶ row (owner device, size, received 0, owner holds)
//!  BlobPut{part i}  ──▶ part i, only the next one; received += len
//!  BlobGrant{to}    ──▶ a hold per granted device (complete blobs only)
//!  BlobGet{part i}  ◀── the owner or a granted device, complete blobs only
//!  BlobRelease      ──▶ drops the caller's hold; no hold left: deleted
//!  expiry           ──▶ an upload idle for a day, a blob past retention
//! ```
//!
//! A blob counts against its owner's account quota from creation until it
//! is deleted. Only parts are ever read or written, so a request never
//! holds more than one part in memory, whatever the blob's size.

use chatify_proto::frame::{Address, BlobId};
use chatify_proto::limits::BLOB_PART_LEN;

use super::StoreError;

/// A blob's size and the bytes held (from the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// Size in bytes, as created.
    pub size: u64,
    /// Bytes received so far; equal to `size` once complete.
    pub received: u64,
}

impl BlobInfo {
    /// Whether every byte has been received.
    pub fn complete(&self) -> bool {
        self.received == self.size
    }

    /// Parts received so far.
    pub fn parts_received(&self) -> u64 {
        self.received.div_ceil(BLOB_PART_LEN as u64)
    }

    /// The length part `part` must have, or `None` past the last part.
    pub fn part_len(&self, part: u32) -> Option<usize> {
        let start = u64::from(part).checked_mul(BLOB_PART_LEN as u64)?;
        let left = self.size.checked_sub(start).filter(|&l| l > 0)?;
        Some(usize::try_from(left.min(BLOB_PART_LEN as u64)).unwrap_or(BLOB_PART_LEN))
    }

    /// What a put of part `part`, `len` bytes long, does to a blob in this
    /// state.
    pub fn put(&self, part: u32, len: usize) -> PutPlan {
        if u64::from(part) < self.parts_received() {
            PutPlan::Held
        } else if u64::from(part) == self.parts_received() && self.part_len(part) == Some(len) {
            PutPlan::Write
        } else {
            PutPlan::Refuse
        }
    }
}

/// What [`BlobInfo::put`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutPlan {
    /// The part is already held: answer with the state, write nothing.
    Held,
    /// The next part, of the right length: write it.
    Write,
    /// Not the next part, or not its length.
    Refuse,
}

/// What a [`Blobs::blob_put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPutOutcome {
    /// The part is held (written now, or before); the blob's state after it.
    Stored(BlobInfo),
    /// Not the next part or not its length; the blob's state.
    Refused(BlobInfo),
    /// No such blob, or the caller did not create it (or released it).
    NotFound,
}

/// What a [`Blobs::blob_grant`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobGrantOutcome {
    /// Every device named holds the blob.
    Granted,
    /// The upload is not complete.
    Incomplete,
    /// No such blob, or the caller did not create it (or released it).
    NotFound,
}

/// When a blob expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobExpiry {
    /// For an upload that is not complete: a day after its last part, say.
    pub idle_ms: u64,
    /// For a complete blob: the server's retention after its last part.
    pub complete_ms: u64,
}

impl BlobExpiry {
    /// The expiry of a blob in state `info`.
    pub fn of(&self, info: &BlobInfo) -> u64 {
        if info.complete() {
            self.complete_ms
        } else {
            self.idle_ms
        }
    }
}

/// The blob store. Every method commits before it returns.
pub trait Blobs: Send + Sync {
    /// Creates blob `id` of `size` bytes owned by `owner`, unless the
    /// blobs of `owner`'s account would then take more than `quota` bytes
    /// (`false`).
    fn blob_create(
        &self,
        owner: &Address,
        id: &BlobId,
        size: u64,
        quota: u64,
        expires_ms: u64,
    ) -> Result<bool, StoreError>;

    /// Stores part `part` of a blob `owner` created and still holds, if it
    /// is the next part and of its length ([`BlobInfo::put`]).
    fn blob_put(
        &self,
        owner: &Address,
        id: &BlobId,
        part: u32,
        data: &[u8],
        expiry: BlobExpiry,
    ) -> Result<BlobPutOutcome, StoreError>;

    /// The state of a blob `device` holds (as its owner or by a grant).
    fn blob_state(&self, device: &Address, id: &BlobId) -> Result<Option<BlobInfo>, StoreError>;

    /// Makes each device in `to` hold a complete blob `owner` holds.
    fn blob_grant(
        &self,
        owner: &Address,
        id: &BlobId,
        to: &[Address],
    ) -> Result<BlobGrantOutcome, StoreError>;

    /// Part `part` of a complete blob `device` holds.
    fn blob_part(
        &self,
        device: &Address,
        id: &BlobId,
        part: u32,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// Drops `device`'s holds on the blob (as owner and by grant); deletes
    /// the blob if no hold is left. `false` if `device` held none.
    fn blob_release(&self, device: &Address, id: &BlobId) -> Result<bool, StoreError>;

    /// Bytes of the blobs `user`'s devices created that are not deleted.
    fn blob_usage(&self, user: &str) -> Result<u64, StoreError>;

    /// Deletes blobs whose expiry is before `now_ms`; returns how many.
    fn prune_blobs(&self, now_ms: u64) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = BLOB_PART_LEN as u64;

    #[test]
    fn parts_cover_the_blob_exactly_and_only_the_next_is_written() {
        let fresh = BlobInfo {
            size: 2 * P + 5,
            received: 0,
        };
        assert_eq!(fresh.part_len(0), Some(BLOB_PART_LEN));
        assert_eq!(fresh.part_len(2), Some(5));
        assert_eq!(fresh.part_len(3), None);
        assert_eq!(fresh.put(0, BLOB_PART_LEN), PutPlan::Write);
        assert_eq!(fresh.put(0, 5), PutPlan::Refuse);
        assert_eq!(fresh.put(1, BLOB_PART_LEN), PutPlan::Refuse);
        let two = BlobInfo {
            received: 2 * P,
            ..fresh
        };
        assert_eq!(two.put(1, 0), PutPlan::Held);
        assert_eq!(two.put(2, 5), PutPlan::Write);
        assert_eq!(two.put(2, 6), PutPlan::Refuse);
        let done = BlobInfo {
            received: 2 * P + 5,
            ..fresh
        };
        assert!(done.complete() && done.parts_received() == 3);
        assert_eq!(done.put(2, 5), PutPlan::Held);
        assert_eq!(done.put(3, 1), PutPlan::Refuse);
        let huge = BlobInfo {
            size: u64::MAX,
            received: 0,
        };
        assert_eq!(huge.part_len(u32::MAX), Some(BLOB_PART_LEN));
    }
}
