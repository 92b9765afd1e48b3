//! The test-only code (`VectorRng`, the transcripts, the fuzzing entry
//! points) sits behind the `test-support` feature: no shipped program links
//! it. The check reads the features `cargo tree` resolves for each program's
//! normal dependencies, and is shown to see the feature where tests do
//! enable it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../test-support/closure.rs"]
#[allow(dead_code)]
mod closure;

/// `(package, features)` of every chatify crate `package` links, through
/// the given kinds of edges.
fn chatify_features(package: &str, edges: &str) -> Vec<(String, String)> {
    closure::tree(package, edges, "{p} [{f}]")
        .iter()
        .filter(|l| l.starts_with("chatify-"))
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            let features = l.split('[').nth(1)?.split(']').next()?;
            Some((name.to_owned(), features.to_owned()))
        })
        .collect()
}

fn with_test_support(deps: &[(String, String)]) -> Vec<&str> {
    deps.iter()
        .filter(|(_, f)| f.split(',').any(|f| f.trim() == "test-support"))
        .map(|(p, _)| p.as_str())
        .collect()
}

#[test]
fn no_shipped_program_links_test_only_code() {
    for program in ["chatify-client", "chatify-server", "chatify-harness"] {
        let deps = chatify_features(program, "normal");
        assert!(
            deps.iter().any(|(p, _)| p == "chatify-proto"),
            "{program}: closure looks wrong: {deps:?}"
        );
        assert_eq!(
            with_test_support(&deps),
            Vec::<&str>::new(),
            "{program} links test-only code"
        );
    }
}

#[test]
fn the_check_sees_test_support_where_tests_enable_it() {
    // The core's own tests enable the feature through a dev-dependency: the
    // same reading must find it there.
    let deps = chatify_features("chatify-core", "normal,dev");
    assert!(
        with_test_support(&deps).contains(&"chatify-core"),
        "{deps:?}"
    );
}
