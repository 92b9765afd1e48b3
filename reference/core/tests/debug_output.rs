//! `Debug` output of every type that holds or touches secrets shows public
//! parts only: pinned by insta, and checked against every secret the run drew.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use chatify_core::test_vectors::VectorRng;
use chatify_core::{Device, SafetyNumber, Session, VerifiedBundle};
use chatify_proto::frame::{self, Address};
use chatify_proto::{Envelope, PrekeyBundle};

/// Every secret byte string (as drawn from the RNG) that occurs in `text`,
/// in lower- or upper-case hex or as a Rust byte-array literal (any layout).
fn leaked(text: &str, secrets: &[Vec<u8>]) -> Vec<String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut found = Vec::new();
    for s in secrets.iter().filter(|s| s.len() >= 16) {
        let hex = chatify_proto::hex::lower(s);
        let array: String = format!("{:?}", &s[..8])
            .trim_end_matches(']')
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if compact.contains(&hex)
            || compact.contains(&hex.to_uppercase())
            || compact.contains(&array)
        {
            found.push(hex);
        }
    }
    found
}

struct Run {
    text: String,
    secrets: Vec<Vec<u8>>,
}

fn run() -> Run {
    let mut rng = VectorRng::new([7; 32]);
    let alice = Device::generate(&mut rng);
    let mut bob = Device::generate(&mut rng);
    let published = bob.publish_keys(2, &mut rng);
    let bundle = PrekeyBundle {
        user: "bob".into(),
        device: 1,
        identity: published.identity.clone(),
        signed_prekey: published.signed_prekey.clone(),
        one_time_prekey: published.one_time_prekeys.first().cloned(),
    };
    let verified = VerifiedBundle::verify(&bundle).unwrap();
    let mut a = Session::initiate(&alice, verified.clone(), &mut rng).unwrap();
    let m1 = a
        .encrypt(*b"conversation-001", b"secret plaintext one", &mut rng)
        .unwrap();
    let (mut b, _) = bob.accept(&m1).unwrap();
    let m2 = b
        .encrypt(*b"conversation-001", b"secret plaintext two", &mut rng)
        .unwrap();
    a.decrypt(&m2).unwrap();
    let secrets = rng.take_draws();
    let text = format!(
        "{alice:#?}\n{bob:#?}\n{verified:#?}\n{a:#?}\n{b:#?}\n{m1:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}",
        SafetyNumber::new(&alice.public_identity(), &bob.public_identity()),
        frame::Register {
            username: "alice".into(),
            password: "hunter2-password".into()
        },
        frame::Login {
            username: "alice".into(),
            password: "hunter2-password".into(),
            device: 1,
            second_factor: Some("123456".into())
        },
        frame::Authenticate {
            token: secrets[0].clone()
        },
        frame::Send {
            to: Address {
                user: "bob".into(),
                device: 1
            },
            conversation: [1; 16],
            message_id: [2; 16],
            envelope: b"secret plaintext one".to_vec()
        },
        Envelope::decode(&m2.encode()).unwrap(),
    );
    Run { text, secrets }
}

#[test]
fn debug_shows_public_parts_only() {
    let run = run();
    assert!(run.secrets.len() >= 9, "{}", run.secrets.len());
    assert_eq!(leaked(&run.text, &run.secrets), Vec::<String>::new());
    for word in ["hunter2", "123456", "secret plaintext"] {
        assert!(!run.text.contains(word), "{word} in Debug output");
    }
    insta::assert_snapshot!("debug_output", run.text);
}

/// The leak check above is not vacuous: it finds a secret printed in any of
/// the forms it looks for.
#[test]
fn leak_check_catches_printed_secrets() {
    let run = run();
    let s = &run.secrets[1];
    for bad in [
        format!("{} {}", run.text, chatify_proto::hex::lower(s)),
        format!("{} {}", run.text, chatify_proto::hex::upper(s)),
        format!("{} {:?}", run.text, s),
        format!("{} {:#?}", run.text, s),
    ] {
        assert_eq!(
            leaked(&bad, &run.secrets),
            vec![chatify_proto::hex::lower(s)]
        );
    }
}
