//! The Aliyun and Tencent SMS providers against their local fakes: signatures the fakes
//! verify independently, the fields sent, and every error class.

use std::collections::BTreeMap;
use std::time::Duration;

use pushgate_shared::apps::AppConfig;
use pushgate_shared::delivery::{Ambiguity, ErrorClass, ProviderError, Reconciled, Sent};
use pushgate_shared::message::{AliyunSmsTemplate, Channel, Content, Message, SmsTemplates, TencentSmsTemplate};
use pushgate_shared::providers::aliyun::{phone_number, Aliyun};
use pushgate_shared::providers::tencent::Tencent;
use pushgate_shared::providers::{http_client, Provider};
use pushgate_tool::fakes::{aliyun as fake_aliyun, tencent as fake_tencent, Fakes, Fault};
use serde_json::json;

const TO: &str = "+8613800138000";

async fn fakes() -> Fakes {
    Fakes::start("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn app(aliyun_secret: &str, tencent_key: &str) -> AppConfig {
    serde_json::from_value(json!({
        "key": pushgate_tests::APP,
        "secrets": ["s"],
        "providers": {
            "aliyun": {
                "access_key_id": fake_aliyun::ACCESS_KEY_ID,
                "access_key_secret": aliyun_secret,
                "sign_name": "Pushgate",
            },
            "tencent": {
                "secret_id": fake_tencent::SECRET_ID,
                "secret_key": tencent_key,
                "sdk_app_id": fake_tencent::SDK_APP_ID,
                "sign_name": "Pushgate",
                "region": "ap-guangzhou",
            },
        },
    }))
    .unwrap()
}

fn good_app() -> AppConfig {
    app(fake_aliyun::ACCESS_KEY_SECRET, fake_tencent::SECRET_KEY)
}

fn no_accounts() -> AppConfig {
    serde_json::from_value(json!({"key": pushgate_tests::APP, "secrets": ["s"]})).unwrap()
}

fn content() -> Content {
    Content {
        sms: Some(SmsTemplates {
            aliyun: Some(AliyunSmsTemplate {
                template_code: "SMS_154950909".into(),
                params: BTreeMap::from([("code".to_string(), "1234".to_string())]),
            }),
            tencent: Some(TencentSmsTemplate {
                template_id: "449739".into(),
                params: vec!["1234".into(), "5".into()],
            }),
        }),
        ..Content::default()
    }
}

fn sms(to: &str) -> Message {
    pushgate_tests::message(Channel::Sms, to, content())
}

/// A mainland number ending in the fake's magic suffix.
fn magic(suffix: &str) -> String {
    format!("+86138000{suffix}")
}

fn aliyun(f: &Fakes) -> Aliyun {
    Aliyun::new(
        http_client(Duration::from_secs(2)).unwrap(),
        f.endpoints().aliyun_sms,
        pushgate_shared::clock::system(),
    )
}

fn tencent(f: &Fakes) -> Tencent {
    Tencent::new(
        http_client(Duration::from_secs(2)).unwrap(),
        f.endpoints().tencent_sms,
        pushgate_shared::clock::system(),
    )
}

fn expect_err(result: Result<Sent, ProviderError>) -> ProviderError {
    match result {
        Ok(sent) => panic!("expected an error, got {sent:?}"),
        Err(e) => e,
    }
}

#[test]
fn providers_describe_themselves() {
    let http = http_client(Duration::from_secs(2)).unwrap();
    let a = Aliyun::new(
        http.clone(),
        "http://127.0.0.1:1".into(),
        pushgate_shared::clock::system(),
    );
    let t = Tencent::new(http, "http://127.0.0.1:1".into(), pushgate_shared::clock::system());
    assert_eq!(
        (a.name(), a.channel(), a.on_ambiguous()),
        ("aliyun", Channel::Sms, Ambiguity::Reconcile)
    );
    assert_eq!(
        (t.name(), t.channel(), t.on_ambiguous()),
        ("tencent", Channel::Sms, Ambiguity::Reconcile)
    );
}

#[tokio::test]
async fn aliyun_sends_a_signed_template() {
    let f = fakes().await;
    let message = sms(TO);
    let sent = aliyun(&f).send(&message, &good_app()).await.unwrap();
    assert!(!sent.delivered);
    let biz_id = sent.provider_message_id.expect("BizId");
    assert!(!biz_id.is_empty());

    let log = f.log.of("aliyun");
    assert_eq!(log.len(), 1);
    let r = &log[0];
    assert!(r.verified, "{:?}", r.body);
    assert_eq!(r.action, "SendSms");
    assert_eq!(r.to, "8613800138000");
    assert_eq!(r.body["TemplateCode"], "SMS_154950909");
    assert_eq!(r.body["SignName"], "Pushgate");
    assert_eq!(r.body["OutId"], message.id.as_str());
    assert_eq!(r.body["Format"], "JSON");
    assert_eq!(r.body["Version"], "2017-05-25");
    let params: serde_json::Value = serde_json::from_str(r.body["TemplateParam"].as_str().unwrap()).unwrap();
    assert_eq!(params, json!({"code": "1234"}));
}

#[tokio::test]
async fn aliyun_nonces_are_fresh_per_send() {
    let f = fakes().await;
    let provider = aliyun(&f);
    provider.send(&sms(TO), &good_app()).await.unwrap();
    provider.send(&sms(TO), &good_app()).await.unwrap();
    let log = f.log.of("aliyun");
    assert_eq!(log.len(), 2);
    assert_ne!(log[0].body["SignatureNonce"], log[1].body["SignatureNonce"]);
}

#[tokio::test]
async fn aliyun_throttle_is_deferrable_with_retry_after() {
    let f = fakes().await;
    let e = expect_err(
        aliyun(&f)
            .send(&sms(&magic(fake_aliyun::SUFFIX_THROTTLE)), &good_app())
            .await,
    );
    assert_eq!(e.class, ErrorClass::Deferrable);
    assert_eq!(e.code, "isv.BUSINESS_LIMIT_CONTROL");
    assert_eq!(e.retry_after, Some(Duration::from_secs(60)));
    assert!(f.log.of("aliyun")[0].verified);
}

#[tokio::test]
async fn aliyun_quota_permanent_and_server_errors_are_classified() {
    let f = fakes().await;
    let provider = aliyun(&f);
    for (suffix, class, code) in [
        (fake_aliyun::SUFFIX_QUOTA, ErrorClass::Quota, "isv.AMOUNT_NOT_ENOUGH"),
        (
            fake_aliyun::SUFFIX_PERMANENT,
            ErrorClass::Permanent,
            "isv.MOBILE_NUMBER_ILLEGAL",
        ),
        (
            fake_aliyun::SUFFIX_SERVER_ERROR,
            ErrorClass::Retryable,
            "isp.SYSTEM_ERROR",
        ),
    ] {
        let e = expect_err(provider.send(&sms(&magic(suffix)), &good_app()).await);
        assert_eq!((e.class, e.code.as_str()), (class, code), "suffix {suffix}");
        assert_eq!(e.retry_after, None);
    }
    assert!(f.log.of("aliyun").iter().all(|r| r.verified));
}

#[tokio::test]
async fn aliyun_wrong_secret_is_refused() {
    let f = fakes().await;
    let e = expect_err(
        aliyun(&f)
            .send(&sms(TO), &app("not-the-secret", fake_tencent::SECRET_KEY))
            .await,
    );
    assert_eq!(e.class, ErrorClass::Permanent);
    assert_eq!(e.code, "SignatureDoesNotMatch");
    let log = f.log.of("aliyun");
    assert_eq!(log.len(), 1);
    assert!(!log[0].verified);
}

#[tokio::test]
async fn aliyun_needs_an_account_and_a_template() {
    let f = fakes().await;
    let provider = aliyun(&f);
    let e = expect_err(provider.send(&sms(TO), &no_accounts()).await);
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "no_account"));

    let mut message = sms(TO);
    message.content.sms.as_mut().unwrap().aliyun = None;
    let e = expect_err(provider.send(&message, &good_app()).await);
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "no_template"));
    message.content = Content {
        text: Some("hello".into()),
        ..Content::default()
    };
    let e = expect_err(provider.send(&message, &good_app()).await);
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "no_template"));
    assert!(f.log.of("aliyun").is_empty(), "nothing was sent");
}

