//! Every class of bad input gets a typed error frame or a clean close with a
//! code, and other connections keep working meanwhile.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use chatify_proto::frame::{self, Address};
use chatify_proto::limits::MAX_FRAME_LEN;
use chatify_proto::{Body, ErrorCode, Frame};
use chatify_server::{CLOSE_POLICY, CLOSE_TOO_BIG, Config};
use common::{Got, Raw, account, addr, start, test_config};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[path = "../../test-support/raw_frame.rs"]
mod raw_frame;
use raw_frame::raw_frame;

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_others_keep_working() {
    let (server, url) = start(test_config()).await;
    let mut bystander = Raw::connect(&url).await;
    let mut raw = Raw::connect(&url).await;
    raw.send_bytes(vec![0u8; MAX_FRAME_LEN + 1]).await;
    assert!(matches!(raw.recv().await, Got::Closed(Some(CLOSE_TOO_BIG))));
    bystander.ping().await;
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_cbor_gets_bad_frame_and_the_connection_survives() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    for garbage in [
        vec![0xff, 0x00, 0x13],
        vec![],
        b"{\"json\": true}".to_vec(),
        vec![0x84, 0x01],
    ] {
        raw.send_bytes(garbage).await;
        match raw.recv().await {
            Got::Frame(Frame {
                body: Body::Error(e),
                ..
            }) => assert_eq!(e.code, ErrorCode::BadFrame),
            other => panic!("{other:?}"),
        }
    }
    raw.ping().await;
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_frame_type_is_typed_and_names_the_request() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    raw.send_bytes(raw_frame(1, 999, 4242, &[0xa0])).await;
    match raw.recv().await {
        Got::Frame(Frame {
            id,
            body: Body::Error(e),
        }) => {
            assert_eq!((id, e.code), (4242, ErrorCode::UnknownFrameType));
        }
        other => panic!("{other:?}"),
    }
    raw.ping().await;
    server.shutdown().await;
}

