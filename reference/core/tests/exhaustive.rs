//! Bounded exhaustive model checking of sessions under a Dolev-Yao network
//! adversary, over the sans-IO core.
//!
//! ```text
//!  world = every party's sessions (serialized) + rng, what each accepted,
//!          every envelope the adversary has seen or made
//!  actions: send (party → partner)            the honest parties
//!           deliver any known envelope to any party, claiming any sender
//!           (in order, out of order, again: replay; to the wrong party:
//!           redirect; as another sender: forgery)
//!           tamper (one bit of the header, the ciphertext or the tag;
//!           or an announced counter bumped and re-encoded)
//!  search:  breadth-first to a stated depth, worlds deduplicated
//! ```
//!
//! Invariants, checked after every action of every path:
//! - **authenticity**: a party accepts a plaintext only if the claimed sender
//!   sent exactly it, to that party;
//! - **no replay**: no message is accepted twice;
//! - **no tampering**: an envelope the adversary altered is never accepted;
//! - **transactional rejection**: a rejected envelope leaves the recipient's
//!   session byte-for-byte unchanged;
//! - **liveness**: a genuine envelope not yet accepted, delivered to its
//!   recipient as from its sender, is accepted.
//!
//! `the_explorer_finds_a_seeded_replay_bug` shows that the search finds a
//! decrypt path that skips the replay check, with a shortest counterexample.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

use chatify_core::{Device, Session, VerifiedBundle};
use chatify_proto::{Envelope, PrekeyBundle};
use common::CONVERSATION;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// One envelope the adversary knows.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Known {
    bytes: Vec<u8>,
    /// Sender and recipient of the genuine envelope it is, or came from.
    from: usize,
    to: usize,
    /// `Some(n)`: the n-th genuine message from `from` to `to`; `None`: altered.
    genuine: Option<u32>,
}

#[derive(Clone)]
struct Party {
    /// Serialized session with each partner.
    sessions: BTreeMap<usize, Vec<u8>>,
    rng: ChaCha20Rng,
    /// (sender, n) accepted.
    accepted: BTreeSet<(usize, u32)>,
    /// Messages sent to each partner.
    sent: BTreeMap<usize, u32>,
    /// MUTANT state: plaintexts already returned, by envelope bytes.
    cache: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Clone)]
struct World {
    parties: Vec<Party>,
    known: Vec<Known>,
    tampers_left: u32,
}

impl World {
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for p in &self.parties {
            p.sessions.hash(&mut h);
            p.accepted.hash(&mut h);
            p.sent.hash(&mut h);
            p.cache.hash(&mut h);
        }
        self.known.hash(&mut h);
        self.tampers_left.hash(&mut h);
        h.finish()
    }
}

#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// Flip one bit at this byte offset from the start (header side).
    Head(usize),
    /// Flip one bit at this offset from the end (the tag's last bytes, then the ciphertext).
    Tail(usize),
    /// Announce the next counter and re-encode canonically.
    Counter,
}

#[derive(Clone, Debug)]
enum Action {
    Send {
        from: usize,
        to: usize,
    },
    /// Deliver known envelope `k` to `to`, claiming it comes from `claimed`.
    Deliver {
        k: usize,
        to: usize,
        claimed: usize,
    },
    Tamper {
        k: usize,
        how: Tamper,
    },
}

struct Config {
    /// Who has a session with whom.
    edges: Vec<(usize, usize)>,
    parties: usize,
    depth: usize,
    sends_per_direction: u32,
    tampers: u32,
    /// Seeded bug: the decrypt path answers a duplicate with the plaintext it
    /// returned before (it skips the replay check).
    replay_mutant: bool,
}

fn plaintext(from: usize, to: usize, n: u32) -> Vec<u8> {
    format!("{from}->{to}#{n}").into_bytes()
}

