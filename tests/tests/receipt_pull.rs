//! Receipt pull against moto and the provider fakes: an SMS whose status callback never
//! came is delivered by the `pull` function, for Tencent, Twilio and Aliyun accounts set
//! to `"receipts": "pull"`; only messages still `sent` past the delay are asked about,
//! calls are bounded per account and run, and apps that pull nothing cost nothing. The
//! sweep index the pull reads is kept from the table's stream by the real events handler.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use pushgate_shared::handlers::events::EventSource;
use pushgate_shared::handlers::pull::{Pull, Pulled, Settings};
use pushgate_shared::message::Status;
use pushgate_shared::queue::Queue;
use pushgate_tests::*;
use pushgate_tool::fakes::{aliyun as fake_aliyun, tencent as fake_tencent, twilio as fake_twilio};
use pushgate_tool::streams::{InvokeStream, StreamReader};
use pushgate_tool::BoxError;
use serde_json::{json, Value};

struct InProcessEvents(Arc<EventSource>);

#[async_trait::async_trait]
impl InvokeStream for InProcessEvents {
    async fn invoke(&self, event: StreamEvent) -> Result<DynamoDbEventResponse, BoxError> {
        Ok(self.0.handle(event).await)
    }
}

/// The events function reading the messages table's stream (it keeps the sweep index).
fn events(stack: &Stack) -> StreamReader {
    let ddb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    let source = Arc::new(EventSource {
        sweep: pushgate_shared::store::sweep::SweepIndex::new(ddb.clone(), stack.res.endpoints_table()),
        endpoints: pushgate_shared::store::endpoints::EndpointStore::new(ddb, stack.res.endpoints_table()),
        delivery: Queue::new(aws_sdk_sqs::Client::new(&stack.sdk), stack.res.delivery_queue()),
    });
    StreamReader::new(
        aws_sdk_dynamodbstreams::Client::new(&stack.sdk),
        stack.res.messages_stream().expect("messages stream"),
        Arc::new(InProcessEvents(source)),
    )
}

/// Reads the stream until it has nothing new.
async fn settle(reader: &StreamReader) {
    for _ in 0..3 {
        reader.poll_once().await.expect("stream");
    }
}

/// The pull function on a clock `ahead_ms` in the future, its AWS calls counted.
fn pull_at(stack: &Stack, ahead_ms: i64, calls_per_account: u32) -> (Pull, CallCounter) {
    let calls = CallCounter::default();
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&stack.sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let pull = Pull {
        index: pushgate_shared::store::sweep::SweepIndex::new(ddb.clone(), stack.res.endpoints_table()),
        receipts: pushgate_shared::handlers::receipt::Receipts {
            store: pushgate_shared::store::Store::new(ddb, stack.res.messages_table()),
            apps: stack.dispatcher.apps.clone(),
            fallback: None,
        },
        providers: pushgate_shared::providers::receipt_pullers(&stack.fakes.endpoints(), Duration::from_secs(2))
            .unwrap(),
        settings: Settings {
            delay: Duration::from_secs(120),
            window: Duration::from_secs(24 * 3_600),
            calls_per_account,
        },
        clock: Arc::new(move || pushgate_shared::clock::now_ms() + ahead_ms),
    };
    (pull, calls)
}

/// The harness app's account at `provider` (the fake's credentials), set to pull.
fn pulling(provider: &str) -> Value {
    let mut account = match provider {
        "aliyun" => json!({"access_key_id": fake_aliyun::ACCESS_KEY_ID,
                           "access_key_secret": fake_aliyun::ACCESS_KEY_SECRET, "sign_name": "Pushgate"}),
        "tencent" => json!({"secret_id": fake_tencent::SECRET_ID, "secret_key": fake_tencent::SECRET_KEY,
                            "sdk_app_id": fake_tencent::SDK_APP_ID, "sign_name": "Pushgate"}),
        _ => json!({"account_sid": fake_twilio::ACCOUNT_SID, "auth_token": fake_twilio::AUTH_TOKEN,
                    "from": fake_twilio::FROM}),
    };
    account["receipts"] = json!("pull");
    json!({"sms_order": [provider], provider: account})
}

async fn send(stack: &Stack, to: &str) -> String {
    stack
        .accept(json!({"channel": "sms", "to": to, "template": "verification_code",
                       "data": {"code": "42", "minutes": 5}}))
        .await
}

