//! Routing end to end: provider failover, route rules, channel fallback, circuit breakers,
//! rate shaping and reconciliation on takeover. Asserted on what the provider fakes
//! received, on the message records (status, provider, `tried`, history notes), and on
//! what the dispatcher left on SQS.

use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use pushgate_shared::message::{Channel, Job, Message, Status};
use pushgate_shared::ports::Claim;
use pushgate_shared::shaping::{BreakerPolicy, Circuit};
use pushgate_tests::*;
use pushgate_tool::fakes::{aliyun, tencent, wechat, Fault};
use serde_json::{json, Value};

/// Seeds the routes table. Must run before the stack's first dispatch: the dispatcher
/// caches its routes for an hour.
async fn seed_routes(stack: &Stack, routes: Value) {
    let written = pushgate_shared::store::routes::seed(
        &aws_sdk_dynamodb::Client::new(&stack.sdk),
        &stack.res.tables["RoutesTable"],
        &routes.to_string(),
    )
    .await
    .expect("seed routes");
    assert_eq!(written, routes.as_array().map_or(0, Vec::len));
}

fn sms(to: &str) -> Value {
    json!({"channel": "sms", "to": to, "template": "verification_code", "data": {"code": "1234", "minutes": 5}})
}

/// The number as Aliyun's `PhoneNumbers` carries it (E.164 without `+`).
fn bare(e164: &str) -> &str {
    e164.trim_start_matches('+')
}

/// `SendSms` requests the Aliyun fake received for `to` (E.164).
fn aliyun_sends(stack: &Stack, to: &str) -> usize {
    stack
        .fakes
        .log
        .of("aliyun")
        .iter()
        .filter(|r| r.action == "SendSms" && r.to == bare(to))
        .count()
}

/// `SendSms` requests the Tencent fake received for `to` (E.164).
fn tencent_sends(stack: &Stack, to: &str) -> usize {
    stack.fakes.log.of("tencent").iter().filter(|r| r.to == to).count()
}

/// Template sends (not token requests) the WeChat fake received for `to`.
fn wechat_sends(stack: &Stack, to: &str) -> usize {
    stack
        .fakes
        .log
        .of("wechat")
        .iter()
        .filter(|r| r.action == "send" && r.to == to)
        .count()
}

/// Requests one provider's fake received, of any kind and to anyone.
fn requests(stack: &Stack, provider: &str) -> usize {
    stack.fakes.log.of(provider).len()
}

fn notes(m: &Message) -> Vec<String> {
    m.history.iter().filter_map(|h| h.note.clone()).collect()
}

fn has_note(m: &Message, prefix: &str) -> bool {
    notes(m).iter().any(|n| n.starts_with(prefix))
}

fn last_note(m: &Message) -> String {
    m.history.last().and_then(|h| h.note.clone()).unwrap_or_default()
}

/// The queued jobs of the messages `ids`, as one SQS event. Other jobs received while
/// looking are left alone: they are visible again after the queue's visibility timeout.
async fn jobs(stack: &Stack, ids: &[&str]) -> SqsEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut missing: Vec<&str> = ids.to_vec();
    let mut event = SqsEvent::default();
    while !missing.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "jobs never came: {missing:?}");
        for record in stack.receive_event(10).await.records {
            let job: Job = serde_json::from_str(record.body.as_deref().unwrap_or_default()).expect("job");
            if let Some(at) = missing.iter().position(|id| *id == job.id) {
                missing.remove(at);
                event.records.push(record);
            }
        }
    }
    event
}

/// Invokes the dispatcher with `event` and, like the event source mapping, deletes the
/// records it did not report as failures.
async fn dispatch(stack: &Stack, event: SqsEvent) -> SqsBatchResponse {
    let records = event.records.clone();
    let response = stack.dispatcher.handle(event).await;
    for r in records {
        let failed = response
            .batch_item_failures
            .iter()
            .any(|f| Some(&f.item_identifier) == r.message_id.as_ref());
        if !failed {
            stack
                .sqs
                .delete_message()
                .queue_url(stack.res.send_queue())
                .receipt_handle(r.receipt_handle.unwrap_or_default())
                .send()
                .await
                .expect("delete acknowledged job");
        }
    }
    response
}

/// Dispatches the job of message `id` alone; returns how many records SQS must retry.
async fn dispatch_one(stack: &Stack, id: &str) -> usize {
    let event = jobs(stack, &[id]).await;
    dispatch(stack, event).await.batch_item_failures.len()
}

fn aliyun_account() -> String {
    format!("aliyun.{}", aliyun::ACCESS_KEY_ID)
}

fn tencent_account() -> String {
    format!("tencent.{}", tencent::SDK_APP_ID)
}

// 1. Provider failover.

#[tokio::test]
async fn a_quota_refusal_fails_over_to_the_next_provider() {
    let stack = Stack::new().await;
    let to = "+8613912340010";
    // Aliyun finds its balance spent (isv.AMOUNT_NOT_ENOUGH, class quota). Scripted rather
    // than the magic suffix 0002, which Tencent's fake refuses for quota too.
    stack.fakes.log.script(bare(to), vec![Fault::Quota]);
    let id = stack.accept(sms(to)).await;

    assert_eq!(dispatch_one(&stack, &id).await, 0, "settled in one dispatch");
    assert_eq!(aliyun_sends(&stack, to), 1, "Aliyun asked exactly once");
    assert!(stack.fakes.log.accepted("aliyun").is_empty(), "and sent nothing");
    let sent = stack.fakes.log.of("tencent");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].verified);
    assert_eq!(
        sent[0].body["TemplateId"], "1110001",
        "the Tencent variant of the template"
    );
    assert_eq!(requests(&stack, "twilio"), 0);
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("tencent")));
    assert_eq!(m.tried, vec!["sms:aliyun"]);
    assert_eq!(m.via.as_deref(), Some("sms:tencent"));
    assert_eq!(m.attempts, 1, "a failover is not a retry");
    assert!(
        has_note(&m, "switching from aliyun: isv.AMOUNT_NOT_ENOUGH"),
        "{:?}",
        notes(&m)
    );
    assert_eq!(last_note(&m), "sent via tencent");
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0);
}

