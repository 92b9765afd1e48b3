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

/// The session target's oracle is not vacuous: a decrypt path that accepts a
/// tampered envelope, and one that changes the session when it fails, both
/// make it panic (as the fuzzer would report them).
#[test]
fn the_session_oracle_catches_a_broken_decrypt_path() {
    use chatify_core::Session;
    use chatify_core::fuzzing::session_decrypt_with;
    use chatify_proto::Envelope;

    let genuine = chatify_core::fuzzing::genuine_envelopes();
    let mut tampered = genuine[1].clone();
    *tampered.last_mut().unwrap() ^= 1;

    // MUTANT: a tag failure is ignored and the plaintext handed out anyway.
    fn accepts_forgeries(s: &mut Session, e: &Envelope) -> Result<Vec<u8>, chatify_core::Error> {
        s.decrypt(e).map(|p| p.to_vec()).or(Ok(Vec::new()))
    }
    // MUTANT: a failed decryption still moves the session (here: on to the
    // genuine setup message).
    fn not_transactional(s: &mut Session, e: &Envelope) -> Result<Vec<u8>, chatify_core::Error> {
        let result = s.decrypt(e).map(|p| p.to_vec());
        if result.is_err() {
            let first = Envelope::decode(&chatify_core::fuzzing::genuine_envelopes()[1]).unwrap();
            let _ = s.decrypt(&first);
        }
        result
    }

    let caught = |decrypt: chatify_core::fuzzing::DecryptFn| -> String {
        let t = tampered.clone();
        let err = std::panic::catch_unwind(move || session_decrypt_with(&t, decrypt))
            .expect_err("the oracle let a broken decrypt path through");
        err.downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| err.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    };
    assert!(caught(accepts_forgeries).contains("never sent"));
    assert!(caught(not_transactional).contains("changed the session"));
    // The real path passes on the same input.
    chatify_core::fuzzing::session_decrypt(&tampered);
}
