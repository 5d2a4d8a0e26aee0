//! Dispatcher: claims each job of an SQS batch, sends through its provider, records the
//! outcome, and reports exactly the retryable failures back to SQS.
//!
//! Per message: one claim (conditional UpdateItem returning the record), one provider
//! call, one finish (conditional UpdateItem): two DynamoDB round trips.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::stream::{self, StreamExt};

use crate::apps::Apps;
use crate::clock::Clock;
use crate::config;
use crate::model::{Job, Message, Status};
use crate::providers::{Ambiguity, ErrorClass, Providers};
use crate::store::{Claim, Finish, Store};

/// Everything the dispatcher needs; built once per cold start.
pub struct Dispatcher {
    pub store: Store,
    pub providers: Providers,
    pub apps: Arc<Apps>,
    pub cfg: config::Dispatch,
    pub clock: Clock,
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledge: the message reached a settled state or there is nothing to do.
    Ack(&'static str),
    /// Leave on the queue for another attempt.
    Retry(&'static str),
}

impl Dispatcher {
    /// Handles one SQS batch; records run concurrently (bounded).
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let outcomes: Vec<(String, Outcome)> = stream::iter(event.records)
            .map(|record| async move {
                let id = record.message_id.clone().unwrap_or_default();
                (id, self.process(&record).await)
            })
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = outcomes
            .into_iter()
            .filter(|(_, o)| matches!(o, Outcome::Retry(_)))
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
                return Outcome::Retry("store");
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
            Claim::Leased => Outcome::Retry("leased"),
            Claim::Claimed { message, takeover } => self.send(&message, &owner, takeover).await,
        }
    }

    async fn send(&self, message: &Message, owner: &str, takeover: bool) -> Outcome {
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
                return self.release(message, owner, "config unavailable", true).await;
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
            return self.finish(message, owner, fail("attempts_exhausted".into())).await;
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
                        finish.reason = Some(format!("attempts_exhausted: {e}"));
                        self.finish(message, owner, finish).await
                    }
                    (ErrorClass::Deferrable, _) => {
                        let note = format!("deferred by {}: {}", provider.name(), e.code);
                        self.release(message, owner, &note, true).await
                    }
                    _ => {
                        let note = format!("attempt {} failed: {}", message.attempts, e.code);
                        self.release(message, owner, &note, false).await
                    }
                }
            }
        }
    }

    async fn finish(&self, message: &Message, owner: &str, finish: Finish) -> Outcome {
        let status = finish.status;
        match self.store.finish(&message.pk, owner, finish, (self.clock)()).await {
            Ok(applied) => {
                tracing::info!(id = %message.id, status = status.as_str(), applied, "finished");
                Outcome::Ack("finished")
            }
            Err(e) => {
                // The send already happened (or was decided); the lease keeps a redelivery
                // from sending again, and its expiry resolves by the provider's policy.
                tracing::error!(error = %e, id = %message.id, "could not record outcome");
                Outcome::Retry("record")
            }
        }
    }

    async fn release(&self, message: &Message, owner: &str, note: &str, refund: bool) -> Outcome {
        if let Err(e) = self
            .store
            .release(&message.pk, owner, note, refund, (self.clock)())
            .await
        {
            tracing::warn!(error = %e, id = %message.id, "release failed; lease will expire");
        }
        Outcome::Retry("retryable")
    }
}
