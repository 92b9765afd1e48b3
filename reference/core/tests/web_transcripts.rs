//! Cross-implementation transcripts for the browser client (`web/`): two
//! conversations played by this crate with the vector RNG of PROTOCOL §14,
//! written to `web/test/transcripts.json`. The web client's tests replay
//! them with the same random draws and must produce every envelope byte for
//! byte and reach every verdict (opened, duplicate, rejected), so that a
//! difference in setup, ratchet steps, skipped keys or the rejection of a
//! tampered envelope fails one of the two suites. Run with `CHATIFY_BLESS=1`
//! to rewrite the file after an intended protocol change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt::Write as _;
use std::path::PathBuf;

use chatify_core::test_vectors::VectorRng;
use chatify_core::{Device, Error, Session, VerifiedBundle};
use chatify_proto::hex::lower as hex;
use chatify_proto::{Envelope, PrekeyBundle};

const CONV: [u8; 16] = *b"vector-conv-0002";

/// One side of a conversation: its device and its sessions with the peer.
struct Side {
    device: Device,
    sessions: Vec<Session>,
}

impl Side {
    /// Opens `e` as a client does: a setup of no held session is accepted,
    /// anything else tried on each session.
    fn open(&mut self, e: &Envelope) -> Result<Vec<u8>, Error> {
        if e.prekey.is_some() && !self.sessions.iter().any(|s| s.is_setup_of_this_session(e)) {
            let (s, pt) = self.device.accept(e)?;
            self.sessions.insert(0, s);
            return Ok(pt.to_vec());
        }
        let mut last = Error::Decrypt;
        for s in &mut self.sessions {
            match s.decrypt(e) {
                Ok(pt) => return Ok(pt.to_vec()),
                Err(err) => last = err,
            }
        }
        Err(last)
    }
}

struct Script {
    rng: VectorRng,
    sides: [Side; 2],
    sent: Vec<Envelope>,
    events: Vec<String>,
}

const NAMES: [&str; 2] = ["alice", "bob"];

