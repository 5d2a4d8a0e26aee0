//! The dispatcher's shell driven through fake ports and a fake provider, without AWS:
//! GIVEN a claimed message and a provider's answer, WHEN the shell handles the batch,
//! THEN it makes exactly the port calls the state machine's verdict asks for.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};

use super::*;
use crate::apps::{Apps, ServiceSecrets};
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::Channel;
use crate::ports::{Charge, RouteStep};
use crate::shaping::{BreakerPolicy, Circuit, Rate, Throttle};

/// Every port call, in order, as one line each.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    fn push(&self, call: String) {
        self.0.lock().unwrap().push(call);
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct FakeLedger {
    calls: Calls,
    attempts: u32,
}

#[async_trait::async_trait]
impl Ledger for FakeLedger {
    async fn create(&self, message: &Message, _: i64) -> Result<crate::ports::Created, PortError> {
        self.calls.push(format!("create {}", message.pk));
        Ok(crate::ports::Created::Created)
    }

    async fn claim(&self, pk: &str, _: &str, _: &str, _: i64, lease_until: i64, _: bool) -> Result<Claim, PortError> {
        self.calls.push(format!("claim {pk}"));
        let mut message: Message = serde_json::from_value(serde_json::json!({
            "pk": pk, "id": "01ID", "app": "app", "channel": "webhook", "to": "https://example.com/h",
            "content": {"text": "hi"}, "status": "sending", "status_rank": 1, "attempts": self.attempts,
            "created_at": 0, "updated_at": 0, "expires_at": 0, "body_hash": "h", "signature": "s"
        }))
        .unwrap();
        message.lease_until = Some(lease_until);
        Ok(Claim::Claimed {
            message: Box::new(message),
            takeover: false,
        })
    }

    async fn charge(&self, _: &str, _: &str, _: &str) -> Result<Charge, PortError> {
        self.calls.push("charge".into());
        Ok(Charge::Charged)
    }

    async fn route_step(&self, _: &str, _: &str, step: &RouteStep, _: i64) -> Result<(), PortError> {
        self.calls.push(format!("route_step {}", step.via));
        Ok(())
    }

    async fn release(&self, _: &str, _: &str, release: &Release, _: i64) -> Result<bool, PortError> {
        self.calls
            .push(format!("release {} refund={}", release.note, release.refund));
        Ok(true)
    }

    async fn finish(&self, _: &str, _: &str, finish: Finish, refund: Option<&str>, _: i64) -> Result<bool, PortError> {
        self.calls
            .push(format!("finish {} refund={}", finish.status.as_str(), refund.is_some()));
        Ok(true)
    }
}

#[async_trait::async_trait]
impl Buckets for FakeLedger {
    async fn take(&self, account: &str, _: Rate, _: i64) -> Result<Throttle, PortError> {
        self.calls.push(format!("take {account}"));
        Ok(Throttle::Go)
    }
}

struct FakeCircuits(Calls);

#[async_trait::async_trait]
impl Circuits for FakeCircuits {
    async fn state(&self, _: &str, _: i64) -> Result<Circuit, PortError> {
        Ok(Circuit::Closed)
    }

    async fn report(&self, account: &str, failed: bool, _: bool, _: i64) -> Result<(), PortError> {
        self.0.push(format!("report {account} failed={failed}"));
        Ok(())
    }
}

struct FakeQueues {
    calls: Calls,
    dead_letter_works: bool,
}

#[async_trait::async_trait]
impl JobQueue for FakeQueues {
    async fn delay(&self, handles: &[(String, Duration)]) -> Result<(), PortError> {
        for (handle, after) in handles {
            self.calls.push(format!("delay {handle} {}s", after.as_secs()));
        }
        Ok(())
    }

    async fn dead_letter(&self, job: &Job) -> Result<(), PortError> {
        self.calls.push(format!("dead_letter {}", job.pk));
        match self.dead_letter_works {
            true => Ok(()),
            false => Err(PortError("sqs down".into())),
        }
    }
}

/// A provider answering from a script.
struct Scripted(Mutex<VecDeque<Result<Sent, ProviderError>>>);

#[async_trait::async_trait]
impl Provider for Scripted {
    fn name(&self) -> &'static str {
        "webhook"
    }
    fn channel(&self) -> Channel {
        Channel::Webhook
    }
    fn on_ambiguous(&self) -> Ambiguity {
        Ambiguity::Resend
    }
    fn account(&self, _: &AppConfig, _: &str) -> Option<String> {
        Some("example.com".into())
    }
    async fn send(&self, _: &Message, _: &AppConfig) -> Result<Sent, ProviderError> {
        self.0
            .lock()
            .unwrap()
            .pop_front()
            .expect("one scripted answer per send")
    }
}

