//! Recurring sends against moto: `POST /v1/schedules` creates a Scheduler schedule in the
//! app's own group whose input is an occurrence; the dev stack's stand-in for Scheduler
//! fires it on a clock the test advances, exactly as Scheduler delivers (same target,
//! same input, context attributes substituted, at least once); each occurrence becomes
//! one message, and a retried occurrence is counted once at the receiver.

use std::time::Duration;

use pushgate_shared::message::Status;
use pushgate_shared::recurring;
use pushgate_tests::*;
use pushgate_tool::schedules::LocalScheduler;
use serde_json::{json, Value};

const HOUR: i64 = 3_600_000;

fn webhook(stack: &Stack, hook: &str) -> Value {
    json!({"channel": "webhook", "to": stack.receiver.url(hook), "content": {"text": format!("digest for {hook}")}})
}

async fn create(stack: &Stack, body: &Value, key: Option<&str>) -> (u16, http::HeaderMap, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let req = signed_v2("POST", "/v1/schedules", &bytes, APP, APP_SECRETS[0], now(), key);
    parts(stack.ingest.handle(req).await)
}

async fn call(stack: &Stack, method: &str, path: &str, app: &str, secret: &str) -> (u16, Value) {
    let req = signed(method, path, b"", app, secret, now(), &[]);
    let (status, _, body) = parts(stack.ingest.handle(req).await);
    (status, body)
}

fn delivered_to(stack: &Stack, hook: &str) -> usize {
    stack
        .receiver
        .received()
        .iter()
        .filter(|r| r.hook == hook && (200..300).contains(&r.status))
        .count()
}

fn local(stack: &Stack) -> LocalScheduler {
    LocalScheduler::new(&stack.sdk, stack.res.schedule_group()).with_recurring(stack.recurring_prefix.clone())
}

fn group(stack: &Stack) -> String {
    recurring::group_name(&stack.recurring_prefix, APP)
}

fn scheduler(stack: &Stack) -> aws_sdk_scheduler::Client {
    aws_sdk_scheduler::Client::new(&stack.sdk)
}

/// Calls of one service by operation, without the service's name.
fn calls_of(stack: &Stack, service: &str) -> Vec<(String, usize)> {
    stack
        .calls
        .snapshot()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&format!("{service}.")).map(|op| (op.to_string(), v)))
        .collect()
}

