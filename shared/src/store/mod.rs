//! DynamoDB adapters, one file per kind of item in the messages table: `messages` (the
//! message ledger: one item per message), `quota` (balances), `throttle` (rate buckets),
//! `breaker` (circuits); and `routes` (the routes table). They implement the ports of
//! `crate::ports`; every decision they serve is made elsewhere.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::message::{HistoryEntry, Message};

mod breaker;
pub mod callbacks;
mod messages;
mod ports;
mod quota;
pub mod routes;
mod throttle;
pub use breaker::Breaker;
pub use callbacks::{HeldReceipt, ReceiptOutcome};

/// Name of the GSI that maps a message id to its key.
pub const BY_ID_INDEX: &str = "by_id";
/// Name of the sparse GSI that maps `{provider}#{provider message id}` to the key, for
/// receipts that carry only the provider's id.
pub const BY_PROVIDER_REF_INDEX: &str = "by_provider_ref";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("dynamodb: {0}")]
    Aws(String),
    #[error("stored item is malformed: {0}")]
    Corrupt(String),
}

pub(crate) fn aws_err<E: std::error::Error + 'static>(e: E) -> StoreError {
    StoreError::Aws(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
}

/// DynamoDB adapter.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) client: Client,
    pub(crate) table: String,
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn history(entry: HistoryEntry) -> Result<AttributeValue, StoreError> {
    let item: serde_dynamo::Item = serde_dynamo::to_item(entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(AttributeValue::L(vec![AttributeValue::M(item.into())]))
}

pub(crate) fn decode(item: HashMap<String, AttributeValue>) -> Result<Message, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

/// Whether a conditional write applied: a failed condition is an answer, not an error.
pub(crate) fn applied<T, E, R>(result: Result<T, aws_sdk_dynamodb::error::SdkError<E, R>>) -> Result<bool, StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_condition_failure(&e) => Ok(false),
        Err(e) => Err(aws_err(e)),
    }
}

pub(crate) fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(
    e: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> bool {
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}
