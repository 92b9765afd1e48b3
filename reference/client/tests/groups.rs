//! Group chat end to end through the real server (PROTOCOL §16): a group
//! made, messages fanned out by the server to every member device, changes
//! shown to every member with who made them, a removed member who reads
//! nothing sent after, a device the server made for a member that gets
//! nothing, a sender forged by the server, a message the server dropped
//! reported missing, and groups that survive a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatify_client::{Client, ClientError, Event, GroupChange, Incoming, Push};
use chatify_core::group::GroupHeader;
use chatify_proto::frame::{Address, Deliver};
use chatify_server::store::{NewEnvelope, SqliteStore, Store, StoreError};

mod common;

use common::{addr, config, pass, server_with, user};

/// An SQLite store that keeps a copy of every group message it stores,
/// and drops those the test names (the server losing or withholding them).
struct Tap {
    inner: SqliteStore,
    seen: Mutex<Vec<NewEnvelope>>,
    drop_to: Mutex<Option<(Address, u32)>>,
    /// Every envelope to this user is dropped (the server withholding all
    /// of it: changes, keys and messages).
    withhold: Mutex<Option<String>>,
}

impl Store for Tap {
    chatify_server::forward_store!(self => self.inner;
        blobs, create_user, password_hash, create_token, token, revoke_tokens, prune_tokens,
        publish_keys, take_bundle, one_time_prekey_count, fast_commits, fast_reads,
        pending, ack, history, prune_history, devices, remove_device, put_link, take_link, mfa,
        mfa_begin, mfa_enable, mfa_use_step, mfa_use_recovery, mfa_disable);

    fn enqueue(&self, e: &NewEnvelope) -> Result<Option<u64>, StoreError> {
        if self.withhold.lock().unwrap().as_deref() == Some(e.to.user.as_str()) {
            if GroupHeader::parse(&e.envelope).is_ok() {
                self.seen.lock().unwrap().push(e.clone());
            }
            return Ok(Some(0));
        }
        if GroupHeader::parse(&e.envelope).is_ok() {
            self.seen.lock().unwrap().push(e.clone());
            let mut drop_to = self.drop_to.lock().unwrap();
            if let Some((to, n)) = drop_to.as_mut()
                && *to == e.to
            {
                *n -= 1;
                if *n == 0 {
                    *drop_to = None;
                    return Ok(Some(0));
                }
            }
        }
        self.inner.enqueue(e)
    }
}

async fn start() -> (
    chatify_server::Server,
    chatify_client::ConnectOptions,
    Arc<Tap>,
) {
    let tap = Arc::new(Tap {
        inner: SqliteStore::in_memory().unwrap(),
        seen: Mutex::default(),
        drop_to: Mutex::default(),
        withhold: Mutex::default(),
    });
    let (server, options) = server_with(tap.clone(), config()).await;
    (server, options, tap)
}

/// Alice, Bob and Carol logged in, and the group Alice made of them.
async fn trio(
    options: &chatify_client::ConnectOptions,
    dir: &std::path::Path,
) -> (Client, Client, Client, chatify_core::group::GroupId) {
    let mut alice = user(options, &dir.join("a"), "alice").await;
    let bob = user(options, &dir.join("b"), "bob").await;
    let carol = user(options, &dir.join("c"), "carol").await;
    let group = alice.create_group(&["bob", "carol"]).await.unwrap();
    (alice, bob, carol, group)
}

/// What a client reported, waiting until `want` says enough arrived.
async fn events_until(client: &mut Client, want: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let mut events = Vec::new();
    while !want(&events) {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next_event())
            .await
            .unwrap_or_else(|_| panic!("waited 10 s; had {events:?}"))
            .unwrap()
            .expect("connection ended");
        events.push(event);
    }
    events
}

