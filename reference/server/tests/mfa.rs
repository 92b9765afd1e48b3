//! Two-factor authentication end to end through a real server
//! (docs/PROTOCOL.md §9.5): enrolment, logins that need a code, replayed
//! codes, recovery codes, rate-limited attempts, turning it off, and the
//! secret sealed in the database file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chatify_proto::frame;
use chatify_proto::{Body, ErrorCode};
use chatify_server::mfa::{self, MfaKey};
use chatify_server::store::SqliteStore;
use chatify_server::{Config, Server};
use common::{Raw, account, test_config};

fn login(user: &str, code: Option<String>) -> frame::Login {
    frame::Login {
        username: user.into(),
        password: format!("{user}-password"),
        device: 1,
        second_factor: code,
    }
}

fn code(secret: &[u8], step: i64) -> String {
    format!("{:06}", mfa::totp(secret, step))
}

/// Turns MFA on for the account on `raw`; returns the secret, the step of
/// the confirming code and the recovery codes.
async fn enrol(raw: &mut Raw, user: &str) -> (Vec<u8>, i64, Vec<String>) {
    let secret = match raw.request(frame::MfaSetup {}).await {
        Body::MfaSecret(s) => {
            assert!(
                s.uri
                    .starts_with(&format!("otpauth://totp/Chatify:{user}?secret=")),
                "{}",
                s.uri
            );
            assert!(s.uri.contains(&mfa::base32(&s.secret)));
            s.secret
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(secret.len(), mfa::SECRET_LEN);
    let step = mfa::current_step();
    let wrong = format!("{:06}", (mfa::totp(&secret, step) + 1) % 1_000_000);
    raw.expect_error(
        frame::MfaConfirm { code: wrong },
        ErrorCode::SecondFactorRequired,
    )
    .await;
    let codes = match raw
        .request(frame::MfaConfirm {
            code: code(&secret, step),
        })
        .await
    {
        Body::MfaEnabled(e) => e.recovery_codes,
        other => panic!("{other:?}"),
    };
    assert_eq!(codes.len(), mfa::RECOVERY_CODES);
    (secret, step, codes)
}

fn lenient() -> Config {
    Config {
        login_failures_per_account: 1000,
        login_failures_per_address: 1000,
        ..test_config()
    }
}

#[tokio::test]
async fn a_second_factor_guards_login_and_each_code_works_once() {
    let (_server, url) = common::start(lenient()).await;
    let (mut raw, _) = account(&url, "alice").await;
    let (secret, step, recovery) = enrol(&mut raw, "alice").await;
    raw.expect_error(frame::MfaSetup {}, ErrorCode::InvalidRequest)
        .await;

    let mut other = Raw::connect(&url).await;
    other
        .expect_error(login("alice", None), ErrorCode::SecondFactorRequired)
        .await;
    let mut wrong_password = login("alice", Some(code(&secret, step + 1)));
    wrong_password.password = "not-the-password".into();
    other
        .expect_error(wrong_password, ErrorCode::BadCredentials)
        .await;
    // The code that confirmed the secret, replayed.
    other
        .expect_error(
            login("alice", Some(code(&secret, step))),
            ErrorCode::SecondFactorRequired,
        )
        .await;
    // The next step's code (clock drift): accepted once.
    assert!(matches!(
        other
            .request(login("alice", Some(code(&secret, step + 1))))
            .await,
        Body::LoginOk(_)
    ));
    other
        .expect_error(
            login("alice", Some(code(&secret, step + 1))),
            ErrorCode::SecondFactorRequired,
        )
        .await;
    // Too far from the server's clock.
    other
        .expect_error(
            login("alice", Some(code(&secret, step + 5))),
            ErrorCode::SecondFactorRequired,
        )
        .await;
    // A recovery code, in any case and spacing, once.
    let spaced = recovery[3].to_lowercase().replace('-', " ");
    assert!(matches!(
        other.request(login("alice", Some(spaced))).await,
        Body::LoginOk(_)
    ));
    other
        .expect_error(
            login("alice", Some(recovery[3].clone())),
            ErrorCode::SecondFactorRequired,
        )
        .await;

    // Off only with a valid code.
    raw.expect_error(
        frame::MfaDisable {
            code: "000000".into(),
        },
        ErrorCode::SecondFactorRequired,
    )
    .await;
    raw.expect_error(
        frame::MfaDisable {
            code: recovery[3].clone(),
        },
        ErrorCode::SecondFactorRequired,
    )
    .await;
    assert!(matches!(
        raw.request(frame::MfaDisable {
            code: recovery[0].clone()
        })
        .await,
        Body::Ok(_)
    ));
    assert!(matches!(
        other.request(login("alice", None)).await,
        Body::LoginOk(_)
    ));
    raw.expect_error(
        frame::MfaDisable {
            code: recovery[1].clone(),
        },
        ErrorCode::InvalidRequest,
    )
    .await;
}

#[tokio::test]
async fn wrong_codes_are_rate_limited_like_wrong_passwords() {
    let (_server, url) = common::start(test_config()).await;
    let (mut raw, _) = account(&url, "alice").await;
    // One wrong confirmation counts already.
    let (secret, step, _) = enrol(&mut raw, "alice").await;
    let mut other = Raw::connect(&url).await;
    for _ in 0..4 {
        other
            .expect_error(
                login("alice", Some("123456".into())),
                ErrorCode::SecondFactorRequired,
            )
            .await;
    }
    // The sixth attempt is refused before any code is looked at, the right
    // one included.
    other
        .expect_error(
            login("alice", Some(code(&secret, step + 1))),
            ErrorCode::RateLimited,
        )
        .await;
    raw.expect_error(
        frame::MfaDisable {
            code: code(&secret, step + 1),
        },
        ErrorCode::RateLimited,
    )
    .await;
}

#[tokio::test]
async fn mfa_requests_need_an_authenticated_connection() {
    let (_server, url) = common::start(test_config()).await;
    let mut raw = Raw::connect(&url).await;
    raw.expect_error(frame::MfaSetup {}, ErrorCode::Unauthenticated)
        .await;
    raw.expect_error(
        frame::MfaConfirm {
            code: "123456".into(),
        },
        ErrorCode::Unauthenticated,
    )
    .await;
    let (mut alice, _) = account(&url, "alice").await;
    alice
        .expect_error(
            frame::MfaConfirm {
                code: "123456".into(),
            },
            ErrorCode::InvalidRequest,
        )
        .await;
}

#[tokio::test]
async fn a_server_without_the_key_refuses_setup_and_such_logins() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let start = |key: Option<[u8; 32]>| {
        let config = Config {
            mfa_key: key.map(|k| Arc::new(MfaKey::from_bytes(k))),
            ..test_config()
        };
        let store = store.clone();
        async move {
            let server = Server::start(config, store).await.unwrap();
            let url = format!("ws://{}", server.local_addr());
            (server, url)
        }
    };
    let (server, url) = start(Some([7; 32])).await;
    let (mut raw, _) = account(&url, "alice").await;
    let (secret, step, _) = enrol(&mut raw, "alice").await;
    drop(raw);
    server.shutdown().await;

    // No key, then another key: alice's secret does not open.
    for key in [None, Some([8; 32])] {
        let (server, url) = start(key).await;
        let mut raw = Raw::connect(&url).await;
        raw.expect_error(
            login("alice", Some(code(&secret, step + 1))),
            ErrorCode::Internal,
        )
        .await;
        if key.is_none() {
            let (mut bob, _) = account(&url, "bob").await;
            bob.expect_error(frame::MfaSetup {}, ErrorCode::Internal)
                .await;
        }
        drop(raw);
        server.shutdown().await;
    }
}

/// What the database file holds of a second factor: neither the secret
/// (raw or base32) nor a recovery code; and the same search finds a secret
/// written there in the clear (the check's mutant).
#[tokio::test]
async fn the_database_holds_the_secret_sealed_and_recovery_codes_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chatify.db");
    let store = Arc::new(
        SqliteStore::open(&path, chatify_server::store::sqlite::Durability::Full).unwrap(),
    );
    let server = Server::start(test_config(), store.clone()).await.unwrap();
    let url = format!("ws://{}", server.local_addr());
    let (mut raw, _) = account(&url, "alice").await;
    let (secret, _, recovery) = enrol(&mut raw, "alice").await;
    drop(raw);
    server.shutdown().await;
    store.checkpoint().unwrap();
    drop(store);

    let found = |bytes: &[u8]| -> Vec<String> {
        let mut hits = Vec::new();
        let b32 = mfa::base32(&secret);
        let needles: Vec<(&str, Vec<u8>)> = std::iter::once(("secret", secret.clone()))
            .chain(std::iter::once(("secret (base32)", b32.into_bytes())))
            .chain(recovery.iter().flat_map(|c| {
                [
                    ("recovery code", c.clone().into_bytes()),
                    ("recovery code (bare)", c.replace('-', "").into_bytes()),
                ]
            }))
            .collect();
        for (what, needle) in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                hits.push(what.to_owned());
            }
        }
        hits
    };
    let mut db = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        db.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert_eq!(found(&db), Vec::<String>::new(), "in the database files");

    // The mutant: a store that kept the secret in the clear is caught.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE mfa SET secret = ?1", [&secret])
        .unwrap();
    drop(conn);
    let mut db = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        db.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert_eq!(found(&db), vec!["secret".to_owned()]);
}
