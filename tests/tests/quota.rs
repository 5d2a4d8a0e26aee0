//! Per-app balance: no overspend under concurrency, exact charge and refund, early 429 at
//! ingest, and apps that wait for a top-up instead of failing.

use aws_lambda_events::event::sqs::SqsEvent;
use pushgate_shared::message::Status;
use pushgate_tests::*;
use serde_json::json;

async fn metered_stack() -> Stack {
    Stack::with(StackOptions {
        // Jobs stay hidden while the test holds them.
        visibility_timeout: 60,
        ..StackOptions::default()
    })
    .await
}

fn webhook(stack: &Stack, hook: &str, i: usize) -> serde_json::Value {
    json!({"channel": "webhook", "to": stack.receiver.url(hook), "content": {"text": format!("#{i}")}})
}

async fn accept_as(stack: &Stack, app: &str, message: serde_json::Value) -> String {
    let (status, _, body) = stack.submit_as(app, OTHER_SECRET, message).await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().expect("id").to_string()
}

/// Every job on the queue, as events of up to 10 records.
async fn events(stack: &Stack, jobs: usize) -> Vec<SqsEvent> {
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < jobs {
        let e = stack.receive_event(10).await;
        seen += e.records.len();
        assert!(!e.records.is_empty(), "only {seen} of {jobs} jobs on the queue");
        out.push(e);
    }
    out
}

fn delivered_to(stack: &Stack, hook: &str) -> usize {
    stack
        .receiver
        .received()
        .iter()
        .filter(|r| r.hook == hook && r.verified && (200..300).contains(&r.status))
        .count()
}

#[tokio::test]
async fn hundred_concurrent_sends_against_a_balance_of_fifty_make_exactly_fifty_provider_calls() {
    let stack = metered_stack().await;
    stack.store.set_balance(METERED_APP, 50).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(accept_as(&stack, METERED_APP, webhook(&stack, "metered", i)).await);
    }
    // Ten batches of ten, all dispatched at once: 100 sends racing for 50 units.
    let batches = events(&stack, 100).await;
    let runs = batches.into_iter().map(|e| {
        let d = stack.dispatcher.clone();
        tokio::spawn(async move { d.handle(e).await })
    });
    for r in futures::future::join_all(runs).await {
        assert!(r.unwrap().batch_item_failures.is_empty());
    }

    assert_eq!(delivered_to(&stack, "metered"), 50, "provider calls");
    let (mut delivered, mut exhausted) = (0, 0);
    for id in &ids {
        let m = stack.record(id).await;
        match (m.status, m.reason.as_deref()) {
            (Status::Delivered, None) => delivered += 1,
            (Status::Failed, Some("quota_exhausted")) => exhausted += 1,
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!((delivered, exhausted), (50, 50));
    assert_eq!(stack.store.balance(METERED_APP).await.unwrap(), Some(0));

    // Out of balance: ingest refuses early and queues nothing.
    let queued = stack.queue_count(stack.res.send_queue()).await;
    let (status, headers, body) = stack
        .submit_as(METERED_APP, OTHER_SECRET, webhook(&stack, "metered", 100))
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(body["type"].as_str().unwrap().ends_with("quota-exhausted"), "{body}");
    assert_eq!(headers["retry-after"], "60");
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, queued);
}

#[tokio::test]
async fn a_failed_send_refunds_its_unit_and_a_redelivery_pays_once() {
    let stack = metered_stack().await;
    stack.store.set_balance(METERED_APP, 2).await.unwrap();
    let rejected = accept_as(
        &stack,
        METERED_APP,
        json!({"channel": "webhook", "to": format!("{}?status=400", stack.receiver.url("gone")), "content": {"text": "x"}}),
    )
    .await;
    let ok = accept_as(&stack, METERED_APP, webhook(&stack, "ok", 0)).await;
    let mut event = stack.receive_event(10).await;
    assert_eq!(event.records.len(), 2);
    // Every record delivered twice in the batch, and the whole batch again afterwards.
    let copies = event.records.clone();
    event.records.extend(copies);
    stack.dispatcher.handle(event.clone()).await;
    stack.dispatcher.handle(event).await;

    let failed = stack.record(&rejected).await;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.charged, None, "the refund clears the charge");
    let sent = stack.record(&ok).await;
    assert_eq!((sent.status, sent.charged), (Status::Delivered, Some(true)));
    assert_eq!(delivered_to(&stack, "ok"), 1);
    // Two units: the rejected message's came back, the delivered one paid once.
    assert_eq!(stack.store.balance(METERED_APP).await.unwrap(), Some(1));
}

#[tokio::test]
async fn an_app_set_to_wait_keeps_its_messages_until_topped_up() {
    let stack = metered_stack().await;
    stack.store.set_balance(WAITING_APP, 1).await.unwrap();
    let first = accept_as(&stack, WAITING_APP, webhook(&stack, "wait", 0)).await;
    let second = accept_as(&stack, WAITING_APP, webhook(&stack, "wait", 1)).await;
    let event = stack.receive_event(10).await;
    assert_eq!(event.records.len(), 2);
    let response = stack.dispatcher.handle(event.clone()).await;
    assert_eq!(response.batch_item_failures.len(), 1, "one waits on the queue");
    assert_eq!(delivered_to(&stack, "wait"), 1);
    let statuses = [stack.record(&first).await, stack.record(&second).await];
    let waiting = statuses
        .iter()
        .find(|m| m.status != Status::Delivered)
        .expect("one waits");
    assert_eq!(
        (waiting.status, waiting.attempts),
        (Status::Sending, 0),
        "waiting is not an attempt"
    );
    assert!(waiting
        .history
        .iter()
        .any(|h| h.note.as_deref() == Some("waiting for balance")));

    assert_eq!(stack.store.add_balance(WAITING_APP, 5).await.unwrap(), 5);
    let response = stack.dispatcher.handle(event).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(delivered_to(&stack, "wait"), 2);
    assert_eq!(stack.store.balance(WAITING_APP).await.unwrap(), Some(4));
}

/// A retry of an accepted request (same `Idempotency-Key`, same body) gets the first
/// answer even once the message it sent spent the app's balance: a 429 would tell the
/// client it was not sent.
#[tokio::test]
async fn a_keyed_retry_after_the_balance_is_spent_gets_the_first_answer() {
    let stack = metered_stack().await;
    stack.store.set_balance(METERED_APP, 1).await.unwrap();
    let body = serde_json::to_vec(&webhook(&stack, "spent", 0)).unwrap();
    let send = || {
        let req = signed_v2(
            "POST",
            "/v1/messages",
            &body,
            METERED_APP,
            OTHER_SECRET,
            now(),
            Some("pay-once"),
        );
        stack.ingest.handle(req)
    };
    let (status, _, first) = parts(send().await);
    assert_eq!(status, 202, "{first}");
    let events = events(&stack, 1).await;
    for e in events {
        stack.dispatcher.handle(e).await;
    }
    assert_eq!(stack.store.balance(METERED_APP).await.unwrap(), Some(0));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, headers, again) = parts(send().await);
    assert_eq!(status, 202, "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again["id"], first["id"]);
    // A new request is still refused.
    let other = serde_json::to_vec(&webhook(&stack, "spent", 1)).unwrap();
    let req = signed_v2(
        "POST",
        "/v1/messages",
        &other,
        METERED_APP,
        OTHER_SECRET,
        now(),
        Some("pay-twice"),
    );
    assert_eq!(parts(stack.ingest.handle(req).await).0, 429);
}
