//! Nothing lost without someone being told (PROTOCOL §7.2, §7.3): the
//! recipient's encrypted receipts tell the sender what was delivered; a
//! message the server stored and never delivered is reported to its sender;
//! a session-setup message the recipient cannot open (a one-time prekey the
//! server served twice) is asked for again and resent on a new session.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatify_client::{Client, Event};
use chatify_proto::PrekeyBundle;
use chatify_proto::frame::Address;
use chatify_server::store::{NewEnvelope, SqliteStore, Store, StoreError};
use common::{config, next_message, server_with, user};

/// A server that misbehaves on command: it acknowledges envelopes for one
/// user and stores nothing, or hands out one device's bundle (and its
/// one-time prekey) to a second initiator.
#[derive(Default)]
struct Hostile {
    inner: Option<SqliteStore>,
    drop_to: Mutex<Option<String>>,
    serve_twice: Mutex<Option<String>>,
    served: Mutex<BTreeMap<String, (PrekeyBundle, u32)>>,
}

impl Hostile {
    fn new() -> Self {
        Hostile {
            inner: Some(SqliteStore::in_memory().unwrap()),
            ..Hostile::default()
        }
    }
    fn inner(&self) -> &SqliteStore {
        self.inner.as_ref().unwrap()
    }
}

impl Store for Hostile {
    chatify_server::forward_store!(self => self.inner();
        create_user, password_hash, create_token, token, revoke_tokens, prune_tokens, publish_keys, one_time_prekey_count, pending, ack, history, prune_history, devices, remove_device, put_link, take_link, mfa, mfa_begin, mfa_enable, mfa_use_step, mfa_use_recovery, mfa_disable, blobs);

    fn take_bundle(&self, device: &Address) -> Result<Option<(PrekeyBundle, u32)>, StoreError> {
        if self.serve_twice.lock().unwrap().as_deref() == Some(&device.user) {
            let mut served = self.served.lock().unwrap();
            if let Some(again) = served.remove(&device.user) {
                *self.serve_twice.lock().unwrap() = None;
                return Ok(Some(again));
            }
            let real = self.inner().take_bundle(device)?;
            if let Some(b) = &real {
                served.insert(device.user.clone(), b.clone());
            }
            return Ok(real);
        }
        self.inner().take_bundle(device)
    }
    fn enqueue(&self, e: &NewEnvelope) -> Result<Option<u64>, StoreError> {
        if self.drop_to.lock().unwrap().as_deref() == Some(&e.to.user) {
            // Told stored; nothing stored.
            return Ok(Some(u64::MAX / 2));
        }
        self.inner().enqueue(e)
    }
}

/// Drives two clients (their pushes and their periodic work, as an
/// application does) until `done` holds of the events each has had; fails
/// after 20 s.
async fn until(
    a: &mut Client,
    b: &mut Client,
    done: impl Fn(&[Event], &[Event]) -> bool,
) -> (Vec<Event>, Vec<Event>) {
    enum Next {
        A(Option<chatify_client::Push>),
        B(Option<chatify_client::Push>),
        Tick,
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !done(&ea, &eb) {
        let next = tokio::select! {
            p = a.next_push() => Next::A(p),
            p = b.next_push() => Next::B(p),
            _ = tick.tick() => Next::Tick,
            () = tokio::time::sleep_until(deadline) => panic!("not done: {ea:?} / {eb:?}"),
        };
        match next {
            Next::A(p) => ea.extend(a.handle(p.expect("a's connection ended")).await.unwrap()),
            Next::B(p) => eb.extend(b.handle(p.expect("b's connection ended")).await.unwrap()),
            Next::Tick => {
                ea.extend(a.tick().await.unwrap());
                eb.extend(b.tick().await.unwrap());
            }
        }
    }
    (ea, eb)
}

fn shown(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(String::from_utf8_lossy(&m.text).into_owned()),
            _ => None,
        })
        .collect()
}

