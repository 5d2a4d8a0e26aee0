//! Placeholder: being written.

use axum::Router;

use super::FakeLog;

/// The fake's routes (mounted under its prefix).
pub fn router(_log: FakeLog) -> Router {
    Router::new()
}
