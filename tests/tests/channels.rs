//! Every channel end to end: signed ingest → SQS → dispatcher → the provider's local
//! fake (which verifies the request's signature) → status, then the provider's receipt
//! through the callback function where the provider sends receipts.

use std::time::Duration;

use pushgate_shared::message::Status;
use pushgate_tests::*;
use serde_json::{json, Value};

#[tokio::test]
async fn sms_goes_through_aliyun_and_its_receipt_delivers_it() {
    let stack = Stack::new().await;
    let id = stack.accept(json!({"channel":"sms","to":"+86 138 0013 8000","template":"verification_code","data":{"code":"4321","minutes":5}})).await;
    stack.drain(Duration::from_secs(10)).await;
    let sent = stack.fakes.log.of("aliyun");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].verified, "the fake verified the RPC signature");
    assert_eq!(sent[0].body["TemplateCode"], "SMS_154950909");
    assert_eq!(sent[0].body["OutId"], id.as_str());
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("aliyun")));

    let receipt = json!([{"phone_number":"8613800138000","success":true,"err_code":"DELIVERED","biz_id": m.provider_message_id,"out_id": id}]);
    let path = format!("/v1/callbacks/aliyun?app={APP}&token={APP_CALLBACK_TOKEN}");
    let (status, _, reply) = parts(
        stack
            .callback
            .handle(post(&path, "application/json", receipt.to_string().as_bytes(), &[]))
            .await,
    );
    assert_eq!((status, reply["code"].as_i64()), (200, Some(0)));
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
    let (status, _, _) = parts(
        stack
            .callback
            .handle(post(
                "/v1/callbacks/aliyun?token=nope",
                "application/json",
                receipt.to_string().as_bytes(),
                &[],
            ))
            .await,
    );
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_bad_phone_number_is_a_422_at_ingest() {
    let stack = Stack::new().await;
    let body = serde_json::to_vec(&json!({"channel":"sms","to":"12345","content":{"text":"x"}})).unwrap();
    let (status, _, problem) = parts(
        stack
            .ingest
            .handle(signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], now(), &[]))
            .await,
    );
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["pointer"], "/to");
}

async fn with_app_providers(extra: Value) -> Stack {
    // The harness app sends SMS through Aliyun first; re-point it for one test.
    let stack = Stack::new().await;
    stack.set_app_providers(extra).await;
    stack
}

#[tokio::test]
async fn sms_goes_through_tencent_and_its_receipt_is_found_by_serial_number() {
    let stack = with_app_providers(json!({"sms_order": ["tencent"]})).await;
    let id = stack.accept(json!({"channel":"sms","to":"+8613800138000","template":"verification_code","data":{"code":"9","minutes":1}}),
    )
    .await;
    stack.drain(Duration::from_secs(10)).await;
    let sent = stack.fakes.log.of("tencent");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].verified, "the fake verified TC3-HMAC-SHA256");
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("tencent")));
    let serial = m.provider_message_id.clone().unwrap();

    let receipt = json!([{"user_receive_time":"2026-11-25 00:00:00","nationcode":"86","mobile":"13800138000","report_status":"FAIL","errmsg":"MK:0001","description":"failed","sid": serial}]);
    let path = format!("/v1/callbacks/tencent?app={APP}&token={APP_CALLBACK_TOKEN}");
    let (status, _, reply) = parts(
        stack
            .callback
            .handle(post(&path, "application/json", receipt.to_string().as_bytes(), &[]))
            .await,
    );
    assert_eq!((status, reply["result"].as_i64()), (200, Some(0)));
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Failed);
    assert_eq!(m.reason.as_deref(), Some("tencent: MK:0001"));
}

#[tokio::test]
async fn sms_goes_through_twilio_and_its_signed_status_callback_delivers_it() {
    let stack = with_app_providers(json!({"sms_order": ["twilio"]})).await;
    let id = stack.accept(json!({"channel":"sms","to":"+14155552671","template":"verification_code","data":{"code":"77","minutes":3}}),
    )
    .await;
    stack.drain(Duration::from_secs(10)).await;
    let sent = stack.fakes.log.of("twilio");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].verified);
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("twilio")));
    let sid = m.provider_message_id.clone().unwrap();

    let fields = vec![
        ("MessageSid".to_string(), sid.clone()),
        ("MessageStatus".to_string(), "delivered".to_string()),
        ("To".to_string(), "+14155552671".to_string()),
    ];
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter())
        .finish();
    let path = format!("/v1/callbacks/twilio?app={APP}");
    let url = format!("{PUBLIC_URL}{path}");
    let good = pushgate_shared::providers::twilio::signature(pushgate_tool::fakes::twilio::AUTH_TOKEN, &url, &fields);
    let forged = pushgate_shared::providers::twilio::signature("wrong-token", &url, &fields);
    let form_type = "application/x-www-form-urlencoded";
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(
                    &path,
                    form_type,
                    form.as_bytes(),
                    &[("x-twilio-signature", &forged)]
                ))
                .await
        )
        .0,
        401
    );
    assert_eq!(stack.record(&id).await.status, Status::Sent);
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(
                    &path,
                    form_type,
                    form.as_bytes(),
                    &[("x-twilio-signature", &good)]
                ))
                .await
        )
        .0,
        200
    );
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
}

