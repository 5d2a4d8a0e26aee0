//! Dispatcher and callback against moto and the local webhook receiver: no double
//! sends, crash recovery per policy, partial batch failures, forward-only receipts.

use std::time::Duration;

use pushgate_shared::message::Status;
use pushgate_shared::ports::Claim;
use pushgate_tests::*;
use serde_json::{json, Value};

fn email(to: &str) -> Value {
    json!({"channel":"email","to": to,"template":"order_shipped","data":{"name":"Ann","order_id":"A-1"}})
}

#[tokio::test]
async fn the_same_sqs_message_delivered_twice_sends_one_email() {
    let stack = Stack::new().await;
    let to = "twice@example.com";
    let id = stack.accept(email(to)).await;
    let event = stack.receive_event(10).await;
    assert_eq!(event.records.len(), 1);

    // Twice in a row, then twice at once.
    assert!(stack
        .dispatcher
        .handle(event.clone())
        .await
        .batch_item_failures
        .is_empty());
    assert!(stack
        .dispatcher
        .handle(event.clone())
        .await
        .batch_item_failures
        .is_empty());
    let (a, b) = tokio::join!(stack.dispatcher.handle(event.clone()), stack.dispatcher.handle(event));
    assert!(a.batch_item_failures.is_empty() && b.batch_item_failures.is_empty());

    assert_eq!(stack.emails_to(to).await, 1, "exactly one SES send");
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Sent);
    assert_eq!(m.provider.as_deref(), Some("ses"));
    assert!(m.provider_message_id.is_some());
    assert_eq!(m.attempts, 1);
}

#[tokio::test]
async fn concurrent_duplicate_jobs_send_one_webhook() {
    let stack = Stack::new().await;
    let id = stack
        .accept(json!({"channel":"webhook","to": stack.receiver.url("dup"),"content":{"text":"x"}}))
        .await;
    let event = stack.receive_event(10).await;
    let mut doubled = event.clone();
    doubled.records.push(event.records[0].clone());
    let (a, b) = tokio::join!(stack.dispatcher.handle(doubled), stack.dispatcher.handle(event));
    // A duplicate that found the lease held is retried later, never sent twice.
    let retried = a.batch_item_failures.len() + b.batch_item_failures.len();
    assert!(retried <= 2);
    stack.drain(Duration::from_secs(10)).await;
    assert_eq!(stack.receiver.received().len(), 1);
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
}

#[tokio::test]
async fn webhook_flows_end_to_end_through_the_poller_signed() {
    let stack = Stack::new().await;
    let id = stack.accept(json!({"channel":"webhook","to": stack.receiver.url("e2e"),"template":"order_shipped","data":{"name":"Bo","order_id":"9"}})).await;
    stack.drain(Duration::from_secs(10)).await;
    let got = stack.receiver.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].verified, "Standard Webhooks signature verified by the receiver");
    assert_eq!(got[0].webhook_id, id);
    assert_eq!(
        got[0].body["data"]["body"],
        json!({"event":"order_shipped","order_id":"9"})
    );
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Delivered);
    let statuses: Vec<Status> = m.history.iter().map(|h| h.status).collect();
    assert_eq!(statuses, vec![Status::Accepted, Status::Sending, Status::Delivered]);
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0);
}

