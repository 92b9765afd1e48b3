//! Scenario files (`scenarios/*.toml`): data, not code. Every key is
//! documented in `scenarios/README.md`; unknown keys are errors.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scenario {
    /// Short name (used for the default output directory).
    pub(crate) name: String,
    /// What the scenario shows.
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) topology: Topology,
    pub(crate) users: Users,
    #[serde(default)]
    pub(crate) conversations: Conversations,
    pub(crate) workload: Workload,
    #[serde(default)]
    pub(crate) faults: Faults,
    #[serde(default)]
    pub(crate) taps: Taps,
    #[serde(default)]
    pub(crate) expect: Expect,
    /// Present for load sweeps: the workload is run once per step.
    #[serde(default)]
    pub(crate) sweep: Option<Sweep>,
    /// Present for `chatify-harness compare`: systems side by side.
    #[serde(default)]
    pub(crate) compare: Option<Compare>,
    /// Present for client-lifetimes runs: every user action is a fresh
    /// `chatify` process.
    #[serde(default)]
    pub(crate) lifetimes: Option<Lifetimes>,
    /// Present for second-factor runs (`harness/src/load/mfa.rs`): users
    /// turn TOTP on and log in with codes while an attacker replays and
    /// guesses them.
    #[serde(default)]
    pub(crate) mfa: Option<Mfa>,
    /// Present for abuse runs: abusers work on the server while the users
    /// chat (`harness/src/load/abuse.rs`).
    #[serde(default)]
    pub(crate) abuse: Option<Abuse>,
    /// Present for file-transfer runs (`harness/src/load/files.rs`): one
    /// user sends files of each size to another through `chatify`.
    #[serde(default)]
    pub(crate) files: Option<Files>,
    /// Present for group-chat runs (`harness/src/load/groups.rs`): groups
    /// of each size made and used by real clients.
    #[serde(default)]
    pub(crate) groups: Option<Groups>,
}

/// A group-chat run: for each size, a group of that many users; each
/// member sends once (its key goes out), then `messages` more in turn at
/// `rate` a second; latency per recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Groups {
    /// Group sizes (members, the creator included), each at least 2.
    pub(crate) sizes: Vec<usize>,
    /// Measured messages per group, after every member's first.
    #[serde(default = "default_group_messages")]
    pub(crate) messages: usize,
    /// Measured messages per second (open loop).
    #[serde(default = "default_group_rate")]
    pub(crate) rate: f64,
    /// Bytes of each message's text.
    #[serde(default = "default_group_message_bytes")]
    pub(crate) message_bytes: usize,
    /// Bound of the p99 latency per recipient at every size, ms.
    #[serde(default = "default_group_p99")]
    pub(crate) max_p99_ms: f64,
    /// The leaky mutant: a member also sends one message's plaintext to
    /// the group unencrypted (the taps must catch it).
    #[serde(default)]
    pub(crate) leak_plaintext: bool,
}

impl Groups {
    fn validate(&self) -> Result<()> {
        if self.sizes.is_empty()
            || self.sizes.iter().any(|n| *n < 2 || *n > 500)
            || !(self.rate.is_finite() && self.rate > 0.0)
            || !(64..=4096).contains(&self.message_bytes)
        {
            bail!(
                "groups needs sizes of 2 to 500 members, rate > 0 and message_bytes of 64 to 4096"
            );
        }
        Ok(())
    }
}

fn default_group_messages() -> usize {
    200
}

fn default_group_rate() -> f64 {
    20.0
}

fn default_group_message_bytes() -> usize {
    100
}

fn default_group_p99() -> f64 {
    250.0
}