/// What was done to a delivered copy, and how.
type Tamper = (&'static str, fn(&mut Envelope));

impl Script {
    fn send(&mut self, from: usize, text: &str) {
        let e = self.sides[from].sessions[0]
            .encrypt(CONV, text.as_bytes(), &mut self.rng)
            .unwrap();
        self.events.push(format!(
            r#"{{"op":"send","from":"{}","plaintext":"{}","envelope":"{}"}}"#,
            NAMES[from],
            hex(text.as_bytes()),
            hex(&e.encode())
        ));
        self.sent.push(e);
    }

    /// Delivers sent envelope `i`, or a tampered copy of it.
    fn deliver(&mut self, to: usize, i: usize, tamper: Option<Tamper>) {
        let mut e = self.sent[i].clone();
        if let Some((_, f)) = tamper {
            f(&mut e);
        }
        let verdict = match self.sides[to].open(&e) {
            Ok(pt) => format!(r#""result":"opened","plaintext":"{}""#, hex(&pt)),
            Err(Error::Duplicate) => r#""result":"duplicate""#.to_string(),
            Err(_) => r#""result":"rejected""#.to_string(),
        };
        let how = tamper.map_or(String::new(), |(what, _)| {
            format!(r#","tampered":"{what}""#)
        });
        self.events.push(format!(
            r#"{{"op":"deliver","to":"{}","sent":{i}{how},"envelope":"{}",{verdict}}}"#,
            NAMES[to],
            hex(&e.encode())
        ));
    }
}

fn flip_ciphertext(e: &mut Envelope) {
    let last = e.ciphertext.len() - 1;
    e.ciphertext[last] ^= 1;
}
fn bump_counter(e: &mut Envelope) {
    e.header.counter += 1;
}
fn flip_conversation(e: &mut Envelope) {
    e.conversation[0] ^= 1;
}
fn drop_prekey(e: &mut Envelope) {
    e.prekey = None;
}
fn flip_ratchet_key(e: &mut Envelope) {
    e.header.ratchet_key[3] ^= 0x40;
}

/// Devices as V1 draws them; the responder publishes `otks` one-time prekeys.
fn script(seed: u8, initiator: usize, otks: usize) -> Script {
    let mut rng = VectorRng::new([seed; 32]);
    let alice = Device::generate(&mut rng);
    let bob = Device::generate(&mut rng);
    let mut sides = [
        Side {
            device: alice,
            sessions: vec![],
        },
        Side {
            device: bob,
            sessions: vec![],
        },
    ];
    let responder = 1 - initiator;
    let published = sides[responder].device.publish_keys(otks, &mut rng);
    let bundle = PrekeyBundle {
        user: NAMES[responder].into(),
        device: 1,
        identity: published.identity.clone(),
        signed_prekey: published.signed_prekey.clone(),
        one_time_prekey: published.one_time_prekeys.first().cloned(),
    };
    let verified = VerifiedBundle::verify(&bundle).unwrap();
    let session = Session::initiate(&sides[initiator].device, verified, &mut rng).unwrap();
    sides[initiator].sessions.push(session);
    Script {
        rng,
        sides,
        sent: vec![],
        events: vec![],
    }
}

fn alice_starts() -> Script {
    let (a, b) = (0, 1);
    let mut s = script(0x42, a, 1);
    s.send(a, "a1");
    s.send(a, "a2");
    s.send(a, "a3, the first to arrive");
    s.deliver(b, 1, Some(("prekey header removed", drop_prekey)));
    s.deliver(b, 2, None); // the setup, out of order: keys 0 and 1 are skipped
    s.deliver(b, 0, None); // a repeated prekey header of the held session
    s.deliver(b, 0, None); // again: a duplicate
    s.deliver(b, 1, Some(("ciphertext bit flipped", flip_ciphertext)));
    s.deliver(b, 1, None); // the failure above changed nothing
    s.send(b, "b1");
    s.send(b, "b2");
    s.deliver(a, 4, None); // b1 skipped
    s.send(a, "a4 on a new chain");
    s.deliver(a, 3, None); // b1 late, from its skipped key
    s.deliver(b, 5, Some(("counter changed", bump_counter)));
    s.deliver(b, 5, Some(("conversation changed", flip_conversation)));
    s.deliver(b, 5, Some(("ratchet key changed", flip_ratchet_key)));
    s.deliver(b, 5, None);
    s.send(b, "");
    s.send(b, &"long ".repeat(300));
    s.deliver(a, 7, None);
    s.deliver(a, 6, None);
    s.deliver(a, 6, None);
    s
}

fn bob_starts_without_one_time_prekey() -> Script {
    let (a, b) = (0, 1);
    let mut s = script(0x43, b, 0);
    s.send(b, "hello from bob");
    s.deliver(a, 0, Some(("ciphertext bit flipped", flip_ciphertext)));
    s.deliver(a, 0, None);
    s.deliver(a, 0, None);
    s.send(a, "hi bob");
    s.send(b, "crossing, still on the first chain");
    s.deliver(b, 1, None);
    s.deliver(a, 2, None);
    s.send(b, "after the reply");
    s.deliver(a, 3, None);
    s
}

fn transcripts() -> String {
    let mut out = String::from("{\n  \"conversation\": \"");
    out.push_str(&hex(&CONV));
    out.push_str("\",\n  \"transcripts\": [\n");
    let all = [
        ("alice-starts", 0x42u8, "alice", 1, alice_starts()),
        (
            "bob-starts-without-one-time-prekey",
            0x43,
            "bob",
            0,
            bob_starts_without_one_time_prekey(),
        ),
    ];
    for (k, (name, seed, initiator, otks, s)) in all.into_iter().enumerate() {
        let _ = write!(
            out,
            "    {{\n      \"name\": \"{name}\",\n      \"seed\": \"{}\",\n      \"initiator\": \"{initiator}\",\n      \"one_time_prekeys\": {otks},\n      \"events\": [\n        {}\n      ]\n    }}{}\n",
            hex(&[seed; 32]),
            s.events.join(",\n        "),
            if k == 0 { "," } else { "" }
        );
    }
    out.push_str("  ]\n}\n");
    out
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/test/transcripts.json")
}

#[test]
fn web_transcripts_are_current() {
    let now = transcripts();
    assert_eq!(now, transcripts(), "deterministic");
    // Every kind of verdict occurs, so the replay checks each.
    for verdict in [
        r#""result":"opened""#,
        r#""result":"duplicate""#,
        r#""result":"rejected""#,
    ] {
        assert!(now.contains(verdict), "{verdict}");
    }
    if std::env::var_os("CHATIFY_BLESS").is_some() {
        std::fs::write(path(), &now).unwrap();
        return;
    }
    let held = std::fs::read_to_string(path()).unwrap_or_default();
    assert!(
        held == now,
        "web/test/transcripts.json is not what the core plays now; run with CHATIFY_BLESS=1 (and the web tests)"
    );
}
