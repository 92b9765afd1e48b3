//! Helpers shared by the integration tests: seeded RNGs and session pairs.
#![allow(dead_code, unreachable_pub)]

use chatify_core::{Device, Session, VerifiedBundle};
use chatify_proto::{Envelope, PrekeyBundle};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

pub const CONVERSATION: [u8; 16] = *b"test-conversatio";

pub fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

/// The bundle a key directory would serve for `device` (one one-time prekey
/// when `with_otk`).
pub fn bundle(device: &mut Device, with_otk: bool, rng: &mut ChaCha20Rng) -> PrekeyBundle {
    let published = device.publish_keys(usize::from(with_otk), rng);
    PrekeyBundle {
        user: "bob".into(),
        device: 1,
        identity: published.identity,
        signed_prekey: published.signed_prekey,
        one_time_prekey: published.one_time_prekeys.into_iter().next(),
    }
}

/// Two devices with an established session in both directions: Alice
/// initiated and Bob accepted her first message (`"setup"`).
pub struct Pair {
    pub alice_device: Device,
    pub bob_device: Device,
    pub alice: Session,
    pub bob: Session,
    pub rng: ChaCha20Rng,
}

pub fn pair(seed: u8) -> Pair {
    let mut rng = rng(seed);
    let alice_device = Device::generate(&mut rng);
    let mut bob_device = Device::generate(&mut rng);
    let b = bundle(&mut bob_device, true, &mut rng);
    let mut alice =
        Session::initiate(&alice_device, VerifiedBundle::verify(&b).unwrap(), &mut rng).unwrap();
    let first = alice.encrypt(CONVERSATION, b"setup", &mut rng).unwrap();
    let (bob, pt) = bob_device.accept(&first).unwrap();
    assert_eq!(&pt[..], b"setup");
    Pair {
        alice_device,
        bob_device,
        alice,
        bob,
        rng,
    }
}

/// Round trip through the wire encoding, as a server would relay it.
pub fn relay(env: &Envelope) -> Envelope {
    Envelope::decode(&env.encode()).unwrap()
}
