//! Status events to the calling app, against moto: endpoints managed through the signed
//! API, events read from the messages table's DynamoDB stream (as Lambda's event source
//! mapping would), delivered from the delivery queue to a local endpoint server that
//! checks each Standard Webhooks signature itself.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use pushgate_shared::handlers::events::{Deliver, EventSource};
use pushgate_shared::message::Status;
use pushgate_shared::queue::Queue;
use pushgate_shared::store::endpoints::EndpointStore;
use pushgate_tests::*;
use pushgate_tool::poller::{Invoke, Poller};
use pushgate_tool::streams::{InvokeStream, StreamReader};
use pushgate_tool::BoxError;
use serde_json::{json, Value};

/// One request the endpoint server received.
#[derive(Debug, Clone)]
struct Hit {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// A local app endpoint: records every POST and answers the scripted statuses in turn
/// (then 204).
#[derive(Clone, Default)]
struct EndpointServer {
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl EndpointServer {
    async fn start(script: &[u16]) -> (Self, String) {
        let server = EndpointServer::default();
        server.script.lock().unwrap().extend(script);
        let state = server.clone();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State(s): axum::extract::State<EndpointServer>,
                     headers: http::HeaderMap,
                     body: String| async move {
                        let h = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string()
                        };
                        s.hits.lock().unwrap().push(Hit {
                            id: h("webhook-id"),
                            timestamp: h("webhook-timestamp"),
                            signature: h("webhook-signature"),
                            body,
                        });
                        let status = s.script.lock().unwrap().pop_front().unwrap_or(204);
                        http::StatusCode::from_u16(status).unwrap()
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (server, format!("http://{addr}/hook"))
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// Standard Webhooks' verification, written out here independently of the signer:
/// HMAC-SHA256 over `{id}.{timestamp}.{body}` with the base64 key of `whsec_…`, any one
/// of the space-separated `v1,` signatures matching.
fn verifies(secret: &str, hit: &Hit) -> bool {
    let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", hit.id, hit.timestamp, hit.body).as_bytes());
    let expected = B64.encode(mac.finalize().into_bytes());
    hit.signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

#[test]
fn the_independent_verifier_accepts_the_published_test_vector() {
    let hit = Hit {
        id: "msg_p5jXN8AQM9LWM0D4loKWxJek".into(),
        timestamp: "1614265330".into(),
        signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
        body: r#"{"test": 2432232314}"#.into(),
    };
    assert!(verifies("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &hit));
    let forged = Hit {
        body: r#"{"test": 2432232315}"#.into(),
        ..hit
    };
    assert!(!verifies("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &forged));
}

struct InProcessEvents(Arc<EventSource>);

#[async_trait::async_trait]
impl InvokeStream for InProcessEvents {
    async fn invoke(&self, event: StreamEvent) -> Result<DynamoDbEventResponse, BoxError> {
        Ok(self.0.handle(event).await)
    }
}

struct InProcessDeliver(Arc<Deliver>);

#[async_trait::async_trait]
impl Invoke for InProcessDeliver {
    async fn invoke(&self, event: SqsEvent) -> Result<SqsBatchResponse, BoxError> {
        Ok(self.0.handle(event).await)
    }
}

/// The event pipeline beside a test stack: stream reader → events → delivery queue →
/// deliver, all in process against the stack's moto.
struct Events {
    reader: StreamReader,
    poller: Poller,
    store: EndpointStore,
    /// AWS calls made by the events function, and by the deliver function.
    source_calls: CallCounter,
    deliver_calls: CallCounter,
}

/// DynamoDB and SQS clients whose calls `calls` counts.
fn counted(stack: &Stack, calls: &CallCounter) -> (aws_sdk_dynamodb::Client, aws_sdk_sqs::Client) {
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&stack.sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&stack.sdk)
            .interceptor(calls.clone())
            .build(),
    );
    (ddb, sqs)
}

impl Events {
    fn new(stack: &Stack) -> Self {
        Self::with_clock(stack, pushgate_shared::clock::system())
    }

    /// The pipeline with the deliver function on `clock`.
    fn with_clock(stack: &Stack, clock: pushgate_shared::clock::Clock) -> Self {
        let (source_calls, deliver_calls) = (CallCounter::default(), CallCounter::default());
        let (ddb, sqs) = counted(stack, &source_calls);
        let source = Arc::new(EventSource {
            sweep: pushgate_shared::store::sweep::SweepIndex::new(ddb.clone(), stack.res.endpoints_table()),
            endpoints: EndpointStore::new(ddb, stack.res.endpoints_table()),
            delivery: Queue::new(sqs, stack.res.delivery_queue()),
        });
        let (ddb, sqs) = counted(stack, &deliver_calls);
        let store = EndpointStore::new(ddb, stack.res.endpoints_table());
        let deliver = Arc::new(Deliver {
            endpoints: store.clone(),
            delivery: Queue::new(sqs, stack.res.delivery_queue()),
            client: Deliver::client(Duration::from_secs(2), true).unwrap(),
            clock,
            concurrency: 4,
        });
        let reader = StreamReader::new(
            aws_sdk_dynamodbstreams::Client::new(&stack.sdk),
            stack.res.messages_stream().expect("messages stream"),
            Arc::new(InProcessEvents(source)),
        );
        let poller = Poller::new(
            stack.sqs.clone(),
            stack.res.delivery_queue(),
            stack.res.delivery_queue_arn(),
            Arc::new(InProcessDeliver(deliver)),
        );
        Self {
            reader,
            poller,
            store,
            source_calls,
            deliver_calls,
        }
    }

    /// Reads the stream and delivers until the endpoint has `n` hits or `limit` passes.
    async fn pump(&self, server: &EndpointServer, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while server.hits().len() < n && tokio::time::Instant::now() < deadline {
            self.reader.poll_once().await.expect("stream");
            self.poller.poll_once().await.expect("delivery");
        }
    }
}

/// A signed call to the endpoints API as `app`.
async fn api(stack: &Stack, app: &str, secret: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, _, b) = parts(
        stack
            .ingest
            .handle(signed(method, path, &bytes, app, secret, now(), &[]))
            .await,
    );
    (status, b)
}

async fn create_endpoint(stack: &Stack, url: &str, events: Value) -> (String, String) {
    let (status, b) = api(
        stack,
        APP,
        APP_SECRETS[0],
        "POST",
        "/v1/endpoints",
        json!({"url": url, "events": events}),
    )
    .await;
    assert_eq!(status, 201, "{b}");
    let secret = b["secret"].as_str().expect("secret shown at creation").to_string();
    assert!(secret.starts_with("whsec_"));
    (b["id"].as_str().unwrap().to_string(), secret)
}

async fn sms_stack() -> Stack {
    let stack = Stack::new().await;
    stack.set_app_providers(json!({"sms_order": ["aliyun"]})).await;
    stack
}

fn types_of(hits: &[Hit]) -> Vec<String> {
    hits.iter()
        .map(|h| {
            serde_json::from_str::<Value>(&h.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn an_endpoint_receives_signed_events_for_accepted_sent_delivered_in_order() {
    let stack = sms_stack().await;
    let events = Events::new(&stack);
    let (server, url) = EndpointServer::start(&[]).await;
    let (endpoint, secret) = create_endpoint(&stack, &url, Value::Null).await;

    let id = stack
        .accept(json!({"channel":"sms","to":"+8613800138000","template":"verification_code","data":{"code":"1","minutes":1},"key":"otp"}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Sent);
    let receipt = json!([{"phone_number":"8613800138000","success":true,"err_code":"DELIVERED",
        "biz_id": m.provider_message_id.unwrap(),"out_id": id}])
    .to_string();
    let path = format!("/v1/callbacks/aliyun?app={APP}&token={APP_CALLBACK_TOKEN}");
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(&path, "application/json", receipt.as_bytes(), &[]))
                .await
        )
        .0,
        200
    );
    assert_eq!(stack.record(&id).await.status, Status::Delivered);

    events.pump(&server, 3, Duration::from_secs(30)).await;
    let hits = server.hits();
    assert_eq!(
        types_of(&hits),
        ["message.accepted", "message.sent", "message.delivered"]
    );
    let mut last_seq = 0;
    for hit in &hits {
        assert!(verifies(&secret, hit), "signature of {}", hit.id);
        let body: Value = serde_json::from_str(&hit.body).unwrap();
        let data = &body["data"];
        assert_eq!(data["id"], id.as_str());
        assert_eq!(
            (data["channel"].as_str(), data["key"].as_str()),
            (Some("sms"), Some("otp"))
        );
        let seq = data["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "seq grows: {seq} after {last_seq}");
        last_seq = seq;
        assert_eq!(hit.id, format!("evt_{id}_{seq}"), "webhook-id is the event id");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(!hit.body.contains("8613800138000"), "no recipient in events");
    }
    assert_eq!(
        serde_json::from_str::<Value>(&hits[1].body).unwrap()["data"]["provider"],
        "aliyun"
    );

    // The attempt log shows the three deliveries; the listing never shows a secret.
    let (status, log) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "GET",
        &format!("/v1/endpoints/{endpoint}/attempts"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["data"].as_array().unwrap().len(), 3);
    assert!(log["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["outcome"] == "delivered" && a["status"] == 204));
    let (_, list) = api(&stack, APP, APP_SECRETS[0], "GET", "/v1/endpoints", Value::Null).await;
    assert_eq!(list["data"][0]["id"], endpoint.as_str());
    assert!(!list.to_string().contains("whsec_"), "{list}");
}

#[tokio::test]
async fn a_status_write_whose_function_crashed_right_after_still_yields_its_event() {
    let stack = sms_stack().await;
    let events = Events::new(&stack);
    let (server, url) = EndpointServer::start(&[]).await;
    let (_, secret) = create_endpoint(&stack, &url, json!(["message.accepted"])).await;
    // Ingest "dies" between its record write and anything after it: only the write
    // happened (no queue send, no follow-up call of any kind).
    let m = write_accepted(&stack).await;
    assert_eq!(
        stack.queue_count(stack.res.send_queue()).await,
        0,
        "nothing else happened"
    );

    events.pump(&server, 1, Duration::from_secs(20)).await;
    let hits = server.hits();
    assert_eq!(types_of(&hits), ["message.accepted"]);
    assert!(verifies(&secret, &hits[0]));
    assert_eq!(hits[0].id, format!("evt_{}_1", m.id));
}

/// A bare accepted record, as ingest writes it (and nothing after it).
async fn write_accepted(stack: &Stack) -> pushgate_shared::message::Message {
    let mut m = message(
        pushgate_shared::message::Channel::Sms,
        "+8613800138000",
        Default::default(),
    );
    m.status = Status::Accepted;
    m.status_rank = 0;
    m.history = vec![pushgate_shared::message::HistoryEntry {
        at: m.created_at,
        status: Status::Accepted,
        note: None,
    }];
    stack.store.create(&m, m.created_at).await.expect("write");
    m
}

/// What one event costs in AWS calls, counted at the SDK of each function (the event
/// source mappings' own reads, receives and deletes are AWS's, not the functions').
#[tokio::test]
async fn each_event_costs_a_query_and_a_batch_send_and_each_attempt_a_read_and_a_log_write() {
    let stack = sms_stack().await;
    let events = Events::new(&stack);
    let (server, url) = EndpointServer::start(&[500]).await;
    create_endpoint(&stack, &url, json!(["message.accepted"])).await;
    write_accepted(&stack).await;
    while events.reader.poll_once().await.unwrap() == 0 {}
    let source = events.source_calls.snapshot();
    assert_eq!(source.get("DynamoDB.Query"), Some(&1), "{source:?}");
    assert_eq!(source.get("SQS.SendMessageBatch"), Some(&1), "{source:?}");
    // One BatchWriteItem keeps the event for replay, one the sweep index.
    assert_eq!(source.get("DynamoDB.BatchWriteItem"), Some(&2), "{source:?}");
    assert_eq!(source.values().sum::<usize>(), 4, "{source:?}");

    events.pump(&server, 1, Duration::from_secs(10)).await;
    // A first failure also starts the endpoint's failure streak (one UpdateItem).
    let failed = events.deliver_calls.snapshot();
    assert_eq!(failed.get("DynamoDB.GetItem"), Some(&1), "{failed:?}");
    assert_eq!(failed.get("DynamoDB.PutItem"), Some(&1), "{failed:?}");
    assert_eq!(failed.get("DynamoDB.UpdateItem"), Some(&1), "{failed:?}");
    assert_eq!(failed.get("SQS.ChangeMessageVisibilityBatch"), Some(&1), "{failed:?}");
    assert_eq!(failed.values().sum::<usize>(), 4, "{failed:?}");
    // The success after it ends the streak (one UpdateItem).
    events.deliver_calls.reset();
    events.pump(&server, 2, Duration::from_secs(20)).await;
    // A retry also reads how often the job was held back (one GetItem).
    let recovered = events.deliver_calls.snapshot();
    assert_eq!(recovered.get("DynamoDB.UpdateItem"), Some(&1), "{recovered:?}");
    assert_eq!(recovered.get("DynamoDB.GetItem"), Some(&2), "{recovered:?}");
    assert_eq!(recovered.values().sum::<usize>(), 4, "{recovered:?}");
    // A healthy endpoint: one read, one log write per event.
    write_accepted(&stack).await;
    events.deliver_calls.reset();
    events.pump(&server, 3, Duration::from_secs(20)).await;
    let delivered = events.deliver_calls.snapshot();
    assert_eq!(delivered.get("DynamoDB.GetItem"), Some(&1), "{delivered:?}");
    assert_eq!(delivered.get("DynamoDB.PutItem"), Some(&1), "{delivered:?}");
    assert_eq!(delivered.values().sum::<usize>(), 2, "{delivered:?}");
}

#[tokio::test]
async fn an_endpoint_failing_for_five_days_is_disabled_with_a_notice_to_the_others() {
    let stack = sms_stack().await;
    let events = Events::new(&stack);
    let (failing, failing_url) = EndpointServer::start(&[500, 503]).await;
    let (watcher, watcher_url) = EndpointServer::start(&[]).await;
    let (endpoint, _) = create_endpoint(&stack, &failing_url, json!(["message.accepted"])).await;
    let (_, watcher_secret) = create_endpoint(&stack, &watcher_url, json!(["endpoint.disabled"])).await;
    write_accepted(&stack).await;
    events.pump(&failing, 1, Duration::from_secs(20)).await;
    let (_, ep) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "GET",
        &format!("/v1/endpoints/{endpoint}"),
        Value::Null,
    )
    .await;
    assert!(ep["failing_since"].is_string(), "{ep}");
    assert_eq!(ep["disabled"], false);

    // Five days and a minute later (the clock of the deliver function), it fails again.
    let later = Events::with_clock(
        &stack,
        Arc::new(|| pushgate_shared::clock::now_ms() + 5 * 86_400_000 + 60_000),
    );
    later.pump(&failing, 2, Duration::from_secs(30)).await;
    assert_eq!(failing.hits().len(), 2);
    let (_, ep) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "GET",
        &format!("/v1/endpoints/{endpoint}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (ep["disabled"].clone(), ep["disabled_reason"].clone()),
        (json!(true), json!("deliveries failed for 5 days")),
        "{ep}"
    );
    let attempts = events.store.attempts(APP, &endpoint, 10).await.unwrap();
    assert_eq!(attempts[0].outcome, "disabled");

    events.pump(&watcher, 1, Duration::from_secs(20)).await;
    let hits = watcher.hits();
    assert_eq!(types_of(&hits), ["endpoint.disabled"]);
    assert!(verifies(&watcher_secret, &hits[0]));
    let notice: Value = serde_json::from_str(&hits[0].body).unwrap();
    assert_eq!(notice["data"]["endpoint_id"], endpoint.as_str());
    assert_eq!(
        stack.queue_count(stack.res.delivery_queue()).await,
        0,
        "the disabled endpoint's job is dropped"
    );
}

/// A failing delivery holds back that message's later events at that endpoint: they
/// arrive after it, in order.
#[tokio::test]
async fn a_retried_event_keeps_the_messages_later_events_behind_it() {
    let stack = sms_stack().await;
    let events = Events::new(&stack);
    let (server, url) = EndpointServer::start(&[500]).await;
    let (endpoint, secret) = create_endpoint(&stack, &url, Value::Null).await;
    let id = stack
        .accept(json!({"channel":"sms","to":"+8613800138000","template":"verification_code","data":{"code":"1","minutes":1}}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    assert_eq!(stack.record(&id).await.status, Status::Sent);
    // Both events are on the delivery queue before the first delivery: the `sent` job
    // is received with the failing `accepted` one and held back.
    while events.reader.poll_once().await.unwrap() == 0 {}
    events.pump(&server, 3, Duration::from_secs(30)).await;
    let hits = server.hits();
    assert_eq!(
        types_of(&hits),
        ["message.accepted", "message.accepted", "message.sent"],
        "the 500 is retried before the next event goes"
    );
    assert!(hits.iter().all(|h| verifies(&secret, h)));
    // Being held back is not an attempt: the `sent` event went out on its first.
    let attempts = events.store.attempts(APP, &endpoint, 10).await.unwrap();
    let sent: Vec<u32> = attempts
        .iter()
        .filter(|a| a.kind == "message.sent")
        .map(|a| a.attempt)
        .collect();
    assert_eq!(sent, [1], "{attempts:?}");
}

#[tokio::test]
async fn a_500_is_retried_on_the_schedule_and_a_410_disables_the_endpoint() {
    let stack = sms_stack().await;
    let events = Events::new(&stack);
    let (server, url) = EndpointServer::start(&[500]).await;
    let (endpoint, _) = create_endpoint(&stack, &url, json!(["message.accepted"])).await;
    stack
        .accept(json!({"channel":"sms","to":"+8613800138000","template":"verification_code","data":{"code":"1","minutes":1}}))
        .await;
    events.pump(&server, 1, Duration::from_secs(20)).await;
    // The 500 left the job on the queue, invisible until the schedule's second slot (5 s).
    let attempts = events.store.attempts(APP, &endpoint, 10).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].status, attempts[0].outcome.as_str()),
        (Some(500), "retrying")
    );
    let wait = attempts[0].next_attempt_at.unwrap() - attempts[0].at;
    assert_eq!(wait, 5_000, "second attempt 5 s after the first");
    assert_eq!(stack.queue_count(stack.res.delivery_queue()).await, 1);
    events.pump(&server, 2, Duration::from_secs(30)).await;
    let hits = server.hits();
    assert_eq!(hits.len(), 2, "retried");
    assert_eq!(hits[0].id, hits[1].id, "same event id");
    assert_eq!(hits[0].body, hits[1].body, "same bytes");
    let attempts = events.store.attempts(APP, &endpoint, 10).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.outcome.as_str()))
            .collect::<Vec<_>>(),
        [(2, "delivered"), (1, "retrying")]
    );

    // 410 Gone: the endpoint is disabled and gets nothing more.
    server.script.lock().unwrap().push_back(410);
    stack
        .accept(json!({"channel":"sms","to":"+8613800138000","template":"verification_code","data":{"code":"2","minutes":1}}))
        .await;
    events.pump(&server, 3, Duration::from_secs(20)).await;
    let (_, ep) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "GET",
        &format!("/v1/endpoints/{endpoint}"),
        Value::Null,
    )
    .await;
    assert_eq!(ep["disabled"], true, "{ep}");
    stack
        .accept(json!({"channel":"sms","to":"+8613800138000","template":"verification_code","data":{"code":"3","minutes":1}}))
        .await;
    for _ in 0..3 {
        events.reader.poll_once().await.unwrap();
        events.poller.poll_once().await.unwrap();
    }
    assert_eq!(server.hits().len(), 3, "a disabled endpoint receives nothing");
    assert_eq!(stack.queue_count(stack.res.delivery_queue()).await, 0);
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_and_other_apps_cannot_touch_the_endpoint() {
    let stack = sms_stack().await;
    let events = Events::new(&stack);
    let (server, url) = EndpointServer::start(&[]).await;
    let (endpoint, old) = create_endpoint(&stack, &url, json!(["message.accepted"])).await;
    let (status, rotated) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "POST",
        &format!("/v1/endpoints/{endpoint}/rotate"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    stack
        .accept(json!({"channel":"sms","to":"+8613800138000","template":"verification_code","data":{"code":"1","minutes":1}}))
        .await;
    events.pump(&server, 1, Duration::from_secs(20)).await;
    let hit = &server.hits()[0];
    assert_eq!(hit.signature.split(' ').count(), 2, "{}", hit.signature);
    assert!(verifies(&old, hit) && verifies(&new, hit));

    // Another app: the endpoint does not exist for it, whatever the verb.
    let path = format!("/v1/endpoints/{endpoint}");
    for (method, body) in [
        ("GET", Value::Null),
        ("PATCH", json!({"url": "https://evil.example/h"})),
        ("DELETE", Value::Null),
    ] {
        let (status, b) = api(&stack, OTHER_APP, OTHER_SECRET, method, &path, body).await;
        assert_eq!(status, 404, "{method}: {b}");
    }
    let (status, _) = api(
        &stack,
        OTHER_APP,
        OTHER_SECRET,
        "POST",
        &format!("{path}/rotate"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);
    let (_, theirs) = api(&stack, OTHER_APP, OTHER_SECRET, "GET", "/v1/endpoints", Value::Null).await;
    assert_eq!(theirs["data"], json!([]));
    let (_, mine) = api(&stack, APP, APP_SECRETS[0], "GET", &path, Value::Null).await;
    assert_eq!(mine["url"], url.as_str(), "unchanged by the other app");

    // The owner may patch and delete it.
    let (status, patched) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "PATCH",
        &path,
        json!({"events": ["message.failed"], "description": "ops"}),
    )
    .await;
    assert_eq!(
        (status, patched["events"].clone(), patched["description"].clone()),
        (200, json!(["message.failed"]), json!("ops"))
    );
    assert_eq!(
        api(&stack, APP, APP_SECRETS[0], "DELETE", &path, Value::Null).await.0,
        204
    );
    assert_eq!(api(&stack, APP, APP_SECRETS[0], "GET", &path, Value::Null).await.0, 404);
}

#[tokio::test]
async fn bad_endpoints_are_422_naming_the_field_and_unsigned_calls_401() {
    let stack = Stack::new().await;
    let (status, b) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "POST",
        "/v1/endpoints",
        json!({"url": "ftp://x", "events": ["message.nope"]}),
    )
    .await;
    assert_eq!(status, 422, "{b}");
    let pointers: Vec<&str> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert_eq!(pointers, ["/events", "/url"]);
    let (status, _) = api(&stack, APP, "forged", "GET", "/v1/endpoints", Value::Null).await;
    assert_eq!(status, 401);
    let (status, _) = api(&stack, APP, APP_SECRETS[0], "GET", "/v1/endpoints/nope", Value::Null).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn replay_resends_the_kept_events_since_a_time_with_their_ids() {
    let stack = sms_stack().await;
    let events = Events::new(&stack);
    let (server, url) = EndpointServer::start(&[]).await;
    let (endpoint, secret) = create_endpoint(&stack, &url, json!(["message.accepted"])).await;
    let before = pushgate_shared::clock::rfc3339(pushgate_shared::clock::now_ms() - 60_000);
    write_accepted(&stack).await;
    events.pump(&server, 1, Duration::from_secs(20)).await;

    let path = format!("/v1/endpoints/{endpoint}/replay?since={}", before.replace('+', "%2B"));
    let (status, b) = api(&stack, APP, APP_SECRETS[0], "POST", &path, Value::Null).await;
    assert_eq!((status, b["queued"].clone()), (202, json!(1)), "{b}");
    events.pump(&server, 2, Duration::from_secs(20)).await;
    let hits = server.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(
        (hits[1].id.as_str(), hits[1].body.as_str()),
        (hits[0].id.as_str(), hits[0].body.as_str())
    );
    assert!(verifies(&secret, &hits[1]));

    // Nothing since now; a bad time is a 422 naming it; another app's endpoint is a 404.
    let later = pushgate_shared::clock::rfc3339(pushgate_shared::clock::now_ms() + 1_000);
    let (_, b) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "POST",
        &format!("/v1/endpoints/{endpoint}/replay?since={later}"),
        Value::Null,
    )
    .await;
    assert_eq!(b["queued"], 0, "{b}");
    let (status, b) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "POST",
        &format!("/v1/endpoints/{endpoint}/replay?since=yesterday"),
        Value::Null,
    )
    .await;
    assert_eq!((status, b["errors"][0]["pointer"].as_str()), (422, Some("query:since")));
    let (status, _) = api(&stack, OTHER_APP, OTHER_SECRET, "POST", &path, Value::Null).await;
    assert_eq!(status, 404);
}

/// The sweep on a clock `ahead_ms` in the future.
fn sweep_at(stack: &Stack, ahead_ms: i64) -> pushgate_shared::handlers::sweep::Sweep {
    let calls = CallCounter::default();
    let (ddb, sqs) = counted(stack, &calls);
    pushgate_shared::handlers::sweep::Sweep {
        index: pushgate_shared::store::sweep::SweepIndex::new(ddb.clone(), stack.res.endpoints_table()),
        store: pushgate_shared::store::Store::new(ddb, stack.res.messages_table()),
        queue: Queue::new(sqs, stack.res.send_queue()),
        timeouts: Default::default(),
        clock: Arc::new(move || pushgate_shared::clock::now_ms() + ahead_ms),
    }
}

/// Reads the stream until it has nothing new (the events function keeps the index).
async fn settle(events: &Events) {
    for _ in 0..3 {
        events.reader.poll_once().await.expect("stream");
    }
}

#[tokio::test]
async fn the_sweep_moves_a_silent_sms_to_unknown_with_its_event_and_requeues_an_orphan() {
    let stack = sms_stack().await;
    let events = Events::new(&stack);
    let (server, url) = EndpointServer::start(&[]).await;
    let (_, secret) = create_endpoint(&stack, &url, json!(["message.unknown"])).await;
    let id = stack
        .accept(json!({"channel":"sms","to":"+8613800138000","template":"verification_code","data":{"code":"1","minutes":1}}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    assert_eq!(stack.record(&id).await.status, Status::Sent);
    settle(&events).await;

    // Before the SMS timeout (72 h) nothing moves; after it, the silent SMS is `unknown`.
    assert_eq!(sweep_at(&stack, 71 * 3_600_000).run().await.expired, 0);
    let swept = sweep_at(&stack, 73 * 3_600_000).run().await;
    assert_eq!(swept.expired, 1, "{swept:?}");
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.reason.as_deref()), (Status::Unknown, Some("no_receipt")));
    events.pump(&server, 1, Duration::from_secs(20)).await;
    let hits = server.hits();
    assert_eq!(types_of(&hits), ["message.unknown"]);
    assert!(verifies(&secret, &hits[0]));
    settle(&events).await;
    assert_eq!(
        sweep_at(&stack, 73 * 3_600_000).run().await.expired,
        0,
        "its entry is gone"
    );

    // An accepted record nobody queued (ingest died after its write) is queued after 5 min.
    let orphan = write_accepted(&stack).await;
    settle(&events).await;
    assert_eq!(sweep_at(&stack, 60_000).run().await.requeued, 0, "not yet");
    assert_eq!(sweep_at(&stack, 6 * 60_000).run().await.requeued, 1);
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 1);
    stack.drain(Duration::from_secs(10)).await;
    assert_ne!(stack.record(&orphan.id).await.status, Status::Accepted, "dispatched");
    settle(&events).await;
    assert_eq!(
        sweep_at(&stack, 6 * 60_000).run().await.requeued,
        0,
        "dispatched: no longer an orphan"
    );
}

/// The backstop for scheduled sends: a `scheduled` record whose job never came (its
/// ingest died before the queue or schedule write, or Scheduler gave up) is queued once
/// it is 5 minutes past its `send_at`, and is then sent exactly once, counted at SES.
#[tokio::test]
async fn the_sweep_releases_a_scheduled_record_whose_job_never_came() {
    let stack = Stack::new().await;
    let events = Events::new(&stack);
    let to = format!("late-{}@example.com", ulid::Ulid::new().to_string().to_lowercase());
    let mut m = message(
        pushgate_shared::message::Channel::Email,
        &to,
        pushgate_shared::message::Content {
            subject: Some("Reminder".into()),
            text: Some("Your appointment is at 10:00".into()),
            ..Default::default()
        },
    );
    let send_at = m.created_at - 6 * 60_000;
    m.status = Status::Scheduled;
    m.status_rank = Status::Scheduled.rank();
    m.attempts = 0;
    m.send_at = Some(send_at);
    m.history = vec![pushgate_shared::message::HistoryEntry {
        at: m.created_at,
        status: Status::Scheduled,
        note: None,
    }];
    stack.store.create(&m, m.created_at).await.expect("write");
    settle(&events).await;

    // Due 5 minutes after its send_at, not before.
    assert_eq!(sweep_at(&stack, -2 * 60_000).run().await.released, 0, "not yet");
    let swept = sweep_at(&stack, 0).run().await;
    assert_eq!((swept.released, swept.requeued), (1, 0), "{swept:?}");
    stack.drain(Duration::from_secs(10)).await;
    assert_eq!(stack.record(&m.id).await.status, Status::Sent);
    assert_eq!(stack.emails_to(&to).await, 1);

    // Sent: its entry left with the status; a later run (or a late job) sends nothing more.
    settle(&events).await;
    assert_eq!(sweep_at(&stack, 0).run().await.released, 0);
    stack.drain(Duration::from_secs(5)).await;
    assert_eq!(stack.emails_to(&to).await, 1);
}

/// A cancelled scheduled message leaves the backstop with its status: never released.
#[tokio::test]
async fn the_sweep_never_releases_a_cancelled_scheduled_message() {
    let stack = Stack::new().await;
    let events = Events::new(&stack);
    let to = format!("cancel-{}@example.com", ulid::Ulid::new().to_string().to_lowercase());
    let send_at = pushgate_shared::clock::rfc3339(pushgate_shared::clock::now_ms() + 600_000);
    let id = stack
        .accept(json!({"channel":"email","to":to,"content":{"subject":"s","text":"t"},"send_at":send_at}))
        .await;
    assert_eq!(stack.record(&id).await.status, Status::Scheduled);
    let cancel = signed(
        "DELETE",
        &format!("/v1/messages/{id}"),
        b"",
        APP,
        APP_SECRETS[0],
        now(),
        &[],
    );
    let (status, _, body) = parts(stack.ingest.handle(cancel).await);
    assert_eq!(status, 200, "{body}");
    settle(&events).await;
    assert_eq!(sweep_at(&stack, 20 * 60_000).run().await.released, 0);
}

/// `batch.completed`: the sweep finds every message of an open batch settled and marks
/// the batch's record completed once; that write's stream record is the one event, which
/// overlapping sweeps and a stream record read twice do not double.
#[tokio::test]
async fn a_batch_completes_once_every_message_is_settled_with_one_event() {
    let stack = Stack::new().await;
    let events = Events::new(&stack);
    let (server, url) = EndpointServer::start(&[]).await;
    let (_, secret) = create_endpoint(&stack, &url, json!(["batch.completed"])).await;
    let body = json!({"channel": "webhook", "content": {"text": "hi"},
                      "recipients": [{"to": stack.receiver.url("b1")}, {"to": stack.receiver.url("b2")},
                                     {"to": "not a url"}]});
    let bytes = serde_json::to_vec(&body).unwrap();
    let req = signed_v2(
        "POST",
        "/v1/messages/batch",
        &bytes,
        APP,
        APP_SECRETS[0],
        now(),
        Some("batch-done-1"),
    );
    let (status, _, answer) = parts(stack.ingest.handle(req).await);
    assert_eq!((status, answer["accepted"].as_u64()), (202, Some(2)), "{answer}");
    let batch = answer["id"].as_str().unwrap().to_string();
    settle(&events).await;

    // Queued, not sent: open, not complete.
    assert_eq!(sweep_at(&stack, 0).run().await.batches_completed, 0);
    stack.drain(Duration::from_secs(10)).await;
    settle(&events).await;
    let swept = sweep_at(&stack, 0).run().await;
    assert_eq!(swept.batches_completed, 1, "{swept:?}");
    assert_eq!(sweep_at(&stack, 0).run().await.batches_completed, 0, "once");
    events.pump(&server, 1, Duration::from_secs(20)).await;
    settle(&events).await;
    assert_eq!(sweep_at(&stack, 0).run().await.batches_completed, 0, "no longer open");
    events.pump(&server, 2, Duration::from_secs(2)).await;

    let hits = server.hits();
    assert_eq!(types_of(&hits), ["batch.completed"], "one event");
    assert!(verifies(&secret, &hits[0]));
    assert_eq!(hits[0].id, format!("evt_{batch}_completed"));
    let ev: Value = serde_json::from_str(&hits[0].body).unwrap();
    assert_eq!(
        ev["data"],
        json!({"id": batch, "channel": "webhook", "total": 3, "accepted": 2, "rejected": 1,
               "counts": {"delivered": 2}})
    );
}

/// Events carry the recipient and content only to an endpoint that opted in
/// (`include`), never to the others.
#[tokio::test]
async fn recipient_and_content_go_only_to_the_endpoint_that_opts_in() {
    let stack = Stack::new().await;
    let events = Events::new(&stack);
    let (open, open_url) = EndpointServer::start(&[]).await;
    let (plain, plain_url) = EndpointServer::start(&[]).await;
    let (status, b) = api(
        &stack,
        APP,
        APP_SECRETS[0],
        "POST",
        "/v1/endpoints",
        json!({"url": open_url, "events": ["message.delivered"], "include": ["recipient", "content"]}),
    )
    .await;
    assert_eq!(
        (status, b["include"].clone()),
        (201, json!(["recipient", "content"])),
        "{b}"
    );
    let (open_id, open_secret) = (
        b["id"].as_str().unwrap().to_string(),
        b["secret"].as_str().unwrap().to_string(),
    );
    create_endpoint(&stack, &plain_url, json!(["message.delivered"])).await;
    // Only the two known fields; the others are named.
    let path = format!("/v1/endpoints/{open_id}");
    let (status, b) = api(&stack, APP, APP_SECRETS[0], "PATCH", &path, json!({"include": ["to"]})).await;
    assert_eq!(
        (status, b["errors"][0]["pointer"].as_str()),
        (422, Some("/include")),
        "{b}"
    );

    let to = stack.receiver.url("opt-in");
    let id = stack
        .accept(json!({"channel": "webhook", "to": to, "content": {"text": "secret text"}}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    events.pump(&open, 1, Duration::from_secs(20)).await;
    events.pump(&plain, 1, Duration::from_secs(20)).await;
    let (o, p) = (open.hits(), plain.hits());
    assert_eq!((o.len(), p.len()), (1, 1));
    assert!(verifies(&open_secret, &o[0]));
    let od: Value = serde_json::from_str(&o[0].body).unwrap();
    let pd: Value = serde_json::from_str(&p[0].body).unwrap();
    assert_eq!(od["data"]["id"], id.as_str());
    assert_eq!(od["data"]["recipient"], to.as_str());
    assert_eq!(od["data"]["content"], json!({"text": "secret text"}));
    assert!(
        pd["data"].get("recipient").is_none() && pd["data"].get("content").is_none(),
        "{pd}"
    );
    assert!(!p[0].body.contains("secret text") && !p[0].body.contains("opt-in"));

    // Opting out again (`null`): nothing more than the status.
    let (status, b) = api(&stack, APP, APP_SECRETS[0], "PATCH", &path, json!({"include": null})).await;
    assert_eq!((status, b["include"].clone()), (200, json!([])), "{b}");
    stack
        .accept(json!({"channel": "webhook", "to": to, "content": {"text": "secret text"}}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    events.pump(&open, 2, Duration::from_secs(20)).await;
    let o = open.hits();
    assert_eq!(o.len(), 2);
    assert!(!o[1].body.contains("secret text"), "{}", o[1].body);
}
