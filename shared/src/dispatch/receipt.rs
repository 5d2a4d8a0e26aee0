//! Fallback on a failed receipt: a provider accepted the message, then its delivery
//! receipt said it failed. Under a route rule of scene `receipt` that says
//! `switch_channel` or `switch_provider`, the message is sent again on its next leg,
//! once, never to a provider it already tried. Pure: the receipt path (callbacks, and
//! receipts pulled from vendors) asks [`on_failed_receipt`] and carries the verdict out
//! with one conditional write (`Store::fall_back`) and one queued job; the dispatcher's
//! claim then sends it exactly once, its plan leaving out what the verdict gave up on.
//!
//! ```text
//! failed receipt ─ already fell back? ─ Stay (once)
//!   not sent/unknown, or sent through another provider? ─ Stay
//!   the route's first receipt rule: none, fail ─ Stay
//!   switch_provider: give up channel:provider ─┐
//!   switch_channel:  give up the whole channel ─┴─ a leg left? ─ FallBack │ Stay
//! ```

use super::plan::whole_channel;
use crate::message::{Channel, Message};
use crate::routing::{Action, Route};

/// A receipt that reported a sent message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedReceipt<'a> {
    /// The provider that reported it.
    pub provider: &'a str,
    /// The channel that provider serves.
    pub channel: Channel,
    /// The vendor's error code (matched by a rule's `code`).
    pub code: &'a str,
    /// The vendor's note, as the history keeps it.
    pub note: &'a str,
}

/// What a failed receipt does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Record the receipt as usual: the message ends `failed`. Says why not fall back.
    Stay(&'static str),
    /// Queue the message again for its next leg.
    FallBack(Fallback),
}

/// The write that sends a message on after a failed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The provider whose receipt failed: the write applies only while the message still
    /// names it as its provider and has not fallen back yet (`fell_back_from`).
    pub from: String,
    /// The message's new `tried` and `spent` (what it had, plus what is given up now).
    pub tried: Vec<String>,
    pub spent: Vec<String>,
    /// History notes: the receipt as reported, then where the message goes.
    pub notes: Vec<String>,
}

fn push_once(list: &mut Vec<String>, id: String) {
    if !list.contains(&id) {
        list.push(id);
    }
}

