//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`), replayed on
//! stable: every file, through the same entry points the fuzzers call.
//! `CHATIFY_BLESS=1` writes the generated seeds; without it, a generated seed
//! missing from the corpus fails the test (the corpus follows the protocol).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("frame_decode", chatify_proto::fuzzing::frame_decode),
    ("envelope_decode", chatify_proto::fuzzing::envelope_decode),
    ("bundle_decode", chatify_core::fuzzing::bundle_decode_verify),
    ("session_decrypt", chatify_core::fuzzing::session_decrypt),
];

#[test]
fn seeds_are_in_the_corpus() {
    let bless = std::env::var_os("CHATIFY_BLESS").is_some();
    for (target, name, bytes) in chatify_core::fuzzing::seeds() {
        let path = corpus(target).join(&name);
        if bless {
            std::fs::create_dir_all(corpus(target)).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let stored = std::fs::read(&path).unwrap_or_else(|_| {
                panic!("{} is missing; rerun with CHATIFY_BLESS=1", path.display())
            });
            assert_eq!(
                stored,
                bytes,
                "{} is stale; rerun with CHATIFY_BLESS=1",
                path.display()
            );
        }
    }
}

#[test]
fn every_corpus_file_replays_cleanly() {
    let mut counts = Vec::new();
    for (target, run) in TARGETS {
        let mut n = 0;
        for entry in std::fs::read_dir(corpus(target)).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            run(&data);
            n += 1;
        }
        assert!(n > 0, "{target}: empty corpus");
        counts.push(format!("{target}: {n}"));
    }
    println!("replayed corpora: {}", counts.join(", "));
}
