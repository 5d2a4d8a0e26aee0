//! Batch sends against moto: 10,000 recipients in one request with per-recipient
//! rejections, every recipient its own message; a retry under the same key after a crash
//! half way completes the rest and sends nobody twice (counted at the receiver).

use std::time::Duration;

use pushgate_shared::message::Status;
use pushgate_tests::*;
use serde_json::{json, Value};

async fn post_batch(stack: &Stack, body: &Value, key: Option<&str>) -> (u16, http::HeaderMap, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let req = signed_v2("POST", "/v1/messages/batch", &bytes, APP, APP_SECRETS[0], now(), key);
    parts(stack.ingest.handle(req).await)
}

async fn get_batch(stack: &Stack, id: &str, query: &str) -> (u16, Value) {
    let path = format!("/v1/batches/{id}{query}");
    let req = signed("GET", &path, b"", APP, APP_SECRETS[0], now(), &[]);
    let (status, _, body) = parts(stack.ingest.handle(req).await);
    (status, body)
}

/// Recipients in the big batch: 2,000 by default, `PUSHGATE_BATCH_RECIPIENTS` (20 to
/// 10,000; `bash bench/batch.sh` runs 10,000). moto's SQS counts its whole queue on
/// every send, so the local run grows with the square of the batch; AWS does not.
fn big_batch() -> usize {
    std::env::var("PUSHGATE_BATCH_RECIPIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
        .clamp(20, 10_000)
}

#[tokio::test]
async fn a_big_batch_in_one_request_with_three_invalid_recipients_reported() {
    let stack = Stack::new().await;
    let n = big_batch();
    let mut recipients: Vec<Value> = (0..n)
        .map(|i| json!({"to": format!("+86138{:08}", i), "data": {"code": format!("{i}")}}))
        .collect();
    recipients[7] = json!({"to": "not a phone"});
    recipients[n / 2] = json!({"to": "+8613800000001", "data": {"code": "1", "extra": {"": 1}}});
    recipients[n - 1] = json!({"user": "u1"});
    let body = json!({"channel": "sms", "template": "verification_code", "data": {"minutes": 5},
                      "recipients": recipients});
    stack.calls.reset();
    let started = std::time::Instant::now();
    let (status, headers, answer) = post_batch(&stack, &body, Some("batch-big")).await;
    println!("batch of {n}: ingest took {:?} (moto)", started.elapsed());
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], n - 3);
    let rejected: Vec<(u64, String)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["errors"][0]["pointer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            (7, "/recipients/7/to".to_string()),
            ((n / 2) as u64, format!("/recipients/{}/data/extra/", n / 2)),
            ((n - 1) as u64, format!("/recipients/{}/user", n - 1)),
        ]
    );
    let id = answer["id"].as_str().unwrap().to_string();
    assert_eq!(headers["location"], format!("/v1/batches/{id}"));
    let calls = stack.calls.snapshot();
    println!("AWS calls for {n} recipients: {calls:?}");
    assert_eq!(
        calls.get("DynamoDB.BatchWriteItem"),
        Some(&(n - 3).div_ceil(25)),
        "{calls:?}"
    );
    assert_eq!(calls.get("DynamoDB.PutItem"), Some(&1), "the batch's record: {calls:?}");
    assert_eq!(
        calls.get("SQS.SendMessageBatch"),
        Some(&(n - 3).div_ceil(10)),
        "{calls:?}"
    );
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, n - 3);

    let (status, b) = get_batch(&stack, &id, "").await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["total"], n);
    assert_eq!(b["counts"], json!({"accepted": n - 3}));
    assert_eq!(b["messages"].as_array().unwrap().len(), (n - 3).min(1000));
    assert_eq!(b["messages"][7]["index"], 8, "the rejected recipient has no message");
    if n - 3 > 1000 {
        let next = b["next_cursor"].as_str().unwrap().to_string();
        let (_, page) = get_batch(&stack, &id, &format!("?cursor={next}")).await;
        assert_eq!(page["messages"][0]["index"].to_string(), next);
    } else {
        assert!(b["next_cursor"].is_null(), "one page holds them all");
    }
    // Another app cannot see it; a bad cursor is a 400.
    let req = signed(
        "GET",
        &format!("/v1/batches/{id}"),
        b"",
        OTHER_APP,
        OTHER_SECRET,
        now(),
        &[],
    );
    assert_eq!(parts(stack.ingest.handle(req).await).0, 404);
    assert_eq!(get_batch(&stack, &id, "?cursor=x").await.0, 400);
}

