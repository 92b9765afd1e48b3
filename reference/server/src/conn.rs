//! One WebSocket connection: decode frames, answer requests, push deliveries.
//!
//! Logging rule: events name the connection, the frame type and the error
//! code, never a payload (no envelope, password, token or key bytes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chatify_proto::frame::{self, Address};
use chatify_proto::limits::{MAX_FRAME_LEN, MAX_LIST_LEN};
use chatify_proto::{Body, ErrorCode, Frame};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use zeroize::Zeroize;

use crate::auth::{self, token_hash};
use crate::hub::{Push, Ticket};
use crate::mfa::{self, MfaKey};
use crate::rate;
use crate::store::{MfaRecord, NewEnvelope, Store, StoreError, TokenRecord};
use crate::{CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_REPLACED, CLOSE_TOO_BIG, Shared};

mod blobs;

/// Deliveries fetched from the store per round.
const DELIVERY_BATCH: u32 = 256;

/// How long a sealed identity left for linking is kept.
const LINK_TTL_MS: u64 = 10 * 60 * 1000;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The WebSocket layer's limits and buffers. Frames are capped at
/// `MAX_FRAME_LEN`; the read buffer starts at 4 KiB and grows only while a
/// larger frame arrives (tungstenite's default, 128 KiB up front, made an
/// idle connection cost about 143 KiB of server memory); writes are
/// buffered up to 8 KiB before they go to the socket.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_LEN))
        .max_frame_size(Some(MAX_FRAME_LEN))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
}

/// Initial read buffer of a connection.
const READ_BUFFER: usize = 4 * 1024;

/// Bytes written to a connection's buffer before they go to its socket.
const WRITE_BUFFER: usize = 8 * 1024;

/// What an MFA request starts from ([`Conn::mfa_request`]).
struct MfaRequest {
    user: String,
    ip: std::net::IpAddr,
    now: Instant,
    record: Option<MfaRecord>,
}

/// One of an address's open connections; released when dropped.
struct AddressSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl AddressSlot {
    /// Takes a slot for `ip`, or `None` when it has all it may have.
    fn take(shared: &Arc<Shared>, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let elsewhere = shared
            .others_per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0);
        let mut open = shared.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n + elsewhere >= shared.config.max_connections_per_address {
            if *n == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            shared: Arc::clone(shared),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts TLS (if configured) and the WebSocket handshake, then serves.
pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(_slot) = AddressSlot::take(&shared, peer.ip()) else {
        tracing::warn!(conn = id, %peer, "too many connections from this address");
        Box::pin(refuse(stream, &shared, peer, id)).await;
        return;
    };
    // Each phase is boxed, so a connection's task holds only what it needs
    // while it serves: the handshakes' state (TLS and HTTP buffers) is
    // freed once they are done instead of sizing the task for its life.
    match shared.config.tls.clone() {
        Some(tls) => {
            if let Some(stream) = Box::pin(tls_accept(stream, tls, peer, id)).await {
                Box::pin(upgrade_and_serve(stream, peer, id, shared, shutdown)).await;
            }
        }
        None => Box::pin(upgrade_and_serve(stream, peer, id, shared, shutdown)).await,
    }
}

/// The WebSocket handshake, then the protocol; with `--web`, a request that
/// is not an upgrade is answered with a file of the web client instead.
async fn upgrade_and_serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(root) = shared.config.web.clone() else {
        if let Some(ws) = Box::pin(ws_handshake(stream, peer, id)).await {
            Box::pin(connection(ws, peer, id, shared).serve(shutdown)).await;
        }
        return;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, crate::web::route(stream, &root)).await {
        Ok(Ok(crate::web::Routed::Upgrade(stream))) => {
            if let Some(ws) = Box::pin(ws_handshake(stream, peer, id)).await {
                Box::pin(connection(ws, peer, id, shared).serve(shutdown)).await;
            }
        }
        Ok(Ok(crate::web::Routed::Served)) => {}
        Ok(Err(e)) => tracing::debug!(conn = id, %peer, error = %e, "web request failed"),
        Err(_) => tracing::debug!(conn = id, %peer, "web request timed out"),
    }
}

/// The TLS handshake, then the WebSocket one.
async fn tls_handshake(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    peer: SocketAddr,
    id: u64,
) -> Option<WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>> {
    ws_handshake(tls_accept(stream, tls, peer, id).await?, peer, id).await
}

/// The TLS handshake.
async fn tls_accept(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    peer: SocketAddr,
    id: u64,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => Some(tls_stream),
        Ok(Err(e)) => {
            tracing::info!(conn = id, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(conn = id, %peer, "TLS handshake timed out");
            None
        }
    }
}

/// The WebSocket handshake (HTTP upgrade).
async fn ws_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    id: u64,
) -> Option<WebSocketStream<S>> {
    let accept = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config()));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(ws)) => {
            tracing::info!(conn = id, %peer, "connected");
            Some(ws)
        }
        Ok(Err(e)) => {
            tracing::info!(conn = id, %peer, error = %e, "WebSocket handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(conn = id, %peer, "WebSocket handshake timed out");
            None
        }
    }
}

/// Messages handled in one wake-up before the replies are flushed.
const MESSAGES_PER_WAKEUP: usize = 64;

/// How long the TLS and WebSocket handshakes may take, each.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn connection<S>(
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
) -> Conn<S> {
    Conn {
        id,
        peer,
        ws,
        auth: None,
        last_pushed: 0,
        mailbox_checked: false,
        strikes: 0,
        unauthenticated_since: Instant::now(),
        last_heard: Instant::now(),
        pinged: false,
        next_poll: Instant::now(),
        requests: rate::Bucket::full(
            2.0 * f64::from(shared.config.requests_per_second),
            Instant::now(),
        ),
        shared,
    }
}

