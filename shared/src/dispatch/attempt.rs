//! The state machine of one delivery attempt. Pure: the shell feeds it each outcome
//! (a reconcile's answer, a charge, a circuit's state, a token, a send's result) with
//! the time, and it answers with the next thing to do ([`Next`]) until an [`End`].
//!
//! ```text
//! start ─ takeover? ─ Reconcile ─┐   (not when the cut-short attempt had to
//!   │                            ▼      charge first and never did: it never sent)
//!   └──────────────▶ attempts spent? ─ DeadLetter
//!                    metered, unpaid? ─ Charge
//!   ┌─────────────── for each step of the plan ───────────────────────────┐
//!   │ Circuit ─ open: note, next step                                      │
//!   │ Record (not the first choice) ─ Token (rate-shaped) ─ fence ─ Send   │
//!   │ sent: Finish │ deferrable: Release │ ambiguous: provider's policy    │
//!   │ else the route's action: retry (Release) │ fail (Finish) │ switch ───┘
//! plan exhausted: wait for an open circuit │ start the plan again after transient
//! failures (attempts left) │ Finish failed
//! ```
//!
//! A retryable failure never ends a message while attempts remain: a switch away from a
//! provider after a retryable (or ambiguous) error gives it up for this round only, and
//! when a round ends in such failures the next attempt starts again from the first
//! provider not given up on for good. Only permanent and quota errors, and rules that
//! say `fail`, remove a provider (`spent`) or end the message.

use std::time::Duration;

use super::plan::Step;
use crate::delivery::{Ambiguity, ErrorClass, Finish, ProviderError, Sent};
use crate::message::{Channel, Message, Status};
use crate::ports::{Charge, PortError, Release, RouteStep};
use crate::routing::{Action, Route};
use crate::shaping::{backoff, Circuit, Rate, Throttle};

/// Slack for clock steps between instances.
const SEND_MARGIN_MS: i64 = 200;

/// How early a message may use its reserved rate slot (clocks of instances differ).
const SLOT_EARLY_MS: i64 = 100;

/// How long a message of an app set to wait for its balance stays hidden between looks.
pub const QUOTA_WAIT: Duration = Duration::from_secs(60);

/// How soon a message is looked at again after a store or configuration outage.
pub const OUTAGE_RETRY: Duration = Duration::from_secs(5);

/// What the attempt may do, from configuration and the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_attempts: u32,
    /// The longest one provider call may take, plus as long again: a provider may still
    /// act on a request shortly after we gave up on it, and a takeover's reconcile must
    /// come after that. A send starts only if this fits before the lease ends.
    pub call_ms: i64,
    pub lease: Duration,
    /// Metered app: each message takes one unit of its balance before it is sent.
    pub metered: bool,
    /// A metered app whose balance is spent waits for a top-up instead of failing.
    pub wait_for_balance: bool,
}

impl Policy {
    fn send_budget_ms(&self) -> i64 {
        2 * self.call_ms + SEND_MARGIN_MS
    }
}

/// The next thing the shell does, then reports back.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Ask step's provider whether it holds the message of an interrupted send
    /// ([`Attempt::on_reconciled`]).
    Reconcile(usize),
    /// Take one unit of the app's balance ([`Attempt::on_charge`]).
    Charge,
    /// Read the circuit of step's account ([`Attempt::on_circuit`]).
    Circuit(usize),
    /// Record where the send goes and what was given up on ([`Attempt::on_recorded`]).
    Record(RouteStep),
    /// Take a token from step's rate bucket ([`Attempt::on_token`]).
    Token(usize, Rate),
    /// Send through step's provider ([`Attempt::on_sent`]).
    Send(usize),
    /// The attempt is over.
    End(End),
}

/// How an attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Record the final outcome; `refund` gives a paid message's unit back.
    Finish { finish: Finish, refund: bool },
    /// Record `failed` (refunding a paid message) and move the job to the dead-letter
    /// queue.
    DeadLetter { finish: Finish, refund: bool },
    /// Give the lease back, to be tried again (see [`Release`]).
    Release(Release),
    /// Keep the lease and look again after `after` (an ambiguous send waits for the lease
    /// to expire so a takeover reconciles; another worker holds the message).
    Hold { reason: &'static str, after: Duration },
}

