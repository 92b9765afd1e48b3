//! The store for several nodes: PostgreSQL, shared by every node.
//!
//! ```text
//!  node A ─┐                      ┌─ envelopes (seq: one identity for all nodes)
//!  node B ─┼─ pool of connections ┼─ devices, one_time_prekeys, users, tokens, links
//!  node C ─┘   (retried while      └─ schema_migrations (versioned, applied under an
//!               the server is away)     advisory lock, so nodes may start together)
//! ```
//!
//! Every method commits before it returns (PostgreSQL's `synchronous_commit`
//! as the operator set it; on by default). The methods are synchronous, as
//! the [`Store`] trait asks: each call borrows a connection from the pool
//! and waits for its answer, on a blocking thread of the server's.
//!
//! Two properties need care that one SQLite writer gave for free:
//!
//! - **A device's mailbox grows in sequence order.** Sequence numbers come
//!   from one identity column, drawn by concurrent transactions on several
//!   nodes, which could commit out of order: a reader that saw seq 11 and
//!   then seq 10 commit would never push 10 (a connection reads from its
//!   last pushed seq on). An envelope's insert first locks its recipient's
//!   device row, so that stores for one device draw their numbers in commit
//!   order; under that lock it also moves the row's `last_seq` on, so that
//!   each store names the envelope stored for the device just before
//!   ([`Store::enqueue_linked`]) and a node may push another node's
//!   envelope without reading it back.
//! - **A one-time prekey is served once.** A bundle fetch deletes the key
//!   it serves, choosing among keys no other transaction holds (`FOR UPDATE
//!   SKIP LOCKED`): two fetches on two nodes at once get two keys.
//!
//! A connection that breaks (the server restarted, the network cut) is
//! dropped and a call is tried again on a new one for
//! [`PgOptions::retry_for`]; a store repeated after its commit's answer was
//! lost is a second copy of the envelope under a new seq, which the
//! recipient's client reports as a duplicate and does not show.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use chatify_proto::frame::{Address, BlobId, Deliver};
use chatify_proto::{ConversationId, DeviceKeys, OneTimePrekey, PrekeyBundle, SignedPrekey};
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

use super::blob::PutPlan;
use super::group::{Done, GroupCommit, Op};
use super::{
    Announce, BlobExpiry, BlobGrantOutcome, BlobInfo, BlobPutOutcome, Blobs, MfaRecord,
    NewEnvelope, SharedLimits, Store, StoreError, Stored, TokenRecord,
};

/// Schema migrations, applied in order; `schema_migrations` records each.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial schema (the SQLite store's migrations 1 and 2).
    "CREATE TABLE users (
         name TEXT PRIMARY KEY,
         password_hash TEXT NOT NULL
     );
     CREATE TABLE tokens (
         hash BYTEA PRIMARY KEY,
         username TEXT NOT NULL REFERENCES users(name),
         device BIGINT NOT NULL,
         expires_at BIGINT NOT NULL
     );
     CREATE INDEX tokens_device ON tokens (username, device);
     CREATE TABLE devices (
         username TEXT NOT NULL REFERENCES users(name),
         device BIGINT NOT NULL,
         signing_key BYTEA NOT NULL,
         identity_key BYTEA NOT NULL,
         identity_signature BYTEA NOT NULL,
         spk_id BIGINT NOT NULL,
         spk BYTEA NOT NULL,
         spk_signature BYTEA NOT NULL,
         PRIMARY KEY (username, device)
     );
     CREATE TABLE one_time_prekeys (
         username TEXT NOT NULL,
         device BIGINT NOT NULL,
         id BIGINT NOT NULL,
         public_key BYTEA NOT NULL,
         PRIMARY KEY (username, device, id)
     );
     CREATE TABLE envelopes (
         seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         conversation BYTEA NOT NULL,
         sender TEXT NOT NULL,
         sender_device BIGINT NOT NULL,
         recipient TEXT NOT NULL,
         recipient_device BIGINT NOT NULL,
         message_id BYTEA NOT NULL,
         sent_at_ms BIGINT NOT NULL,
         envelope BYTEA NOT NULL,
         acked BOOLEAN NOT NULL DEFAULT FALSE
     );
     CREATE INDEX envelopes_mailbox ON envelopes (recipient, recipient_device, seq) WHERE NOT acked;
     CREATE INDEX envelopes_conversation ON envelopes (conversation, seq);
     CREATE TABLE links (
         username TEXT PRIMARY KEY REFERENCES users(name),
         link_id BYTEA NOT NULL,
         blob BYTEA NOT NULL,
         expires_ms BIGINT NOT NULL
     );",
    // 2: rate-limit state shared by the nodes (times in ms, the database's clock).
    "CREATE TABLE limit_events (
         key TEXT NOT NULL,
         at_ms BIGINT NOT NULL
     );
     CREATE INDEX limit_events_key ON limit_events (key, at_ms);
     CREATE INDEX limit_events_age ON limit_events (at_ms);
     CREATE TABLE limit_buckets (
         key TEXT PRIMARY KEY,
         tokens DOUBLE PRECISION NOT NULL,
         at_ms BIGINT NOT NULL
     );",
    // 3: second factors (TOTP secrets sealed under the server's key) and
    // recovery codes (hashed).
    "CREATE TABLE mfa (
         username TEXT PRIMARY KEY REFERENCES users(name),
         secret BYTEA NOT NULL,
         enabled BOOLEAN NOT NULL,
         last_step BIGINT NOT NULL
     );
     CREATE TABLE mfa_recovery (
         username TEXT NOT NULL REFERENCES users(name),
         code_hash BYTEA NOT NULL,
         PRIMARY KEY (username, code_hash)
     );",
    // 4: each node's open connections per client address (the limit on
    // connections per address holds across nodes).
    "CREATE TABLE node_connections (
         node TEXT NOT NULL,
         address TEXT NOT NULL,
         open INTEGER NOT NULL,
         seen_ms BIGINT NOT NULL,
         PRIMARY KEY (node, address)
     );
     CREATE INDEX node_connections_seen ON node_connections (seen_ms);",
    // 5: each device's newest envelope, kept under the device row's lock,
    // so that a store tells which envelope came before the one it stores
    // (see `Store::enqueue_linked`). Nodes of an older version must be
    // stopped while it is applied: they would store without keeping it.
    "ALTER TABLE devices ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0;
     UPDATE devices d SET last_seq = m.seq
     FROM (SELECT recipient, recipient_device, max(seq) AS seq FROM envelopes
           GROUP BY recipient, recipient_device) m
     WHERE d.username = m.recipient AND d.device = m.recipient_device;",
    // 6: blobs (encrypted files) in parts, and the devices they were
    // granted to (see `store::blob`).
    "CREATE TABLE blobs (
         id BYTEA PRIMARY KEY,
         owner TEXT NOT NULL,
         owner_device BIGINT NOT NULL,
         owner_holds BOOLEAN NOT NULL,
         size BIGINT NOT NULL,
         received BIGINT NOT NULL,
         expires_ms BIGINT NOT NULL
     );
     CREATE INDEX blobs_owner ON blobs (owner);
     CREATE INDEX blobs_expiry ON blobs (expires_ms);
     CREATE TABLE blob_parts (
         blob BYTEA NOT NULL,
         part BIGINT NOT NULL,
         data BYTEA NOT NULL,
         PRIMARY KEY (blob, part)
     );
     CREATE TABLE blob_grants (
         blob BYTEA NOT NULL,
         username TEXT NOT NULL,
         device BIGINT NOT NULL,
         PRIMARY KEY (blob, username, device)
     );",
];

/// The advisory lock key under which migrations run (any constant; the
/// same on every node).
const MIGRATION_LOCK: i64 = 0x4348_4154_4946_5901;

/// How the PostgreSQL store connects.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections in the pool (at most this many calls run at once).
    pub pool_size: usize,
    /// The schema holding the tables (created if missing); `None`: the
    /// server's default (`public`, or the `search_path` of the URL's
    /// `options`).
    pub schema: Option<String>,
    /// How long a call is tried again while the database is unreachable
    /// before it fails.
    pub retry_for: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            schema: None,
            retry_for: Duration::from_secs(10),
        }
    }
}

