//! Chatify wire types and their CBOR (RFC 8949) codec.
//!
//! This crate defines every frame a client and a server exchange over a
//! WebSocket, and the end-to-end-encrypted [`Envelope`] that clients put
//! inside [`Send`](frame::Send) frames. It has **no cryptography and no IO**:
//! the server links this crate and nothing that could decrypt, so the message
//! body it relays is, by construction, an opaque byte string.
//!
//! ```text
//!   client (chatify-core seals)          server (this crate only)
//!   ┌───────────────────────┐  Frame     ┌────────────────────────┐
//!   │ Envelope::encode()    │──────────▶ │ Frame::decode()        │
//!   │   header, prekey,     │  CBOR over │   Send { envelope:     │
//!   │   AES-GCM ciphertext  │  WebSocket │     opaque bytes }     │
//!   └───────────────────────┘            └────────────────────────┘
//! ```
//!
//! Decoding never panics, rejects trailing bytes, bounds every length by
//! [`limits`], and rejects an unknown protocol version with
//! [`DecodeError::UnsupportedVersion`] before it looks at anything else.
//!
//! ```
//! use chatify_proto::{Body, Frame, frame::Ping};
//!
//! let frame = Frame { id: 7, body: Body::Ping(Ping {}) };
//! let bytes = frame.encode();
//! assert_eq!(Frame::decode(&bytes)?, frame);
//! # Ok::<(), chatify_proto::DecodeError>(())
//! ```
//!
//! docs/PROTOCOL.md is the normative description of every type here.

#![forbid(unsafe_code)]

pub mod content;
pub mod envelope;
mod error;
pub mod frame;
#[doc(hidden)]
#[cfg(feature = "test-support")]
pub mod fuzzing;
pub mod hex;
pub mod keys;
pub mod limits;
mod wellformed;

pub use content::Content;
pub use envelope::{Envelope, MessageHeader, PrekeyHeader};
pub use error::{DecodeError, ErrorCode};
pub use frame::{Body, Frame};
pub use keys::{DeviceKeys, OneTimePrekey, PrekeyBundle, SignedPrekey};

/// The protocol version carried by every frame and every envelope.
pub const PROTOCOL_VERSION: u8 = 1;

/// A conversation identifier: 16 bytes chosen by the client that starts it.
pub type ConversationId = [u8; 16];

/// A message identifier: 16 random bytes chosen by the sender, so that
/// recipients can drop duplicates.
pub type MessageId = [u8; 16];
