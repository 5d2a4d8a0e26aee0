//! Callback function: provider delivery receipts → forward-only status updates.
//!
//! The event is taken as API Gateway sends it and turned into a request by
//! `Callback::handle_event`, which refuses odd paths, queries and bodies with a 400:
//! the library conversion would panic on them.

use std::sync::Arc;

use aws_lambda_events::event::apigw::ApiGatewayV2httpRequest;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use pushgate_shared::handlers::callback::Callback;

#[tokio::main]
async fn main() -> Result<(), Error> {
    pushgate_shared::telemetry::init();
    let callback = Arc::new(Callback::from_env().await?);
    run(service_fn(move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
        let callback = callback.clone();
        Box::pin(async move { Ok::<_, Error>(callback.handle_event(event.payload).await) })
    }))
    .await
}