/// A connection with its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    /// The statement for `sql`, prepared once per connection.
    fn st(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// What a call may fail with: the database's error, or ours.
enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

/// A PostgreSQL database shared by the nodes.
pub struct PgStore {
    config: postgres::Config,
    options: PgOptions,
    /// Stores and acknowledgements share transactions (one WAL flush).
    group: GroupCommit,
    idle: Mutex<Pool>,
    returned: Condvar,
}

struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // A synchronous client closes by running its own runtime, which may
        // not happen on an async worker (where the server's last reference
        // to the store may go): the connections close on a thread of their
        // own.
        let idle = std::mem::take(&mut self.pool().idle);
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the configuration: its URL may carry a password.
        f.debug_struct("PgStore")
            .field("schema", &self.options.schema)
            .field("pool_size", &self.options.pool_size)
            .finish_non_exhaustive()
    }
}

fn db(e: &postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Database(format!("{}: {}", d.code().code(), d.message())),
        None => StoreError::Database(e.to_string()),
    }
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u64_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn u32_of(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn fixed<const N: usize>(v: Vec<u8>) -> Result<[u8; N], StoreError> {
    v.try_into()
        .map_err(|_| StoreError::Database("stored key of the wrong length".into()))
}

/// Whether an error means the connection is unusable (as opposed to a
/// statement the database refused).
fn broken(e: &postgres::Error, client: &Client) -> bool {
    client.is_closed() || e.is_closed() || e.as_db_error().is_none_or(|d| is_fatal(d.code()))
}

/// A transaction the database rolled back so that it may be run again.
fn rolled_back_to_retry(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
        || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
}

fn is_fatal(code: &SqlState) -> bool {
    // Class 08 (connection exceptions), 57P01-57P03 (shutdown, cannot
    // connect now): the server went away or is restarting.
    code.code().starts_with("08") || code.code().starts_with("57P")
}

fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL or a
    /// key=value string) and migrates its schema.
    pub fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("the PostgreSQL URL: {e}")))?;
        if let Some(schema) = &options.schema
            && !valid_schema(schema)
        {
            return Err(StoreError::Database(format!(
                "schema name {schema:?}: use lower-case letters, digits and '_'"
            )));
        }
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3);
        // A query whose packets go unanswered (a cut link) fails instead of
        // waiting for the kernel's minutes of retransmissions.
        #[cfg(target_os = "linux")]
        config.tcp_user_timeout(Duration::from_secs(5));
        if config.get_application_name().is_none() {
            config.application_name("chatify-server");
        }
        let store = PgStore {
            config,
            options: PgOptions {
                pool_size: options.pool_size.max(1),
                ..options
            },
            idle: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            group: GroupCommit::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    fn open(&self) -> Result<Conn, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        // Every statement here finds its rows through an index. A prepared
        // statement's plan is fixed after a few runs, and when those ran
        // on a young table (no statistics, a few pages) the plan kept for
        // good was a sequential scan: acknowledgements then read the whole
        // of `envelopes` each (a run of 30 000 messages read 7.5 million
        // rows). Off, the planner takes the index whenever there is one.
        client.batch_execute("SET enable_seqscan = off")?;
        if let Some(schema) = &self.options.schema {
            // The name was checked to be a plain identifier.
            client.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
            ))?;
        }
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Borrows a connection: an idle one, a new one while fewer than
    /// `pool_size` are open, or the next one returned.
    fn borrow(&self) -> Result<Conn, postgres::Error> {
        let mut pool = self.pool();
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(c);
            }
            if pool.open < self.options.pool_size {
                pool.open += 1;
                drop(pool);
                return self.open().inspect_err(|_| self.pool().open -= 1);
            }
            pool = self.returned.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn give_back(&self, conn: Option<Conn>) {
        let mut pool = self.pool();
        match conn {
            Some(c) => pool.idle.push(c),
            None => pool.open -= 1,
        }
        drop(pool);
        self.returned.notify_one();
    }

    /// Runs `f` on a pooled connection; tries again on a new connection
    /// while the database is unreachable, for `retry_for`.
    fn with<T>(&self, mut f: impl FnMut(&mut Conn) -> Result<T, Fail>) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.options.retry_for;
        let mut pause = Duration::from_millis(50);
        loop {
            let error = match self.borrow() {
                Ok(mut conn) => match f(&mut conn) {
                    Ok(v) => {
                        self.give_back(Some(conn));
                        return Ok(v);
                    }
                    Err(Fail::Store(e)) => {
                        self.give_back(Some(conn));
                        return Err(e);
                    }
                    Err(Fail::Pg(e)) if !broken(&e, &conn.client) => {
                        self.give_back(Some(conn));
                        if !rolled_back_to_retry(&e) {
                            return Err(db(&e));
                        }
                        // Chosen as a deadlock's victim, or a serialization
                        // failure: the transaction left nothing; run it again.
                        e
                    }
                    Err(Fail::Pg(e)) => {
                        self.give_back(None);
                        e
                    }
                },
                Err(e) => e,
            };
            if Instant::now() + pause > deadline {
                return Err(db(&error));
            }
            tracing::warn!(error = %db(&error), "PostgreSQL unreachable; retrying");
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )?;
            let current: i32 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )?
                .get(0);
            let current = usize::try_from(current).unwrap_or(0);
            if current > MIGRATIONS.len() {
                return Err(StoreError::Database(format!(
                    "database schema version {current} is newer than this server ({})",
                    MIGRATIONS.len()
                ))
                .into());
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
                tx.batch_execute(sql)?;
                let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[&version],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The schema holding the tables, if the store was given one.
    pub fn schema(&self) -> Option<&str> {
        self.options.schema.as_deref()
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.with(|c| {
            let v: i32 = c
                .client
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )?
                .get(0);
            Ok(u32::try_from(v).unwrap_or(0))
        })
    }

    /// Drops the store's schema and everything in it (tests and harness
    /// runs that made a schema of their own).
    pub fn drop_schema(&self) -> Result<(), StoreError> {
        let Some(schema) = self.options.schema.clone() else {
            return Err(StoreError::Refused("no schema of its own to drop"));
        };
        self.with(|c| {
            c.client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
            Ok(())
        })
    }

    /// Every value of every column of every table in the store's schema,
    /// as bytes (`BYTEA` as stored, everything else as its text form), with
    /// its table's name: what the harness's storage tap searches.
    pub fn dump_tables(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with(|c| {
            let columns: Vec<(String, String, String)> = c
                .client
                .query(
                    "SELECT c.table_name::text, c.column_name::text, c.data_type::text
                     FROM information_schema.columns c
                     JOIN information_schema.tables t
                       ON t.table_schema = c.table_schema AND t.table_name = c.table_name
                     WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
                     ORDER BY c.table_name, c.ordinal_position",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            let mut out = Vec::new();
            for (table, column, kind) in columns {
                let (t, col) = (table.replace('"', "\"\""), column.replace('"', "\"\""));
                let sql = if kind == "bytea" {
                    format!("SELECT \"{col}\" FROM \"{t}\" WHERE \"{col}\" IS NOT NULL")
                } else {
                    format!(
                        "SELECT convert_to(\"{col}\"::text, 'UTF8') FROM \"{t}\" WHERE \"{col}\" IS NOT NULL"
                    )
                };
                for row in c.client.query(&sql, &[])? {
                    out.push((table.clone(), row.get::<_, Vec<u8>>(0)));
                }
            }
            Ok(out)
        })
    }
}

const DEVICE_EXISTS: &str =
    "SELECT EXISTS(SELECT 1 FROM devices WHERE username = $1 AND device = $2)";
const COUNT_OTKS: &str =
    "SELECT COUNT(*) FROM one_time_prekeys WHERE username = $1 AND device = $2";

const MAILBOX: &str =
    "SELECT seq, sender, sender_device, conversation, message_id, sent_at_ms, envelope
     FROM envelopes
     WHERE recipient = $1 AND recipient_device = $2 AND NOT acked AND seq > $3
     ORDER BY seq LIMIT $4";

fn to_deliver(row: &postgres::Row) -> Result<Deliver, StoreError> {
    Ok(Deliver {
        seq: u64_of(row.get(0)),
        from: Address {
            user: row.get(1),
            device: u32_of(row.get(2)),
        },
        conversation: fixed(row.get(3))?,
        message_id: fixed(row.get(4))?,
        sent_at_ms: u64_of(row.get(5)),
        envelope: row.get(6),
    })
}

