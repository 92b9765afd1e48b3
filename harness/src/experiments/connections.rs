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

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use chatify_server::store::sqlite::Durability;

use crate::load::open_loop::{Fleet, Wire, login_all};
use crate::report::connections::Connections;
use crate::topology::{Topology, proc_peak_rss_kib, process};

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
    crate::topology::raise_descriptor_limit();
    let dir = tempfile::tempdir()?;
    let mut topo = Topology::for_load(dir.path(), durability, count);
    topo.start().await?;
    let pid = topo.pid().context("the server has no process")?;
    let url = format!("ws://{}", topo.addr);
    let t0 = Instant::now();
    eprintln!("logging in {count} devices");
    let tokens = login_all(&url, count).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = rss_kib(pid)?;
    eprintln!("connecting {count} WebSockets");
    let fleet = Fleet::connect(Wire::Chatify, topo.addr, count, Some(tokens)).await?;
    let setup_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_connected_kib = rss_kib(pid)?;
    eprintln!("load: {rate} msg/s for {secs} s");
    let wal = WalWatch::start(dir.path().join("chatify.db-wal"));
    let step = fleet
        .step(rate, secs, Duration::from_secs(10), &[pid])
        .await;
    let wal_peak_bytes = wal.stop().await;
    let server_peak_rss_kib = proc_peak_rss_kib(pid);
    fleet.close();
    topo.stop(false).await;
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
        planned: step.planned,
        delivered: step.delivered,
        latency_us: step.latency_us,
        server_cpu_secs: step.server_cpu_secs,
        server_cpu_us_per_msg: step
            .server_cpu_secs
            .filter(|_| step.delivered > 0)
            .map(|s| s * 1e6 / step.delivered as f64),
        generator_cpu_secs: step.generator_cpu_secs,
        setup_secs,
        wal_peak_bytes,
        wal_bound_bytes: chatify_server::store::sqlite::WAL_LIMIT,
    };
    crate::report::connections::write(out, &c)?;
    Ok(c)
}

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = process(pid).context("no such process")?.status()?;
    status.vmrss.context("no VmRSS")
}

/// The largest size a file reaches while watched (sampled every 100 ms).
struct WalWatch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl WalWatch {
    fn start(path: std::path::PathBuf) -> WalWatch {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(std::fs::metadata(&path).map_or(0, |m| m.len()));
                tokio::select! {
                    _ = &mut stopped => return peak,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        WalWatch { stop, task }
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}
