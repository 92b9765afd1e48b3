//! The capacity experiment's data, `report.md` and `summary.json`.
//!
//! Plain series: for each system, connection count and repeat, the open-loop
//! steps it ran (offered rate, delivered, p50/p99, CPU of server and
//! generator) and the server's system calls per message. Everything else (saturation, what
//! bounded it, the figures at equal loads and the targets' ratios) is derived
//! here, so the report can be rewritten from `summary.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::metrics::stats::Spread;

/// One open-loop step.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Step {
    pub(crate) rate: f64,
    pub(crate) planned: u64,
    pub(crate) delivered: u64,
    pub(crate) secs: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) server_cpu_secs: Option<f64>,
    pub(crate) generator_cpu_secs: Option<f64>,
    /// Not all delivered within the grace, or p99 above the run's bound.
    pub(crate) saturated: bool,
}

impl Step {
    pub(crate) fn server_cpu_us_per_msg(&self) -> Option<f64> {
        self.server_cpu_secs
            .filter(|_| self.delivered > 0)
            .map(|s| s * 1e6 / self.delivered as f64)
    }

    /// The share of one CPU the server used over the step.
    pub(crate) fn server_utilization(&self) -> Option<f64> {
        self.server_cpu_secs.map(|c| c / self.secs.max(1e-9))
    }

    /// What kept this step from keeping up: the process that used most of
    /// its CPU (at least three quarters of it), or neither.
    fn bound(&self) -> &'static str {
        let share = |cpu: Option<f64>| cpu.map_or(0.0, |c| c / self.secs.max(1e-9));
        let (server, generator) = (share(self.server_cpu_secs), share(self.generator_cpu_secs));
        if server >= BUSY && server >= generator {
            "server CPU"
        } else if generator >= BUSY {
            "generator CPU"
        } else {
            "neither CPU busy (waits: fsync, locks, scheduling)"
        }
    }
}

/// A process that used this share of its CPU over a step was its bound.
const BUSY: f64 = 0.75;

/// One system at one connection count, one repeat.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Run {
    pub(crate) system: String,
    pub(crate) connections: usize,
    pub(crate) repeat: usize,
    /// Server RSS growth from connecting, per connection (KiB).
    pub(crate) kib_per_connection: f64,
    pub(crate) setup_secs: f64,
    pub(crate) steps: Vec<Step>,
    /// The server's system calls per delivered message, counted by
    /// `strace -c -f` over a separate step at the lowest rate.
    pub(crate) syscalls_per_msg: Option<f64>,
}

impl Run {
    /// The highest offered rate kept up with (0 if none).
    pub(crate) fn saturation(&self) -> f64 {
        self.steps
            .iter()
            .filter(|s| !s.saturated)
            .map(|s| s.rate)
            .fold(0.0, f64::max)
    }

    fn bound(&self) -> &'static str {
        self.first_saturated()
            .map_or("not saturated at the highest rate offered", Step::bound)
    }

    fn first_saturated(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.saturated)
    }

    fn at(&self, rate: f64) -> Option<&Step> {
        self.steps.iter().find(|s| s.rate == rate && !s.saturated)
    }
}

/// The whole experiment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Capacity {
    pub(crate) command: String,
    /// Unix seconds at the start.
    pub(crate) started: u64,
    /// Machine load (1-minute average) before the run.
    pub(crate) load_before: Option<f64>,
    /// Server on CPU 0 and generator on CPU 1.
    pub(crate) pinned: bool,
    pub(crate) step_secs: f64,
    pub(crate) saturated_p99_ms: f64,
    pub(crate) rates: Vec<f64>,
    pub(crate) runs: Vec<Run>,
}

/// Writes `summary.json` and `report.md`.
pub(crate) fn write(out: &Path, c: &Capacity) -> Result<()> {
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(c)?)?;
    std::fs::write(out.join("report.md"), markdown(c))?;
    Ok(())
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn median(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| Spread::of(xs).median)
}

/// Systems in the order they ran.
fn systems(c: &Capacity) -> Vec<&str> {
    let mut seen = Vec::new();
    for r in &c.runs {
        if !seen.contains(&r.system.as_str()) {
            seen.push(r.system.as_str());
        }
    }
    seen
}

/// The runs of one system at one connection count.
fn runs<'a>(c: &'a Capacity, system: &str, n: usize) -> Vec<&'a Run> {
    c.runs
        .iter()
        .filter(|r| r.system == system && r.connections == n)
        .collect()
}

