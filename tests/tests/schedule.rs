//! Scheduled sends against moto: `send_at` within 15 minutes rides an SQS delay, later
//! ones an EventBridge Scheduler one-time schedule targeting the send queue (fired here
//! by the dev stack's stand-in, as Scheduler would); cancel before, during and after.

use std::time::Duration;

use pushgate_shared::message::Status;
use pushgate_shared::queue::Queue;
use pushgate_tests::*;
use pushgate_tool::schedules::LocalScheduler;
use serde_json::{json, Value};

fn webhook(stack: &Stack, hook: &str, send_at: Option<i64>) -> Value {
    let mut m = json!({"channel": "webhook", "to": stack.receiver.url(hook), "content": {"text": hook}});
    if let Some(at) = send_at {
        m["send_at"] = Value::String(pushgate_shared::clock::rfc3339(at));
    }
    m
}

async fn submit(stack: &Stack, message: Value) -> (u16, Value) {
    let (status, _, body) = stack.submit_as(APP, APP_SECRETS[0], message).await;
    (status, body)
}

async fn call(stack: &Stack, method: &str, id: &str, app: &str, secret: &str) -> (u16, Value) {
    let req = signed(method, &format!("/v1/messages/{id}"), b"", app, secret, now(), &[]);
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

fn scheduler(stack: &Stack) -> aws_sdk_scheduler::Client {
    aws_sdk_scheduler::Client::new(&stack.sdk)
}

async fn schedule_names(stack: &Stack) -> Vec<String> {
    let out = scheduler(stack)
        .list_schedules()
        .group_name(stack.res.schedule_group())
        .send()
        .await
        .unwrap();
    out.schedules()
        .iter()
        .filter_map(|s| s.name().map(String::from))
        .collect()
}

#[tokio::test]
async fn a_send_at_within_fifteen_minutes_rides_an_sqs_delay() {
    let stack = Stack::new().await;
    let at = pushgate_shared::clock::now_ms() + 3_000;
    let (status, body) = submit(&stack, webhook(&stack, "soon", Some(at))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "scheduled");
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(stack.record(&id).await.status, Status::Scheduled);
    assert!(
        schedule_names(&stack).await.is_empty(),
        "no Scheduler schedule for a short delay"
    );

    // Nothing is visible before it is due; then it goes once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stack.record(&id).await.status != Status::Delivered && tokio::time::Instant::now() < deadline {
        stack.drain(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Delivered);
    let claimed = m.history.iter().find(|h| h.status == Status::Sending).unwrap().at;
    assert!(claimed >= at - 1_000, "claimed {} ms before its send_at", at - claimed);
    assert_eq!(delivered_to(&stack, "soon"), 1);
}

#[tokio::test]
async fn a_later_send_at_becomes_a_one_time_schedule_that_queues_the_job() {
    let stack = Stack::new().await;
    let now = pushgate_shared::clock::now_ms();
    let at = now + 2 * 3_600_000;
    let (status, body) = submit(&stack, webhook(&stack, "later", Some(at))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "scheduled");
    let id = body["id"].as_str().unwrap().to_string();
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Scheduled);
    assert_eq!(
        stack.queue_count(stack.res.send_queue()).await,
        0,
        "nothing on the queue yet"
    );

    // The schedule: at(...) in UTC, no flexible window, deleted after completion, the
    // send queue as target and the job as input.
    let name = format!("msg-{id}");
    let s = scheduler(&stack)
        .get_schedule()
        .name(&name)
        .group_name(stack.res.schedule_group())
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.schedule_expression(),
        Some(pushgate_shared::schedule::at_expression(at).as_str())
    );
    assert_eq!(s.schedule_expression_timezone(), Some("UTC"));
    assert_eq!(s.flexible_time_window().map(|w| w.mode().as_str()), Some("OFF"));
    assert_eq!(s.action_after_completion().map(|a| a.as_str()), Some("DELETE"));
    let target = s.target().unwrap();
    assert_eq!(target.arn(), stack.res.send_queue_arn());
    assert_eq!(
        target.dead_letter_config().and_then(|d| d.arn()),
        Some(stack.res.schedule_dead_letter_queue_arn()),
        "a job Scheduler gives up on lands where operators look"
    );
    let job: Value = serde_json::from_str(target.input().unwrap()).unwrap();
    assert_eq!(job, json!({"pk": m.pk, "id": id, "app": APP}));

    // Not due: nothing fires.
    let local = LocalScheduler::new(&stack.sdk, stack.res.schedule_group());
    assert_eq!(local.fire_due(now).await.unwrap(), 0);
    // A job that comes before its send_at (a stray duplicate, a redrive) sends nothing:
    // the schedule will queue it when due.
    Queue::new(stack.sqs.clone(), stack.res.send_queue())
        .send(&pushgate_shared::message::Job::of(&m))
        .await
        .unwrap();
    stack.drain(Duration::from_secs(10)).await;
    assert_eq!(stack.record(&id).await.status, Status::Scheduled);
    assert_eq!(delivered_to(&stack, "later"), 0);

    // Its time comes (the record's send_at moved to now, as two hours passing would) and
    // the schedule fires: the job reaches the queue once and is sent.
    aws_sdk_dynamodb::Client::new(&stack.sdk)
        .update_item()
        .table_name(stack.res.messages_table())
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(m.pk.clone()))
        .update_expression("SET send_at = :now")
        .expression_attribute_values(
            ":now",
            aws_sdk_dynamodb::types::AttributeValue::N(pushgate_shared::clock::now_ms().to_string()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(local.fire_due(at + 1_000).await.unwrap(), 1);
    assert!(schedule_names(&stack).await.is_empty(), "deleted after it fired");
    stack.drain(Duration::from_secs(10)).await;
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
    assert_eq!(delivered_to(&stack, "later"), 1);
}

/// A message scheduled beyond the retention period is kept for the retention past its
/// send_at, not past when it was accepted: it must not expire before it goes.
#[tokio::test]
async fn a_message_scheduled_beyond_the_retention_outlives_its_send_at() {
    let stack = Stack::new().await;
    let at = pushgate_shared::clock::now_ms() + 30 * 86_400_000;
    let (status, body) = submit(&stack, webhook(&stack, "month", Some(at))).await;
    assert_eq!(status, 202, "{body}");
    let m = stack.record(body["id"].as_str().unwrap()).await;
    assert!(
        m.expires_at >= at / 1000 + 7 * 86_400,
        "expires {} before it is sent",
        m.expires_at
    );
}

#[tokio::test]
async fn a_cancelled_message_is_never_sent_even_when_its_schedule_fires_in_the_race() {
    let stack = Stack::new().await;
    let now = pushgate_shared::clock::now_ms();
    let (_, body) = submit(&stack, webhook(&stack, "cancelled", Some(now + 3_600_000))).await;
    let id = body["id"].as_str().unwrap().to_string();
    let job = serde_json::to_string(&pushgate_shared::message::Job::of(&stack.record(&id).await)).unwrap();

    let (status, body) = call(&stack, "DELETE", &id, APP, APP_SECRETS[0]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert!(schedule_names(&stack).await.is_empty(), "its schedule is deleted");
    // Cancelling again answers the same.
    assert_eq!(call(&stack, "DELETE", &id, APP, APP_SECRETS[0]).await.0, 200);

    // The schedule had fired just before the delete: its job arrives anyway.
    stack
        .sqs
        .send_message()
        .queue_url(stack.res.send_queue())
        .message_body(job)
        .send()
        .await
        .unwrap();
    stack.drain(Duration::from_secs(10)).await;
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Cancelled);
    assert_eq!(m.charged, None, "nothing charged");
    assert_eq!(delivered_to(&stack, "cancelled"), 0);
}

#[tokio::test]
async fn cancel_answers_409_once_sending_began_and_404_for_other_apps() {
    let stack = Stack::new().await;
    let id = stack.accept(webhook(&stack, "sent", None)).await;
    // Another app cannot see (or cancel) it.
    assert_eq!(call(&stack, "DELETE", &id, OTHER_APP, OTHER_SECRET).await.0, 404);
    assert_eq!(stack.record(&id).await.status, Status::Accepted);

    stack.drain(Duration::from_secs(10)).await;
    let (status, body) = call(&stack, "DELETE", &id, APP, APP_SECRETS[0]).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["errors"][0]["detail"], "status: delivered");
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
}

#[tokio::test]
async fn send_at_in_the_past_beyond_the_horizon_or_without_an_offset_is_a_422() {
    let stack = Stack::new().await;
    let now = pushgate_shared::clock::now_ms();
    for send_at in [
        json!(pushgate_shared::clock::rfc3339(now - 3_600_000)),
        json!(pushgate_shared::clock::rfc3339(now + 400 * 86_400_000)),
        json!("2030-01-01T09:00:00"),
        json!(1_700_000_000),
    ] {
        let mut m = webhook(&stack, "bad", None);
        m["send_at"] = send_at.clone();
        let (status, body) = submit(&stack, m).await;
        assert_eq!(status, 422, "{send_at}: {body}");
        assert_eq!(body["errors"][0]["pointer"], "/send_at", "{send_at}");
    }
    assert!(stack.all_records().await.is_empty(), "nothing written");
    assert!(schedule_names(&stack).await.is_empty());
}
