//! A batch send (`POST /v1/messages/batch`) as a client writes it: one template or
//! content for up to [`MAX_RECIPIENTS`] recipients, each with its own `to` and optional
//! `data` merged over the batch's. Pure: it splits the batch into the single-message
//! bodies that [`crate::request::validate`] checks, and tells which of their errors are
//! the batch's own (a 422 for the whole request) and which one recipient's (reported by
//! index, the others still sent, unless the batch is `atomic`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use std::collections::BTreeMap;

use crate::message::{Channel, Status};
use crate::problem::FieldError;

/// The most recipients one batch may name.
pub const MAX_RECIPIENTS: usize = 10_000;

const FIELDS: [&str; 8] = [
    "channel",
    "template",
    "data",
    "content",
    "key",
    "send_at",
    "atomic",
    "recipients",
];
/// What one message of the batch takes from the batch itself.
const SHARED: [&str; 5] = ["channel", "template", "content", "key", "send_at"];

/// A batch split into its recipients' single-message bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Refuse the whole batch if any recipient is invalid.
    pub atomic: bool,
    /// Per recipient: its single-message body, or why it cannot be one.
    pub items: Vec<Result<Value, Vec<FieldError>>>,
}

/// One recipient refused, by its index in the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub index: u32,
    pub errors: Vec<FieldError>,
}

/// How many rejections a batch's record keeps (for the answer to an idempotent retry);
/// the first answer lists them all.
pub const KEPT_REJECTIONS: usize = 500;

/// The stored record of a batch (one item beside its messages, `batch_index` -1 in the
/// batch index so that one query finds the record and every message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub pk: String,
    pub batch_id: String,
    /// Always -1: sorts before the messages in the batch index.
    pub batch_index: i64,
    pub app: String,
    pub channel: Channel,
    pub total: u32,
    pub accepted: u32,
    /// The first [`KEPT_REJECTIONS`] rejections, as JSON (kept out of DynamoDB's types).
    pub rejected: String,
    pub rejected_count: u32,
    pub body_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Every accepted recipient's record is written and its job queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<bool>,
    /// When the sweep found every message of the batch settled (Unix ms): written once,
    /// and the write itself is the source of the `batch.completed` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// The messages per final status, as counted when it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<BTreeMap<String, u32>>,
}

impl BatchRecord {
    pub fn rejections(&self) -> Vec<Rejection> {
        serde_json::from_str(&self.rejected).unwrap_or_default()
    }

    /// Waiting for its messages to settle: all written and queued, not yet completed.
    pub fn open(&self) -> bool {
        self.queued == Some(true) && self.completed_at.is_none()
    }
}

/// Whether a message in `status` is settled for its batch: terminal (`delivered`,
/// `failed`, `cancelled`), or `unknown` (nothing more will happen to it unless a late
/// receipt comes; a batch would otherwise never complete).
pub fn settled(status: Status) -> bool {
    status.is_terminal() || status == Status::Unknown
}

/// The counts per status of a batch whose every message is settled, else `None`. The
/// batch index may lag the records (it is eventually consistent): a batch whose index
/// lists fewer messages than it accepted is not complete yet.
pub fn completion(record: &BatchRecord, statuses: &[Status]) -> Option<BTreeMap<String, u32>> {
    if !record.open() || statuses.len() < record.accepted as usize || !statuses.iter().all(|s| settled(*s)) {
        return None;
    }
    let mut counts = BTreeMap::new();
    for s in statuses {
        *counts.entry(s.as_str().to_string()).or_insert(0) += 1;
    }
    Some(counts)
}

/// The key of recipient `index`'s message record in the batch `batch_pk`.
pub fn message_pk(batch_pk: &str, index: usize) -> String {
    format!("{batch_pk}_{index}")
}

