//! Load sweeps: the workload at increasing offered rates, in each mode,
//! until saturation (the report is [`crate::report::sweep`]).

use anyhow::{Result, bail};
use std::path::Path;

use super::run::run;
use crate::metrics::{Metrics, Outcome, SweepStep as Step};
use crate::scenario::{Mode, Scenario, Taps};

/// Runs every step of a sweep scenario.
pub(crate) async fn steps(s: &Scenario, out: &Path, show: bool) -> Result<Vec<Step>> {
    let Some(sweep) = &s.sweep else {
        bail!("not a sweep");
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
            let name = format!("{}-{}-{rate}", s.name, mode.name());
            let step = step_scenario(s, name, mode, rate, sweep.step_secs);
            let dir = out.join("steps").join(&step.name);
            std::fs::create_dir_all(&dir)?;
            eprintln!(
                "step: {} at {rate} msg/s ({} messages)",
                mode.name(),
                step.workload.messages
            );
            let o: Outcome = run(&step, &dir, show).await?;
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
pub(crate) fn is_saturated(m: &Metrics, rate: f64, fraction: f64, p99_ms: f64) -> bool {
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