/// A file-transfer run: `chatify send-file` and `chatify inbox` processes
/// move a file of each size; memory bounds for those processes and the
/// server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Files {
    /// The files' sizes, in KiB, in the order they are sent.
    pub(crate) sizes_kib: Vec<u64>,
    /// Files of each size up to `repeat_below_kib` sent this many times
    /// (larger ones once).
    #[serde(default = "default_file_repeats")]
    pub(crate) repeats: usize,
    /// See `repeats`.
    #[serde(default = "default_repeat_below_kib")]
    pub(crate) repeat_below_kib: u64,
    /// A sending or receiving `chatify`'s peak resident memory may pass an
    /// idle `chatify`'s (start-up and unlocking the home, whose key
    /// derivation alone takes 64 MiB) by at most this (MiB).
    pub(crate) max_client_extra_mib: f64,
    /// A sending or receiving `chatify`'s resident memory while the file
    /// moves (sampled from its first progress report) must stay at or
    /// under this (MiB).
    pub(crate) max_client_moving_mib: f64,
    /// The server's peak resident memory must stay at or under this (MiB).
    pub(crate) max_server_rss_mib: f64,
    /// A chat on the same server (a message every 50 ms) must keep its p99
    /// latency at or under this (ms) while files move; absent: reported,
    /// not checked.
    #[serde(default)]
    pub(crate) max_chat_p99_ms: Option<f64>,
    /// The mutant: the sender uploads each file's plaintext as its blob.
    #[serde(default)]
    pub(crate) leaky: bool,
}

fn default_file_repeats() -> usize {
    3
}

fn default_repeat_below_kib() -> u64 {
    1024
}

/// What abusers do during the workload, from the same address as the
/// users, speaking the protocol directly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Abuse {
    /// Logins with a valid password kept in flight at once, each on a
    /// fresh connection.
    #[serde(default)]
    pub(crate) login_flood: usize,
    /// How long a flooding login waits after a "busy" answer before it
    /// tries again (ms): 0 for an attacker, who tries again at once; a
    /// client that follows PROTOCOL §9 waits.
    #[serde(default)]
    pub(crate) login_retry_ms: f64,
    /// WebSockets opened when the workload starts and never authenticated.
    #[serde(default)]
    pub(crate) idle_sockets: usize,
    /// Undecodable frames per second, on one connection reopened whenever
    /// the server closes it.
    #[serde(default)]
    pub(crate) bad_frames_per_sec: f64,
    /// The users' p99 end-to-end latency must stay at or under this (ms).
    pub(crate) max_p99_ms: f64,
    /// The server's peak resident memory must stay at or under this (MiB;
    /// child servers only).
    #[serde(default)]
    pub(crate) max_server_rss_mib: Option<f64>,
}

/// A client-lifetimes run (`harness/src/lifetimes.rs`): each send is a
/// `chatify send` process followed by a `chatify inbox` process on the
/// sender's home.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Lifetimes {
    /// Every this many sends of a user, the send and the read start
    /// together on the same home (0: never).
    #[serde(default)]
    pub(crate) concurrent_every: usize,
}

/// A second-factor run: each user turns TOTP on, then logs in with a code
/// and with recovery codes, while an attacker who knows every password
/// replays the codes it saw and guesses others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Mfa {
    /// Logins with a recovery code per user (each code once).
    #[serde(default = "default_recovery_logins")]
    pub(crate) recovery_logins: usize,
    /// Wrong codes the attacker tries per account, in a row.
    #[serde(default = "default_guesses")]
    pub(crate) guesses: usize,
    /// Hash passwords at OWASP's Argon2id cost (19 MiB, 2 passes), as a
    /// deployment does; else the harness's cheap cost.
    #[serde(default = "default_true")]
    pub(crate) owasp_cost: bool,
}

fn default_recovery_logins() -> usize {
    2
}

fn default_guesses() -> usize {
    12
}

fn default_true() -> bool {
    true
}

