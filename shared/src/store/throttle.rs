//! Provider rate shaping: a token bucket per provider account, kept as one DynamoDB item
//! so that every dispatcher instance draws from the same bucket.
//!
//! The bucket is GCRA (the generic cell rate algorithm): the item holds only the
//! theoretical arrival time `tat` of the next send. With interval `T = per / count` and
//! tolerance `τ = (burst - 1)·T`, a send at `now` may go iff `max(tat, now) - now ≤ τ`,
//! and then `tat := max(tat, now) + T`; otherwise it waits `tat - τ - now`.
//!
//! A send that must wait **reserves** its slot (`tat += T` all the same) and is told
//! when it falls due: the dispatcher parks the message until then and sends it without
//! taking again. Without reservations every deferred message would come back at the same
//! instant, one would win and the rest would be parked again: a backlog far above the
//! rate would spend SQS receives (and its `maxReceiveCount`) in a loop.
//!
//! `tat` is stored in integer **microseconds** since the Unix epoch, not milliseconds:
//! `T` is fractional in milliseconds for rates above 1000 per second (or not dividing
//! evenly, e.g. 3 per second), and DynamoDB arithmetic is exact on integers. `T` is
//! rounded *up* to the microsecond, so rounding can only make the shaped rate a hair
//! slower than configured, never faster than what the provider allows.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::{aws_err, n, s, Store, StoreError};
use crate::shaping::{Rate, Throttle};

/// How long a bucket item outlives its `tat` before DynamoDB may delete it. Once `tat`
/// is in the past an absent item means the same as a present one (a full bucket).
const TTL_MARGIN_US: i64 = 60_000_000;

/// Conditional updates tried per take before giving up on a contended bucket.
const MAX_ROUNDS: usize = 3;

/// The two conditional writes that together make `tat := max(tat, now) + T`.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The bucket is busy (`now ≤ tat ≤ now + τ`), or absent: `tat := tat + T`.
    Add,
    /// The bucket is idle (`tat < now`), or absent: `tat := now + T`.
    Reset,
    /// The bucket is ahead (`tat > now + τ`): `tat := tat + T`, reserving the slot.
    Reserve,
}

/// The result of one conditional write.
enum Written {
    /// Applied; `tat` as written (µs).
    Applied(i64),
    /// Refused: the item as it was (`None` when there is none).
    Refused(Option<HashMap<String, AttributeValue>>),
}

/// What a refused write saw, which says which write to try next.
enum Seen {
    Idle,
    Busy,
    /// `tat` (µs) is more than `τ` ahead: the caller must wait, so reserves.
    Ahead,
}

fn bucket_key(key: &str) -> String {
    // '.' never occurs in message keys, so the item cannot collide with one.
    format!("_bucket.{key}")
}

fn wait_us(us: i64) -> Throttle {
    Throttle::Wait(Duration::from_micros(us.max(1).unsigned_abs()))
}

impl Store {
    /// Takes one send from the provider account's shared token bucket at `now_ms`
    /// (GCRA, see the module doc): `Go`, or `Wait(d)` with the slot at `now + d`
    /// reserved. Normally one conditional UpdateItem per call, two when the bucket
    /// changed state; a take contended past a few rounds answers "wait one interval"
    /// (unreserved) rather than looping on DynamoDB.
    pub async fn take_token(&self, key: &str, rate: Rate, now_ms: i64) -> Result<Throttle, StoreError> {
        let pk = bucket_key(key);
        let now = now_ms.saturating_mul(1_000);
        let t = rate.interval_us();
        let tau = rate.tolerance_us();
        // DynamoDB has no max(): the two branches of max(tat, now) are two conditional
        // writes, and a refused one returns the item, which says which branch holds.
        // With burst 1 (τ = 0) a send can only go from an idle bucket, so start with the
        // reset; with a burst, start with the add, which serves a busy bucket and also
        // creates an absent one. Either way the common case is one round trip.
        let mut step = if tau == 0 { Step::Reset } else { Step::Add };
        for _ in 0..MAX_ROUNDS {
            match self.bucket_write(&pk, step, now, t, tau).await? {
                // The slot this take got starts at the old tat (new minus T), τ early.
                Written::Applied(tat) if matches!(step, Step::Reserve) => return Ok(wait_us(tat - t - tau - now)),
                Written::Applied(_) => return Ok(Throttle::Go),
                Written::Refused(old) => {
                    step = match seen(old.as_ref(), now, tau)? {
                        Seen::Idle => Step::Reset,
                        Seen::Busy => Step::Add,
                        Seen::Ahead => Step::Reserve,
                    }
                }
            }
        }
        Ok(wait_us(t))
    }

    /// One conditional write of the bucket.
    async fn bucket_write(&self, pk: &str, step: Step, now: i64, t: i64, tau: i64) -> Result<Written, StoreError> {
        // The item may be deleted once `tat` is past: the furthest a write can move it
        // is now + τ + T.
        let ttl = (now.saturating_add(tau).saturating_add(t).saturating_add(TTL_MARGIN_US)) / 1_000_000 + 1;
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .expression_attribute_values(":ttl", n(ttl))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let req = match step {
            Step::Add => req
                .update_expression("SET tat = if_not_exists(tat, :now) + :t, expires_at = :ttl")
                .expression_attribute_values(":now", n(now))
                .condition_expression("attribute_not_exists(tat) OR (tat >= :now AND tat <= :limit)")
                .expression_attribute_values(":t", n(t))
                .expression_attribute_values(":limit", n(now.saturating_add(tau))),
            Step::Reset => req
                .update_expression("SET tat = :next, expires_at = :ttl")
                .condition_expression("attribute_not_exists(tat) OR tat < :now")
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":next", n(now.saturating_add(t))),
            // A reservation moves tat beyond now + τ + T: the item must live past it.
            Step::Reserve => req
                .update_expression("SET tat = tat + :t, expires_at = if_not_exists(expires_at, :ttl) + :t_s")
                .condition_expression("tat > :limit")
                .expression_attribute_values(":t", n(t))
                .expression_attribute_values(":t_s", n(t / 1_000_000 + 1))
                .expression_attribute_values(":limit", n(now.saturating_add(tau))),
        };
        match req.send().await {
            Ok(out) => {
                let tat = out
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("tat"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt("bucket write returned no tat".into()))?;
                Ok(Written::Applied(tat))
            }
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => Ok(Written::Refused(c.item().cloned())),
                _ => Err(aws_err(e)),
            },
        }
    }
}

fn seen(old: Option<&HashMap<String, AttributeValue>>, now: i64, tau: i64) -> Result<Seen, StoreError> {
    let Some(tat) = old.and_then(|i| i.get("tat")) else {
        return Ok(Seen::Idle);
    };
    let tat: i64 = tat
        .as_n()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("bucket tat is not an integer: {tat:?}")))?;
    Ok(if tat < now {
        Seen::Idle
    } else if tat - now <= tau {
        Seen::Busy
    } else {
        Seen::Ahead
    })
}
