//! A WebSocket connection to a Chatify server: requests with ids and typed
//! replies, and a stream of server pushes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chatify_proto::frame::Deliver;
use chatify_proto::limits::MAX_FRAME_LEN;
use chatify_proto::{Body, ErrorCode, Frame};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, connect_async_tls_with_config};

use crate::ClientError;

/// Tries of a request the server answers `RateLimited`.
const RATE_LIMIT_TRIES: u32 = 5;
/// The wait before the first retry (doubled before each next one).
const RATE_LIMIT_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Something the server sent on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// An envelope for this device.
    Deliver(Deliver),
    /// The device's one-time prekey pool is low.
    PrekeysLow(u32),
    /// The connection closed, with the server's close code and reason if any.
    Closed(Option<(u16, String)>),
}

/// Requests waiting for their reply; `None` once the connection is gone (a
/// request made after that fails at once instead of waiting forever).
type Waiters = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Body>>>>>;

/// An open connection.
#[derive(Debug)]
pub struct Connection {
    outgoing: mpsc::UnboundedSender<Message>,
    waiters: Waiters,
    next_id: AtomicU64,
    pushes: mpsc::UnboundedReceiver<Push>,
    writer: tokio::task::JoinHandle<()>,
}

/// TLS trust for `wss://` URLs: the certificates in a PEM file.
pub fn tls_config(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_pem)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Tls {
            what: format!("{}: not a readable PEM file", ca_pem.display()),
            source: Some(Box::new(e)),
        })?;
    for cert in certs {
        roots.add(cert).map_err(|e| ClientError::Tls {
            what: format!("{}: a certificate was refused", ca_pem.display()),
            source: Some(Box::new(e)),
        })?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls {
            what: format!("{}: no certificate", ca_pem.display()),
            source: None,
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls {
            what: "no protocol version in common".into(),
            source: Some(Box::new(e)),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn lock(w: &Waiters) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Body>>>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    /// Connects to `url` (`ws://` or `wss://`; `wss` needs `tls`).
    pub async fn connect(
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, ClientError> {
        if url.starts_with("wss://") && tls.is_none() {
            return Err(ClientError::Tls {
                what: "a wss:// server needs a CA certificate (--ca-cert)".into(),
                source: None,
            });
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_LEN))
            .max_frame_size(Some(MAX_FRAME_LEN));
        let connector = tls.map(Connector::Rustls);
        let (ws, _) = connect_async_tls_with_config(url, Some(config), true, connector)
            .await
            .map_err(|e| ClientError::Connect {
                url: url.to_owned(),
                source: Box::new(e),
            })?;
        let (mut sink, mut stream) = ws.split();
        let (outgoing, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));

        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                let closing = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() || closing {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let w = Arc::clone(&waiters);
        tokio::spawn(async move {
            let close = loop {
                match stream.next().await {
                    Some(Ok(Message::Binary(data))) => match Frame::decode(&data) {
                        Ok(Frame {
                            id: 0,
                            body: Body::Deliver(d),
                        }) => {
                            let _ = push_tx.send(Push::Deliver(d));
                        }
                        Ok(Frame {
                            id: 0,
                            body: Body::PrekeysLow(p),
                        }) => {
                            let _ = push_tx.send(Push::PrekeysLow(p.remaining));
                        }
                        Ok(Frame { id, body }) => {
                            if let Some(waiter) = lock(&w).as_mut().and_then(|m| m.remove(&id)) {
                                let _ = waiter.send(body);
                            }
                        }
                        Err(_) => {} // a server sent garbage: nothing to route it to
                    },
                    Some(Ok(Message::Close(frame))) => {
                        break frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break None,
                }
            };
            // Pending requests fail with Disconnected, and so do later ones.
            *lock(&w) = None;
            let _ = push_tx.send(Push::Closed(close));
        });

        Ok(Connection {
            outgoing,
            waiters,
            next_id: AtomicU64::new(1),
            pushes,
            writer,
        })
    }

    /// Sends a request and waits for its reply; an `Error` frame becomes
    /// [`ClientError::Server`]. A request answered `RateLimited` (too many
    /// requests, or the server busy with logins) is sent again after 50 ms,
    /// then 100, 200 and 400 ms; the fifth answer is returned as it is.
    pub async fn request(&self, body: impl Into<Body>) -> Result<Body, ClientError> {
        let mut body = body.into();
        let mut delay = RATE_LIMIT_FIRST_WAIT;
        let mut tries = 1;
        loop {
            let (result, sent) = self.request_once(body).await;
            match result {
                // Not performed (PROTOCOL §9): the same request again, after
                // a wait that doubles each time.
                Err(ClientError::Server {
                    code: ErrorCode::RateLimited,
                    ..
                }) if tries < RATE_LIMIT_TRIES => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    tries += 1;
                    body = sent;
                }
                other => return other,
            }
        }
    }

    /// One request and its reply; gives the request back for a retry.
    async fn request_once(&self, body: Body) -> (Result<Body, ClientError>, Body) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.waiters).as_mut() {
            Some(waiting) => {
                waiting.insert(id, tx);
            }
            None => return (Err(ClientError::Disconnected), body),
        }
        let frame = Frame { id, body };
        let bytes = frame.encode();
        let body = frame.body;
        if let Err(e) = self.send_raw(bytes) {
            return (Err(e), body);
        }
        let result = match rx.await {
            Ok(Body::Error(e)) => Err(ClientError::Server {
                code: e.code,
                message: e.message,
            }),
            Ok(reply) => Ok(reply),
            Err(_) => Err(ClientError::Disconnected),
        };
        (result, body)
    }

    /// Sends bytes as one binary message, as they are (tests use this to
    /// send what a well-behaved client never would).
    pub fn send_raw(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.outgoing
            .send(Message::Binary(bytes.into()))
            .map_err(|_| ClientError::Disconnected)
    }

    /// The next server push; `None` after [`Push::Closed`] was returned.
    pub async fn next_push(&mut self) -> Option<Push> {
        self.pushes.recv().await
    }

    /// A push that has already arrived, without waiting.
    pub fn try_next_push(&mut self) -> Option<Push> {
        self.pushes.try_recv().ok()
    }

    /// Starts a clean close (close frame) without waiting.
    pub fn close(&self) {
        let _ = self.outgoing.send(Message::Close(None));
    }

    /// Closes cleanly and waits (at most two seconds) until the close frame
    /// is written.
    pub async fn shutdown(self) {
        self.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.writer).await;
    }
}

