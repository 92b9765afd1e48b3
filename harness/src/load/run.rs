//! Running a scenario once: the server, the accounts, the user tasks on
//! their open-loop plan, the faults on their own clock, then the taps.
//!
//! ```text
//!  topology_for ─▶ accounts ─▶ through_faults ─▶ spawn_users ─▶ drive (tally, restarts)
//!               ─▶ scan_process (memory) ─▶ stop ─▶ leak checks (wire, store, logs)
//! ```
//!
//! The server, and the figures of its process, come from
//! [`crate::topology`]; what the taps found is judged by
//! [`crate::metrics::leak_check`].

use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatify_client::{Client, ConnectOptions};
use chatify_server::EnvelopeObserver;
use chatify_server::store::sqlite::Durability;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::abuse::{self, AbuseTally};
use super::schedule::{Planned, Record, schedule, user_name};
use super::tally::{Progress, Tally};
use super::users::{Ctx, sleep_until, user_task};
use super::{home_passphrase, unlocked_home};
use crate::metrics::{Check, Metrics, Outcome, TapOutcome, hist, leak_check, record};
use crate::plaintext::Detector;
use crate::scenario::{Abuse, Mode, Placement, Scenario, ServerMode, StoreKind, Verdict};
use crate::taps::{self, WireTap};
use crate::topology::deployment::Deployment;
use crate::topology::{
    Topology, envelope_logger, logsink, open_sockets, proc_cpu_secs, proc_peak_rss_kib,
    wait_for_sockets,
};

/// Runs a scenario once (no sweep) with its output under `out`.
pub(crate) async fn run(s: &Scenario, out: &Path, show_progress: bool) -> Result<Outcome> {
    let data_dir = out.join("data");
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| data_dir.display().to_string())?;
    let log = out.join("server.log");
    let _ = std::fs::remove_file(&log);
    let mode = s.workload.mode;
    let plan = schedule(s);

    let node = topology_for(s, &data_dir, &log, observer_for(mode, &plan))?;
    let capture_log = s.topology.server == ServerMode::InProcess && s.taps.logs;
    if capture_log {
        logsink::capture(Some(&log))?;
    }
    let mut dep = deploy(s, node, out).await?;
    let idle_sockets = idle_sockets(&dep);
    let first = dep
        .nodes
        .first()
        .map(|n| n.addr)
        .context("no server node")?;
    let tap = WireTap::start(first, s.taps.wire).await?;
    tap.set_targets(dep.addrs());
    let per_user = ways_in(s, &tap, first, dep.nodes.len()).await?;

    // Accounts and devices (not timed as workload).
    let homes: Vec<PathBuf> = (0..s.users.count)
        .map(|i| out.join("clients").join(user_name(i)))
        .collect();
    let _ = std::fs::remove_dir_all(out.join("clients"));
    let mut accounts = accounts(&per_user, &homes).await?;
    if let Some(net) = &s.faults.network {
        tap.set_network(Some(net.clone()));
        through_faults(&mut accounts.clients, &homes, &per_user).await?;
    }

    let detector = Detector::new(plan.iter().map(|p| &p.plaintext));
    let (tx, rx) = mpsc::unbounded_channel();
    let start = Instant::now() + Duration::from_millis(200);
    let ctx = Ctx {
        mode,
        options: per_user,
        start,
        deadline: start + deadline_after_start(s, &plan),
        intended: Arc::new(plan.iter().map(|p| ((p.sender, p.n), p.at)).collect()),
        records: tx,
    };
    let abusers = match &s.abuse {
        Some(a) => {
            let until = start + plan.last().map(|p| p.at).unwrap_or_default();
            Some(abuse::start(first, a.clone(), until + Duration::from_secs(1)).await?)
        }
        None => None,
    };
    let cpu_before = cpu_secs(&dep);
    let tasks = spawn_users(s, &plan, ctx, &homes, accounts.clients);
    let progress = Progress::new(plan.len() as u64, &s.name, show_progress);
    let tally = Tally::new(s, &plan, start, accounts.connect_auth);
    let driven = drive(s, rx, tasks, tally, &progress, &mut dep, &tap, start).await;
    let driven = match driven {
        Ok(d) => d,
        Err(e) => {
            dep.stop(true).await;
            dep.drop_schema().await;
            return Err(e);
        }
    };
    let (metrics, mut checks) = measured(s, driven, start, cpu_before, &dep);
    if let (Some(a), Some(handle)) = (&s.abuse, abusers) {
        let tally = handle.await?;
        checks.extend(abuse_checks(s, a, &tally, &metrics));
    }

    // Taps: memory while the server process lives; then stop it and read
    // the files it left.
    let secrets = Detector::secrets(accounts.credentials.iter().map(|(l, c)| (*l, c.as_slice())));
    let (memory, credential_memory) =
        scan_processes(s, &dep, &idle_sockets, &detector, &secrets).await;
    dep.stop(false).await;
    if capture_log {
        logsink::capture(None)?;
    }
    let shared = shared_taps(s, &dep, &detector).await;
    dep.drop_schema().await;
    let found = [
        (
            "leak.wire",
            "wire",
            s.taps.wire.then(|| Ok(tap.scan(&detector))),
        ),
        ("leak.store", "store", shared.store),
        ("leak.logs", "logs", shared.logs),
        ("leak.store-log", "store-log", shared.store_log),
        ("leak.memory", "memory", memory),
        ("leak.credentials", "credentials", credential_memory),
        ("leak.bus", "bus", shared.bus),
    ];
    let tap_results = judge_taps(s, found, &mut checks);
    Ok(Outcome {
        scenario: s.name.clone(),
        mode,
        metrics,
        checks,
        taps: tap_results,
    })
}

