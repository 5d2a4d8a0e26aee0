//! Dispatcher: claims each job of an SQS batch, sends through its provider, records the
//! outcome, and reports exactly the retryable failures back to SQS.
//!
//! Per message: one claim (conditional UpdateItem returning the record), one provider
//! call, one finish (conditional UpdateItem): two DynamoDB round trips. Records left for
//! another attempt get their next visibility set in one `ChangeMessageVisibilityBatch`
//! per batch: exponential backoff with jitter for failures, the provider's own delay for
//! deferrals. A message whose attempts are spent is recorded `failed` (`dead_lettered`)
//! and moved to the DLQ with its job, from where `pushgate dlq redrive` can bring it back.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::stream::{self, StreamExt};

use crate::apps::Apps;
use crate::apps::WhenExhausted;
use crate::clock::Clock;
use crate::config;
use crate::model::{Job, Message, Status};
use crate::providers::{Ambiguity, ErrorClass, Providers};
use crate::queue::Queue;
use crate::store::{Charge, Claim, Finish, Store};

/// Everything the dispatcher needs; built once per cold start.
pub struct Dispatcher {
    pub store: Store,
    pub providers: Providers,
    pub apps: Arc<Apps>,
    pub cfg: config::Dispatch,
    pub clock: Clock,
    /// The send queue (visibility changes) and the dead-letter queue.
    pub queues: DispatchQueues,
}

/// The queues the dispatcher writes to besides acknowledging.
#[derive(Clone, Debug)]
pub struct DispatchQueues {
    pub send: Queue,
    pub dead_letter: Queue,
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledge: the message reached a settled state or there is nothing to do.
    Ack(&'static str),
    /// Leave on the queue for another attempt, visible again after the delay (else after
    /// the queue's visibility timeout).
    Retry(&'static str, Option<Duration>),
}

/// How long a message of an app set to wait for its balance stays hidden between looks.
const QUOTA_WAIT: Duration = Duration::from_secs(60);

/// Backoff before retry `attempt` (1-based): 2^attempt seconds capped at 15 minutes,
/// with "equal jitter" (half fixed, half random) so retries of a failed batch spread out.
pub fn backoff(attempt: u32, seed: &str) -> Duration {
    let cap = 900u64;
    let full = 2u64.saturating_pow(attempt.min(20)).min(cap);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(seed.as_bytes());
    let jitter = h.finish() % (full / 2 + 1);
    Duration::from_secs(full / 2 + jitter)
}

impl Dispatcher {
    /// Handles one SQS batch; records run concurrently (bounded).
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let handles: std::collections::HashMap<String, String> = event
            .records
            .iter()
            .filter_map(|r| Some((r.message_id.clone()?, r.receipt_handle.clone()?)))
            .collect();
        let outcomes: Vec<(String, Outcome)> = stream::iter(event.records)
            .map(|record| async move {
                let id = record.message_id.clone().unwrap_or_default();
                (id, self.process(&record).await)
            })
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let delays: Vec<(String, Duration)> = outcomes
            .iter()
            .filter_map(|(id, o)| match o {
                Outcome::Retry(_, Some(after)) => handles.get(id).map(|h| (h.clone(), *after)),
                _ => None,
            })
            .collect();
        if !delays.is_empty() {
            // Without this the retry still happens, only after the full visibility timeout.
            if let Err(e) = self.queues.send.change_visibility(&delays).await {
                tracing::warn!(error = %e, "could not set retry delays");
            }
        }
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = outcomes
            .into_iter()
            .filter(|(_, o)| matches!(o, Outcome::Retry(..)))
            .map(|(id, _)| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                failure
            })
            .collect();
        response
    }

