//! Properties of sessions, checked with proptest over arbitrary inputs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use chatify_core::{Error, MAX_SKIP, Session};
use chatify_proto::Envelope;
use common::{CONVERSATION, pair, relay};
use proptest::prelude::*;
use proptest::sample::Index;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    }
}

/// Decrypts and asserts that the session state did not change on failure.
fn try_decrypt(session: &mut Session, env: &Envelope) -> Result<Vec<u8>, Error> {
    let before = session.to_bytes();
    match session.decrypt(env) {
        Ok(pt) => Ok(pt.to_vec()),
        Err(e) => {
            assert_eq!(*before, *session.to_bytes(), "state changed after {e:?}");
            Err(e)
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any plaintexts, sent in rounds that alternate direction (each round a
    /// DH ratchet step), delivered in any order within each round, decrypt to
    /// what was sent.
    #[test]
    fn round_trip_in_any_delivery_order(
        rounds in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8), any::<u64>()),
            1..6,
        ),
        seed in any::<u8>(),
    ) {
        let mut p = pair(seed);
        for (from_alice, messages, shuffle) in rounds {
            let (tx, rx) = if from_alice { (&mut p.alice, &mut p.bob) } else { (&mut p.bob, &mut p.alice) };
            let mut sent: Vec<(Envelope, Vec<u8>)> = messages
                .into_iter()
                .map(|m| (tx.encrypt(CONVERSATION, &m, &mut p.rng).unwrap(), m))
                .collect();
            // Deterministic shuffle from the generated seed.
            let mut s = shuffle;
            for i in (1..sent.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                sent.swap(i, (s >> 33) as usize % (i + 1));
            }
            for (env, m) in sent {
                prop_assert_eq!(rx.decrypt(&relay(&env)).unwrap().to_vec(), m);
            }
        }
    }

    /// Flipping any bit of an encoded envelope is rejected (at decoding or
    /// decryption), leaves the session unchanged, and the honest envelope
    /// still decrypts afterwards.
    #[test]
    fn any_bit_flip_is_rejected(
        len in 0usize..200,
        bit in any::<Index>(),
        setup_message in any::<bool>(),
        seed in any::<u8>(),
    ) {
        let mut p = pair(seed);
        let honest = if setup_message {
            // Still awaiting Bob's reply: carries the prekey header.
            p.alice.encrypt(CONVERSATION, &vec![7u8; len], &mut p.rng).unwrap()
        } else {
            let reply = p.bob.encrypt(CONVERSATION, b"reply", &mut p.rng).unwrap();
            p.alice.decrypt(&reply).unwrap();
            p.alice.encrypt(CONVERSATION, &vec![7u8; len], &mut p.rng).unwrap()
        };
        prop_assert_eq!(honest.prekey.is_some(), setup_message);
        let mut bytes = honest.encode();
        let i = bit.index(bytes.len() * 8);
        bytes[i / 8] ^= 1 << (i % 8);
        if let Ok(tampered) = Envelope::decode(&bytes) {
            prop_assert!(try_decrypt(&mut p.bob, &tampered).is_err());
        }
        prop_assert_eq!(try_decrypt(&mut p.bob, &honest).unwrap(), vec![7u8; len]);
    }

    /// A replayed envelope is rejected as a duplicate, and the next honest
    /// message still decrypts.
    #[test]
    fn replay_is_rejected(count in 1usize..10, replay in any::<Index>(), seed in any::<u8>()) {
        let mut p = pair(seed);
        let sent: Vec<Envelope> = (0..count)
            .map(|i| p.alice.encrypt(CONVERSATION, format!("m{i}").as_bytes(), &mut p.rng).unwrap())
            .collect();
        for env in &sent {
            p.bob.decrypt(env).unwrap();
        }
        let again = &sent[replay.index(count)];
        prop_assert_eq!(try_decrypt(&mut p.bob, again), Err(Error::Duplicate));
        let next = p.alice.encrypt(CONVERSATION, b"next", &mut p.rng).unwrap();
        prop_assert_eq!(try_decrypt(&mut p.bob, &next).unwrap(), b"next".to_vec());
    }

    /// Session state survives serialization: a restored session decrypts
    /// out-of-order messages whose keys were skipped before the restore.
    #[test]
    fn restored_session_keeps_skipped_keys(count in 2usize..12, seed in any::<u8>()) {
        let mut p = pair(seed);
        let sent: Vec<Envelope> = (0..count)
            .map(|i| p.alice.encrypt(CONVERSATION, format!("m{i}").as_bytes(), &mut p.rng).unwrap())
            .collect();
        p.bob.decrypt(&sent[count - 1]).unwrap();
        let mut restored = Session::from_bytes(&p.bob.to_bytes()).unwrap();
        for (i, env) in sent.iter().enumerate().take(count - 1) {
            prop_assert_eq!(restored.decrypt(env).unwrap().to_vec(), format!("m{i}").into_bytes());
        }
    }
}

