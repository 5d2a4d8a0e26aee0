//! Shaping policies as data: provider send rates, the circuit breaker's policy and the
//! states it answers with, and retry backoff. Pure: the DynamoDB buckets and circuits
//! that enforce them live in `store/`, the decisions that use them in `dispatch/`.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A provider's rate limit: `count` sends per `per_ms` milliseconds, of which up to
/// `burst` may go back to back. App config carries it as `{"per_second": 5}` or
/// `{"per_minute": 20, "burst": 3}` (burst defaults to 1: evenly spaced sends).
///
/// A `count` or `burst` of 0 is treated as 1 (config rejects both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "RateSpec")]
pub struct Rate {
    pub count: u32,
    pub per_ms: u64,
    pub burst: u32,
}

impl Rate {
    /// `count` sends a second, evenly spaced (burst 1).
    pub const fn per_second(count: u32) -> Self {
        Self {
            count,
            per_ms: 1_000,
            burst: 1,
        }
    }

    /// `count` sends a minute, evenly spaced (burst 1).
    pub const fn per_minute(count: u32) -> Self {
        Self {
            count,
            per_ms: 60_000,
            burst: 1,
        }
    }

    /// The same rate, allowing `burst` sends back to back after an idle period.
    pub const fn with_burst(self, burst: u32) -> Self {
        Self { burst, ..self }
    }

    /// The spacing between sends at the sustained rate (rounded up to the microsecond).
    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us().unsigned_abs())
    }

    /// `T` in microseconds, rounded up so rounding never exceeds the configured rate.
    pub(crate) fn interval_us(&self) -> i64 {
        let per_us = u128::from(self.per_ms) * 1_000;
        let t = per_us.div_ceil(u128::from(self.count.max(1))).max(1);
        i64::try_from(t).unwrap_or(i64::MAX)
    }

    /// `τ` in microseconds: how far ahead of now `tat` may run and still let a send go.
    pub(crate) fn tolerance_us(&self) -> i64 {
        i64::from(self.burst.max(1) - 1).saturating_mul(self.interval_us())
    }
}

/// The config form of a [`Rate`]: exactly one of `per_second` / `per_minute`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RateSpec {
    per_second: Option<u32>,
    per_minute: Option<u32>,
    #[serde(default = "one")]
    burst: u32,
}

fn one() -> u32 {
    1
}

impl TryFrom<RateSpec> for Rate {
    type Error = String;

    fn try_from(spec: RateSpec) -> Result<Self, Self::Error> {
        let rate = match (spec.per_second, spec.per_minute) {
            (Some(c), None) => Rate::per_second(c),
            (None, Some(c)) => Rate::per_minute(c),
            _ => return Err("a rate needs exactly one of `per_second`, `per_minute`".into()),
        };
        if rate.count == 0 {
            return Err("a rate's count must be at least 1".into());
        }
        if spec.burst == 0 {
            return Err("a rate's burst must be at least 1".into());
        }
        Ok(rate.with_burst(spec.burst))
    }
}

/// The answer to a take: send now, or a slot reserved after the given time: come back
/// then and send without taking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    Go,
    Wait(Duration),
}

/// When a provider account's circuit opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// This many failures ...
    pub failures: u32,
    /// ... within one fixed window of this length (ms) open the circuit.
    pub window_ms: i64,
    /// The circuit stays open this long (ms); then one caller probes the provider.
    pub cool_down_ms: i64,
}

impl Default for BreakerPolicy {
    /// 5 failures within 60 s open the circuit for 30 s.
    fn default() -> Self {
        Self {
            failures: 5,
            window_ms: 60_000,
            cool_down_ms: 30_000,
        }
    }
}

/// A provider account's circuit, as seen by one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Send as usual.
    Closed,
    /// Do not send before `until_ms` (the provider is failing, or another caller probes it).
    Open { until_ms: i64 },
    /// The caller won the half-open probe: send one message and report its outcome
    /// with `probe = true`, which closes or re-opens the circuit for everyone.
    Probe,
}

/// Backoff before retry `attempt` (1-based): 2^attempt seconds capped at 15 minutes,
/// with "equal jitter" (half fixed, half random) so retries of a failed batch spread out.
pub fn backoff(attempt: u32, seed: &str) -> Duration {
    let cap = 900u64;
    let full = 2u64.saturating_pow(attempt.min(20)).min(cap);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(seed.as_bytes());
    let jitter = h.finish() % (full / 2 + 1);
    Duration::from_secs(full / 2 + jitter)
}

/// `d` rounded up to whole seconds, the unit of SQS visibility: truncated, a sub-second
/// delay (a token due within the second) would make the job visible again at once, and
/// its redeliveries would spend the queue's `maxReceiveCount` in a hot loop.
pub fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_delays_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_micros(1)), Duration::from_secs(1));
        assert_eq!(whole_seconds(Duration::from_millis(200)), Duration::from_secs(1));
        assert_eq!(whole_seconds(Duration::from_millis(2_001)), Duration::from_secs(3));
        assert_eq!(whole_seconds(Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(whole_seconds(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_grows_exponentially_within_jittered_bounds_and_is_capped() {
        for (attempt, full) in [(1u32, 2u64), (3, 8), (6, 64), (12, 900), (40, 900)] {
            for seed in ["a", "b", "c", "d"] {
                let d = backoff(attempt, seed).as_secs();
                assert!(
                    (full / 2..=full).contains(&d),
                    "attempt {attempt}: {d}s not in [{}, {full}]",
                    full / 2
                );
            }
        }
    }
}