#[tokio::test]
async fn a_retry_after_a_crash_half_way_completes_the_batch_and_sends_nobody_twice() {
    let stack = Stack::new().await;
    let recipients: Vec<Value> = (0..60)
        .map(|i| json!({"to": stack.receiver.url(&format!("b{i}"))}))
        .collect();
    let body = json!({"channel": "webhook", "content": {"text": "hello"}, "recipients": recipients});
    let (status, _, first) = post_batch(&stack, &body, Some("batch-crash")).await;
    assert_eq!(status, 202, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    // The first ingest "crashed" half way: records 40-59 never written, no job queued,
    // the batch never marked queued; the jobs of 0-19 had reached the queue and are sent.
    let ddb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    let records = stack.all_records().await;
    let batch_pk = records
        .values()
        .find(|m| m.batch_id.as_deref() == Some(&id))
        .unwrap()
        .pk
        .rsplit_once('_')
        .unwrap()
        .0
        .to_string();
    let key = |pk: String| aws_sdk_dynamodb::types::AttributeValue::S(pk);
    for i in 40..60 {
        ddb.delete_item()
            .table_name(stack.res.messages_table())
            .key("pk", key(format!("{batch_pk}_{i}")))
            .send()
            .await
            .unwrap();
    }
    stack
        .sqs
        .purge_queue()
        .queue_url(stack.res.send_queue())
        .send()
        .await
        .unwrap();
    for i in 0..20 {
        let m = records.values().find(|m| m.pk == format!("{batch_pk}_{i}")).unwrap();
        pushgate_shared::queue::Queue::new(stack.sqs.clone(), stack.res.send_queue())
            .send(&pushgate_shared::message::Job::of(m))
            .await
            .unwrap();
    }
    stack.drain(Duration::from_secs(10)).await;
    ddb.update_item()
        .table_name(stack.res.messages_table())
        .key("pk", key(batch_pk.clone()))
        .update_expression("REMOVE queued SET created_at = :now")
        .expression_attribute_values(
            ":now",
            aws_sdk_dynamodb::types::AttributeValue::N(pushgate_shared::clock::now_ms().to_string()),
        )
        .send()
        .await
        .unwrap();
    // Within the first request's time (just now, however slow the machine was until
    // here) a retry is told to wait.
    assert_eq!(post_batch(&stack, &body, Some("batch-crash")).await.0, 409);
    ddb.update_item()
        .table_name(stack.res.messages_table())
        .key("pk", key(batch_pk.clone()))
        .update_expression("SET created_at = :long_ago")
        .expression_attribute_values(":long_ago", aws_sdk_dynamodb::types::AttributeValue::N("0".into()))
        .send()
        .await
        .unwrap();

    // The client retries the same request: the first answer, and the rest is completed.
    let (status, headers, again) = post_batch(&stack, &body, Some("batch-crash")).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again["id"], first["id"]);
    // Until every message settles (a loaded machine may retry a slow webhook later).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        stack.drain(Duration::from_secs(5)).await;
        let settled = stack
            .all_records()
            .await
            .values()
            .filter(|m| m.batch_id.as_deref() == Some(&id) && m.status.is_terminal())
            .count();
        if settled == 60 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Each recipient got one message: one distinct `webhook-id` (a webhook whose answer
    // was lost is resent under the same id by design; a second message would differ).
    for i in 0..60 {
        let hook = format!("b{i}");
        let ids: std::collections::BTreeSet<String> = stack
            .receiver
            .received()
            .iter()
            .filter(|r| r.hook == hook && (200..300).contains(&r.status))
            .map(|r| r.webhook_id.clone())
            .collect();
        assert_eq!(ids.len(), 1, "recipient {i} received {ids:?}");
    }
    // One record per recipient: 60 records, 60 distinct recipients.
    let records: Vec<_> = stack
        .all_records()
        .await
        .into_values()
        .filter(|m| m.batch_id.as_deref() == Some(&id))
        .collect();
    let recipients: std::collections::BTreeSet<&str> = records.iter().map(|m| m.to.as_str()).collect();
    assert_eq!((records.len(), recipients.len()), (60, 60));
    let (_, b) = get_batch(&stack, &id, "").await;
    assert_eq!(b["counts"], json!({"delivered": 60}), "{b}");
    assert_eq!(b["status"], "completed");
    let delivered = stack
        .all_records()
        .await
        .values()
        .filter(|m| m.status == Status::Delivered)
        .count();
    assert_eq!(delivered, 60);
}

#[tokio::test]
async fn an_atomic_batch_with_an_invalid_recipient_sends_nothing() {
    let stack = Stack::new().await;
    let body = json!({"channel": "webhook", "content": {"text": "x"}, "atomic": true,
                      "recipients": [{"to": stack.receiver.url("a")}, {"to": "ftp://nope"}]});
    let (status, _, problem) = post_batch(&stack, &body, Some("atomic-1")).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/recipients/1/to");
    // Without an Idempotency-Key a batch is refused: a retry could only send it again.
    let (status, _, problem) = post_batch(&stack, &body, None).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "header:Idempotency-Key");
    // A fault of the batch's own fields refuses it whole, named once.
    let body = json!({"channel": "pigeon", "content": {"text": "x"}, "recipients": [{"to": "a"}, {"to": "b"}]});
    let (status, _, problem) = post_batch(&stack, &body, Some("atomic-2")).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"].as_array().unwrap().len(), 1);
    assert_eq!(problem["errors"][0]["pointer"], "/channel");
    assert!(stack.all_records().await.is_empty());
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0);
}

