//! Project Wycheproof vectors for every primitive the protocol uses.
//! Each suite prints how many cases it ran, by expected result; this target
//! has its own `main` (no libtest harness) so the counts show in every
//! `cargo test` run, not only with `--nocapture`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use aes_gcm::{Aes256Gcm, Key};
use chatify_core::{Device, Error, Session, VerifiedBundle};
use chatify_proto::{DeviceKeys, PrekeyBundle, SignedPrekey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wycheproof::TestResult;

#[derive(Default)]
struct Counts(BTreeMap<&'static str, usize>);

impl Counts {
    fn add(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }
    fn print(&self, name: &str) {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!("wycheproof {name}: {}", parts.join(", "));
    }
}

fn label(r: TestResult) -> &'static str {
    match r {
        TestResult::Valid => "valid",
        TestResult::Invalid => "invalid",
        TestResult::Acceptable => "acceptable",
    }
}

fn aes_256_gcm() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        // The protocol uses AES-256 with 96-bit nonces and 128-bit tags only.
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            for _ in &group.tests {
                counts.add("skipped (other key/nonce/tag size)");
            }
            continue;
        }
        for t in &group.tests {
            let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(
                <[u8; 32]>::try_from(&t.key[..]).unwrap(),
            ));
            let nonce = Nonce::<Aes256Gcm>::from(<[u8; 12]>::try_from(&t.nonce[..]).unwrap());
            // Seal must reproduce valid vectors exactly.
            let mut buf = t.pt.to_vec();
            let tag = cipher
                .encrypt_inout_detached(&nonce, &t.aad, buf.as_mut_slice().into())
                .unwrap();
            let sealed_matches = buf == t.ct[..] && tag.as_slice() == &t.tag[..];
            // Open decides validity.
            let mut ct = t.ct.to_vec();
            let tag: [u8; 16] = t.tag[..].try_into().unwrap();
            let opened = cipher
                .decrypt_inout_detached(&nonce, &t.aad, ct.as_mut_slice().into(), &tag.into())
                .is_ok();
            match t.result {
                TestResult::Valid => {
                    assert!(sealed_matches && opened, "tc {} {}", t.tc_id, t.comment);
                    assert_eq!(ct, t.pt[..], "tc {}", t.tc_id);
                }
                TestResult::Invalid => assert!(!opened, "tc {} accepted: {}", t.tc_id, t.comment),
                TestResult::Acceptable => {}
            }
            counts.add(label(t.result));
        }
    }
    counts.print("AES-256-GCM");
    assert!(counts.0.get("valid").copied().unwrap_or(0) > 30);
    assert!(counts.0.get("invalid").copied().unwrap_or(0) > 10);
}

fn x25519() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let (Ok(private), Ok(public)) = (
                <[u8; 32]>::try_from(&t.private_key[..]),
                <[u8; 32]>::try_from(&t.public_key[..]),
            ) else {
                // Wrong-length encodings cannot be represented by the protocol's
                // fixed 32-byte fields; they are rejected at decoding.
                assert!(t.result.must_fail(), "tc {}", t.tc_id);
                counts.add("invalid (wrong length: unrepresentable)");
                continue;
            };
            let secret = x25519_dalek::StaticSecret::from(private);
            let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(public));
            if !t.result.must_fail() {
                assert_eq!(shared.as_bytes(), &t.shared_secret[..], "tc {}", t.tc_id);
            }
            let zero = t.shared_secret.iter().all(|&b| b == 0);
            assert_eq!(!shared.was_contributory(), zero, "tc {}", t.tc_id);
            counts.add(label(t.result));
            if zero {
                counts.add("zero shared secret (rejected by the session layer below)");
            }
        }
    }
    counts.print("X25519");
    assert!(counts.0.get("valid").copied().unwrap_or(0) > 100);
}