#[tokio::test]
async fn unsupported_version_is_typed() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    raw.send_bytes(raw_frame(2, 10, 7, &[0xa0])).await;
    match raw.recv().await {
        Got::Frame(Frame {
            body: Body::Error(e),
            ..
        }) => {
            assert_eq!(e.code, ErrorCode::UnsupportedVersion)
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn text_messages_are_refused() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    raw.ws.send(Message::Text("hello".into())).await.unwrap();
    match raw.recv().await {
        Got::Frame(Frame {
            body: Body::Error(e),
            ..
        }) => assert_eq!(e.code, ErrorCode::BadFrame),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn requests_before_authentication_are_refused() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    let requests: Vec<Body> = vec![
        frame::Send {
            to: addr("bob"),
            conversation: [0; 16],
            message_id: [0; 16],
            envelope: vec![1],
        }
        .into(),
        frame::FetchBundle {
            device: addr("bob"),
        }
        .into(),
        frame::Ack { seqs: vec![1] }.into(),
        frame::FetchHistory {
            conversation: [0; 16],
            before: None,
            limit: 10,
        }
        .into(),
        frame::Logout {}.into(),
    ];
    for body in requests {
        raw.expect_error(body, ErrorCode::Unauthenticated).await;
    }
    raw.ping().await;
    server.shutdown().await;
}

#[tokio::test]
async fn server_frames_from_a_client_are_invalid_requests() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    raw.expect_error(frame::Ok {}, ErrorCode::InvalidRequest)
        .await;
    raw.expect_error(
        frame::PrekeysLow { remaining: 1 },
        ErrorCode::InvalidRequest,
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn acking_another_users_envelope_is_forbidden_and_changes_nothing() {
    let (server, url) = start(test_config()).await;
    let (mut alice, _) = account(&url, "alice").await;
    let (mut bob, _) = account(&url, "bob").await;
    let (mut eve, _) = account(&url, "eve").await;
    let seq = match alice
        .request(frame::Send {
            to: addr("bob"),
            conversation: [9; 16],
            message_id: [1; 16],
            envelope: vec![7; 40],
        })
        .await
    {
        Body::SendOk(ok) => ok.seq,
        other => panic!("{other:?}"),
    };
    // Bob got it pushed.
    match bob.recv().await {
        Got::Frame(Frame {
            id: 0,
            body: Body::Deliver(d),
        }) => assert_eq!(d.seq, seq),
        other => panic!("{other:?}"),
    }
    eve.expect_error(frame::Ack { seqs: vec![seq] }, ErrorCode::Forbidden)
        .await;
    // Still in Bob's mailbox: a new connection of Bob's gets it again.
    drop(bob);
    let mut bob2 = Raw::connect(&url).await;
    let token = match bob2
        .request(frame::Login {
            username: "bob".into(),
            password: "bob-password".into(),
            device: 1,
            second_factor: None,
        })
        .await
    {
        Body::LoginOk(ok) => ok.token,
        other => panic!("{other:?}"),
    };
    bob2.request(frame::Authenticate { token }).await;
    match bob2.recv().await {
        Got::Frame(Frame {
            body: Body::Deliver(d),
            ..
        }) => assert_eq!(d.seq, seq),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        bob2.request(frame::Ack { seqs: vec![seq] }).await,
        Body::Ok(_)
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn reading_another_conversations_history_is_forbidden() {
    let (server, url) = start(test_config()).await;
    let (mut alice, _) = account(&url, "alice").await;
    let (_bob, _) = account(&url, "bob").await;
    let (mut eve, _) = account(&url, "eve").await;
    alice
        .request(frame::Send {
            to: addr("bob"),
            conversation: [9; 16],
            message_id: [1; 16],
            envelope: vec![7; 40],
        })
        .await;
    eve.expect_error(
        frame::FetchHistory {
            conversation: [9; 16],
            before: None,
            limit: 10,
        },
        ErrorCode::Forbidden,
    )
    .await;
    match alice
        .request(frame::FetchHistory {
            conversation: [9; 16],
            before: None,
            limit: 10,
        })
        .await
    {
        Body::History(h) => assert_eq!(h.items.len(), 1),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_replayed_after_logout_is_refused() {
    let (server, url) = start(test_config()).await;
    let (mut alice, token) = account(&url, "alice").await;
    assert!(matches!(alice.request(frame::Logout {}).await, Body::Ok(_)));
    let mut again = Raw::connect(&url).await;
    again
        .expect_error(
            frame::Authenticate {
                token: token.clone(),
            },
            ErrorCode::InvalidToken,
        )
        .await;
    again
        .expect_error(
            frame::Authenticate { token: vec![0; 32] },
            ErrorCode::InvalidToken,
        )
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let (server, url) = start(Config {
        token_ttl: Duration::ZERO,
        ..test_config()
    })
    .await;
    let mut raw = Raw::connect(&url).await;
    raw.request(frame::Register {
        username: "alice".into(),
        password: "alice-password".into(),
    })
    .await;
    let token = match raw
        .request(frame::Login {
            username: "alice".into(),
            password: "alice-password".into(),
            device: 1,
            second_factor: None,
        })
        .await
    {
        Body::LoginOk(ok) => ok.token,
        other => panic!("{other:?}"),
    };
    raw.expect_error(frame::Authenticate { token }, ErrorCode::InvalidToken)
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn login_brute_force_is_rate_limited() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    raw.request(frame::Register {
        username: "alice".into(),
        password: "alice-password".into(),
    })
    .await;
    let login = |password: &str| frame::Login {
        username: "alice".into(),
        password: password.into(),
        device: 1,
        second_factor: None,
    };
    for i in 0..5 {
        raw.expect_error(login(&format!("guess-{i}")), ErrorCode::BadCredentials)
            .await;
    }
    raw.expect_error(login("guess-5"), ErrorCode::RateLimited)
        .await;
    // Even the right password is refused while limited.
    raw.expect_error(login("alice-password"), ErrorCode::RateLimited)
        .await;
    // Other accounts and connections are unaffected.
    let (mut bob, _) = account(&url, "bob").await;
    bob.ping().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_stream_of_invalid_frames_is_closed_with_1008() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    let mut closed = None;
    for _ in 0..100 {
        if raw
            .ws
            .send(Message::Binary(vec![0xff].into()))
            .await
            .is_err()
        {
            break;
        }
    }
    for _ in 0..100 {
        if let Got::Closed(code) = raw.recv().await {
            closed = code;
            break;
        }
    }
    assert_eq!(closed, Some(CLOSE_POLICY));
    let mut other = Raw::connect(&url).await;
    other.ping().await;
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_registrations_are_refused() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    raw.expect_error(
        frame::Register {
            username: "Alice".into(),
            password: "long enough".into(),
        },
        ErrorCode::InvalidRequest,
    )
    .await;
    raw.expect_error(
        frame::Register {
            username: "alice".into(),
            password: "short".into(),
        },
        ErrorCode::InvalidRequest,
    )
    .await;
    assert!(matches!(
        raw.request(frame::Register {
            username: "alice".into(),
            password: "long enough".into()
        })
        .await,
        Body::Ok(_)
    ));
    raw.expect_error(
        frame::Register {
            username: "alice".into(),
            password: "long enough".into(),
        },
        ErrorCode::UserExists,
    )
    .await;
    raw.expect_error(
        frame::Login {
            username: "nobody".into(),
            password: "long enough".into(),
            device: 1,
            second_factor: None,
        },
        ErrorCode::BadCredentials,
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn sending_to_an_unknown_device_is_refused() {
    let (server, url) = start(test_config()).await;
    let (mut alice, _) = account(&url, "alice").await;
    alice
        .expect_error(
            frame::Send {
                to: Address {
                    user: "nobody".into(),
                    device: 1,
                },
                conversation: [0; 16],
                message_id: [0; 16],
                envelope: vec![1],
            },
            ErrorCode::NoSuchUser,
        )
        .await;
    alice
        .expect_error(
            frame::FetchBundle {
                device: addr("nobody"),
            },
            ErrorCode::NoSuchUser,
        )
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_connections_with_1001() {
    let (server, url) = start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    raw.ping().await;
    server.shutdown().await;
    assert!(matches!(raw.recv().await, Got::Closed(Some(1001))));
}