fn messages(events: &[Event]) -> Vec<&Incoming> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn changes(events: &[Event]) -> Vec<GroupChange> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::GroupChanged { changes, .. } => Some(changes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

async fn next_text(client: &mut Client) -> Incoming {
    let events = events_until(client, |e| !messages(e).is_empty()).await;
    messages(&events)[0].clone()
}

/// Everyone reads everyone; the server stores one copy per member device
/// (not per member: Carol's two devices each get one), and each copy opens.
#[tokio::test]
async fn a_group_message_reaches_every_member_device_and_changes_name_who_made_them() {
    let (_server, options, tap) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, group) = trio(&options, dir.path()).await;
    for member in [&mut bob, &mut carol] {
        let events = events_until(member, |e| !changes(e).is_empty()).await;
        assert_eq!(
            changes(&events),
            vec![GroupChange::Created {
                by: "alice".into(),
                members: vec!["alice".into(), "bob".into(), "carol".into()],
            }]
        );
        let info = member.groups().unwrap();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].id, group);
    }
    let sent = alice.send_group(&group, b"hello, group").await.unwrap();
    assert_eq!(sent.devices, 2);
    for member in [&mut bob, &mut carol] {
        let m = next_text(member).await;
        assert_eq!(
            (m.text.as_slice(), m.conversation, m.seq),
            (&b"hello, group"[..], group, 0)
        );
        assert_eq!(m.from, addr("alice", 1));
    }
    bob.send_group(&group, b"hi from bob").await.unwrap();
    for member in [&mut alice, &mut carol] {
        let m = next_text(member).await;
        assert_eq!(
            (m.text.as_slice(), m.from.clone()),
            (&b"hi from bob"[..], addr("bob", 1))
        );
    }
    // The server fanned each message out: one upload, a copy per device,
    // all the same bytes, none of them the text.
    let seen = tap.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].envelope, seen[1].envelope);
    assert!(seen.iter().all(|e| !contains(&e.envelope, b"hello, group")));
    // A member who is not an admin cannot add anyone.
    let err = bob.add_to_group(&group, "alice").await.unwrap_err();
    assert!(err.to_string().contains("may not"), "{err}");
    // The messages are in each member's log, filed under the group.
    let logged = carol.messages().unwrap();
    assert!(logged.iter().all(|m| m.group == Some(group)));
    assert_eq!(logged.len(), 2);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Alice removes Carol: Bob and Carol are told who did it; Alice and Bob
/// start new keys; Carol is sent nothing more, and a copy the server hands
/// her anyway does not open.
#[tokio::test]
async fn a_removed_member_reads_nothing_sent_after() {
    let (_server, options, tap) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, group) = trio(&options, dir.path()).await;
    alice.send_group(&group, b"before").await.unwrap();
    next_text(&mut bob).await;
    next_text(&mut carol).await;
    alice.remove_from_group(&group, "carol").await.unwrap();
    let removed = GroupChange::Removed {
        by: "alice".into(),
        user: "carol".into(),
    };
    for member in [&mut bob, &mut carol] {
        let events = events_until(member, |e| !changes(e).is_empty()).await;
        assert_eq!(changes(&events), vec![removed.clone()]);
    }
    assert!(carol.groups().unwrap()[0].left);
    let before = tap.seen.lock().unwrap().len();
    let sent = alice.send_group(&group, b"after carol left").await.unwrap();
    assert_eq!(sent.devices, 1, "only Bob's device");
    assert_eq!(next_text(&mut bob).await.text, b"after carol left");
    let after: Vec<NewEnvelope> = tap.seen.lock().unwrap()[before..].to_vec();
    assert!(after.iter().all(|e| e.to.user != "carol"));
    let old = GroupHeader::parse(&tap.seen.lock().unwrap()[0].envelope).unwrap();
    let new = GroupHeader::parse(&after[0].envelope).unwrap();
    assert_ne!(old.key_id, new.key_id, "a new key after the removal");
    // The server hands Carol the new message anyway.
    let e = &after[0];
    let events = carol
        .handle(Push::Deliver(Deliver {
            seq: 999,
            from: e.from.clone(),
            conversation: e.conversation,
            message_id: e.message_id,
            sent_at_ms: e.sent_at_ms,
            envelope: e.envelope.clone(),
        }))
        .await
        .unwrap();
    assert!(
        matches!(&events[..], [Event::Rejected { .. }]),
        "{events:?}"
    );
    // And Carol cannot send to the group any more.
    assert!(carol.send_group(&group, b"still here?").await.is_err());
    // Bob leaves on his own; Alice is told it was him.
    bob.leave_group(&group).await.unwrap();
    let events = events_until(&mut alice, |e| !changes(e).is_empty()).await;
    assert_eq!(
        changes(&events),
        vec![GroupChange::Removed {
            by: "bob".into(),
            user: "bob".into()
        }]
    );
}

