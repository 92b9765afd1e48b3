//! The embedded default store: SQLite (bundled), WAL journal, schema
//! migrations by `PRAGMA user_version`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chatify_proto::frame::{Address, BlobId, Deliver};
use chatify_proto::{ConversationId, DeviceKeys, OneTimePrekey, PrekeyBundle, SignedPrekey};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::blob::PutPlan;
use super::group::{Done, GroupCommit, Op};
use super::{
    Announce, Announcers, BlobExpiry, BlobGrantOutcome, BlobInfo, BlobPutOutcome, Blobs,
    HISTORY_FRAME_OVERHEAD, HISTORY_ITEM_OVERHEAD, MfaRecord, NewEnvelope, Store, StoreError,
    TokenRecord,
};

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives a process kill and a power loss.
    Full,
    /// `synchronous=NORMAL`: a commit survives a process kill (`kill -9`);
    /// the last commits may be lost on power loss.
    Normal,
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts them.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE users (
         name TEXT PRIMARY KEY,
         password_hash TEXT NOT NULL
     );
     CREATE TABLE tokens (
         hash BLOB PRIMARY KEY,
         user TEXT NOT NULL REFERENCES users(name),
         device INTEGER NOT NULL,
         expires_at INTEGER NOT NULL
     );
     CREATE TABLE devices (
         user TEXT NOT NULL REFERENCES users(name),
         device INTEGER NOT NULL,
         signing_key BLOB NOT NULL,
         identity_key BLOB NOT NULL,
         identity_signature BLOB NOT NULL,
         spk_id INTEGER NOT NULL,
         spk BLOB NOT NULL,
         spk_signature BLOB NOT NULL,
         PRIMARY KEY (user, device)
     );
     CREATE TABLE one_time_prekeys (
         user TEXT NOT NULL,
         device INTEGER NOT NULL,
         id INTEGER NOT NULL,
         public_key BLOB NOT NULL,
         PRIMARY KEY (user, device, id)
     );
     CREATE TABLE envelopes (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         conversation BLOB NOT NULL,
         sender TEXT NOT NULL,
         sender_device INTEGER NOT NULL,
         recipient TEXT NOT NULL,
         recipient_device INTEGER NOT NULL,
         message_id BLOB NOT NULL,
         sent_at_ms INTEGER NOT NULL,
         envelope BLOB NOT NULL,
         acked INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX envelopes_mailbox ON envelopes (recipient, recipient_device, seq) WHERE acked = 0;
     CREATE INDEX envelopes_conversation ON envelopes (conversation, seq);",
    // 2: sealed identities left for linking a device.
    "CREATE TABLE links (
         user TEXT PRIMARY KEY REFERENCES users(name),
         link_id BLOB NOT NULL,
         blob BLOB NOT NULL,
         expires_ms INTEGER NOT NULL
     );",
    // 3: second factors (TOTP secrets sealed under the server's key) and
    // recovery codes (hashed).
    "CREATE TABLE mfa (
         user TEXT PRIMARY KEY REFERENCES users(name),
         secret BLOB NOT NULL,
         enabled INTEGER NOT NULL,
         last_step INTEGER NOT NULL
     );
     CREATE TABLE mfa_recovery (
         user TEXT NOT NULL REFERENCES users(name),
         code_hash BLOB NOT NULL,
         PRIMARY KEY (user, code_hash)
     );",
    // 4: blobs (encrypted files) in parts, and the devices they were
    // granted to (see `store::blob`).
    "CREATE TABLE blobs (
         id BLOB PRIMARY KEY,
         owner TEXT NOT NULL,
         owner_device INTEGER NOT NULL,
         owner_holds INTEGER NOT NULL,
         size INTEGER NOT NULL,
         received INTEGER NOT NULL,
         expires_ms INTEGER NOT NULL
     );
     CREATE INDEX blobs_owner ON blobs (owner);
     CREATE INDEX blobs_expiry ON blobs (expires_ms);
     CREATE TABLE blob_parts (
         blob BLOB NOT NULL,
         part INTEGER NOT NULL,
         data BLOB NOT NULL,
         PRIMARY KEY (blob, part)
     );
     CREATE TABLE blob_grants (
         blob BLOB NOT NULL,
         user TEXT NOT NULL,
         device INTEGER NOT NULL,
         PRIMARY KEY (blob, user, device)
     );",
];

/// A SQLite database file (plus its `-wal` and `-shm` files).
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Commits never wait for the disk (see [`Store::fast_commits`]).
    fast_commits: bool,
    /// Stops the background checkpointer (durability `Normal`).
    stop: Arc<AtomicBool>,
    /// Set when the WAL has passed its bound: the next user of the
    /// connection truncates it first.
    wal_over: Arc<AtomicBool>,
    /// The WAL file and its bound (durability `Normal` on disk).
    wal_bound: Option<(std::path::PathBuf, u64)>,
    /// Uses of the connection, to look at the WAL every so often.
    uses: std::sync::atomic::AtomicU64,
    /// Stores and acknowledgements share commits (durability `Full` on
    /// disk, where each commit waits for an fsync).
    group: Option<GroupCommit>,
    /// Told of each envelope committed outside a group commit.
    announcers: Announcers,
    /// A read-only connection for the mailbox reads, on disk at `Full`: in
    /// WAL mode it reads the last commit while the writer's connection is
    /// busy (a commit waiting for its fsync), so a read never waits for the
    /// writer.
    reader: Option<Mutex<Connection>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The WAL's bound at durability `Normal`: past it, the checkpointer waits
