//! The DynamoDB adapters as the dispatcher's ports: each trait method is one of the
//! store's conditional writes, its error mapped once here.

use super::{Breaker, Store, StoreError};
use crate::delivery::Finish;
use crate::message::Message;
use crate::ports::{Buckets, Charge, Circuits, Claim, Created, Ledger, PortError, Release, RouteStep};
use crate::shaping::{Circuit, Rate, Throttle};

impl From<StoreError> for PortError {
    fn from(e: StoreError) -> Self {
        PortError(e.to_string())
    }
}

#[async_trait::async_trait]
impl Ledger for Store {
    async fn create(&self, message: &Message, now_ms: i64) -> Result<Created, PortError> {
        Ok(Store::create(self, message, now_ms).await?)
    }

    async fn claim(
        &self,
        pk: &str,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        charge_first: bool,
    ) -> Result<Claim, PortError> {
        Ok(Store::claim(self, pk, id, owner, now_ms, lease_until_ms, charge_first).await?)
    }

    async fn charge(&self, pk: &str, app: &str, owner: &str) -> Result<Charge, PortError> {
        Ok(Store::charge(self, pk, app, owner).await?)
    }

    async fn route_step(&self, pk: &str, owner: &str, step: &RouteStep, now_ms: i64) -> Result<(), PortError> {
        Ok(Store::route_step(self, pk, owner, step, now_ms).await?)
    }

    async fn release(&self, pk: &str, owner: &str, release: &Release, now_ms: i64) -> Result<bool, PortError> {
        Ok(Store::release(self, pk, owner, release, now_ms).await?)
    }

    async fn finish(
        &self,
        pk: &str,
        owner: &str,
        finish: Finish,
        refund_app: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, PortError> {
        Ok(match refund_app {
            Some(app) => self.finish_refunded(pk, app, owner, finish, now_ms).await?,
            None => Store::finish(self, pk, owner, finish, now_ms).await?,
        })
    }
}

#[async_trait::async_trait]
impl Buckets for Store {
    async fn take(&self, account: &str, rate: Rate, now_ms: i64) -> Result<Throttle, PortError> {
        Ok(self.take_token(account, rate, now_ms).await?)
    }
}

#[async_trait::async_trait]
impl Circuits for Breaker {
    async fn state(&self, account: &str, now_ms: i64) -> Result<Circuit, PortError> {
        Ok(Breaker::state(self, account, now_ms).await?)
    }

    async fn report(&self, account: &str, failed: bool, probe: bool, now_ms: i64) -> Result<(), PortError> {
        match failed {
            true => self.failure(account, probe, now_ms).await.map(|_| ())?,
            false => self.success(account, probe, now_ms).await?,
        }
        Ok(())
    }
}
