//! Pushgate: the domain, handlers and AWS adapters shared by the Lambda functions.
//!
//! Layout follows the architecture: `auth` (request signing), `model` (messages and
//! their lifecycle), `templates`, `apps` (per-app configuration from Secrets Manager),
//! `store` (DynamoDB), `queue` (SQS), `providers` (one file per provider), `receipts`
//! (provider delivery reports), and `handlers` (the three functions' logic, testable
//! without AWS). Functions under `functions/` only wire adapters into handlers.

pub mod allowlist;
pub mod apps;
pub mod auth;
pub mod aws;
pub mod batch;
pub mod cache;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod delivery;
pub mod dispatch;
pub mod events;
pub mod filter;
pub mod handlers;
pub mod message;
pub mod net;
pub mod ports;
pub mod problem;
pub mod providers;
pub mod queue;
pub mod receipts;
pub mod recurring;
pub mod request;
pub mod routing;
pub mod schedule;
pub mod scheduler;
pub mod shaping;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod templates;
pub mod tls;
pub mod wiring;