#[tokio::test]
async fn when_every_provider_is_out_of_balance_the_message_fails_quota_exhausted() {
    let stack = Stack::new().await;
    seed_routes(
        &stack,
        json!([{"app": APP, "key": "*", "providers": {"sms": ["aliyun", "tencent"]}}]),
    )
    .await;
    // Both fakes refuse numbers ending 0002 for quota.
    let to = format!("+861391234{}", aliyun::SUFFIX_QUOTA);
    assert!(to.ends_with(tencent::SUFFIX_QUOTA));
    let id = stack.accept(sms(&to)).await;

    assert_eq!(dispatch_one(&stack, &id).await, 0, "nothing to retry");
    assert_eq!((aliyun_sends(&stack, &to), tencent_sends(&stack, &to)), (1, 1));
    assert_eq!(requests(&stack, "twilio"), 0, "the route names only aliyun and tencent");
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Failed);
    assert!(
        m.reason.as_deref().unwrap().starts_with("quota_exhausted: tencent: "),
        "{:?}",
        m.reason
    );
    assert_eq!(last_note(&m), "every provider tried: sms:aliyun, sms:tencent");
}

// 2. Route rules.

#[tokio::test]
async fn a_rule_switches_provider_on_a_server_error_within_one_dispatch() {
    let stack = Stack::new().await;
    seed_routes(
        &stack,
        json!([{"app": APP, "key": "*", "providers": {"sms": ["aliyun", "tencent"]},
                "rules": [{"when": {"class": "retryable"}, "action": "switch_provider"}]}]),
    )
    .await;
    let to = "+8613912340020";
    stack.fakes.log.script(bare(to), vec![Fault::ServerError]);
    let id = stack.accept(sms(to)).await;

    assert_eq!(dispatch_one(&stack, &id).await, 0, "no retry: switched at once");
    assert_eq!((aliyun_sends(&stack, to), tencent_sends(&stack, to)), (1, 1));
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("tencent")));
    assert_eq!(m.attempts, 1);
    assert_eq!(m.tried, vec!["sms:aliyun"]);
    assert!(
        has_note(&m, "switching from aliyun: isp.SYSTEM_ERROR"),
        "{:?}",
        notes(&m)
    );
    assert_eq!(
        stack.queue_count(stack.res.send_queue()).await,
        0,
        "nothing left on SQS"
    );
}

#[tokio::test]
async fn without_the_rule_a_server_error_is_retried_on_the_same_provider() {
    let stack = Stack::new().await;
    let to = "+8613912340021";
    stack.fakes.log.script(bare(to), vec![Fault::ServerError]);
    let id = stack.accept(sms(to)).await;

    assert_eq!(dispatch_one(&stack, &id).await, 1, "left on the queue for a retry");
    assert_eq!((aliyun_sends(&stack, to), tencent_sends(&stack, to)), (1, 0));
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.attempts), (Status::Sending, 1));
    assert!(m.lease_until.is_none(), "released for the retry");
    assert!(m.tried.is_empty(), "a retry gives up on nothing");
    assert_eq!(last_note(&m), "attempt 1 failed: aliyun: isp.SYSTEM_ERROR");

    // The retry, after its backoff: Aliyun again (its fault is spent), never Tencent.
    assert_eq!(dispatch_one(&stack, &id).await, 0);
    assert_eq!((aliyun_sends(&stack, to), tencent_sends(&stack, to)), (2, 0));
    assert_eq!(requests(&stack, "tencent"), 0);
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("aliyun")));
    assert_eq!(m.attempts, 2);
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0);
}

#[tokio::test]
async fn a_webhook_503_under_a_switch_rule_is_retried_not_failed() {
    // The dev app's default route: retryable → switch_provider. The webhook channel has
    // one provider, so the switch leaves the plan empty after one transient failure; the
    // next attempt starts the plan again instead of ending the message `failed`.
    let stack = Stack::new().await;
    seed_routes(
        &stack,
        json!([{"app": APP, "key": "*", "rules": [{"when": {"class": "retryable"}, "action": "switch_provider"}]}]),
    )
    .await;
    let target = format!("{}?fail_times=1", stack.receiver.url("flaky"));
    let id = stack
        .accept(json!({"channel": "webhook", "to": target, "content": {"text": "x"}}))
        .await;

    assert_eq!(
        dispatch_one(&stack, &id).await,
        1,
        "left on the queue for the next round"
    );
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.attempts), (Status::Sending, 1));
    assert!(
        m.tried.is_empty() && m.spent.is_empty(),
        "given up on for that round only"
    );
    assert!(
        last_note(&m).ends_with("attempt 1 failed: webhook: http_503"),
        "{:?}",
        notes(&m)
    );

    assert_eq!(dispatch_one(&stack, &id).await, 0);
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.attempts), (Status::Delivered, 2));
    let answered: Vec<u16> = stack.receiver.received().iter().map(|r| r.status).collect();
    assert_eq!(answered, [503, 204], "one 503, then one delivery");
}

// 3. A switch never sends twice on the same provider.