/// What a provider said of an interrupted send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Found(Sent),
    NotFound,
    Unanswered,
}

/// A store or configuration outage before anything was sent: give the attempt back.
pub fn unavailable(what: &str) -> End {
    End::Release(Release {
        note: what.to_string(),
        refund: true,
        slot: None,
        tried: None,
        after: OUTAGE_RETRY,
    })
}

/// The message's app no longer exists.
pub fn unknown_app() -> End {
    End::Finish {
        finish: Finish::failed("unknown_app", None),
        refund: false,
    }
}

/// Whether a send's outcome is news for the account's circuit: `Some(true)` a failure on
/// the provider's side (retryable or ambiguous), `Some(false)` a success of the
/// half-open probe (which closes it); permanent errors say nothing about the provider.
pub fn breaker_report(result: &Result<Sent, ProviderError>, probe: bool) -> Option<bool> {
    match result {
        Ok(_) => probe.then_some(false),
        Err(e) => is_transient(e.class).then_some(true),
    }
}

/// Errors that say nothing lasting about the message or the account.
fn is_transient(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::Retryable | ErrorClass::Ambiguous)
}

fn push_once(list: &mut Vec<String>, id: String) {
    if !list.contains(&id) {
        list.push(id);
    }
}

/// One delivery attempt of one claimed message.
pub struct Attempt<'a, P> {
    message: Message,
    plan: Vec<Step<P>>,
    route: &'a Route,
    policy: Policy,
    /// The plan's first choice when the attempt began.
    first: Option<String>,
    /// The step under way.
    at: usize,
    /// The step of an interrupted send being reconciled.
    inflight: usize,
    /// The step under way won its circuit's half-open probe.
    probe: bool,
    notes: Vec<String>,
    /// The earliest end of the open circuits skipped.
    open_until: Option<i64>,
    skip_channel: Option<Channel>,
    last_error: Option<(&'static str, ProviderError)>,
    tried_before: usize,
    /// A release waiting for the record of what this attempt gave up on.
    pending: Option<End>,
}

impl<'a, P> Attempt<'a, P> {
    pub fn new(message: Message, plan: Vec<Step<P>>, route: &'a Route, policy: Policy) -> Self {
        Self {
            first: plan.first().map(Step::id),
            tried_before: message.tried.len(),
            message,
            plan,
            route,
            policy,
            at: 0,
            inflight: 0,
            probe: false,
            notes: Vec::new(),
            open_until: None,
            skip_channel: None,
            last_error: None,
            pending: None,
        }
    }

    pub fn message(&self) -> &Message {
        &self.message
    }

    pub fn step(&self, i: usize) -> &Step<P> {
        &self.plan[i]
    }

    /// Whether the step under way is its circuit's half-open probe.
    pub fn probe(&self) -> bool {
        self.probe
    }

    /// The first move. `takeover`: a previous holder's lease expired mid-send, so the
    /// provider it was sending through may hold the message.
    pub fn start(&mut self, takeover: bool, now: i64) -> Next {
        let Some(first) = self.first.clone() else {
            return self.plan_empty();
        };
        // An interrupted attempt that had to charge first and left the message unpaid
        // never reached a provider: the charge is written atomically with `charged`.
        let never_sent = self.message.charge_first == Some(true) && self.message.charged != Some(true);
        if takeover && !never_sent {
            // The send cut short went to `via`, else to the plan's first choice (a send
            // elsewhere records `via` first).
            let inflight = self.message.via.clone().unwrap_or(first);
            if let Some(i) = self.plan.iter().position(|s| s.id() == inflight) {
                match self.plan[i].ambiguity {
                    Ambiguity::Resend => {}
                    Ambiguity::Reconcile => {
                        self.inflight = i;
                        return Next::Reconcile(i);
                    }
                    Ambiguity::MarkUnknown => {
                        let mut finish = Finish::failed("interrupted_send", Some(self.plan[i].provider));
                        finish.status = Status::Unknown;
                        finish.note = Some("a previous attempt was cut short mid-send; not resent".into());
                        return self.finish(finish);
                    }
                }
            }
        }
        self.settled(now)
    }

