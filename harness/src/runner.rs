//! Running a scenario: users, open-loop workload, faults, taps, checks and
//! metrics. The server, and the figures of its process, come from
//! [`crate::topology`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatify_client::{Client, ClientError, ConnectOptions, Event, Push};
use chatify_proto::frame;
use chatify_proto::frame::Address;
use chatify_server::EnvelopeObserver;
use chatify_server::store::sqlite::Durability;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::logsink;
use crate::plaintext::{self, Detector, Plaintext};
use crate::scenario::{Arrival, Mode, Scenario, ServerMode, Verdict};
use crate::taps::{self, TapResult, WireTap};
use crate::topology::{
    Topology, envelope_logger, open_sockets, proc_cpu_secs, proc_peak_rss_kib, wait_for_sockets,
};

/// A planned message.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) sender: usize,
    pub(crate) recipient: usize,
    pub(crate) n: u64,
    pub(crate) at: Duration,
    pub(crate) plaintext: Plaintext,
    pub(crate) message_id: [u8; 16],
}

pub(crate) fn schedule(s: &Scenario) -> Vec<Planned> {
    let w = &s.workload;
    let partners = s.conversations.graph.partners(s.users.count);
    let senders: Vec<usize> = (0..s.users.count)
        .filter(|u| !partners[*u].is_empty())
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(w.seed);
    let mut per_sender = vec![0u64; s.users.count];
    let mut t = 0f64;
    let mut plan = Vec::with_capacity(w.messages as usize);
    for k in 0..w.messages {
        let sender = senders[(k as usize) % senders.len()];
        let n = per_sender[sender];
        per_sender[sender] += 1;
        let mine = &partners[sender];
        let recipient = mine[(n as usize) % mine.len()];
        let [min, max] = w.size;
        let size = min + (rng.next_u64() as usize) % (max - min + 1);
        let mut message_id = [0u8; 16];
        rng.fill_bytes(&mut message_id);
        plan.push(Planned {
            sender,
            recipient,
            n,
            at: Duration::from_secs_f64(t),
            plaintext: plaintext::make(sender, n, size, &mut rng),
            message_id,
        });
        t += match w.arrival {
            Arrival::Constant => 1.0 / w.rate,
            Arrival::Poisson => {
                let u = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                -u.ln() / w.rate
            }
        };
    }
    plan
}

/// What a user task reports.
#[derive(Debug)]
pub(crate) enum Record {
    Delivered {
        recipient: usize,
        sender: usize,
        n: u64,
        latency: Duration,
        decrypt: Option<Duration>,
        bytes: usize,
        at: Instant,
    },
    Duplicate,
    Rejected(String),
    Unknown,
    Sent {
        encrypt: Option<Duration>,
        setup: Option<Duration>,
    },
    SendFailed(String),
    ConnectAuth(Duration),
    Reconnected,
}

pub(crate) fn user_name(i: usize) -> String {
    format!("u{i}")
}

struct Ctx {
    mode: Mode,
    options: ConnectOptions,
    start: Instant,
    deadline: Instant,
    intended: Arc<HashMap<(usize, u64), Duration>>,
    records: mpsc::UnboundedSender<Record>,
}

