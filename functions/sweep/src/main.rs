//! Sweep function (EventBridge schedule): `sent` messages past their channel's receipt
//! timeout → `unknown` (`no_receipt`); `accepted` records nobody queued → queued.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use pushgate_shared::handlers::sweep::{Sweep, Swept};

#[tokio::main]
async fn main() -> Result<(), Error> {
    pushgate_shared::telemetry::init();
    let sweep = Arc::new(Sweep::from_env().await?);
    run(service_fn(move |_: LambdaEvent<serde_json::Value>| {
        let sweep = sweep.clone();
        async move { Ok::<Swept, Error>(sweep.run().await) }
    }))
    .await
}
