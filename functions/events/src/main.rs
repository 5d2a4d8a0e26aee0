//! Events function: the messages table's DynamoDB stream → one status event per status
//! change, queued for each subscribed endpoint of the app (partial batch response).

use std::sync::Arc;

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use pushgate_shared::handlers::events::EventSource;

#[tokio::main]
async fn main() -> Result<(), Error> {
    pushgate_shared::telemetry::init();
    let source = Arc::new(EventSource::from_env().await?);
    run(service_fn(move |event: LambdaEvent<Event>| {
        let source = source.clone();
        async move { Ok::<DynamoDbEventResponse, Error>(source.handle(event.payload).await) }
    }))
    .await
}
