//! The experiments: each command that measures something and says what it
//! found.
//!
//! - [`reproduce`]: the paper's evaluation (E2EE against the plaintext
//!   baseline, a load sweep, an instrumented sample conversation);
//! - [`compare`]: Chatify beside its peers under the same plan;
//! - [`adversary`]: the malicious-server suite;
//! - [`check`]: a run's summary against a committed baseline (the CI gate);
//! - [`connections`]: many authenticated connections on one server, their
//!   memory, and latency while they are held;
//! - [`nodes`]: several nodes on PostgreSQL and NATS, latency beside one
//!   node and delivery through faults.
//!
//! An experiment produces data (the types of [`crate::report`]) and hands
//! it to the report's writers; it draws nothing itself, and nothing below it
//! imports it.

pub(crate) mod adversary;
pub(crate) mod capacity;
pub(crate) mod check;
pub(crate) mod compare;
pub(crate) mod connections;
pub(crate) mod nodes;
pub(crate) mod reproduce;