/// The server relabels Carol's group message as Bob's: it does not open
/// as Bob's (his key signs his messages). And a device the server made
/// for Bob (a new identity nobody linked) is sent nothing.
#[tokio::test]
async fn a_forged_sender_and_a_device_the_server_made_are_refused() {
    let (_server, options, tap) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, group) = trio(&options, dir.path()).await;
    for member in [&mut bob, &mut carol] {
        events_until(member, |e| !changes(e).is_empty()).await;
    }
    bob.send_group(&group, b"bob's first").await.unwrap();
    next_text(&mut alice).await;
    carol.send_group(&group, b"carol speaking").await.unwrap();
    next_text(&mut alice).await;
    let forged = tap
        .seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e.to.user == "alice")
        .unwrap()
        .clone();
    assert_eq!(forged.from.user, "carol");
    let events = alice
        .handle(Push::Deliver(Deliver {
            seq: 999,
            from: addr("bob", 1),
            conversation: forged.conversation,
            message_id: [7; 16],
            sent_at_ms: forged.sent_at_ms,
            envelope: forged.envelope.clone(),
        }))
        .await
        .unwrap();
    assert!(
        matches!(&events[..], [Event::Rejected { .. }]),
        "{events:?}"
    );
    // A second device of Bob's with an identity of its own: what a server
    // that makes devices for its users would do.
    let made = Client::login(
        &options,
        &dir.path().join("b2"),
        &pass(),
        "bob",
        "bob-password",
        2,
    )
    .await
    .unwrap();
    let before = tap.seen.lock().unwrap().len();
    let sent = alice
        .send_group(&group, b"not for the made device")
        .await
        .unwrap();
    assert_eq!(sent.devices, 2, "bob:1 and carol:1, not bob:2");
    let copies = &tap.seen.lock().unwrap()[before..];
    assert!(copies.iter().all(|e| e.to != addr("bob", 2)));
    drop(made);
}

/// The server drops one of Alice's group messages to Bob: Bob's client
/// says a message from Alice is missing once a later one arrives.
#[tokio::test]
async fn a_group_message_the_server_dropped_is_reported_missing() {
    let (_server, options, tap) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = user(&options, &dir.path().join("a"), "alice").await;
    let mut bob = user(&options, &dir.path().join("b"), "bob").await;
    bob.set_missing_grace(Duration::ZERO);
    let group = alice.create_group(&["bob"]).await.unwrap();
    *tap.drop_to.lock().unwrap() = Some((addr("bob", 1), 2));
    for text in [&b"one"[..], b"two", b"three"] {
        alice.send_group(&group, text).await.unwrap();
    }
    let events = events_until(&mut bob, |e| {
        messages(e).len() == 2 && e.iter().any(|e| matches!(e, Event::Missing { .. }))
    })
    .await;
    let texts: Vec<&[u8]> = messages(&events).iter().map(|m| &m.text[..]).collect();
    assert_eq!(texts, vec![&b"one"[..], b"three"]);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Missing { from, count: 1 } if *from == addr("alice", 1)
    )));
}

