//! From records to measurements: the tally folds what the user tasks report
//! into histograms, the delivery ledger and the two delivery checks.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::schedule::{Planned, Record};
use crate::metrics::{Check, Ledger, Metrics, Percentiles, cdf, hist, record};
use crate::scenario::{Scenario, Verdict};

/// Turns the records of a run into metrics and the delivery checks.
pub(crate) struct Tally {
    start: Instant,
    metrics: Metrics,
    latency: Histogram<u64>,
    encrypt: Histogram<u64>,
    decrypt: Histogram<u64>,
    setup: Histogram<u64>,
    connect_auth: Histogram<u64>,
    ledger: Ledger,
    rejected_reasons: Vec<String>,
    send_errors: Vec<String>,
    last_delivery: Instant,
    bytes: u64,
    /// Each delivery's intended send time and arrival.
    deliveries: Vec<(Instant, Instant)>,
}

/// The longest any delivery `(sent, arrived)` arrived after it was due
/// (its send, or the end of the last fault window that began before it
/// arrived), and which delivery that was.
fn latest_after_due(
    deliveries: &[(Instant, Instant)],
    windows: &[(Instant, Instant)],
) -> (Duration, Option<(Instant, Instant)>) {
    let mut worst = (Duration::ZERO, None);
    for &(sent, at) in deliveries {
        let fault_end = windows
            .iter()
            .filter(|(from, _)| *from <= at)
            .map(|(_, end)| *end)
            .max();
        let due = fault_end.map_or(sent, |end| end.max(sent));
        let lag = at.saturating_duration_since(due);
        if lag > worst.0 {
            worst = (lag, Some((sent, at)));
        }
    }
    worst
}

/// How soon after a server-side fault ends every online device must have
/// caught up (what was sent before and during it delivered).
pub(crate) const CATCH_UP_BOUND: Duration = Duration::from_secs(5);

impl Tally {
    pub(crate) fn new(
        s: &Scenario,
        plan: &[Planned],
        start: Instant,
        connect_auth: Histogram<u64>,
    ) -> Self {
        Tally {
            start,
            metrics: Metrics {
                offered_rate: s.workload.rate,
                planned: plan.len() as u64,
                ..Metrics::default()
            },
            latency: hist(),
            encrypt: hist(),
            decrypt: hist(),
            setup: hist(),
            connect_auth,
            ledger: Ledger::new(plan.iter().map(|p| (p.sender, p.n, p.recipient))),
            rejected_reasons: Vec::new(),
            send_errors: Vec::new(),
            last_delivery: start,
            bytes: 0,
            deliveries: Vec::with_capacity(plan.len()),
        }
    }

    pub(crate) fn add(&mut self, r: Record, progress: &Progress) {
        let m = &mut self.metrics;
        match r {
            Record::Delivered {
                recipient,
                sender,
                n,
                latency,
                decrypt,
                bytes,
                at,
            } => {
                record(&mut self.latency, latency.as_micros());
                if let Some(d) = decrypt {
                    record(&mut self.decrypt, d.as_nanos());
                }
                self.ledger.delivered(recipient, sender, n);
                self.bytes += bytes as u64;
                self.last_delivery = self.last_delivery.max(at);
                self.deliveries
                    .push((at.checked_sub(latency).unwrap_or(at), at));
                m.delivered += 1;
                progress.bar.inc(1);
            }
            Record::Duplicate => m.duplicates_dropped += 1,
            Record::Rejected(reason) => {
                m.rejected += 1;
                if self.rejected_reasons.len() < 5 {
                    self.rejected_reasons.push(reason);
                }
            }
            Record::Unknown => self.ledger.unknown += 1,
            Record::Sent { encrypt, setup } => {
                if let Some(e) = encrypt {
                    record(&mut self.encrypt, e.as_nanos());
                }
                if let Some(st) = setup {
                    record(&mut self.setup, st.as_micros());
                }
            }
            Record::SendFailed(e) => {
                m.send_failures += 1;
                if self.send_errors.len() < 5 {
                    self.send_errors.push(e);
                }
            }
            Record::ConnectAuth(d) => record(&mut self.connect_auth, d.as_micros()),
            Record::Reconnected => m.reconnects += 1,
        }
    }

