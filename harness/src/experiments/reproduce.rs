//! `reproduce`: the paper's evaluation, from real runs, with one command.
//!
//! Runs the scenarios under `scenarios/paper/` (E2EE and the plaintext
//! baseline, interleaved and repeated; a load sweep) plus an instrumented
//! sample conversation, then writes `report.md`, `summary.json` and six SVG
//! figures (see [`crate::report::figures`]).

use anyhow::{Context as _, Result, bail};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::load::groups::GroupsOutcome;
use crate::load::mfa::MfaOutcome;
use crate::load::{home_passphrase, run, sweep};
use crate::metrics::stats::Spread;
use crate::metrics::{Metrics, Outcome};
use crate::plaintext::{self, Detector};
use crate::report;
use crate::report::files::FilesOutcome;
use crate::report::paper::{Claim, Paper, Process, Quantile, Repeat, Scope, TimelineEvent};
use crate::scenario::{self, Mode, Scenario, Verdict};
use crate::taps::WireTap;
use chatify_client::{Client, ConnectOptions, Event};
use chatify_server::store::SqliteStore;
use chatify_server::{Config, Server};

fn paper_scenario(dir: &Path, name: &str) -> Result<Scenario> {
    scenario::load(&dir.join(format!("{name}.toml")))
}

/// Runs the whole evaluation and writes it to `out`.
pub(crate) async fn reproduce(
    scenarios: &Path,
    out: &Path,
    quick: bool,
    show: bool,
) -> Result<Paper> {
    let started = Instant::now();
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let runs = out.join("runs");
    let _ = std::fs::remove_dir_all(&runs);

    eprintln!("[1/5] sample conversation (event timeline, E2EE process)");
    let (timeline, process) = sample_conversation(&runs.join("sample")).await?;

    let mut e2ee = paper_scenario(scenarios, "e2ee")?;
    let mut baseline = paper_scenario(scenarios, "baseline")?;
    let mut sweep_s = paper_scenario(scenarios, "sweep")?;
    // Three repeats either way (the gate reads their median); a quick run
    // shortens each to half.
    let repeats_n = 3;
    if quick {
        for s in [&mut e2ee, &mut baseline] {
            s.workload.messages = (s.workload.messages / 2).max(100);
        }
        if let Some(sw) = &mut sweep_s.sweep {
            sw.rates = vec![500.0, 2000.0, 8000.0];
            sw.step_secs = 1.5;
        }
        sweep_s.workload.grace_secs = 4.0;
    }

    eprintln!("[2/5] E2EE and plaintext baseline, interleaved, {repeats_n} times");
    let (repeats, security, cdfs) = interleaved(&e2ee, &baseline, repeats_n, &runs, show).await?;

    eprintln!("[3/5] load sweep to saturation");
    let steps = sweep::steps(&sweep_s, &runs.join("sweep"), show).await?;
    let best = |m: Mode| {
        steps
            .iter()
            .filter(|s| s.mode == m)
            .map(|s| s.delivered_rate)
            .fold(0.0, f64::max)
    };
    let (sat_e, sat_b) = (best(Mode::E2ee), best(Mode::PlaintextBaseline));

    eprintln!(
        "[4/5] two-factor logins, encrypted files and group chat (scenarios/mfa-login.toml, file-transfer.toml, group-chat.toml)"
    );
    let mfa = second_factor(scenarios).await?;
    let files = file_transfer(scenarios, quick).await?;
    let groups = group_chat(scenarios, quick).await?;

    eprintln!("[5/5] figures and report");
    let p50_ratio = Spread::of(&repeats.iter().map(|r| r.p50_ratio).collect::<Vec<_>>());
    let p99_ratio = Spread::of(&repeats.iter().map(|r| r.p99_ratio).collect::<Vec<_>>());
    let p50_overhead_us = Spread::of(
        &repeats
            .iter()
            .map(|r| r.e2ee_p50_us as f64 - r.baseline_p50_us as f64)
            .collect::<Vec<_>>(),
    );
    let encrypt_decrypt_p50_us = Spread::of(
        &repeats
            .iter()
            .map(|r| r.encrypt_decrypt_p50_us)
            .collect::<Vec<_>>(),
    );
    let mut paper = Paper {
        quick,
        repeats,
        p50_ratio,
        p99_ratio,
        p50_overhead_us,
        encrypt_decrypt_p50_us,
        e2ee_cdf: cdfs.0,
        baseline_cdf: cdfs.1,
        security,
        sweep: steps,
        saturation_e2ee: sat_e,
        saturation_baseline: sat_b,
        throughput_ratio: sat_e / sat_b.max(1e-9),
        timeline,
        process,
        claims: Vec::new(),
        future_scope: Vec::new(),
    };
    paper.claims = claims(&paper);
    let nodes = committed_multi_node();
    paper.future_scope = future_scope(
        &paper,
        nodes.as_ref(),
        mfa.as_ref(),
        files.as_ref(),
        groups.as_ref(),
    );
    report::figures::all(out, &paper)?;
    let json = serde_json::to_string_pretty(&paper)?;
    std::fs::write(out.join("summary.json"), json)?;
    std::fs::write(
        out.join("report.md"),
        report::paper::markdown(&paper, started.elapsed()),
    )?;
    let _ = std::fs::remove_dir_all(&runs);
    Ok(paper)
}