/// Expects a specific reply type.
pub(crate) fn expect<T>(
    body: Body,
    pick: impl FnOnce(Body) -> Option<T>,
) -> Result<T, ClientError> {
    let name = body.name();
    pick(body).ok_or_else(|| ClientError::Protocol(format!("unexpected reply {name}")))
}

/// Whether an error is the server saying a given code.
pub fn is_code(e: &ClientError, code: ErrorCode) -> bool {
    matches!(e, ClientError::Server { code: c, .. } if *c == code)
}

#[cfg(test)]
mod error_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use std::error::Error as _;

    /// Errors keep their cause: a refused connection carries the handshake's
    /// error, an unreadable CA file its IO error, and the path is named.
    #[tokio::test]
    async fn errors_keep_their_cause() {
        let refused = Connection::connect("ws://127.0.0.1:9", None)
            .await
            .err()
            .unwrap();
        match &refused {
            ClientError::Connect { url, source } => {
                assert_eq!(url, "ws://127.0.0.1:9");
                assert!(!source.to_string().is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(refused.source().is_some());
        let missing = Path::new("/nonexistent/ca.pem");
        let tls = tls_config(missing).err().unwrap();
        assert!(tls.to_string().contains("/nonexistent/ca.pem"), "{tls}");
        assert!(tls.source().is_some(), "{tls:?}");
        let io = ClientError::io(
            missing,
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        let cause = io
            .source()
            .unwrap()
            .downcast_ref::<std::io::Error>()
            .unwrap();
        assert_eq!(cause.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(io.to_string().starts_with("/nonexistent/ca.pem: "));
    }
}
