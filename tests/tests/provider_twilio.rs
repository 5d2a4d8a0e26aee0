//! The Twilio provider against the local fake: request shape and Basic auth as the fake
//! checks them, and every answer class (throttle with Retry-After, rejected numbers, auth,
//! server errors, refused connections).

use std::time::Duration;

use pushgate_shared::apps::AppConfig;
use pushgate_shared::delivery::{Ambiguity, ErrorClass, Reconciled, Sent};
use pushgate_shared::message::{Channel, Content};
use pushgate_shared::providers::twilio::Twilio;
use pushgate_shared::providers::{http_client, Provider};
use pushgate_tests::message;
use pushgate_tool::fakes::{twilio as fake, Fakes, Fault};
use serde_json::json;

const PUBLIC_URL: &str = "https://push.example.com";

async fn fakes() -> Fakes {
    Fakes::start("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn provider(f: &Fakes, callback_base: Option<&str>) -> Twilio {
    let http = http_client(Duration::from_secs(2)).unwrap();
    Twilio::new(http, f.endpoints().twilio, callback_base.map(str::to_string))
}

fn app(account: serde_json::Value) -> AppConfig {
    serde_json::from_value(json!({
        "key": "app-one",
        "secrets": ["s"],
        "providers": {"twilio": account}
    }))
    .unwrap()
}

fn account() -> AppConfig {
    app(json!({"account_sid": fake::ACCOUNT_SID, "auth_token": fake::AUTH_TOKEN, "from": fake::FROM}))
}

fn sms(to: &str, text: &str) -> pushgate_shared::message::Message {
    message(
        Channel::Sms,
        to,
        Content {
            text: Some(text.into()),
            ..Content::default()
        },
    )
}

#[tokio::test]
async fn sends_the_documented_form_and_returns_the_sid() {
    let f = fakes().await;
    let p = provider(&f, Some(PUBLIC_URL));
    assert_eq!(
        (p.name(), p.channel(), p.on_ambiguous()),
        ("twilio", Channel::Sms, Ambiguity::Reconcile)
    );
    let sent = p
        .send(&sms("+14155550100", "Your code is 1234"), &account())
        .await
        .unwrap();
    let sid = sent.provider_message_id.expect("message sid");
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
    assert!(!sent.delivered, "delivery is only known from the status callback");
    let log = f.log.of("twilio");
    assert_eq!(log.len(), 1);
    let r = &log[0];
    assert!(r.verified);
    assert_eq!(r.to, "+14155550100");
    assert_eq!(r.body["From"], fake::FROM);
    assert_eq!(r.body["Body"], "Your code is 1234");
    assert_eq!(
        r.body["StatusCallback"],
        format!("{PUBLIC_URL}/v1/callbacks/twilio?app=app-one")
    );
    assert!(r.body.get("MessagingServiceSid").is_none());
}

#[tokio::test]
async fn a_messaging_service_replaces_from_and_no_public_url_means_no_callback() {
    let f = fakes().await;
    let app = app(json!({
        "account_sid": fake::ACCOUNT_SID,
        "auth_token": fake::AUTH_TOKEN,
        "messaging_service_sid": fake::MESSAGING_SERVICE_SID,
    }));
    provider(&f, None).send(&sms("+14155550100", "hi"), &app).await.unwrap();
    let r = &f.log.of("twilio")[0];
    assert!(r.verified);
    assert_eq!(r.body["MessagingServiceSid"], fake::MESSAGING_SERVICE_SID);
    assert!(r.body.get("From").is_none());
    assert!(r.body.get("StatusCallback").is_none());
}

#[tokio::test]
async fn a_throttle_defers_for_the_retry_after() {
    let f = fakes().await;
    let to = format!("+1415555{}", fake::THROTTLED_SUFFIX);
    let e = provider(&f, None).send(&sms(&to, "hi"), &account()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Deferrable);
    assert_eq!(e.code, "20429");
    assert_eq!(e.retry_after, Some(Duration::from_secs(fake::RETRY_AFTER_SECS)));
}

#[tokio::test]
async fn rejected_numbers_are_permanent() {
    let f = fakes().await;
    let p = provider(&f, None);
    for (suffix, code) in [(fake::INVALID_SUFFIX, "21211"), (fake::UNSUBSCRIBED_SUFFIX, "21610")] {
        let e = p
            .send(&sms(&format!("+1415555{suffix}"), "hi"), &account())
            .await
            .unwrap_err();
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, code));
        assert!(e.retry_after.is_none());
    }
}

#[tokio::test]
async fn a_server_error_is_retryable() {
    let f = fakes().await;
    let to = format!("+1415555{}", fake::SERVER_ERROR_SUFFIX);
    let e = provider(&f, None).send(&sms(&to, "hi"), &account()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Retryable);
}