/// A keyed batch retried after its own recipients spent the app's balance, or after its
/// `send_at` passed, gets its first answer again, not a 429 or a 422; a new batch is
/// refused. The receiver still counts each recipient once.
#[tokio::test]
async fn a_keyed_retry_gets_the_first_answer_after_the_batch_spent_the_balance() {
    let stack = Stack::new().await;
    stack.ingest.apps.current().await.unwrap();
    stack.store.set_balance(METERED_APP, 2).await.unwrap();
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let hooks = [format!("spent-{run}-0"), format!("spent-{run}-1")];
    let send_at = pushgate_shared::clock::rfc3339(pushgate_shared::clock::now_ms() + 2_000);
    let body = json!({
        "channel": "webhook",
        "content": {"text": "t"},
        "send_at": send_at,
        "recipients": hooks.iter().map(|h| json!({"to": stack.receiver.url(h)})).collect::<Vec<_>>(),
    });
    let post = |key: &str| {
        let bytes = serde_json::to_vec(&body).unwrap();
        signed_v2(
            "POST",
            "/v1/messages/batch",
            &bytes,
            METERED_APP,
            OTHER_SECRET,
            now(),
            Some(key),
        )
    };
    let (status, _, first) = parts(stack.ingest.handle(post(&format!("k-{run}"))).await);
    assert_eq!(status, 202, "{first}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stack.drain(Duration::from_secs(10)).await;
    assert_eq!(
        stack.store.balance(METERED_APP).await.unwrap(),
        Some(0),
        "spent by the batch"
    );

    // The retry: balance spent and send_at past, yet the first answer again.
    let (status, headers, again) = parts(stack.ingest.handle(post(&format!("k-{run}"))).await);
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["accepted"], 2);
    assert_eq!(
        headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()),
        Some("true")
    );
    // Another key is another batch: refused (past send_at or no balance), nothing sent.
    let (status, _, body) = parts(stack.ingest.handle(post(&format!("other-{run}"))).await);
    assert!(status == 422 || status == 429, "{status} {body}");
    stack.drain(Duration::from_secs(3)).await;
    for hook in &hooks {
        let got = stack
            .receiver
            .received()
            .iter()
            .filter(|r| &r.hook == hook && (200..300).contains(&r.status))
            .count();
        assert_eq!(got, 1, "{hook}");
    }
}