/// A counter beyond the skip bound is rejected without touching the state;
/// the messages before it still decrypt.
#[test]
fn gap_beyond_the_bound_is_rejected() {
    let mut p = pair(1);
    let sent: Vec<Envelope> = (0..=MAX_SKIP + 1)
        .map(|i| {
            p.alice
                .encrypt(CONVERSATION, &i.to_be_bytes(), &mut p.rng)
                .unwrap()
        })
        .collect();
    let last = sent.last().unwrap();
    assert!(matches!(
        try_decrypt(&mut p.bob, last),
        Err(Error::TooManySkipped { .. })
    ));
    // Exactly at the bound is fine.
    let at_bound = &sent[MAX_SKIP as usize];
    assert_eq!(
        try_decrypt(&mut p.bob, at_bound).unwrap(),
        MAX_SKIP.to_be_bytes().to_vec()
    );
    assert_eq!(
        try_decrypt(&mut p.bob, &sent[0]).unwrap(),
        0u32.to_be_bytes().to_vec()
    );
}

/// A huge announced counter (skipped-key exhaustion attempt) fails fast.
#[test]
fn huge_counter_is_rejected() {
    let mut p = pair(2);
    let mut env = p.alice.encrypt(CONVERSATION, b"x", &mut p.rng).unwrap();
    env.header.counter = u32::MAX;
    assert!(matches!(
        try_decrypt(&mut p.bob, &env),
        Err(Error::TooManySkipped { .. })
    ));
    env.header.previous_chain_length = u32::MAX;
    env.header.ratchet_key = [9u8; 32];
    assert!(try_decrypt(&mut p.bob, &env).is_err());
}

/// Forward secrecy: state captured after the ratchet moved on cannot decrypt
/// messages that were already received.
#[test]
fn past_messages_cannot_be_decrypted_with_later_state() {
    let mut p = pair(3);
    let old: Vec<Envelope> = (0..3)
        .map(|i| p.alice.encrypt(CONVERSATION, &[i], &mut p.rng).unwrap())
        .collect();
    for env in &old {
        p.bob.decrypt(env).unwrap();
    }
    // Two DH ratchet steps.
    let r = p.bob.encrypt(CONVERSATION, b"r", &mut p.rng).unwrap();
    p.alice.decrypt(&r).unwrap();
    let a = p.alice.encrypt(CONVERSATION, b"a", &mut p.rng).unwrap();
    p.bob.decrypt(&a).unwrap();

    // The attacker obtains everything Bob stores now.
    let stolen = p.bob.to_bytes();
    for env in &old {
        let mut s = Session::from_bytes(&stolen).unwrap();
        assert!(s.decrypt(env).is_err());
    }
}

