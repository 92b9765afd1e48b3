//! The crate graph is part of the security design: the E2EE core is sans-IO.
//! This test reads the real dependency closure (`cargo tree`) and fails if an
//! IO or async runtime crate is in it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

/// The normal (non-dev, non-build) dependency closure of `package`.
pub fn closure(package: &str) -> Vec<String> {
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

const IO_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "async-std",
    "smol",
    "futures-io",
    "socket2",
    "tungstenite",
    "tokio-tungstenite",
    "hyper",
    "reqwest",
    "rusqlite",
    "tokio-postgres",
    "async-nats",
    "getrandom",
];

#[test]
fn core_is_sans_io() {
    let deps = closure("chatify-core");
    assert!(
        deps.iter().any(|d| d == "aes-gcm"),
        "closure looks wrong: {deps:?}"
    );
    let bad: Vec<&String> = deps
        .iter()
        .filter(|d| IO_CRATES.contains(&d.as_str()))
        .collect();
    assert!(bad.is_empty(), "chatify-core depends on IO crates: {bad:?}");
}

#[test]
fn the_check_sees_io_crates() {
    // The harness links clap and rand (with getrandom): the same check must flag it.
    let deps = closure("chatify-harness");
    assert!(
        deps.iter().any(|d| IO_CRATES.contains(&d.as_str())),
        "{deps:?}"
    );
}