/// Where the server runs and what it stores in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Topology {
    /// `in-process` (a task in the harness) or `child` (a separate process,
    /// which enables the memory tap and CPU/RSS figures).
    #[serde(default)]
    pub(crate) server: ServerMode,
    /// SQLite commit durability: `normal` (survives kill -9) or `full`.
    #[serde(default = "default_durability")]
    pub(crate) durability: String,
    /// More `chatify-server` options for a child server (e.g. its limits);
    /// given any `--argon2-*` option, the harness's cheap hashing is not
    /// applied.
    #[serde(default)]
    pub(crate) server_args: Vec<String>,
    /// Clients connect to the server itself instead of through the
    /// harness's relay (which the wire tap and network faults need), as the
    /// peers' clients do in a comparison.
    #[serde(default)]
    pub(crate) direct: bool,
    /// Server nodes (child processes) sharing one PostgreSQL store and a
    /// NATS server the harness starts; clients connect through the relay,
    /// which spreads their connections over the nodes that are up (a
    /// reconnect lands on the next one). More than one needs
    /// `store = "postgres"`.
    #[serde(default = "one")]
    pub(crate) nodes: usize,
    /// `sqlite` (a file per run) or `postgres` (a schema of its own in the
    /// database at `CHATIFY_PG_URL`, dropped afterwards).
    #[serde(default)]
    pub(crate) store: StoreKind,
    /// With several nodes: `balanced` (each connection to the next node in
    /// turn) or `pinned` (user i to node i mod nodes, and to the next node
    /// up while that one is down).
    #[serde(default)]
    pub(crate) placement: Placement,
}

/// How users' connections are spread over several nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Placement {
    #[default]
    Balanced,
    Pinned,
}

fn one() -> usize {
    1
}

/// Which store the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StoreKind {
    /// SQLite, embedded.
    #[default]
    Sqlite,
    /// PostgreSQL at `CHATIFY_PG_URL`.
    Postgres,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            server: ServerMode::InProcess,
            durability: default_durability(),
            server_args: Vec::new(),
            direct: false,
            nodes: 1,
            store: StoreKind::Sqlite,
            placement: Placement::Balanced,
        }
    }
}

fn default_durability() -> String {
    "normal".into()
}

/// Where the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ServerMode {
    /// A task in the harness process.
    #[default]
    InProcess,
    /// A child process.
    Child,
}

/// The simulated users (one device each).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Users {
    /// How many (at least 2).
    pub(crate) count: usize,
}

/// Who talks to whom.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Conversations {
    #[serde(default)]
    pub(crate) graph: Graph,
}

/// Conversation graphs; every edge is used in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Graph {
    /// Users 0-1, 2-3, ...
    #[default]
    Pairs,
    /// Each user with the next, the last with the first.
    Ring,
    /// User 0 with every other user.
    Star,
    /// Every user with every other.
    All,
}

impl Graph {
    /// Each user's partners, in a fixed order.
    pub(crate) fn partners(self, users: usize) -> Vec<Vec<usize>> {
        let mut p = vec![Vec::new(); users];
        let mut edge = |a: usize, b: usize| {
            if a != b && !p[a].contains(&b) {
                p[a].push(b);
                p[b].push(a);
            }
        };
        match self {
            Graph::Pairs => (0..users / 2).for_each(|i| edge(2 * i, 2 * i + 1)),
            Graph::Ring => (0..users).for_each(|i| edge(i, (i + 1) % users)),
            Graph::Star => (1..users).for_each(|i| edge(0, i)),
            Graph::All => (0..users).for_each(|a| (a + 1..users).for_each(|b| edge(a, b))),
        }
        p
    }
}

