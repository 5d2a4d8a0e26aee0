//! Table-driven tests of the attempt state machine: no AWS, no providers. A small world
//! answers each move the machine asks for from a script; every row checks the end and
//! what the message then records as given up on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::dispatch::plan::Step;
use crate::message::{Alternate, Channel, Content, Message, Status};
use crate::ports::{Charge, PortError};
use crate::routing::{Route, Routes};
use crate::shaping::{Circuit, Rate, Throttle};

const NOW: i64 = 1_000_000;

fn message() -> Message {
    serde_json::from_value(serde_json::json!({
        "pk": "app_s_x", "id": "01ID", "app": "app", "channel": "sms", "to": "+8613800138000",
        "content": {"text": "hi"}, "status": "sending", "status_rank": 1, "attempts": 1,
        "created_at": NOW, "updated_at": NOW, "expires_at": NOW, "body_hash": "h", "signature": "s",
        "lease_until": NOW + 60_000, "lease_owner": "me",
        "alternates": [{"channel": "email", "to": "a@example.com", "content": {"text": "hi"}}]
    }))
    .unwrap()
}

fn step(channel: Channel, provider: &'static str, ambiguity: Ambiguity) -> Step<()> {
    Step {
        leg: Arc::new(Alternate {
            channel,
            to: "x".into(),
            content: Content::default(),
        }),
        provider,
        account: format!("{provider}.acc"),
        rate: None,
        ambiguity,
        handle: (),
    }
}

/// sms:aliyun, sms:tencent, email:ses; or only the first `n`.
fn plan(n: usize) -> Vec<Step<()>> {
    vec![
        step(Channel::Sms, "aliyun", Ambiguity::Reconcile),
        step(Channel::Sms, "tencent", Ambiguity::MarkUnknown),
        step(Channel::Email, "ses", Ambiguity::MarkUnknown),
    ]
    .into_iter()
    .take(n)
    .collect()
}