/// Median over repeats of a figure of the unsaturated step at `rate`.
fn at(runs: &[&Run], rate: f64, v: impl Fn(&Step) -> Option<f64>) -> Option<f64> {
    let xs: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.at(rate))
        .filter_map(v)
        .collect();
    // Only where every repeat kept up.
    (xs.len() == runs.len()).then(|| median(&xs)).flatten()
}

/// Saturation (mean ± sd over repeats) of one system at one count.
pub(crate) fn saturation(c: &Capacity, system: &str, n: usize) -> Spread {
    Spread::of(
        &runs(c, system, n)
            .iter()
            .map(|r| r.saturation())
            .collect::<Vec<_>>(),
    )
}

/// The report.
pub(crate) fn markdown(c: &Capacity) -> String {
    let mut md = format!(
        "# Capacity: the reference server beside Socket.io and the floor\n\n\
         Produced by `{}`. An open-loop generator (pre-computed 256-byte envelopes, \
         connection i sending to i+1, the reference server's deliveries acknowledged once \
         per wake-up as the reference client does) offers each rate for {} s; a step is \
         **saturated** when not every message arrives within the grace or p99 exceeds {} ms, \
         and a system's saturation is the highest rate it kept up with. Systems run \
         interleaved, each repeat in turn. Server {}. Socket.io and the floor keep nothing and \
         acknowledge nothing; the reference server stores every envelope before it answers \
         and marks it delivered on the recipient's acknowledgement; it runs with its request \
         rate limits off, since one address offers the whole load.\n\n\
         Load average before the run: {}.\n\n",
        c.command,
        c.step_secs,
        c.saturated_p99_ms,
        if c.pinned {
            "pinned to CPU 0 (on PostgreSQL with the database sessions serving it, whose CPU \
             counts as the server's, as SQLite's work inside the server does), generator to CPU 1"
        } else {
            "and generator not pinned (fewer than two CPUs)"
        },
        f(c.load_before, 2),
    );
    let counts: Vec<usize> = {
        let mut v: Vec<usize> = c.runs.iter().map(|r| r.connections).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    for &n in &counts {
        connection_count(&mut md, c, n);
    }
    targets(&mut md, c, &counts);
    md
}

fn connection_count(md: &mut String, c: &Capacity, n: usize) {
    let _ = writeln!(md, "## {n} connections\n");
    md.push_str(
        "| system | saturation msg/s (mean ± sd, n) | bounded by | server's share of its CPU in the first saturated step | KiB per idle connection | syscalls/msg at the lowest rate (strace) |\n|---|---|---|---|---|---|\n",
    );
    for system in systems(c) {
        let rs = runs(c, system, n);
        if rs.is_empty() {
            continue;
        }
        let s = saturation(c, system, n);
        let mut bounds: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &rs {
            *bounds.entry(r.bound()).or_default() += 1;
        }
        let bounds: Vec<String> = bounds
            .into_iter()
            .map(|(b, k)| format!("{b} ({k}/{})", rs.len()))
            .collect();
        let kib = median(&rs.iter().map(|r| r.kib_per_connection).collect::<Vec<_>>());
        let sys = median(
            &rs.iter()
                .filter_map(|r| r.syscalls_per_msg)
                .collect::<Vec<_>>(),
        );
        let busy = median(
            &rs.iter()
                .filter_map(|r| r.first_saturated().and_then(Step::server_utilization))
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            md,
            "| {system} | {:.0} ± {:.0} ({}) | {} | {} | {} | {} |",
            s.mean,
            s.sd,
            s.n,
            bounds.join("; "),
            busy.map_or("–".into(), |b| format!("{:.0}%", b * 100.0)),
            f(kib, 1),
            f(sys, 1)
        );
    }
    md.push_str(
        "\nAt equal offered loads (medians over repeats; – where a repeat did not keep up):\n\n\
         | system | msg/s | p50 µs | p99 µs | server CPU µs/msg |\n|---|---|---|---|---|\n",
    );
    for &rate in &c.rates {
        for system in systems(c) {
            let rs = runs(c, system, n);
            let p99 = at(&rs, rate, |s| Some(s.p99_us as f64));
            if rs.is_empty() || p99.is_none() {
                continue;
            }
            let _ = writeln!(
                md,
                "| {system} | {rate:.0} | {} | {} | {} |",
                f(at(&rs, rate, |s| Some(s.p50_us as f64)), 0),
                f(p99, 0),
                f(at(&rs, rate, Step::server_cpu_us_per_msg), 1),
            );
        }
    }
    md.push('\n');
}

/// The targets, as ratios measured in this run.
fn targets(md: &mut String, c: &Capacity, counts: &[usize]) {
    md.push_str("## Targets\n\n| target | measured |\n|---|---|\n");
    let base = "socketio-base64";
    for &n in counts {
        let sio = saturation(c, base, n).mean;
        for (system, target) in [("chatify-full", ", target ≥ 1.0"), ("chatify-normal", "")] {
            let s = saturation(c, system, n).mean;
            if sio > 0.0 && s > 0.0 {
                let _ = writeln!(
                    md,
                    "| {n} connections: {system} saturation / Socket.io (base64){target} | {s:.0} / {sio:.0} = {:.2} |",
                    s / sio
                );
            }
        }
    }
    for &n in counts {
        for system in ["chatify-full", "chatify-normal"] {
            let (ours, theirs) = (runs(c, system, n), runs(c, base, n));
            let p99 = |rs: &[&Run]| at(rs, 10_000.0, |s| Some(s.p99_us as f64));
            let cpu = |rs: &[&Run]| at(rs, 10_000.0, Step::server_cpu_us_per_msg);
            if ours.is_empty() || theirs.is_empty() {
                continue;
            }
            let _ = writeln!(
                md,
                "| {n} connections, 10000 msg/s: {system} p99 ≤ Socket.io's; CPU/msg ≤ Socket.io's | p99 {} vs {} µs; CPU {} vs {} µs/msg |",
                f(p99(&ours), 0),
                f(p99(&theirs), 0),
                f(cpu(&ours), 1),
                f(cpu(&theirs), 1)
            );
        }
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, saturated: bool, cpu: f64) -> Step {
        Step {
            rate,
            planned: (rate * 2.0) as u64,
            delivered: if saturated {
                rate as u64
            } else {
                (rate * 2.0) as u64
            },
            secs: 2.0,
            p50_us: 500,
            p99_us: if saturated { 900_000 } else { 2_000 },
            server_cpu_secs: Some(cpu),
            generator_cpu_secs: Some(0.5),
            saturated,
        }
    }

    fn sample() -> Capacity {
        let run = |system: &str, repeat: usize, top: f64| Run {
            system: system.into(),
            connections: 100,
            repeat,
            kib_per_connection: 10.5,
            setup_secs: 1.0,
            steps: vec![
                step(1000.0, false, 0.2),
                step(10_000.0, top < 10_000.0, 1.9),
                step(20_000.0, true, 1.95),
            ],
            syscalls_per_msg: Some(6.0),
        };
        Capacity {
            command: "chatify-harness capacity".into(),
            started: 0,
            load_before: Some(0.1),
            pinned: true,
            step_secs: 2.0,
            saturated_p99_ms: 250.0,
            rates: vec![1000.0, 10_000.0, 20_000.0],
            runs: vec![
                run("chatify-full", 0, 1000.0),
                run("socketio-base64", 0, 10_000.0),
                run("chatify-full", 1, 1000.0),
                run("socketio-base64", 1, 10_000.0),
            ],
        }
    }

    #[test]
    fn saturation_is_the_highest_rate_kept_up_with_and_its_bound_is_named() {
        let c = sample();
        assert_eq!(saturation(&c, "chatify-full", 100).mean, 1000.0);
        assert_eq!(saturation(&c, "socketio-base64", 100).mean, 10_000.0);
        let md = markdown(&c);
        assert!(
            md.contains("| chatify-full | 1000 ± 0 (2) | server CPU (2/2) | 95% | 10.5 | 6.0 |"),
            "{md}"
        );
        // A saturated step gives no figure at equal load.
        assert!(!md.contains("| chatify-full | 10000 |"), "{md}");
        assert!(
            md.contains("| socketio-base64 | 10000 | 500 | 2000 | 95.0 |"),
            "{md}"
        );
        assert!(md.contains("1000 / 10000 = 0.10"), "{md}");
    }

    #[test]
    fn the_report_is_stable() {
        insta::assert_snapshot!(markdown(&sample()));
    }
}
