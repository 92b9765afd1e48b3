//! Abusers beside the users (scenarios with an `[abuse]` table): a flood of
//! logins with a valid password, WebSockets that never authenticate, and a
//! stream of undecodable frames, all from the users' own address and
//! speaking the protocol directly, for the whole workload.
//!
//! ```text
//!  start ─▶ register the flood account
//!        ─▶ login_flood tasks: connect, Login, classify the answer, repeat
//!        ─▶ idle_sockets: open, never send; at the end, count those closed
//!        ─▶ one bad-frame connection: garbage at the rate, reopen on close
//!  until ─▶ AbuseTally
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use chatify_proto::{Body, ErrorCode, Frame, frame};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::scenario::Abuse;

/// What the abusers saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct AbuseTally {
    pub(crate) logins_ok: u64,
    /// Answered "server busy" (the bounded password pool).
    pub(crate) logins_busy: u64,
    /// Refused otherwise, or the connection failed.
    pub(crate) logins_other: u64,
    pub(crate) idle_sockets: usize,
    /// Idle sockets the server had closed by the end.
    pub(crate) idle_closed: usize,
    pub(crate) bad_frames: u64,
    /// Times the server closed the bad-frame connection.
    pub(crate) bad_closes: u64,
}

impl AbuseTally {
    /// One line for a check's evidence.
    pub(crate) fn summary(&self) -> String {
        format!(
            "logins {} ok, {} busy, {} other; {} of {} idle sockets closed by the server; \
             {} bad frames, {} closes",
            self.logins_ok,
            self.logins_busy,
            self.logins_other,
            self.idle_closed,
            self.idle_sockets,
            self.bad_frames,
            self.bad_closes
        )
    }
}

const FLOOD_USER: &str = "flood";
const FLOOD_PASSWORD: &str = "flood-harness-password";

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(addr: SocketAddr) -> Result<Ws> {
    Ok(tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await?
        .0)
}

/// Sends a request and waits for its answer (at most 30 s).
pub(crate) async fn ask(ws: &mut Ws, id: u64, body: Body) -> Result<Body> {
    ws.send(Message::binary(Frame { id, body }.encode()))
        .await?;
    let answer = async {
        while let Some(msg) = ws.next().await {
            if let Message::Binary(b) = msg? {
                let f = Frame::decode(&b)?;
                if f.id == id {
                    return Ok(f.body);
                }
            }
        }
        bail!("closed")
    };
    tokio::time::timeout(Duration::from_secs(30), answer).await?
}

/// Starts the abusers; they stop at `until` and report.
pub(crate) async fn start(
    addr: SocketAddr,
    abuse: Abuse,
    until: Instant,
) -> Result<tokio::task::JoinHandle<AbuseTally>> {
    let mut ws = connect(addr).await?;
    let register = frame::Register {
        username: FLOOD_USER.into(),
        password: FLOOD_PASSWORD.into(),
    };
    if !matches!(ask(&mut ws, 1, register.into()).await?, Body::Ok(_)) {
        bail!("the flood account could not be registered");
    }
    drop(ws);
    let mut idle = Vec::with_capacity(abuse.idle_sockets);
    for _ in 0..abuse.idle_sockets {
        idle.push(connect(addr).await?);
    }
    Ok(tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        for _ in 0..abuse.login_flood {
            tasks.spawn(login_flood(
                addr,
                until,
                Duration::from_secs_f64(abuse.login_retry_ms.max(0.0) / 1000.0),
            ));
        }
        if abuse.bad_frames_per_sec > 0.0 {
            tasks.spawn(bad_frames(addr, abuse.bad_frames_per_sec, until));
        }
        tokio::time::sleep_until(until.into()).await;
        let mut tally = AbuseTally {
            idle_sockets: idle.len(),
            ..AbuseTally::default()
        };
        for mut ws in idle {
            // Closed: the server's close frame (or the end of the stream)
            // is waiting.
            let closed = matches!(
                ws.next().now_or_never(),
                Some(Some(Ok(Message::Close(_)) | Err(_)) | None)
            );
            tally.idle_closed += usize::from(closed);
        }
        while let Some(Ok(t)) = tasks.join_next().await {
            tally.logins_ok += t.logins_ok;
            tally.logins_busy += t.logins_busy;
            tally.logins_other += t.logins_other;
            tally.bad_frames += t.bad_frames;
            tally.bad_closes += t.bad_closes;
        }
        tally
    }))
}

/// Logs in again and again, each time on a fresh connection.
async fn login_flood(addr: SocketAddr, until: Instant, retry: Duration) -> AbuseTally {
    let mut t = AbuseTally::default();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let login = frame::Login {
            username: FLOOD_USER.into(),
            password: FLOOD_PASSWORD.into(),
            device: 1,
            second_factor: None,
        };
        let answer = match connect(addr).await {
            Ok(mut ws) => ask(&mut ws, n, login.into()).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(Body::LoginOk(_)) => t.logins_ok += 1,
            Ok(Body::Error(e)) if e.code == ErrorCode::RateLimited => {
                t.logins_busy += 1;
                tokio::time::sleep(retry).await;
            }
            _ => {
                t.logins_other += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    t
}

/// Undecodable frames at `rate`, on a connection reopened when closed.
async fn bad_frames(addr: SocketAddr, rate: f64, until: Instant) -> AbuseTally {
    let mut t = AbuseTally::default();
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut ws: Option<Ws> = None;
    let mut next = Instant::now();
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        if ws.is_none() {
            ws = connect(addr).await.ok();
        }
        let Some(conn) = ws.as_mut() else { continue };
        t.bad_frames += 1;
        let sent = conn.send(Message::binary(vec![0xff, 0x00, 0x13])).await;
        // Read what is waiting (the error replies, or the close).
        let mut closed = sent.is_err();
        while let Some(msg) = conn.next().now_or_never() {
            match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    closed = true;
                    break;
                }
                Some(Ok(_)) => {}
            }
        }
        if closed {
            t.bad_closes += 1;
            ws = None;
        }
    }
    t
}
