//! The message: its channels, content, the stored record and how its status moves.
//! Pure data: no I/O, imported by the request validation, the store and the providers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Delivery channel. Channels not yet served are known names, so clients get a clear
/// "not supported yet" instead of "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Webhook,
    Sms,
    Dingtalk,
    Wecom,
    Feishu,
    Wechat,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Email,
        Channel::Webhook,
        Channel::Sms,
        Channel::Dingtalk,
        Channel::Wecom,
        Channel::Feishu,
        Channel::Wechat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
            Channel::Sms => "sms",
            Channel::Dingtalk => "dingtalk",
            Channel::Wecom => "wecom",
            Channel::Feishu => "feishu",
            Channel::Wechat => "wechat",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Lifecycle status. It only moves forward: each status has a rank and an update applies
/// only when it raises the rank, so late or duplicate events never move it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    /// Accepted for a later `send_at`: waiting on a delayed job or a Scheduler schedule.
    /// Claimable (and cancellable) as `accepted` is.
    Scheduled,
    Sending,
    Sent,
    /// The outcome of a send cut short (lease expired mid-call) cannot be known and the
    /// provider cannot be safely re-called; a later receipt may still settle it.
    Unknown,
    Delivered,
    Failed,
    Cancelled,
}

impl Status {
    pub fn rank(self) -> u8 {
        match self {
            Status::Accepted | Status::Scheduled => 0,
            Status::Sending => 1,
            Status::Sent | Status::Unknown => 2,
            Status::Delivered | Status::Failed | Status::Cancelled => 3,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() == 3
    }

    pub const ALL: [Status; 8] = [
        Status::Accepted,
        Status::Scheduled,
        Status::Sending,
        Status::Sent,
        Status::Unknown,
        Status::Delivered,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Scheduled => "scheduled",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Unknown => "unknown",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Rendered content, as sent. Which fields apply depends on the channel: email uses
/// subject/text/html; a webhook posts all present fields plus `body` (any JSON); SMS uses
/// `sms` (pre-approved provider templates) or `text`; chat robots use `text` or
/// `markdown` (with `subject` as title) and `mentions`; WeChat uses `wechat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<Mentions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsTemplates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechat: Option<WechatTemplate>,
}

/// Whom a robot message @-mentions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mentions {
    /// Phone numbers (DingTalk `atMobiles`, WeCom `mentioned_mobile_list`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mobiles: Vec<String>,
    /// User ids (DingTalk `atUserIds`, WeCom `mentioned_list`, Feishu `open_id`s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_ids: Vec<String>,
    /// Everyone in the group.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// Pre-approved SMS templates, one per provider that needs them (Aliyun and Tencent only
/// send registered templates; Twilio sends `text`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsTemplates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliyun: Option<AliyunSmsTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tencent: Option<TencentSmsTemplate>,
}

/// Aliyun `TemplateCode` + `TemplateParam` (named parameters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliyunSmsTemplate {
    pub template_code: String,
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

/// Tencent `TemplateId` + `TemplateParamSet` (ordered parameters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TencentSmsTemplate {
    pub template_id: String,
    #[serde(default)]
    pub params: Vec<String>,
}

/// A WeChat Official Account template message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatTemplate {
    pub template_id: String,
    /// Field name → value (sent as `{"name": {"value": …}}`).
    #[serde(default)]
    pub data: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One step of a message's history, shown by `GET /v1/messages/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix milliseconds.
    pub at: i64,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The stored message record (one DynamoDB item). Its key `pk` is the replay guard and
