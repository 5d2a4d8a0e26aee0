//! Time source, injectable so handlers can be tested at chosen instants.

use std::sync::Arc;

/// Milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system() -> Clock {
    Arc::new(now_ms)
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// A fixed clock for tests.
pub fn fixed(ms: i64) -> Clock {
    Arc::new(move || ms)
}

/// RFC 3339 rendering of a Unix-milliseconds instant.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