/// Each tap's leak check; what the taps that ran found.
fn judge_taps(
    s: &Scenario,
    found: [(&'static str, &'static str, Option<TapOutcome>); 7],
    checks: &mut Vec<Check>,
) -> BTreeMap<&'static str, taps::TapResult> {
    let mut tap_results = BTreeMap::new();
    for (name, key, result) in found {
        // The taps of several nodes' places appear only where those exist.
        if result.is_none() && ["leak.store-log", "leak.bus"].contains(&name) {
            continue;
        }
        checks.push(leak_check(name, s.expected(name), result.as_ref()));
        if let Some(Ok(r)) = result {
            tap_results.insert(key, r);
        }
    }
    tap_results
}

/// The run's metrics and delivery checks, from the tally and the server
/// processes.
fn measured(
    s: &Scenario,
    driven: Driven,
    start: Instant,
    cpu_before: Option<f64>,
    dep: &Deployment,
) -> (Metrics, Vec<Check>) {
    let cpu_after = cpu_secs(dep);
    let windows = fault_windows(s, start);
    let catch_up = (!windows.is_empty()).then(|| driven.tally.catch_up(s, &windows));
    let (mut metrics, mut checks) = driven.tally.finish(s, cpu_before, cpu_after);
    if let Some((check, lag_ms)) = catch_up {
        checks.push(check);
        metrics.catch_up_ms = Some(lag_ms);
    }
    metrics.server_restarts = driven.restarts;
    metrics.server_kills = driven.kills;
    if driven.restarts > 0 {
        // CPU times of different processes do not subtract.
        metrics.server_cpu_secs = None;
        metrics.server_cpu_us_per_msg = None;
    }
    metrics.server_peak_rss_kib = dep.pids().into_iter().filter_map(proc_peak_rss_kib).max();
    (metrics, checks)
}

/// Each node's open sockets before any client connects (its listener,
/// its runtime's own), with room for its NATS connection and its
/// PostgreSQL pool.
fn idle_sockets(dep: &Deployment) -> Vec<Option<usize>> {
    dep.nodes
        .iter()
        .map(|n| {
            let links = if n.link.is_some() {
                1 + crate::topology::NODE_PG_POOL
            } else {
                0
            };
            n.pid().and_then(open_sockets).map(|k| k + links)
        })
        .collect()
}

