//! Receipt pull function (its own EventBridge schedule): SMS still `sent` after a short
//! delay, of apps whose provider account pulls its receipts → asked at the provider; a
//! final report is applied as the callback applies a pushed one.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use pushgate_shared::handlers::pull::{Pull, Pulled};

#[tokio::main]
async fn main() -> Result<(), Error> {
    pushgate_shared::telemetry::init();
    let pull = Arc::new(Pull::from_env().await?);
    run(service_fn(move |_: LambdaEvent<serde_json::Value>| {
        let pull = pull.clone();
        async move { Ok::<Pulled, Error>(pull.run().await) }
    }))
    .await
}
