//! Callback trust, against moto and the provider fakes: what each callback credential can
//! change, and that no receipt is lost to the race with the dispatcher's finish write.
//! Each test failed while its hole was open.

use std::time::Duration;

use pushgate_shared::delivery::Finish;
use pushgate_shared::message::Status;
use pushgate_tests::*;
use serde_json::{json, Value};

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const OTHER_TWILIO_TOKEN: &str = "other-app-twilio-auth-token";

/// A stack whose harness app sends SMS through `sms_provider`, and whose other app has
/// its own Twilio and WeChat accounts (so it can sign callbacks of its own).
async fn stack(sms_provider: &str) -> Stack {
    let stack = Stack::new().await;
    stack.set_app_providers(json!({"sms_order": [sms_provider]})).await;
    let sm = aws_sdk_secretsmanager::Client::new(&stack.sdk);
    let current = sm.get_secret_value().secret_id(&stack.secret_id).send().await.unwrap();
    let mut doc: Value = serde_json::from_str(current.secret_string().unwrap()).unwrap();
    doc["apps"][1]["providers"] = json!({
        "twilio": {"account_sid": "AC0000000000000000000000000000other", "auth_token": OTHER_TWILIO_TOKEN, "from": "+15005550006"},
        "wechat": {"appid": "wxother", "secret": "other"},
    });
    sm.put_secret_value()
        .secret_id(&stack.secret_id)
        .secret_string(doc.to_string())
        .send()
        .await
        .unwrap();
    stack
}

async fn sent_sms(stack: &Stack, to: &str) -> (String, String) {
    let id = stack
        .accept(json!({"channel":"sms","to": to,"template":"verification_code","data":{"code":"1","minutes":1}}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Sent);
    (id, m.provider_message_id.expect("provider id"))
}

fn twilio_form(sid: &str, status: &str) -> (Vec<(String, String)>, String) {
    let fields = vec![
        ("MessageSid".to_string(), sid.to_string()),
        ("MessageStatus".to_string(), status.to_string()),
    ];
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter())
        .finish();
    (fields, form)
}

async fn twilio_receipt(stack: &Stack, app: &str, auth_token: &str, sid: &str, status: &str) -> u16 {
    let (fields, form) = twilio_form(sid, status);
    let path = format!("/v1/callbacks/twilio?app={app}");
    let sig = pushgate_shared::providers::twilio::signature(auth_token, &format!("{PUBLIC_URL}{path}"), &fields);
    parts(
        stack
            .callback
            .handle(post(&path, FORM, form.as_bytes(), &[("x-twilio-signature", &sig)]))
            .await,
    )
    .0
}

/// Tencent signs nothing: a token used to be the whole proof, and one shared token let
/// its holder fail every tenant's messages.
#[tokio::test]
async fn a_tencent_token_changes_only_its_own_apps_messages() {
    let stack = stack("tencent").await;
    let (id, serial) = sent_sms(&stack, "+8613800138000").await;
    let receipt = json!([{"mobile":"13800138000","report_status":"FAIL","errmsg":"FORGED","sid": serial}]).to_string();

    // The shared service token no longer opens Tencent callbacks at all.
    let shared = format!("/v1/callbacks/tencent?token={CALLBACK_TOKEN}");
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(&shared, JSON, receipt.as_bytes(), &[]))
                .await
        )
        .0,
        401
    );
    // The other app's valid token: acknowledged (Tencent would push again otherwise),
    // nothing written.
    let before = stack.record(&id).await.history.len();
    let other = format!("/v1/callbacks/tencent?app={OTHER_APP}&token={OTHER_CALLBACK_TOKEN}");
    let (status, _, reply) = parts(stack.callback.handle(post(&other, JSON, receipt.as_bytes(), &[])).await);
    assert_eq!((status, reply["result"].as_i64()), (200, Some(0)));
    let m = stack.record(&id).await;
    assert_eq!((m.status, m.history.len()), (Status::Sent, before), "nothing written");
    // Naming this app with the other app's token is refused.
    let crossed = format!("/v1/callbacks/tencent?app={APP}&token={OTHER_CALLBACK_TOKEN}");
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(&crossed, JSON, receipt.as_bytes(), &[]))
                .await
        )
        .0,
        401
    );

    // The app's own token applies, at the same cost as before: one GSI query, one update.
    stack.calls.reset();
    let own = format!("/v1/callbacks/tencent?app={APP}&token={APP_CALLBACK_TOKEN}");
    assert_eq!(
        parts(stack.callback.handle(post(&own, JSON, receipt.as_bytes(), &[])).await).0,
        200
    );
    let calls = stack.calls.snapshot();
    assert_eq!(calls.get("DynamoDB.Query"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("DynamoDB.UpdateItem"), Some(&1), "{calls:?}");
    assert_eq!(stack.calls.service("DynamoDB"), 2, "{calls:?}");
    assert_eq!(stack.record(&id).await.status, Status::Failed);
}