/// The deployment a scenario asks for, started (its schema dropped if it
/// cannot start).
async fn deploy(s: &Scenario, node: Topology, out: &Path) -> Result<Deployment> {
    let mut dep = match s.topology.store {
        StoreKind::Sqlite => Deployment::single(node),
        StoreKind::Postgres => {
            // The leaky client's mutant server leaks through every new
            // place too: notices on NATS and PostgreSQL's statement log.
            let leaky = s.workload.mode == Mode::LeakyClientMutant;
            Deployment::on_postgres(node, s.topology.nodes, out, leaky, leaky).await?
        }
    };
    if let Err(e) = dep.start().await {
        dep.stop(true).await;
        dep.drop_schema().await;
        return Err(e);
    }
    Ok(dep)
}

/// How clients reach the servers: the relay (or the first node, with
/// `direct`), and each user's way in (its own node's entry when pinned).
async fn ways_in(
    s: &Scenario,
    tap: &WireTap,
    first: SocketAddr,
    nodes: usize,
) -> Result<Vec<ConnectOptions>> {
    let to = if s.topology.direct { first } else { tap.addr };
    let options = ConnectOptions::new(format!("ws://{to}"));
    let mut per_user = Vec::with_capacity(s.users.count);
    for i in 0..s.users.count {
        per_user.push(match s.topology.placement {
            Placement::Pinned if !s.topology.direct => {
                ConnectOptions::new(format!("ws://{}", tap.entry(i % nodes.max(1)).await?))
            }
            _ => options.clone(),
        });
    }
    Ok(per_user)
}

/// The taps of what the servers left once stopped.
struct SharedTaps {
    store: Option<TapOutcome>,
    logs: Option<TapOutcome>,
    store_log: Option<TapOutcome>,
    bus: Option<TapOutcome>,
}

/// The store (the data directory, or every PostgreSQL cell), every node's
/// log, PostgreSQL's log and everything NATS carried, searched.
async fn shared_taps(s: &Scenario, dep: &Deployment, detector: &Detector) -> SharedTaps {
    let store = if !s.taps.store {
        None
    } else if dep.postgres.is_some() {
        dep.tables().await.map(|cells| {
            cells.map(|cells| {
                taps::scan_parts(
                    cells.iter().map(|(t, c)| (t.as_str(), c.as_slice())),
                    detector,
                )
            })
        })
    } else {
        dep.nodes
            .first()
            .map(|n| Ok(taps::scan_dir(&n.data_dir, detector)))
    };
    let logs = s.taps.logs.then(|| {
        merge(
            dep.nodes
                .iter()
                .map(|n| Ok(taps::scan_file(&n.log, detector)))
                .collect(),
        )
    });
    let store_log = if s.taps.logs {
        dep.pg_log()
            .map(|log| log.map(|data| taps::scan_parts([("postgres-log", &data[..])], detector)))
    } else {
        None
    };
    let bus = dep.nats.as_ref().map(|n| {
        let heard = n.heard();
        Ok(taps::scan_parts([("nats", &heard[..])], detector))
    });
    SharedTaps {
        store,
        logs,
        store_log,
        bus,
    }
}

/// The users kept their latency through the abuse, and the server closed
/// every socket that never authenticated.
fn abuse_checks(s: &Scenario, a: &Abuse, tally: &AbuseTally, m: &Metrics) -> Vec<Check> {
    let verdict = |ok: bool| if ok { Verdict::Pass } else { Verdict::Fail };
    let p99_us = m.latency_us.p99;
    let mut checks = vec![Check {
        name: "abuse.users-p99",
        verdict: verdict(p99_us as f64 <= a.max_p99_ms * 1000.0),
        expected: s.expected("abuse.users-p99"),
        evidence: format!(
            "users' p99 {:.1} ms (at most {} ms) while: {}",
            p99_us as f64 / 1000.0,
            a.max_p99_ms,
            tally.summary()
        ),
    }];
    if a.idle_sockets > 0 {
        checks.push(Check {
            name: "abuse.idle-sockets-closed",
            verdict: verdict(tally.idle_closed == tally.idle_sockets),
            expected: s.expected("abuse.idle-sockets-closed"),
            evidence: format!(
                "{} of {} sockets that never authenticated closed by the server",
                tally.idle_closed, tally.idle_sockets
            ),
        });
    }
    if let Some(max) = a.max_server_rss_mib {
        let peak = m.server_peak_rss_kib.map(|k| k as f64 / 1024.0);
        checks.push(Check {
            name: "abuse.server-rss",
            verdict: verdict(peak.is_some_and(|p| p <= max)),
            expected: s.expected("abuse.server-rss"),
            evidence: match peak {
                Some(p) => format!(
                    "server peak RSS {p:.0} MiB (at most {max} MiB) while: {}",
                    tally.summary()
                ),
                None => "no peak RSS: the server is not a child process".into(),
            },
        });
    }
    checks
}

