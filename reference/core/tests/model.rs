//! A stateful model test: two parties over a network the adversary controls
//! (it delivers, drops, duplicates, reorders and tampers with envelopes).
//!
//! Invariants after every step:
//! - a tampered envelope is never accepted;
//! - an accepted plaintext is exactly what its sender sent, to that recipient;
//! - no message is accepted twice;
//! - every genuine envelope not yet accepted is accepted when delivered
//!   (liveness: rejections never corrupt a session).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashSet;

use chatify_core::Session;
use chatify_proto::Envelope;
use common::{CONVERSATION, Pair, pair};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

#[derive(Clone, Debug)]
enum Step {
    Send { from_alice: bool, len: u8 },
    Deliver(Index),
    Drop(Index),
    Duplicate(Index),
    Tamper(Index, Index),
}

/// The reference only tracks how many envelopes are in flight.
struct Model;

impl ReferenceStateMachine for Model {
    type State = usize;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<usize> {
        Just(0).boxed()
    }

    fn transitions(in_flight: &usize) -> BoxedStrategy<Step> {
        let send = (any::<bool>(), any::<u8>())
            .prop_map(|(from_alice, len)| Step::Send { from_alice, len });
        if *in_flight == 0 {
            return send.boxed();
        }
        prop_oneof![
            3 => send,
            4 => any::<Index>().prop_map(Step::Deliver),
            1 => any::<Index>().prop_map(Step::Drop),
            1 => any::<Index>().prop_map(Step::Duplicate),
            2 => (any::<Index>(), any::<Index>()).prop_map(|(i, b)| Step::Tamper(i, b)),
        ]
        .boxed()
    }

    fn preconditions(in_flight: &usize, step: &Step) -> bool {
        matches!(step, Step::Send { .. }) || *in_flight > 0
    }

    fn apply(in_flight: usize, step: &Step) -> usize {
        match step {
            Step::Send { .. } | Step::Duplicate(_) | Step::Tamper(..) => in_flight + 1,
            Step::Deliver(_) | Step::Drop(_) => in_flight - 1,
        }
    }
}

struct Packet {
    bytes: Vec<u8>,
    to_alice: bool,
    /// `Some(id)` for a genuine envelope, `None` for a tampered one.
    genuine: Option<u64>,
}

/// The system under test. With `REPLAY_MUTANT` the recipient's decrypt path
/// is deliberately broken: it skips the replay check by answering a
/// duplicate with the plaintext it returned before. The model must catch it.
struct Net<const REPLAY_MUTANT: bool> {
    pair: Pair,
    mutant_cache: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    in_flight: Vec<Packet>,
    sent: Vec<Vec<u8>>,
    /// Every genuine envelope's bytes: a tampered copy tampered again can
    /// turn back into one, and is then that genuine envelope.
    genuine_bytes: std::collections::HashMap<Vec<u8>, u64>,
    accepted: HashSet<u64>,
}

fn plaintext(id: u64, len: u8) -> Vec<u8> {
    let mut m = format!("message {id}:").into_bytes();
    m.resize(m.len() + usize::from(len), b'.');
    m
}

impl<const REPLAY_MUTANT: bool> StateMachineTest for Net<REPLAY_MUTANT> {
    type SystemUnderTest = Self;
    type Reference = Model;

    fn init_test(_: &usize) -> Self {
        Net {
            pair: pair(42),
            mutant_cache: std::collections::HashMap::new(),
            in_flight: Vec::new(),
            sent: Vec::new(),
            genuine_bytes: std::collections::HashMap::new(),
            accepted: HashSet::new(),
        }
    }

    fn apply(mut net: Self, _: &usize, step: Step) -> Self {
        match step {
            Step::Send { from_alice, len } => {
                let id = net.sent.len() as u64;
                let m = plaintext(id, len);
                let p = &mut net.pair;
                let sender: &mut Session = if from_alice { &mut p.alice } else { &mut p.bob };
                let env = sender.encrypt(CONVERSATION, &m, &mut p.rng).unwrap();
                net.sent.push(m);
                let bytes = env.encode();
                net.genuine_bytes.insert(bytes.clone(), id);
                net.in_flight.push(Packet {
                    bytes,
                    to_alice: !from_alice,
                    genuine: Some(id),
                });
            }
            Step::Drop(i) => {
                let n = net.in_flight.len();
                net.in_flight.remove(i.index(n));
            }
            Step::Duplicate(i) => {
                let k = i.index(net.in_flight.len());
                let copy = Packet {
                    bytes: net.in_flight[k].bytes.clone(),
                    ..net.in_flight[k]
                };
                net.in_flight.push(copy);
            }
            Step::Tamper(i, bit) => {
                let k = i.index(net.in_flight.len());
                let mut bytes = net.in_flight[k].bytes.clone();
                let b = bit.index(bytes.len() * 8);
                bytes[b / 8] ^= 1 << (b % 8);
                let to_alice = net.in_flight[k].to_alice;
                // Flipping back a bit flipped before restores the original.
                let genuine = net.genuine_bytes.get(&bytes).copied();
                net.in_flight.push(Packet {
                    bytes,
                    to_alice,
                    genuine,
                });
            }
            Step::Deliver(i) => {
                let n = net.in_flight.len();
                let packet = net.in_flight.remove(i.index(n));
                let p = &mut net.pair;
                let recipient = if packet.to_alice {
                    &mut p.alice
                } else {
                    &mut p.bob
                };
                let mut result = Envelope::decode(&packet.bytes)
                    .map_err(chatify_core::Error::from)
                    .and_then(|env| recipient.decrypt(&env))
                    .map(|pt| pt.to_vec());
                if REPLAY_MUTANT {
                    match &result {
                        Ok(pt) => {
                            net.mutant_cache.insert(packet.bytes.clone(), pt.clone());
                        }
                        Err(chatify_core::Error::Duplicate) => {
                            if let Some(pt) = net.mutant_cache.get(&packet.bytes) {
                                result = Ok(pt.clone());
                            }
                        }
                        Err(_) => {}
                    }
                }
                match (result, packet.genuine) {
                    (Ok(pt), Some(id)) => {
                        assert_eq!(pt, net.sent[id as usize], "wrong plaintext");
                        assert!(net.accepted.insert(id), "message {id} accepted twice");
                    }
                    (Ok(_), None) => panic!("a tampered envelope was accepted"),
                    (Err(e), Some(id)) => {
                        assert!(
                            net.accepted.contains(&id),
                            "genuine message {id} rejected on first delivery: {e:?}"
                        );
                    }
                    (Err(_), None) => {}
                }
            }
        }
        net
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn two_parties_over_an_adversarial_network(sequential 1..60 => Net<false>);
}

/// The model is not vacuous: it finds the seeded replay bug.
#[test]
fn the_model_catches_a_decrypt_path_without_replay_check() {
    use proptest::test_runner::{Config, TestRunner};
    let config = Config {
        cases: 256,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(
        &Model::sequential_strategy(1..60),
        |(init, steps, _seen)| {
            Net::<true>::test_sequential(config.clone(), init, steps, None);
            Ok(())
        },
    );
    let failure = result.expect_err("the replay mutant went unnoticed");
    assert!(format!("{failure}").contains("accepted twice"), "{failure}");
}