/// for the writer (a truncating checkpoint) instead of only copying what
/// it can beside it, and SQLite truncates the file back to it after a
/// checkpoint (`journal_size_limit`). The file may pass the bound by what
/// is written in one checkpoint period.
pub const WAL_LIMIT: u64 = 256 * 1024 * 1024;

/// How often (in uses of the connection) the writer checks the WAL's size.
const WAL_CHECK_EVERY: u64 = 64;

/// With `synchronous=NORMAL` a commit only appends to the WAL; the fsyncs
/// happen at checkpoints. SQLite's automatic checkpoint would run them
/// inside whichever commit crosses the threshold, on the committing thread;
/// this thread runs them instead, on its own connection (a passive
/// checkpoint does not block writers), so that commits never wait for the
/// disk. The WAL's bound is kept by the writer: past `WAL_LIMIT` (checked by
/// this thread each period and by the writer every `WAL_CHECK_EVERY` uses),
/// the next use truncates it; so it exceeds the bound by at most what
/// `WAL_CHECK_EVERY` transactions write.
///
/// Under continuous writes a passive checkpoint never catches up and the
/// WAL would only grow (3.9 GB after 30 s at 5 000 msg/s); past
/// `wal_limit` the checkpointer raises `wal_over`, and the next user of the
/// store's connection truncates the WAL before its own work (a writer that
/// never lets go of the lock would starve a checkpoint from another
/// connection).
fn start_checkpointer(
    path: &Path,
    stop: Arc<AtomicBool>,
    wal_over: Arc<AtomicBool>,
    wal_limit: u64,
) -> Result<(), StoreError> {
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(CHECKPOINT_EVERY);
                if std::fs::metadata(&wal).map_or(0, |m| m.len()) > wal_limit {
                    wal_over.store(true, Ordering::Release);
                } else if let Err(e) =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
                }
            }
        })
        .map_err(|e| StoreError::Database(format!("checkpoint thread: {e}")))?;
    Ok(())
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u64_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn fixed<const N: usize>(v: Vec<u8>) -> Result<[u8; N], StoreError> {
    v.try_into()
        .map_err(|_| StoreError::Database("stored key of the wrong length".into()))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with_wal_limit(path, durability, WAL_LIMIT)
    }

    fn open_with_wal_limit(
        path: &Path,
        durability: Durability,
        wal_limit: u64,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(db)?;
        let mut store = Self::setup(conn, durability)?;
        if durability == Durability::Full {
            // At `Normal` commits never wait, and one connection's page
            // cache serves the reads (a second connection would re-read
            // every page the writer changed).
            let reader = Connection::open(path).map_err(db)?;
            reader.pragma_update(None, "query_only", "ON").map_err(db)?;
            reader
                .busy_timeout(std::time::Duration::from_secs(5))
                .map_err(db)?;
            store.reader = Some(Mutex::new(reader));
        }
        store
            .lock()
            .pragma_update(None, "journal_size_limit", i64_of(wal_limit))
            .map_err(db)?;
        if durability == Durability::Normal {
            store
                .lock()
                .pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(db)?;
            start_checkpointer(
                path,
                Arc::clone(&store.stop),
                Arc::clone(&store.wal_over),
                wal_limit,
            )?;
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            store.wal_bound = Some((wal.into(), wal_limit));
            store.fast_commits = true;
        } else {
            store.group = Some(GroupCommit::default());
        }
        Ok(store)
    }

    /// An in-memory database (tests, in-process runs that need no durability).
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut store = Self::setup(Connection::open_in_memory().map_err(db)?, Durability::Full)?;
        store.fast_commits = true;
        Ok(store)
    }

    fn setup(conn: Connection, durability: Durability) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync).map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
            fast_commits: false,
            stop: Arc::new(AtomicBool::new(false)),
            wal_over: Arc::new(AtomicBool::new(false)),
            wal_bound: None,
            uses: std::sync::atomic::AtomicU64::new(0),
            group: None,
            announcers: Announcers::default(),
            reader: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half
        // applied (SQLite rolls it back), so a poisoned lock is still usable.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // Every WAL_CHECK_EVERY uses, the writer looks at the WAL itself: the
        // checkpointer's period alone would let a fast writer outrun it.
        if let Some((wal, limit)) = &self.wal_bound
            && self
                .uses
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(WAL_CHECK_EVERY)
            && std::fs::metadata(wal).map_or(0, |m| m.len()) > *limit
        {
            self.wal_over.store(true, Ordering::Release);
        }
        if self.wal_over.swap(false, Ordering::AcqRel)
            && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "truncating the WAL failed; retrying");
            self.wal_over.store(true, Ordering::Release);
        }
        conn
    }

    /// The connection for the message path's reads: the reader on disk,
    /// the one connection in memory.
    fn read(&self) -> MutexGuard<'_, Connection> {
        match &self.reader {
            Some(r) => r.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.lock(),
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db)?;
        let current = usize::try_from(version).unwrap_or(0);
        if current > MIGRATIONS.len() {
            return Err(StoreError::Database(format!(
                "database schema version {current} is newer than this server ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let tx = conn.transaction().map_err(db)?;
            tx.execute_batch(sql).map_err(db)?;
            tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(0))
                .map_err(db)?;
            tx.commit().map_err(db)?;
        }
        Ok(())
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let v: i64 = self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db)?;
        Ok(u32::try_from(v).unwrap_or(0))
    }

    /// Checkpoints the WAL into the main file (on shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.lock()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(db)
    }
}