#[tokio::test]
async fn an_aliyun_token_changes_only_its_own_apps_messages() {
    let stack = stack("aliyun").await;
    let (id, biz) = sent_sms(&stack, "+8613800138000").await;
    let receipt =
        json!([{"phone_number":"8613800138000","success":false,"err_code":"FORGED","biz_id": biz,"out_id": id}])
            .to_string();
    let shared = format!("/v1/callbacks/aliyun?token={CALLBACK_TOKEN}");
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(&shared, JSON, receipt.as_bytes(), &[]))
                .await
        )
        .0,
        401
    );
    let other = format!("/v1/callbacks/aliyun?app={OTHER_APP}&token={OTHER_CALLBACK_TOKEN}");
    assert_eq!(
        parts(stack.callback.handle(post(&other, JSON, receipt.as_bytes(), &[])).await).0,
        200
    );
    assert_eq!(
        stack.record(&id).await.status,
        Status::Sent,
        "another tenant's token wrote nothing"
    );
    let own = format!("/v1/callbacks/aliyun?app={APP}&token={APP_CALLBACK_TOKEN}");
    assert_eq!(
        parts(stack.callback.handle(post(&own, JSON, receipt.as_bytes(), &[])).await).0,
        200
    );
    assert_eq!(stack.record(&id).await.status, Status::Failed);
}

/// A signature under app B's Twilio auth token used to apply to any SID.
#[tokio::test]
async fn a_twilio_signature_changes_only_the_signing_apps_messages() {
    let stack = stack("twilio").await;
    let (id, sid) = sent_sms(&stack, "+14155552671").await;
    assert_eq!(
        twilio_receipt(&stack, OTHER_APP, OTHER_TWILIO_TOKEN, &sid, "failed").await,
        200
    );
    assert_eq!(
        stack.record(&id).await.status,
        Status::Sent,
        "B's signature cannot touch A's message"
    );
    assert_eq!(
        twilio_receipt(&stack, APP, OTHER_TWILIO_TOKEN, &sid, "failed").await,
        401
    );
    let own = pushgate_tool::fakes::twilio::AUTH_TOKEN;
    assert_eq!(twilio_receipt(&stack, APP, own, &sid, "delivered").await, 200);
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
}

fn wechat_xml(msg_id: &str, status: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{msg_id}</MsgID><Status><![CDATA[{status}]]></Status></xml>"
    )
}

fn wechat_path(token: &str, ts: i64, nonce: &str) -> String {
    let ts = ts.to_string();
    let sig = pushgate_shared::handlers::callback::wechat_signature(token, &ts, nonce);
    format!("/v1/callbacks/wechat?signature={sig}&timestamp={ts}&nonce={nonce}")
}

