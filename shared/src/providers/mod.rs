//! Providers: one file per vendor, owning everything about it: request signing, sending,
//! error classification, documented rate, which of an app's accounts a message goes
//! through, reconciling, and (for vendors that send them) parsing and authenticating its
//! receipts. Adding a vendor is adding its file plus a line in [`standard`] (and in
//! [`receipt_source`]'s registry if it sends receipts); nothing elsewhere matches on
//! provider names.
//! `robot.rs` holds what the chat robots share.

use std::sync::Arc;

use crate::apps::{AppConfig, ServiceSecrets};
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Reconciled, Sent};
use crate::message::{Channel, HistoryEntry, Message, Status};
use crate::receipts::{parse_reports, Batch, Inbound, Receipt, ReceiptError, Refusal, Reply, Scope};
use crate::shaping::Rate;

pub mod aliyun;
pub mod dingtalk;
pub mod feishu;
mod robot;
pub mod ses;
pub mod smtp;
pub mod sns;
pub mod tencent;
pub mod twilio;
pub mod webhook;
pub mod wechat;
pub mod wecom;

/// A delivery provider.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Stable name, stored on the message.
    fn name(&self) -> &'static str;
    fn channel(&self) -> Channel;
    fn on_ambiguous(&self) -> Ambiguity;
    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError>;
    /// Which of the app's accounts a message to `to` goes through (the unit providers
    /// rate-limit and fail by, so rate buckets and circuits are kept per account), or
    /// `None` when the app has no account for this provider. Whether it is `None`
    /// depends on the app alone, never on `to` ([`Providers::candidates`] relies on
    /// that). Never a secret.
    fn account(&self, app: &AppConfig, to: &str) -> Option<String>;
    /// The send rate the vendor documents per account, which the dispatcher shapes
    /// traffic to unless the app sets its own (`providers.rates`).
    fn documented_rate(&self) -> Option<Rate> {
        None
    }
    /// Looks the message up at the provider after an ambiguous send; only providers whose
    /// policy is [`Ambiguity::Reconcile`] implement it.
    async fn reconcile(&self, _message: &Message, _app: &AppConfig) -> Result<Reconciled, ProviderError> {
        Err(ProviderError::new(
            ErrorClass::Ambiguous,
            "unsupported",
            "this provider cannot be asked what it holds",
        ))
    }
    /// Whether the app has this provider's receipts pulled (`"receipts": "pull"` on its
    /// account) instead of pushed to the callback.
    fn pulls_receipts(&self, _app: &AppConfig) -> bool {
        false
    }
    /// Asks the provider for the delivery report of a message it accepted (receipt
    /// pull): `None` while it has none. The receipt names the message by its record
    /// key. Only providers that can pull implement it.
    async fn pull_receipt(&self, _message: &Message, _app: &AppConfig) -> Result<Option<Receipt>, ProviderError> {
        Err(ProviderError::new(
            ErrorClass::Permanent,
            "unsupported",
            "this provider's receipts cannot be pulled",
        ))
    }
}

/// What callbacks are checked against: the service secret (apps' tokens and accounts)
/// and, for SES events, what is trusted of SNS.
pub struct Trust<'a> {
    pub secrets: &'a ServiceSecrets,
    pub sns: &'a sns::SnsTrust,
}