/// Completes the handshake only to say why the connection is closed
/// (briefly: a refused peer gets two seconds).
async fn refuse(stream: TcpStream, shared: &Arc<Shared>, peer: SocketAddr, id: u64) {
    let frame = CloseFrame {
        code: CloseCode::from(CLOSE_POLICY),
        reason: "too many connections from this address".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        match shared.config.tls.clone() {
            Some(tls) => {
                let mut ws = tls_handshake(stream, tls, peer, id).await?;
                ws.close(Some(frame)).await.ok()
            }
            None => {
                let mut ws = ws_handshake(stream, peer, id).await?;
                ws.close(Some(frame)).await.ok()
            }
        }
    })
    .await;
}

struct Authed {
    device: Address,
    ticket: Ticket,
    pushes: mpsc::UnboundedReceiver<Push>,
    /// The hub's count of envelopes waiting in `pushes`.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

struct Conn<S> {
    id: u64,
    peer: SocketAddr,
    shared: Arc<Shared>,
    ws: WebSocketStream<S>,
    auth: Option<Authed>,
    /// Highest sequence number pushed on this connection.
    last_pushed: u64,
    /// Whether the mailbox was drained once since authentication.
    mailbox_checked: bool,
    strikes: u32,
    /// When the connection opened or last logged out, while it is not
    /// authenticated.
    unauthenticated_since: Instant,
    /// When the peer last sent anything (a frame, a ping or a pong).
    last_heard: Instant,
    /// A ping went out since the peer was last heard.
    pinged: bool,
    /// When this connection next reads its mailbox without a notice (with
    /// [`crate::Config::mail_poll`]).
    next_poll: Instant,
    /// This connection's request bucket.
    requests: rate::Bucket,
}

/// Why the connection loop stops.
enum Stop {
    /// The connection is gone (an error, or EOF).
    Closed,
    /// The peer sent a close frame: the reply that tungstenite queued goes
    /// out before the connection is dropped (RFC 6455 §5.5.1).
    PeerClosed,
    Close(u16, &'static str),
}

/// A request's outcome: a reply body, or a typed error.
type Reply = Result<Body, (ErrorCode, &'static str)>;

fn store_failure(e: &StoreError) -> (ErrorCode, &'static str) {
    match e {
        StoreError::UserExists => (ErrorCode::UserExists, "user name taken"),
        StoreError::NotYours => (ErrorCode::Forbidden, "not your envelope"),
        StoreError::Refused(why) => (ErrorCode::InvalidRequest, why),
        StoreError::Database(_) => (ErrorCode::Internal, "storage failure"),
    }
}

fn stored<T>(r: Result<T, StoreError>) -> Result<T, (ErrorCode, &'static str)> {
    r.map_err(|e| {
        if let StoreError::Database(msg) = &e {
            tracing::error!(error = %msg, "store failed");
        }
        store_failure(&e)
    })
}

/// A store call on the blocking pool (it may wait for the disk).
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, (ErrorCode, &'static str)> {
    let store = Arc::clone(&shared.store);
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(r) => stored(r),
        Err(_) => Err((ErrorCode::Internal, "storage task failed")),
    }
}

/// A store call on the message path: on this worker when `inline` (the
/// call never waits for the disk: [`Store::fast_commits`] for stores and
/// acknowledgements, [`Store::fast_reads`] for the mailbox), which spares a
/// thread hand-off each; on the blocking pool otherwise.
async fn hot<T: Send + 'static>(
    shared: &Arc<Shared>,
    inline: bool,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, (ErrorCode, &'static str)> {
    if inline {
        stored(f(shared.store.as_ref()))
    } else {
        blocking(shared, f).await
    }
}

fn valid_username(name: &str) -> bool {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok
        && name.len() <= chatify_proto::limits::MAX_USERNAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// The answer when the password workers and their queue are full.
const BUSY: (ErrorCode, &str) = (
    ErrorCode::RateLimited,
    "server busy with other logins; try again shortly",
);

/// The shared failed-login keys of an attempt: its account, its address.
fn login_keys(account: &str, ip: std::net::IpAddr) -> Vec<String> {
    vec![
        format!("login account {account}"),
        format!("login address {ip}"),
    ]
}

/// Shortest password accepted at registration.
pub(crate) const MIN_PASSWORD_LEN: usize = 8;

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn serve(mut self, mut shutdown: watch::Receiver<bool>) {
        let stop = loop {
            let timer = self.next_timer();
            let push = async {
                match self.auth.as_mut() {
                    Some(a) => a.pushes.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(timer.into()) => match self.on_timer().await {
                    Ok(()) => {}
                    Err(stop) => break stop,
                },
                msg = self.ws.next() => match self.on_messages(msg).await {
                    Ok(()) => {}
                    Err(stop) => break stop,
                },
                Some(push) = push => match self.on_push(push).await {
                    Ok(()) => {}
                    Err(stop) => break stop,
                },
                _ = shutdown.changed() => break Stop::Close(CLOSE_GOING_AWAY, "server shutting down"),
            }
            // Everything this wake-up produced leaves in one write.
            if self.ws.flush().await.is_err() {
                break Stop::Closed;
            }
        };
        match stop {
            Stop::Close(code, reason) => {
                tracing::info!(conn = self.id, code, reason, "closing");
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), self.ws.close(Some(frame))).await;
            }
            Stop::PeerClosed => {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.flush()).await;
            }
            Stop::Closed => {}
        }
        if let Some(a) = self.auth.take() {
            self.shared.hub.unregister(&a.device, a.ticket);
        }
        tracing::info!(conn = self.id, "disconnected");
    }

