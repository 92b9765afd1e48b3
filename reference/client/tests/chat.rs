//! The reference client and server together over real loopback sockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use chatify_client::{Client, ClientError, ConnectOptions, Connection, Event};
use chatify_proto::frame::{self, Address};
use chatify_proto::{Body, ErrorCode};
use chatify_server::Config;
use chatify_server::store::SqliteStore;
use chatify_server::store::sqlite::Durability;

mod common;

use common::{config, next_message, server, server_with, user};

#[tokio::test]
async fn two_clients_chat_online() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;

    alice.send("bob", b"hello Bob").await.unwrap();
    let t = alice.timings();
    assert!(t.encrypt.is_some() && t.setup.is_some(), "{t:?}");
    let m = next_message(&mut bob).await;
    assert!(bob.timings().decrypt.is_some());
    assert_eq!(
        (m.from.user.as_str(), &m.text[..]),
        ("alice", &b"hello Bob"[..])
    );
    assert!(!m.identity_changed());

    for i in 0..5 {
        bob.send("alice", format!("reply {i}").as_bytes())
            .await
            .unwrap();
        alice
            .send("bob", format!("again {i}").as_bytes())
            .await
            .unwrap();
    }
    for i in 0..5 {
        assert_eq!(
            next_message(&mut alice).await.text,
            format!("reply {i}").into_bytes()
        );
        assert_eq!(
            next_message(&mut bob).await.text,
            format!("again {i}").into_bytes()
        );
    }
    assert_eq!(alice.safety_number("bob"), bob.safety_number("alice"));
    assert!(alice.safety_number("bob").is_some());

    // The server's history holds ciphertext only, and both can page it.
    let history = alice.history("bob", 100).await.unwrap();
    assert_eq!(history.len(), 11);
    assert!(history.iter().all(|d| {
        !d.envelope
            .windows(5)
            .any(|w| w == b"hello" || w == b"reply")
    }));
    assert!(
        history.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_message_to_an_offline_client_arrives_when_it_connects() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let bob = user(&options, &dir.path().join("bob"), "bob").await;
    bob.close().await;

    for i in 0..3 {
        alice
            .send("bob", format!("while you were out {i}").as_bytes())
            .await
            .unwrap();
    }
    let mut bob = Client::resume(&dir.path().join("bob"), &common::pass(), Some(&options))
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(
            next_message(&mut bob).await.text,
            format!("while you were out {i}").into_bytes()
        );
    }
    // Acknowledged: a new connection gets nothing more.
    bob.close().await;
    let mut bob = Client::resume(&dir.path().join("bob"), &common::pass(), Some(&options))
        .await
        .unwrap();
    alice.send("bob", b"fresh").await.unwrap();
    assert_eq!(next_message(&mut bob).await.text, b"fresh".to_vec());
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_restarted_between_send_and_receive_still_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let store = Arc::new(SqliteStore::open(&db, Durability::Full).unwrap());
    let (server, options) = server_with(store, config()).await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let bob = user(&options, &dir.path().join("bob"), "bob").await;
    bob.close().await;
    alice.send("bob", b"survives a restart").await.unwrap();
    alice.close().await;
    server.shutdown().await;

    // A new server process on the same database file.
    let store = Arc::new(SqliteStore::open(&db, Durability::Full).unwrap());
    let (server, options) = server_with(store, config()).await;
    let mut bob = Client::resume(&dir.path().join("bob"), &common::pass(), Some(&options))
        .await
        .unwrap();
    let m = next_message(&mut bob).await;
    assert_eq!(m.text, b"survives a restart".to_vec());
    // And the session goes on after the restart in both directions.
    let mut alice = Client::resume(&dir.path().join("alice"), &common::pass(), Some(&options))
        .await
        .unwrap();
    bob.send("alice", b"got it").await.unwrap();
    assert_eq!(next_message(&mut alice).await.text, b"got it".to_vec());
    server.shutdown().await;
}

#[tokio::test]
async fn clients_survive_restarts_from_their_state_files() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    for round in 0..3 {
        alice
            .send("bob", format!("a{round}").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut bob).await.text,
            format!("a{round}").into_bytes()
        );
        bob.send("alice", format!("b{round}").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut alice).await.text,
            format!("b{round}").into_bytes()
        );
        // Both "crash" (no clean close) and come back from disk.
        drop(alice);
        drop(bob);
        alice = Client::resume(&dir.path().join("alice"), &common::pass(), Some(&options))
            .await
            .unwrap();
        bob = Client::resume(&dir.path().join("bob"), &common::pass(), Some(&options))
            .await
            .unwrap();
    }
    assert_eq!(bob.messages().unwrap().len(), 3);
    server.shutdown().await;
}

