//! `reproduce --quick` end to end: six readable SVG figures, a report and a
//! summary; `check` passes it against a baseline made from the same run and
//! fails a deliberately degraded copy. The test checks the gate's mechanics,
//! never this machine's timings: a debug build's ratios move with the
//! machine's disk and load. CI gates the release build's ratios against
//! reports/baseline.json.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

fn harness() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chatify-harness"));
    c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    c
}

#[test]
fn reproduce_quick_then_check() {
    let out = tempfile::tempdir().unwrap();
    let status = harness()
        .args(["reproduce", "--quick", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let expected = [
        ("fig1_performance_security.svg", "Security checks"),
        (
            "fig2_data_collection.svg",
            "time since the sample began (ms)",
        ),
        ("fig3_latency_throughput.svg", "latency (ms, log scale)"),
        ("fig4_e2ee_process.svg", "Server - bytes read and stored"),
        ("fig5_results.svg", "measured value / verdict"),
        ("fig6_future_scope.svg", "Performance optimisation"),
    ];
    for (file, label) in expected {
        let svg = std::fs::read_to_string(out.path().join(file)).unwrap();
        assert!(svg.starts_with("<svg"), "{file}");
        assert!(svg.contains(label), "{file} lacks {label:?}");
    }
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for fig in 1..=6 {
        assert!(
            report.contains(&format!("Fig. {fig}")),
            "report lacks Fig. {fig}"
        );
    }
    let summary_path = out.path().join("summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    let baseline = out.path().join("baseline.json");
    let same_run = serde_json::json!({
        "description": "this run's own ratios",
        "p50_ratio": summary["p50_ratio"]["median"],
        "throughput_ratio": summary["throughput_ratio"],
        "tolerance": {"p50_ratio": 0.4, "throughput_ratio": 0.3},
    });
    std::fs::write(&baseline, same_run.to_string()).unwrap();
    let ok = harness()
        .args(["check", "--baseline"])
        .arg(&baseline)
        .arg(&summary_path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    // A degraded result: a leak tap failed and E2EE became three times slower.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    v["security"][2][1] = "fail".into();
    for statistic in ["mean", "median"] {
        v["p50_ratio"][statistic] = (v["p50_ratio"][statistic].as_f64().unwrap() * 3.0).into();
    }
    let degraded = out.path().join("degraded.json");
    std::fs::write(&degraded, v.to_string()).unwrap();
    let bad = harness()
        .args(["check", "--baseline"])
        .arg(&baseline)
        .arg(&degraded)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{text}");
    assert!(
        text.contains("REGRESSION: security check leak.wire is fail"),
        "{text}"
    );
    assert!(text.contains("REGRESSION: p50 latency ratio"), "{text}");
}
