//! A value loaded from a slow source (a DynamoDB table of config) and re-read at most
//! once per time-to-live per Lambda instance; a failed refresh keeps serving the last
//! good value, so a config-table blip does not stop sending.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

/// The cached value and when it was loaded.
pub struct Refreshing<T> {
    ttl: Duration,
    slot: RwLock<Option<(Instant, Arc<T>)>>,
}

impl<T> Refreshing<T> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slot: RwLock::new(None),
        }
    }

    /// The current value, loading it with `load` when absent or older than the ttl (one
    /// loader at a time; the others wait for its result).
    pub async fn get<E, F, Fut>(&self, what: &str, load: F) -> Result<Arc<T>, E>
    where
        E: std::fmt::Display,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some((at, v)) = self.slot.read().await.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        let mut slot = self.slot.write().await;
        if let Some((at, v)) = slot.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        match load().await {
            Ok(v) => {
                let v = Arc::new(v);
                *slot = Some((Instant::now(), v.clone()));
                Ok(v)
            }
            Err(e) => match slot.as_ref() {
                Some((_, v)) => {
                    tracing::warn!(error = %e, "{what} refresh failed; serving the cached copy");
                    Ok(v.clone())
                }
                None => Err(e),
            },
        }
    }
}

/// Every `(id, definition)` item of a config-as-code table (templates, routes): one
/// paginated Scan, as a refresh does.
pub async fn scan_definitions(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
        for item in page.items() {
            let field = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
            if let (Some(id), Some(definition)) = (field("id"), field("definition")) {
                out.push((id, definition));
            }
        }
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(out),
        }
    }
}

/// Why [`seed_definitions`] stopped; each caller maps it onto its own error type.
#[derive(Debug, thiserror::Error)]
pub enum SeedError<E> {
    /// The file's own check refused it: nothing was written.
    #[error("{0}")]
    Check(E),
    /// The file is not the JSON shape its documents are read from: nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// A write failed: the items before it are in the table, the rest are not.
    #[error("{0}")]
    Unavailable(String),
}

/// Writes one `{id, definition}` item per document of a config-as-code file (templates,
/// routes): the items [`scan_definitions`] reads back. The whole file goes through
/// `check` and is parsed as `Docs` before the first write, so a bad file leaves the
/// table as it was; `entry` gives a document's id and the definition stored under it.
/// `updated_at` (Unix ms) is stamped on every item of a table that keeps one. Returns
/// how many items were written.
pub async fn seed_definitions<Docs, E>(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    json: &str,
    check: impl FnOnce(&str) -> Result<(), E>,
    entry: impl Fn(Docs::Item) -> (String, serde_json::Value),
    updated_at: Option<i64>,
) -> Result<usize, SeedError<E>>
where
    Docs: serde::de::DeserializeOwned + IntoIterator,
{
    use aws_sdk_dynamodb::types::AttributeValue;

    check(json).map_err(SeedError::Check)?;
    let docs: Docs = serde_json::from_str(json).map_err(|e| SeedError::Invalid(e.to_string()))?;
    let mut written = 0;
    for (id, definition) in docs.into_iter().map(entry) {
        let mut put = client
            .put_item()
            .table_name(table)
            .item("id", AttributeValue::S(id))
            .item("definition", AttributeValue::S(definition.to_string()));
        if let Some(at) = updated_at {
            put = put.item("updated_at", AttributeValue::N(at.to_string()));
        }
        put.send()
            .await
            .map_err(|e| SeedError::Unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()))?;
        written += 1;
    }
    Ok(written)
}
