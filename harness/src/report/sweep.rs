//! A load sweep's `report.md` and `summary.json`.

use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

use crate::metrics::SweepStep as Step;
use crate::scenario::Scenario;

/// Writes a sweep's report and summary. Saturation is a finding, not a
/// failure: the sweep succeeds when every step below saturation delivered
/// every message by its deadline, in order (past saturation the backlog may
/// outlast the deadline).
pub(crate) fn write(s: &Scenario, out: &Path, steps: &[Step]) -> Result<bool> {
    let all_delivered = steps.iter().all(|st| st.ok);
    let md = markdown(s, steps);
    std::fs::write(out.join("report.md"), &md)?;
    let json = serde_json::json!({ "scenario": s, "steps": steps, "all_delivered": all_delivered });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(all_delivered)
}

/// The sweep's table and each mode's highest delivered rate.
pub(crate) fn markdown(s: &Scenario, steps: &[Step]) -> String {
    let mut md = format!("# Load sweep `{}`\n\n{}\n\n", s.name, s.description.trim());
    md.push_str("| mode | offered msg/s | delivered msg/s | p50 µs | p99 µs | max µs | undelivered at deadline | saturated |\n|---|---|---|---|---|---|---|---|\n");
    for st in steps {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} |",
            st.mode.name(),
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
            mode.name(),
            best,
            match first_sat {
                Some(r) => format!("saturated from {r} msg/s offered"),
                None => "no saturation within the swept rates".into(),
            }
        );
    }
    md
}
