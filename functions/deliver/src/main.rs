//! Deliver function: delivery queue → status events POSTed to the apps' endpoints,
//! signed per Standard Webhooks; failures come back on the retry schedule.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use pushgate_shared::handlers::events::Deliver;

#[tokio::main]
async fn main() -> Result<(), Error> {
    pushgate_shared::telemetry::init();
    let deliver = Arc::new(Deliver::from_env().await?);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let deliver = deliver.clone();
        async move { Ok::<SqsBatchResponse, Error>(deliver.handle(event.payload).await) }
    }))
    .await
}