/// A vendor's delivery receipts, as they reach `/v1/callbacks/{name}`: how the callback
/// is authenticated, what it carries and what the vendor must read back. One unit struct
/// per vendor that sends receipts, listed in [`receipt_source`]'s registry.
#[async_trait::async_trait]
pub trait ReceiptSource: Send + Sync {
    /// The provider's name, which is also its callback path segment.
    fn name(&self) -> &'static str;
    /// The channel its sends go on (the leg a failed receipt leaves).
    fn channel(&self) -> Channel;
    /// The answer to a `GET` (WeChat's server-URL check), given once the call is
    /// authentic; `None` for vendors that only POST (the callback answers 405 then).
    fn on_get(&self, _call: &Inbound<'_>) -> Option<Reply> {
        None
    }
    /// Whether the call really comes from the vendor, and whose messages it may change:
    /// the scope is what the call proved (the app whose secret authenticated it), never
    /// what it claims in its body.
    fn authentic(&self, call: &Inbound<'_>, secrets: &ServiceSecrets) -> Result<Scope, Refusal>;
    /// The check the callback makes: [`ReceiptSource::authentic`], unless the vendor's
    /// check needs the network (SES: SNS signing certificates).
    async fn authenticate(&self, call: &Inbound<'_>, trust: &Trust<'_>) -> Result<Scope, Refusal> {
        self.authentic(call, trust.secrets)
    }
    /// For vendors whose signature covers a nonce but not the body (WeChat): the key
    /// under which this call's nonce is remembered, so a captured call cannot be replayed
    /// with another body. `None`: nothing to remember.
    fn replay_key(&self, _call: &Inbound<'_>) -> Option<String> {
        None
    }
    /// Whether the vendor's receipts may arrive before the dispatcher has recorded the
    /// send: it answers fast and names the message only by its own id. Such receipts
    /// are held (`Store::hold_receipt`) until the send's finish records the reference.
    fn early(&self) -> bool {
        false
    }
    /// The receipts an authentic POST carries.
    fn parse(&self, call: &Inbound<'_>) -> Result<Batch, ReceiptError>;
    /// What the vendor must read back once `applied` of the batch's receipts changed a
    /// message.
    fn reply(&self, batch: &Batch, applied: usize) -> Reply;
}

/// Every vendor that sends receipts. Adding one is its module's `ReceiptSource` plus one
/// line here.
static RECEIPT_SOURCES: [&dyn ReceiptSource; 5] = [
    &ses::SesReceipts,
    &twilio::TwilioReceipts,
    &aliyun::RECEIPTS,
    &tencent::RECEIPTS,
    &wechat::WechatReceipts,
];

/// A vendor whose callbacks are a JSON array of reports, authenticated by the app's own
/// callback token (`?app=&token=`) because the vendor documents no signature (Aliyun,
/// Tencent). The shared service token no longer passes here: it would let its holder
/// rewrite every tenant's statuses.
pub struct TokenReports {
    /// The provider's name and callback path segment.
    pub name: &'static str,
    /// See [`ReceiptSource::channel`].
    pub channel: Channel,
    /// One report's receipt.
    pub report: fn(&serde_json::Value) -> Result<Receipt, ReceiptError>,
    /// The acknowledgement the vendor must read, or it pushes again.
    pub ack: fn() -> serde_json::Value,
    /// See [`ReceiptSource::early`].
    pub early: bool,
}

#[async_trait::async_trait]
impl ReceiptSource for TokenReports {
    fn name(&self) -> &'static str {
        self.name
    }

    fn channel(&self) -> Channel {
        self.channel
    }

    fn authentic(&self, call: &Inbound<'_>, secrets: &ServiceSecrets) -> Result<Scope, Refusal> {
        call.app_token(secrets)
    }

    fn early(&self) -> bool {
        self.early
    }

    fn parse(&self, call: &Inbound<'_>) -> Result<Batch, ReceiptError> {
        parse_reports(call.body, self.report).map(Batch::of)
    }

    fn reply(&self, _batch: &Batch, _applied: usize) -> Reply {
        Reply::Json((self.ack)())
    }
}

/// The receipt source whose callback path segment is `name`.
pub fn receipt_source(name: &str) -> Option<&'static dyn ReceiptSource> {
    RECEIPT_SOURCES.iter().copied().find(|s| s.name() == name)
}

/// The providers in service.
#[derive(Clone, Default)]
pub struct Providers(Vec<Arc<dyn Provider>>);

impl Providers {
    pub fn new(list: Vec<Arc<dyn Provider>>) -> Self {
        Self(list)
    }

    /// The providers to try for a message of `channel` from `app`, in order: the route's
    /// list when it has one for the channel, else the app's own order (`sms_order`,
    /// `email_order`), else the registry's order of the channel's providers; only
    /// providers in service that the app has an account for.
    pub fn candidates(&self, channel: Channel, app: &AppConfig, route: Option<&[String]>) -> Vec<Arc<dyn Provider>> {
        let preferred = match (route, channel) {
            (Some(list), _) if !list.is_empty() => list,
            (_, Channel::Sms) => app.providers.sms_order.as_slice(),
            (_, Channel::Email) => app.providers.email_order.as_slice(),
            _ => &[],
        };
        let usable = |p: &&Arc<dyn Provider>| p.channel() == channel && p.account(app, "").is_some();
        if preferred.is_empty() {
            return self.0.iter().filter(usable).cloned().collect();
        }
        preferred
            .iter()
            .filter_map(|name| self.0.iter().filter(usable).find(|p| p.name() == name))
            .cloned()
            .collect()
    }

    /// The provider in service named `name`.
    pub fn named(&self, name: &str) -> Option<Arc<dyn Provider>> {
        self.0.iter().find(|p| p.name() == name).cloned()
    }

