//! `chatify-harness`: drives the Chatify reference client and server through
//! scenarios, measures them, and checks that the server never receives
//! plaintext.
//!
//! ```text
//!  scenario.toml ─▶ topology (server in-process | child, SQLite)
//!                   users (reference clients) ─▶ wire tap (relay) ─▶ server
//!                   open-loop workload + faults ─▶ records ─▶ hdrhistogram metrics
//!                   taps: wire, store, logs, memory ─▶ checks ─▶ summary.json, report.md
//! ```
//!
//! The harness is made of parts, each of which imports only the parts
//! listed before it (`tests/structure.rs` checks it):
//!
//! - [`plaintext`] and [`scenario`]: the canary-bearing messages and their
//!   detector; the scenario model, parsing and validation;
//! - [`topology`]: servers in-process or as children, restarts, kills, a
//!   process's statistics;
//! - [`taps`]: what the server read, stored, logged and held in memory (and
//!   the relay that injects network faults);
//! - [`metrics`]: the delivery ledger, histograms, checks, mean ± sd;
//! - [`report`]: `report.md`, `summary.json` and the figures, from plain data;
//! - [`load`]: the schedule, user tasks, tally, sweeps, the peers' clients
//!   and the CLI lifetimes;
//! - [`experiments`]: `reproduce`, `compare`, `adversary`, `check`.
//!
//! This file parses the command line and calls one of them.

#![forbid(unsafe_code)]
// The harness indexes vectors it built itself (users, plan, partners) by
// construction; decoders of untrusted input live in the reference crates,
// which keep this lint.
#![allow(clippy::indexing_slicing)]

mod experiments;
mod load;
mod metrics;
mod plaintext;
mod report;
mod scenario;
mod taps;
mod topology;