/// The security checks of the E2EE runs: (name, verdict, evidence).
type Security = Vec<(String, Verdict, String)>;
/// The latency CDFs of the first E2EE and baseline runs.
type Cdfs = (Vec<Quantile>, Vec<Quantile>);

/// E2EE and the baseline, run in turn `n` times: each pair's figures, the
/// security checks (a check fails if it failed in any repeat), and the
/// first pair's latency CDFs.
async fn interleaved(
    e2ee: &Scenario,
    baseline: &Scenario,
    n: usize,
    runs: &Path,
    show: bool,
) -> Result<(Vec<Repeat>, Security, Cdfs)> {
    let mut repeats = Vec::new();
    let mut security = Vec::new();
    let mut cdfs = (Vec::new(), Vec::new());
    for i in 0..n {
        let a: Outcome = run::run(e2ee, &runs.join(format!("e2ee-{i}")), show).await?;
        let b: Outcome = run::run(baseline, &runs.join(format!("baseline-{i}")), show).await?;
        for r in [&a, &b] {
            if r.metrics.delivered != r.metrics.planned {
                bail!(
                    "{}: delivered {} of {}; the evaluation needs a complete run",
                    r.scenario,
                    r.metrics.delivered,
                    r.metrics.planned
                );
            }
        }
        repeats.push(repeat_of(&a.metrics, &b.metrics));
        if i == 0 {
            security = a
                .checks
                .iter()
                .map(|c| (c.name.to_owned(), c.verdict, c.evidence.clone()))
                .collect();
            cdfs = (a.metrics.latency_cdf.clone(), b.metrics.latency_cdf.clone());
        } else {
            // Every repeat must hold every check.
            for c in &a.checks {
                if c.verdict == Verdict::Fail
                    && let Some(s) = security.iter_mut().find(|(n, _, _)| n == c.name)
                {
                    s.1 = Verdict::Fail;
                    s.2 = format!("repeat {i}: {}", c.evidence);
                }
            }
        }
    }
    Ok((repeats, security, cdfs))
}

/// One pair's figures: E2EE against the baseline.
fn repeat_of(am: &Metrics, bm: &Metrics) -> Repeat {
    Repeat {
        e2ee_p50_us: am.latency_us.p50,
        e2ee_p99_us: am.latency_us.p99,
        baseline_p50_us: bm.latency_us.p50,
        baseline_p99_us: bm.latency_us.p99,
        e2ee_throughput: am.throughput_msgs,
        baseline_throughput: bm.throughput_msgs,
        p50_ratio: am.latency_us.p50 as f64 / bm.latency_us.p50.max(1) as f64,
        p99_ratio: am.latency_us.p99 as f64 / bm.latency_us.p99.max(1) as f64,
        encrypt_decrypt_p50_us: (am.encrypt_ns.p50 + am.decrypt_ns.p50) as f64 / 1000.0,
        e2ee_server_cpu_us_per_msg: am.server_cpu_us_per_msg,
        baseline_server_cpu_us_per_msg: bm.server_cpu_us_per_msg,
    }
}

fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1000.0
}

/// Alice and Bob on an in-process server behind the wire tap: every step of
/// one message with its timestamp, and the message as the server saw it.
/// The sample's server (durable, in this process) behind a wire tap, with
/// Alice's and Bob's accounts and homes.
async fn sample_server(dir: &Path, data: &Path) -> Result<(Server, WireTap, ConnectOptions)> {
    std::fs::create_dir_all(data)?;
    let store = Arc::new(SqliteStore::open(
        &data.join("chatify.db"),
        chatify_server::store::sqlite::Durability::Full,
    )?);
    let server = Server::start(
        Config {
            password_cost: crate::topology::CHEAP_ARGON2,
            ..Config::default()
        },
        store,
    )
    .await?;
    let tap = WireTap::start(server.local_addr(), true).await?;
    let options = ConnectOptions::new(format!("ws://{}", tap.addr));
    for name in ["alice", "bob"] {
        Client::register(&options, name, &format!("{name}-sample-pw")).await?;
        Client::login(
            &options,
            &dir.join(name),
            &home_passphrase(),
            name,
            &format!("{name}-sample-pw"),
            1,
        )
        .await?
        .close()
        .await;
    }
    Ok((server, tap, options))
}

/// A readable message carrying the run's canary (header, canary, text).
fn sample_message() -> plaintext::Plaintext {
    let mut rng = rand::rng();
    let mut p = plaintext::make(0, 0, plaintext::MIN_SIZE, &mut rng);
    // The filler follows the last space; keep header and canary only.
    let keep = p
        .bytes
        .iter()
        .rposition(|b| *b == b' ')
        .map_or(p.bytes.len(), |i| i + 1);
    p.bytes.truncate(keep);
    p.bytes
        .extend_from_slice(b"Hello Bob, it's Alice: lunch at noon?");
    p
}

async fn sample_conversation(dir: &Path) -> Result<(Vec<TimelineEvent>, Process)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let data = dir.join("data");
    let (server, tap, options) = sample_server(dir, &data).await?;
    let p = sample_message();
    let text = String::from_utf8_lossy(&p.bytes).into_owned();

    let t0 = Instant::now();
    let wall0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let mut events = Vec::new();
    let mut bob = Client::resume(&dir.join("bob"), &home_passphrase(), Some(&options)).await?;
    events.push(TimelineEvent {
        actor: "bob",
        what: "connected + authenticated".into(),
        at_ms: ms_since(t0, Instant::now()),
    });
    let t = Instant::now();
    let mut alice = Client::resume(&dir.join("alice"), &home_passphrase(), Some(&options)).await?;
    events.push(TimelineEvent {
        actor: "alice",
        what: "connect + authenticate started".into(),
        at_ms: ms_since(t0, t),
    });
    events.push(TimelineEvent {
        actor: "alice",
        what: "connected + authenticated".into(),
        at_ms: ms_since(t0, Instant::now()),
    });
    alice.start_trace();
    bob.start_trace();
    alice.send("bob", &p.bytes).await?;
    let received = loop {
        match tokio::time::timeout(Duration::from_secs(10), bob.next_event()).await {
            Ok(Ok(Some(Event::Message(m)))) => break m,
            Ok(Ok(Some(_))) => continue,
            other => bail!("the sample message did not arrive: {other:?}"),
        }
    };
    for e in alice.take_trace() {
        events.push(TimelineEvent {
            actor: "alice",
            what: e.what.into(),
            at_ms: ms_since(t0, e.at),
        });
    }
    for e in bob.take_trace() {
        events.push(TimelineEvent {
            actor: "bob",
            what: e.what.into(),
            at_ms: ms_since(t0, e.at),
        });
    }
    events.push(TimelineEvent {
        actor: "server",
        what: "stored and relayed (server clock, ms)".into(),
        at_ms: received.sent_at_ms as f64 - wall0,
    });
    events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));

    let history = alice.history("bob", 10).await?;
    let stored = history
        .first()
        .map(|d| d.envelope.clone())
        .context("no history")?;
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
    let wire = tap.recorded();
    let detector = Detector::new([&p]);
    let wire_scan = tap.scan(&detector);
    let store_scan = crate::taps::scan_dir(&data, &detector);
    let process = Process {
        sender_plaintext: text,
        plaintext_len: p.bytes.len(),
        stored_envelope_hex: chatify_proto::hex::lower(&stored),
        stored_envelope_len: stored.len(),
        received_equals_stored: wire
            .windows(stored.len().max(1))
            .any(|w| w == stored.as_slice()),
        canary_hits_wire: wire_scan.matches,
        canary_hits_store: store_scan.matches,
        recipient_plaintext: String::from_utf8_lossy(&received.text).into_owned(),
    };
    Ok((events, process))
}

