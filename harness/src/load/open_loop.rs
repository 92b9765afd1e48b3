//! A light open-loop generator for relays of opaque envelopes: the
//! reference server spoken to on its wire protocol, Socket.io as a MERN
//! chat speaks it, and the bare WebSocket floor.
//!
//! ```text
//!  connect(wire, n)  ─▶ n WebSockets, each with a writer task (one flush per
//!                       wake-up) and a reader task (times each delivery)
//!  step(rate, secs)  ─▶ message k leaves at start + k/rate from connection
//!                       k mod n to k+1 mod n, 256 bytes, pre-computed but for
//!                       a 24-byte header: [planned send time][k][step]
//!                    ─▶ delivered, latency p50/p99 (from the planned time,
//!                       so a late send counts), and the CPU time of server
//!                       and generator over the step
//! ```
//!
//! No encryption and no client state: the relays forward opaque bytes, and
//! the generator must cost far less than what it measures (its own CPU is
//! reported beside the server's so that it is never silently the bound).
//! The reference server's deliveries are acknowledged as the reference
//! client acknowledges them: one `Ack` for everything read in one wake-up.
//! Socket.io and the floor have no acknowledgements to send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use chatify_proto::frame::{self, Address};
use chatify_proto::{Body, Frame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt as _, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::metrics::{Percentiles, hist, record};
use crate::topology::proc_cpu_secs;

/// How a connection speaks to its relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// The reference server's frames (PROTOCOL §9): `Send`, `Deliver`, `Ack`.
    Chatify,
    /// Socket.io v5 events, the envelope as a base64 string in JSON (how a
    /// MERN chat sends a message).
    SocketIoBase64,
    /// Socket.io v5 binary events, the envelope as an attachment.
    SocketIoBinary,
    /// The floor relay's `[n][to][payload]` binary messages.
    Floor,
}

/// Bytes of every envelope.
pub(crate) const ENVELOPE_LEN: usize = 256;
/// Bytes of the per-message header at the front of each envelope.
const HEADER_LEN: usize = 24;
/// Base64 characters of the header (24 bytes encode to 32, unpadded).
const HEADER_B64: usize = 32;
/// The fixed rest of every envelope.
const FILL: u8 = 0x5a;

/// What every reader reports into.
struct Shared {
    epoch: Instant,
    step: AtomicU64,
    delivered: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Shared {
    /// A delivery whose envelope begins with `header`.
    fn delivered(&self, header: &[u8]) {
        let Some(h) = header.get(..HEADER_LEN) else {
            return;
        };
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i * 8..i * 8 + 8]);
            u64::from_be_bytes(b)
        };
        if word(2) != self.step.load(Ordering::Acquire) {
            return; // a straggler of an earlier step
        }
        let sent = self.epoch + Duration::from_nanos(word(0));
        if let Ok(mut l) = self.latency.lock() {
            record(
                &mut l,
                Instant::now().saturating_duration_since(sent).as_micros(),
            );
        }
        self.delivered.fetch_add(1, Ordering::AcqRel);
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

/// `n` connections to one relay, ready for load.
pub(crate) struct Fleet {
    wire: Wire,
    outboxes: Vec<mpsc::UnboundedSender<Message>>,
    shared: Arc<Shared>,
    tail_b64: String,
}

/// One step's figures.
#[derive(Debug, Clone)]
pub(crate) struct StepResult {
    pub(crate) rate: f64,
    pub(crate) planned: u64,
    pub(crate) delivered: u64,
    /// From the first planned send to the last delivery (or the grace's end).
    pub(crate) secs: f64,
    pub(crate) latency_us: Percentiles,
    pub(crate) server_cpu_secs: Option<f64>,
    pub(crate) generator_cpu_secs: Option<f64>,
}

/// The name of connection `i` (Socket.io and floor) or its device.
fn name(i: usize) -> String {
    format!("u{i}")
}

/// Device `i` of the reference server's load account.
pub(crate) fn device(i: usize) -> Address {
    Address {
        user: "load".into(),
        device: u32::try_from(i + 1).unwrap_or(u32::MAX),
    }
}

pub(crate) fn frame_bytes(id: u64, body: impl Into<Body>) -> Vec<u8> {
    Frame {
        id,
        body: body.into(),
    }
    .encode()
}

