//! `chatify-harness compare`: Chatify beside its peers in one invocation.
//!
//! ```text
//!  for each repetition (system order rotated):
//!    for each offered rate (increasing):
//!      for each system not yet saturated in this repetition:
//!        chatify / chatify-plaintext ─▶ load::run   (reference client + server, child process)
//!        floor / socketio            ─▶ peers::run  (same plan, same envelopes)
//!  ─▶ steps ─▶ per-system summary (mean ± sd over repetitions) ─▶ targets
//!  ─▶ report.md, summary.json, fig_compare.svg
//! ```

use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::path::Path;

use crate::load::peers::{self, Peer};
use crate::load::{run, sweep};
use crate::metrics::stats::Spread;
use crate::report;
use crate::report::compare::{Comparison, Step, SystemSummary, Target};
use crate::scenario::{Compare, Mode, Scenario, System};

fn stat_of(steps: &[&Step], f: impl Fn(&Step) -> Option<f64>) -> Spread {
    Spread::of(&steps.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
}

fn summarize(c: &Compare, steps: &[Step]) -> BTreeMap<String, SystemSummary> {
    let mut out = BTreeMap::new();
    for &system in &c.systems {
        let mine: Vec<&Step> = steps.iter().filter(|s| s.system == system).collect();
        let best: Vec<f64> = (0..c.repetitions)
            .filter_map(|r| {
                mine.iter()
                    .filter(|s| s.repetition == r)
                    .map(|s| s.delivered_rate)
                    .reduce(f64::max)
            })
            .collect();
        let equal: Vec<&Step> = mine
            .iter()
            .copied()
            .filter(|s| s.rate == c.equal_load_rate)
            .collect();
        out.insert(
            system.name().to_owned(),
            SystemSummary {
                saturation_msgs: Spread::of(&best),
                p50_us: stat_of(&equal, |s| Some(s.p50_us as f64)),
                p99_us: stat_of(&equal, |s| Some(s.p99_us as f64)),
                server_cpu_us_per_msg: stat_of(&equal, |s| s.server_cpu_us_per_msg),
                crypto_p50_us: stat_of(&equal, |s| {
                    (s.crypto_p50_ns > 0).then(|| s.crypto_p50_ns as f64 / 1000.0)
                }),
                server_peak_rss_kib: stat_of(&equal, |s| s.server_peak_rss_kib.map(|k| k as f64)),
            },
        );
    }
    out
}

fn targets(systems: &BTreeMap<String, SystemSummary>) -> Vec<Target> {
    let get = |n: &str| systems.get(n);
    let mut t = Vec::new();
    let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
    let mut push =
        |name: &str, measured: Option<f64>, bound: &str, ok: fn(f64) -> bool, unit: &str| {
            t.push(Target {
                name: name.to_owned(),
                measured: measured.map_or("not measured".into(), |m| format!("{m:.2}{unit}")),
                bound: bound.to_owned(),
                met: measured.map(ok),
            });
        };
    let (ours, plain, floor, sio) = (
        get("chatify"),
        get("chatify-plaintext"),
        get("floor"),
        get("socketio"),
    );
    push(
        "server CPU per delivered message, chatify / chatify-plaintext",
        ours.zip(plain)
            .and_then(|(o, p)| ratio(o.server_cpu_us_per_msg.mean, p.server_cpu_us_per_msg.mean)),
        "≤ 1.05",
        |r| r <= 1.05,
        "",
    );
    // The crypto cost of this traffic pattern: the floor's clients hold the
    // same sessions and take every ratchet step inside encrypt; Chatify's
    // client takes the sending step while saving a received batch, off the
    // measured encrypt time.
    let crypto_us = floor
        .filter(|f| f.crypto_p50_us.n > 0)
        .or(ours)
        .map(|x| x.crypto_p50_us.mean);
    push(
        "p50 latency overhead of E2EE (chatify − chatify-plaintext) / client encrypt+decrypt p50",
        ours.zip(plain)
            .zip(crypto_us)
            .and_then(|((o, p), c)| ratio(o.p50_us.mean - p.p50_us.mean, c)),
        "≤ 1.10",
        |r| r <= 1.10,
        "",
    );
    push(
        "saturation throughput, chatify / socketio",
        ours.zip(sio)
            .and_then(|(o, s)| ratio(o.saturation_msgs.mean, s.saturation_msgs.mean)),
        "≥ 5",
        |r| r >= 5.0,
        "",
    );
    push(
        "saturation throughput, chatify / floor",
        ours.zip(floor)
            .and_then(|(o, f)| ratio(o.saturation_msgs.mean, f.saturation_msgs.mean)),
        "≥ 0.7",
        |r| r >= 0.7,
        "",
    );
    push(
        "p99 latency at equal offered load, chatify / socketio",
        ours.zip(sio)
            .and_then(|(o, s)| ratio(o.p99_us.mean, s.p99_us.mean)),
        "≤ 0.25",
        |r| r <= 0.25,
        "",
    );
    t
}

/// Runs every step, writes report.md, summary.json and fig_compare.svg.
pub(crate) async fn run(
    s: &Scenario,
    out: &Path,
    socketio_dir: &Path,
    show: bool,
) -> Result<Comparison> {
    let Some(c) = &s.compare else {
        bail!("{}: no [compare] section", s.name);
    };
    let mut steps = Vec::new();
    for rep in 0..c.repetitions {
        let mut order = c.systems.clone();
        let k = rep as usize % order.len().max(1);
        order.rotate_left(k);
        let mut saturated: Vec<System> = Vec::new();
        for &rate in &c.rates {
            for &system in &order {
                if saturated.contains(&system) {
                    continue;
                }
                let mode = match system {
                    System::ChatifyPlaintext => Mode::PlaintextBaseline,
                    _ => Mode::E2ee,
                };
                let name = format!("{}-{}-{rate}-r{rep}", s.name, system.name());
                let mut step = sweep::step_scenario(s, name, mode, rate, c.step_secs);
                step.workload.seed = s.workload.seed.wrapping_add(u64::from(rep));
                eprintln!(
                    "repetition {}/{}: {} at {rate} msg/s ({} messages)",
                    rep + 1,
                    c.repetitions,
                    system.name(),
                    step.workload.messages
                );
                let o = match system {
                    System::Chatify | System::ChatifyPlaintext => {
                        let dir = out.join("steps").join(&step.name);
                        std::fs::create_dir_all(&dir)?;
                        let o = run::run(&step, &dir, show).await?;
                        let _ = std::fs::remove_dir_all(&dir);
                        o
                    }
                    System::Floor => peers::run(&step, Peer::Floor, socketio_dir, show).await?,
                    System::Socketio => {
                        peers::run(&step, Peer::SocketIo, socketio_dir, show).await?
                    }
                };
                let m = &o.metrics;
                let lost = m.planned.saturating_sub(m.delivered);
                let is_saturated =
                    sweep::is_saturated(m, rate, c.saturation_fraction, c.saturation_p99_ms);
                if is_saturated {
                    saturated.push(system);
                }
                steps.push(Step {
                    system,
                    repetition: rep,
                    rate,
                    delivered_rate: m.throughput_msgs,
                    p50_us: m.latency_us.p50,
                    p99_us: m.latency_us.p99,
                    max_us: m.latency_us.max,
                    crypto_p50_ns: m.encrypt_ns.p50 + m.decrypt_ns.p50,
                    server_cpu_us_per_msg: m.server_cpu_us_per_msg,
                    server_peak_rss_kib: m.server_peak_rss_kib,
                    lost,
                    saturated: is_saturated,
                    ok: sweep::step_ok(&o, is_saturated),
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(out.join("steps"));
    let systems = summarize(c, &steps);
    let comparison = Comparison {
        scenario: s.clone(),
        targets: targets(&systems),
        all_delivered: steps.iter().all(|st| st.ok),
        systems,
        steps,
    };
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&comparison)?,
    )?;
    report::compare::write(&comparison, out)?;
    Ok(comparison)
}
