//! The endpoints table: an app's event endpoints and their delivery attempts, all in the
//! app's partition (`pk` = app key), so every read and write names the app it is for and
//! another app's endpoint id is simply absent (a 404, never a leak).
//!
//! Sort keys: `ep#{endpoint id}` for an endpoint, `at#{endpoint id}#{ulid}` for one
//! delivery attempt (kept `ATTEMPT_TTL_DAYS`), `ev#{time}#{event id}` for an event kept
//! for replay (`EVENT_TTL_DAYS`). Listing an app's endpoints, an endpoint's recent
//! attempts or the app's events since a time is one Query.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;

use super::{applied, aws_err, is_condition_failure, n, s, StoreError};
use crate::events::{Attempt, Endpoint, Event, Secret};

/// How long delivery attempts stay in the log.
pub const ATTEMPT_TTL_DAYS: i64 = 7;
/// How long events are kept for replay.
pub const EVENT_TTL_DAYS: i64 = 7;

fn ev_sk(at_ms: i64, id: &str) -> String {
    // Zero-padded so the sort key orders by time.
    format!("ev#{:015}#{id}", at_ms.max(0))
}

/// A partial change of an endpoint (PATCH).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    /// What its message events carry beyond the status (`Some(empty)`: nothing).
    pub include: Option<Vec<String>>,
    /// `Some(None)` clears it.
    pub description: Option<Option<String>>,
    /// `Some(false)` re-enables an endpoint disabled by a 410 or by the operator.
    pub disabled: Option<bool>,
}

/// DynamoDB adapter of the endpoints table.
#[derive(Clone, Debug)]
pub struct EndpointStore {
    client: Client,
    table: String,
}

fn ep_sk(id: &str) -> String {
    format!("ep#{id}")
}

