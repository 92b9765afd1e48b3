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

use std::time::{Duration, Instant};

use chatify_proto::frame;
use chatify_proto::{Body, ErrorCode};
use chatify_server::auth::PasswordCost;
use chatify_server::{CLOSE_POLICY, Config};
use common::{Got, Raw, account, start, test_config};
use futures_util::{SinkExt as _, StreamExt as _};

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

/// A WebSocket that never authenticates is closed at the deadline (a
/// logged-out one too), with the policy code; an authenticated one stays.
#[tokio::test]
async fn an_unauthenticated_socket_is_closed_at_the_deadline() {
    let config = Config {
        auth_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let (server, url) = start(config).await;
    let (mut authed, _) = account(&url, "stays").await;
    let mut idle = Raw::connect(&url).await;
    // Requests that do not authenticate do not extend the deadline.
    idle.ping().await;
    let t = Instant::now();
    assert!(matches!(idle.recv().await, Got::Closed(Some(CLOSE_POLICY))));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(400)).await;
    authed.ping().await;
    // After a logout the connection must authenticate again in time.
    assert!(matches!(
        authed.request(frame::Logout {}).await,
        Body::Ok(_)
    ));
    assert!(matches!(
        authed.recv().await,
        Got::Closed(Some(CLOSE_POLICY))
    ));
    server.shutdown().await;
}

