//! The report: what people and machines read after a command.
//!
//! - [`run`]: `summary.json`, `report.md` and the terminal summary of one
//!   scenario run, and the check tables every command prints;
//! - [`paper`], [`compare`], [`adversary`], [`sweep`], [`lifetimes`],
//!   [`connections`], [`nodes`]: the
//!   data each experiment produces (plain, serializable series) and its
//!   `report.md`;
//! - [`figures`]: the SVG figures, drawn from those series.
//!
//! The report imports [`crate::scenario`] and [`crate::metrics`] only: it
//! never runs anything and never imports an experiment, so an experiment can
//! be redrawn from its `summary.json` (`compare --replot`).
//!
//! ```text
//!  experiments ─▶ data (report::paper::Paper, report::compare::Comparison, …)
//!              ─▶ report.md, summary.json, fig_*.svg
//! ```

pub(crate) mod adversary;
pub(crate) mod capacity;
pub(crate) mod compare;
pub(crate) mod connections;
pub(crate) mod figures;
pub(crate) mod files;
pub(crate) mod lifetimes;
pub(crate) mod nodes;
pub(crate) mod paper;
pub(crate) mod run;
pub(crate) mod sweep;

pub(crate) use run::{check_lines, check_table, summary, write_run};
