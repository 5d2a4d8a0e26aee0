//! The AWS call budget per message, counted at the SDK (every round trip, retries
//! included): ingest = 1 DynamoDB write + 1 SQS call (an `Idempotency-Key` adds 1
//! UpdateItem; under a v1 signature also 1 PutItem, the signature's replay guard);
//! dispatch ≤ 2 DynamoDB round trips + 1 provider call.

use std::time::Duration;

use pushgate_tests::*;
use serde_json::json;

/// A stack whose dispatcher trusts the circuit state it read for a minute, as a warm
/// instance at steady load does between refreshes: the counts below are the per-message
/// budget, not how slow a loaded test machine happens to be (with the 1 s default, a
/// drain that took longer than a second added a circuit read).
async fn budget_stack() -> Stack {
    Stack::with(StackOptions {
        breaker_cache_ms: 60_000,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn ingest_and_dispatch_stay_within_the_call_budget() {
    let stack = budget_stack().await;
    // Warm the service-secret cache, as a warm Lambda has it.
    stack.ingest.apps.current().await.unwrap();
    stack.calls.reset();

    const N: usize = 5;
    for i in 0..N {
        let body = serde_json::to_vec(
            &json!({"channel":"email","to": format!("b{i}@example.com"),"content":{"subject":"s","text":"t"}}),
        )
        .unwrap();
        let req = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], now(), &[]);
        assert_eq!(parts(stack.ingest.handle(req).await).0, 202);
    }
    let ingest = stack.calls.snapshot();
    assert_eq!(ingest.get("DynamoDB.PutItem"), Some(&N), "{ingest:?}");
    assert_eq!(ingest.get("SQS.SendMessage"), Some(&N), "{ingest:?}");
    assert_eq!(
        ingest.len(),
        2,
        "nothing else, not even the service secret (cached): {ingest:?}"
    );

    // A warm instance has read SES's circuit state within the last second: closed. The
    // harness app sends from the default sender, whose identity is the account.
    let ses = format!("ses.{}", pushgate_shared::providers::key_part(EMAIL_FROM));
    stack
        .dispatcher
        .breaker
        .state(&ses, pushgate_shared::clock::now_ms())
        .await
        .unwrap();
    stack.calls.reset();
    stack.drain(Duration::from_secs(10)).await;
    let dispatch = stack.calls.snapshot();
    assert_eq!(
        stack.calls.service("DynamoDB"),
        2 * N,
        "claim + finish per message: {dispatch:?}"
    );
    assert_eq!(dispatch.get("SESv2.SendEmail"), Some(&N), "{dispatch:?}");
    let kinds: Vec<&str> = dispatch.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        vec!["DynamoDB.UpdateItem", "SESv2.SendEmail"],
        "no other calls per message"
    );
    assert_eq!(
        stack.calls.service("SQS"),
        0,
        "the dispatcher itself makes no SQS calls: {dispatch:?}"
    );
}

#[tokio::test]
async fn an_idempotency_key_costs_one_more_write_to_close_its_in_flight_window() {
    let stack = budget_stack().await;
    stack.ingest.apps.current().await.unwrap();
    stack.calls.reset();
    let body =
        serde_json::to_vec(&json!({"channel":"email","to":"k@example.com","content":{"subject":"s","text":"t"}}))
            .unwrap();
    // Signed v2, which covers the key: the record is the replay guard, one write.
    let req = signed_v2("POST", "/v1/messages", &body, APP, APP_SECRETS[0], now(), Some("k-1"));
    assert_eq!(parts(stack.ingest.handle(req).await).0, 202);
    let calls = stack.calls.snapshot();
    assert_eq!(calls.get("DynamoDB.PutItem"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("DynamoDB.UpdateItem"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("SQS.SendMessage"), Some(&1), "{calls:?}");
    assert_eq!(calls.len(), 3, "{calls:?}");
}

#[tokio::test]
async fn per_message_ingest_calls_by_signature_version_and_key() {
    let stack = budget_stack().await;
    stack.ingest.apps.current().await.unwrap();
    // (name, v2?, key) → (PutItem, UpdateItem, SendMessage)
    let cases: [(&str, bool, Option<&str>, [usize; 3]); 4] = [
        ("v1 without key", false, None, [1, 0, 1]),
        ("v2 without key", true, None, [1, 0, 1]),
        ("v2 with key", true, Some("b-2"), [1, 1, 1]),
        // v1 does not sign the key: one more conditional PutItem guards the signature.
        ("v1 with key", false, Some("b-1"), [2, 1, 1]),
    ];
    for (i, (name, v2, key, want)) in cases.into_iter().enumerate() {
        let body = serde_json::to_vec(
            &json!({"channel":"email","to": format!("c{i}@example.com"),"content":{"subject":"s","text":"t"}}),
        )
        .unwrap();
        let req = if v2 {
            signed_v2("POST", "/v1/messages", &body, APP, APP_SECRETS[0], now(), key)
        } else {
            let extra: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
            signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], now(), &extra)
        };
        stack.calls.reset();
        assert_eq!(parts(stack.ingest.handle(req).await).0, 202, "{name}");
        let calls = stack.calls.snapshot();
        let got = [
            calls.get("DynamoDB.PutItem").copied().unwrap_or(0),
            calls.get("DynamoDB.UpdateItem").copied().unwrap_or(0),
            calls.get("SQS.SendMessage").copied().unwrap_or(0),
        ];
        assert_eq!(got, want, "{name}: {calls:?}");
        assert_eq!(
            got.iter().sum::<usize>(),
            calls.values().sum::<usize>(),
            "{name}: nothing else"
        );
    }
}

