//! `chatify-harness connections`: many authenticated connections held on
//! one server, what each costs in server memory, and the latency of
//! messages relayed among them while they are all connected.
//!
//! ```text
//!  child server ─▶ one account, N devices logged in, keys published
//!               ─▶ N WebSockets authenticated (RSS before / after, idle)
//!               ─▶ open loop: R msg/s for S s, device i → device i+1
//!                  (Send, Deliver, Ack as the reference client does them)
//!               ─▶ latency p50 / p99, delivered, server and generator CPU
//! ```
//!
//! The generator speaks the wire protocol directly (no E2EE: the server
//! relays opaque envelopes, and the experiment is about the server), from
//! one process: its CPU time is reported beside the server's so that it is
//! never silently the bound.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use chatify_proto::frame::{self, Address};
use chatify_proto::{Body, Frame};
use chatify_server::store::sqlite::Durability;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::metrics::{Percentiles, hist, record};
use crate::report::connections::Connections;
use crate::scenario::ServerMode;
use crate::topology::{Topology, proc_cpu_secs, proc_peak_rss_kib, process};

/// One connection's sending half, fed by a channel.
type Outbox = mpsc::UnboundedSender<Vec<u8>>;

fn frame(id: u64, body: impl Into<Body>) -> Vec<u8> {
    Frame {
        id,
        body: body.into(),
    }
    .encode()
}

fn device(n: usize) -> Address {
    Address {
        user: "load".into(),
        device: u32::try_from(n + 1).unwrap_or(u32::MAX),
    }
}

/// Runs the experiment and writes `report.md` and `summary.json` to `out`.
pub(crate) async fn run(
    out: &Path,
    count: usize,
    rate: f64,
    secs: f64,
    durability: Durability,
) -> Result<Connections> {
    if count < 2 || rate <= 0.0 || secs <= 0.0 {
        bail!("need at least 2 connections, a positive rate and a positive duration");
    }
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let dir = tempfile::tempdir()?;
    let mut topo = Topology {
        mode: ServerMode::Child,
        log_level: "warn",
        data_dir: dir.path().to_path_buf(),
        db: dir.path().join("chatify.db"),
        log: dir.path().join("server.log"),
        durability,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        handle: None,
        observer: None,
        keep_credentials: false,
        max_connections_per_address: Some(count + 16),
        server_args: Vec::new(),
    };
    topo.start().await?;
    let pid = topo.pid().context("the server has no process")?;
    let url = format!("ws://{}", topo.addr);
    let t0 = Instant::now();
    eprintln!("logging in {count} devices");
    let tokens = login_all(&url, count).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = rss_kib(pid)?;
    eprintln!("connecting {count} WebSockets");
    let latency = Arc::new(std::sync::Mutex::new(hist()));
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Message ids carry their planned send time as nanoseconds since this.
    let epoch = Instant::now();
    let outboxes = connect_all(&url, tokens, epoch, &latency, &delivered).await?;
    let setup_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_connected_kib = rss_kib(pid)?;
    eprintln!("load: {rate} msg/s for {secs} s");
    let cpu_before = proc_cpu_secs(pid);
    let gen_before = proc_cpu_secs(std::process::id());
    let planned = send_load(&outboxes, epoch, rate, secs).await;
    // Everything delivered, or a grace period after the last send.
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(std::sync::atomic::Ordering::Acquire) < planned
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_after = proc_cpu_secs(pid);
    let gen_after = proc_cpu_secs(std::process::id());
    let delivered = delivered.load(std::sync::atomic::Ordering::Acquire);
    let server_peak_rss_kib = proc_peak_rss_kib(pid);
    drop(outboxes);
    topo.stop(false).await;
    let server_cpu_secs = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    let latency_us = Percentiles::of(&latency.lock().unwrap_or_else(|p| p.into_inner()));
    let c = Connections {
        connections: count,
        durability: match durability {
            Durability::Full => "full",
            Durability::Normal => "normal",
        },
        rate,
        secs,
        rss_before_kib,
        rss_connected_kib,
        kib_per_connection: rss_connected_kib.saturating_sub(rss_before_kib) as f64 / count as f64,
        server_peak_rss_kib,
        planned,
        delivered,
        latency_us,
        server_cpu_secs,
        server_cpu_us_per_msg: server_cpu_secs
            .filter(|_| delivered > 0)
            .map(|s| s * 1e6 / delivered as f64),
        generator_cpu_secs: gen_before.zip(gen_after).map(|(a, b)| b - a),
        setup_secs,
    };
    crate::report::connections::write(out, &c)?;
    Ok(c)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = process(pid).context("no such process")?.status()?;
    status.vmrss.context("no VmRSS")
}

