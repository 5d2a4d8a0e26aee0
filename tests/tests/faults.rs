//! The fault suite: nothing lost, nothing doubled, with faults injected together through
//! the real pipeline (moto SQS and DynamoDB, the real dispatcher, the Aliyun SMS fake on
//! loopback): duplicate SQS deliveries (in a batch and across batches), provider 5xx,
//! provider timeouts (the request lost before the provider acted, or its answer lost
//! after), throttle answers, permanent rejections, and dispatchers that die between claim
//! and provider call or between provider call and record.
//!
//! Sends are counted at the fake provider (its ledger of sends it performed, by our id
//! in `OutId`), not inferred from our records. Delivery receipts are then pushed through
//! the callback function as the carrier would, for every send the provider performed.
//!
//! `PUSHGATE_FAULT_MESSAGES` sets the number of messages (default 1,000; `bench/faults.sh`
//! runs 10,000).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use futures::StreamExt;
use pushgate_shared::message::{Job, Status};
use pushgate_shared::shaping::BreakerPolicy;
use pushgate_tests::*;
use pushgate_tool::fakes::Fault;
use pushgate_tool::poller::{Invoke, Poller};
use pushgate_tool::BoxError;
use serde_json::json;

/// Deterministic pseudo-random stream (no extra crate for a test's dice).
struct Dice(u64);

impl Dice {
    /// 0..10_000, for rates in basis points.
    fn roll(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 10_000
    }
}

/// The dispatchers' lease.
const LEASE_SECS: i64 = 3;

/// Attempts before a message is dead-lettered.
const MAX_ATTEMPTS: u32 = 6;

/// The dispatcher's client timeout towards the provider, and how long faults hang.
const PROVIDER_TIMEOUT: Duration = Duration::from_millis(500);
/// Within the dispatcher's assumption that a provider acts on a request no later than one
/// timeout after the client gave up (`HangBefore` may be processed late if the server
/// does not notice the client leaving).
const HANG: Duration = Duration::from_millis(900);

/// The event source with faults: duplicates records, and sometimes runs a "dispatcher"
/// that dies after claiming a job, either before or after calling the provider.
struct Faulty {
    stack: Arc<Stack>,
    dice: Mutex<Dice>,
    duplicates: AtomicUsize,
    crashes_before_call: AtomicUsize,
    crashes_after_call: AtomicUsize,
}

