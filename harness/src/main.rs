//! `chatify-harness`: drives the Chatify reference implementation and writes
//! reports.
//!
//! At this stage the reference server and the scenario runner do not exist
//! yet; `reproduce` runs the end-to-end-encryption core with two in-process
//! parties and writes what happened, checked, to `reports/paper/`. It says so
//! in its output and in the report.

#![forbid(unsafe_code)]

mod exchange;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chatify-harness",
    version,
    about = "Drive the Chatify reference implementation and write reports",
    long_about = "Drives the Chatify reference implementation through checked runs and writes \
                  reports.\n\nThis build contains the E2EE core only: `reproduce` runs two \
                  in-process parties over the real envelope encoding (no server yet) and checks \
                  every delivery, tamper and replay outcome."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the two-party in-process exchange and write its checked transcript.
    ///
    /// Alice and Bob (fresh devices) set up a session from Bob's prekey
    /// bundle and exchange messages in both directions, partly out of order;
    /// every envelope crosses the real wire encoding. A tampered copy and a
    /// replay of each message are offered too and must be rejected. Writes
    /// `report.md` to the output directory and exits non-zero if a check fails.
    Reproduce {
        /// Directory to write the report to.
        #[arg(long, default_value = "reports/paper")]
        out: PathBuf,
        /// Messages per direction (at most 1000: each batch is delivered in reverse,
        /// which needs one skipped key per message and the core keeps at most 1000 per chain).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1000))]
        messages: u32,
        /// Fewer messages (20 per direction), for CI.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Reproduce {
            out,
            messages,
            quick,
        } => {
            let messages = if quick { 20 } else { messages };
            eprintln!(
                "chatify-harness: the reference server and the scenario runner are not built yet; \
                 running the two-party in-process E2EE exchange ({messages} messages each way)."
            );
            let result = exchange::run(messages, &mut rand::rng());
            let report = result.markdown();
            if let Err(e) = std::fs::create_dir_all(&out)
                .and_then(|()| std::fs::write(out.join("report.md"), &report))
            {
                eprintln!("chatify-harness: cannot write {}: {e}", out.display());
                return ExitCode::from(2);
            }
            println!("{}", result.summary());
            println!("report: {}", out.join("report.md").display());
            if result.all_passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