fn url(wire: Wire, addr: SocketAddr) -> String {
    match wire {
        Wire::Chatify => format!("ws://{addr}"),
        Wire::SocketIoBase64 | Wire::SocketIoBinary => {
            format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
        }
        Wire::Floor => format!("ws://{addr}/"),
    }
}

impl Fleet {
    /// Opens `n` connections to the relay at `addr`. `tokens` (one per
    /// connection) authenticate them to the reference server; the peers
    /// need none.
    pub(crate) async fn connect(
        wire: Wire,
        addr: SocketAddr,
        n: usize,
        tokens: Option<Vec<Vec<u8>>>,
    ) -> Result<Fleet> {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            step: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            latency: Mutex::new(hist()),
        });
        let mut tokens = tokens.map(Vec::into_iter);
        let mut outboxes = Vec::with_capacity(n);
        for i in 0..n {
            let (ws, _) = tokio_tungstenite::connect_async(url(wire, addr))
                .await
                .with_context(|| format!("connection {i}"))?;
            if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                let _ = tcp.set_nodelay(true);
            }
            let (mut sink, mut stream) = ws.split();
            let token = tokens.as_mut().and_then(Iterator::next);
            handshake(wire, i, &mut sink, &mut stream, token)
                .await
                .with_context(|| format!("connection {i}"))?;
            let (tx, rx) = mpsc::unbounded_channel::<Message>();
            tokio::spawn(writer(sink, rx));
            tokio::spawn(reader(wire, stream, tx.clone(), Arc::clone(&shared)));
            outboxes.push(tx);
        }
        let tail = [FILL; ENVELOPE_LEN - HEADER_LEN];
        Ok(Fleet {
            wire,
            outboxes,
            shared,
            tail_b64: base64::engine::general_purpose::STANDARD.encode(tail),
        })
    }

    /// One open-loop step: `rate` msg/s for `secs`, then up to `grace` for
    /// the last deliveries. `server` are the relay's processes (its own and
    /// any that serve it alone, such as its database sessions), for their
    /// CPU time together.
    pub(crate) async fn step(
        &self,
        rate: f64,
        secs: f64,
        grace: Duration,
        server: &[u32],
    ) -> StepResult {
        let step = self.shared.step.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.delivered.store(0, Ordering::Release);
        if let Ok(mut l) = self.shared.latency.lock() {
            l.reset();
        }
        let me = std::process::id();
        let cpu0 = cpu_of(server);
        let gen0 = proc_cpu_secs(me);
        let start = Instant::now() + Duration::from_millis(50);
        let planned = self.send(step, start, rate, secs).await;
        let deadline = Instant::now() + grace;
        while self.shared.delivered.load(Ordering::Acquire) < planned && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
        let result = StepResult {
            rate,
            planned,
            delivered: self.shared.delivered.load(Ordering::Acquire),
            secs,
            latency_us: self
                .shared
                .latency
                .lock()
                .map(|l| Percentiles::of(&l))
                .unwrap_or_default(),
            server_cpu_secs: diff(cpu0, cpu_of(server)),
            generator_cpu_secs: diff(gen0, proc_cpu_secs(me)),
        };
        // Stragglers of this step are not counted in the next.
        self.shared.step.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// Sends the step's messages on schedule; returns how many.
    async fn send(&self, step: u64, start: Instant, rate: f64, secs: f64) -> u64 {
        let n = self.outboxes.len();
        let total = (rate * secs).round() as u64;
        for k in 0..total {
            let at = start + Duration::from_secs_f64(k as f64 / rate);
            if at > Instant::now() {
                tokio::time::sleep_until(at.into()).await;
            }
            let from = (k as usize) % n;
            let mut header = [0u8; HEADER_LEN];
            let since = at.saturating_duration_since(self.shared.epoch).as_nanos() as u64;
            header[..8].copy_from_slice(&since.to_be_bytes());
            header[8..16].copy_from_slice(&k.to_be_bytes());
            header[16..].copy_from_slice(&step.to_be_bytes());
            for m in self.messages(k, (from + 1) % n, &header) {
                let _ = self.outboxes[from].send(m);
            }
        }
        total
    }

    /// The messages that carry one envelope from `from` to `to`.
    fn messages(&self, k: u64, to: usize, header: &[u8; HEADER_LEN]) -> Vec<Message> {
        let envelope = || {
            let mut e = Vec::with_capacity(ENVELOPE_LEN);
            e.extend_from_slice(header);
            e.resize(ENVELOPE_LEN, FILL);
            e
        };
        match self.wire {
            Wire::Chatify => {
                let mut message_id = [0u8; 16];
                message_id.copy_from_slice(&header[..16]);
                let send = frame::Send {
                    to: device(to),
                    conversation: [7; 16],
                    message_id,
                    envelope: envelope(),
                };
                vec![Message::binary(frame_bytes(10 + k, send))]
            }
            Wire::SocketIoBase64 => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(header);
                vec![Message::text(format!(
                    "42[\"send\",{{\"to\":\"{}\",\"body\":\"{b64}{}\"}}]",
                    name(to),
                    self.tail_b64
                ))]
            }
            Wire::SocketIoBinary => vec![
                Message::text(format!(
                    "451-[\"send\",{{\"to\":\"{}\",\"body\":{{\"_placeholder\":true,\"num\":0}}}}]",
                    name(to)
                )),
                Message::binary(envelope()),
            ],
            Wire::Floor => {
                let to = name(to);
                let mut m = Vec::with_capacity(1 + to.len() + ENVELOPE_LEN);
                m.push(to.len() as u8);
                m.extend_from_slice(to.as_bytes());
                m.extend_from_slice(&envelope());
                vec![Message::binary(m)]
            }
        }
    }

    /// Closes every connection.
    pub(crate) fn close(self) {
        drop(self.outboxes);
    }
}