/// The signature covers no body: a captured (timestamp, nonce, signature) used to carry
/// any XML, forever.
#[tokio::test]
async fn a_wechat_nonce_is_used_once_and_old_timestamps_are_refused() {
    let stack = stack("aliyun").await;
    let id = stack
        .accept(json!({"channel":"wechat","to":"oUser1","content":{"wechat":{"template_id":"T","data":{"a":"b"}}}}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    let msg_id = stack.record(&id).await.provider_message_id.unwrap();

    let old = wechat_path(APP_CALLBACK_TOKEN, now() - 3 * 86_400, "n1");
    let forged = wechat_xml(&msg_id, "failed:user block");
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(&old, "text/xml", forged.as_bytes(), &[]))
                .await
        )
        .0,
        401
    );
    // The other official account's token: authentic, but not this message's app.
    let other = wechat_path(OTHER_CALLBACK_TOKEN, now(), "n2");
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(&other, "text/xml", forged.as_bytes(), &[]))
                .await
        )
        .0,
        200
    );
    assert_eq!(
        stack.record(&id).await.status,
        Status::Sent,
        "another app's token wrote nothing"
    );

    // One conditional PutItem per callback for the nonce, on top of query + update.
    let path = wechat_path(APP_CALLBACK_TOKEN, now(), "n3");
    stack.calls.reset();
    let body = wechat_xml(&msg_id, "success");
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(&path, "text/xml", body.as_bytes(), &[]))
                .await
        )
        .0,
        200
    );
    let calls = stack.calls.snapshot();
    assert_eq!(calls.get("DynamoDB.PutItem"), Some(&1), "{calls:?}");
    assert_eq!(stack.calls.service("DynamoDB"), 3, "{calls:?}");
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
    // The same triple again, with another body: a replay.
    assert_eq!(
        parts(
            stack
                .callback
                .handle(post(&path, "text/xml", forged.as_bytes(), &[]))
                .await
        )
        .0,
        401
    );
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
}

/// Twilio, Tencent and WeChat may report before the dispatcher has recorded the
/// provider's id; such receipts used to be acknowledged and dropped.
#[tokio::test]
async fn a_receipt_that_beats_the_finish_write_is_held_and_applied() {
    let stack = stack("twilio").await;
    for (n, provider) in ["twilio", "tencent", "wechat"].into_iter().enumerate() {
        let id = stack
            .accept(json!({"channel":"webhook","to": stack.receiver.url(&format!("race{n}")),"content":{"text":"x"}}))
            .await;
        let pk = stack.record(&id).await.pk;
        let t = pushgate_shared::clock::now_ms();
        stack
            .store
            .claim(&pk, &id, "owner", t, t + 60_000, false)
            .await
            .unwrap();
        let pid = format!("{provider}-race-{n}");

        stack.calls.reset();
        let status = match provider {
            "twilio" => twilio_receipt(&stack, APP, pushgate_tool::fakes::twilio::AUTH_TOKEN, &pid, "delivered").await,
            "tencent" => {
                let body = json!([{"mobile":"1","report_status":"SUCCESS","errmsg":"DELIVRD","sid": pid}]).to_string();
                let path = format!("/v1/callbacks/tencent?app={APP}&token={APP_CALLBACK_TOKEN}");
                parts(stack.callback.handle(post(&path, JSON, body.as_bytes(), &[])).await).0
            }
            _ => {
                let path = wechat_path(APP_CALLBACK_TOKEN, now(), &format!("race{n}"));
                let body = wechat_xml(&pid, "success");
                parts(
                    stack
                        .callback
                        .handle(post(&path, "text/xml", body.as_bytes(), &[]))
                        .await,
                )
                .0
            }
        };
        assert_eq!(status, 200, "{provider}: acknowledged");
        let calls = stack.calls.snapshot();
        assert_eq!(calls.get("DynamoDB.Query"), Some(&1), "{provider}: {calls:?}");
        assert_eq!(
            calls.get("DynamoDB.UpdateItem"),
            Some(&1),
            "{provider}: held: {calls:?}"
        );
        assert_eq!(stack.record(&id).await.status, Status::Sending);

        let finish = Finish {
            status: Status::Sent,
            provider: Some(provider.into()),
            provider_message_id: Some(pid.clone()),
            reason: None,
            note: Some("sent".into()),
            early_receipts: true,
        };
        assert!(stack
            .store
            .finish(&pk, "owner", finish, pushgate_shared::clock::now_ms())
            .await
            .unwrap());
        assert_eq!(
            stack.record(&id).await.status,
            Status::Delivered,
            "{provider}: the held receipt applied once the send was recorded"
        );
    }
}