fn decode_endpoint(item: HashMap<String, AttributeValue>) -> Result<Endpoint, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EndpointStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Writes a new endpoint unless the app already holds `max` (one Query counting them,
    /// one conditional PutItem). `false` when the app is at its limit.
    pub async fn create(&self, ep: &Endpoint, max: usize) -> Result<bool, StoreError> {
        if self.list(&ep.app).await?.len() >= max {
            return Ok(false);
        }
        let item: serde_dynamo::Item = serde_dynamo::to_item(ep).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut item: HashMap<String, AttributeValue> = item.into();
        item.insert("pk".into(), s(&ep.app));
        item.insert("sk".into(), s(ep_sk(&ep.id)));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(sk)")
            .send()
            .await;
        applied(result)
    }

    /// The app's endpoints (one Query, strongly consistent).
    pub async fn list(&self, app: &str) -> Result<Vec<Endpoint>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :app AND begins_with(sk, :ep)")
            .expression_attribute_values(":app", s(app))
            .expression_attribute_values(":ep", s("ep#"))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_err)?;
        out.items.unwrap_or_default().into_iter().map(decode_endpoint).collect()
    }

    /// One endpoint of the app (one GetItem, strongly consistent).
    pub async fn get(&self, app: &str, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(app))
            .key("sk", s(ep_sk(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_err)?;
        out.item.map(decode_endpoint).transpose()
    }

    /// Applies `patch` if the endpoint exists (one conditional UpdateItem); the endpoint
    /// as it is now, or `None`.
    pub async fn update(
        &self,
        app: &str,
        id: &str,
        patch: &EndpointPatch,
        now_ms: i64,
    ) -> Result<Option<Endpoint>, StoreError> {
        let mut sets = vec!["updated_at = :now".to_string()];
        let mut removes = Vec::new();
        let mut values: HashMap<String, AttributeValue> = [(":now".to_string(), n(now_ms))].into();
        if let Some(url) = &patch.url {
            sets.push("#url = :url".into());
            values.insert(":url".into(), s(url));
        }
        if let Some(events) = &patch.events {
            sets.push("events = :events".into());
            values.insert(":events".into(), AttributeValue::L(events.iter().map(s).collect()));
        }
        match &patch.include {
            Some(include) if !include.is_empty() => {
                sets.push("#include = :include".into());
                values.insert(":include".into(), AttributeValue::L(include.iter().map(s).collect()));
            }
            Some(_) => removes.push("#include"),
            None => {}
        }
        match &patch.description {
            Some(Some(d)) => {
                sets.push("description = :d".into());
                values.insert(":d".into(), s(d));
            }
            Some(None) => removes.push("description"),
            None => {}
        }
        if let Some(disabled) = patch.disabled {
            sets.push("disabled = :dis".into());
            values.insert(":dis".into(), AttributeValue::Bool(disabled));
            if !disabled {
                removes.push("disabled_reason");
                removes.push("failing_since");
            }
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(app))
            .key("sk", s(ep_sk(id)))
            .update_expression(expression)
            .condition_expression("attribute_exists(sk)")
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew);
        if patch.url.is_some() {
            req = req.expression_attribute_names("#url", "url");
        }
        if patch.include.is_some() {
            // INCLUDE is a DynamoDB reserved word.
            req = req.expression_attribute_names("#include", "include");
        }
        match req.send().await {
            Ok(out) => out.attributes.map(decode_endpoint).transpose(),
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(aws_err(e)),
        }
    }

    /// Deletes the endpoint (one conditional DeleteItem); `false` if there was none.
    pub async fn delete(&self, app: &str, id: &str) -> Result<bool, StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(app))
            .key("sk", s(ep_sk(id)))
            .condition_expression("attribute_exists(sk)")
            .send()
            .await;
        applied(result)
    }

    /// Replaces the endpoint's secrets by `secrets` if nobody changed it since
    /// `seen_updated_at` (one conditional UpdateItem); `false` on a concurrent change.
    pub async fn set_secrets(
        &self,
        app: &str,
        id: &str,
        secrets: &[Secret],
        seen_updated_at: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let list: serde_dynamo::AttributeValue =
            serde_dynamo::to_attribute_value(secrets).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(app))
            .key("sk", s(ep_sk(id)))
            .update_expression("SET secrets = :secrets, updated_at = :now")
            .condition_expression("updated_at = :seen")
            .expression_attribute_values(":secrets", list.into())
            .expression_attribute_values(":now", n(now_ms.max(seen_updated_at + 1)))
            .expression_attribute_values(":seen", n(seen_updated_at))
            .send()
            .await;
        applied(result)
    }

    /// Disables the endpoint (the receiver answered 410): one conditional UpdateItem.
    pub async fn disable(&self, app: &str, id: &str, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(app))
            .key("sk", s(ep_sk(id)))
            .update_expression("SET disabled = :t, disabled_reason = :why, updated_at = :now")
            .condition_expression("attribute_exists(sk)")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":why", s(reason))
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        applied(result)
    }

    /// Starts (`Some(now)`, kept if a streak is already recorded) or ends (`None`) the
    /// endpoint's failure streak: one UpdateItem, made only when the streak changes.
    pub async fn set_failing(&self, app: &str, id: &str, since: Option<i64>) -> Result<(), StoreError> {
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(app))
            .key("sk", s(ep_sk(id)))
            .condition_expression("attribute_exists(sk)");
        let req = match since {
            Some(at) => req
                .update_expression("SET failing_since = if_not_exists(failing_since, :at)")
                .expression_attribute_values(":at", n(at)),
            None => req.update_expression("REMOVE failing_since"),
        };
        applied(req.send().await).map(|_| ())
    }

    /// Keeps events for replay (`ev#{time}#{id}` in their app's partition, kept
    /// [`EVENT_TTL_DAYS`]): one BatchWriteItem per 25, unprocessed items retried once
    /// ([`super::write_all`]).
    pub async fn keep_events(&self, events: &[Event]) -> Result<(), StoreError> {
        let mut requests = Vec::with_capacity(events.len());
        for ev in events {
            let item: HashMap<String, AttributeValue> = [
                ("pk".to_string(), s(&ev.app)),
                ("sk".to_string(), s(ev_sk(ev.at, &ev.id))),
                ("id".to_string(), s(&ev.id)),
                ("type".to_string(), s(&ev.kind)),
                ("at".to_string(), n(ev.at)),
                ("data".to_string(), s(ev.data.to_string())),
                ("expires_at".to_string(), n(ev.at / 1000 + EVENT_TTL_DAYS * 86_400)),
            ]
            .into();
            requests.push(super::put_request(item)?);
        }
        super::write_all(&self.client, &self.table, requests, 2, "events").await
    }

    /// The app's kept events from `since_ms` on, oldest first, at most `limit` (one Query
    /// per page of up to 1 MB).
    pub async fn events_since(&self, app: &str, since_ms: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :app AND sk BETWEEN :from AND :to")
                .expression_attribute_values(":app", s(app))
                .expression_attribute_values(":from", s(ev_sk(since_ms, "")))
                .expression_attribute_values(":to", s("ev#~"))
                .limit(
                    i32::try_from(limit.saturating_sub(out.len()))
                        .unwrap_or(i32::MAX)
                        .max(1),
                )
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(aws_err)?;
            for item in page.items.unwrap_or_default() {
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                out.push(Event {
                    id: text("id"),
                    app: app.to_string(),
                    kind: text("type"),
                    at: item
                        .get("at")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    data: serde_json::from_str(&text("data")).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                });
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < limit => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// Counts one hold-back of a delivery job (received behind its message's failing
    /// earlier event and handed back unattempted): one UpdateItem, kept 3 days.
    pub async fn count_hold_back(
        &self,
        app: &str,
        endpoint: &str,
        event_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(app))
            .key("sk", s(format!("hb#{endpoint}#{event_id}")))
            .update_expression("ADD held :one SET expires_at = :exp")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":exp", n(now_ms / 1000 + 3 * 86_400))
            .send()
            .await
            .map(|_| ())
            .map_err(aws_err)
    }

    /// How often a delivery job was held back (one GetItem).
    pub async fn hold_backs(&self, app: &str, endpoint: &str, event_id: &str) -> Result<usize, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(app))
            .key("sk", s(format!("hb#{endpoint}#{event_id}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_err)?;
        Ok(out
            .item
            .and_then(|i| i.get("held").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()))
            .unwrap_or(0))
    }

    /// Records one delivery attempt (one PutItem, kept [`ATTEMPT_TTL_DAYS`]).
    pub async fn log_attempt(&self, app: &str, endpoint: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let item: serde_dynamo::Item =
            serde_dynamo::to_item(attempt).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut item: HashMap<String, AttributeValue> = item.into();
        let at = u64::try_from(attempt.at).unwrap_or(0);
        let ulid = ulid::Ulid::from_parts(at, rand_bits());
        item.insert("pk".into(), s(app));
        item.insert("sk".into(), s(format!("at#{endpoint}#{ulid}")));
        item.insert("expires_at".into(), n(attempt.at / 1000 + ATTEMPT_TTL_DAYS * 86_400));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(aws_err)
    }

    /// The endpoint's most recent attempts, newest first (one Query).
    pub async fn attempts(&self, app: &str, endpoint: &str, limit: i32) -> Result<Vec<Attempt>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :app AND begins_with(sk, :at)")
            .expression_attribute_values(":app", s(app))
            .expression_attribute_values(":at", s(format!("at#{endpoint}#")))
            .scan_index_forward(false)
            .limit(limit)
            .send()
            .await
            .map_err(aws_err)?;
        out.items
            .unwrap_or_default()
            .into_iter()
            .map(|i| serde_dynamo::from_item(i).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }
}

/// The random part of an attempt's sort key (two attempts in one millisecond stay two).
fn rand_bits() -> u128 {
    ulid::Ulid::new().random()
}