/// What the provider found for a message it has.
fn delivered() -> Reconciled {
    Reconciled::Sent(Sent {
        provider_message_id: None,
        delivered: true,
    })
}

#[tokio::test]
async fn aliyun_reconcile_finds_a_send_the_provider_accepted() {
    let f = fakes().await;
    let provider = aliyun(&f);
    let message = sms(TO);
    provider.send(&message, &good_app()).await.unwrap();
    assert_eq!(provider.reconcile(&message, &good_app()).await.unwrap(), delivered());

    let log = f.log.of("aliyun");
    let query = &log[1];
    assert!(query.verified, "{:?}", query.body);
    assert_eq!(query.action, "QuerySendDetails");
    assert_eq!(query.body["PhoneNumber"], "8613800138000");
    assert_eq!(query.body["PageSize"], "50");
    assert_eq!(query.body["CurrentPage"], "1");
    let day = query.body["SendDate"].as_str().unwrap();
    assert!(day.len() == 8 && day.bytes().all(|b| b.is_ascii_digit()), "{day}");
}

#[tokio::test]
async fn aliyun_reconcile_says_not_sent_for_a_message_never_sent() {
    let f = fakes().await;
    let provider = aliyun(&f);
    // Another message to the same number that day is not this one.
    provider.send(&sms(TO), &good_app()).await.unwrap();
    let never_sent = sms(TO);
    assert_eq!(
        provider.reconcile(&never_sent, &good_app()).await.unwrap(),
        Reconciled::NotSent
    );
    assert_eq!(f.log.accepted("aliyun").len(), 1);

    // Errors of the query are classified as the send's are.
    let e = provider
        .reconcile(&never_sent, &app("not-the-secret", fake_tencent::SECRET_KEY))
        .await
        .unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "SignatureDoesNotMatch")
    );
    let e = provider.reconcile(&never_sent, &no_accounts()).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "no_account"));
}