#[tokio::test]
async fn after_a_switch_a_retry_stays_on_the_new_provider() {
    let stack = Stack::new().await;
    seed_routes(
        &stack,
        json!([{"app": APP, "key": "*", "providers": {"sms": ["aliyun", "tencent"]},
                "rules": [{"when": {"provider": "aliyun", "class": "retryable"}, "action": "switch_provider"}]}]),
    )
    .await;
    // Both fakes fail this number with a 5xx: Aliyun 500 (switch, by the rule), Tencent
    // 502 (retryable, retried by default).
    let to = format!("+861391234{}", aliyun::SUFFIX_SERVER_ERROR);
    assert!(to.ends_with(tencent::SUFFIX_SERVER_ERROR));
    let id = stack.accept(sms(&to)).await;

    assert_eq!(dispatch_one(&stack, &id).await, 1);
    assert_eq!((aliyun_sends(&stack, &to), tencent_sends(&stack, &to)), (1, 1));
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.attempts), (Status::Sending, 1));
    assert_eq!(m.tried, vec!["sms:aliyun"]);
    assert_eq!(m.via.as_deref(), Some("sms:tencent"));
    assert!(
        has_note(&m, "switching from aliyun: isp.SYSTEM_ERROR"),
        "{:?}",
        notes(&m)
    );
    assert_eq!(last_note(&m), "attempt 1 failed: tencent: http_502");

    for attempt in 2..=3 {
        assert_eq!(dispatch_one(&stack, &id).await, 1, "attempt {attempt} retried");
        assert_eq!(
            (aliyun_sends(&stack, &to), tencent_sends(&stack, &to)),
            (1, attempt),
            "attempt {attempt}: Tencent only"
        );
        let m = stack.record(&id).await;
        assert_eq!(m.attempts, attempt as u32);
        assert_eq!(last_note(&m), format!("attempt {attempt} failed: tencent: http_502"));
    }
}

#[tokio::test]
async fn a_switch_is_remembered_while_the_next_provider_waits_out_its_open_circuit() {
    let policy = BreakerPolicy {
        failures: 2,
        window_ms: 60_000,
        cool_down_ms: 1_000,
    };
    let stack = Stack::with(StackOptions {
        breaker: policy,
        breaker_cache_ms: 0,
        ..StackOptions::default()
    })
    .await;
    seed_routes(
        &stack,
        json!([{"app": APP, "key": "*", "providers": {"sms": ["aliyun", "tencent"]},
                "rules": [{"when": {"provider": "aliyun", "class": "retryable"}, "action": "switch_provider"}]}]),
    )
    .await;
    let to = "+8613912340031";
    stack.fakes.log.script(bare(to), vec![Fault::ServerError]);
    let id = stack.accept(sms(to)).await;
    let event = jobs(&stack, &[&id]).await;
    // Tencent's circuit is open (two failures elsewhere, in one window).
    let now = pushgate_shared::clock::now_ms();
    for _ in 0..2 {
        stack
            .dispatcher
            .breaker
            .failure(&tencent_account(), false, now)
            .await
            .unwrap();
    }

    // Aliyun fails and is given up on; Tencent is behind its open circuit: wait for it.
    assert_eq!(dispatch(&stack, event).await.batch_item_failures.len(), 1);
    assert_eq!((aliyun_sends(&stack, to), tencent_sends(&stack, to)), (1, 0));
    let m = stack.record(&id).await;
    assert_eq!(
        (m.status, m.attempts),
        (Status::Sending, 0),
        "waiting is not an attempt"
    );
    assert!(
        has_note(&m, "switching from aliyun: isp.SYSTEM_ERROR"),
        "{:?}",
        notes(&m)
    );
    assert!(notes(&m).iter().any(|n| n.contains("skipped tencent: circuit open")));
    assert_eq!(m.tried, vec!["sms:aliyun"], "the switch outlives the wait");

    // Once the cool-down is over, Tencent's probe sends it; Aliyun is not asked again.
    assert_eq!(dispatch_one(&stack, &id).await, 0);
    assert_eq!((aliyun_sends(&stack, to), tencent_sends(&stack, to)), (1, 1));
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("tencent")));
    let now = pushgate_shared::clock::now_ms();
    assert_eq!(
        stack.store.circuit(&tencent_account(), &policy, now).await.unwrap(),
        Circuit::Closed,
        "the probe's success closed Tencent's circuit"
    );
}

// 4. Channel fallback.

fn route_with_channel_fallback(channels: &[&str]) -> Value {
    json!([{"app": APP, "key": "*", "channels": channels,
            "rules": [{"when": {"class": "permanent"}, "action": "switch_channel"}]}])
}

fn order_shipped(channel: &str, to: &str, fallback: Value) -> Value {
    json!({"channel": channel, "to": to, "template": "order_shipped",
           "data": {"name": "Ann", "order_id": "A-40"}, "fallback": fallback})
}

#[tokio::test]
async fn a_permanent_failure_falls_back_to_the_next_channel() {
    let stack = Stack::new().await;
    seed_routes(&stack, route_with_channel_fallback(&["wechat", "sms", "email"])).await;
    let (phone, email) = ("+8613912340040", "fallback-40@example.com");
    let id = stack
        .accept(order_shipped(
            "wechat",
            wechat::OPENID_NOT_FOLLOWER,
            json!([{"channel": "sms", "to": phone}, {"channel": "email", "to": email}]),
        ))
        .await;

    assert_eq!(dispatch_one(&stack, &id).await, 0, "settled in one dispatch");
    assert_eq!(wechat_sends(&stack, wechat::OPENID_NOT_FOLLOWER), 1);
    assert_eq!(aliyun_sends(&stack, phone), 1);
    let sms = stack
        .fakes
        .log
        .of("aliyun")
        .into_iter()
        .find(|r| r.action == "SendSms")
        .unwrap();
    assert_eq!(
        sms.body["TemplateCode"], "SMS_200000001",
        "the SMS rendering of the template"
    );
    assert!(sms.body["TemplateParam"].as_str().unwrap().contains("A-40"));
    assert_eq!(requests(&stack, "tencent"), 0);
    assert_eq!(stack.emails_to(email).await, 0, "the channel after sms is not needed");
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("aliyun")));
    assert_eq!(m.tried, vec!["wechat:wechat"]);
    assert_eq!(m.via.as_deref(), Some("sms:aliyun"));
    assert!(has_note(&m, "leaving wechat after wechat: 43004"), "{:?}", notes(&m));
    assert_eq!(last_note(&m), "sent via aliyun (sms fallback)");
}

