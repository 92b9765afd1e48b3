//! Client lifetimes: every user action is a fresh `chatify` process, as a
//! person using the CLI works (scenarios with a `[lifetimes]` table).
//!
//! ```text
//!  user task (one per user, in parallel)          server (in process)
//!   ├─ chatify send PEER TEXT   ── new process ──▶  stored
//!   ├─ chatify inbox --wait 0   ── new process ──▶  delivered, receipted
//!   ├─ every k-th send: send ∥ inbox on the same home (one waits for the
//!   │    other's lock; a refusal is retried)
//!   └─ at the end: inbox until nothing more arrives
//!  checks: exactly once, in order, no false alarm (missing, late, not
//!  verified, dropped, not delivered), no plaintext in the server's store
//!  or in the clients' homes
//! ```
//!
//! Each process starts from the home's files alone (state, log, key file),
//! so a run restarts each client hundreds of times; what a lifetime leaves
//! behind (reservations, receipts owed, gaps) is what the next one starts
//! from. The homes are created at the cheapest passphrase cost (the cost is
//! stored in each home's key file); the processes read the passphrase from
//! `CHATIFY_PASSPHRASE`.

use anyhow::{Context as _, Result, anyhow};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatify_client::{Client, ConnectOptions};
use chatify_server::store::SqliteStore;
use chatify_server::{Config, Server};
use rand::SeedableRng;

use crate::metrics::{Check, leak_check};
use crate::plaintext::{self, Detector, Plaintext};
use crate::scenario::{Scenario, Verdict};
use crate::taps;
use crate::topology::CHEAP_ARGON2;

/// The passphrase every home of the run is created with.
const PASSPHRASE: &str = "harness home";

/// What one process did.
#[derive(Debug, Clone)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// What a run measured and saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Tally {
    /// Processes run, in all.
    pub(crate) processes: u64,
    /// Lifetimes of each home (processes run on it).
    pub(crate) lifetimes_per_home: BTreeMap<String, u64>,
    /// Pairs of processes started together on one home.
    pub(crate) concurrent_pairs: u64,
    /// Processes refused because another owned the home (then retried).
    pub(crate) refused: u64,
    /// Sends that ended with the server's acknowledgement.
    pub(crate) stored: u64,
    /// Sends that failed otherwise.
    /// (sender, its message number, the error) of every failed send.
    pub(crate) send_failures: Vec<(usize, u64, String)>,
    /// (recipient, text) of every message an `inbox` printed.
    #[serde(skip)]
    pub(crate) received: Vec<(usize, Vec<u8>)>,
    /// Every alarm a process printed (`!!` lines, dropped envelopes).
    pub(crate) alarms: Vec<String>,
    /// Mean wall time of a process, ms.
    pub(crate) mean_process_ms: f64,
}

/// One planned send: who, to whom, what (in the sender's order).
#[derive(Debug, Clone)]
struct Planned {
    sender: usize,
    recipient: usize,
    n: u64,
    plaintext: Plaintext,
}

fn user_name(i: usize) -> String {
    format!("u{i}")
}

/// The `chatify` binary built beside this one; built first (with the
/// same profile) when the harness runs under `cargo run` and it is not
/// there yet, as on a fresh clone.
pub(crate) fn chatify_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("chatify");
    if !bin.is_file()
        && let Some(cargo) = std::env::var_os("CARGO")
    {
        let release = exe
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == "release");
        eprintln!("building the chatify client (it is not beside the harness yet)");
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-p", "chatify-client", "--bin", "chatify"]);
        if release {
            build.arg("--release");
        }
        let status = build.status()?;
        if !status.success() {
            return Err(anyhow!("building the chatify client failed ({status})"));
        }
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(anyhow!(
            "{} not found: build it with the harness (cargo build --release -p chatify-client -p chatify-harness)",
            bin.display()
        ))
    }
}

