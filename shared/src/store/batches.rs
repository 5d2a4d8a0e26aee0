//! Batch sends in the message table: the batch's record and its recipients' message
//! records. The request that creates the batch's record writes them plainly (nobody else
//! can know their keys); a retry of a crashed batch (same `Idempotency-Key`) completes
//! them conditionally, never rewriting a record a dispatcher may hold.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::{aws_err, s, Store, StoreError, BY_BATCH_INDEX};
use crate::batch::BatchRecord;
use crate::message::{Message, Status};
use crate::ports::Created;

/// Records per `BatchWriteItem` (DynamoDB's limit).
const PER_BATCH_WRITE: usize = 25;
/// Batch writes in flight at once.
const CONCURRENT_WRITES: usize = 8;

/// One message of a batch as the batch index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    pub index: u32,
    pub id: String,
    pub status: Status,
}

impl Store {
    /// Writes a batch's record unless a live item holds its key: `None` when written,
    /// else the record that holds it (a retry of the same batch, or a replay).
    pub async fn put_batch(&self, record: &BatchRecord, now_ms: i64) -> Result<Option<BatchRecord>, StoreError> {
        let item: serde_dynamo::Item = serde_dynamo::to_item(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let item: HashMap<String, AttributeValue> = item.into();
        super::check_item(&item)?;
        match self.put_unless_live(item, now_ms).await? {
            None => Ok(None),
            Some(old) => serde_dynamo::from_item(old)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.to_string())),
        }
    }

    /// A batch's record by its key, if live (one consistent GetItem).
    pub async fn get_batch(&self, pk: &str, now_ms: i64) -> Result<Option<BatchRecord>, StoreError> {
        match self.get_item(pk).await? {
            Some(item) => serde_dynamo::from_item::<_, BatchRecord>(item)
                .map(|r| Some(r).filter(|r| r.expires_at >= now_ms / 1000))
                .map_err(|e| StoreError::Corrupt(e.to_string())),
            None => Ok(None),
        }
    }

    /// Deletes the batch's record this request wrote (it was refused after all), so the
    /// same key may be used again; only if it is still batch `batch_id`.
    pub async fn delete_batch(&self, pk: &str, batch_id: &str) -> Result<(), StoreError> {
        self.delete_if(pk, "batch_id", batch_id).await
    }

    /// Marks a batch's record: every accepted recipient is written and queued.
    pub async fn mark_batch_queued(&self, pk: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("SET queued = :yes")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .send()
            .await
            .map(|_| ())
            .map_err(aws_err)
    }

    /// Marks a batch completed with its counts per status, once: one conditional
    /// UpdateItem (only if not completed yet), whose stream record is the source of the
    /// `batch.completed` event. Returns whether this call completed it.
    pub async fn complete_batch(
        &self,
        pk: &str,
        counts: &std::collections::BTreeMap<String, u32>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let counts = AttributeValue::M(counts.iter().map(|(k, v)| (k.clone(), super::n(*v))).collect());
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("SET completed_at = :now, counts = :counts")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(completed_at)")
            .expression_attribute_values(":now", super::n(now_ms))
            .expression_attribute_values(":counts", counts)
            .send()
            .await;
        super::applied(result)
    }

    /// Writes the records of a batch whose record this request has just created: no
    /// other writer can know their keys, so plain `BatchWriteItem`s of 25 (8 at a time,
    /// unprocessed items retried) do, at one write unit per record.
    pub async fn put_fresh_batch_messages(&self, messages: &[Message]) -> Result<(), StoreError> {
        let chunks: Vec<&[Message]> = messages.chunks(PER_BATCH_WRITE).collect();
        stream::iter(chunks)
            .map(|chunk| self.put_chunk(chunk))
            .buffer_unordered(CONCURRENT_WRITES)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    async fn put_chunk(&self, chunk: &[Message]) -> Result<(), StoreError> {
        let mut requests = Vec::with_capacity(chunk.len());
        for m in chunk {
            let item: serde_dynamo::Item = serde_dynamo::to_item(m).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let item: HashMap<String, AttributeValue> = item.into();
            super::check_item(&item)?;
            requests.push(super::put_request(item)?);
        }
        super::write_all(&self.client, &self.table, requests, 5, "batch records").await
    }

    /// Completes the records of a batch a crashed request began: each written unless a
    /// live record holds its key (one conditional PutItem each, 16 at a time), so a
    /// record a dispatcher may hold is never replaced. Returns, in order, each record as
    /// created or as found.
    pub async fn complete_batch_messages(&self, messages: &[Message], now_ms: i64) -> Result<Vec<Created>, StoreError> {
        stream::iter(messages)
            .map(|m| self.create(m, now_ms))
            .buffered(16)
            .try_collect()
            .await
    }

    /// A batch's record and every message of it, by batch id (the batch index, all
    /// pages: one page holds about 10,000 entries).
    pub async fn batch(&self, batch_id: &str) -> Result<Option<(BatchRecord, Vec<BatchEntry>)>, StoreError> {
        let mut record_pk = None;
        let mut entries = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_BATCH_INDEX)
                .key_condition_expression("batch_id = :b")
                .expression_attribute_values(":b", s(batch_id))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(aws_err)?;
            for item in page.items() {
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                let index = item
                    .get("batch_index")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<i64>().ok());
                match (index, text("id"), text("status").as_deref().and_then(Status::parse)) {
                    (Some(-1), _, _) => record_pk = text("pk"),
                    (Some(i), Some(id), Some(status)) if i >= 0 => entries.push(BatchEntry {
                        index: i as u32,
                        id,
                        status,
                    }),
                    _ => {}
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        let Some(pk) = record_pk else { return Ok(None) };
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .send()
            .await
            .map_err(aws_err)?;
        let Some(item) = out.item else { return Ok(None) };
        let record: BatchRecord = serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        entries.sort_by_key(|e| e.index);
        Ok(Some((record, entries)))
    }
}