#[tokio::test]
async fn a_wrong_auth_token_is_refused_and_permanent() {
    let f = fakes().await;
    let app = app(json!({"account_sid": fake::ACCOUNT_SID, "auth_token": "wrong", "from": fake::FROM}));
    let e = provider(&f, None)
        .send(&sms("+14155550100", "hi"), &app)
        .await
        .unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "20003"));
    assert!(!e.to_string().contains("wrong"));
    let log = f.log.of("twilio");
    assert_eq!(log.len(), 1);
    assert!(!log[0].verified);
}

#[tokio::test]
async fn missing_text_or_account_fails_before_any_request() {
    let f = fakes().await;
    let p = provider(&f, None);
    let no_text = message(Channel::Sms, "+14155550100", Content::default());
    let e = p.send(&no_text, &account()).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "no_text"));
    let no_account: AppConfig = serde_json::from_value(json!({"key": "app-one", "secrets": ["s"]})).unwrap();
    let e = p.send(&sms("+14155550100", "hi"), &no_account).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent);
    assert!(f.log.of("twilio").is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Twilio::new(
        http_client(Duration::from_secs(2)).unwrap(),
        format!("http://127.0.0.1:{port}"),
        None,
    );
    let e = p.send(&sms("+14155550100", "hi"), &account()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Retryable);
}

/// A send whose answer is lost is found in the recipient's list and not resent; one whose
/// request is lost is not found and is resent once. Twilio creates each SMS exactly once.
#[tokio::test]
async fn lost_answers_and_lost_requests_are_reconciled_from_the_list() {
    let f = fakes().await;
    let impatient = Twilio::new(
        http_client(Duration::from_millis(300)).unwrap(),
        f.endpoints().twilio,
        Some(PUBLIC_URL.into()),
    );
    let to = "+14155550123";

    // Another text to the same number is not this message.
    impatient.send(&sms(to, "Your code is 9999"), &account()).await.unwrap();
    f.log.script(to, vec![Fault::HangAfter(Duration::from_secs(1))]);
    let answer_lost = sms(to, "Your code is 1234");
    let e = impatient.send(&answer_lost, &account()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Ambiguous, "{e}");
    let found = impatient.reconcile(&answer_lost, &account()).await.unwrap();
    let created = f.log.accepted("twilio");
    assert_eq!(
        found,
        Reconciled::Sent(Sent {
            provider_message_id: Some(created[1].provider_id.clone()),
            delivered: true,
        })
    );
    let list = f
        .log
        .of("twilio")
        .into_iter()
        .find(|r| r.action == "ListMessages")
        .unwrap();
    assert!(list.verified);
    assert_eq!(list.body["To"], to);
    assert_eq!(list.body["From"], fake::FROM);
    assert_eq!(list.body["PageSize"], "50");

    f.log.script(to, vec![Fault::HangBefore(Duration::from_secs(1))]);
    let request_lost = sms(to, "Your code is 5678");
    let e = impatient.send(&request_lost, &account()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Ambiguous, "{e}");
    assert_eq!(
        impatient.reconcile(&request_lost, &account()).await.unwrap(),
        Reconciled::NotSent
    );
    impatient.send(&request_lost, &account()).await.unwrap();

    // Past both hangs: three messages created, each once.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let bodies: Vec<String> = f
        .log
        .of("twilio")
        .into_iter()
        .filter(|r| r.action == "CreateMessage")
        .map(|r| r.body["Body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(f.log.accepted("twilio").len(), 3, "{bodies:?}");
}

#[tokio::test]
async fn a_known_sid_is_fetched() {
    let f = fakes().await;
    let p = provider(&f, None);
    let mut message = sms("+14155550100", "hi");
    let sent = p.send(&message, &account()).await.unwrap();
    message.provider_message_id = sent.provider_message_id.clone();
    assert_eq!(
        p.reconcile(&message, &account()).await.unwrap(),
        Reconciled::Sent(Sent {
            provider_message_id: sent.provider_message_id,
            delivered: true,
        })
    );
    let fetch = f.log.of("twilio").pop().unwrap();
    assert_eq!((fetch.action.as_str(), fetch.verified), ("FetchMessage", true));
    message.provider_message_id = Some(format!("SM{:032x}", 7));
    assert_eq!(p.reconcile(&message, &account()).await.unwrap(), Reconciled::NotSent);
    let wrong = app(json!({"account_sid": fake::ACCOUNT_SID, "auth_token": "nope", "from": fake::FROM}));
    let e = p.reconcile(&message, &wrong).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "20003"));
}
