//! Reserved sends: a sender that saves its session once per
//! [`MAX_RESERVED_SENDS`] messages, and may crash and restore from its last
//! durable save at any point, never uses a message key twice, and its peer
//! decrypts everything it sent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashSet;

use chatify_core::{MAX_RESERVED_SENDS, Session};
use chatify_proto::Envelope;
use common::{CONVERSATION, pair, relay};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;

#[derive(Debug, Clone)]
enum Op {
    /// Alice sends this many messages, each delivered to Bob.
    Send(u8),
    /// Bob sends one message; Alice decrypts it and saves (as the client
    /// commits a received batch before acknowledging it).
    BobSends,
    /// As `BobSends`, but Alice crashes before her save; the server
    /// redelivers the message to the restored Alice.
    BobSendsAliceCrashesBeforeSaving,
    /// Alice crashes and restores from her last durable save.
    Crash,
    /// A save fails (the disk is full): nothing new is durable.
    FailedSave,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..40).prop_map(Op::Send),
        2 => Just(Op::BobSends),
        1 => Just(Op::BobSendsAliceCrashesBeforeSaving),
        2 => Just(Op::Crash),
        1 => Just(Op::FailedSave),
    ]
}

/// How Alice's device saves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Saving {
    /// As the reference client: prepare the sending step, write the bytes
    /// reserving the next sends, confirm once durable.
    Honest,
    /// MUTANT: confirms a reservation it did not write (the bytes hold the
    /// live chain).
    ConfirmsUnwritten,
}

/// Alice's device: her live session and her last durable save.
struct Alice {
    live: Session,
    durable: Vec<u8>,
    saving: Saving,
    saves: usize,
}

impl Alice {
    fn save(&mut self, rng: &mut ChaCha20Rng) {
        self.live.prepare_sending(rng).unwrap();
        let (bytes, at) = self.live.to_bytes_reserving(MAX_RESERVED_SENDS);
        let bytes = match self.saving {
            Saving::Honest => bytes,
            Saving::ConfirmsUnwritten => self.live.to_bytes_reserving(0).0,
        };
        self.durable = bytes.to_vec();
        self.live.confirm_saved(at);
        self.saves += 1;
    }

    fn crash(&mut self) {
        self.live = Session::from_bytes(&self.durable).unwrap();
    }
}

/// The key-reuse check: no (ratchet key, counter) twice among every
/// envelope Alice ever sent.
#[derive(Default)]
struct Keys(HashSet<([u8; 32], u32)>);

impl Keys {
    fn record(&mut self, env: &Envelope) -> Result<(), String> {
        let id = (env.header.ratchet_key, env.header.counter);
        if self.0.insert(id) {
            Ok(())
        } else {
            Err(format!("message key reused: counter {}", id.1))
        }
    }
}

/// Runs `ops`; Err names the first key reuse or failed decryption.
fn run(ops: &[Op], saving: Saving, seed: u8) -> Result<usize, String> {
    let mut p = pair(seed);
    let mut keys = Keys::default();
    // The setup message is Alice's first envelope; Bob has decrypted it.
    let mut alice = Alice {
        live: p.alice,
        durable: Vec::new(),
        saving,
        saves: 0,
    };
    alice.save(&mut p.rng);
    let mut bob = p.bob;
    let mut sent = 1usize;
    for op in ops {
        match op {
            Op::Send(n) => {
                for i in 0..*n {
                    if !alice.live.next_send_reserved() {
                        alice.save(&mut p.rng);
                    }
                    let text = format!("a{sent}-{i}");
                    let env = alice
                        .live
                        .encrypt(CONVERSATION, text.as_bytes(), &mut p.rng)
                        .unwrap();
                    sent += 1;
                    keys.record(&env)?;
                    let pt = bob
                        .decrypt(&relay(&env))
                        .map_err(|e| format!("Bob cannot decrypt {text}: {e}"))?;
                    if pt.as_slice() != text.as_bytes() {
                        return Err(format!("Bob read something else than {text}"));
                    }
                }
            }
            Op::BobSends | Op::BobSendsAliceCrashesBeforeSaving => {
                let env = bob.encrypt(CONVERSATION, b"b", &mut p.rng).unwrap();
                alice
                    .live
                    .decrypt(&relay(&env))
                    .map_err(|e| format!("Alice cannot decrypt: {e}"))?;
                if matches!(op, Op::BobSendsAliceCrashesBeforeSaving) {
                    alice.crash();
                    alice
                        .live
                        .decrypt(&relay(&env))
                        .map_err(|e| format!("restored Alice cannot decrypt: {e}"))?;
                }
                alice.save(&mut p.rng);
            }
            Op::Crash => alice.crash(),
            Op::FailedSave => {
                alice.live.prepare_sending(&mut p.rng).unwrap();
                let _ = alice.live.to_bytes_reserving(MAX_RESERVED_SENDS);
                alice.live.forget_reservation();
            }
        }
    }
    Ok(alice.saves)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_key_is_reused_across_crashes_and_the_peer_reads_everything(
        ops in prop::collection::vec(op(), 1..30),
        seed in any::<u8>(),
    ) {
        if let Err(e) = run(&ops, Saving::Honest, seed) {
            prop_assert!(false, "{e} after {ops:?}");
        }
    }
}