    /// The first of [`Providers::candidates`] without a route.
    pub fn select(&self, channel: Channel, app: &AppConfig) -> Option<Arc<dyn Provider>> {
        self.candidates(channel, app, None).into_iter().next()
    }
}

/// Every provider in service, built once per cold start. Adding a provider is its file
/// plus one line here. The order matters: it is the default order of a channel's
/// providers (aliyun, tencent, twilio for SMS; ses before smtp for email).
pub fn standard(
    cfg: &crate::config::Dispatch,
    ses: aws_sdk_sesv2::Client,
    ddb: aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Providers, reqwest::Error> {
    let http = http_client(cfg.provider_timeout)?;
    let e = &cfg.endpoints;
    let clock = crate::clock::system;
    Ok(Providers::new(vec![
        Arc::new(ses::Ses::new(
            ses,
            cfg.email_from.clone(),
            cfg.ses_configuration_set.clone(),
            cfg.provider_timeout,
        )),
        Arc::new(smtp::Smtp::new(
            cfg.email_from.clone(),
            cfg.provider_timeout,
            cfg.webhook_allow_private,
        )),
        Arc::new(webhook::Webhook::new(
            cfg.webhook_timeout,
            cfg.webhook_allow_private,
            clock(),
        )?),
        Arc::new(aliyun::Aliyun::new(http.clone(), e.aliyun_sms.clone(), clock())),
        Arc::new(tencent::Tencent::new(http.clone(), e.tencent_sms.clone(), clock())),
        Arc::new(twilio::Twilio::new(
            http.clone(),
            e.twilio.clone(),
            cfg.public_url.clone(),
        )),
        Arc::new(dingtalk::DingTalk::new(http.clone(), e.dingtalk.clone(), clock())),
        Arc::new(wecom::WeCom::new(http.clone(), e.wecom.clone())),
        Arc::new(feishu::Feishu::new(http.clone(), e.feishu.clone(), clock())),
        Arc::new(wechat::Wechat::new(
            http,
            e.wechat.clone(),
            ddb,
            table.to_string(),
            clock(),
            cfg.provider_timeout,
        )),
    ]))
}

/// The providers whose receipts can be pulled (the SMS vendors), for the `pull`
/// function.
pub fn receipt_pullers(
    endpoints: &crate::config::Endpoints,
    timeout: std::time::Duration,
) -> Result<Providers, reqwest::Error> {
    let http = http_client(timeout)?;
    let clock = crate::clock::system;
    Ok(Providers::new(vec![
        Arc::new(aliyun::Aliyun::new(http.clone(), endpoints.aliyun_sms.clone(), clock())),
        Arc::new(tencent::Tencent::new(
            http.clone(),
            endpoints.tencent_sms.clone(),
            clock(),
        )),
        Arc::new(twilio::Twilio::new(http, endpoints.twilio.clone(), None)),
    ]))
}

/// A provider HTTP client: fixed endpoints from configuration, no redirects, bounded time.
pub fn http_client(timeout: std::time::Duration) -> Result<reqwest::Client, reqwest::Error> {
    crate::tls::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(3)))
        .user_agent("Pushgate/1")
        .build()
}

/// The error for an answer that carries no result the vendor's codes could classify: a
/// 2xx may still have sent (ambiguous), a 429 was refused before any send (deferrable),
/// a 5xx never reached the service behind the gateway (retryable), the rest is final.
/// The message says `{vendor} answered {status} without {missing}`.
pub(crate) fn unreadable_answer(vendor: &str, status: u16, missing: &str) -> ProviderError {
    let class = match status {
        200..=299 => ErrorClass::Ambiguous,
        429 => ErrorClass::Deferrable,
        500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    };
    ProviderError::new(
        class,
        format!("http_{status}"),
        format!("{vendor} answered {status} without {missing}"),
    )
}

/// Characters a key part keeps as they are: letters, digits, `-` and `_`. Everything else
/// (notably `.`, which separates the parts of `{provider}.{account}`, and `@`, which ends
/// a rate slot's account) is percent-encoded.
const KEY_SAFE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// `part` escaped so it can be one `.`-separated part of an account key whatever it
/// contains: tenant-chosen values (app ids, webhook hosts, sender addresses) can then
/// neither collide with another tenant's key nor forge a part of the key format.
pub fn key_part(part: &str) -> String {
    percent_encoding::utf8_percent_encode(part, KEY_SAFE).to_string()
}

