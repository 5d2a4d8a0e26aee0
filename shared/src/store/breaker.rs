//! Circuit breaker per provider account, its state shared in DynamoDB so that every
//! dispatcher instance stops sending to a failing provider at once, and exactly one of
//! them probes it after the cool-down.
//!
//! Items: `_circuit.{key}` holds `opened_until` and `probe_until` (Unix ms) while the
//! circuit is open or half-open; `_circuit.{key}.{window}` counts failures in a fixed
//! window and expires with it. Successes in the closed state write nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::{aws_err, is_condition_failure, n, s, Store, StoreError};
use crate::shaping::{BreakerPolicy, Circuit};

fn circuit_key(key: &str) -> String {
    // '.' never occurs in message keys, so the items cannot collide with them.
    format!("_circuit.{key}")
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<i64>, StoreError> {
    item.get(name)
        .map(|v| {
            v.as_n()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| StoreError::Corrupt(format!("circuit {name} is not an integer: {v:?}")))
        })
        .transpose()
}

impl Store {
    /// The circuit of provider account `key` at `now_ms`: one eventually consistent
    /// GetItem, plus, once the cool-down is over, one conditional UpdateItem by which at
    /// most one caller per cool-down period wins the probe.
    pub async fn circuit(&self, key: &str, policy: &BreakerPolicy, now_ms: i64) -> Result<Circuit, StoreError> {
        let pk = circuit_key(key);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .send()
            .await
            .map_err(aws_err)?;
        let item = out.item.unwrap_or_default();
        let Some(opened_until) = number(&item, "opened_until")? else {
            return Ok(Circuit::Closed);
        };
        if now_ms < opened_until {
            return Ok(Circuit::Open { until_ms: opened_until });
        }
        // Someone holds the probe: no need to write to learn that we lost.
        if let Some(probe_until) = number(&item, "probe_until")?.filter(|p| *p >= now_ms) {
            return Ok(Circuit::Open { until_ms: probe_until });
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression("SET probe_until = :probe_until")
            .condition_expression("opened_until <= :now AND (attribute_not_exists(probe_until) OR probe_until < :now)")
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":probe_until", n(now_ms.saturating_add(policy.cool_down_ms)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Circuit::Probe),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let old = c.item().cloned().unwrap_or_default();
                    match (number(&old, "opened_until")?, number(&old, "probe_until")?) {
                        // Closed (by a probe's success) since our read.
                        (None, _) => Ok(Circuit::Closed),
                        // Re-opened since our read.
                        (Some(until), _) if until > now_ms => Ok(Circuit::Open { until_ms: until }),
                        // Another caller won the probe.
                        (Some(_), Some(probe_until)) => Ok(Circuit::Open { until_ms: probe_until }),
                        (Some(_), None) => Err(StoreError::Corrupt(format!("{pk}: probe refused without a holder"))),
                    }
                }
                _ => Err(aws_err(e)),
            },
        }
    }

    /// Records a failed send to provider account `key`. A non-probe failure is counted in
    /// the current fixed window (one UpdateItem); reaching `policy.failures` opens the
    /// circuit and restarts the count, so failures after a later recovery count afresh. A
    /// failed probe opens it again at once. Returns `Open` when this call opened the
    /// circuit, else `Closed` (as far as this failure goes).
    pub async fn record_failure(
        &self,
        key: &str,
        policy: &BreakerPolicy,
        probe: bool,
        now_ms: i64,
    ) -> Result<Circuit, StoreError> {
        let until_ms = now_ms.saturating_add(policy.cool_down_ms);
        if probe {
            self.open_circuit(key, until_ms).await?;
            return Ok(Circuit::Open { until_ms });
        }
        let window_ms = policy.window_ms.max(1);
        let window = now_ms.div_euclid(window_ms);
        let counter = format!("{}.{window}", circuit_key(key));
        let ttl = (window + 1).saturating_mul(window_ms) / 1000 + 60;
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&counter))
            .update_expression("SET expires_at = :ttl ADD failures :one")
            .expression_attribute_values(":ttl", n(ttl))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(aws_err)?;
        let failures = number(&out.attributes.unwrap_or_default(), "failures")?.unwrap_or(0);
        if failures < i64::from(policy.failures.max(1)) {
            return Ok(Circuit::Closed);
        }
        let reset = async {
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(&counter))
                .update_expression("SET failures = :zero")
                .expression_attribute_values(":zero", n(0))
                .send()
                .await
                .map_err(aws_err)
        };
        futures::future::try_join(self.open_circuit(key, until_ms), reset).await?;
        Ok(Circuit::Open { until_ms })
    }

    /// Records a successful send. Only a probe's success writes: it closes the circuit,
    /// unless the circuit was re-opened (to a time after `now_ms`) while the probe ran.
    /// Returns whether this call closed it.
    pub async fn record_success(&self, key: &str, probe: bool, now_ms: i64) -> Result<bool, StoreError> {
        if !probe {
            return Ok(false);
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(circuit_key(key)))
            .update_expression("REMOVE opened_until, probe_until")
            .condition_expression("attribute_not_exists(opened_until) OR opened_until <= :now")
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(aws_err(e)),
        }
    }

    async fn open_circuit(&self, key: &str, until_ms: i64) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(circuit_key(key)))
            .update_expression("SET opened_until = :until REMOVE probe_until")
            .expression_attribute_values(":until", n(until_ms))
            .send()
            .await
            .map_err(aws_err)?;
        Ok(())
    }
}

