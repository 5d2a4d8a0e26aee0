//! Nothing lost, nothing doubled, under faults injected together: duplicate SQS
//! deliveries, provider 5xx, and dispatchers that die between claim and send. Counted at
//! the receiving end (the webhook receiver), not inferred from our own records.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use pushgate::model::{Job, Status};
use pushgate_tests::*;
use pushgate_tool::poller::{Invoke, Poller};
use pushgate_tool::BoxError;
use serde_json::json;

/// Deterministic pseudo-random stream (no extra crate for a test's dice).
struct Dice(u64);

impl Dice {
    fn roll(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 100
    }
}

/// The event source with faults: duplicates records within and across batches, and
/// sometimes lets a "dispatcher" claim a job and die before sending.
struct Faulty {
    stack: Arc<Stack>,
    dice: std::sync::Mutex<Dice>,
    crashes: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Invoke for Faulty {
    async fn invoke(&self, mut event: SqsEvent) -> Result<SqsBatchResponse, BoxError> {
        let mut extra = Vec::new();
        for record in &event.records {
            let (dup, crash) = {
                let mut d = self.dice.lock().unwrap();
                (d.roll() < 20, d.roll() < 3)
            };
            if dup {
                extra.push(record.clone());
            }
            if crash {
                let job: Job = serde_json::from_str(record.body.as_deref().unwrap()).unwrap();
                let now = pushgate::clock::now_ms();
                // Claimed, then the process died: the lease runs out in 300 ms.
                let _ = self
                    .stack
                    .store
                    .claim(&job.pk, &job.id, "crashed", now, now + 300)
                    .await;
                self.crashes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        event.records.extend(extra);
        Ok(self.stack.dispatcher.handle(event).await)
    }
}

#[tokio::test]
async fn under_duplicates_5xx_and_crashes_every_message_is_delivered_exactly_once() {
    const N: usize = 150;
    let stack = Arc::new(
        Stack::with(StackOptions {
            max_attempts: 10,
            visibility_timeout: 1,
            ..StackOptions::default()
        })
        .await,
    );
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    let mut ids = Vec::new();
    for i in 0..N {
        // 10 % of targets answer 503 once before recovering.
        let target = if dice.roll() < 10 {
            format!("{}?fail_times=1", stack.receiver.url(&format!("m{i}")))
        } else {
            stack.receiver.url(&format!("m{i}"))
        };
        ids.push(
            stack
                .accept(json!({"channel":"webhook","to": target,"content":{"text": format!("#{i}")}}))
                .await,
        );
    }
    let faulty = Arc::new(Faulty {
        stack: stack.clone(),
        dice: std::sync::Mutex::new(Dice(42)),
        crashes: Default::default(),
    });
    let poller = Poller::new(
        stack.sqs.clone(),
        stack.res.send_queue(),
        stack.res.send_queue_arn(),
        faulty.clone(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        let polled = poller.poll_once().await.unwrap();
        if polled.received == 0 && stack.queue_count(stack.res.send_queue()).await == 0 {
            break;
        }
    }

    let mut accepted: HashMap<String, usize> = HashMap::new();
    for r in stack.receiver.received() {
        if r.verified && (200..300).contains(&r.status) {
            *accepted.entry(r.webhook_id).or_default() += 1;
        }
    }
    let mut lost = 0;
    let mut doubled = 0;
    for id in &ids {
        match accepted.get(id).copied().unwrap_or(0) {
            0 => lost += 1,
            1 => {}
            _ => doubled += 1,
        }
        assert_eq!(stack.record(id).await.status, Status::Delivered, "{id}");
    }
    let failed_first = stack.receiver.received().iter().filter(|r| r.status == 503).count();
    println!(
        "messages {N}, delivered {}, lost {lost}, double-sent {doubled}, 503s {failed_first}, crashes {}",
        accepted.len(),
        faulty.crashes.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!((lost, doubled), (0, 0));
    assert!(
        failed_first > 0 && faulty.crashes.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "faults were injected"
    );
    assert_eq!(stack.queue_count(stack.res.dead_letter_queue()).await, 0);
}
