//! The malicious-server suite's `report.md`, from plain rows.

use std::fmt::Write as _;

/// One attack as the report shows it.
#[derive(Debug, Clone)]
pub(crate) struct AttackRow {
    pub(crate) attack: &'static str,
    pub(crate) description: &'static str,
    /// The expected reaction, as named in the suite.
    pub(crate) expect: String,
    /// The reason a client must give, where the reaction names one.
    pub(crate) reason: Option<&'static str>,
    /// (pass, evidence) of each check, in the report's column order.
    pub(crate) checks: Vec<(bool, String)>,
    pub(crate) pass: bool,
}

/// The suite's `report.md`.
pub(crate) fn markdown(verdicts: &[AttackRow]) -> String {
    let mut md = String::from(
        "# Malicious server suite\n\nThe real server over an adversarial store (`harness/src/experiments/adversary.rs`): every \
         attack below is made by the server on what it relays, redelivers or serves from its key \
         directory, against the reference clients. Each attack runs on fresh accounts after an \
         honest exchange between Alice, Bob and Carol.\n\n\
         | attack | what the server does | expected | nothing forged shown | expected reaction | next honest message | verdict |\n|---|---|---|---|---|---|---|\n",
    );
    for v in verdicts {
        let cell = |i: usize| {
            v.checks.get(i).map_or("–".to_owned(), |(pass, evidence)| {
                format!("{} ({evidence})", if *pass { "pass" } else { "FAIL" })
            })
        };
        let _ = writeln!(
            md,
            "| {} | {} | {}{} | {} | {} | {} | {} |",
            v.attack,
            v.description,
            v.expect,
            v.reason.map(|r| format!(" (\"{r}\")")).unwrap_or_default(),
            cell(0),
            cell(1),
            cell(2),
            if v.pass { "**pass**" } else { "**FAIL**" }
        );
    }
    let passed = verdicts.iter().filter(|v| v.pass).count();
    let _ = writeln!(md, "\n{passed} of {} attacks defeated.", verdicts.len());
    md
}
