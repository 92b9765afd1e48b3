//! Load sweeps: the workload at increasing offered rates, in each mode,
//! until saturation.

use std::fmt::Write as _;
use std::path::Path;

use crate::runner::{self, Outcome};
use crate::scenario::{Mode, Scenario, Taps};

/// One measured step.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Step {
    pub(crate) mode: Mode,
    pub(crate) rate: f64,
    pub(crate) delivered_rate: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
    pub(crate) lost: u64,
    pub(crate) saturated: bool,
    /// Delivered everything (or saturated) and in order.
    pub(crate) ok: bool,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::E2ee => "e2ee",
        Mode::PlaintextBaseline => "plaintext-baseline",
        Mode::LeakyClientMutant => "leaky-client-mutant",
        Mode::LeakyServerLogMutant => "leaky-server-log-mutant",
        Mode::CredentialsKeptMutant => "credentials-kept-mutant",
    }
}

/// Runs every step and writes the report. Saturation is a finding, not a
/// failure: the sweep succeeds when every step below saturation delivered
/// every message by its deadline, in order (past saturation the backlog may
/// outlast the deadline).
pub(crate) async fn run(s: &Scenario, out: &Path, show: bool) -> Result<bool, String> {
    let steps = steps(s, out, show).await?;
    let all_delivered = steps.iter().all(|st| st.ok);
    let md = markdown(s, &steps);
    std::fs::write(out.join("report.md"), &md).map_err(|e| e.to_string())?;
    let json = serde_json::json!({ "scenario": s, "steps": steps, "all_delivered": all_delivered });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    print!("{md}");
    Ok(all_delivered)
}

/// Runs every step of a sweep scenario.
pub(crate) async fn steps(s: &Scenario, out: &Path, show: bool) -> Result<Vec<Step>, String> {
    let Some(sweep) = &s.sweep else {
        return Err("not a sweep".into());
    };
    let mut steps = Vec::new();
    // Saturated steps per mode. A mode is pushed one step past its first
    // saturated one: a transient stall (a slow fsync, a scheduling hiccup)
    // can flag one step, and capacity is the highest rate delivered, not
    // the rate at which the first stall happened.
    let mut saturated_steps: Vec<(Mode, u32)> = Vec::new();
    let count =
        |v: &[(Mode, u32)], mode: Mode| v.iter().find(|(m, _)| *m == mode).map_or(0, |(_, n)| *n);
    for &rate in &sweep.rates {
        // Interleave modes at each rate so that drift in the machine affects
        // both; a mode saturated at two steps is not pushed further.
        for &mode in &sweep.modes {
            if count(&saturated_steps, mode) >= 2 {
                continue;
            }
            let name = format!("{}-{}-{rate}", s.name, mode_name(mode));
            let step = step_scenario(s, name, mode, rate, sweep.step_secs);
            let dir = out.join("steps").join(&step.name);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            eprintln!(
                "step: {} at {rate} msg/s ({} messages)",
                mode_name(mode),
                step.workload.messages
            );
            let o: Outcome = runner::run(&step, &dir, show).await?;
            let m = &o.metrics;
            let lost = m.planned.saturating_sub(m.delivered);
            let saturated =
                is_saturated(m, rate, sweep.saturation_fraction, sweep.saturation_p99_ms);
            if saturated {
                match saturated_steps.iter_mut().find(|(m, _)| *m == mode) {
                    Some((_, n)) => *n += 1,
                    None => saturated_steps.push((mode, 1)),
                }
            }
            steps.push(Step {
                mode,
                rate,
                delivered_rate: m.throughput_msgs,
                p50_us: m.latency_us.p50,
                p99_us: m.latency_us.p99,
                max_us: m.latency_us.max,
                lost,
                saturated,
                ok: step_ok(&o, saturated),
            });
            let _ = std::fs::remove_dir_all(dir.join("data"));
            let _ = std::fs::remove_dir_all(dir.join("clients"));
        }
    }
    Ok(steps)
}

/// One step of a sweep or a comparison: the scenario's workload at `rate`
/// for `secs` seconds, in `mode`, with the taps off (they are not what a
/// load step measures, and the plaintext baseline fails them by design).
pub(crate) fn step_scenario(
    s: &Scenario,
    name: String,
    mode: Mode,
    rate: f64,
    secs: f64,
) -> Scenario {
    let mut step = s.clone();
    step.sweep = None;
    step.compare = None;
    step.name = name;
    step.workload.mode = mode;
    step.workload.rate = rate;
    step.workload.messages = ((rate * secs).round() as u64).max(1);
    step.taps = Taps {
        wire: false,
        store: false,
        logs: false,
        memory: false,
    };
    step
}

/// A step is saturated when it delivered less than `fraction` of the
/// offered rate or its p99 exceeded `p99_ms`.
pub(crate) fn is_saturated(m: &runner::Metrics, rate: f64, fraction: f64, p99_ms: f64) -> bool {
    m.throughput_msgs < fraction * rate || (m.latency_us.p99 as f64) > p99_ms * 1000.0
}

/// Below saturation every message arrived once and in order; past it the
/// backlog may outlast the deadline, so only order is asked of it.
pub(crate) fn step_ok(o: &Outcome, saturated: bool) -> bool {
    let pass = |name: &str| {
        o.checks
            .iter()
            .find(|c| c.name == name)
            .is_some_and(|c| c.verdict == crate::scenario::Verdict::Pass)
    };
    pass("delivery.order") && (saturated || pass("delivery.exactly-once"))
}

fn markdown(s: &Scenario, steps: &[Step]) -> String {
    let mut md = format!("# Load sweep `{}`\n\n{}\n\n", s.name, s.description.trim());
    md.push_str("| mode | offered msg/s | delivered msg/s | p50 µs | p99 µs | max µs | undelivered at deadline | saturated |\n|---|---|---|---|---|---|---|---|\n");
    for st in steps {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} |",
            mode_name(st.mode),
            st.rate,
            st.delivered_rate,
            st.p50_us,
            st.p99_us,
            st.max_us,
            st.lost,
            if st.saturated { "yes" } else { "no" }
        );
    }
    md.push('\n');
    for mode in s
        .sweep
        .as_ref()
        .map(|w| w.modes.clone())
        .unwrap_or_default()
    {
        let mine: Vec<&Step> = steps.iter().filter(|st| st.mode == mode).collect();
        let best = mine.iter().map(|st| st.delivered_rate).fold(0.0, f64::max);
        let first_sat = mine.iter().find(|st| st.saturated).map(|st| st.rate);
        let _ = writeln!(
            md,
            "- {}: highest delivered rate {:.1} msg/s; {}",
            mode_name(mode),
            best,
            match first_sat {
                Some(r) => format!("saturated from {r} msg/s offered"),
                None => "no saturation within the swept rates".into(),
            }
        );
    }
    md
}