fn count_one_time_prekeys(conn: &Connection, device: &Address) -> Result<u32, StoreError> {
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM one_time_prekeys WHERE user = ?1 AND device = ?2",
            params![device.user, device.device],
            |r| r.get(0),
        )
        .map_err(db)?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// An envelope row: seq, sender, sender device, conversation, message id, time, envelope.
type Row = (i64, String, i64, Vec<u8>, Vec<u8>, i64, Vec<u8>);

fn deliver_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn to_deliver(row: Row) -> Result<Deliver, StoreError> {
    let (seq, sender, sender_device, conversation, message_id, sent_at_ms, envelope) = row;
    Ok(Deliver {
        seq: u64_of(seq),
        from: Address {
            user: sender,
            device: u32::try_from(sender_device).unwrap_or(0),
        },
        conversation: fixed(conversation)?,
        message_id: fixed(message_id)?,
        sent_at_ms: u64_of(sent_at_ms),
        envelope,
    })
}

/// A device's unacknowledged envelopes after a sequence number, in the
/// mailbox index's (seq) order.
const MAILBOX_QUERY: &str =
    "SELECT seq, sender, sender_device, conversation, message_id, sent_at_ms, envelope
     FROM envelopes
     WHERE recipient = ?1 AND recipient_device = ?2 AND acked = 0 AND seq > ?3";

/// One job of a group commit, inside its transaction.
fn apply(conn: &Connection, op: &Op) -> Result<Done, StoreError> {
    match op {
        Op::Enqueue(e) => insert_envelope(conn, e)
            .map(|seq| Done::Enqueued(seq.map(|seq| super::Stored { seq, prev: None }))),
        Op::Ack(device, seqs) => mark_acked(conn, device, seqs).map(|()| Done::Acked),
    }
}

/// One transaction for a group commit's batch: a job's own refusal is its
/// result; a failure of the database fails the batch.
fn commit_batch(
    conn: &Mutex<Connection>,
    ops: &[&Op],
) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
    let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match apply(&tx, op) {
            Err(StoreError::Database(e)) => return Err(StoreError::Database(e)),
            other => results.push(other),
        }
    }
    tx.commit().map_err(db)?;
    Ok(results)
}

/// Stores an envelope if the recipient device exists (one statement).
fn insert_envelope(conn: &Connection, e: &NewEnvelope) -> Result<Option<u64>, StoreError> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO envelopes (conversation, sender, sender_device, recipient, recipient_device,
                                    message_id, sent_at_ms, envelope)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
             WHERE EXISTS(SELECT 1 FROM devices WHERE user = ?4 AND device = ?5)",
        )
        .map_err(db)?;
    let inserted = insert
        .execute(params![
            &e.conversation[..],
            e.from.user,
            e.from.device,
            e.to.user,
            e.to.device,
            &e.message_id[..],
            i64_of(e.sent_at_ms),
            e.envelope
        ])
        .map_err(db)?;
    Ok((inserted == 1).then(|| u64_of(conn.last_insert_rowid())))
}

/// Marks envelopes acknowledged, all of them or (if one is addressed to
/// another device) none; runs inside the caller's transaction. One
/// statement per envelope on the common path; the owner is looked up only
/// for a sequence number that changed nothing (unknown, acknowledged
/// already, or another device's).
fn mark_acked(conn: &Connection, device: &Address, seqs: &[u64]) -> Result<(), StoreError> {
    let mut mark = conn
        .prepare_cached(
            "UPDATE envelopes SET acked = 1
             WHERE seq = ?1 AND recipient = ?2 AND recipient_device = ?3 AND acked = 0",
        )
        .map_err(db)?;
    let mut marked = Vec::with_capacity(seqs.len());
    let mut unmarked = Vec::new();
    for &seq in seqs {
        if mark
            .execute(params![i64_of(seq), device.user, device.device])
            .map_err(db)?
            == 1
        {
            marked.push(seq);
        } else {
            unmarked.push(seq);
        }
    }
    if unmarked.is_empty() {
        return Ok(());
    }
    let mut owner = conn
        .prepare_cached("SELECT recipient, recipient_device FROM envelopes WHERE seq = ?1")
        .map_err(db)?;
    for seq in unmarked {
        let row: Option<(String, u32)> = owner
            .query_row([i64_of(seq)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db)?;
        match row {
            // Unknown (already pruned) sequence numbers are ignored:
            // acknowledging twice is harmless.
            None => {}
            Some((user, dev)) if user == device.user && dev == device.device => {}
            Some(_) => {
                // None of them, then: undo what this call marked.
                let mut undo = conn
                    .prepare_cached("UPDATE envelopes SET acked = 0 WHERE seq = ?1")
                    .map_err(db)?;
                for seq in marked {
                    undo.execute([i64_of(seq)]).map_err(db)?;
                }
                return Err(StoreError::NotYours);
            }
        }
    }
    Ok(())
}

/// The blob's state if `device` holds it (as owner, or by a grant).
fn held_blob(
    conn: &Connection,
    device: &Address,
    id: &BlobId,
) -> Result<Option<BlobInfo>, StoreError> {
    conn.query_row(
        "SELECT size, received FROM blobs b WHERE id = ?1 AND (
             (owner = ?2 AND owner_device = ?3 AND owner_holds = 1)
             OR EXISTS (SELECT 1 FROM blob_grants g
                        WHERE g.blob = b.id AND g.user = ?2 AND g.device = ?3))",
        params![&id[..], device.user, device.device],
        |r| {
            Ok(BlobInfo {
                size: u64_of(r.get(0)?),
                received: u64_of(r.get(1)?),
            })
        },
    )
    .optional()
    .map_err(db)
}