#[tokio::test]
async fn aliyun_reconcile_pages_through_the_day() {
    let f = fakes().await;
    let provider = aliyun(&f);
    for _ in 0..50 {
        provider.send(&sms(TO), &good_app()).await.unwrap();
    }
    let last = sms(TO);
    provider.send(&last, &good_app()).await.unwrap();
    assert_eq!(provider.reconcile(&last, &good_app()).await.unwrap(), delivered());
    let pages: Vec<_> = f
        .log
        .of("aliyun")
        .into_iter()
        .filter(|r| r.action == "QuerySendDetails")
        .map(|r| r.body["CurrentPage"].clone())
        .collect();
    assert_eq!(pages, vec![json!("1"), json!("2")]);
}

/// A send whose answer is lost is found; one whose request is lost is not, and is never
/// performed: reconciling neither doubles nor loses an SMS.
#[tokio::test]
async fn aliyun_lost_answers_and_lost_requests_are_reconciled() {
    let f = fakes().await;
    let impatient = Aliyun::new(
        http_client(Duration::from_millis(300)).unwrap(),
        f.endpoints().aliyun_sms,
        pushgate_shared::clock::system(),
    );
    let to = phone_number(TO);

    f.log.script(to, vec![Fault::HangAfter(Duration::from_secs(1))]);
    let answer_lost = sms(TO);
    let e = expect_err(impatient.send(&answer_lost, &good_app()).await);
    assert_eq!(e.class, ErrorClass::Ambiguous, "{e}");
    assert_eq!(
        impatient.reconcile(&answer_lost, &good_app()).await.unwrap(),
        delivered()
    );

    f.log.script(to, vec![Fault::HangBefore(Duration::from_secs(1))]);
    let request_lost = sms(TO);
    let e = expect_err(impatient.send(&request_lost, &good_app()).await);
    assert_eq!(e.class, ErrorClass::Ambiguous, "{e}");
    assert_eq!(
        impatient.reconcile(&request_lost, &good_app()).await.unwrap(),
        Reconciled::NotSent
    );

    // Past both hangs, the provider performed exactly the first send.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let references: Vec<String> = f.log.accepted("aliyun").into_iter().map(|a| a.reference).collect();
    assert_eq!(references, vec![answer_lost.id.clone()]);
}