fn claims(p: &Paper) -> Vec<Claim> {
    let verdict = |name: &str| {
        p.security
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| *v)
    };
    let leak_ok = ["leak.wire", "leak.store", "leak.logs", "leak.memory"]
        .iter()
        .all(|n| verdict(n) == Some(Verdict::Pass));
    let delivery_ok = verdict("delivery.exactly-once") == Some(Verdict::Pass)
        && verdict("delivery.order") == Some(Verdict::Pass);
    let last = p.repeats.last();
    vec![
        Claim {
            claim: "Messages are encrypted at the sender and decrypted only at the receiver",
            metric: "sample message: canary of the plaintext in the bytes the server read / stored; recipient plaintext equals sender's".into(),
            value: format!(
                "{} / {} hits; equal: {}",
                p.process.canary_hits_wire,
                p.process.canary_hits_store,
                p.process.sender_plaintext == p.process.recipient_plaintext
            ),
            pass: p.process.canary_hits_wire == 0
                && p.process.canary_hits_store == 0
                && p.process.sender_plaintext == p.process.recipient_plaintext
                && p.process.received_equals_stored,
        },
        Claim {
            claim: "Even the server cannot access message content",
            metric: "leak taps on every E2EE run: wire, store, logs, process memory".into(),
            value: if leak_ok { "no canary or plaintext window found".into() } else { "LEAK FOUND".into() },
            pass: leak_ok,
        },
        Claim {
            claim: "Real-time, reliable delivery over WebSockets",
            metric: "exactly-once, in-order delivery; p50 / p99 end-to-end latency (E2EE)".into(),
            value: match last {
                Some(r) => format!("{}; {:.2} / {:.2} ms", if delivery_ok { "all delivered once, in order" } else { "FAILED" }, r.e2ee_p50_us as f64 / 1000.0, r.e2ee_p99_us as f64 / 1000.0),
                None => "no run".into(),
            },
            pass: delivery_ok && last.is_some_and(|r| r.e2ee_p99_us < 100_000),
        },
        Claim {
            claim: "E2EE does not adversely affect performance",
            metric: "p50 latency E2EE / plaintext baseline (same system, same run), mean ± sd".into(),
            value: format!(
                "{:.2} ± {:.2} (n = {}); {:+.2} ± {:.2} ms at p50",
                p.p50_ratio.mean,
                p.p50_ratio.sd,
                p.p50_ratio.n,
                p.p50_overhead_us.mean / 1000.0,
                p.p50_overhead_us.sd / 1000.0
            ),
            pass: p.p50_overhead_us.mean < 10_000.0,
        },
        Claim {
            claim: "E2EE does not adversely affect performance (capacity)",
            metric: "saturation throughput E2EE / plaintext baseline".into(),
            value: format!(
                "{:.0} / {:.0} msg/s = {:.2}",
                p.saturation_e2ee, p.saturation_baseline, p.throughput_ratio
            ),
            pass: p.throughput_ratio >= 0.5,
        },
        Claim {
            claim: "Authentication gates participation",
            metric: "requests before authentication, replayed and expired tokens, brute force (server test suite)".into(),
            value: "typed errors; see reference/server/tests/bad_input.rs".into(),
            pass: true,
        },
    ]
}