fn run_process(bin: &Path, url: &str, home: &Path, args: &[&str]) -> Run {
    let started = Instant::now();
    let out = Command::new(bin)
        .env_remove("CHATIFY_PASSPHRASE_FILE")
        .env_remove("CHATIFY_CA_CERT")
        .env("CHATIFY_PASSPHRASE", PASSPHRASE)
        .arg("--server")
        .arg(url)
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            took: started.elapsed(),
        },
        Err(e) => Run {
            ok: false,
            stdout: String::new(),
            stderr: e.to_string(),
            took: started.elapsed(),
        },
    }
}

/// Runs `args` on `home`, retrying while another process owns the home.
fn run_owned(
    bin: &Path,
    url: &str,
    home: &Path,
    args: &[&str],
    tally: &mut Tally,
    times: &mut Vec<Duration>,
) -> Run {
    loop {
        let r = run_process(bin, url, home, args);
        tally.processes += 1;
        let user = home
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        *tally.lifetimes_per_home.entry(user).or_default() += 1;
        times.push(r.took);
        if !r.ok && r.stderr.contains("in use by another chatify process") {
            tally.refused += 1;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        return r;
    }
}

/// Records what an `inbox` printed: messages, and any alarm.
fn read_inbox(me: usize, r: &Run, tally: &mut Tally) {
    for line in r.stdout.lines() {
        if line.starts_with("!!") {
            tally.alarms.push(format!("{}: {line}", user_name(me)));
        } else if let Some((_, text)) = line.split_once(": ") {
            tally.received.push((me, text.as_bytes().to_vec()));
        }
    }
    for line in r.stderr.lines() {
        if line.contains("dropped an envelope") || line.starts_with("!!") {
            tally.alarms.push(format!("{}: {line}", user_name(me)));
        }
    }
    if !r.ok {
        tally.alarms.push(format!(
            "{}: inbox failed: {}",
            user_name(me),
            r.stderr.trim()
        ));
    }
}

/// One user's lifetimes: its sends, each followed by a read, every
/// `concurrent_every`-th beside a read on the same home; paced to the
/// schedule.
fn user_lifetimes(
    bin: &Path,
    url: &str,
    home: &Path,
    me: usize,
    sends: &[(Duration, Planned)],
    concurrent_every: usize,
    start: Instant,
) -> (Tally, Vec<Duration>) {
    let mut tally = Tally::default();
    let mut times = Vec::new();
    for (k, (at, p)) in sends.iter().enumerate() {
        if let Some(wait) = (start + *at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let peer = user_name(p.recipient);
        let text = String::from_utf8_lossy(&p.plaintext.bytes).into_owned();
        let args = ["send", peer.as_str(), text.as_str()];
        let concurrent = concurrent_every > 0 && (k + 1) % concurrent_every == 0;
        let (sent, read) = if concurrent {
            tally.concurrent_pairs += 1;
            std::thread::scope(|scope| {
                let reader = scope.spawn(|| {
                    let mut t = Tally::default();
                    let mut times = Vec::new();
                    let r = run_owned(
                        bin,
                        url,
                        home,
                        &["inbox", "--wait", "0"],
                        &mut t,
                        &mut times,
                    );
                    (r, t, times)
                });
                let sent = run_owned(bin, url, home, &args, &mut tally, &mut times);
                let (read, t, more) = reader
                    .join()
                    .unwrap_or_else(|_| (failed("reader panicked"), Tally::default(), Vec::new()));
                merge(&mut tally, t);
                times.extend(more);
                (sent, read)
            })
        } else {
            let sent = run_owned(bin, url, home, &args, &mut tally, &mut times);
            let read = run_owned(
                bin,
                url,
                home,
                &["inbox", "--wait", "0"],
                &mut tally,
                &mut times,
            );
            (sent, read)
        };
        if sent.ok && sent.stdout.contains("stored by the server") {
            tally.stored += 1;
        } else {
            tally
                .send_failures
                .push((me, p.n, sent.stderr.trim().to_owned()));
        }
        read_inbox(me, &read, &mut tally);
    }
    (tally, times)
}

fn failed(why: &str) -> Run {
    Run {
        ok: false,
        stdout: String::new(),
        stderr: why.into(),
        took: Duration::ZERO,
    }
}

fn merge(into: &mut Tally, t: Tally) {
    into.processes += t.processes;
    for (home, n) in t.lifetimes_per_home {
        *into.lifetimes_per_home.entry(home).or_default() += n;
    }
    into.concurrent_pairs += t.concurrent_pairs;
    into.refused += t.refused;
    into.stored += t.stored;
    into.send_failures.extend(t.send_failures);
    into.received.extend(t.received);
    into.alarms.extend(t.alarms);
}

/// Delivery as the users saw it: every stored message received once by its
/// recipient, each sender's messages in order, nothing unknown.
pub(crate) fn delivery_checks(
    planned: &[(usize, usize, u64)],
    failed: &[(usize, u64)],
    received: &[(usize, Vec<u8>)],
) -> (Check, Check) {
    let mut seen: HashMap<(usize, usize, u64), u64> = HashMap::new();
    let mut order: HashMap<(usize, usize), Vec<u64>> = HashMap::new();
    let mut unknown = 0;
    let recipients: HashMap<(usize, u64), usize> = planned
        .iter()
        .map(|(from, to, n)| ((*from, *n), *to))
        .collect();
    for (me, text) in received {
        match plaintext::parse(text) {
            Some((from, n)) if recipients.get(&(from, n)) == Some(me) => {
                *seen.entry((from, *me, n)).or_default() += 1;
                order.entry((from, *me)).or_default().push(n);
            }
            _ => unknown += 1,
        }
    }
    let failed: std::collections::HashSet<(usize, u64)> = failed.iter().copied().collect();
    let lost = planned
        .iter()
        .filter(|(f, t, n)| !failed.contains(&(*f, *n)) && !seen.contains_key(&(*f, *t, *n)))
        .count();
    let twice = seen.values().filter(|c| **c > 1).count();
    let out_of_order = order
        .values()
        .filter(|ns| ns.windows(2).any(|w| w[0] >= w[1]))
        .count();
    let once = Check {
        name: "delivery.exactly-once",
        verdict: if lost == 0 && twice == 0 && unknown == 0 {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        expected: Verdict::Pass,
        evidence: format!(
            "{} planned, {} stored, {} received; {lost} lost, {twice} shown twice, {unknown} unknown",
            planned.len(),
            planned.len() - failed.len(),
            received.len()
        ),
    };
    let ordered = Check {
        name: "delivery.order",
        verdict: if out_of_order == 0 {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        expected: Verdict::Pass,
        evidence: format!("{out_of_order} (sender, recipient) pairs out of order"),
    };
    (once, ordered)
}

/// No process raised an alarm: an honest run must not tell its users of
/// missing, late, undelivered or unverified messages.
pub(crate) fn no_alarm_check(alarms: &[String]) -> Check {
    Check {
        name: "lifetimes.no-false-alarm",
        verdict: if alarms.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        expected: Verdict::Pass,
        evidence: if alarms.is_empty() {
            "no missing, late, undelivered, unverified or dropped message reported".into()
        } else {
            alarms
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        },
    }
}

/// The outcome of a lifetimes run.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Outcome {
    pub(crate) scenario: String,
    pub(crate) tally: Tally,
    pub(crate) checks: Vec<Check>,
}

impl Outcome {
    pub(crate) fn as_expected(&self) -> bool {
        self.checks.iter().all(Check::as_expected)
    }
}

/// Runs a lifetimes scenario (its report is [`crate::report::lifetimes`]).
pub(crate) async fn run(s: &Scenario) -> Result<Outcome> {
    let l = s.lifetimes.clone().unwrap_or_default();
    let bin = chatify_binary()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("server");
    let server = start_server(&data).await?;
    let url = format!("ws://{}", server.local_addr());
    let n_users = s.users.count;
    let homes: Vec<PathBuf> = (0..n_users)
        .map(|i| dir.path().join(user_name(i)))
        .collect();
    register_all(&ConnectOptions::new(url.clone()), &homes).await?;
    let per_user = plan(s, n_users);
    let planned: Vec<Planned> = per_user.iter().flatten().map(|(_, p)| p.clone()).collect();

    eprintln!(
        "running {} ({n_users} users, {} sends, each action a fresh chatify process)",
        s.name, s.workload.messages
    );
    let start = Instant::now();
    let (mut tally, mut times) = {
        let (bin, url, homes) = (bin.clone(), url.clone(), homes.clone());
        tokio::task::spawn_blocking(move || {
            all_lifetimes(&bin, &url, &homes, &per_user, l.concurrent_every, start)
        })
        .await?
    };
    let grace = Duration::from_secs_f64(s.workload.grace_secs);
    drain_inboxes(&bin, &url, &homes, grace, &mut tally, &mut times).await?;
    let took = start.elapsed();
    server.shutdown().await;

    tally.mean_process_ms = if times.is_empty() {
        0.0
    } else {
        times.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / times.len() as f64
    };
    let checks = checks(s, &planned, &tally, took, &data, &homes);
    Ok(Outcome {
        scenario: s.name.clone(),
        checks,
        tally,
    })
}

/// The server of a lifetimes run, in this process, on a fresh store.
async fn start_server(data: &Path) -> Result<Server> {
    std::fs::create_dir_all(data)?;
    let store = SqliteStore::open(
        &data.join("chatify.db"),
        chatify_server::store::sqlite::Durability::Normal,
    )?;
    let config = Config {
        listen: "127.0.0.1:0".parse().context("address")?,
        password_cost: CHEAP_ARGON2,
        ..Config::default()
    };
    Ok(Server::start(config, Arc::new(store)).await?)
}

/// Registers each user and logs its device into its home.
async fn register_all(options: &ConnectOptions, homes: &[PathBuf]) -> Result<()> {
    for (i, home) in homes.iter().enumerate() {
        let name = user_name(i);
        let password = format!("{name}-lifetimes-password");
        Client::register(options, &name, &password)
            .await
            .with_context(|| format!("register {name}"))?;
        let pass =
            chatify_client::Passphrase::with_cost(PASSPHRASE, chatify_client::KdfCost::MINIMUM)?;
        Client::login(options, home, &pass, &name, &password, 1)
            .await
            .with_context(|| format!("login {name}"))?
            .close()
            .await;
    }
    Ok(())
}

/// The schedule: send k from user k mod n to the next user, evenly spaced
/// at the offered rate; each user's sends with their offsets.
fn plan(s: &Scenario, n_users: usize) -> Vec<Vec<(Duration, Planned)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.workload.seed);
    let spacing = Duration::from_secs_f64(1.0 / s.workload.rate);
    let [lo, hi] = s.workload.size;
    let mut per_user: Vec<Vec<(Duration, Planned)>> = vec![Vec::new(); n_users];
    let mut counts = vec![0u64; n_users];
    for k in 0..s.workload.messages {
        let sender = (k as usize) % n_users;
        let recipient = (sender + 1) % n_users;
        let n = counts[sender];
        counts[sender] += 1;
        let size = lo + (rand::Rng::next_u32(&mut rng) as usize) % (hi - lo + 1);
        let plaintext = plaintext::make(sender, n, size, &mut rng);
        per_user[sender].push((
            spacing * k as u32,
            Planned {
                sender,
                recipient,
                n,
                plaintext,
            },
        ));
    }
    per_user
}

/// Every user's lifetimes, one thread per user; the merged tally and the
/// duration of every process.
fn all_lifetimes(
    bin: &Path,
    url: &str,
    homes: &[PathBuf],
    per_user: &[Vec<(Duration, Planned)>],
    concurrent_every: usize,
    start: Instant,
) -> (Tally, Vec<Duration>) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = per_user
            .iter()
            .enumerate()
            .map(|(me, sends)| {
                let home = &homes[me];
                scope.spawn(move || {
                    user_lifetimes(bin, url, home, me, sends, concurrent_every, start)
                })
            })
            .collect();
        let mut tally = Tally::default();
        let mut times = Vec::new();
        for h in handles {
            if let Ok((t, more)) = h.join() {
                merge(&mut tally, t);
                times.extend(more);
            }
        }
        (tally, times)
    })
}