/// The typed outcomes of misuse and of envelopes for another session.
#[test]
fn envelopes_of_another_session_fail_as_decrypt() {
    let mut p = pair(4);
    let mut q = pair(5);
    let env = q
        .alice
        .encrypt(CONVERSATION, b"not for p", &mut q.rng)
        .unwrap();
    assert!(try_decrypt(&mut p.bob, &env).is_err());
    let big = vec![0u8; chatify_proto::limits::MAX_PLAINTEXT_LEN + 1];
    assert!(matches!(
        p.alice.encrypt(CONVERSATION, &big, &mut p.rng),
        Err(Error::PlaintextTooLong(_))
    ));
}

/// Redirecting an envelope to another conversation, or presenting it as
/// coming from another sender, is detected (the AD binds both).
#[test]
fn redirect_and_misattribution_are_rejected() {
    let mut p = pair(6);
    let mut env = p.alice.encrypt(CONVERSATION, b"hi", &mut p.rng).unwrap();
    env.conversation = *b"other-conversati";
    assert_eq!(try_decrypt(&mut p.bob, &env), Err(Error::Decrypt));

    // A third device with its own session to Bob cannot pass Alice's envelope as its own.
    let mut rng = common::rng(60);
    let carol = chatify_core::Device::generate(&mut rng);
    let b = common::bundle(&mut p.bob_device, true, &mut rng);
    let mut carol_to_bob = Session::initiate(
        &carol,
        chatify_core::VerifiedBundle::verify(&b).unwrap(),
        &mut rng,
    )
    .unwrap();
    let first = carol_to_bob
        .encrypt(CONVERSATION, b"carol", &mut rng)
        .unwrap();
    let (mut bob_from_carol, _) = p.bob_device.accept(&first).unwrap();
    let alice_msg = p
        .alice
        .encrypt(CONVERSATION, b"from alice", &mut p.rng)
        .unwrap();
    assert!(try_decrypt(&mut bob_from_carol, &alice_msg).is_err());
}

/// Session setup: replayed setup messages, unknown prekeys, forged bundles.
#[test]
fn setup_rejections() {
    let mut rng = common::rng(7);
    let alice = chatify_core::Device::generate(&mut rng);
    let mut bob = chatify_core::Device::generate(&mut rng);

    // Without a one-time prekey a replayed setup message is caught by the
    // remembered base key; with one, by the consumed prekey.
    for with_otk in [false, true] {
        let b = common::bundle(&mut bob, with_otk, &mut rng);
        let mut s = Session::initiate(
            &alice,
            chatify_core::VerifiedBundle::verify(&b).unwrap(),
            &mut rng,
        )
        .unwrap();
        let first = s.encrypt(CONVERSATION, b"hello", &mut rng).unwrap();
        let before = bob.one_time_prekey_count();
        bob.accept(&first).unwrap();
        assert_eq!(bob.one_time_prekey_count(), before - usize::from(with_otk));
        assert_eq!(bob.accept(&first).err(), Some(Error::ReplayedSetup));
        // A fresh setup from the same bundle: fine without a one-time
        // prekey, refused when it names the consumed one.
        let mut again = Session::initiate(
            &alice,
            chatify_core::VerifiedBundle::verify(&b).unwrap(),
            &mut rng,
        )
        .unwrap();
        let second = again
            .encrypt(CONVERSATION, b"hello again", &mut rng)
            .unwrap();
        if with_otk {
            assert_eq!(bob.accept(&second).err(), Some(Error::UnknownPrekey));
        } else {
            assert!(bob.accept(&second).is_ok());
        }
    }

    // A failed setup consumes nothing.
    let b = common::bundle(&mut bob, true, &mut rng);
    let mut s = Session::initiate(
        &alice,
        chatify_core::VerifiedBundle::verify(&b).unwrap(),
        &mut rng,
    )
    .unwrap();
    let mut first = s.encrypt(CONVERSATION, b"hello", &mut rng).unwrap();
    let good = first.clone();
    first.ciphertext[0] ^= 1;
    let count = bob.one_time_prekey_count();
    assert_eq!(bob.accept(&first).err(), Some(Error::Decrypt));
    assert_eq!(bob.one_time_prekey_count(), count);
    assert!(bob.accept(&good).is_ok());

    // A bundle whose signed prekey was swapped (key-directory MITM) fails verification.
    let mut b = common::bundle(&mut bob, true, &mut rng);
    b.signed_prekey.public_key =
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([3u8; 32])).to_bytes();
    assert!(matches!(
        chatify_core::VerifiedBundle::verify(&b),
        Err(Error::InvalidBundle(_))
    ));
    // ... and so does a swapped identity key.
    let mut b = common::bundle(&mut bob, true, &mut rng);
    b.identity.identity_key[0] ^= 1;
    assert!(chatify_core::VerifiedBundle::verify(&b).is_err());

    // Not a setup message.
    let p = pair(8);
    let mut q = p;
    let reply = q.bob.encrypt(CONVERSATION, b"r", &mut q.rng).unwrap();
    assert_eq!(bob.accept(&reply).err(), Some(Error::NotSetupMessage));
}