#[tokio::test]
async fn a_refused_replay_costs_one_failed_write_and_no_rate_limit_hit() {
    let stack = budget_stack().await;
    stack.ingest.apps.current().await.unwrap();
    let body =
        serde_json::to_vec(&json!({"channel":"webhook","to": stack.receiver.url("r"),"content":{"text":"t"}})).unwrap();
    let ts = now();
    let req = || signed("POST", "/v1/messages", &body, TIGHT_APP, OTHER_SECRET, ts, &[]);
    stack.calls.reset();
    assert_eq!(parts(stack.ingest.handle(req()).await).0, 202);
    let calls = stack.calls.snapshot();
    assert_eq!(
        (calls.get("DynamoDB.PutItem"), calls.get("DynamoDB.UpdateItem")),
        (Some(&1), Some(&1)),
        "a rate-limited app: the record, then the counter: {calls:?}"
    );
    stack.calls.reset();
    assert_eq!(parts(stack.ingest.handle(req()).await).0, 401);
    let calls = stack.calls.snapshot();
    assert_eq!(calls.get("DynamoDB.PutItem"), Some(&1), "{calls:?}");
    assert_eq!(calls.len(), 1, "no counter hit, nothing queued: {calls:?}");
}

#[tokio::test]
async fn a_metered_app_pays_one_transaction_per_delivered_message() {
    let stack = budget_stack().await;
    stack.ingest.apps.current().await.unwrap();
    stack.store.set_balance(METERED_APP, 10).await.unwrap();
    const N: usize = 3;
    for i in 0..N {
        let body = serde_json::to_vec(
            &json!({"channel":"webhook","to": stack.receiver.url(&format!("m{i}")),"content":{"text":"t"}}),
        )
        .unwrap();
        let req = signed("POST", "/v1/messages", &body, METERED_APP, OTHER_SECRET, now(), &[]);
        assert_eq!(parts(stack.ingest.handle(req).await).0, 202);
    }
    let app: pushgate_shared::apps::AppConfig =
        serde_json::from_value(json!({"key": METERED_APP, "secrets": []})).unwrap();
    let host = format!(
        "webhook.{}",
        pushgate_shared::providers::webhook::account_id(&app, &stack.receiver.url("x")).unwrap()
    );
    stack
        .dispatcher
        .breaker
        .state(&host, pushgate_shared::clock::now_ms())
        .await
        .unwrap();
    stack.calls.reset();
    stack.drain(Duration::from_secs(10)).await;
    let dispatch = stack.calls.snapshot();
    assert_eq!(
        dispatch.get("DynamoDB.UpdateItem"),
        Some(&(2 * N)),
        "claim + finish: {dispatch:?}"
    );
    assert_eq!(
        dispatch.get("DynamoDB.TransactWriteItems"),
        Some(&N),
        "the charge: {dispatch:?}"
    );
    assert_eq!(stack.calls.service("DynamoDB"), 3 * N, "{dispatch:?}");
    assert_eq!(stack.store.balance(METERED_APP).await.unwrap(), Some(10 - N as i64));
}

/// Twilio and Tencent receipts may beat the send's record: the finish also records the
/// provider's reference where such receipts wait, in the same round trip (one
/// transaction), so dispatch stays at 2 DynamoDB round trips for them too.
#[tokio::test]
async fn early_receipt_providers_finish_in_one_round_trip() {
    for provider in ["twilio", "tencent"] {
        let stack = budget_stack().await;
        stack.set_app_providers(json!({"sms_order": [provider]})).await;
        stack.ingest.apps.current().await.unwrap();
        let id = stack
            .accept(json!({"channel":"sms","to":"+8613800138000","template":"verification_code","data":{"code":"1","minutes":1}}))
            .await;
        stack.calls.reset();
        stack.drain(Duration::from_secs(10)).await;
        let dispatch = stack.calls.snapshot();
        let m = stack.record(&id).await;
        assert_eq!(m.status, pushgate_shared::message::Status::Sent, "{provider}");
        // The circuit's first read of a cold instance is the one extra call allowed.
        let circuit = dispatch.get("DynamoDB.GetItem").copied().unwrap_or(0);
        assert_eq!(
            stack.calls.service("DynamoDB") - circuit,
            2,
            "{provider}: claim + finish: {dispatch:?}"
        );
        assert_eq!(
            dispatch.get("DynamoDB.TransactWriteItems"),
            Some(&1),
            "{provider}: {dispatch:?}"
        );
    }
}
