//! Peers measured beside Chatify by the same load generator: a bare
//! WebSocket relay (the transport floor) and the paper's Socket.io stack.
//!
//! ```text
//!  schedule::schedule(plan) ─▶ peer users, each with chatify-core sessions
//!       │                     (the same envelopes the reference client sends)
//!       ├─ floor:    ws binary [len][to][envelope] ─▶ tokio-tungstenite relay (child process)
//!       └─ socketio: Engine.IO v4 + Socket.io v5 packets ─▶ node peers/socketio/server.js
//!  records ─▶ runner::Tally ─▶ the metrics and delivery checks of a Chatify run
//! ```
//!
//! Both relays forward an envelope to the connection named by the sender,
//! and nothing else: no accounts, no store, no acknowledgement, no
//! encryption. The load generator encrypts and decrypts every message with
//! the core's Double Ratchet, so the clients' cost is the one they would
//! have with Chatify; only the path between them differs.

use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatify_core::{Device, Session, VerifiedBundle};
use chatify_proto::{Envelope, PrekeyBundle};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::schedule::{self, Planned, Record};
use super::tally::{Progress, Tally};
use super::users::sleep_until;
use crate::metrics::{Outcome, hist, record};
use crate::plaintext;
use crate::scenario::{Mode, Scenario};

/// A relay that is not Chatify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// The bare tokio-tungstenite relay.
    Floor,
    /// Socket.io 4.8 on Node.js.
    SocketIo,
}

impl Peer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::Floor => "floor",
            Peer::SocketIo => "socketio",
        }
    }
}

// ---------------------------------------------------------------------------
// The floor: a bare relay (run as `chatify-harness __floor`).

type Routes = Arc<Mutex<HashMap<Vec<u8>, mpsc::UnboundedSender<Message>>>>;

/// Serves the floor relay until killed: the first text message of a
/// connection names it; each binary message `[n][to: n bytes][payload]` is
/// forwarded to the connection named `to` as `[m][from: m bytes][payload]`.
/// Frames for unknown names are dropped.
pub(crate) async fn serve_floor(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| listen.to_string())?;
    let addr = listener.local_addr()?;
    println!("listening on ws://{addr}");
    let routes: Routes = Arc::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(floor_connection(tcp, Arc::clone(&routes)));
    }
}

async fn floor_connection(tcp: TcpStream, routes: Routes) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    // One writer per connection: everything queued goes out in one flush.
    let writer = tokio::spawn(super::open_loop::writer(sink, rx));
    let mut me: Option<Vec<u8>> = None;
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(name) if me.is_none() && !name.is_empty() && name.len() < 256 => {
                let name = name.as_bytes().to_vec();
                if let Ok(mut r) = routes.lock() {
                    r.insert(name.clone(), tx.clone());
                }
                me = Some(name);
            }
            Message::Binary(frame) => {
                let Some(me) = &me else { break };
                let Some((&len, rest)) = frame.split_first() else {
                    continue;
                };
                let Some((to, payload)) = rest.split_at_checked(usize::from(len)) else {
                    continue;
                };
                let target = routes.lock().ok().and_then(|r| r.get(to).cloned());
                if let Some(target) = target {
                    let mut out = Vec::with_capacity(1 + me.len() + payload.len());
                    out.push(me.len() as u8);
                    out.extend_from_slice(me);
                    out.extend_from_slice(payload);
                    let _ = target.send(Message::Binary(out.into()));
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    if let (Some(me), Ok(mut r)) = (me, routes.lock())
        && r.get(&me).is_some_and(|t| t.same_channel(&tx))
    {
        r.remove(&me);
    }
    drop(tx);
    writer.abort();
}

// ---------------------------------------------------------------------------
// Starting a peer relay as a child process.

/// A peer relay in a child process.
pub(crate) struct PeerServer {
    child: tokio::process::Child,
    pub(crate) addr: SocketAddr,
}

impl PeerServer {
    /// Starts `peer`; `socketio_dir` holds `server.js` and its installed
    /// `node_modules` (see `peers/socketio/install.sh`).
    pub(crate) async fn start(peer: Peer, socketio_dir: &Path) -> Result<Self> {
        let mut command = match peer {
            Peer::Floor => {
                let exe = std::env::current_exe()?;
                let mut c = tokio::process::Command::new(exe);
                c.args(["__floor", "--listen", "127.0.0.1:0"]);
                c
            }
            Peer::SocketIo => {
                if !socketio_dir.join("node_modules/socket.io").is_dir() {
                    bail!(
                        "Socket.io is not installed in {}: run {}/install.sh (needs Node.js and npm)",
                        socketio_dir.display(),
                        socketio_dir.display()
                    );
                }
                let mut c = tokio::process::Command::new("node");
                c.arg(socketio_dir.join("server.js")).args(["--port", "0"]);
                c
            }
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {} relay", peer.name()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .with_context(|| format!("the {} relay did not start within 20 s", peer.name()))??;
        let url = line
            .trim()
            .strip_prefix("listening on ws://")
            .with_context(|| format!("the {} relay said {line:?}", peer.name()))?;
        let addr = url.parse().with_context(|| url.to_string())?;
        Ok(PeerServer { child, addr })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

// ---------------------------------------------------------------------------
// Peer clients.

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

fn ws_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("websocket: {e}")
}

async fn next_text(stream: &mut Stream) -> Result<String> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(m)) => bail!("unexpected {m:?}"),
            Some(Err(e)) => return Err(ws_err(e)),
            None => return Err(anyhow!("connection closed")),
        }
    }
}

