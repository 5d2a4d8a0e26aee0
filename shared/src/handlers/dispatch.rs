//! Dispatcher: claims each job of an SQS batch, sends through its provider, records the
//! outcome, and reports exactly the retryable failures back to SQS.
//!
//! Per message: one claim (conditional UpdateItem returning the record), one provider
//! call, one finish (conditional UpdateItem): two DynamoDB round trips. Records left for
//! another attempt get their next visibility set in one `ChangeMessageVisibilityBatch`
//! per batch: exponential backoff with jitter for failures, the provider's own delay for
//! deferrals. A message whose attempts are spent is recorded `failed` (`dead_lettered`)
//! and moved to the DLQ with its job, from where `pushgate dlq redrive` can bring it back.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::stream::{self, StreamExt};

use crate::apps::WhenExhausted;
use crate::apps::{AppConfig, Apps};
use crate::clock::Clock;
use crate::config;
use crate::delivery::{Ambiguity, ErrorClass, Finish, ProviderError, Reconciled};
use crate::message::{Alternate, Channel, Job, Message, Status};
use crate::ports::{Charge, Claim};
use crate::providers::{Provider, Providers};
use crate::queue::Queue;
use crate::routing::{Action, Route};
use crate::shaping::{backoff, whole_seconds, Circuit, Rate, Throttle};
use crate::store::routes::RouteStore;
use crate::store::{Breaker, Store};

/// Everything the dispatcher needs; built once per cold start.
pub struct Dispatcher {
    pub store: Store,
    pub providers: Providers,
    /// Routing rules (failover, channel fallback, error actions).
    pub routes: RouteStore,
    /// Circuit breakers per provider account, shared through DynamoDB.
    pub breaker: Breaker,
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

/// One way to send a message: a channel's recipient and content, through one provider.
struct Step {
    leg: Arc<Alternate>,
    provider: Arc<dyn Provider>,
}

impl Step {
    /// `channel:provider`, as kept in a message's `tried` and `via`.
    fn id(&self) -> String {
        format!("{}:{}", self.leg.channel.as_str(), self.provider.name())
    }

