//! Status events to the calling app: what an event is, which status change of a message
//! becomes one, which endpoints receive it, and when a failed delivery is tried again.
//!
//! Events are derived from the message records' own writes (their DynamoDB stream), not
//! from a second call after each write: a function that crashes right after a status
//! write still yields its event, because the write itself is the event's source.
//! No I/O here: the stream handler and the delivery handler act on these decisions.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::batch::BatchRecord;
use crate::message::{Channel, HistoryEntry, Status};

/// Every event type an endpoint may subscribe to (`sending` is internal: no event).
pub const EVENT_TYPES: [&str; 10] = [
    "message.accepted",
    "message.scheduled",
    "message.sent",
    "message.delivered",
    "message.failed",
    "message.unknown",
    "message.cancelled",
    "message.suppressed",
    "endpoint.disabled",
    "batch.completed",
];

/// An endpoint whose deliveries have failed for this long (every attempt since its last
/// success) is disabled, with an `endpoint.disabled` notice to the app's other endpoints.
pub const DISABLE_AFTER_FAILING_MS: i64 = 5 * 24 * 3_600 * 1_000;

/// Delivery attempts' delays after the previous one (Svix's schedule: about 27.6 hours
/// in all); attempt `n` (0-based) waits `RETRY_SCHEDULE_SECS[n]` after attempt `n - 1`.
pub const RETRY_SCHEDULE_SECS: [u64; 8] = [0, 5, 300, 1_800, 7_200, 18_000, 36_000, 36_000];

/// Most endpoints one app may hold: each event costs one SQS message per subscribed
/// endpoint, and the list is read whole per event.
pub const MAX_ENDPOINTS: usize = 20;

/// How long a rotated-out secret still signs (24 h), so receivers can switch over.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3_600 * 1_000;

/// The part of a message record an event is made from. Deliberately without `to` and
/// `content`: an event can never carry the recipient or the message, whatever the record
/// holds (serde ignores the other attributes).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusImage {
    pub pk: String,
    pub id: String,
    pub app: String,
    pub channel: Channel,
    pub status: Status,
    pub updated_at: i64,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// When a `scheduled` record is due (the sweep's backstop sorts by it).
    #[serde(default)]
    pub send_at: Option<i64>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// One status event, as posted (`type`, `timestamp`, `data`) plus its id (`webhook-id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Deterministic (`evt_{message id}_{seq}`): a stream record read twice yields the
    /// same id, which Standard Webhooks receivers de-duplicate on.
    pub id: String,
    pub app: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The status write's time, Unix ms.
    pub at: i64,
    pub data: Value,
}

impl Event {
    /// The body posted to endpoints: `{"type", "timestamp", "data"}`.
    pub fn payload(&self) -> Value {
        json!({"type": self.kind, "timestamp": crate::clock::rfc3339(self.at), "data": self.data})
    }
}

/// The event a status write makes, if any: a message record whose status changed (or
/// that was just created), except to `sending`. `old` is the record before the write.
/// `seq` is the record's history length: it grows with every status write, so
/// receivers can order a message's events whatever order they arrive in.
pub fn from_change(old: Option<&StatusImage>, new: &StatusImage) -> Option<Event> {
    if new.status == Status::Sending || old.is_some_and(|o| o.status == new.status && o.id == new.id) {
        return None;
    }
    let seq = new.history.len().max(1);
    let mut data = json!({
        "id": new.id,
        "status": new.status,
        "channel": new.channel,
        "provider": new.provider,
        "reason": new.reason,
        "seq": seq,
    });
    if let Some(key) = &new.key {
        data["key"] = json!(key);
    }
    Some(Event {
        id: format!("evt_{}_{seq}", new.id),
        app: new.app.clone(),
        kind: format!("message.{}", new.status.as_str()),
        at: new.updated_at,
        data,
    })
}

/// The `batch.completed` event a write of a batch's record makes: the one write that set
/// its `completed_at` (conditional, made once by the sweep). A stream record read twice
/// makes the same event id.
pub fn batch_completed(old: Option<&BatchRecord>, new: &BatchRecord) -> Option<Event> {
    let at = new.completed_at?;
    if old.is_some_and(|o| o.completed_at.is_some()) {
        return None;
    }
    Some(Event {
        id: format!("evt_{}_completed", new.batch_id),
        app: new.app.clone(),
        kind: "batch.completed".into(),
        at,
        data: json!({
            "id": new.batch_id,
            "channel": new.channel,
            "total": new.total,
            "accepted": new.accepted,
            "rejected": new.rejected_count,
            "counts": new.counts.clone().unwrap_or_default(),
        }),
    })
}

/// What an endpoint may opt in to receive in its message events.
pub const INCLUDABLE: [&str; 2] = ["recipient", "content"];