#[tokio::test]
async fn leaving_a_channel_leaves_all_of_its_providers() {
    let stack = Stack::new().await;
    seed_routes(&stack, route_with_channel_fallback(&["wechat", "sms", "email"])).await;
    // Aliyun refuses this number as invalid: leave SMS, without asking Tencent or Twilio.
    let phone = format!("+861391234{}", aliyun::SUFFIX_PERMANENT);
    let email = "fallback-41@example.com";
    let id = stack
        .accept(order_shipped(
            "wechat",
            wechat::OPENID_NOT_FOLLOWER,
            json!([{"channel": "sms", "to": phone}, {"channel": "email", "to": email}]),
        ))
        .await;

    assert_eq!(dispatch_one(&stack, &id).await, 0);
    assert_eq!(wechat_sends(&stack, wechat::OPENID_NOT_FOLLOWER), 1);
    assert_eq!(aliyun_sends(&stack, &phone), 1);
    assert_eq!((requests(&stack, "tencent"), requests(&stack, "twilio")), (0, 0));
    assert_eq!(stack.emails_to(email).await, 1);
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("ses")));
    assert!(m
        .tried
        .starts_with(&["wechat:wechat".to_string(), "sms:aliyun".to_string()]));
    let n = notes(&m);
    assert!(has_note(&m, "leaving wechat after wechat: 43004"), "{n:?}");
    assert!(
        has_note(&m, "leaving sms after aliyun: isv.MOBILE_NUMBER_ILLEGAL"),
        "{n:?}"
    );
    assert_eq!(last_note(&m), "sent via ses (email fallback)");
}

#[tokio::test]
async fn a_channel_left_stays_left_when_the_next_channel_retries() {
    let stack = Stack::new().await;
    seed_routes(&stack, route_with_channel_fallback(&["sms", "wechat"])).await;
    // Aliyun refuses the number (permanent: leave SMS); WeChat is busy (-1: retry).
    let phone = format!("+861391235{}", aliyun::SUFFIX_PERMANENT);
    let id = stack
        .accept(order_shipped(
            "sms",
            &phone,
            json!([{"channel": "wechat", "to": wechat::OPENID_BUSY}]),
        ))
        .await;

    assert_eq!(dispatch_one(&stack, &id).await, 1, "WeChat's failure is retried");
    assert_eq!(aliyun_sends(&stack, &phone), 1);
    assert_eq!(wechat_sends(&stack, wechat::OPENID_BUSY), 1);
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.attempts), (Status::Sending, 1));
    assert!(m.tried.contains(&"sms:aliyun".to_string()));
    assert!(
        has_note(&m, "leaving sms after aliyun: isv.MOBILE_NUMBER_ILLEGAL"),
        "{:?}",
        notes(&m)
    );
    assert_eq!(last_note(&m), "attempt 1 failed: wechat: -1");

    // The retry goes to WeChat only: SMS was given up on, not just Aliyun.
    assert_eq!(dispatch_one(&stack, &id).await, 1);
    assert_eq!(wechat_sends(&stack, wechat::OPENID_BUSY), 2);
    assert_eq!(aliyun_sends(&stack, &phone), 1);
    assert_eq!((requests(&stack, "tencent"), requests(&stack, "twilio")), (0, 0));
    let m = stack.record(&id).await;
    assert_eq!(last_note(&m), "attempt 2 failed: wechat: -1");
}

#[tokio::test]
async fn ingest_refuses_a_fallback_it_cannot_render_or_address() {
    let stack = Stack::new().await;
    let cases = [
        // No WeChat rendering of inline email content.
        (
            json!({"channel": "email", "to": "a@b.example", "content": {"subject": "s", "text": "t"},
                   "fallback": [{"channel": "wechat", "to": "oUser1"}]}),
            "/fallback/0/",
        ),
        // Not an email address.
        (
            json!({"channel": "sms", "to": "+8613912340042", "template": "verification_code",
                   "data": {"code": "1", "minutes": 1}, "fallback": [{"channel": "email", "to": "not-an-address"}]}),
            "/fallback/0/to",
        ),
        // Not a phone number in international form.
        (
            json!({"channel": "email", "to": "a@b.example", "template": "verification_code",
                   "data": {"code": "1", "minutes": 1}, "fallback": [{"channel": "sms", "to": "12345"}]}),
            "/fallback/0/to",
        ),
        // The primary channel again.
        (
            json!({"channel": "email", "to": "a@b.example", "template": "verification_code",
                   "data": {"code": "1", "minutes": 1}, "fallback": [{"channel": "email", "to": "c@d.example"}]}),
            "/fallback/0/channel",
        ),
    ];
    for (body, pointer) in cases {
        refused_at(&stack, body, pointer).await;
    }
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0, "nothing queued");
}

/// Asserts ingest refuses `body` with 422, every error at a pointer under `pointer`.
async fn refused_at(stack: &Stack, body: Value, pointer: &str) {
    let (status, _, problem) = stack.submit_as(APP, APP_SECRETS[0], body.clone()).await;
    assert_eq!(status, 422, "{body}: {problem}");
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert!(
        !pointers.is_empty() && pointers.iter().all(|p| p.starts_with(pointer)),
        "{body}: {problem}"
    );
}