    /// The next instant a deadline of the connection's falls due: the
    /// authentication deadline, a ping, or the idle close.
    fn next_timer(&self) -> Instant {
        let c = &self.shared.config;
        let idle = if self.pinged {
            self.last_heard + c.idle_timeout
        } else {
            self.last_heard + c.ping_interval.min(c.idle_timeout)
        };
        match (&self.auth, c.mail_poll) {
            (None, _) => idle.min(self.unauthenticated_since + c.auth_timeout),
            (Some(_), Some(_)) => idle.min(self.next_poll),
            (Some(_), None) => idle,
        }
    }

    /// Closes a connection that did not authenticate in time or went
    /// silent; pings one that has been quiet.
    async fn on_timer(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        let c = &self.shared.config;
        if self.auth.is_none() && now >= self.unauthenticated_since + c.auth_timeout {
            return Err(Stop::Close(CLOSE_POLICY, "authenticate sooner"));
        }
        if now >= self.last_heard + c.idle_timeout {
            return Err(Stop::Close(CLOSE_POLICY, "no traffic"));
        }
        if let Some(poll) = self.shared.config.mail_poll
            && self.auth.is_some()
            && now >= self.next_poll
        {
            // A notice from another node may have been lost: read the
            // mailbox on from the cursor anyway.
            self.next_poll = now + poll;
            self.deliver_pending().await?;
        }
        if !self.pinged && now >= self.last_heard + self.shared.config.ping_interval {
            self.pinged = true;
            return self
                .ws
                .send(Message::Ping(Default::default()))
                .await
                .map_err(|_| Stop::Closed);
        }
        Ok(())
    }

    /// Queues a frame; the serve loop flushes once per wake-up, so the
    /// replies and pushes one wake-up produces share a socket write.
    async fn send(&mut self, frame: Frame) -> Result<(), Stop> {
        self.ws
            .feed(Message::Binary(frame.encode().into()))
            .await
            .map_err(|_| Stop::Closed)
    }

    /// Takes a token from this connection's bucket and its address's, or
    /// says how long until both have one. With a shared store the address's
    /// bucket is the deployment's: this node spends tokens it leased from
    /// the store's bucket, a batch per round trip ([`rate::Leases`]).
    async fn admit(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let rate = f64::from(self.shared.config.requests_per_second);
        self.requests.take(rate, 2.0 * rate, now)?;
        let ip = self.peer.ip();
        let per_address = f64::from(self.shared.config.requests_per_second_per_address);
        if self.shared.store.shared_limits().is_none() || per_address <= 0.0 {
            return self.shared.address_requests.take(ip, now);
        }
        if self.shared.address_leases.spend(&ip) {
            return Ok(());
        }
        let lease = rate::lease_size(per_address);
        let key = format!("requests address {ip}");
        let granted = blocking(&self.shared, move |s| match s.shared_limits() {
            Some(l) => l.take_tokens(&key, lease as f64, per_address, 2.0 * per_address),
            None => Ok(true),
        })
        .await;
        match granted {
            Ok(true) => {
                self.shared.address_leases.add(ip, lease - 1);
                Ok(())
            }
            Ok(false) => Err(Duration::from_secs_f64(lease as f64 / per_address)),
            // The store is away (after its own retries, up to 10 s, during
            // which this connection is read no further): this node's own
            // bucket meanwhile.
            Err(_) => self.shared.address_requests.take(ip, now),
        }
    }

    async fn reject(
        &mut self,
        id: u64,
        code: ErrorCode,
        message: &'static str,
    ) -> Result<(), Stop> {
        tracing::info!(conn = self.id, request = id, code = ?code, message, "rejected");
        self.send(Frame {
            id,
            body: frame::Error::new(code, message).into(),
        })
        .await
    }

    /// Counts a malformed or out-of-order frame; too many close the connection.
    fn strike(&mut self) -> Result<(), Stop> {
        self.strikes += 1;
        if self.strikes > self.shared.config.max_strikes {
            Err(Stop::Close(CLOSE_POLICY, "too many invalid frames"))
        } else {
            Ok(())
        }
    }

