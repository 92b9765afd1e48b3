//! A lifetimes run's `report.md` and `summary.json`.

use std::path::Path;

use crate::metrics::Check;
use crate::scenario::Scenario;

/// Writes `summary.json` (everything the run measured) and `report.md` (the
/// scenario and its check table).
pub(crate) fn write(
    out: &Path,
    s: &Scenario,
    summary: &impl serde::Serialize,
    checks: &[Check],
) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?;
    std::fs::write(out.join("summary.json"), json).map_err(|e| e.to_string())?;
    let md = format!(
        "# {}\n\n{}\n\n{}",
        s.name,
        s.description.trim(),
        super::check_table(checks)
    );
    std::fs::write(out.join("report.md"), md).map_err(|e| e.to_string())
}
