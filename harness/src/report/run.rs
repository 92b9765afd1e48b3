//! A scenario run's `summary.json` (machine-readable) and `report.md`
//! (for people), and the summary table printed at the end.

use anyhow::{Context as _, Result};
use std::fmt::Write as _;
use std::path::Path;

use crate::metrics::{Check, Outcome, Percentiles};
use crate::scenario::{Mode, Scenario, Verdict};

fn mode_label(m: Mode) -> &'static str {
    match m {
        Mode::E2ee => "e2ee",
        Mode::PlaintextBaseline => "plaintext-baseline (harness-only, no E2EE)",
        Mode::LeakyClientMutant => "LEAKY-CLIENT-MUTANT (harness-only)",
        Mode::LeakyServerLogMutant => "LEAKY-SERVER-LOG-MUTANT (harness-only)",
        Mode::CredentialsKeptMutant => "CREDENTIALS-KEPT-MUTANT (harness-only)",
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "FAIL",
        Verdict::Skipped => "skipped",
    }
}

fn row(name: &str, unit: &str, p: &Percentiles) -> String {
    format!(
        "| {name} ({unit}) | {} | {} | {} | {} | {} | {} |\n",
        p.count, p.p50, p.p90, p.p99, p.p999, p.max
    )
}

/// The metrics and checks as Markdown tables.
pub(crate) fn tables(o: &Outcome) -> String {
    let m = &o.metrics;
    let mut s = String::new();
    s.push_str(
        "| metric | count | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|\n",
    );
    s.push_str(&row("end-to-end latency", "µs", &m.latency_us));
    s.push_str(&row("client encrypt", "ns", &m.encrypt_ns));
    s.push_str(&row("client decrypt", "ns", &m.decrypt_ns));
    s.push_str(&row("session setup", "µs", &m.session_setup_us));
    s.push_str(&row("connect + auth", "µs", &m.connect_auth_us));
    let _ = writeln!(
        s,
        "\nOffered {:.1} msg/s; delivered {} of {} in {:.2} s: **{:.1} msg/s**, {:.0} B/s of plaintext. \
         Redeliveries dropped: {}; rejected: {}; send failures: {}; reconnects: {}; \
         server restarts: {} ({} by SIGKILL).",
        m.offered_rate,
        m.delivered,
        m.planned,
        m.wall_secs,
        m.throughput_msgs,
        m.throughput_bytes,
        m.duplicates_dropped,
        m.rejected,
        m.send_failures,
        m.reconnects,
        m.server_restarts,
        m.server_kills
    );
    if let (Some(cpu), Some(rss)) = (m.server_cpu_secs, m.server_peak_rss_kib) {
        let _ = writeln!(
            s,
            "Server process: {cpu:.2} s CPU ({:.1} µs per delivered message), peak RSS {} KiB.",
            m.server_cpu_us_per_msg.unwrap_or(0.0),
            rss
        );
    }
    s.push('\n');
    s.push_str(&check_table(&o.checks));
    s
}

/// The checks as a Markdown table.
pub(crate) fn check_table(checks: &[Check]) -> String {
    let mut s = String::from("| check | verdict | expected | evidence |\n|---|---|---|---|\n");
    for c in checks {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.name,
            verdict(c.verdict),
            verdict(c.expected),
            c.evidence.replace('|', "\\|")
        );
    }
    s
}

/// The checks a line each, for the terminal (`!` marks one not as expected).
pub(crate) fn check_lines(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let mark = if c.as_expected() { " " } else { "!" };
        let _ = writeln!(
            s,
            "{mark} {:<22} {:<8} (expected {:<7}) {}",
            c.name,
            verdict(c.verdict),
            verdict(c.expected),
            c.evidence
        );
    }
    s
}

/// Writes `summary.json` and `report.md` for one run.
pub(crate) fn write_run(out: &Path, s: &Scenario, o: &Outcome) -> Result<()> {
    let summary = serde_json::json!({
        "scenario": s,
        "mode": o.mode,
        "as_expected": o.as_expected(),
        "expected_failure_reason": s.expect.reason,
        "metrics": o.metrics,
        "checks": o.checks,
        "taps": o.taps,
    });
    let json = serde_json::to_string_pretty(&summary)?;
    std::fs::write(out.join("summary.json"), json).with_context(|| out.display().to_string())?;
    let mut md = format!("# Scenario `{}`\n\n{}\n\n", s.name, s.description.trim());
    let _ = writeln!(
        md,
        "Mode: **{}**. Server: {:?}, {} users, {:?} graph, {} messages at {} msg/s ({:?} arrivals), sizes {}–{} B.\n",
        mode_label(o.mode),
        s.topology.server,
        s.users.count,
        s.conversations.graph,
        s.workload.messages,
        s.workload.rate,
        s.workload.arrival,
        s.workload.size[0],
        s.workload.size[1]
    );
    if let Some(reason) = &s.expect.reason {
        let _ = writeln!(md, "**Expected failure:** {reason}\n");
    }
    let _ = writeln!(
        md,
        "Outcome: **{}**.\n",
        if o.as_expected() {
            "as expected"
        } else {
            "NOT as expected"
        }
    );
    md.push_str(&tables(o));
    std::fs::write(out.join("report.md"), md).with_context(|| out.display().to_string())
}

/// The end-of-run summary for the terminal.
pub(crate) fn summary(o: &Outcome) -> String {
    let m = &o.metrics;
    let mut s = format!(
        "{} [{}]: delivered {}/{} at {:.1} msg/s; latency p50 {} µs, p99 {} µs, max {} µs\n",
        o.scenario,
        mode_label(o.mode),
        m.delivered,
        m.planned,
        m.throughput_msgs,
        m.latency_us.p50,
        m.latency_us.p99,
        m.latency_us.max
    );
    s.push_str(&check_lines(&o.checks));
    s
}