/// Connects user `me` to a peer relay and names the connection.
async fn connect(peer: Peer, addr: SocketAddr, me: &str) -> Result<(Sink, Stream)> {
    let url = match peer {
        Peer::Floor => format!("ws://{addr}/"),
        Peer::SocketIo => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
    };
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(ws_err)?;
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        let _ = tcp.set_nodelay(true);
    }
    let (mut sink, mut stream) = ws.split();
    match peer {
        Peer::Floor => sink
            .send(Message::text(me.to_owned()))
            .await
            .map_err(ws_err)?,
        Peer::SocketIo => {
            // Engine.IO open packet, then a Socket.io CONNECT to "/".
            let open = next_text(&mut stream).await?;
            if !open.starts_with("0{") {
                bail!("expected an Engine.IO open packet, got {open:?}");
            }
            sink.send(Message::text("40")).await.map_err(ws_err)?;
            loop {
                let t = next_text(&mut stream).await?;
                if t.starts_with("40") {
                    break;
                }
                if t == "2" {
                    sink.send(Message::text("3")).await.map_err(ws_err)?;
                } else {
                    bail!("expected a Socket.io CONNECT reply, got {t:?}");
                }
            }
            let join = format!("42{}", serde_json::json!(["join", me]));
            sink.send(Message::text(join)).await.map_err(ws_err)?;
        }
    }
    Ok((sink, stream))
}

/// Sends one envelope to `to`.
async fn send(peer: Peer, sink: &mut Sink, to: &str, envelope: Vec<u8>) -> Result<()> {
    match peer {
        Peer::Floor => {
            let mut frame = Vec::with_capacity(1 + to.len() + envelope.len());
            frame.push(to.len() as u8);
            frame.extend_from_slice(to.as_bytes());
            frame.extend_from_slice(&envelope);
            sink.send(Message::binary(frame)).await.map_err(ws_err)
        }
        Peer::SocketIo => {
            // A BINARY_EVENT with one attachment: the header packet, then
            // the attachment as a binary frame.
            let header = format!(
                "451-{}",
                serde_json::json!(["send", {"to": to, "body": {"_placeholder": true, "num": 0}}])
            );
            sink.feed(Message::text(header)).await.map_err(ws_err)?;
            sink.send(Message::binary(envelope)).await.map_err(ws_err)
        }
    }
}

/// What came in on a peer connection.
enum Incoming {
    Envelope { from: String, bytes: Vec<u8> },
    Nothing,
    Closed,
}

/// Socket.io's receive state: a BINARY_EVENT header waits for its attachment.
#[derive(Default)]
struct SocketIoState {
    pending_from: Option<String>,
}

