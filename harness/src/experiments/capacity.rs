//! `chatify-harness capacity`: how much traffic the reference server relays,
//! durably, beside Socket.io (the paper's stack) and the bare floor, on the
//! same light generator.
//!
//! ```text
//!  for each connection count (100, 1000, 10000):
//!    for each repeat:
//!      for each system (chatify-full, chatify-normal, socketio-base64,
//!                       socketio-binary, floor):       ◀─ interleaved
//!        start it (pinned to CPU 0), connect the fleet (generator on CPU 1),
//!        RSS per idle connection,
//!        open-loop steps at rising rates until one saturates,
//!        then one step at the lowest rate under `strace -c` (syscalls/msg)
//!  ─▶ report::capacity (saturation and its bound, figures at equal loads)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use chatify_server::store::sqlite::Durability;

use super::connections::rss_kib;
use crate::load::open_loop::{Fleet, StepResult, Wire, login_all};
use crate::load::peers::{Peer, PeerServer};
use crate::report::capacity::{Capacity, Run, Step};
use crate::topology::{Topology, count_syscalls, cpus, pin};

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum System {
    Chatify(Durability),
    /// The server on PostgreSQL (`CHATIFY_PG_URL`, a schema of the run's
    /// own), one node, its database sessions pinned beside it.
    ChatifyPostgres,
    SocketIo(Wire),
    Floor,
}

impl System {
    pub(crate) const ALL: [System; 6] = [
        System::Chatify(Durability::Full),
        System::ChatifyPostgres,
        System::Chatify(Durability::Normal),
        System::SocketIo(Wire::SocketIoBase64),
        System::SocketIo(Wire::SocketIoBinary),
        System::Floor,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Chatify(Durability::Full) => "chatify-full",
            System::Chatify(Durability::Normal) => "chatify-normal",
            System::ChatifyPostgres => "chatify-postgres",
            System::SocketIo(Wire::SocketIoBinary) => "socketio-binary",
            System::SocketIo(_) => "socketio-base64",
            System::Floor => "floor",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.name() == name)
    }

    fn wire(self) -> Wire {
        match self {
            System::Chatify(_) | System::ChatifyPostgres => Wire::Chatify,
            System::SocketIo(w) => w,
            System::Floor => Wire::Floor,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) out: PathBuf,
    pub(crate) counts: Vec<usize>,
    pub(crate) rates: Vec<f64>,
    pub(crate) systems: Vec<System>,
    pub(crate) repeats: usize,
    pub(crate) step_secs: f64,
    pub(crate) socketio_dir: PathBuf,
    /// The command line, for the report.
    pub(crate) command: String,
}

/// A step is saturated above this p99.
const SATURATED_P99_MS: f64 = 250.0;

/// A running system.
enum Server {
    /// With the PostgreSQL URL and schema to drop, on PostgreSQL.
    Chatify(Box<Topology>, tempfile::TempDir, Option<(String, String)>),
    Peer(PeerServer),
}

impl Server {
    async fn start(system: System, count: usize, socketio_dir: &Path) -> Result<Server> {
        Ok(match system {
            System::Chatify(durability) => {
                let dir = tempfile::tempdir()?;
                let mut topo = Topology::for_load(dir.path(), durability, count);
                topo.start().await?;
                Server::Chatify(Box::new(topo), dir, None)
            }
            System::ChatifyPostgres => {
                let dir = tempfile::tempdir()?;
                let mut topo = Topology::for_load(dir.path(), Durability::Full, count);
                let url = crate::topology::deployment::pg_url()?;
                let schema = format!(
                    "chatify_capacity_{:x}",
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                );
                topo.link = Some(crate::topology::NodeLink {
                    store_url: url.clone(),
                    schema: schema.clone(),
                    nats: None,
                    prefix: "chatify".into(),
                    publish_mutant: false,
                });
                topo.start().await?;
                Server::Chatify(Box::new(topo), dir, Some((url, schema)))
            }
            System::SocketIo(_) => {
                Server::Peer(PeerServer::start(Peer::SocketIo, socketio_dir).await?)
            }
            System::Floor => Server::Peer(PeerServer::start(Peer::Floor, socketio_dir).await?),
        })
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Server::Chatify(t, _, _) => t.pid(),
            Server::Peer(p) => p.pid(),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Server::Chatify(t, _, _) => t.addr,
            Server::Peer(p) => p.addr,
        }
    }

    async fn stop(self) {
        match self {
            Server::Chatify(mut t, _dir, pg) => {
                t.stop(false).await;
                if let Some((url, schema)) = pg {
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                            let _ =
                                c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                        }
                    })
                    .await;
                }
            }
            Server::Peer(p) => p.stop().await,
        }
    }
}