fn delivered(events: &[Event]) -> Vec<[u8; 16]> {
    events
        .iter()
        .flat_map(|e| match e {
            Event::Delivered { message_ids, .. } => message_ids.clone(),
            _ => vec![],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_tell_the_sender_what_reached_the_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server_with(Arc::new(Hostile::new()), config()).await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    bob.set_receipt_delay(Duration::from_millis(50));
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(
            alice
                .send("bob", format!("m{i}").as_bytes())
                .await
                .unwrap()
                .message_id,
        );
    }
    for _ in 0..3 {
        next_message(&mut bob).await;
    }
    // Bob's client sends one receipt once its delay passed, by itself.
    let (got, _) = until(&mut alice, &mut bob, |a, _| delivered(a).len() >= 3).await;
    assert_eq!(delivered(&got), sent, "{got:?}");
    assert!(alice.state().outbox.values().all(|o| o.pending.is_empty()));
    // Receipts are not messages: nothing is shown, logged or numbered.
    assert!(!got.iter().any(|e| matches!(e, Event::Message(_))));
    assert!(alice.messages().unwrap().is_empty());
    server.shutdown().await;
}

/// A server that says "stored" and drops the message: the recipient sees a
/// gap once a later message arrives, and the sender, who gets a receipt
/// for the later one only, is told the first was not delivered. With the
/// receipts of the previous client (none), the sender learns nothing: the
/// check below fails on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_drops_is_reported_to_its_sender() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Hostile::new());
    let (server, options) = server_with(store.clone(), config()).await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    alice.set_delivery_grace(Duration::from_millis(300));
    bob.set_receipt_delay(Duration::ZERO);
    bob.set_missing_grace(Duration::ZERO);
    alice.send("bob", b"first").await.unwrap();
    next_message(&mut bob).await;
    *store.drop_to.lock().unwrap() = Some("bob".into());
    let lost = alice.send("bob", b"lost").await.unwrap().message_id;
    *store.drop_to.lock().unwrap() = None;
    let later = alice.send("bob", b"later").await.unwrap().message_id;
    let undelivered = |events: &[Event]| -> Vec<[u8; 16]> {
        events
            .iter()
            .flat_map(|e| match e {
                Event::Undelivered { message_ids, .. } => message_ids.clone(),
                _ => vec![],
            })
            .collect()
    };
    let (at_alice, at_bob) = until(&mut alice, &mut bob, |a, b| {
        delivered(a).contains(&later)
            && !undelivered(a).is_empty()
            && b.iter().any(|e| matches!(e, Event::Missing { .. }))
    })
    .await;
    assert!(
        at_bob
            .iter()
            .any(|e| matches!(e, Event::Missing { count: 1, .. })),
        "{at_bob:?}"
    );
    assert!(!delivered(&at_alice).contains(&lost));
    assert_eq!(undelivered(&at_alice), vec![lost], "{at_alice:?}");
    // Reported once, and still tracked (a late receipt would report it).
    assert!(alice.tick().await.unwrap().is_empty());
    // The tracking survives a restart.
    drop(alice);
    let alice = Client::resume(&dir.path().join("alice"), &common::pass(), Some(&options))
        .await
        .unwrap();
    let pending: Vec<_> = alice
        .state()
        .outbox
        .values()
        .flat_map(|o| o.pending.values().map(|p| p.message_id))
        .collect();
    assert_eq!(pending, vec![lost]);
    server.shutdown().await;
}

/// The server hands Bob's bundle, one-time prekey included, to Carol after
/// Alice: Bob cannot open Carol's first message (its prekey is spent). He
/// rejects it, asks Carol for it again on a session of his own, and Carol's
/// client sends it again: Bob reads it once, and Carol is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_prekey_served_twice_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Hostile::new());
    let (server, options) = server_with(store.clone(), config()).await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    let mut carol = user(&options, &dir.path().join("carol"), "carol").await;
    bob.set_receipt_delay(Duration::from_millis(50));
    *store.serve_twice.lock().unwrap() = Some("bob".into());
    alice.send("bob", b"from alice").await.unwrap();
    let id = carol.send("bob", b"from carol").await.unwrap().message_id;
    assert!(store.serve_twice.lock().unwrap().is_none(), "served twice");

    // Bob rejects Carol's setup and asks her for it again; her client
    // sends it again on his new session; he reads it, once, and his receipt
    // tells her it was delivered.
    let (at_bob, at_carol) = until(&mut bob, &mut carol, |_, c| delivered(c).contains(&id)).await;
    assert_eq!(shown(&at_bob), vec!["from alice", "from carol"]);
    assert!(
        at_bob
            .iter()
            .any(|e| matches!(e, Event::Rejected { from, .. } if from.user == "carol")),
        "{at_bob:?}"
    );
    assert!(
        at_carol
            .iter()
            .any(|e| matches!(e, Event::Resent { message_id, .. } if *message_id == id)),
        "{at_carol:?}"
    );
    // The conversation goes on both ways.
    carol.send("bob", b"again").await.unwrap();
    assert_eq!(next_message(&mut bob).await.text, b"again".to_vec());
    bob.send("carol", b"hello carol").await.unwrap();
    assert_eq!(next_message(&mut carol).await.text, b"hello carol".to_vec());
    server.shutdown().await;
}