/// A receipt held for another app's message stays unapplied when the send is recorded.
#[tokio::test]
async fn a_held_receipt_keeps_its_scope() {
    let stack = stack("twilio").await;
    let id = stack
        .accept(json!({"channel":"webhook","to": stack.receiver.url("held"),"content":{"text":"x"}}))
        .await;
    let pk = stack.record(&id).await.pk;
    let t = pushgate_shared::clock::now_ms();
    stack
        .store
        .claim(&pk, &id, "owner", t, t + 60_000, false)
        .await
        .unwrap();
    assert_eq!(
        twilio_receipt(&stack, OTHER_APP, OTHER_TWILIO_TOKEN, "SMheld", "failed").await,
        200
    );
    let finish = Finish {
        status: Status::Sent,
        provider: Some("twilio".into()),
        provider_message_id: Some("SMheld".into()),
        reason: None,
        note: Some("sent".into()),
        early_receipts: true,
    };
    assert!(stack.store.finish(&pk, "owner", finish, t).await.unwrap());
    assert_eq!(stack.record(&id).await.status, Status::Sent);
    // A receipt after the reference is recorded but before the index shows it.
    assert_eq!(
        twilio_receipt(
            &stack,
            APP,
            pushgate_tool::fakes::twilio::AUTH_TOKEN,
            "SMheld",
            "delivered"
        )
        .await,
        200
    );
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
}

fn ses_delivery(pk: &str, id: &str, kind: &str) -> Value {
    json!({"eventType": kind, "mail": {"messageId": "ses-x", "tags": {"pushgate_pk": [pk], "pushgate_id": [id]}}})
}

async fn post_ses(stack: &Stack, path: &str, envelope: &Value) -> u16 {
    let body = envelope.to_string();
    parts(
        stack
            .callback
            .handle(post(path, "text/plain", body.as_bytes(), &[]))
            .await,
    )
    .0
}

/// The shared token used to be the whole proof for SES events: a forged `Send` marked an
/// accepted email `sent`, so it was never sent.
#[tokio::test]
async fn ses_events_need_a_valid_sns_signature_on_our_topic() {
    use pushgate_tool::fakes::sns;
    let stack = Stack::new().await;
    let id = stack
        .accept(json!({"channel":"email","to":"sns@example.com","content":{"subject":"s","text":"t"}}))
        .await;
    let pk = stack.record(&id).await.pk;
    let with_token = format!("/v1/callbacks/ses?token={CALLBACK_TOKEN}");

    // Unsigned, with the shared token: refused, nothing written.
    let unsigned = json!({"Type": "Notification", "MessageId": "m", "TopicArn": sns::TOPIC_ARN,
                          "Message": ses_delivery(&pk, &id, "Send").to_string(), "Timestamp": "t"});
    assert_eq!(post_ses(&stack, &with_token, &unsigned).await, 401);
    // A bare event (no envelope) with the token: refused.
    assert_eq!(
        post_ses(&stack, &with_token, &ses_delivery(&pk, &id, "Send")).await,
        401
    );
    // Signed, then tampered with.
    let mut tampered = sns::notification(&ses_delivery(&pk, &id, "Delivery"));
    tampered["Message"] = Value::String(ses_delivery(&pk, &id, "Send").to_string());
    assert_eq!(post_ses(&stack, &with_token, &tampered).await, 401);
    // Signed by a certificate on a host that is not SNS's.
    let mut elsewhere = sns::notification(&ses_delivery(&pk, &id, "Send"));
    elsewhere["SigningCertURL"] = Value::String("https://evil.s3.amazonaws.com/cert.pem".into());
    assert_eq!(post_ses(&stack, &with_token, &elsewhere).await, 401);
    // Validly signed, but for a topic that is not configured.
    let mut other_topic = json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:other",
                                 "Message": ses_delivery(&pk, &id, "Send").to_string(), "Timestamp": "t"});
    sns::sign(&mut other_topic);
    assert_eq!(post_ses(&stack, &with_token, &other_topic).await, 401);
    let m = stack.record(&id).await;
    assert_eq!(m.status, Status::Accepted, "no forged event wrote anything");

    // Signed (both signature versions), no token needed.
    let mut v1 = json!({"Type": "Notification", "MessageId": "m1", "TopicArn": sns::TOPIC_ARN,
                        "Message": ses_delivery(&pk, &id, "Delivery").to_string(), "Timestamp": "t",
                        "Subject": "Amazon SES Email Event Notification", "SignatureVersion": "1"});
    sns::sign(&mut v1);
    assert_eq!(post_ses(&stack, "/v1/callbacks/ses", &v1).await, 200);
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
    let v2 = sns::notification(&ses_delivery(&pk, &id, "Bounce"));
    assert_eq!(post_ses(&stack, "/v1/callbacks/ses", &v2).await, 200);
}

