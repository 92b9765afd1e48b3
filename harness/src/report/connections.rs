//! The connections experiment's data, `report.md` and `summary.json`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::metrics::Percentiles;

/// What the experiment measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Connections {
    pub(crate) connections: usize,
    pub(crate) durability: &'static str,
    pub(crate) rate: f64,
    pub(crate) secs: f64,
    /// Server RSS with only the setup done, and with every connection
    /// authenticated and idle (KiB).
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_connected_kib: u64,
    /// (connected − before) / connections.
    pub(crate) kib_per_connection: f64,
    pub(crate) server_peak_rss_kib: Option<u64>,
    pub(crate) planned: u64,
    pub(crate) delivered: u64,
    /// Send to Deliver at the recipient (µs).
    pub(crate) latency_us: Percentiles,
    /// CPU seconds during the load, and per delivered message.
    pub(crate) server_cpu_secs: Option<f64>,
    pub(crate) server_cpu_us_per_msg: Option<f64>,
    pub(crate) generator_cpu_secs: Option<f64>,
    pub(crate) setup_secs: f64,
    /// The largest size of the server's WAL seen during the load (sampled
    /// every 100 ms), and the server's bound on it (bytes).
    pub(crate) wal_peak_bytes: u64,
    pub(crate) wal_bound_bytes: u64,
}

/// Writes `summary.json` and `report.md`.
pub(crate) fn write(out: &Path, c: &Connections) -> Result<()> {
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(c)?)?;
    std::fs::write(out.join("report.md"), markdown(c))?;
    Ok(())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// The report: memory per connection, then the load among them.
pub(crate) fn markdown(c: &Connections) -> String {
    let mut md = format!(
        "# {} authenticated connections on one server\n\n\
         Produced by `chatify-harness connections --count {} --rate {} --secs {} --durability {}`. \
         One child server (SQLite, durability `{}`); one account with {} devices logged in and \
         keys published; one WebSocket per device, authenticated, held open. Then an open-loop \
         load of {} msg/s for {} s, each device sending 256-byte envelopes to the next, each \
         delivery acknowledged as the reference client does. The generator is this process \
         (no E2EE: the server relays opaque envelopes).\n\n",
        c.connections,
        c.connections,
        c.rate,
        c.secs,
        c.durability,
        c.durability,
        c.connections,
        c.rate,
        c.secs
    );
    md.push_str("| figure | value |\n|---|---|\n");
    let rows = [
        ("server RSS after setup (KiB)", c.rss_before_kib.to_string()),
        (
            "server RSS, all connected and idle (KiB)",
            c.rss_connected_kib.to_string(),
        ),
        (
            "server memory per idle authenticated connection (KiB)",
            format!("{:.1}", c.kib_per_connection),
        ),
        (
            "server peak RSS (KiB)",
            c.server_peak_rss_kib.map_or("–".into(), |v| v.to_string()),
        ),
        (
            "messages planned / delivered",
            format!("{} / {}", c.planned, c.delivered),
        ),
        (
            "latency p50 / p99 / max (µs)",
            format!(
                "{} / {} / {}",
                c.latency_us.p50, c.latency_us.p99, c.latency_us.max
            ),
        ),
        ("server CPU during the load (s)", opt(c.server_cpu_secs, 2)),
        (
            "server CPU per delivered message (µs)",
            opt(c.server_cpu_us_per_msg, 1),
        ),
        (
            "generator CPU during the load (s)",
            opt(c.generator_cpu_secs, 2),
        ),
        (
            "setup: logins and connections (s)",
            format!("{:.1}", c.setup_secs),
        ),
        (
            "WAL: largest size seen during the load / the server's bound (MiB)",
            format!(
                "{:.1} / {:.0}",
                c.wal_peak_bytes as f64 / 1048576.0,
                c.wal_bound_bytes as f64 / 1048576.0
            ),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    md
}