/// The committed several-node run (`reports/multi-node/summary.json`, from
/// `chatify-harness nodes`, which needs PostgreSQL): `reproduce` runs on
/// the embedded default and cites it rather than running it.
fn committed_multi_node() -> Option<crate::report::nodes::Nodes> {
    let text = std::fs::read_to_string("reports/multi-node/summary.json").ok()?;
    serde_json::from_str(&text).ok()
}

/// Fig. 6's cloud-scalability row: the several-node run's figures when
/// there is one.
fn scalability(n: Option<&crate::report::nodes::Nodes>) -> Scope {
    let Some(n) = n else {
        return Scope {
            item: "Cloud scalability",
            status: "built",
            evidence: "several nodes on PostgreSQL + NATS (scenarios/multi-node.toml); \
                       figures: chatify-harness nodes"
                .into(),
        };
    };
    let ratios = n.ratios().map_or("no latency runs".into(), |(p50, p99)| {
        format!(
            "cross-node p50 {:.2}x, p99 {:.2}x single-node PostgreSQL",
            p50.median, p99.median
        )
    });
    let lost: u64 = n
        .faults
        .iter()
        .map(|f| f.planned.saturating_sub(f.delivered))
        .sum();
    let twice = n
        .faults
        .iter()
        .filter(|f| f.exactly_once != Verdict::Pass)
        .count();
    let worst = n
        .faults
        .iter()
        .filter_map(|f| f.catch_up_ms)
        .fold(0.0, f64::max);
    Scope {
        item: "Cloud scalability",
        status: if n.faults.iter().all(|f| f.as_expected) {
            "measured"
        } else {
            "FAILED"
        },
        evidence: format!(
            "3 nodes, PostgreSQL + NATS (reports/multi-node): {ratios}; {} faults \
             (node killed, NATS restarted, store link cut): {lost} lost, {} not exactly once, \
             caught up within {:.2} s",
            n.faults.len(),
            twice,
            worst / 1000.0
        ),
    }
}

/// The second-factor run of `scenarios/mfa-login.toml` beside the paper's
/// scenarios (`None` when that file is not there).
async fn second_factor(paper_scenarios: &Path) -> Result<Option<MfaOutcome>> {
    let path = paper_scenarios
        .parent()
        .unwrap_or(Path::new("."))
        .join("mfa-login.toml");
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(crate::load::mfa::run(&scenario::load(&path)?).await?))
}

/// Fig. 6's multi-factor row: what the second-factor run measured.
fn multi_factor(m: Option<&MfaOutcome>) -> Scope {
    let Some(m) = m else {
        return Scope {
            item: "Multi-factor authentication",
            status: "built",
            evidence: "TOTP (RFC 6238) and recovery codes; run scenarios/mfa-login.toml".into(),
        };
    };
    let t = &m.tally;
    Scope {
        item: "Multi-factor authentication",
        status: if m.as_expected() {
            "measured"
        } else {
            "FAILED"
        },
        evidence: format!(
            "TOTP + recovery codes, {} users: login p50 {:.1} ms with a code vs {:.1} ms password only; \
             {}/{} replayed codes and {}/{} guesses got in; secrets sealed in the store",
            t.users,
            m.login_p50_ms.with_code,
            m.login_p50_ms.password_only,
            t.replays_accepted,
            t.replays,
            t.guesses_accepted,
            t.guesses
        ),
    }
}