/// What E2EE layer the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    /// The reference client's end-to-end encryption.
    #[default]
    E2ee,
    /// HARNESS-ONLY BASELINE: the E2EE layer replaced by the identity
    /// transform, to measure what E2EE costs. Fails the leak checks by design.
    PlaintextBaseline,
    /// HARNESS-ONLY MUTANT: a deliberately leaky client that encrypts, then
    /// sends the plaintext where the ciphertext belongs. Every tap must catch it.
    LeakyClientMutant,
    /// HARNESS-ONLY MUTANT: E2EE clients, but the server logs every envelope
    /// it accepts through a test-only hook... and the harness hands it the
    /// plaintext to log. The log tap must catch it.
    LeakyServerLogMutant,
    /// HARNESS-ONLY MUTANT: E2EE clients, but the (child) server keeps a
    /// copy of every password and token it sees, through a test-only hook.
    /// The credential tap must find them in its memory.
    CredentialsKeptMutant,
}

impl Mode {
    /// The mode's name in scenario files.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::E2ee => "e2ee",
            Mode::PlaintextBaseline => "plaintext-baseline",
            Mode::LeakyClientMutant => "leaky-client-mutant",
            Mode::LeakyServerLogMutant => "leaky-server-log-mutant",
            Mode::CredentialsKeptMutant => "credentials-kept-mutant",
        }
    }
}

/// Message arrivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Arrival {
    /// Evenly spaced.
    #[default]
    Constant,
    /// Exponential gaps (a Poisson process).
    Poisson,
}

/// The load.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Workload {
    #[serde(default)]
    pub(crate) mode: Mode,
    /// Total messages to send (across all senders); or give `duration_secs`.
    #[serde(default)]
    pub(crate) messages: u64,
    /// Seconds of load: `messages` becomes `rate × duration_secs`.
    #[serde(default)]
    pub(crate) duration_secs: Option<f64>,
    /// Offered load: messages per second across all senders.
    pub(crate) rate: f64,
    #[serde(default)]
    pub(crate) arrival: Arrival,
    /// Plaintext size range in bytes, inclusive (uniform).
    #[serde(default = "default_size")]
    pub(crate) size: [usize; 2],
    /// Seed of the schedule and the plaintexts.
    #[serde(default)]
    pub(crate) seed: u64,
    /// Seconds to wait for the last deliveries after the last send.
    #[serde(default = "default_grace")]
    pub(crate) grace_secs: f64,
}

fn default_size() -> [usize; 2] {
    [64, 256]
}

fn default_grace() -> f64 {
    10.0
}

/// Injected faults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Faults {
    /// Clients that drop their connection and come back.
    #[serde(default)]
    pub(crate) disconnects: Vec<Disconnect>,
    /// Server restarts.
    #[serde(default)]
    pub(crate) server_restarts: Vec<Restart>,
    /// A faulty network between every client and the server.
    #[serde(default)]
    pub(crate) network: Option<Network>,
    /// The NATS server stopped (SIGKILL) and started again on its port
    /// (several nodes only).
    #[serde(default)]
    pub(crate) nats_restarts: Vec<Outage>,
    /// One node's connections to PostgreSQL cut (reset, and new ones
    /// refused) by the harness's relay between that node and PostgreSQL.
    #[serde(default)]
    pub(crate) store_cuts: Vec<Outage>,
}

/// A component away for a while.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Outage {
    /// When, in seconds from the start of the workload.
    pub(crate) at_secs: f64,
    /// For how long.
    pub(crate) down_secs: f64,
    /// Which node's link (store cuts).
    #[serde(default)]
    pub(crate) node: usize,
}

/// Network faults, applied by the harness's relay to every connection in
/// both directions (in user space: TCP order is kept, so jitter delays but
/// does not reorder bytes; loss is a connection reset).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Network {
    /// Added one-way delay (ms).
    #[serde(default)]
    pub(crate) delay_ms: f64,
    /// Extra delay drawn uniformly from `0..jitter_ms` per chunk (ms).
    #[serde(default)]
    pub(crate) jitter_ms: f64,
    /// Bandwidth per connection and direction (KiB/s; 0: unlimited).
    #[serde(default)]
    pub(crate) bandwidth_kib_s: f64,
    /// Mean time (s) after which a connection is reset (TCP RST to both
    /// ends), drawn from an exponential distribution; 0: never.
    #[serde(default)]
    pub(crate) reset_mean_secs: f64,
    /// Seed of the jitter and reset draws.
    #[serde(default)]
    pub(crate) seed: u64,
}

