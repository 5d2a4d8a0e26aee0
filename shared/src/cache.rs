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
