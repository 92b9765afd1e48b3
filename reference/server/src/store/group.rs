//! Group commit for the message path (SQLite at durability `Full`, and
//! PostgreSQL): envelopes to store and acknowledgements that arrive on any
//! connection while a commit is being made wait, and go together into the
//! next transaction, made durable by one fsync. Each caller gets its own result only once that
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

use super::{Announcers, NewEnvelope, StoreError, Stored};

/// What a job does inside the shared transaction.
pub(crate) enum Op {
    Enqueue(NewEnvelope),
    Ack(Address, Vec<u64>),
}

/// What a job produced.
pub(crate) enum Done {
    Enqueued(Option<Stored>),
    Acked,
}

impl Done {
    /// A store's result (its sequence number, if stored).
    pub(crate) fn enqueued(self) -> Result<Option<Stored>, StoreError> {
        match self {
            Done::Enqueued(stored) => Ok(stored),
            Done::Acked => Err(StoreError::Database(
                "group commit mixed up a result".into(),
            )),
        }
    }
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
    /// Told of each batch's envelopes once it is committed, before the
    /// next batch commits.
    pub(crate) announcers: Announcers,
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

    /// Runs `op` in the next group transaction and returns its result once
    /// that transaction is committed. `commit` makes one transaction of a
    /// batch of jobs: each job's own result (a refusal is one), or the
    /// database's failure of the whole batch (nothing of it committed).
    pub(crate) fn run(
        &self,
        op: Op,
        commit: impl Fn(&[&Op]) -> Result<Vec<Result<Done, StoreError>>, StoreError>,
    ) -> Result<Done, StoreError> {
        let mut results = self.run_many(vec![op], commit);
        results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Database("group commit lost a result".into())))
    }

    /// [`GroupCommit::run`] for several jobs queued together, so that they
    /// go into the same transaction: each job's result, in order.
    pub(crate) fn run_many(
        &self,
        ops: Vec<Op>,
        commit: impl Fn(&[&Op]) -> Result<Vec<Result<Done, StoreError>>, StoreError>,
    ) -> Vec<Result<Done, StoreError>> {
        let jobs: Vec<Arc<Job>> = ops
            .into_iter()
            .map(|op| {
                Arc::new(Job {
                    op,
                    result: Mutex::new(None),
                })
            })
            .collect();
        let mut queue = lock(&self.queue);
        queue.jobs.extend(jobs.iter().cloned());
        loop {
            if jobs.iter().all(|j| lock(&j.result).is_some()) {
                return jobs
                    .iter()
                    .map(|j| {
                        lock(&j.result).take().unwrap_or_else(|| {
                            Err(StoreError::Database("group commit lost a result".into()))
                        })
                    })
                    .collect();
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
            let lead = Lead {
                group: self,
                batch: std::mem::take(&mut queue.jobs),
            };
            drop(queue);
            let ops: Vec<&Op> = lead.batch.iter().map(|j| &j.op).collect();
            let outcome = commit(&ops);
            if let Ok(results) = &outcome {
                self.announce(&ops, results);
            }
            fill(&lead.batch, outcome);
            self.batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(lead);
            queue = lock(&self.queue);
        }
    }
}

impl GroupCommit {
    /// Tells the listeners of a committed batch's envelopes, in sequence
    /// order (a batch inserts in its own order; the next batch waits).
    fn announce(&self, ops: &[&Op], results: &[Result<Done, StoreError>]) {
        let mut stored: Vec<(u64, &NewEnvelope)> = ops
            .iter()
            .zip(results)
            .filter_map(|(op, r)| match (op, r) {
                (Op::Enqueue(e), Ok(Done::Enqueued(Some(s)))) => Some((s.seq, e)),
                _ => None,
            })
            .collect();
        stored.sort_unstable_by_key(|(seq, _)| *seq);
        self.announcers.tell(stored);
    }
}

/// A leader's batch. However the commit ends, a panic included, dropping it
/// gives every job of the batch a result (a failure if it has none) and
/// lets the next leader commit: no caller waits forever on a commit that
/// will not finish.
struct Lead<'a> {
    group: &'a GroupCommit,
    batch: Vec<Arc<Job>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        for job in &self.batch {
            let mut result = lock(&job.result);
            if result.is_none() {
                *result = Some(Err(StoreError::Database(
                    "the commit did not complete".into(),
                )));
            }
        }
        lock(&self.group.queue).committing = false;
        self.group.committed.notify_all();
    }
}

/// Gives each job of a batch its result.
fn fill(batch: &[Arc<Job>], outcome: Result<Vec<Result<Done, StoreError>>, StoreError>) {
    match outcome {
        Ok(results) if results.len() == batch.len() => {
            for (job, result) in batch.iter().zip(results) {
                *lock(&job.result) = Some(result);
            }
        }
        Ok(_) => {
            for job in batch {
                *lock(&job.result) = Some(Err(StoreError::Database(
                    "a group commit returned the wrong number of results".into(),
                )));
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An envelope whose contents do not matter.
    pub(crate) fn envelope() -> NewEnvelope {
        let a = Address {
            user: "a".into(),
            device: 1,
        };
        NewEnvelope {
            from: a.clone(),
            to: a,
            conversation: [1; 16],
            message_id: [2; 16],
            sent_at_ms: 0,
            envelope: vec![3],
        }
    }

    #[test]
    fn a_commit_that_panics_fails_its_batch_and_the_next_one_commits() {
        let group = GroupCommit::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = group.run(Op::Enqueue(envelope()), |_| panic!("a bug in the commit"));
        }));
        assert!(panicked.is_err());
        // Without the guard the queue stays "committing" and this waits
        // forever.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let r = group.run(Op::Enqueue(envelope()), |ops| {
                    let stored = Stored { seq: 7, prev: None };
                    Ok(ops
                        .iter()
                        .map(|_| Ok(Done::Enqueued(Some(stored))))
                        .collect())
                });
                let _ = tx.send(matches!(r, Ok(Done::Enqueued(Some(Stored { seq: 7, .. })))));
            });
            assert_eq!(
                rx.recv_timeout(std::time::Duration::from_secs(10)),
                Ok(true),
                "the commit after a panic never ran"
            );
        });
    }

    #[test]
    fn a_job_left_without_a_result_gets_a_failure() {
        let group = GroupCommit::default();
        let job = Arc::new(Job {
            op: Op::Ack(envelope().to, vec![1]),
            result: Mutex::new(None),
        });
        lock(&group.queue).committing = true;
        drop(Lead {
            group: &group,
            batch: vec![Arc::clone(&job)],
        });
        assert!(matches!(
            lock(&job.result).take(),
            Some(Err(StoreError::Database(_)))
        ));
        assert!(!lock(&group.queue).committing);
    }
}
