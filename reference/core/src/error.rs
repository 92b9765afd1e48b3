/// Everything that can go wrong in the E2EE core.
///
/// Variants separate a misbehaving peer or server ([`Error::Decrypt`],
/// [`Error::InvalidBundle`], …) from misuse by the caller
/// ([`Error::PlaintextTooLong`]) and from local state problems
/// ([`Error::State`]). A decryption failure is deliberately one coarse
/// variant whatever its cause (tag, padding, wrong key), so that it cannot be
/// used as an oracle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The envelope did not authenticate (altered, forged, misdirected, or
    /// from a different session).
    #[error("decryption failed")]
    Decrypt,
    /// The message's key was already used or discarded: a replay or a duplicate.
    #[error("duplicate or replayed message")]
    Duplicate,
    /// The message would need more skipped message keys than allowed.
    #[error("message counter too far ahead ({needed} skipped keys, limit {limit})")]
    TooManySkipped {
        /// How many keys would have to be skipped.
        needed: u64,
        /// The limit that applies.
        limit: u32,
    },
    /// A Diffie-Hellman output was all zero: the peer's key is of low order.
    #[error("non-contributory Diffie-Hellman output (low-order public key)")]
    NonContributory,
    /// A prekey bundle failed verification.
    #[error("invalid prekey bundle: {0}")]
    InvalidBundle(&'static str),
    /// The session-setup message names a prekey this device does not hold.
    #[error("unknown prekey")]
    UnknownPrekey,
    /// A session-setup message with this base key was already accepted.
    #[error("replayed session setup")]
    ReplayedSetup,
    /// The envelope is not a session-setup message (it has no prekey header).
    #[error("not a session-setup message")]
    NotSetupMessage,
    /// The plaintext exceeds [`MAX_PLAINTEXT_LEN`](chatify_proto::limits::MAX_PLAINTEXT_LEN).
    #[error("plaintext of {0} bytes is too long")]
    PlaintextTooLong(usize),
    /// The session has been serialized, and no durable save covers the next
    /// message's key: save it with [`Session::to_bytes_reserving`] and
    /// [`Session::confirm_saved`] first (docs/PROTOCOL.md §13.1). Nothing
    /// was encrypted and no key was used.
    ///
    /// [`Session::to_bytes_reserving`]: crate::Session::to_bytes_reserving
    /// [`Session::confirm_saved`]: crate::Session::confirm_saved
    #[error("no durable save covers the next message key (save, reserving sends, first)")]
    NotSaved,
    /// The envelope could not be decoded.
    #[error("envelope: {0}")]
    Envelope(#[from] chatify_proto::DecodeError),
    /// Persisted state could not be restored.
    #[error("stored state: {0}")]
    State(&'static str),
}