/// The largest content an event carries (its rendered JSON); larger content is left
/// out (`"content": null, "content_omitted": "too large"`), so a job always fits an SQS
/// message (256 KB) beside its recipient and status.
pub const MAX_EVENT_CONTENT_BYTES: usize = 128 * 1024;

/// The part of a message record only opted-in endpoints see.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PrivateImage {
    pub to: String,
    pub content: crate::message::Content,
}

/// The event body `endpoint` receives: `ev`'s, plus the recipient and content of the
/// message (`private`) where the endpoint opted in to them ([`Endpoint::include`]).
pub fn payload_for(ev: &Event, endpoint: &Endpoint, private: Option<&PrivateImage>) -> Value {
    let mut body = ev.payload();
    let Some(private) = private.filter(|_| !endpoint.include.is_empty()) else {
        return body;
    };
    if endpoint.include.iter().any(|i| i == "recipient") {
        body["data"]["recipient"] = json!(private.to);
    }
    if endpoint.include.iter().any(|i| i == "content") {
        let content = serde_json::to_value(&private.content).unwrap_or(Value::Null);
        if content.to_string().len() <= MAX_EVENT_CONTENT_BYTES {
            body["data"]["content"] = content;
        } else {
            body["data"]["content"] = Value::Null;
            body["data"]["content_omitted"] = json!("too large");
        }
    }
    body
}

/// Checks an endpoint's `include` (any of [`INCLUDABLE`], no repeats kept).
pub fn check_include(include: &Value) -> Result<Vec<String>, String> {
    let Some(list) = include.as_array() else {
        return Err(format!("must be an array of: {}", INCLUDABLE.join(", ")));
    };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for i in list {
        match i.as_str() {
            Some(f) if INCLUDABLE.contains(&f) => {
                if !out.iter().any(|o| o == f) {
                    out.push(f.to_string());
                }
            }
            _ => return Err(format!("unknown field {i}; known: {}", INCLUDABLE.join(", "))),
        }
    }
    Ok(out)
}

/// One signing secret of an endpoint; a rotated-out one carries when it stops signing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

/// An app's event endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub app: String,
    pub url: String,
    /// Subscribed types; empty means all.
    #[serde(default)]
    pub events: Vec<String>,
    /// What its message events carry beyond the status ([`INCLUDABLE`]: `recipient`,
    /// `content`): nothing unless the app opts in for this endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Newest first.
    pub secrets: Vec<Secret>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// When its deliveries started failing (cleared by a success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Endpoint {
    /// Whether this endpoint receives events of type `kind` now.
    pub fn wants(&self, kind: &str) -> bool {
        !self.disabled && (self.events.is_empty() || self.events.iter().any(|e| e == kind))
    }

    /// The secrets that sign at `now_ms`: the current one and any rotated out less than
    /// [`ROTATION_OVERLAP_MS`] ago.
    pub fn active_secrets(&self, now_ms: i64) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.until.is_none_or(|u| u > now_ms))
            .map(|s| s.secret.as_str())
            .collect()
    }

    /// The public view (never a secret).
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "include": self.include,
            "description": self.description,
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "failing_since": self.failing_since.map(crate::clock::rfc3339),
            "created_at": crate::clock::rfc3339(self.created_at),
            "updated_at": crate::clock::rfc3339(self.updated_at),
        })
    }
}

/// A fresh `whsec_…` secret: 24 random bytes from the OS, base64 (Standard Webhooks'
/// format, as Svix issues them).
pub fn new_secret() -> Result<String, getrandom::Error> {
    use base64::Engine;
    let mut key = [0u8; 24];
    getrandom::fill(&mut key)?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

/// The queued job for one event to one endpoint. It carries the exact body, so every
/// attempt posts the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub app: String,
    pub endpoint: String,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub body: String,
}

/// What a failed attempt does to its endpoint's failure streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streak {
    /// The first failure since a success: remember when it began.
    Begins,
    Continues,
    /// Failing for [`DISABLE_AFTER_FAILING_MS`]: disable the endpoint.
    Disable,
}

/// The failure streak after a failed attempt at `now_ms`.
pub fn streak(failing_since: Option<i64>, now_ms: i64) -> Streak {
    match failing_since {
        None => Streak::Begins,
        Some(since) if now_ms.saturating_sub(since) >= DISABLE_AFTER_FAILING_MS => Streak::Disable,
        Some(_) => Streak::Continues,
    }
}

/// The `endpoint.disabled` notice, for the app's other endpoints.
pub fn disabled_notice(endpoint: &Endpoint, reason: &str, now_ms: i64) -> Event {
    Event {
        id: format!("evt_{}_disabled_{now_ms}", endpoint.id),
        app: endpoint.app.clone(),
        kind: "endpoint.disabled".into(),
        at: now_ms,
        data: json!({
            "endpoint_id": endpoint.id,
            "reason": reason,
            "failing_since": endpoint.failing_since.map(crate::clock::rfc3339),
        }),
    }
}