#[tokio::test]
async fn ingest_names_the_fallback_a_template_cannot_render() {
    let stack = Stack::new().await;
    // verification_code has no WeChat variant: it is the fallback that cannot be rendered.
    let body = json!({"channel": "sms", "to": "+8613912340042", "template": "verification_code",
                      "data": {"code": "1", "minutes": 1}, "fallback": [{"channel": "wechat", "to": "oUser1"}]});
    refused_at(&stack, body, "/fallback/0/").await;
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0, "nothing queued");
}

// 4b. Fallback on a failed receipt.

/// Aliyun's SmsReport saying message `id` (its `biz_id`) failed with `code`, posted to
/// the callback as the app's receipt URL would be.
async fn aliyun_failed_receipt(stack: &Stack, id: &str, biz: &str, code: &str) -> u16 {
    let body = json!([{"phone_number": "8613912340050", "success": false, "err_code": code,
                       "err_msg": "user unreachable", "biz_id": biz, "out_id": id}])
    .to_string();
    let path = format!("/v1/callbacks/aliyun?app={APP}&token={APP_CALLBACK_TOKEN}");
    parts(
        stack
            .callback
            .handle(post(&path, "application/json", body.as_bytes(), &[]))
            .await,
    )
    .0
}

/// An SMS with an email fallback recipient, sent through Aliyun: its id and Aliyun's id.
async fn sms_sent_with_email_fallback(stack: &Stack, phone: &str, email: &str) -> (String, String) {
    let id = stack
        .accept(json!({"channel": "sms", "to": phone, "template": "order_shipped",
                       "data": {"name": "Ann", "order_id": "A-50"},
                       "fallback": [{"channel": "email", "to": email}]}))
        .await;
    assert_eq!(dispatch_one(stack, &id).await, 0);
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("aliyun")));
    (id, m.provider_message_id.expect("Aliyun's BizId"))
}

/// The message as its app reads it (`GET /v1/messages/{id}`).
async fn view(stack: &Stack, id: &str) -> Value {
    let path = format!("/v1/messages/{id}");
    let (status, _, view) = parts(
        stack
            .ingest
            .handle(signed("GET", &path, b"", APP, APP_SECRETS[0], now(), &[]))
            .await,
    );
    assert_eq!(status, 200, "{view}");
    view
}

const RECEIPT_TO_EMAIL: &str = "switch_channel";

fn route_with_receipt_rule(action: &str) -> Value {
    json!([{"app": APP, "key": "*", "channels": ["sms", "email"],
            "rules": [{"when": {"scene": "receipt", "class": "permanent"}, "action": action}]}])
}

#[tokio::test]
async fn a_failed_sms_receipt_falls_back_to_email_once() {
    let stack = Stack::new().await;
    seed_routes(&stack, route_with_receipt_rule(RECEIPT_TO_EMAIL)).await;
    let (phone, email) = ("+8613912340050", "receipt-50@example.com");
    let (id, biz) = sms_sent_with_email_fallback(&stack, phone, email).await;

    stack.calls.reset();
    assert_eq!(aliyun_failed_receipt(&stack, &id, &biz, "MN:0001").await, 200);
    let calls = stack.calls.snapshot();
    // Aliyun's lookup (by_id Query + GetItem) already reads the record: falling back is
    // one conditional UpdateItem (instead of the `failed` write) and one SendMessage.
    assert_eq!(calls.get("DynamoDB.Query"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("DynamoDB.GetItem"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("DynamoDB.UpdateItem"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("SQS.SendMessage"), Some(&1), "{calls:?}");
    assert_eq!(calls.values().sum::<usize>(), 4, "{calls:?}");
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Accepted);
    assert_eq!(m.fell_back_from.as_deref(), Some("aliyun"));
    assert_eq!(m.tried, vec!["sms:aliyun", "sms:*"]);

    // The same report again (the vendor pushes twice; a redelivery): nothing changes.
    assert_eq!(aliyun_failed_receipt(&stack, &id, &biz, "MN:0001").await, 200);
    assert_eq!(stack.record(&id).await.history.len(), m.history.len());
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 1, "one job queued");

    stack.drain(Duration::from_secs(10)).await;
    assert_eq!(aliyun_sends(&stack, phone), 1, "SMS sent once");
    assert_eq!(stack.emails_to(email).await, 1, "email sent once");
    assert_eq!(
        (requests(&stack, "tencent"), requests(&stack, "twilio")),
        (0, 0),
        "SMS was left whole"
    );
    // A duplicate failed report after the email went out changes nothing either.
    assert_eq!(aliyun_failed_receipt(&stack, &id, &biz, "MN:0001").await, 200);
    stack.drain(Duration::from_secs(5)).await;
    assert_eq!(stack.emails_to(email).await, 1, "still one email");

    let v = view(&stack, &id).await;
    assert_eq!(
        (v["status"].as_str(), v["provider"].as_str()),
        (Some("sent"), Some("ses")),
        "{v}"
    );
    let notes: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["note"].as_str())
        .collect();
    assert!(notes.contains(&"aliyun: MN:0001"), "{notes:?}");
    assert!(
        notes.contains(&"falling back to email after a failed receipt from aliyun (MN:0001)"),
        "{notes:?}"
    );
    assert_eq!(notes.last(), Some(&"sent via ses (email fallback)"), "{notes:?}");
}

