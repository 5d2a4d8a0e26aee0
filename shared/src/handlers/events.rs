//! The two event functions.
//!
//! - [`EventSource`] (function `events`) consumes the messages table's DynamoDB stream
//!   (Lambda's event source mapping on AWS, the dev stack's stream reader locally): each
//!   status change of a message becomes one event ([`crate::events::from_change`]), and
//!   one delivery job per subscribed endpoint of the app goes to the delivery queue.
//! - [`Deliver`] (function `deliver`) consumes the delivery queue: it POSTs the event
//!   signed per Standard Webhooks with every active secret of the endpoint, logs the
//!   attempt, and on failure leaves the job invisible until the next slot of the retry
//!   schedule (the job's receive count is its attempt number).

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::event::dynamodb::{Event as DynamoDbEvent, EventRecord};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::batch::BatchRecord;
use crate::clock::Clock;
use crate::events::{self, Attempt, DeliveryJob, Endpoint, Event, PrivateImage, StatusImage, Streak, Verdict};
use crate::net::{guarded_client, is_blocked};
use crate::queue::{FifoBody, Queue};
use crate::store::endpoints::EndpointStore;
use crate::store::sweep::SweepIndex;

/// Stream records → delivery jobs.
pub struct EventSource {
    pub endpoints: EndpointStore,
    pub delivery: Queue,
    /// The sweep index, kept from the same records (see [`crate::sweep`]).
    pub sweep: SweepIndex,
}

/// The status image in a stream record's item, if the item is a message record (guards,
/// balances, circuits and the like decode to `None`).
fn image(item: &serde_dynamo::Item) -> Option<StatusImage> {
    if item.is_empty() {
        return None;
    }
    serde_dynamo::from_item(item.clone()).ok()
}

/// The batch record in a stream record's item, if it is one (`batch_index` -1).
fn batch_image(item: &serde_dynamo::Item) -> Option<BatchRecord> {
    if item.is_empty() {
        return None;
    }
    serde_dynamo::from_item::<_, BatchRecord>(item.clone())
        .ok()
        .filter(|r| r.batch_index == -1)
}

/// The event a stream record carries, if any: a message's status change, or a batch
/// completed. A removed record (expiry, rollback) is none.
pub fn event_of(record: &EventRecord) -> Option<Event> {
    if record.event_name == "REMOVE" {
        return None;
    }
    if let Some(new) = batch_image(&record.change.new_image) {
        let old = batch_image(&record.change.old_image);
        return events::batch_completed(old.as_ref(), &new);
    }
    let new = image(&record.change.new_image)?;
    let old = image(&record.change.old_image);
    events::from_change(old.as_ref(), &new)
}

/// The sweep index changes a stream record makes (removals included): messages waiting
/// on the sweep, and batches waiting to complete.
fn sweep_ops(record: &EventRecord) -> Vec<crate::sweep::IndexOp> {
    let new = image(&record.change.new_image);
    let old = image(&record.change.old_image);
    let mut ops = crate::sweep::index_ops(old.as_ref(), new.as_ref());
    let new = batch_image(&record.change.new_image);
    let old = batch_image(&record.change.old_image);
    ops.extend(crate::sweep::batch_index_ops(old.as_ref(), new.as_ref()));
    ops
}

impl EventSource {
    /// Turns a batch of stream records into delivery jobs. On a failure it reports the
    /// first record not fully queued (`batchItemFailures`), so the event source retries
    /// from there; records before it are done, records after it come again. A repeated
    /// record makes the same event id, which receivers de-duplicate on.
    pub async fn handle(&self, event: DynamoDbEvent) -> DynamoDbEventResponse {
        let mut endpoints: HashMap<String, Vec<Endpoint>> = HashMap::new();
        let mut response = DynamoDbEventResponse::default();
        // The sweep index first: if it cannot be written, the whole batch comes again
        // before any event went out.
        let ops: Vec<_> = event.records.iter().flat_map(sweep_ops).collect();
        if let Err(e) = self.sweep.apply(&ops).await {
            tracing::error!(error = %e, "sweep index not written; the stream retries");
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = event.records.first().and_then(|r| r.change.sequence_number.clone());
            response.batch_item_failures.push(failure);
            return response;
        }
        let mut kept = Vec::new();
        for record in &event.records {
            let Some(ev) = event_of(record) else { continue };
            let result = self.fan_out(&ev, record, &mut endpoints).await;
            // Kept for replay only for apps that have endpoints.
            if endpoints.get(&ev.app).is_some_and(|l| !l.is_empty()) {
                kept.push(ev.clone());
            }
            if let Err(e) = result {
                tracing::error!(error = %e, event = %ev.id, "could not queue an event; the stream retries");
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = record.change.sequence_number.clone();
                response.batch_item_failures.push(failure);
                break;
            }
        }
        if let Err(e) = self.endpoints.keep_events(&kept).await {
            // Delivery goes on; only a later replay would miss them.
            tracing::warn!(error = %e, events = kept.len(), "could not keep events for replay");
        }
        response
    }