    /// Nothing left to try when the attempt began.
    fn plan_empty(&mut self) -> Next {
        if self.message.tried.iter().any(|t| !self.message.spent.contains(t)) {
            // Only providers given up on for now: a new round, at once (nothing was sent,
            // so the attempt is given back).
            return Next::End(End::Release(Release {
                note: "every provider given up on for now; starting the plan again".into(),
                refund: true,
                slot: None,
                tried: Some(self.message.spent.clone()),
                after: Duration::from_secs(1),
            }));
        }
        let why = match self.message.tried.last() {
            Some(last) => format!("every route tried (last: {last})"),
            None => format!("no provider for {}", self.message.channel.as_str()),
        };
        self.finish(Finish::failed(&why, None))
    }

    /// After a takeover's reconcile.
    pub fn on_reconciled(&mut self, settled: Settled, now: i64) -> Next {
        let name = self.plan[self.inflight].provider;
        match settled {
            Settled::Found(sent) => {
                let note = format!("found at {name} after an interrupted send; not resent");
                self.finish(Finish::sent(sent, name, note))
            }
            Settled::NotFound => self.settled(now),
            // Keep the lease: the next takeover asks again; nothing is resent blind.
            Settled::Unanswered => Next::End(End::Hold {
                reason: "reconcile",
                after: self.policy.lease,
            }),
        }
    }

    /// The interrupted send (if any) is settled: check the attempts and the balance.
    fn settled(&mut self, now: i64) -> Next {
        if self.message.attempts > self.policy.max_attempts {
            return self.dead_letter(Finish::failed("dead_lettered", None));
        }
        if self.policy.metered && self.message.charged != Some(true) {
            return Next::Charge;
        }
        self.next_step(now)
    }

    pub fn on_charge(&mut self, charge: Result<Charge, PortError>, now: i64) -> Next {
        match charge {
            Ok(Charge::Charged) => {
                self.message.charged = Some(true);
                self.next_step(now)
            }
            Ok(Charge::Exhausted) if self.policy.wait_for_balance => Next::End(End::Release(Release {
                note: "waiting for balance".into(),
                refund: true,
                slot: None,
                tried: None,
                after: QUOTA_WAIT,
            })),
            Ok(Charge::Exhausted) => {
                let mut finish = Finish::failed("quota_exhausted", None);
                finish.note = Some(format!("app {} has no balance left", self.message.app));
                self.finish(finish)
            }
            // Another worker took the message over: it carries on.
            Ok(Charge::NotHeld) => Next::End(End::Hold {
                reason: "leased",
                after: OUTAGE_RETRY,
            }),
            Err(_) => Next::End(unavailable("balance unavailable")),
        }
    }

    /// The next step not left behind with its channel, from `self.at` on.
    fn next_step(&mut self, now: i64) -> Next {
        while self.at < self.plan.len() {
            if self.skip_channel != Some(self.plan[self.at].leg.channel) {
                self.probe = false;
                return Next::Circuit(self.at);
            }
            self.at += 1;
        }
        self.exhausted(now)
    }

    pub fn on_circuit(&mut self, circuit: Result<Circuit, PortError>, now: i64) -> Next {
        match circuit {
            // Breaker state is advisory: without it, send.
            Ok(Circuit::Closed) | Err(_) => {}
            Ok(Circuit::Probe) => self.probe = true,
            Ok(Circuit::Open { until_ms }) => {
                self.notes
                    .push(format!("skipped {}: circuit open", self.plan[self.at].provider));
                self.open_until = Some(self.open_until.map_or(until_ms, |u| u.min(until_ms)));
                self.at += 1;
                return self.next_step(now);
            }
        }
        let id = self.plan[self.at].id();
        if Some(&id) != self.first.as_ref() || !self.notes.is_empty() || !self.message.tried.is_empty() {
            // Recorded before the call, so a takeover after a crash knows where the
            // message may be.
            return Next::Record(RouteStep {
                via: id,
                tried: self.message.tried.clone(),
                spent: self.message.spent.clone(),
                notes: std::mem::take(&mut self.notes),
            });
        }
        self.rate_gate(now)
    }

    pub fn on_recorded(&mut self, recorded: Result<(), PortError>, now: i64) -> Next {
        if let Some(end) = self.pending.take() {
            // The record of what was given up on before a wait is best effort.
            return Next::End(end);
        }
        if recorded.is_err() {
            return Next::End(unavailable("route step not recorded"));
        }
        self.message.via = Some(self.plan[self.at].id());
        self.rate_gate(now)
    }

