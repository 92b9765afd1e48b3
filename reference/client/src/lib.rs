//! The Chatify reference client: the IO shell around `chatify-core`.
//!
//! ```text
//!   Client ── Connection (WebSocket, ws/wss) ── server
//!     │
//!     ├─ StateFile (HOME, locked by one process, sealed under a key that
//!     │    key.cbor wraps under the user's passphrase) over a Storage
//!     │    state.cbor: device keys, sessions, pins, sequence numbers ── saved
//!     │      before a key or sequence number it does not cover is used
//!     │    messages.cbor: the log, appended before an acknowledgement
//!     │    transfers.cbor, groups.cbor: files under way; groups' chains and keys
//!     │    (both files' records are minicbor-derived types, in `records`)
//!     ├─ delivery: sealed message ids and sequences → late, missing, duplicate;
//!     │    encrypted receipts → delivered / undelivered; retry → sent again
//!     ├─ trust: one identity per user, shared by the devices it links;
//!     │    a device presenting another is flagged; sends fan out to all
//!     ├─ groups (§16): signed changes checked here; sender keys given over
//!     │    sessions to member devices presenting the member's identity;
//!     │    one SendGroup per message, fanned out by the server
//!     └─ chatify-core: VerifiedBundle → Session::initiate / Device::accept,
//!        Session::encrypt / decrypt
//! ```
//!
//! ```no_run
//! use chatify_client::{Client, ConnectOptions, Event, Passphrase};
//!
//! # async fn demo() -> Result<(), chatify_client::ClientError> {
//! let options = ConnectOptions::new("ws://127.0.0.1:8080");
//! Client::register(&options, "alice", "correct horse battery").await?;
//! // The device's files are encrypted under a passphrase of the user's.
//! let home = Passphrase::new("a passphrase for this device");
//! let mut alice =
//!     Client::login(&options, "/tmp/alice".as_ref(), &home, "alice", "correct horse battery", 1)
//!         .await?;
//! alice.send("bob", b"hello Bob").await?;
//! while let Some(event) = alice.next_event().await? {
//!     if let Event::Message(m) = event {
//!         println!("{}: {}", m.from.user, String::from_utf8_lossy(&m.text));
//!     }
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod client;
pub mod connection;
pub mod delivery;
mod records;
pub mod state;
pub mod storage;
pub mod vault;

pub use client::files::{FileProgress, SavedFile};
pub use client::groups::{GroupChange, GroupInfo};
pub use client::{
    Client, ConnectOptions, DELIVERY_GRACE, DEVICE_LIST_TTL, Event, IdentityWarning, Incoming,
    Late, LoginRequest, MAX_KEPT_TEXT, MISSING_GRACE, MfaSecret, OWNER_WAIT, PREKEY_TARGET,
    RECEIPT_DELAY, RETRY_INTERVAL, SendReceipt, Timings, TraceEvent, conversation_id, parse_peer,
    parse_target,
};
pub use connection::{Connection, Push};
pub use vault::{KdfCost, Passphrase};

use chatify_proto::ErrorCode;

impl ClientError {
    /// An IO error on `path`.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        ClientError::Io {
            path: path.into(),
            source,
        }
    }
}

/// What can go wrong in the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error frame.
    #[error("server refused ({code:?}): {message}")]
    Server {
        /// The code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// Could not connect.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The server URL.
        url: String,
        /// Why (the WebSocket or TLS handshake's error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// TLS setup failed.
    #[error("TLS: {what}")]
    Tls {
        /// What failed.
        what: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The connection closed.
    #[error("disconnected from the server")]
    Disconnected,
    /// The server sent something this client did not expect.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer's identity changed: sending is blocked until the user
    /// verifies the new safety number (`chatify verify PEER --confirm`).
    #[error(
        "{peer}'s identity changed; compare the new safety number and confirm it before sending"
    )]
    IdentityChanged {
        /// The peer.
        peer: String,
    },
    /// Another process (or another client in this process) owns this home
    /// directory: one device's state has one owner at a time.
    #[error(
        "{home} is in use by another chatify process{}; quit it (or send from it) and try again",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    HomeInUse {
        /// The home directory.
        home: String,
        /// The owner's process id, as it recorded it.
        pid: Option<u32>,
    },
    /// The passphrase does not open this home's key file.
    #[error("wrong passphrase for this home directory")]
    WrongPassphrase,
    /// No local state: log in first.
    #[error("not logged in here; run `chatify login` first")]
    NotLoggedIn,
    /// The local state file is unusable.
    #[error("state: {0}")]
    State(String),
    /// A request the client cannot act on as given: a malformed peer name,
    /// two entries that were to match and differ, a home that already holds
    /// a device's keys.
    #[error("{0}")]
    Usage(String),
    /// Deriving the key that protects the home from its passphrase failed.
    #[error("key derivation: {0}")]
    Kdf(#[source] argon2::Error),
    /// The local state file (or message log) does not decode: where, and
    /// the decoder's error.
    #[error("state: malformed {what}: {source}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// The CBOR decoder's error (positions only, never the bytes).
        #[source]
        source: minicbor::decode::Error,
    },
    /// A file (or the terminal) could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A task the client ran on a blocking thread did not finish (it
    /// panicked or the runtime is shutting down).
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The E2EE core refused.
    #[error("encryption: {0}")]
    Crypto(#[from] chatify_core::Error),
    /// An encrypted file did not open as the message named it (altered,
    /// cut, reordered or swapped on the server), or could not be read.
    #[error("file: {0}")]
    File(#[from] chatify_core::file::FileError),
}