/// A peer the server hears nothing from is pinged, and closed when it does
/// not answer; one that only reads (its WebSocket answers the pings) stays.
#[tokio::test]
async fn a_silent_peer_is_pinged_and_a_dead_one_closed() {
    let config = Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..test_config()
    };
    let (server, url) = start(config).await;
    let (mut reader, _) = account(&url, "reader").await;
    let (mut dead, _) = account(&url, "dead").await;
    // The reader reads (and so answers pings) for a second, sending nothing.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), reader.recv())
            .await
            .is_err(),
        "the reader was closed"
    );
    reader.ping().await;
    // The dead peer read nothing in that second: it never answered.
    match dead.recv().await {
        Got::Closed(Some(code)) => assert_eq!(code, CLOSE_POLICY),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

/// One address may hold only so many connections: the next one is closed
/// with the policy code and a reason right after its handshake; closing one
/// frees its place; other connections keep working.
#[tokio::test]
async fn connections_per_address_are_limited() {
    let config = Config {
        max_connections_per_address: 4,
        ..test_config()
    };
    let (server, url) = start(config).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(Raw::connect(&url).await);
    }
    let mut refused = Raw::connect(&url).await;
    assert!(matches!(
        refused.recv().await,
        Got::Closed(Some(CLOSE_POLICY))
    ));
    held[0].ping().await;
    let first = held.remove(0);
    drop(first);
    // The server notices the close; then there is room again.
    let mut admitted = None;
    for _ in 0..50 {
        let mut next = Raw::connect(&url).await;
        match tokio::time::timeout(Duration::from_millis(200), next.recv()).await {
            Err(_) => {
                admitted = Some(next);
                break;
            }
            Ok(Got::Closed(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(other) => panic!("{other:?}"),
        }
    }
    admitted
        .expect("a freed place was never reused")
        .ping()
        .await;
    server.shutdown().await;
}

fn publish(ids: impl IntoIterator<Item = u32>, key: u8) -> frame::PublishKeys {
    common::publish_keys(ids, |_| [key; 32])
}

/// The key directory's rules hold at the server: one-time prekey ids are
/// unique in a frame, an id already held keeps its key (the same key again
/// is a harmless retry), and a device holds at most 1 000 one-time prekeys.
/// Each refusal changes nothing.
#[tokio::test]
async fn the_prekey_rules_are_enforced_by_the_server() {
    // The bundle-fetch limit off: this drains the pool through one account.
    let (server, url) = start(Config {
        bundle_fetch_burst: 0,
        ..test_config()
    })
    .await;
    // `account` published one-time prekeys 1..=20, key [id; 32].
    let (mut raw, _) = account(&url, "keys").await;
    let bad = ErrorCode::InvalidRequest;
    raw.expect_error(publish([100, 101, 100], 9), bad).await;
    raw.expect_error(publish([5], 9), bad).await;
    assert!(matches!(raw.request(publish([5], 5)).await, Body::Ok(_)));
    // 20 held; 980 more fill the pool, one more is refused.
    for start in (21..1001u32).step_by(196) {
        let end = (start + 196).min(1001);
        assert!(matches!(
            raw.request(publish(start..end, 7)).await,
            Body::Ok(_)
        ));
    }
    raw.expect_error(publish([5000], 7), bad).await;
    // Nothing a refusal carried was stored: prekey 5 keeps its key, and the
    // pool holds exactly 1 000 (drained through bundles).
    let (mut fetcher, _) = account(&url, "fetcher").await;
    let mut served = std::collections::HashMap::new();
    loop {
        match fetcher
            .request(frame::FetchBundle {
                device: common::addr("keys"),
            })
            .await
        {
            Body::Bundle(b) => match b.bundle.one_time_prekey {
                Some(k) => {
                    served.insert(k.id, k.public_key);
                }
                None => break,
            },
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(served.len(), 1000);
    assert_eq!(served[&5], [5; 32]);
    assert!(!served.contains_key(&5000));
    server.shutdown().await;
}

/// A history page never outgrows a frame, whatever `limit` asks: large
/// envelopes are paged by bytes, newest first, and paging with `before`
/// returns every one exactly once.
#[tokio::test]
async fn a_history_page_fits_one_frame() {
    let (server, url) = start(test_config()).await;
    let (mut alice, _) = account(&url, "alice").await;
    let (_bob, _) = account(&url, "bob").await;
    let big = chatify_proto::limits::MAX_ENVELOPE_LEN - 64;
    for i in 0..12u8 {
        let sent = alice
            .request(frame::Send {
                to: common::addr("bob"),
                conversation: [7; 16],
                message_id: [i; 16],
                envelope: vec![i; big],
            })
            .await;
        assert!(matches!(sent, Body::SendOk(_)), "{sent:?}");
    }
    let mut before = None;
    let mut seen = Vec::new();
    loop {
        let frame = chatify_proto::Frame {
            id: 9,
            body: frame::FetchHistory {
                conversation: [7; 16],
                before,
                limit: 1000,
            }
            .into(),
        };
        alice.send_bytes(frame.encode()).await;
        let reply = loop {
            match alice.recv().await {
                Got::Frame(f) if f.id == 9 => break f,
                Got::Frame(_) => continue,
                Got::Closed(c) => panic!("closed: {c:?}"),
            }
        };
        let len = reply.encode().len();
        assert!(len <= chatify_proto::limits::MAX_FRAME_LEN, "{len} bytes");
        let Body::History(h) = reply.body else {
            panic!("{:?}", reply.body)
        };
        if h.items.is_empty() {
            break;
        }
        assert!(
            h.items.windows(2).all(|w| w[0].seq > w[1].seq),
            "newest first"
        );
        before = h.items.last().map(|d| d.seq);
        seen.extend(h.items.iter().map(|d| d.message_id[0]));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..12).collect::<Vec<u8>>());
    server.shutdown().await;
}

/// A logout signs the device out everywhere: every token the device holds
/// (a second login's, a stolen copy's) is revoked, and another device of
/// the same user keeps its own.
#[tokio::test]
async fn a_logout_revokes_every_token_of_the_device() {
    let (server, url) = start(test_config()).await;
    let (mut first, first_token) = account(&url, "dana").await;
    let login = |device| frame::Login {
        username: "dana".into(),
        password: "dana-password".into(),
        device,
        second_factor: None,
    };
    let mut raw = Raw::connect(&url).await;
    let Body::LoginOk(second) = raw.request(login(1)).await else {
        panic!("second login refused")
    };
    let Body::LoginOk(other_device) = raw.request(login(2)).await else {
        panic!("login of device 2 refused")
    };
    assert!(matches!(first.request(frame::Logout {}).await, Body::Ok(_)));
    for token in [first_token, second.token] {
        Raw::connect(&url)
            .await
            .expect_error(frame::Authenticate { token }, ErrorCode::InvalidToken)
            .await;
    }
    let mut two = Raw::connect(&url).await;
    assert!(matches!(
        two.request(frame::Authenticate {
            token: other_device.token
        })
        .await,
        Body::AuthOk(_)
    ));
    server.shutdown().await;
}

/// Sends `n` pings without waiting and counts, over `window`, the replies:
/// (pongs, rate-limited refusals).
async fn flood_pings(raw: &mut Raw, n: u64, window: Duration) -> (u64, u64) {
    for i in 0..n {
        raw.ws
            .feed(tokio_tungstenite::tungstenite::Message::Binary(
                chatify_proto::Frame {
                    id: 10_000 + i,
                    body: frame::Ping {}.into(),
                }
                .encode()
                .into(),
            ))
            .await
            .unwrap();
    }
    futures_util::SinkExt::flush(&mut raw.ws).await.unwrap();
    let (mut pongs, mut limited) = (0, 0);
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, raw.ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
            match chatify_proto::Frame::decode(&b).unwrap().body {
                Body::Pong(_) => pongs += 1,
                Body::Error(e) if e.code == ErrorCode::RateLimited => limited += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    (pongs, limited)
}

/// A connection that floods requests gets its burst, then about its rate:
/// the rest are answered RateLimited at that rate, not faster, and wait in
/// its socket. It stays connected, and once it slows down it is served.
#[tokio::test]
async fn a_request_flood_is_served_at_the_connection_limit() {
    let (server, url) = start(Config {
        requests_per_second: 50,
        ..test_config()
    })
    .await;
    let mut raw = Raw::connect(&url).await;
    let started = Instant::now();
    let (pongs, limited) = flood_pings(&mut raw, 1000, Duration::from_millis(1500)).await;
    let secs = started.elapsed().as_secs_f64();
    // Burst 100, then 50/s, each refusal taking a token's wait.
    let most = 100.0 + 50.0 * secs + 5.0;
    assert!(
        pongs as f64 <= most,
        "{pongs} pongs in {secs:.2} s (at most {most:.0})"
    );
    assert!(pongs >= 100, "{pongs} pongs: less than the burst");
    assert!(limited >= 1, "a flood was never told it is limited");
    assert!(
        (pongs + limited) as f64 <= most + 50.0 * secs,
        "{pongs} + {limited} replies in {secs:.2} s: refusals are not paced"
    );
    // An honest user on another connection is unaffected.
    let (mut honest, _) = account(&url, "honest").await;
    honest.ping().await;
    server.shutdown().await;
}

/// The connections of one address share a budget: two connections each
/// within their own limit are held to the address's.
#[tokio::test]
async fn connections_from_one_address_share_its_request_limit() {
    let (server, url) = start(Config {
        requests_per_second: 1000,
        requests_per_second_per_address: 50,
        ..test_config()
    })
    .await;
    let (mut a, mut b) = (Raw::connect(&url).await, Raw::connect(&url).await);
    let started = Instant::now();
    let window = Duration::from_millis(1000);
    let ((pa, la), (pb, lb)) = tokio::join!(
        flood_pings(&mut a, 150, window),
        flood_pings(&mut b, 150, window)
    );
    let secs = started.elapsed().as_secs_f64();
    let most = 100.0 + 50.0 * secs + 5.0;
    assert!(
        (pa + pb) as f64 <= most,
        "{pa} + {pb} pongs from one address in {secs:.2} s (at most {most:.0})"
    );
    assert!(la + lb >= 1);
    server.shutdown().await;
}

/// One account cannot use up another device's one-time prekeys: after its
/// burst of bundle fetches it is refused, while another account still
/// gets a bundle with a one-time prekey.
#[tokio::test]
async fn one_account_cannot_drain_a_devices_prekeys() {
    let (server, url) = start(Config {
        bundle_fetch_burst: 3,
        bundle_fetch_interval: Duration::from_secs(3600),
        ..test_config()
    })
    .await;
    let (_victim, _) = account(&url, "victim").await;
    let (mut drainer, _) = account(&url, "drainer").await;
    let fetch = || frame::FetchBundle {
        device: common::addr("victim"),
    };
    for _ in 0..3 {
        assert!(matches!(drainer.request(fetch()).await, Body::Bundle(_)));
    }
    for _ in 0..20 {
        drainer.expect_error(fetch(), ErrorCode::RateLimited).await;
    }
    // A device that does not exist is answered as such, and takes no
    // token: made-up devices cannot fill the limiter's table.
    drainer
        .expect_error(
            frame::FetchBundle {
                device: common::addr("nobody"),
            },
            ErrorCode::NoSuchUser,
        )
        .await;
    let (mut other, _) = account(&url, "other").await;
    match other.request(fetch()).await {
        Body::Bundle(b) => assert!(b.bundle.one_time_prekey.is_some()),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

/// `SendGroup` (PROTOCOL §16.3): one request stores a copy for each listed
/// device, all or nothing, and each copy costs a request token. Refused:
/// no recipient, a device twice, the sender itself, and a device that does
/// not exist (nothing stored for the others). A flood of group messages to
/// many devices meets the rate limit as the same number of `Send`s would.
#[tokio::test]
async fn a_group_message_is_stored_for_each_device_and_costs_a_token_per_copy() {
    let config = Config {
        requests_per_second: 50,
        ..test_config()
    };
    let (_server, url) = start(config).await;
    let (mut alice, _) = account(&url, "alice").await;
    let (mut bob, _) = account(&url, "bob").await;
    let (mut carol, _) = account(&url, "carol").await;
    let group = |to: Vec<frame::Address>, id: u8| frame::SendGroup {
        to,
        conversation: [9; 16],
        message_id: [id; 16],
        envelope: vec![1; 100],
    };
    let both = vec![common::addr("bob"), common::addr("carol")];
    for (to, code) in [
        (vec![], ErrorCode::InvalidRequest),
        (
            vec![common::addr("bob"), common::addr("bob")],
            ErrorCode::InvalidRequest,
        ),
        (
            vec![common::addr("bob"), common::addr("alice")],
            ErrorCode::InvalidRequest,
        ),
        (
            vec![common::addr("bob"), common::addr("nobody")],
            ErrorCode::NoSuchUser,
        ),
    ] {
        alice.expect_error(group(to, 1), code).await;
    }
    let ok = alice.request(group(both.clone(), 2)).await;
    assert!(matches!(ok, Body::SendOk(_)), "{ok:?}");
    // Bob and Carol each get exactly the one message that was stored.
    for raw in [&mut bob, &mut carol] {
        let got = common::receive_acking(raw, 2, Duration::from_millis(300)).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].message_id, got[0].conversation), ([2; 16], [9; 16]));
        assert_eq!(got[0].from, common::addr("alice"));
    }
    // Each copy costs a token: with 50 a second (a burst of 100), a
    // message to 40 devices goes twice, not a hundred times.
    for i in 0..40 {
        let name = format!("member{i}");
        let (raw, _) = account(&url, &name).await;
        drop(raw);
    }
    let many: Vec<frame::Address> = (0..40)
        .map(|i| common::addr(&format!("member{i}")))
        .collect();
    let mut stored = 0;
    for i in 0..10u8 {
        match alice.request(group(many.clone(), 10 + i)).await {
            Body::SendOk(_) => stored += 1,
            Body::Error(e) => assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        (1..=3).contains(&stored),
        "{stored} group messages to 40 devices went through"
    );
}
