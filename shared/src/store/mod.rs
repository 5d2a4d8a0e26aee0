//! DynamoDB adapters, one file per kind of item in the messages table: `messages` (the
//! message ledger: one item per message), `quota` (balances), `throttle` (rate buckets),
//! `breaker` (circuits); and `routes` (the routes table). They implement the ports of
//! `crate::ports`; every decision they serve is made elsewhere.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::message::{HistoryEntry, Message};

mod batches;
mod breaker;
pub mod callbacks;
pub mod endpoints;
mod messages;
mod ports;
mod quota;
pub mod routes;
pub mod schedules;
pub mod sweep;
mod throttle;
pub use breaker::Breaker;
pub use callbacks::{HeldReceipt, ReceiptOutcome};

/// Name of the GSI that maps a message id to its key.
pub const BY_ID_INDEX: &str = "by_id";
/// Name of the sparse GSI that maps `{provider}#{provider message id}` to the key, for
/// receipts that carry only the provider's id.
pub const BY_PROVIDER_REF_INDEX: &str = "by_provider_ref";
/// Sparse index of batch messages (and their batch's record, at index -1) by batch id.
pub const BY_BATCH_INDEX: &str = "by_batch";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("dynamodb: {0}")]
    Aws(String),
    #[error("stored item is malformed: {0}")]
    Corrupt(String),
    /// The item breaks one of DynamoDB's hard limits (size, nesting, number range): no
    /// retry can succeed, so the edge answers 4xx, never 503.
    #[error("item cannot be stored: {0}")]
    Unstorable(#[from] Unstorable),
}

/// DynamoDB's hard limits on an item, checked before a write so that a request that can
/// never be stored is refused (4xx) instead of failing as if DynamoDB were down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unstorable {
    #[error("the item would take {0} bytes; messages are stored in at most {MAX_ITEM_BYTES}")]
    TooLarge(usize),
    #[error("nested deeper than DynamoDB's {MAX_DEPTH} levels")]
    TooDeep,
    #[error("number {0} is outside DynamoDB's range")]
    NumberOutOfRange(String),
}

/// The largest new message record: DynamoDB's item limit (400 KB, counted here as
/// 400,000 bytes, as moto counts it, the stricter reading) less room for what the
/// record gains over its life: the lease, history entries and notes of every attempt,
/// provider ids and reasons. A record accepted at this size can always be claimed and
/// finished; one any larger would be accepted and then never sent.
pub const MAX_ITEM_BYTES: usize = 400_000 - LIFETIME_HEADROOM;
/// What a record may grow by after it is written (see [`MAX_ITEM_BYTES`]).
const LIFETIME_HEADROOM: usize = 32 * 1024;
/// DynamoDB's nesting limit for maps and lists.
pub const MAX_DEPTH: usize = 32;

/// Checks an item against DynamoDB's limits: its size as DynamoDB counts it (names plus
/// values; an upper bound for numbers), nesting depth, and number range.
pub fn check_item(item: &HashMap<String, AttributeValue>) -> Result<(), Unstorable> {
    let mut size = 0usize;
    for (name, value) in item {
        size = size.saturating_add(name.len()).saturating_add(value_size(value, 0)?);
    }
    if size > MAX_ITEM_BYTES {
        return Err(Unstorable::TooLarge(size));
    }
    Ok(())
}

fn value_size(value: &AttributeValue, depth: usize) -> Result<usize, Unstorable> {
    Ok(match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => {
            if !n.parse::<f64>().is_ok_and(crate::request::storable_number) {
                return Err(Unstorable::NumberOutOfRange(n.chars().take(40).collect()));
            }
            n.len().saturating_add(1)
        }
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(items) => {
            if depth >= MAX_DEPTH {
                return Err(Unstorable::TooDeep);
            }
            let mut size = 3usize;
            for v in items {
                size = size.saturating_add(1).saturating_add(value_size(v, depth + 1)?);
            }
            size
        }
        AttributeValue::M(map) => {
            if depth >= MAX_DEPTH {
                return Err(Unstorable::TooDeep);
            }
            let mut size = 3usize;
            for (k, v) in map {
                size = size
                    .saturating_add(1)
                    .saturating_add(k.len())
                    .saturating_add(value_size(v, depth + 1)?);
            }
            size
        }
        AttributeValue::Ss(l) | AttributeValue::Ns(l) => l.iter().map(String::len).sum(),
        AttributeValue::Bs(l) => l.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    })
}

/// A DynamoDB failure as logged and reported: the error's code and message only. The
/// full error context can carry the raw response (an unparseable item with recipients
/// and content), which must never reach a log.
pub(crate) fn aws_err<E, R>(e: aws_sdk_dynamodb::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
    let what = match &e {
        SdkError::ServiceError(_) => {
            let code = e.code().unwrap_or("unknown");
            let message: String = e.message().unwrap_or_default().chars().take(200).collect();
            format!("service error {code}: {message}")
        }
        SdkError::ConstructionFailure(_) => "request could not be built".into(),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(_) => "could not reach DynamoDB".into(),
        SdkError::ResponseError(_) => "unreadable response".into(),
        _ => "failed".into(),
    };
    StoreError::Aws(what)
}

/// One item to put through [`write_all`].
pub(crate) fn put_request(
    item: HashMap<String, AttributeValue>,
) -> Result<aws_sdk_dynamodb::types::WriteRequest, StoreError> {
    let put = aws_sdk_dynamodb::types::PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(aws_sdk_dynamodb::types::WriteRequest::builder()
        .put_request(put)
        .build())
}

/// Writes `requests` to `table` in `BatchWriteItem`s of 25 (DynamoDB's limit), one after
/// another; items DynamoDB leaves unprocessed (throttling) are sent again after a short,
/// doubling pause, up to `rounds` times, then reported as an error naming `what`.
pub(crate) async fn write_all(
    client: &Client,
    table: &str,
    requests: Vec<aws_sdk_dynamodb::types::WriteRequest>,
    rounds: u32,
    what: &str,
) -> Result<(), StoreError> {
    for chunk in requests.chunks(25) {
        let mut pending = chunk.to_vec();
        for round in 0..rounds.max(1) {
            if round > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(25 << round.min(6))).await;
            }
            let out = client
                .batch_write_item()
                .request_items(table, pending)
                .send()
                .await
                .map_err(aws_err)?;
            pending = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
            if pending.is_empty() {
                break;
            }
        }
        if !pending.is_empty() {
            return Err(StoreError::Aws(format!(
                "{} {what} not written (throttled)",
                pending.len()
            )));
        }
    }
    Ok(())
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

/// The item an UpdateItem's condition refused to change (asked for with
/// `ReturnValuesOnConditionCheckFailure::AllOld`): `Some` when one was there, `None` when
/// none was; any other failure is the error.
pub(crate) fn refused_item<R: std::fmt::Debug>(
    e: aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::update_item::UpdateItemError, R>,
) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
    match e.as_service_error() {
        Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
            Ok(c.item().cloned())
        }
        _ => Err(aws_err(e)),
    }
}

pub(crate) fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(
    e: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> bool {
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}
