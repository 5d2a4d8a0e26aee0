//! Per-app balance ("messages available"): one counter item per app, charged by the
//! dispatcher in the same transaction that marks the message paid, so that concurrent
//! dispatchers never overspend and a redelivered message never pays twice.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::{aws_err, is_condition_failure, n, s, Store, StoreError};
use crate::delivery::Finish;
use crate::ports::Charge;

fn balance_key(app: &str) -> String {
    // '.' never occurs in message keys, so the item cannot collide with one.
    format!("_balance.{app}")
}

impl Store {
    /// The app's balance (eventually consistent read: ingest's early refusal only; the
    /// dispatcher's charge is the exact check).
    pub async fn balance(&self, app: &str) -> Result<Option<i64>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(balance_key(app)))
            .send()
            .await
            .map_err(aws_err)?;
        Ok(out.item.and_then(|i| {
            i.get("available")
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
        }))
    }

    /// Sets the app's balance to `available` (an operator's top-up or reset).
    pub async fn set_balance(&self, app: &str, available: i64) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(balance_key(app)))
            .update_expression("SET available = :v")
            .expression_attribute_values(":v", n(available))
            .send()
            .await
            .map_err(aws_err)?;
        Ok(())
    }

    /// Adds `units` (may be negative) to the app's balance; returns the new balance.
    pub async fn add_balance(&self, app: &str, units: i64) -> Result<i64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(balance_key(app)))
            .update_expression("ADD available :v")
            .expression_attribute_values(":v", n(units))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(aws_err)?;
        Ok(out
            .attributes
            .and_then(|a| {
                a.get("available")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or_default())
    }

    /// Takes one unit of `app`'s balance for the message the caller holds the lease on,
    /// and marks the message paid: one transaction, so both happen or neither does.
    pub async fn charge(&self, pk: &str, app: &str, owner: &str) -> Result<Charge, StoreError> {
        let take = Update::builder()
            .table_name(&self.table)
            .key("pk", s(balance_key(app)))
            .update_expression("SET available = available - :one")
            .condition_expression("available >= :one")
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mark = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("SET charged = :yes")
            .condition_expression("lease_owner = :owner AND attribute_not_exists(charged)")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":owner", s(owner))
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(take).build())
            .transact_items(TransactWriteItem::builder().update(mark).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(Charge::Charged),
            Err(e) => match cancelled(&e) {
                // The message's own condition is the more telling one: without the lease
                // the caller must not act at all, whatever the balance.
                Some([_, true]) => Ok(Charge::NotHeld),
                Some([true, _]) => Ok(Charge::Exhausted),
                _ => Err(aws_err(e)),
            },
        }
    }

    /// Records a finish that gives the message's unit back to its app (a paid message
    /// that failed without being sent): one transaction. Returns whether it applied.
    pub async fn finish_refunded(
        &self,
        pk: &str,
        app: &str,
        owner: &str,
        finish: Finish,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut record = self.finish_update(pk, owner, finish, now_ms, true)?;
        // Refund only what was paid.
        record.condition_expression = record.condition_expression.map(|c| format!("{c} AND charged = :paid"));
        record
            .expression_attribute_values
            .get_or_insert_with(Default::default)
            .insert(":paid".into(), AttributeValue::Bool(true));
        let give = Update::builder()
            .table_name(&self.table)
            .key("pk", s(balance_key(app)))
            .update_expression("ADD available :one")
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(record).build())
            .transact_items(TransactWriteItem::builder().update(give).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if cancelled(&e).is_some() || is_condition_failure(&e) => Ok(false),
            Err(e) => Err(aws_err(e)),
        }
    }
}

/// Which items of a two-item transaction failed their condition, when it was cancelled.
pub(super) fn cancelled<R>(
    e: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        R,
    >,
) -> Option<[bool; 2]> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    let Some(TransactWriteItemsError::TransactionCanceledException(c)) = e.as_service_error() else {
        return None;
    };
    let failed = |i: usize| {
        c.cancellation_reasons()
            .get(i)
            .and_then(|r| r.code())
            .is_some_and(|code| code == "ConditionalCheckFailed")
    };
    Some([failed(0), failed(1)])
}
