//! Sessions: setup and Double Ratchet traffic, ours and vodozemac's Olm
//! measured side by side in the same run (same machine, same process).
//!
//! - setup: initiator creates the session and encrypts a first message; the
//!   responder creates its session from it and decrypts. Ours also verifies
//!   the bundle's two Ed25519 signatures (the protocol requires it; Olm
//!   leaves key verification to the application).
//! - same direction: one side sends, the other decrypts (no DH step).
//! - alternating: each message goes the other way (a DH ratchet step each).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use chatify_core::{Device, Session, VerifiedBundle};
use chatify_proto::PrekeyBundle;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use vodozemac::olm::{Account, OlmMessage, SessionConfig};

const CONV: [u8; 16] = [9; 16];

fn bundle(bob: &mut Device, rng: &mut ChaCha20Rng) -> PrekeyBundle {
    let keys = bob.publish_keys(1, rng);
    PrekeyBundle {
        user: "bob".into(),
        device: 1,
        identity: keys.identity,
        signed_prekey: keys.signed_prekey,
        one_time_prekey: keys.one_time_prekeys.into_iter().next(),
    }
}

fn ours_pair(rng: &mut ChaCha20Rng) -> (Session, Session) {
    let alice = Device::generate(rng);
    let mut bob = Device::generate(rng);
    let b = bundle(&mut bob, rng);
    let mut a = Session::initiate(&alice, VerifiedBundle::verify(&b).unwrap(), rng).unwrap();
    let first = a.encrypt(CONV, b"setup", rng).unwrap();
    let (mut bs, _) = bob.accept(&first).unwrap();
    // One reply so that Alice stops attaching the setup header.
    let r = bs.encrypt(CONV, b"r", rng).unwrap();
    a.decrypt(&r).unwrap();
    (a, bs)
}

fn olm_pair() -> (vodozemac::olm::Session, vodozemac::olm::Session) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    bob.mark_keys_as_published();
    let mut a = alice
        .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
        .unwrap();
    let OlmMessage::PreKey(m) = a.encrypt("setup").unwrap() else {
        panic!("first message is a pre-key message")
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &m)
        .unwrap()
        .session;
    let r = b.encrypt("r").unwrap();
    a.decrypt(&r).unwrap();
    (a, b)
}

fn setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("session setup");
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    g.bench_function(
        "chatify (verify bundle, X3DH, first message, accept)",
        |b| {
            b.iter_batched(
                || {
                    let alice = Device::generate(&mut rng);
                    let mut bob = Device::generate(&mut rng);
                    let bundle = bundle(&mut bob, &mut rng);
                    (alice, bob, bundle, ChaCha20Rng::from_seed([2; 32]))
                },
                |(alice, mut bob, bundle, mut r)| {
                    let mut a =
                        Session::initiate(&alice, VerifiedBundle::verify(&bundle).unwrap(), &mut r)
                            .unwrap();
                    let first = a.encrypt(CONV, b"hello", &mut r).unwrap();
                    bob.accept(&first).unwrap()
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.bench_function("vodozemac olm (outbound, first message, inbound)", |b| {
        b.iter_batched(
            || {
                let alice = Account::new();
                let mut bob = Account::new();
                bob.generate_one_time_keys(1);
                let otk = *bob.one_time_keys().values().next().unwrap();
                bob.mark_keys_as_published();
                (alice, bob, otk)
            },
            |(alice, mut bob, otk)| {
                let mut a = alice
                    .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
                    .unwrap();
                let OlmMessage::PreKey(m) = a.encrypt("hello").unwrap() else {
                    panic!()
                };
                bob.create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &m)
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn traffic(c: &mut Criterion, alternating: bool) {
    let name = if alternating {
        "encrypt+decrypt alternating"
    } else {
        "encrypt+decrypt same direction"
    };
    let mut g = c.benchmark_group(name);
    for size in [64usize, 256, 1024, 16384] {
        let msg = vec![b'x'; size];
        g.throughput(Throughput::Bytes(size as u64));
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let (mut a, mut b) = ours_pair(&mut rng);
        let mut flip = false;
        g.bench_with_input(BenchmarkId::new("chatify", size), &size, |bench, _| {
            bench.iter(|| {
                let (tx, rx) = if alternating && flip {
                    (&mut b, &mut a)
                } else {
                    (&mut a, &mut b)
                };
                flip = !flip;
                let env = tx.encrypt(CONV, &msg, &mut rng).unwrap();
                rx.decrypt(&env).unwrap()
            })
        });
        let (mut a, mut b) = olm_pair();
        let mut flip = false;
        g.bench_with_input(
            BenchmarkId::new("vodozemac olm", size),
            &size,
            |bench, _| {
                bench.iter(|| {
                    let (tx, rx) = if alternating && flip {
                        (&mut b, &mut a)
                    } else {
                        (&mut a, &mut b)
                    };
                    flip = !flip;
                    let m = tx.encrypt(&msg).unwrap();
                    rx.decrypt(&m).unwrap()
                })
            },
        );
    }
    g.finish();
}

fn same_direction(c: &mut Criterion) {
    traffic(c, false);
}

fn alternating(c: &mut Criterion) {
    traffic(c, true);
}

criterion_group!(benches, setup, same_direction, alternating);
criterion_main!(benches);