/// One SMS through `provider`, sent and indexed, no callback: the pull delivers it, with
/// one GetItem and one UpdateItem for it (plus the index's Query per shard).
async fn a_pulled_receipt_delivers(provider: &str, to: &str) {
    let stack = Stack::new().await;
    stack.set_app_providers(pulling(provider)).await;
    let reader = events(&stack);
    let id = send(&stack, to).await;
    stack.drain(Duration::from_secs(10)).await;
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some(provider)));
    settle(&reader).await;

    // Before the delay it is not asked about.
    let (early, _) = pull_at(&stack, 0, 100);
    assert_eq!(early.run().await, Pulled::default());

    let (pull, calls) = pull_at(&stack, 180_000, 100);
    let pulled = pull.run().await;
    assert_eq!((pulled.asked, pulled.applied, pulled.failed), (1, 1, 0), "{pulled:?}");
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Delivered, "{:?}", m.history);
    assert!(m.history.last().unwrap().note.as_deref().unwrap().contains("(pulled)"));
    let calls = calls.snapshot();
    assert_eq!(calls.get("DynamoDB.Query"), Some(&4), "{calls:?}");
    assert_eq!(calls.get("DynamoDB.GetItem"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("DynamoDB.UpdateItem"), Some(&1), "{calls:?}");
    assert_eq!(calls.values().sum::<usize>(), 6, "{calls:?}");

    // Delivered: its index entry is gone, nothing is asked again.
    settle(&reader).await;
    let (again, _) = pull_at(&stack, 180_000, 100);
    assert_eq!(again.run().await.asked, 0);
}

#[tokio::test]
async fn a_pulled_tencent_report_delivers_an_sms_whose_callback_never_came() {
    a_pulled_receipt_delivers("tencent", "+8613800138000").await;
}

#[tokio::test]
async fn a_fetched_twilio_status_delivers_an_sms_whose_callback_never_came() {
    a_pulled_receipt_delivers("twilio", "+14155552671").await;
}

#[tokio::test]
async fn aliyun_send_details_deliver_an_sms_whose_callback_never_came() {
    a_pulled_receipt_delivers("aliyun", "+8613800138000").await;
}

#[tokio::test]
async fn a_failed_report_fails_the_message() {
    let stack = Stack::new().await;
    stack.set_app_providers(pulling("twilio")).await;
    let reader = events(&stack);
    let id = send(&stack, &format!("+1415555{}", fake_twilio::UNDELIVERED_SUFFIX)).await;
    stack.drain(Duration::from_secs(10)).await;
    settle(&reader).await;
    let (pull, _) = pull_at(&stack, 180_000, 100);
    assert_eq!(pull.run().await.applied, 1);
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Failed);
    assert!(m.history.last().unwrap().note.as_deref().unwrap().contains("30003"));
}

#[tokio::test]
async fn calls_are_bounded_per_account_and_run_and_apps_that_do_not_pull_cost_nothing() {
    let stack = Stack::new().await;
    stack.set_app_providers(pulling("tencent")).await;
    let reader = events(&stack);
    for i in 0..3 {
        send(&stack, &format!("+861380013800{}", i + 6)).await;
    }
    stack.drain(Duration::from_secs(10)).await;
    settle(&reader).await;
    let (pull, _) = pull_at(&stack, 180_000, 2);
    let pulled = pull.run().await;
    assert_eq!((pulled.asked, pulled.applied, pulled.deferred), (2, 2, 1), "{pulled:?}");
    let asked = stack
        .fakes
        .log
        .of("tencent")
        .iter()
        .filter(|r| r.action == "PullSmsSendStatusByPhoneNumber" && r.verified)
        .count();
    assert_eq!(asked, 2);
    settle(&reader).await;
    let (next, _) = pull_at(&stack, 180_000, 2);
    assert_eq!((next.run().await.applied), 1, "the rest next run");

    // A stack whose apps all take callbacks: not one AWS call.
    let fresh = Stack::new().await;
    let (idle, calls) = pull_at(&fresh, 180_000, 2);
    assert_eq!(idle.run().await, Pulled::default());
    assert_eq!(calls.service("DynamoDB"), 0);
}
