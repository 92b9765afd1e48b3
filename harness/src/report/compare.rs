//! What `compare` measured, as plain data: each system's steps, its
//! summary over repetitions and the targets; its `report.md` and figure,
//! and the redraw from `summary.json` (`compare --replot`).

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::metrics::stats::Spread;
use crate::scenario::{Scenario, System};

/// One measured step of one system.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Step {
    pub(crate) system: System,
    pub(crate) repetition: u32,
    pub(crate) rate: f64,
    pub(crate) delivered_rate: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
    /// Client encrypt + decrypt, p50 of each, summed (ns).
    pub(crate) crypto_p50_ns: u64,
    pub(crate) server_cpu_us_per_msg: Option<f64>,
    pub(crate) server_peak_rss_kib: Option<u64>,
    pub(crate) lost: u64,
    pub(crate) saturated: bool,
    /// Every message delivered once and in order (or the step saturated).
    pub(crate) ok: bool,
}

/// One system's figures over the repetitions.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct SystemSummary {
    /// Highest delivered rate of each repetition (msg/s).
    pub(crate) saturation_msgs: Spread,
    /// At the equal offered load.
    pub(crate) p50_us: Spread,
    pub(crate) p99_us: Spread,
    pub(crate) server_cpu_us_per_msg: Spread,
    pub(crate) crypto_p50_us: Spread,
    pub(crate) server_peak_rss_kib: Spread,
}

/// A target of the benchmarks issue, checked on this run's figures.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) measured: String,
    pub(crate) bound: String,
    pub(crate) met: Option<bool>,
}

/// Everything a comparison measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Comparison {
    pub(crate) scenario: Scenario,
    pub(crate) steps: Vec<Step>,
    pub(crate) systems: BTreeMap<String, SystemSummary>,
    pub(crate) targets: Vec<Target>,
    /// Every step below saturation delivered every message once, in order.
    pub(crate) all_delivered: bool,
}

/// Writes report.md and fig_compare.svg.
pub(crate) fn write(c: &Comparison, out: &Path) -> Result<()> {
    std::fs::write(out.join("report.md"), markdown(c))?;
    super::figures::compare(&out.join("fig_compare.svg"), c)
}

/// Re-renders report.md and fig_compare.svg from a comparison's summary.json.
pub(crate) fn replot(out: &Path) -> Result<Comparison> {
    let path = out.join("summary.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let c: Comparison = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    write(&c, out)?;
    Ok(c)
}

fn pm(s: Spread, digits: usize) -> String {
    if s.n == 0 {
        return "–".into();
    }
    format!("{:.digits$} ± {:.digits$}", s.mean, s.sd)
}

/// The comparison's `report.md`.
pub(crate) fn markdown(c: &Comparison) -> String {
    let s = &c.scenario;
    let Some(cmp) = &s.compare else {
        return String::new();
    };
    let mut md = format!("# Comparison `{}`\n\n{}\n\n", s.name, s.description.trim());
    let _ = writeln!(
        md,
        "{} users ({:?} graph), message sizes {:?} B, {:?} arrivals; {} repetitions, system order rotated each time; {} s of load per step; saturation when less than {:.0}% of the offered rate is delivered or p99 exceeds {} ms. Mean ± sample standard deviation over repetitions.\n",
        s.users.count,
        s.conversations.graph,
        s.workload.size,
        s.workload.arrival,
        cmp.repetitions,
        cmp.step_secs,
        cmp.saturation_fraction * 100.0,
        cmp.saturation_p99_ms,
    );
    let _ = writeln!(
        md,
        "| system | a sender waits for | saturation msg/s | p50 µs at {r} msg/s | p99 µs at {r} msg/s | server CPU µs/msg at {r} msg/s | client enc+dec p50 µs | server peak RSS MiB |\n|---|---|---|---|---|---|---|---|",
        r = cmp.equal_load_rate
    );
    for system in &cmp.systems {
        if let Some(x) = c.systems.get(system.name()) {
            let rss = Spread {
                mean: x.server_peak_rss_kib.mean / 1024.0,
                sd: x.server_peak_rss_kib.sd / 1024.0,
                n: x.server_peak_rss_kib.n,
                median: x.server_peak_rss_kib.median / 1024.0,
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                system.name(),
                waits_for(system.name()),
                pm(x.saturation_msgs, 0),
                pm(x.p50_us, 0),
                pm(x.p99_us, 0),
                pm(x.server_cpu_us_per_msg, 1),
                pm(x.crypto_p50_us, 1),
                pm(rss, 1),
            );
        }
    }
    md.push_str(
        "\nThe systems do not acknowledge alike: a Chatify client sends its next message once the server \
         has stored the last one (`SendOk`, durable), and acknowledges what it receives; the floor's and \
         Socket.io's clients send without waiting and acknowledge nothing, and their relays store nothing. \
         Saturation here is therefore the end-to-end view of each stack as its clients use it. For the \
         servers side by side on one open-loop generator, see `chatify-harness capacity` \
         (reports/capacity/). No wire-tap relay stands between clients and server in these runs (the leak \
         taps are off: `reproduce` and the scenarios check leaks).\n",
    );
    md.push_str("\n## Targets\n\n| target | measured | bound | met |\n|---|---|---|---|\n");
    for t in &c.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.name,
            t.measured,
            t.bound,
            match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    md.push_str("\n## Steps\n\n| repetition | system | offered msg/s | delivered msg/s | p50 µs | p99 µs | max µs | server CPU µs/msg | undelivered at deadline | saturated | delivery checks |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for st in &c.steps {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            st.repetition + 1,
            st.system.name(),
            st.rate,
            st.delivered_rate,
            st.p50_us,
            st.p99_us,
            st.max_us,
            st.server_cpu_us_per_msg
                .map_or("–".into(), |c| format!("{c:.1}")),
            st.lost,
            if st.saturated { "yes" } else { "no" },
            if st.ok { "pass" } else { "FAIL" },
        );
    }
    md.push_str(
        "\nchatify and chatify-plaintext are the reference client and server (SQLite mailbox, \
         acknowledged delivery, client state persisted before each send); floor and socketio \
         relay the same E2EE envelopes between load-generator clients that hold chatify-core \
         sessions in memory and persist nothing. All clients share the machine with the server.\n",
    );
    md
}

/// What a sender of `system` waits for before its next message.
fn waits_for(system: &str) -> &'static str {
    match system {
        "chatify" | "chatify-plaintext" => "SendOk (stored)",
        _ => "nothing",
    }
}