fn initial(c: &Config) -> World {
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let mut devices: Vec<Device> = (0..c.parties).map(|_| Device::generate(&mut rng)).collect();
    let mut parties: Vec<Party> = (0..c.parties)
        .map(|i| Party {
            sessions: BTreeMap::new(),
            rng: ChaCha20Rng::from_seed([i as u8 + 1; 32]),
            accepted: BTreeSet::new(),
            sent: BTreeMap::new(),
            cache: BTreeMap::new(),
        })
        .collect();
    for &(a, b) in &c.edges {
        let keys = devices[b].publish_keys(1, &mut rng);
        let bundle = PrekeyBundle {
            user: format!("p{b}"),
            device: 1,
            identity: keys.identity,
            signed_prekey: keys.signed_prekey,
            one_time_prekey: keys.one_time_prekeys.into_iter().next(),
        };
        let mut sa = Session::initiate(
            &devices[a],
            VerifiedBundle::verify(&bundle).unwrap(),
            &mut rng,
        )
        .unwrap();
        let first = sa.encrypt(CONVERSATION, b"hello", &mut rng).unwrap();
        let (sb, _) = devices[b].accept(&first).unwrap();
        parties[a].sessions.insert(b, sa.to_bytes().to_vec());
        parties[b].sessions.insert(a, sb.to_bytes().to_vec());
    }
    World {
        parties,
        known: Vec::new(),
        tampers_left: c.tampers,
    }
}

fn actions(c: &Config, w: &World) -> Vec<Action> {
    let mut out = Vec::new();
    for (from, p) in w.parties.iter().enumerate() {
        for &to in p.sessions.keys() {
            if p.sent.get(&to).copied().unwrap_or(0) < c.sends_per_direction {
                out.push(Action::Send { from, to });
            }
        }
    }
    for k in 0..w.known.len() {
        for to in 0..c.parties {
            for &claimed in w.parties[to].sessions.keys() {
                out.push(Action::Deliver { k, to, claimed });
            }
        }
        if w.tampers_left > 0 && w.known[k].genuine.is_some() {
            for how in [
                Tamper::Head(2),
                Tamper::Head(40),
                Tamper::Tail(1),
                Tamper::Tail(20),
                Tamper::Counter,
            ] {
                out.push(Action::Tamper { k, how });
            }
        }
    }
    out
}

/// Applies `a`; Err names the invariant it broke.
fn step(c: &Config, w: &World, a: &Action) -> Result<Option<World>, String> {
    let mut w = w.clone();
    match *a {
        Action::Send { from, to } => {
            let p = &mut w.parties[from];
            let n = p.sent.get(&to).copied().unwrap_or(0);
            let mut s = Session::from_bytes(&p.sessions[&to]).unwrap();
            // A restored session sends only under a durable save that
            // covers the key (§13.1); reserving one key moves no counter.
            s.prepare_sending(&mut p.rng).unwrap();
            let (_, saved) = s.to_bytes_reserving(1);
            s.confirm_saved(saved);
            let env = s
                .encrypt(CONVERSATION, &plaintext(from, to, n), &mut p.rng)
                .unwrap();
            p.sessions.insert(to, s.to_bytes().to_vec());
            p.sent.insert(to, n + 1);
            w.known.push(Known {
                bytes: env.encode(),
                from,
                to,
                genuine: Some(n),
            });
        }
        Action::Tamper { k, how } => {
            let mut bytes = w.known[k].bytes.clone();
            match how {
                Tamper::Head(i) if i < bytes.len() => bytes[i] ^= 0x01,
                Tamper::Tail(i) if i <= bytes.len() => {
                    let at = bytes.len() - i;
                    bytes[at] ^= 0x80;
                }
                Tamper::Counter => {
                    let Ok(mut env) = Envelope::decode(&bytes) else {
                        return Ok(None);
                    };
                    env.header.counter += 1;
                    bytes = env.encode();
                }
                _ => return Ok(None),
            }
            if w.known.iter().any(|x| x.bytes == bytes) {
                return Ok(None);
            }
            w.tampers_left -= 1;
            let original = &w.known[k];
            w.known.push(Known {
                bytes,
                from: original.from,
                to: original.to,
                genuine: None,
            });
        }
        Action::Deliver { k, to, claimed } => {
            let known = w.known[k].clone();
            let party = &mut w.parties[to];
            let before = party.sessions[&claimed].clone();
            let mut s = Session::from_bytes(&before).unwrap();
            let mut result = Envelope::decode(&known.bytes)
                .map_err(chatify_core::Error::from)
                .and_then(|env| s.decrypt(&env))
                .map(|pt| pt.to_vec());
            if c.replay_mutant {
                match &result {
                    Ok(pt) => {
                        party.cache.insert(known.bytes.clone(), pt.clone());
                    }
                    Err(chatify_core::Error::Duplicate) => {
                        if let Some(pt) = party.cache.get(&known.bytes) {
                            result = Ok(pt.clone());
                        }
                    }
                    Err(_) => {}
                }
            }
            let honest = known.genuine.is_some() && known.to == to && known.from == claimed;
            match result {
                Ok(pt) => {
                    let Some(n) = known.genuine else {
                        return Err("a tampered envelope was accepted".into());
                    };
                    if known.to != to || known.from != claimed {
                        return Err(format!(
                            "party {to} accepted {}->{}#{n} as coming from {claimed}",
                            known.from, known.to
                        ));
                    }
                    if pt != plaintext(known.from, known.to, n) {
                        return Err("an accepted plaintext differs from what was sent".into());
                    }
                    if !party.accepted.insert((claimed, n)) {
                        return Err(format!("message {claimed}->{to}#{n} accepted twice"));
                    }
                    party.sessions.insert(claimed, s.to_bytes().to_vec());
                }
                Err(e) => {
                    if *s.to_bytes() != *before {
                        return Err(format!("a rejection ({e}) changed the session"));
                    }
                    if honest
                        && !party
                            .accepted
                            .contains(&(claimed, known.genuine.unwrap_or(0)))
                    {
                        return Err(format!(
                            "genuine {}->{}#{} rejected on first delivery: {e}",
                            known.from,
                            known.to,
                            known.genuine.unwrap_or(0)
                        ));
                    }
                    // A rejected delivery changes nothing: not a new world.
                    if !c.replay_mutant {
                        return Ok(None);
                    }
                }
            }
        }
    }
    Ok(Some(w))
}