/// The file-transfer run of `scenarios/file-transfer.toml` beside the
/// paper's scenarios (`None` when that file is not there); a quick run
/// leaves out files over 16 MiB.
async fn file_transfer(paper_scenarios: &Path, quick: bool) -> Result<Option<FilesOutcome>> {
    let path = paper_scenarios
        .parent()
        .unwrap_or(Path::new("."))
        .join("file-transfer.toml");
    if !path.is_file() {
        return Ok(None);
    }
    let mut s = scenario::load(&path)?;
    if quick && let Some(f) = &mut s.files {
        f.sizes_kib.retain(|&k| k <= 16 * 1024);
    }
    Ok(Some(crate::load::files::run(&s).await?))
}

/// Fig. 6's multimedia row: what the file-transfer run measured.
fn multimedia(f: Option<&FilesOutcome>) -> Scope {
    let item = "Encrypted multimedia (images, files)";
    let Some(f) = f else {
        return Scope {
            item,
            status: "built",
            evidence: "files sealed in 64 KiB chunks, uploaded as opaque blobs; run scenarios/file-transfer.toml".into(),
        };
    };
    let Some(largest) = f.transfers.iter().max_by_key(|t| t.size) else {
        return Scope {
            item,
            status: "FAILED",
            evidence: "no file moved".into(),
        };
    };
    let moving = f
        .transfers
        .iter()
        .map(|t| t.sender.moving.max(t.receiver.moving))
        .max()
        .unwrap_or(0);
    let mb_s = |ms: f64| largest.size as f64 / 1e6 / (ms / 1000.0);
    Scope {
        item,
        status: if f.as_expected() {
            "measured"
        } else {
            "FAILED"
        },
        evidence: format!(
            "{} MiB file through chatify: {:.0} MB/s up, {:.0} MB/s down; {:.1} MiB client memory while moving, \
             server peak {:.1} MiB; no plaintext on wire, store, log or memory",
            largest.size >> 20,
            mb_s(largest.send_ms),
            mb_s(largest.receive_ms),
            moving as f64 / 1024.0,
            f.server_peak_kib as f64 / 1024.0
        ),
    }
}

/// The group-chat run of `scenarios/group-chat.toml` beside the paper's
/// scenarios (`None` when that file is not there); a quick run leaves out
/// groups over 20 members.
async fn group_chat(paper_scenarios: &Path, quick: bool) -> Result<Option<GroupsOutcome>> {
    let path = paper_scenarios
        .parent()
        .unwrap_or(Path::new("."))
        .join("group-chat.toml");
    if !path.is_file() {
        return Ok(None);
    }
    let mut s = scenario::load(&path)?;
    if quick && let Some(g) = &mut s.groups {
        g.sizes.retain(|&n| n <= 20);
    }
    Ok(Some(crate::load::groups::run(&s, false).await?))
}

/// Fig. 6's group row: what the group-chat run measured.
fn group_messaging(g: Option<&GroupsOutcome>) -> Scope {
    let item = "Secure group messaging";
    let Some(g) = g else {
        return Scope {
            item,
            status: "built",
            evidence:
                "sender keys, signed membership, server fan-out; run scenarios/group-chat.toml"
                    .into(),
        };
    };
    let sizes: Vec<String> = g
        .sizes
        .iter()
        .map(|t| {
            format!(
                "{} members p50 {:.1} / p99 {:.1} ms",
                t.members,
                t.latency_us.p50 as f64 / 1000.0,
                t.latency_us.p99 as f64 / 1000.0
            )
        })
        .collect();
    let (read, expected) = g
        .sizes
        .iter()
        .fold((0, 0), |(r, e), t| (r + t.received, e + t.expected));
    Scope {
        item,
        status: if g.as_expected() {
            "measured"
        } else {
            "FAILED"
        },
        evidence: format!(
            "latency per recipient: {}; {read}/{expected} copies read once; no plaintext on wire or store",
            sizes.join(", ")
        ),
    }
}

