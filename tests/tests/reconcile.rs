//! Ambiguous SMS sends through the real dispatcher (moto SQS and DynamoDB, the provider
//! fakes): the provider times out, the lease runs out, the takeover asks the provider.
//! Found → `sent` with the provider's id and no second send; not found → sent again,
//! once. Sends are counted at the fake (its ledger of sends it performed).

use std::time::Duration;

use pushgate_shared::message::Status;
use pushgate_tests::*;
use pushgate_tool::fakes::Fault;
use serde_json::json;

/// Short leases and provider timeouts so takeovers come within the test.
async fn stack(provider: &str) -> Stack {
    let stack = Stack::with(StackOptions {
        lease_secs: 3,
        webhook_timeout: Duration::from_millis(500),
        max_retry_delay: Duration::from_secs(2),
        ..StackOptions::default()
    })
    .await;
    stack.set_app_providers(json!({"sms_order": [provider]})).await;
    stack
}

/// Longer than the dispatcher's timeout, shorter than one more (the fence's assumption).
const HANG: Duration = Duration::from_millis(900);

async fn send(stack: &Stack, to: &str) -> String {
    stack
        .accept(json!({"channel": "sms", "to": to, "template": "verification_code",
                       "data": {"code": "42", "minutes": 5}}))
        .await
}

fn notes(m: &pushgate_shared::message::Message) -> Vec<String> {
    m.history.iter().filter_map(|h| h.note.clone()).collect()
}

#[tokio::test]
async fn twilio_a_lost_answer_is_found_and_a_lost_request_is_sent_once() {
    let stack = stack("twilio").await;
    let (found_to, resent_to) = ("+14155550181", "+14155550182");
    stack.fakes.log.script(found_to, vec![Fault::HangAfter(HANG)]);
    stack.fakes.log.script(resent_to, vec![Fault::HangBefore(HANG)]);
    let found = send(&stack, found_to).await;
    let resent = send(&stack, resent_to).await;
    stack.drain(Duration::from_secs(30)).await;
    tokio::time::sleep(HANG).await;

    let created = stack.fakes.log.accepted("twilio");
    let to_found: Vec<_> = created.iter().filter(|a| a.to == found_to).collect();
    let to_resent: Vec<_> = created.iter().filter(|a| a.to == resent_to).collect();
    assert_eq!((to_found.len(), to_resent.len()), (1, 1), "{created:?}");

    // The fake's carrier delivers at once, so the lookup finds it delivered.
    let m = stack.record(&found).await;
    assert_eq!(m.status, Status::Delivered, "{:?}", notes(&m));
    assert_eq!(m.provider_message_id.as_deref(), Some(to_found[0].provider_id.as_str()));
    assert!(notes(&m).iter().any(|n| n.contains("not resent")), "{:?}", notes(&m));
    assert!(stack
        .fakes
        .log
        .of("twilio")
        .iter()
        .any(|r| r.action == "ListMessages" && r.verified));

    let m = stack.record(&resent).await;
    assert_eq!(m.status, Status::Sent, "{:?}", notes(&m));
    assert_eq!(
        m.provider_message_id.as_deref(),
        Some(to_resent[0].provider_id.as_str())
    );
}

#[tokio::test]
async fn tencent_a_lost_answer_is_found_and_an_unreported_send_is_never_resent_blind() {
    let stack = stack("tencent").await;
    let (found_to, unreported_to) = ("+8613800138181", "+8613800138182");
    stack.fakes.log.script(found_to, vec![Fault::HangAfter(HANG)]);
    stack.fakes.log.script(unreported_to, vec![Fault::HangBefore(HANG)]);
    let found = send(&stack, found_to).await;
    let unreported = send(&stack, unreported_to).await;
    // Long enough for two takeovers, far less than the report wait (120 s).
    stack.drain(Duration::from_secs(12)).await;

    let sent = stack.fakes.log.accepted("tencent");
    let m = stack.record(&found).await;
    assert_eq!(m.status, Status::Delivered, "{:?}", notes(&m));
    assert!(notes(&m).iter().any(|n| n.contains("not resent")), "{:?}", notes(&m));
    assert_eq!(sent.iter().filter(|a| a.reference == found).count(), 1);
    let serial = sent.iter().find(|a| a.reference == found).unwrap().provider_id.clone();
    assert_eq!(m.provider_message_id, Some(serial));

    // Lost before Tencent sent it: no report, and no resend until the wait is over.
    assert_eq!(sent.iter().filter(|a| a.reference == unreported).count(), 0);
    assert_eq!(stack.record(&unreported).await.status, Status::Sending);
    let pulls = stack
        .fakes
        .log
        .of("tencent")
        .into_iter()
        .filter(|r| r.action == "PullSmsSendStatusByPhoneNumber" && r.to == unreported_to)
        .count();
    assert!(pulls >= 1, "asked, not resent");
}
