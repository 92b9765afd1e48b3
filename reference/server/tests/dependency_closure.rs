//! The server must never be able to decrypt: no message-layer AEAD, no
//! Diffie-Hellman or signature crate, no session code in its dependency
//! closure. (TLS's own provider, `ring`, is allowed: transport encryption,
//! and the server's own second-factor secrets at rest (src/mfa.rs); it is
//! not the message layer.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../test-support/closure.rs"]
mod closure;

use closure::{closure, found};

const E2EE_CRATES: &[&str] = &[
    "aes-gcm",
    "aes-gcm-siv",
    "chacha20poly1305",
    "aead",
    "aes",
    "x25519-dalek",
    "ed25519-dalek",
    "curve25519-dalek",
    "hkdf",
    "vodozemac",
    "libsignal-protocol",
    "chatify-core",
    "chatify-client",
];

#[test]
fn server_links_no_e2ee_code() {
    let deps = closure("chatify-server");
    assert!(
        deps.iter().any(|d| d == "chatify-proto"),
        "closure looks wrong: {deps:?}"
    );
    assert_eq!(
        found(&deps, E2EE_CRATES),
        Vec::<&str>::new(),
        "chatify-server can decrypt"
    );
}

#[test]
fn the_check_sees_e2ee_code() {
    // The client links the E2EE core: the same check must flag it.
    let deps = closure("chatify-client");
    assert!(
        found(&deps, E2EE_CRATES).contains(&"chatify-core"),
        "{deps:?}"
    );
    assert!(found(&deps, E2EE_CRATES).contains(&"aes-gcm"), "{deps:?}");
}
