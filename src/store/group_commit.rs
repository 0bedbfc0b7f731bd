//! Group commit: the results of messages that finish while a transaction is being written share
//! the next transaction.
//!
//! A message's results are a handful of rows in a few tables, but a transaction of their own
//! costs a commit (a WAL flush the ack has to wait for) and one statement per table, each
//! planned, executed and answered. Under load most of that is overhead, so [`GroupCommit`] hands
//! the results to a few writer tasks; each takes whatever is waiting (up to
//! `--group-commit` messages and [`MAX_RUNS`] items) and writes it with
//! [`record_batch`]: the same statements, one per table, for all of them.
//!
//! A batch of live messages waits for nothing: a writer that finds one live message waiting
//! writes it. A batch of bulk messages waits up to [`Batching::bulk_linger`] for more to join
//! (until it is full, or a live message joins it). Under load batches fill at once and the wait
//! changes nothing; under a throttled quota messages finish one by one, and without it each
//! would pay a transaction of its own (a commit and one statement per table), and the worker and
//! Postgres several times the CPU per message. Bulk work has no latency to keep; its acks come
//! at most the linger later.
//!
//! Every message still gets its own answer, and only after the commit that holds its rows, so
//! the consumer's "ack after the Postgres commit" holds per message. A batch that fails for a
//! reason that may be one message's (a constraint, a deadlock) is written again one message per
//! transaction, so a bad message fails alone; a failure of the database itself (connection,
//! pool, shutdown) fails every message of the batch with it, to be retried later.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::{timeout_at, Duration, Instant};

use super::attributions::OwedAttribution;
use super::write::{record_batch, Part};
use super::{MessageResults, StoreError};
use crate::lane::Lane;
use crate::progress;

/// Writer tasks: one can be writing a batch while another waits for its commit.
const WRITERS: usize = 2;

/// At most this many items (runs) in one transaction, whatever `max_messages` says, so that a
/// few messages of many observables each do not make one huge transaction.
const MAX_RUNS: usize = 512;

/// Messages waiting for a writer; beyond this, callers wait to hand theirs over.
const QUEUE: usize = 1_024;

/// Each walk's attributions left owed an event, per walk of the message.
pub type Pending = Vec<Vec<OwedAttribution>>;

struct Job {
    results: MessageResults,
    reply: oneshot::Sender<(MessageResults, Result<Pending, StoreError>)>,
}

/// What group commit has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct GroupCommitStats {
    /// Messages handed over.
    pub submitted: AtomicU64,
    /// Messages whose rows were committed.
    pub committed: AtomicU64,
    /// Transactions that committed messages' rows.
    pub transactions: AtomicU64,
    /// Batches that failed together and were written again message by message.
    pub split: AtomicU64,
}

/// How batches form.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batching {
    /// Messages in one transaction at most.
    pub max_messages: usize,
    /// How long a batch of bulk messages waits for more to join it.
    pub bulk_linger: Duration,
}

pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
    stats: Arc<GroupCommitStats>,
}

impl GroupCommit {
    /// Start the writers on the current runtime. They stop once every handle is dropped and
    /// the messages already handed over are written.
    pub(super) fn spawn(
        pool: PgPool,
        batching: Batching,
        stats: Arc<GroupCommitStats>,
    ) -> GroupCommit {
        let batching = Batching {
            max_messages: batching.max_messages.max(1),
            ..batching
        };
        let (jobs, receiver) = mpsc::channel(QUEUE);
        let writers = Arc::new(Writers {
            receiver: Mutex::new(receiver),
            writing: AtomicUsize::new(0),
        });
        for _ in 0..WRITERS {
            tokio::spawn(write_loop(
                pool.clone(),
                Arc::clone(&writers),
                batching,
                Arc::clone(&stats),
            ));
        }
        GroupCommit { jobs, stats }
    }

    pub(super) fn stats(&self) -> &Arc<GroupCommitStats> {
        &self.stats
    }

