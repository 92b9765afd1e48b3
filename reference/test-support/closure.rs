//! Shared by the crates' `dependency_closure` tests (included with `#[path]`):
//! the normal (non-dev, non-build) dependency closure of a workspace package,
//! as `cargo tree` resolves it.

use std::process::Command;

/// Package names in the normal dependency closure of `package`.
pub(crate) fn closure(package: &str) -> Vec<String> {
    tree(package, "normal", "{p}")
        .iter()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The lines `cargo tree -e EDGES -f FORMAT -p PACKAGE` prints (no prefix).
pub(crate) fn tree(package: &str, edges: &str, format: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-e", edges, "--prefix", "none", "-f", format])
        .args(["-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The members of `forbidden` found in `deps`.
pub(crate) fn found<'a>(deps: &'a [String], forbidden: &[&str]) -> Vec<&'a str> {
    deps.iter()
        .map(String::as_str)
        .filter(|d| forbidden.contains(d))
        .collect()
}
