//! Group commit for the message path at durability `Full`: envelopes to
//! store and acknowledgements that arrive on any connection while a commit
//! is being made wait, and go together into the next transaction, made
//! durable by one fsync. Each caller gets its own result only once that
//! transaction is committed, so a `SendOk` still means "on disk".
//!
//! ```text
//!  caller ─ push job ─▶ queue ──(no commit running)──▶ leader: takes the
//!                                                     queue, one BEGIN …
//!                                                     COMMIT, fills results
//!  caller ─ push job ─▶ queue ──(a commit running)───▶ waits; the next
//!                                                     leader takes it
//! ```
//!
//! No thread of its own: the first caller that finds no commit running
//! commits for everyone queued (leader/follower). The work each job does
//! is checked before it writes, so one job refused (an acknowledgement of
//! another device's envelope) leaves the others to commit.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use chatify_proto::frame::Address;
use rusqlite::Connection;

use super::{NewEnvelope, StoreError};

/// What a job does inside the shared transaction.
pub(crate) enum Op {
    Enqueue(NewEnvelope),
    Ack(Address, Vec<u64>),
}

/// What a job produced.
pub(crate) enum Done {
    Enqueued(Option<u64>),
    Acked,
}

struct Job {
    op: Op,
    result: Mutex<Option<Result<Done, StoreError>>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Arc<Job>>,
    committing: bool,
}

/// The queue of jobs waiting for a commit.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    committed: Condvar,
    /// Transactions made so far.
    batches: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupCommit {
    /// Transactions made so far.
    #[cfg(test)]
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `op` in the next group transaction on `conn` and returns its
    /// result once that transaction is committed. `apply` does one job's
    /// work inside an open transaction.
    pub(crate) fn run(
        &self,
        conn: &Mutex<Connection>,
        op: Op,
        apply: impl Fn(&Connection, &Op) -> Result<Done, StoreError>,
    ) -> Result<Done, StoreError> {
        let job = Arc::new(Job {
            op,
            result: Mutex::new(None),
        });
        let mut queue = lock(&self.queue);
        queue.jobs.push(Arc::clone(&job));
        loop {
            if let Some(result) = lock(&job.result).take() {
                return result;
            }
            if queue.committing {
                queue = self
                    .committed
                    .wait(queue)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead: commit everything queued, this job included.
            queue.committing = true;
            let batch = std::mem::take(&mut queue.jobs);
            drop(queue);
            commit(conn, &batch, &apply);
            self.batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            queue = lock(&self.queue);
            queue.committing = false;
            self.committed.notify_all();
        }
    }
}

/// One transaction for the whole batch. A job's own refusal is its result;
/// a failure of the database fails every job of the batch (nothing of it
/// is committed).
fn commit(
    conn: &Mutex<Connection>,
    batch: &[Arc<Job>],
    apply: &impl Fn(&Connection, &Op) -> Result<Done, StoreError>,
) {
    let mut conn = lock(conn);
    let outcome = (|| -> Result<Vec<Result<Done, StoreError>>, StoreError> {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(super::sqlite::db)?;
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            match apply(&tx, &job.op) {
                Err(StoreError::Database(e)) => return Err(StoreError::Database(e)),
                other => results.push(other),
            }
        }
        tx.commit().map_err(super::sqlite::db)?;
        Ok(results)
    })();
    match outcome {
        Ok(results) => {
            for (job, result) in batch.iter().zip(results) {
                *lock(&job.result) = Some(result);
            }
        }
        Err(e) => {
            let message = e.to_string();
            for job in batch {
                *lock(&job.result) = Some(Err(StoreError::Database(message.clone())));
            }
        }
    }
}