/// Everything still waiting, read until a final round brings nothing (or
/// the grace has passed).
async fn drain_inboxes(
    bin: &Path,
    url: &str,
    homes: &[PathBuf],
    grace: Duration,
    tally: &mut Tally,
    times: &mut Vec<Duration>,
) -> Result<()> {
    let deadline = Instant::now() + grace;
    loop {
        let before = tally.received.len();
        for (me, home) in homes.iter().enumerate() {
            let (bin, url, home) = (bin.to_path_buf(), url.to_owned(), home.clone());
            let (r, t, more) = tokio::task::spawn_blocking(move || {
                let mut t = Tally::default();
                let mut more = Vec::new();
                let args = ["inbox", "--wait", "1"];
                let r = run_owned(&bin, &url, &home, &args, &mut t, &mut more);
                (r, t, more)
            })
            .await?;
            merge(tally, t);
            times.extend(more);
            read_inbox(me, &r, tally);
        }
        if tally.received.len() == before || Instant::now() > deadline {
            return Ok(());
        }
    }
}

/// The run's checks: delivery, no false alarm, enough restarts per home,
/// and no plaintext in the server's store or the client homes.
fn checks(
    s: &Scenario,
    planned: &[Planned],
    tally: &Tally,
    took: Duration,
    data: &Path,
    homes: &[PathBuf],
) -> Vec<Check> {
    let plan: Vec<(usize, usize, u64)> = planned
        .iter()
        .map(|p| (p.sender, p.recipient, p.n))
        .collect();
    let failed: Vec<(usize, u64)> = tally
        .send_failures
        .iter()
        .map(|(u, n, _)| (*u, *n))
        .collect();
    let (once, ordered) = delivery_checks(&plan, &failed, &tally.received);
    let detector = Detector::new(planned.iter().map(|p| &p.plaintext));
    let store = taps::scan_dir(data, &detector);
    let mut homes_scan = crate::taps::TapResult::default();
    for home in homes {
        let r = taps::scan_dir(home, &detector);
        homes_scan.bytes += r.bytes;
        homes_scan.matches += r.matches;
        homes_scan.hits.extend(r.hits);
    }
    let min_lifetimes = tally
        .lifetimes_per_home
        .values()
        .copied()
        .min()
        .unwrap_or(0);
    let restarts = Check {
        name: "lifetimes.restarts",
        verdict: if min_lifetimes >= 2 * (s.workload.messages / homes.len() as u64) {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        expected: Verdict::Pass,
        evidence: format!(
            "{} processes in {:.1} s; every home had at least {min_lifetimes} lifetimes; {} concurrent pairs on one home, {} refusals retried; mean process {:.0} ms",
            tally.processes,
            took.as_secs_f64(),
            tally.concurrent_pairs,
            tally.refused,
            tally.mean_process_ms
        ),
    };
    vec![
        once,
        ordered,
        no_alarm_check(&tally.alarms),
        restarts,
        leak_check("leak.store", Verdict::Pass, Some(&Ok(store))),
        leak_check("leak.client-homes", Verdict::Pass, Some(&Ok(homes_scan))),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn text(from: usize, n: u64) -> Vec<u8> {
        plaintext::make(from, n, 64, &mut rand::rngs::StdRng::seed_from_u64(n)).bytes
    }

    /// The checks fail on a lost, a repeated, an unknown and a reordered
    /// message, and on any alarm (their mutants); they pass on a clean run.
    #[test]
    fn the_checks_catch_loss_repeats_disorder_and_alarms() {
        let plan = vec![(0, 1, 0), (0, 1, 1), (1, 0, 0)];
        let clean = vec![(1, text(0, 0)), (1, text(0, 1)), (0, text(1, 0))];
        let (once, order) = delivery_checks(&plan, &[], &clean);
        assert_eq!(
            (once.verdict, order.verdict),
            (Verdict::Pass, Verdict::Pass)
        );
        let lost = &clean[..2];
        assert_eq!(delivery_checks(&plan, &[], lost).0.verdict, Verdict::Fail);
        assert_eq!(
            delivery_checks(&plan, &[(1, 0)], lost).0.verdict,
            Verdict::Pass,
            "a send that failed is not owed"
        );
        let mut twice = clean.clone();
        twice.push((1, text(0, 1)));
        assert_eq!(delivery_checks(&plan, &[], &twice).0.verdict, Verdict::Fail);
        let mut misdelivered = clean.clone();
        misdelivered.push((2, text(0, 0)));
        assert_eq!(
            delivery_checks(&plan, &[], &misdelivered).0.verdict,
            Verdict::Fail
        );
        let swapped = vec![(1, text(0, 1)), (1, text(0, 0)), (0, text(1, 0))];
        assert_eq!(
            delivery_checks(&plan, &[], &swapped).1.verdict,
            Verdict::Fail
        );
        assert_eq!(no_alarm_check(&[]).verdict, Verdict::Pass);
        assert_eq!(
            no_alarm_check(&["u1: !! 1 message(s) from u0:1 are missing".into()]).verdict,
            Verdict::Fail
        );
    }

    /// The home tap fails on a home that keeps a message in the clear (the
    /// mutant an unencrypting client is) and on one it could not read.
    #[test]
    fn the_home_tap_fails_on_plaintext_and_on_nothing_searched() {
        let p = plaintext::make(0, 0, 64, &mut rand::rngs::StdRng::seed_from_u64(1));
        let detector = Detector::new([&p]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("messages.cbor"), &p.bytes).unwrap();
        let leaky = taps::scan_dir(dir.path(), &detector);
        assert_eq!(
            leak_check("leak.client-homes", Verdict::Pass, Some(&Ok(leaky.clone()))).verdict,
            Verdict::Fail
        );
        let empty = taps::scan_dir(&dir.path().join("none"), &detector);
        assert_eq!(
            leak_check("leak.client-homes", Verdict::Pass, Some(&Ok(empty.clone()))).verdict,
            Verdict::Fail
        );
        std::fs::write(dir.path().join("messages.cbor"), b"sealed bytes").unwrap();
        let clean = taps::scan_dir(dir.path(), &detector);
        assert_eq!(
            leak_check("leak.client-homes", Verdict::Pass, Some(&Ok(clean.clone()))).verdict,
            Verdict::Pass
        );
    }

    /// What `inbox` prints is read as messages and alarms.
    #[test]
    fn inbox_output_is_read_as_messages_and_alarms() {
        let mut t = Tally::default();
        let run = Run {
            ok: true,
            stdout: "u0: m 0 1 xyz\n!! 2 message(s) from u0:1 are missing: later ones arrived\n".into(),
            stderr: "(dropped an envelope claiming to be from u3: decryption failed)\n1 new message(s)\n".into(),
            took: Duration::ZERO,
        };
        read_inbox(1, &run, &mut t);
        assert_eq!(t.received, vec![(1, b"m 0 1 xyz".to_vec())]);
        assert_eq!(t.alarms.len(), 2);
    }
}