#[tokio::test]
async fn tencent_sends_a_signed_template() {
    let f = fakes().await;
    let message = sms(TO);
    let sent = tencent(&f).send(&message, &good_app()).await.unwrap();
    assert!(!sent.delivered);
    let serial = sent.provider_message_id.expect("SerialNo");
    assert!(!serial.is_empty());

    let log = f.log.of("tencent");
    assert_eq!(log.len(), 1);
    let r = &log[0];
    assert!(r.verified, "{:?}", r.body);
    assert_eq!(r.action, "SendSms");
    assert_eq!(r.to, TO);
    assert_eq!(r.body["PhoneNumberSet"], json!([TO]));
    assert_eq!(r.body["SmsSdkAppId"], fake_tencent::SDK_APP_ID);
    assert_eq!(r.body["TemplateId"], "449739");
    assert_eq!(r.body["SignName"], "Pushgate");
    assert_eq!(r.body["TemplateParamSet"], json!(["1234", "5"]));
    assert_eq!(r.body["SessionContext"], message.id.as_str());
}

#[tokio::test]
async fn tencent_throttle_is_deferrable_with_retry_after() {
    let f = fakes().await;
    let e = expect_err(
        tencent(&f)
            .send(&sms(&magic(fake_tencent::SUFFIX_THROTTLE)), &good_app())
            .await,
    );
    assert_eq!(e.class, ErrorClass::Deferrable);
    assert_eq!(e.code, "LimitExceeded.PhoneNumberThirtySecondLimit");
    assert_eq!(e.retry_after, Some(Duration::from_secs(30)));
    assert!(f.log.of("tencent")[0].verified);
}

#[tokio::test]
async fn tencent_quota_permanent_server_and_ambiguous_errors_are_classified() {
    let f = fakes().await;
    let provider = tencent(&f);
    for (suffix, class, code) in [
        (
            fake_tencent::SUFFIX_QUOTA,
            ErrorClass::Quota,
            "FailedOperation.InsufficientBalanceInSmsPackage",
        ),
        (
            fake_tencent::SUFFIX_PERMANENT,
            ErrorClass::Permanent,
            "InvalidParameterValue.IncorrectPhoneNumber",
        ),
        (fake_tencent::SUFFIX_SERVER_ERROR, ErrorClass::Retryable, "http_502"),
        (
            fake_tencent::SUFFIX_AMBIGUOUS,
            ErrorClass::Ambiguous,
            "InternalError.SendAndRecvFail",
        ),
    ] {
        let e = expect_err(provider.send(&sms(&magic(suffix)), &good_app()).await);
        assert_eq!((e.class, e.code.as_str()), (class, code), "suffix {suffix}");
        assert_eq!(e.retry_after, None);
    }
    assert!(f.log.of("tencent").iter().all(|r| r.verified));
}

#[tokio::test]
async fn tencent_wrong_key_is_refused() {
    let f = fakes().await;
    let e = expect_err(
        tencent(&f)
            .send(&sms(TO), &app(fake_aliyun::ACCESS_KEY_SECRET, "not-the-key"))
            .await,
    );
    assert_eq!(e.class, ErrorClass::Permanent);
    assert_eq!(e.code, "AuthFailure.SignatureFailure");
    let log = f.log.of("tencent");
    assert_eq!(log.len(), 1);
    assert!(!log[0].verified);
}

#[tokio::test]
async fn tencent_needs_an_account_and_a_template() {
    let f = fakes().await;
    let provider = tencent(&f);
    let e = expect_err(provider.send(&sms(TO), &no_accounts()).await);
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "no_account"));

    let mut message = sms(TO);
    message.content.sms.as_mut().unwrap().tencent = None;
    let e = expect_err(provider.send(&message, &good_app()).await);
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "no_template"));
    assert!(f.log.of("tencent").is_empty(), "nothing was sent");
}