/// When the interrupted send of a taken-over message began, at the earliest: the first
/// of the claims its history ends with (a claim adds a `sending` entry without a note;
/// takeovers that only reconciled add nothing else), else its creation.
pub fn interrupted_at(history: &[HistoryEntry], created_at: i64) -> i64 {
    let claims = history
        .iter()
        .rev()
        .take_while(|h| h.status == Status::Sending && h.note.is_none())
        .last();
    claims.map_or(created_at, |h| h.at.max(created_at))
}

/// Classifies a transport error: refused connections never reached the provider.
pub fn transport_error(e: &reqwest::Error) -> ProviderError {
    if e.is_connect() {
        ProviderError::new(ErrorClass::Retryable, "connect", "connection failed")
    } else if e.is_timeout() {
        ProviderError::new(ErrorClass::Ambiguous, "timeout", "no answer in time")
    } else {
        ProviderError::new(ErrorClass::Ambiguous, "transport", "request failed mid-way")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Sent;

    /// How a vendor finds the account a message goes through, from the app.
    type AccountFn = fn(&AppConfig, &str) -> Option<String>;

    /// The default sender the test registry's SES sends from.
    const DEFAULT_FROM: &str = "no-reply@pushgate.test";

    /// The vendors' account lookups by name (a test table: the code asks the provider).
    const ACCOUNTS: [(&str, AccountFn); 10] = [
        ("ses", |app, _| ses::account_id(app, DEFAULT_FROM)),
        ("smtp", smtp::account_id),
        ("webhook", webhook::account_id),
        ("aliyun", |app, to| aliyun::account_id(&app.providers, to)),
        ("tencent", |app, to| tencent::account_id(&app.providers, to)),
        ("twilio", |app, to| twilio::account_id(&app.providers, to)),
        ("dingtalk", |app, to| dingtalk::account_id(&app.providers, to)),
        ("wecom", |app, to| wecom::account_id(&app.providers, to)),
        ("feishu", |app, to| feishu::account_id(&app.providers, to)),
        ("wechat", |app, to| wechat::account_id(&app.providers, to)),
    ];

    fn account_by_name(provider: &str, app: &AppConfig, to: &str) -> Option<String> {
        ACCOUNTS
            .iter()
            .find(|(name, _)| *name == provider)
            .and_then(|(_, account)| account(app, to))
    }

    /// A provider that answers `account` the way the vendor of its name does.
    struct Named(&'static str, Channel);

    #[async_trait::async_trait]
    impl Provider for Named {
        fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
            account_by_name(self.0, app, to)
        }

        fn name(&self) -> &'static str {
            self.0
        }

        fn channel(&self) -> Channel {
            self.1
        }

        fn on_ambiguous(&self) -> Ambiguity {
            Ambiguity::MarkUnknown
        }

        async fn send(&self, _message: &Message, _app: &AppConfig) -> Result<Sent, ProviderError> {
            unreachable!("never sent")
        }
    }

    /// The registry's order, as `standard` builds it.
    fn registry() -> Providers {
        Providers::new(vec![
            Arc::new(Named("ses", Channel::Email)),
            Arc::new(Named("smtp", Channel::Email)),
            Arc::new(Named("webhook", Channel::Webhook)),
            Arc::new(Named("aliyun", Channel::Sms)),
            Arc::new(Named("tencent", Channel::Sms)),
            Arc::new(Named("twilio", Channel::Sms)),
            Arc::new(Named("dingtalk", Channel::Dingtalk)),
        ])
    }

    fn app(providers: serde_json::Value) -> AppConfig {
        serde_json::from_value(serde_json::json!({"key": "a", "secrets": [], "providers": providers})).unwrap()
    }

    fn names(list: Vec<Arc<dyn Provider>>) -> Vec<&'static str> {
        list.iter().map(|p| p.name()).collect()
    }

    #[test]
    fn candidates_follow_the_registry_unless_the_app_or_route_says_otherwise() {
        let p = registry();
        let sms = serde_json::json!({"access_key_id": "k", "access_key_secret": "s", "sign_name": "n"});
        let tencent = serde_json::json!({"secret_id": "i", "secret_key": "k", "sdk_app_id": "1", "sign_name": "n"});
        let smtp = serde_json::json!({"host": "mail.example"});
        let both = app(serde_json::json!({"tencent": tencent, "aliyun": sms, "smtp": smtp}));
        assert_eq!(names(p.candidates(Channel::Sms, &both, None)), ["aliyun", "tencent"]);
        assert_eq!(names(p.candidates(Channel::Email, &both, None)), ["ses", "smtp"]);
        let ordered = app(serde_json::json!({
            "aliyun": sms, "tencent": tencent, "sms_order": ["twilio", "tencent", "aliyun"],
            "email_order": ["smtp", "ses"], "smtp": smtp,
        }));
        // Twilio has no account: skipped.
        assert_eq!(names(p.candidates(Channel::Sms, &ordered, None)), ["tencent", "aliyun"]);
        assert_eq!(names(p.candidates(Channel::Email, &ordered, None)), ["smtp", "ses"]);
        let route = ["aliyun".to_string(), "ses".to_string()];
        assert_eq!(names(p.candidates(Channel::Sms, &ordered, Some(&route))), ["aliyun"]);
        let none = app(serde_json::json!({}));
        assert!(p.candidates(Channel::Sms, &none, None).is_empty());
        assert!(p.candidates(Channel::Dingtalk, &none, None).is_empty());
        assert_eq!(names(p.candidates(Channel::Email, &none, None)), ["ses"]);
        assert_eq!(names(p.candidates(Channel::Webhook, &none, None)), ["webhook"]);
    }

    #[test]
    fn accounts_by_name() {
        let robots = app(serde_json::json!({"dingtalk": {"ops": {"token": "t"}}}));
        // The token's hash (hex of sha256's first 8 bytes), never the token.
        assert_eq!(
            account_by_name("dingtalk", &robots, "ops").as_deref(),
            Some("e3b98a4da31a127d")
        );
        assert_eq!(account_by_name("dingtalk", &robots, "nope").as_deref(), Some("default"));
        assert_eq!(account_by_name("wecom", &robots, "ops"), None);
        // Per app and origin (scheme, host, port), never the host alone.
        assert_eq!(
            account_by_name("webhook", &robots, "https://hooks.example/x").as_deref(),
            Some("a.https%3A%2F%2Fhooks%2Eexample%3A443")
        );
        // Per sending identity, never one account for every app.
        assert_eq!(
            account_by_name("ses", &robots, "a@b.c").as_deref(),
            Some("no-reply%40pushgate%2Etest")
        );
        assert_eq!(account_by_name("nope", &robots, "x"), None);
        assert_eq!(account_by_name("aliyun", &robots, "x"), None);
    }

    #[test]
    fn tenant_chosen_targets_are_kept_apart_by_app_and_origin() {
        let a = app(serde_json::json!({}));
        let mut b = a.clone();
        b.key = "b".into();
        let hook = |app: &AppConfig, to: &str| account_by_name("webhook", app, to).unwrap();
        let url = "https://host.example:1/";
        assert_ne!(hook(&a, url), hook(&b, url), "one tenant's failures are not another's");
        assert_ne!(hook(&a, url), hook(&a, "https://host.example:2/"), "ports apart");
        assert_ne!(hook(&a, url), hook(&a, "http://host.example:1/"), "schemes apart");
        assert_eq!(hook(&a, url), hook(&a, "https://HOST.example:1/other?q"), "one origin");
        // An app id cannot forge another app's key by containing the separator.
        let mut dotted = a.clone();
        dotted.key = "a.https://host.example:1".into();
        assert_ne!(hook(&dotted, "https://x/"), hook(&a, url));
        assert!(!hook(&dotted, url).contains('@'), "rate slots end an account at '@'");

        let mut own = a.clone();
        own.email_from = Some("news@tenant.example".into());
        let ses = |app: &AppConfig| account_by_name("ses", app, "r@x").unwrap();
        assert_ne!(ses(&own), ses(&a), "an app's own sender is its own circuit");
        assert_eq!(ses(&own), "news%40tenant%2Eexample");
    }

    #[test]
    fn the_interrupted_send_began_with_the_claims_the_history_ends_with() {
        let entry = |at: i64, status: Status, note: Option<&str>| HistoryEntry {
            at,
            status,
            note: note.map(str::to_string),
        };
        assert_eq!(interrupted_at(&[], 5), 5);
        let history = [
            entry(5, Status::Accepted, None),
            entry(10, Status::Sending, None),
            entry(20, Status::Sending, Some("attempt 1 failed: tencent: http_502")),
            entry(30, Status::Sending, None),
            entry(90, Status::Sending, None),
            entry(150, Status::Sending, None),
        ];
        assert_eq!(interrupted_at(&history, 5), 30);
        assert_eq!(interrupted_at(&history[..3], 5), 5, "the last attempt was closed");
    }
}
