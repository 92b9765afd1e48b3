//! Group messages: our sender keys (chatify_core::group) beside
//! vodozemac's Megolm, in the same run, and pairwise fan-out (one Double
//! Ratchet message per member) as the naive baseline.
//!
//! - encrypt once: the sender's cost for one group message (256 bytes).
//! - decrypt per member: one member's cost for it (signature check and
//!   decryption; each member pays it once).
//! - member setup: a member taking a sender's key (parsing it, checking
//!   the signing key; Megolm also checks the session key's signature).
//! - send to N members: the sender's cost for one message to N members,
//!   with a sender key or Megolm (once, the server fans it out) and with
//!   pairwise sessions (N encryptions).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use chatify_core::group::{ReceiverKey, SenderKey};
use chatify_core::{Device, Session, VerifiedBundle};
use chatify_proto::PrekeyBundle;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig, SessionKey};

const TEXT: [u8; 256] = [b'g'; 256];
const CONV: [u8; 16] = [9; 16];

fn ours() -> (SenderKey, ReceiverKey) {
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let sender = SenderKey::generate([7; 16], 1, &mut rng);
    let receiver = ReceiverKey::from_distribution(&sender.distribution()).unwrap();
    (sender, receiver)
}

fn megolm() -> (GroupSession, SessionKey) {
    let session = GroupSession::new(SessionConfig::version_1());
    let key = session.session_key();
    (session, key)
}

fn encrypt_once(c: &mut Criterion) {
    let mut g = c.benchmark_group("group encrypt once (256 B)");
    g.throughput(Throughput::Bytes(TEXT.len() as u64));
    let (mut sender, _) = ours();
    g.bench_function("chatify sender key", |b| {
        b.iter(|| sender.encrypt(&TEXT).unwrap());
    });
    let (mut session, _) = megolm();
    g.bench_function("vodozemac megolm", |b| b.iter(|| session.encrypt(TEXT)));
    g.finish();
}

fn decrypt_per_member(c: &mut Criterion) {
    let mut g = c.benchmark_group("group decrypt per member (256 B)");
    g.throughput(Throughput::Bytes(TEXT.len() as u64));
    let (mut sender, receiver) = ours();
    let message = sender.encrypt(&TEXT).unwrap();
    g.bench_function("chatify sender key", |b| {
        b.iter_batched(
            || receiver.clone(),
            |mut r| r.decrypt(&message).unwrap(),
            BatchSize::SmallInput,
        );
    });
    let (mut session, key) = megolm();
    let message = session.encrypt(TEXT);
    let mut inbound = InboundGroupSession::new(&key, SessionConfig::version_1());
    g.bench_function("vodozemac megolm", |b| {
        b.iter(|| inbound.decrypt(&message).unwrap());
    });
    g.finish();
}

fn member_setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("group member setup");
    let (sender, _) = ours();
    let distribution = sender.distribution().to_bytes();
    g.bench_function("chatify sender key (parse, signing key)", |b| {
        b.iter(|| ReceiverKey::from_distribution_bytes(&distribution).unwrap());
    });
    let (_, key) = megolm();
    let bytes = key.to_bytes();
    g.bench_function("vodozemac megolm (parse, signature, session)", |b| {
        b.iter(|| {
            let key = SessionKey::from_bytes(&bytes).unwrap();
            InboundGroupSession::new(&key, SessionConfig::version_1())
        });
    });
    g.finish();
}

fn sessions(n: usize) -> Vec<Session> {
    let mut rng = ChaCha20Rng::from_seed([8; 32]);
    let alice = Device::generate(&mut rng);
    (0..n)
        .map(|_| {
            let mut bob = Device::generate(&mut rng);
            let keys = bob.publish_keys(1, &mut rng);
            let bundle = PrekeyBundle {
                user: "bob".into(),
                device: 1,
                identity: keys.identity,
                signed_prekey: keys.signed_prekey,
                one_time_prekey: keys.one_time_prekeys.into_iter().next(),
            };
            let mut a =
                Session::initiate(&alice, VerifiedBundle::verify(&bundle).unwrap(), &mut rng)
                    .unwrap();
            let first = a.encrypt(CONV, b"setup", &mut rng).unwrap();
            let (mut b, _) = bob.accept(&first).unwrap();
            let r = b.encrypt(CONV, b"r", &mut rng).unwrap();
            a.decrypt(&r).unwrap();
            a
        })
        .collect()
}

fn send_to_members(c: &mut Criterion) {
    let mut g = c.benchmark_group("group send to N members (256 B)");
    let mut rng = ChaCha20Rng::from_seed([6; 32]);
    for n in [3usize, 20, 100] {
        g.throughput(Throughput::Elements(n as u64));
        let (mut sender, _) = ours();
        g.bench_with_input(BenchmarkId::new("chatify sender key", n), &n, |b, _| {
            b.iter(|| sender.encrypt(&TEXT).unwrap());
        });
        let (mut session, _) = megolm();
        g.bench_with_input(BenchmarkId::new("vodozemac megolm", n), &n, |b, _| {
            b.iter(|| session.encrypt(TEXT));
        });
        let mut pairwise = sessions(n);
        g.bench_with_input(BenchmarkId::new("chatify pairwise", n), &n, |b, _| {
            b.iter(|| {
                for s in &mut pairwise {
                    s.encrypt(CONV, &TEXT, &mut rng).unwrap();
                }
            });
        });
    }
    g.finish();
}

criterion_group!(
    groups,
    encrypt_once,
    decrypt_per_member,
    member_setup,
    send_to_members
);
criterion_main!(groups);
