//! Dispatcher: the shell around the attempt state machine (`crate::dispatch`). It claims
//! each job of an SQS batch, builds the plan, carries out each move the machine asks for
//! through the ports (ledger, circuits, buckets, queues) and the providers, and reports
//! exactly the jobs left for later back to SQS.
//!
//! Per message: one claim (conditional UpdateItem returning the record), one provider
//! call, one finish (conditional UpdateItem): two DynamoDB round trips. A recurring
//! schedule's occurrence first creates its message's record (one conditional PutItem:
//! the write ingest makes for other messages, moved here), so three. Jobs left for
//! another attempt get their next visibility in one `ChangeMessageVisibilityBatch` per
//! batch. A message whose attempts are spent is recorded `failed` (`dead_lettered`) and
//! moved to the DLQ with its job, from where `pushgate dlq redrive` can bring it back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::stream::{self, StreamExt};

use crate::apps::{AppConfig, Apps, WhenExhausted};
use crate::clock::Clock;
use crate::config;
use crate::delivery::{Finish, Reconciled};
use crate::dispatch::{attempt, plan, Attempt, Candidate, End, Next, Policy, Settled};
use crate::message::{Alternate, Job, Message};
use crate::ports::{Buckets, Circuits, Claim, Created, JobQueue, Ledger, PortError, Release};
use crate::providers::{Provider, Providers};
pub use crate::queue::DispatchQueues;
use crate::recurring::Queued;
use crate::shaping::whole_seconds;
use crate::store::routes::RouteStore;
use crate::store::{Breaker, Store};

/// Everything the dispatcher needs; built once per cold start. Generic over its ports so
/// that tests can drive it with fakes; production uses the DynamoDB and SQS adapters.
pub struct Dispatcher<L = Store, C = Breaker, Q = DispatchQueues> {
    /// The message ledger and the rate buckets.
    pub store: L,
    pub providers: Providers,
    /// Routing rules (failover, channel fallback, error actions).
    pub routes: RouteStore,
    /// Circuit breakers per provider account.
    pub breaker: C,
    pub apps: Arc<Apps>,
    pub cfg: config::Dispatch,
    pub clock: Clock,
    pub queues: Q,
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

type Step = plan::Step<Arc<dyn Provider>>;

/// Logs a port failure; the state machine decides what it means.
fn logged<T>(result: Result<T, PortError>, what: &str, id: &str) -> Result<T, PortError> {
    if let Err(e) = &result {
        tracing::warn!(error = %e, id, "{what} failed");
    }
    result
}

impl<L: Ledger + Buckets, C: Circuits, Q: JobQueue> Dispatcher<L, C, Q> {
    /// Handles one SQS batch; records run concurrently (bounded).
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let handles: HashMap<String, String> = event
            .records
            .iter()
            .filter_map(|r| Some((r.message_id.clone()?, r.receipt_handle.clone()?)))
            .collect();
        let outcomes: Vec<(String, Outcome)> = stream::iter(event.records)
            .map(|record| async move {
                (
                    record.message_id.clone().unwrap_or_default(),
                    self.process(&record).await,
                )
            })
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let delays: Vec<(String, Duration)> = outcomes
            .iter()
            .filter_map(|(id, o)| match o {
                Outcome::Retry(_, Some(after)) => handles
                    .get(id)
                    .map(|h| (h.clone(), whole_seconds((*after).min(self.cfg.max_retry_delay)))),
                _ => None,
            })
            .collect();
        // Without this the retry still happens, only after the full visibility timeout.
        if !delays.is_empty() {
            let _ = logged(self.queues.delay(&delays).await, "setting retry delays", "");
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

    /// Processes one record: claims its message and, if this worker holds it, sends.
    pub async fn process(&self, record: &SqsMessage) -> Outcome {
        let (job, occurrence) = match record.body.as_deref().and_then(Queued::parse) {
            Some(Queued::Job(job)) => (job, None),
            Some(Queued::Occurrence { occurrence }) => {
                let now = (self.clock)();
                match occurrence.message(now, self.cfg.retention_days) {
                    Ok(message) => (Job::of(&message), Some(message)),
                    Err(e) => {
                        tracing::error!(sqs_id = ?record.message_id, schedule = %occurrence.schedule, error = %e, "malformed occurrence dropped");
                        return Outcome::Ack("malformed");
                    }
                }
            }
            None => {
                // Nothing identifies a message to retry; retrying would only loop.
                tracing::error!(sqs_id = ?record.message_id, "malformed job dropped");
                return Outcome::Ack("malformed");
            }
        };
        let metered = match self.prepare(job.app.as_deref()).await {
            Ok(metered) => metered,
            Err(what) => return Outcome::Retry(what, Some(attempt::OUTAGE_RETRY)),
        };
        if let Some(message) = occurrence {
            // A recurring schedule's firing: its message's record is written here (the
            // write ingest makes for other messages), once per occurrence whoever delivers
            // it; a Scheduler retry finds it and the claim below acknowledges or sends once.
            match logged(self.store.create(&message, (self.clock)()).await, "occurrence", &job.id) {
                Ok(Created::Created) => {
                    tracing::info!(app = %message.app, id = %message.id, schedule = message.recurring.as_deref().unwrap_or("-"), "occurrence accepted");
                }
                Ok(_) => tracing::info!(id = %job.id, "occurrence delivered again"),
                Err(_) => return Outcome::Retry("store", Some(Duration::from_secs(5))),
            }
        }
        let owner = ulid::Ulid::new().to_string();
        let now = (self.clock)();
        let lease_until = now + self.cfg.lease_secs * 1000;
        match logged(
            self.store
                .claim(&job.pk, &job.id, &owner, now, lease_until, metered == Some(true))
                .await,
            "claim",
            &job.id,
        ) {
            Err(_) => Outcome::Retry("store", Some(Duration::from_secs(5))),
            Ok(Claim::Missing) => Outcome::Ack("missing"),
            // Its schedule queues it when due; this job is a stray.
            Ok(Claim::Early { scheduled: true, .. }) => Outcome::Ack("early"),
            Ok(Claim::Early { send_at, .. }) => Outcome::Retry(
                "early",
                Some(Duration::from_millis(send_at.saturating_sub(now).max(1000) as u64)),
            ),
            Ok(Claim::Done(status)) => {
                tracing::info!(id = %job.id, status = status.as_str(), "duplicate delivery acknowledged");
                Outcome::Ack("duplicate")
            }
            // The holder normally finishes within seconds; look again soon, not after the
            // whole visibility timeout.
            Ok(Claim::Leased) => Outcome::Retry(
                "leased",
                Some(Duration::from_secs(self.cfg.lease_secs.clamp(1, 5) as u64)),
            ),
            Ok(Claim::Claimed { message, takeover }) => self.send(*message, &owner, takeover, metered).await,
        }
    }

    /// Loads the app's configuration and the routes before the lease is taken, so that a
    /// stall or a crash while loading them leaves no lease behind that would look like an
    /// interrupted send (the attempt then reads them from the warm caches). Returns
    /// whether the app is metered (its attempt charges before it sends), if the job
    /// names its app.
    async fn prepare(&self, app: Option<&str>) -> Result<Option<bool>, &'static str> {
        if let Err(e) = self.routes.current().await {
            tracing::error!(error = %e, "routes unavailable");
            return Err("routes");
        }
        let Some(app) = app else { return Ok(None) };
        match self.apps.app(app).await {
            Ok(found) => Ok(Some(found.is_some_and(|a| a.limits.balance))),
            Err(e) => {
                tracing::error!(error = %e, "service secret unavailable");
                Err("config")
            }
        }
    }

