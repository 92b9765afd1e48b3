//! Several nodes: notices between them through NATS.
//!
//! ```text
//!   node A: Send ─▶ store (PostgreSQL, committed: seq, and prev = the device's envelope before)
//!                     └─▶ recipient here? push : publish Deliver(seq, prev, envelope)
//!                                                             │
//!   NATS  {prefix}.notice ◀───────────────────────────────────┘
//!     │
//!   node B: its connection has pushed prev? push it : read the mailbox on from its cursor
//! ```
//!
//! A notice carries the envelope (ciphertext, as PostgreSQL holds it) with
//! the sequence number of the envelope stored for the same device before it
//! ([`crate::store::Stored::prev`]), so the receiving node pushes it without
//! reading it back — unless its connection has not pushed that one yet (the
//! notices of two nodes can cross on the bus), and then it reads the
//! mailbox, which holds both, on from its cursor. An envelope larger than
//! [`NOTICE_ENVELOPE_MAX`] goes as a notice that only says "look at the
//! mailbox".
//!
//! A notice lost (NATS restarted, a partition) delays a delivery but loses
//! nothing: the envelope is durable in the shared store before its notice
//! leaves, every authenticated connection also reads its mailbox on a timer
//! ([`crate::Config::mail_poll`]), and every connection of a node reads it
//! when the node's link to NATS comes back. A connection pushes each
//! sequence number once (never one at or below the last it pushed), so
//! nothing reaches the application twice on one connection; across
//! reconnects the client drops what it has seen.
//!
//! A send never waits for NATS: notices go through an outbox bounded in
//! count and in envelope bytes (past 4 MiB of envelopes, a notice leaves
//! without its envelope and the recipient's node reads the mailbox), and
//! one that finds it full (NATS away for long under load) is dropped and
//! left to the timer.
//!
//! Notices go to one subject that every node reads: each envelope crosses
//! the bus once per node (a subject per device would save that at the cost
//! of a subscription per connection). What crosses is what the server
//! already holds (addresses, counts, ciphertext); the harness's NATS tap
//! checks that no plaintext does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use chatify_proto::frame::{Address, Body, Deliver, Frame};
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
    /// An envelope stored for `to`, after the one numbered `prev`.
    Deliver {
        to: Address,
        prev: u64,
        deliver: Arc<Deliver>,
    },
}

/// Envelopes up to this size travel in their notice; a larger one is read
/// from the store by the recipient's node.
pub(crate) const NOTICE_ENVELOPE_MAX: usize = 16 * 1024;

impl Notice {
    /// `kind device [node at_ms | remaining | prev] user`, space-separated
    /// (a user name has no spaces), last so that it may be anything else;
    /// for `deliver`, a newline and the envelope as a `Deliver` frame.
    pub(crate) fn encode(self) -> Vec<u8> {
        if let Notice::Deliver { to, prev, deliver } = self {
            let mut bytes = format!("deliver {} {prev} {}\n", to.device, to.user).into_bytes();
            bytes.extend(
                Frame {
                    id: 0,
                    body: Arc::unwrap_or_clone(deliver).into(),
                }
                .encode(),
            );
            return bytes;
        }
        match &self {
            Notice::Mail(d) => format!("mail {} {}", d.device, d.user),
            Notice::PrekeysLow(d, n) => format!("low {} {n} {}", d.device, d.user),
            Notice::Online {
                device,
                node,
                at_ms,
            } => format!("online {} {node} {at_ms} {}", device.device, device.user),
            Notice::Removed(d) => format!("removed {} {}", d.device, d.user),
            Notice::Deliver { .. } => unreachable!("encoded above"),
        }
        .into_bytes()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Notice> {
        let (head, frame) = match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => (bytes.get(..i)?, Some(bytes.get(i + 1..)?)),
            None => (bytes, None),
        };
        let text = std::str::from_utf8(head).ok()?;
        let (kind, rest) = text.split_once(' ')?;
        let fields = match kind {
            "mail" | "removed" => 1,
            "low" | "deliver" => 2,
            "online" => 3,
            _ => return None,
        };
        // A frame follows the head of a `deliver`, and only of one.
        if (kind == "deliver") != frame.is_some() {
            return None;
        }
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
            "deliver" => match Frame::decode(frame?).ok()? {
                Frame {
                    id: 0,
                    body: Body::Deliver(deliver),
                } => Notice::Deliver {
                    to: device,
                    prev: numbers[1],
                    deliver: Arc::new(deliver),
                },
                _ => return None,
            },
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

/// Envelope bytes the outbox may hold: past them, a stored envelope's
/// notice leaves without it (a `mail` notice, and the recipient's node
/// reads the mailbox). NATS away under load then holds this much of the
/// node's memory in envelopes, not [`OUTBOX`] × [`NOTICE_ENVELOPE_MAX`].
const OUTBOX_ENVELOPE_BYTES: usize = 4 << 20;

/// Notices on their way to NATS, bounded in count and in envelope bytes.
#[derive(Debug)]
struct Outbox {
    tx: tokio::sync::mpsc::Sender<Notice>,
    /// Bytes of the envelopes it holds (counted down as they are taken).
    bytes: Arc<AtomicUsize>,
    /// Notices dropped because it was full.
    dropped: AtomicU64,
}

impl Outbox {
    fn new(count: usize) -> (Outbox, tokio::sync::mpsc::Receiver<Notice>) {
        let (tx, rx) = tokio::sync::mpsc::channel(count);
        let outbox = Outbox {
            tx,
            bytes: Arc::default(),
            dropped: AtomicU64::new(0),
        };
        (outbox, rx)
    }

    /// Queues `notice` without waiting: without its envelope past
    /// [`OUTBOX_ENVELOPE_BYTES`], dropped when the outbox is full.
    fn push(&self, notice: Notice) {
        let notice = match notice {
            Notice::Deliver { to, prev, deliver } => {
                let len = deliver.envelope.len();
                if self.bytes.fetch_add(len, Ordering::AcqRel) + len > OUTBOX_ENVELOPE_BYTES {
                    self.bytes.fetch_sub(len, Ordering::AcqRel);
                    Notice::Mail(to)
                } else {
                    Notice::Deliver { to, prev, deliver }
                }
            }
            other => other,
        };
        if let Err(e) = self.tx.try_send(notice) {
            taken(&self.bytes, &e.into_inner());
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "NATS outbox full; notices dropped");
            }
        }
    }
}