#[tokio::test]
async fn without_a_receipt_rule_a_failed_receipt_stays_failed() {
    let stack = Stack::new().await;
    // The send-time rule alone says nothing about receipts.
    seed_routes(&stack, route_with_channel_fallback(&["sms", "email"])).await;
    let (phone, email) = ("+8613912340051", "receipt-51@example.com");
    let (id, biz) = sms_sent_with_email_fallback(&stack, phone, email).await;

    assert_eq!(aliyun_failed_receipt(&stack, &id, &biz, "MN:0001").await, 200);
    stack.drain(Duration::from_secs(3)).await;
    let m = stack.record(&id).await;
    assert_eq!(
        (m.status, m.reason.as_deref()),
        (Status::Failed, Some("aliyun: MN:0001"))
    );
    assert_eq!(m.fell_back_from, None);
    assert_eq!(stack.emails_to(email).await, 0);
}

#[tokio::test]
async fn a_failed_receipt_switches_provider_never_back_to_one_tried() {
    let stack = Stack::new().await;
    seed_routes(
        &stack,
        json!([{"app": APP, "key": "*", "providers": {"sms": ["aliyun", "tencent"]},
                "rules": [{"when": {"scene": "receipt", "provider": "aliyun", "code": "MN:*"},
                           "action": "switch_provider"}]}]),
    )
    .await;
    let phone = "+8613912340052";
    let id = stack.accept(sms(phone)).await;
    assert_eq!(dispatch_one(&stack, &id).await, 0);
    let biz = stack.record(&id).await.provider_message_id.unwrap();

    assert_eq!(aliyun_failed_receipt(&stack, &id, &biz, "MN:0009").await, 200);
    stack.drain(Duration::from_secs(10)).await;
    assert_eq!((aliyun_sends(&stack, phone), tencent_sends(&stack, phone)), (1, 1));
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("tencent")));
    assert_eq!(m.tried, vec!["sms:aliyun"]);
}

// 5. Circuit breaker.

/// Sleeps past the end of the current fixed window of `window_ms` if less than `margin_ms`
/// of it is left, so that failures counted next fall into one window.
async fn clear_of_window_end(window_ms: i64, margin_ms: i64) {
    let into = pushgate_shared::clock::now_ms().rem_euclid(window_ms);
    if into > window_ms - margin_ms {
        tokio::time::sleep(Duration::from_millis((window_ms - into + 50) as u64)).await;
    }
}

#[tokio::test]
async fn an_open_circuit_sends_to_the_next_provider_until_a_probe_closes_it() {
    let policy = BreakerPolicy {
        failures: 2,
        window_ms: 60_000,
        cool_down_ms: 1_000,
    };
    let stack = Stack::with(StackOptions {
        breaker: policy,
        breaker_cache_ms: 0,
        ..StackOptions::default()
    })
    .await;
    let (a, b, c) = ("+8613912340051", "+8613912340052", "+8613912340053");
    for to in [a, b] {
        stack.fakes.log.script(bare(to), vec![Fault::ServerError]);
    }
    let (ia, ib, ic) = (
        stack.accept(sms(a)).await,
        stack.accept(sms(b)).await,
        stack.accept(sms(c)).await,
    );
    let event = jobs(&stack, &[&ia, &ib, &ic]).await;
    let single = |id: &str| {
        let mut e = SqsEvent::default();
        e.records = event
            .records
            .iter()
            .filter(|r| r.body.as_deref().is_some_and(|b| b.contains(id)))
            .cloned()
            .collect();
        e
    };
    clear_of_window_end(policy.window_ms, 10_000).await;

    // Two 5xx answers: each retried, and together they open Aliyun's circuit.
    for (id, to) in [(&ia, a), (&ib, b)] {
        assert_eq!(dispatch(&stack, single(id)).await.batch_item_failures.len(), 1);
        assert_eq!(aliyun_sends(&stack, to), 1);
        let m = stack.record(id).await;
        assert_eq!((m.status, m.attempts), (Status::Sending, 1));
        assert_eq!(last_note(&m), "attempt 1 failed: aliyun: isp.SYSTEM_ERROR");
    }
    assert!(matches!(
        stack
            .store
            .circuit(&aliyun_account(), &policy, pushgate_shared::clock::now_ms())
            .await
            .unwrap(),
        Circuit::Open { .. }
    ));

    // The next SMS goes straight to Tencent.
    assert_eq!(dispatch(&stack, single(&ic)).await.batch_item_failures.len(), 0);
    assert_eq!((aliyun_sends(&stack, c), tencent_sends(&stack, c)), (0, 1));
    let m = stack.record(&ic).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("tencent")));
    assert!(has_note(&m, "skipped aliyun: circuit open"), "{:?}", notes(&m));
    assert!(m.tried.is_empty(), "an open circuit is skipped, not given up on");
    assert_eq!(m.attempts, 1);

    // After the cool-down one probe goes to Aliyun; its success closes the circuit.
    tokio::time::sleep(Duration::from_millis(policy.cool_down_ms as u64 + 200)).await;
    let (d, e) = ("+8613912340054", "+8613912340055");
    let id = stack.accept(sms(d)).await;
    assert_eq!(dispatch_one(&stack, &id).await, 0);
    assert_eq!((aliyun_sends(&stack, d), tencent_sends(&stack, d)), (1, 0));
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("aliyun")));
    assert!(!has_note(&m, "skipped"), "{:?}", notes(&m));
    assert_eq!(
        stack
            .store
            .circuit(&aliyun_account(), &policy, pushgate_shared::clock::now_ms())
            .await
            .unwrap(),
        Circuit::Closed
    );
    let id = stack.accept(sms(e)).await;
    assert_eq!(dispatch_one(&stack, &id).await, 0);
    assert_eq!((aliyun_sends(&stack, e), tencent_sends(&stack, e)), (1, 0));
    assert_eq!(stack.record(&id).await.provider.as_deref(), Some("aliyun"));
}

