//! Ingest function: API Gateway HTTP API → signed, validated message → DynamoDB + SQS.
//!
//! The event is taken as API Gateway sends it and turned into a request by
//! `Ingest::handle_event`, which refuses odd paths, queries and bodies with a 400:
//! the library conversion would panic on them.

use std::sync::Arc;

use aws_lambda_events::event::apigw::ApiGatewayV2httpRequest;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use pushgate_shared::handlers::ingest::Ingest;

#[tokio::main]
async fn main() -> Result<(), Error> {
    pushgate_shared::telemetry::init();
    let ingest = Arc::new(Ingest::from_env().await?);
    run(service_fn(move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
        let ingest = ingest.clone();
        // Boxed: the handler's future is deep enough to exceed the compiler's default
        // query depth when inlined into the runtime's.
        Box::pin(async move { Ok::<_, Error>(ingest.handle_event(event.payload).await) })
    }))
    .await
}
