//! Group-chat runs (scenarios with a `[groups]` table): groups of each size
//! made by real clients through the real server (docs/PROTOCOL.md §16), every
//! member sending, latency measured per recipient, and the leak taps over
//! what the server read and stored.
//!
//! ```text
//!  per size N:  users 0..N ─ create_group ─▶ every member told (GroupChanged)
//!   warm-up:    every member sends once, all at once (its key goes to the
//!               N−1 other devices over pairwise sessions: the setup cost)
//!   measured:   `messages` more, senders in turn, at `rate` a second, open
//!               loop; latency = send started ─▶ decrypted at each recipient
//!  after:       wire (client → server bytes) and store files searched for
//!               every message's canary and plaintext windows
//! ```
//!
//! Each client runs in a task of its own, which sends what it is told and
//! handles what the server pushes meanwhile.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use chatify_client::{Client, ClientError, ConnectOptions, Event, KdfCost, Passphrase};
use chatify_core::group::GroupId;
use chatify_proto::frame;
use chatify_server::store::SqliteStore;
use chatify_server::store::sqlite::Durability;
use chatify_server::{Config, Server};
use rand::SeedableRng as _;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{Check, Percentiles, hist};
use crate::plaintext::{self, Detector, Plaintext};
use crate::scenario::{Groups, Scenario};
use crate::taps::{self, TapResult, WireTap};
use crate::topology::CHEAP_ARGON2;

/// What one group size measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct SizeTally {
    pub(crate) members: usize,
    /// Messages sent (warm-up and measured).
    pub(crate) sent: u64,
    /// Copies each recipient should have read, and did (exactly once).
    pub(crate) expected: u64,
    pub(crate) received: u64,
    /// Send started to decrypted at each recipient, measured phase (µs).
    pub(crate) latency_us: Percentiles,
    /// A measured send, started to the server's SendOk (µs): the fan-out
    /// as the sender sees it.
    pub(crate) send_us: Percentiles,
    /// A member's first send, which gives its key to every other member
    /// device over pairwise sessions first (µs).
    pub(crate) first_send_us: Percentiles,
    /// Bytes of one group message the sender uploads, and what pairwise
    /// messages to the same devices would upload.
    pub(crate) upload_bytes: u64,
    pub(crate) pairwise_bytes: u64,
}

/// The outcome of a group-chat run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct GroupsOutcome {
    pub(crate) sizes: Vec<SizeTally>,
    pub(crate) wire: TapResult,
    pub(crate) store: TapResult,
    /// Over the whole run: redeliveries dropped, deliveries refused, and
    /// messages reported missing.
    pub(crate) duplicates: u64,
    pub(crate) rejected: u64,
    pub(crate) missing: u64,
    /// Copies of plaintexts a leaky mutant sent in the clear, each of which
    /// its member must refuse (0 in an honest run).
    pub(crate) leaked_copies: u64,
    pub(crate) checks: Vec<Check>,
}

impl GroupsOutcome {
    pub(crate) fn as_expected(&self) -> bool {
        self.checks.iter().all(Check::as_expected)
    }
}

/// What a member task is told to do.
enum Order {
    Create(Vec<String>, oneshot::Sender<Result<GroupId, ClientError>>),
    Send(GroupId, Vec<u8>, oneshot::Sender<Result<Sent, ClientError>>),
    /// Sends `bytes` as a group message without encrypting it (the leaky
    /// mutant's client).
    Leak(GroupId, Vec<frame::Address>, Vec<u8>, oneshot::Sender<()>),
}

/// A send's times: started, and stored (SendOk).
struct Sent {
    started: Instant,
    stored: Instant,
    devices: u32,
}

/// What a member task reports.
enum Seen {
    Message {
        to: usize,
        text: Vec<u8>,
        at: Instant,
    },
    Joined,
    Duplicate,
    Rejected,
    Missing(u64),
}

