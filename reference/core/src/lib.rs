//! The sans-IO end-to-end-encryption core of Chatify.
//!
//! Bytes, randomness and (where needed) time go in; bytes come out. No
//! sockets, no clock, no global RNG: clients, the harness, fuzzers and the
//! model tests all drive this same code, and a seeded RNG reproduces a
//! transcript byte for byte (docs/PROTOCOL.md carries such transcripts as
//! test vectors).
//!
//! ```text
//!  Bob: Device ──publish_keys()──▶ key directory ──PrekeyBundle──┐
//!                                                                ▼
//!  Alice: VerifiedBundle::verify(bundle) ─▶ Session::initiate(..) ─▶ encrypt(..) ─▶ Envelope
//!                                                                                     │
//!  Bob:   Device::accept(envelope) ─▶ (Session, plaintext) ◀──── server relays ───────┘
//!         then Session::encrypt / Session::decrypt both ways (Double Ratchet)
//! ```
//!
//! Primitives: X25519 (x25519-dalek), Ed25519 (ed25519-dalek), HKDF-SHA256
//! and HMAC-SHA256 (hkdf, hmac), AES-256-GCM (aes-gcm). Secret keys live in
//! zeroize-on-drop types without `Debug` or serialization derives.
//!
//! ```
//! use chatify_core::{Device, Session, VerifiedBundle};
//! use chatify_proto::PrekeyBundle;
//! use rand_chacha::ChaCha20Rng;
//! use rand_chacha::rand_core::SeedableRng;
//!
//! let mut rng = ChaCha20Rng::from_seed([7; 32]);
//! let alice = Device::generate(&mut rng);
//! let mut bob = Device::generate(&mut rng);
//!
//! // Bob publishes; the directory serves one one-time prekey in his bundle.
//! let published = bob.publish_keys(5, &mut rng);
//! let bundle = PrekeyBundle {
//!     user: "bob".into(),
//!     device: 1,
//!     identity: published.identity,
//!     signed_prekey: published.signed_prekey,
//!     one_time_prekey: published.one_time_prekeys.first().cloned(),
//! };
//!
//! let conversation = [1u8; 16];
//! let mut to_bob = Session::initiate(&alice, VerifiedBundle::verify(&bundle)?, &mut rng)?;
//! let envelope = to_bob.encrypt(conversation, b"hello Bob", &mut rng)?;
//!
//! // Only the encoded envelope crosses the server.
//! let wire = envelope.encode();
//! let (mut to_alice, plaintext) = bob.accept(&chatify_proto::Envelope::decode(&wire)?)?;
//! assert_eq!(&plaintext[..], b"hello Bob");
//!
//! let reply = to_alice.encrypt(conversation, b"hi Alice", &mut rng)?;
//! assert_eq!(&to_bob.decrypt(&reply)?[..], b"hi Alice");
//! assert_eq!(to_bob.safety_number(), to_alice.safety_number());
//! # Ok::<(), chatify_core::Error>(())
//! ```

#![forbid(unsafe_code)]

mod aead;
mod bundle;
mod error;
pub mod file;
mod fingerprint;
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
mod identity;
pub mod kdf;
pub mod padding;
mod persist;
mod ratchet;
mod secret;
mod session;
#[cfg(feature = "test-support")]
pub mod test_vectors;

pub use aead::TAG_LEN;
pub use bundle::VerifiedBundle;
pub use error::Error;
pub use fingerprint::SafetyNumber;
pub use identity::{Device, MAX_ONE_TIME_PREKEYS, MAX_SEEN_BASE_KEYS, PublicIdentity};
pub use persist::{STATE_VERSION, SavedAt};
pub use ratchet::{MAX_RESERVED_SENDS, MAX_SKIP, MAX_SKIPPED_TOTAL};
pub use secret::SecretBuf;
pub use session::Session;

/// Re-exported so that callers name the same RNG traits as this crate.
pub use rand_core;