async fn reconnect(ctx: &Ctx, home: &Path) -> Option<Client> {
    let mut backoff = Duration::from_millis(20);
    while Instant::now() < ctx.deadline {
        let Ok(file) = crate::unlocked_home(home) else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        let t = Instant::now();
        match Client::resume_with(file, Some(&ctx.options)).await {
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
            *client = reconnect(ctx, home).await;
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

async fn user_task(
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
            client = reconnect(&ctx, &home).await;
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

/// What reached whom: the bookkeeping behind the delivery checks.
pub(crate) struct Ledger {
    /// Planned recipient of each (sender, n).
    recipient_of: HashMap<(usize, u64), usize>,
    /// Times each (sender, n) reached an application.
    count: HashMap<(usize, u64), u32>,
    /// Last n seen per (recipient, sender).
    last_n: HashMap<(usize, usize), u64>,
    misdelivered: u64,
    out_of_order: u64,
    /// Deliveries whose plaintext names no planned message.
    pub(crate) unknown: u64,
}

impl Ledger {
    pub(crate) fn new(plan: impl IntoIterator<Item = (usize, u64, usize)>) -> Self {
        Ledger {
            recipient_of: plan.into_iter().map(|(s, n, r)| ((s, n), r)).collect(),
            count: HashMap::new(),
            last_n: HashMap::new(),
            misdelivered: 0,
            out_of_order: 0,
            unknown: 0,
        }
    }

    /// Message `n` of `sender` reached `recipient`'s application.
    pub(crate) fn delivered(&mut self, recipient: usize, sender: usize, n: u64) {
        *self.count.entry((sender, n)).or_default() += 1;
        if self.recipient_of.get(&(sender, n)) != Some(&recipient) {
            self.misdelivered += 1;
        }
        if self
            .last_n
            .insert((recipient, sender), n)
            .is_some_and(|prev| prev >= n)
        {
            self.out_of_order += 1;
        }
    }

    /// Every planned message reached its recipient once, and nothing else arrived.
    pub(crate) fn exactly_once(&self) -> (Verdict, String) {
        let lost = self
            .recipient_of
            .keys()
            .filter(|k| !self.count.contains_key(k))
            .count();
        let twice = self.count.values().filter(|c| **c > 1).count();
        let delivered: u32 = self.count.values().sum();
        let ok = lost == 0 && twice == 0 && self.misdelivered == 0 && self.unknown == 0;
        (
            if ok { Verdict::Pass } else { Verdict::Fail },
            format!(
                "{} planned, {delivered} delivered; {lost} lost, {twice} shown twice, {} misdelivered, {} unknown",
                self.recipient_of.len(),
                self.misdelivered,
                self.unknown
            ),
        )
    }

    /// Each sender's messages reached each recipient in order.
    pub(crate) fn in_order(&self) -> (Verdict, String) {
        (
            if self.out_of_order == 0 {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            format!(
                "{} out-of-order deliveries per (sender, recipient)",
                self.out_of_order
            ),
        )
    }
}

/// Percentiles of one histogram, in its unit.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Every measurement of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Metrics {
    pub(crate) offered_rate: f64,
    pub(crate) planned: u64,
    pub(crate) delivered: u64,
    pub(crate) duplicates_dropped: u64,
    pub(crate) rejected: u64,
    pub(crate) send_failures: u64,
    pub(crate) reconnects: u64,
    /// Server restarts performed during the workload, and how many were kills.
    pub(crate) server_restarts: u64,
    pub(crate) server_kills: u64,
    /// Delivered messages per second, first intended send to last delivery.
    pub(crate) throughput_msgs: f64,
    /// Delivered plaintext bytes per second.
    pub(crate) throughput_bytes: f64,
    pub(crate) wall_secs: f64,
    /// End to end, intended send time to decrypted at the recipient (µs).
    pub(crate) latency_us: Percentiles,
    /// The same distribution as (quantile, µs) points, for CDF plots.
    pub(crate) latency_cdf: Vec<(f64, u64)>,
    /// Client encryption per message (ns).
    pub(crate) encrypt_ns: Percentiles,
    /// Client decryption per message (ns).
    pub(crate) decrypt_ns: Percentiles,
    /// Session setup: bundle fetch, verification, X3DH (µs).
    pub(crate) session_setup_us: Percentiles,
    /// Connect and authenticate (µs).
    pub(crate) connect_auth_us: Percentiles,
    /// Server process CPU seconds during the workload (child servers).
    pub(crate) server_cpu_secs: Option<f64>,
    /// Server CPU per delivered message (µs, child servers).
    pub(crate) server_cpu_us_per_msg: Option<f64>,
    /// Server peak resident memory (KiB, child servers).
    pub(crate) server_peak_rss_kib: Option<u64>,
}

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) verdict: Verdict,
    pub(crate) expected: Verdict,
    pub(crate) evidence: String,
}

impl Check {
    /// Whether the verdict is what the scenario expects (a skipped check
    /// matches any expectation of passing).
    pub(crate) fn as_expected(&self) -> bool {
        self.verdict == self.expected
            || (self.verdict == Verdict::Skipped && self.expected == Verdict::Pass)
    }
}

/// The result of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Outcome {
    pub(crate) scenario: String,
    pub(crate) mode: Mode,
    pub(crate) metrics: Metrics,
    pub(crate) checks: Vec<Check>,
    pub(crate) taps: BTreeMap<&'static str, TapResult>,
}

impl Outcome {
    pub(crate) fn as_expected(&self) -> bool {
        self.checks.iter().all(Check::as_expected)
    }
}

/// Largest value recorded (one hour in ns); larger values are clamped.
const HIST_MAX: u64 = 3_600_000_000_000;

#[allow(clippy::expect_used)]
pub(crate) fn hist() -> Histogram<u64> {
    // Constant bounds (1 ≤ low, high ≥ 2·low, 3 significant figures) are
    // valid, so construction cannot fail.
    Histogram::new_with_bounds(1, HIST_MAX, 3).expect("valid histogram bounds")
}

/// Quantiles for CDF plots: dense at the tail.
const CDF_QUANTILES: &[f64] = &[
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999,
    0.9995, 0.9999, 1.0,
];

fn cdf(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_QUANTILES
        .iter()
        .map(|q| (*q, h.value_at_quantile(*q)))
        .collect()
}

pub(crate) fn record(h: &mut Histogram<u64>, v: u128) {
    let v = u64::try_from(v).unwrap_or(u64::MAX).clamp(1, HIST_MAX);
    let _ = h.record(v);
}

/// Turns the records of a run into metrics and the delivery checks.
pub(crate) struct Tally {
    start: Instant,
    metrics: Metrics,
    latency: Histogram<u64>,
    encrypt: Histogram<u64>,
    decrypt: Histogram<u64>,
    setup: Histogram<u64>,
    connect_auth: Histogram<u64>,
    ledger: Ledger,
    rejected_reasons: Vec<String>,
    send_errors: Vec<String>,
    last_delivery: Instant,
    bytes: u64,
}

impl Tally {
    pub(crate) fn new(
        s: &Scenario,
        plan: &[Planned],
        start: Instant,
        connect_auth: Histogram<u64>,
    ) -> Self {
        Tally {
            start,
            metrics: Metrics {
                offered_rate: s.workload.rate,
                planned: plan.len() as u64,
                ..Metrics::default()
            },
            latency: hist(),
            encrypt: hist(),
            decrypt: hist(),
            setup: hist(),
            connect_auth,
            ledger: Ledger::new(plan.iter().map(|p| (p.sender, p.n, p.recipient))),
            rejected_reasons: Vec::new(),
            send_errors: Vec::new(),
            last_delivery: start,
            bytes: 0,
        }
    }

    pub(crate) fn add(&mut self, r: Record, progress: &Progress) {
        let m = &mut self.metrics;
        match r {
            Record::Delivered {
                recipient,
                sender,
                n,
                latency,
                decrypt,
                bytes,
                at,
            } => {
                record(&mut self.latency, latency.as_micros());
                if let Some(d) = decrypt {
                    record(&mut self.decrypt, d.as_nanos());
                }
                self.ledger.delivered(recipient, sender, n);
                self.bytes += bytes as u64;
                self.last_delivery = self.last_delivery.max(at);
                m.delivered += 1;
                progress.bar.inc(1);
            }
            Record::Duplicate => m.duplicates_dropped += 1,
            Record::Rejected(reason) => {
                m.rejected += 1;
                if self.rejected_reasons.len() < 5 {
                    self.rejected_reasons.push(reason);
                }
            }
            Record::Unknown => self.ledger.unknown += 1,
            Record::Sent { encrypt, setup } => {
                if let Some(e) = encrypt {
                    record(&mut self.encrypt, e.as_nanos());
                }
                if let Some(st) = setup {
                    record(&mut self.setup, st.as_micros());
                }
            }
            Record::SendFailed(e) => {
                m.send_failures += 1;
                if self.send_errors.len() < 5 {
                    self.send_errors.push(e);
                }
            }
            Record::ConnectAuth(d) => record(&mut self.connect_auth, d.as_micros()),
            Record::Reconnected => m.reconnects += 1,
        }
    }

    /// The metrics, and the two delivery checks. `cpu_before`/`cpu_after`
    /// are the server process's CPU seconds around the workload.
    pub(crate) fn finish(
        self,
        s: &Scenario,
        cpu_before: Option<f64>,
        cpu_after: Option<f64>,
    ) -> (Metrics, Vec<Check>) {
        let mut metrics = self.metrics;
        let wall = self
            .last_delivery
            .saturating_duration_since(self.start)
            .as_secs_f64()
            .max(1e-9);
        metrics.wall_secs = wall;
        metrics.throughput_msgs = metrics.delivered as f64 / wall;
        metrics.throughput_bytes = self.bytes as f64 / wall;
        metrics.latency_us = Percentiles::of(&self.latency);
        metrics.latency_cdf = cdf(&self.latency);
        metrics.encrypt_ns = Percentiles::of(&self.encrypt);
        metrics.decrypt_ns = Percentiles::of(&self.decrypt);
        metrics.session_setup_us = Percentiles::of(&self.setup);
        metrics.connect_auth_us = Percentiles::of(&self.connect_auth);
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            metrics.server_cpu_secs = Some(b - a);
            if metrics.delivered > 0 {
                metrics.server_cpu_us_per_msg = Some((b - a) * 1e6 / metrics.delivered as f64);
            }
        }
        let (once, once_evidence) = self.ledger.exactly_once();
        let (order, order_evidence) = self.ledger.in_order();
        let checks = vec![
            Check {
                name: "delivery.exactly-once",
                verdict: once,
                expected: s.expected("delivery.exactly-once"),
                evidence: format!(
                    "{once_evidence}; {} redeliveries dropped, {} rejected{}{}",
                    metrics.duplicates_dropped,
                    metrics.rejected,
                    if self.rejected_reasons.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", self.rejected_reasons.join("; "))
                    },
                    if self.send_errors.is_empty() {
                        String::new()
                    } else {
                        format!("; send errors: {}", self.send_errors.join("; "))
                    },
                ),
            },
            Check {
                name: "delivery.order",
                verdict: order,
                expected: s.expected("delivery.order"),
                evidence: order_evidence,
            },
        ];
        (metrics, checks)
    }
}