    /// One delivery attempt: the machine decides, this carries out each move.
    /// `metered`: what the claim recorded (`charge_first`), so the attempt charges
    /// exactly when its claim said it would, even if the app's configuration changed
    /// in between (`None`: a job without its app, read now).
    async fn send(&self, message: Message, owner: &str, takeover: bool, metered: Option<bool>) -> Outcome {
        let app = match self.apps.app(&message.app).await {
            Ok(Some(app)) => app,
            Ok(None) => return self.end(&message, owner, attempt::unknown_app()).await,
            Err(e) => {
                tracing::error!(error = %e, "service secret unavailable");
                return self
                    .end(&message, owner, attempt::unavailable("config unavailable"))
                    .await;
            }
        };
        let route = match self.routes.current().await {
            Ok(routes) => routes.find(&message.app, message.key.as_deref()).unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "routes unavailable");
                return self
                    .end(&message, owner, attempt::unavailable("routes unavailable"))
                    .await;
            }
        };
        let steps = plan::build(&message, &route, |leg, listed| self.candidates(&app, leg, listed));
        let (pk, id) = (message.pk.clone(), message.id.clone());
        let mut policy = self.policy(&app);
        policy.metered = metered.unwrap_or(policy.metered);
        let mut attempt = Attempt::new(message, steps, &route, policy);
        let mut next = attempt.start(takeover, (self.clock)());
        loop {
            next = match next {
                Next::Reconcile(i) => {
                    let settled = self.reconcile(attempt.step(i), attempt.message(), &app).await;
                    attempt.on_reconciled(settled, (self.clock)())
                }
                Next::Charge => {
                    let charged = self.store.charge(&pk, &attempt.message().app, owner).await;
                    attempt.on_charge(logged(charged, "charge", &id), (self.clock)())
                }
                Next::Circuit(i) => {
                    let circuit = self.breaker.state(&attempt.step(i).account, (self.clock)()).await;
                    attempt.on_circuit(logged(circuit, "circuit state", &id), (self.clock)())
                }
                Next::Record(step) => {
                    let recorded = self.store.route_step(&pk, owner, &step, (self.clock)()).await;
                    attempt.on_recorded(logged(recorded, "route step", &id), (self.clock)())
                }
                Next::Token(i, rate) => {
                    // The bucket's answer is relative to the instant it was asked at.
                    let asked_at = (self.clock)();
                    let token = self.store.take(&attempt.step(i).account, rate, asked_at).await;
                    attempt.on_token(logged(token, "rate bucket", &id), asked_at, (self.clock)())
                }
                Next::Send(i) => {
                    let step = attempt.step(i);
                    let result = step.handle.send(&step.message(attempt.message()), &app).await;
                    if let Err(e) = &result {
                        tracing::info!(id, provider = step.provider, code = %e.code, class = ?e.class, "send failed");
                    }
                    if let Some(failed) = attempt::breaker_report(&result, attempt.probe()) {
                        let reported = self
                            .breaker
                            .report(&step.account, failed, attempt.probe(), (self.clock)())
                            .await;
                        let _ = logged(reported, "circuit report", &id);
                    }
                    attempt.on_sent(result, (self.clock)())
                }
                Next::End(end) => return self.end(attempt.message(), owner, end).await,
            }
        }
    }

    /// The providers that can serve `leg` for `app`, as the plan describes them.
    fn candidates(
        &self,
        app: &AppConfig,
        leg: &Alternate,
        listed: Option<&[String]>,
    ) -> Vec<Candidate<Arc<dyn Provider>>> {
        let providers = self.providers.candidates(leg.channel, app, listed);
        providers
            .into_iter()
            .map(|p| Candidate {
                provider: p.name(),
                account_id: p.account(app, &leg.to).unwrap_or_else(|| "default".into()),
                rate: app
                    .providers
                    .rates
                    .get(p.name())
                    .copied()
                    .or_else(|| p.documented_rate()),
                ambiguity: p.on_ambiguous(),
                handle: p,
            })
            .collect()
    }

    fn policy(&self, app: &AppConfig) -> Policy {
        Policy {
            max_attempts: self.cfg.max_attempts,
            call_ms: self.cfg.provider_timeout.max(self.cfg.webhook_timeout).as_millis() as i64,
            lease: Duration::from_secs(self.cfg.lease_secs.max(1) as u64),
            metered: app.limits.balance,
            wait_for_balance: app.limits.when_exhausted == WhenExhausted::Wait,
        }
    }

    /// Asks the provider of an interrupted send whether it holds the message.
    async fn reconcile(&self, step: &Step, message: &Message, app: &AppConfig) -> Settled {
        match step.handle.reconcile(&step.message(message), app).await {
            Ok(Reconciled::Sent(sent)) => Settled::Found(sent),
            Ok(Reconciled::NotSent) => Settled::NotFound,
            Err(e) => {
                tracing::warn!(id = %message.id, provider = step.provider, error = %e, "reconcile failed");
                Settled::Unanswered
            }
        }
    }

    /// Carries out how the attempt ended.
    async fn end(&self, message: &Message, owner: &str, end: End) -> Outcome {
        match end {
            End::Finish { finish, refund } => self.finish(message, owner, finish, refund).await,
            End::DeadLetter { finish, refund } => {
                let job = Job::of(message);
                if logged(self.queues.dead_letter(&job).await, "dead-letter", &message.id).is_err() {
                    // Leave it on the queue: SQS's own redrive is the backstop.
                    let release = Release {
                        note: "dead-letter failed".into(),
                        refund: false,
                        slot: None,
                        tried: None,
                        after: Duration::from_secs(30),
                    };
                    return self.release(message, owner, release).await;
                }
                self.finish(message, owner, finish, refund).await
            }
            End::Release(release) => self.release(message, owner, release).await,
            End::Hold { reason, after } => Outcome::Retry(reason, Some(after)),
        }
    }

    async fn finish(&self, message: &Message, owner: &str, mut finish: Finish, refund: bool) -> Outcome {
        let status = finish.status;
        finish.early_receipts = finish
            .provider
            .as_deref()
            .and_then(crate::providers::receipt_source)
            .is_some_and(|source| source.early());
        let refund_app = refund.then_some(message.app.as_str());
        match self
            .store
            .finish(&message.pk, owner, finish, refund_app, (self.clock)())
            .await
        {
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

    async fn release(&self, message: &Message, owner: &str, release: Release) -> Outcome {
        let released = self.store.release(&message.pk, owner, &release, (self.clock)()).await;
        let _ = logged(released, "release (the lease will expire)", &message.id);
        let label = if release.slot.is_some() { "deferred" } else { "released" };
        Outcome::Retry(label, Some(release.after))
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
