//! The load: what the clients do during a run.
//!
//! Owns the schedule of messages (open loop, seeded), the user tasks that
//! drive reference clients through it ([`run`], [`users`]), the tally that
//! turns their records into metrics ([`tally`]), load sweeps ([`sweep`]),
//! the peers' clients sent the same plan ([`peers`]: the bare relay floor and
//! Socket.io), the CLI processes of the lifetimes runs ([`lifetimes`]) and
//! the abusers that work on the server beside the users ([`abuse`]).
//! It starts servers through [`crate::topology`], reads through
//! [`crate::taps`] and returns [`crate::metrics`]; it writes no report and
//! knows no experiment.
//!
//! ```text
//!  Scenario ─▶ schedule ─▶ user tasks (Client) ─▶ Record ─▶ tally ─▶ Outcome
//! ```

use std::path::Path;

pub(crate) mod abuse;
pub(crate) mod files;
pub(crate) mod groups;
pub(crate) mod lifetimes;
pub(crate) mod mfa;
pub(crate) mod open_loop;
pub(crate) mod peers;
pub(crate) mod run;
pub(crate) mod schedule;
pub(crate) mod sweep;
pub(crate) mod tally;
pub(crate) mod users;

/// The passphrase of every client home the harness makes, at the cheapest
/// derivation cost: runs open homes thousands of times, and the cost is the
/// user's choice, not something the runs measure.
pub(crate) fn home_passphrase() -> chatify_client::Passphrase {
    chatify_client::Passphrase::with_cost("harness home", chatify_client::KdfCost::MINIMUM)
        .unwrap_or_else(|_| chatify_client::Passphrase::new("harness home"))
}

/// A client home, owned and unlocked, so that what is timed next (connect
/// and authenticate) leaves the passphrase's derivation out.
pub(crate) fn unlocked_home(
    home: &Path,
) -> Result<chatify_client::state::StateFile, chatify_client::ClientError> {
    chatify_client::state::StateFile::acquire(home, chatify_client::OWNER_WAIT)?
        .unlock(&home_passphrase())
}
