//! The primitives the protocol uses, at the sizes it uses them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use aes_gcm::{Aes256Gcm, Key};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use hkdf::Hkdf;
use sha2::Sha256;
use std::hint::black_box;
use x25519_dalek::{PublicKey, StaticSecret};

fn aes_gcm(c: &mut Criterion) {
    let mut g = c.benchmark_group("aes-256-gcm seal");
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from([7u8; 32]));
    let nonce = Nonce::<Aes256Gcm>::from([1u8; 12]);
    for size in [64usize, 256, 1024, 4096, 16384, 65536] {
        let mut buf = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                cipher
                    .encrypt_inout_detached(&nonce, b"ad", buf.as_mut_slice().into())
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn x25519(c: &mut Criterion) {
    let a = StaticSecret::from([3u8; 32]);
    let b = PublicKey::from(&StaticSecret::from([4u8; 32]));
    c.bench_function("x25519 diffie-hellman", |bench| {
        bench.iter(|| black_box(&a).diffie_hellman(black_box(&b)))
    });
}

fn hkdf(c: &mut Criterion) {
    c.bench_function("hkdf-sha256 extract+expand 80 B", |b| {
        b.iter(|| {
            let hk = Hkdf::<Sha256>::new(Some(black_box(&[1u8; 32])), black_box(&[2u8; 32]));
            let mut okm = [0u8; 80];
            hk.expand(b"chatify/v1/root", &mut okm).unwrap();
            okm
        })
    });
}

fn ed25519(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[5u8; 32]);
    let msg = [9u8; 60];
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    c.bench_function("ed25519 verify_strict", |b| {
        b.iter(|| vk.verify_strict(black_box(&msg), black_box(&sig)).unwrap())
    });
}

criterion_group!(benches, aes_gcm, x25519, hkdf, ed25519);
criterion_main!(benches);