    /// A rate-shaped account: send in the slot reserved earlier, or take a token.
    fn rate_gate(&mut self, now: i64) -> Next {
        let step = &self.plan[self.at];
        let Some(rate) = step.rate else {
            return self.fence(now);
        };
        let held = self
            .message
            .rate_slot
            .as_deref()
            .and_then(|slot| slot.rsplit_once('@'))
            .filter(|(account, _)| *account == step.account)
            .and_then(|(_, at)| at.parse::<i64>().ok());
        match held {
            // Its reserved slot is due: the token was taken when it was reserved.
            Some(at) if at <= now + SLOT_EARLY_MS => self.fence(now),
            // Back before its slot (delays are capped): park it again, same slot.
            Some(at) => self.park(at, now),
            None => Next::Token(self.at, rate),
        }
    }

    /// `asked_at`: the instant the bucket was asked at (its answer is relative to it).
    pub fn on_token(&mut self, token: Result<Throttle, PortError>, asked_at: i64, now: i64) -> Next {
        match token {
            // A bucket that cannot be read does not stop a send.
            Ok(Throttle::Go) | Err(_) => self.fence(now),
            Ok(Throttle::Wait(after)) => {
                let at = asked_at.saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
                self.park(at, now)
            }
        }
    }

    /// Parks the message until its reserved slot: not an attempt.
    fn park(&self, at: i64, now: i64) -> Next {
        let step = &self.plan[self.at];
        Next::End(End::Release(Release {
            note: format!("deferred: {} rate limit", step.provider),
            refund: true,
            slot: Some(format!("{}@{at}", step.account)),
            tried: None,
            after: Duration::from_millis((at - now).max(1) as u64),
        }))
    }

    /// Starts a send only if it ends (answer or timeout) before the lease does, so a
    /// takeover can never overlap a send of ours still in flight.
    fn fence(&self, now: i64) -> Next {
        let must_end_by = now.saturating_add(self.policy.send_budget_ms());
        if self.message.lease_until.is_some_and(|until| must_end_by >= until) {
            return Next::End(End::Release(Release {
                note: "lease ran short before the send".into(),
                refund: true,
                slot: None,
                tried: None,
                after: Duration::from_secs(1),
            }));
        }
        Next::Send(self.at)
    }

    pub fn on_sent(&mut self, result: Result<Sent, ProviderError>, now: i64) -> Next {
        let step = &self.plan[self.at];
        let name = step.provider;
        let e = match result {
            Ok(sent) => {
                let note = match step.leg.channel == self.message.channel {
                    true => format!("sent via {name}"),
                    false => format!("sent via {name} ({} fallback)", step.leg.channel.as_str()),
                };
                return self.finish(Finish::sent(sent, name, note));
            }
            Err(e) => e,
        };
        match (e.class, step.ambiguity) {
            (ErrorClass::Deferrable, _) => {
                return Next::End(End::Release(Release {
                    note: format!("deferred by {name}: {}", e.code),
                    refund: true,
                    slot: None,
                    tried: None,
                    after: e.retry_after.unwrap_or(Duration::from_secs(60)),
                }))
            }
            (ErrorClass::Ambiguous, Ambiguity::MarkUnknown) => {
                let mut finish = Finish::failed(&format!("{name}: {e}"), Some(name));
                finish.status = Status::Unknown;
                return self.finish(finish);
            }
            // Keep the lease: when it runs out the next delivery takes the message over
            // and asks the provider before any resend.
            (ErrorClass::Ambiguous, Ambiguity::Reconcile) => {
                return Next::End(End::Hold {
                    reason: "ambiguous",
                    after: self.policy.lease,
                })
            }
            _ => {}
        }
        let channel = step.leg.channel;
        let mut action = self.route.decide(name, &e);
        if action == Action::SwitchChannel && !self.plan.iter().any(|s| s.leg.channel != channel) {
            action = Action::Fail;
        }
        let transient = is_transient(e.class);
        match action {
            Action::Retry => return self.retry_later(name, &e),
            Action::Fail => {
                let finish = Finish::failed(&failure_reason(name, &e), Some(name));
                return self.finish(finish);
            }
            Action::SwitchProvider => self.notes.push(format!("switching from {name}: {}", e.code)),
            Action::SwitchChannel => {
                self.notes
                    .push(format!("leaving {} after {name}: {}", channel.as_str(), e.code));
                self.skip_channel = Some(channel);
                // The whole channel is given up on, not only this provider: a later
                // attempt must not come back to its other providers.
                let ids: Vec<String> = self
                    .plan
                    .iter()
                    .filter(|s| s.leg.channel == channel)
                    .map(Step::id)
                    .collect();
                for id in ids {
                    self.give_up(id, transient);
                }
            }
        }
        self.give_up(self.plan[self.at].id(), transient);
        self.last_error = Some((name, e));
        self.at += 1;
        self.next_step(now)
    }