    /// Queues `ev` for each endpoint of its app that wants it; the app's endpoints are
    /// read once per batch.
    async fn fan_out(
        &self,
        ev: &Event,
        record: &EventRecord,
        cache: &mut HashMap<String, Vec<Endpoint>>,
    ) -> Result<(), EventsError> {
        if !cache.contains_key(&ev.app) {
            let list = self.endpoints.list(&ev.app).await?;
            cache.insert(ev.app.clone(), list);
        }
        let list = &cache[&ev.app];
        // The recipient and content are read from the record only for an endpoint that
        // opted in to them.
        let private = list
            .iter()
            .any(|ep| !ep.include.is_empty() && ep.wants(&ev.kind))
            .then(|| private_image(&record.change.new_image))
            .flatten();
        let jobs = jobs_for(ev, list, None, private.as_ref());
        if jobs.is_empty() {
            return Ok(());
        }
        self.delivery.send_fifo(&jobs).await?;
        tracing::info!(event = %ev.id, kind = %ev.kind, endpoints = jobs.len(), "event queued");
        Ok(())
    }
}

/// The recipient and content of the message record in a stream record's item.
fn private_image(item: &serde_dynamo::Item) -> Option<PrivateImage> {
    if item.is_empty() {
        return None;
    }
    serde_dynamo::from_item(item.clone()).ok()
}

/// One delivery job per endpoint of `endpoints` that wants `ev`. `replay` makes the
/// jobs distinct from the first ones for SQS's de-duplication (same event id for the
/// receiver). `private`: the message's recipient and content, for the endpoints that
/// opted in to them ([`events::payload_for`]); replays and notices have none.
pub fn jobs_for(
    ev: &Event,
    endpoints: &[Endpoint],
    replay: Option<i64>,
    private: Option<&PrivateImage>,
) -> Vec<FifoBody> {
    let shared = ev.payload().to_string();
    // One message's events to one endpoint go out in order; a failing delivery holds
    // back only that message's later events there (notices are grouped by their id).
    let subject = ev.data["id"].as_str().unwrap_or(&ev.id);
    endpoints
        .iter()
        .filter(|ep| ep.wants(&ev.kind))
        .map(|ep| FifoBody {
            body: serde_json::to_string(&DeliveryJob {
                app: ev.app.clone(),
                endpoint: ep.id.clone(),
                event_id: ev.id.clone(),
                kind: ev.kind.clone(),
                body: match (private, ep.include.is_empty()) {
                    (Some(p), false) => events::payload_for(ev, ep, Some(p)).to_string(),
                    _ => shared.clone(),
                },
            })
            .unwrap_or_default(),
            group: format!("{}.{subject}", ep.id),
            dedup: hex::encode(Sha256::digest(match replay {
                None => format!("{}.{}", ev.id, ep.id),
                Some(at) => format!("{}.{}.replay.{at}", ev.id, ep.id),
            })),
        })
        .collect()
}

/// Delivery jobs → signed POSTs.
pub struct Deliver {
    pub endpoints: EndpointStore,
    /// The delivery queue itself: a failed attempt's job is made visible again later.
    pub delivery: Queue,
    pub client: reqwest::Client,
    pub clock: Clock,
    /// Jobs of a batch in flight at once.
    pub concurrency: usize,
}

/// How one job ended.
enum Done {
    Ack,
    /// Leave it for later: its receipt handle and when.
    Later(String, Duration),
}

