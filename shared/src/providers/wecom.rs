//! WeCom (WeChat Work) group robots: `message.to` names one of the app's robots, whose
//! webhook key is in the app config. The key is the robot's only credential and rides in
//! the URL, so no URL (and no reqwest error, which would carry it) reaches an error or log.
//! Robots have no receipts: `errcode 0` means posted to the group, so delivered.

use std::time::Duration;

use super::{transport_error, Provider};
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
    if let Some(markdown) = content.markdown.as_deref().filter(|m| !m.is_empty()) {
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
    let text = content.text.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
        ProviderError::new(
            ErrorClass::Permanent,
            "no_content",
            "a WeCom robot message needs content.text or content.markdown",
        )
    })?;
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

/// Maps a robot answer to a result (providers.md): rate limit defers, an invalid webhook
/// is final, busy and server errors retry. `errmsg` is WeCom's, minus the key if echoed.
fn outcome(status: u16, errcode: Option<i64>, errmsg: &str, key: &str) -> Result<Sent, ProviderError> {
    let (class, code) = match errcode {
        Some(0) if (200..300).contains(&status) => {
            return Ok(Sent {
                provider_message_id: None,
                delivered: true,
            })
        }
        Some(45009) => (ErrorClass::Deferrable, "45009".to_string()),
        Some(-1) => (ErrorClass::Retryable, "-1".to_string()),
        _ if status >= 500 => (ErrorClass::Retryable, format!("http_{status}")),
        // A 2xx we cannot read: the post may have gone through.
        None if (200..300).contains(&status) => (ErrorClass::Ambiguous, "bad_response".to_string()),
        Some(c) => (ErrorClass::Permanent, c.to_string()),
        None => (ErrorClass::Permanent, format!("http_{status}")),
    };
    let message = if errmsg.is_empty() {
        format!("WeCom answered HTTP {status}")
    } else if key.is_empty() {
        errmsg.to_string()
    } else {
        errmsg.replace(key, "[key]")
    };
    let error = ProviderError::new(class, code, message);
    Err(if class == ErrorClass::Deferrable {
        error.retry_after(THROTTLE_WAIT)
    } else {
        error
    })
}

pub struct WeCom {
    http: reqwest::Client,
    endpoint: String,
}

impl WeCom {
    /// `endpoint` is the API base (`https://qyapi.weixin.qq.com`).
    pub fn new(http: reqwest::Client, endpoint: String) -> Self {
        Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }
}

/// The WeCom robot `to` names (see [`super::robot::account`]).
pub fn account_id(accounts: &ProviderAccounts, to: &str) -> Option<String> {
    super::robot::account(&accounts.wecom, to)
}

#[async_trait::async_trait]
impl Provider for WeCom {
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

    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let robot = super::robot::lookup(&app.providers.wecom, &message.to, "WeCom")?;
        let body = payload(&message.content)?;
        let response = self
            .http
            .post(format!("{}/cgi-bin/webhook/send", self.endpoint))
            .query(&[("key", robot.token.as_str())])
            .json(&body)
            .send()
            .await
            // `transport_error` only reads the error's kind, and the URL is dropped first anyway.
            .map_err(|e| transport_error(&e.without_url()))?;
        let (status, errcode, errmsg) = super::errcode_answer(response).await;
        outcome(status, errcode, &errmsg, &robot.token)
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