/// The blob's state if `owner` created it and still holds it.
fn owned_blob(
    conn: &Connection,
    owner: &Address,
    id: &BlobId,
) -> Result<Option<BlobInfo>, StoreError> {
    conn.query_row(
        "SELECT size, received FROM blobs
         WHERE id = ?1 AND owner = ?2 AND owner_device = ?3 AND owner_holds = 1",
        params![&id[..], owner.user, owner.device],
        |r| {
            Ok(BlobInfo {
                size: u64_of(r.get(0)?),
                received: u64_of(r.get(1)?),
            })
        },
    )
    .optional()
    .map_err(db)
}

fn delete_blobs_where(conn: &Connection, condition: &str, param: i64) -> Result<u64, StoreError> {
    for table in ["blob_parts", "blob_grants"] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE blob IN (SELECT id FROM blobs WHERE {condition})"),
            [param],
        )
        .map_err(db)?;
    }
    let n = conn
        .execute(&format!("DELETE FROM blobs WHERE {condition}"), [param])
        .map_err(db)?;
    Ok(n as u64)
}

impl Blobs for SqliteStore {
    fn blob_create(
        &self,
        owner: &Address,
        id: &BlobId,
        size: u64,
        quota: u64,
        expires_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let used: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE owner = ?1",
                [&owner.user],
                |r| r.get(0),
            )
            .map_err(db)?;
        if u64_of(used).saturating_add(size) > quota {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO blobs (id, owner, owner_device, owner_holds, size, received, expires_ms)
             VALUES (?1, ?2, ?3, 1, ?4, 0, ?5)",
            params![
                &id[..],
                owner.user,
                owner.device,
                i64_of(size),
                i64_of(expires_ms)
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn blob_put(
        &self,
        owner: &Address,
        id: &BlobId,
        part: u32,
        data: &[u8],
        expiry: BlobExpiry,
    ) -> Result<BlobPutOutcome, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let Some(info) = owned_blob(&tx, owner, id)? else {
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
            "INSERT INTO blob_parts (blob, part, data) VALUES (?1, ?2, ?3)",
            params![&id[..], part, data],
        )
        .map_err(db)?;
        tx.execute(
            "UPDATE blobs SET received = ?2, expires_ms = ?3 WHERE id = ?1",
            params![&id[..], i64_of(after.received), i64_of(expiry.of(&after))],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(BlobPutOutcome::Stored(after))
    }

    fn blob_state(&self, device: &Address, id: &BlobId) -> Result<Option<BlobInfo>, StoreError> {
        held_blob(&self.read(), device, id)
    }

    fn blob_grant(
        &self,
        owner: &Address,
        id: &BlobId,
        to: &[Address],
    ) -> Result<BlobGrantOutcome, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        match owned_blob(&tx, owner, id)? {
            None => return Ok(BlobGrantOutcome::NotFound),
            Some(info) if !info.complete() => return Ok(BlobGrantOutcome::Incomplete),
            Some(_) => {}
        }
        for device in to {
            tx.execute(
                "INSERT OR IGNORE INTO blob_grants (blob, user, device) VALUES (?1, ?2, ?3)",
                params![&id[..], device.user, device.device],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(BlobGrantOutcome::Granted)
    }

    fn blob_part(
        &self,
        device: &Address,
        id: &BlobId,
        part: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.read();
        match held_blob(&conn, device, id)? {
            Some(info) if info.complete() => {}
            _ => return Ok(None),
        }
        conn.query_row(
            "SELECT data FROM blob_parts WHERE blob = ?1 AND part = ?2",
            params![&id[..], part],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)
    }

    fn blob_release(&self, device: &Address, id: &BlobId) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let owned = tx
            .execute(
                "UPDATE blobs SET owner_holds = 0
                 WHERE id = ?1 AND owner = ?2 AND owner_device = ?3 AND owner_holds = 1",
                params![&id[..], device.user, device.device],
            )
            .map_err(db)?;
        let granted = tx
            .execute(
                "DELETE FROM blob_grants WHERE blob = ?1 AND user = ?2 AND device = ?3",
                params![&id[..], device.user, device.device],
            )
            .map_err(db)?;
        let unheld: bool = tx
            .query_row(
                "SELECT owner_holds = 0 AND NOT EXISTS (SELECT 1 FROM blob_grants WHERE blob = ?1)
                 FROM blobs WHERE id = ?1",
                [&id[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?
            .unwrap_or(false);
        if unheld {
            tx.execute("DELETE FROM blob_parts WHERE blob = ?1", [&id[..]])
                .map_err(db)?;
            tx.execute("DELETE FROM blobs WHERE id = ?1", [&id[..]])
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(owned + granted > 0)
    }

    fn blob_usage(&self, user: &str) -> Result<u64, StoreError> {
        self.read()
            .query_row(
                "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE owner = ?1",
                [user],
                |r| r.get(0),
            )
            .map(u64_of)
            .map_err(db)
    }

    fn prune_blobs(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let n = delete_blobs_where(&tx, "expires_ms < ?1", i64_of(now_ms))?;
        tx.commit().map_err(db)?;
        Ok(n)
    }
}

impl Store for SqliteStore {
    fn blobs(&self) -> &dyn Blobs {
        self
    }

    fn fast_commits(&self) -> bool {
        self.fast_commits
    }

    fn fast_reads(&self) -> bool {
        self.fast_commits || self.reader.is_some()
    }

    fn create_user(&self, username: &str, password_hash: &str) -> Result<(), StoreError> {
        let conn = self.lock();
        match conn.execute(
            "INSERT INTO users (name, password_hash) VALUES (?1, ?2)",
            params![username, password_hash],
        ) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::UserExists)
            }
            Err(e) => Err(db(e)),
        }
    }

    fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        self.lock()
            .query_row(
                "SELECT password_hash FROM users WHERE name = ?1",
                [username],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    fn create_token(&self, token_hash: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO tokens (hash, user, device, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    &token_hash[..],
                    record.user,
                    record.device,
                    i64_of(record.expires_at)
                ],
            )
            .map(|_| ())
            .map_err(db)
    }

    fn token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.lock()
            .query_row(
                "SELECT user, device, expires_at FROM tokens WHERE hash = ?1",
                [&token_hash[..]],
                |r| {
                    Ok(TokenRecord {
                        user: r.get(0)?,
                        device: r.get(1)?,
                        expires_at: u64_of(r.get(2)?),
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    fn revoke_tokens(&self, device: &Address) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "DELETE FROM tokens WHERE user = ?1 AND device = ?2",
                params![device.user, device.device],
            )
            .map(|_| ())
            .map_err(db)
    }

    fn prune_tokens(&self, now: u64) -> Result<u64, StoreError> {
        self.lock()
            .execute("DELETE FROM tokens WHERE expires_at <= ?1", [i64_of(now)])
            .map(|n| n as u64)
            .map_err(db)
    }

    fn publish_keys(
        &self,
        device: &Address,
        identity: &DeviceKeys,
        signed_prekey: &SignedPrekey,
        one_time_prekeys: &[OneTimePrekey],
    ) -> Result<u32, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let existing: Option<(Vec<u8>, Vec<u8>)> = tx
            .query_row(
                "SELECT signing_key, identity_key FROM devices WHERE user = ?1 AND device = ?2",
                params![device.user, device.device],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        let replaced = existing.as_ref().is_some_and(|(signing, ik)| {
            *signing != identity.signing_key[..] || *ik != identity.identity_key[..]
        });
        if replaced {
            // A new identity for this device (a reinstall): its old one-time
            // prekeys belong to the old identity and must not be served.
            tx.execute(
                "DELETE FROM one_time_prekeys WHERE user = ?1 AND device = ?2",
                params![device.user, device.device],
            )
            .map_err(db)?;
        }
        tx.execute(
            "INSERT INTO devices (user, device, signing_key, identity_key, identity_signature,
                                  spk_id, spk, spk_signature)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (user, device) DO UPDATE SET
                 signing_key = excluded.signing_key, identity_key = excluded.identity_key,
                 identity_signature = excluded.identity_signature, spk_id = excluded.spk_id,
                 spk = excluded.spk, spk_signature = excluded.spk_signature",
            params![
                device.user,
                device.device,
                &identity.signing_key[..],
                &identity.identity_key[..],
                &identity.identity_signature[..],
                signed_prekey.id,
                &signed_prekey.public_key[..],
                &signed_prekey.signature[..]
            ],
        )
        .map_err(db)?;
        {
            // An id already held keeps its key: publishing it again with the
            // same key is a retry, with another key a violation.
            let mut insert = tx
                .prepare(
                    "INSERT INTO one_time_prekeys (user, device, id, public_key)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )
                .map_err(db)?;
            let mut held = tx
                .prepare(
                    "SELECT public_key FROM one_time_prekeys
                     WHERE user = ?1 AND device = ?2 AND id = ?3",
                )
                .map_err(db)?;
            for k in one_time_prekeys {
                let added = insert
                    .execute(params![device.user, device.device, k.id, &k.public_key[..]])
                    .map_err(db)?;
                if added == 0 {
                    let key: Vec<u8> = held
                        .query_row(params![device.user, device.device, k.id], |r| r.get(0))
                        .map_err(db)?;
                    if key != k.public_key[..] {
                        return Err(StoreError::Refused(
                            "a one-time prekey id already held with another key",
                        ));
                    }
                }
            }
        }
        let count = count_one_time_prekeys(&tx, device)?;
        if count as usize > chatify_proto::limits::MAX_ONE_TIME_PREKEYS_HELD {
            return Err(StoreError::Refused(
                "more one-time prekeys than a device may hold (1 000)",
            ));
        }
        tx.commit().map_err(db)?;
        Ok(count)
    }

    fn take_bundle(&self, device: &Address) -> Result<Option<(PrekeyBundle, u32)>, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        type DeviceRow = (Vec<u8>, Vec<u8>, Vec<u8>, u32, Vec<u8>, Vec<u8>);
        let row: Option<DeviceRow> = tx
            .query_row(
                "SELECT signing_key, identity_key, identity_signature, spk_id, spk, spk_signature
                 FROM devices WHERE user = ?1 AND device = ?2",
                params![device.user, device.device],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()
            .map_err(db)?;
        let Some((signing, ik, ik_sig, spk_id, spk, spk_sig)) = row else {
            return Ok(None);
        };
        let otk: Option<(u32, Vec<u8>)> = tx
            .query_row(
                "SELECT id, public_key FROM one_time_prekeys WHERE user = ?1 AND device = ?2
                 ORDER BY id LIMIT 1",
                params![device.user, device.device],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        if let Some((id, _)) = &otk {
            tx.execute(
                "DELETE FROM one_time_prekeys WHERE user = ?1 AND device = ?2 AND id = ?3",
                params![device.user, device.device, id],
            )
            .map_err(db)?;
        }
        let remaining = count_one_time_prekeys(&tx, device)?;
        tx.commit().map_err(db)?;
        let bundle = PrekeyBundle {
            user: device.user.clone(),
            device: device.device,
            identity: DeviceKeys {
                signing_key: fixed(signing)?,
                identity_key: fixed(ik)?,
                identity_signature: fixed(ik_sig)?,
            },
            signed_prekey: SignedPrekey {
                id: spk_id,
                public_key: fixed(spk)?,
                signature: fixed(spk_sig)?,
            },
            one_time_prekey: match otk {
                Some((id, pk)) => Some(OneTimePrekey {
                    id,
                    public_key: fixed(pk)?,
                }),
                None => None,
            },
        };
        Ok(Some((bundle, remaining)))
    }

    fn one_time_prekey_count(&self, device: &Address) -> Result<Option<u32>, StoreError> {
        let conn = self.lock();
        let published: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM devices WHERE user = ?1 AND device = ?2)",
                params![device.user, device.device],
                |r| r.get(0),
            )
            .map_err(db)?;
        if !published {
            return Ok(None);
        }
        count_one_time_prekeys(&conn, device).map(Some)
    }

    fn devices(&self, user: &str) -> Result<Vec<u32>, StoreError> {
        let conn = self.lock();
        let mut q = conn
            .prepare_cached("SELECT device FROM devices WHERE user = ?1 ORDER BY device")
            .map_err(db)?;
        let rows = q.query_map([user], |r| r.get::<_, u32>(0)).map_err(db)?;
        rows.collect::<Result<Vec<u32>, _>>().map_err(db)
    }

    fn remove_device(&self, device: &Address) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let p = params![device.user, device.device];
        let existed = tx
            .execute("DELETE FROM devices WHERE user = ?1 AND device = ?2", p)
            .map_err(db)?
            > 0;
        for sql in [
            "DELETE FROM one_time_prekeys WHERE user = ?1 AND device = ?2",
            "DELETE FROM tokens WHERE user = ?1 AND device = ?2",
            "UPDATE envelopes SET acked = 1 WHERE recipient = ?1 AND recipient_device = ?2 AND acked = 0",
            // Its holds on blobs go; blobs nobody holds any more, with them.
            "DELETE FROM blob_grants WHERE user = ?1 AND device = ?2",
            "UPDATE blobs SET owner_holds = 0 WHERE owner = ?1 AND owner_device = ?2",
        ] {
            tx.execute(sql, p).map_err(db)?;
        }
        for sql in [
            "DELETE FROM blob_parts WHERE blob IN (SELECT id FROM blobs b WHERE owner_holds = 0
                 AND NOT EXISTS (SELECT 1 FROM blob_grants g WHERE g.blob = b.id))",
            "DELETE FROM blobs WHERE owner_holds = 0
                 AND NOT EXISTS (SELECT 1 FROM blob_grants g WHERE g.blob = blobs.id)",
        ] {
            tx.execute(sql, []).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(existed)
    }

    fn put_link(
        &self,
        user: &str,
        link_id: &[u8; 16],
        blob: &[u8],
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO links (user, link_id, blob, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                params![user, &link_id[..], blob, i64_of(expires_ms)],
            )
            .map(|_| ())
            .map_err(db)
    }

    fn take_link(
        &self,
        user: &str,
        link_id: &[u8; 16],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let found: Option<(Vec<u8>, i64)> = tx
            .query_row(
                "SELECT blob, expires_ms FROM links WHERE user = ?1 AND link_id = ?2",
                params![user, &link_id[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        // Single use: a link is gone once taken (a link code carries 128
        // random bits, so a wrong one is a typo, not a guess, and leaves
        // the link in place).
        tx.execute(
            "DELETE FROM links WHERE user = ?1 AND link_id = ?2",
            params![user, &link_id[..]],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(found
            .filter(|(_, expires)| *expires > i64_of(now_ms))
            .map(|(blob, _)| blob))
    }

    fn mfa(&self, user: &str) -> Result<Option<MfaRecord>, StoreError> {
        self.lock()
            .query_row(
                "SELECT secret, enabled, last_step FROM mfa WHERE user = ?1",
                [user],
                |r| {
                    Ok(MfaRecord {
                        sealed_secret: r.get(0)?,
                        enabled: r.get::<_, i64>(1)? != 0,
                        last_step: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    fn mfa_begin(&self, user: &str, sealed_secret: &[u8]) -> Result<bool, StoreError> {
        let changed = self
            .lock()
            .execute(
                "INSERT INTO mfa (user, secret, enabled, last_step) VALUES (?1, ?2, 0, -1)
                 ON CONFLICT (user) DO UPDATE SET secret = excluded.secret WHERE enabled = 0",
                params![user, sealed_secret],
            )
            .map_err(db)?;
        Ok(changed == 1)
    }

    fn mfa_enable(
        &self,
        user: &str,
        sealed_secret: &[u8],
        step: i64,
        recovery: &[[u8; 32]],
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let changed = tx
            .execute(
                "UPDATE mfa SET enabled = 1, last_step = ?3
                 WHERE user = ?1 AND secret = ?2 AND enabled = 0",
                params![user, sealed_secret, step],
            )
            .map_err(db)?;
        if changed != 1 {
            return Ok(false);
        }
        tx.execute("DELETE FROM mfa_recovery WHERE user = ?1", [user])
            .map_err(db)?;
        for hash in recovery {
            tx.execute(
                "INSERT OR IGNORE INTO mfa_recovery (user, code_hash) VALUES (?1, ?2)",
                params![user, &hash[..]],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn mfa_use_step(&self, user: &str, step: i64) -> Result<bool, StoreError> {
        let changed = self
            .lock()
            .execute(
                "UPDATE mfa SET last_step = ?2 WHERE user = ?1 AND enabled = 1 AND last_step < ?2",
                params![user, step],
            )
            .map_err(db)?;
        Ok(changed == 1)
    }

    fn mfa_use_recovery(&self, user: &str, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let changed = self
            .lock()
            .execute(
                "DELETE FROM mfa_recovery WHERE user = ?1 AND code_hash = ?2",
                params![user, &hash[..]],
            )
            .map_err(db)?;
        Ok(changed == 1)
    }

    fn mfa_disable(&self, user: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        tx.execute("DELETE FROM mfa_recovery WHERE user = ?1", [user])
            .map_err(db)?;
        tx.execute("DELETE FROM mfa WHERE user = ?1", [user])
            .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn announce_commits(&self, announce: Announce) -> bool {
        match &self.group {
            Some(group) => group.announcers.add(announce),
            None => self.announcers.add(announce),
        }
        true
    }

    fn enqueue(&self, e: &NewEnvelope) -> Result<Option<u64>, StoreError> {
        let Some(group) = &self.group else {
            let conn = self.lock();
            let seq = insert_envelope(&conn, e)?;
            // Told before the lock is let go: the next insert waits.
            if let Some(seq) = seq {
                self.announcers.tell([(seq, e)]);
            }
            return Ok(seq);
        };
        group
            .run(Op::Enqueue(e.clone()), |ops| commit_batch(&self.conn, ops))?
            .enqueued()
            .map(|stored| stored.map(|s| s.seq))
    }

    fn enqueue_many(
        &self,
        envelopes: &[NewEnvelope],
    ) -> Result<Vec<Option<super::Stored>>, StoreError> {
        let Some(group) = &self.group else {
            return envelopes.iter().map(|e| self.enqueue_linked(e)).collect();
        };
        let ops = envelopes.iter().cloned().map(Op::Enqueue).collect();
        group
            .run_many(ops, |ops| commit_batch(&self.conn, ops))
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
        let conn = self.read();
        // No ORDER BY and no LIMIT: with either, SQLite (built with STAT4)
        // prepares the statement again for every new binding, which was a
        // sixth of the server's CPU per message. The plan reads the mailbox
        // index, whose order is seq order (a test checks the plan); a plan
        // that ever did not is caught here and sorted.
        let mut stmt = conn.prepare_cached(MAILBOX_QUERY).map_err(db)?;
        let mut rows = stmt
            .query(params![device.user, device.device, i64_of(after)])
            .map_err(db)?;
        let limit = limit as usize;
        let mut out: Vec<Deliver> = Vec::new();
        let mut ordered = true;
        while let Some(row) = rows.next().map_err(db)? {
            let d = to_deliver(deliver_from_row(row).map_err(db)?)?;
            ordered &= out.last().is_none_or(|last| last.seq < d.seq);
            out.push(d);
            if ordered && out.len() >= limit {
                break;
            }
        }
        if !ordered {
            out.sort_unstable_by_key(|d| d.seq);
            out.truncate(limit);
        }
        Ok(out)
    }

    fn ack(&self, device: &Address, seqs: &[u64]) -> Result<(), StoreError> {
        let Some(group) = &self.group else {
            let mut conn = self.lock();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            mark_acked(&tx, device, seqs)?;
            return tx.commit().map_err(db);
        };
        group
            .run(Op::Ack(device.clone(), seqs.to_vec()), |ops| {
                commit_batch(&self.conn, ops)
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
        let conn = self.lock();
        let participant: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM envelopes WHERE conversation = ?1
                                AND (sender = ?2 OR recipient = ?2))",
                params![&conversation[..], user],
                |r| r.get(0),
            )
            .map_err(db)?;
        if !participant {
            return Ok(None);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, sender, sender_device, conversation, message_id, sent_at_ms, envelope
                 FROM envelopes
                 WHERE conversation = ?1 AND (sender = ?2 OR recipient = ?2) AND seq < ?3
                 ORDER BY seq DESC LIMIT ?4",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(
                params![
                    &conversation[..],
                    user,
                    i64_of(before.unwrap_or(u64::MAX)),
                    limit
                ],
                deliver_from_row,
            )
            .map_err(db)?;
        // Newest first, until the page's frame would outgrow MAX_FRAME_LEN
        // (at least one item: any envelope fits a frame on its own).
        let mut items = Vec::new();
        let mut bytes = HISTORY_FRAME_OVERHEAD;
        for row in rows {
            let item = to_deliver(row.map_err(db)?)?;
            bytes += item.envelope.len() + HISTORY_ITEM_OVERHEAD;
            if bytes > chatify_proto::limits::MAX_FRAME_LEN && !items.is_empty() {
                break;
            }
            items.push(item);
        }
        Ok(Some(items))
    }

    fn prune_history(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.lock()
            .execute(
                "DELETE FROM envelopes WHERE acked = 1 AND sent_at_ms < ?1",
                [i64_of(before_ms)],
            )
            .map(|n| n as u64)
            .map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(to: &str, sent_at_ms: u64) -> NewEnvelope {
        NewEnvelope {
            from: Address {
                user: "alice".into(),
                device: 1,
            },
            to: Address {
                user: to.into(),
                device: 1,
            },
            conversation: [1; 16],
            message_id: [2; 16],
            sent_at_ms,
            envelope: vec![3; 10],
        }
    }

    /// A device row as publishing keys leaves it (the key bytes do not matter here).
    fn device(store: &SqliteStore, user: &str) {
        let conn = store.lock();
        conn.execute(
            "INSERT INTO users (name, password_hash) VALUES (?1, 'x')",
            [user],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO devices VALUES (?1, 1, x'00', x'00', x'00', 1, x'00', x'00')",
            [user],
        )
        .unwrap();
    }

    /// The mailbox query reads the mailbox index, so its rows come in seq
    /// order (the query has no ORDER BY, which would make SQLite prepare it
    /// again for every binding), and it is prepared once.
    #[test]
    fn the_mailbox_query_reads_the_index_in_order_and_is_prepared_once() {
        let store = SqliteStore::in_memory().unwrap();
        device(&store, "bob");
        let bob = Address {
            user: "bob".into(),
            device: 1,
        };
        let seqs: Vec<u64> = (0..10)
            .map(|i| store.enqueue(&envelope("bob", i)).unwrap().unwrap())
            .collect();
        {
            let conn = store.lock();
            let plan: String = conn
                .query_row(
                    &format!("EXPLAIN QUERY PLAN {MAILBOX_QUERY}"),
                    params!["bob", 1, 0],
                    |r| r.get(3),
                )
                .unwrap();
            assert!(plan.contains("USING INDEX envelopes_mailbox"), "{plan}");
        }
        for after in [0, seqs[2], seqs[5], 0, seqs[8]] {
            let got: Vec<u64> = store
                .pending(&bob, after, 3)
                .unwrap()
                .iter()
                .map(|d| d.seq)
                .collect();
            let want: Vec<u64> = seqs
                .iter()
                .copied()
                .filter(|&s| s > after)
                .take(3)
                .collect();
            assert_eq!(got, want);
        }
        let conn = store.lock();
        let stmt = conn.prepare_cached(MAILBOX_QUERY).unwrap();
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the mailbox query was prepared again for new bindings"
        );
    }

    /// On disk, a mailbox read does not wait for the writer's connection
    /// (held here, as during a commit's fsync): it reads the last commit.
    #[test]
    fn a_mailbox_read_does_not_wait_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("chatify.db"), Durability::Full).unwrap());
        device(&store, "bob");
        store.enqueue(&envelope("bob", 1)).unwrap().unwrap();
        assert!(store.fast_reads());
        let held = store.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = Arc::clone(&store);
        std::thread::spawn(move || {
            let bob = Address {
                user: "bob".into(),
                device: 1,
            };
            let _ = tx.send(reader.pending(&bob, 0, 10).map(|v| v.len()).ok());
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        assert_eq!(got, Ok(Some(1)), "the read waited for the writer");
    }

    /// Under continuous writes at durability `Normal` the WAL stays near
    /// its bound (here 1 MiB): past it the checkpointer truncates it. With
    /// passive checkpoints only, it grew with everything written.
    #[test]
    fn the_wal_stays_bounded_under_continuous_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatify.db");
        let limit = 1024 * 1024;
        let store = SqliteStore::open_with_wal_limit(&path, Durability::Normal, limit).unwrap();
        device(&store, "bob");
        let wal = dir.path().join("chatify.db-wal");
        let mut e = envelope("bob", 1);
        e.envelope = vec![7; 16 * 1024];
        let (mut written, mut largest) = (0u64, 0u64);
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(3) {
            store.enqueue(&e).unwrap();
            written += e.envelope.len() as u64;
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        assert!(
            written > 24 * limit,
            "too little written to tell: {written} bytes"
        );
        assert!(
            largest < 8 * limit,
            "WAL reached {largest} bytes with {written} written"
        );
    }

    /// Concurrent stores and acknowledgements at durability `Full` share
    /// commits: every store gets its own sequence number and is on disk
    /// when it returns, an acknowledgement of another device's envelope is
    /// refused without failing the rest of its batch, and fewer commits
    /// than jobs were made.
    #[test]
    fn group_commit_keeps_each_result_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatify.db");
        let store = Arc::new(SqliteStore::open(&path, Durability::Full).unwrap());
        device(&store, "bob");
        device(&store, "carol");
        let bob = Address {
            user: "bob".into(),
            device: 1,
        };
        let first = store.enqueue(&envelope("carol", 1)).unwrap().unwrap();
        let batches_before = store.group.as_ref().unwrap().batches();
        // The database held while the jobs arrive: they queue behind the
        // first leader, and the next takes them all.
        let held = store.lock();
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let store = Arc::clone(&store);
                let bob = bob.clone();
                std::thread::spawn(move || {
                    if i % 8 == 7 {
                        // Carol's envelope, acknowledged by Bob: refused.
                        assert!(matches!(
                            store.ack(&bob, &[first]),
                            Err(StoreError::NotYours)
                        ));
                        None
                    } else {
                        store.enqueue(&envelope("bob", i)).unwrap()
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 28, "each store has its own sequence number");
        let batches = store.group.as_ref().unwrap().batches() - batches_before;
        assert!(batches <= 3, "32 jobs took {batches} commits");
        drop(store);
        let reopened = SqliteStore::open(&path, Durability::Full).unwrap();
        let pending = reopened.pending(&bob, 0, 100).unwrap();
        assert_eq!(pending.len(), 28, "every acknowledged store is on disk");
        let carol = Address {
            user: "carol".into(),
            device: 1,
        };
        assert_eq!(reopened.pending(&carol, 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn migrations_are_applied_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
        drop(store);
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
        store
            .lock()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(store);
        assert!(SqliteStore::open(&path, Durability::Normal).is_err());
    }
}
