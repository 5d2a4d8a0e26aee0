//! No message left `sent` forever, no accepted record left unqueued: which records wait
//! on the sweep, and when they are due.
//!
//! The sweep index is kept from the messages table's stream (by the events function),
//! not by the writers: a record that becomes `sent`, `accepted` or `scheduled` gets an
//! index entry (`{kind}.{channel}.{shard}`, sorted by the time it entered that status, or
//! for `scheduled` by its `send_at`), and leaving the status removes it. The sweep then
//! reads only due entries (a Query per partition), never scans, and the hot path pays
//! nothing.

use std::time::Duration;

use crate::batch::BatchRecord;
use crate::events::StatusImage;
use crate::message::{Channel, Status};

/// Index partitions per kind and channel, so no one partition takes every write.
pub const SHARDS: u32 = 4;

/// What a sweep entry waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// `sent`, waiting for a receipt.
    Receipt,
    /// `accepted`, waiting for the dispatcher.
    Dispatch,
    /// `scheduled`, waiting for its delayed job or Scheduler schedule to fire (indexed
    /// by `send_at`): the backstop for a job that never came (an ingest that died before
    /// its queue or schedule write, a schedule whose deliveries all failed).
    Schedule,
    /// A batch (its record), waiting for every message of it to settle.
    Batch,
}

impl Waiting {
    pub fn as_str(self) -> &'static str {
        match self {
            Waiting::Receipt => "receipt",
            Waiting::Dispatch => "dispatch",
            Waiting::Schedule => "schedule",
            Waiting::Batch => "batch",
        }
    }

    fn of(status: Status) -> Option<Waiting> {
        match status {
            Status::Sent => Some(Waiting::Receipt),
            Status::Accepted => Some(Waiting::Dispatch),
            Status::Scheduled => Some(Waiting::Schedule),
            _ => None,
        }
    }
}

/// One sweep index entry: a record waiting since `since` (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub waiting: Waiting,
    pub channel: Channel,
    pub since: i64,
    pub id: String,
    /// The record's key (to act on it without a lookup).
    pub pk: String,
}

impl Entry {
    /// The index partition: `_sweep.{kind}.{channel}.{shard}`.
    pub fn partition(&self) -> String {
        partition(self.waiting, self.channel, shard_of(&self.id))
    }

    /// The sort key: the time it started waiting (zero-padded), then the id.
    pub fn sort_key(&self) -> String {
        format!("{:015}#{}", self.since.max(0), self.id)
    }
}

pub fn partition(waiting: Waiting, channel: Channel, shard: u32) -> String {
    format!("_sweep.{}.{}.{shard}", waiting.as_str(), channel.as_str())
}

fn shard_of(id: &str) -> u32 {
    id.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % SHARDS
}

/// A change to the sweep index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOp {
    Put(Entry),
    Delete(Entry),
}

fn entry(image: &StatusImage) -> Option<Entry> {
    let waiting = Waiting::of(image.status)?;
    // A scheduled record is due at its send_at, not when it was written.
    let since = match (waiting, image.send_at) {
        (Waiting::Schedule, Some(at)) => at,
        _ => image.updated_at,
    };
    Some(Entry {
        waiting,
        channel: image.channel,
        since,
        id: image.id.clone(),
        pk: image.pk.clone(),
    })
}

/// The index changes a status write makes: leaving a waiting status removes its entry,
/// entering one adds it (with the write's time). Writes that keep the status change
/// nothing, so the entry keeps the time the record entered it.
pub fn index_ops(old: Option<&StatusImage>, new: Option<&StatusImage>) -> Vec<IndexOp> {
    let same = matches!((old, new), (Some(o), Some(n)) if o.status == n.status && o.id == n.id);
    if same {
        return Vec::new();
    }
    let mut ops = Vec::new();
    if let Some(e) = old.and_then(entry) {
        ops.push(IndexOp::Delete(e));
    }
    if let Some(e) = new.and_then(entry) {
        ops.push(IndexOp::Put(e));
    }
    ops
}

fn batch_entry(record: &BatchRecord) -> Entry {
    Entry {
        waiting: Waiting::Batch,
        channel: record.channel,
        // Fixed for the batch's life, so the entry put and the one deleted are one item.
        since: record.created_at,
        id: record.batch_id.clone(),
        pk: record.pk.clone(),
    }
}

/// The index changes a write of a batch's record makes: an entry while the batch is
/// open (queued, not completed), so the sweep looks at open batches only.
pub fn batch_index_ops(old: Option<&BatchRecord>, new: Option<&BatchRecord>) -> Vec<IndexOp> {
    match (old.filter(|r| r.open()), new.filter(|r| r.open())) {
        (Some(o), None) => vec![IndexOp::Delete(batch_entry(o))],
        (None, Some(n)) => vec![IndexOp::Put(batch_entry(n))],
        _ => Vec::new(),
    }
}

/// How long a record may wait before the sweep acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// `sent` without a receipt, per channel (channels not listed are never expired).
    pub receipt: Vec<(Channel, Duration)>,
    /// `accepted` without a dispatch (an ingest that died before its queue write), and
    /// `scheduled` this long past its `send_at` (its job never came).
    pub dispatch: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            receipt: vec![
                (Channel::Sms, Duration::from_secs(72 * 3_600)),
                (Channel::Email, Duration::from_secs(48 * 3_600)),
            ],
            dispatch: Duration::from_secs(300),
        }
    }
}