async fn member(
    mut client: Client,
    me: usize,
    mut orders: mpsc::Receiver<Order>,
    seen: mpsc::UnboundedSender<Seen>,
) {
    loop {
        tokio::select! {
            order = orders.recv() => match order {
                None => break,
                Some(Order::Create(others, reply)) => {
                    let names: Vec<&str> = others.iter().map(String::as_str).collect();
                    let _ = reply.send(client.create_group(&names).await);
                }
                Some(Order::Send(group, text, reply)) => {
                    let started = Instant::now();
                    let done = client.send_group(&group, &text).await.map(|r| Sent {
                        started,
                        stored: Instant::now(),
                        devices: r.devices,
                    });
                    let _ = reply.send(done);
                }
                Some(Order::Leak(group, to, bytes, reply)) => {
                    let leak = frame::SendGroup { to, conversation: group, message_id: [0xEE; 16], envelope: bytes };
                    let _ = client.connection().request(leak).await;
                    let _ = reply.send(());
                }
            },
            push = client.next_push() => {
                let Some(push) = push else { break };
                // What else has arrived goes in the same batch: one commit
                // (log, state, acknowledgement) for all of it.
                let mut pushes = vec![push];
                while let Some(more) = client.try_next_push() {
                    pushes.push(more);
                }
                let Ok(events) = client.handle_batch(pushes).await else { break };
                for e in events {
                    let s = match e {
                        Event::Message(m) => Seen::Message { to: me, text: m.text, at: m.decrypted_at },
                        Event::GroupChanged { changes, .. } if !changes.is_empty() => Seen::Joined,
                        Event::Duplicate { .. } => Seen::Duplicate,
                        Event::Rejected { .. } => Seen::Rejected,
                        Event::Missing { count, .. } => Seen::Missing(count),
                        _ => continue,
                    };
                    let _ = seen.send(s);
                }
            }
        }
    }
    client.close().await;
}

fn user_name(i: usize) -> String {
    format!("member{i}")
}

/// Registers and logs in `count` users, each in a task of its own.
async fn start_members(
    options: &ConnectOptions,
    home: &Path,
    count: usize,
    seen: &mpsc::UnboundedSender<Seen>,
) -> Result<Vec<mpsc::Sender<Order>>> {
    let passphrase = Passphrase::with_cost("group run", KdfCost::MINIMUM)?;
    let mut orders = Vec::with_capacity(count);
    for i in 0..count {
        let name = user_name(i);
        let password = format!("{name}-password");
        Client::register(options, &name, &password).await?;
        let client = Client::login(options, &home.join(&name), &passphrase, &name, &password, 1)
            .await
            .with_context(|| format!("logging in {name}"))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(member(client, i, rx, seen.clone()));
        orders.push(tx);
    }
    Ok(orders)
}

/// Everything members reported, gathered as it comes.
#[derive(Default)]
struct Inbox {
    /// (recipient, sender, n) ─▶ when decrypted, and how many times.
    messages: HashMap<(usize, usize, u64), (Instant, u64)>,
    joined: usize,
    duplicates: u64,
    rejected: u64,
    missing: u64,
}

fn gather(inbox: &Arc<Mutex<Inbox>>, mut seen: mpsc::UnboundedReceiver<Seen>) {
    let inbox = Arc::clone(inbox);
    tokio::spawn(async move {
        while let Some(s) = seen.recv().await {
            let mut b = inbox.lock().unwrap_or_else(|p| p.into_inner());
            match s {
                Seen::Message { to, text, at } => {
                    if let Some((sender, n)) = plaintext::parse(&text) {
                        b.messages.entry((to, sender, n)).or_insert((at, 0)).1 += 1;
                    }
                }
                Seen::Joined => b.joined += 1,
                Seen::Duplicate => b.duplicates += 1,
                Seen::Rejected => b.rejected += 1,
                Seen::Missing(c) => b.missing += c,
            }
        }
    });
}

fn lock(inbox: &Arc<Mutex<Inbox>>) -> std::sync::MutexGuard<'_, Inbox> {
    inbox.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until `done` holds of the inbox, or `within` passes.