/// Decides what a failed receipt does to `message` under `route`. `providers(channel)`:
/// the providers the message's plan would try on a channel, in order (the route's list,
/// else the app's order); empty when not known, and then the channel counts as one
/// that may still serve it.
pub fn on_failed_receipt(
    message: &Message,
    route: &Route,
    receipt: &FailedReceipt<'_>,
    providers: impl Fn(Channel) -> Vec<String>,
) -> Verdict {
    if message.fell_back_from.is_some() {
        return Verdict::Stay("it fell back once already");
    }
    if message.status.rank() != crate::message::Status::Sent.rank() {
        return Verdict::Stay("it is not waiting for a receipt");
    }
    if message.provider.as_deref() != Some(receipt.provider) {
        return Verdict::Stay("it was not sent through this provider");
    }
    let action = match route.on_failed_receipt(receipt.provider, receipt.code) {
        None => return Verdict::Stay("no receipt rule"),
        Some(Action::Fail | Action::Retry) => return Verdict::Stay("the rule says fail"),
        Some(action) => action,
    };
    let step = format!("{}:{}", receipt.channel.as_str(), receipt.provider);
    let (mut tried, mut spent) = (message.tried.clone(), message.spent.clone());
    let mut give_up = vec![step];
    if action == Action::SwitchChannel {
        give_up.push(whole_channel(receipt.channel));
    }
    for id in give_up {
        push_once(&mut tried, id.clone());
        push_once(&mut spent, id);
    }
    // A leg is left if a channel not given up whole has a provider not tried (or
    // providers not known here: the dispatcher's plan knows).
    let available: Vec<Channel> = message.alternates.iter().map(|a| a.channel).collect();
    let left = route.legs(message.channel, &available).into_iter().find(|c| {
        if tried.contains(&whole_channel(*c)) {
            return false;
        }
        let names = providers(*c);
        names.is_empty() || names.iter().any(|p| !tried.contains(&format!("{}:{p}", c.as_str())))
    });
    let Some(next) = left else {
        return Verdict::Stay("no leg left to fall back to");
    };
    let code = match receipt.code {
        "" => String::new(),
        code => format!(" ({code})"),
    };
    let whither = match next == receipt.channel {
        true => format!("the next {} provider", next.as_str()),
        false => next.as_str().to_string(),
    };
    Verdict::FallBack(Fallback {
        from: receipt.provider.to_string(),
        tried,
        spent,
        notes: vec![
            receipt.note.to_string(),
            format!(
                "falling back to {whither} after a failed receipt from {}{code}",
                receipt.provider
            ),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Routes;

    const NOW: i64 = 1_000_000;

    /// An SMS sent through Aliyun, with an email fallback recipient.
    fn sent_sms() -> Message {
        serde_json::from_value(serde_json::json!({
            "pk": "app_s_x", "id": "01ID", "app": "app", "channel": "sms", "to": "+8613800138000",
            "content": {"text": "hi"}, "status": "sent", "status_rank": 2, "attempts": 1,
            "created_at": NOW, "updated_at": NOW, "expires_at": NOW, "body_hash": "h", "signature": "s",
            "provider": "aliyun", "provider_message_id": "biz",
            "alternates": [{"channel": "email", "to": "a@example.com", "content": {"text": "hi"}}]
        }))
        .unwrap()
    }

    fn route(fields: &str) -> Route {
        let json = format!(r#"[{{"app":"app","key":"*",{fields}}}]"#);
        (*Routes::parse(&json).unwrap().find("app", None).unwrap()).clone()
    }

    const RECEIPT: FailedReceipt<'static> = FailedReceipt {
        provider: "aliyun",
        channel: Channel::Sms,
        code: "MN:0001",
        note: "aliyun: MN:0001",
    };

    /// The providers an app with `sms_order` aliyun, tencent would be planned through.
    fn sms_two(c: Channel) -> Vec<String> {
        match c {
            Channel::Sms => vec!["aliyun".into(), "tencent".into()],
            Channel::Email => vec!["ses".into()],
            _ => vec![],
        }
    }

    fn sms_one(c: Channel) -> Vec<String> {
        match c {
            Channel::Sms => vec!["aliyun".into()],
            _ => vec![],
        }
    }

    const TO_EMAIL: &str = r#""rules":[{"when":{"scene":"receipt","class":"permanent"},"action":"switch_channel"}]"#;
    const TO_TENCENT: &str = r#""rules":[{"when":{"scene":"receipt"},"action":"switch_provider"}]"#;

    fn fell_back(tried: &[&str], note: &str) -> Verdict {
        let tried: Vec<String> = tried.iter().map(|s| s.to_string()).collect();
        Verdict::FallBack(Fallback {
            from: "aliyun".into(),
            spent: tried.clone(),
            tried,
            notes: vec!["aliyun: MN:0001".into(), note.into()],
        })
    }

    #[test]
    fn a_failed_receipt_falls_back_as_the_route_says_once_never_to_a_provider_tried() {
        type Edit = fn(&mut Message);
        let none: Edit = |_| {};
        type Providers = fn(Channel) -> Vec<String>;
        let rows: &[(&str, &str, Edit, Providers, Verdict)] = &[
            (
                "switch_channel leaves SMS whole for email",
                TO_EMAIL,
                none,
                sms_two,
                fell_back(
                    &["sms:aliyun", "sms:*"],
                    "falling back to email after a failed receipt from aliyun (MN:0001)",
                ),
            ),
            (
                "switch_provider tries the next SMS provider",
                TO_TENCENT,
                none,
                sms_two,
                fell_back(
                    &["sms:aliyun"],
                    "falling back to the next sms provider after a failed receipt from aliyun (MN:0001)",
                ),
            ),
            (
                "switch_provider with no SMS provider left goes on to email",
                TO_TENCENT,
                none,
                sms_one,
                fell_back(
                    &["sms:aliyun"],
                    "falling back to email after a failed receipt from aliyun (MN:0001)",
                ),
            ),
            (
                "a rule matching the vendor's code",
                r#""rules":[{"when":{"scene":"receipt","provider":"aliyun","code":"MN:*"},"action":"switch_channel"}]"#,
                none,
                sms_two,
                fell_back(
                    &["sms:aliyun", "sms:*"],
                    "falling back to email after a failed receipt from aliyun (MN:0001)",
                ),
            ),
            (
                "no receipt rule: stays failed",
                r#""rules":[{"when":{"class":"permanent"},"action":"switch_channel"}]"#,
                none,
                sms_two,
                Verdict::Stay("no receipt rule"),
            ),
            (
                "a rule for another code",
                r#""rules":[{"when":{"scene":"receipt","code":"X"},"action":"switch_channel"}]"#,
                none,
                sms_two,
                Verdict::Stay("no receipt rule"),
            ),
            (
                "a rule that says fail",
                r#""rules":[{"when":{"scene":"receipt"},"action":"fail"}]"#,
                none,
                sms_two,
                Verdict::Stay("the rule says fail"),
            ),
            (
                "once: a second failed receipt stays failed",
                TO_EMAIL,
                |m| m.fell_back_from = Some("aliyun".into()),
                sms_two,
                Verdict::Stay("it fell back once already"),
            ),
            (
                "a receipt from a provider the message was not sent through",
                TO_EMAIL,
                |m| m.provider = Some("tencent".into()),
                sms_two,
                Verdict::Stay("it was not sent through this provider"),
            ),
            (
                "already settled",
                TO_EMAIL,
                |m| m.status = crate::message::Status::Delivered,
                sms_two,
                Verdict::Stay("it is not waiting for a receipt"),
            ),
            (
                "no fallback recipient: nowhere to go",
                TO_EMAIL,
                |m| m.alternates.clear(),
                sms_two,
                Verdict::Stay("no leg left to fall back to"),
            ),
            (
                "the email leg was given up at send time",
                TO_EMAIL,
                |m| m.tried = vec!["email:ses".into()],
                sms_two,
                Verdict::Stay("no leg left to fall back to"),
            ),
            (
                "tencent already tried (and given up) when it was sent: only email is left",
                TO_TENCENT,
                |m| {
                    m.tried = vec!["sms:tencent".into()];
                    m.spent = vec!["sms:tencent".into()];
                },
                sms_two,
                fell_back(
                    &["sms:tencent", "sms:aliyun"],
                    "falling back to email after a failed receipt from aliyun (MN:0001)",
                ),
            ),
        ];
        for (name, rules, edit, providers, want) in rows {
            let mut m = sent_sms();
            edit(&mut m);
            let got = on_failed_receipt(&m, &route(rules), &RECEIPT, providers);
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn an_unknown_message_falls_back_too() {
        let mut m = sent_sms();
        m.status = crate::message::Status::Unknown;
        assert!(matches!(
            on_failed_receipt(&m, &route(TO_EMAIL), &RECEIPT, sms_two),
            Verdict::FallBack(_)
        ));
    }
}