impl Deliver {
    /// The HTTP client for endpoints: the webhook channel's ([`guarded_client`]: no
    /// redirects, a total timeout, the address guard, no proxy from the environment).
    pub fn client(timeout: Duration, allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
        guarded_client(timeout, allow_private, "Pushgate-Events/1")
    }

    /// Delivers a batch; jobs to try again later are reported in `batchItemFailures`
    /// after their visibility was set to the schedule's next delay.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        // FIFO: a batch holds each group's jobs in order. Groups run concurrently, a
        // group's jobs one after the other, and once one must wait, the rest of its
        // group waits too (handed back at once, behind it).
        let mut groups: Vec<(String, Vec<SqsMessage>)> = Vec::new();
        for record in event.records {
            let group = record.attributes.get("MessageGroupId").cloned().unwrap_or_default();
            match groups.iter_mut().find(|(g, _)| *g == group && !g.is_empty()) {
                Some((_, jobs)) => jobs.push(record),
                None => groups.push((group, vec![record])),
            }
        }
        let outcomes: Vec<(Option<String>, Done)> = futures::stream::iter(groups)
            .map(|(_, records)| self.deliver_group(records))
            .buffer_unordered(self.concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut later = Vec::new();
        let mut response = SqsBatchResponse::default();
        for (id, done) in outcomes {
            if let Done::Later(handle, after) = done {
                later.push((handle, after));
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id.unwrap_or_default();
                response.batch_item_failures.push(failure);
            }
        }
        if !later.is_empty() {
            if let Err(e) = self.delivery.change_visibility(&later).await {
                // The jobs still come back, after the queue's own visibility timeout.
                tracing::warn!(error = %e, "could not set retry delays");
            }
        }
        response
    }

    async fn deliver_group(&self, records: Vec<SqsMessage>) -> Vec<(Option<String>, Done)> {
        let mut out = Vec::with_capacity(records.len());
        let mut blocked = false;
        for record in records {
            let id = record.message_id.clone();
            let done = if blocked {
                // Counted, so its own attempts are numbered without this receive.
                if let Some(job) = job_of(&record) {
                    let counted = self
                        .endpoints
                        .count_hold_back(&job.app, &job.endpoint, &job.event_id, (self.clock)())
                        .await;
                    if let Err(e) = counted {
                        tracing::warn!(error = %e, "could not count a hold-back");
                    }
                }
                Done::Later(record.receipt_handle.clone().unwrap_or_default(), Duration::ZERO)
            } else {
                self.deliver(record).await
            };
            blocked |= matches!(done, Done::Later(..));
            out.push((id, done));
        }
        out
    }

    async fn deliver(&self, record: SqsMessage) -> Done {
        let handle = record.receipt_handle.clone().unwrap_or_default();
        let Some(job) = job_of(&record) else {
            tracing::error!("unreadable delivery job dropped");
            return Done::Ack;
        };
        let attempt = self.attempt_of(&record, &job).await;
        let endpoint = match self.endpoints.get(&job.app, &job.endpoint).await {
            Ok(Some(ep)) if !ep.disabled => ep,
            Ok(_) => return Done::Ack, // deleted or disabled since: nothing to deliver
            Err(e) => {
                tracing::warn!(error = %e, "endpoint unreadable; retrying the job");
                return Done::Later(handle, Duration::from_secs(5));
            }
        };
        let now = (self.clock)();
        let (status, error) = self.post(&endpoint, &job, now).await;
        let verdict = events::verdict(status, attempt);
        let mut log = Attempt {
            event_id: job.event_id.clone(),
            kind: job.kind.clone(),
            attempt: u32::try_from(attempt + 1).unwrap_or(u32::MAX),
            at: now,
            status,
            outcome: String::new(),
            error,
            next_attempt_at: None,
        };
        let verdict = if self.track_streak(&endpoint, verdict, now).await {
            Verdict::Disable
        } else {
            verdict
        };
        let done = match verdict {
            Verdict::Delivered => {
                log.outcome = "delivered".into();
                Done::Ack
            }
            Verdict::Disable if status != Some(410) => {
                log.outcome = "disabled".into();
                Done::Ack
            }
            Verdict::Disable => {
                log.outcome = "disabled".into();
                if let Err(e) = self
                    .endpoints
                    .disable(&job.app, &job.endpoint, "the endpoint answered 410 Gone", now)
                    .await
                {
                    tracing::error!(error = %e, endpoint = %job.endpoint, "could not disable the endpoint");
                }
                Done::Ack
            }
            Verdict::RetryAfter(secs) => {
                log.outcome = "retrying".into();
                log.next_attempt_at = Some(now.saturating_add(i64::try_from(secs * 1000).unwrap_or(i64::MAX)));
                Done::Later(handle, Duration::from_secs(secs))
            }
            Verdict::GiveUp => {
                log.outcome = "given_up".into();
                Done::Ack
            }
        };
        tracing::info!(endpoint = %job.endpoint, event = %job.event_id, attempt = log.attempt, status = ?status, outcome = %log.outcome, "event delivery attempt");
        if let Err(e) = self.endpoints.log_attempt(&job.app, &job.endpoint, &log).await {
            tracing::warn!(error = %e, "could not log the attempt");
        }
        done
    }