/// Splits a batch body; `Err` holds the batch's own errors.
pub fn split(value: &Value) -> Result<Split, Vec<FieldError>> {
    let Some(obj) = value.as_object() else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    let mut errors: Vec<FieldError> = obj
        .keys()
        .filter(|k| !FIELDS.contains(&k.as_str()))
        .map(|k| FieldError::new(format!("/{}", escape(k)), "unknown field"))
        .collect();
    let atomic = match obj.get("atomic") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new("/atomic", "must be true or false"));
            false
        }
    };
    let batch_data = match obj.get("data") {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            errors.push(FieldError::new("/data", "must be an object"));
            None
        }
    };
    let recipients = match obj.get("recipients") {
        Some(Value::Array(r)) if !r.is_empty() && r.len() <= MAX_RECIPIENTS => r,
        Some(Value::Array(_)) => {
            errors.push(FieldError::new(
                "/recipients",
                format!("must hold 1 to {MAX_RECIPIENTS} recipients"),
            ));
            return Err(errors);
        }
        _ => {
            errors.push(FieldError::new(
                "/recipients",
                "is required: an array of {\"to\", \"data\"?}",
            ));
            return Err(errors);
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let templated = obj.contains_key("template");
    let items = recipients
        .iter()
        .enumerate()
        .map(|(i, r)| single(obj, batch_data, templated, i, r))
        .collect();
    Ok(Split { atomic, items })
}

/// Recipient `i`'s single-message body.
fn single(
    batch: &Map<String, Value>,
    batch_data: Option<&Map<String, Value>>,
    templated: bool,
    i: usize,
    r: &Value,
) -> Result<Value, Vec<FieldError>> {
    let at = |f: &str| format!("/recipients/{i}{f}");
    let Some(r) = r.as_object() else {
        return Err(vec![FieldError::new(at(""), "must be an object {\"to\", \"data\"?}")]);
    };
    let mut errors: Vec<FieldError> = r
        .keys()
        .filter(|k| !matches!(k.as_str(), "to" | "data" | "user"))
        .map(|k| FieldError::new(at(&format!("/{}", escape(k))), "unknown field"))
        .collect();
    if r.contains_key("user") {
        errors.push(FieldError::new(
            at("/user"),
            "sends by user are not available yet; give `to`",
        ));
    }
    let own = match r.get("data") {
        None => None,
        Some(Value::Object(m)) if templated => Some(m),
        Some(Value::Object(_)) => {
            errors.push(FieldError::new(at("/data"), "only allowed with template"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(at("/data"), "must be an object"));
            None
        }
    };
    if !r.contains_key("to") && !r.contains_key("user") {
        errors.push(FieldError::new(at("/to"), "is required"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut message: Map<String, Value> = SHARED
        .iter()
        .filter_map(|k| batch.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    message.insert("to".into(), r.get("to").cloned().unwrap_or(Value::Null));
    if templated {
        let mut data = batch_data.cloned().unwrap_or_default();
        data.extend(own.cloned().unwrap_or_default());
        message.insert("data".into(), Value::Object(data));
    }
    Ok(Value::Object(message))
}

/// Where an error found in recipient `i`'s single-message body belongs: the recipient's
/// own (its `to`, the data it gave or is missing) as `Some(pointer under
/// /recipients/i)`, or `None` for the batch's own fields.
pub fn recipient_pointer(batch: &Value, i: usize, pointer: &str) -> Option<String> {
    if pointer == "/to" || pointer.starts_with("/to/") {
        return Some(format!("/recipients/{i}{pointer}"));
    }
    let key = pointer.strip_prefix("/data/")?.split('/').next()?;
    let in_batch = batch.get("data").and_then(|d| d.get(unescape(key))).is_some();
    let in_own = batch
        .get("recipients")
        .and_then(|r| r.get(i))
        .and_then(|r| r.get("data"))
        .and_then(|d| d.get(unescape(key)))
        .is_some();
    // A bad value the batch itself gave is the batch's error, unless this recipient's
    // own data replaced it; a missing variable is the recipient's to give.
    (in_own || !in_batch).then(|| format!("/recipients/{i}{pointer}"))
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn unescape(key: &str) -> String {
    key.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(accepted: u32) -> BatchRecord {
        BatchRecord {
            pk: "app_bi_x".into(),
            batch_id: "01B".into(),
            batch_index: -1,
            app: "app".into(),
            channel: Channel::Sms,
            total: accepted + 1,
            accepted,
            rejected: "[]".into(),
            rejected_count: 1,
            body_hash: "h".into(),
            created_at: 5,
            expires_at: 9,
            queued: Some(true),
            completed_at: None,
            counts: None,
        }
    }

    #[test]
    fn a_batch_completes_when_every_message_it_accepted_is_settled() {
        use Status::*;
        let counts = |pairs: &[(&str, u32)]| -> BTreeMap<String, u32> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let not_queued = BatchRecord {
            queued: None,
            ..record(2)
        };
        let done = BatchRecord {
            completed_at: Some(7),
            ..record(2)
        };
        type Row = (&'static str, BatchRecord, Vec<Status>, Option<BTreeMap<String, u32>>);
        let rows: [Row; 6] = [
            (
                "all settled",
                record(3),
                vec![Delivered, Failed, Unknown],
                Some(counts(&[("delivered", 1), ("failed", 1), ("unknown", 1)])),
            ),
            ("one still sent", record(2), vec![Delivered, Sent], None),
            (
                "the index lags the records",
                record(3),
                vec![Delivered, Cancelled],
                None,
            ),
            (
                "not all written and queued yet",
                not_queued,
                vec![Delivered, Delivered],
                None,
            ),
            ("completed already", done, vec![Delivered, Delivered], None),
            ("one accepted", record(2), vec![Delivered, Accepted], None),
        ];
        for (name, r, statuses, want) in rows {
            assert_eq!(completion(&r, &statuses), want, "{name}");
        }
    }

    #[test]
    fn a_batch_splits_into_single_messages_with_merged_data() {
        let b = json!({"channel": "sms", "template": "t", "data": {"a": 1, "b": 2}, "key": "k",
                       "recipients": [{"to": "+1", "data": {"b": 3}}, {"to": "+2"}]});
        let s = split(&b).unwrap();
        assert!(!s.atomic);
        assert_eq!(
            s.items[0].as_ref().unwrap(),
            &json!({"channel": "sms", "template": "t", "key": "k", "to": "+1", "data": {"a": 1, "b": 3}})
        );
        assert_eq!(s.items[1].as_ref().unwrap()["data"], json!({"a": 1, "b": 2}));
    }

    #[test]
    fn batch_errors_and_recipient_errors_are_told_apart() {
        for (body, want) in [
            (json!([]), ""),
            (json!({"channel": "sms", "recipients": []}), "/recipients"),
            (json!({"channel": "sms"}), "/recipients"),
            (
                json!({"channel": "sms", "recipients": [{"to": "x"}], "extra": 1}),
                "/extra",
            ),
            (
                json!({"channel": "sms", "recipients": [{"to": "x"}], "atomic": "yes"}),
                "/atomic",
            ),
        ] {
            assert_eq!(split(&body).unwrap_err()[0].pointer, want, "{body}");
        }
        let too_many = json!({"channel": "sms", "recipients": vec![json!({"to": "x"}); MAX_RECIPIENTS + 1]});
        assert_eq!(split(&too_many).unwrap_err()[0].pointer, "/recipients");

        let b = json!({"channel": "sms", "content": {"text": "x"},
                       "recipients": [5, {"user": "u1"}, {"to": "x", "data": {}}, {}, {"to": "x", "cc": 1}]});
        let s = split(&b).unwrap();
        let first = |i: usize| s.items[i].as_ref().unwrap_err()[0].pointer.clone();
        assert_eq!(first(0), "/recipients/0");
        assert_eq!(first(1), "/recipients/1/user");
        assert_eq!(first(2), "/recipients/2/data");
        assert_eq!(first(3), "/recipients/3/to");
        assert_eq!(first(4), "/recipients/4/cc");
    }

    #[test]
    fn pointers_go_to_whoever_gave_the_value() {
        let b = json!({"template": "t", "data": {"a": 1}, "recipients": [{"to": "x", "data": {"b": 1}}]});
        assert_eq!(recipient_pointer(&b, 0, "/to").as_deref(), Some("/recipients/0/to"));
        assert_eq!(
            recipient_pointer(&b, 0, "/data/b").as_deref(),
            Some("/recipients/0/data/b")
        );
        assert_eq!(
            recipient_pointer(&b, 0, "/data/missing").as_deref(),
            Some("/recipients/0/data/missing")
        );
        assert_eq!(recipient_pointer(&b, 0, "/data/a"), None);
        assert_eq!(recipient_pointer(&b, 0, "/channel"), None);
        assert_eq!(recipient_pointer(&b, 0, "/content/text"), None);
    }
}
