//! The measurements of a run and the properties checked on them.
//!
//! Owns the delivery ledger (what reached whom, once, in order), the
//! histograms (hdrhistogram, µs or ns) and their percentiles and CDF points,
//! a run's [`Metrics`], [`Check`]s and [`Outcome`], and the one statistics
//! helper of the harness ([`stats::Spread`]: mean ± sd over repetitions).
//! Plain data and arithmetic: it starts nothing and writes nothing.

use anyhow::Result;
use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;

use crate::scenario::{Mode, Verdict};
use crate::taps::TapResult;

pub(crate) mod stats;

/// What reached whom: the bookkeeping behind the delivery checks.
pub(crate) struct Ledger {
    /// Planned recipient of each (sender, n).
    recipient_of: HashMap<(usize, u64), usize>,
    /// Times each (sender, n) reached an application.
    count: HashMap<(usize, u64), u32>,
    /// Last n seen per (recipient, sender).
    last_n: HashMap<(usize, usize), u64>,
    misdelivered: u64,
    out_of_order: u64,
    /// Deliveries whose plaintext names no planned message.
    pub(crate) unknown: u64,
}

impl Ledger {
    pub(crate) fn new(plan: impl IntoIterator<Item = (usize, u64, usize)>) -> Self {
        Ledger {
            recipient_of: plan.into_iter().map(|(s, n, r)| ((s, n), r)).collect(),
            count: HashMap::new(),
            last_n: HashMap::new(),
            misdelivered: 0,
            out_of_order: 0,
            unknown: 0,
        }
    }

    /// Message `n` of `sender` reached `recipient`'s application.
    pub(crate) fn delivered(&mut self, recipient: usize, sender: usize, n: u64) {
        *self.count.entry((sender, n)).or_default() += 1;
        if self.recipient_of.get(&(sender, n)) != Some(&recipient) {
            self.misdelivered += 1;
        }
        if self
            .last_n
            .insert((recipient, sender), n)
            .is_some_and(|prev| prev >= n)
        {
            self.out_of_order += 1;
        }
    }

    /// Every planned message reached its recipient once, and nothing else arrived.
    pub(crate) fn exactly_once(&self) -> (Verdict, String) {
        let lost = self
            .recipient_of
            .keys()
            .filter(|k| !self.count.contains_key(k))
            .count();
        let twice = self.count.values().filter(|c| **c > 1).count();
        let delivered: u32 = self.count.values().sum();
        let ok = lost == 0 && twice == 0 && self.misdelivered == 0 && self.unknown == 0;
        (
            if ok { Verdict::Pass } else { Verdict::Fail },
            format!(
                "{} planned, {delivered} delivered; {lost} lost, {twice} shown twice, {} misdelivered, {} unknown",
                self.recipient_of.len(),
                self.misdelivered,
                self.unknown
            ),
        )
    }

    /// Each sender's messages reached each recipient in order.
    pub(crate) fn in_order(&self) -> (Verdict, String) {
        (
            if self.out_of_order == 0 {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            format!(
                "{} out-of-order deliveries per (sender, recipient)",
                self.out_of_order
            ),
        )
    }
}

/// Percentiles of one histogram, in its unit.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Every measurement of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Metrics {
    pub(crate) offered_rate: f64,
    pub(crate) planned: u64,
    pub(crate) delivered: u64,
    pub(crate) duplicates_dropped: u64,
    pub(crate) rejected: u64,
    pub(crate) send_failures: u64,
    pub(crate) reconnects: u64,
    /// Server restarts performed during the workload, and how many were kills.
    pub(crate) server_restarts: u64,
    pub(crate) server_kills: u64,
    /// Delivered messages per second, first intended send to last delivery.
    pub(crate) throughput_msgs: f64,
    /// Delivered plaintext bytes per second.
    pub(crate) throughput_bytes: f64,
    pub(crate) wall_secs: f64,
    /// End to end, intended send time to decrypted at the recipient (µs).
    pub(crate) latency_us: Percentiles,
    /// The same distribution as (quantile, µs) points, for CDF plots.
    pub(crate) latency_cdf: Vec<(f64, u64)>,
    /// Client encryption per message (ns).
    pub(crate) encrypt_ns: Percentiles,
    /// Client decryption per message (ns).
    pub(crate) decrypt_ns: Percentiles,
    /// Session setup: bundle fetch, verification, X3DH (µs).
    pub(crate) session_setup_us: Percentiles,
    /// Connect and authenticate (µs).
    pub(crate) connect_auth_us: Percentiles,
    /// Server process CPU seconds during the workload (child servers).
    pub(crate) server_cpu_secs: Option<f64>,
    /// Server CPU per delivered message (µs, child servers).
    pub(crate) server_cpu_us_per_msg: Option<f64>,
    /// Server peak resident memory (KiB, child servers).
    pub(crate) server_peak_rss_kib: Option<u64>,
    /// With server-side faults: the longest any delivery arrived after it
    /// was due (its send, or the end of the fault that held it up), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) catch_up_ms: Option<f64>,
}

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) verdict: Verdict,
    pub(crate) expected: Verdict,
    pub(crate) evidence: String,
}

impl Check {
    /// A check that passes when `ok`, expected as the scenario `s` says.
    pub(crate) fn judged(
        s: &crate::scenario::Scenario,
        name: &'static str,
        ok: bool,
        evidence: String,
    ) -> Check {
        Check {
            name,
            verdict: if ok { Verdict::Pass } else { Verdict::Fail },
            expected: s.expected(name),
            evidence,
        }
    }