fn dispatcher(
    answers: Vec<Result<Sent, ProviderError>>,
    attempts: u32,
    dead_letter_works: bool,
) -> (Dispatcher<FakeLedger, FakeCircuits, FakeQueues>, Calls) {
    let calls = Calls::default();
    let secrets: ServiceSecrets =
        serde_json::from_value(serde_json::json!({"apps": [{"key": "app", "secrets": ["s"]}]})).unwrap();
    let cfg = config::Dispatch {
        queue_url: String::new(),
        dlq_url: String::new(),
        email_from: String::new(),
        ses_configuration_set: None,
        lease_secs: 60,
        max_attempts: 5,
        concurrency: 10,
        webhook_timeout: Duration::from_secs(5),
        webhook_allow_private: false,
        provider_timeout: Duration::from_secs(5),
        endpoints: Default::default(),
        public_url: None,
        routes_table: None,
        routes_ttl: Duration::from_secs(60),
        breaker: BreakerPolicy::default(),
        max_retry_delay: Duration::from_secs(900),
        breaker_cache_ms: 1000,
        retention_days: 7,
    };
    let d = Dispatcher {
        store: FakeLedger {
            calls: calls.clone(),
            attempts,
        },
        providers: Providers::new(vec![Arc::new(Scripted(Mutex::new(answers.into())))]),
        routes: RouteStore::none(),
        breaker: FakeCircuits(calls.clone()),
        apps: Arc::new(Apps::fixed(secrets)),
        cfg,
        clock: crate::clock::fixed(1_000_000),
        queues: FakeQueues {
            calls: calls.clone(),
            dead_letter_works,
        },
    };
    (d, calls)
}

fn batch() -> SqsEvent {
    let mut record = SqsMessage::default();
    record.message_id = Some("m1".into());
    record.receipt_handle = Some("h1".into());
    record.body = Some(r#"{"pk":"app_s_1","id":"01ID"}"#.into());
    let mut event = SqsEvent::default();
    event.records = vec![record];
    event
}

fn failed_ids(response: &SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

#[tokio::test]
async fn a_delivered_send_is_finished_and_acknowledged() {
    let sent = Sent {
        provider_message_id: None,
        delivered: true,
    };
    let (d, calls) = dispatcher(vec![Ok(sent)], 1, true);
    let response = d.handle(batch()).await;
    assert!(failed_ids(&response).is_empty());
    assert_eq!(calls.all(), ["claim app_s_1", "finish delivered refund=false"]);
}

#[tokio::test]
async fn a_retryable_failure_is_reported_released_and_left_on_the_queue_with_its_backoff() {
    let e = ProviderError::new(ErrorClass::Retryable, "http_503", "unavailable");
    let (d, calls) = dispatcher(vec![Err(e)], 1, true);
    let response = d.handle(batch()).await;
    assert_eq!(failed_ids(&response), ["m1"]);
    let all = calls.all();
    assert_eq!(
        all[..3],
        [
            "claim app_s_1".to_string(),
            "report webhook.example.com failed=true".into(),
            "release attempt 1 failed: webhook: http_503 refund=false".into(),
        ]
    );
    // Backoff after attempt 1: 1 or 2 s.
    assert!(matches!(all[3].as_str(), "delay h1 1s" | "delay h1 2s"), "{all:?}");
    assert_eq!(all.len(), 4);
}

#[tokio::test]
async fn when_the_dead_letter_queue_fails_the_message_is_released_not_finished() {
    let (d, calls) = dispatcher(Vec::new(), 6, false);
    let response = d.handle(batch()).await;
    assert_eq!(failed_ids(&response), ["m1"]);
    assert_eq!(
        calls.all(),
        [
            "claim app_s_1",
            "dead_letter app_s_1",
            "release dead-letter failed refund=false",
            "delay h1 30s"
        ]
    );
    // With the queue up, it is dead-lettered and finished.
    let (d, calls) = dispatcher(Vec::new(), 6, true);
    assert!(failed_ids(&d.handle(batch()).await).is_empty());
    assert_eq!(
        calls.all(),
        ["claim app_s_1", "dead_letter app_s_1", "finish failed refund=false"]
    );
}

#[tokio::test]
async fn an_occurrence_creates_its_message_then_is_claimed_like_any_other() {
    let sent = Sent {
        provider_message_id: None,
        delivered: true,
    };
    let (d, calls) = dispatcher(vec![Ok(sent)], 1, true);
    let mut event = batch();
    event.records[0].body = Some(
        r#"{"occurrence":{"app":"app","schedule":"S1","at":"2026-01-05T01:00:00Z",
            "message":{"channel":"webhook","to":"https://example.com/h","content":{"text":"hi"}}}}"#
            .into(),
    );
    assert!(failed_ids(&d.handle(event.clone()).await).is_empty());
    assert_eq!(
        calls.all(),
        [
            "create app_ro_S1_1767574800",
            "claim app_ro_S1_1767574800",
            "finish delivered refund=false"
        ]
    );
    // An input Scheduler never stamped names no occurrence: dropped, nothing written.
    let (d, calls) = dispatcher(Vec::new(), 1, true);
    event.records[0].body = Some(
        r#"{"occurrence":{"app":"app","schedule":"S1","at":"<aws.scheduler.scheduled-time>",
            "message":{"channel":"webhook","to":"https://example.com/h","content":{"text":"hi"}}}}"#
            .into(),
    );
    assert!(failed_ids(&d.handle(event).await).is_empty());
    assert!(calls.all().is_empty());
}