    /// The message as this step sends it (its channel, recipient and content).
    fn message(&self, message: &Message) -> Message {
        let mut m = message.clone();
        m.channel = self.leg.channel;
        m.to = self.leg.to.clone();
        m.content = self.leg.content.clone();
        m
    }
}

/// A `failed` finish with `reason`.
fn failed(reason: &str, provider: Option<&str>) -> Finish {
    Finish {
        status: Status::Failed,
        provider: provider.map(String::from),
        provider_message_id: None,
        reason: Some(reason.to_string()),
        note: Some(reason.to_string()),
    }
}

/// Send rates the providers document per account (`../shared/providers.md`). Aliyun's
/// 5,000 and Tencent's 3,000 per second are above what one DynamoDB item can count, and
/// far above one app's traffic: they are left to the providers' own throttle answers,
/// which defer the same way, unless an app sets `providers.rates`.
pub fn documented_rate(provider: &str) -> Option<Rate> {
    match provider {
        "dingtalk" | "wecom" => Some(Rate::per_minute(20)),
        "feishu" => Some(Rate::per_second(5)),
        _ => None,
    }
}

/// Slack for clock steps between instances.
const SEND_MARGIN_MS: i64 = 200;

/// How early a message may use its reserved rate slot (clocks of instances differ).
const SLOT_EARLY_MS: i64 = 100;

/// How long a message of an app set to wait for its balance stays hidden between looks.
const QUOTA_WAIT: Duration = Duration::from_secs(60);

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
                Outcome::Retry(_, Some(after)) => handles
                    .get(id)
                    .map(|h| (h.clone(), whole_seconds((*after).min(self.cfg.max_retry_delay)))),
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
        let app = match self.apps.app(&message.app).await {
            Ok(Some(app)) => app,
            Ok(None) => return self.finish(message, owner, failed("unknown_app", None)).await,
            Err(e) => {
                tracing::error!(error = %e, "service secret unavailable");
                return self
                    .release(message, owner, "config unavailable", true, Duration::from_secs(5))
                    .await;
            }
        };
        let route = match self.routes.current().await {
            Ok(routes) => routes.find(&message.app, message.key.as_deref()).unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "routes unavailable");
                return self
                    .release(message, owner, "routes unavailable", true, Duration::from_secs(5))
                    .await;
            }
        };
        let plan = self.plan(message, &app, &route);
        let Some(first) = plan.first().map(Step::id) else {
            let why = match message.tried.last() {
                Some(last) => format!("every route tried (last: {last})"),
                None => format!("no provider for {}", message.channel.as_str()),
            };
            return self.finish(message, owner, failed(&why, None)).await;
        };

        if takeover {
            // The send cut short may have reached its provider: the one recorded in `via`,
            // else the route's first choice (a send elsewhere records `via` first).
            let inflight = message.via.clone().unwrap_or_else(|| first.clone());
            if let Some(step) = plan.iter().find(|s| s.id() == inflight) {
                if let Some(outcome) = self.settle_interrupted(message, owner, &app, step).await {
                    return outcome;
                }
            }
        }
        if message.attempts > self.cfg.max_attempts {
            return self.dead_letter(message, owner, failed("dead_lettered", None)).await;
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
                    let mut finish = failed("quota_exhausted", None);
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

        let mut notes: Vec<String> = Vec::new();
        let mut open_until: Option<i64> = None;
        let mut skip_channel: Option<Channel> = None;
        let mut last_error: Option<(String, ProviderError)> = None;
        let tried_before = message.tried.len();
        for step in &plan {
            if skip_channel == Some(step.leg.channel) {
                continue;
            }
            let name = step.provider.name();
            let account = format!("{name}.{}", app.providers.account_id(name, &step.leg.to));
            let now = (self.clock)();
            let probe = match self.breaker.state(&account, now).await {
                Ok(Circuit::Closed) => false,
                Ok(Circuit::Probe) => true,
                Ok(Circuit::Open { until_ms }) => {
                    notes.push(format!("skipped {name}: circuit open"));
                    open_until = Some(open_until.map_or(until_ms, |u: i64| u.min(until_ms)));
                    continue;
                }
                Err(e) => {
                    // Breaker state is advisory: without it, send.
                    tracing::warn!(error = %e, "circuit state unavailable");
                    false
                }
            };
            let id = step.id();
            if id != first || !notes.is_empty() || !message.tried.is_empty() {
                // Recorded before the call, so a takeover after a crash knows where the
                // message may be.
                let now = (self.clock)();
                if let Err(e) = self
                    .store
                    .route_step(&message.pk, owner, &id, &message.tried, std::mem::take(&mut notes), now)
                    .await
                {
                    tracing::warn!(error = %e, id = %message.id, "could not record route step");
                    return self
                        .release(message, owner, "route step not recorded", true, Duration::from_secs(5))
                        .await;
                }
                message.via = Some(id.clone());
            }
            if let Some(rate) = app.providers.rates.get(name).copied().or_else(|| documented_rate(name)) {
                let now = (self.clock)();
                let held = message
                    .rate_slot
                    .as_deref()
                    .and_then(|slot| slot.rsplit_once('@'))
                    .filter(|(a, _)| *a == account)
                    .and_then(|(_, at)| at.parse::<i64>().ok());
                let due = match held {
                    // Its reserved slot is due: the token was taken when it was reserved.
                    Some(at) if at <= now + SLOT_EARLY_MS => None,
                    // Back before its slot (delays are capped): park it again, same slot.
                    Some(at) => Some(at),
                    None => match self.store.take_token(&account, rate, now).await {
                        Ok(Throttle::Go) => None,
                        Ok(Throttle::Wait(after)) => Some(now + after.as_millis() as i64),
                        Err(e) => {
                            tracing::warn!(error = %e, "rate bucket unavailable; sending");
                            None
                        }
                    },
                };
                if let Some(at) = due {
                    let note = format!("deferred: {name} rate limit");
                    let slot = format!("{account}@{at}");
                    let after = Duration::from_millis((at - now).max(1) as u64);
                    return self.park(message, owner, &note, Some(&slot), after).await;
                }
            }
            // Fence: start a send only if it ends (answer or timeout) before the lease does.
            // A takeover can then never overlap a send of ours still in flight, however
            // slow the steps before it were.
            let must_end_by = (self.clock)() + self.send_budget_ms();
            if message.lease_until.is_some_and(|until| must_end_by >= until) {
                tracing::warn!(id = %message.id, "lease too short to start a send; released");
                return self
                    .release(
                        message,
                        owner,
                        "lease ran short before the send",
                        true,
                        Duration::from_secs(1),
                    )
                    .await;
            }
            let leg_message = step.message(message);
            let result = step.provider.send(&leg_message, &app).await;
            let now = (self.clock)();
            match result {
                Ok(sent) => {
                    if probe {
                        let _ = self.breaker.success(&account, true, now).await;
                    }
                    let note = match step.leg.channel == message.channel {
                        true => format!("sent via {name}"),
                        false => format!("sent via {name} ({} fallback)", step.leg.channel.as_str()),
                    };
                    let finish = Finish::sent(sent, name, note);
                    return self.finish(message, owner, finish).await;
                }
                Err(e) => {
                    tracing::info!(id = %message.id, provider = name, code = %e.code, class = ?e.class, "send failed");
                    if matches!(e.class, ErrorClass::Retryable | ErrorClass::Ambiguous) {
                        if let Err(b) = self.breaker.failure(&account, probe, now).await {
                            tracing::warn!(error = %b, "could not record provider failure");
                        }
                    }
                    match (e.class, step.provider.on_ambiguous()) {
                        (ErrorClass::Deferrable, _) => {
                            let note = format!("deferred by {name}: {}", e.code);
                            let after = e.retry_after.unwrap_or(Duration::from_secs(60));
                            return self.release(message, owner, &note, true, after).await;
                        }
                        (ErrorClass::Ambiguous, Ambiguity::MarkUnknown) => {
                            let mut finish = failed(&format!("{name}: {e}"), Some(name));
                            finish.status = Status::Unknown;
                            return self.finish(message, owner, finish).await;
                        }
                        (ErrorClass::Ambiguous, Ambiguity::Reconcile) => {
                            // Keep the lease: when it runs out the next delivery takes the
                            // message over and asks the provider before any resend.
                            return Outcome::Retry("ambiguous", Some(self.lease()));
                        }
                        _ => {}
                    }
                    let mut action = route.decide(name, &e);
                    if action == Action::Retry && message.attempts >= self.cfg.max_attempts {
                        let mut finish = failed(&format!("dead_lettered: {name}: {e}"), Some(name));
                        finish.note = Some(format!("attempts spent; last: {name}: {e}"));
                        return self.dead_letter(message, owner, finish).await;
                    }
                    if action == Action::SwitchChannel && !plan.iter().any(|s| s.leg.channel != step.leg.channel) {
                        action = Action::Fail;
                    }
                    match action {
                        Action::Retry => {
                            let note = format!("attempt {} failed: {name}: {}", message.attempts, e.code);
                            let after = backoff(message.attempts, &message.id);
                            return self.release(message, owner, &note, false, after).await;
                        }
                        Action::Fail => {
                            let reason = match e.class {
                                ErrorClass::Quota => format!("quota_exhausted: {name}: {e}"),
                                _ => format!("{name}: {e}"),
                            };
                            return self.finish(message, owner, failed(&reason, Some(name))).await;
                        }
                        Action::SwitchProvider => notes.push(format!("switching from {name}: {}", e.code)),
                        Action::SwitchChannel => {
                            notes.push(format!(
                                "leaving {} after {name}: {}",
                                step.leg.channel.as_str(),
                                e.code
                            ));
                            skip_channel = Some(step.leg.channel);
                            // The whole channel is given up on, not only this provider: a
                            // later attempt must not come back to its other providers.
                            for other in plan.iter().filter(|s| s.leg.channel == step.leg.channel) {
                                if !message.tried.contains(&other.id()) {
                                    message.tried.push(other.id());
                                }
                            }
                        }
                    }
                    if !message.tried.contains(&id) {
                        message.tried.push(id);
                    }
                    last_error = Some((name.to_string(), e));
                }
            }
        }
        if let Some(until) = open_until {
            // Every provider left is behind an open circuit: wait for its probe. What this
            // attempt gave up on stays given up on (no later route step records it).
            if message.tried.len() > tried_before {
                let via = message.via.clone().unwrap_or_else(|| first.clone());
                let now = (self.clock)();
                if let Err(e) = self
                    .store
                    .route_step(&message.pk, owner, &via, &message.tried, Vec::new(), now)
                    .await
                {
                    tracing::warn!(error = %e, id = %message.id, "could not record the providers given up on");
                }
            }
            let note = notes.join("; ");
            let after = Duration::from_millis((until - (self.clock)()).clamp(1000, 900_000) as u64);
            return self.release(message, owner, &note, true, after).await;
        }
        let reason = match last_error {
            Some((name, e)) if e.class == ErrorClass::Quota => format!("quota_exhausted: {name}: {e}"),
            Some((name, e)) => format!("{name}: {e}"),
            None => "no provider left".into(),
        };
        let mut finish = failed(&reason, None);
        finish.note = Some(format!("every provider tried: {}", message.tried.join(", ")));
        self.finish(message, owner, finish).await
    }

    /// A takeover of a send cut short: settles it by the in-flight provider's policy.
    /// `None` means sending again is safe.
    async fn settle_interrupted(
        &self,
        message: &Message,
        owner: &str,
        app: &AppConfig,
        step: &Step,
    ) -> Option<Outcome> {
        let name = step.provider.name();
        match step.provider.on_ambiguous() {
            Ambiguity::Resend => None,
            Ambiguity::MarkUnknown => {
                let finish = Finish {
                    status: Status::Unknown,
                    provider: Some(name.into()),
                    provider_message_id: None,
                    reason: Some("interrupted_send".into()),
                    note: Some("a previous attempt was cut short mid-send; not resent".into()),
                };
                Some(self.finish(message, owner, finish).await)
            }
            Ambiguity::Reconcile => match step.provider.reconcile(&step.message(message), app).await {
                Ok(Reconciled::Sent(sent)) => {
                    let note = format!("found at {name} after an interrupted send; not resent");
                    let finish = Finish::sent(sent, name, note);
                    Some(self.finish(message, owner, finish).await)
                }
                Ok(Reconciled::NotSent) => None,
                Err(e) => {
                    // Keep the lease: the next takeover asks again; nothing is resent blind.
                    tracing::warn!(id = %message.id, provider = name, error = %e, "reconcile failed");
                    Some(Outcome::Retry("reconcile", Some(self.lease())))
                }
            },
        }
    }

    /// The (channel, provider) steps to try, in order, minus those already given up on.
    fn plan(&self, message: &Message, app: &AppConfig, route: &Route) -> Vec<Step> {
        let available: Vec<Channel> = message.alternates.iter().map(|a| a.channel).collect();
        let mut steps = Vec::new();
        for channel in route.legs(message.channel, &available) {
            let leg = if channel == message.channel {
                Alternate {
                    channel,
                    to: message.to.clone(),
                    content: message.content.clone(),
                }
            } else {
                match message.alternates.iter().find(|a| a.channel == channel) {
                    Some(a) => a.clone(),
                    None => continue,
                }
            };
            let leg = Arc::new(leg);
            for provider in self
                .providers
                .candidates(channel, app, route.providers.get(&channel).map(Vec::as_slice))
            {
                let step = Step {
                    leg: leg.clone(),
                    provider,
                };
                if !message.tried.contains(&step.id()) {
                    steps.push(step);
                }
            }
        }
        steps
    }

    /// The longest one provider call may take, plus as long again: a provider may still
    /// act on a request shortly after we gave up on it, and a takeover's reconcile must
    /// come after that.
    fn send_budget_ms(&self) -> i64 {
        let call = self.cfg.provider_timeout.max(self.cfg.webhook_timeout).as_millis() as i64;
        2 * call + SEND_MARGIN_MS
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.cfg.lease_secs.max(1) as u64)
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
            .release(&message.pk, owner, note, refund, None, (self.clock)())
            .await
        {
            tracing::warn!(error = %e, id = %message.id, "release failed; lease will expire");
        }
        Outcome::Retry("retryable", Some(after))
    }

    /// Releases a message deferred by a rate bucket, keeping its reserved slot; not an
    /// attempt.
    async fn park(&self, message: &Message, owner: &str, note: &str, slot: Option<&str>, after: Duration) -> Outcome {
        if let Err(e) = self
            .store
            .release(&message.pk, owner, note, true, slot, (self.clock)())
            .await
        {
            tracing::warn!(error = %e, id = %message.id, "release failed; lease will expire");
        }
        Outcome::Retry("deferred", Some(after))
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
