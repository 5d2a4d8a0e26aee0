//! `POST /v1/messages/batch` and `GET /v1/batches/{id}`: one template or content for up
//! to 10,000 recipients, each its own message (own id, status, quota unit and claim).
//!
//! Ingest validates and renders every recipient at once and answers with the accepted
//! count and each rejected recipient (index, pointer, reason), then writes the batch's
//! record (conditional: it is the replay and idempotency guard), the recipients' records
//! (25 per `BatchWriteItem`) and their jobs (10 per `SendMessageBatch`). A crash half-way
//! loses nothing: the same request again under the same `Idempotency-Key` (once the
//! first request's time is surely up) finds the batch's record, writes only the
//! recipients not yet written (conditional writes never replace a record a dispatcher
//! may hold) and queues every recipient still waiting (a duplicate job is harmless: the
//! claim sends once).

use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::ingest::{
    new_message, unauthorized, unavailable, unstorable, Ingest, NewMessage, Rendered, IDEMPOTENT_REPLAYED, IN_FLIGHT_MS,
};
use super::{body_bytes, header, json};
use crate::auth::{AuthError, SignatureVersion};
use crate::batch::{self, BatchRecord, Rejection, KEPT_REJECTIONS};
use crate::message::{Job, Status};
use crate::ports::Created;
use crate::problem::{FieldError, Problem};
use crate::request::{self, SendRequest};
use crate::schedule::When;
use crate::store::StoreError;

/// Messages listed per page of `GET /v1/batches/{id}`.
const PAGE: usize = 1000;

/// One recipient accepted: its index, request and rendering.
type Accepted = (usize, SendRequest, Rendered);