impl Timeouts {
    /// `sms=72,email=48` (hours per channel) over the defaults; `None` names the bad part.
    pub fn with_receipt_hours(mut self, spec: &str) -> Result<Self, String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (channel, hours) = part.split_once('=').ok_or_else(|| part.to_string())?;
            let channel = Channel::parse(channel.trim()).ok_or_else(|| part.to_string())?;
            let hours: u64 = hours.trim().parse().map_err(|_| part.to_string())?;
            self.receipt.retain(|(c, _)| *c != channel);
            self.receipt.push((channel, Duration::from_secs(hours * 3_600)));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(status: Status, at: i64) -> StatusImage {
        StatusImage {
            pk: "app_s_x".into(),
            id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".into(),
            app: "app".into(),
            channel: Channel::Sms,
            status,
            updated_at: at,
            provider: None,
            reason: None,
            key: None,
            send_at: None,
            history: Vec::new(),
        }
    }

    #[test]
    fn a_scheduled_record_waits_from_its_send_at() {
        let mut scheduled = image(Status::Scheduled, 5);
        scheduled.send_at = Some(90_000);
        let ops = index_ops(None, Some(&scheduled));
        assert!(
            matches!(&ops[..], [IndexOp::Put(e)] if e.waiting == Waiting::Schedule && e.since == 90_000
                && e.partition().starts_with("_sweep.schedule.sms."))
        );
        // Claimed (or cancelled): the entry leaves.
        for next in [Status::Sending, Status::Cancelled] {
            let ops = index_ops(Some(&scheduled), Some(&image(next, 91_000)));
            assert!(
                matches!(&ops[..], [IndexOp::Delete(e)] if e.since == 90_000),
                "{next:?}"
            );
        }
    }

    #[test]
    fn a_batch_is_in_the_index_from_queued_to_completed() {
        let written: BatchRecord = serde_json::from_value(serde_json::json!({
            "pk": "app_bi_x", "batch_id": "01B", "batch_index": -1, "app": "app", "channel": "sms",
            "total": 2, "accepted": 2, "rejected": "[]", "rejected_count": 0, "body_hash": "h",
            "created_at": 5, "expires_at": 9
        }))
        .unwrap();
        let queued = BatchRecord {
            queued: Some(true),
            ..written.clone()
        };
        let completed = BatchRecord {
            completed_at: Some(8),
            ..queued.clone()
        };
        assert!(batch_index_ops(None, Some(&written)).is_empty());
        let put = batch_index_ops(Some(&written), Some(&queued));
        assert!(matches!(&put[..], [IndexOp::Put(e)] if e.waiting == Waiting::Batch && e.id == "01B" && e.since == 5));
        assert!(batch_index_ops(Some(&queued), Some(&queued)).is_empty());
        let del = batch_index_ops(Some(&queued), Some(&completed));
        assert!(matches!((&put[..], &del[..]), ([IndexOp::Put(p)], [IndexOp::Delete(d)]) if p == d));
        assert!(matches!(
            &batch_index_ops(Some(&queued), None)[..],
            [IndexOp::Delete(_)]
        ));
    }

    #[test]
    fn entering_and_leaving_a_waiting_status_moves_the_entry() {
        let accepted = image(Status::Accepted, 1);
        let ops = index_ops(None, Some(&accepted));
        assert!(matches!(&ops[..], [IndexOp::Put(e)] if e.waiting == Waiting::Dispatch && e.since == 1));
        let sending = image(Status::Sending, 2);
        assert!(matches!(
            &index_ops(Some(&accepted), Some(&sending))[..],
            [IndexOp::Delete(_)]
        ));
        let sent = image(Status::Sent, 3);
        let ops = index_ops(Some(&sending), Some(&sent));
        assert!(
            matches!(&ops[..], [IndexOp::Put(e)] if e.waiting == Waiting::Receipt && e.sort_key().starts_with("000000000000003#"))
        );
        assert!(
            index_ops(Some(&sent), Some(&image(Status::Sent, 9))).is_empty(),
            "the entry keeps its time"
        );
        assert!(matches!(
            &index_ops(Some(&sent), Some(&image(Status::Delivered, 4)))[..],
            [IndexOp::Delete(_)]
        ));
        assert!(
            matches!(&index_ops(Some(&sent), None)[..], [IndexOp::Delete(_)]),
            "an expired record leaves"
        );
        assert!(accepted_partition_is_sharded());
    }

    fn accepted_partition_is_sharded() -> bool {
        let e = entry(&image(Status::Accepted, 1)).unwrap();
        e.partition().starts_with("_sweep.dispatch.sms.")
    }

    #[test]
    fn receipt_timeouts_are_configurable_per_channel() {
        let t = Timeouts::default().with_receipt_hours("sms=1, webhook=2").unwrap();
        assert!(t.receipt.contains(&(Channel::Sms, Duration::from_secs(3_600))));
        assert!(t.receipt.contains(&(Channel::Email, Duration::from_secs(48 * 3_600))));
        assert!(t.receipt.contains(&(Channel::Webhook, Duration::from_secs(7_200))));
        assert_eq!(Timeouts::default().with_receipt_hours("fax=1").unwrap_err(), "fax=1");
    }
}