async fn wait_for(
    inbox: &Arc<Mutex<Inbox>>,
    within: Duration,
    done: impl Fn(&Inbox) -> bool,
) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if done(&lock(inbox)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done(&lock(inbox))
}

async fn send(
    orders: &[mpsc::Sender<Order>],
    sender: usize,
    group: GroupId,
    text: Vec<u8>,
) -> Result<Sent> {
    let (tx, rx) = oneshot::channel();
    let to = orders.get(sender).context("no such member")?;
    to.send(Order::Send(group, text, tx))
        .await
        .ok()
        .context("member task gone")?;
    Ok(rx.await.context("member task gone")??)
}

/// One group size: made, warmed up, measured.
async fn one_size(
    g: &Groups,
    n: usize,
    orders: &[mpsc::Sender<Order>],
    inbox: &Arc<Mutex<Inbox>>,
    plaintexts: &mut Vec<Plaintext>,
    rng: &mut rand::rngs::StdRng,
) -> Result<(SizeTally, GroupId)> {
    let joined_before = lock(inbox).joined;
    let (tx, rx) = oneshot::channel();
    let others: Vec<String> = (1..n).map(user_name).collect();
    orders[0]
        .send(Order::Create(others, tx))
        .await
        .ok()
        .context("member task gone")?;
    let group = rx.await.context("member task gone")??;
    if !wait_for(inbox, Duration::from_secs(60), |b| {
        b.joined >= joined_before + n - 1
    })
    .await
    {
        bail!("not every member of the group of {n} was told of it within 60 s");
    }
    let mut t = SizeTally {
        members: n,
        ..SizeTally::default()
    };
    let base = (n as u64) << 32;
    // Warm-up: everyone's first message at once.
    let mut first = hist();
    let firsts = (0..n).map(|s| {
        let p = plaintext::make(s, base + s as u64, g.message_bytes, rng);
        plaintexts.push(p.clone());
        send(orders, s, group, p.bytes)
    });
    for sent in futures_util::future::join_all(firsts).await {
        let sent = sent?;
        let _ = first.record(micros(sent.stored - sent.started));
    }
    t.first_send_us = Percentiles::of(&first);
    // The warm-up's copies read before the measured messages start.
    let warm = (n * (n - 1)) as u64;
    wait_for(inbox, Duration::from_secs(60), |b| {
        received_in(b, n, base) >= warm
    })
    .await;
    // Measured: senders in turn, open loop at the rate.
    let (mut latency, mut stored) = (hist(), hist());
    let mut started = HashMap::new();
    let mut pending = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / g.rate);
    let mut next = Instant::now();
    for k in 0..g.messages as u64 {
        let s = (k as usize) % n;
        let p = plaintext::make(s, base + n as u64 + k, g.message_bytes, rng);
        plaintexts.push(p.clone());
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        let orders = orders.to_vec();
        pending.push((
            s,
            base + n as u64 + k,
            tokio::spawn(async move { send(&orders, s, group, p.bytes).await }),
        ));
    }
    for (s, id, task) in pending {
        let sent = task.await??;
        t.upload_bytes = sent_bytes(g.message_bytes);
        t.pairwise_bytes = t.upload_bytes * u64::from(sent.devices);
        let _ = stored.record(micros(sent.stored - sent.started));
        started.insert((s, id), sent.started);
    }
    t.sent = (n + g.messages) as u64;
    t.expected = t.sent * (n as u64 - 1);
    let expected = t.expected;
    let want = |b: &Inbox| received_in(b, n, base) >= expected;
    wait_for(inbox, Duration::from_secs(30), want).await;
    let b = lock(inbox);
    t.received = received_in(&b, n, base);
    for ((_, s, id), (at, _)) in b
        .messages
        .iter()
        .filter(|((_, s, id), _)| *s < n && id >> 32 == n as u64)
    {
        if let Some(t0) = started.get(&(*s, *id)) {
            let _ = latency.record(micros(at.saturating_duration_since(*t0)));
        }
    }
    t.latency_us = Percentiles::of(&latency);
    t.send_us = Percentiles::of(&stored);
    Ok((t, group))
}