/// One delivery attempt, as the per-endpoint log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// 1-based.
    pub attempt: u32,
    pub at: i64,
    /// The HTTP status answered, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `delivered`, `retrying`, `disabled`, `given_up`.
    pub outcome: String,
    /// Why it failed, without the response body (it is the receiver's data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<i64>,
}

impl Attempt {
    pub fn view(&self) -> Value {
        json!({
            "event_id": self.event_id,
            "type": self.kind,
            "attempt": self.attempt,
            "at": crate::clock::rfc3339(self.at),
            "status": self.status,
            "outcome": self.outcome,
            "error": self.error,
            "next_attempt_at": self.next_attempt_at.map(crate::clock::rfc3339),
        })
    }
}

/// What to do after an attempt answered (or failed to reach the endpoint with) `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 410 Gone: the receiver asks to stop; the endpoint is disabled.
    Disable,
    /// Try again after this many seconds.
    RetryAfter(u64),
    /// The schedule is spent.
    GiveUp,
}

/// The verdict on attempt `attempt` (0-based): 2xx delivers, 410 disables, anything else
/// (other statuses, redirects, no answer: `None`) waits for the next slot of
/// [`RETRY_SCHEDULE_SECS`], or gives up when none is left.
pub fn verdict(status: Option<u16>, attempt: usize) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        Some(410) => Verdict::Disable,
        _ => match RETRY_SCHEDULE_SECS.get(attempt + 1) {
            Some(&delay) => Verdict::RetryAfter(delay),
            None => Verdict::GiveUp,
        },
    }
}