#[tokio::test]
async fn robots_post_to_their_groups() {
    let stack = Stack::new().await;
    let data = json!({"name":"Ann","order_id":"A-7","carrier":"UPS"});
    let mut ids = Vec::new();
    for channel in ["dingtalk", "wecom", "feishu"] {
        ids.push(
            stack
                .accept(json!({"channel": channel, "to": "ops", "template": "order_shipped", "data": data}))
                .await,
        );
    }
    let mention = stack.accept(json!({"channel":"dingtalk","to":"ops","content":{"text":"deploy done","mentions":{"mobiles":["+8613800138000"],"all":false}}})).await;
    stack.drain(Duration::from_secs(10)).await;
    for provider in ["dingtalk", "wecom", "feishu"] {
        let got = stack.fakes.log.of(provider);
        assert!(!got.is_empty() && got.iter().all(|r| r.verified), "{provider}: {got:?}");
    }
    let dingtalk = stack.fakes.log.of("dingtalk");
    assert!(dingtalk
        .iter()
        .any(|r| r.body["msgtype"] == "markdown" && r.body["markdown"]["title"] == "Order A-7 shipped"));
    assert!(dingtalk
        .iter()
        .any(|r| r.body["at"]["atMobiles"][0] == "+8613800138000"));
    for id in ids.iter().chain([&mention]) {
        assert_eq!(
            stack.record(id).await.status,
            Status::Delivered,
            "robots answer synchronously"
        );
    }
}

#[tokio::test]
async fn a_robot_throttle_defers_without_spending_an_attempt() {
    let stack = Stack::new().await;
    let id = stack
        .accept(json!({"channel":"wecom","to":"ops","content":{"text":"slow down #throttle"}}))
        .await;
    let event = stack.receive_event(10).await;
    let response = stack.dispatcher.handle(event).await;
    assert_eq!(response.batch_item_failures.len(), 1, "deferred, so left on the queue");
    let m = stack.record(&id).await;
    assert_eq!(
        (m.status, m.attempts),
        (Status::Sending, 0),
        "a deferral is not a failed attempt"
    );
    assert!(m
        .history
        .last()
        .unwrap()
        .note
        .as_deref()
        .unwrap()
        .starts_with("deferred by wecom"));
    // The job waits for the provider's delay (WeCom: 60 s), not the queue's 1 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        stack.receive_event(10).await.records.is_empty(),
        "still hidden by the deferral"
    );
}

#[tokio::test]
async fn wechat_template_message_and_its_receipt() {
    let stack = Stack::new().await;
    let id = stack.accept(json!({"channel":"wechat","to":"oUser123","template":"order_shipped","data":{"name":"Ann","order_id":"A-9"}}),
    )
    .await;
    stack.drain(Duration::from_secs(10)).await;
    let sends: Vec<_> = stack
        .fakes
        .log
        .of("wechat")
        .into_iter()
        .filter(|r| r.action == "send")
        .collect();
    assert_eq!(sends.len(), 1);
    assert!(sends[0].verified, "a valid access token");
    assert_eq!(sends[0].body["data"]["keyword1"]["value"], "A-9");
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("wechat")));
    let msg_id = m.provider_message_id.clone().unwrap();

    let xml = format!("<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser123]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{msg_id}</MsgID><Status><![CDATA[success]]></Status></xml>");
    // A timestamp within WeChat's 5-minute window, under the app's own server token.
    let ts = &now().to_string();
    let nonce = "n0nce";
    let sig = pushgate_shared::handlers::callback::wechat_signature(APP_CALLBACK_TOKEN, ts, nonce);
    let bad = format!("/v1/callbacks/wechat?signature=00&timestamp={ts}&nonce={nonce}");
    assert_eq!(
        parts(stack.callback.handle(post(&bad, "text/xml", xml.as_bytes(), &[])).await).0,
        401
    );
    let path = format!("/v1/callbacks/wechat?signature={sig}&timestamp={ts}&nonce={nonce}");
    let resp = stack
        .callback
        .handle(post(&path, "text/xml", xml.as_bytes(), &[]))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body(), &lambda_http::Body::Text("success".into()));
    assert_eq!(stack.record(&id).await.status, Status::Delivered);

    // The URL check WeChat makes before it posts events.
    let check = http::Request::builder()
        .method("GET")
        .uri(format!("{path}&echostr=hello"))
        .body(lambda_http::Body::Empty)
        .unwrap();
    assert_eq!(
        stack.callback.handle(check).await.body(),
        &lambda_http::Body::Text("hello".into())
    );
}

#[tokio::test]
async fn email_fails_over_to_smtp_when_the_app_prefers_it() {
    let stack = with_app_providers(json!({"email_order": ["smtp", "ses"]})).await;
    let id = stack.accept(json!({"channel":"email","to":"carol@example.com","content":{"subject":"Hi","text":"via smtp","html":"<p>via smtp</p>"}})).await;
    stack.drain(Duration::from_secs(10)).await;
    let mails = stack.smtp.received();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].authenticated);
    assert!(mails[0].data.contains(&format!("<{id}@pushgate>")));
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.provider.as_deref()), (Status::Sent, Some("smtp")));
    assert_eq!(stack.emails_to("carol@example.com").await, 0, "not through SES");
}
