//! `chatify-harness nodes`: the server as several nodes, measured.
//!
//! ```text
//!  base scenario (scenarios/multi-node.toml), its faults set aside:
//!    for each repeat:                                      ◀─ interleaved
//!      sqlite-1       one node on SQLite (durability full)
//!      postgres-1     one node on PostgreSQL
//!      postgres-3     three nodes, users pinned so that every pair is on two nodes
//!    ─▶ p50 / p99 at the same offered load, cross-node against single-node PostgreSQL
//!  then each fault of the base alone (a node killed, NATS restarted, a store link cut),
//!  on three nodes with the taps on ─▶ lost, shown twice, order, catch-up after the fault
//!  ─▶ report::nodes (report.md, summary.json, fig_multi_node.svg)
//! ```

use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};

use crate::load::run;
use crate::metrics::Outcome;
use crate::report::nodes::{Config, FaultRun, Nodes};
use crate::scenario::{self, Faults, Placement, Scenario, ServerMode, StoreKind, Verdict};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) base: PathBuf,
    pub(crate) out: PathBuf,
    pub(crate) repeats: usize,
    /// Offered load of the latency runs (msg/s) and their length (s).
    pub(crate) rate: f64,
    pub(crate) secs: f64,
    /// The command line, for the report.
    pub(crate) command: String,
}

/// The latency configurations: (name, what it is, nodes, store).
const CONFIGS: [(&str, &str, usize, StoreKind); 3] = [
    (
        "sqlite-1",
        "one node on SQLite (durability full)",
        1,
        StoreKind::Sqlite,
    ),
    (
        "postgres-1",
        "one node on PostgreSQL",
        1,
        StoreKind::Postgres,
    ),
    (
        "postgres-3-cross",
        "three nodes on PostgreSQL and NATS, every pair of users on two different nodes",
        3,
        StoreKind::Postgres,
    ),
];

fn latency_scenario(base: &Scenario, o: &Options, nodes: usize, store: StoreKind) -> Scenario {
    let mut s = base.clone();
    s.faults = Faults::default();
    s.topology.server = ServerMode::Child;
    s.topology.durability = "full".into();
    s.topology.nodes = nodes;
    s.topology.store = store;
    s.topology.placement = Placement::Pinned;
    s.workload.rate = o.rate;
    s.workload.messages = ((o.rate * o.secs).round() as u64).max(1);
    s.workload.grace_secs = 10.0;
    // The taps cost the server time these runs measure; the fault runs
    // keep them on.
    s.taps.wire = false;
    s.taps.store = false;
    s.taps.logs = false;
    s.taps.memory = false;
    s
}

/// The base with only its `i`th fault (of the three kinds, in order).
fn fault_scenarios(base: &Scenario) -> Vec<(String, String, Scenario)> {
    let mut out = Vec::new();
    let f = &base.faults;
    for r in &f.server_restarts {
        let mut s = base.clone();
        s.faults = Faults {
            server_restarts: vec![r.clone()],
            ..Faults::default()
        };
        out.push((
            "node-killed".into(),
            format!(
                "node {} {} at {} s, started again {} s later",
                r.node,
                if r.kill {
                    "killed (SIGKILL)"
                } else {
                    "stopped"
                },
                r.at_secs,
                r.down_secs
            ),
            s,
        ));
    }
    for o in &f.nats_restarts {
        let mut s = base.clone();
        s.faults = Faults {
            nats_restarts: vec![o.clone()],
            ..Faults::default()
        };
        out.push((
            "nats-restarted".into(),
            format!(
                "NATS killed at {} s, started again {} s later",
                o.at_secs, o.down_secs
            ),
            s,
        ));
    }
    for c in &f.store_cuts {
        let mut s = base.clone();
        s.faults = Faults {
            store_cuts: vec![c.clone()],
            ..Faults::default()
        };
        out.push((
            "store-link-cut".into(),
            format!(
                "node {}'s PostgreSQL connections cut at {} s for {} s",
                c.node, c.at_secs, c.down_secs
            ),
            s,
        ));
    }
    out
}

fn fault_run(name: String, description: String, o: &Outcome) -> FaultRun {
    let failed: Vec<String> = o
        .checks
        .iter()
        .filter(|c| !c.as_expected())
        .map(|c| format!("{}: {}", c.name, c.evidence))
        .collect();
    let check = |n: &str| {
        o.checks
            .iter()
            .find(|c| c.name == n)
            .map_or(Verdict::Skipped, |c| c.verdict)
    };
    FaultRun {
        name,
        description,
        planned: o.metrics.planned,
        delivered: o.metrics.delivered,
        exactly_once: check("delivery.exactly-once"),
        order: check("delivery.order"),
        catch_up_ms: o.metrics.catch_up_ms,
        reconnects: o.metrics.reconnects,
        p99_us: o.metrics.latency_us.p99,
        as_expected: o.as_expected(),
        failed,
    }
}

/// Runs the experiment; writes and returns its report.
pub(crate) async fn run(o: &Options) -> Result<Nodes> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if o.repeats == 0 || !positive(o.rate) || !positive(o.secs) {
        bail!("need at least one repeat and a positive --rate and --secs");
    }
    let base = scenario::load(&o.base)?;
    if base.topology.nodes < 2 || base.topology.store != StoreKind::Postgres {
        bail!(
            "{}: the base needs several nodes on PostgreSQL",
            o.base.display()
        );
    }
    std::fs::create_dir_all(&o.out).with_context(|| o.out.display().to_string())?;
    crate::topology::deployment::vacuum().await?;
    let work = tempfile::tempdir()?;
    let mut report = Nodes {
        command: o.command.clone(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        load_before: {
            use procfs::Current as _;
            procfs::LoadAverage::current()
                .ok()
                .map(|l| f64::from(l.one))
        },
        rate: o.rate,
        secs: o.secs,
        users: base.users.count,
        repeats: o.repeats,
        configs: CONFIGS
            .iter()
            .map(|(name, what, nodes, _)| Config {
                name: (*name).into(),
                description: (*what).into(),
                nodes: *nodes,
                p50_us: Vec::new(),
                p99_us: Vec::new(),
                delivered: Vec::new(),
            })
            .collect(),
        faults: Vec::new(),
    };
    for repeat in 0..o.repeats {
        for (i, (name, _, nodes, store)) in CONFIGS.iter().enumerate() {
            let s = latency_scenario(&base, o, *nodes, *store);
            eprintln!("repeat {}/{}: {name}", repeat + 1, o.repeats);
            let dir = work.path().join(format!("{name}-{repeat}"));
            let out = run::run(&s, &dir, false).await?;
            if !out.as_expected() {
                bail!("{name}: the run did not go as expected: {:?}", out.checks);
            }
            let c = report
                .configs
                .get_mut(i)
                .context("configuration out of range")?;
            c.p50_us.push(out.metrics.latency_us.p50);
            c.p99_us.push(out.metrics.latency_us.p99);
            c.delivered.push(out.metrics.delivered);
        }
    }
    for (name, description, s) in fault_scenarios(&base) {
        eprintln!("fault: {description}");
        let dir = work.path().join(&name);
        let out = run::run(&s, &dir, false).await?;
        report.faults.push(fault_run(name, description, &out));
    }
    crate::report::nodes::write(&o.out, &report)?;
    Ok(report)
}

/// Rewrites the report and figure from `summary.json` in `out`.
pub(crate) fn replot(out: &Path) -> Result<()> {
    let path = out.join("summary.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let n: Nodes = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    crate::report::nodes::write(out, &n)
}