/// A client that goes away and returns (resuming from its state file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Disconnect {
    /// Which user.
    pub(crate) user: usize,
    /// When, in seconds from the start of the workload.
    pub(crate) at_secs: f64,
    /// For how long.
    pub(crate) down_secs: f64,
    /// `true`: the client crashes (its in-memory state is dropped without a
    /// clean close or a save); `false`: it closes the connection cleanly.
    #[serde(default)]
    pub(crate) crash: bool,
}

/// A server restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Restart {
    /// When, in seconds from the start of the workload.
    pub(crate) at_secs: f64,
    /// `true`: kill the server without warning (SIGKILL for a child, an
    /// abort for an in-process server); `false`: graceful shutdown.
    #[serde(default)]
    pub(crate) kill: bool,
    /// Which node (several nodes).
    #[serde(default)]
    pub(crate) node: usize,
    /// How long the node stays down before it starts again.
    #[serde(default)]
    pub(crate) down_secs: f64,
}

/// The plaintext-leak taps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Taps {
    /// Every byte the server read from clients (unmasked WebSocket payloads).
    #[serde(default = "yes")]
    pub(crate) wire: bool,
    /// The database files, WAL and data directory.
    #[serde(default = "yes")]
    pub(crate) store: bool,
    /// Everything the server logged, at the most verbose level.
    #[serde(default = "yes")]
    pub(crate) logs: bool,
    /// The server process's writable memory (child servers only).
    #[serde(default = "yes")]
    pub(crate) memory: bool,
}

fn yes() -> bool {
    true
}

impl Default for Taps {
    fn default() -> Self {
        Taps {
            wire: true,
            store: true,
            logs: true,
            memory: true,
        }
    }
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Verdict {
    /// The property held.
    Pass,
    /// The property did not hold.
    Fail,
    /// Not checked in this run (tap disabled or not applicable).
    Skipped,
}

/// Expected verdicts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Expect {
    /// Checks expected not to pass, with their expected verdict; every other
    /// check is expected to pass (or be skipped).
    #[serde(default)]
    pub(crate) checks: BTreeMap<String, Verdict>,
    /// Why this scenario is expected to fail some checks (required when
    /// `checks` expects a failure).
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// A load sweep: the workload is run at each rate, in each mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sweep {
    /// Offered rates (messages per second), increasing.
    pub(crate) rates: Vec<f64>,
    /// Modes to measure at each rate.
    #[serde(default = "default_sweep_modes")]
    pub(crate) modes: Vec<Mode>,
    /// Seconds of load per step (the message count is rate × this).
    pub(crate) step_secs: f64,
    /// A step is saturated when delivered throughput falls below this
    /// fraction of the offered rate...
    #[serde(default = "default_saturation_fraction")]
    pub(crate) saturation_fraction: f64,
    /// ...or the p99 latency exceeds this many milliseconds.
    #[serde(default = "default_saturation_p99_ms")]
    pub(crate) saturation_p99_ms: f64,
}

/// A system measured by `compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum System {
    /// The reference client and server, end-to-end encrypted.
    Chatify,
    /// The reference client and server with the harness-only identity
    /// transform in place of E2EE.
    ChatifyPlaintext,
    /// A bare tokio-tungstenite relay carrying the same E2EE envelopes.
    Floor,
    /// Socket.io 4.8 on Node.js carrying the same E2EE envelopes.
    Socketio,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Chatify => "chatify",
            System::ChatifyPlaintext => "chatify-plaintext",
            System::Floor => "floor",
            System::Socketio => "socketio",
        }
    }
}