/// Same-direction traffic saves once per reservation, not once per message.
#[test]
fn one_save_covers_the_reserved_sends() {
    let saves = run(&[Op::Send(100), Op::Send(92)], Saving::Honest, 7).unwrap();
    // 192 sends: the initial save covers the first 64, then one save each
    // time the reservation runs out.
    assert_eq!(192 % MAX_RESERVED_SENDS, 0);
    assert_eq!(saves, (192 / MAX_RESERVED_SENDS) as usize);
}

/// The check above is not vacuous: a device that confirms a reservation it
/// did not write reuses message keys after a crash, and the check says so.
#[test]
fn a_reservation_confirmed_but_not_written_is_caught() {
    let ops = [Op::Send(3), Op::Crash, Op::Send(1)];
    let err = run(&ops, Saving::ConfirmsUnwritten, 1).unwrap_err();
    assert!(err.contains("message key reused"), "{err}");
    run(&ops, Saving::Honest, 1).unwrap();
}

/// A received message that starts a new sending chain: preparing it before
/// the save lets the reply leave without another save.
#[test]
fn a_prepared_chain_is_covered_by_the_receive_save() {
    let mut p = pair(3);
    let env = p.bob.encrypt(CONVERSATION, b"b", &mut p.rng).unwrap();
    p.alice.decrypt(&env).unwrap();
    assert!(!p.alice.next_send_reserved());
    p.alice.prepare_sending(&mut p.rng).unwrap();
    let (_, at) = p.alice.to_bytes_reserving(MAX_RESERVED_SENDS);
    assert!(!p.alice.next_send_reserved(), "not before confirmation");
    p.alice.confirm_saved(at);
    assert!(p.alice.next_send_reserved());
    // A later receiving step ends the reservation with its chain.
    let reply = p.alice.encrypt(CONVERSATION, b"a", &mut p.rng).unwrap();
    p.bob.decrypt(&reply).unwrap();
    let env = p.bob.encrypt(CONVERSATION, b"b2", &mut p.rng).unwrap();
    p.alice.decrypt(&env).unwrap();
    assert!(!p.alice.next_send_reserved());
    // A confirmation for a chain that is gone changes nothing.
    p.alice.confirm_saved(at);
    assert!(!p.alice.next_send_reserved());
}