/// Mutants of the server's logging, through its test hook:
/// - with the leaky client, the server logs each envelope verbatim (which
///   is then the plaintext), so that every tap has something to catch;
/// - the server-log mutant logs the plaintext of each planned message as
///   it accepts an (honestly encrypted) envelope: a server that leaks
///   through its logs and nowhere else.
fn observer_for(mode: Mode, plan: &[Planned]) -> Option<EnvelopeObserver> {
    match mode {
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
    }
}

/// The server a scenario asks for (not started).
fn topology_for(
    s: &Scenario,
    data_dir: &Path,
    log: &Path,
    observer: Option<EnvelopeObserver>,
) -> Result<Topology> {
    let mode = s.workload.mode;
    if mode == Mode::LeakyServerLogMutant && s.topology.server == ServerMode::Child {
        bail!("the leaky-server-log mutant needs topology.server = \"in-process\"");
    }
    if mode == Mode::CredentialsKeptMutant && s.topology.server != ServerMode::Child {
        bail!("the credentials-kept mutant needs topology.server = \"child\"");
    }
    Ok(Topology {
        mode: s.topology.server,
        log_level: if s.taps.logs { "trace" } else { "warn" },
        db: data_dir.join("chatify.db"),
        data_dir: data_dir.to_path_buf(),
        log: log.to_path_buf(),
        durability: if s.topology.durability == "full" {
            Durability::Full
        } else {
            Durability::Normal
        },
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        handle: None,
        observer,
        keep_credentials: mode == Mode::CredentialsKeptMutant,
        max_connections_per_address: None,
        server_args: s.topology.server_args.clone(),
        request_limits: s.abuse.is_some(),
        link: None,
    })
}

/// The users' accounts, made before the workload (not timed as workload).
struct Accounts {
    clients: Vec<Option<Client>>,
    connect_auth: Histogram<u64>,
    /// Every password and token, for the credential tap.
    credentials: Vec<(&'static str, Vec<u8>)>,
}

/// Registers each user, logs its device in, then resumes it from its home
/// (the resume's connect and authenticate is the first timed sample).
async fn accounts(options: &[ConnectOptions], homes: &[PathBuf]) -> Result<Accounts> {
    let mut a = Accounts {
        clients: Vec::with_capacity(homes.len()),
        connect_auth: hist(),
        credentials: Vec::new(),
    };
    for (i, home) in homes.iter().enumerate() {
        let name = user_name(i);
        let options = options.get(i).context("no way to the server")?;
        let password = format!("{name}-harness-password");
        Client::register(options, &name, &password)
            .await
            .with_context(|| format!("register {name}"))?;
        let c = Client::login(options, home, &home_passphrase(), &name, &password, 1)
            .await
            .with_context(|| format!("login {name}"))?;
        a.credentials.push(("password", password.into_bytes()));
        if let Some(token) = &c.state().token {
            a.credentials.push(("session token", token.to_vec()));
        }
        c.close().await;
        let file = unlocked_home(home).with_context(|| format!("unlock {name}"))?;
        let t = Instant::now();
        let c = Client::resume_with(file, Some(options))
            .await
            .with_context(|| format!("resume {name}"))?;
        record(&mut a.connect_auth, t.elapsed().as_micros());
        a.clients.push(Some(c));
    }
    Ok(a)
}

/// A faulty network applies to the workload, not to account setup: the
/// clients reconnect through it (retrying, as a reset may come at once).
async fn through_faults(
    clients: &mut [Option<Client>],
    homes: &[PathBuf],
    options: &[ConnectOptions],
) -> Result<()> {
    for ((c, home), options) in clients.iter_mut().zip(homes).zip(options) {
        if let Some(old) = c.take() {
            old.close().await;
        }
        let mut last = String::new();
        for attempt in 0..50u32 {
            match Client::resume(home, &home_passphrase(), Some(options)).await {
                Ok(fresh) => {
                    *c = Some(fresh);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10) + 1))).await;
        }
        if c.is_none() {
            bail!("resume through the faulty network: {last}");
        }
    }
    Ok(())
}

