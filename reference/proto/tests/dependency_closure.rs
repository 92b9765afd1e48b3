//! The wire crate holds no cryptography: the server links it and nothing
//! else of ours, so a message body is opaque bytes by construction.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

fn closure(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-e", "normal", "--prefix", "none", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

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
    let bad: Vec<&String> = deps
        .iter()
        .filter(|d| CRYPTO_CRATES.contains(&d.as_str()))
        .collect();
    assert!(bad.is_empty(), "chatify-proto depends on crypto: {bad:?}");
}

#[test]
fn the_check_sees_cryptography() {
    let deps = closure("chatify-core");
    assert!(
        deps.iter().any(|d| CRYPTO_CRATES.contains(&d.as_str())),
        "{deps:?}"
    );
}