/// A burst of sends saves the state once per reservation, not once per
/// message; a crash in the middle of a reservation (no clean close, no save
/// since) restores past every key used, and the peer reads everything.
#[tokio::test]
async fn sends_share_a_save_and_a_crash_mid_reservation_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    alice.send("bob", b"first").await.unwrap();
    assert_eq!(next_message(&mut bob).await.text, b"first".to_vec());
    bob.send("alice", b"reply").await.unwrap();
    assert_eq!(next_message(&mut alice).await.text, b"reply".to_vec());

    // Alice's receive saved her state with her new sending chain reserved
    // (a chain created in this lifetime, §13.1).
    alice.start_trace();
    for i in 0..20 {
        alice.send("bob", format!("a{i}").as_bytes()).await.unwrap();
    }
    let saves = alice
        .take_trace()
        .iter()
        .filter(|e| e.what == "state saved")
        .count();
    assert_eq!(saves, 0, "20 sends within one reservation save nothing");

    // Crash: no clean close; the state on disk is from before the burst.
    drop(alice);
    let mut alice = Client::resume(&dir.path().join("alice"), &common::pass(), Some(&options))
        .await
        .unwrap();
    alice.send("bob", b"after the crash").await.unwrap();
    for i in 0..20 {
        assert_eq!(
            next_message(&mut bob).await.text,
            format!("a{i}").into_bytes()
        );
    }
    assert_eq!(
        next_message(&mut bob).await.text,
        b"after the crash".to_vec()
    );
    server.shutdown().await;
}

/// A request made after the connection died fails at once (it used to wait
/// forever when the reader had already given up on the connection).
#[tokio::test]
async fn a_request_after_the_server_died_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    server.abort();
    // Wait until the client has seen the connection go.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), alice.next_push())
            .await
            .expect("the client never noticed the server dying")
        {
            Some(chatify_client::Push::Closed(_)) | None => break,
            Some(_) => {}
        }
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        alice.connection().request(frame::Ping {}),
    )
    .await
    .expect("a request on a dead connection hung");
    assert!(matches!(reply, Err(ClientError::Disconnected)), "{reply:?}");
}

