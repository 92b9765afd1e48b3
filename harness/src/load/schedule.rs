//! The plan of a run: every message, its sender, recipient, size, canary
//! plaintext and intended send time, drawn from the scenario's seed (open
//! loop: the times do not depend on how the server keeps up).

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::plaintext::{self, Plaintext};
use crate::scenario::{Arrival, Scenario};

/// A planned message.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) sender: usize,
    pub(crate) recipient: usize,
    pub(crate) n: u64,
    pub(crate) at: Duration,
    pub(crate) plaintext: Plaintext,
    pub(crate) message_id: [u8; 16],
}

pub(crate) fn schedule(s: &Scenario) -> Vec<Planned> {
    let w = &s.workload;
    let partners = s.conversations.graph.partners(s.users.count);
    let senders: Vec<usize> = (0..s.users.count)
        .filter(|u| !partners[*u].is_empty())
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(w.seed);
    let mut per_sender = vec![0u64; s.users.count];
    let mut t = 0f64;
    let mut plan = Vec::with_capacity(w.messages as usize);
    for k in 0..w.messages {
        let sender = senders[(k as usize) % senders.len()];
        let n = per_sender[sender];
        per_sender[sender] += 1;
        let mine = &partners[sender];
        let recipient = mine[(n as usize) % mine.len()];
        let [min, max] = w.size;
        let size = min + (rng.next_u64() as usize) % (max - min + 1);
        let mut message_id = [0u8; 16];
        rng.fill_bytes(&mut message_id);
        plan.push(Planned {
            sender,
            recipient,
            n,
            at: Duration::from_secs_f64(t),
            plaintext: plaintext::make(sender, n, size, &mut rng),
            message_id,
        });
        t += match w.arrival {
            Arrival::Constant => 1.0 / w.rate,
            Arrival::Poisson => {
                let u = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                -u.ln() / w.rate
            }
        };
    }
    plan
}

/// What a user task reports.
#[derive(Debug)]
pub(crate) enum Record {
    Delivered {
        recipient: usize,
        sender: usize,
        n: u64,
        latency: Duration,
        decrypt: Option<Duration>,
        bytes: usize,
        at: Instant,
    },
    Duplicate,
    Rejected(String),
    Unknown,
    Sent {
        encrypt: Option<Duration>,
        setup: Option<Duration>,
    },
    SendFailed(String),
    ConnectAuth(Duration),
    Reconnected,
}

pub(crate) fn user_name(i: usize) -> String {
    format!("u{i}")
}