impl SharedLimits for PgStore {
    fn recent_events(&self, keys: &[String], window: Duration) -> Result<Vec<u32>, StoreError> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let counts: HashMap<String, i64> = self.with(|c| {
            let st = c.st(RECENT_EVENTS)?;
            Ok(c.client
                .query(&st, &[&keys, &window_ms])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })?;
        Ok(keys
            .iter()
            .map(|k| u32_of(counts.get(k).copied().unwrap_or(0)))
            .collect())
    }

    fn record_event(&self, keys: &[String]) -> Result<(), StoreError> {
        self.with(|c| {
            let st = c.st("INSERT INTO limit_events (key, at_ms)
                 SELECT k, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
                 FROM unnest($1::TEXT[]) AS k")?;
            c.client.execute(&st, &[&keys])?;
            Ok(())
        })
    }

    fn take_tokens(
        &self,
        key: &str,
        amount: f64,
        per_second: f64,
        burst: f64,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            // One statement: the bucket is refilled for the time since its
            // last use and the tokens taken only if they are all there,
            // atomically whichever node asks.
            let st = c.st(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT AS ms)
                 INSERT INTO limit_buckets AS b (key, tokens, at_ms)
                 SELECT $1, $3::FLOAT8 - $4::FLOAT8, now.ms FROM now WHERE $3::FLOAT8 >= $4::FLOAT8
                 ON CONFLICT (key) DO UPDATE SET
                     tokens = LEAST($3::FLOAT8,
                                    b.tokens + GREATEST(0, excluded.at_ms - b.at_ms) * $2::FLOAT8 / 1000.0) - $4::FLOAT8,
                     at_ms = excluded.at_ms
                 WHERE LEAST($3::FLOAT8,
                             b.tokens + GREATEST(0, excluded.at_ms - b.at_ms) * $2::FLOAT8 / 1000.0) >= $4::FLOAT8
                 RETURNING tokens",
            )?;
            Ok(c
                .client
                .query_opt(&st, &[&key, &per_second, &burst, &amount])?
                .is_some())
        })
    }

    fn exchange_connections(
        &self,
        node: &str,
        open: &[(String, u32)],
        fresh: Duration,
    ) -> Result<Vec<(String, u32)>, StoreError> {
        let fresh_ms = i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX);
        let addresses: Vec<&str> = open.iter().map(|(a, _)| a.as_str()).collect();
        let counts: Vec<i32> = open
            .iter()
            .map(|(_, n)| i32::try_from(*n).unwrap_or(i32::MAX))
            .collect();
        self.with(|c| {
            let st = c.st(EXCHANGE_CONNECTIONS)?;
            let rows = c
                .client
                .query(&st, &[&node, &fresh_ms, &addresses, &counts])?;
            Ok(rows
                .iter()
                .map(|r| {
                    let n: i64 = r.get(1);
                    (r.get(0), u32::try_from(n).unwrap_or(u32::MAX))
                })
                .collect())
        })
    }

    fn prune_limits(&self, age: Duration) -> Result<u64, StoreError> {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        self.with(|c| {
            let events = c.client.execute(
                "DELETE FROM limit_events
                 WHERE at_ms < (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - $1",
                &[&age_ms],
            )?;
            let buckets = c.client.execute(
                "DELETE FROM limit_buckets
                 WHERE at_ms < (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - $1",
                &[&age_ms],
            )?;
            Ok(events + buckets)
        })
    }
}

/// A node's connection counts: its rows for addresses it no longer has
/// removed and the others' rows of nodes long gone (disjoint from the
/// rows this statement writes), its counts written, and the other nodes'
/// fresh counts read (as they were before this statement). One round trip,
/// autocommitted, prepared once per connection: every node runs it every
/// second.
const EXCHANGE_CONNECTIONS: &str = "WITH now AS (
         SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT AS ms
     ), gone AS (
         DELETE FROM node_connections
         WHERE (node = $1 AND address <> ALL($3::TEXT[]))
            OR (node <> $1 AND seen_ms < (SELECT ms FROM now) - 10 * $2::BIGINT)
     ), mine AS (
         INSERT INTO node_connections (node, address, open, seen_ms)
         SELECT $1, a, n, (SELECT ms FROM now) FROM unnest($3::TEXT[], $4::INT4[]) AS t(a, n)
         ON CONFLICT (node, address) DO UPDATE SET open = excluded.open, seen_ms = excluded.seen_ms
     )
     SELECT address, SUM(open)::BIGINT FROM node_connections
     WHERE node <> $1 AND seen_ms >= (SELECT ms FROM now) - $2::BIGINT
     GROUP BY address";

/// One job alone, in one autocommitted statement: the recipient's device
/// row locked (so that stores for one device draw sequence numbers in the
/// order they commit), the envelope stored, and the device's newest
/// envelope moved on to it. Returns the new seq and the one before it: the
/// locked row is read as its newest version (PostgreSQL re-reads a row it
/// had to wait for), so the previous store for the device, committed while
/// this one waited, is the one named.
const ENQUEUE_ONE: &str = "WITH d AS (
         SELECT last_seq FROM devices WHERE username = $4 AND device = $5 FOR UPDATE
     ), e AS (
         INSERT INTO envelopes (conversation, sender, sender_device, recipient,
                                recipient_device, message_id, sent_at_ms, envelope)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM d
         RETURNING seq
     ), moved AS (
         UPDATE devices SET last_seq = e.seq FROM e WHERE username = $4 AND device = $5
     )
     SELECT e.seq, d.last_seq FROM e, d";

/// Moves a batch's devices' newest envelopes on (their rows locked by
/// [`LOCK_RECIPIENTS`]).
const MOVE_LAST: &str = "UPDATE devices d SET last_seq = m.seq
     FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) AS m(u, dv, seq)
     WHERE d.username = m.u AND d.device = m.dv";

/// Whether any of one acknowledgement's envelopes is another device's (a
/// recipient never changes, so the check needs no lock).
const FOREIGN_ONE: &str = "SELECT EXISTS(SELECT 1 FROM envelopes WHERE seq = ANY($1)
                           AND (recipient <> $2 OR recipient_device <> $3))";

/// Marks one acknowledgement's envelopes.
const MARK_ONE: &str = "UPDATE envelopes SET acked = TRUE
     WHERE seq = ANY($1) AND recipient = $2 AND recipient_device = $3 AND NOT acked";

/// Locks the recipients' device rows of a batch, in one order for every
/// node (no deadlock between two nodes' batches), and lists those that
/// exist, with their newest envelopes: stores for one device then draw
/// sequence numbers in the order they commit.
const LOCK_RECIPIENTS: &str = "SELECT d.username, d.device, d.last_seq FROM devices d
     JOIN (SELECT DISTINCT u, dv FROM unnest($1::TEXT[], $2::BIGINT[]) AS r(u, dv)) r
       ON d.username = r.u AND d.device = r.dv
     ORDER BY d.username, d.device
     FOR UPDATE OF d";

/// A batch's envelopes (for devices the batch has locked), in one
/// statement, numbered in the batch's order.
const INSERT_BATCH: &str = "INSERT INTO envelopes (conversation, sender, sender_device, recipient,
                            recipient_device, message_id, sent_at_ms, envelope)
     SELECT u.c, u.s, u.sd, u.r, u.rd, u.m, u.t, u.e
     FROM unnest($1::BYTEA[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[],
                 $6::BYTEA[], $7::BIGINT[], $8::BYTEA[])
          WITH ORDINALITY AS u(c, s, sd, r, rd, m, t, e, ord)
     ORDER BY u.ord
     RETURNING seq";

/// The acknowledgement jobs of a batch that name another device's envelope.
const FOREIGN_ACKS: &str = "SELECT DISTINCT a.job FROM
     unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[]) AS a(seq, job, u, d)
     JOIN envelopes e ON e.seq = a.seq
     WHERE e.seq = ANY($1) AND (e.recipient <> a.u OR e.recipient_device <> a.d)";

/// Marks the envelopes of a batch's accepted acknowledgements. (`seq =
/// ANY($1)` beside the join keeps the primary key's index in every plan: a
/// generic plan of the join alone scanned the table.)
const MARK_BATCH: &str = "UPDATE envelopes e SET acked = TRUE
     FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[]) AS a(seq, u, d)
     WHERE e.seq = ANY($1) AND e.seq = a.seq AND e.recipient = a.u
       AND e.recipient_device = a.d AND NOT e.acked";