use anyhow::{Context as _, Result, bail};
use experiments::{adversary, capacity, check, compare, connections, reproduce};
use load::{lifetimes, peers, sweep};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chatify-harness",
    version,
    about = "Drive the Chatify reference implementation through scenarios and check it",
    long_about = "Drives the Chatify reference client and server through scenarios \
                  (scenarios/*.toml, documented in scenarios/README.md): many clients, an \
                  open-loop workload, faults, and four plaintext-leak taps (wire, store, logs, \
                  memory). Measures latency and throughput with hdrhistogram and writes \
                  summary.json and report.md. Exits non-zero when a check's verdict differs \
                  from what the scenario expects."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario file and write summary.json and report.md.
    Run {
        /// The scenario file (e.g. scenarios/smoke.toml).
        scenario: PathBuf,
        /// Output directory (default: reports/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// List the scenarios in a directory.
    List {
        /// The directory.
        #[arg(default_value = "scenarios")]
        dir: PathBuf,
    },
    /// Reproduce the paper's evaluation: figures, report and summary.json.
    ///
    /// Runs the scenarios of scenarios/paper/ (E2EE and the plaintext
    /// baseline, interleaved and repeated; a load sweep to saturation) and an
    /// instrumented sample conversation, then writes report.md, summary.json
    /// and fig1..fig6 as SVG. Under five minutes on two cores; --quick under one.
    Reproduce {
        /// Output directory.
        #[arg(long, default_value = "reports/paper")]
        out: PathBuf,
        /// The paper scenarios.
        #[arg(long, default_value = "scenarios/paper")]
        scenarios: PathBuf,
        /// Fewer messages, repeats and sweep steps (for CI).
        #[arg(long)]
        quick: bool,
    },
    /// Measure Chatify beside its peers: the bare relay floor and Socket.io.
    ///
    /// Runs the scenario's [compare] systems (chatify, chatify-plaintext,
    /// floor, socketio) with the same workload and the same E2EE envelopes,
    /// interleaved and repeated, stepping the offered rate up to saturation;
    /// writes report.md (table and targets), summary.json and
    /// fig_compare.svg. The Socket.io peer needs Node.js and
    /// `peers/socketio/install.sh` run once.
    Compare {
        /// The comparison scenario.
        #[arg(default_value = "scenarios/compare.toml")]
        scenario: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "reports/compare")]
        out: PathBuf,
        /// The Socket.io peer's directory (server.js and node_modules).
        #[arg(long, default_value = "peers/socketio")]
        socketio_dir: PathBuf,
        /// Fewer rates, shorter steps and one repetition (a smoke run).
        #[arg(long)]
        quick: bool,
        /// Measure nothing: re-render report.md and fig_compare.svg from
        /// the summary.json already in --out.
        #[arg(long, conflicts_with = "quick")]
        replot: bool,
    },
    /// Run the malicious-server suite: every attack, its verdict.
    ///
    /// The real server over an adversarial store tampers with, replays,
    /// drops, reorders, redirects and forges envelopes and substitutes keys
    /// in its directory, against the reference clients. Writes report.md,
    /// summary.json and fig_security_matrix.svg; exits non-zero if any
    /// attack is not defeated.
    Adversary {
        /// Output directory.
        #[arg(long, default_value = "reports/adversary")]
        out: PathBuf,
        /// Run one attack only (by name, e.g. flip-tag).
        #[arg(long)]
        only: Option<String>,
    },
    /// Hold many authenticated connections on one server: the server memory
    /// each costs, and message latency among them while they are held.
    ///
    /// Starts a child server, logs COUNT devices in, authenticates one
    /// WebSocket per device, measures the server's RSS idle, then sends an
    /// open-loop load (device i to device i+1, acknowledged) and reports
    /// p50/p99, delivered messages and CPU of server and generator. Writes
    /// report.md and summary.json.
    Connections {
        /// Output directory.
        #[arg(long, default_value = "reports/connections")]
        out: PathBuf,
        /// Connections (devices) to hold.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Messages per second among them.
        #[arg(long, default_value_t = 5_000.0)]
        rate: f64,
        /// Seconds of load.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// The server's durability: `full` (fsync each commit) or `normal`.
        #[arg(long, default_value = "full")]
        durability: String,
    },
    /// How much traffic the reference server relays beside Socket.io and
    /// the bare floor, on one light open-loop generator.
    ///
    /// For each connection count and repeat, each system in turn (server on
    /// CPU 0, generator on CPU 1): connect, measure RSS per idle connection,
    /// then offer rising rates until one saturates. Reports saturation and
    /// what bounded it, p50/p99, server CPU and system calls per message at
    /// equal loads. Writes report.md and summary.json (rewritten after each
    /// system, so a long run shows its progress). Socket.io needs
    /// peers/socketio/install.sh.
    Capacity(CapacityArgs),
    /// The server as several nodes on PostgreSQL (CHATIFY_PG_URL) and NATS
    /// (a nats-server it starts): latency of one node on SQLite, one node
    /// on PostgreSQL and three nodes with every pair of users on two
    /// nodes, at the same offered load (repeats interleaved); then each
    /// fault of the base scenario alone (a node killed, NATS restarted, a
    /// node's database link cut) with every tap on. Writes report.md,
    /// summary.json and fig_multi_node.svg.
    Nodes {
        /// The scenario whose users, workload and faults are used.
        #[arg(long, default_value = "scenarios/multi-node.toml")]
        base: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "reports/multi-node")]
        out: PathBuf,
        /// Repeats of each latency configuration.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Offered load of the latency runs (msg/s).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds each latency run offers it.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Rewrite report.md and the figure from summary.json in --out,
        /// running nothing.
        #[arg(long)]
        replot: bool,
    },
    /// Compare a reproduce result with a committed baseline (the CI gate).
    ///
    /// Every security verdict must hold; E2EE/baseline ratios of latency and
    /// throughput must stay within the baseline's tolerances. Prints what
    /// regressed and exits non-zero if anything did.
    Check {
        /// The baseline (ratios and tolerances).
        #[arg(long, default_value = "reports/baseline.json")]
        baseline: PathBuf,
        /// The result to check (a reproduce summary.json).
        #[arg(default_value = "reports/paper/summary.json")]
        result: PathBuf,
    },
    /// Internal: run the bare WebSocket relay (the transport floor of
    /// `compare`) in this process.
    #[command(name = "__floor", hide = true)]
    Floor {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Internal: run the reference server in this process (used for child
    /// servers). Takes chatify-server's options.
    #[command(name = "__serve", hide = true)]
    Serve {
        /// HARNESS-ONLY MUTANT: log every accepted envelope verbatim (through
        /// the server's test hook), so that a leaky client's plaintext reaches
        /// the log.
        #[arg(long)]
        log_envelopes_mutant: bool,
        /// HARNESS-ONLY MUTANT: keep a copy of every password and token the
        /// server sees (through its test hook), for the credential tap.
        #[arg(long)]
        keep_credentials_mutant: bool,
        /// HARNESS-ONLY MUTANT: publish every accepted envelope verbatim on
        /// NATS (subject `PREFIX.mutant`, the server's --nats and
        /// --nats-prefix), for the bus tap.
        #[arg(long)]
        publish_envelopes_mutant: bool,
        /// TEST MODE: echo every text and binary message instead of
        /// speaking the protocol (for the Autobahn|Testsuite, `conformance/`).
        #[arg(long)]
        conformance_echo: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

fn run_scenario(path: &Path, out: Option<PathBuf>, quiet: bool) -> Result<bool> {
    let s = scenario::load(path)?;
    let out = out.unwrap_or_else(|| PathBuf::from("reports").join(&s.name));
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let show = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let rt = runtime()?;
    if s.lifetimes.is_some() {
        let outcome = rt.block_on(lifetimes::run(&s))?;
        report::lifetimes::write(&out, &s, &outcome, "", &outcome.checks)?;
        print!("{}", report::check_lines(&outcome.checks));
        return Ok(verdict_line(outcome.as_expected(), &out));
    }
    if s.mfa.is_some() {
        return run_mfa(&rt, &s, &out);
    }
    if s.files.is_some() {
        return run_files(&rt, &s, &out);
    }
    if s.groups.is_some() {
        return run_groups(&rt, &s, &out, show);
    }
    if s.sweep.is_some() {
        let steps = rt.block_on(sweep::steps(&s, &out, show))?;
        let ok = report::sweep::write(&s, &out, &steps)?;
        print!("{}", report::sweep::markdown(&s, &steps));
        println!("report: {}", out.join("report.md").display());
        return Ok(ok);
    }
    eprintln!(
        "running {} ({} users, {} messages at {} msg/s)",
        s.name, s.users.count, s.workload.messages, s.workload.rate
    );
    let outcome = rt.block_on(load::run::run(&s, &out, show))?;
    report::write_run(&out, &s, &outcome)?;
    print!("{}", report::summary(&outcome));
    if let Some(reason) = &s.expect.reason {
        println!("expected failures: {reason}");
    }
    Ok(verdict_line(outcome.as_expected(), &out))
}

/// A group-chat run (`[groups]`): its report with latency per recipient
/// and the fan-out's cost at each size.
fn run_groups(
    rt: &tokio::runtime::Runtime,
    s: &scenario::Scenario,
    out: &Path,
    show: bool,
) -> Result<bool> {
    eprintln!("running {}", s.name);
    let outcome = rt.block_on(load::groups::run(s, show))?;
    let ms = |us: u64| us as f64 / 1000.0;
    let mut figures = String::from(
        "| members | messages | copies read | latency p50 ms | p99 ms | max ms | send p50 ms (to SendOk) | first send p50 ms (key to every device) | bytes up per message (pairwise) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in &outcome.sizes {
        figures.push_str(&format!(
            "| {} | {} | {} of {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} ({}) |\n",
            t.members,
            t.sent,
            t.received,
            t.expected,
            ms(t.latency_us.p50),
            ms(t.latency_us.p99),
            ms(t.latency_us.max),
            ms(t.send_us.p50),
            ms(t.first_send_us.p50),
            t.upload_bytes,
            t.pairwise_bytes
        ));
        println!(
            "{}: group of {}: latency per recipient p50 {:.1} ms, p99 {:.1} ms; send {:.1} ms; first send {:.1} ms",
            s.name,
            t.members,
            ms(t.latency_us.p50),
            ms(t.latency_us.p99),
            ms(t.send_us.p50),
            ms(t.first_send_us.p50)
        );
    }
    figures.push('\n');
    report::lifetimes::write(out, s, &outcome, &figures, &outcome.checks)?;
    print!("{}", report::check_lines(&outcome.checks));
    Ok(verdict_line(outcome.as_expected(), out))
}

/// A second-factor run (`[mfa]`): its report with the login times.
fn run_mfa(rt: &tokio::runtime::Runtime, s: &scenario::Scenario, out: &Path) -> Result<bool> {
    eprintln!("running {} ({} users)", s.name, s.users.count);
    let outcome = rt.block_on(load::mfa::run(s))?;
    let p = outcome.login_p50_ms;
    let t = &outcome.tally;
    let figures = format!(
        "| login (request to reply, fresh connection) | logins | p50 ms |\n|---|---|---|\n\
         | password alone | {} | {:.1} |\n| password and a TOTP code | {} | {:.1} |\n\
         | password and a recovery code | {} | {:.1} |\n\n",
        t.password_only_us.len(),
        p.password_only,
        t.with_code_us.len(),
        p.with_code,
        t.with_recovery_us.len(),
        p.with_recovery_code
    );
    report::lifetimes::write(out, s, &outcome, &figures, &outcome.checks)?;
    println!(
        "{}: login p50 {:.1} ms with the password alone, {:.1} ms with a code, {:.1} ms with a recovery code",
        s.name, p.password_only, p.with_code, p.with_recovery_code
    );
    print!("{}", report::check_lines(&outcome.checks));
    Ok(verdict_line(outcome.as_expected(), out))
}

/// A file-transfer run (`[files]`): its report with each size's times,
/// throughput and peak memory.
fn run_files(rt: &tokio::runtime::Runtime, s: &scenario::Scenario, out: &Path) -> Result<bool> {
    eprintln!("running {}", s.name);
    let outcome = rt.block_on(load::files::run(s))?;
    let figures = report::files::table(&outcome);
    report::lifetimes::write(out, s, &outcome, &figures, &outcome.checks)?;
    print!("{figures}");
    print!("{}", report::check_lines(&outcome.checks));
    Ok(verdict_line(outcome.as_expected(), out))
}

/// Prints whether a run's checks came out as expected, and where its report is.
fn verdict_line(as_expected: bool, out: &Path) -> bool {
    println!(
        "{}; report: {}",
        if as_expected {
            "as expected"
        } else {
            "NOT AS EXPECTED"
        },
        out.join("report.md").display()
    );
    as_expected
}

fn run_compare(path: &Path, out: &Path, socketio_dir: &Path, quick: bool) -> Result<bool> {
    let mut s = scenario::load(path)?;
    let Some(c) = s.compare.as_mut() else {
        bail!("{}: no [compare] section", path.display());
    };
    if quick {
        c.repetitions = 1;
        c.step_secs = c.step_secs.min(1.0);
        c.rates.retain(|r| *r <= c.equal_load_rate * 4.0);
        s.workload.grace_secs = s.workload.grace_secs.min(5.0);
    }
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let comparison = runtime()?.block_on(compare::run(&s, out, socketio_dir, show))?;
    print!("{}", report::compare::markdown(&comparison));
    println!("report: {}", out.join("report.md").display());
    if !comparison.all_delivered {
        println!("a step below saturation lost, duplicated or reordered messages");
    }
    Ok(comparison.all_delivered)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ok(true): success; Ok(false): a verdict other than expected (exit 1);
    // Err: the command could not do its work (exit 2).
    let outcome: Result<bool> = match cli.command {
        Command::Serve {
            log_envelopes_mutant,
            keep_credentials_mutant,
            publish_envelopes_mutant,
            conformance_echo,
            args,
        } => {
            return serve(
                log_envelopes_mutant,
                keep_credentials_mutant,
                publish_envelopes_mutant,
                conformance_echo,
                args,
            );
        }
        Command::Floor { listen } => runtime()
            .and_then(|rt| rt.block_on(peers::serve_floor(listen)))
            .map(|()| true),
        Command::Run {
            scenario,
            out,
            quiet,
        } => run_scenario(&scenario, out, quiet),
        Command::List { dir } => list(&dir),
        Command::Reproduce {
            out,
            scenarios,
            quick,
        } => {
            let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
            runtime()
                .and_then(|rt| rt.block_on(reproduce::reproduce(&scenarios, &out, quick, show)))
                .map(|p| {
                    for c in &p.claims {
                        println!(
                            "{:<5} {}: {}",
                            if c.pass { "pass" } else { "FAIL" },
                            c.claim,
                            c.value
                        );
                    }
                    println!("report: {}", out.join("report.md").display());
                    // Claims are findings; `check` is the regression gate.
                    true
                })
        }
        Command::Compare {
            out, replot: true, ..
        } => report::compare::replot(&out).map(|c| {
            print!("{}", report::compare::markdown(&c));
            true
        }),
        Command::Compare {
            scenario,
            out,
            socketio_dir,
            quick,
            replot: false,
        } => run_compare(&scenario, &out, &socketio_dir, quick),
        Command::Adversary { out, only } => runtime()
            .and_then(|rt| rt.block_on(adversary::run(&out, only.as_deref())))
            .map(|verdicts| {
                print!(
                    "{}",
                    report::adversary::markdown(&adversary::rows(&verdicts))
                );
                println!("report: {}", out.join("report.md").display());
                verdicts.iter().all(|v| v.pass)
            }),
        Command::Connections {
            out,
            count,
            rate,
            secs,
            durability,
        } => run_connections(&out, count, rate, secs, &durability),
        Command::Capacity(args) => run_capacity(args),
        Command::Nodes {
            base,
            out,
            repeats,
            rate,
            secs,
            replot,
        } => run_nodes(base, out, repeats, rate, secs, replot),
        Command::Check { baseline, result } => check::run(&baseline, &result).map(|report| {
            print!("{}", report.text);
            report.ok
        }),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chatify-harness: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `chatify-harness capacity`'s options.
#[derive(Debug, clap::Args)]
struct CapacityArgs {
    /// Output directory.
    #[arg(long, default_value = "reports/capacity")]
    out: PathBuf,
    /// Connection counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    connections: Vec<usize>,
    /// Offered rates (msg/s), comma-separated, rising.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,5000,10000,20000,40000,60000,80000"
    )]
    rates: Vec<f64>,
    /// Systems: chatify-full, chatify-normal, chatify-postgres (one node on
    /// CHATIFY_PG_URL, its database sessions pinned beside it),
    /// socketio-base64, socketio-binary, floor.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chatify-full,chatify-normal,socketio-base64,socketio-binary,floor"
    )]
    systems: Vec<String>,
    /// Repeats of each system at each count (interleaved).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seconds each rate is offered.
    #[arg(long, default_value_t = 2.0)]
    step_secs: f64,
    /// Where the Socket.io peer (server.js, node_modules) lives.
    #[arg(long, default_value = "peers/socketio")]
    socketio_dir: PathBuf,
    /// Rewrite report.md from the summary.json already in --out, running
    /// nothing.
    #[arg(long)]
    replot: bool,
}

/// `__serve`: the reference server in this process, with the mutants asked for.
fn serve(
    log_envelopes_mutant: bool,
    keep_credentials_mutant: bool,
    publish_envelopes_mutant: bool,
    conformance_echo: bool,
    args: Vec<String>,
) -> ExitCode {
    let publisher = publish_envelopes_mutant
        .then(|| topology::envelope_publisher(&args))
        .flatten();
    let argv = std::iter::once("chatify-server".into()).chain(args.into_iter().map(Into::into));
    chatify_server::cli::run_customized(argv, |config| {
        if log_envelopes_mutant {
            config.envelope_observer = Some(topology::envelope_logger());
        }
        if keep_credentials_mutant {
            config.credential_observer = Some(topology::credential_keeper());
        }
        if let Some(p) = publisher {
            // Beside the log mutant, if that is on too.
            config.envelope_observer = Some(match config.envelope_observer.take() {
                Some(first) => {
                    chatify_server::EnvelopeObserver(std::sync::Arc::new(move |e: &[u8]| {
                        (first.0)(e);
                        (p.0)(e);
                    }))
                }
                None => p,
            });
        }
        config.conformance_echo = conformance_echo;
    })
}

fn run_nodes(
    base: PathBuf,
    out: PathBuf,
    repeats: usize,
    rate: f64,
    secs: f64,
    replot: bool,
) -> Result<bool> {
    if replot {
        return experiments::nodes::replot(&out).map(|()| true);
    }
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let opts = experiments::nodes::Options {
        base,
        out: out.clone(),
        repeats,
        rate,
        secs,
        command: format!("chatify-harness {command}"),
    };
    let n = runtime()?.block_on(experiments::nodes::run(&opts))?;
    println!("report: {}", out.join("report.md").display());
    Ok(n.faults.iter().all(|f| f.as_expected))
}

fn run_capacity(args: CapacityArgs) -> Result<bool> {
    if args.replot {
        let path = args.out.join("summary.json");
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let c: report::capacity::Capacity =
            serde_json::from_str(&text).with_context(|| path.display().to_string())?;
        report::capacity::write(&args.out, &c)?;
        println!("report: {}", args.out.join("report.md").display());
        return Ok(true);
    }
    let mut systems = Vec::new();
    for name in &args.systems {
        match capacity::System::parse(name) {
            Some(s) => systems.push(s),
            None => bail!(
                "unknown system {name:?}: one of chatify-full, chatify-normal, socketio-base64, socketio-binary, floor"
            ),
        }
    }
    let opts = capacity::Options {
        out: args.out,
        counts: args.connections,
        rates: args.rates,
        systems,
        repeats: args.repeats,
        step_secs: args.step_secs,
        socketio_dir: args.socketio_dir,
        command: std::iter::once("chatify-harness".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let c = runtime()?.block_on(capacity::run(&opts))?;
    print!("{}", report::capacity::markdown(&c));
    println!("report: {}", opts.out.join("report.md").display());
    Ok(true)
}

fn run_connections(
    out: &Path,
    count: usize,
    rate: f64,
    secs: f64,
    durability: &str,
) -> Result<bool> {
    let durability = match durability {
        "full" => chatify_server::store::sqlite::Durability::Full,
        "normal" => chatify_server::store::sqlite::Durability::Normal,
        other => bail!("--durability is full or normal, not {other:?}"),
    };
    let c = runtime()?.block_on(connections::run(out, count, rate, secs, durability))?;
    print!("{}", report::connections::markdown(&c));
    println!("report: {}", out.join("report.md").display());
    Ok(c.delivered == c.planned)
}

/// The scenarios in a directory, one line each.
fn list(dir: &Path) -> Result<bool> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        match scenario::load(&path) {
            Ok(s) => println!(
                "{:<40} {}",
                path.display(),
                s.description.lines().next().unwrap_or("")
            ),
            Err(e) => println!("{:<40} INVALID: {e:#}", path.display()),
        }
    }
    Ok(true)
}
