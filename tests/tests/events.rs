//! The sample events in `events/` are real inputs: re-signed as `pushgate events resign`
//! does, they go through the functions' handlers and give the documented answers.

use pushgate_tests::*;
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = pushgate_tool::workspace_root().join("events").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn api_request(event: &Value) -> lambda_http::Request {
    lambda_http::request::from_str(&event.to_string()).expect("an API Gateway HTTP API v2 event")
}

#[tokio::test]
async fn ingest_events_work_once_resigned_and_go_stale_otherwise() {
    let stack = Stack::new().await;
    let mut send = load("ingest-send.json");
    // As shipped (stale signature) it is refused.
    assert_eq!(parts(stack.ingest.handle(api_request(&send)).await).0, 401);

    assert!(pushgate_tool::events::resign(&mut send, APP, APP_SECRETS[0], None, now()).unwrap());
    let (status, _, body) = parts(stack.ingest.handle(api_request(&send)).await);
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    // Used twice, the same signed event is a replay.
    assert_eq!(parts(stack.ingest.handle(api_request(&send)).await).0, 401);

    let mut status_event = load("ingest-status.json");
    let path = format!("/v1/messages/{id}");
    status_event["rawPath"] = Value::String(path.clone());
    status_event["requestContext"]["http"]["path"] = Value::String(path);
    status_event["pathParameters"]["id"] = Value::String(id.clone());
    pushgate_tool::events::resign(&mut status_event, APP, APP_SECRETS[1], None, now()).unwrap();
    let (status, _, view) = parts(stack.ingest.handle(api_request(&status_event)).await);
    assert_eq!((status, view["id"].as_str()), (200, Some(id.as_str())), "{view}");
}

#[tokio::test]
async fn dispatcher_and_callback_events_are_accepted() {
    let stack = Stack::new().await;
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(load("dispatcher-sqs.json")).unwrap();
    let response = stack.dispatcher.handle(event).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "a job without a record is acknowledged"
    );

    // A real message, then the sample SES delivery receipt pointed at it.
    let mut send = load("ingest-send.json");
    pushgate_tool::events::resign(&mut send, APP, APP_SECRETS[0], None, now()).unwrap();
    let (_, _, body) = parts(stack.ingest.handle(api_request(&send)).await);
    let id = body["id"].as_str().unwrap();
    let pk = stack
        .store
        .get_by_id(id, pushgate_shared::clock::now_ms())
        .await
        .unwrap()
        .unwrap()
        .pk;

    let mut callback = load("callback-ses.json");
    let mut sns: Value = serde_json::from_str(callback["body"].as_str().unwrap()).unwrap();
    let mut ses: Value = serde_json::from_str(sns["Message"].as_str().unwrap()).unwrap();
    ses["mail"]["tags"]["pushgate_pk"][0] = Value::String(pk);
    ses["mail"]["tags"]["pushgate_id"][0] = Value::String(id.to_string());
    sns["Message"] = Value::String(ses.to_string());
    callback["body"] = Value::String(sns.to_string());
    assert_eq!(
        parts(stack.callback.handle(api_request(&callback)).await).0,
        401,
        "sample signature is a placeholder"
    );
    pushgate_tool::events::resign(&mut callback, APP, APP_SECRETS[0], Some(CALLBACK_TOKEN), now()).unwrap();
    let (status, _, body) = parts(stack.callback.handle(api_request(&callback)).await);
    assert_eq!((status, body["applied"].as_u64()), (200, Some(1)), "{body}");
}