    /// Keeps the endpoint's failure streak: a success ends it, the first failure starts
    /// it, a failure 5 days into it disables the endpoint and notifies the app's other
    /// endpoints (`endpoint.disabled`). A healthy endpoint costs no write here. `true`
    /// when it disabled the endpoint.
    async fn track_streak(&self, endpoint: &Endpoint, verdict: Verdict, now: i64) -> bool {
        let (app, id) = (&endpoint.app, &endpoint.id);
        let result = match verdict {
            Verdict::Disable => return false,
            Verdict::Delivered if endpoint.failing_since.is_none() => return false,
            Verdict::Delivered => self.endpoints.set_failing(app, id, None).await,
            Verdict::RetryAfter(_) | Verdict::GiveUp => match events::streak(endpoint.failing_since, now) {
                Streak::Begins => self.endpoints.set_failing(app, id, Some(now)).await,
                Streak::Continues => return false,
                Streak::Disable => {
                    let reason = "deliveries failed for 5 days";
                    if let Err(e) = self.endpoints.disable(app, id, reason, now).await {
                        tracing::error!(error = %e, endpoint = %id, "could not disable the endpoint");
                        return false;
                    }
                    tracing::warn!(endpoint = %id, app = %app, "endpoint disabled after 5 days of failures");
                    self.notify(&events::disabled_notice(endpoint, reason, now)).await;
                    return true;
                }
            },
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, endpoint = %id, "could not record the failure streak");
        }
        false
    }

    /// Queues a notice to the app's endpoints that want it (the disabled one no longer
    /// does).
    async fn notify(&self, notice: &Event) {
        let queued: Result<(), EventsError> = async {
            let list = self.endpoints.list(&notice.app).await?;
            Ok(self.delivery.send_fifo(&jobs_for(notice, &list, None, None)).await?)
        }
        .await;
        if let Err(e) = queued {
            tracing::error!(error = %e, event = %notice.id, "could not queue a notice");
        }
    }

    /// The job's attempt number (0-based): its receives, less the ones that held it back
    /// behind its message's earlier event (read only when it was received before).
    async fn attempt_of(&self, record: &SqsMessage, job: &DeliveryJob) -> usize {
        let receives = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(1);
        if receives <= 1 {
            return 0;
        }
        let held = self
            .endpoints
            .hold_backs(&job.app, &job.endpoint, &job.event_id)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not read hold-backs");
                0
            });
        receives.saturating_sub(1).saturating_sub(held)
    }

    /// One signed POST: the status answered, or why there was none (never the body).
    async fn post(&self, endpoint: &Endpoint, job: &DeliveryJob, now_ms: i64) -> (Option<u16>, Option<String>) {
        let timestamp = now_ms / 1000;
        let signature = match sign(
            &endpoint.active_secrets(now_ms),
            &job.event_id,
            timestamp,
            job.body.as_bytes(),
        ) {
            Ok(s) => s,
            Err(e) => return (None, Some(e.to_string())),
        };
        let result = self
            .client
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", &job.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(job.body.clone())
            .send()
            .await;
        match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let error = (!resp.status().is_success()).then(|| format!("HTTP {status}"));
                (Some(status), error)
            }
            Err(e) => (None, Some(describe(&e))),
        }
    }
}