/// A webhook circuit belongs to the app and the target's origin: one tenant's failing
/// target opens that tenant's circuit only, never every tenant's webhooks to the host.
#[tokio::test]
async fn one_apps_failing_webhooks_do_not_open_another_apps_circuit() {
    let policy = BreakerPolicy {
        failures: 2,
        window_ms: 60_000,
        cool_down_ms: 60_000,
    };
    let stack = Stack::with(StackOptions {
        breaker: policy,
        breaker_cache_ms: 0,
        ..StackOptions::default()
    })
    .await;
    clear_of_window_end(policy.window_ms, 10_000).await;
    // App one: two 5xx answers from the host open its circuit.
    for hook in ["a1", "a2"] {
        let id = stack
            .accept(json!({"channel":"webhook","to": format!("{}?status=500", stack.receiver.url(hook)),"content":{"text":"x"}}))
            .await;
        assert_eq!(dispatch_one(&stack, &id).await, 1, "retried");
    }
    let app = |key: &str| -> pushgate_shared::apps::AppConfig {
        serde_json::from_value(json!({"key": key, "secrets": []})).unwrap()
    };
    let account = |key: &str| {
        format!(
            "webhook.{}",
            pushgate_shared::providers::webhook::account_id(&app(key), &stack.receiver.url("x")).unwrap()
        )
    };
    let now = pushgate_shared::clock::now_ms();
    assert!(matches!(
        stack.store.circuit(&account(APP), &policy, now).await.unwrap(),
        Circuit::Open { .. }
    ));
    assert_eq!(
        stack.store.circuit(&account(OTHER_APP), &policy, now).await.unwrap(),
        Circuit::Closed
    );

    // App one's next webhook to the host waits behind its open circuit...
    let held = stack
        .accept(json!({"channel":"webhook","to": stack.receiver.url("a3"),"content":{"text":"x"}}))
        .await;
    assert_eq!(dispatch_one(&stack, &held).await, 1);
    assert!(has_note(&stack.record(&held).await, "skipped webhook: circuit open"));

    // ...while app two's webhooks to the same host still go out.
    let (status, _, body) = stack
        .submit_as(
            OTHER_APP,
            OTHER_SECRET,
            json!({"channel":"webhook","to": stack.receiver.url("b1"),"content":{"text":"y"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let other = body["id"].as_str().unwrap().to_string();
    assert_eq!(dispatch_one(&stack, &other).await, 0);
    assert_eq!(stack.record(&other).await.status, Status::Delivered);
    let hooks: Vec<String> = stack.receiver.received().into_iter().map(|r| r.hook).collect();
    assert!(hooks.contains(&"b1".to_string()), "{hooks:?}");
    assert!(!hooks.contains(&"a3".to_string()), "{hooks:?}");
}

// 6. Rate shaping.

/// Accepts 21 messages to the DingTalk robot `ops` and dispatches them as one batch.
async fn twenty_one_to_dingtalk(stack: &Stack) -> (Vec<String>, SqsBatchResponse) {
    let mut ids = Vec::new();
    for i in 0..21 {
        ids.push(
            stack
                .accept(json!({"channel": "dingtalk", "to": "ops", "content": {"text": format!("alert {i}")}}))
                .await,
        );
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let event = jobs(stack, &refs).await;
    assert_eq!(event.records.len(), 21);
    let response = dispatch(stack, event).await;
    (ids, response)
}

/// The deferred records among `ids`, checked to be deferred the way a rate limit defers.
async fn deferred_by_rate(stack: &Stack, ids: &[String], provider: &str) -> usize {
    let mut deferred = 0;
    for id in ids {
        let m = stack.record(id).await;
        match m.status {
            Status::Delivered | Status::Sent => assert_eq!(m.provider.as_deref(), Some(provider)),
            Status::Sending => {
                assert_eq!(m.attempts, 0, "a deferral is not an attempt");
                assert!(m.lease_until.is_none());
                assert_eq!(last_note(&m), format!("deferred: {provider} rate limit"));
                deferred += 1;
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    deferred
}

#[tokio::test]
async fn a_robot_is_shaped_to_its_documented_rate_evenly_spaced() {
    // DingTalk's documented 20 a minute, evenly spaced (burst 1): one send every 3 s, so of
    // 21 at once one goes and the others wait their turn; none meets DingTalk's refusal.
    let stack = Stack::new().await;
    assert_eq!(
        stack.dispatcher.providers.named("dingtalk").unwrap().documented_rate(),
        Some(pushgate_shared::shaping::Rate::per_minute(20))
    );
    let (ids, response) = twenty_one_to_dingtalk(&stack).await;
    assert_eq!(response.batch_item_failures.len(), 20, "deferred, left on the queue");
    assert_eq!(requests(&stack, "dingtalk"), 1, "exactly one reached the robot");
    assert_eq!(deferred_by_rate(&stack, &ids, "dingtalk").await, 20);
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 20);
}

#[tokio::test]
async fn a_robot_rate_with_a_burst_lets_twenty_through_and_defers_the_twenty_first() {
    let stack = Stack::new().await;
    stack
        .set_app_providers(json!({"rates": {"dingtalk": {"per_minute": 20, "burst": 20}}}))
        .await;
    let (ids, response) = twenty_one_to_dingtalk(&stack).await;
    assert_eq!(response.batch_item_failures.len(), 1, "the 21st is deferred");
    let got = stack.fakes.log.of("dingtalk");
    assert_eq!(got.len(), 20, "exactly twenty reached the robot");
    assert!(got.iter().all(|r| r.verified));
    assert_eq!(deferred_by_rate(&stack, &ids, "dingtalk").await, 1);
    let delivered = futures::future::join_all(ids.iter().map(|id| stack.record(id)))
        .await
        .iter()
        .filter(|m| m.status == Status::Delivered)
        .count();
    assert_eq!(delivered, 20, "every one the robot took was accepted, none refused");
}

#[tokio::test]
async fn an_app_rate_override_defers_the_second_of_two_immediate_sms() {
    let stack = Stack::new().await;
    stack
        .set_app_providers(json!({"rates": {"aliyun": {"per_second": 1}}}))
        .await;
    let (a, b) = ("+8613912340061", "+8613912340062");
    let ids = [stack.accept(sms(a)).await, stack.accept(sms(b)).await];
    let response = dispatch(&stack, jobs(&stack, &[&ids[0], &ids[1]]).await).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(aliyun_sends(&stack, a) + aliyun_sends(&stack, b), 1);
    assert_eq!(deferred_by_rate(&stack, &ids, "aliyun").await, 1);
    assert_eq!(
        requests(&stack, "tencent"),
        0,
        "a deferral waits; it does not fail over"
    );

    // Its token is due within the second: the retry sends it.
    stack.drain(Duration::from_secs(10)).await;
    assert_eq!((aliyun_sends(&stack, a), aliyun_sends(&stack, b)), (1, 1));
    for id in &ids {
        let m = stack.record(id).await;
        assert_eq!(
            (m.status, m.provider.as_deref(), m.attempts),
            (Status::Sent, Some("aliyun"), 1)
        );
        // Hidden until its token was due, not redelivered in a loop until SQS gives up.
        let deferrals = notes(&m).iter().filter(|n| n.starts_with("deferred")).count();
        assert!(deferrals <= 2, "{id} deferred {deferrals} times");
    }
    assert_eq!(stack.queue_count(stack.res.dead_letter_queue()).await, 0);
}

#[tokio::test]
async fn a_backlog_above_the_rate_is_parked_once_each_in_reserved_slots() {
    let stack = Stack::new().await;
    // 5 a second: 8 messages at once are 1 now and 7 slots 200 ms apart.
    stack
        .set_app_providers(json!({"rates": {"aliyun": {"per_second": 5}}}))
        .await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(stack.accept(sms(&format!("+86139123401{i:02}"))).await);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let response = dispatch(&stack, jobs(&stack, &refs).await).await;
    assert_eq!(response.batch_item_failures.len(), 7);
    let mut slots = Vec::new();
    for id in &ids {
        if let Some(slot) = stack.record(id).await.rate_slot {
            slots.push(slot.rsplit_once('@').unwrap().1.parse::<i64>().unwrap());
        }
    }
    slots.sort_unstable();
    assert_eq!(slots.len(), 7, "each parked message holds its own slot");
    assert!(
        slots.windows(2).all(|w| w[1] - w[0] >= 199),
        "slots one interval apart: {slots:?}"
    );

    stack.drain(Duration::from_secs(20)).await;
    assert_eq!(requests(&stack, "aliyun"), 8, "each sent once, none refused");
    for id in &ids {
        let m = stack.record(id).await;
        assert_eq!((m.status, m.attempts, m.rate_slot.as_deref()), (Status::Sent, 1, None));
        // Sent in its slot when it came back: not parked again and again.
        let deferrals = notes(&m).iter().filter(|n| n.starts_with("deferred")).count();
        assert!(deferrals <= 1, "{id} deferred {deferrals} times: {:?}", notes(&m));
    }
}

// 7. Reconcile on takeover.

#[tokio::test]
async fn a_takeover_asks_aliyun_before_sending_again() {
    let stack = Stack::new().await;
    let (sent_to, unsent_to) = ("+8613912340071", "+8613912340072");
    let sent_id = stack.accept(sms(sent_to)).await;
    let unsent_id = stack.accept(sms(unsent_to)).await;
    let app = stack.dispatcher.apps.app(APP).await.unwrap().unwrap();
    // Two workers claim a message each and die: one after Aliyun accepted it, one before
    // calling. Their leases run out.
    for (id, called) in [(&sent_id, true), (&unsent_id, false)] {
        let m = stack.record(id).await;
        let now = pushgate_shared::clock::now_ms();
        let Claim::Claimed { message, takeover } = stack
            .store
            .claim(&m.pk, id, "crashed", now, now + 300, false)
            .await
            .unwrap()
        else {
            panic!("claim {id}")
        };
        assert!(!takeover);
        if called {
            let provider = stack.dispatcher.providers.select(Channel::Sms, &app).unwrap();
            assert_eq!(provider.name(), "aliyun");
            provider.send(&message, &app).await.expect("Aliyun accepts");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let response = dispatch(&stack, jobs(&stack, &[&sent_id, &unsent_id]).await).await;
    assert!(response.batch_item_failures.is_empty());
    let ledger = stack.fakes.log.accepted("aliyun");
    let performed = |id: &str| ledger.iter().filter(|a| a.reference == id).count();
    assert_eq!(performed(&sent_id), 1, "found at Aliyun, not sent again");
    assert_eq!(performed(&unsent_id), 1, "never sent, so sent now, once");
    assert_eq!((aliyun_sends(&stack, sent_to), aliyun_sends(&stack, unsent_to)), (1, 1));
    let asked = |to: &str| {
        stack
            .fakes
            .log
            .of("aliyun")
            .iter()
            .filter(|r| r.action == "QuerySendDetails" && r.to == bare(to))
            .count()
    };
    assert!(
        asked(sent_to) >= 1 && asked(unsent_to) >= 1,
        "both asked before any resend"
    );

    let m = stack.record(&sent_id).await;
    // The fake reports every send it holds as delivered (SendStatus 3).
    assert_eq!((m.status, m.provider.as_deref()), (Status::Delivered, Some("aliyun")));
    assert!(last_note(&m).contains("found at aliyun"), "{:?}", notes(&m));
    let m = stack.record(&unsent_id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("aliyun")));
    assert_eq!(last_note(&m), "sent via aliyun");
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0);
}