/// A circuit breaker with an in-process cache in front of the shared state, so that the
/// happy path costs no DynamoDB request per message: every instance re-reads the shared
/// state at most once per `ttl_ms` per provider account (and when a cached open period
/// ends). A probe win is never cached: it belongs to one caller. Refreshes are single
/// flight: the records of a batch that find an account's entry stale wait for one read
/// instead of each making their own.
#[derive(Debug)]
pub struct Breaker {
    store: Store,
    policy: BreakerPolicy,
    ttl_ms: i64,
    cache: Mutex<HashMap<String, (i64, Circuit)>>,
    /// One refresh lock per account.
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Breaker {
    /// The cache lifetime that suits most uses: a failing provider is shunned by every
    /// instance within a second of its circuit opening.
    pub const DEFAULT_TTL_MS: i64 = 1_000;

    pub fn new(store: Store, policy: BreakerPolicy, ttl_ms: i64) -> Self {
        Self {
            store,
            policy,
            ttl_ms,
            cache: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashMap::new()),
        }
    }

    /// The circuit of provider account `key`: from the cache while fresh, else from
    /// DynamoDB (see [`Store::circuit`]).
    pub async fn state(&self, key: &str, now_ms: i64) -> Result<Circuit, StoreError> {
        if let Some(c) = self.cached(key, now_ms) {
            return Ok(c);
        }
        let lock = {
            let mut refreshing = self.refreshing.lock().unwrap_or_else(PoisonError::into_inner);
            refreshing.entry(key.to_string()).or_default().clone()
        };
        let _refresh = lock.lock().await;
        // Another caller may have refreshed it while this one waited.
        if let Some(c) = self.cached(key, now_ms) {
            return Ok(c);
        }
        let c = self.store.circuit(key, &self.policy, now_ms).await?;
        match c {
            Circuit::Probe => self.forget(key),
            _ => self.remember(key, now_ms, c),
        }
        Ok(c)
    }

    /// Reports a failed send (`probe`: the caller had won the probe). Returns `Open` when
    /// this failure opened the circuit (see [`Store::record_failure`]).
    pub async fn failure(&self, key: &str, probe: bool, now_ms: i64) -> Result<Circuit, StoreError> {
        let c = self.store.record_failure(key, &self.policy, probe, now_ms).await?;
        if matches!(c, Circuit::Open { .. }) {
            self.remember(key, now_ms, c);
        }
        Ok(c)
    }

    /// Reports a successful send: free unless `probe`, which closes the circuit.
    pub async fn success(&self, key: &str, probe: bool, now_ms: i64) -> Result<(), StoreError> {
        if !probe {
            return Ok(());
        }
        if self.store.record_success(key, probe, now_ms).await? {
            self.remember(key, now_ms, Circuit::Closed);
        } else {
            // Re-opened meanwhile: learn until when on the next read.
            self.forget(key);
        }
        Ok(())
    }

    fn cached(&self, key: &str, now_ms: i64) -> Option<Circuit> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (read_at, c) = cache.get(key).copied()?;
        // A read stamped after `now_ms` is fresh too: records of one batch take their
        // instant before queueing for the refresh, so the one that refreshed may have
        // stamped a later millisecond than those that waited for it.
        let fresh = now_ms.saturating_sub(read_at) < self.ttl_ms;
        match c {
            Circuit::Open { until_ms } if fresh && now_ms < until_ms => Some(c),
            Circuit::Closed if fresh => Some(c),
            _ => None,
        }
    }

    fn remember(&self, key: &str, now_ms: i64, c: Circuit) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.insert(key.to_string(), (now_ms, c));
    }

    fn forget(&self, key: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.remove(key);
    }
}