impl Ingest {
    pub(super) async fn batch(&self, req: &Request) -> Result<Response<Body>, Problem> {
        let (body, idem_key, creds, app) = self
            .signed_write(req, self.cfg.max_batch_body_bytes, "a batch body")
            .await?;
        // Without a key, a batch that failed half way could only be sent again as a new
        // batch: its first recipients twice.
        if idem_key.is_none() {
            return Err(Problem::new(400, "idempotency-key-required", "Bad Request")
                .detail("a batch needs an Idempotency-Key, so that a retry completes it instead of sending it again")
                .errors(vec![FieldError::new(
                    "header:Idempotency-Key",
                    "is required for batches",
                )]));
        }
        if idem_key.is_some() && creds.version == SignatureVersion::V1 {
            return Err(Problem::new(400, "sign-v2", "Bad Request")
                .detail("a batch with an Idempotency-Key must be signed v2 (which covers the key)")
                .errors(vec![FieldError::new("header:X-Signature", "sign v2")]));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Problem::new(400, "malformed-json", "Bad Request").detail(format!("body is not valid JSON: {e}"))
        })?;
        let split = batch::split(&value).map_err(Problem::unprocessable)?;
        let total = split.items.len();
        let (accepted, rejected) = self.check_recipients(&value, split.items, &app).await?;
        if (split.atomic && !rejected.is_empty()) || accepted.is_empty() {
            let errors = rejected.iter().flat_map(|r| r.errors.clone()).take(100).collect();
            return Err(Problem::unprocessable(errors).detail(match accepted.is_empty() {
                true => "no recipient is valid",
                false => "the batch is atomic and some recipients are invalid",
            }));
        }
        if let Some(limit) = app.limits.per_minute {
            if accepted.len() > limit as usize {
                // It could never fit in a minute: a 429 would be retried forever.
                return Err(Problem::unprocessable(vec![FieldError::new(
                    "/recipients",
                    format!("more valid recipients than the app's limits.per_minute ({limit}); split the batch"),
                )]));
            }
        }
        let now = (self.clock)();
        let batch_pk = match &idem_key {
            Some(k) => format!("{}_bi_{}", app.key, hex::encode(Sha256::digest(k.as_bytes()))),
            None => format!("{}_bs_{}", app.key, creds.signature_hex()),
        };
        let body_hash = hex::encode(Sha256::digest(body));
        let when = match self.when_and_balance(&app, accepted[0].1.send_at, now).await {
            Ok(when) => when,
            Err(refusal) if idem_key.is_some() => {
                return self.unless_batch_replay(&batch_pk, &body_hash, now, refusal).await
            }
            Err(refusal) => return Err(refusal),
        };
        let mut record = BatchRecord {
            pk: batch_pk.clone(),
            batch_id: ulid::Ulid::new().to_string(),
            batch_index: -1,
            app: app.key.clone(),
            channel: accepted[0].1.channel,
            total: total as u32,
            accepted: accepted.len() as u32,
            rejected: kept_rejections(&rejected),
            rejected_count: rejected.len() as u32,
            body_hash,
            created_at: now,
            expires_at: now / 1000 + self.cfg.retention_days * 86_400,
            queued: None,
            completed_at: None,
            counts: None,
        };
        let replayed = match self.store.put_batch(&record, now).await.map_err(|e| match e {
            StoreError::Unstorable(why) => unstorable(why, "/recipients"),
            e => unavailable(e),
        })? {
            None => false,
            Some(_) if idem_key.is_none() => return Err(unauthorized(AuthError::Replayed, Some(&app.key))),
            Some(old) if old.body_hash != record.body_hash => return Err(super::ingest::key_reused()),
            Some(old) => {
                record = old;
                true
            }
        };
        if !replayed {
            self.count_against_limit(&app, &record, now).await?;
        }
        if replayed && record.queued != Some(true) && now.saturating_sub(record.created_at) < IN_FLIGHT_MS {
            // The first request may still be writing: completing alongside it could
            // race its plain writes.
            return Err(Problem::new(409, "in-progress", "Conflict")
                .detail("a batch with this Idempotency-Key is still being processed")
                .retry_after(1));
        }
        if record.queued != Some(true) {
            self.write_and_queue(&record, &creds.signature_hex(), accepted, when, now, replayed)
                .await?;
            if let Err(e) = self.store.mark_batch_queued(&record.pk).await {
                tracing::warn!(error = %e, batch = %record.batch_id, "could not mark the batch queued");
            }
        }
        tracing::info!(app = %app.key, batch = %record.batch_id, accepted = record.accepted, rejected = record.rejected_count, replayed, "batch accepted");
        let rejections = match replayed {
            true => record.rejections(),
            false => rejected,
        };
        Ok(accepted_batch(&record, &rejections, replayed))
    }

    /// Validates and renders every recipient. A fault of the batch's own fields (the
    /// same for every recipient) refuses the whole request; a recipient's own fault
    /// rejects that recipient only.
    /// When the batch goes out, if it may: at most 15 minutes ahead, and while a metered
    /// app has balance left.
    async fn when_and_balance(
        &self,
        app: &crate::apps::AppConfig,
        send_at: Option<i64>,
        now: i64,
    ) -> Result<When, Problem> {
        let when = self.when(send_at, now)?;
        if matches!(when, When::At(_)) {
            return Err(Problem::unprocessable(vec![FieldError::new(
                "/send_at",
                "a batch may be scheduled at most 15 minutes ahead",
            )]));
        }
        if app.limits.balance {
            let available = self.store.balance(&app.key).await.map_err(unavailable)?;
            if available.unwrap_or(0) <= 0 {
                return Err(Problem::new(429, "quota-exhausted", "Too Many Requests")
                    .detail(format!("app {} has no balance left; top it up to send", app.key))
                    .retry_after(super::ingest::QUOTA_RETRY_AFTER_SECS));
            }
        }
        Ok(when)
    }

    /// Counts the batch's accepted recipients against the app's `limits.per_minute`, all
    /// or none, once its record proved it no replay (a retry of the same batch was
    /// counted by the first request). Refused: its record is withdrawn, so the same key
    /// may be retried after `Retry-After`, and nothing was written or queued.
    async fn count_against_limit(
        &self,
        app: &crate::apps::AppConfig,
        record: &BatchRecord,
        now: i64,
    ) -> Result<(), Problem> {
        let Some(limit) = app.limits.per_minute else {
            return Ok(());
        };
        let refusal = match self.store.hit_rate_limit(&app.key, limit, record.accepted, now).await {
            Ok(None) => return Ok(()),
            Ok(Some(retry_after)) => Problem::new(429, "rate-limited", "Too Many Requests")
                .detail(format!(
                    "app {} may send {limit} messages per minute; this batch has {}",
                    app.key, record.accepted
                ))
                .retry_after(retry_after),
            Err(e) => unavailable(e),
        };
        if let Err(e) = self.store.delete_batch(&record.pk, &record.batch_id).await {
            tracing::warn!(error = %e, batch = %record.batch_id, "could not withdraw a refused batch's record");
        }
        Err(refusal)
    }

    /// Answers a refusal that depends on when the request is looked at (its `send_at` now
    /// past, the balance now spent by its own recipients) with the first answer when the
    /// same body was accepted and queued under the same `Idempotency-Key`, as a retry
    /// expects. One GetItem, on refusals of keyed batches only.
    async fn unless_batch_replay(
        &self,
        batch_pk: &str,
        body_hash: &str,
        now: i64,
        refusal: Problem,
    ) -> Result<Response<Body>, Problem> {
        match self.store.get_batch(batch_pk, now).await {
            Ok(Some(old)) if old.body_hash == body_hash && old.queued == Some(true) => {
                Ok(accepted_batch(&old, &old.rejections(), true))
            }
            _ => Err(refusal),
        }
    }

    async fn check_recipients(
        &self,
        value: &Value,
        items: Vec<Result<Value, Vec<FieldError>>>,
        app: &crate::apps::AppConfig,
    ) -> Result<(Vec<Accepted>, Vec<Rejection>), Problem> {
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let outcome = match item {
                Err(errors) => Err(errors),
                Ok(single) => match request::validate(&single, self.cfg.webhook_allow_private) {
                    Err(errors) => Err(errors),
                    Ok(request) => match self.render(&request, app).await {
                        Ok(rendered) => Ok((request, rendered)),
                        Err(p) if p.status == 422 => Err(p.errors),
                        Err(p) => return Err(p),
                    },
                },
            };
            let errors = match outcome {
                Ok((request, rendered)) => {
                    accepted.push((i, request, rendered));
                    continue;
                }
                Err(errors) => errors,
            };
            let mut own = Vec::new();
            for e in errors {
                match e.pointer.starts_with("/recipients/") {
                    true => own.push(e),
                    false => match batch::recipient_pointer(value, i, &e.pointer) {
                        Some(pointer) => own.push(FieldError::new(pointer, e.detail)),
                        // The batch's own field: the same for every recipient.
                        None => return Err(Problem::unprocessable(vec![e])),
                    },
                }
            }
            rejected.push(Rejection {
                index: i as u32,
                errors: own,
            });
        }
        Ok((accepted, rejected))
    }

    /// Writes the accepted recipients' records (those a crashed try wrote are kept as
    /// they are) and queues every one still waiting to be sent.
    async fn write_and_queue(
        &self,
        record: &BatchRecord,
        signature: &str,
        accepted: Vec<Accepted>,
        when: When,
        now: i64,
        resume: bool,
    ) -> Result<(), Problem> {
        let messages: Vec<_> = accepted
            .into_iter()
            .map(|(i, request, rendered)| {
                let mut m = new_message(
                    NewMessage {
                        pk: batch::message_pk(&record.pk, i),
                        app: &record.app,
                        channel: request.channel,
                        to: request.to,
                        send_at: request.send_at,
                        when,
                        rendered,
                        body_hash: record.body_hash.clone(),
                        signature: signature.to_string(),
                        pending: false,
                    },
                    now,
                    self.cfg.retention_days,
                );
                m.batch_id = Some(record.batch_id.clone());
                m.batch_index = Some(i as u32);
                m
            })
            .collect();
        let stored = |e| match e {
            StoreError::Unstorable(why) => unstorable(why, "/recipients"),
            e => unavailable(e),
        };
        let created = match resume {
            false => {
                self.store.put_fresh_batch_messages(&messages).await.map_err(stored)?;
                messages.iter().map(|_| Created::Created).collect()
            }
            true => self
                .store
                .complete_batch_messages(&messages, now)
                .await
                .map_err(stored)?,
        };
        let jobs: Vec<Job> = messages
            .iter()
            .zip(created)
            .filter_map(|(m, c)| match c {
                Created::Created => Some(Job::of(m)),
                Created::Exists(old) if old.status_rank == 0 => Some(Job::of(&old)),
                _ => None,
            })
            .collect();
        let delay = match when {
            When::Delay(secs) => secs,
            _ => 0,
        };
        self.queue.send_all(&jobs, delay).await.map_err(|e| {
            tracing::error!(error = %e, batch = %record.batch_id, "batch enqueue failed");
            Problem::unavailable("could not queue every message; retry with the same Idempotency-Key")
        })
    }

    /// `GET /v1/batches/{id}`: the batch's counts by status and its messages, a page at
    /// a time (`?cursor=` from `next_cursor`).
    pub(super) async fn batch_status(&self, req: &Request, id: &str) -> Result<Response<Body>, Problem> {
        let (_, app) = self
            .authenticate(req, body_bytes(req), header(req, super::ingest::IDEMPOTENCY_KEY))
            .await?;
        let not_found = || Problem::not_found("no such batch");
        super::ulid_id(id, "batch")?;
        let cursor = match query_param(req, "cursor") {
            None => 0,
            Some(c) => c
                .parse::<usize>()
                .ok()
                .filter(|c| *c <= batch::MAX_RECIPIENTS)
                .ok_or_else(|| {
                    Problem::new(400, "bad-cursor", "Bad Request")
                        .errors(vec![FieldError::new("query:cursor", "not a cursor this API gave")])
                })?,
        };
        let (record, entries) = self
            .store
            .batch(id)
            .await
            .map_err(unavailable)?
            .filter(|(r, _)| r.app == app.key)
            .ok_or_else(not_found)?;
        let mut counts = serde_json::Map::new();
        for e in &entries {
            let n = counts.entry(e.status.as_str()).or_insert(json!(0));
            *n = json!(n.as_u64().unwrap_or(0) + 1);
        }
        let waiting = entries
            .iter()
            .any(|e| matches!(e.status, Status::Accepted | Status::Scheduled | Status::Sending));
        let page: Vec<Value> = entries
            .iter()
            .filter(|e| e.index as usize >= cursor)
            .take(PAGE)
            .map(|e| json!({"index": e.index, "id": e.id, "status": e.status}))
            .collect();
        let next = entries
            .iter()
            .filter(|e| e.index as usize >= cursor)
            .nth(PAGE)
            .map(|e| e.index.to_string());
        Ok(json(
            200,
            &json!({
                "id": record.batch_id,
                "status": if waiting || record.queued != Some(true) { "accepted" } else { "completed" },
                "channel": record.channel,
                "total": record.total,
                "accepted": record.accepted,
                "rejected": record.rejected_count,
                "counts": counts,
                "messages": page,
                "next_cursor": next,
                "created_at": crate::clock::rfc3339(record.created_at),
            }),
        ))
    }
}

/// The rejections a batch's record keeps for replays: the first [`KEPT_REJECTIONS`],
/// and no more than 64 KB of them (their pointers and details echo the client's input),
/// so the record can always be stored.
fn kept_rejections(rejected: &[Rejection]) -> String {
    const MAX_BYTES: usize = 64 * 1024;
    let mut kept = Vec::new();
    let mut size = 2;
    for r in rejected.iter().take(KEPT_REJECTIONS) {
        let one = serde_json::to_string(r).unwrap_or_default();
        if size + one.len() + 1 > MAX_BYTES {
            break;
        }
        size += one.len() + 1;
        kept.push(one);
    }
    format!("[{}]", kept.join(","))
}

pub(super) fn query_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn accepted_batch(record: &BatchRecord, rejected: &[Rejection], replayed: bool) -> Response<Body> {
    let mut builder = Response::builder()
        .status(202)
        .header("content-type", "application/json")
        .header("location", format!("/v1/batches/{}", record.batch_id));
    if replayed {
        builder = builder.header(IDEMPOTENT_REPLAYED, "true");
    }
    let body = json!({
        "id": record.batch_id,
        "status": "accepted",
        "accepted": record.accepted,
        "rejected": rejected,
    });
    builder
        .body(Body::Text(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}