#[tokio::test]
async fn crash_between_claim_and_send_marks_email_unknown_without_sending() {
    let stack = Stack::new().await;
    let to = "crash@example.com";
    let id = stack.accept(email(to)).await;
    let m = stack.record(&id).await;
    // A dispatcher claimed it, then died before calling SES; its lease runs out.
    let now = pushgate_shared::clock::now_ms();
    assert!(matches!(
        stack
            .store
            .claim(&m.pk, &id, "dead-worker", now, now + 50, false)
            .await
            .unwrap(),
        Claim::Claimed { takeover: false, .. }
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;

    stack.drain(Duration::from_secs(10)).await;
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Unknown, "policy for SES: never risk a second email");
    assert_eq!(m.reason.as_deref(), Some("interrupted_send"));
    assert_eq!(stack.emails_to(to).await, 0);
}

/// A metered app's attempt charges before it sends; a dispatcher that claimed such a
/// message (as the real one does, `charge_first`) and died before paying never reached
/// SES, so the takeover sends it (once), where an interrupted paid send becomes `unknown`.
#[tokio::test]
async fn crash_before_a_metered_message_was_paid_sends_it_once_instead_of_unknown() {
    let stack = Stack::new().await;
    stack.store.set_balance(METERED_APP, 5).await.unwrap();
    for (to, paid) in [("metered-m1@example.com", false), ("metered-m2@example.com", true)] {
        let (status, _, body) = stack.submit_as(METERED_APP, OTHER_SECRET, email(to)).await;
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        let m = stack.record(&id).await;
        let now = pushgate_shared::clock::now_ms();
        let claim = stack.store.claim(&m.pk, &id, "dead-worker", now, now + 50, true).await;
        assert!(matches!(claim.unwrap(), Claim::Claimed { takeover: false, .. }));
        if paid {
            let charged = stack.store.charge(&m.pk, METERED_APP, "dead-worker").await.unwrap();
            assert_eq!(charged, pushgate_shared::ports::Charge::Charged);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stack.drain(Duration::from_secs(10)).await;
        let m = stack.record(&id).await;
        match paid {
            false => {
                assert_eq!(stack.emails_to(to).await, 1, "sent exactly once");
                assert!(matches!(m.status, Status::Sent | Status::Delivered), "{:?}", m.status);
            }
            true => {
                assert_eq!(stack.emails_to(to).await, 0, "never risk a second email");
                assert_eq!(m.status, Status::Unknown);
            }
        }
    }
    // One unit for each message: the takeover of the unpaid one charged it once.
    assert_eq!(stack.store.balance(METERED_APP).await.unwrap(), Some(3));
}

#[tokio::test]
async fn crash_after_webhook_send_resends_with_the_same_webhook_id() {
    let stack = Stack::new().await;
    let id = stack
        .accept(json!({"channel":"webhook","to": stack.receiver.url("crash"),"content":{"text":"x"}}))
        .await;
    let m = stack.record(&id).await;
    // Claimed and sent, then the worker died before recording the outcome.
    let now = pushgate_shared::clock::now_ms();
    let Claim::Claimed { message, .. } = stack
        .store
        .claim(&m.pk, &id, "dead-worker", now, now + 50, false)
        .await
        .unwrap()
    else {
        panic!("claim")
    };
    let webhook = pushgate_shared::providers::webhook::Webhook::new(
        Duration::from_secs(2),
        true,
        pushgate_shared::clock::system(),
    )
    .unwrap();
    let app: pushgate_shared::apps::AppConfig =
        serde_json::from_value(json!({"key": APP, "secrets": [], "webhook_secret": WEBHOOK_SECRET})).unwrap();
    pushgate_shared::providers::Provider::send(&webhook, &message, &app)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    stack.drain(Duration::from_secs(10)).await;
    let got = stack.receiver.received();
    assert_eq!(got.len(), 2, "policy for webhooks: resend");
    assert!(
        got.iter().all(|r| r.webhook_id == id && r.verified),
        "same webhook-id, so the receiver can drop the duplicate"
    );
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
}

#[tokio::test]
async fn a_batch_with_one_retryable_failure_reports_only_that_record() {
    let stack = Stack::new().await;
    let ok1 = stack
        .accept(json!({"channel":"webhook","to": stack.receiver.url("a"),"content":{"text":"1"}}))
        .await;
    let bad = stack
        .accept(
            json!({"channel":"webhook","to": format!("{}?status=503", stack.receiver.url("b")),"content":{"text":"2"}}),
        )
        .await;
    let gone = stack
        .accept(
            json!({"channel":"webhook","to": format!("{}?status=410", stack.receiver.url("c")),"content":{"text":"3"}}),
        )
        .await;
    let ok2 = stack
        .accept(json!({"channel":"webhook","to": stack.receiver.url("d"),"content":{"text":"4"}}))
        .await;

    let mut event = stack.receive_event(10).await;
    while event.records.len() < 4 {
        let more = stack.receive_event(10).await;
        event.records.extend(more.records);
    }
    let bad_sqs_id = event
        .records
        .iter()
        .find(|r| r.body.as_deref().unwrap().contains(&bad))
        .and_then(|r| r.message_id.clone())
        .unwrap();
    let response = stack.dispatcher.handle(event).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, vec![bad_sqs_id.as_str()]);

    assert_eq!(stack.record(&ok1).await.status, Status::Delivered);
    assert_eq!(stack.record(&ok2).await.status, Status::Delivered);
    let g = stack.record(&gone).await;
    assert_eq!(g.status, Status::Failed, "410 is permanent: recorded and acknowledged");
    assert!(g.reason.unwrap().contains("http_410"));
    let b = stack.record(&bad).await;
    assert_eq!(b.status, Status::Sending);
    assert!(b.lease_until.is_none(), "lease released so the retry can claim at once");
}

#[tokio::test]
async fn retryable_failures_end_failed_after_max_attempts() {
    let stack = Stack::with(StackOptions {
        max_attempts: 2,
        ..StackOptions::default()
    })
    .await;
    let id = stack.accept(json!({"channel":"webhook","to": format!("{}?status=500", stack.receiver.url("down")),"content":{"text":"x"}}),
    )
    .await;
    stack.drain(Duration::from_secs(15)).await;
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Failed);
    assert!(m.reason.unwrap().starts_with("dead_lettered"), "attempts spent");
    assert_eq!(m.attempts, 2);
    assert_eq!(stack.receiver.received().len(), 2);
    assert_eq!(
        stack.queue_count(stack.res.dead_letter_queue()).await,
        1,
        "its job waits in the DLQ"
    );
}

