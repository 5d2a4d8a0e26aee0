//! The three functions' logic. Each handler takes its adapters explicitly, so the
//! function binaries only build clients and call in.

mod batch;
pub mod callback;
pub mod dispatch;
pub mod edge;
pub mod endpoints;
pub mod events;
pub mod ingest;
pub mod pull;
pub mod receipt;
mod schedules;
pub mod sweep;

use lambda_http::{Body, Request, Response};

/// The raw request body bytes, exactly as signed.
pub(crate) fn body_bytes(req: &Request) -> &[u8] {
    match req.body() {
        Body::Empty => &[],
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => &[],
    }
}

/// A header as text, if present and valid UTF-8.
pub(crate) fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A JSON response.
pub(crate) fn json(status: u16, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(value.to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// A path id that must be a ULID (a message, batch or schedule id): anything else names
/// none of ours, a 404 naming `path:id`, without asking DynamoDB (which would fail on an
/// id longer than a key may be, and that is no outage).
pub(crate) fn ulid_id(id: &str, what: &str) -> Result<(), crate::problem::Problem> {
    if id.len() == 26 && ulid::Ulid::from_string(id).is_ok() {
        return Ok(());
    }
    Err(
        crate::problem::Problem::not_found(format!("no such {what}")).errors(vec![crate::problem::FieldError::new(
            "path:id",
            format!("not a {what} id (a 26-character ULID)"),
        )]),
    )
}

/// Handlers built with AWS clients that point nowhere: the paths under test must not
/// touch AWS (authentication and validation happen before any call).
#[cfg(test)]
pub(crate) mod offline {
    use std::sync::Arc;

    use crate::apps::{AppConfig, Apps, ServiceSecrets};

    pub const SECRET: &str = "s3cret";

    fn sdk() -> aws_config::SdkConfig {
        // Port 1 on loopback refuses at once, so an accidental call fails the test fast.
        aws_config::SdkConfig::builder()
            .endpoint_url("http://127.0.0.1:1")
            .region(aws_config::Region::new("us-east-1"))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build()
    }

    pub fn apps() -> Arc<Apps> {
        let app: AppConfig = serde_json::from_value(serde_json::json!({"key": "app", "secrets": [SECRET]})).unwrap();
        Arc::new(Apps::fixed(ServiceSecrets {
            apps: vec![app],
            callback_token: Some("tok".into()),
        }))
    }

    pub fn store() -> crate::store::Store {
        crate::store::Store::new(aws_sdk_dynamodb::Client::new(&sdk()), "none")
    }

    pub fn queue() -> crate::queue::Queue {
        crate::queue::Queue::new(aws_sdk_sqs::Client::new(&sdk()), "http://127.0.0.1:1/none")
    }
}