async fn receive(
    peer: Peer,
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    sink: &mut Sink,
    sio: &mut SocketIoState,
) -> Incoming {
    let Some(Ok(msg)) = msg else {
        return Incoming::Closed;
    };
    match (peer, msg) {
        (_, Message::Close(_)) => Incoming::Closed,
        (Peer::Floor, Message::Binary(frame)) => {
            let Some((&len, rest)) = frame.split_first() else {
                return Incoming::Nothing;
            };
            match rest.split_at_checked(usize::from(len)) {
                Some((from, payload)) => Incoming::Envelope {
                    from: String::from_utf8_lossy(from).into_owned(),
                    bytes: payload.to_vec(),
                },
                None => Incoming::Nothing,
            }
        }
        (Peer::SocketIo, Message::Text(t)) => {
            let t = t.as_str();
            if t == "2" {
                // Engine.IO ping: answer or the server drops us.
                return match sink.send(Message::text("3")).await {
                    Ok(()) => Incoming::Nothing,
                    Err(_) => Incoming::Closed,
                };
            }
            if let Some(json) = t.strip_prefix("451-") {
                let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                if v.get(0).and_then(|e| e.as_str()) == Some("message") {
                    sio.pending_from = v
                        .get(1)
                        .and_then(|m| m.get("from"))
                        .and_then(|f| f.as_str())
                        .map(str::to_owned);
                }
            }
            Incoming::Nothing
        }
        (Peer::SocketIo, Message::Binary(b)) => match sio.pending_from.take() {
            Some(from) => Incoming::Envelope {
                from,
                bytes: b.to_vec(),
            },
            None => Incoming::Nothing,
        },
        _ => Incoming::Nothing,
    }
}

/// Sessions between every pair of partners, set up before the clock starts
/// (X3DH with a one-time prekey, then one message each way).
fn sessions(partners: &[Vec<usize>]) -> Result<Vec<HashMap<usize, Session>>> {
    let rng = &mut rand::rng();
    let mut devices: Vec<Device> = (0..partners.len()).map(|_| Device::generate(rng)).collect();
    let mut out: Vec<HashMap<usize, Session>> = partners.iter().map(|_| HashMap::new()).collect();
    for (a, mine) in partners.iter().enumerate() {
        for &b in mine.iter().filter(|b| **b > a) {
            let keys = devices[b].publish_keys(1, rng);
            let bundle = PrekeyBundle {
                user: schedule::user_name(b),
                device: 1,
                identity: keys.identity,
                signed_prekey: keys.signed_prekey,
                one_time_prekey: keys.one_time_prekeys.into_iter().next(),
            };
            let verified = VerifiedBundle::verify(&bundle)?;
            let conv = conversation(a, b);
            let mut sa = Session::initiate(&devices[a], verified, rng)?;
            let first = sa.encrypt(conv, b"hello", rng)?;
            let (mut sb, _) = devices[b].accept(&first)?;
            let reply = sb.encrypt(conv, b"hello", rng)?;
            sa.decrypt(&reply)?;
            out[a].insert(b, sa);
            out[b].insert(a, sb);
        }
    }
    Ok(out)
}

fn conversation(a: usize, b: usize) -> chatify_proto::ConversationId {
    chatify_client::conversation_id(&schedule::user_name(a), &schedule::user_name(b))
}

struct PeerCtx {
    peer: Peer,
    start: Instant,
    deadline: Instant,
    intended: HashMap<(usize, u64), Duration>,
    records: mpsc::UnboundedSender<Record>,
}

impl PeerCtx {
    fn record(&self, r: Record) {
        let _ = self.records.send(r);
    }
}

fn user_index(name: &str) -> Option<usize> {
    name.strip_prefix('u')?.parse().ok()
}

