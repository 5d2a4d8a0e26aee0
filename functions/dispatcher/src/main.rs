//! Dispatcher function: SQS batch → claimed, sent, recorded; partial batch response.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use pushgate_shared::handlers::dispatch::Dispatcher;

#[tokio::main]
async fn main() -> Result<(), Error> {
    pushgate_shared::telemetry::init();
    let dispatcher = Arc::new(Dispatcher::from_env().await?);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let dispatcher = dispatcher.clone();
        async move { Ok::<SqsBatchResponse, Error>(dispatcher.handle(event.payload).await) }
    }))
    .await
}
