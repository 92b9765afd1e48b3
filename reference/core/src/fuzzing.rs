//! Entry points of the cargo-fuzz targets in `fuzz/`, and their seeds.
//!
//! The targets build a fixed pair of sessions from [`VectorRng`] once, then
//! feed arbitrary bytes to the bundle parser and verifier, to an established
//! session, and to session setup. Contract: no panic; a decryption succeeds
//! only for an envelope the honest sender produced; a failed decryption or
//! setup leaves the state byte-for-byte unchanged.

use std::sync::OnceLock;

use chatify_proto::{Envelope, PrekeyBundle};

use crate::test_vectors::VectorRng;
use crate::{Device, Session, VerifiedBundle};

/// The fixed state the session target starts from.
struct Template {
    /// Bob's session with Alice, after Alice's first message.
    bob_session: Vec<u8>,
    /// Bob's device, before Alice's first message.
    bob_device: Vec<u8>,
    /// Genuine envelopes: Alice's first (setup) message and two more.
    genuine: Vec<Vec<u8>>,
    /// Bob's bundle, as served.
    bundle: Vec<u8>,
}

fn build() -> Option<Template> {
    let mut rng = VectorRng::new([0x5a; 32]);
    let alice = Device::generate(&mut rng);
    let mut bob = Device::generate(&mut rng);
    let keys = bob.publish_keys(1, &mut rng);
    let bundle = PrekeyBundle {
        user: "bob".into(),
        device: 1,
        identity: keys.identity,
        signed_prekey: keys.signed_prekey,
        one_time_prekey: keys.one_time_prekeys.into_iter().next(),
    };
    let bob_device = bob.to_bytes().to_vec();
    let mut to_bob =
        Session::initiate(&alice, VerifiedBundle::verify(&bundle).ok()?, &mut rng).ok()?;
    let conv = *b"fuzzing-conversa";
    let first = to_bob.encrypt(conv, b"first", &mut rng).ok()?;
    let second = to_bob.encrypt(conv, b"second", &mut rng).ok()?;
    let third = to_bob.encrypt(conv, b"third", &mut rng).ok()?;
    let (bob_session, _) = bob.accept(&first).ok()?;
    Some(Template {
        bob_session: bob_session.to_bytes().to_vec(),
        bob_device,
        genuine: vec![first.encode(), second.encode(), third.encode()],
        bundle: bundle.encode(),
    })
}

fn template() -> Option<&'static Template> {
    static T: OnceLock<Option<Template>> = OnceLock::new();
    T.get_or_init(build).as_ref()
}

/// Bundles: no panic in decoding or verification.
pub fn bundle_decode_verify(data: &[u8]) {
    if let Ok(bundle) = PrekeyBundle::decode(data) {
        let _ = VerifiedBundle::verify(&bundle);
    }
}

/// Sessions: see the module docs.
pub fn session_decrypt(data: &[u8]) {
    session_decrypt_with(data, |session, envelope| {
        session.decrypt(envelope).map(|p| p.to_vec())
    });
}

/// How an established session's decrypt path is called (the real one, or
/// in tests a deliberately broken one that the oracle must catch).
pub type DecryptFn = fn(&mut Session, &Envelope) -> Result<Vec<u8>, crate::Error>;

/// [`session_decrypt`] with the decrypt path given: the oracle's assertions
/// (only genuine envelopes accepted, failures change nothing) run on it.
#[doc(hidden)]
pub fn session_decrypt_with(data: &[u8], decrypt: DecryptFn) {
    let Some(t) = template() else { return };
    let Ok(envelope) = Envelope::decode(data) else {
        return;
    };
    let genuine = t.genuine.iter().any(|g| g.as_slice() == data);

    if let Ok(mut session) = Session::from_bytes(&t.bob_session) {
        let before = session.to_bytes();
        match decrypt(&mut session, &envelope) {
            Ok(_) => assert!(genuine, "a session accepted an envelope Alice never sent"),
            Err(_) => assert!(
                *before == *session.to_bytes(),
                "a failed decryption changed the session"
            ),
        }
    }
    if let Ok(mut device) = Device::from_bytes(&t.bob_device) {
        let before = device.to_bytes();
        match device.accept(&envelope) {
            Ok(_) => assert!(
                genuine,
                "session setup accepted an envelope Alice never sent"
            ),
            Err(_) => assert!(
                *before == *device.to_bytes(),
                "a failed setup changed the device"
            ),
        }
    }
}

/// The genuine envelopes the session target knows (for tests of its oracle).
#[doc(hidden)]
pub fn genuine_envelopes() -> Vec<Vec<u8>> {
    template().map(|t| t.genuine.clone()).unwrap_or_default()
}

/// Seed inputs for each target: `(target, name, bytes)`, deterministic.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let Some(t) = template() else { return out };
    let env = chatify_proto::Envelope::decode(t.genuine.first().map_or(&[][..], Vec::as_slice));
    if let (Ok(env), Ok(bundle)) = (env, PrekeyBundle::decode(&t.bundle)) {
        for (i, frame) in crate::test_vectors::sample_frames(&bundle, &env)
            .into_iter()
            .enumerate()
        {
            out.push((
                "frame_decode",
                format!("frame-{i:02}-{}", frame.body.name()),
                frame.encode(),
            ));
        }
    }
    for (i, g) in t.genuine.iter().enumerate() {
        out.push(("envelope_decode", format!("envelope-{i}"), g.clone()));
        out.push(("session_decrypt", format!("genuine-{i}"), g.clone()));
        let mut flipped = g.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        out.push(("session_decrypt", format!("tampered-tag-{i}"), flipped));
    }
    out.push(("bundle_decode", "bundle".into(), t.bundle.clone()));
    let mut bad = t.bundle.clone();
    if let Some(b) = bad.get_mut(40) {
        *b ^= 0x10;
    }
    out.push(("bundle_decode", "bundle-bitflip".into(), bad));
    out
}
