//! Values loaded from slow sources that can fail (the service secret, the template and
//! route tables), re-read at most once per time-to-live per Lambda instance, with bounded
//! staleness and backed-off, single-flight reloads ([`Bounded`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long a template or route set whose reloads keep failing is still served: a
/// config-table blip does not stop sending, a long outage does not freeze config forever.
pub const CONFIG_MAX_STALE: Duration = Duration::from_secs(3600);

/// How long a [`Bounded`] value is served and how its failed loads are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StalePolicy {
    /// A value younger than this is served without a load.
    pub ttl: Duration,
    /// A value is never served once this old (since its load), whatever the source says:
    /// the bound on how long a revoked entry (an app key, a signing secret) keeps working
    /// while loads fail. At least `ttl`.
    pub max_stale: Duration,
    /// Wait after the first failed load before the next; doubled per further failure.
    pub backoff_min: Duration,
    /// Longest wait between failed loads.
    pub backoff_max: Duration,
}

impl StalePolicy {
    /// `ttl` and `max_stale` (raised to `ttl` if shorter), retrying failed loads after 1 s,
    /// doubling to 30 s.
    pub fn new(ttl: Duration, max_stale: Duration) -> Self {
        Self {
            ttl,
            max_stale: max_stale.max(ttl),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.backoff_min
            .saturating_mul(1 << doublings)
            .min(self.backoff_max.max(self.backoff_min))
    }
}

/// Why [`Bounded::get`] has no value to give.
#[derive(Debug, thiserror::Error)]
pub enum BoundedError<E> {
    /// This call's load failed and no copy young enough is left.
    #[error("{0}")]
    Load(E),
    /// A recent load failed and no copy young enough is left; the next load is not tried
    /// before the back-off ends, so a failing source is not hammered by every caller.
    #[error("{last} (next attempt in {retry_in:?})")]
    BackingOff { last: String, retry_in: Duration },
}

impl<E> BoundedError<E> {
    /// The load's own error, or `unavailable` with the last failure during a back-off.
    pub fn into_inner(self, unavailable: impl FnOnce(String) -> E) -> E {
        match self {
            BoundedError::Load(e) => e,
            BoundedError::BackingOff { last, retry_in } => {
                unavailable(format!("{last} (next attempt in {retry_in:?})"))
            }
        }
    }
}

/// Times are tokio's (the same clock outside tests; paused and advanced in them).
type TokioInstant = tokio::time::Instant;

struct BoundedState<T> {
    /// The last good value and when it was loaded.
    value: Option<(TokioInstant, Arc<T>)>,
    /// Failed loads since the last good one.
    failures: u32,
    /// No load before this, after a failure.
    retry_at: Option<TokioInstant>,
    /// The last failure, for callers turned away during the back-off.
    last_error: String,
}

/// What a caller finds in a [`Bounded`] cache.
enum Look<T> {
    /// Serve this; no load wanted (fresh, or stale but usable during a back-off).
    Serve(Arc<T>),
    /// Nothing usable and backing off.
    Refuse(String, Duration),
    /// A load is due; the copy that may be served meanwhile, if any.
    Load(Option<Arc<T>>),
}

/// A value loaded from a source that can fail (the service secret), with bounded
/// staleness: fresh for `ttl`; when a refresh fails the last good copy is served only
/// until it is `max_stale` old, so revoked credentials stop working within that bound
/// even while the source is down; failed loads are retried with exponential back-off
/// rather than by every call. Loads are single flight: while one caller loads, the others
/// are served the stale copy at once (or, with none usable, wait for that one load rather
/// than each start their own); nobody waits on a lock while a usable copy exists.
pub struct Bounded<T> {
    policy: StalePolicy,
    state: std::sync::Mutex<BoundedState<T>>,
    flight: tokio::sync::Mutex<()>,
}

impl<T> Bounded<T> {
    /// A config set (templates, routes) fresh for `ttl`, served stale up to
    /// [`CONFIG_MAX_STALE`] while reloads fail.
    pub fn config(ttl: Duration) -> Self {
        Self::new(StalePolicy::new(ttl, CONFIG_MAX_STALE))
    }

    pub fn new(policy: StalePolicy) -> Self {
        Self {
            policy,
            state: std::sync::Mutex::new(BoundedState {
                value: None,
                failures: 0,
                retry_at: None,
                last_error: String::new(),
            }),
            flight: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BoundedState<T>> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn look(&self, now: TokioInstant) -> Look<T> {
        let st = self.state();
        let age = |at: &TokioInstant| now.saturating_duration_since(*at);
        if let Some((at, v)) = &st.value {
            if age(at) < self.policy.ttl {
                return Look::Serve(v.clone());
            }
        }
        let usable = st
            .value
            .as_ref()
            .filter(|(at, _)| age(at) < self.policy.max_stale)
            .map(|(_, v)| v.clone());
        match (st.retry_at.filter(|r| now < *r), usable) {
            (Some(_), Some(v)) => Look::Serve(v),
            (Some(r), None) => Look::Refuse(st.last_error.clone(), r - now),
            (None, usable) => Look::Load(usable),
        }
    }

    /// The value, loading it with `load` when due (see [`Bounded`]).
    pub async fn get<E, F, Fut>(&self, what: &str, load: F) -> Result<Arc<T>, BoundedError<E>>
    where
        E: std::fmt::Display,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let stale = match self.look(TokioInstant::now()) {
            Look::Serve(v) => return Ok(v),
            Look::Refuse(last, retry_in) => return Err(BoundedError::BackingOff { last, retry_in }),
            Look::Load(stale) => stale,
        };
        let _flight = match &stale {
            Some(v) => match self.flight.try_lock() {
                Ok(guard) => guard,
                // Someone is loading: the stale copy will do meanwhile.
                Err(_) => return Ok(v.clone()),
            },
            None => self.flight.lock().await,
        };
        // Another caller may have loaded (or failed) while this one waited.
        let stale = match self.look(TokioInstant::now()) {
            Look::Serve(v) => return Ok(v),
            Look::Refuse(last, retry_in) => return Err(BoundedError::BackingOff { last, retry_in }),
            Look::Load(stale) => stale,
        };
        let loaded = load().await;
        let now = TokioInstant::now();
        let mut st = self.state();
        match loaded {
            Ok(v) => {
                let v = Arc::new(v);
                st.value = Some((now, v.clone()));
                st.failures = 0;
                st.retry_at = None;
                Ok(v)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let wait = self.policy.backoff(st.failures);
                st.retry_at = Some(now + wait);
                st.last_error = e.to_string();
                match stale {
                    Some(v) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "{what} refresh failed; serving the cached copy");
                        Ok(v)
                    }
                    None => {
                        tracing::error!(error = %e, retry_in = ?wait, "{what} load failed");
                        Err(BoundedError::Load(e))
                    }
                }
            }
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
