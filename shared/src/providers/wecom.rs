//! WeCom (WeChat Work) group robots: `message.to` names one of the app's robots, whose
//! webhook key is in the app config. The key is the robot's only credential and rides in
//! the URL, so no URL (and no reqwest error, which would carry it) reaches an error or log.
//! Robots have no receipts: `errcode 0` means posted to the group, so delivered.

use std::time::Duration;

use super::robot::{self, Body, Codes, Endpoint};
use super::Provider;
use crate::apps::{AppConfig, ProviderAccounts};
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::{Channel, Content, Message};

/// `45009` (over 20 messages a minute): the window is a minute.
const THROTTLE_WAIT: Duration = Duration::from_secs(60);
/// Text `content` limit, in bytes.
const MAX_TEXT_BYTES: usize = 2048;
/// Markdown `content` limit, in bytes.
const MAX_MARKDOWN_BYTES: usize = 4096;

/// The robot message: markdown when given (subject as a heading, user mentions as
/// `<@userid>`, the only mention markdown supports), else text with mention lists.
pub fn payload(content: &Content) -> Result<serde_json::Value, ProviderError> {
    let mentions = content.mentions.clone().unwrap_or_default();
    let text = match robot::body(content, "a WeCom robot message")? {
        Body::Markdown(markdown) => {
            let mut text = match content.subject.as_deref().filter(|s| !s.is_empty()) {
                Some(subject) => format!("# {subject}\n{markdown}"),
                None => markdown.to_string(),
            };
            if !mentions.user_ids.is_empty() {
                text.push('\n');
                let tags: Vec<String> = mentions.user_ids.iter().map(|u| format!("<@{u}>")).collect();
                text.push_str(&tags.join(" "));
            }
            check_len(&text, MAX_MARKDOWN_BYTES)?;
            return Ok(serde_json::json!({"msgtype": "markdown", "markdown": {"content": text}}));
        }
        Body::Text(text) => text,
    };
    check_len(text, MAX_TEXT_BYTES)?;
    let mut body = serde_json::json!({"msgtype": "text", "text": {"content": text}});
    let mut users = mentions.user_ids;
    if mentions.all {
        users.push("@all".into());
    }
    if !users.is_empty() {
        body["text"]["mentioned_list"] = users.into();
    }
    if !mentions.mobiles.is_empty() {
        body["text"]["mentioned_mobile_list"] = mentions.mobiles.into();
    }
    Ok(body)
}

fn check_len(content: &str, max: usize) -> Result<(), ProviderError> {
    if content.len() > max {
        return Err(ProviderError::new(
            ErrorClass::Permanent,
            "content_too_long",
            format!("WeCom robot content is limited to {max} bytes"),
        ));
    }
    Ok(())
}

/// WeCom's answer codes (providers.md): `45009` is the rate limit, `-1` busy; an invalid
/// webhook (`93000`) and the rest are final.
const CODES: Codes = Codes {
    vendor: "WeCom",
    throttled: 45009,
    throttle_wait: THROTTLE_WAIT,
    busy: Some(-1),
    http_429_throttles: false,
};

/// `errmsg` is WeCom's, minus the key if echoed.
fn outcome(status: u16, errcode: Option<i64>, errmsg: &str, key: &str) -> Result<Sent, ProviderError> {
    CODES.outcome(status, errcode, errmsg, key)
}

/// The WeCom robot `to` names (see [`super::robot::account`]).
pub fn account_id(accounts: &ProviderAccounts, to: &str) -> Option<String> {
    super::robot::account(&accounts.wecom, to)
}

pub struct WeCom {
    endpoint: Endpoint,
}

impl WeCom {
    /// `endpoint` is the API base (`https://qyapi.weixin.qq.com`).
    pub fn new(http: reqwest::Client, endpoint: String) -> Self {
        Self {
            endpoint: Endpoint::new(http, endpoint),
        }
    }
}

#[async_trait::async_trait]
impl Provider for WeCom {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
    }

    fn name(&self) -> &'static str {
        "wecom"
    }

    fn channel(&self) -> Channel {
        Channel::Wecom
    }

    /// Documented per robot (`../shared/providers.md`).
    fn documented_rate(&self) -> Option<crate::shaping::Rate> {
        Some(crate::shaping::Rate::per_minute(20))
    }

    fn on_ambiguous(&self) -> Ambiguity {
        // A second post is a second group message, and there is no receipt to ask.
        Ambiguity::MarkUnknown
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let robot = robot::lookup(&app.providers.wecom, &message.to, "WeCom")?;
        let body = payload(&message.content)?;
        let request = self
            .endpoint
            .post("/cgi-bin/webhook/send")
            .query(&[("key", robot.token.as_str())])
            .json(&body);
        let answer = robot::post(request, &robot::ERRCODE).await?;
        outcome(answer.status, answer.code, &answer.message, &robot.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Mentions;

    #[test]
    fn text_payload_carries_mentions_and_at_all() {
        let c = Content {
            text: Some("hi".into()),
            mentions: Some(Mentions {
                mobiles: vec!["13800000000".into()],
                user_ids: vec!["zhangsan".into()],
                all: true,
            }),
            ..Content::default()
        };
        assert_eq!(
            payload(&c).unwrap(),
            serde_json::json!({"msgtype": "text", "text": {
                "content": "hi",
                "mentioned_list": ["zhangsan", "@all"],
                "mentioned_mobile_list": ["13800000000"],
            }})
        );
    }

    #[test]
    fn markdown_payload_and_limits() {
        let c = Content {
            subject: Some("Deploy".into()),
            markdown: Some("**done**".into()),
            mentions: Some(Mentions {
                user_ids: vec!["u1".into()],
                ..Mentions::default()
            }),
            ..Content::default()
        };
        assert_eq!(
            payload(&c).unwrap(),
            serde_json::json!({"msgtype": "markdown", "markdown": {"content": "# Deploy\n**done**\n<@u1>"}})
        );
        let long = Content {
            text: Some("x".repeat(MAX_TEXT_BYTES + 1)),
            ..Content::default()
        };
        assert_eq!(payload(&long).unwrap_err().code, "content_too_long");
        assert_eq!(payload(&Content::default()).unwrap_err().code, "no_content");
    }

    #[test]
    fn answers_are_classified_without_the_key() {
        assert!(outcome(200, Some(0), "ok", "k").unwrap().delivered);
        let e = outcome(200, Some(45009), "api freq out of limit", "k").unwrap_err();
        assert_eq!((e.class, e.retry_after), (ErrorClass::Deferrable, Some(THROTTLE_WAIT)));
        assert_eq!(
            outcome(200, Some(-1), "busy", "k").unwrap_err().class,
            ErrorClass::Retryable
        );
        let e = outcome(200, Some(93000), "invalid webhook url key=SECRETKEY", "SECRETKEY").unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(!e.to_string().contains("SECRETKEY"));
        assert_eq!(outcome(503, None, "", "k").unwrap_err().class, ErrorClass::Retryable);
    }
}