impl PgStore {
    /// One transaction for a group commit's batch, in a fixed number of
    /// statements whatever its size (a statement per job made a batch's
    /// round trips, not the disk, the bound): the recipients' rows locked,
    /// the envelopes inserted, the acknowledgements checked and marked.
    /// Each job gets its own result.
    fn commit_batch(&self, ops: &[&Op]) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
        match ops {
            [op] => return self.commit_one(op).map(|r| vec![r]),
            _ if ops.len() <= SMALL_BATCH => return self.commit_each(ops),
            _ => {}
        }
        let mut recipients: (Vec<&str>, Vec<i64>) = (Vec::new(), Vec::new());
        let mut acks: (Vec<i64>, Vec<i64>, Vec<&str>, Vec<i64>) = Default::default();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Enqueue(e) => {
                    recipients.0.push(&e.to.user);
                    recipients.1.push(i64::from(e.to.device));
                }
                Op::Ack(device, seqs) => {
                    for &seq in seqs {
                        acks.0.push(i64_of(seq));
                        acks.1.push(i64::try_from(i).unwrap_or(i64::MAX));
                        acks.2.push(&device.user);
                        acks.3.push(i64::from(device.device));
                    }
                }
            }
        }
        self.with(|c| {
            let lock = c.st(LOCK_RECIPIENTS)?;
            let insert = c.st(INSERT_BATCH)?;
            let foreign = c.st(FOREIGN_ACKS)?;
            let mark = c.st(MARK_BATCH)?;
            let move_last = c.st(MOVE_LAST)?;
            let mut tx = c.client.transaction()?;
            // The devices locked, each with its newest envelope.
            let mut existing: HashMap<(String, i64), i64> = HashMap::new();
            let mut stored: Vec<Option<Stored>> = vec![None; ops.len()];
            if !recipients.0.is_empty() {
                for row in tx.query(&lock, &[&recipients.0, &recipients.1])? {
                    existing.insert((row.get(0), row.get(1)), row.get(2));
                }
                // Only envelopes for the devices locked: one seq per job
                // stored, whatever else changes meanwhile.
                let mut env = EnvelopeColumns::default();
                for op in ops {
                    if let Op::Enqueue(e) = op
                        && existing.contains_key(&(e.to.user.clone(), i64::from(e.to.device)))
                    {
                        env.push(e);
                    }
                }
                let rows = tx.query(
                    &insert,
                    &[
                        &env.conversation,
                        &env.sender,
                        &env.sender_device,
                        &env.recipient,
                        &env.recipient_device,
                        &env.message_id,
                        &env.sent_at_ms,
                        &env.envelope,
                    ],
                )?;
                let mut seqs: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
                // Drawn in the batch's order: ascending is the jobs' order.
                seqs.sort_unstable();
                let mut next = seqs.into_iter();
                let mut moved = HashMap::new();
                for (op, slot) in ops.iter().zip(stored.iter_mut()) {
                    let Op::Enqueue(e) = op else { continue };
                    let key = (e.to.user.clone(), i64::from(e.to.device));
                    let Some(last) = existing.get_mut(&key) else {
                        continue;
                    };
                    let seq = next.next().ok_or_else(|| {
                        StoreError::Database("fewer envelopes stored than expected".into())
                    })?;
                    *slot = Some(Stored {
                        seq: u64_of(seq),
                        prev: Some(u64_of(*last)),
                    });
                    *last = seq;
                    moved.insert(key, seq);
                }
                let mut columns: (Vec<String>, Vec<i64>, Vec<i64>) = Default::default();
                for ((user, device), seq) in moved {
                    columns.0.push(user);
                    columns.1.push(device);
                    columns.2.push(seq);
                }
                tx.execute(&move_last, &[&columns.0, &columns.1, &columns.2])?;
            }
            let mut refused = std::collections::HashSet::new();
            if !acks.0.is_empty() {
                for row in tx.query(&foreign, &[&acks.0, &acks.1, &acks.2, &acks.3])? {
                    refused.insert(row.get::<_, i64>(0));
                }
                let keep: Vec<usize> = (0..acks.0.len())
                    .filter(|&k| acks.1.get(k).is_some_and(|j| !refused.contains(j)))
                    .collect();
                let pick = |v: &Vec<i64>| -> Vec<i64> {
                    keep.iter().filter_map(|&k| v.get(k).copied()).collect()
                };
                let users: Vec<&str> = keep
                    .iter()
                    .filter_map(|&k| acks.2.get(k).copied())
                    .collect();
                tx.execute(&mark, &[&pick(&acks.0), &users, &pick(&acks.3)])?;
            }
            tx.commit()?;
            let results = ops
                .iter()
                .zip(stored)
                .enumerate()
                .map(|(i, (op, stored))| match op {
                    Op::Enqueue(_) => Ok(Done::Enqueued(stored)),
                    Op::Ack(..) => {
                        if refused.contains(&i64::try_from(i).unwrap_or(i64::MAX)) {
                            Err(StoreError::NotYours)
                        } else {
                            Ok(Done::Acked)
                        }
                    }
                })
                .collect();
            Ok(results)
        })
    }
}

/// Batches of at most this many jobs run a statement per job; larger ones
/// the array form (a fixed number of statements).
const SMALL_BATCH: usize = 8;

impl PgStore {
    /// A small batch, a statement per job in one transaction (stores in
    /// the order of their recipients, so that two nodes' batches lock
    /// device rows in one order): at low load, fewer and cheaper statements
    /// than the array form.
    fn commit_each(&self, ops: &[&Op]) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| match ops.get(i) {
                Some(Op::Enqueue(e)) => (0, Some((&e.to.user, e.to.device))),
                _ => (1, None),
            };
            key(a).cmp(&key(b))
        });
        self.with(|c| {
            let st = JobStatements::of(c)?;
            let mut tx = c.client.transaction()?;
            let mut results: Vec<Option<Result<Done, StoreError>>> =
                (0..ops.len()).map(|_| None).collect();
            for &i in &order {
                if let (Some(op), Some(slot)) = (ops.get(i), results.get_mut(i)) {
                    *slot = Some(st.run(&mut tx, op)?);
                }
            }
            tx.commit()?;
            Ok(results
                .into_iter()
                .map(|r| r.unwrap_or(Err(StoreError::Database("no result".into()))))
                .collect())
        })
    }

    /// A batch of one job (the common case below saturation): no explicit
    /// transaction, the fewest round trips.
    fn commit_one(&self, op: &Op) -> Result<Result<Done, StoreError>, StoreError> {
        self.with(|c| {
            let st = JobStatements::of(c)?;
            Ok(st.run(&mut c.client, op)?)
        })
    }
}

/// The statements of one job at a time.
struct JobStatements {
    enqueue: Statement,
    foreign: Statement,
    mark: Statement,
}

impl JobStatements {
    fn of(c: &mut Conn) -> Result<Self, postgres::Error> {
        Ok(JobStatements {
            enqueue: c.st(ENQUEUE_ONE)?,
            foreign: c.st(FOREIGN_ONE)?,
            mark: c.st(MARK_ONE)?,
        })
    }

    /// One job, on a connection or inside a transaction: its own result
    /// (a refusal is one), or the database's error.
    fn run(
        &self,
        client: &mut impl postgres::GenericClient,
        op: &Op,
    ) -> Result<Result<Done, StoreError>, postgres::Error> {
        match op {
            Op::Enqueue(e) => {
                let stored = client
                    .query_opt(
                        &self.enqueue,
                        &[
                            &&e.conversation[..],
                            &e.from.user,
                            &i64::from(e.from.device),
                            &e.to.user,
                            &i64::from(e.to.device),
                            &&e.message_id[..],
                            &i64_of(e.sent_at_ms),
                            &e.envelope,
                        ],
                    )?
                    .map(|r| Stored {
                        seq: u64_of(r.get(0)),
                        prev: Some(u64_of(r.get(1))),
                    });
                Ok(Ok(Done::Enqueued(stored)))
            }
            Op::Ack(device, seqs) => {
                let seqs: Vec<i64> = seqs.iter().map(|&s| i64_of(s)).collect();
                let dev = i64::from(device.device);
                if client
                    .query_one(&self.foreign, &[&seqs, &device.user, &dev])?
                    .get::<_, bool>(0)
                {
                    return Ok(Err(StoreError::NotYours));
                }
                client.execute(&self.mark, &[&seqs, &device.user, &dev])?;
                Ok(Ok(Done::Acked))
            }
        }
    }
}