/// Every Wycheproof public key that yields an all-zero shared secret, served
/// as a (validly signed) signed prekey, a one-time prekey, or an identity
/// key, or sent as a session-setup base key, makes session setup fail with
/// `NonContributory`.
fn x25519_low_order_keys_are_rejected_by_sessions() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let mut rng = common::rng(9);
    let alice = Device::generate(&mut rng);
    let mut low_order = Vec::new();
    for group in &set.test_groups {
        for t in &group.tests {
            if t.shared_secret.iter().all(|&b| b == 0)
                && let Ok(k) = <[u8; 32]>::try_from(&t.public_key[..])
                && !low_order.contains(&k)
            {
                low_order.push(k);
            }
        }
    }
    assert!(low_order.len() >= 5, "{}", low_order.len());
    let signer = SigningKey::from_bytes(&[5u8; 32]);
    let honest_identity =
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([6u8; 32]));
    let sign = |label: &[u8], id: Option<u32>, key: &[u8; 32]| {
        let mut m = label.to_vec();
        if let Some(id) = id {
            m.extend_from_slice(&id.to_be_bytes());
        }
        m.extend_from_slice(key);
        signer.sign(&m).to_bytes()
    };
    let honest_spk =
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([7u8; 32])).to_bytes();
    let make = |identity_key: [u8; 32], spk: [u8; 32], otk: Option<[u8; 32]>| PrekeyBundle {
        user: "mallory".into(),
        device: 1,
        identity: DeviceKeys {
            signing_key: signer.verifying_key().to_bytes(),
            identity_key,
            identity_signature: sign(b"chatify/v1/identity-key", None, &identity_key),
        },
        signed_prekey: SignedPrekey {
            id: 1,
            public_key: spk,
            signature: sign(b"chatify/v1/signed-prekey", Some(1), &spk),
        },
        one_time_prekey: otk.map(|public_key| chatify_proto::OneTimePrekey { id: 2, public_key }),
    };
    let mut rejected = 0;
    for k in &low_order {
        for bundle in [
            make(honest_identity.to_bytes(), *k, None),
            make(*k, honest_spk, None),
            make(honest_identity.to_bytes(), honest_spk, Some(*k)),
        ] {
            let verified = VerifiedBundle::verify(&bundle).unwrap();
            let result = Session::initiate(&alice, verified, &mut rng);
            assert!(matches!(result, Err(Error::NonContributory)), "{result:?}");
            rejected += 1;
        }
    }
    // Responder side: a setup message whose base key is of low order.
    let mut bob = Device::generate(&mut rng);
    let b = common::bundle(&mut bob, false, &mut rng);
    let mut session =
        Session::initiate(&alice, VerifiedBundle::verify(&b).unwrap(), &mut rng).unwrap();
    let honest = session
        .encrypt(common::CONVERSATION, b"x", &mut rng)
        .unwrap();
    for k in &low_order {
        let mut forged = honest.clone();
        if let Some(p) = forged.prekey.as_mut() {
            p.base_key = *k;
        }
        assert!(matches!(bob.accept(&forged), Err(Error::NonContributory)));
        rejected += 1;
    }
    println!(
        "wycheproof X25519: {} low-order keys, {rejected} session setups rejected as non-contributory",
        low_order.len()
    );
}

fn hkdf_sha256() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let salt = if t.salt.is_empty() {
                None
            } else {
                Some(&t.salt[..])
            };
            let hk = Hkdf::<Sha256>::new(salt, &t.ikm);
            let mut okm = vec![0u8; t.size];
            let ok = hk.expand(&t.info, &mut okm).is_ok();
            match t.result {
                TestResult::Valid => {
                    assert!(ok, "tc {}", t.tc_id);
                    assert_eq!(okm, t.okm[..], "tc {}", t.tc_id);
                }
                TestResult::Invalid => assert!(!ok, "tc {} {}", t.tc_id, t.comment),
                TestResult::Acceptable => {}
            }
            counts.add(label(t.result));
        }
    }
    counts.print("HKDF-SHA256");
}

fn hmac_sha256() {
    let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::HmacSha256).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&t.key).unwrap();
            mac.update(&t.msg);
            let full = mac.finalize().into_bytes();
            // Truncated-tag groups compare a prefix, as the schema specifies.
            let tag_len = group.tag_size / 8;
            let matches = full.get(..tag_len) == Some(&t.tag[..]);
            match t.result {
                TestResult::Valid => assert!(matches, "tc {}", t.tc_id),
                TestResult::Invalid => assert!(!matches, "tc {} {}", t.tc_id, t.comment),
                TestResult::Acceptable => {}
            }
            counts.add(label(t.result));
        }
    }
    counts.print("HMAC-SHA256");
}

fn ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        let key = <[u8; 32]>::try_from(&group.key.pk[..])
            .ok()
            .and_then(|k| VerifyingKey::from_bytes(&k).ok());
        for t in &group.tests {
            // The protocol verifies with `verify_strict`, as chatify-core does.
            let ok = match (&key, <[u8; 64]>::try_from(&t.sig[..])) {
                (Some(key), Ok(sig)) => key
                    .verify_strict(&t.msg, &Signature::from_bytes(&sig))
                    .is_ok(),
                _ => false,
            };
            match t.result {
                TestResult::Valid => assert!(ok, "tc {} {}", t.tc_id, t.comment),
                TestResult::Invalid => assert!(!ok, "tc {} accepted: {}", t.tc_id, t.comment),
                TestResult::Acceptable => {}
            }
            counts.add(label(t.result));
        }
    }
    counts.print("Ed25519");
    assert!(counts.0.get("invalid").copied().unwrap_or(0) > 50);
}

fn main() {
    let suites: [(&str, fn()); 6] = [
        ("AES-256-GCM", aes_256_gcm),
        ("X25519", x25519),
        (
            "X25519 low-order keys in sessions",
            x25519_low_order_keys_are_rejected_by_sessions,
        ),
        ("HKDF-SHA256", hkdf_sha256),
        ("HMAC-SHA256", hmac_sha256),
        ("Ed25519", ed25519),
    ];
    let mut failed = 0;
    for (name, suite) in suites {
        if std::panic::catch_unwind(suite).is_err() {
            println!("wycheproof suite {name}: FAILED");
            failed += 1;
        }
    }
    println!(
        "wycheproof: {} passed, {failed} failed",
        suites.len() - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