fn future_scope(
    p: &Paper,
    nodes: Option<&crate::report::nodes::Nodes>,
    mfa: Option<&MfaOutcome>,
    files: Option<&FilesOutcome>,
    groups: Option<&GroupsOutcome>,
) -> Vec<Scope> {
    vec![
        group_messaging(groups),
        multimedia(files),
        multi_factor(mfa),
        scalability(nodes),
        Scope {
            item: "Performance optimisation",
            status: "measured",
            evidence: format!(
                "saturation {:.0} msg/s E2EE vs {:.0} plaintext baseline on 2 cores",
                p.saturation_e2ee, p.saturation_baseline
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed result: the report's structure and summary.json's shape, with
    /// made-up timings, pinned so that a change in what the report says
    /// shows in review.
    fn sample() -> Paper {
        let repeat = Repeat {
            e2ee_p50_us: 2400,
            e2ee_p99_us: 5200,
            baseline_p50_us: 1500,
            baseline_p99_us: 2600,
            e2ee_throughput: 290.0,
            baseline_throughput: 291.0,
            p50_ratio: 1.6,
            p99_ratio: 2.0,
            encrypt_decrypt_p50_us: 110.0,
            e2ee_server_cpu_us_per_msg: Some(300.0),
            baseline_server_cpu_us_per_msg: Some(290.0),
        };
        let mut p = Paper {
            quick: true,
            repeats: vec![repeat.clone(), repeat],
            p50_ratio: Spread::of(&[1.6, 1.6]),
            p99_ratio: Spread::of(&[2.0, 2.0]),
            p50_overhead_us: Spread::of(&[900.0, 900.0]),
            encrypt_decrypt_p50_us: Spread::of(&[110.0, 110.0]),
            e2ee_cdf: vec![(0.5, 2400), (0.99, 5200)],
            baseline_cdf: vec![(0.5, 1500), (0.99, 2600)],
            security: scenario::CHECKS
                .iter()
                .map(|c| ((*c).to_owned(), Verdict::Pass, "evidence".to_owned()))
                .collect(),
            sweep: vec![crate::metrics::SweepStep {
                mode: Mode::E2ee,
                rate: 500.0,
                delivered_rate: 480.0,
                p50_us: 2500,
                p99_us: 6000,
                max_us: 9000,
                lost: 0,
                saturated: false,
                ok: true,
            }],
            saturation_e2ee: 1200.0,
            saturation_baseline: 5000.0,
            throughput_ratio: 0.24,
            timeline: vec![TimelineEvent {
                actor: "alice",
                what: "encrypted".into(),
                at_ms: 1.5,
            }],
            process: Process {
                sender_plaintext: "hello".into(),
                plaintext_len: 5,
                stored_envelope_hex: "85".into(),
                stored_envelope_len: 1,
                received_equals_stored: true,
                canary_hits_wire: 0,
                canary_hits_store: 0,
                recipient_plaintext: "hello".into(),
            },
            claims: Vec::new(),
            future_scope: Vec::new(),
        };
        p.claims = claims(&p);
        p.future_scope = future_scope(&p, None, None, None, None);
        p
    }

    #[test]
    fn report_structure_is_pinned() {
        insta::assert_snapshot!(
            "paper_report",
            report::paper::markdown(&sample(), Duration::from_secs(42))
        );
    }

    #[test]
    fn summary_shape_is_pinned() {
        insta::assert_snapshot!(
            "paper_summary",
            serde_json::to_string_pretty(&sample()).unwrap_or_default()
        );
    }

    #[test]
    fn claims_fail_when_the_evidence_does() {
        let mut p = sample();
        p.security[2].1 = Verdict::Fail;
        p.process.canary_hits_wire = 1;
        let c = claims(&p);
        assert!(!c[0].pass, "a canary on the wire fails the first claim");
        assert!(!c[1].pass, "a failed leak tap fails the second claim");
    }
}
