//! Providers: one file each behind one trait, so adding a provider is adding a file.

use std::sync::Arc;

use crate::apps::AppConfig;
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Reconciled, Sent};
use crate::message::{Channel, Message};
use crate::shaping::Rate;

pub mod aliyun;
pub mod dingtalk;
pub mod feishu;
pub mod ses;
pub mod smtp;
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
    /// `None` when the app has no account for this provider. Never a secret.
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        app.providers
            .configured(self.name())
            .then(|| app.providers.account_id(self.name(), to))
    }
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
}

/// The providers in service.
#[derive(Clone, Default)]
pub struct Providers(Vec<Arc<dyn Provider>>);

impl Providers {
    pub fn new(list: Vec<Arc<dyn Provider>>) -> Self {
        Self(list)
    }

    /// The providers to try for a message of `channel` from `app`, in order: the route's
    /// list when it has one for the channel, else the app's own order (SMS and email) or
    /// the channel's one provider; only providers in service that the app has an
    /// account for.
    pub fn candidates(&self, channel: Channel, app: &AppConfig, route: Option<&[String]>) -> Vec<Arc<dyn Provider>> {
        let names: Vec<String> = match route {
            Some(list) if !list.is_empty() => list.to_vec(),
            _ => match channel {
                Channel::Sms => app.providers.sms_providers().into_iter().map(String::from).collect(),
                Channel::Email => app.providers.email_providers().into_iter().map(String::from).collect(),
                _ => self
                    .0
                    .iter()
                    .filter(|p| p.channel() == channel)
                    .map(|p| p.name().to_string())
                    .collect(),
            },
        };
        names
            .iter()
            .filter(|name| app.providers.configured(name))
            .filter_map(|name| self.0.iter().find(|p| p.channel() == channel && p.name() == name))
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
/// plus one line here.
pub fn standard(
    cfg: &crate::config::Dispatch,
    ses: aws_sdk_sesv2::Client,
    ddb: aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Providers, reqwest::Error> {
    let http = http_client(cfg.provider_timeout)?;
    let e = &cfg.endpoints;
    Ok(Providers::new(vec![
        Arc::new(ses::Ses::new(
            ses,
            cfg.email_from.clone(),
            cfg.ses_configuration_set.clone(),
        )),
        Arc::new(smtp::Smtp::new(cfg.email_from.clone(), cfg.provider_timeout)),
        Arc::new(webhook::Webhook::new(cfg.webhook_timeout, cfg.webhook_allow_private)?),
        Arc::new(aliyun::Aliyun::new(http.clone(), e.aliyun_sms.clone())),
        Arc::new(tencent::Tencent::new(http.clone(), e.tencent_sms.clone())),
        Arc::new(twilio::Twilio::new(
            http.clone(),
            e.twilio.clone(),
            cfg.public_url.clone(),
        )),
        Arc::new(dingtalk::DingTalk::new(http.clone(), e.dingtalk.clone())),
        Arc::new(wecom::WeCom::new(http.clone(), e.wecom.clone())),
        Arc::new(feishu::Feishu::new(http.clone(), e.feishu.clone())),
        Arc::new(wechat::Wechat::new(http, e.wechat.clone(), ddb, table.to_string())),
    ]))
}

/// A provider HTTP client: fixed endpoints from configuration, no redirects, bounded time.
pub fn http_client(timeout: std::time::Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(3)))
        .user_agent("Pushgate/1")
        .build()
}

/// The app's robot named `name` (a message's `to`), or a permanent error.
pub(crate) fn robot<'a>(
    robots: &'a std::collections::HashMap<String, crate::apps::RobotAccount>,
    name: &str,
    vendor: &str,
) -> Result<&'a crate::apps::RobotAccount, ProviderError> {
    robots.get(name).ok_or_else(|| {
        ProviderError::new(
            ErrorClass::Permanent,
            "unknown_robot",
            format!("the app has no {vendor} robot named {name:?}"),
        )
    })
}

/// Reads an `{"errcode", "errmsg"}` answer (DingTalk, WeCom): HTTP status, code, message.
pub(crate) async fn errcode_answer(response: reqwest::Response) -> (u16, Option<i64>, String) {
    let status = response.status().as_u16();
    let answer: Option<serde_json::Value> = response.json().await.ok();
    let field = |k: &str| answer.as_ref().and_then(|a| a.get(k));
    let errcode = field("errcode").and_then(|v| v.as_i64());
    let errmsg = field("errmsg").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    (status, errcode, errmsg)
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