#[allow(clippy::too_many_arguments)]
async fn user_task(
    ctx: Arc<PeerCtx>,
    me: usize,
    mut sink: Sink,
    mut stream: Stream,
    mut sessions: HashMap<usize, Session>,
    sends: Vec<Planned>,
    expected: usize,
) {
    let mut sio = SocketIoState::default();
    let (mut next, mut received) = (0usize, 0usize);
    loop {
        if next >= sends.len() && received >= expected {
            break;
        }
        let send_at = sends.get(next).map(|p| ctx.start + p.at);
        tokio::select! {
            biased;
            msg = stream.next() => match receive(ctx.peer, msg, &mut sink, &mut sio).await {
                Incoming::Closed => break,
                Incoming::Nothing => {}
                Incoming::Envelope { from, bytes } => {
                    let session = user_index(&from).and_then(|f| sessions.get_mut(&f));
                    let Some(session) = session else {
                        ctx.record(Record::Unknown);
                        continue;
                    };
                    let t = Instant::now();
                    let opened = Envelope::decode(&bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|env| session.decrypt(&env).map_err(|e| e.to_string()));
                    let now = Instant::now();
                    match opened {
                        Ok(text) => match plaintext::parse(&text)
                            .and_then(|k| ctx.intended.get(&k).map(|at| (k, *at)))
                        {
                            Some(((sender, n), at)) => {
                                received += 1;
                                ctx.record(Record::Delivered {
                                    recipient: me,
                                    sender,
                                    n,
                                    latency: now.saturating_duration_since(ctx.start + at),
                                    decrypt: Some(now - t),
                                    bytes: text.len(),
                                    at: now,
                                });
                            }
                            None => ctx.record(Record::Unknown),
                        },
                        Err(e) => ctx.record(Record::Rejected(e)),
                    }
                }
            },
            _ = sleep_until(send_at), if send_at.is_some() => {
                if let Some(p) = sends.get(next) {
                    let t = Instant::now();
                    let sealed = sessions
                        .get_mut(&p.recipient)
                        .ok_or_else(|| "no session".to_owned())
                        .and_then(|s| {
                            s.encrypt(conversation(me, p.recipient), &p.plaintext.bytes, &mut rand::rng())
                                .map_err(|e| e.to_string())
                        });
                    let encrypt = t.elapsed();
                    match sealed {
                        Ok(envelope) => {
                            let to = schedule::user_name(p.recipient);
                            match send(ctx.peer, &mut sink, &to, envelope.encode()).await {
                                Ok(()) => ctx.record(Record::Sent { encrypt: Some(encrypt), setup: None }),
                                Err(e) => ctx.record(Record::SendFailed(format!("{e:#}"))),
                            }
                        }
                        Err(e) => ctx.record(Record::SendFailed(format!("{e:#}"))),
                    }
                }
                next += 1;
            },
            _ = tokio::time::sleep_until(ctx.deadline.into()) => break,
        }
    }
    let _ = sink.close().await;
}

/// Runs the scenario's workload through `peer` (started here, in a child
/// process) and measures it as a Chatify run is measured.
pub(crate) async fn run(
    s: &Scenario,
    peer: Peer,
    socketio_dir: &Path,
    show_progress: bool,
) -> Result<Outcome> {
    let plan = schedule::schedule(s);
    let partners = s.conversations.graph.partners(s.users.count);
    let mut sessions = sessions(&partners)?;
    let server = PeerServer::start(peer, socketio_dir).await?;
    let mut conns = Vec::with_capacity(s.users.count);
    let mut connect_auth = hist();
    for i in 0..s.users.count {
        let t = Instant::now();
        let c = connect(peer, server.addr, &schedule::user_name(i)).await?;
        record(&mut connect_auth, t.elapsed().as_micros());
        conns.push(Some(c));
    }
    // Let the relay take in every name before the first message.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let last_at = plan.last().map(|p| p.at).unwrap_or_default();
    let start = Instant::now() + Duration::from_millis(200);
    let deadline = start + last_at + Duration::from_secs_f64(s.workload.grace_secs);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(PeerCtx {
        peer,
        start,
        deadline,
        intended: plan.iter().map(|p| ((p.sender, p.n), p.at)).collect(),
        records: tx,
    });
    let cpu_before = server.pid().and_then(crate::topology::proc_cpu_secs);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        let Some((sink, stream)) = conn.take() else {
            continue;
        };
        let sends: Vec<Planned> = plan.iter().filter(|p| p.sender == i).cloned().collect();
        let expected = plan.iter().filter(|p| p.recipient == i).count();
        tasks.spawn(user_task(
            Arc::clone(&ctx),
            i,
            sink,
            stream,
            std::mem::take(&mut sessions[i]),
            sends,
            expected,
        ));
    }
    drop(ctx);
    let progress = Progress::new(
        plan.len() as u64,
        &format!("{}-{}", s.name, peer.name()),
        show_progress,
    );
    let mut tally = Tally::new(s, &plan, start, connect_auth);
    while let Some(r) = rx.recv().await {
        tally.add(r, &progress);
    }
    while tasks.join_next().await.is_some() {}
    progress.bar.finish_and_clear();
    let cpu_after = server.pid().and_then(crate::topology::proc_cpu_secs);
    let (mut metrics, checks) = tally.finish(s, cpu_before, cpu_after);
    metrics.server_peak_rss_kib = server.pid().and_then(crate::topology::proc_peak_rss_kib);
    server.stop().await;
    Ok(Outcome {
        scenario: s.name.clone(),
        mode: Mode::E2ee,
        metrics,
        checks,
        taps: Default::default(),
    })
}
