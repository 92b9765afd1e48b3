//! The several-node experiment's data, `report.md`, `summary.json` and
//! `fig_multi_node.svg`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::metrics::stats::Spread;
use crate::scenario::Verdict;

/// The bounds on cross-node delivery against one PostgreSQL node.
pub(crate) const P50_BOUND: f64 = 1.5;
pub(crate) const P99_BOUND: f64 = 2.0;

/// What the experiment measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Nodes {
    pub(crate) command: String,
    /// Unix seconds at the start.
    pub(crate) started: u64,
    /// Machine load (1-minute average) before the run.
    pub(crate) load_before: Option<f64>,
    /// Offered load of the latency runs (msg/s), and their length (s).
    pub(crate) rate: f64,
    pub(crate) secs: f64,
    pub(crate) users: usize,
    pub(crate) repeats: usize,
    pub(crate) configs: Vec<Config>,
    pub(crate) faults: Vec<FaultRun>,
}

/// One configuration's latency runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Config {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) nodes: usize,
    /// Per repeat: p50 and p99 (µs), and messages delivered.
    pub(crate) p50_us: Vec<u64>,
    pub(crate) p99_us: Vec<u64>,
    pub(crate) delivered: Vec<u64>,
}

/// One fault's run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct FaultRun {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) planned: u64,
    pub(crate) delivered: u64,
    pub(crate) exactly_once: Verdict,
    pub(crate) order: Verdict,
    /// The longest a delivery arrived after it was due (ms).
    pub(crate) catch_up_ms: Option<f64>,
    pub(crate) reconnects: u64,
    pub(crate) p99_us: u64,
    /// Every check (delivery and taps) as expected.
    pub(crate) as_expected: bool,
    pub(crate) failed: Vec<String>,
}

fn spread(xs: &[u64]) -> Spread {
    Spread::of(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>())
}

impl Nodes {
    pub(crate) fn config(&self, name: &str) -> Option<&Config> {
        self.configs.iter().find(|c| c.name == name)
    }

    /// Median over repeats of cross-node p50 and p99 over single-node
    /// PostgreSQL's, each repeat's ratio taken within the repeat.
    pub(crate) fn ratios(&self) -> Option<(Spread, Spread)> {
        let single = self.config("postgres-1")?;
        let cross = self.config("postgres-3-cross")?;
        let ratio = |a: &[u64], b: &[u64]| {
            Spread::of(
                &a.iter()
                    .zip(b)
                    .filter(|(_, b)| **b > 0)
                    .map(|(a, b)| *a as f64 / *b as f64)
                    .collect::<Vec<_>>(),
            )
        };
        Some((
            ratio(&cross.p50_us, &single.p50_us),
            ratio(&cross.p99_us, &single.p99_us),
        ))
    }
}

/// Writes `summary.json`, `report.md` and the figure.
pub(crate) fn write(out: &Path, n: &Nodes) -> Result<()> {
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(n)?)?;
    std::fs::write(out.join("report.md"), markdown(n))?;
    super::figures::nodes(&out.join("fig_multi_node.svg"), n)?;
    Ok(())
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