/// Systems side by side, interleaved, repeated (`chatify-harness compare`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Compare {
    /// Systems to measure, in the order of the first repetition (later
    /// repetitions rotate it).
    pub(crate) systems: Vec<System>,
    /// Offered rates (messages per second), increasing; each system is
    /// stepped up until it saturates.
    pub(crate) rates: Vec<f64>,
    /// The rate (one of `rates`) at which latencies are compared.
    pub(crate) equal_load_rate: f64,
    /// Seconds of load per step.
    pub(crate) step_secs: f64,
    /// How many times the whole comparison is repeated.
    pub(crate) repetitions: u32,
    /// Saturation as in `[sweep]`.
    #[serde(default = "default_saturation_fraction")]
    pub(crate) saturation_fraction: f64,
    /// Saturation as in `[sweep]`.
    #[serde(default = "default_saturation_p99_ms")]
    pub(crate) saturation_p99_ms: f64,
}

fn default_sweep_modes() -> Vec<Mode> {
    vec![Mode::E2ee, Mode::PlaintextBaseline]
}

fn default_saturation_fraction() -> f64 {
    0.9
}

fn default_saturation_p99_ms() -> f64 {
    500.0
}

/// The checks of a run with an `[abuse]` table, after the others.
pub(crate) const ABUSE_CHECKS: &[&str] = &[
    "abuse.users-p99",
    "abuse.idle-sockets-closed",
    "abuse.server-rss",
];

/// The checks of a second-factor run.
pub(crate) const MFA_CHECKS: &[&str] = &[
    "mfa.code-required",
    "mfa.honest-logins",
    "mfa.codes-once",
    "mfa.guesses-limited",
    "leak.mfa-store",
];

/// The checks of a file-transfer run (the leak taps' names are shared).
pub(crate) const FILE_CHECKS: &[&str] = &[
    "files.intact",
    "files.client-memory",
    "files.server-memory",
    "files.chat-latency",
];

/// The checks of a group-chat run (the leak taps' names are shared).
pub(crate) const GROUP_CHECKS: &[&str] = &["groups.every-member", "groups.latency"];

/// Every check a run can report, in report order.
pub(crate) const CHECKS: &[&str] = &[
    "delivery.exactly-once",
    "delivery.order",
    "leak.wire",
    "leak.store",
    "leak.logs",
    "leak.memory",
    "leak.credentials",
    "leak.store-log",
    "leak.bus",
    "delivery.catch-up",
];

/// Why a scenario file is unusable.
pub(crate) fn load(path: &Path) -> Result<Scenario> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut s: Scenario = toml::from_str(&text).with_context(|| path.display().to_string())?;
    s.validate().with_context(|| path.display().to_string())?;
    Ok(s)
}

impl Scenario {
    /// The topology of several nodes and its faults.
    fn validate_nodes(&self) -> Result<()> {
        let t = &self.topology;
        if t.nodes == 0 || (t.nodes > 1 && t.store != StoreKind::Postgres) {
            bail!("topology.nodes must be 1, or more with topology.store = \"postgres\"");
        }
        if t.store == StoreKind::Postgres && t.server != ServerMode::Child {
            bail!("topology.store = \"postgres\" needs topology.server = \"child\"");
        }
        let f = &self.faults;
        if f.server_restarts.iter().any(|r| r.node >= t.nodes)
            || f.store_cuts.iter().any(|c| c.node >= t.nodes)
        {
            bail!("faults name a node the topology does not have");
        }
        if t.nodes == 1 && !f.nats_restarts.is_empty() {
            bail!("faults.nats_restarts need topology.nodes > 1");
        }
        if t.store != StoreKind::Postgres && !f.store_cuts.is_empty() {
            bail!("faults.store_cuts need topology.store = \"postgres\"");
        }
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if !(f.nats_restarts.iter().chain(&f.store_cuts))
            .all(|o| non_negative(o.at_secs) && non_negative(o.down_secs))
            || !f.server_restarts.iter().all(|r| non_negative(r.down_secs))
        {
            bail!("fault times must be finite and non-negative");
        }
        Ok(())
    }

