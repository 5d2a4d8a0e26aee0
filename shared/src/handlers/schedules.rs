//! `POST /v1/schedules`, `GET /v1/schedules`, `GET` and `DELETE /v1/schedules/{id}`:
//! recurring sends. A schedule is an EventBridge Scheduler cron or rate expression in an
//! IANA time zone, with an optional start and end, and one message, validated and
//! rendered here exactly as `POST /v1/messages` does at creation. Scheduler fires it into
//! the send queue with the rendered message as input (nothing of ours runs until the
//! dispatcher does); each firing becomes its own message (see `crate::recurring`).
//!
//! Create: 1 conditional PutItem (the schedule's record: replay and idempotency guard,
//! what `GET` shows) and 1 `CreateSchedule`, plus 1 `GetScheduleGroup` per app per
//! instance and 1 `CreateScheduleGroup` on the app's first schedule. A create needs an
//! `Idempotency-Key` (signed v2): a crash between the two writes is completed by the same
//! request again, which finds the record and creates the schedule if it is missing.

use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::ingest::{unavailable, Ingest, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use super::{body_bytes, header, json};
use crate::auth::SignatureVersion;
use crate::problem::{FieldError, Problem};
use crate::recurring::{self, Occurrence, OccurrenceMessage, ScheduleRecord};
use crate::request;
use crate::scheduler::{CreateError, Recurring, Scheduler};
use crate::store::StoreError;

/// The fields of a create request.
const FIELDS: [&str; 5] = ["expression", "timezone", "start", "end", "message"];
/// Schedules per page of `GET /v1/schedules`.
const PAGE: i32 = 100;

impl Ingest {
    /// `/v1/schedules…` (`rest` is what follows the prefix).
    pub(super) async fn schedules(&self, req: &Request, rest: &str) -> Result<Response<Body>, Problem> {
        let Some(scheduler) = &self.scheduler else {
            return Err(Problem::not_found(
                "recurring schedules are not configured in this deployment",
            ));
        };
        let id = rest.strip_prefix('/').filter(|id| !id.is_empty());
        match (req.method().as_str(), id) {
            ("POST", None) => self.create_schedule(req, scheduler).await,
            ("GET", None) => self.list_schedules(req).await,
            ("GET", Some(id)) => {
                let (_, record) = self.own_schedule(req, id).await?;
                Ok(json(200, &record.view((self.clock)())))
            }
            ("DELETE", Some(id)) => self.delete_schedule(req, id, scheduler).await,
            _ => Err(Problem::new(405, "method-not-allowed", "Method Not Allowed")),
        }
    }

    async fn create_schedule(&self, req: &Request, scheduler: &Scheduler) -> Result<Response<Body>, Problem> {
        let (body, idem_key, creds, app) = self.signed_write(req, self.cfg.max_body_bytes, "the body").await?;
        // Without a key, a create that failed between its two writes could only be sent
        // again as a new schedule; with one signed v1 the key could be swapped.
        let Some(idem_key) = idem_key else {
            return Err(Problem::new(400, "idempotency-key-required", "Bad Request")
                .detail("creating a schedule needs an Idempotency-Key, so that a retry completes it instead of creating another")
                .errors(vec![FieldError::new("header:Idempotency-Key", "is required for schedules")]));
        };
        if creds.version == SignatureVersion::V1 {
            return Err(Problem::new(400, "sign-v2", "Bad Request")
                .detail(
                    "a request with an Idempotency-Key creating a schedule must be signed v2 (which covers the key)",
                )
                .errors(vec![FieldError::new("header:X-Signature", "sign v2")]));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Problem::new(400, "malformed-json", "Bad Request").detail(format!("body is not valid JSON: {e}"))
        })?;
        let now = (self.clock)();
        let spec = validate(&value, now).map_err(Problem::unprocessable)?;
        let message = value.get("message").cloned().unwrap_or(Value::Null);
        let request = request::validate(&message, self.cfg.webhook_allow_private)
            .map_err(|errors| Problem::unprocessable(under("/message", errors)))?;
        let rendered = self.render(&request, &app).await.map_err(|mut p| {
            p.errors = under("/message", std::mem::take(&mut p.errors));
            p
        })?;

        let body_hash = hex::encode(Sha256::digest(body));
        let mut record = ScheduleRecord {
            pk: format!("{}_ri_{}", app.key, hex::encode(Sha256::digest(idem_key.as_bytes()))),
            schedule_app: app.key.clone(),
            schedule_id: ulid::Ulid::new().to_string(),
            schedule_group: scheduler.group_of(&app.key),
            expression: spec.expression,
            timezone: spec.timezone,
            start: spec.start,
            end: spec.end,
            channel: request.channel,
            template: rendered.template.clone(),
            body_hash,
            created_at: now,
            deleted_at: None,
            expires_at: None,
        };
        let occurrence = OccurrenceMessage {
            channel: request.channel,
            to: request.to,
            template: rendered.template,
            key: rendered.key,
            content: rendered.content,
            alternates: rendered.alternates,
        };
        let input_of = |id: &str| {
            let input = Occurrence::input(&app.key, id, occurrence.clone())
                .map_err(|e| Problem::new(500, "internal", "Internal Server Error").detail(e.to_string()))?;
            if input.len() > recurring::MAX_INPUT_BYTES {
                let detail = format!(
                    "the rendered message takes {} bytes; a schedule's message may take at most {}",
                    input.len(),
                    recurring::MAX_INPUT_BYTES
                );
                return Err(Problem::new(413, "too-large", "Content Too Large")
                    .detail(detail.clone())
                    .errors(vec![FieldError::new("/message", detail)]));
            }
            Ok(input)
        };
        // Checked before anything is written.
        input_of(&record.schedule_id)?;
        let replayed = match self.store.put_schedule(&record, now).await.map_err(|e| match e {
            StoreError::Unstorable(why) => super::ingest::unstorable(why, "/message"),
            e => unavailable(e),
        })? {
            None => false,
            Some(old) if old.body_hash != record.body_hash || old.schedule_app != app.key => {
                return Err(super::ingest::key_reused());
            }
            Some(old) => {
                record = old;
                true
            }
        };
        if record.deleted_at.is_none() {
            let created = scheduler
                .create_recurring(&Recurring {
                    group: &record.schedule_group,
                    name: &record.schedule_id,
                    expression: &record.expression,
                    timezone: &record.timezone,
                    start: record.start,
                    end: record.end,
                    input: input_of(&record.schedule_id)?,
                })
                .await;
            if let Err(e) = created {
                tracing::error!(error = %e, app = %app.key, schedule = %record.schedule_id, "could not create the schedule");
                if !replayed {
                    if let Err(e) = self.store.delete_schedule_record(&record.pk, &record.schedule_id).await {
                        tracing::error!(error = %e, schedule = %record.schedule_id, "rollback failed");
                    }
                }
                return Err(match e {
                    CreateError::Refused(why) => Problem::unprocessable(vec![FieldError::new("/expression", why)]),
                    CreateError::Unavailable(_) => Problem::unavailable("could not create the schedule; retry"),
                });
            }
        }
        tracing::info!(app = %app.key, schedule = %record.schedule_id, replayed, "schedule created");
        let mut builder = Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("location", format!("/v1/schedules/{}", record.schedule_id));
        if replayed {
            builder = builder.header(IDEMPOTENT_REPLAYED, "true");
        }
        Ok(builder
            .body(Body::Text(record.view(now).to_string()))
            .unwrap_or_else(|_| Response::new(Body::Empty)))
    }

    /// `GET /v1/schedules[?cursor=…]`: the app's schedules, oldest first, 100 a page.
    async fn list_schedules(&self, req: &Request) -> Result<Response<Body>, Problem> {
        let (_, app) = self
            .authenticate(req, body_bytes(req), header(req, IDEMPOTENCY_KEY))
            .await?;
        let cursor = match super::batch::query_param(req, "cursor") {
            None => None,
            Some(c) if c.len() == 26 && ulid::Ulid::from_string(c).is_ok() => Some(c),
            Some(_) => {
                return Err(Problem::new(400, "bad-cursor", "Bad Request")
                    .errors(vec![FieldError::new("query:cursor", "not a cursor this API gave")]))
            }
        };
        let (records, next) = self
            .store
            .list_schedules(&app.key, cursor, PAGE)
            .await
            .map_err(unavailable)?;
        let now = (self.clock)();
        let schedules: Vec<Value> = records.iter().map(|r| r.view(now)).collect();
        Ok(json(200, &json!({"schedules": schedules, "next_cursor": next})))
    }

    /// `DELETE /v1/schedules/{id}`: deletes the Scheduler schedule, then marks the
    /// record deleted (kept `PUSHGATE_RETENTION_DAYS`). Deleting again answers the same
    /// 200. An occurrence already fired (or being retried by Scheduler) is still sent.
    async fn delete_schedule(&self, req: &Request, id: &str, scheduler: &Scheduler) -> Result<Response<Body>, Problem> {
        let (app, record) = self.own_schedule(req, id).await?;
        let now = (self.clock)();
        if record.deleted_at.is_some() {
            return Ok(json(200, &record.view(now)));
        }
        scheduler
            .delete_in(&record.schedule_group, &record.schedule_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, schedule = %record.schedule_id, "could not delete the schedule");
                Problem::unavailable("could not delete the schedule; retry")
            })?;
        let expires_at = now / 1000 + self.cfg.retention_days * 86_400;
        let record = match self
            .store
            .mark_schedule_deleted(&record.pk, &record.schedule_id, now, expires_at)
            .await
            .map_err(unavailable)?
        {
            Ok(new) | Err(new) => new,
        };
        tracing::info!(app = %app, schedule = %record.schedule_id, "schedule deleted");
        Ok(json(200, &record.view(now)))
    }

    /// The schedule `id` of the request's app, after authenticating the request; another
    /// app's schedule is indistinguishable from a missing one.
    async fn own_schedule(&self, req: &Request, id: &str) -> Result<(String, ScheduleRecord), Problem> {
        let (_, app) = self
            .authenticate(req, body_bytes(req), header(req, IDEMPOTENCY_KEY))
            .await?;
        super::ulid_id(id, "schedule")?;
        let record = self
            .store
            .find_schedule(&app.key, id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Problem::not_found("no such schedule"))?;
        Ok((app.key, record))
    }
}