/// The report: latency at equal load, then delivery through each fault.
pub(crate) fn markdown(n: &Nodes) -> String {
    let mut md = format!(
        "# Several nodes: PostgreSQL and NATS\n\n\
         Produced by `{}` (Unix time {}, load average before {}). {} users in pairs, {} msg/s \
         offered for {} s per run, {} repeats interleaved; child server processes; users \
         pinned to nodes through the harness's relay (user i on node i mod nodes), so that on \
         three nodes every pair's two users are on different nodes and every message crosses \
         NATS. Latency is from the intended send to the decrypted message at the recipient \
         (both clients run E2EE in the harness).\n\n\
         ![latency and catch-up](fig_multi_node.svg)\n\n\
         ## Latency at the same offered load\n\n\
         | configuration | p50 ms (median; mean ± sd) | p99 ms (median; mean ± sd) | delivered per run |\n\
         |---|---|---|---|\n",
        n.command,
        n.started,
        n.load_before
            .map_or("unknown".into(), |l| format!("{l:.2}")),
        n.users,
        n.rate,
        n.secs,
        n.repeats
    );
    for c in &n.configs {
        let (p50, p99) = (spread(&c.p50_us), spread(&c.p99_us));
        let _ = writeln!(
            md,
            "| {} — {} | {} ({} ± {}) | {} ({} ± {}) | {:?} |",
            c.name,
            c.description,
            ms(p50.median),
            ms(p50.mean),
            ms(p50.sd),
            ms(p99.median),
            ms(p99.mean),
            ms(p99.sd),
            c.delivered
        );
    }
    if let Some((p50, p99)) = n.ratios() {
        let verdict = |x: f64, bound: f64| if x <= bound { "met" } else { "missed" };
        let _ = write!(
            md,
            "\nCross-node against single-node PostgreSQL (ratio within each repeat): p50 \
             **{:.2}×** (median; {:.2} ± {:.2}), target ≤ {P50_BOUND}× — {}; p99 **{:.2}×** \
             (median; {:.2} ± {:.2}), target ≤ {P99_BOUND}× — {}.\n",
            p50.median,
            p50.mean,
            p50.sd,
            verdict(p50.median, P50_BOUND),
            p99.median,
            p99.mean,
            p99.sd,
            verdict(p99.median, P99_BOUND)
        );
    }
    md.push_str(
        "\n## Delivery through each fault\n\n\
         Three nodes, users spread by the relay (a reconnect lands on the next node up), the \
         taps on (wire, PostgreSQL tables, node logs, PostgreSQL's log, memory of every node, \
         every NATS message). Catch-up: the longest any delivery arrived after it was due (its \
         send, or the end of the fault that held it up); the bound is 5 s.\n\n\
         | fault | delivered | exactly once | order | catch-up (s) | reconnects | p99 ms | all checks |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for f in &n.faults {
        let _ = writeln!(
            md,
            "| {} ({}) | {}/{} | {:?} | {:?} | {} | {} | {} | {} |",
            f.name,
            f.description,
            f.delivered,
            f.planned,
            f.exactly_once,
            f.order,
            f.catch_up_ms
                .map_or("–".into(), |m| format!("{:.2}", m / 1000.0)),
            f.reconnects,
            ms(f.p99_us as f64),
            if f.as_expected {
                "as expected".to_owned()
            } else {
                format!("NOT as expected: {}", f.failed.join("; "))
            }
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, p50: Vec<u64>, p99: Vec<u64>) -> Config {
        Config {
            name: name.into(),
            description: String::new(),
            nodes: 1,
            delivered: vec![100; p50.len()],
            p50_us: p50,
            p99_us: p99,
        }
    }

    /// Ratios are taken within each repeat, then the median; the report
    /// says whether each target was met.
    #[test]
    fn ratios_pair_repeats_and_the_report_judges_them() {
        let n = Nodes {
            command: "chatify-harness nodes".into(),
            started: 0,
            load_before: None,
            rate: 100.0,
            secs: 10.0,
            users: 8,
            repeats: 3,
            configs: vec![
                config("postgres-1", vec![1000, 2000, 1000], vec![4000, 4000, 4000]),
                config(
                    "postgres-3-cross",
                    vec![1100, 2400, 3000],
                    vec![9000, 10000, 8400],
                ),
            ],
            faults: Vec::new(),
        };
        let (p50, p99) = n.ratios().unwrap();
        assert!((p50.median - 1.2).abs() < 1e-9, "{p50:?}");
        assert!((p99.median - 2.25).abs() < 1e-9, "{p99:?}");
        let md = markdown(&n);
        assert!(md.contains("p50 **1.20×**"), "{md}");
        assert!(md.contains("target ≤ 1.5× — met"), "{md}");
        assert!(md.contains("target ≤ 2× — missed"), "{md}");
    }
}
