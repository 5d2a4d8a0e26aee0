//! The sweep index (in the endpoints table, partitions `_sweep.{kind}.{channel}.{shard}`,
//! which no app key can name: app keys hold no '.') and the one message write the sweep
//! makes: `sent` → `unknown` (`no_receipt`).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use aws_sdk_dynamodb::Client;

use super::{applied, aws_err, history, n, s, Store, StoreError};
use crate::message::{Channel, HistoryEntry, Status};
use crate::sweep::{partition, Entry, IndexOp, Waiting, SHARDS};

/// DynamoDB adapter of the sweep index.
#[derive(Clone, Debug)]
pub struct SweepIndex {
    client: Client,
    table: String,
}

fn key(e: &Entry) -> HashMap<String, AttributeValue> {
    [
        ("pk".to_string(), s(e.partition())),
        ("sk".to_string(), s(e.sort_key())),
    ]
    .into()
}

impl SweepIndex {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Applies index changes, the last one per entry winning (a batch may not touch one
    /// item twice): one BatchWriteItem per 25, unprocessed items retried once.
    pub async fn apply(&self, ops: &[IndexOp]) -> Result<(), StoreError> {
        let mut last: Vec<(HashMap<String, AttributeValue>, &IndexOp)> = Vec::new();
        for op in ops {
            let (IndexOp::Put(e) | IndexOp::Delete(e)) = op;
            let k = key(e);
            last.retain(|(other, _)| *other != k);
            last.push((k, op));
        }
        let mut requests = Vec::with_capacity(last.len());
        for (k, op) in last {
            requests.push(match op {
                IndexOp::Put(e) => {
                    let mut item = k;
                    item.insert("id".into(), s(&e.id));
                    item.insert("message_pk".into(), s(&e.pk));
                    super::put_request(item)?
                }
                IndexOp::Delete(_) => {
                    let del = DeleteRequest::builder()
                        .set_key(Some(k))
                        .build()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    WriteRequest::builder().delete_request(del).build()
                }
            });
        }
        super::write_all(&self.client, &self.table, requests, 2, "sweep entries").await
    }

    /// Entries waiting since before `before_ms`, oldest first per shard, at most `limit`
    /// per shard: one Query per shard.
    pub async fn due(
        &self,
        waiting: Waiting,
        channel: Channel,
        before_ms: i64,
        limit: i32,
    ) -> Result<Vec<Entry>, StoreError> {
        self.due_between(waiting, channel, 0, before_ms, limit).await
    }

    /// Entries waiting since `after_ms` or later but before `before_ms`, oldest first per
    /// shard, at most `limit` per shard: one Query per shard (the receipt pull reads the
    /// recent ones only).
    pub async fn due_between(
        &self,
        waiting: Waiting,
        channel: Channel,
        after_ms: i64,
        before_ms: i64,
        limit: i32,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for shard in 0..SHARDS {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :p AND sk BETWEEN :after AND :before")
                .expression_attribute_values(":p", s(partition(waiting, channel, shard)))
                .expression_attribute_values(":after", s(format!("{:015}#", after_ms.max(0))))
                // '#' sorts before every id character: entries of `before_ms` itself are out.
                .expression_attribute_values(":before", s(format!("{:015}#", before_ms.max(0))))
                .limit(limit)
                .send()
                .await
                .map_err(aws_err)?;
            for item in page.items.unwrap_or_default() {
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                let since = text("sk").split('#').next().and_then(|t| t.parse().ok()).unwrap_or(0);
                out.push(Entry {
                    waiting,
                    channel,
                    since,
                    id: text("id"),
                    pk: text("message_pk"),
                });
            }
        }
        Ok(out)
    }
}

impl Store {
    /// `sent` → `unknown` with reason `no_receipt`, if the record is still message `id`
    /// and still `sent` (one conditional UpdateItem; same rank, so a late receipt still
    /// moves it on to `delivered` or `failed`). `false` if it moved on meanwhile.
    pub async fn expire_unreceipted(&self, pk: &str, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let entry = history(HistoryEntry {
            at: now_ms,
            status: Status::Unknown,
            note: Some("no_receipt".into()),
        })?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(
                "SET #status = :unknown, reason = :why, updated_at = :now, history = list_append(history, :entry)",
            )
            .condition_expression("#status = :sent AND id = :id")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":unknown", s(Status::Unknown.as_str()))
            .expression_attribute_values(":sent", s(Status::Sent.as_str()))
            .expression_attribute_values(":why", s("no_receipt"))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":entry", entry)
            .expression_attribute_values(":id", s(id))
            .send()
            .await;
        applied(result)
    }
}