fn pairs(rows: &[(&str, usize)]) -> Vec<(String, usize)> {
    rows.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn a_recurring_schedule_fires_twice_on_the_advanced_clock_and_yields_two_messages() {
    let stack = Stack::new().await;
    let body = json!({"expression": "rate(1 hour)", "timezone": "Asia/Shanghai", "message": webhook(&stack, "hourly")});
    stack.calls.reset();
    let (status, headers, view) = create(&stack, &body, Some("hourly-1")).await;
    assert_eq!(status, 201, "{view}");
    let id = view["id"].as_str().unwrap().to_string();
    assert_eq!(headers["location"], format!("/v1/schedules/{id}"));
    assert_eq!(view["status"], "enabled");
    assert_eq!(view["timezone"], "Asia/Shanghai");
    assert!(view["next"].is_string(), "{view}");
    // Create: the record (1 conditional PutItem) and the schedule; the app's first
    // schedule also creates its group.
    assert_eq!(calls_of(&stack, "DynamoDB"), pairs(&[("PutItem", 1)]));
    assert_eq!(
        calls_of(&stack, "Scheduler"),
        pairs(&[
            ("CreateSchedule", 1),
            ("CreateScheduleGroup", 1),
            ("GetScheduleGroup", 1)
        ])
    );
    println!("calls per create (first of an app): {:?}", stack.calls.snapshot());

    // The schedule as Scheduler holds it: the app's own group, the send queue as target,
    // an occurrence input stamped per firing.
    let s = scheduler(&stack)
        .get_schedule()
        .name(&id)
        .group_name(group(&stack))
        .send()
        .await
        .unwrap();
    assert_eq!(s.schedule_expression(), Some("rate(1 hour)"));
    assert_eq!(s.schedule_expression_timezone(), Some("Asia/Shanghai"));
    assert_eq!(s.flexible_time_window().map(|w| w.mode().as_str()), Some("OFF"));
    let target = s.target().unwrap();
    assert_eq!(target.arn(), stack.res.send_queue_arn());
    let input: Value = serde_json::from_str(target.input().unwrap()).unwrap();
    assert_eq!(input["occurrence"]["at"], recurring::SCHEDULED_TIME);
    assert_eq!(input["occurrence"]["schedule"], id.as_str());
    assert_eq!(input["occurrence"]["app"], APP);
    let created = s.creation_date().unwrap().to_millis().unwrap();

    // Nothing is due yet; an hour later one occurrence, two hours later another.
    let local = local(&stack);
    assert_eq!(local.fire_due(created + 1_000).await.unwrap(), 0);
    assert_eq!(local.fire_due(created + HOUR + 1_000).await.unwrap(), 1);
    assert_eq!(local.fire_due(created + HOUR + 2_000).await.unwrap(), 0, "fired once");
    assert_eq!(local.fire_due(created + 2 * HOUR + 1_000).await.unwrap(), 1);
    stack.calls.reset();
    stack.drain(Duration::from_secs(20)).await;
    assert_eq!(delivered_to(&stack, "hourly"), 2, "two occurrences, two messages");
    // Per occurrence: its record (1 conditional PutItem, the write ingest makes for other
    // messages), the claim and the finish (2 UpdateItem), one provider call.
    let dynamo: std::collections::BTreeMap<String, usize> = calls_of(&stack, "DynamoDB").into_iter().collect();
    println!("calls for two occurrences: {:?}", stack.calls.snapshot());
    assert_eq!(dynamo.get("PutItem"), Some(&2));
    assert_eq!(dynamo.get("UpdateItem"), Some(&4));

    let messages: Vec<_> = stack
        .all_records()
        .await
        .into_values()
        .filter(|m| m.recurring.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(messages.len(), 2);
    for at in [created + HOUR, created + 2 * HOUR] {
        // To the second, as Scheduler's scheduled time is.
        let mid = recurring::occurrence_id(APP, &id, at.div_euclid(1000) * 1000);
        let m = stack.record(&mid).await;
        assert_eq!(m.status, Status::Delivered);
        let (status, view) = call(&stack, "GET", &format!("/v1/messages/{mid}"), APP, APP_SECRETS[0]).await;
        assert_eq!(status, 200);
        assert_eq!(view["schedule_id"], id.as_str());
    }
}

#[tokio::test]
async fn a_scheduler_retry_of_the_same_occurrence_sends_once() {
    let stack = Stack::new().await;
    let body = json!({"expression": "cron(0/5 * * * ? *)", "message": webhook(&stack, "retried")});
    let (status, _, view) = create(&stack, &body, Some("retried-1")).await;
    assert_eq!(status, 201, "{view}");
    let id = view["id"].as_str().unwrap().to_string();
    let next = pushgate_shared::schedule::parse_send_at(view["next"].as_str().unwrap()).unwrap();

    let local = local(&stack);
    // The occurrence, then Scheduler's retry of it (another execution id, attempt 2),
    // both before the first copy is handled, and another after.
    local.deliver(&group(&stack), &id, next, 1).await.unwrap();
    local.deliver(&group(&stack), &id, next, 2).await.unwrap();
    stack.drain(Duration::from_secs(20)).await;
    local.deliver(&group(&stack), &id, next, 3).await.unwrap();
    stack.drain(Duration::from_secs(20)).await;
    assert_eq!(delivered_to(&stack, "retried"), 1, "one occurrence, sent once");
    let ours: Vec<_> = stack
        .all_records()
        .await
        .into_values()
        .filter(|m| m.recurring.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].status, Status::Delivered);
    assert_eq!(ours[0].attempts, 1);
}

#[tokio::test]
async fn bad_expressions_time_zones_windows_and_messages_are_422s_naming_the_field() {
    let stack = Stack::new().await;
    let message = webhook(&stack, "bad");
    let now = pushgate_shared::clock::now_ms();
    let rfc = pushgate_shared::clock::rfc3339;
    let rows = [
        (
            json!({"expression": "cron(0 9 * * MON *)", "message": message}),
            "/expression",
        ),
        (
            json!({"expression": "rate(5 minute)", "message": message}),
            "/expression",
        ),
        (
            json!({"expression": "rate(1 hour)", "timezone": "Mars/Olympus", "message": message}),
            "/timezone",
        ),
        (
            json!({"expression": "rate(1 hour)", "start": rfc(now + 2 * HOUR), "end": rfc(now + HOUR), "message": message}),
            "/end",
        ),
        (
            json!({"expression": "rate(1 hour)", "start": rfc(now - 2 * HOUR), "message": message}),
            "/start",
        ),
        (
            json!({"expression": "rate(1 hour)", "message": {"channel": "sms", "to": "123", "template": "verification_code", "data": {}}}),
            "/message/to",
        ),
        (
            json!({"expression": "rate(1 hour)", "message": {"channel": "email", "to": "a@example.com", "template": "nope"}}),
            "/message/template",
        ),
        (json!({"expression": "rate(1 hour)"}), "/message"),
    ];
    for (i, (body, pointer)) in rows.iter().enumerate() {
        let (status, _, problem) = create(&stack, body, Some(&format!("bad-{i}"))).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["pointer"], *pointer, "{body}: {problem}");
    }
    // A create needs an Idempotency-Key.
    let good = json!({"expression": "rate(1 hour)", "message": message});
    let (status, _, problem) = create(&stack, &good, None).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "header:Idempotency-Key");
    // Nothing was written or scheduled.
    let (_, list) = call(&stack, "GET", "/v1/schedules", APP, APP_SECRETS[0]).await;
    assert_eq!(list["schedules"], json!([]));
    let groups = scheduler(&stack)
        .list_schedule_groups()
        .name_prefix(format!("{}.", stack.recurring_prefix))
        .send()
        .await
        .unwrap();
    assert!(
        groups.schedule_groups().is_empty(),
        "no group made for refused requests"
    );
}