#[tokio::test]
async fn concurrent_bundle_fetches_never_share_a_one_time_prekey() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let bob = user(&options, &dir.path().join("bob"), "bob").await;
    let held = bob.state().device.one_time_prekey_count();
    assert_eq!(held, chatify_client::PREKEY_TARGET as usize);
    let mut fetchers = Vec::new();
    for i in 0..8 {
        fetchers.push(
            user(
                &options,
                &dir.path().join(format!("f{i}")),
                &format!("fetcher{i}"),
            )
            .await,
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    for f in fetchers {
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..10 {
                let reply = f
                    .connection()
                    .request(frame::FetchBundle {
                        device: Address {
                            user: "bob".into(),
                            device: 1,
                        },
                    })
                    .await
                    .unwrap();
                match reply {
                    Body::Bundle(b) => ids.push(b.bundle.one_time_prekey.map(|k| k.id)),
                    other => panic!("{other:?}"),
                }
            }
            ids
        });
    }
    let mut all = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        all.extend(ids.unwrap());
    }
    assert_eq!(all.len(), 80);
    let served: Vec<u32> = all.iter().flatten().copied().collect();
    assert_eq!(served.len(), 80, "the pool of {held} was not exhausted");
    let mut unique = served.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        served.len(),
        "a one-time prekey was served twice"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_low_prekey_pool_is_replenished() {
    let dir = tempfile::tempdir().unwrap();
    // The bundle-fetch limit off: one account drains the pool here.
    let (server, options) = common::server_with(
        std::sync::Arc::new(chatify_server::store::SqliteStore::in_memory().unwrap()),
        chatify_server::Config {
            bundle_fetch_burst: 0,
            ..common::config()
        },
    )
    .await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    let fetcher = Connection::connect(&options.url, None).await.unwrap();
    let alice = user(&options, &dir.path().join("alice"), "alice").await;
    let token = alice.state().token.clone().unwrap();
    fetcher
        .request(frame::Authenticate {
            token: token.to_vec(),
        })
        .await
        .unwrap();
    for _ in 0..95 {
        fetcher
            .request(frame::FetchBundle {
                device: Address {
                    user: "bob".into(),
                    device: 1,
                },
            })
            .await
            .unwrap();
    }
    let event = tokio::time::timeout(Duration::from_secs(10), bob.next_event())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, Some(Event::KeysReplenished(n)) if n >= 90),
        "{event:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_changed_identity_is_shown_and_blocks_sending_until_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    alice.send("bob", b"hi").await.unwrap();
    next_message(&mut bob).await;
    let before = alice.safety_number("bob").unwrap();
    bob.close().await;

    // Bob reinstalls: new keys on the same account and device.
    let mut bob = Client::login(
        &options,
        &dir.path().join("bob-new"),
        &common::pass(),
        "bob",
        "bob-password",
        1,
    )
    .await
    .unwrap();
    bob.send("alice", b"it's me, new phone").await.unwrap();
    let m = next_message(&mut alice).await;
    assert_eq!(m.text, b"it's me, new phone".to_vec());
    assert!(m.identity_changed(), "the change must be flagged");
    assert_ne!(alice.safety_number("bob").unwrap(), before);

    match alice.send("bob", b"blocked?").await {
        Err(ClientError::IdentityChanged { peer }) => assert_eq!(peer, "bob"),
        other => panic!("sending was not blocked: {other:?}"),
    }
    alice.confirm_peer("bob").unwrap();
    alice.send("bob", b"verified, hello again").await.unwrap();
    assert_eq!(
        next_message(&mut bob).await.text,
        b"verified, hello again".to_vec()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn wss_with_a_certificate_generated_at_test_time() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = dir.path().join("cert.pem");
    let key_pem = dir.path().join("key.pem");
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let tls = chatify_server::tls::server_config(&cert_pem, &key_pem).unwrap();
    let (server, _) = server_with(
        Arc::new(SqliteStore::in_memory().unwrap()),
        Config {
            tls: Some(tls),
            ..config()
        },
    )
    .await;
    let url = format!("wss://localhost:{}", server.local_addr().port());
    let options = ConnectOptions::new(url.clone())
        .with_ca_cert(&cert_pem)
        .unwrap();
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    alice.send("bob", b"over TLS").await.unwrap();
    assert_eq!(next_message(&mut bob).await.text, b"over TLS".to_vec());

    // Without trusting the certificate, or over plain ws, no connection.
    assert!(Connection::connect(&url, None).await.is_err());
    let other = dir.path().join("other.pem");
    let other_cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&other, other_cert.cert.pem()).unwrap();
    let untrusted = ConnectOptions::new(url).with_ca_cert(&other).unwrap();
    assert!(
        Connection::connect(&untrusted.url, untrusted.tls.clone())
            .await
            .is_err()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_from_another_device_cannot_read_a_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let _bob = user(&options, &dir.path().join("bob"), "bob").await;
    let receipt = alice.send("bob", b"for bob only").await.unwrap();
    let reply = alice
        .connection()
        .request(frame::Ack {
            seqs: vec![receipt.seq],
        })
        .await;
    assert!(chatify_client::connection::is_code(
        &reply.unwrap_err(),
        ErrorCode::Forbidden
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn both_sides_starting_a_session_at_once_still_converse() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    // Each starts a session before seeing the other's: two sessions exist.
    alice.send("bob", b"a0").await.unwrap();
    bob.send("alice", b"b0").await.unwrap();
    alice.send("bob", b"a1").await.unwrap();
    bob.send("alice", b"b1").await.unwrap();
    for expected in ["b0", "b1"] {
        assert_eq!(next_message(&mut alice).await.text, expected.as_bytes());
    }
    for expected in ["a0", "a1"] {
        assert_eq!(next_message(&mut bob).await.text, expected.as_bytes());
    }
    for i in 0..4 {
        alice
            .send("bob", format!("a{}", i + 2).as_bytes())
            .await
            .unwrap();
        bob.send("alice", format!("b{}", i + 2).as_bytes())
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut bob).await.text,
            format!("a{}", i + 2).into_bytes()
        );
        assert_eq!(
            next_message(&mut alice).await.text,
            format!("b{}", i + 2).into_bytes()
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_batch_is_committed_and_acknowledged_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, options) = server().await;
    let mut alice = user(&options, &dir.path().join("alice"), "alice").await;
    let mut bob = user(&options, &dir.path().join("bob"), "bob").await;
    for i in 0..20 {
        alice
            .send("bob", format!("batched {i}").as_bytes())
            .await
            .unwrap();
    }
    // Wait until all twenty have arrived, then handle them as one batch.
    let mut batch = vec![bob.next_push().await.unwrap()];
    while batch.len() < 20 {
        match bob.try_next_push() {
            Some(p) => batch.push(p),
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let events = bob.handle_batch(batch).await.unwrap();
    let texts: Vec<Vec<u8>> = events
        .into_iter()
        .map(|e| match e {
            Event::Message(m) => m.text,
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("batched {i}").into_bytes())
        .collect();
    assert_eq!(texts, expected);
    assert_eq!(bob.decrypt_times().len(), 20);
    // All were acknowledged and logged: after a restart nothing comes again.
    bob.close().await;
    let mut bob = Client::resume(&dir.path().join("bob"), &common::pass(), Some(&options))
        .await
        .unwrap();
    assert_eq!(bob.messages().unwrap().len(), 20);
    alice.send("bob", b"after").await.unwrap();
    assert_eq!(next_message(&mut bob).await.text, b"after".to_vec());
    server.shutdown().await;
}
