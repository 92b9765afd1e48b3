//! The wire crate holds no cryptography: the server links it and nothing
//! else of ours, so a message body is opaque bytes by construction.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../test-support/closure.rs"]
mod closure;

use closure::{closure, found};

const CRYPTO_CRATES: &[&str] = &[
    "aes-gcm",
    "aes",
    "chacha20poly1305",
    "aead",
    "x25519-dalek",
    "ed25519-dalek",
    "curve25519-dalek",
    "hkdf",
    "hmac",
    "sha2",
    "ring",
    "aws-lc-rs",
    "chatify-core",
];

#[test]
fn proto_has_no_cryptography() {
    let deps = closure("chatify-proto");
    assert!(
        deps.iter().any(|d| d == "minicbor"),
        "closure looks wrong: {deps:?}"
    );
    assert_eq!(
        found(&deps, CRYPTO_CRATES),
        Vec::<&str>::new(),
        "chatify-proto depends on crypto"
    );
}

#[test]
fn the_check_sees_cryptography() {
    assert!(!found(&closure("chatify-core"), CRYPTO_CRATES).is_empty());
}
