//! Size limits. Every decoder in this crate enforces them; docs/PROTOCOL.md
//! lists them as normative.

/// Largest frame, in bytes, that a peer may send (the WebSocket message).
pub const MAX_FRAME_LEN: usize = 256 * 1024;

/// Largest encoded [`Envelope`](crate::Envelope), in bytes.
pub const MAX_ENVELOPE_LEN: usize = 128 * 1024;

/// Largest plaintext a client may seal into one envelope, in bytes.
pub const MAX_PLAINTEXT_LEN: usize = 64 * 1024;

/// Most one-time prekeys in one `PublishKeys` frame.
pub const MAX_ONE_TIME_PREKEYS_PER_PUBLISH: usize = 200;

/// Most one-time prekeys the key directory holds for one device; a
/// `PublishKeys` that would exceed it is refused (the server enforces it).
pub const MAX_ONE_TIME_PREKEYS_HELD: usize = 1000;

/// Longest user name, in bytes of UTF-8.
pub const MAX_USERNAME_LEN: usize = 64;

/// Longest password, in bytes of UTF-8.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Longest free-text field (error messages, TOTP codes), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

/// Most items in any list carried by a frame (acks, history pages).
pub const MAX_LIST_LEN: usize = 1000;

/// Most recipient devices of one group message (a [`SendGroup`](crate::frame::SendGroup)).
pub const MAX_GROUP_DEVICES: usize = 1000;

/// Longest session token, in bytes.
pub const MAX_TOKEN_LEN: usize = 64;

/// Longest sealed identity left for linking a device (`PutLink`), in bytes.
pub const MAX_LINK_BLOB_LEN: usize = 1024;

/// Bytes of every part of a blob but the last (`BlobPut`, `BlobPart`); the
/// last holds what remains, 1 to this many bytes.
pub const BLOB_PART_LEN: usize = 128 * 1024;

/// Longest file name carried in a message's file reference, in bytes.
pub const MAX_FILE_NAME_LEN: usize = 255;
