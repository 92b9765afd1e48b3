//! The figures of a file-transfer run: per size, the transfer times, the
//! throughput they give and the processes' peak memory.

use std::collections::BTreeMap;

use crate::metrics::Check;
use crate::taps::TapResult;

/// One file moved.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Transfer {
    pub(crate) size: u64,
    /// `chatify send-file`, start to exit (ms).
    pub(crate) send_ms: f64,
    /// `chatify inbox`, start to the line saying the file was saved (ms).
    pub(crate) receive_ms: f64,
    pub(crate) sender: Peaks,
    pub(crate) receiver: Peaks,
    pub(crate) intact: bool,
}

/// The latency of a chat (a message every 50 ms, send to decrypted) on the
/// same server, without files moving and while they move.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct ChatLatency {
    pub(crate) quiet: usize,
    pub(crate) quiet_p50_ms: f64,
    pub(crate) quiet_p99_ms: f64,
    pub(crate) moving: usize,
    pub(crate) moving_p50_ms: f64,
    pub(crate) moving_p99_ms: f64,
}

/// What a file-transfer run measured and found.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct FilesOutcome {
    pub(crate) transfers: Vec<Transfer>,
    /// The same for the smallest process that does nothing (`chatify
    /// inbox` with nothing waiting): what start-up and unlocking the home
    /// cost every transfer above (ms and KiB).
    pub(crate) idle_ms: f64,
    pub(crate) idle_peak_kib: u64,
    pub(crate) server_peak_kib: u64,
    /// Chat beside the transfers.
    pub(crate) chat: ChatLatency,
    pub(crate) taps: Vec<(String, TapResult)>,
    pub(crate) checks: Vec<Check>,
}

impl FilesOutcome {
    pub(crate) fn as_expected(&self) -> bool {
        self.checks.iter().all(Check::as_expected)
    }
}

/// A process's peak resident memory (KiB): over its whole life, and
/// sampled while the file moves (from its first progress report).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Peaks {
    pub(crate) whole: u64,
    pub(crate) moving: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Megabytes (10⁶ bytes) per second of `size` bytes in `ms`.
fn mb_per_s(size: u64, ms: f64) -> f64 {
    size as f64 / 1e6 / (ms / 1000.0)
}

/// The run's table, in Markdown.
pub(crate) fn table(o: &FilesOutcome) -> String {
    let mut by_size: BTreeMap<u64, Vec<&Transfer>> = BTreeMap::new();
    for t in &o.transfers {
        by_size.entry(t.size).or_default().push(t);
    }
    let mut out = String::from(
        "| file size | files | send ms (p50) | receive ms (p50) | upload MB/s | download MB/s | sender MiB while moving | receiver MiB while moving |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (size, ts) in &by_size {
        let send = median(ts.iter().map(|t| t.send_ms).collect());
        let receive = median(ts.iter().map(|t| t.receive_ms).collect());
        let peak =
            |f: fn(&Transfer) -> u64| ts.iter().map(|t| f(t)).max().unwrap_or(0) as f64 / 1024.0;
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            human(*size),
            ts.len(),
            send,
            receive,
            mb_per_s(*size, send),
            mb_per_s(*size, receive),
            peak(|t| t.sender.moving),
            peak(|t| t.receiver.moving),
        ));
    }
    out.push_str(&format!(
        "\nEach time is a whole `chatify` process: start-up, unlocking the home (an idle `chatify inbox` takes {:.0} ms and peaks at {:.1} MiB, the key derivation's memory), the transfer. \
         A process's memory while moving is the most resident memory sampled (every 5 ms) from its first progress report to its end. \
         Receive times run to the line saying the file was saved (fetched, opened, named). \
         The server's peak resident memory over the run: {:.1} MiB.\n\n\
         A chat on the same server (a message every 50 ms, send to decrypted): p50 {:.1} ms, p99 {:.1} ms over {} messages while files moved; \
         p50 {:.1} ms, p99 {:.1} ms over {} between transfers (while the harness searches what was stored).\n\n",
        o.idle_ms,
        o.idle_peak_kib as f64 / 1024.0,
        o.server_peak_kib as f64 / 1024.0,
        o.chat.moving_p50_ms,
        o.chat.moving_p99_ms,
        o.chat.moving,
        o.chat.quiet_p50_ms,
        o.chat.quiet_p99_ms,
        o.chat.quiet
    ));
    out
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