/// `limits.per_minute` counts a batch's accepted recipients, all or none: a batch that
/// could never fit is a 422, one over what is left of the minute a 429 that writes and
/// queues nothing (its key stays usable), and single sends share the same count.
#[tokio::test]
async fn the_per_minute_limit_counts_every_recipient_of_a_batch() {
    let stack = Stack::new().await;
    stack.ingest.apps.current().await.unwrap();
    // RATED_APP may send 5 a minute (calendar minutes): start early in one.
    let into_minute = pushgate_shared::clock::now_ms() % 60_000;
    if into_minute > 45_000 {
        tokio::time::sleep(Duration::from_millis((60_000 - into_minute + 200) as u64)).await;
    }
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let batch = |n: usize, tag: &str| {
        json!({"channel": "webhook", "content": {"text": "t"},
               "recipients": (0..n).map(|i| json!({"to": stack.receiver.url(&format!("{tag}-{run}-{i}"))})).collect::<Vec<_>>()})
    };
    let post = |body: &Value, key: &str| {
        let bytes = serde_json::to_vec(body).unwrap();
        signed_v2(
            "POST",
            "/v1/messages/batch",
            &bytes,
            RATED_APP,
            OTHER_SECRET,
            now(),
            Some(key),
        )
    };
    let (status, _, body) = parts(stack.ingest.handle(post(&batch(6, "six"), &format!("six-{run}"))).await);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["pointer"], "/recipients");

    let first = batch(3, "a");
    let (status, _, body) = parts(stack.ingest.handle(post(&first, &format!("a-{run}"))).await);
    assert_eq!(status, 202, "{body}");
    let second = batch(3, "b");
    for _ in 0..2 {
        // Over what is left (2): refused, its record withdrawn, so the same key answers
        // the same again rather than 409 or a replay.
        let (status, headers, body) = parts(stack.ingest.handle(post(&second, &format!("b-{run}"))).await);
        assert_eq!(status, 429, "{body}");
        assert!(headers.contains_key("retry-after"));
    }
    // The first batch's retry is a replay: not counted again.
    let (status, _, body) = parts(stack.ingest.handle(post(&first, &format!("a-{run}"))).await);
    assert_eq!(status, 202, "{body}");
    // Single sends share the count: 2 more fit, the third does not.
    for (i, want) in [202, 202, 429].into_iter().enumerate() {
        let body = serde_json::to_vec(
            &json!({"channel":"webhook","to": stack.receiver.url(&format!("one-{run}-{i}")),"content":{"text":"t"}}),
        )
        .unwrap();
        let req = signed("POST", "/v1/messages", &body, RATED_APP, OTHER_SECRET, now(), &[]);
        assert_eq!(parts(stack.ingest.handle(req).await).0, want, "single send {i}");
    }
    stack.drain(Duration::from_secs(10)).await;
    let got = |prefix: String| {
        stack
            .receiver
            .received()
            .iter()
            .filter(|r| r.hook.starts_with(&prefix) && (200..300).contains(&r.status))
            .count()
    };
    assert_eq!(got(format!("a-{run}-")), 3, "the first batch, each once");
    assert_eq!(got(format!("b-{run}-")), 0, "the refused batch sent nothing");
    assert_eq!(got(format!("one-{run}-")), 2);
}
