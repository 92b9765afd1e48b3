//! One task per user: a reference client that connects, sends its part of
//! the plan at the planned times, receives, reconnects after faults, and
//! reports each event as a [`Record`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatify_client::{Client, ClientError, ConnectOptions, Event, Push};
use chatify_proto::frame::{self, Address};
use tokio::sync::mpsc;

use super::schedule::{Planned, Record, user_name};
use crate::plaintext;
use crate::scenario::Mode;

pub(crate) struct Ctx {
    pub(crate) mode: Mode,
    /// Each user's way to the server (with several nodes, a user may be
    /// pinned to one).
    pub(crate) options: Vec<ConnectOptions>,
    pub(crate) start: Instant,
    pub(crate) deadline: Instant,
    pub(crate) intended: Arc<HashMap<(usize, u64), Duration>>,
    pub(crate) records: mpsc::UnboundedSender<Record>,
}

async fn reconnect(ctx: &Ctx, user: usize, home: &Path) -> Option<Client> {
    let options = ctx.options.get(user).or(ctx.options.first())?;
    let mut backoff = Duration::from_millis(20);
    while Instant::now() < ctx.deadline {
        let Ok(file) = super::unlocked_home(home) else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        let t = Instant::now();
        match Client::resume_with(file, Some(options)).await {
            Ok(c) => {
                let _ = ctx.records.send(Record::ConnectAuth(t.elapsed()));
                let _ = ctx.records.send(Record::Reconnected);
                return Some(c);
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    None
}

fn retryable(e: &ClientError) -> bool {
    matches!(e, ClientError::Disconnected | ClientError::Connect { .. })
}

/// Sends one planned message, reconnecting and retrying (same message id)
/// while the connection is down.
async fn send(ctx: &Ctx, home: &Path, client: &mut Option<Client>, p: &Planned) {
    let peer = user_name(p.recipient);
    loop {
        let Some(c) = client.as_mut() else {
            *client = reconnect(ctx, p.sender, home).await;
            if client.is_none() {
                let _ = ctx
                    .records
                    .send(Record::SendFailed("could not reconnect".into()));
                return;
            }
            continue;
        };
        let result = match ctx.mode {
            Mode::E2ee | Mode::LeakyServerLogMutant | Mode::CredentialsKeptMutant => {
                let new_session = c
                    .state()
                    .sessions
                    .get(&Address {
                        user: peer.clone(),
                        device: 1,
                    })
                    .is_none_or(Vec::is_empty);
                c.send_with_id(&peer, &p.plaintext.bytes, p.message_id)
                    .await
                    .map(|_| {
                        let t = c.timings();
                        Record::Sent {
                            encrypt: t.encrypt,
                            setup: if new_session { t.setup } else { None },
                        }
                    })
            }
            // Identity transform / leaky client: the plaintext goes where the
            // envelope belongs.
            Mode::PlaintextBaseline | Mode::LeakyClientMutant => c
                .connection()
                .request(frame::Send {
                    to: Address {
                        user: peer.clone(),
                        device: 1,
                    },
                    conversation: chatify_client::conversation_id(&user_name(p.sender), &peer),
                    message_id: p.message_id,
                    envelope: p.plaintext.bytes.clone(),
                })
                .await
                .map(|_| Record::Sent {
                    encrypt: None,
                    setup: None,
                }),
        };
        match result {
            Ok(record) => {
                let _ = ctx.records.send(record);
                return;
            }
            Err(e) if retryable(&e) && Instant::now() < ctx.deadline => {
                *client = None;
            }
            Err(e) => {
                let _ = ctx.records.send(Record::SendFailed(e.to_string()));
                return;
            }
        }
    }
}

/// Most pushes handled as one group commit.
const MAX_BATCH: usize = 256;

/// What handling the waiting pushes amounted to.
struct Received {
    /// Planned messages delivered.
    messages: usize,
    /// The connection is gone.
    gone: bool,
}

/// Records a delivered plaintext; returns whether it was a planned message.
fn delivered(ctx: &Ctx, me: usize, bytes: &[u8], decrypt: Option<Duration>, now: Instant) -> bool {
    match plaintext::parse(bytes).and_then(|(s, n)| ctx.intended.get(&(s, n)).map(|at| (s, n, *at)))
    {
        Some((sender, n, at)) => {
            let _ = ctx.records.send(Record::Delivered {
                recipient: me,
                sender,
                n,
                latency: now.saturating_duration_since(ctx.start + at),
                decrypt,
                bytes: bytes.len(),
                at: now,
            });
            true
        }
        None => {
            let _ = ctx.records.send(Record::Unknown);
            false
        }
    }
}

/// Handles `first` and every push already waiting behind it, as clients do
/// under load: one durable commit and one acknowledgement for the batch.
async fn receive(
    ctx: &Ctx,
    me: usize,
    client: &mut Client,
    first: Push,
    seen: &mut HashSet<[u8; 16]>,
) -> Result<Received, ClientError> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match client.try_next_push() {
            Some(p) => batch.push(p),
            None => break,
        }
    }
    let mut r = Received {
        messages: 0,
        gone: false,
    };
    match ctx.mode {
        Mode::E2ee | Mode::LeakyServerLogMutant | Mode::CredentialsKeptMutant => {
            let events = client.handle_batch(batch).await?;
            for event in events {
                match event {
                    Event::Message(m)
                        if delivered(ctx, me, &m.text, Some(m.decrypt_time), m.decrypted_at) =>
                    {
                        r.messages += 1;
                    }
                    Event::Message(_) => {}
                    Event::Duplicate { .. } => {
                        let _ = ctx.records.send(Record::Duplicate);
                    }
                    Event::Rejected { reason, .. } => {
                        let _ = ctx.records.send(Record::Rejected(reason));
                    }
                    Event::Disconnected(_) => r.gone = true,
                    _ => {}
                }
            }
        }
        // Identity transform: the envelope is the plaintext, available on
        // arrival (the counterpart of the E2EE client's decryption time);
        // acknowledged in one frame like the E2EE client's batch.
        Mode::PlaintextBaseline | Mode::LeakyClientMutant => {
            let now = Instant::now();
            let mut seqs = Vec::new();
            for push in batch {
                match push {
                    Push::Deliver(d) => {
                        seqs.push(d.seq);
                        if !seen.insert(d.message_id) {
                            let _ = ctx.records.send(Record::Duplicate);
                        } else if delivered(ctx, me, &d.envelope, None, now) {
                            r.messages += 1;
                        }
                    }
                    Push::Closed(_) => r.gone = true,
                    Push::PrekeysLow(_) => {}
                }
            }
            if !seqs.is_empty() && !r.gone {
                client.connection().request(frame::Ack { seqs }).await?;
            }
        }
    }
    Ok(r)
}

pub(crate) async fn user_task(
    ctx: Arc<Ctx>,
    me: usize,
    home: PathBuf,
    mut client: Option<Client>,
    sends: Vec<Planned>,
    expected: usize,
    disconnects: Vec<(Duration, Duration, bool)>,
) {
    let mut next = 0usize;
    let mut received = 0usize;
    let mut seen = HashSet::new();
    let mut faults: VecDeque<(Duration, Duration, bool)> = disconnects.into();
    loop {
        if next >= sends.len() && received >= expected {
            break;
        }
        if Instant::now() >= ctx.deadline {
            break;
        }
        let send_at = sends.get(next).map(|p| ctx.start + p.at);
        let fault_at = faults.front().map(|(at, _, _)| ctx.start + *at);
        let Some(c) = client.as_mut() else {
            client = reconnect(&ctx, me, &home).await;
            if client.is_none() {
                break;
            }
            continue;
        };
        tokio::select! {
            biased;
            push = c.next_push() => match push {
                Some(push) => match receive(&ctx, me, c, push, &mut seen).await {
                    Ok(r) => {
                        received += r.messages;
                        if r.gone {
                            client = None;
                        }
                    }
                    Err(_) => client = None,
                },
                None => client = None,
            },
            _ = sleep_until(fault_at), if fault_at.is_some() => {
                if let Some((_, down, crash)) = faults.pop_front() {
                    if let Some(c) = client.take() {
                        if crash {
                            // Everything since the last save is lost with
                            // the process; the socket just drops.
                            drop(c);
                        } else {
                            c.close().await;
                        }
                    }
                    tokio::time::sleep(down).await;
                }
            },
            _ = sleep_until(send_at), if send_at.is_some() => {
                if let Some(p) = sends.get(next) {
                    send(&ctx, &home, &mut client, p).await;
                }
                next += 1;
            },
            _ = tokio::time::sleep_until(ctx.deadline.into()) => break,
        }
    }
    if let Some(c) = client {
        c.close().await;
    }
}

pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
