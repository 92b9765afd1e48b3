//! The harness's shape, checked: its parts import each other one way only,
//! no function is longer than a screenful and a half, and the workspace
//! keeps one copy of its small helpers (statistics, hex, signals). Each
//! checker is shown failing on a deliberately bad input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

/// The harness's parts, lowest first: a part may import only parts before
/// it (its own modules aside). `main.rs` sits above all of them.
const LAYERS: &[&str] = &[
    "plaintext",
    "scenario",
    "topology",
    "taps",
    "metrics",
    "report",
    "load",
    "experiments",
];

/// Longest function the harness allows, in lines.
const MAX_FN_LINES: usize = 120;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() && name != "target" && name != "corpus" && name != "node_modules" {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The part of the harness a source file belongs to.
fn part_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "main").then(|| name.to_owned())
}

/// The parts named by `crate::…` paths in code (comments left out).
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Every import that goes up or sideways: (importer, imported).
fn violations(files: &[(String, String)]) -> Vec<(String, String)> {
    let rank = |p: &str| LAYERS.iter().position(|l| *l == p);
    let mut bad = Vec::new();
    for (part, text) in files {
        let Some(mine) = rank(part) else {
            bad.push((part.clone(), "(a part missing from LAYERS)".to_owned()));
            continue;
        };
        for imported in imports(text) {
            match rank(&imported) {
                Some(theirs) if theirs < mine || imported == *part => {}
                _ => bad.push((part.clone(), imported)),
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

/// (name, first line, length) of every function longer than `max` lines:
/// from its `fn` line to the closing brace at the same indentation.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let sig = ["pub(crate) ", "pub(super) ", "pub ", "async ", "const "]
            .iter()
            .fold(trimmed, |s, p| s.strip_prefix(p).unwrap_or(s));
        let sig = sig.strip_prefix("async ").unwrap_or(sig);
        let Some(rest) = sig.strip_prefix("fn ") else {
            continue;
        };
        if line.trim_end().ends_with(';') {
            continue;
        }
        let close = format!("{indent}}}");
        let Some(end) = lines[i + 1..].iter().position(|l| *l == close) else {
            continue;
        };
        let len = end + 2;
        if len > max {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((name, i + 1, len));
        }
    }
    out
}

/// Definitions that must exist once in the workspace, and where.
const ONE_COPY: &[(&str, &str)] = &[
    ("fn mean(", "harness/src/metrics/stats.rs"),
    ("fn sd(", "harness/src/metrics/stats.rs"),
    ("fn std_dev(", "harness/src/metrics/stats.rs"),
    ("fn hex(", "reference/proto/src/hex.rs"),
    ("fn to_hex(", "reference/proto/src/hex.rs"),
    ("fn encode_hex(", "reference/proto/src/hex.rs"),
    ("fn decode_hex(", "reference/proto/src/hex.rs"),
    // Signals go through rustix, /proc through procfs.
    ("Command::new(\"kill\")", "(nowhere)"),
    ("\"/proc/", "(nowhere)"),
];

/// (pattern, file) of every copy outside its one home.
fn copies(files: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, text) in files {
        for (pattern, home) in ONE_COPY {
            let in_code = text
                .lines()
                .any(|l| !l.trim_start().starts_with("//") && l.contains(pattern));
            if in_code && !path.ends_with(home) {
                out.push(((*pattern).to_owned(), path.clone()));
            }
        }
    }
    out
}

fn harness_files() -> Vec<(String, String)> {
    let src = root().join("harness/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .filter_map(|f| Some((part_of(&src, &f)?, std::fs::read_to_string(&f).ok()?)))
        .collect()
}

#[test]
fn parts_import_downwards_only() {
    let files = harness_files();
    assert!(files.len() > 20, "the harness's sources were not found");
    assert_eq!(violations(&files), Vec::<(String, String)>::new());
}

#[test]
fn no_harness_function_is_too_long() {
    let src = root().join("harness");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (name, line, len) in long_functions(&text, MAX_FN_LINES) {
            long.push(format!("{}:{line} {name} ({len} lines)", f.display()));
        }
    }
    assert_eq!(long, Vec::<String>::new());
}

#[test]
fn the_workspace_keeps_one_copy_of_each_helper() {
    let mut files = Vec::new();
    for dir in ["reference", "harness", "benches", "fuzz/fuzz_targets"] {
        rust_files(&root().join(dir), &mut files);
    }
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(root()).unwrap_or(f);
            (
                rel.to_string_lossy().into_owned(),
                std::fs::read_to_string(f).unwrap(),
            )
        })
        .collect();
    assert!(texts.len() > 50, "the workspace's sources were not found");
    // This file names the patterns; it defines none of them.
    let others: Vec<(String, String)> = texts
        .into_iter()
        .filter(|(p, _)| !p.ends_with("harness/tests/structure.rs"))
        .collect();
    assert_eq!(copies(&others), Vec::<(String, String)>::new());
}

// The checkers, on deliberately bad inputs.

#[test]
fn an_upward_import_is_caught() {
    let files = vec![
        ("report".to_owned(), "use crate::metrics::Check;".to_owned()),
        (
            "report".to_owned(),
            "fn f() { crate::experiments::reproduce::run(); }".to_owned(),
        ),
        (
            "metrics".to_owned(),
            "// a comment naming crate::load is fine".to_owned(),
        ),
        ("newpart".to_owned(), String::new()),
    ];
    assert_eq!(
        violations(&files),
        vec![
            (
                "newpart".to_owned(),
                "(a part missing from LAYERS)".to_owned()
            ),
            ("report".to_owned(), "experiments".to_owned()),
        ]
    );
}

#[test]
fn a_long_function_is_caught() {
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES - 1);
    let text = format!(
        "pub(crate) async fn long() {{\n{body}}}\n\nfn short() {{\n    let y = 2;\n}}\nfn decl();\n"
    );
    assert_eq!(
        long_functions(&text, MAX_FN_LINES),
        vec![("long".to_owned(), 1, MAX_FN_LINES + 1)]
    );
    let fits = format!(
        "fn fits() {{\n{}}}\n",
        "    let x = 1;\n".repeat(MAX_FN_LINES - 2)
    );
    assert!(long_functions(&fits, MAX_FN_LINES).is_empty());
}

#[test]
fn a_second_copy_is_caught() {
    let files = vec![
        (
            "harness/src/metrics/stats.rs".to_owned(),
            "pub(crate) fn mean(xs: &[f64]) -> f64 { 0.0 }".to_owned(),
        ),
        (
            "benches/src/lib.rs".to_owned(),
            "fn mean(xs: &[f64]) -> f64 { 0.0 }\n// fn hex( in a comment\nfn hex(b: &[u8]) -> String { String::new() }".to_owned(),
        ),
    ];
    assert_eq!(
        copies(&files),
        vec![
            ("fn mean(".to_owned(), "benches/src/lib.rs".to_owned()),
            ("fn hex(".to_owned(), "benches/src/lib.rs".to_owned()),
        ]
    );
}
