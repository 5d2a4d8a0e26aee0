//! Ingest function: API Gateway HTTP API → signed, validated message → DynamoDB + SQS.

use std::sync::Arc;

use lambda_http::{run, service_fn, Error, Request};
use pushgate_shared::handlers::ingest::Ingest;

#[tokio::main]
async fn main() -> Result<(), Error> {
    pushgate_shared::telemetry::init();
    let ingest = Arc::new(Ingest::from_env().await?);
    run(service_fn(move |req: Request| {
        let ingest = ingest.clone();
        async move { Ok::<_, Error>(ingest.handle(req).await) }
    }))
    .await
}