/// idempotency record at once: `{app}_i_{sha256(Idempotency-Key)}` when the client sent a
/// key, `{app}_s_{signature}` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub pk: String,
    pub id: String,
    pub app: String,
    pub channel: Channel,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub content: Content,
    pub status: Status,
    pub status_rank: u8,
    #[serde(default)]
    pub attempts: u32,
    pub created_at: i64,
    pub updated_at: i64,
    /// DynamoDB TTL attribute (Unix seconds).
    pub expires_at: i64,
    /// hex(sha256(request body)), to tell an idempotent replay from a key reused with a
    /// different body.
    pub body_hash: String,
    /// hex of the request signature, to tell a replayed request from an idempotent retry.
    pub signature: String,
    /// Set while the ingest that wrote the record has not yet confirmed the SQS send
    /// (idempotent requests only); cleared by ingest or by the dispatcher's claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_pending: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set once the app's balance paid for this message (metered apps), so a redelivery
    /// never pays twice and a failure knows to refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged: Option<bool>,
    /// Set by a claim whose attempt must charge the message before any send (a metered
    /// app, not yet paid). A takeover that finds it still unpaid knows the interrupted
    /// attempt never reached a provider: the charge is written atomically with `charged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_first: Option<bool>,
    /// Business key its routing rule was chosen by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Rendered alternatives on other channels, for a route's channel fallback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternates: Vec<Alternate>,
    /// `channel:provider` pairs already tried and given up on (never sent to again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried: Vec<String>,
    /// The part of `tried` given up on for good (a permanent or quota error, a rule that
    /// says so). A round of the plan that ends in transient failures starts the next
    /// attempt with only these left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spent: Vec<String>,
    /// A provider rate-bucket slot reserved for this message's next attempt
    /// (`{account}@{unix ms}`): when it falls due the message sends without taking again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_slot: Option<String>,
    /// `channel:provider` of the send in flight when it is not the route's first choice,
    /// so a takeover after a crash knows which provider may already hold the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The provider whose failed receipt sent the message on to its next leg (a route's
    /// receipt rule): set once, so a duplicated receipt never falls back twice, and a
    /// later receipt from that provider changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fell_back_from: Option<String>,
    /// When the client asked for it to be sent (unix ms), if not at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<i64>,
    /// The EventBridge Scheduler schedule (in the configured group) that queues it, for a
    /// `send_at` beyond SQS's 15-minute delay; deleted on cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The batch it was sent in (`POST /v1/messages/batch`) and its recipient's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u32>,
    /// The recurring schedule (`POST /v1/schedules`) it is one occurrence of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurring: Option<String>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// What every new message record starts from, whoever writes it (ingest, a batch, a
/// recurring schedule's occurrence).
pub struct FirstRecord {
    pub pk: String,
    pub id: String,
    pub app: String,
    pub channel: Channel,
    pub to: String,
    pub content: Content,
    pub status: Status,
    pub now: i64,
    /// Unix seconds (the table's TTL attribute).
    pub expires_at: i64,
    /// The first history entry's note.
    pub note: Option<String>,
}

impl Message {
    /// A record as first written: nothing tried, leased, charged or sent yet, one history
    /// entry (`status` at `now`). Writers add what they know beyond that with struct
    /// update syntax, so a new field is defaulted here once, not at every writer.
    pub fn first(r: FirstRecord) -> Self {
        Message {
            pk: r.pk,
            id: r.id,
            app: r.app,
            channel: r.channel,
            to: r.to,
            template: None,
            content: r.content,
            status: r.status,
            status_rank: r.status.rank(),
            attempts: 0,
            created_at: r.now,
            updated_at: r.now,
            expires_at: r.expires_at,
            body_hash: String::new(),
            signature: String::new(),
            ingest_pending: None,
            lease_until: None,
            lease_owner: None,
            provider: None,
            provider_message_id: None,
            reason: None,
            charged: None,
            charge_first: None,
            key: None,
            alternates: Vec::new(),
            tried: Vec::new(),
            spent: Vec::new(),
            rate_slot: None,
            via: None,
            send_at: None,
            schedule: None,
            batch_id: None,
            batch_index: None,
            recurring: None,
            fell_back_from: None,
            history: vec![HistoryEntry {
                at: r.now,
                status: r.status,
                note: r.note,
            }],
        }
    }
}

/// The message rendered for another channel (channel fallback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternate {
    pub channel: Channel,
    pub to: String,
    pub content: Content,
}

/// The body of each SQS job: the key of the record to dispatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub pk: String,
    pub id: String,
    /// The message's app, so the dispatcher loads its configuration before it takes the
    /// lease (jobs queued before this field existed lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

impl Job {
    /// The job that dispatches `message`.
    pub fn of(message: &Message) -> Self {
        Self {
            pk: message.pk.clone(),
            id: message.id.clone(),
            app: Some(message.app.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rank_only_grows_forward() {
        assert!(Status::Delivered.rank() > Status::Sent.rank());
        assert!(Status::Unknown.rank() < Status::Delivered.rank());
        assert!(Status::Failed.is_terminal() && !Status::Unknown.is_terminal());
    }
}