/// The columns of a batch's envelopes, one array each.
#[derive(Default)]
struct EnvelopeColumns<'a> {
    conversation: Vec<&'a [u8]>,
    sender: Vec<&'a str>,
    sender_device: Vec<i64>,
    recipient: Vec<&'a str>,
    recipient_device: Vec<i64>,
    message_id: Vec<&'a [u8]>,
    sent_at_ms: Vec<i64>,
    envelope: Vec<&'a [u8]>,
}

impl<'a> EnvelopeColumns<'a> {
    fn push(&mut self, e: &'a NewEnvelope) {
        self.conversation.push(&e.conversation);
        self.sender.push(&e.from.user);
        self.sender_device.push(i64::from(e.from.device));
        self.recipient.push(&e.to.user);
        self.recipient_device.push(i64::from(e.to.device));
        self.message_id.push(&e.message_id);
        self.sent_at_ms.push(i64_of(e.sent_at_ms));
        self.envelope.push(&e.envelope);
    }
}

/// Events per key within a window of the database's clock.
const RECENT_EVENTS: &str = "SELECT key, COUNT(*) FROM limit_events
     WHERE key = ANY($1)
       AND at_ms > (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - $2
     GROUP BY key";

const HELD_BLOB: &str = "SELECT size, received FROM blobs b WHERE id = $1 AND (
         (owner = $2 AND owner_device = $3 AND owner_holds)
         OR EXISTS (SELECT 1 FROM blob_grants g
                    WHERE g.blob = b.id AND g.username = $2 AND g.device = $3))";
const OWNED_BLOB: &str = "SELECT size, received FROM blobs
     WHERE id = $1 AND owner = $2 AND owner_device = $3 AND owner_holds FOR UPDATE";

fn blob_info(row: &postgres::Row) -> BlobInfo {
    BlobInfo {
        size: u64_of(row.get(0)),
        received: u64_of(row.get(1)),
    }
}

impl Blobs for PgStore {
    fn blob_create(
        &self,
        owner: &Address,
        id: &BlobId,
        size: u64,
        quota: u64,
        expires_ms: u64,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            // Creations by one account wait for each other, so that two
            // nodes cannot both fit a blob into the last of a quota.
            tx.execute(
                "SELECT 1 FROM users WHERE name = $1 FOR UPDATE",
                &[&owner.user],
            )?;
            let used: i64 = tx
                .query_one(
                    "SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE owner = $1",
                    &[&owner.user],
                )?
                .get(0);
            if u64_of(used).saturating_add(size) > quota {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO blobs (id, owner, owner_device, owner_holds, size, received, expires_ms)
                 VALUES ($1, $2, $3, TRUE, $4, 0, $5)",
                &[
                    &&id[..],
                    &owner.user,
                    &i64::from(owner.device),
                    &i64_of(size),
                    &i64_of(expires_ms),
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn blob_put(
        &self,
        owner: &Address,
        id: &BlobId,
        part: u32,
        data: &[u8],
        expiry: BlobExpiry,
    ) -> Result<BlobPutOutcome, StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            let Some(info) = tx
                .query_opt(
                    OWNED_BLOB,
                    &[&&id[..], &owner.user, &i64::from(owner.device)],
                )?
                .as_ref()
                .map(blob_info)
            else {
                return Ok(BlobPutOutcome::NotFound);
            };
            match info.put(part, data.len()) {
                PutPlan::Held => return Ok(BlobPutOutcome::Stored(info)),
                PutPlan::Refuse => return Ok(BlobPutOutcome::Refused(info)),
                PutPlan::Write => {}
            }
            let after = BlobInfo {
                received: info.received + data.len() as u64,
                ..info
            };
            tx.execute(
                "INSERT INTO blob_parts (blob, part, data) VALUES ($1, $2, $3)",
                &[&&id[..], &i64::from(part), &data],
            )?;
            tx.execute(
                "UPDATE blobs SET received = $2, expires_ms = $3 WHERE id = $1",
                &[
                    &&id[..],
                    &i64_of(after.received),
                    &i64_of(expiry.of(&after)),
                ],
            )?;
            tx.commit()?;
            Ok(BlobPutOutcome::Stored(after))
        })
    }

    fn blob_state(&self, device: &Address, id: &BlobId) -> Result<Option<BlobInfo>, StoreError> {
        self.with(|c| {
            Ok(c.client
                .query_opt(
                    HELD_BLOB,
                    &[&&id[..], &device.user, &i64::from(device.device)],
                )?
                .as_ref()
                .map(blob_info))
        })
    }

    fn blob_grant(
        &self,
        owner: &Address,
        id: &BlobId,
        to: &[Address],
    ) -> Result<BlobGrantOutcome, StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            match tx
                .query_opt(
                    OWNED_BLOB,
                    &[&&id[..], &owner.user, &i64::from(owner.device)],
                )?
                .as_ref()
                .map(blob_info)
            {
                None => return Ok(BlobGrantOutcome::NotFound),
                Some(info) if !info.complete() => return Ok(BlobGrantOutcome::Incomplete),
                Some(_) => {}
            }
            let users: Vec<&str> = to.iter().map(|a| a.user.as_str()).collect();
            let devices: Vec<i64> = to.iter().map(|a| i64::from(a.device)).collect();
            tx.execute(
                "INSERT INTO blob_grants (blob, username, device)
                 SELECT $1, u, d FROM unnest($2::TEXT[], $3::BIGINT[]) AS t(u, d)
                 ON CONFLICT DO NOTHING",
                &[&&id[..], &users, &devices],
            )?;
            tx.commit()?;
            Ok(BlobGrantOutcome::Granted)
        })
    }

    fn blob_part(
        &self,
        device: &Address,
        id: &BlobId,
        part: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| {
            let held = c
                .client
                .query_opt(
                    HELD_BLOB,
                    &[&&id[..], &device.user, &i64::from(device.device)],
                )?
                .as_ref()
                .map(blob_info);
            if !held.is_some_and(|i| i.complete()) {
                return Ok(None);
            }
            Ok(c.client
                .query_opt(
                    "SELECT data FROM blob_parts WHERE blob = $1 AND part = $2",
                    &[&&id[..], &i64::from(part)],
                )?
                .map(|r| r.get(0)))
        })
    }

    fn blob_release(&self, device: &Address, id: &BlobId) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            // The blob's row is locked first, so that two releases cannot
            // each see the other's hold and leave the blob behind.
            let exists = tx
                .query_opt("SELECT 1 FROM blobs WHERE id = $1 FOR UPDATE", &[&&id[..]])?
                .is_some();
            if !exists {
                return Ok(false);
            }
            let owned = tx.execute(
                "UPDATE blobs SET owner_holds = FALSE
                 WHERE id = $1 AND owner = $2 AND owner_device = $3 AND owner_holds",
                &[&&id[..], &device.user, &i64::from(device.device)],
            )?;
            let granted = tx.execute(
                "DELETE FROM blob_grants WHERE blob = $1 AND username = $2 AND device = $3",
                &[&&id[..], &device.user, &i64::from(device.device)],
            )?;
            let unheld = tx.execute(
                "DELETE FROM blobs b WHERE id = $1 AND NOT owner_holds
                 AND NOT EXISTS (SELECT 1 FROM blob_grants g WHERE g.blob = b.id)",
                &[&&id[..]],
            )?;
            if unheld > 0 {
                tx.execute("DELETE FROM blob_parts WHERE blob = $1", &[&&id[..]])?;
            }
            tx.commit()?;
            Ok(owned + granted > 0)
        })
    }

    fn blob_usage(&self, user: &str) -> Result<u64, StoreError> {
        self.with(|c| {
            let used: i64 = c
                .client
                .query_one(
                    "SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE owner = $1",
                    &[&user],
                )?
                .get(0);
            Ok(u64_of(used))
        })
    }

    fn prune_blobs(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            let now = i64_of(now_ms);
            tx.execute(
                "DELETE FROM blob_parts WHERE blob IN (SELECT id FROM blobs WHERE expires_ms < $1)",
                &[&now],
            )?;
            tx.execute(
                "DELETE FROM blob_grants WHERE blob IN (SELECT id FROM blobs WHERE expires_ms < $1)",
                &[&now],
            )?;
            let n = tx.execute("DELETE FROM blobs WHERE expires_ms < $1", &[&now])?;
            tx.commit()?;
            Ok(n)
        })
    }
}