/// Both ends restart between messages: the groups, keys and sequence
/// numbers come back, and nothing is reused or read twice.
#[tokio::test]
async fn groups_survive_a_restart_of_every_member() {
    let (_server, options, _tap) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut alice = user(&options, &a, "alice").await;
    let mut bob = user(&options, &b, "bob").await;
    let group = alice.create_group(&["bob"]).await.unwrap();
    alice.send_group(&group, b"one").await.unwrap();
    assert_eq!(next_text(&mut bob).await.seq, 0);
    alice.close().await;
    bob.close().await;
    let mut alice = Client::resume(&a, &pass(), Some(&options)).await.unwrap();
    let mut bob = Client::resume(&b, &pass(), Some(&options)).await.unwrap();
    alice.send_group(&group, b"two").await.unwrap();
    let m = next_text(&mut bob).await;
    assert_eq!((m.text.as_slice(), m.seq), (&b"two"[..], 1));
    bob.send_group(&group, b"three").await.unwrap();
    assert_eq!(next_text(&mut alice).await.text, b"three");
    let err: ClientError = alice.find_group("ffff").map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("no group"));
    assert_eq!(
        alice
            .find_group(&chatify_proto::hex::lower(&group[..4]))
            .unwrap(),
        group
    );
}

/// Several nodes (PostgreSQL and NATS): Alice on one node, Bob and Carol
/// on the other. The group is made, read and changed across them: one
/// `SendGroup` through node one reaches both members through node two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_works_across_nodes() {
    let Some(nodes) = common::two_nodes("groups").await else {
        return;
    };
    let (one, two) = (&nodes.options[0], &nodes.options[1]);
    let dir = tempfile::tempdir().unwrap();
    let mut alice = user(one, &dir.path().join("a"), "alice").await;
    let mut bob = user(two, &dir.path().join("b"), "bob").await;
    let mut carol = user(two, &dir.path().join("c"), "carol").await;
    let group = alice.create_group(&["bob", "carol"]).await.unwrap();
    for member in [&mut bob, &mut carol] {
        events_until(member, |e| !changes(e).is_empty()).await;
    }
    let sent = alice.send_group(&group, b"across nodes").await.unwrap();
    assert_eq!(sent.devices, 2);
    for member in [&mut bob, &mut carol] {
        assert_eq!(next_text(member).await.text, b"across nodes");
    }
    bob.send_group(&group, b"and back").await.unwrap();
    assert_eq!(next_text(&mut alice).await.text, b"and back");
    alice.remove_from_group(&group, "carol").await.unwrap();
    events_until(&mut bob, |e| !changes(e).is_empty()).await;
    alice.send_group(&group, b"without carol").await.unwrap();
    assert_eq!(next_text(&mut bob).await.text, b"without carol");
    for c in [alice, bob, carol] {
        c.close().await;
    }
    nodes.finish().await;
}

/// The server withholds everything addressed to Carol while Alice removes
/// her, so Carol's client never learns it: the messages sent after still
/// do not open for her, because the new keys went to Bob alone.
#[tokio::test]
async fn a_removed_member_never_told_still_reads_nothing_after() {
    let (_server, options, tap) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, group) = trio(&options, dir.path()).await;
    alice.send_group(&group, b"before").await.unwrap();
    assert_eq!(next_text(&mut carol).await.text, b"before");
    next_text(&mut bob).await;
    *tap.withhold.lock().unwrap() = Some("carol".into());
    alice.remove_from_group(&group, "carol").await.unwrap();
    alice.send_group(&group, b"after").await.unwrap();
    assert_eq!(next_text(&mut bob).await.text, b"after");
    *tap.withhold.lock().unwrap() = None;
    assert!(!carol.groups().unwrap()[0].left, "Carol was never told");
    let after = tap.seen.lock().unwrap().last().unwrap().clone();
    let events = carol
        .handle(Push::Deliver(Deliver {
            seq: 999,
            from: after.from.clone(),
            conversation: after.conversation,
            message_id: after.message_id,
            sent_at_ms: after.sent_at_ms,
            envelope: after.envelope.clone(),
        }))
        .await
        .unwrap();
    match &events[..] {
        [Event::Rejected { reason, .. }] => assert!(reason.contains("no key"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(carol.messages().unwrap().iter().all(|m| m.text != b"after"));
}