/// Registers the account and logs `count` devices in on one connection.
pub(crate) async fn login_all(url: &str, count: usize) -> Result<Vec<Vec<u8>>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let mut ask = async |id: u64, body: Body| -> Result<Body> {
        ws.send(Message::binary(frame_bytes(id, body))).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    let f = Frame::decode(&b)?;
                    if f.id == id {
                        return Ok(f.body);
                    }
                }
                Some(Ok(_)) => {}
                other => bail!("setup connection lost: {other:?}"),
            }
        }
    };
    let password = "load-harness-password".to_owned();
    let reg = frame::Register {
        username: "load".into(),
        password: password.clone(),
    };
    ask(1, reg.into()).await?;
    let mut tokens = Vec::with_capacity(count);
    for n in 0..count {
        let login = frame::Login {
            username: "load".into(),
            password: password.clone(),
            device: device(n).device,
            second_factor: None,
        };
        match ask(2 + n as u64, login.into()).await? {
            Body::LoginOk(ok) => tokens.push(ok.token),
            other => bail!("login of device {} refused: {other:?}", n + 1),
        }
    }
    Ok(tokens)
}

/// Names (or authenticates) connection `i`.
async fn handshake(
    wire: Wire,
    i: usize,
    sink: &mut Sink,
    stream: &mut Stream,
    token: Option<Vec<u8>>,
) -> Result<()> {
    match wire {
        Wire::Chatify => {
            let token = token.context("no token")?;
            sink.send(Message::binary(frame_bytes(
                1,
                frame::Authenticate { token },
            )))
            .await?;
            sink.send(Message::binary(frame_bytes(2, dummy_keys(i))))
                .await?;
            // Both replies before the next connection: each is ready when
            // the load starts.
            let mut replies = 0;
            while replies < 2 {
                match stream.next().await {
                    Some(Ok(Message::Binary(b))) => match Frame::decode(&b)?.body {
                        Body::AuthOk(_) | Body::Ok(_) => replies += 1,
                        Body::Error(e) => bail!("{e:?}"),
                        _ => {}
                    },
                    Some(Ok(_)) => {}
                    other => bail!("lost during setup: {other:?}"),
                }
            }
        }
        Wire::SocketIoBase64 | Wire::SocketIoBinary => {
            let mut text = async || -> Result<String> {
                loop {
                    match stream.next().await {
                        Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                        Some(Ok(_)) => {}
                        other => bail!("lost during setup: {other:?}"),
                    }
                }
            };
            let open = text().await?;
            if !open.starts_with("0{") {
                bail!("expected an Engine.IO open packet, got {open:?}");
            }
            sink.send(Message::text("40")).await?;
            if !text().await?.starts_with("40") {
                bail!("no Socket.io CONNECT reply");
            }
            let join = format!("42[\"join\",\"{}\"]", name(i));
            sink.send(Message::text(join)).await?;
        }
        Wire::Floor => sink.send(Message::text(name(i))).await?,
    }
    Ok(())
}