/// Registers the account and logs `count` devices in on one connection.
async fn login_all(url: &str, count: usize) -> Result<Vec<Vec<u8>>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let mut ask = async |id: u64, body: Body| -> Result<Body> {
        ws.send(Message::binary(frame(id, body))).await?;
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

/// Authenticates one WebSocket per token and publishes its keys; each gets
/// a writer task (fed by its outbox) and a reader task that times every
/// `Deliver` against the send time carried in its message id and
/// acknowledges it.
async fn connect_all(
    url: &str,
    tokens: Vec<Vec<u8>>,
    epoch: Instant,
    latency: &Arc<std::sync::Mutex<Histogram<u64>>>,
    delivered: &Arc<std::sync::atomic::AtomicU64>,
) -> Result<Vec<Outbox>> {
    let mut outboxes = Vec::with_capacity(tokens.len());
    for (n, token) in tokens.into_iter().enumerate() {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connection {n}"))?;
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::binary(frame(1, frame::Authenticate { token })))
            .await?;
        sink.send(Message::binary(frame(2, keys(n)))).await?;
        // Both replies before the next connection: each is ready when the
        // load starts.
        let mut replies = 0;
        while replies < 2 {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) => match Frame::decode(&b)?.body {
                    Body::AuthOk(_) | Body::Ok(_) => replies += 1,
                    Body::Error(e) => bail!("connection {n}: {e:?}"),
                    _ => {}
                },
                Some(Ok(_)) => {}
                other => bail!("connection {n} lost during setup: {other:?}"),
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if sink.send(Message::binary(bytes)).await.is_err() {
                    break;
                }
            }
        });
        let (latency, delivered, acks) = (Arc::clone(latency), Arc::clone(delivered), tx.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Binary(b) = msg else { continue };
                let Ok(Frame {
                    body: Body::Deliver(d),
                    ..
                }) = Frame::decode(&b)
                else {
                    continue;
                };
                let mut at = [0u8; 8];
                at.copy_from_slice(&d.message_id[..8]);
                let sent = epoch + Duration::from_nanos(u64::from_be_bytes(at));
                if let Ok(mut h) = latency.lock() {
                    record(
                        &mut h,
                        Instant::now().saturating_duration_since(sent).as_micros(),
                    );
                }
                delivered.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let _ = acks.send(frame(3, frame::Ack { seqs: vec![d.seq] }));
            }
        });
        outboxes.push(tx);
    }
    Ok(outboxes)
}

/// Dummy keys (the server relays; nothing is decrypted).
fn keys(n: usize) -> frame::PublishKeys {
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

/// Open loop: message `k` leaves at `start + k / rate` from connection
/// `k mod n` to the next device; its id carries the planned send time (ns
/// since `epoch`), so a late send counts its delay as latency.
async fn send_load(outboxes: &[Outbox], epoch: Instant, rate: f64, secs: f64) -> u64 {
    let n = outboxes.len();
    let total = (rate * secs).round() as u64;
    let start = Instant::now() + Duration::from_millis(200);
    for k in 0..total {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let from = (k as usize) % n;
        let since = at.saturating_duration_since(epoch).as_nanos() as u64;
        let mut message_id = [0u8; 16];
        message_id[..8].copy_from_slice(&since.to_be_bytes());
        message_id[8..].copy_from_slice(&k.to_be_bytes());
        let send = frame::Send {
            to: device((from + 1) % n),
            conversation: [7; 16],
            message_id,
            envelope: vec![0x5a; 256],
        };
        let _ = outboxes[from].send(frame(4 + k, send));
    }
    total
}