/// What a search covered.
#[derive(Debug)]
struct Explored {
    worlds: usize,
    transitions: usize,
}

/// Breadth-first to `c.depth`; Err is a shortest counterexample.
fn explore(c: &Config) -> Result<Explored, (String, Vec<Action>)> {
    let start = initial(c);
    let mut seen = HashSet::new();
    seen.insert(start.fingerprint());
    let mut frontier = vec![(start, Vec::<Action>::new())];
    let mut ex = Explored {
        worlds: 1,
        transitions: 0,
    };
    for _ in 0..c.depth {
        let mut next = Vec::new();
        for (w, path) in &frontier {
            for a in actions(c, w) {
                ex.transitions += 1;
                match step(c, w, &a) {
                    Err(violation) => {
                        let mut p = path.clone();
                        p.push(a);
                        return Err((violation, p));
                    }
                    Ok(None) => {}
                    Ok(Some(w2)) => {
                        if seen.insert(w2.fingerprint()) {
                            let mut p = path.clone();
                            p.push(a);
                            next.push((w2, p));
                            ex.worlds += 1;
                        }
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(ex)
}

#[test]
fn two_parties_exhaustively_to_depth_8() {
    let c = Config {
        edges: vec![(0, 1)],
        parties: 2,
        depth: 8,
        sends_per_direction: 2,
        tampers: 1,
        replay_mutant: false,
    };
    match explore(&c) {
        Ok(ex) => {
            eprintln!("two parties, depth {}: {ex:?}", c.depth);
            assert!(ex.worlds > 1_000, "{ex:?}");
        }
        Err((violation, path)) => panic!("{violation} after {path:?}"),
    }
}

#[test]
fn three_parties_exhaustively_to_depth_6() {
    // Party 0 talks with 1 and with 2: redirecting and passing an envelope
    // off as the other partner's are among the adversary's moves.
    let c = Config {
        edges: vec![(0, 1), (0, 2)],
        parties: 3,
        depth: 6,
        sends_per_direction: 1,
        tampers: 1,
        replay_mutant: false,
    };
    match explore(&c) {
        Ok(ex) => {
            eprintln!("three parties, depth {}: {ex:?}", c.depth);
            assert!(ex.worlds > 1_000, "{ex:?}");
        }
        Err((violation, path)) => panic!("{violation} after {path:?}"),
    }
}

/// The search is not vacuous: a decrypt path without the replay check is
/// found, with a shortest counterexample (send, deliver, deliver again).
#[test]
fn the_explorer_finds_a_seeded_replay_bug() {
    let c = Config {
        edges: vec![(0, 1)],
        parties: 2,
        depth: 6,
        sends_per_direction: 2,
        tampers: 1,
        replay_mutant: true,
    };
    let (violation, path) = explore(&c).expect_err("the replay mutant went unnoticed");
    assert!(violation.contains("accepted twice"), "{violation}");
    assert_eq!(path.len(), 3, "{path:?}");
}