/// Copies of this size's messages read exactly once.
fn received_in(b: &Inbox, n: usize, base: u64) -> u64 {
    b.messages
        .iter()
        .filter(|((to, s, id), (_, count))| {
            *to < n && *s < n && id & !0xFFFF_FFFF == base && *count == 1
        })
        .count() as u64
}

/// Bytes of a group message for `len` bytes of text: padded content,
/// header, tag and signature (§16), as `SenderKey::encrypt` makes it.
fn sent_bytes(len: usize) -> u64 {
    let content = len + 64;
    (chatify_core::padding::padded_len(content) + 25 + 16 + 64) as u64
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// Runs a `[groups]` scenario.
pub(crate) async fn run(s: &Scenario, progress: bool) -> Result<GroupsOutcome> {
    let Some(g) = &s.groups else {
        bail!("not a group-chat scenario");
    };
    let dir = tempfile::tempdir()?;
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("chatify.db"), Durability::Full)
            .context("opening the run's store")?,
    );
    let config = Config {
        password_cost: CHEAP_ARGON2,
        ..Config::default()
    };
    let server = Server::start(config, store.clone()).await?;
    let tap = WireTap::start(server.local_addr(), true).await?;
    let options = ConnectOptions::new(format!("ws://{}", tap.addr));
    let largest = g.sizes.iter().copied().max().unwrap_or(0);
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    gather(&inbox, seen_rx);
    let orders = start_members(&options, &dir.path().join("homes"), largest, &seen_tx).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.workload.seed);
    let mut plaintexts = Vec::new();
    let mut sizes = Vec::new();
    let mut leaked_copies = 0;
    for &n in &g.sizes {
        if progress {
            eprintln!(
                "group of {n}: making it, then {} + {n} messages",
                g.messages
            );
        }
        let (t, group) = one_size(g, n, &orders, &inbox, &mut plaintexts, &mut rng).await?;
        if g.leak_plaintext {
            leaked_copies += leak(&orders, group, n, plaintexts.last().cloned()).await?;
            let refused = leaked_copies;
            wait_for(&inbox, Duration::from_secs(10), |b| b.rejected >= refused).await;
        }
        sizes.push(t);
    }
    let (duplicates, rejected, missing) = {
        let b = lock(&inbox);
        (b.duplicates, b.rejected, b.missing)
    };
    drop(orders);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let detector = Detector::new(&plaintexts);
    let wire = tap.scan(&detector);
    server.shutdown().await;
    store.checkpoint()?;
    drop(store);
    let store = taps::scan_dir(dir.path(), &detector);
    let mut outcome = GroupsOutcome {
        sizes,
        wire,
        store,
        duplicates,
        rejected,
        missing,
        leaked_copies,
        checks: Vec::new(),
    };
    outcome.checks = checks(s, g, &outcome);
    Ok(outcome)
}

/// The leaky mutant: member 0 sends the last message's plaintext to the
/// group as it is, unencrypted, to its `n − 1` other members. Returns the
/// copies sent, each of which its member must refuse.
async fn leak(
    orders: &[mpsc::Sender<Order>],
    group: GroupId,
    n: usize,
    p: Option<Plaintext>,
) -> Result<u64> {
    let p = p.context("nothing to leak")?;
    let to = (1..n)
        .map(|i| frame::Address {
            user: user_name(i),
            device: 1,
        })
        .collect();
    let (tx, rx) = oneshot::channel();
    let first = orders.first().context("no members")?;
    first
        .send(Order::Leak(group, to, p.bytes, tx))
        .await
        .ok()
        .context("member task gone")?;
    rx.await.ok();
    Ok(n as u64 - 1)
}