#[tokio::test]
async fn tencent_reconcile_finds_a_send_by_its_session_context() {
    let f = fakes().await;
    let provider = tencent(&f);
    let message = sms(TO);
    let sent = provider.send(&message, &good_app()).await.unwrap();
    // Another message to the same number is not this one.
    provider.send(&sms(TO), &good_app()).await.unwrap();
    assert_eq!(
        provider.reconcile(&message, &good_app()).await.unwrap(),
        Reconciled::Sent(Sent {
            provider_message_id: sent.provider_message_id,
            delivered: true,
        })
    );
    let log = f.log.of("tencent");
    let pull = log.last().unwrap();
    assert!(pull.verified, "{:?}", pull.body);
    assert_eq!(pull.action, "PullSmsSendStatusByPhoneNumber");
    assert_eq!(pull.body["PhoneNumber"], TO);
    assert_eq!(pull.body["SmsSdkAppId"], fake_tencent::SDK_APP_ID);
    assert_eq!((&pull.body["Offset"], &pull.body["Limit"]), (&json!(0), &json!(100)));
    let begin = pull.body["BeginTime"].as_i64().unwrap();
    assert!(
        begin <= message.created_at / 1000 && begin >= message.created_at / 1000 - 120,
        "{begin}"
    );
}

#[tokio::test]
async fn tencent_reconcile_waits_for_the_carrier_report_before_saying_not_sent() {
    let f = fakes().await;
    let never_sent = sms(TO);
    // Just after the lost send, no report may mean "not reported yet".
    let e = tencent(&f).reconcile(&never_sent, &good_app()).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Ambiguous, "no_report_yet"));
    let patient = tencent(&f).with_report_wait(Duration::ZERO);
    assert_eq!(
        patient.reconcile(&never_sent, &good_app()).await.unwrap(),
        Reconciled::NotSent
    );
    let e = patient
        .reconcile(&never_sent, &app(fake_aliyun::ACCESS_KEY_SECRET, "not-the-key"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "AuthFailure.SignatureFailure")
    );
    let e = patient.reconcile(&never_sent, &no_accounts()).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "no_account"));
    assert!(f.log.accepted("tencent").is_empty());
}

/// As for Aliyun: a send whose answer is lost is found and not resent; one whose request
/// is lost is not found and is resent once. The fake performs each SMS exactly once.
#[tokio::test]
async fn tencent_lost_answers_and_lost_requests_are_reconciled() {
    let f = fakes().await;
    let impatient = Tencent::new(
        http_client(Duration::from_millis(300)).unwrap(),
        f.endpoints().tencent_sms,
        pushgate_shared::clock::system(),
    )
    .with_report_wait(Duration::ZERO);

    f.log.script(TO, vec![Fault::HangAfter(Duration::from_secs(1))]);
    let answer_lost = sms(TO);
    let e = expect_err(impatient.send(&answer_lost, &good_app()).await);
    assert_eq!(e.class, ErrorClass::Ambiguous, "{e}");
    let found = impatient.reconcile(&answer_lost, &good_app()).await.unwrap();
    assert!(
        matches!(found, Reconciled::Sent(Sent { delivered: true, .. })),
        "{found:?}"
    );

    f.log.script(TO, vec![Fault::HangBefore(Duration::from_secs(1))]);
    let request_lost = sms(TO);
    let e = expect_err(impatient.send(&request_lost, &good_app()).await);
    assert_eq!(e.class, ErrorClass::Ambiguous, "{e}");
    assert_eq!(
        impatient.reconcile(&request_lost, &good_app()).await.unwrap(),
        Reconciled::NotSent
    );
    impatient.send(&request_lost, &good_app()).await.unwrap();

    // Past both hangs, the provider performed each SMS exactly once.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let references: Vec<String> = f.log.accepted("tencent").into_iter().map(|a| a.reference).collect();
    assert_eq!(references, vec![answer_lost.id.clone(), request_lost.id.clone()]);
}

#[tokio::test]
async fn unreachable_endpoints_are_retryable() {
    // Bind then drop a listener: its port now refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = http_client(Duration::from_secs(2)).unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let a = Aliyun::new(http.clone(), endpoint.clone(), pushgate_shared::clock::system());
    let t = Tencent::new(http, endpoint, pushgate_shared::clock::system());
    let e = expect_err(a.send(&sms(TO), &good_app()).await);
    assert_eq!(e.class, ErrorClass::Retryable);
    let e = expect_err(t.send(&sms(TO), &good_app()).await);
    assert_eq!(e.class, ErrorClass::Retryable);
}