#[tokio::test]
async fn a_webhook_timeout_is_retried_not_failed() {
    let stack = Stack::with(StackOptions {
        webhook_timeout: Duration::from_millis(300),
        ..StackOptions::default()
    })
    .await;
    let id = stack.accept(json!({"channel":"webhook","to": format!("{}?delay_ms=1500", stack.receiver.url("slow")),"content":{"text":"x"}})).await;
    let event = stack.receive_event(10).await;
    let response = stack.dispatcher.handle(event).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Sending);
    assert!(m.history.last().unwrap().note.as_deref().unwrap().contains("timeout"));
}

fn ses_event(kind: &str, pk: &str, id: &str) -> Vec<u8> {
    let event =
        json!({"eventType": kind, "mail": {"messageId": "ses-x", "tags": {"pushgate_pk": [pk], "pushgate_id": [id]}}});
    serde_json::to_vec(&pushgate_tool::fakes::sns::notification(&event)).unwrap()
}

fn callback(path: &str, body: &[u8]) -> lambda_http::Request {
    http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "text/plain")
        .body(lambda_http::Body::Binary(body.to_vec()))
        .unwrap()
}

#[tokio::test]
async fn ses_receipts_are_authenticated_and_only_move_status_forward() {
    let stack = Stack::new().await;
    let id = stack.accept(email("receipt@example.com")).await;
    stack.drain(Duration::from_secs(10)).await;
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Sent);

    let delivered = ses_event("Delivery", &m.pk, &id);
    // Authentication is SNS's signature now (the URL token no longer counts): the same
    // event unsigned is refused with or without a token.
    let unsigned = {
        let mut e: serde_json::Value = serde_json::from_slice(&delivered).unwrap();
        e.as_object_mut().unwrap().remove("Signature");
        serde_json::to_vec(&e).unwrap()
    };
    let (status, _, _) = parts(
        stack
            .callback
            .handle(callback(
                &format!("/v1/callbacks/ses?token={CALLBACK_TOKEN}"),
                &unsigned,
            ))
            .await,
    );
    assert_eq!(status, 401);
    let (status, _, _) = parts(stack.callback.handle(callback("/v1/callbacks/ses", &unsigned)).await);
    assert_eq!(status, 401);
    assert_eq!(
        stack.record(&id).await.status,
        Status::Sent,
        "unauthenticated receipts change nothing"
    );

    let ok_path = format!("/v1/callbacks/ses?token={CALLBACK_TOKEN}");
    let (status, _, body) = parts(stack.callback.handle(callback(&ok_path, &delivered)).await);
    assert_eq!((status, body["applied"].as_u64()), (200, Some(1)));
    assert_eq!(stack.record(&id).await.status, Status::Delivered);

    // Late, duplicate and contradicting events do not move it back.
    for kind in ["Send", "Delivery", "Bounce"] {
        let (status, _, body) = parts(
            stack
                .callback
                .handle(callback(&ok_path, &ses_event(kind, &m.pk, &id)))
                .await,
        );
        assert_eq!((status, body["applied"].as_u64()), (200, Some(0)), "{kind}");
    }
    assert_eq!(stack.record(&id).await.status, Status::Delivered);

    // An unreadable body cannot carry an SNS signature: refused before it is parsed.
    let (status, _, _) = parts(stack.callback.handle(callback(&ok_path, b"not json")).await);
    assert_eq!(status, 401);
    let (status, _, _) = parts(
        stack
            .callback
            .handle(callback(
                &format!("/v1/callbacks/nope?token={CALLBACK_TOKEN}"),
                &delivered,
            ))
            .await,
    );
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_bounce_fails_the_message() {
    let stack = Stack::new().await;
    let id = stack.accept(email("bounce@example.com")).await;
    stack.drain(Duration::from_secs(10)).await;
    let m = stack.record(&id).await;
    let path = format!("/v1/callbacks/ses?token={CALLBACK_TOKEN}");
    let bounce = {
        let event = json!({"eventType":"Bounce","bounce":{"bounceType":"Permanent","bounceSubType":"General"},"mail":{"messageId":"x","tags":{"pushgate_pk":[m.pk],"pushgate_id":[id]}}});
        serde_json::to_vec(&pushgate_tool::fakes::sns::notification(&event)).unwrap()
    };
    assert_eq!(parts(stack.callback.handle(callback(&path, &bounce)).await).0, 200);
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Failed);
    assert_eq!(m.reason.as_deref(), Some("ses: bounce Permanent/General"));
}