/// The run's checks.
pub(crate) fn checks(s: &Scenario, g: &Groups, o: &GroupsOutcome) -> Vec<Check> {
    let check = |name, ok, evidence| Check::judged(s, name, ok, evidence);
    let all = |f: &dyn Fn(&SizeTally) -> u64| o.sizes.iter().map(f).sum::<u64>();
    let (expected, received) = (all(&|t| t.expected), all(&|t| t.received));
    let (dups, missing, rejected) = (o.duplicates, o.missing, o.rejected);
    // A leaked plaintext is refused by every member who got it.
    let leak_rejections = o.leaked_copies;
    let worst = o.sizes.iter().map(|t| t.latency_us.p99).max().unwrap_or(0);
    let tap = |name: &'static str, r: &TapResult, what: &str| {
        check(
            name,
            r.bytes > 0 && r.matches == 0,
            format!(
                "{} bytes of {what} searched: {} match(es){}",
                r.bytes,
                r.matches,
                r.hits
                    .first()
                    .map(|h| format!(", first: {} at {} ({})", h.place, h.offset, h.form))
                    .unwrap_or_default()
            ),
        )
    };
    vec![
        check(
            "groups.every-member",
            expected > 0
                && received == expected
                && dups == 0
                && missing == 0
                && rejected == leak_rejections,
            format!(
                "{received} of {expected} copies read exactly once by their member; {dups} duplicates, {missing} missing, {rejected} rejected ({leak_rejections} of them the leaked plaintext)"
            ),
        ),
        check(
            "groups.latency",
            !o.sizes.is_empty()
                && o.sizes.iter().all(|t| t.latency_us.count > 0)
                && worst as f64 / 1000.0 <= g.max_p99_ms,
            format!(
                "p99 per recipient: {} (bound {} ms)",
                o.sizes
                    .iter()
                    .map(|t| format!(
                        "{:.1} ms with {} members",
                        t.latency_us.p99 as f64 / 1000.0,
                        t.members
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                g.max_p99_ms
            ),
        ),
        tap("leak.wire", &o.wire, "client-to-server wire"),
        tap("leak.store", &o.store, "the store's files"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Verdict;

    fn scenario() -> Scenario {
        let text = "name = \"t\"\ndescription = \"t\"\n[users]\ncount = 3\n[workload]\nmessages = 1\nrate = 1.0\n[groups]\nsizes = [3]\n";
        toml::from_str(text).expect("a scenario")
    }

    fn honest() -> GroupsOutcome {
        let tap = TapResult {
            bytes: 1000,
            matches: 0,
            hits: Vec::new(),
        };
        let mut latency = Percentiles {
            count: 10,
            p99: 5_000,
            ..Percentiles::default()
        };
        latency.p50 = 2_000;
        GroupsOutcome {
            sizes: vec![SizeTally {
                members: 3,
                sent: 5,
                expected: 10,
                received: 10,
                latency_us: latency,
                ..SizeTally::default()
            }],
            wire: tap.clone(),
            store: tap,
            duplicates: 0,
            rejected: 0,
            missing: 0,
            leaked_copies: 0,
            checks: Vec::new(),
        }
    }

    fn failed(o: &GroupsOutcome) -> Vec<&'static str> {
        let s = scenario();
        let g = s.groups.clone().expect("groups");
        checks(&s, &g, o)
            .into_iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn each_check_catches_its_mutant() {
        assert!(failed(&honest()).is_empty());
        type Mutant = (&'static str, fn(&mut GroupsOutcome));
        let mutants: [Mutant; 8] = [
            ("groups.every-member", |o| o.sizes[0].received -= 1),
            ("groups.every-member", |o| o.duplicates = 1),
            ("groups.every-member", |o| o.rejected = 1),
            ("groups.every-member", |o| o.leaked_copies = 2),
            ("groups.every-member", |o| o.missing = 1),
            ("groups.latency", |o| o.sizes[0].latency_us.p99 = 10_000_000),
            ("leak.wire", |o| o.wire.matches = 1),
            ("leak.store", |o| o.store.matches = 1),
        ];
        for (name, mutate) in mutants {
            let mut o = honest();
            mutate(&mut o);
            assert_eq!(failed(&o), vec![name]);
        }
    }
}
