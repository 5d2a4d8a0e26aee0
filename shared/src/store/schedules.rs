//! Recurring schedules' records in the messages table (`{app}_ri_…`, beside the
//! messages), found by app and schedule id through the sparse `by_schedule` index. The
//! record is the create request's idempotency guard and what `GET /v1/schedules` shows;
//! the schedule itself (and its message) is Scheduler's.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::{aws_err, n, s, Store, StoreError};
use crate::recurring::ScheduleRecord;

/// The sparse index of schedule records: `schedule_app` (hash), `schedule_id` (range).
pub const BY_SCHEDULE_INDEX: &str = "by_schedule";

fn decode(item: HashMap<String, AttributeValue>) -> Result<ScheduleRecord, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Writes a schedule's record unless a live item holds its key (one conditional
    /// PutItem): `None` when written, else the record that holds it.
    pub async fn put_schedule(
        &self,
        record: &ScheduleRecord,
        now_ms: i64,
    ) -> Result<Option<ScheduleRecord>, StoreError> {
        let item: serde_dynamo::Item = serde_dynamo::to_item(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let item: HashMap<String, AttributeValue> = item.into();
        super::check_item(&item)?;
        match self.put_unless_live(item, now_ms).await? {
            None => Ok(None),
            Some(old) => decode(old).map(Some),
        }
    }

    /// Removes the record of a schedule whose creation failed, so a retry starts clean.
    pub async fn delete_schedule_record(&self, pk: &str, id: &str) -> Result<(), StoreError> {
        self.delete_if(pk, "schedule_id", id).await
    }

    /// App `app`'s schedule `id` (one Query on the index; another app's id finds nothing).
    pub async fn find_schedule(&self, app: &str, id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_SCHEDULE_INDEX)
            .key_condition_expression("schedule_app = :app AND schedule_id = :id")
            .expression_attribute_values(":app", s(app))
            .expression_attribute_values(":id", s(id))
            .send()
            .await
            .map_err(aws_err)?;
        out.items().first().cloned().map(decode).transpose()
    }

    /// App `app`'s schedules after id `after` (ids are ULIDs: oldest first), up to
    /// `limit`, and the cursor of the next page if there may be one. Deleted schedules
    /// are left out.
    pub async fn list_schedules(
        &self,
        app: &str,
        after: Option<&str>,
        limit: i32,
    ) -> Result<(Vec<ScheduleRecord>, Option<String>), StoreError> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_SCHEDULE_INDEX)
            .expression_attribute_values(":app", s(app))
            .filter_expression("attribute_not_exists(deleted_at)")
            .limit(limit);
        query = match after {
            Some(after) => query
                .key_condition_expression("schedule_app = :app AND schedule_id > :after")
                .expression_attribute_values(":after", s(after)),
            None => query.key_condition_expression("schedule_app = :app"),
        };
        let out = query.send().await.map_err(aws_err)?;
        let next = out
            .last_evaluated_key()
            .and_then(|k| k.get("schedule_id"))
            .and_then(|v| v.as_s().ok())
            .cloned();
        let records = out.items().iter().cloned().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok((records, next))
    }

    /// Marks schedule `pk` (if it is still schedule `id`) deleted at `now_ms`, kept until
    /// `expires_at` (unix s): one conditional UpdateItem. `Ok(new)` when marked now,
    /// `Err(old)` when it already was.
    pub async fn mark_schedule_deleted(
        &self,
        pk: &str,
        id: &str,
        now_ms: i64,
        expires_at: i64,
    ) -> Result<Result<ScheduleRecord, ScheduleRecord>, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("SET deleted_at = :now, expires_at = :exp")
            .condition_expression("schedule_id = :id AND attribute_not_exists(deleted_at)")
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":exp", n(expires_at))
            .expression_attribute_values(":id", s(id))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Ok(decode(out.attributes.unwrap_or_default())?)),
            Err(e) => match super::refused_item(e)? {
                Some(old) => Ok(Err(decode(old)?)),
                None => Err(StoreError::Corrupt("deleted schedule vanished".into())),
            },
        }
    }
}