/// A create request's schedule fields, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    expression: String,
    timezone: String,
    start: Option<i64>,
    end: Option<i64>,
}

/// Validates the schedule's own fields at `now`; every fault is named (the message is
/// validated as `POST /v1/messages` validates it, under `/message`).
fn validate(value: &Value, now: i64) -> Result<Spec, Vec<FieldError>> {
    let Some(obj) = value.as_object() else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    let mut errors: Vec<FieldError> = obj
        .keys()
        .filter(|k| !FIELDS.contains(&k.as_str()))
        .map(|k| match k.as_str() {
            "batch" | "recipients" => FieldError::new(format!("/{k}"), "batch schedules are not available yet"),
            _ => FieldError::new(format!("/{}", k.replace('~', "~0").replace('/', "~1")), "unknown field"),
        })
        .collect();
    let expression = match obj.get("expression") {
        Some(Value::String(e)) => match recurring::parse_expression(e) {
            Ok(_) => Some(e.clone()),
            Err(why) => {
                errors.push(FieldError::new("/expression", why));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("/expression", "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("/expression", "is required: cron(...) or rate(...)"));
            None
        }
    };
    let timezone = match obj.get("timezone") {
        None | Some(Value::Null) => Some("UTC".to_string()),
        Some(Value::String(tz)) => {
            let zone = recurring::time_zone(tz);
            if zone.is_none() {
                errors.push(FieldError::new(
                    "/timezone",
                    "not an IANA time zone name (e.g. Asia/Shanghai)",
                ));
            }
            zone
        }
        Some(_) => {
            errors.push(FieldError::new("/timezone", "must be a string"));
            None
        }
    };
    let mut instant = |name: &str| match obj.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => {
            let at = crate::schedule::parse_send_at(t);
            if at.is_none() {
                errors.push(FieldError::new(format!("/{name}"), "must be RFC 3339 with an offset"));
            }
            at
        }
        Some(_) => {
            errors.push(FieldError::new(format!("/{name}"), "must be a string"));
            None
        }
    };
    let start = instant("start");
    let end = instant("end");
    if start.is_some_and(|s| s < now - recurring::START_SLACK_MS) {
        errors.push(FieldError::new("/start", "cannot be more than 5 minutes in the past"));
    }
    if let Some(end) = end {
        if start.is_some_and(|s| end <= s) {
            errors.push(FieldError::new("/end", "must be after start"));
        } else if end <= now {
            errors.push(FieldError::new("/end", "is in the past"));
        }
    }
    match obj.get("message") {
        Some(Value::Object(m)) => {
            if m.contains_key("send_at") {
                errors.push(FieldError::new(
                    "/message/send_at",
                    "the schedule says when; leave send_at out",
                ));
            }
        }
        Some(_) => errors.push(FieldError::new(
            "/message",
            "must be an object: a POST /v1/messages body",
        )),
        None => errors.push(FieldError::new("/message", "is required: a POST /v1/messages body")),
    }
    match (expression, timezone) {
        (Some(expression), Some(timezone)) if errors.is_empty() => Ok(Spec {
            expression,
            timezone,
            start,
            end,
        }),
        _ => Err(errors),
    }
}

/// `errors` of the message as pointers into the create request (`/message/...`).
fn under(prefix: &str, errors: Vec<FieldError>) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|e| match e.pointer.starts_with('/') || e.pointer.is_empty() {
            true => FieldError::new(format!("{prefix}{}", e.pointer), e.detail),
            false => e,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn pointers(v: Value) -> Vec<String> {
        validate(&v, NOW).unwrap_err().into_iter().map(|e| e.pointer).collect()
    }

    #[test]
    fn every_bad_field_is_named() {
        let message = json!({"channel": "webhook", "to": "https://h.example.com", "content": {"text": "t"}});
        let ok = validate(
            &json!({"expression": "cron(0 9 ? * MON *)", "timezone": "Asia/Shanghai", "message": message}),
            NOW,
        )
        .unwrap();
        assert_eq!(ok.timezone, "Asia/Shanghai");
        assert_eq!(
            validate(&json!({"expression": "rate(1 hour)", "message": message}), NOW)
                .unwrap()
                .timezone,
            "UTC"
        );
        let rows: Vec<(Value, Vec<&str>)> = vec![
            (json!({"message": message}), vec!["/expression"]),
            (
                json!({"expression": "cron(0 9 * * MON *)", "message": message}),
                vec!["/expression"],
            ),
            (
                json!({"expression": "rate(1 hour)", "timezone": "Mars/Base", "message": message}),
                vec!["/timezone"],
            ),
            (
                json!({"expression": "rate(1 hour)", "start": "2026-02-01T00:00:00Z", "end": "2026-01-15T00:00:00Z", "message": message}),
                vec!["/end"],
            ),
            (
                json!({"expression": "rate(1 hour)", "start": "2025-12-01T00:00:00Z", "message": message}),
                vec!["/start"],
            ),
            (
                json!({"expression": "rate(1 hour)", "end": "2025-12-01T00:00:00Z", "message": message}),
                vec!["/end"],
            ),
            (
                json!({"expression": "rate(1 hour)", "start": "tomorrow", "message": message}),
                vec!["/start"],
            ),
            (json!({"expression": "rate(1 hour)"}), vec!["/message"]),
            (
                json!({"expression": "rate(1 hour)", "message": {"channel": "webhook", "send_at": "x"}}),
                vec!["/message/send_at"],
            ),
            (
                json!({"expression": "rate(1 hour)", "message": message, "batch": {}}),
                vec!["/batch"],
            ),
            (
                json!({"expression": "rate(1 hour)", "message": message, "x/y": 1}),
                vec!["/x~1y"],
            ),
            (
                json!({"expression": 5, "timezone": 5, "message": message}),
                vec!["/expression", "/timezone"],
            ),
            (json!([]), vec![""]),
        ];
        for (body, want) in rows {
            assert_eq!(pointers(body.clone()), want, "{body}");
        }
    }

    #[test]
    fn message_errors_point_into_the_message() {
        let errors = under(
            "/message",
            vec![FieldError::new("/to", "bad"), FieldError::new("header:X", "h")],
        );
        assert_eq!(errors[0].pointer, "/message/to");
        assert_eq!(errors[1].pointer, "header:X");
    }
}