fn route(rules: &str) -> Route {
    let json = format!(r#"[{{"app":"app","key":"*","rules":[{rules}]}}]"#);
    (*Routes::parse(&json).unwrap().find("app", None).unwrap()).clone()
}

fn policy() -> Policy {
    Policy {
        max_attempts: 5,
        call_ms: 5_000,
        lease: Duration::from_secs(60),
        metered: false,
        wait_for_balance: false,
    }
}

fn err(class: ErrorClass) -> ProviderError {
    ProviderError::new(class, "E1", "boom")
}

fn ok() -> Result<Sent, ProviderError> {
    Ok(Sent {
        provider_message_id: Some("pid".into()),
        delivered: false,
    })
}

/// Scripted answers to the machine's moves.
struct World {
    circuits: HashMap<usize, Circuit>,
    sends: VecDeque<Result<Sent, ProviderError>>,
    token: Result<Throttle, PortError>,
    record: Result<(), PortError>,
    charge: Result<Charge, PortError>,
    settled: Settled,
    trace: Vec<String>,
}

impl Default for World {
    fn default() -> Self {
        Self {
            circuits: HashMap::new(),
            sends: VecDeque::new(),
            token: Ok(Throttle::Go),
            record: Ok(()),
            charge: Ok(Charge::Charged),
            settled: Settled::NotFound,
            trace: Vec::new(),
        }
    }
}

fn port_err() -> PortError {
    PortError("down".into())
}

/// Runs the machine to its end against the world.
fn drive(a: &mut Attempt<'_, ()>, takeover: bool, w: &mut World) -> End {
    let mut next = a.start(takeover, NOW);
    loop {
        next = match next {
            Next::Reconcile(i) => {
                w.trace.push(format!("reconcile {}", a.step(i).provider));
                a.on_reconciled(w.settled.clone(), NOW)
            }
            Next::Charge => {
                w.trace.push("charge".into());
                a.on_charge(w.charge.clone(), NOW)
            }
            Next::Circuit(i) => {
                let c = w.circuits.get(&i).copied().unwrap_or(Circuit::Closed);
                a.on_circuit(Ok(c), NOW)
            }
            Next::Record(r) => {
                w.trace.push(format!("record {} {:?}", r.via, r.notes));
                a.on_recorded(w.record.clone(), NOW)
            }
            Next::Token(i, _) => {
                w.trace.push(format!("token {}", a.step(i).provider));
                a.on_token(w.token.clone(), NOW, NOW + 7)
            }
            Next::Send(i) => {
                w.trace.push(format!("send {}", a.step(i).provider));
                a.on_sent(w.sends.pop_front().unwrap_or_else(ok), NOW)
            }
            Next::End(end) => return end,
        }
    }
}

/// A short, comparable account of an end.
fn summary(end: &End) -> String {
    match end {
        End::Finish { finish, refund } => format!(
            "{} {}{}",
            finish.status.as_str(),
            finish.provider.as_deref().unwrap_or("-"),
            if *refund { " refund" } else { "" }
        ),
        End::DeadLetter { .. } => "dead-letter".into(),
        End::Release(r) => format!(
            "release{}{}{}",
            if r.refund { " refund" } else { "" },
            r.slot.as_ref().map(|s| format!(" slot={s}")).unwrap_or_default(),
            r.tried.as_ref().map(|t| format!(" tried={t:?}")).unwrap_or_default(),
        ),
        End::Hold { reason, .. } => format!("hold {reason}"),
    }
}

fn run(m: Message, steps: usize, rules: &str, p: Policy, takeover: bool, w: &mut World) -> (End, Message) {
    let r = route(rules);
    let mut a = Attempt::new(m, plan(steps), &r, p);
    let end = drive(&mut a, takeover, w);
    (end, a.message().clone())
}

#[test]
fn every_error_class_under_every_rule_action_at_each_plan_position() {
    use ErrorClass::*;
    // (class, rule action or default, plan length, end, tried, spent). The first send
    // (sms:aliyun) fails; any later send succeeds.
    type Row<'a> = (
        ErrorClass,
        Option<&'a str>,
        usize,
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
    );
    let rows: &[Row] = &[
        // A next provider and a next channel exist.
        (Retryable, None, 3, "release", &[], &[]),
        (Retryable, Some("retry"), 3, "release", &[], &[]),
        (
            Retryable,
            Some("switch_provider"),
            3,
            "sent tencent",
            &["sms:aliyun"],
            &[],
        ),
        (
            Retryable,
            Some("switch_channel"),
            3,
            "sent ses",
            &["sms:aliyun", "sms:tencent"],
            &[],
        ),
        (Retryable, Some("fail"), 3, "failed aliyun", &[], &[]),
        (Permanent, None, 3, "failed aliyun", &[], &[]),
        (Permanent, Some("retry"), 3, "release", &[], &[]),
        (
            Permanent,
            Some("switch_provider"),
            3,
            "sent tencent",
            &["sms:aliyun"],
            &["sms:aliyun"],
        ),
        (
            Permanent,
            Some("switch_channel"),
            3,
            "sent ses",
            &["sms:aliyun", "sms:tencent"],
            &["sms:aliyun", "sms:tencent"],
        ),
        (Quota, None, 3, "sent tencent", &["sms:aliyun"], &["sms:aliyun"]),
        (Quota, Some("fail"), 3, "failed aliyun", &[], &[]),
        (Deferrable, None, 3, "release refund", &[], &[]),
        (Deferrable, Some("fail"), 3, "release refund", &[], &[]),
        // The failing provider is the plan's last.
        (Retryable, None, 1, "release", &[], &[]),
        // Transient failures that exhaust the plan start it again: never terminal.
        (
            Retryable,
            Some("switch_provider"),
            1,
            "release tried=[]",
            &["sms:aliyun"],
            &[],
        ),
        (Retryable, Some("switch_channel"), 1, "failed aliyun", &[], &[]),
        (
            Permanent,
            Some("switch_provider"),
            1,
            "failed -",
            &["sms:aliyun"],
            &["sms:aliyun"],
        ),
        (Quota, None, 1, "failed -", &["sms:aliyun"], &["sms:aliyun"]),
        (Deferrable, None, 1, "release refund", &[], &[]),
    ];
    for (class, action, steps, want, tried, spent) in rows {
        let rules = action.map(|a| format!(r#"{{"action":"{a}"}}"#)).unwrap_or_default();
        let mut w = World::default();
        w.sends.push_back(Err(err(*class)));
        let (end, m) = run(message(), *steps, &rules, policy(), false, &mut w);
        let row = format!("{class:?} {action:?} plan of {steps}");
        assert_eq!(summary(&end), *want, "{row}: {:?}", w.trace);
        assert_eq!(m.tried, *tried, "{row}: tried");
        assert_eq!(m.spent, *spent, "{row}: spent");
    }
}

#[test]
fn ambiguous_sends_follow_the_provider_policy() {
    // Aliyun reconciles (keep the lease), Tencent marks unknown, a resend policy retries.
    for (ambiguity, want) in [
        (Ambiguity::Reconcile, "hold ambiguous"),
        (Ambiguity::MarkUnknown, "unknown aliyun"),
        (Ambiguity::Resend, "release"),
    ] {
        let r = route("");
        let mut steps = plan(1);
        steps[0].ambiguity = ambiguity;
        let mut a = Attempt::new(message(), steps, &r, policy());
        let mut w = World::default();
        w.sends.push_back(Err(err(ErrorClass::Ambiguous)));
        assert_eq!(summary(&drive(&mut a, false, &mut w)), want, "{ambiguity:?}");
    }
}

#[test]
fn a_round_of_transient_failures_starts_again_without_what_is_given_up_for_good() {
    // Aliyun refuses for good, Tencent fails for now, SES (fallback) fails for now.
    let rules = r#"{"when":{"class":"permanent"},"action":"switch_provider"},
                   {"when":{"class":"retryable"},"action":"switch_provider"}"#;
    let mut w = World::default();
    w.sends.extend([
        Err(err(ErrorClass::Permanent)),
        Err(err(ErrorClass::Retryable)),
        Err(err(ErrorClass::Retryable)),
    ]);
    let (end, m) = run(message(), 3, rules, policy(), false, &mut w);
    assert_eq!(summary(&end), r#"release tried=["sms:aliyun"]"#);
    let End::Release(release) = &end else { unreachable!() };
    // Each switch is in the history, recorded with the next step or with the release.
    assert_eq!(
        w.trace[1..4],
        [
            r#"record sms:tencent ["switching from aliyun: E1"]"#.to_string(),
            "send tencent".into(),
            r#"record email:ses ["switching from tencent: E1"]"#.into(),
        ]
    );
    assert_eq!(release.note, "switching from ses: E1; attempt 1 failed: ses: E1");
    assert!(!release.refund, "the round counts as an attempt");
    assert_eq!(m.tried, ["sms:aliyun", "sms:tencent", "email:ses"]);

    // The same round with its attempts spent dead-letters instead.
    let mut w = World::default();
    w.sends
        .extend([Err(err(ErrorClass::Retryable)), Err(err(ErrorClass::Retryable))]);
    let mut spent = message();
    spent.attempts = 5;
    let (end, _) = run(spent, 2, rules, policy(), false, &mut w);
    assert_eq!(summary(&end), "dead-letter");
}

#[test]
fn a_plan_left_empty_by_transient_give_ups_starts_again_and_one_left_empty_for_good_fails() {
    let mut m = message();
    m.tried = vec!["sms:aliyun".into()];
    m.spent = vec![];
    let r = route("");
    let mut a = Attempt::new(m.clone(), Vec::new(), &r, policy());
    assert_eq!(
        summary(&drive(&mut a, false, &mut World::default())),
        "release refund tried=[]"
    );

    m.spent = m.tried.clone();
    let mut a = Attempt::new(m, Vec::new(), &r, policy());
    assert_eq!(summary(&drive(&mut a, false, &mut World::default())), "failed -");
}

#[test]
fn attempts_spent_dead_letter_before_and_after_a_send() {
    let mut m = message();
    m.attempts = 6;
    let mut w = World::default();
    let (end, _) = run(m, 3, "", policy(), false, &mut w);
    assert_eq!(summary(&end), "dead-letter");
    assert!(w.trace.is_empty(), "nothing sent: {:?}", w.trace);

    let mut m = message();
    m.attempts = 5;
    let mut w = World::default();
    w.sends.push_back(Err(err(ErrorClass::Retryable)));
    let (end, _) = run(m, 3, "", policy(), false, &mut w);
    assert_eq!(summary(&end), "dead-letter");
    assert_eq!(w.trace, ["send aliyun"]);
}

#[test]
fn the_lease_fence_refuses_a_send_that_could_outlive_the_lease() {
    // 2 × 5 s + 0.2 s must end before the lease does.
    for (lease_left, want) in [(10_199, "release refund"), (10_201, "sent aliyun")] {
        let mut m = message();
        m.lease_until = Some(NOW + lease_left);
        let mut w = World::default();
        let (end, _) = run(m, 1, "", policy(), false, &mut w);
        assert_eq!(summary(&end), want, "lease left {lease_left} ms");
    }
}

#[test]
fn an_open_circuit_skips_to_the_next_provider_or_waits_for_its_probe() {
    // With a next provider: skipped, noted, sent on Tencent.
    let mut w = World::default();
    w.circuits.insert(0, Circuit::Open { until_ms: NOW + 5_000 });
    let (end, _) = run(message(), 2, "", policy(), false, &mut w);
    assert_eq!(summary(&end), "sent tencent");
    assert_eq!(
        w.trace,
        [r#"record sms:tencent ["skipped aliyun: circuit open"]"#, "send tencent"]
    );

    // Without: wait until it may be probed (not an attempt).
    let mut w = World::default();
    w.circuits.insert(0, Circuit::Open { until_ms: NOW + 5_000 });
    let (end, _) = run(message(), 1, "", policy(), false, &mut w);
    assert_eq!(summary(&end), "release refund");
    let End::Release(r) = end else { unreachable!() };
    assert_eq!(r.after, Duration::from_secs(5));

    // A provider given up on before the wait is recorded as given up on.
    let mut w = World::default();
    w.sends.push_back(Err(err(ErrorClass::Quota)));
    w.circuits.insert(1, Circuit::Open { until_ms: NOW + 2_000 });
    let (end, m) = run(message(), 2, "", policy(), false, &mut w);
    assert_eq!(summary(&end), "release refund");
    assert_eq!(w.trace, ["send aliyun", "record sms:aliyun []"]);
    assert_eq!(m.tried, ["sms:aliyun"]);
}

#[test]
fn the_half_open_probe_is_reported_and_failures_only_on_the_providers_side() {
    assert_eq!(breaker_report(&ok(), true), Some(false));
    assert_eq!(breaker_report(&ok(), false), None);
    for (class, report) in [
        (ErrorClass::Retryable, Some(true)),
        (ErrorClass::Ambiguous, Some(true)),
        (ErrorClass::Permanent, None),
        (ErrorClass::Quota, None),
        (ErrorClass::Deferrable, None),
    ] {
        assert_eq!(breaker_report(&Err(err(class)), false), report, "{class:?}");
    }
    let r = route("");
    let mut a = Attempt::new(message(), plan(1), &r, policy());
    assert_eq!(a.start(false, NOW), Next::Circuit(0));
    assert_eq!(a.on_circuit(Ok(Circuit::Probe), NOW), Next::Send(0));
    assert!(a.probe());
}

#[test]
fn a_rate_slot_is_reserved_then_used_without_taking_again() {
    let shaped = |m: Message, w: &mut World| {
        let r = route("");
        let mut steps = plan(1);
        steps[0].rate = Some(Rate::per_second(5));
        let mut a = Attempt::new(m, steps, &r, policy());
        let end = drive(&mut a, false, w);
        summary(&end)
    };
    // No slot: take a token; told to wait, the slot is reserved.
    let mut w = World {
        token: Ok(Throttle::Wait(Duration::from_millis(3_000))),
        ..World::default()
    };
    assert_eq!(
        shaped(message(), &mut w),
        format!("release refund slot=aliyun.acc@{}", NOW + 3_000)
    );
    assert_eq!(w.trace, ["token aliyun"]);

    // Its slot due: sent without a token.
    let mut m = message();
    m.rate_slot = Some(format!("aliyun.acc@{}", NOW + 50));
    let mut w = World::default();
    assert_eq!(shaped(m, &mut w), "sent aliyun");
    assert_eq!(w.trace, ["send aliyun"]);

    // Back before its slot: parked again in the same slot, no token.
    let mut m = message();
    m.rate_slot = Some(format!("aliyun.acc@{}", NOW + 2_000));
    let mut w = World::default();
    assert_eq!(
        shaped(m, &mut w),
        format!("release refund slot=aliyun.acc@{}", NOW + 2_000)
    );
    assert!(w.trace.is_empty());

    // A slot of another account is not this one's: take a token.
    let mut m = message();
    m.rate_slot = Some(format!("tencent.acc@{}", NOW));
    let mut w = World::default();
    assert_eq!(shaped(m, &mut w), "sent aliyun");
    assert_eq!(w.trace, ["token aliyun", "send aliyun"]);

    // A bucket that cannot be read does not stop the send.
    let mut w = World {
        token: Err(port_err()),
        ..World::default()
    };
    assert_eq!(shaped(message(), &mut w), "sent aliyun");
}

#[test]
fn a_takeover_settles_the_interrupted_send_by_the_in_flight_providers_policy() {
    // (via, reconcile answer, end, trace)
    let rows: &[(Option<&str>, Settled, &str, &[&str])] = &[
        // Without `via` the first choice was in flight (Aliyun: reconcile).
        (
            None,
            Settled::NotFound,
            "sent aliyun",
            &["reconcile aliyun", "send aliyun"],
        ),
        (
            None,
            Settled::Found(Sent {
                provider_message_id: Some("biz".into()),
                delivered: false,
            }),
            "sent aliyun",
            &["reconcile aliyun"],
        ),
        (None, Settled::Unanswered, "hold reconcile", &["reconcile aliyun"]),
        // With `via` Tencent (mark unknown): never resent.
        (Some("sms:tencent"), Settled::NotFound, "unknown tencent", &[]),
        // A `via` no longer in the plan: nothing to settle.
        (Some("sms:twilio"), Settled::NotFound, "sent aliyun", &["send aliyun"]),
    ];
    for (via, settled, want, trace) in rows {
        let mut m = message();
        m.via = via.map(String::from);
        let mut w = World {
            settled: settled.clone(),
            ..World::default()
        };
        let (end, _) = run(m, 2, "", policy(), true, &mut w);
        assert_eq!(summary(&end), *want, "via {via:?}, {settled:?}");
        assert_eq!(w.trace, *trace, "via {via:?}, {settled:?}");
    }
    // A resend policy sends again at once.
    let r = route("");
    let mut steps = plan(1);
    steps[0].ambiguity = Ambiguity::Resend;
    let mut a = Attempt::new(message(), steps, &r, policy());
    let mut w = World::default();
    assert_eq!(summary(&drive(&mut a, true, &mut w)), "sent aliyun");
    assert_eq!(w.trace, ["send aliyun"]);
}

#[test]
fn a_takeover_of_an_attempt_that_never_got_paid_sends_even_where_it_would_not_resend() {
    // (charge_first of the cut-short attempt, charged, end, trace): Tencent marks an
    // interrupted send unknown, unless that attempt had to charge first and never did.
    let metered = Policy {
        metered: true,
        ..policy()
    };
    type Row<'a> = (Option<bool>, Option<bool>, &'a str, &'a [&'a str]);
    let rows: &[Row] = &[
        (Some(true), None, "sent tencent", &["charge", "send tencent"]),
        (Some(true), Some(true), "unknown tencent", &[]),
        (None, None, "unknown tencent", &[]),
        (None, Some(true), "unknown tencent", &[]),
    ];
    for (charge_first, charged, want, trace) in rows {
        let mut m = message();
        m.charge_first = *charge_first;
        m.charged = *charged;
        let r = route("");
        let mut a = Attempt::new(
            m,
            vec![step(Channel::Sms, "tencent", Ambiguity::MarkUnknown)],
            &r,
            metered,
        );
        let mut w = World::default();
        let end = drive(&mut a, true, &mut w);
        assert_eq!(summary(&end), *want, "{charge_first:?} {charged:?}");
        assert_eq!(w.trace, *trace, "{charge_first:?} {charged:?}");
    }
}

#[test]
fn a_metered_message_is_charged_once_and_refunded_if_it_fails() {
    let metered = Policy {
        metered: true,
        ..policy()
    };
    let waiting = Policy {
        wait_for_balance: true,
        ..metered
    };
    let rows: &[(Policy, Result<Charge, PortError>, &str)] = &[
        (metered, Ok(Charge::Charged), "sent aliyun"),
        (metered, Ok(Charge::Exhausted), "failed -"),
        (waiting, Ok(Charge::Exhausted), "release refund"),
        (metered, Ok(Charge::NotHeld), "hold leased"),
        (metered, Err(port_err()), "release refund"),
    ];
    for (p, charge, want) in rows {
        let mut w = World {
            charge: charge.clone(),
            ..World::default()
        };
        let (end, _) = run(message(), 1, "", *p, false, &mut w);
        assert_eq!(summary(&end), *want, "{charge:?}");
    }
    // Charged, then refused for good: the unit goes back with the failure.
    let mut w = World::default();
    w.sends.push_back(Err(err(ErrorClass::Permanent)));
    let (end, m) = run(message(), 1, "", metered, false, &mut w);
    assert_eq!(summary(&end), "failed aliyun refund");
    assert_eq!(m.charged, Some(true));
    // Already paid: not charged again.
    let mut paid = message();
    paid.charged = Some(true);
    let mut w = World::default();
    let (end, _) = run(paid, 1, "", metered, false, &mut w);
    assert_eq!(summary(&end), "sent aliyun");
    assert_eq!(w.trace, ["send aliyun"]);
}

#[test]
fn a_route_step_is_recorded_before_any_send_but_the_first_choice_and_its_failure_releases() {
    // First choice, nothing given up on: no record (one write saved per message).
    let mut w = World::default();
    run(message(), 2, "", policy(), false, &mut w);
    assert_eq!(w.trace, ["send aliyun"]);

    // A switch is recorded before the second send; if that record fails, nothing is sent.
    let mut w = World {
        record: Err(port_err()),
        ..World::default()
    };
    w.sends.push_back(Err(err(ErrorClass::Quota)));
    let (end, _) = run(message(), 2, "", policy(), false, &mut w);
    assert_eq!(summary(&end), "release refund");
    assert_eq!(
        w.trace,
        ["send aliyun", r#"record sms:tencent ["switching from aliyun: E1"]"#]
    );
}

#[test]
fn outages_and_missing_apps_end_without_a_send() {
    assert_eq!(summary(&unavailable("routes unavailable")), "release refund");
    assert_eq!(summary(&unknown_app()), "failed -");
    // No provider at all for the channel.
    let r = route("");
    let mut a = Attempt::new(message(), Vec::new(), &r, policy());
    let end = drive(&mut a, false, &mut World::default());
    let End::Finish { finish, .. } = end else {
        unreachable!()
    };
    assert_eq!(finish.status, Status::Failed);
    assert_eq!(finish.reason.as_deref(), Some("no provider for sms"));
}
