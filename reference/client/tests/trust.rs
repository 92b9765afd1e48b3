//! Who a message is shown as coming from. A device belongs to a user only
//! once that user's contact has accepted it: the first device seen of a user
//! is trusted on first use; a changed identity, or a further device the
//! server announces, is flagged on every message and blocks sending to the
//! user until `verify USER --confirm`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use chatify_client::{Client, ClientError, IdentityWarning};
use common::{next_message, server, user};

/// After Alice verified Bob, a device `bob:2` appears with an identity of
/// its own (a server can create one: it runs the account) and writes to
/// her. It is never shown as Bob: every one of its messages is flagged, and
/// Alice cannot send to Bob until she confirms; Bob's verified device is
/// still shown as Bob.
#[tokio::test]
async fn a_ghost_device_is_never_shown_as_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    alice.send("bob", b"hi Bob").await.unwrap();
    next_message(&mut bob).await;
    bob.send("alice", b"hi Alice").await.unwrap();
    assert_eq!(next_message(&mut alice).await.warning, None);
    alice.confirm_peer("bob").unwrap();

    let mut ghost = Client::login(
        &options,
        &dir.path().join("ghost"),
        &common::pass(),
        "bob",
        "bob-password",
        2,
    )
    .await
    .unwrap();
    for text in ["it's Bob, new laptop", "please send me the code"] {
        ghost.send("alice", text.as_bytes()).await.unwrap();
        let m = next_message(&mut alice).await;
        assert_eq!(m.text, text.as_bytes());
        assert_eq!(m.warning, Some(IdentityWarning::NewDevice), "{text}");
        assert!(m.identity_changed());
    }
    match alice.send("bob", b"the code is 1234").await {
        Err(ClientError::IdentityChanged { peer }) => assert_eq!(peer, "bob"),
        other => panic!("sending was not blocked: {other:?}"),
    }
    // Bob's own, verified device is still Bob.
    bob.send("alice", b"that laptop is not mine").await.unwrap();
    assert_eq!(next_message(&mut alice).await.warning, None);
    let devices = alice.devices("bob");
    assert_eq!(devices.len(), 2);
    assert_eq!(
        devices
            .iter()
            .filter(|d| d.2 == Some(IdentityWarning::NewDevice))
            .count(),
        1
    );

    // Bob says it is his after all; Alice confirms the user.
    alice.confirm_peer("bob").unwrap();
    ghost.send("alice", b"thanks").await.unwrap();
    assert_eq!(next_message(&mut alice).await.warning, None);
    alice.send("bob", b"now you may").await.unwrap();
    server.shutdown().await;
}

/// A substituted identity is flagged on every message it sends, not only
/// on the session's first (the warning used to show once).
#[tokio::test]
async fn a_changed_identity_is_flagged_on_every_message_until_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    alice.send("bob", b"hi").await.unwrap();
    next_message(&mut bob).await;
    bob.close().await;

    // Same account and device, new keys: what a reinstall, or a server
    // substituting its own keys, looks like.
    let mut substitute = Client::login(
        &options,
        &dir.path().join("sub"),
        &common::pass(),
        "bob",
        "bob-password",
        1,
    )
    .await
    .unwrap();
    for i in 0..5 {
        substitute
            .send("alice", format!("m{i}").as_bytes())
            .await
            .unwrap();
        let m = next_message(&mut alice).await;
        assert_eq!(m.warning, Some(IdentityWarning::Changed), "message {i}");
    }
    // Restarting does not clear it.
    drop(alice);
    let mut alice = Client::resume(&dir.path().join("alice"), &common::pass(), Some(&options))
        .await
        .unwrap();
    substitute.send("alice", b"after restart").await.unwrap();
    assert_eq!(
        next_message(&mut alice).await.warning,
        Some(IdentityWarning::Changed)
    );
    alice.confirm_peer("bob").unwrap();
    substitute.send("alice", b"confirmed").await.unwrap();
    assert_eq!(next_message(&mut alice).await.warning, None);
    server.shutdown().await;
}