#[tokio::test]
async fn schedules_are_per_app_retries_are_idempotent_and_delete_stops_the_firing() {
    let stack = Stack::new().await;
    let body =
        json!({"expression": "cron(0 9 ? * MON *)", "timezone": "Asia/Shanghai", "message": webhook(&stack, "weekly")});
    let (status, _, first) = create(&stack, &body, Some("weekly-1")).await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    // The same request again (re-signed, same key): the same schedule.
    let (status, headers, again) = create(&stack, &body, Some("weekly-1")).await;
    assert_eq!((status, again["id"].as_str()), (201, Some(id.as_str())), "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    // The key with another body: refused.
    let other = json!({"expression": "rate(2 hours)", "message": webhook(&stack, "weekly")});
    assert_eq!(create(&stack, &other, Some("weekly-1")).await.0, 422);

    let path = format!("/v1/schedules/{id}");
    let (status, view) = call(&stack, "GET", &path, APP, APP_SECRETS[0]).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["expression"], "cron(0 9 ? * MON *)");
    // Mondays 09:00 in Shanghai are Mondays 01:00 UTC.
    let next = pushgate_shared::schedule::parse_send_at(view["next"].as_str().unwrap()).unwrap();
    let t = time::OffsetDateTime::from_unix_timestamp(next / 1000).unwrap();
    assert_eq!((t.weekday(), t.hour(), t.minute()), (time::Weekday::Monday, 1, 0));
    // Another app sees nothing and can delete nothing.
    assert_eq!(call(&stack, "GET", &path, OTHER_APP, OTHER_SECRET).await.0, 404);
    assert_eq!(call(&stack, "DELETE", &path, OTHER_APP, OTHER_SECRET).await.0, 404);
    let (_, theirs) = call(&stack, "GET", "/v1/schedules", OTHER_APP, OTHER_SECRET).await;
    assert_eq!(theirs["schedules"], json!([]));
    let (_, ours) = call(&stack, "GET", "/v1/schedules", APP, APP_SECRETS[0]).await;
    assert_eq!(ours["schedules"].as_array().map(Vec::len), Some(1), "{ours}");
    assert_eq!(
        call(&stack, "GET", "/v1/schedules/nope", APP, APP_SECRETS[0]).await.0,
        404
    );

    let (status, deleted) = call(&stack, "DELETE", &path, APP, APP_SECRETS[0]).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["status"], "deleted");
    assert_eq!(
        call(&stack, "DELETE", &path, APP, APP_SECRETS[0]).await,
        (200, deleted.clone())
    );
    let gone = scheduler(&stack)
        .get_schedule()
        .name(&id)
        .group_name(group(&stack))
        .send()
        .await;
    assert!(gone.is_err(), "the Scheduler schedule is deleted");
    let (_, ours) = call(&stack, "GET", "/v1/schedules", APP, APP_SECRETS[0]).await;
    assert_eq!(ours["schedules"], json!([]));
    assert_eq!(local(&stack).fire_due(next + 30 * 86_400_000).await.unwrap(), 0);
    stack.drain(Duration::from_secs(5)).await;
    assert_eq!(delivered_to(&stack, "weekly"), 0);
}