#[tokio::test]
async fn sns_subscriptions_are_confirmed_only_once_verified() {
    use pushgate_tool::fakes::sns;
    let stack = Stack::new().await;
    let subscribe = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=t&Token=k";
    let mut confirmation = json!({"Type": "SubscriptionConfirmation", "MessageId": "m", "Token": "k",
                                  "TopicArn": sns::TOPIC_ARN, "Message": "You have chosen to subscribe",
                                  "SubscribeURL": subscribe, "Timestamp": "t"});
    let unsigned = confirmation.clone();
    assert_eq!(post_ses(&stack, "/v1/callbacks/ses", &unsigned).await, 401);
    let mut elsewhere = confirmation.clone();
    elsewhere["SubscribeURL"] = Value::String("https://attacker.example/confirm".into());
    sns::sign(&mut elsewhere);
    assert_eq!(post_ses(&stack, "/v1/callbacks/ses", &elsewhere).await, 401);
    assert!(
        stack.sns_confirmations.0.lock().unwrap().is_empty(),
        "nothing confirmed yet"
    );
    sns::sign(&mut confirmation);
    assert_eq!(post_ses(&stack, "/v1/callbacks/ses", &confirmation).await, 200);
    assert_eq!(*stack.sns_confirmations.0.lock().unwrap(), vec![subscribe.to_string()]);
}