/// How the caller wants progress shown.
pub(crate) struct Progress {
    pub(crate) bar: indicatif::ProgressBar,
}

impl Progress {
    pub(crate) fn new(len: u64, label: &str, show: bool) -> Self {
        let bar = if show {
            indicatif::ProgressBar::new(len)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix:>20} [{elapsed_precise}] {bar:30} {pos}/{len} delivered {msg}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_owned());
        Progress { bar }
    }
}

/// Runs a scenario once (no sweep) with its output under `out`.
pub(crate) async fn run(s: &Scenario, out: &Path, show_progress: bool) -> Result<Outcome, String> {
    let data_dir = out.join("data");
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let log = out.join("server.log");
    let _ = std::fs::remove_file(&log);
    let mode = s.workload.mode;
    let plan = schedule(s);

    // Mutants of the server's logging, through its test hook:
    // - with the leaky client, the server logs each envelope verbatim (which
    //   is then the plaintext), so that every tap has something to catch;
    // - the server-log mutant logs the plaintext of each planned message as
    //   it accepts an (honestly encrypted) envelope: a server that leaks
    //   through its logs and nowhere else.
    let observer = match mode {
        Mode::LeakyClientMutant => Some(envelope_logger()),
        Mode::LeakyServerLogMutant => {
            let queue: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::new(Mutex::new(
                plan.iter().map(|p| p.plaintext.bytes.clone()).collect(),
            ));
            Some(EnvelopeObserver(Arc::new(move |_envelope: &[u8]| {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                if let Some(p) = next {
                    tracing::info!(target: "chatify_server::mutant", leaked = %String::from_utf8_lossy(&p), "MUTANT: logging plaintext");
                }
            })))
        }
        Mode::E2ee | Mode::PlaintextBaseline | Mode::CredentialsKeptMutant => None,
    };
    if mode == Mode::LeakyServerLogMutant && s.topology.server == ServerMode::Child {
        return Err("the leaky-server-log mutant needs topology.server = \"in-process\"".into());
    }
    if mode == Mode::CredentialsKeptMutant && s.topology.server != ServerMode::Child {
        return Err("the credentials-kept mutant needs topology.server = \"child\"".into());
    }
    let mut topo = Topology {
        mode: s.topology.server,
        log_level: if s.taps.logs { "trace" } else { "warn" },
        db: data_dir.join("chatify.db"),
        data_dir: data_dir.clone(),
        log: log.clone(),
        durability: if s.topology.durability == "full" {
            Durability::Full
        } else {
            Durability::Normal
        },
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        handle: None,
        observer,
        keep_credentials: mode == Mode::CredentialsKeptMutant,
    };
    let capture_log = s.topology.server == ServerMode::InProcess && s.taps.logs;
    if capture_log {
        logsink::capture(Some(&log))?;
    }
    topo.start().await?;
    // The server's sockets before any client connects: its listener and its
    // runtime's own (signal handling).
    let idle_sockets = topo.pid().and_then(open_sockets);
    let tap = WireTap::start(topo.addr, s.taps.wire)
        .await
        .map_err(|e| e.to_string())?;
    let options = ConnectOptions::new(format!("ws://{}", tap.addr));

    // Accounts and devices (not timed as workload).
    let homes: Vec<PathBuf> = (0..s.users.count)
        .map(|i| out.join("clients").join(user_name(i)))
        .collect();
    let _ = std::fs::remove_dir_all(out.join("clients"));
    let mut connect_auth = hist();
    let mut clients = Vec::with_capacity(s.users.count);
    // Every password and token, for the credential tap.
    let mut credentials: Vec<(&str, Vec<u8>)> = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        let name = user_name(i);
        let password = format!("{name}-harness-password");
        Client::register(&options, &name, &password)
            .await
            .map_err(|e| format!("register {name}: {e}"))?;
        let c = Client::login(
            &options,
            home,
            &crate::home_passphrase(),
            &name,
            &password,
            1,
        )
        .await
        .map_err(|e| format!("login {name}: {e}"))?;
        credentials.push(("password", password.into_bytes()));
        if let Some(token) = &c.state().token {
            credentials.push(("session token", token.to_vec()));
        }
        c.close().await;
        let file = crate::unlocked_home(home).map_err(|e| format!("unlock {name}: {e}"))?;
        let t = Instant::now();
        let c = Client::resume_with(file, Some(&options))
            .await
            .map_err(|e| format!("resume {name}: {e}"))?;
        record(&mut connect_auth, t.elapsed().as_micros());
        clients.push(Some(c));
    }

    // A faulty network applies to the workload, not to account setup: the
    // clients reconnect through it (retrying, as a reset may come at once).
    if let Some(net) = &s.faults.network {
        tap.set_network(Some(net.clone()));
        for (c, home) in clients.iter_mut().zip(&homes) {
            if let Some(old) = c.take() {
                old.close().await;
            }
            let mut last = String::new();
            for attempt in 0..50u32 {
                match Client::resume(home, &crate::home_passphrase(), Some(&options)).await {
                    Ok(fresh) => {
                        *c = Some(fresh);
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10) + 1)))
                    .await;
            }
            if c.is_none() {
                return Err(format!("resume through the faulty network: {last}"));
            }
        }
    }

    let detector = Detector::new(plan.iter().map(|p| &p.plaintext));
    let intended: Arc<HashMap<(usize, u64), Duration>> =
        Arc::new(plan.iter().map(|p| ((p.sender, p.n), p.at)).collect());
    let last_at = plan.last().map(|p| p.at).unwrap_or_default();
    let downtime: f64 = s
        .faults
        .disconnects
        .iter()
        .map(|d| d.down_secs)
        .sum::<f64>()
        + 5.0 * s.faults.server_restarts.len() as f64;
    let start = Instant::now() + Duration::from_millis(200);
    let deadline = start + last_at + Duration::from_secs_f64(s.workload.grace_secs + downtime);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        mode,
        options: options.clone(),
        start,
        deadline,
        intended,
        records: tx,
    });
    let cpu_before = topo.pid().and_then(proc_cpu_secs);

    let mut tasks = tokio::task::JoinSet::new();
    for (i, home) in homes.iter().enumerate() {
        let sends: Vec<Planned> = plan.iter().filter(|p| p.sender == i).cloned().collect();
        let expected = plan.iter().filter(|p| p.recipient == i).count();
        let disconnects = s
            .faults
            .disconnects
            .iter()
            .filter(|d| d.user == i)
            .map(|d| {
                (
                    Duration::from_secs_f64(d.at_secs),
                    Duration::from_secs_f64(d.down_secs),
                    d.crash,
                )
            })
            .collect();
        tasks.spawn(user_task(
            Arc::clone(&ctx),
            i,
            home.clone(),
            clients[i].take(),
            sends,
            expected,
            disconnects,
        ));
    }
    drop(ctx);

    // Server restarts, on their own clock.
    let restarts: Vec<(Duration, bool)> = s
        .faults
        .server_restarts
        .iter()
        .map(|r| (Duration::from_secs_f64(r.at_secs), r.kill))
        .collect();
    let progress = Progress::new(plan.len() as u64, &s.name, show_progress);
    let mut tally = Tally::new(s, &plan, start, connect_auth);
    let mut restart_queue: VecDeque<(Duration, bool)> = restarts.into();
    let (mut restarts_done, mut kills_done) = (0u64, 0u64);

    loop {
        let restart_at = restart_queue.front().map(|(at, _)| start + *at);
        tokio::select! {
            r = rx.recv() => match r {
                None => break,
                Some(r) => tally.add(r, &progress),
            },
            _ = sleep_until(restart_at), if restart_at.is_some() => {
                if let Some((_, kill)) = restart_queue.pop_front() {
                    restarts_done += 1;
                    kills_done += u64::from(kill);
                    progress.bar.set_message(if kill { "server killed; restarting" } else { "server restarting" });
                    topo.stop(kill).await;
                    topo.start().await?;
                    tap.retarget(topo.addr);
                    progress.bar.set_message("");
                }
            },
        }
    }
    while tasks.join_next().await.is_some() {}
    progress.bar.finish_and_clear();
    let cpu_after = topo.pid().and_then(proc_cpu_secs);
    let (mut metrics, mut checks) = tally.finish(s, cpu_before, cpu_after);
    metrics.server_restarts = restarts_done;
    metrics.server_kills = kills_done;
    if restarts_done > 0 {
        // CPU times of different processes do not subtract.
        metrics.server_cpu_secs = None;
        metrics.server_cpu_us_per_msg = None;
    }
    metrics.server_peak_rss_kib = topo.pid().and_then(proc_peak_rss_kib);

    // Taps: memory while the server process lives; then stop it and read
    // the files it left.
    let mut tap_results = BTreeMap::new();
    let secrets = Detector::secrets(credentials.iter().map(|(l, c)| (*l, c.as_slice())));
    // The users have closed their connections; once the server has closed
    // its side, no connection buffer of its own may hold a credential (a
    // connection's WebSocket read buffer keeps its last frames while open).
    if let (Some(pid), Some(idle)) = (topo.pid(), idle_sockets) {
        wait_for_sockets(pid, idle, Duration::from_secs(5)).await;
    }
    let (memory, credential_memory) = match (s.taps.memory, topo.pid()) {
        (true, Some(pid)) => match taps::scan_memory(pid, &[&detector, &secrets]) {
            Ok(mut r) => {
                let creds = r.pop().ok_or("no credential result");
                let plain = r.pop().ok_or("no plaintext result");
                (
                    Some(plain.map_err(String::from)),
                    Some(creds.map_err(String::from)),
                )
            }
            Err(e) => (Some(Err(e.clone())), Some(Err(e))),
        },
        _ => (None, None),
    };
    topo.stop(false).await;
    if capture_log {
        logsink::capture(None)?;
    }

    let mut check = |name: &'static str, verdict: Verdict, evidence: String| {
        checks.push(Check {
            name,
            verdict,
            expected: s.expected(name),
            evidence,
        });
    };
    let mut tap_check =
        |name: &'static str, key: &'static str, result: Option<Result<TapResult, String>>| {
            let (verdict, evidence) = match &result {
                None => (Verdict::Skipped, "tap not run".to_owned()),
                Some(Err(e)) => (Verdict::Fail, format!("tap failed: {e}")),
                Some(Ok(r)) if r.bytes == 0 => (
                    Verdict::Fail,
                    "tap saw no bytes: it cannot have checked anything".to_owned(),
                ),
                Some(Ok(r)) if r.matches == 0 => (
                    Verdict::Pass,
                    format!("{} bytes searched, no canary or plaintext window", r.bytes),
                ),
                Some(Ok(r)) => (
                    Verdict::Fail,
                    format!(
                        "{} matches in {} bytes, e.g. {}",
                        r.matches,
                        r.bytes,
                        r.hits
                            .iter()
                            .take(3)
                            .map(|h| format!("{} at {} ({})", h.place, h.offset, h.form))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            };
            if let Some(Ok(r)) = result {
                tap_results.insert(key, r);
            }
            check(name, verdict, evidence);
        };
    tap_check(
        "leak.wire",
        "wire",
        s.taps.wire.then(|| Ok(tap.scan(&detector))),
    );
    tap_check(
        "leak.store",
        "store",
        s.taps
            .store
            .then(|| Ok(taps::scan_dir(&topo.data_dir, &detector))),
    );
    tap_check(
        "leak.logs",
        "logs",
        s.taps.logs.then(|| Ok(taps::scan_file(&log, &detector))),
    );
    tap_check("leak.memory", "memory", memory);
    tap_check("leak.credentials", "credentials", credential_memory);

    Ok(Outcome {
        scenario: s.name.clone(),
        mode,
        metrics,
        checks,
        taps: tap_results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two senders, two messages each, to user 2.
    fn ledger() -> Ledger {
        Ledger::new([(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)])
    }

    #[test]
    fn a_clean_run_passes_both_checks() {
        let mut l = ledger();
        for (s, n) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            l.delivered(2, s, n);
        }
        assert_eq!(l.exactly_once().0, Verdict::Pass, "{}", l.exactly_once().1);
        assert_eq!(l.in_order().0, Verdict::Pass);
    }

    /// Each way a delivery can go wrong fails the check meant to see it.
    #[test]
    fn lost_duplicated_misdelivered_unknown_and_reordered_are_caught() {
        let mut lost = ledger();
        for (s, n) in [(0, 0), (0, 1), (1, 0)] {
            lost.delivered(2, s, n);
        }
        assert_eq!(lost.exactly_once().0, Verdict::Fail);
        assert!(lost.exactly_once().1.contains("1 lost"));

        let mut twice = ledger();
        for (s, n) in [(0, 0), (0, 1), (1, 0), (1, 1), (1, 1)] {
            twice.delivered(2, s, n);
        }
        assert_eq!(twice.exactly_once().0, Verdict::Fail);
        assert!(twice.exactly_once().1.contains("1 shown twice"));

        let mut elsewhere = ledger();
        for (s, n) in [(0, 0), (0, 1), (1, 0)] {
            elsewhere.delivered(2, s, n);
        }
        elsewhere.delivered(3, 1, 1);
        assert_eq!(elsewhere.exactly_once().0, Verdict::Fail);
        assert!(elsewhere.exactly_once().1.contains("1 misdelivered"));

        let mut unknown = ledger();
        for (s, n) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            unknown.delivered(2, s, n);
        }
        unknown.unknown += 1;
        assert_eq!(unknown.exactly_once().0, Verdict::Fail);

        let mut reordered = ledger();
        for (s, n) in [(0, 1), (0, 0), (1, 0), (1, 1)] {
            reordered.delivered(2, s, n);
        }
        assert_eq!(reordered.exactly_once().0, Verdict::Pass);
        assert_eq!(reordered.in_order().0, Verdict::Fail);
    }
}
