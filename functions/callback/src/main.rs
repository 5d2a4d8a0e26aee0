//! Callback function: provider delivery receipts → forward-only status updates.

use std::sync::Arc;

use lambda_http::{run, service_fn, Error, Request};
use pushgate_shared::handlers::callback::Callback;

#[tokio::main]
async fn main() -> Result<(), Error> {
    pushgate_shared::telemetry::init();
    let callback = Arc::new(Callback::from_env().await?);
    run(service_fn(move |req: Request| {
        let callback = callback.clone();
        async move { Ok::<_, Error>(callback.handle(req).await) }
    }))
    .await
}