/// Optional second check for vendors that sign nothing: the caller's address (from API
/// Gateway's request context) must be in the provider's configured ranges.
#[tokio::test]
async fn an_aliyun_allow_list_refuses_other_addresses() {
    let stack = stack("aliyun").await;
    let (id, biz) = sent_sms(&stack, "+8613800138000").await;
    let callback = pushgate_shared::handlers::callback::Callback {
        receipts: pushgate_shared::handlers::receipt::Receipts {
            store: stack.callback.receipts.store.clone(),
            apps: stack.callback.receipts.apps.clone(),
            fallback: None,
        },
        clock: pushgate_shared::clock::system(),
        public_url: Some(PUBLIC_URL.into()),
        sns: stack.callback.sns.clone(),
        allowed_ips: pushgate_shared::allowlist::AllowLists::parse(r#"{"aliyun": ["203.0.113.0/24"]}"#).unwrap(),
    };
    let receipt =
        json!([{"phone_number":"8613800138000","success":true,"err_code":"DELIVERED","biz_id": biz,"out_id": id}])
            .to_string();
    let from = |ip: &str| {
        let event = json!({
            "version": "2.0", "routeKey": "$default", "rawPath": "/v1/callbacks/aliyun",
            "rawQueryString": format!("app={APP}&token={APP_CALLBACK_TOKEN}"),
            "headers": {"content-type": "application/json", "host": "pushgate.test"},
            "requestContext": {"accountId": "1", "apiId": "a", "domainName": "pushgate.test", "domainPrefix": "p",
                "http": {"method": "POST", "path": "/v1/callbacks/aliyun", "protocol": "HTTP/1.1", "sourceIp": ip, "userAgent": "x"},
                "requestId": "r", "routeKey": "$default", "stage": "$default", "time": "t", "timeEpoch": 0},
            "body": receipt, "isBase64Encoded": false,
        });
        lambda_http::request::from_str(&event.to_string()).unwrap()
    };
    assert_eq!(parts(callback.handle(from("198.51.100.7")).await).0, 401);
    assert_eq!(stack.record(&id).await.status, Status::Sent, "nothing written");
    assert_eq!(parts(callback.handle(from("203.0.113.7")).await).0, 200);
    assert_eq!(stack.record(&id).await.status, Status::Delivered);
}

/// Callbacks face the internet too: an odd raw query or path is a clean 400 before any
/// authentication, never a panic in the HTTP layer, and nothing is written.
#[tokio::test]
async fn odd_callback_targets_are_a_clean_400_and_change_nothing() {
    let stack = stack("twilio").await;
    stack.calls.reset();
    for (path, query) in [
        ("/v1/callbacks/twilio", "app=\""),
        ("/v1/callbacks/tencent", "app=<x>&token=y"),
        ("/v1/callbacks/aliyun", "app=%00"),
        ("/v1/callbacks/wechat", "signature=%FF"),
        ("/v1/callbacks/ses", "token=%"),
        ("/v1/callbacks/\"", ""),
        ("/v1/callbacks/%FF", ""),
    ] {
        let resp = stack.callback.handle_event(api_event("POST", path, query)).await;
        assert_eq!(resp.status_code, 400, "{path}?{query}: {:?}", resp.body);
        assert_eq!(resp.headers["content-type"], "application/problem+json");
    }
    let mut ev = api_event("POST", "/v1/callbacks/twilio", "app=x");
    ev.body = Some("***".into());
    ev.is_base64_encoded = true;
    assert_eq!(stack.callback.handle_event(ev).await.status_code, 400);
    assert_eq!(stack.calls.service("DynamoDB"), 0, "nothing read or written");
    // A plain event reaches the provider's authentication (and is refused there).
    let resp = stack
        .callback
        .handle_event(api_event("POST", "/v1/callbacks/tencent", "app=app&token=wrong"))
        .await;
    assert_eq!(resp.status_code, 401, "{:?}", resp.body);
}

/// A caller with a valid signature cannot grow a held-receipt item without bound by
/// flooding receipts for an id the dispatcher never recorded: each is acknowledged, at
/// most `MAX_HELD` wait.
#[tokio::test]
async fn held_receipts_per_provider_id_are_capped() {
    use pushgate_shared::store::callbacks::{MAX_HELD, REF_PK_PREFIX};
    let stack = stack("twilio").await;
    for _ in 0..MAX_HELD + 4 {
        let status = twilio_receipt(
            &stack,
            APP,
            pushgate_tool::fakes::twilio::AUTH_TOKEN,
            "SMflood",
            "delivered",
        )
        .await;
        assert_eq!(status, 200);
    }
    let item = aws_sdk_dynamodb::Client::new(&stack.sdk)
        .get_item()
        .table_name(stack.res.messages_table())
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("{REF_PK_PREFIX}twilio.SMflood")),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("the held item");
    assert_eq!(item["held"].as_l().unwrap().len(), MAX_HELD as usize);
}

/// Ids in a receipt body are the vendor's word: one no message could have (a 3,000
/// character serial number, an `out_id` that is no ULID) is acknowledged and ignored,
/// never a DynamoDB refusal answered 503 for the vendor to retry forever.
#[tokio::test]
async fn receipts_naming_impossible_ids_are_acknowledged_and_change_nothing() {
    let stack = stack("tencent").await;
    stack.calls.reset();
    let long = "9".repeat(3000);
    let body = json!([{"mobile":"1","report_status":"SUCCESS","errmsg":"DELIVRD","sid": long}]).to_string();
    let path = format!("/v1/callbacks/tencent?app={APP}&token={APP_CALLBACK_TOKEN}");
    let (status, _, _) = parts(stack.callback.handle(post(&path, JSON, body.as_bytes(), &[])).await);
    assert_eq!(status, 200);
    let body = json!([{"phone_number":"1","success":true,"err_code":"DELIVERED","out_id":"not-a-ulid","biz_id":"b"}])
        .to_string();
    let path = format!("/v1/callbacks/aliyun?app={APP}&token={APP_CALLBACK_TOKEN}");
    let (status, _, _) = parts(stack.callback.handle(post(&path, JSON, body.as_bytes(), &[])).await);
    assert_eq!(status, 200);
    assert_eq!(stack.calls.service("DynamoDB"), 0, "{:?}", stack.calls.snapshot());
}
