//! A server on a loopback port and a raw WebSocket client that can send
//! anything, well-formed or not.
#![allow(
    dead_code,
    clippy::large_enum_variant,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use chatify_proto::frame::{self, Address};
use chatify_proto::{Body, ErrorCode, Frame};
use chatify_server::auth::PasswordCost;
use chatify_server::store::SqliteStore;
use chatify_server::{Config, Server};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Cheap password hashing: these tests are not about Argon2's cost.
pub fn test_config() -> Config {
    Config {
        password_cost: PasswordCost {
            memory_kib: 64,
            iterations: 1,
        },
        ..Config::default()
    }
}

pub async fn start(config: Config) -> (Server, String) {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let server = Server::start(config, store).await.unwrap();
    let url = format!("ws://{}", server.local_addr());
    (server, url)
}

pub struct Raw {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// What came back.
#[derive(Debug)]
pub enum Got {
    Frame(Frame),
    Closed(Option<u16>),
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Raw { ws, next_id: 100 }
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    pub async fn recv(&mut self) -> Got {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("no answer within 10 s");
            match msg {
                Some(Ok(Message::Binary(b))) => return Got::Frame(Frame::decode(&b).unwrap()),
                Some(Ok(Message::Close(c))) => return Got::Closed(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Got::Closed(None),
            }
        }
    }

    /// Sends a request and returns the reply to it (skipping pushes).
    pub async fn request(&mut self, body: impl Into<Body>) -> Body {
        self.next_id += 1;
        let id = self.next_id;
        self.send_bytes(
            Frame {
                id,
                body: body.into(),
            }
            .encode(),
        )
        .await;
        loop {
            match self.recv().await {
                Got::Frame(f) if f.id == id => return f.body,
                Got::Frame(_) => continue,
                Got::Closed(c) => panic!("closed ({c:?}) while waiting for reply {id}"),
            }
        }
    }

    pub async fn expect_error(&mut self, body: impl Into<Body>, code: ErrorCode) {
        match self.request(body).await {
            Body::Error(e) => assert_eq!(e.code, code, "{e:?}"),
            other => panic!("expected {code:?}, got {other:?}"),
        }
    }

    pub async fn ping(&mut self) {
        assert!(matches!(self.request(frame::Ping {}).await, Body::Pong(_)));
    }
}

pub fn addr(user: &str) -> Address {
    Address {
        user: user.into(),
        device: 1,
    }
}

/// Registers, logs in, authenticates and publishes dummy keys; returns the
/// connection and the token.
pub async fn account(url: &str, user: &str) -> (Raw, Vec<u8>) {
    let mut raw = Raw::connect(url).await;
    let password = format!("{user}-password");
    assert!(matches!(
        raw.request(frame::Register {
            username: user.into(),
            password: password.clone()
        })
        .await,
        Body::Ok(_)
    ));
    let token = match raw
        .request(frame::Login {
            username: user.into(),
            password,
            device: 1,
            second_factor: None,
        })
        .await
    {
        Body::LoginOk(ok) => ok.token,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        raw.request(frame::Authenticate {
            token: token.clone()
        })
        .await,
        Body::AuthOk(_)
    ));
    let keys = publish_keys(1..=20, |id| [id as u8; 32]);
    assert!(matches!(raw.request(keys).await, Body::Ok(_)));
    (raw, token)
}

/// Dummy keys for the key directory (their bytes do not matter to the
/// server): one-time prekeys `ids`, each with the public key `key(id)`.
pub fn publish_keys(
    ids: impl IntoIterator<Item = u32>,
    key: impl Fn(u32) -> [u8; 32],
) -> frame::PublishKeys {
    frame::PublishKeys {
        identity: chatify_proto::DeviceKeys {
            signing_key: [1; 32],
            identity_key: [2; 32],
            identity_signature: [3; 64],
        },
        signed_prekey: chatify_proto::SignedPrekey {
            id: 1,
            public_key: [4; 32],
            signature: [5; 64],
        },
        one_time_prekeys: ids
            .into_iter()
            .map(|id| chatify_proto::OneTimePrekey {
                id,
                public_key: key(id),
            })
            .collect(),
    }
}

/// Sends the `n`th envelope of a numbered stream to `to`: its message id
/// carries `n` (big-endian, first eight bytes), its conversation `tag`.
pub async fn send_numbered(raw: &mut Raw, to: &str, tag: u8, n: u64, len: usize) {
    let mut message_id = [0u8; 16];
    message_id[..8].copy_from_slice(&n.to_be_bytes());
    let sent = raw
        .request(frame::Send {
            to: addr(to),
            conversation: [tag; 16],
            message_id,
            envelope: vec![7; len],
        })
        .await;
    assert!(matches!(sent, Body::SendOk(_)), "{sent:?}");
}

/// The pushes `raw` receives until `want` arrived or none came for
/// `quiet`, each acknowledged as it comes.
pub async fn receive_acking(raw: &mut Raw, want: usize, quiet: Duration) -> Vec<frame::Deliver> {
    let mut got = Vec::new();
    while got.len() < want {
        let next = tokio::time::timeout(quiet, raw.recv()).await;
        let Ok(Got::Frame(f)) = next else { break };
        if let Body::Deliver(d) = f.body {
            let ack = Frame {
                id: 1_000_000 + d.seq,
                body: frame::Ack { seqs: vec![d.seq] }.into(),
            };
            raw.send_bytes(ack.encode()).await;
            got.push(d);
        }
    }
    got
}

/// Whether `got` holds the numbered streams of users `sender0..senders`,
/// `each` envelopes long, every envelope once and each stream in order;
/// what is wrong otherwise, stream by stream.
pub fn numbered_streams_complete(
    got: &[frame::Deliver],
    senders: usize,
    each: u64,
) -> Result<(), String> {
    let mut per_sender: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for d in got {
        let mut n = [0u8; 8];
        n.copy_from_slice(&d.message_id[..8]);
        per_sender
            .entry(d.from.user.clone())
            .or_default()
            .push(u64::from_be_bytes(n));
    }
    let expected: Vec<u64> = (0..each).collect();
    let mut wrong = Vec::new();
    for i in 0..senders {
        let name = format!("sender{i}");
        let seen = per_sender.remove(&name).unwrap_or_default();
        if seen != expected {
            let missing = expected.iter().filter(|n| !seen.contains(n)).count();
            wrong.push(format!(
                "{name}: {} pushed, {missing} missing, in order: {}",
                seen.len(),
                seen.is_sorted()
            ));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}
