//! A lifetimes run's `report.md` and `summary.json`.

use anyhow::{Context as _, Result};
use std::path::Path;

use crate::metrics::Check;
use crate::scenario::Scenario;

/// Writes `summary.json` (everything the run measured) and `report.md` (the
/// scenario, `figures` (markdown, may be empty) and its check table).
pub(crate) fn write(
    out: &Path,
    s: &Scenario,
    summary: &impl serde::Serialize,
    figures: &str,
    checks: &[Check],
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let json = serde_json::to_string_pretty(summary)?;
    std::fs::write(out.join("summary.json"), json)?;
    let md = format!(
        "# {}\n\n{}\n\n{figures}{}",
        s.name,
        s.description.trim(),
        super::check_table(checks)
    );
    Ok(std::fs::write(out.join("report.md"), md)?)
}