/// Save before send is enforced by the core: once a session has been
/// serialized, `encrypt` refuses until a confirmed save covers the next key,
/// and the refusal uses no key.
#[test]
fn a_serialized_session_encrypts_only_under_a_confirmed_save() {
    let mut p = pair(5);
    // Never serialized: it cannot be restored, so nothing is required.
    p.alice
        .encrypt(CONVERSATION, b"ephemeral", &mut p.rng)
        .unwrap();
    let bytes = p.alice.to_bytes();
    assert_eq!(
        p.alice.encrypt(CONVERSATION, b"x", &mut p.rng).unwrap_err(),
        chatify_core::Error::NotSaved
    );
    let mut restored = Session::from_bytes(&bytes).unwrap();
    assert_eq!(
        restored
            .encrypt(CONVERSATION, b"x", &mut p.rng)
            .unwrap_err(),
        chatify_core::Error::NotSaved
    );
    // A save that reserves nothing does not cover the key either.
    let _ = restored.to_bytes();
    assert!(restored.encrypt(CONVERSATION, b"x", &mut p.rng).is_err());
    // Written but not confirmed: still refused.
    let (_, at) = restored.to_bytes_reserving(2);
    assert!(restored.encrypt(CONVERSATION, b"x", &mut p.rng).is_err());
    restored.confirm_saved(at);
    for text in [&b"one"[..], b"two"] {
        let env = restored.encrypt(CONVERSATION, text, &mut p.rng).unwrap();
        assert_eq!(&p.bob.decrypt(&relay(&env)).unwrap()[..], text);
    }
    // The reservation of two is used up.
    assert_eq!(
        restored
            .encrypt(CONVERSATION, b"three", &mut p.rng)
            .unwrap_err(),
        chatify_core::Error::NotSaved
    );
}

/// The bound of PROTOCOL §13.1 over any number of lifetimes: saves made for
/// no send (after receiving, after publishing) never move a restored
/// sending chain, and a chain created in one lifetime is reserved on once.
/// 500 lifetimes that only save, then one send: the peer bridges at most one
/// reservation.
#[test]
fn saves_without_sends_never_move_a_restored_chain() {
    let mut p = pair(9);
    // Bob replies, so Alice's next message starts a new chain.
    let env = p.bob.encrypt(CONVERSATION, b"b", &mut p.rng).unwrap();
    p.alice.decrypt(&relay(&env)).unwrap();
    p.alice.prepare_sending(&mut p.rng).unwrap();
    let (bytes, at) = p.alice.to_bytes_reserving_new_chain(MAX_RESERVED_SENDS);
    p.alice.confirm_saved(at);
    let mut durable = bytes.to_vec();
    for lifetime in 0..500 {
        let mut alice = Session::from_bytes(&durable).unwrap();
        let (bytes, at) = if lifetime % 2 == 0 {
            alice.to_bytes_reserving_new_chain(MAX_RESERVED_SENDS)
        } else {
            (alice.to_bytes(), alice.to_bytes_reserving(0).1)
        };
        alice.confirm_saved(at);
        assert_eq!(
            &bytes[..],
            &durable[..],
            "lifetime {lifetime} moved the chain"
        );
        durable = bytes.to_vec();
    }
    let mut alice = Session::from_bytes(&durable).unwrap();
    let (_, at) = alice.to_bytes_reserving(1);
    alice.confirm_saved(at);
    let env = alice
        .encrypt(CONVERSATION, b"after 500 lifetimes", &mut p.rng)
        .unwrap();
    assert_eq!(env.header.counter, MAX_RESERVED_SENDS);
    p.bob.decrypt(&relay(&env)).unwrap();
    assert_eq!(p.bob.skipped_keys(), MAX_RESERVED_SENDS as usize);
}

/// A mutant of the rule, a save that reserves whenever it is made, over
/// 20 lifetimes: the chain runs away and the peer gives up, which is
/// what the test above guards against.
#[test]
fn a_save_that_always_reserves_breaks_the_conversation() {
    let mut p = pair(9);
    let mut durable = p.alice.to_bytes_reserving(MAX_RESERVED_SENDS).0.to_vec();
    for _ in 0..20 {
        let mut alice = Session::from_bytes(&durable).unwrap();
        durable = alice.to_bytes_reserving(MAX_RESERVED_SENDS).0.to_vec();
    }
    let mut alice = Session::from_bytes(&durable).unwrap();
    let (_, at) = alice.to_bytes_reserving(1);
    alice.confirm_saved(at);
    let env = alice.encrypt(CONVERSATION, b"x", &mut p.rng).unwrap();
    assert!(matches!(
        p.bob.decrypt(&relay(&env)),
        Err(chatify_core::Error::TooManySkipped { .. })
    ));
}
