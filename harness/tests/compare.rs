//! `chatify-harness compare` with the real peers: the bare relay floor and
//! Socket.io (when installed: `peers/socketio/install.sh`; `.ci/run`
//! installs it and sets CHATIFY_REQUIRE_SOCKETIO=1 so that it is not skipped).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn socketio_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../peers/socketio")
}

fn socketio_installed() -> bool {
    let installed = socketio_dir().join("node_modules/socket.io").is_dir();
    if !installed && std::env::var_os("CHATIFY_REQUIRE_SOCKETIO").is_some() {
        panic!("CHATIFY_REQUIRE_SOCKETIO is set but peers/socketio is not installed");
    }
    installed
}

fn scenario(dir: &Path, systems: &[&str]) -> PathBuf {
    let path = dir.join("compare.toml");
    let systems = systems
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &path,
        format!(
            r#"
name = "compare-test"
description = "tiny comparison"
[topology]
server = "child"
[users]
count = 4
[workload]
messages = 1
rate = 1.0
size = [64, 128]
grace_secs = 5.0
[compare]
systems = [{systems}]
rates = [100.0, 200.0]
equal_load_rate = 100.0
step_secs = 1.0
repetitions = 2
# Far from saturation on any machine; a stall on a busy one (CI runs tests
# side by side) must not end a system's steps early.
saturation_fraction = 0.5
saturation_p99_ms = 5000.0
"#
        ),
    )
    .unwrap();
    path
}

fn compare(path: &Path, out: &Path, socketio: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chatify-harness"))
        .arg("compare")
        .arg(path)
        .arg("--out")
        .arg(out)
        .arg("--socketio-dir")
        .arg(socketio)
        .output()
        .unwrap()
}

#[test]
fn every_system_carries_the_same_workload_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut systems = vec!["chatify", "chatify-plaintext", "floor"];
    if socketio_installed() {
        systems.push("socketio");
    } else {
        eprintln!("Socket.io peer not installed: measuring the other systems only");
    }
    let out = dir.path().join("out");
    let output = compare(&scenario(dir.path(), &systems), &out, &socketio_dir());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let steps = summary["steps"].as_array().unwrap();
    for system in &systems {
        let mine: Vec<_> = steps
            .iter()
            .filter(|s| s["system"].as_str() == Some(system))
            .collect();
        // Two repetitions of two rates, none saturated at these rates.
        assert_eq!(mine.len(), 4, "{system}: {mine:?}");
        for s in mine {
            assert_eq!(s["ok"], true, "{system}: {s}");
            assert!(s["delivered_rate"].as_f64().unwrap() > 0.0);
        }
        assert!(
            stdout.contains(&format!("| {system} |")),
            "{system} missing from the table:\n{stdout}"
        );
        assert_eq!(
            summary["systems"][system]["saturation_msgs"]["n"], 2,
            "{system}"
        );
    }
    // The peers' clients encrypt every message (same envelopes as Chatify).
    assert!(
        summary["systems"]["floor"]["crypto_p50_us"]["mean"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let svg = std::fs::read_to_string(out.join("fig_compare.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("floor") && svg.contains("chatify"));
}

#[test]
fn a_missing_socketio_install_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = compare(
        &scenario(dir.path(), &["socketio"]),
        &dir.path().join("out"),
        &dir.path().join("no-such-peer"),
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("install.sh"), "{stderr}");
}