/// Device state survives serialization, including which prekeys are left.
#[test]
fn device_round_trips() {
    let mut rng = common::rng(11);
    let alice = chatify_core::Device::generate(&mut rng);
    let mut bob = chatify_core::Device::generate(&mut rng);
    let b = common::bundle(&mut bob, true, &mut rng);
    bob.generate_one_time_prekeys(5, &mut rng);
    let mut restored = chatify_core::Device::from_bytes(&bob.to_bytes()).unwrap();
    assert_eq!(restored.public_identity(), bob.public_identity());
    assert_eq!(
        restored.one_time_prekey_count(),
        bob.one_time_prekey_count()
    );
    assert_eq!(*restored.to_bytes(), *bob.to_bytes());
    let mut s = Session::initiate(
        &alice,
        chatify_core::VerifiedBundle::verify(&b).unwrap(),
        &mut rng,
    )
    .unwrap();
    let first = s.encrypt(CONVERSATION, b"after restart", &mut rng).unwrap();
    let (_, pt) = restored.accept(&first).unwrap();
    assert_eq!(&pt[..], b"after restart");
    assert!(chatify_core::Device::from_bytes(&[0x80]).is_err());
    assert!(
        Session::from_bytes(&bob.to_bytes()).is_err(),
        "a device is not a session"
    );
}

/// A device linked with another device's identity secrets presents the same
/// identity (so the same safety number) with prekeys of its own, and a peer
/// holds a working session with each device.
#[test]
fn a_linked_device_shares_the_identity_not_the_prekeys() {
    use chatify_core::{Device, VerifiedBundle};
    let mut rng = common::rng(9);
    let mut phone = Device::generate(&mut rng);
    let mut laptop = Device::with_identity(&phone.identity_secrets(), &mut rng);
    assert_eq!(phone.public_identity(), laptop.public_identity());
    assert_eq!(phone.device_keys(), laptop.device_keys());
    assert_ne!(phone.signed_prekey(), laptop.signed_prekey());
    let alice = Device::generate(&mut rng);
    for device in [&mut phone, &mut laptop] {
        let bundle = common::bundle(device, true, &mut rng);
        let verified = VerifiedBundle::verify(&bundle).unwrap();
        assert_eq!(*verified.identity(), device.public_identity());
        let mut session = Session::initiate(&alice, verified, &mut rng).unwrap();
        let env = session.encrypt(CONVERSATION, b"to each", &mut rng).unwrap();
        let (mut theirs, pt) = device.accept(&relay(&env)).unwrap();
        assert_eq!(pt.as_slice(), b"to each");
        assert_eq!(theirs.safety_number(), session.safety_number());
        let back = theirs.encrypt(CONVERSATION, b"back", &mut rng).unwrap();
        assert_eq!(session.decrypt(&relay(&back)).unwrap().as_slice(), b"back");
    }
}