    /// Processes one record.
    pub async fn process(&self, record: &SqsMessage) -> Outcome {
        let Some(job) = record.body.as_deref().and_then(|b| serde_json::from_str::<Job>(b).ok()) else {
            // Nothing identifies a message to retry; retrying would only loop.
            tracing::error!(sqs_id = ?record.message_id, "malformed job dropped");
            return Outcome::Ack("malformed");
        };
        let owner = ulid::Ulid::new().to_string();
        let now = (self.clock)();
        let claim = match self
            .store
            .claim(&job.pk, &job.id, &owner, now, now + self.cfg.lease_secs * 1000)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, id = %job.id, "claim failed");
                return Outcome::Retry("store", Some(Duration::from_secs(5)));
            }
        };
        match claim {
            Claim::Missing => {
                tracing::warn!(id = %job.id, "no record for job");
                Outcome::Ack("missing")
            }
            Claim::Done(status) => {
                tracing::info!(id = %job.id, status = status.as_str(), "duplicate delivery acknowledged");
                Outcome::Ack("duplicate")
            }
            // The holder normally finishes within seconds; look again soon, not after the
            // whole visibility timeout.
            Claim::Leased => Outcome::Retry(
                "leased",
                Some(Duration::from_secs(self.cfg.lease_secs.clamp(1, 5) as u64)),
            ),
            Claim::Claimed { message, takeover } => self.send(*message, &owner, takeover).await,
        }
    }

    async fn send(&self, mut message: Message, owner: &str, takeover: bool) -> Outcome {
        let message = &mut message;
        let fail = |reason: String| Finish {
            status: Status::Failed,
            provider: None,
            provider_message_id: None,
            reason: Some(reason.clone()),
            note: Some(reason),
        };
        let app = match self.apps.app(&message.app).await {
            Ok(Some(app)) => app,
            Ok(None) => return self.finish(message, owner, fail("unknown_app".into())).await,
            Err(e) => {
                tracing::error!(error = %e, "service secret unavailable");
                return self
                    .release(message, owner, "config unavailable", true, Duration::from_secs(5))
                    .await;
            }
        };
        let Some(provider) = self.providers.select(message.channel, &app).cloned() else {
            return self
                .finish(
                    message,
                    owner,
                    fail(format!("no provider for {}", message.channel.as_str())),
                )
                .await;
        };
        if takeover && provider.on_ambiguous() == Ambiguity::MarkUnknown {
            let finish = Finish {
                status: Status::Unknown,
                provider: Some(provider.name().into()),
                provider_message_id: None,
                reason: Some("interrupted_send".into()),
                note: Some("a previous attempt was cut short mid-send; not resent".into()),
            };
            return self.finish(message, owner, finish).await;
        }
        if message.attempts > self.cfg.max_attempts {
            return self.dead_letter(message, owner, fail("dead_lettered".into())).await;
        }
        if app.limits.balance && message.charged != Some(true) {
            match self.store.charge(&message.pk, &message.app, owner).await {
                Ok(Charge::Charged) => message.charged = Some(true),
                Ok(Charge::Exhausted) if app.limits.when_exhausted == WhenExhausted::Wait => {
                    return self
                        .release(message, owner, "waiting for balance", true, QUOTA_WAIT)
                        .await
                }
                Ok(Charge::Exhausted) => {
                    let mut finish = fail("quota_exhausted".into());
                    finish.note = Some(format!("app {} has no balance left", message.app));
                    return self.finish(message, owner, finish).await;
                }
                // Another worker took the message over: it carries on.
                Ok(Charge::NotHeld) => return Outcome::Retry("leased", Some(Duration::from_secs(5))),
                Err(e) => {
                    tracing::warn!(error = %e, id = %message.id, "charge failed");
                    return self
                        .release(message, owner, "balance unavailable", true, Duration::from_secs(5))
                        .await;
                }
            }
        }
        match provider.send(message, &app).await {
            Ok(sent) => {
                let status = if sent.delivered {
                    Status::Delivered
                } else {
                    Status::Sent
                };
                let finish = Finish {
                    status,
                    provider: Some(provider.name().into()),
                    provider_message_id: sent.provider_message_id,
                    reason: None,
                    note: Some(format!("sent via {}", provider.name())),
                };
                self.finish(message, owner, finish).await
            }
            Err(e) => {
                tracing::info!(id = %message.id, provider = provider.name(), code = %e.code, class = ?e.class, "send failed");
                let mut finish = fail(format!("{}: {e}", provider.name()));
                finish.provider = Some(provider.name().into());
                match (e.class, provider.on_ambiguous()) {
                    (ErrorClass::Permanent, _) => self.finish(message, owner, finish).await,
                    (ErrorClass::Quota, _) => {
                        finish.reason = Some(format!("quota_exhausted: {e}"));
                        self.finish(message, owner, finish).await
                    }
                    (ErrorClass::Ambiguous, Ambiguity::MarkUnknown) => {
                        finish.status = Status::Unknown;
                        self.finish(message, owner, finish).await
                    }
                    (ErrorClass::Retryable | ErrorClass::Ambiguous, _) if message.attempts >= self.cfg.max_attempts => {
                        finish.reason = Some(format!("dead_lettered: {e}"));
                        self.dead_letter(message, owner, finish).await
                    }
                    (ErrorClass::Deferrable, _) => {
                        let note = format!("deferred by {}: {}", provider.name(), e.code);
                        let after = e.retry_after.unwrap_or(Duration::from_secs(60));
                        self.release(message, owner, &note, true, after).await
                    }
                    _ => {
                        let note = format!("attempt {} failed: {}", message.attempts, e.code);
                        let after = backoff(message.attempts, &message.id);
                        self.release(message, owner, &note, false, after).await
                    }
                }
            }
        }
    }

    async fn finish(&self, message: &Message, owner: &str, finish: Finish) -> Outcome {
        let status = finish.status;
        // A paid message that ends without being sent gives its unit back.
        let recorded = if status == Status::Failed && message.charged == Some(true) {
            self.store
                .finish_refunded(&message.pk, &message.app, owner, finish, (self.clock)())
                .await
        } else {
            self.store.finish(&message.pk, owner, finish, (self.clock)()).await
        };
        match recorded {
            Ok(applied) => {
                tracing::info!(id = %message.id, status = status.as_str(), applied, "finished");
                Outcome::Ack("finished")
            }
            Err(e) => {
                // The send already happened (or was decided); the lease keeps a redelivery
                // from sending again, and its expiry resolves by the provider's policy.
                tracing::error!(error = %e, id = %message.id, "could not record outcome");
                Outcome::Retry("record", Some(Duration::from_secs(5)))
            }
        }
    }

    async fn release(&self, message: &Message, owner: &str, note: &str, refund: bool, after: Duration) -> Outcome {
        if let Err(e) = self
            .store
            .release(&message.pk, owner, note, refund, (self.clock)())
            .await
        {
            tracing::warn!(error = %e, id = %message.id, "release failed; lease will expire");
        }
        Outcome::Retry("retryable", Some(after))
    }

    /// Records the message `failed` and moves its job to the DLQ, where it stays with its
    /// record for inspection and redrive.
    async fn dead_letter(&self, message: &Message, owner: &str, finish: Finish) -> Outcome {
        let job = Job {
            pk: message.pk.clone(),
            id: message.id.clone(),
        };
        if let Err(e) = self.queues.dead_letter.send(&job).await {
            // Leave it on the queue: SQS's own redrive is the backstop.
            tracing::error!(error = %e, id = %message.id, "could not dead-letter");
            return self
                .release(message, owner, "dead-letter failed", false, Duration::from_secs(30))
                .await;
        }
        self.finish(message, owner, finish).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jittered_bounds_and_is_capped() {
        for (attempt, full) in [(1u32, 2u64), (3, 8), (6, 64), (12, 900), (40, 900)] {
            for seed in ["a", "b", "c", "d"] {
                let d = backoff(attempt, seed).as_secs();
                assert!(
                    (full / 2..=full).contains(&d),
                    "attempt {attempt}: {d}s not in [{}, {full}]",
                    full / 2
                );
            }
        }
    }
}