impl Faulty {
    /// Claims `job` as a dispatcher that then dies, after sending it to the provider if
    /// `after_call`. It holds the lease a real dispatcher would ([`LEASE_SECS`]): that
    /// lease outlasts any send it starts, which is what keeps a takeover from racing it.
    async fn crash(&self, job: &Job, after_call: bool) {
        let now = pushgate_shared::clock::now_ms();
        let lease_until = now + LEASE_SECS * 1000;
        let claim = self
            .stack
            .store
            .claim(&job.pk, &job.id, "crashed", now, lease_until, false)
            .await;
        let Ok(pushgate_shared::ports::Claim::Claimed { message, takeover }) = claim else {
            return;
        };
        if after_call {
            let app = self.stack.dispatcher.apps.app(&message.app).await.unwrap().unwrap();
            let provider = self.stack.dispatcher.providers.select(message.channel, &app).unwrap();
            // Up to its call it does what a real dispatcher does: a takeover asks the
            // provider first, and sends only what the provider does not have.
            let unsent = !takeover
                || matches!(
                    provider.reconcile(&message, &app).await,
                    Ok(pushgate_shared::delivery::Reconciled::NotSent)
                );
            if unsent {
                // The send reaches the provider; its outcome is never recorded.
                let _ = provider.send(&message, &app).await;
            }
            self.crashes_after_call.fetch_add(1, Ordering::Relaxed);
        } else {
            self.crashes_before_call.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[async_trait::async_trait]
impl Invoke for Faulty {
    async fn invoke(&self, mut event: SqsEvent) -> Result<SqsBatchResponse, BoxError> {
        let mut extra = Vec::new();
        for record in &event.records {
            let (dup, crash) = {
                let mut d = self.dice.lock().unwrap();
                (d.roll(), d.roll())
            };
            let body = record.body.as_deref().unwrap_or_default();
            if dup < 1000 {
                // The same record twice in one batch.
                extra.push(record.clone());
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            } else if dup < 2000 {
                // SQS delivering the job again later, in another batch.
                self.stack
                    .sqs
                    .send_message()
                    .queue_url(self.stack.res.send_queue())
                    .message_body(body)
                    .send()
                    .await?;
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            if crash < 100 {
                let job: Job = serde_json::from_str(body)?;
                self.crash(&job, crash < 50).await;
            }
        }
        event.records.extend(extra);
        Ok(self.stack.dispatcher.handle(event).await)
    }
}

/// Aliyun's form of a number (E.164 without `+`).
fn phone(i: usize, permanent: bool) -> String {
    if permanent {
        // The fake rejects numbers ending 0003 (isv.MOBILE_NUMBER_ILLEGAL).
        format!("86139{:02}{:02}0003", i % 100, (i / 100) % 100)
    } else {
        // Never one of the fake's magic endings (0001-0004).
        format!("86139{i:07}9")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_injected_faults_nothing_is_lost_and_nothing_is_sent_twice() {
    let n: usize = std::env::var("PUSHGATE_FAULT_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let stack = Arc::new(
        Stack::with(StackOptions {
            lease_secs: LEASE_SECS,
            max_attempts: MAX_ATTEMPTS,
            visibility_timeout: 2,
            webhook_timeout: PROVIDER_TIMEOUT,
            concurrency: 10,
            // Circuits are tested on their own; here every fault must reach the provider.
            breaker: BreakerPolicy {
                failures: u32::MAX,
                ..BreakerPolicy::default()
            },
            breaker_cache_ms: 1000,
            max_retry_delay: Duration::from_secs(1),
        })
        .await,
    );

    // The plan: per message, which faults its provider shows.
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    let (mut server_errors, mut timeouts, mut throttles, mut permanent, mut outages) = (0, 0, 0, 0, 0);
    let mut messages = Vec::with_capacity(n);
    for i in 0..n {
        let rejected = dice.roll() < 200;
        let to = phone(i, rejected);
        let mut faults = Vec::new();
        match dice.roll() {
            r if r < 1000 => faults.push(Fault::ServerError),
            r if r < 1250 => faults.push(Fault::HangBefore(HANG)),
            r if r < 1500 => faults.push(Fault::HangAfter(HANG)),
            r if r < 1800 => faults.push(Fault::Throttle),
            _ => {}
        }
        // 0.5 % of messages meet a provider that stays down: their attempts run out.
        let outage = !rejected && dice.roll() < 50;
        if outage {
            faults = vec![Fault::ServerError; 2 * MAX_ATTEMPTS as usize];
            outages += 1;
        }
        match faults.first() {
            Some(Fault::ServerError) if outage => {}
            Some(Fault::ServerError) => server_errors += 1,
            Some(Fault::HangBefore(_) | Fault::HangAfter(_)) => timeouts += 1,
            Some(Fault::Throttle) => throttles += 1,
            // Not planned here: quota refusals are routing's concern (`tests/routing.rs`).
            Some(Fault::Quota) | None => {}
        }
        permanent += usize::from(rejected);
        stack.fakes.log.script(&to, faults);
        messages.push(to);
    }
    let started = std::time::Instant::now();
    let faulty = Arc::new(Faulty {
        stack: stack.clone(),
        dice: Mutex::new(Dice(42)),
        duplicates: AtomicUsize::new(0),
        crashes_before_call: AtomicUsize::new(0),
        crashes_after_call: AtomicUsize::new(0),
    });
    // Four pollers, as four concurrent Lambda instances behind the event source, running
    // while messages arrive (as traffic does; it also keeps moto's queue short, whose
    // SendMessage slows with every message it holds).
    let accepting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120 + n as u64 / 5);
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            let poller = Poller::new(
                stack.sqs.clone(),
                stack.res.send_queue(),
                stack.res.send_queue_arn(),
                faulty.clone(),
            );
            let (stack, accepting) = (stack.clone(), accepting.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let polled = poller.poll_once().await.expect("poll");
                    if polled.received == 0
                        && !accepting.load(Ordering::Relaxed)
                        && stack.queue_count(stack.res.send_queue()).await == 0
                    {
                        break;
                    }
                }
            })
        })
        .collect();
    let accepts = messages.iter().enumerate().map(|(i, to)| {
        let stack = stack.clone();
        let body = json!({"channel": "sms", "to": format!("+{to}"), "template": "verification_code",
                          "data": {"code": format!("{:04}", i % 10_000), "minutes": 5}});
        async move { stack.accept(body).await }
    });
    // Clients at about the pace the pollers drain (moto serialises everything anyway).
    let ids: Vec<String> = futures::stream::iter(accepts).buffered(4).collect().await;
    let accepted_in = started.elapsed();
    accepting.store(false, Ordering::Relaxed);
    for p in futures::future::join_all(pollers).await {
        p.unwrap();
    }
    let dispatched_in = started.elapsed();

    let receipts_from = std::time::Instant::now();
    // The carrier's receipts for every send the provider performed.
    let performed = stack.fakes.log.accepted("aliyun");
    let mut sends: HashMap<String, usize> = HashMap::new();
    for a in &performed {
        *sends.entry(a.reference.clone()).or_default() += 1;
    }
    if n <= 2_000 {
        // Through the callback function, as Aliyun posts them.
        let receipts: Vec<serde_json::Value> = performed
            .iter()
            .map(|a| {
                json!({"phone_number": a.to, "success": true, "err_code": "DELIVERED", "err_msg": "用户接收成功",
                        "biz_id": a.provider_id, "out_id": a.reference, "sms_size": "1"})
            })
            .collect();
        let path = format!("/v1/callbacks/aliyun?app={APP}&token={APP_CALLBACK_TOKEN}");
        let pushes = receipts.chunks(100).map(|chunk| {
            let body = serde_json::to_vec(chunk).unwrap();
            let (stack, path) = (stack.clone(), path.clone());
            async move { parts(stack.callback.handle(post(&path, "application/json", &body, &[])).await) }
        });
        for (status, _, reply) in futures::future::join_all(pushes).await {
            assert_eq!((status, reply["code"].as_i64()), (200, Some(0)), "{reply}");
        }
    } else {
        // At scale, straight to the store update the callback makes: the callback's
        // lookup by `out_id` is a GSI query, which moto answers by scanning the table.
        let keys: HashMap<String, String> = stack.all_records().await.into_values().map(|m| (m.id, m.pk)).collect();
        let applies = sends.keys().map(|id| {
            let (stack, pk) = (stack.clone(), keys[id].clone());
            async move {
                let note = Some("aliyun: DELIVERED".to_string());
                stack
                    .store
                    .apply_receipt(&pk, Status::Delivered, note, pushgate_shared::clock::now_ms())
                    .await
                    .unwrap()
            }
        });
        futures::stream::iter(applies)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    }

    let provider_calls = stack
        .fakes
        .log
        .of("aliyun")
        .iter()
        .filter(|r| r.action == "SendSms")
        .count();
    let (mut delivered, mut failed, mut dead, mut lost, mut doubled) = (0, 0, 0, 0, 0);
    let mut unsettled = Vec::new();
    let mut doubles = Vec::new();
    let records = stack.all_records().await;
    for id in &ids {
        let m = &records[id];
        let performed = sends.get(id).copied().unwrap_or(0);
        doubled += usize::from(performed > 1);
        if performed > 1 {
            let at: Vec<i64> = stack
                .fakes
                .log
                .accepted("aliyun")
                .iter()
                .filter(|a| &a.reference == id)
                .map(|a| a.at_ms)
                .collect();
            doubles.push(format!("{id}: sent at {at:?}; history {:#?}", m.history));
        }
        match m.status {
            Status::Delivered => delivered += 1,
            Status::Failed if m.reason.as_deref().is_some_and(|r| r.starts_with("dead_lettered")) => dead += 1,
            Status::Failed => failed += 1,
            _ => unsettled.push(format!("{id}: {:?} {:?}", m.status, m.history.last())),
        }
        // Lost: should have reached the provider and did not (or never settled).
        let should_send = m.status != Status::Failed;
        lost += usize::from(should_send && performed == 0);
    }
    println!(
        "messages {n}, delivered {delivered}, failed {failed}, dead-lettered {dead}, lost {lost}, double-sent {doubled}, provider calls {provider_calls}"
    );
    println!(
        "faults: duplicate deliveries {}, 5xx {server_errors}, timeouts {timeouts}, throttles {throttles}, permanent {permanent}, provider down {outages}, crashes before call {}, crashes after call {}",
        faulty.duplicates.load(Ordering::Relaxed),
        faulty.crashes_before_call.load(Ordering::Relaxed),
        faulty.crashes_after_call.load(Ordering::Relaxed),
    );
    println!(
        "timing: accepted in {accepted_in:.1?}, all dispatched after {dispatched_in:.1?}, receipts and checks in {:.1?}",
        receipts_from.elapsed()
    );
    assert!(unsettled.is_empty(), "not terminal: {unsettled:#?}");
    assert!(doubles.is_empty(), "sent twice: {doubles:#?}");
    assert_eq!((lost, doubled), (0, 0), "lost, double-sent");
    assert_eq!(delivered + failed + dead, n);
    assert_eq!(failed, permanent, "only the provider's permanent rejections fail");
    assert_eq!(
        dead, outages,
        "exactly the messages whose provider stayed down are dead-lettered"
    );
    // Dead-lettered messages are recorded with their job in the DLQ.
    assert_eq!(stack.queue_count(stack.res.dead_letter_queue()).await, dead);
    assert!(
        faulty.crashes_after_call.load(Ordering::Relaxed) > 0
            && faulty.crashes_before_call.load(Ordering::Relaxed) > 0
            && server_errors > 0
            && timeouts > 0
            && throttles > 0,
        "every kind of fault was injected"
    );
}