/// How long after the start the users keep going: the last planned send,
/// the grace for stragglers, and the downtime of every fault.
fn deadline_after_start(s: &Scenario, plan: &[Planned]) -> Duration {
    let last_at = plan.last().map(|p| p.at).unwrap_or_default();
    let downtime: f64 = s
        .faults
        .disconnects
        .iter()
        .map(|d| d.down_secs)
        .sum::<f64>()
        + 5.0 * s.faults.server_restarts.len() as f64;
    last_at + Duration::from_secs_f64(s.workload.grace_secs + downtime)
}

/// One task per user with its sends, the count it expects, and its faults.
fn spawn_users(
    s: &Scenario,
    plan: &[Planned],
    ctx: Ctx,
    homes: &[PathBuf],
    mut clients: Vec<Option<Client>>,
) -> JoinSet<()> {
    let ctx = Arc::new(ctx);
    let mut tasks = JoinSet::new();
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
    tasks
}

/// What driving the workload left.
struct Driven {
    tally: Tally,
    restarts: u64,
    kills: u64,
}

/// Folds records into the tally until every user task has finished, and
/// restarts (or kills and restarts) the server on the scenario's clock.
#[allow(clippy::too_many_arguments)]
async fn drive(
    s: &Scenario,
    mut rx: mpsc::UnboundedReceiver<Record>,
    mut tasks: JoinSet<()>,
    mut tally: Tally,
    progress: &Progress,
    dep: &mut Deployment,
    tap: &WireTap,
    start: Instant,
) -> Result<Driven> {
    let mut timeline = timeline(s);
    let (mut restarts, mut kills) = (0u64, 0u64);
    loop {
        let next_at = timeline.front().map(|(at, _)| start + *at);
        tokio::select! {
            r = rx.recv() => match r {
                None => break,
                Some(r) => tally.add(r, progress),
            },
            _ = sleep_until(next_at), if next_at.is_some() => {
                let Some((_, action)) = timeline.pop_front() else { continue };
                progress.bar.set_message(action.describe());
                match action {
                    Action::NodeDown { node, kill } => {
                        restarts += 1;
                        kills += u64::from(kill);
                        if let Some(n) = dep.nodes.get_mut(node) {
                            n.stop(kill).await;
                        }
                    }
                    Action::NodeUp { node } => {
                        if let Some(n) = dep.nodes.get_mut(node) {
                            n.start().await?;
                        }
                        tap.set_targets(dep.addrs());
                    }
                    Action::NatsDown => dep.nats_down().await,
                    Action::NatsUp => dep.nats_up().await?,
                    Action::CutStore { node, down } => dep.cut_store(node, down),
                }
                progress.bar.set_message("");
            },
        }
    }
    while tasks.join_next().await.is_some() {}
    progress.bar.finish_and_clear();
    Ok(Driven {
        tally,
        restarts,
        kills,
    })
}

/// A fault's step, on the scenario's clock.
#[derive(Debug, Clone, Copy)]
enum Action {
    NodeDown { node: usize, kill: bool },
    NodeUp { node: usize },
    NatsDown,
    NatsUp,
    CutStore { node: usize, down: Duration },
}

impl Action {
    fn describe(&self) -> &'static str {
        match self {
            Action::NodeDown { kill: true, .. } => "server killed",
            Action::NodeDown { kill: false, .. } => "server stopping",
            Action::NodeUp { .. } => "server starting",
            Action::NatsDown => "NATS killed",
            Action::NatsUp => "NATS starting",
            Action::CutStore { .. } => "a node's PostgreSQL link cut",
        }
    }
}