/// Dummy keys for a device of the load account (the server relays; nothing
/// is decrypted).
pub(crate) fn dummy_keys(n: usize) -> frame::PublishKeys {
    let b = (n % 251) as u8;
    frame::PublishKeys {
        identity: chatify_proto::DeviceKeys {
            signing_key: [b; 32],
            identity_key: [b; 32],
            identity_signature: [b; 64],
        },
        signed_prekey: chatify_proto::SignedPrekey {
            id: 1,
            public_key: [b; 32],
            signature: [b; 64],
        },
        one_time_prekeys: Vec::new(),
    }
}

/// Everything queued for a connection leaves in one flush (the floor's
/// relay writes its connections the same way).
pub(crate) async fn writer<S>(mut sink: S, mut rx: mpsc::UnboundedReceiver<Message>)
where
    S: futures_util::Sink<Message> + Unpin,
{
    while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Times every delivery; acknowledges the reference server's deliveries
/// once per wake-up, and answers Engine.IO's pings.
async fn reader(
    wire: Wire,
    mut stream: Stream,
    out: mpsc::UnboundedSender<Message>,
    shared: Arc<Shared>,
) {
    let mut seqs = Vec::new();
    while let Some(Ok(first)) = stream.next().await {
        let mut next = Some(first);
        while let Some(m) = next {
            match (wire, m) {
                (Wire::Chatify, Message::Binary(b)) => {
                    if let Ok(Frame {
                        body: Body::Deliver(d),
                        ..
                    }) = Frame::decode(&b)
                    {
                        shared.delivered(&d.envelope);
                        seqs.push(d.seq);
                    }
                }
                (Wire::SocketIoBase64 | Wire::SocketIoBinary, Message::Text(t)) if t == "2" => {
                    let _ = out.send(Message::text("3"));
                }
                (Wire::SocketIoBase64, Message::Text(t)) => {
                    if let Some(h) = base64_header(t.as_str()) {
                        shared.delivered(&h);
                    }
                }
                (Wire::SocketIoBinary, Message::Binary(b)) => shared.delivered(&b),
                (Wire::Floor, Message::Binary(b)) => {
                    if let Some((&len, rest)) = b.split_first() {
                        shared.delivered(rest.get(usize::from(len)..).unwrap_or_default());
                    }
                }
                _ => {}
            }
            next = match stream.next().now_or_never() {
                Some(Some(Ok(m))) => Some(m),
                _ => None,
            };
        }
        if !seqs.is_empty() {
            let ack = frame_bytes(
                3,
                frame::Ack {
                    seqs: std::mem::take(&mut seqs),
                },
            );
            let _ = out.send(Message::binary(ack));
        }
    }
}

/// The header of a base64 `message` event's body.
fn base64_header(event: &str) -> Option<Vec<u8>> {
    const KEY: &str = "\"body\":\"";
    let at = event.find(KEY)? + KEY.len();
    let b64 = event.get(at..at + HEADER_B64)?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The CPU time of `pids` together (`None` if there are none or one of
/// them cannot be read).
fn cpu_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| proc_cpu_secs(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base64_body_yields_its_header() {
        let header: Vec<u8> = (0..HEADER_LEN as u8).collect();
        let tail = base64::engine::general_purpose::STANDARD.encode([FILL; 232]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&header);
        assert_eq!(b64.len(), HEADER_B64);
        let event = format!("42[\"message\",{{\"from\":\"u1\",\"body\":\"{b64}{tail}\"}}]");
        assert_eq!(base64_header(&event), Some(header));
        // The whole body decodes to one envelope of the agreed length.
        let body = base64::engine::general_purpose::STANDARD
            .decode(format!("{b64}{tail}"))
            .unwrap();
        assert_eq!(body.len(), ENVELOPE_LEN);
        assert_eq!(base64_header("42[\"message\",{}]"), None);
    }
}