    /// `delivery.catch-up`: every delivery arrived within
    /// [`CATCH_UP_BOUND`] of the later of its send and the end of the last
    /// fault that began before it arrived. A message held up by a fault
    /// counts from the fault's end; one sent after it, from its send.
    pub(crate) fn catch_up(&self, s: &Scenario, windows: &[(Instant, Instant)]) -> (Check, f64) {
        let worst = latest_after_due(&self.deliveries, windows);
        let ok = worst.0 <= CATCH_UP_BOUND;
        let evidence = match worst.1 {
            Some((sent, at)) => format!(
                "{} deliveries, {} faults: the latest arrived {:.2} s after it was due \
                 (sent at {:.2} s, arrived at {:.2} s; bound {} s)",
                self.deliveries.len(),
                windows.len(),
                worst.0.as_secs_f64(),
                sent.saturating_duration_since(self.start).as_secs_f64(),
                at.saturating_duration_since(self.start).as_secs_f64(),
                CATCH_UP_BOUND.as_secs()
            ),
            None => format!(
                "{} deliveries, {} faults: none arrived after it was due",
                self.deliveries.len(),
                windows.len()
            ),
        };
        let check = Check {
            name: "delivery.catch-up",
            verdict: if ok { Verdict::Pass } else { Verdict::Fail },
            expected: s.expected("delivery.catch-up"),
            evidence,
        };
        (check, worst.0.as_secs_f64() * 1000.0)
    }

    /// The metrics, and the two delivery checks. `cpu_before`/`cpu_after`
    /// are the server process's CPU seconds around the workload.
    pub(crate) fn finish(
        self,
        s: &Scenario,
        cpu_before: Option<f64>,
        cpu_after: Option<f64>,
    ) -> (Metrics, Vec<Check>) {
        let mut metrics = self.metrics;
        let wall = self
            .last_delivery
            .saturating_duration_since(self.start)
            .as_secs_f64()
            .max(1e-9);
        metrics.wall_secs = wall;
        metrics.throughput_msgs = metrics.delivered as f64 / wall;
        metrics.throughput_bytes = self.bytes as f64 / wall;
        metrics.latency_us = Percentiles::of(&self.latency);
        metrics.latency_cdf = cdf(&self.latency);
        metrics.encrypt_ns = Percentiles::of(&self.encrypt);
        metrics.decrypt_ns = Percentiles::of(&self.decrypt);
        metrics.session_setup_us = Percentiles::of(&self.setup);
        metrics.connect_auth_us = Percentiles::of(&self.connect_auth);
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            metrics.server_cpu_secs = Some(b - a);
            if metrics.delivered > 0 {
                metrics.server_cpu_us_per_msg = Some((b - a) * 1e6 / metrics.delivered as f64);
            }
        }
        let (once, once_evidence) = self.ledger.exactly_once();
        let (order, order_evidence) = self.ledger.in_order();
        let checks = vec![
            Check {
                name: "delivery.exactly-once",
                verdict: once,
                expected: s.expected("delivery.exactly-once"),
                evidence: format!(
                    "{once_evidence}; {} redeliveries dropped, {} rejected{}{}",
                    metrics.duplicates_dropped,
                    metrics.rejected,
                    if self.rejected_reasons.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", self.rejected_reasons.join("; "))
                    },
                    if self.send_errors.is_empty() {
                        String::new()
                    } else {
                        format!("; send errors: {}", self.send_errors.join("; "))
                    },
                ),
            },
            Check {
                name: "delivery.order",
                verdict: order,
                expected: s.expected("delivery.order"),
                evidence: order_evidence,
            },
        ];
        (metrics, checks)
    }
}

/// How the caller wants progress shown.
pub(crate) struct Progress {
    pub(crate) bar: indicatif::ProgressBar,
}

impl Progress {
    pub(crate) fn new(len: u64, label: &str, show: bool) -> Self {
        let bar = if show {
            indicatif::ProgressBar::new(len)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix:>20} [{elapsed_precise}] {bar:30} {pos}/{len} delivered {msg}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_owned());
        Progress { bar }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message held up by a fault counts from the fault's end, one sent
    /// after it from its send; one that arrives more than the bound after
    /// it was due is what fails the check.
    #[test]
    fn catch_up_counts_from_the_fault_and_finds_a_late_delivery() {
        let t0 = Instant::now();
        let s = |x: f64| t0 + Duration::from_secs_f64(x);
        let windows = [(s(10.0), s(12.0))];
        // Sent at 9 s, held through the fault, delivered 0.5 s after it.
        let held = (s(9.0), s(12.5));
        // Sent at 20 s, 0.1 s on the way.
        let later = (s(20.0), s(20.1));
        let (lag, which) = latest_after_due(&[held, later], &windows);
        assert_eq!(lag, Duration::from_millis(500));
        assert_eq!(which, Some(held));
        assert!(lag <= CATCH_UP_BOUND);
        // The same message delivered 6 s after the fault's end: too late.
        let stuck = (s(9.0), s(18.0));
        let (lag, which) = latest_after_due(&[held, stuck, later], &windows);
        assert_eq!(lag, Duration::from_secs(6));
        assert_eq!(which, Some(stuck));
        assert!(lag > CATCH_UP_BOUND);
        // Without faults, that message is late by all 9 s since its send.
        assert_eq!(latest_after_due(&[stuck], &[]).0, Duration::from_secs(9));
    }
}
