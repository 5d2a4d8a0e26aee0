//! The sweep (function `sweep`, on an EventBridge schedule): a `sent` message whose
//! receipt never came moves to `unknown` (`no_receipt`) after its channel's timeout, and
//! an `accepted` record nobody queued (an ingest that died between its write and its
//! queue send) is queued, as is a `scheduled` record whose job never came by its
//! `send_at` (its ingest died before the queue or schedule write, or Scheduler gave
//! up). It reads only the due entries of the sweep index (one Query per partition),
//! never the table; the status write it makes is a status change like any other, so the
//! app gets its `message.unknown` event from the stream. It also marks a batch completed
//! once every message of it is settled (`batch.completed`).

use serde::Serialize;

use crate::clock::Clock;
use crate::message::{Channel, Job};
use crate::queue::Queue;
use crate::store::sweep::SweepIndex;
use crate::store::Store;
use crate::sweep::{Timeouts, Waiting};

/// Entries read per partition and run: a backlog drains over several runs.
pub const BATCH: i32 = 100;
/// An orphan still unclaimed after being queued for a day is dropped from the index.
pub const ORPHAN_GIVE_UP_MS: i64 = 24 * 3_600 * 1_000;

pub struct Sweep {
    pub index: SweepIndex,
    pub store: Store,
    /// The send queue (orphaned records are queued there).
    pub queue: Queue,
    pub timeouts: Timeouts,
    pub clock: Clock,
}

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// `sent` → `unknown`.
    pub expired: usize,
    /// `accepted` records queued.
    pub requeued: usize,
    /// `scheduled` records past their `send_at` whose job never came, queued.
    pub released: usize,
    /// Batches found with every message settled, marked completed (`batch.completed`).
    pub batches_completed: usize,
}

impl Sweep {
    pub async fn run(&self) -> Swept {
        let now = (self.clock)();
        let mut swept = Swept::default();
        for (channel, timeout) in &self.timeouts.receipt {
            let before = now.saturating_sub(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX));
            let due = match self.index.due(Waiting::Receipt, *channel, before, BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, channel = channel.as_str(), "sweep index unreadable");
                    continue;
                }
            };
            for entry in due {
                match self.store.expire_unreceipted(&entry.pk, &entry.id, now).await {
                    Ok(true) => swept.expired += 1,
                    // It moved on (or is gone): the stream removes its entry, or already did.
                    Ok(false) => {
                        let _ = self.index.apply(&[crate::sweep::IndexOp::Delete(entry)]).await;
                    }
                    Err(e) => tracing::warn!(error = %e, id = %entry.id, "could not expire a message"),
                }
            }
        }
        let before = now.saturating_sub(i64::try_from(self.timeouts.dispatch.as_millis()).unwrap_or(i64::MAX));
        swept.requeued += self.requeue_due(Waiting::Dispatch, before, now).await;
        swept.released += self.requeue_due(Waiting::Schedule, before, now).await;
        swept.batches_completed = self.complete_batches(now).await;
        tracing::info!(
            expired = swept.expired,
            requeued = swept.requeued,
            released = swept.released,
            batches_completed = swept.batches_completed,
            "sweep done"
        );
        swept
    }

    /// Looks at every open batch (queued, not completed: the index's `batch` entries):
    /// one read of its messages' statuses through the batch index; when every one is
    /// settled, one conditional write marks it completed, and that write's stream record
    /// makes the `batch.completed` event (exactly one, whatever runs overlap).
    async fn complete_batches(&self, now: i64) -> usize {
        let mut completed = 0;
        for channel in Channel::ALL {
            let open = match self.index.due(Waiting::Batch, channel, i64::MAX, BATCH).await {
                Ok(open) => open,
                Err(e) => {
                    tracing::error!(error = %e, channel = channel.as_str(), "sweep index unreadable");
                    continue;
                }
            };
            for entry in open {
                let found = match self.store.batch(&entry.id).await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::warn!(error = %e, batch = %entry.id, "could not read a batch");
                        continue;
                    }
                };
                let Some((record, messages)) = found.filter(|(r, _)| r.expires_at >= now / 1000) else {
                    // Gone (expired): nothing will complete it.
                    let _ = self.index.apply(&[crate::sweep::IndexOp::Delete(entry)]).await;
                    continue;
                };
                let statuses: Vec<_> = messages.iter().map(|m| m.status).collect();
                let Some(counts) = crate::batch::completion(&record, &statuses) else {
                    continue;
                };
                match self.store.complete_batch(&record.pk, &counts, now).await {
                    Ok(true) => completed += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, batch = %entry.id, "could not complete a batch"),
                }
            }
        }
        completed
    }

    /// Queues the records of `waiting` due before `before` (an `accepted` record nobody
    /// queued; a `scheduled` one whose delayed job or schedule never came) and returns how
    /// many. A duplicate job is harmless: the dispatcher's claim sends once, and refuses a
    /// record before its `send_at` or after its cancel.
    async fn requeue_due(&self, waiting: Waiting, before: i64, now: i64) -> usize {
        let mut queued = 0;
        for channel in Channel::ALL {
            let due = match self.index.due(waiting, channel, before, BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, channel = channel.as_str(), "sweep index unreadable");
                    continue;
                }
            };
            for entry in due {
                if now.saturating_sub(entry.since) > ORPHAN_GIVE_UP_MS {
                    // Queued every run for a day and never claimed: its record is gone
                    // (or expired); stop queueing it.
                    tracing::warn!(id = %entry.id, waiting = waiting.as_str(), "record never claimed; dropped from the sweep");
                    let _ = self.index.apply(&[crate::sweep::IndexOp::Delete(entry)]).await;
                    continue;
                }
                let job = Job {
                    pk: entry.pk,
                    id: entry.id.clone(),
                    app: None,
                };
                match self.queue.send(&job).await {
                    Ok(()) => queued += 1,
                    Err(e) => tracing::warn!(error = %e, id = %entry.id, "could not queue a waiting record"),
                }
            }
        }
        queued
    }
}