    fn validate(&mut self) -> Result<()> {
        if let Some(d) = self.workload.duration_secs {
            if !(d.is_finite() && d > 0.0) || self.workload.messages != 0 {
                bail!("give either workload.messages or a positive workload.duration_secs");
            }
            self.workload.messages = ((self.workload.rate * d).round() as u64).max(1);
        }
        if self.users.count < 2 {
            bail!("users.count must be at least 2");
        }
        let w = &self.workload;
        if w.messages == 0 && self.sweep.is_none() {
            bail!("workload.messages must be at least 1");
        }
        if !(w.rate.is_finite() && w.rate > 0.0) {
            bail!("workload.rate must be a positive number");
        }
        let [min, max] = w.size;
        if min < crate::plaintext::MIN_SIZE
            || max < min
            || max > chatify_proto::limits::MAX_PLAINTEXT_LEN
        {
            bail!(
                "workload.size must be [min, max] with {} <= min <= max <= {}",
                crate::plaintext::MIN_SIZE,
                chatify_proto::limits::MAX_PLAINTEXT_LEN
            );
        }
        if !["normal", "full"].contains(&self.topology.durability.as_str()) {
            bail!("topology.durability must be \"normal\" or \"full\"");
        }
        for d in &self.faults.disconnects {
            if d.user >= self.users.count {
                bail!("faults.disconnects: no user {}", d.user);
            }
        }
        for name in self.expect.checks.keys() {
            let lists = [CHECKS, ABUSE_CHECKS, MFA_CHECKS, FILE_CHECKS, GROUP_CHECKS];
            if !lists.iter().any(|known| known.contains(&name.as_str())) {
                let known: Vec<String> = lists.iter().map(|l| l.join(", ")).collect();
                bail!(
                    "expect.checks: unknown check {name:?} (known: {})",
                    known.join(", ")
                );
            }
        }
        if let Some(g) = &self.groups {
            g.validate()?;
        }
        if self.expect.checks.values().any(|v| *v == Verdict::Fail) && self.expect.reason.is_none()
        {
            bail!("expect.reason is required when a check is expected to fail");
        }
        if let Some(n) = &self.faults.network {
            let ok = |x: f64| x.is_finite() && x >= 0.0;
            if !(ok(n.delay_ms)
                && ok(n.jitter_ms)
                && ok(n.bandwidth_kib_s)
                && ok(n.reset_mean_secs))
            {
                bail!("faults.network values must be finite and non-negative");
            }
        }
        if self.conversations.graph == Graph::Pairs && self.users.count % 2 == 1 {
            bail!("the pairs graph needs an even users.count");
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if let Some(s) = &self.sweep
            && (s.rates.is_empty()
                || !s.rates.iter().all(|r| positive(*r))
                || !positive(s.step_secs))
        {
            bail!("sweep.rates must be positive and sweep.step_secs > 0");
        }
        if self.topology.direct && (self.taps.wire || self.faults.network.is_some()) {
            bail!("topology.direct leaves out the relay that taps.wire and faults.network need");
        }
        if !self.topology.server_args.is_empty() && self.topology.server != ServerMode::Child {
            bail!("topology.server_args need topology.server = \"child\"");
        }
        self.validate_nodes()?;
        if let Some(a) = &self.abuse
            && !(positive(a.max_p99_ms)
                && a.bad_frames_per_sec.is_finite()
                && a.bad_frames_per_sec >= 0.0
                && a.login_retry_ms.is_finite()
                && a.login_retry_ms >= 0.0
                && a.max_server_rss_mib.is_none_or(positive))
        {
            bail!(
                "abuse.max_p99_ms and abuse.max_server_rss_mib must be positive, abuse.bad_frames_per_sec and abuse.login_retry_ms non-negative"
            );
        }
        if let Some(c) = &self.compare {
            if self.sweep.is_some() {
                bail!("a scenario has [sweep] or [compare], not both");
            }
            if c.systems.is_empty()
                || c.rates.is_empty()
                || !c.rates.iter().all(|r| positive(*r))
                || !c.rates.windows(2).all(|w| w[0] < w[1])
                || !positive(c.step_secs)
                || c.repetitions == 0
            {
                bail!(
                    "compare needs systems, increasing positive rates, step_secs > 0 and repetitions >= 1"
                );
            }
            if !c.rates.contains(&c.equal_load_rate) {
                bail!("compare.equal_load_rate must be one of compare.rates");
            }
        }
        Ok(())
    }

    /// The expected verdict of a check.
    pub(crate) fn expected(&self, check: &str) -> Verdict {
        self.expect
            .checks
            .get(check)
            .copied()
            .unwrap_or(Verdict::Pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs() {
        assert_eq!(
            Graph::Pairs.partners(4),
            vec![vec![1], vec![0], vec![3], vec![2]]
        );
        assert_eq!(
            Graph::Ring.partners(3),
            vec![vec![1, 2], vec![0, 2], vec![1, 0]]
        );
        assert_eq!(Graph::Star.partners(3), vec![vec![1, 2], vec![0], vec![0]]);
        assert_eq!(Graph::All.partners(3)[0], vec![1, 2]);
        assert_eq!(Graph::Ring.partners(2), vec![vec![1], vec![0]]);
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path).unwrap();
                n += 1;
            }
        }
        assert!(n >= 6, "{n} scenarios");
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        let base = "name='x'\ndescription='y'\n[users]\ncount=2\n[workload]\nmessages=1\nrate=1\n";
        let parse = |extra: &str| -> Result<Scenario> {
            let mut s: Scenario = toml::from_str(&format!("{base}{extra}"))?;
            s.validate().map(|_| s)
        };
        assert!(parse("").is_ok());
        assert!(
            parse("duration_secs=2\n")
                .unwrap_err()
                .to_string()
                .contains("either")
        );
        assert!(
            parse("bogus=1\n")
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        assert!(
            parse("[expect.checks]\n\"leak.wire\"='fail'\n")
                .unwrap_err()
                .to_string()
                .contains("reason")
        );
        assert!(
            parse("[expect.checks]\n\"nope\"='fail'\n")
                .unwrap_err()
                .to_string()
                .contains("unknown check")
        );
        let refused = |extra: &str, why: &str| {
            let e = parse(extra).unwrap_err().to_string();
            assert!(e.contains(why), "{extra:?}: {e}");
        };
        refused("[topology]\nnodes=3\n", "topology.store = \"postgres\"");
        refused("[topology]\nnodes=0\n", "topology.nodes");
        refused("[topology]\nstore='postgres'\n", "server = \"child\"");
        refused(
            "[topology]\nserver='child'\nstore='postgres'\nnodes=2\n[faults]\nserver_restarts=[{at_secs=1,node=2}]\n",
            "node the topology does not have",
        );
        refused(
            "[faults]\nnats_restarts=[{at_secs=1,down_secs=1}]\n",
            "nodes > 1",
        );
        refused(
            "[faults]\nstore_cuts=[{at_secs=1,down_secs=1}]\n",
            "store = \"postgres\"",
        );
        refused(
            "[topology]\nserver='child'\nstore='postgres'\nnodes=2\n[faults]\nstore_cuts=[{at_secs=1,down_secs=-1}]\n",
            "non-negative",
        );
        assert!(
            parse("[topology]\nserver='child'\nstore='postgres'\nnodes=3\n[faults]\nnats_restarts=[{at_secs=1,down_secs=1}]\nstore_cuts=[{at_secs=2,down_secs=1,node=2}]\n")
                .is_ok()
        );
    }
}