    /// Write `results` with whatever other messages are waiting; the results come back with
    /// the outcome, once their transaction committed or failed.
    pub(super) async fn commit(
        &self,
        results: MessageResults,
    ) -> (MessageResults, Result<Pending, StoreError>) {
        let (reply, answer) = oneshot::channel();
        progress::handed_over();
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { results, reply }).await {
            return (job.results, Err(writers_gone()));
        }
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        match answer.await {
            Ok(answered) => answered,
            // The writer was dropped with the job (its task panicked or the runtime is going
            // away): nothing was committed for certain, so the message is retried.
            Err(_) => (MessageResults::default(), Err(writers_gone())),
        }
    }
}

fn writers_gone() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

/// What the writer tasks share: the messages handed over, taken by one writer at a time, and
/// how many writers are writing a batch now.
struct Writers {
    receiver: Mutex<mpsc::Receiver<Job>>,
    writing: AtomicUsize,
}

async fn write_loop(
    pool: PgPool,
    writers: Arc<Writers>,
    batching: Batching,
    stats: Arc<GroupCommitStats>,
) {
    loop {
        let batch = {
            let mut receiver = writers.receiver.lock().await;
            let Some(batch) = take_batch(&mut receiver, batching, &writers.writing).await else {
                return;
            };
            writers.writing.fetch_add(1, Ordering::Relaxed);
            batch
        };
        write(&pool, batch, &stats).await;
        writers.writing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The next batch: the first message to come, what is waiting behind it, and, while every
/// message of the batch is bulk, what comes within the linger.
///
/// The linger is for messages that finish apart: it starts only when no other writer is
/// writing. Under load one always is, and the batch waiting for the lock grows meanwhile, as it
/// would without a linger (waiting to fill it instead cost 8 % of the throughput at prefetch
/// 256). It ends early once no message in hand may still finish and join it (at concurrency 1
/// every message would otherwise wait out the linger): every other has joined a batch, left
/// without results, or is a repeat waiting for its observable's rows, maybe for this very
/// commit; it is told when the last one leaves or turns repeat. `None` once every handle is
/// gone and nothing is left.
async fn take_batch(
    receiver: &mut mpsc::Receiver<Job>,
    batching: Batching,
    writing: &AtomicUsize,
) -> Option<Vec<Job>> {
    let first = receiver.recv().await?;
    let until = Instant::now() + batching.bulk_linger;
    let mut lingering = !batching.bulk_linger.is_zero()
        && first.results.lane() == Lane::Bulk
        && writing.load(Ordering::Relaxed) == 0;
    let mut runs = first.results.runs.len();
    let mut batch = vec![first];
    while batch.len() < batching.max_messages && runs < MAX_RUNS {
        let job = match receiver.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Empty) if lingering => tokio::select! {
                biased;
                joined = timeout_at(until, receiver.recv()) => match joined {
                    Ok(Some(job)) => job,
                    // The linger is over, or every handle is gone: write what is here.
                    _ => break,
                },
                // No message in hand may still join (at once, or once the last left or
                // turned repeat).
                () = progress::global().none_may_finish() => break,
            },
            Err(_) => break,
        };
        lingering &= job.results.lane() == Lane::Bulk;
        runs += job.results.runs.len();
        batch.push(job);
    }
    Some(batch)
}

async fn write(pool: &PgPool, batch: Vec<Job>, stats: &GroupCommitStats) {
    let parts: Vec<Part<'_>> = batch.iter().map(|job| job.results.part()).collect();
    let outcome = record_batch(pool, &parts).await;
    drop(parts);
    match outcome {
        Ok(pending) => {
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            stats
                .committed
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (job, pending) in batch.into_iter().zip(pending) {
                let _ = job.reply.send((job.results, Ok(pending)));
            }
        }
        Err(error) if batch.len() > 1 && error.may_be_one_writes() => {
            stats.split.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, messages = batch.len(), "a group commit failed; writing its messages one by one");
            for job in batch {
                let outcome = record_batch(pool, &[job.results.part()]).await;
                let outcome = outcome.map(|mut pending| pending.pop().unwrap_or_default());
                if outcome.is_ok() {
                    stats.transactions.fetch_add(1, Ordering::Relaxed);
                    stats.committed.fetch_add(1, Ordering::Relaxed);
                }
                let _ = job.reply.send((job.results, outcome));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for job in batch {
                let _ = job
                    .reply
                    .send((job.results, Err(StoreError::Shared(Arc::clone(&error)))));
            }
        }
    }
}
