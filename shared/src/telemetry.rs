//! Logging set-up for the functions: JSON lines without ANSI colours, level from
//! `RUST_LOG`. Handlers log ids and outcomes only, never recipients, content or secrets.

/// Installs the global subscriber; call once at cold start.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_target(false)
        .with_current_span(false)
        .without_time()
        .try_init();
}
