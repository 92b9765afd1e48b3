//! The crate graph is part of the security design: the E2EE core is sans-IO.
//! This test reads the real dependency closure (`cargo tree`) and fails if an
//! IO or async-runtime crate is in it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../test-support/closure.rs"]
mod closure;

use closure::{closure, found};

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
    assert_eq!(
        found(&deps, IO_CRATES),
        Vec::<&str>::new(),
        "chatify-core depends on IO crates"
    );
}

#[test]
fn the_check_sees_io_crates() {
    // The client links tokio and tungstenite: the same check must flag it.
    let deps = closure("chatify-client");
    assert!(!found(&deps, IO_CRATES).is_empty(), "{deps:?}");
}
