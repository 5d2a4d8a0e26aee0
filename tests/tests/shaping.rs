//! Provider shaping against DynamoDB (moto): the shared token bucket (GCRA) and the
//! shared circuit breaker. Every test passes explicit instants, so none sleeps and the
//! arithmetic is checked exactly.

use std::time::Duration;

use futures::future::join_all;
use pushgate_shared::shaping::{BreakerPolicy, Circuit, Rate, Throttle};
use pushgate_shared::store::{Breaker, Store};
use pushgate_tests::*;
use pushgate_tool::resources::{self, Overrides};

/// An instant on a minute boundary, so fixed windows start with the test.
const T0: i64 = 1_700_000_040_000;

/// A fresh messages table, and a store whose DynamoDB round trips are counted.
async fn store() -> (Store, CallCounter) {
    let sdk = resources::local_sdk(&moto().endpoint()).await;
    let prefix = format!("t{}-", ulid::Ulid::new().to_string().to_lowercase());
    let res = resources::create(&sdk, &prefix, &Overrides::default())
        .await
        .expect("create resources");
    let calls = CallCounter::default();
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(calls.clone())
            .build(),
    );
    (Store::new(ddb, res.messages_table()), calls)
}

async fn take_all(store: &Store, key: &str, rate: Rate, now_ms: i64, takes: usize) -> Vec<Throttle> {
    join_all((0..takes).map(|_| store.take_token(key, rate, now_ms)))
        .await
        .into_iter()
        .map(|r| r.expect("take"))
        .collect()
}

fn goes(answers: &[Throttle]) -> usize {
    answers.iter().filter(|a| **a == Throttle::Go).count()
}

fn ms(v: u64) -> Throttle {
    Throttle::Wait(Duration::from_millis(v))
}