    /// Handles a message and then every further message already received
    /// (at most [`MESSAGES_PER_WAKEUP`]), so that a client's pipelined
    /// requests are answered in one write.
    async fn on_messages(
        &mut self,
        first: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), Stop> {
        self.on_message(first).await?;
        for _ in 1..MESSAGES_PER_WAKEUP {
            match self.ws.next().now_or_never() {
                Some(msg) => self.on_message(msg).await?,
                None => break,
            }
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), Stop> {
        if let Some(Ok(_)) = msg {
            self.last_heard = Instant::now();
            self.pinged = false;
        }
        let msg = match msg {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))
                if self.shared.config.conformance_echo =>
            {
                return self.ws.send(m).await.map_err(|_| Stop::Closed);
            }
            other => other,
        };
        let data = match msg {
            None => return Err(Stop::Closed),
            Some(Ok(Message::Close(_))) => return Err(Stop::PeerClosed),
            Some(Err(tungstenite::Error::Capacity(_))) => {
                tracing::info!(conn = self.id, "frame over the size limit");
                return Err(Stop::Close(CLOSE_TOO_BIG, "frame too large"));
            }
            Some(Err(e)) => {
                tracing::info!(conn = self.id, error = %e, "WebSocket error");
                return Err(Stop::Closed);
            }
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Text(_))) => {
                self.strike()?;
                return self
                    .reject(
                        0,
                        ErrorCode::BadFrame,
                        "text messages are not part of the protocol",
                    )
                    .await;
            }
            Some(Ok(_)) => return Ok(()), // ping/pong/raw frames: handled by tungstenite
        };
        let frame = match Frame::decode(&data) {
            Ok(frame) => frame,
            Err(e) => {
                self.strike()?;
                let id = Frame::peek_id(&data).unwrap_or(0);
                tracing::info!(conn = self.id, request = id, len = data.len(), error = %e, "undecodable frame");
                return self
                    .reject(id, e.code(), "frame could not be decoded")
                    .await;
            }
        };
        let id = frame.id;
        tracing::debug!(
            conn = self.id,
            request = id,
            frame = frame.body.name(),
            "request"
        );
        if let Err(wait) = self.admit().await {
            tracing::info!(conn = self.id, request = id, "request rate limited");
            self.reject(id, ErrorCode::RateLimited, "too many requests; slow down")
                .await?;
            // Nothing more is read until a token is due: a flood costs one
            // reply per token, the rest waits in the peer's TCP buffers.
            self.ws.flush().await.map_err(|_| Stop::Closed)?;
            tokio::time::sleep(wait).await;
            return Ok(());
        }
        let reply = Box::pin(self.on_request(frame.body)).await;
        match reply {
            Ok(body) => self.send(Frame { id, body }).await?,
            Err((code, message)) => {
                if code == ErrorCode::Unauthenticated {
                    self.strike()?;
                }
                self.reject(id, code, message).await?;
            }
        }
        // Right after authentication: everything that waited in the mailbox.
        if self.auth.is_some() && !self.mailbox_checked {
            self.mailbox_checked = true;
            self.deliver_pending().await?;
        }
        Ok(())
    }

    async fn on_push(&mut self, push: Push) -> Result<(), Stop> {
        match push {
            Push::Mail => self.deliver_pending().await,
            Push::Deliver(d, after) => {
                if let Some(a) = &self.auth {
                    a.queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                }
                // One at or below the cursor was already read from the
                // mailbox.
                if d.seq <= self.last_pushed {
                    return Ok(());
                }
                // Out of commit order, and an envelope this connection has
                // not pushed comes before it: read the mailbox, which holds
                // both, on from the cursor.
                if after.is_some_and(|prev| prev > self.last_pushed) {
                    return self.deliver_pending().await;
                }
                self.last_pushed = d.seq;
                tracing::debug!(conn = self.id, seq = d.seq, "deliver");
                self.send(Frame {
                    id: 0,
                    body: Arc::unwrap_or_clone(d).into(),
                })
                .await
            }
            Push::PrekeysLow(remaining) => {
                self.send(Frame {
                    id: 0,
                    body: frame::PrekeysLow { remaining }.into(),
                })
                .await
            }
            Push::Replaced => Err(Stop::Close(
                CLOSE_REPLACED,
                "replaced by a newer connection",
            )),
        }
    }

    /// Pushes every unacknowledged envelope not pushed yet on this connection, in order.
    async fn deliver_pending(&mut self) -> Result<(), Stop> {
        let Some(device) = self.auth.as_ref().map(|a| a.device.clone()) else {
            return Ok(());
        };
        loop {
            let after = self.last_pushed;
            let d = device.clone();
            let batch = match hot(&self.shared, self.shared.store.fast_reads(), move |s| {
                s.pending(&d, after, DELIVERY_BATCH)
            })
            .await
            {
                Ok(batch) => batch,
                Err(_) => return Ok(()), // logged in `blocking`; retried on the next push
            };
            let n = batch.len();
            for item in batch {
                self.last_pushed = item.seq;
                tracing::debug!(conn = self.id, seq = item.seq, "deliver");
                self.send(Frame {
                    id: 0,
                    body: item.into(),
                })
                .await?;
            }
            if n < DELIVERY_BATCH as usize {
                return Ok(());
            }
        }
    }

    /// Whether another login for `account` from `ip` may be tried: the
    /// failed-login limits, in the shared store when there is one (so that
    /// they hold across nodes), else in this node's memory.
    async fn login_allowed(
        &self,
        account: &str,
        ip: std::net::IpAddr,
        now: Instant,
    ) -> Result<bool, (ErrorCode, &'static str)> {
        if self.shared.store.shared_limits().is_none() {
            return Ok(self.shared.limiter.allowed(account, ip, now));
        }
        let keys = login_keys(account, ip);
        let window = self.shared.config.login_window;
        let counts = blocking(&self.shared, move |s| match s.shared_limits() {
            Some(l) => l.recent_events(&keys, window),
            None => Ok(Vec::new()),
        })
        .await?;
        let c = &self.shared.config;
        let count = |i: usize| counts.get(i).copied().unwrap_or(0) as usize;
        Ok(count(0) < c.login_failures_per_account && count(1) < c.login_failures_per_address)
    }

    /// Records a failed login (see [`Conn::login_allowed`]).
    async fn login_failed(
        &self,
        account: &str,
        ip: std::net::IpAddr,
        now: Instant,
    ) -> Result<(), (ErrorCode, &'static str)> {
        if self.shared.store.shared_limits().is_none() {
            self.shared.limiter.failed(account, ip, now);
            return Ok(());
        }
        let keys = login_keys(account, ip);
        blocking(&self.shared, move |s| match s.shared_limits() {
            Some(l) => l.record_event(&keys),
            None => Ok(()),
        })
        .await
    }

    /// Takes a bundle-fetch token of (`me`, `target`): in the shared store
    /// when there is one, else in this node's memory.
    async fn bundle_fetch_allowed(
        &self,
        me: String,
        target: &Address,
    ) -> Result<bool, (ErrorCode, &'static str)> {
        let c = &self.shared.config;
        if c.bundle_fetch_burst == 0 {
            return Ok(true);
        }
        if self.shared.store.shared_limits().is_none() {
            return Ok(self
                .shared
                .bundle_fetches
                .take((me, target.clone()), Instant::now())
                .is_ok());
        }
        let key = format!("bundle {} {} {me}", target.user, target.device);
        let rate = 1.0 / c.bundle_fetch_interval.as_secs_f64().max(1e-3);
        let burst = f64::from(c.bundle_fetch_burst);
        blocking(&self.shared, move |s| match s.shared_limits() {
            Some(l) => l.take_token(&key, rate, burst),
            None => Ok(true),
        })
        .await
    }

    fn device(&self) -> Result<Address, (ErrorCode, &'static str)> {
        self.auth
            .as_ref()
            .map(|a| a.device.clone())
            .ok_or((ErrorCode::Unauthenticated, "authenticate first"))
    }

    async fn on_request(&mut self, body: Body) -> Reply {
        match body {
            Body::Ping(_) => Ok(frame::Pong {}.into()),
            Body::Register(r) => self.register(r).await,
            Body::Login(l) => self.login(l).await,
            Body::Authenticate(a) => self.authenticate(a).await,
            Body::Logout(_) => {
                let a = self
                    .auth
                    .take()
                    .ok_or((ErrorCode::Unauthenticated, "authenticate first"))?;
                self.shared.hub.unregister(&a.device, a.ticket);
                self.last_pushed = 0;
                self.mailbox_checked = false;
                self.unauthenticated_since = Instant::now();
                let d = a.device.clone();
                blocking(&self.shared, move |s| s.revoke_tokens(&d)).await?;
                tracing::info!(conn = self.id, user = %a.device.user, "logged out");
                Ok(frame::Ok {}.into())
            }
            Body::PublishKeys(p) => {
                let device = self.device()?;
                let mut ids = std::collections::HashSet::with_capacity(p.one_time_prekeys.len());
                if !p.one_time_prekeys.iter().all(|k| ids.insert(k.id)) {
                    return Err((ErrorCode::InvalidRequest, "a one-time prekey id used twice"));
                }
                let d = device.clone();
                let held = blocking(&self.shared, move |s| {
                    s.publish_keys(&d, &p.identity, &p.signed_prekey, &p.one_time_prekeys)
                })
                .await?;
                tracing::info!(conn = self.id, one_time_prekeys = held, "keys published");
                Ok(frame::Ok {}.into())
            }
            Body::FetchBundle(f) => {
                let me = self.device()?;
                // Only a fetch that would spend a one-time prekey takes a
                // token, and only for a device that exists: fetches of
                // made-up devices cannot fill the limiter's table (which
                // refuses new keys when full) and lock honest users out.
                let t = f.device.clone();
                let held = blocking(&self.shared, move |s| s.one_time_prekey_count(&t))
                    .await?
                    .ok_or((
                        ErrorCode::NoSuchUser,
                        "no such device, or it has published no keys",
                    ))?;
                if held > 0 && !self.bundle_fetch_allowed(me.user, &f.device).await? {
                    return Err((
                        ErrorCode::RateLimited,
                        "too many bundles of this device fetched; try again later",
                    ));
                }
                let target = f.device;
                let t = target.clone();
                let (bundle, remaining) = blocking(&self.shared, move |s| s.take_bundle(&t))
                    .await?
                    .ok_or((
                        ErrorCode::NoSuchUser,
                        "no such device, or it has published no keys",
                    ))?;
                if remaining < self.shared.config.prekey_low_threshold {
                    self.shared.route(&target, Push::PrekeysLow(remaining));
                }
                Ok(frame::Bundle { bundle }.into())
            }
            Body::Send(s) => self.relay(s).await,
            Body::SendGroup(g) => self.relay_group(g).await,
            Body::Ack(a) => {
                let device = self.device()?;
                hot(&self.shared, self.shared.store.fast_commits(), move |s| {
                    s.ack(&device, &a.seqs)
                })
                .await?;
                Ok(frame::Ok {}.into())
            }
            Body::FetchHistory(h) => {
                let device = self.device()?;
                let limit = h.limit.clamp(1, MAX_LIST_LEN as u32);
                let items = blocking(&self.shared, move |s| {
                    s.history(&device.user, &h.conversation, h.before, limit)
                })
                .await?
                .ok_or((
                    ErrorCode::Forbidden,
                    "not a participant of this conversation",
                ))?;
                Ok(frame::History { items }.into())
            }
            Body::FetchDevices(f) => {
                self.device()?;
                let user = f.user;
                let u = user.clone();
                let devices = blocking(&self.shared, move |s| s.devices(&u)).await?;
                Ok(frame::Devices { user, devices }.into())
            }
            Body::RemoveDevice(r) => {
                let me = self.device()?;
                let target = Address {
                    user: me.user.clone(),
                    device: r.device,
                };
                let t = target.clone();
                if !blocking(&self.shared, move |s| s.remove_device(&t)).await? {
                    return Err((ErrorCode::NoSuchUser, "no such device"));
                }
                // Its open connection, if another, ends now (its tokens are
                // gone, so it cannot come back).
                if target != me {
                    self.shared.route(&target, Push::Replaced);
                }
                tracing::info!(conn = self.id, device = r.device, "device removed");
                Ok(frame::Ok {}.into())
            }
            Body::PutLink(p) => {
                let me = self.device()?;
                let expires = now_ms().saturating_add(LINK_TTL_MS);
                blocking(&self.shared, move |s| {
                    s.put_link(&me.user, &p.link_id, &p.blob, expires)
                })
                .await?;
                Ok(frame::Ok {}.into())
            }
            Body::MfaSetup(_) => self.mfa_setup().await,
            Body::MfaConfirm(c) => self.mfa_confirm(c).await,
            Body::MfaDisable(d) => self.mfa_disable(d).await,
            Body::TakeLink(t) => {
                let me = self.device()?;
                let now = now_ms();
                let blob = blocking(&self.shared, move |s| {
                    s.take_link(&me.user, &t.link_id, now)
                })
                .await?
                .ok_or((
                    ErrorCode::NoSuchUser,
                    "no such link: wrong code, already used, or expired",
                ))?;
                Ok(frame::Link { blob }.into())
            }
            blob @ (Body::BlobCreate(_)
            | Body::BlobPut(_)
            | Body::BlobStatus(_)
            | Body::BlobGrant(_)
            | Body::BlobGet(_)
            | Body::BlobRelease(_)) => {
                let me = self.device()?;
                blobs::request(&self.shared, me, blob).await
            }
            _ => Err((
                ErrorCode::InvalidRequest,
                "server-to-client frame sent by a client",
            )),
        }
    }

    async fn register(&mut self, r: frame::Register) -> Reply {
        if !valid_username(&r.username) {
            return Err((
                ErrorCode::InvalidRequest,
                "user names are 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
            ));
        }
        if r.password.chars().count() < MIN_PASSWORD_LEN {
            return Err((
                ErrorCode::InvalidRequest,
                "passwords have at least 8 characters",
            ));
        }
        let cost = self.shared.config.password_cost;
        let mut password = r.password;
        let hash = self
            .shared
            .password_work
            .run(move || {
                let hash = auth::hash_password(&password, cost);
                password.zeroize();
                hash
            })
            .await
            .ok_or(BUSY)?
            .ok_or((ErrorCode::Internal, "password hashing failed"))?;
        let name = r.username.clone();
        blocking(&self.shared, move |s| s.create_user(&name, &hash)).await?;
        tracing::info!(conn = self.id, user = %r.username, "registered");
        Ok(frame::Ok {}.into())
    }

    async fn login(&mut self, l: frame::Login) -> Reply {
        let ip = self.peer.ip();
        let now = Instant::now();
        if !self.login_allowed(&l.username, ip, now).await? {
            tracing::warn!(conn = self.id, user = %l.username, "login rate limited");
            return Err((
                ErrorCode::RateLimited,
                "too many failed logins; try again later",
            ));
        }
        if l.device == 0 {
            return Err((ErrorCode::InvalidRequest, "device numbers start at 1"));
        }
        let name = l.username.clone();
        let stored = blocking(&self.shared, move |s| s.password_hash(&name)).await?;
        let mut password = l.password;
        if let Some(observe) = &self.shared.config.credential_observer {
            (observe.0)(password.as_bytes());
        }
        // Without an account, verify against a fixed hash anyway so that the
        // response time does not reveal which user names exist.
        let ok = self
            .shared
            .password_work
            .run(move || {
                let ok = match stored {
                    Some(hash) => auth::verify_password(&password, &hash),
                    None => {
                        let _ = auth::verify_password(&password, DUMMY_HASH);
                        false
                    }
                };
                password.zeroize();
                ok
            })
            .await
            .ok_or(BUSY)?;
        if !ok {
            self.login_failed(&l.username, ip, now).await?;
            tracing::info!(conn = self.id, user = %l.username, "login failed");
            return Err((ErrorCode::BadCredentials, "wrong user name or password"));
        }
        self.second_factor(&l.username, l.second_factor.as_deref(), ip, now)
            .await?;
        let token = auth::new_token().ok_or((ErrorCode::Internal, "no randomness for a token"))?;
        if let Some(observe) = &self.shared.config.credential_observer {
            (observe.0)(&token);
        }
        let expires_at = now_ms() / 1000 + self.shared.config.token_ttl.as_secs();
        let record = TokenRecord {
            user: l.username.clone(),
            device: l.device,
            expires_at,
        };
        let hash = token_hash(&token);
        blocking(&self.shared, move |s| s.create_token(&hash, &record)).await?;
        tracing::info!(conn = self.id, user = %l.username, device = l.device, "logged in");
        Ok(frame::LoginOk {
            token: token.to_vec(),
            expires_at,
            user: l.username,
            device: l.device,
        }
        .into())
    }

    /// After a right password: passes when the account has no second
    /// factor on, or `code` is a fresh TOTP code or an unused recovery code
    /// (used up here); a wrong code counts as a failed login.
    async fn second_factor(
        &self,
        user: &str,
        code: Option<&str>,
        ip: std::net::IpAddr,
        now: Instant,
    ) -> Result<(), (ErrorCode, &'static str)> {
        let u = user.to_owned();
        let Some(record) = blocking(&self.shared, move |s| s.mfa(&u))
            .await?
            .filter(|r| r.enabled)
        else {
            return Ok(());
        };
        let Some(code) = code else {
            return Err((
                ErrorCode::SecondFactorRequired,
                "this account needs a one-time code from its authenticator app (or a recovery code)",
            ));
        };
        if self.use_code(user, &record, code).await? {
            return Ok(());
        }
        self.login_failed(user, ip, now).await?;
        tracing::info!(conn = self.id, user = %user, "wrong or used second factor");
        Err((
            ErrorCode::SecondFactorRequired,
            "wrong or already used one-time code",
        ))
    }

    fn mfa_key(&self) -> Result<Arc<MfaKey>, (ErrorCode, &'static str)> {
        self.shared.config.mfa_key.clone().ok_or((
            ErrorCode::Internal,
            "this server has no key for second factors (its operator sets --mfa-key-file)",
        ))
    }

    /// Whether `code` is a TOTP code of a step later than any used before,
    /// or an unused recovery code, of `user`: used up if so.
    async fn use_code(
        &self,
        user: &str,
        record: &MfaRecord,
        code: &str,
    ) -> Result<bool, (ErrorCode, &'static str)> {
        let u = user.to_owned();
        if !mfa::is_totp_code(code) {
            let Some(hash) = mfa::recovery_hash(user, code) else {
                return Ok(false);
            };
            return blocking(&self.shared, move |s| s.mfa_use_recovery(&u, &hash)).await;
        }
        let secret = self.open_secret(user, record)?;
        match mfa::verify_totp(&secret, code, mfa::current_step()) {
            Some(step) => blocking(&self.shared, move |s| s.mfa_use_step(&u, step)).await,
            None => Ok(false),
        }
    }

    /// `MfaSetup`: a new pending secret for the caller's account.
    async fn mfa_setup(&mut self) -> Reply {
        let me = self.device()?;
        let secret = mfa::new_secret();
        let sealed = self
            .mfa_key()?
            .seal(&me.user, secret.as_ref())
            .ok_or((ErrorCode::Internal, "cannot seal the secret"))?;
        let u = me.user.clone();
        if !blocking(&self.shared, move |s| s.mfa_begin(&u, &sealed)).await? {
            return Err((
                ErrorCode::InvalidRequest,
                "two-factor authentication is already on; turn it off first",
            ));
        }
        tracing::info!(conn = self.id, user = %me.user, "second factor set up, not yet confirmed");
        Ok(frame::MfaSecret {
            secret: secret.to_vec(),
            uri: mfa::otpauth_uri(&me.user, secret.as_ref()),
        }
        .into())
    }

    /// The start of `MfaConfirm` and `MfaDisable`: the caller, within the
    /// failed-login limits (wrong codes count as failed logins), and its
    /// second factor as stored.
    async fn mfa_request(&self) -> Result<MfaRequest, (ErrorCode, &'static str)> {
        let me = self.device()?;
        let (ip, now) = (self.peer.ip(), Instant::now());
        if !self.login_allowed(&me.user, ip, now).await? {
            return Err((
                ErrorCode::RateLimited,
                "too many wrong codes; try again later",
            ));
        }
        let u = me.user.clone();
        let record = blocking(&self.shared, move |s| s.mfa(&u)).await?;
        Ok(MfaRequest {
            user: me.user,
            ip,
            now,
            record,
        })
    }

    /// The TOTP secret of `record`, opened with this server's key.
    fn open_secret(
        &self,
        user: &str,
        record: &MfaRecord,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, (ErrorCode, &'static str)> {
        self.mfa_key()?.open(user, &record.sealed_secret).ok_or((
            ErrorCode::Internal,
            "the stored second factor does not open with this server's key",
        ))
    }

    /// `MfaConfirm`: a code of the pending secret turns it on.
    async fn mfa_confirm(&mut self, c: frame::MfaConfirm) -> Reply {
        let MfaRequest {
            user,
            ip,
            now,
            record,
        } = self.mfa_request().await?;
        let record = record.filter(|r| !r.enabled).ok_or((
            ErrorCode::InvalidRequest,
            "no second factor waits for confirmation (send MfaSetup first)",
        ))?;
        let secret = self.open_secret(&user, &record)?;
        let Some(step) = mfa::verify_totp(&secret, &c.code, mfa::current_step()) else {
            self.login_failed(&user, ip, now).await?;
            return Err((ErrorCode::SecondFactorRequired, "wrong code"));
        };
        let codes = mfa::new_recovery_codes();
        let hashes: Vec<[u8; 32]> = codes
            .iter()
            .filter_map(|c| mfa::recovery_hash(&user, c))
            .collect();
        let (u, sealed) = (user.clone(), record.sealed_secret);
        if !blocking(&self.shared, move |s| {
            s.mfa_enable(&u, &sealed, step, &hashes)
        })
        .await?
        {
            return Err((
                ErrorCode::InvalidRequest,
                "the pending second factor changed meanwhile; set it up again",
            ));
        }
        tracing::info!(conn = self.id, user = %user, "second factor on");
        Ok(frame::MfaEnabled {
            recovery_codes: codes.iter().map(|c| c.to_string()).collect(),
        }
        .into())
    }

    /// `MfaDisable`: a current code or a recovery code turns it off (a
    /// pending, unconfirmed one is dropped without).
    async fn mfa_disable(&mut self, d: frame::MfaDisable) -> Reply {
        let MfaRequest {
            user,
            ip,
            now,
            record,
        } = self.mfa_request().await?;
        let record = record.ok_or((
            ErrorCode::InvalidRequest,
            "two-factor authentication is not on",
        ))?;
        if record.enabled && !self.use_code(&user, &record, &d.code).await? {
            self.login_failed(&user, ip, now).await?;
            return Err((
                ErrorCode::SecondFactorRequired,
                "wrong or already used one-time code",
            ));
        }
        let u = user.clone();
        blocking(&self.shared, move |s| s.mfa_disable(&u)).await?;
        tracing::info!(conn = self.id, user = %user, "second factor off");
        Ok(frame::Ok {}.into())
    }

    async fn authenticate(&mut self, mut a: frame::Authenticate) -> Reply {
        if self.auth.is_some() {
            return Err((ErrorCode::InvalidRequest, "already authenticated"));
        }
        let hash = token_hash(&a.token);
        a.token.zeroize();
        let record = blocking(&self.shared, move |s| s.token(&hash))
            .await?
            .ok_or((ErrorCode::InvalidToken, "unknown, expired or revoked token"))?;
        if record.expires_at <= now_ms() / 1000 {
            return Err((ErrorCode::InvalidToken, "unknown, expired or revoked token"));
        }
        let device = Address {
            user: record.user,
            device: record.device,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let at_ms = now_ms();
        let channel = crate::hub::Channel {
            tx,
            queued: Arc::clone(&queued),
        };
        let ticket = self.shared.hub.register(device.clone(), at_ms, channel);
        if let Some(cluster) = &self.shared.cluster {
            // An older connection of this device on another node closes.
            cluster.publish(crate::cluster::Notice::Online {
                device: device.clone(),
                node: cluster.node,
                at_ms,
            });
        }
        tracing::info!(conn = self.id, user = %device.user, device = device.device, "authenticated");
        let d = device.clone();
        let remaining = blocking(&self.shared, move |s| s.one_time_prekey_count(&d)).await?;
        if let Some(n) = remaining
            && n < self.shared.config.prekey_low_threshold
        {
            self.shared.hub.notify(&device, Push::PrekeysLow(n));
        }
        self.auth = Some(Authed {
            device: device.clone(),
            ticket,
            pushes: rx,
            queued,
        });
        self.last_pushed = 0;
        self.mailbox_checked = false;
        self.next_poll = Instant::now() + self.shared.config.mail_poll.unwrap_or_default();
        Ok(frame::AuthOk {
            user: device.user,
            device: device.device,
        }
        .into())
    }

    async fn relay(&mut self, s: frame::Send) -> Reply {
        let from = self.device()?;
        let envelope = NewEnvelope {
            from,
            to: s.to,
            conversation: s.conversation,
            message_id: s.message_id,
            sent_at_ms: now_ms(),
            envelope: s.envelope,
        };
        let len = envelope.envelope.len();
        if let Some(observer) = &self.shared.config.envelope_observer {
            (observer.0)(&envelope.envelope);
        }
        let (stored, envelope) = hot(&self.shared, self.shared.store.fast_commits(), move |st| {
            Ok((st.enqueue_linked(&envelope)?, envelope))
        })
        .await?;
        let stored = stored.ok_or((
            ErrorCode::NoSuchUser,
            "no such device, or it has published no keys",
        ))?;
        tracing::debug!(conn = self.id, seq = stored.seq, len, "stored");
        // Announced by the store, when it announces: this node is then
        // alone (`Shared::announced`), so no other node needs telling.
        if !self.shared.announced {
            self.shared.route_envelope(stored, envelope);
        }
        Ok(frame::SendOk {
            seq: stored.seq,
            message_id: s.message_id,
        }
        .into())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// `SendGroup` (PROTOCOL §16.3): one group message stored for each
    /// recipient device, all durable before `SendOk`. Each stored copy costs
    /// a request token, as the `Send` it replaces would have: fanning out
    /// saves the sender bandwidth, not the server's limits.
    async fn relay_group(&mut self, g: frame::SendGroup) -> Reply {
        let from = self.device()?;
        if g.to.is_empty() {
            return Err((
                ErrorCode::InvalidRequest,
                "a group message needs recipients",
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(g.to.len());
        if g.to.iter().any(|a| *a == from || !seen.insert(a)) {
            return Err((
                ErrorCode::InvalidRequest,
                "recipients must be distinct devices other than the sender",
            ));
        }
        let rate = f64::from(self.shared.config.requests_per_second);
        let extra = (g.to.len() - 1) as f64;
        if self
            .requests
            .take_n(extra, rate, 2.0 * rate, Instant::now())
            .is_err()
        {
            return Err((
                ErrorCode::RateLimited,
                "too many group messages for the group's size; slow down",
            ));
        }
        let sent_at_ms = now_ms();
        let envelopes: Vec<NewEnvelope> =
            g.to.into_iter()
                .map(|to| NewEnvelope {
                    from: from.clone(),
                    to,
                    conversation: g.conversation,
                    message_id: g.message_id,
                    sent_at_ms,
                    envelope: g.envelope.clone(),
                })
                .collect();
        if let Some(observer) = &self.shared.config.envelope_observer {
            (observer.0)(&g.envelope);
        }
        let (stored, envelopes) = blocking(&self.shared, move |st| {
            for e in &envelopes {
                if st.one_time_prekey_count(&e.to)?.is_none() {
                    return Ok((None, envelopes));
                }
            }
            Ok((Some(st.enqueue_many(&envelopes)?), envelopes))
        })
        .await?;
        let stored = stored.ok_or((
            ErrorCode::NoSuchUser,
            "no such device, or it has published no keys",
        ))?;
        let mut last = 0;
        for (s, e) in stored.into_iter().zip(envelopes) {
            // A device removed between the check and the store.
            let Some(s) = s else { continue };
            last = s.seq;
            if !self.shared.announced {
                self.shared.route_envelope(s, e);
            }
        }
        tracing::debug!(conn = self.id, seq = last, "group message stored");
        Ok(frame::SendOk {
            seq: last,
            message_id: g.message_id,
        }
        .into())
    }
}

/// An Argon2id hash of a random password, verified against when the account
/// does not exist (equalises login timing).
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Kxq5Y8c1Qm0n3s2mH8b9m6e8o2mY4kXl6o3m2bQj1zE";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in ["alice", "bob.smith", "a", "x_1-2", "9lives"] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in ["", "Alice", "-x", ".x", "a b", "ümlaut", &"a".repeat(65)] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn dummy_hash_parses_and_never_matches() {
        assert!(!auth::verify_password("", DUMMY_HASH));
        assert!(argon2::PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
