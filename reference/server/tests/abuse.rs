//! Abuse from a client written from the protocol alone: the server's work
//! and memory stay bounded, the abuser gets a typed answer or a close with
//! a code, and honest users keep working meanwhile.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use chatify_proto::frame;
use chatify_proto::{Body, ErrorCode};
use chatify_server::Config;
use chatify_server::auth::PasswordCost;
use common::{Raw, account, start, test_config};

/// A flood of logins with a valid password: at most `password_workers`
/// hashes run at once and `password_queue` wait; the rest are told "busy"
/// at once instead of each taking the hash's memory. An honest user who
/// is already authenticated keeps chatting through it, and once the flood
/// is over a login succeeds.
#[tokio::test]
async fn a_login_flood_is_bounded_and_answered_busy() {
    let config = Config {
        // Slow enough that the flood overlaps: tens of ms per hash.
        password_cost: PasswordCost {
            memory_kib: 32 * 1024,
            iterations: 2,
        },
        password_workers: 1,
        password_queue: 2,
        login_failures_per_account: 1000,
        login_failures_per_address: 1000,
        ..test_config()
    };
    let (server, url) = start(config).await;
    let (mut honest, _) = account(&url, "honest").await;
    let login = || frame::Login {
        username: "honest".into(),
        password: "honest-password".into(),
        device: 1,
        second_factor: None,
    };
    let mut flood = Vec::new();
    for _ in 0..24 {
        let url = url.clone();
        let l = login();
        flood.push(tokio::spawn(async move {
            let mut raw = Raw::connect(&url).await;
            raw.request(l).await
        }));
    }
    // The authenticated user's requests need no password work.
    honest.ping().await;
    let (mut ok, mut busy) = (0, 0);
    for f in flood {
        match f.await.unwrap() {
            Body::LoginOk(_) => ok += 1,
            Body::Error(e) if e.code == ErrorCode::RateLimited => {
                assert!(e.message.contains("busy"), "{e:?}");
                busy += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(ok >= 1, "no login got through ({busy} busy)");
    assert!(busy >= 1, "the flood was never refused ({ok} succeeded)");
    assert_eq!(ok + busy, 24);
    let mut after = Raw::connect(&url).await;
    assert!(matches!(after.request(login()).await, Body::LoginOk(_)));
    server.shutdown().await;
}