impl Store for PgStore {
    fn blobs(&self) -> &dyn Blobs {
        self
    }

    fn shared_limits(&self) -> Option<&dyn SharedLimits> {
        Some(self)
    }

    fn create_user(&self, username: &str, password_hash: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let st = c.st("INSERT INTO users (name, password_hash) VALUES ($1, $2)")?;
            match c.client.execute(&st, &[&username, &password_hash]) {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    Err(StoreError::UserExists.into())
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            let st = c.st("SELECT password_hash FROM users WHERE name = $1")?;
            Ok(c.client.query_opt(&st, &[&username])?.map(|r| r.get(0)))
        })
    }

    fn create_token(&self, token_hash: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError> {
        self.with(|c| {
            let st = c.st(
                "INSERT INTO tokens (hash, username, device, expires_at) VALUES ($1, $2, $3, $4)",
            )?;
            c.client.execute(
                &st,
                &[
                    &&token_hash[..],
                    &record.user,
                    &i64::from(record.device),
                    &i64_of(record.expires_at),
                ],
            )?;
            Ok(())
        })
    }

    fn token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|c| {
            let st = c.st("SELECT username, device, expires_at FROM tokens WHERE hash = $1")?;
            Ok(c.client
                .query_opt(&st, &[&&token_hash[..]])?
                .map(|r| TokenRecord {
                    user: r.get(0),
                    device: u32_of(r.get(1)),
                    expires_at: u64_of(r.get(2)),
                }))
        })
    }

    fn revoke_tokens(&self, device: &Address) -> Result<(), StoreError> {
        self.with(|c| {
            let st = c.st("DELETE FROM tokens WHERE username = $1 AND device = $2")?;
            c.client
                .execute(&st, &[&device.user, &i64::from(device.device)])?;
            Ok(())
        })
    }

    fn prune_tokens(&self, now: u64) -> Result<u64, StoreError> {
        self.with(|c| {
            let st = c.st("DELETE FROM tokens WHERE expires_at <= $1")?;
            Ok(c.client.execute(&st, &[&i64_of(now)])?)
        })
    }

    fn publish_keys(
        &self,
        device: &Address,
        identity: &DeviceKeys,
        signed_prekey: &SignedPrekey,
        one_time_prekeys: &[OneTimePrekey],
    ) -> Result<u32, StoreError> {
        let dev = i64::from(device.device);
        self.with(|c| {
            let existing = c.st("SELECT signing_key, identity_key FROM devices
                 WHERE username = $1 AND device = $2 FOR UPDATE")?;
            let clear = c.st("DELETE FROM one_time_prekeys WHERE username = $1 AND device = $2")?;
            let upsert = c.st(
                "INSERT INTO devices (username, device, signing_key, identity_key,
                                      identity_signature, spk_id, spk, spk_signature)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (username, device) DO UPDATE SET
                     signing_key = excluded.signing_key, identity_key = excluded.identity_key,
                     identity_signature = excluded.identity_signature, spk_id = excluded.spk_id,
                     spk = excluded.spk, spk_signature = excluded.spk_signature",
            )?;
            let insert = c.st(
                "INSERT INTO one_time_prekeys (username, device, id, public_key)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )?;
            let held = c.st("SELECT public_key FROM one_time_prekeys
                 WHERE username = $1 AND device = $2 AND id = $3")?;
            let count = c.st(COUNT_OTKS)?;
            let mut tx = c.client.transaction()?;
            let replaced = tx
                .query_opt(&existing, &[&device.user, &dev])?
                .is_some_and(|r| {
                    r.get::<_, &[u8]>(0) != identity.signing_key
                        || r.get::<_, &[u8]>(1) != identity.identity_key
                });
            if replaced {
                // A new identity for this device (a reinstall): its old
                // one-time prekeys belong to the old identity.
                tx.execute(&clear, &[&device.user, &dev])?;
            }
            tx.execute(
                &upsert,
                &[
                    &device.user,
                    &dev,
                    &&identity.signing_key[..],
                    &&identity.identity_key[..],
                    &&identity.identity_signature[..],
                    &i64::from(signed_prekey.id),
                    &&signed_prekey.public_key[..],
                    &&signed_prekey.signature[..],
                ],
            )?;
            for k in one_time_prekeys {
                let id = i64::from(k.id);
                if tx.execute(&insert, &[&device.user, &dev, &id, &&k.public_key[..]])? == 0 {
                    // An id already held keeps its key: the same key again
                    // is a retry, another key a violation.
                    let key: Vec<u8> = tx.query_one(&held, &[&device.user, &dev, &id])?.get(0);
                    if key != k.public_key[..] {
                        return Err(StoreError::Refused(
                            "a one-time prekey id already held with another key",
                        )
                        .into());
                    }
                }
            }
            let n = u32_of(tx.query_one(&count, &[&device.user, &dev])?.get(0));
            if n as usize > chatify_proto::limits::MAX_ONE_TIME_PREKEYS_HELD {
                return Err(StoreError::Refused(
                    "more one-time prekeys than a device may hold (1 000)",
                )
                .into());
            }
            tx.commit()?;
            Ok(n)
        })
    }

    fn take_bundle(&self, device: &Address) -> Result<Option<(PrekeyBundle, u32)>, StoreError> {
        let dev = i64::from(device.device);
        let found = self.with(|c| {
            let keys = c.st(
                "SELECT signing_key, identity_key, identity_signature, spk_id, spk, spk_signature
                 FROM devices WHERE username = $1 AND device = $2",
            )?;
            // Among the keys no concurrent fetch holds: two fetches at once
            // take two keys (without SKIP LOCKED the second would wait, then
            // find its chosen row gone and take none).
            let take = c.st(
                "DELETE FROM one_time_prekeys WHERE (username, device, id) IN (
                     SELECT username, device, id FROM one_time_prekeys
                     WHERE username = $1 AND device = $2
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, public_key",
            )?;
            let count = c.st(COUNT_OTKS)?;
            let mut tx = c.client.transaction()?;
            let Some(row) = tx.query_opt(&keys, &[&device.user, &dev])? else {
                return Ok(None);
            };
            let otk = tx
                .query_opt(&take, &[&device.user, &dev])?
                .map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1)));
            let remaining = u32_of(tx.query_one(&count, &[&device.user, &dev])?.get(0));
            tx.commit()?;
            Ok(Some((row, otk, remaining)))
        })?;
        let Some((row, otk, remaining)) = found else {
            return Ok(None);
        };
        let bundle = PrekeyBundle {
            user: device.user.clone(),
            device: device.device,
            identity: DeviceKeys {
                signing_key: fixed(row.get(0))?,
                identity_key: fixed(row.get(1))?,
                identity_signature: fixed(row.get(2))?,
            },
            signed_prekey: SignedPrekey {
                id: u32_of(row.get(3)),
                public_key: fixed(row.get(4))?,
                signature: fixed(row.get(5))?,
            },
            one_time_prekey: match otk {
                Some((id, pk)) => Some(OneTimePrekey {
                    id: u32_of(id),
                    public_key: fixed(pk)?,
                }),
                None => None,
            },
        };
        Ok(Some((bundle, remaining)))
    }

    fn one_time_prekey_count(&self, device: &Address) -> Result<Option<u32>, StoreError> {
        let dev = i64::from(device.device);
        self.with(|c| {
            let exists = c.st(DEVICE_EXISTS)?;
            let count = c.st(COUNT_OTKS)?;
            if !c
                .client
                .query_one(&exists, &[&device.user, &dev])?
                .get::<_, bool>(0)
            {
                return Ok(None);
            }
            Ok(Some(u32_of(
                c.client.query_one(&count, &[&device.user, &dev])?.get(0),
            )))
        })
    }

    fn announce_commits(&self, announce: Announce) -> bool {
        self.group.announcers.add(announce);
        true
    }

    fn enqueue(&self, e: &NewEnvelope) -> Result<Option<u64>, StoreError> {
        Ok(self.enqueue_linked(e)?.map(|s| s.seq))
    }

    fn enqueue_linked(&self, e: &NewEnvelope) -> Result<Option<Stored>, StoreError> {
        self.group
            .run(Op::Enqueue(e.clone()), |ops| self.commit_batch(ops))?
            .enqueued()
    }

    fn enqueue_many(&self, envelopes: &[NewEnvelope]) -> Result<Vec<Option<Stored>>, StoreError> {
        let ops = envelopes.iter().cloned().map(Op::Enqueue).collect();
        self.group
            .run_many(ops, |ops| self.commit_batch(ops))
            .into_iter()
            .map(|done| done?.enqueued())
            .collect()
    }

    fn pending(
        &self,
        device: &Address,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Deliver>, StoreError> {
        let rows = self.with(|c| {
            let st = c.st(MAILBOX)?;
            Ok(c.client.query(
                &st,
                &[
                    &device.user,
                    &i64::from(device.device),
                    &i64_of(after),
                    &i64::from(limit),
                ],
            )?)
        })?;
        rows.iter().map(to_deliver).collect()
    }

    fn ack(&self, device: &Address, seqs: &[u64]) -> Result<(), StoreError> {
        self.group
            .run(Op::Ack(device.clone(), seqs.to_vec()), |ops| {
                self.commit_batch(ops)
            })
            .map(|_| ())
    }

    fn history(
        &self,
        user: &str,
        conversation: &ConversationId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Option<Vec<Deliver>>, StoreError> {
        let rows = self.with(|c| {
            let participant = c.st(
                "SELECT EXISTS(SELECT 1 FROM envelopes WHERE conversation = $1
                               AND (sender = $2 OR recipient = $2))",
            )?;
            let page = c.st(
                "SELECT seq, sender, sender_device, conversation, message_id, sent_at_ms, envelope
                 FROM envelopes
                 WHERE conversation = $1 AND (sender = $2 OR recipient = $2) AND seq < $3
                 ORDER BY seq DESC LIMIT $4",
            )?;
            let conv = &conversation[..];
            if !c
                .client
                .query_one(&participant, &[&conv, &user])?
                .get::<_, bool>(0)
            {
                return Ok(None);
            }
            Ok(Some(c.client.query(
                &page,
                &[
                    &conv,
                    &user,
                    &i64_of(before.unwrap_or(u64::MAX)),
                    &i64::from(limit),
                ],
            )?))
        })?;
        let Some(rows) = rows else {
            return Ok(None);
        };
        // Newest first, until the page's frame would outgrow MAX_FRAME_LEN
        // (at least one item).
        let mut items = Vec::new();
        let mut bytes = super::HISTORY_FRAME_OVERHEAD;
        for row in &rows {
            let item = to_deliver(row)?;
            bytes += item.envelope.len() + super::HISTORY_ITEM_OVERHEAD;
            if bytes > chatify_proto::limits::MAX_FRAME_LEN && !items.is_empty() {
                break;
            }
            items.push(item);
        }
        Ok(Some(items))
    }

    fn prune_history(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.with(|c| {
            let st = c.st("DELETE FROM envelopes WHERE acked AND sent_at_ms < $1")?;
            Ok(c.client.execute(&st, &[&i64_of(before_ms)])?)
        })
    }

    fn devices(&self, user: &str) -> Result<Vec<u32>, StoreError> {
        self.with(|c| {
            let st = c.st("SELECT device FROM devices WHERE username = $1 ORDER BY device")?;
            Ok(c.client
                .query(&st, &[&user])?
                .iter()
                .map(|r| u32_of(r.get(0)))
                .collect())
        })
    }

    fn remove_device(&self, device: &Address) -> Result<bool, StoreError> {
        let dev = i64::from(device.device);
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            let existed = tx.execute(
                "DELETE FROM devices WHERE username = $1 AND device = $2",
                &[&device.user, &dev],
            )? > 0;
            for sql in [
                "DELETE FROM one_time_prekeys WHERE username = $1 AND device = $2",
                "DELETE FROM tokens WHERE username = $1 AND device = $2",
                "UPDATE envelopes SET acked = TRUE
                 WHERE recipient = $1 AND recipient_device = $2 AND NOT acked",
                // Its holds on blobs go; blobs nobody holds any more, with them.
                "DELETE FROM blob_grants WHERE username = $1 AND device = $2",
                "UPDATE blobs SET owner_holds = FALSE WHERE owner = $1 AND owner_device = $2",
            ] {
                tx.execute(sql, &[&device.user, &dev])?;
            }
            tx.batch_execute(
                "DELETE FROM blob_parts WHERE blob IN (SELECT id FROM blobs b WHERE NOT owner_holds
                     AND NOT EXISTS (SELECT 1 FROM blob_grants g WHERE g.blob = b.id));
                 DELETE FROM blobs b WHERE NOT owner_holds
                     AND NOT EXISTS (SELECT 1 FROM blob_grants g WHERE g.blob = b.id);",
            )?;
            tx.commit()?;
            Ok(existed)
        })
    }

    fn put_link(
        &self,
        user: &str,
        link_id: &[u8; 16],
        blob: &[u8],
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.client.execute(
                "INSERT INTO links (username, link_id, blob, expires_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (username) DO UPDATE SET
                     link_id = excluded.link_id, blob = excluded.blob,
                     expires_ms = excluded.expires_ms",
                &[&user, &&link_id[..], &blob, &i64_of(expires_ms)],
            )?;
            Ok(())
        })
    }

    fn take_link(
        &self,
        user: &str,
        link_id: &[u8; 16],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| {
            // Single use: gone once taken, expired or not.
            let row = c.client.query_opt(
                "DELETE FROM links WHERE username = $1 AND link_id = $2
                 RETURNING blob, expires_ms",
                &[&user, &&link_id[..]],
            )?;
            Ok(row
                .filter(|r| r.get::<_, i64>(1) > i64_of(now_ms))
                .map(|r| r.get(0)))
        })
    }

    fn mfa(&self, user: &str) -> Result<Option<MfaRecord>, StoreError> {
        self.with(|c| {
            let row = c.client.query_opt(
                "SELECT secret, enabled, last_step FROM mfa WHERE username = $1",
                &[&user],
            )?;
            Ok(row.map(|r| MfaRecord {
                sealed_secret: r.get(0),
                enabled: r.get(1),
                last_step: r.get(2),
            }))
        })
    }

    fn mfa_begin(&self, user: &str, sealed_secret: &[u8]) -> Result<bool, StoreError> {
        self.with(|c| {
            let changed = c.client.execute(
                "INSERT INTO mfa (username, secret, enabled, last_step) VALUES ($1, $2, FALSE, -1)
                 ON CONFLICT (username) DO UPDATE SET secret = EXCLUDED.secret
                 WHERE NOT mfa.enabled",
                &[&user, &sealed_secret],
            )?;
            Ok(changed == 1)
        })
    }

    fn mfa_enable(
        &self,
        user: &str,
        sealed_secret: &[u8],
        step: i64,
        recovery: &[[u8; 32]],
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            let changed = tx.execute(
                "UPDATE mfa SET enabled = TRUE, last_step = $3
                 WHERE username = $1 AND secret = $2 AND NOT enabled",
                &[&user, &sealed_secret, &step],
            )?;
            if changed != 1 {
                return Ok(false);
            }
            tx.execute("DELETE FROM mfa_recovery WHERE username = $1", &[&user])?;
            for hash in recovery {
                tx.execute(
                    "INSERT INTO mfa_recovery (username, code_hash) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&user, &&hash[..]],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn mfa_use_step(&self, user: &str, step: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            let changed = c.client.execute(
                "UPDATE mfa SET last_step = $2
                 WHERE username = $1 AND enabled AND last_step < $2",
                &[&user, &step],
            )?;
            Ok(changed == 1)
        })
    }

    fn mfa_use_recovery(&self, user: &str, hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.with(|c| {
            let changed = c.client.execute(
                "DELETE FROM mfa_recovery WHERE username = $1 AND code_hash = $2",
                &[&user, &&hash[..]],
            )?;
            Ok(changed == 1)
        })
    }

    fn mfa_disable(&self, user: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            tx.execute("DELETE FROM mfa_recovery WHERE username = $1", &[&user])?;
            tx.execute("DELETE FROM mfa WHERE username = $1", &[&user])?;
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite::postgres_store;
    use std::sync::Arc;

    /// The message path's statements, each with arguments to plan it for.
    const HOT: [(&str, &str, &str); 6] = [
        ("mailbox", MAILBOX, "'u', 1, 0, 10"),
        ("foreign_one", FOREIGN_ONE, "'{1,2}', 'u', 1"),
        ("mark_one", MARK_ONE, "'{1,2}', 'u', 1"),
        ("foreign_acks", FOREIGN_ACKS, "'{1}', '{0}', '{u}', '{1}'"),
        ("mark_batch", MARK_BATCH, "'{1}', '{u}', '{1}'"),
        (
            "enqueue_one",
            ENQUEUE_ONE,
            "'\\x00', 'a', 1, 'u', 1, '\\x00', 0, '\\x00'",
        ),
    ];

    /// The hot statements whose plan, generic (as a prepared statement's
    /// becomes after a few runs) and made on an empty table, reads the
    /// whole of `envelopes`, on connection `c`.
    fn sequential_scans(c: &mut Conn) -> Vec<&'static str> {
        let mut found = Vec::new();
        c.client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .unwrap();
        for (name, sql, args) in HOT {
            c.client
                .batch_execute(&format!("PREPARE hot_{name} AS {sql}"))
                .unwrap();
            let plan: Vec<String> = c
                .client
                .query(&format!("EXPLAIN EXECUTE hot_{name}({args})"), &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            c.client
                .batch_execute(&format!("DEALLOCATE hot_{name}"))
                .unwrap();
            if plan.iter().any(|l| l.contains("Seq Scan on envelopes")) {
                found.push(name);
            }
        }
        c.client.batch_execute("RESET plan_cache_mode").unwrap();
        found
    }

    /// On a young table the planner's generic plans for the message path
    /// read the whole of `envelopes` (the store's connections forbid it, as
    /// `PgStore::open` says); the mutant, the same connection with
    /// sequential scans allowed again, shows that the search sees them.
    #[test]
    fn the_message_path_never_plans_a_sequential_scan_of_envelopes() {
        let Some(store) = postgres_store(1) else {
            return;
        };
        store
            .0
            .with(|c| {
                assert_eq!(sequential_scans(c), Vec::<&str>::new());
                c.client.batch_execute("SET enable_seqscan = on")?;
                let mutant = sequential_scans(c);
                c.client.batch_execute("SET enable_seqscan = off")?;
                assert!(!mutant.is_empty(), "the mutant's plans were not seen");
                eprintln!("with sequential scans allowed: {mutant:?}");
                Ok(())
            })
            .unwrap();
    }

    /// Nodes that start together migrate once between them; a schema newer
    /// than the server is refused.
    #[test]
    fn migrations_run_once_across_nodes_and_a_newer_schema_is_refused() {
        let Some(first) = postgres_store(1) else {
            return;
        };
        let url = std::env::var("CHATIFY_PG_URL").unwrap_or_default();
        let schema = first.0.options.schema.clone();
        let nodes: Vec<_> = (0..4)
            .map(|_| {
                let (url, schema) = (url.clone(), schema.clone());
                std::thread::spawn(move || {
                    PgStore::connect(
                        &url,
                        PgOptions {
                            pool_size: 1,
                            schema,
                            ..PgOptions::default()
                        },
                    )
                    .map(|s| s.schema_version())
                })
            })
            .collect();
        for node in nodes {
            assert_eq!(
                node.join().unwrap().unwrap().unwrap(),
                MIGRATIONS.len() as u32
            );
        }
        first
            .0
            .with(|c| {
                c.client
                    .execute("INSERT INTO schema_migrations (version) VALUES (99)", &[])?;
                Ok(())
            })
            .unwrap();
        let err = PgStore::connect(
            &url,
            PgOptions {
                schema,
                ..PgOptions::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("newer than this server"), "{err}");
    }

    /// A connection the database dropped (here terminated by an
    /// administrator, as a restart would) is replaced: the next call
    /// succeeds on a new one.
    #[test]
    fn a_dropped_connection_is_replaced() {
        let Some(store) = postgres_store(1) else {
            return;
        };
        let store = &store.0;
        store.create_user("bob", "h").unwrap();
        let pid: i32 = store
            .with(|c| Ok(c.client.query_one("SELECT pg_backend_pid()", &[])?.get(0)))
            .unwrap();
        let url = std::env::var("CHATIFY_PG_URL").unwrap_or_default();
        let mut admin = postgres::Client::connect(&url, NoTls).unwrap();
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
        assert_eq!(store.password_hash("bob").unwrap().as_deref(), Some("h"));
        let new_pid: i32 = store
            .with(|c| Ok(c.client.query_one("SELECT pg_backend_pid()", &[])?.get(0)))
            .unwrap();
        assert_ne!(pid, new_pid);
    }

    /// An unreachable database fails a call after `retry_for`: not at
    /// once, and not never.
    #[test]
    fn an_unreachable_database_fails_after_the_retry_window() {
        let started = Instant::now();
        let err = PgStore::connect(
            "postgres://postgres@127.0.0.1:1/none",
            PgOptions {
                retry_for: Duration::from_millis(600),
                ..PgOptions::default()
            },
        )
        .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, StoreError::Database(_)));
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    /// Two nodes (two stores on one schema) see one set of limits: events
    /// recorded through either are counted through both, and a bucket's
    /// burst is spent once between them, concurrently.
    #[test]
    fn limits_are_shared_between_nodes() {
        let Some(first) = postgres_store(4) else {
            return;
        };
        let url = std::env::var("CHATIFY_PG_URL").unwrap_or_default();
        let second = Arc::new(
            PgStore::connect(
                &url,
                PgOptions {
                    pool_size: 4,
                    schema: first.0.options.schema.clone(),
                    ..PgOptions::default()
                },
            )
            .unwrap(),
        );
        let keys = vec![
            "login account bob".to_owned(),
            "login address ::1".to_owned(),
        ];
        first.0.record_event(&keys).unwrap();
        second.record_event(&keys).unwrap();
        let window = Duration::from_secs(60);
        assert_eq!(second.recent_events(&keys, window).unwrap(), vec![2, 2]);
        assert_eq!(
            first
                .0
                .recent_events(&["login account eve".to_owned(), keys[0].clone()], window)
                .unwrap(),
            vec![0, 2]
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            second
                .recent_events(&keys, Duration::from_millis(20))
                .unwrap(),
            vec![0, 0],
            "outside the window"
        );
        assert_eq!(first.0.prune_limits(Duration::from_millis(20)).unwrap(), 4);

        // Eight threads on two nodes take from a bucket of ten at once.
        let stores: [Arc<PgStore>; 2] = [Arc::clone(&first.0), Arc::clone(&second)];
        let start = Arc::new(std::sync::Barrier::new(8));
        let takers: Vec<_> = (0..8)
            .map(|i| {
                let (store, start) = (Arc::clone(&stores[i % 2]), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    (0..5)
                        .filter(|_| store.take_token("bundle bob 1 eve", 0.001, 10.0).unwrap())
                        .count()
                })
            })
            .collect();
        let taken: usize = takers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 10, "40 tries at a burst of 10");
        assert!(!first.0.take_token("bundle bob 1 eve", 0.001, 10.0).unwrap());
        assert!(
            first
                .0
                .take_token("bundle bob 1 mallory", 0.001, 10.0)
                .unwrap()
        );
        // Refilled at its rate.
        assert!(first.0.take_token("fast", 1000.0, 1.0).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        assert!(second.take_token("fast", 1000.0, 1.0).unwrap());
    }

    /// The tap's view of the tables: every column of every row, BYTEA as
    /// stored.
    #[test]
    fn every_column_is_dumped() {
        let Some(store) = postgres_store(1) else {
            return;
        };
        let store = &store.0;
        store.create_user("bob", "hash-of-bob").unwrap();
        store
            .put_link("bob", &[5; 16], b"sealed-canary", 99)
            .unwrap();
        let dump = store.dump_tables().unwrap();
        let has = |table: &str, bytes: &[u8]| dump.iter().any(|(t, v)| t == table && v == bytes);
        assert!(has("users", b"hash-of-bob"));
        assert!(has("links", b"sealed-canary"));
        assert!(has("links", &[5; 16]));
        assert!(has("links", b"99"));
        assert!(has("schema_migrations", b"1"));
    }
}