/// Problems with an endpoint as a client describes it, each naming its field.
pub fn check_events(events: &Value) -> Result<Vec<String>, String> {
    let Some(list) = events.as_array() else {
        return Err("must be an array of event types".into());
    };
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        match e.as_str() {
            Some(t) if EVENT_TYPES.contains(&t) => {
                if !out.iter().any(|o| o == t) {
                    out.push(t.to_string());
                }
            }
            _ => return Err(format!("unknown event type {e}; known: {}", EVENT_TYPES.join(", "))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_and_content_go_only_to_endpoints_that_opt_in() {
        let ev = from_change(None, &image(Status::Delivered, 3)).unwrap();
        let private = PrivateImage {
            to: "+8613800138000".into(),
            content: crate::message::Content {
                text: Some("your code is 1234".into()),
                ..Default::default()
            },
        };
        let endpoint = |include: &[&str]| Endpoint {
            id: "ep_1".into(),
            app: "app".into(),
            url: "https://example.com/h".into(),
            events: Vec::new(),
            include: include.iter().map(|s| s.to_string()).collect(),
            description: None,
            secrets: Vec::new(),
            disabled: false,
            disabled_reason: None,
            failing_since: None,
            created_at: 0,
            updated_at: 0,
        };
        let plain = payload_for(&ev, &endpoint(&[]), Some(&private));
        assert_eq!(plain, ev.payload(), "no opt-in: the status only");
        let data = |include: &[&str]| payload_for(&ev, &endpoint(include), Some(&private))["data"].clone();
        assert_eq!(data(&["recipient"])["recipient"], "+8613800138000");
        assert!(data(&["recipient"]).get("content").is_none());
        assert_eq!(data(&["content"])["content"], json!({"text": "your code is 1234"}));
        assert!(data(&["content"]).get("recipient").is_none());
        // Not a message event (a notice, a batch): nothing to add.
        assert_eq!(payload_for(&ev, &endpoint(&["recipient"]), None), ev.payload());
        let huge = PrivateImage {
            content: crate::message::Content {
                text: Some("x".repeat(MAX_EVENT_CONTENT_BYTES)),
                ..Default::default()
            },
            ..private.clone()
        };
        let d = payload_for(&ev, &endpoint(&["content"]), Some(&huge))["data"].clone();
        assert_eq!(
            (d["content"].clone(), d["content_omitted"].clone()),
            (Value::Null, json!("too large"))
        );
        assert_eq!(
            check_include(&json!(["content", "recipient", "content"])).unwrap(),
            ["content", "recipient"]
        );
        assert!(check_include(&json!(["to"])).is_err() && check_include(&json!("content")).is_err());
    }

    #[test]
    fn a_batch_completes_with_one_event_from_the_write_that_completed_it() {
        let open: BatchRecord = serde_json::from_value(json!({
            "pk": "app_bi_x", "batch_id": "01B", "batch_index": -1, "app": "app", "channel": "sms",
            "total": 3, "accepted": 2, "rejected": "[]", "rejected_count": 1, "body_hash": "h",
            "created_at": 5, "expires_at": 9, "queued": true
        }))
        .unwrap();
        let done = BatchRecord {
            completed_at: Some(1_767_225_600_000),
            counts: Some([("delivered".to_string(), 2)].into()),
            ..open.clone()
        };
        assert_eq!(batch_completed(None, &open), None);
        assert_eq!(batch_completed(Some(&open), &open), None);
        let ev = batch_completed(Some(&open), &done).unwrap();
        assert_eq!(
            (ev.id.as_str(), ev.kind.as_str(), ev.app.as_str()),
            ("evt_01B_completed", "batch.completed", "app")
        );
        assert_eq!(
            ev.payload(),
            json!({"type": "batch.completed", "timestamp": "2026-01-01T00:00:00Z",
                   "data": {"id": "01B", "channel": "sms", "total": 3, "accepted": 2, "rejected": 1,
                            "counts": {"delivered": 2}}})
        );
        assert_eq!(batch_completed(Some(&done), &done), None, "a later write of it: none");
    }

    fn image(status: Status, history: usize) -> StatusImage {
        StatusImage {
            pk: "app_s_x".into(),
            id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".into(),
            app: "app".into(),
            channel: Channel::Sms,
            status,
            updated_at: 1_700_000_000_000,
            provider: Some("aliyun".into()),
            reason: None,
            key: Some("otp".into()),
            send_at: None,
            history: (0..history)
                .map(|i| HistoryEntry {
                    at: i as i64,
                    status,
                    note: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_new_record_is_accepted_and_each_status_change_is_one_event() {
        let accepted = image(Status::Accepted, 1);
        let e = from_change(None, &accepted).unwrap();
        assert_eq!(e.kind, "message.accepted");
        assert_eq!(e.data["seq"], 1);
        assert_eq!(e.data["key"], "otp");
        let sending = image(Status::Sending, 2);
        assert_eq!(from_change(Some(&accepted), &sending), None, "sending is internal");
        let sent = image(Status::Sent, 3);
        let e = from_change(Some(&sending), &sent).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.id.as_str()),
            ("message.sent", "evt_01HZZZZZZZZZZZZZZZZZZZZZZZ_3")
        );
        assert_eq!(
            from_change(Some(&sent), &image(Status::Sent, 4)),
            None,
            "no status change"
        );
        let payload = e.payload();
        assert_eq!(payload["timestamp"], "2023-11-14T22:13:20Z");
        assert!(payload["data"].get("to").is_none() && payload["data"].get("content").is_none());
    }

    #[test]
    fn the_schedule_retries_failures_and_stops_after_eight_attempts() {
        assert_eq!(verdict(Some(204), 0), Verdict::Delivered);
        assert_eq!(verdict(Some(410), 3), Verdict::Disable);
        assert_eq!(verdict(Some(500), 0), Verdict::RetryAfter(5));
        assert_eq!(
            verdict(Some(302), 1),
            Verdict::RetryAfter(300),
            "redirects are not followed"
        );
        assert_eq!(verdict(None, 6), Verdict::RetryAfter(36_000));
        assert_eq!(verdict(Some(500), 7), Verdict::GiveUp);
    }

    #[test]
    fn five_days_of_failures_disable() {
        assert_eq!(streak(None, 10), Streak::Begins);
        assert_eq!(streak(Some(10), 10 + DISABLE_AFTER_FAILING_MS - 1), Streak::Continues);
        assert_eq!(streak(Some(10), 10 + DISABLE_AFTER_FAILING_MS), Streak::Disable);
    }

    #[test]
    fn subscriptions_and_rotation_overlap() {
        let mut ep = Endpoint {
            id: "ep_1".into(),
            app: "app".into(),
            url: "https://example.com/h".into(),
            events: vec!["message.delivered".into()],
            include: Vec::new(),
            description: None,
            secrets: vec![
                Secret {
                    secret: "new".into(),
                    until: None,
                },
                Secret {
                    secret: "old".into(),
                    until: Some(100),
                },
            ],
            disabled: false,
            disabled_reason: None,
            failing_since: None,
            created_at: 0,
            updated_at: 0,
        };
        assert!(ep.wants("message.delivered") && !ep.wants("message.sent"));
        assert_eq!(ep.active_secrets(99), ["new", "old"]);
        assert_eq!(ep.active_secrets(100), ["new"]);
        ep.disabled = true;
        assert!(!ep.wants("message.delivered"));
        assert!(check_events(&json!(["message.sent", "message.sent"])).is_ok_and(|v| v.len() == 1));
        assert!(check_events(&json!(["message.bogus"])).is_err());
        assert!(new_secret().unwrap().starts_with("whsec_"));
    }
}