    /// Whether the verdict is what the scenario expects (a skipped check
    /// matches any expectation of passing).
    pub(crate) fn as_expected(&self) -> bool {
        self.verdict == self.expected
            || (self.verdict == Verdict::Skipped && self.expected == Verdict::Pass)
    }
}

/// The result of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Outcome {
    pub(crate) scenario: String,
    pub(crate) mode: Mode,
    pub(crate) metrics: Metrics,
    pub(crate) checks: Vec<Check>,
    pub(crate) taps: BTreeMap<&'static str, TapResult>,
}

impl Outcome {
    pub(crate) fn as_expected(&self) -> bool {
        self.checks.iter().all(Check::as_expected)
    }
}

/// Largest value recorded (one hour in ns); larger values are clamped.
const HIST_MAX: u64 = 3_600_000_000_000;

#[allow(clippy::expect_used)]
pub(crate) fn hist() -> Histogram<u64> {
    // Constant bounds (1 ≤ low, high ≥ 2·low, 3 significant figures) are
    // valid, so construction cannot fail.
    Histogram::new_with_bounds(1, HIST_MAX, 3).expect("valid histogram bounds")
}

/// Quantiles for CDF plots: dense at the tail.
const CDF_QUANTILES: &[f64] = &[
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999,
    0.9995, 0.9999, 1.0,
];

pub(crate) fn cdf(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_QUANTILES
        .iter()
        .map(|q| (*q, h.value_at_quantile(*q)))
        .collect()
}

pub(crate) fn record(h: &mut Histogram<u64>, v: u128) {
    let v = u64::try_from(v).unwrap_or(u64::MAX).clamp(1, HIST_MAX);
    let _ = h.record(v);
}

/// What a tap returned: what it found, or why it could not look.
pub(crate) type TapOutcome = Result<TapResult>;

/// The verdict on one leak tap: skipped when it did not run, failed when it
/// could not look or saw no bytes (it then checked nothing), passed only
/// when it searched bytes and found no canary, plaintext window or secret.
pub(crate) fn leak_check(
    name: &'static str,
    expected: Verdict,
    result: Option<&TapOutcome>,
) -> Check {
    let (verdict, evidence) = match result {
        None => (Verdict::Skipped, "tap not run".to_owned()),
        Some(Err(e)) => (Verdict::Fail, format!("tap failed: {e:#}")),
        Some(Ok(r)) if r.bytes == 0 => (
            Verdict::Fail,
            "tap saw no bytes: it cannot have checked anything".to_owned(),
        ),
        Some(Ok(r)) if r.matches == 0 => (
            Verdict::Pass,
            format!("{} bytes searched, no canary or plaintext window", r.bytes),
        ),
        Some(Ok(r)) => (
            Verdict::Fail,
            format!(
                "{} matches in {} bytes, e.g. {}",
                r.matches,
                r.bytes,
                r.hits
                    .iter()
                    .take(3)
                    .map(|h| format!("{} at {} ({})", h.place, h.offset, h.form))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    };
    Check {
        name,
        verdict,
        expected,
        evidence,
    }
}

/// One measured step of a load sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SweepStep {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two senders, two messages each, to user 2.
    fn ledger() -> Ledger {
        Ledger::new([(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)])
    }

    #[test]
    fn a_clean_run_passes_both_checks() {
        let mut l = ledger();
        for (s, n) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            l.delivered(2, s, n);
        }
        assert_eq!(l.exactly_once().0, Verdict::Pass, "{}", l.exactly_once().1);
        assert_eq!(l.in_order().0, Verdict::Pass);
    }

    /// Each way a delivery can go wrong fails the check meant to see it.
    #[test]
    fn lost_duplicated_misdelivered_unknown_and_reordered_are_caught() {
        let mut lost = ledger();
        for (s, n) in [(0, 0), (0, 1), (1, 0)] {
            lost.delivered(2, s, n);
        }
        assert_eq!(lost.exactly_once().0, Verdict::Fail);
        assert!(lost.exactly_once().1.contains("1 lost"));

        let mut twice = ledger();
        for (s, n) in [(0, 0), (0, 1), (1, 0), (1, 1), (1, 1)] {
            twice.delivered(2, s, n);
        }
        assert_eq!(twice.exactly_once().0, Verdict::Fail);
        assert!(twice.exactly_once().1.contains("1 shown twice"));

        let mut elsewhere = ledger();
        for (s, n) in [(0, 0), (0, 1), (1, 0)] {
            elsewhere.delivered(2, s, n);
        }
        elsewhere.delivered(3, 1, 1);
        assert_eq!(elsewhere.exactly_once().0, Verdict::Fail);
        assert!(elsewhere.exactly_once().1.contains("1 misdelivered"));

        let mut unknown = ledger();
        for (s, n) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            unknown.delivered(2, s, n);
        }
        unknown.unknown += 1;
        assert_eq!(unknown.exactly_once().0, Verdict::Fail);

        let mut reordered = ledger();
        for (s, n) in [(0, 1), (0, 0), (1, 0), (1, 1)] {
            reordered.delivered(2, s, n);
        }
        assert_eq!(reordered.exactly_once().0, Verdict::Pass);
        assert_eq!(reordered.in_order().0, Verdict::Fail);
    }
}