/// Runs the experiment and writes it to `opts.out`.
pub(crate) async fn run(opts: &Options) -> Result<Capacity> {
    if opts.counts.iter().any(|&n| n < 2) || opts.rates.is_empty() || opts.repeats == 0 {
        bail!("need connection counts of at least 2, some rates and at least one repeat");
    }
    if opts
        .systems
        .iter()
        .any(|s| matches!(s, System::SocketIo(_)))
        && !opts.socketio_dir.join("node_modules/socket.io").is_dir()
    {
        bail!(
            "Socket.io is not installed in {}: run {}/install.sh (needs Node.js and npm), or leave the socketio systems out with --systems",
            opts.socketio_dir.display(),
            opts.socketio_dir.display()
        );
    }
    std::fs::create_dir_all(&opts.out).with_context(|| opts.out.display().to_string())?;
    let limit = crate::topology::raise_descriptor_limit();
    if let Some(max) = opts.counts.iter().max()
        && limit.is_some_and(|l| l < *max as u64 + 256)
    {
        bail!("{max} connections need more descriptors than the limit of {limit:?}");
    }
    if opts.systems.contains(&System::ChatifyPostgres) {
        crate::topology::deployment::vacuum().await?;
    }
    let pinned = cpus() >= 2 && pin(std::process::id(), 1);
    let mut c = Capacity {
        command: opts.command.clone(),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        load_before: procfs_load(),
        pinned,
        step_secs: opts.step_secs,
        saturated_p99_ms: SATURATED_P99_MS,
        rates: opts.rates.clone(),
        runs: Vec::new(),
    };
    for &count in &opts.counts {
        for repeat in 0..opts.repeats {
            for &system in &opts.systems {
                eprintln!(
                    "{} at {count} connections, repeat {}/{}",
                    system.name(),
                    repeat + 1,
                    opts.repeats
                );
                let run = one(opts, system, count, repeat, pinned).await?;
                c.runs.push(run);
                crate::report::capacity::write(&opts.out, &c)?;
            }
        }
    }
    Ok(c)
}

fn procfs_load() -> Option<f64> {
    use procfs::Current as _;
    procfs::LoadAverage::current()
        .ok()
        .map(|l| f64::from(l.one))
}

/// Pins the PostgreSQL backends serving `chatify-server` connections to
/// CPU `cpu`; returns those pinned.
async fn pin_database_sessions(cpu: usize) -> Vec<u32> {
    let Ok(url) = crate::topology::deployment::pg_url() else {
        return Vec::new();
    };
    let pids = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).ok()?;
        let rows = c
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'chatify-server'",
                &[],
            )
            .ok()?;
        Some(rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>())
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    pids.into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|&p| pin(p, cpu))
        .collect()
}

/// One system at one count: connect, then rising steps until one saturates.
async fn one(
    opts: &Options,
    system: System,
    count: usize,
    repeat: usize,
    pinned: bool,
) -> Result<Run> {
    let t0 = Instant::now();
    let server = Server::start(system, count, &opts.socketio_dir).await?;
    let pid = server.pid().context("the server has no process")?;
    if pinned {
        pin(pid, 0);
    }
    let tokens = match system {
        System::Chatify(_) | System::ChatifyPostgres => {
            Some(login_all(&format!("ws://{}", server.addr()), count).await?)
        }
        _ => None,
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid)?;
    let fleet = Fleet::connect(system.wire(), server.addr(), count, tokens).await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = rss_kib(pid)?;
    let setup_secs = t0.elapsed().as_secs_f64();
    // Warm-up: every connection sends once before anything is measured.
    let _ = fleet
        .step(count as f64, 1.0, Duration::from_secs(5), &[pid])
        .await;
    // The processes whose CPU is the server's: its own, and on PostgreSQL
    // the database sessions serving it (SQLite works inside the server).
    let mut serving = vec![pid];
    if pinned && system == System::ChatifyPostgres {
        // The database's sessions for this server share its CPU: the
        // server and its store get one CPU, as SQLite (in the server's
        // process) does.
        let sessions = pin_database_sessions(0).await;
        eprintln!(
            "  {} PostgreSQL sessions pinned beside the server",
            sessions.len()
        );
        serving.extend(sessions);
    }
    let mut steps = Vec::new();
    for &rate in &opts.rates {
        let r = fleet
            .step(rate, opts.step_secs, Duration::from_secs(3), &serving)
            .await;
        let step = step_of(&r);
        eprintln!(
            "  {rate:.0} msg/s: delivered {}/{}, p50 {} µs, p99 {} µs{}",
            r.delivered,
            r.planned,
            r.latency_us.p50,
            r.latency_us.p99,
            if step.saturated { ", saturated" } else { "" }
        );
        let saturated = step.saturated;
        steps.push(step);
        if saturated {
            break;
        }
    }
    // System calls per message, counted apart from the measured steps (the
    // tracer slows the server).
    let rate = opts.rates.iter().copied().fold(f64::INFINITY, f64::min);
    let (r, calls) = count_syscalls(pid, fleet.step(rate, 1.0, Duration::from_secs(5), &[])).await;
    let syscalls_per_msg = calls
        .filter(|_| r.delivered > 0)
        .map(|c| c as f64 / r.delivered as f64);
    fleet.close();
    server.stop().await;
    Ok(Run {
        syscalls_per_msg,
        system: system.name().into(),
        connections: count,
        repeat,
        kib_per_connection: after.saturating_sub(before) as f64 / count as f64,
        setup_secs,
        steps,
    })
}

fn step_of(r: &StepResult) -> Step {
    Step {
        rate: r.rate,
        planned: r.planned,
        delivered: r.delivered,
        secs: r.secs,
        p50_us: r.latency_us.p50,
        p99_us: r.latency_us.p99,
        server_cpu_secs: r.server_cpu_secs,
        generator_cpu_secs: r.generator_cpu_secs,
        saturated: r.delivered < r.planned || r.latency_us.p99 as f64 > SATURATED_P99_MS * 1000.0,
    }
}