    /// Leaves a step for the rest of the plan; for good unless the error was transient.
    fn give_up(&mut self, id: String, transient: bool) {
        if !transient {
            push_once(&mut self.message.spent, id.clone());
        }
        push_once(&mut self.message.tried, id);
    }

    /// Tries again after backoff, or dead-letters when the attempts are spent.
    fn retry_later(&self, name: &str, e: &ProviderError) -> Next {
        let attempts = self.message.attempts;
        if attempts >= self.policy.max_attempts {
            let mut finish = Finish::failed(&format!("dead_lettered: {name}: {e}"), Some(name));
            finish.note = Some(format!("attempts spent; last: {name}: {e}"));
            return self.dead_letter(finish);
        }
        Next::End(End::Release(Release {
            note: format!("attempt {attempts} failed: {name}: {}", e.code),
            refund: false,
            slot: None,
            tried: None,
            after: backoff(attempts, &self.message.id),
        }))
    }

    /// Every step of the plan was tried or skipped.
    fn exhausted(&mut self, now: i64) -> Next {
        if let Some(until) = self.open_until {
            // Every provider left is behind an open circuit: wait for its probe.
            let wait = End::Release(Release {
                note: self.notes.join("; "),
                refund: true,
                slot: None,
                tried: None,
                after: Duration::from_millis((until - now).clamp(1000, 900_000) as u64),
            });
            if self.message.tried.len() <= self.tried_before {
                return Next::End(wait);
            }
            // What this attempt gave up on stays given up on.
            self.pending = Some(wait);
            return Next::Record(RouteStep {
                via: self
                    .message
                    .via
                    .clone()
                    .or_else(|| self.first.clone())
                    .unwrap_or_default(),
                tried: self.message.tried.clone(),
                spent: self.message.spent.clone(),
                notes: Vec::new(),
            });
        }
        let for_now = self.message.tried.iter().any(|t| !self.message.spent.contains(t));
        match self.last_error.take() {
            Some((name, e)) if for_now => match self.retry_later(name, &e) {
                // A new round of the plan, leaving out only what is given up on for good.
                Next::End(End::Release(mut release)) => {
                    self.notes.push(release.note);
                    release.note = self.notes.join("; ");
                    release.tried = Some(self.message.spent.clone());
                    Next::End(End::Release(release))
                }
                other => other,
            },
            last => {
                let reason = match last {
                    Some((name, e)) => failure_reason(name, &e),
                    None => "no provider left".into(),
                };
                let mut finish = Finish::failed(&reason, None);
                finish.note = Some(format!("every provider tried: {}", self.message.tried.join(", ")));
                self.finish(finish)
            }
        }
    }

    fn dead_letter(&self, finish: Finish) -> Next {
        let refund = self.message.charged == Some(true);
        Next::End(End::DeadLetter { finish, refund })
    }

    /// Ends with `finish`; a paid message that fails without being sent gets its unit back.
    fn finish(&self, finish: Finish) -> Next {
        let refund = finish.status == Status::Failed && self.message.charged == Some(true);
        Next::End(End::Finish { finish, refund })
    }
}

fn failure_reason(name: &str, e: &ProviderError) -> String {
    match e.class {
        ErrorClass::Quota => format!("quota_exhausted: {name}: {e}"),
        _ => format!("{name}: {e}"),
    }
}

#[cfg(test)]
#[path = "attempt_tests.rs"]
mod tests;
