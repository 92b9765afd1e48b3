//! The deterministic transcript: pinned by insta, and carried verbatim by
//! docs/PROTOCOL.md. Run with `CHATIFY_BLESS=1` to rewrite the document's
//! generated section after an intended protocol change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

const BEGIN: &str = "<!-- BEGIN GENERATED VECTORS: cargo test -p chatify-core --test vectors -->\n";
const END: &str = "<!-- END GENERATED VECTORS -->";

fn protocol_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/PROTOCOL.md")
}

#[test]
fn transcript_is_deterministic_and_pinned() {
    let a = chatify_core::test_vectors::protocol_vectors().unwrap();
    let b = chatify_core::test_vectors::protocol_vectors().unwrap();
    assert_eq!(a, b);
    insta::assert_snapshot!("protocol_vectors", a);
}

#[test]
fn protocol_md_carries_the_current_vectors() {
    let vectors = chatify_core::test_vectors::protocol_vectors().unwrap();
    let path = protocol_md();
    let doc = std::fs::read_to_string(&path).unwrap();
    let start = doc.find(BEGIN).expect("PROTOCOL.md has no BEGIN marker") + BEGIN.len();
    let end = doc.find(END).expect("PROTOCOL.md has no END marker");
    if std::env::var_os("CHATIFY_BLESS").is_some() {
        let updated = format!("{}{}{}", &doc[..start], vectors, &doc[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        doc[start..end] == vectors,
        "docs/PROTOCOL.md's test vectors differ from what the code generates; \
         rerun with CHATIFY_BLESS=1 if the protocol change is intended"
    );
}

#[test]
fn vector_rng_is_the_specified_stream() {
    use chatify_core::rand_core::Rng;
    use hmac::{Hmac, KeyInit, Mac};
    let mut rng = chatify_core::test_vectors::VectorRng::new([0x42; 32]);
    let mut got = [0u8; 40];
    rng.fill_bytes(&mut got);
    let mut expected = Vec::new();
    for i in 0u64..2 {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&[0x42; 32]).unwrap();
        mac.update(b"chatify/v1/vector-rng");
        mac.update(&i.to_be_bytes());
        expected.extend_from_slice(&mac.finalize().into_bytes());
    }
    assert_eq!(&got[..], &expected[..40]);
}