fn job_of(record: &SqsMessage) -> Option<DeliveryJob> {
    serde_json::from_str(record.body.as_deref()?).ok()
}

/// `webhook-signature`: one `v1,<base64>` per secret, space-separated (Standard
/// Webhooks: receivers accept the message if any one verifies).
pub fn sign(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignError> {
    let mut out = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let signer = standardwebhooks::Webhook::new(secret).map_err(|_| SignError::BadSecret)?;
        out.push(signer.sign(id, timestamp, body).map_err(|_| SignError::Body)?);
    }
    if out.is_empty() {
        return Err(SignError::NoSecret);
    }
    Ok(out.join(" "))
}

/// Why an event could not be signed (logged as the attempt's error; never retried
/// differently: the endpoint's owner fixes it).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("endpoint secret unreadable")]
    BadSecret,
    #[error("event body is not UTF-8")]
    Body,
    #[error("endpoint has no active secret")]
    NoSecret,
}

/// Why events could not be queued (the stream batch is retried from that record).
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// Why a request got no answer, without URLs or bodies.
fn describe(e: &reqwest::Error) -> String {
    if is_blocked(e) {
        "target resolves to a disallowed address".into()
    } else if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream record as Lambda delivers it (the documented shape): a claim (no event),
    /// then the finish to `sent` (one event, nothing of the recipient or content).
    #[test]
    fn reads_lambdas_dynamodb_stream_records() {
        let image = |status: &str, history: usize| {
            serde_json::json!({
                "pk": {"S": "shop_s_ab"}, "id": {"S": "01J0000000000000000000000A"}, "app": {"S": "shop"},
                "channel": {"S": "sms"}, "status": {"S": status}, "status_rank": {"N": "2"},
                "updated_at": {"N": "1767225600000"}, "to": {"S": "+8613800138000"},
                "content": {"M": {"text": {"S": "secret code 1234"}}}, "provider": {"S": "aliyun"},
                "history": {"L": (0..history).map(|_| serde_json::json!({"M": {"at": {"N": "1"}, "status": {"S": status}}})).collect::<Vec<_>>()}
            })
        };
        let record = |name: &str, old: serde_json::Value, new: serde_json::Value| {
            serde_json::json!({
                "eventID": "1", "eventName": name, "eventVersion": "1.1", "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/m/stream/2026-01-01T00:00:00.000",
                "dynamodb": {"ApproximateCreationDateTime": 1767225600.0, "Keys": {"pk": {"S": "shop_s_ab"}},
                             "NewImage": new, "OldImage": old, "SequenceNumber": "111", "SizeBytes": 26,
                             "StreamViewType": "NEW_AND_OLD_IMAGES"}
            })
        };
        let event: DynamoDbEvent = serde_json::from_value(serde_json::json!({"Records": [
            record("MODIFY", image("accepted", 1), image("sending", 2)),
            record("MODIFY", image("sending", 2), image("sent", 3)),
            record("REMOVE", image("sent", 3), serde_json::json!({})),
        ]}))
        .unwrap();
        let made: Vec<Event> = event.records.iter().filter_map(event_of).collect();
        assert_eq!(made.len(), 1);
        assert_eq!(
            (made[0].kind.as_str(), made[0].data["seq"].as_u64()),
            ("message.sent", Some(3))
        );
        let body = made[0].payload().to_string();
        assert!(!body.contains("8613800138000") && !body.contains("1234"), "{body}");
        let ops: Vec<_> = event.records.iter().flat_map(sweep_ops).collect();
        assert_eq!(ops.len(), 3, "accepted left, sent entered, sent left: {ops:?}");
    }

    /// Standard Webhooks' published test vector (the reference libraries' own).
    #[test]
    fn signs_the_published_vector_with_every_secret() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&[secret], id, 1_614_265_330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let both = sign(
            &[secret, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
            id,
            1_614_265_330,
            body,
        )
        .unwrap();
        assert_eq!(both.split(' ').count(), 2);
        assert!(both.starts_with(&sig));
        assert!(sign(&[], id, 0, body).is_err());
    }
}
