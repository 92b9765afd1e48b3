//! Who a message is shown as coming from. A user has one identity, which
//! the user's devices share: a device holds it only if the user linked it
//! from another of their devices (PROTOCOL §12). The first identity seen of
//! a user is trusted on first use; a device presenting another one (a device
//! the server made, a reinstall, a substitution) is flagged on every message
//! and blocks sending to the user until `verify USER --confirm`. Sending to
//! a user reaches every device the server lists for the user, and a removed
//! device no longer receives.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use chatify_client::state::StateFile;
use chatify_client::{Client, ClientError, IdentityWarning, OWNER_WAIT};
use common::{next_message, pass, server, user};

/// After Alice verified Bob, a device `bob:2` appears with an identity of
/// its own (a server can create one: it runs the account) and writes to
/// her. It is never shown as Bob: every one of its messages is flagged, and
/// Alice cannot send to Bob until she compares numbers and confirms; Bob's
/// verified device is still shown as Bob. (Before devices shared their
/// user's identity, its first message was shown as Bob's.)
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
        assert_eq!(m.warning, Some(IdentityWarning::Changed), "{text}");
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
    let flagged: Vec<u32> = devices
        .iter()
        .filter(|d| d.2 == Some(IdentityWarning::Changed))
        .map(|d| d.0.device)
        .collect();
    assert_eq!(flagged, vec![2]);
    // Still blocked after a restart, and the ghost is still flagged.
    drop(alice);
    let mut alice = Client::resume(&dir.path().join("alice"), &pass(), Some(&options))
        .await
        .unwrap();
    ghost.send("alice", b"hello?").await.unwrap();
    assert!(next_message(&mut alice).await.identity_changed());
    assert!(alice.send("bob", b"x").await.is_err());
    server.shutdown().await;
}

/// Bob links a laptop from his phone with a one-time code: the laptop holds
/// Bob's identity (same safety number for Alice) and is shown as Bob with
/// no warning; what Alice sends to Bob reaches both devices; a wrong or
/// used code links nothing; once Bob removes the laptop, Alice's messages
/// reach the phone only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_is_its_user_and_receives_what_is_sent_to_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    alice.send("bob", b"hi Bob").await.unwrap();
    next_message(&mut bob).await;
    alice.confirm_peer("bob").unwrap();
    let number = alice.safety_number("bob").unwrap();

    let laptop_home = |name: &str| {
        StateFile::acquire(dir.path().join(name), OWNER_WAIT)
            .unwrap()
            .unlock(&pass())
            .unwrap()
    };
    let code = bob.create_link().await.unwrap();
    let first = if code.starts_with('0') { "1" } else { "0" };
    let wrong = format!("{first}{}", &code[1..]);
    assert!(
        Client::login_linked(&options, laptop_home("x"), "bob", "bob-password", 2, &wrong)
            .await
            .is_err()
    );
    let mut laptop = Client::login_linked(
        &options,
        laptop_home("laptop"),
        "bob",
        "bob-password",
        2,
        &code,
    )
    .await
    .unwrap();
    assert!(
        Client::login_linked(&options, laptop_home("y"), "bob", "bob-password", 3, &code)
            .await
            .is_err(),
        "a link code is single use"
    );
    assert_eq!(
        laptop.state().device.public_identity(),
        bob.state().device.public_identity()
    );

    laptop.send("alice", b"from my laptop").await.unwrap();
    let m = next_message(&mut alice).await;
    assert_eq!((m.from.device, m.warning), (2, None));
    assert_eq!(alice.safety_number("bob").unwrap(), number);
    let receipt = alice.send("bob", b"to both").await.unwrap();
    assert_eq!(receipt.devices, 2);
    assert_eq!(next_message(&mut bob).await.text, b"to both".to_vec());
    assert_eq!(next_message(&mut laptop).await.text, b"to both".to_vec());

    bob.remove_device(2).await.unwrap();
    assert_eq!(alice.device_list("bob").await.unwrap(), vec![1]);
    let receipt = alice.send("bob", b"phone only").await.unwrap();
    assert_eq!(receipt.devices, 1);
    assert_eq!(next_message(&mut bob).await.text, b"phone only".to_vec());
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
    let mut alice = Client::resume(&dir.path().join("alice"), &pass(), Some(&options))
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

/// A hostile server puts keys of its own on Bob's device and delivers
/// Alice's pending first message to them: they cannot open it, so they ask
/// Alice to send it again, on a session with the server's identity. Alice
/// must not: a retry request (or a receipt) from an identity she has not
/// confirmed for Bob changes nothing, and the text never reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_request_from_a_substituted_identity_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let bob = user(&options, &dir.path().join("bob"), "bob").await;
    bob.close().await;
    alice.send("bob", b"the secret").await.unwrap();
    // New keys on bob:1, as a server running the account can publish.
    let mut substitute = Client::login(
        &options,
        &dir.path().join("sub"),
        &pass(),
        "bob",
        "bob-password",
        1,
    )
    .await
    .unwrap();
    let mut seen_by_substitute = Vec::new();
    let mut seen_by_alice = Vec::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    while tokio::time::Instant::now() < until {
        enum Next {
            A(Option<chatify_client::Push>),
            S(Option<chatify_client::Push>),
            Tick,
        }
        let next = tokio::select! {
            p = alice.next_push() => Next::A(p),
            p = substitute.next_push() => Next::S(p),
            _ = tick.tick() => Next::Tick,
        };
        match next {
            Next::A(Some(p)) => seen_by_alice.extend(alice.handle(p).await.unwrap()),
            Next::S(Some(p)) => seen_by_substitute.extend(substitute.handle(p).await.unwrap()),
            Next::A(None) | Next::S(None) => break,
            Next::Tick => {
                seen_by_alice.extend(alice.tick().await.unwrap());
                seen_by_substitute.extend(substitute.tick().await.unwrap());
            }
        }
    }
    // The substitute could not open the message and asked for it again.
    assert!(
        seen_by_substitute
            .iter()
            .any(|e| matches!(e, chatify_client::Event::Rejected { .. })),
        "{seen_by_substitute:?}"
    );
    assert!(
        !seen_by_substitute.iter().any(|e| matches!(
            e,
            chatify_client::Event::Message(m) if m.text == b"the secret"
        )),
        "the text reached the substituted identity: {seen_by_substitute:?}"
    );
    assert!(
        !seen_by_alice
            .iter()
            .any(|e| matches!(e, chatify_client::Event::Resent { .. })),
        "{seen_by_alice:?}"
    );
    // The message still awaits Bob's own receipt.
    assert_eq!(
        alice
            .state()
            .outbox
            .values()
            .map(|o| o.pending.len())
            .sum::<usize>(),
        1
    );
    server.shutdown().await;
}