#[test]
fn rates_read_from_app_config() {
    let rate: Rate = serde_json::from_str(r#"{"per_second": 5}"#).unwrap();
    assert_eq!(rate, Rate::per_second(5));
    assert_eq!((rate.count, rate.per_ms, rate.burst), (5, 1_000, 1));
    let rate: Rate = serde_json::from_str(r#"{"per_minute": 20, "burst": 3}"#).unwrap();
    assert_eq!(rate, Rate::per_minute(20).with_burst(3));
    assert_eq!(rate.interval(), Duration::from_secs(3));
    for bad in [
        r#"{}"#,
        r#"{"per_second": 1, "per_minute": 1}"#,
        r#"{"per_second": 0}"#,
        r#"{"per_second": 1, "burst": 0}"#,
        r#"{"per_secnod": 1}"#,
    ] {
        assert!(serde_json::from_str::<Rate>(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn with_burst_one_twenty_concurrent_takes_get_twenty_distinct_slots_one_interval_apart() {
    let (store, calls) = store().await;
    let rate = Rate::per_second(5);

    let answers = take_all(&store, "sms.acct", rate, T0, 20).await;
    assert_eq!(goes(&answers), 1, "{answers:?}");
    // Each wait reserves its slot: the losers are told 200, 400, … 3,800 ms, one each.
    let mut waits: Vec<u128> = answers
        .iter()
        .filter_map(|a| match a {
            Throttle::Wait(d) => Some(d.as_millis()),
            Throttle::Go => None,
        })
        .collect();
    waits.sort_unstable();
    assert_eq!(waits, (1..=19).map(|k| k * 200).collect::<Vec<u128>>());
    assert!(
        calls.service("DynamoDB") <= 40,
        "one round trip per take, two when the bucket changed state: {}",
        calls.service("DynamoDB")
    );
    // The next free slot is after the 19 reserved ones.
    assert_eq!(store.take_token("sms.acct", rate, T0 + 50).await.unwrap(), ms(3_950));
    // Once the reservations have passed, the bucket is free again.
    assert_eq!(
        store.take_token("sms.acct", rate, T0 + 4_200).await.unwrap(),
        Throttle::Go
    );
    // Another account has its own bucket.
    assert_eq!(store.take_token("sms.other", rate, T0).await.unwrap(), Throttle::Go);
}

#[tokio::test]
async fn tokens_come_back_as_time_passes() {
    let (store, _) = store().await;
    // 10 a second (T = 100 ms), 3 back to back (τ = 200 ms).
    let rate = Rate::per_second(10).with_burst(3);
    let take = |now| store.take_token("push.acct", rate, now);

    for _ in 0..3 {
        assert_eq!(take(T0).await.unwrap(), Throttle::Go);
    }
    // The fourth reserves the slot at T0 + 100 ms.
    assert_eq!(take(T0).await.unwrap(), ms(100));
    // The fifth, 40 ms later, the one after it.
    assert_eq!(take(T0 + 40).await.unwrap(), ms(160));
    // Idle long enough, the whole burst is back, and no more than it.
    for _ in 0..3 {
        assert_eq!(take(T0 + 10_000).await.unwrap(), Throttle::Go);
    }
    assert_eq!(take(T0 + 10_000).await.unwrap(), ms(100));

    // Sub-millisecond intervals are kept exactly (in microseconds), rounded up.
    let fast = Rate::per_second(3_000);
    assert_eq!(store.take_token("fast", fast, T0).await.unwrap(), Throttle::Go);
    assert_eq!(
        store.take_token("fast", fast, T0).await.unwrap(),
        Throttle::Wait(Duration::from_micros(334))
    );
    assert_eq!(store.take_token("fast", fast, T0 + 1).await.unwrap(), Throttle::Go);
}

#[tokio::test]
async fn a_burst_of_twenty_a_minute_lets_exactly_twenty_concurrent_takes_go() {
    let (store, calls) = store().await;
    let rate = Rate::per_minute(20).with_burst(20);

    let answers = take_all(&store, "mail.acct", rate, T0, 20).await;
    assert_eq!(goes(&answers), 20, "{answers:?}");
    assert_eq!(calls.service("DynamoDB"), 20, "one round trip per take");
    // The 21st reserves the slot 3 s on, the 22nd the one 3 s after that.
    assert_eq!(
        store.take_token("mail.acct", rate, T0).await.unwrap(),
        Throttle::Wait(Duration::from_secs(3))
    );
    assert_eq!(
        store.take_token("mail.acct", rate, T0 + 2_000).await.unwrap(),
        Throttle::Wait(Duration::from_secs(4))
    );
    assert_eq!(
        store.take_token("mail.acct", rate, T0 + 9_000).await.unwrap(),
        Throttle::Go
    );
}

#[tokio::test]
async fn n_failures_open_the_circuit_for_every_instance_within_one_cache_ttl() {
    let (store, calls) = store().await;
    let policy = BreakerPolicy::default();
    let (a, b) = (
        Breaker::new(store.clone(), policy, 1_000),
        Breaker::new(store.clone(), policy, 1_000),
    );
    let key = "twilio.main";

    assert_eq!(b.state(key, T0).await.unwrap(), Circuit::Closed);
    for i in 0..4 {
        assert_eq!(a.failure(key, false, T0 + i).await.unwrap(), Circuit::Closed);
    }
    assert_eq!(a.state(key, T0 + 5).await.unwrap(), Circuit::Closed);
    let open = Circuit::Open {
        until_ms: T0 + 10 + 30_000,
    };
    assert_eq!(a.failure(key, false, T0 + 10).await.unwrap(), open);

    // The happy path touches nothing: cached states and plain successes are free.
    calls.reset();
    assert_eq!(a.state(key, T0 + 11).await.unwrap(), open);
    assert_eq!(
        b.state(key, T0 + 999).await.unwrap(),
        Circuit::Closed,
        "b's cache is still fresh"
    );
    b.success(key, false, T0 + 999).await.unwrap();
    assert_eq!(calls.service("DynamoDB"), 0, "{:?}", calls.snapshot());

    assert_eq!(
        b.state(key, T0 + 1_000).await.unwrap(),
        open,
        "b re-reads after its ttl"
    );
    assert_eq!(calls.service("DynamoDB"), 1);
    // Failures in flight when it opened do not re-open it: the count restarted.
    assert_eq!(b.failure(key, false, T0 + 1_001).await.unwrap(), Circuit::Closed);
    assert_eq!(store.circuit(key, &policy, T0 + 1_002).await.unwrap(), open);
    // Other accounts are unaffected.
    assert_eq!(b.state("twilio.backup", T0 + 1_002).await.unwrap(), Circuit::Closed);
}

#[tokio::test]
async fn a_batch_that_finds_the_cached_state_stale_reads_it_once() {
    let (store, calls) = store().await;
    let breaker = Breaker::new(store, BreakerPolicy::default(), 1_000);
    // Ten records of one batch ask for the same account's circuit at once, on a cold
    // cache: one of them reads it, the others wait for that read.
    let states = futures::future::join_all((0..10).map(|_| breaker.state("aliyun.key", T0))).await;
    assert!(states.iter().all(|s| matches!(s, Ok(Circuit::Closed))));
    assert_eq!(
        calls.snapshot().get("DynamoDB.GetItem"),
        Some(&1),
        "{:?}",
        calls.snapshot()
    );
    // And again once the entry is stale.
    calls.reset();
    let states = futures::future::join_all((0..10).map(|_| breaker.state("aliyun.key", T0 + 1_000))).await;
    assert!(states.iter().all(|s| matches!(s, Ok(Circuit::Closed))));
    assert_eq!(calls.service("DynamoDB"), 1);
}

#[tokio::test]
async fn records_that_took_their_instant_before_the_refresh_use_its_read() {
    let (store, calls) = store().await;
    let breaker = Breaker::new(store, BreakerPolicy::default(), 1_000);
    // The record that refreshed stamped a later millisecond than the ones that had
    // taken their instant before queueing behind it: they are served its read.
    let states = futures::future::join_all((0..10).map(|i| breaker.state("aliyun.key", T0 + 5 - i))).await;
    assert!(states.iter().all(|s| matches!(s, Ok(Circuit::Closed))));
    assert_eq!(calls.service("DynamoDB"), 1, "{:?}", calls.snapshot());
}

#[tokio::test]
async fn after_the_cool_down_one_caller_probes_and_its_outcome_decides_for_everyone() {
    let (store, _) = store().await;
    // A long window, so every failure below falls into the same one.
    let policy = BreakerPolicy {
        failures: 3,
        window_ms: 600_000,
        cool_down_ms: 10_000,
    };
    let key = "aliyun.main";
    let probes = |now| {
        let store = store.clone();
        async move {
            join_all((0..10).map(|_| store.circuit(key, &policy, now)))
                .await
                .into_iter()
                .map(|r| r.expect("circuit"))
                .collect::<Vec<_>>()
        }
    };

    for i in 0..3 {
        store.record_failure(key, &policy, false, T0 + i).await.unwrap();
    }
    let opened_until = T0 + 2 + 10_000;
    assert_eq!(
        store.circuit(key, &policy, opened_until - 1).await.unwrap(),
        Circuit::Open { until_ms: opened_until }
    );

    // Cool-down over: exactly one of ten concurrent callers wins the probe.
    let now = opened_until + 5;
    let answers = probes(now).await;
    assert_eq!(
        answers.iter().filter(|c| **c == Circuit::Probe).count(),
        1,
        "{answers:?}"
    );
    let held = Circuit::Open { until_ms: now + 10_000 };
    assert!(
        answers.iter().all(|c| *c == Circuit::Probe || *c == held),
        "{answers:?}"
    );

    // The probe fails: open again for a full cool-down, for everyone.
    let reopened = Circuit::Open {
        until_ms: now + 500 + 10_000,
    };
    assert_eq!(
        store.record_failure(key, &policy, true, now + 500).await.unwrap(),
        reopened
    );
    assert_eq!(store.circuit(key, &policy, now + 600).await.unwrap(), reopened);

    // Next cool-down over: probing through breaker instances this time.
    let now = now + 500 + 10_000;
    let instances: Vec<Breaker> = (0..10)
        .map(|_| Breaker::new(store.clone(), policy, Breaker::DEFAULT_TTL_MS))
        .collect();
    let answers: Vec<Circuit> = join_all(instances.iter().map(|b| b.state(key, now)))
        .await
        .into_iter()
        .map(|r| r.expect("state"))
        .collect();
    let winner = answers.iter().position(|c| *c == Circuit::Probe).expect("a probe");
    assert_eq!(
        answers.iter().filter(|c| **c == Circuit::Probe).count(),
        1,
        "{answers:?}"
    );

    // The probe succeeds: closed for everyone.
    instances[winner].success(key, true, now + 200).await.unwrap();
    assert_eq!(instances[winner].state(key, now + 201).await.unwrap(), Circuit::Closed);
    let other = &instances[(winner + 1) % instances.len()];
    assert!(
        matches!(other.state(key, now + 201).await.unwrap(), Circuit::Open { .. }),
        "cached"
    );
    assert_eq!(other.state(key, now + 1_000).await.unwrap(), Circuit::Closed);
    assert_eq!(store.circuit(key, &policy, now + 1_000).await.unwrap(), Circuit::Closed);

    // Still in the window that opened it, failures count afresh after recovery.
    for i in 0..2 {
        assert_eq!(
            store
                .record_failure(key, &policy, false, now + 2_000 + i)
                .await
                .unwrap(),
            Circuit::Closed
        );
    }
    assert!(matches!(
        store.record_failure(key, &policy, false, now + 2_010).await.unwrap(),
        Circuit::Open { .. }
    ));

    // A probe's late success does not close a circuit re-opened meanwhile.
    assert!(!store.record_success(key, true, now + 2_020).await.unwrap());
    assert!(matches!(
        store.circuit(key, &policy, now + 2_030).await.unwrap(),
        Circuit::Open { .. }
    ));
}
