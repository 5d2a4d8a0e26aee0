//! The Pushgate developer tool as a library: what AWS does between the functions,
//! done locally (moto server, resources from `template.yaml`, the SQS → dispatcher
//! poller, a webhook receiver), and the signing client. The `pushgate` binary and the
//! integration tests both use it.

pub mod client;
pub mod dev;
pub mod dlq;
pub mod events;
pub mod fakes;
pub mod lambda_bench;
pub mod moto;
pub mod poller;
pub mod receiver;
pub mod resources;
pub mod sandbox;
pub mod schedules;
pub mod streams;

/// Root of the workspace (where `template.yaml` lives).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

/// Boxed error for tool code (the library crate uses typed errors; the tool reports).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
