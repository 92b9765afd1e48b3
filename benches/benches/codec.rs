//! The wire codec: frames and envelopes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use chatify_proto::frame::{self, Address};
use chatify_proto::{Envelope, Frame, MessageHeader};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn codec(c: &mut Criterion) {
    let envelope = Envelope {
        conversation: [1; 16],
        prekey: None,
        header: MessageHeader {
            ratchet_key: [2; 32],
            previous_chain_length: 3,
            counter: 4,
        },
        ciphertext: vec![5; 272],
    };
    let env_bytes = envelope.encode();
    let send = Frame {
        id: 42,
        body: frame::Send {
            to: Address {
                user: "bob".into(),
                device: 1,
            },
            conversation: [1; 16],
            message_id: [6; 16],
            envelope: env_bytes.clone(),
        }
        .into(),
    };
    let frame_bytes = send.encode();
    let mut g = c.benchmark_group("codec");
    g.bench_function("frame encode (Send, 256 B body)", |b| {
        b.iter(|| black_box(&send).encode())
    });
    g.bench_function("frame decode (Send, 256 B body)", |b| {
        b.iter(|| Frame::decode(black_box(&frame_bytes)).unwrap())
    });
    g.bench_function("envelope encode", |b| {
        b.iter(|| black_box(&envelope).encode())
    });
    g.bench_function("envelope decode (canonical check)", |b| {
        b.iter(|| Envelope::decode(black_box(&env_bytes)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
