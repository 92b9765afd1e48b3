//! Several nodes: notices between them through NATS.
//!
//! ```text
//!   node A: Send ─▶ store (PostgreSQL, committed) ─▶ recipient here? push : publish Mail
//!                                                                              │
//!   NATS  {prefix}.notice ◀────────────────────────────────────────────────────┘
//!     │
//!   node B: Mail(device) ─▶ its connection reads the mailbox on from its cursor ─▶ Deliver
//! ```
//!
//! A notice only says "look at the mailbox"; the envelope itself is read
//! from the shared store, so a notice lost (NATS restarted, a partition)
//! delays a delivery but loses nothing: every authenticated connection also
//! reads its mailbox on a timer ([`crate::Config::mail_poll`]), and every
//! connection of a node reads it when the node's link to NATS comes back.
//! A connection pushes each sequence number once (it reads on from the last
//! one it pushed), so nothing reaches the application twice on one
//! connection; across reconnects the client drops what it has seen.
//!
//! A send never waits for NATS: notices go through a bounded outbox, and
//! one that finds it full (NATS away for long under load) is dropped and
//! left to the timer.
//!
//! Notices carry addresses and counts, never an envelope: they are what the
//! server already knows (who is sent to), and the harness's NATS tap checks
//! that no plaintext crosses the bus.

use std::sync::Arc;

use chatify_proto::frame::Address;
use futures_util::StreamExt;

use crate::hub::{Hub, Push};

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// New envelopes wait in the device's mailbox.
    Mail(Address),
    /// The device's one-time prekey pool is low.
    PrekeysLow(Address, u32),
    /// The device authenticated on `node` at `at_ms`: an older connection
    /// of it on another node closes.
    Online {
        device: Address,
        node: u64,
        at_ms: u64,
    },
    /// The device was removed: its connection, wherever it is, closes.
    Removed(Address),
}

impl Notice {
    /// `kind device [node at_ms | remaining] user`, space-separated (a user
    /// name has no spaces), last so that it may be anything else.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Notice::Mail(d) => format!("mail {} {}", d.device, d.user),
            Notice::PrekeysLow(d, n) => format!("low {} {n} {}", d.device, d.user),
            Notice::Online {
                device,
                node,
                at_ms,
            } => format!("online {} {node} {at_ms} {}", device.device, device.user),
            Notice::Removed(d) => format!("removed {} {}", d.device, d.user),
        }
        .into_bytes()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Notice> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (kind, rest) = text.split_once(' ')?;
        let fields = match kind {
            "mail" | "removed" => 1,
            "low" => 2,
            "online" => 3,
            _ => return None,
        };
        let mut it = rest.splitn(fields + 1, ' ');
        let mut numbers = [0u64; 3];
        for n in numbers.iter_mut().take(fields) {
            *n = it.next()?.parse().ok()?;
        }
        let user = it.next().filter(|u| !u.is_empty() && !u.contains(' '))?;
        let device = Address {
            user: user.to_owned(),
            device: u32::try_from(numbers[0]).ok()?,
        };
        Some(match kind {
            "mail" => Notice::Mail(device),
            "removed" => Notice::Removed(device),
            "low" => Notice::PrekeysLow(device, u32::try_from(numbers[1]).ok()?),
            _ => Notice::Online {
                device,
                node: numbers[1],
                at_ms: numbers[2],
            },
        })
    }
}

/// Notices waiting for NATS; beyond this many (NATS away for long under
/// load) new ones are dropped, not waited for: the mailbox timer covers a
/// dropped notice, and a send must never wait for the bus.
const OUTBOX: usize = 4096;

/// This node's link to the others.
#[derive(Debug)]
pub(crate) struct Cluster {
    outbox: tokio::sync::mpsc::Sender<Notice>,
    /// Notices dropped because the outbox was full.
    dropped: std::sync::atomic::AtomicU64,
    /// This node's random id (tells its own `Online` notices apart).
    pub(crate) node: u64,
}

impl Cluster {
    /// Connects to NATS at `url` (in the background: a node starts while
    /// NATS is down, and catches up when it comes) and starts the task that
    /// applies other nodes' notices to `hub`.
    pub(crate) async fn start(
        url: &str,
        prefix: &str,
        hub: Arc<Hub>,
    ) -> Result<Cluster, async_nats::ConnectError> {
        let node = rand::random::<u64>();
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("chatify-server {node:016x}"))
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            })
            .connect(url)
            .await?;
        let subject = format!("{prefix}.notice");
        let mut notices = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Normally the subscription is in place before the node serves
        // anyone; with NATS away the node starts anyway and its timers
        // cover until the link comes.
        if tokio::time::timeout(std::time::Duration::from_secs(2), client.flush())
            .await
            .is_err()
        {
            tracing::warn!(%url, "NATS not reachable yet; serving, and connecting in the background");
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = notices.next() => match msg {
                        Some(msg) => match Notice::decode(&msg.payload) {
                            Some(notice) => apply(&hub, node, notice),
                            None => tracing::warn!(subject = %msg.subject, "unreadable notice"),
                        },
                        None => break,
                    },
                    Some(event) = events.recv() => {
                        tracing::info!(%event, "NATS");
                        if matches!(event, async_nats::Event::Connected) {
                            // Notices may have been lost while away: every
                            // connection here reads its mailbox again.
                            hub.notify_all(&Push::Mail);
                        }
                    }
                }
            }
        });
        let (outbox, mut queued) = tokio::sync::mpsc::channel::<Notice>(OUTBOX);
        tokio::spawn(async move {
            while let Some(notice) = queued.recv().await {
                if let Err(e) = client
                    .publish(subject.clone(), notice.encode().into())
                    .await
                {
                    tracing::warn!(error = %e, "publishing a notice failed");
                }
            }
        });
        Ok(Cluster {
            outbox,
            dropped: std::sync::atomic::AtomicU64::new(0),
            node,
        })
    }

    /// Tells the other nodes, without waiting (best effort: a lost or
    /// dropped notice is caught up by the mailbox timer).
    pub(crate) fn publish(&self, notice: Notice) {
        if self.outbox.try_send(notice).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "NATS outbox full; notices dropped");
            }
        }
    }
}

/// Applies another node's notice to this node's connections.
fn apply(hub: &Hub, me: u64, notice: Notice) {
    match notice {
        Notice::Mail(d) => {
            hub.notify(&d, Push::Mail);
        }
        Notice::PrekeysLow(d, n) => {
            hub.notify(&d, Push::PrekeysLow(n));
        }
        Notice::Online {
            device,
            node,
            at_ms,
        } => {
            if node != me {
                hub.replace_older(&device, at_ms);
            }
        }
        Notice::Removed(d) => {
            hub.notify(&d, Push::Replaced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_junk_is_refused() {
        let d = Address {
            user: "bob.b-1_x".into(),
            device: 7,
        };
        for n in [
            Notice::Mail(d.clone()),
            Notice::PrekeysLow(d.clone(), 3),
            Notice::Online {
                device: d.clone(),
                node: u64::MAX,
                at_ms: 12,
            },
            Notice::Removed(d.clone()),
        ] {
            assert_eq!(Notice::decode(&n.encode()), Some(n));
        }
        for junk in [
            &b""[..],
            b"mail",
            b"mail 7",
            b"mail x bob",
            b"mail 7 ",
            b"mail 99999999999 bob",
            b"low 7 bob",
            b"online 7 1 bob",
            b"other 7 bob",
            b"mail 7 bob carol",
            b"\xff\xfe",
        ] {
            assert_eq!(Notice::decode(junk), None, "{junk:?}");
        }
    }
}