#[tokio::test]
async fn the_receipt_sandbox_settles_sent_messages_through_the_callback() {
    let stack = Stack::new().await;
    let ok = stack.accept(email("sandbox-ok@example.com")).await;
    let bounced = stack.accept(email(pushgate_tool::sandbox::BOUNCE_ADDRESS)).await;
    let sms = stack.accept(json!({"channel":"sms","to":"+8613800138000","content":{"text":"t","sms":{"aliyun":{"template_code":"SMS_1","params":{}}}}})).await;
    let wechat = stack
        .accept(json!({"channel":"wechat","to":"oUser1","content":{"wechat":{"template_id":"T","data":{"a":"b"}}}}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    let mut sandbox = pushgate_tool::sandbox::ReceiptSandbox::new(
        aws_sdk_dynamodb::Client::new(&stack.sdk),
        stack.res.messages_table(),
        CALLBACK_TOKEN,
        PUBLIC_URL,
    )
    .with_app_tokens([(APP.to_string(), APP_CALLBACK_TOKEN.to_string())].into());
    let callbacks = sandbox.pending().await.unwrap();
    assert_eq!(callbacks.len(), 4, "one receipt per sent message");
    for cb in callbacks {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(&cb.path)
            .header("content-type", cb.content_type);
        for (k, v) in &cb.headers {
            req = req.header(*k, v);
        }
        let resp = stack
            .callback
            .handle(req.body(lambda_http::Body::Binary(cb.body)).unwrap())
            .await;
        assert_eq!(resp.status(), 200, "{}", cb.path);
    }
    assert!(sandbox.pending().await.unwrap().is_empty(), "each message once");
    assert_eq!(stack.record(&ok).await.status, Status::Delivered);
    assert_eq!(stack.record(&bounced).await.status, Status::Failed);
    assert_eq!(stack.record(&sms).await.status, Status::Delivered);
    assert_eq!(stack.record(&wechat).await.status, Status::Delivered);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let stack = Stack::new().await;
    let id = stack
        .accept(json!({"channel":"webhook","to": format!("{}?status=307", stack.receiver.url("moved")),"content":{"text":"x"}}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Failed);
    assert!(m.reason.unwrap().contains("http_307"));
    let hooks: Vec<String> = stack.receiver.received().into_iter().map(|r| r.hook).collect();
    assert_eq!(hooks, vec!["moved"], "the Location was not followed");
}

#[tokio::test]
async fn a_send_that_could_outlive_its_lease_is_not_started() {
    // A 1 s lease cannot hold a call that may take 2 s: a takeover could overlap it.
    let stack = Stack::with(StackOptions {
        lease_secs: 1,
        webhook_timeout: Duration::from_secs(2),
        ..StackOptions::default()
    })
    .await;
    let id = stack
        .accept(json!({"channel":"webhook","to": stack.receiver.url("fenced"),"content":{"text":"x"}}))
        .await;
    let response = stack.dispatcher.handle(stack.receive_event(10).await).await;
    assert_eq!(response.batch_item_failures.len(), 1, "left for a later attempt");
    assert!(stack.receiver.received().is_empty(), "nothing was sent");
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.attempts, m.lease_owner), (Status::Sending, 0, None));
    assert_eq!(
        m.history.last().and_then(|h| h.note.as_deref()),
        Some("lease ran short before the send")
    );
}