/// Counts a notice's envelope out of the outbox's bytes.
fn taken(bytes: &AtomicUsize, notice: &Notice) {
    if let Notice::Deliver { deliver, .. } = notice {
        bytes.fetch_sub(deliver.envelope.len(), Ordering::AcqRel);
    }
}

/// This node's link to the others.
#[derive(Debug)]
pub(crate) struct Cluster {
    outbox: Outbox,
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
            tracing::warn!(url = %without_credentials(url), "NATS not reachable yet; serving, and connecting in the background");
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
        let (outbox, mut queued) = Outbox::new(OUTBOX);
        let bytes = Arc::clone(&outbox.bytes);
        tokio::spawn(async move {
            while let Some(notice) = queued.recv().await {
                taken(&bytes, &notice);
                if let Err(e) = client
                    .publish(subject.clone(), notice.encode().into())
                    .await
                {
                    tracing::warn!(error = %e, "publishing a notice failed");
                }
            }
        });
        Ok(Cluster { outbox, node })
    }

    /// Tells the other nodes, without waiting (best effort: a lost or
    /// dropped notice is caught up by the mailbox timer).
    pub(crate) fn publish(&self, notice: Notice) {
        self.outbox.push(notice);
    }
}

/// `url` with any user name, password or token in it replaced by `***`
/// (`nats://user:secret@host:4222` → `nats://***@host:4222`), for logs
/// and error messages.
pub(crate) fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest.get(..authority_end).and_then(|a| a.rfind('@')) {
        Some(at) => format!("{scheme}://***{}", rest.get(at..).unwrap_or_default()),
        None => url.to_owned(),
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
        Notice::Deliver { to, prev, deliver } => {
            hub.deliver_after(&to, deliver, prev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notice carrying `envelope` to bob's device 1, after seq 41.
    fn deliver_notice(envelope: Vec<u8>) -> Notice {
        Notice::Deliver {
            to: Address {
                user: "bob".into(),
                device: 1,
            },
            prev: 41,
            deliver: Arc::new(Deliver {
                seq: 42,
                from: Address {
                    user: "alice".into(),
                    device: 1,
                },
                conversation: [1; 16],
                message_id: [2; 16],
                sent_at_ms: 3,
                envelope,
            }),
        }
    }

    /// With nothing taking notices out (NATS away), the outbox holds at
    /// most its budget of envelope bytes: the rest leave as `mail`
    /// notices, and its count bounds them; taking envelopes out makes room.
    #[test]
    fn an_outbox_nobody_empties_holds_a_bounded_number_of_envelope_bytes() {
        let (outbox, mut rx) = Outbox::new(OUTBOX);
        for _ in 0..2 * OUTBOX {
            outbox.push(deliver_notice(vec![0; NOTICE_ENVELOPE_MAX]));
        }
        let mut held = 0;
        let mut mail = 0;
        while let Ok(n) = rx.try_recv() {
            // Taken out as the task that publishes takes them.
            taken(&outbox.bytes, &n);
            match n {
                Notice::Deliver { deliver, .. } => held += deliver.envelope.len(),
                Notice::Mail(_) => mail += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(held, OUTBOX_ENVELOPE_BYTES, "envelope bytes queued");
        assert_eq!(mail, OUTBOX - OUTBOX_ENVELOPE_BYTES / NOTICE_ENVELOPE_MAX);
        assert_eq!(outbox.dropped.load(Ordering::Relaxed), OUTBOX as u64);
        // Emptied, it carries envelopes again (an outbox whose bytes were
        // never counted down would send `mail` from now on).
        assert_eq!(outbox.bytes.load(Ordering::Acquire), 0);
        outbox.push(deliver_notice(vec![0; 10]));
        assert!(matches!(rx.try_recv(), Ok(Notice::Deliver { .. })));
    }

    #[test]
    fn credentials_never_leave_a_url_in_a_message() {
        for (url, shown) in [
            (
                "nats://user:secret@10.0.0.1:4222",
                "nats://***@10.0.0.1:4222",
            ),
            ("nats://s3cr3t-token@host", "nats://***@host"),
            ("nats://u:p@w@host:1/x?y", "nats://***@host:1/x?y"),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("tls://host/a@b", "tls://host/a@b"),
            ("host:4222", "host:4222"),
        ] {
            assert_eq!(without_credentials(url), shown);
        }
    }

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
            deliver_notice(b"ciphertext\nwith a newline".to_vec()),
        ] {
            assert_eq!(Notice::decode(&n.clone().encode()), Some(n));
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
            b"mail 7 bob\n",
            b"deliver 7 41 bob",
            b"deliver 7 41 bob\n",
            b"deliver 7 41 bob\n\x84\x01",
            b"\xff\xfe",
        ] {
            assert_eq!(Notice::decode(junk), None, "{junk:?}");
        }
    }
}
