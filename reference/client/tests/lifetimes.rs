//! Client lifetimes: a CLI user runs a fresh process for every action, so a
//! device is restored from its files hundreds of times in a conversation.
//! No number of restarts, and no number of saves a server can provoke, may
//! break a conversation or reuse a message key (docs/PROTOCOL.md §13.1).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use chatify_client::{Client, ClientError, Event, Push};
use chatify_core::MAX_RESERVED_SENDS;

mod common;

use common::{next_message, server, user};

fn addr(name: &str) -> chatify_proto::frame::Address {
    common::addr(name, 1)
}

/// Alice sends; Bob reads each message with a fresh process (`chatify
/// inbox`), which saves after receiving. Each of those saves used to reserve
/// 64 more sending keys, so after about 16 reads Bob's next message was
/// beyond what Alice's client bridges (`message counter too far ahead`) and
/// the conversation never recovered. Saves after receiving now reserve
/// nothing on a restored chain: with the CLI's one-shot reservation, Alice
/// is left no gap at all; with the default (a conversation's 64), at most
/// one reservation, made when Bob's sending chain was created.
#[tokio::test]
async fn reading_in_a_fresh_process_each_time_never_breaks_the_conversation() {
    for reservation in [1, MAX_RESERVED_SENDS] {
        fresh_reader_per_message(reservation).await;
    }
}

async fn fresh_reader_per_message(reservation: u32) {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let bob_home = dir.path().join("bob");
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let bob = user(&options, &bob_home, "bob").await;
    drop(bob);
    for i in 0..40 {
        alice.send("bob", format!("a{i}").as_bytes()).await.unwrap();
        let mut bob = Client::resume(&bob_home, &common::pass(), Some(&options))
            .await
            .unwrap();
        bob.set_send_reservation(reservation);
        assert_eq!(
            next_message(&mut bob).await.text,
            format!("a{i}").into_bytes()
        );
        drop(bob);
    }
    let mut bob = Client::resume(&bob_home, &common::pass(), Some(&options))
        .await
        .unwrap();
    bob.set_send_reservation(1);
    bob.send("alice", b"still here").await.unwrap();
    assert_eq!(next_message(&mut alice).await.text, b"still here".to_vec());
    let session = &alice.state().sessions[&addr("bob")][0];
    let gap = if reservation == 1 {
        0
    } else {
        MAX_RESERVED_SENDS
    };
    assert_eq!(
        session.skipped_keys(),
        gap as usize,
        "reservation {reservation}"
    );
    server.shutdown().await;
}

/// A server can make a client save as often as it likes by claiming its
/// prekeys run low. Those saves publish prekeys; they never move a sending
/// chain, whatever the number of lifetimes they are spread over.
#[tokio::test]
async fn prekey_requests_over_many_lifetimes_do_not_move_the_sending_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let bob_home = dir.path().join("bob");
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &bob_home, "bob").await;
    bob.set_send_reservation(1);
    alice.send("bob", b"hello").await.unwrap();
    next_message(&mut bob).await;
    drop(bob);
    for _ in 0..30 {
        let mut bob = Client::resume(&bob_home, &common::pass(), Some(&options))
            .await
            .unwrap();
        // What a hostile server's `PrekeysLow` push makes the client do.
        let events = bob.handle(Push::PrekeysLow(99)).await.unwrap();
        assert_eq!(events, vec![Event::KeysReplenished(1)]);
        drop(bob);
    }
    let mut bob = Client::resume(&bob_home, &common::pass(), Some(&options))
        .await
        .unwrap();
    bob.set_send_reservation(1);
    bob.send("alice", b"reply").await.unwrap();
    assert_eq!(next_message(&mut alice).await.text, b"reply".to_vec());
    // The first of those lifetimes created Bob's sending chain and reserved
    // on it once; the 29 after it restored the chain and reserved nothing.
    assert_eq!(
        alice.state().sessions[&addr("bob")][0].skipped_keys(),
        MAX_RESERVED_SENDS as usize
    );
    server.shutdown().await;
}

/// Hundreds of one-shot `chatify send` processes, both ways, each a fresh
/// restore: every message arrives, the peer is left no skipped keys (a
/// one-shot process reserves exactly the key it uses), and no message is
/// reported missing though every restart skips sequence numbers.
#[tokio::test]
async fn hundreds_of_one_shot_sends_each_from_a_fresh_process() {
    const LIFETIMES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let alice_home = dir.path().join("alice");
    let bob_home = dir.path().join("bob");
    drop(user(&options, &alice_home, "alice").await);
    drop(user(&options, &bob_home, "bob").await);
    for i in 0..LIFETIMES {
        let (from, to, home, peer_home) = if i % 3 == 2 {
            ("bob", "alice", &bob_home, &alice_home)
        } else {
            ("alice", "bob", &alice_home, &bob_home)
        };
        let mut sender = Client::resume(home, &common::pass(), Some(&options))
            .await
            .unwrap();
        sender.set_send_reservation(1);
        sender
            .send(to, format!("{from} {i}").as_bytes())
            .await
            .unwrap();
        drop(sender);
        let mut reader = Client::resume(peer_home, &common::pass(), Some(&options))
            .await
            .unwrap();
        reader.set_send_reservation(1);
        // Every restart of the sender skips the sequence numbers it had
        // reserved: none of them may be reported missing (a report would be
        // an unexpected event below).
        reader.set_missing_grace(std::time::Duration::ZERO);
        assert_eq!(
            next_message(&mut reader).await.text,
            format!("{from} {i}").into_bytes()
        );
        let session = &reader.state().sessions[&addr(from)][0];
        assert_eq!(session.skipped_keys(), 0, "lifetime {i}");
        drop(reader);
    }
    server.shutdown().await;
}

/// One owner per home: a second client on the same directory is refused
/// while the first lives (two owners sent two messages under one key), and
/// gets the directory once the first is gone.
#[tokio::test]
async fn a_home_has_one_owner_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let home = dir.path().join("alice");
    let alice = user(&options, &home, "alice").await;
    let second = Client::resume(&home, &common::pass(), Some(&options)).await;
    match second {
        Err(ClientError::HomeInUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        other => panic!("expected HomeInUse, got {other:?}"),
    }
    drop(alice);
    let again = Client::resume(&home, &common::pass(), Some(&options))
        .await
        .unwrap();
    drop(again);
    server.shutdown().await;
}