/// Every fault's steps, in time order.
fn timeline(s: &Scenario) -> VecDeque<(Duration, Action)> {
    let at = Duration::from_secs_f64;
    let f = &s.faults;
    let mut steps: Vec<(Duration, Action)> = Vec::new();
    for r in &f.server_restarts {
        steps.push((
            at(r.at_secs),
            Action::NodeDown {
                node: r.node,
                kill: r.kill,
            },
        ));
        steps.push((at(r.at_secs + r.down_secs), Action::NodeUp { node: r.node }));
    }
    for o in &f.nats_restarts {
        steps.push((at(o.at_secs), Action::NatsDown));
        steps.push((at(o.at_secs + o.down_secs), Action::NatsUp));
    }
    for c in &f.store_cuts {
        steps.push((
            at(c.at_secs),
            Action::CutStore {
                node: c.node,
                down: at(c.down_secs),
            },
        ));
    }
    // Stable: a restart's down comes before its up at the same instant.
    steps.sort_by_key(|(t, _)| *t);
    steps.into()
}

/// When each server-side fault (a node down, NATS down, a store link cut)
/// began and ended.
fn fault_windows(s: &Scenario, start: Instant) -> Vec<(Instant, Instant)> {
    let at = |secs: f64| start + Duration::from_secs_f64(secs);
    let f = &s.faults;
    f.server_restarts
        .iter()
        .map(|r| (r.at_secs, r.down_secs))
        .chain(f.nats_restarts.iter().map(|o| (o.at_secs, o.down_secs)))
        .chain(f.store_cuts.iter().map(|o| (o.at_secs, o.down_secs)))
        .map(|(from, down)| (at(from), at(from + down)))
        .collect()
}

/// The server processes' CPU seconds, all of them, or `None`.
fn cpu_secs(dep: &Deployment) -> Option<f64> {
    dep.nodes
        .iter()
        .map(|n| n.pid().and_then(proc_cpu_secs))
        .sum::<Option<f64>>()
}

/// One tap's results over several places, as one.
fn merge(parts: Vec<TapOutcome>) -> TapOutcome {
    let mut all = taps::TapResult::default();
    for part in parts {
        let r = part?;
        all.bytes += r.bytes;
        all.matches += r.matches;
        all.hits.extend(
            r.hits
                .into_iter()
                .take(20usize.saturating_sub(all.hits.len())),
        );
    }
    Ok(all)
}

/// The memory taps of every server process.
async fn scan_processes(
    s: &Scenario,
    dep: &Deployment,
    idle_sockets: &[Option<usize>],
    detector: &Detector,
    secrets: &Detector,
) -> (Option<TapOutcome>, Option<TapOutcome>) {
    let (mut plain, mut creds) = (Vec::new(), Vec::new());
    for (node, idle) in dep.nodes.iter().zip(idle_sockets) {
        let (p, c) = scan_process(s, node, *idle, detector, secrets).await;
        plain.extend(p);
        creds.extend(c);
    }
    if plain.is_empty() {
        return (None, None);
    }
    (Some(merge(plain)), Some(merge(creds)))
}

/// The memory taps, while the server process lives: the canaries, and the
/// users' passwords and tokens.
async fn scan_process(
    s: &Scenario,
    topo: &Topology,
    idle_sockets: Option<usize>,
    detector: &Detector,
    secrets: &Detector,
) -> (Option<TapOutcome>, Option<TapOutcome>) {
    // The users have closed their connections; once the server has closed
    // its side, no connection buffer of its own may hold a credential (a
    // connection's WebSocket read buffer keeps its last frames while open).
    if let (Some(pid), Some(idle)) = (topo.pid(), idle_sockets) {
        wait_for_sockets(pid, idle, Duration::from_secs(5)).await;
    }
    match (s.taps.memory, topo.pid()) {
        (true, Some(pid)) => match taps::scan_memory(pid, &[detector, secrets]) {
            Ok(mut r) => {
                let creds = r.pop().ok_or("no credential result");
                let plain = r.pop().ok_or("no plaintext result");
                (
                    Some(plain.map_err(|e| anyhow!(e))),
                    Some(creds.map_err(|e| anyhow!(e))),
                )
            }
            Err(e) => {
                let why = format!("{e:#}");
                (Some(Err(anyhow!(why.clone()))), Some(Err(anyhow!(why))))
            }
        },
        _ => (None, None),
    }
}
