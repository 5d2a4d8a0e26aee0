//! DingTalk custom group robots: `message.to` names one of the app's robots, whose
//! access token (and signing secret, when the robot uses "sign" security) are in the app
//! config. Robots have no receipts: `errcode 0` means posted to the group, so delivered.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::{transport_error, Provider};
use crate::apps::{AppConfig, ProviderAccounts};
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::{Channel, Content, Message};

/// A robot over 20 messages a minute is throttled for 10 minutes (`130101`).
const THROTTLE_WAIT: Duration = Duration::from_secs(600);

/// The robot signature: base64(HMAC-SHA256(key = secret, msg = "{timestamp_ms}\n{secret}")).
/// Not URL-encoded: it goes through the query encoder like any other value.
pub fn sign(timestamp_ms: i64, secret: &str) -> String {
    let message = format!("{timestamp_ms}\n{secret}");
    B64.encode(crate::crypto::hmac_sha256(secret.as_bytes(), &[message.as_bytes()]))
}

/// The robot message: markdown when given (title = subject, else its first line), else text.
pub fn payload(content: &Content) -> Result<serde_json::Value, ProviderError> {
    let mut body = if let Some(markdown) = content.markdown.as_deref().filter(|m| !m.is_empty()) {
        let title = content
            .subject
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| first_line_title(markdown));
        serde_json::json!({"msgtype": "markdown", "markdown": {"title": title, "text": markdown}})
    } else if let Some(text) = content.text.as_deref().filter(|t| !t.is_empty()) {
        serde_json::json!({"msgtype": "text", "text": {"content": text}})
    } else {
        return Err(ProviderError::new(
            ErrorClass::Permanent,
            "no_content",
            "a DingTalk robot message needs content.text or content.markdown",
        ));
    };
    if let Some(m) = &content.mentions {
        body["at"] = serde_json::json!({
            "atMobiles": m.mobiles,
            "atUserIds": m.user_ids,
            "isAtAll": m.all,
        });
    }
    Ok(body)
}

/// The first non-empty line of markdown without its heading marks (the chat list preview).
fn first_line_title(markdown: &str) -> String {
    markdown
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .find(|l| !l.is_empty())
        .unwrap_or("Message")
        .to_string()
}

/// Maps a robot answer to a result (providers.md): throttle defers, security failures are
/// final, busy and server errors retry.
fn outcome(status: u16, errcode: Option<i64>, errmsg: &str) -> Result<Sent, ProviderError> {
    let (class, code) = match errcode {
        Some(0) if (200..300).contains(&status) => {
            return Ok(Sent {
                provider_message_id: None,
                delivered: true,
            })
        }
        Some(130101) => (ErrorClass::Deferrable, "130101".to_string()),
        Some(-1) => (ErrorClass::Retryable, "-1".to_string()),
        _ if status >= 500 => (ErrorClass::Retryable, format!("http_{status}")),
        // A 2xx we cannot read: the post may have gone through.
        None if (200..300).contains(&status) => (ErrorClass::Ambiguous, "bad_response".to_string()),
        Some(c) => (ErrorClass::Permanent, c.to_string()),
        None => (ErrorClass::Permanent, format!("http_{status}")),
    };
    let message = if errmsg.is_empty() {
        format!("DingTalk answered HTTP {status}")
    } else {
        errmsg.to_string()
    };
    let error = ProviderError::new(class, code, message);
    Err(if class == ErrorClass::Deferrable {
        error.retry_after(THROTTLE_WAIT)
    } else {
        error
    })
}

pub struct DingTalk {
    http: reqwest::Client,
    endpoint: String,
}

impl DingTalk {
    /// `endpoint` is the API base (`https://oapi.dingtalk.com`).
    pub fn new(http: reqwest::Client, endpoint: String) -> Self {
        Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }
}

/// The DingTalk robot `to` names (see [`super::robot::account`]).
pub fn account_id(accounts: &ProviderAccounts, to: &str) -> Option<String> {
    super::robot::account(&accounts.dingtalk, to)
}

#[async_trait::async_trait]
impl Provider for DingTalk {
    fn name(&self) -> &'static str {
        "dingtalk"
    }

    fn channel(&self) -> Channel {
        Channel::Dingtalk
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
        let robot = super::robot::lookup(&app.providers.dingtalk, &message.to, "DingTalk")?;
        let body = payload(&message.content)?;
        let mut query = vec![("access_token", robot.token.clone())];
        if let Some(secret) = robot.secret.as_deref().filter(|s| !s.is_empty()) {
            let timestamp = crate::clock::now_ms();
            query.push(("timestamp", timestamp.to_string()));
            query.push(("sign", sign(timestamp, secret)));
        }
        // The URL carries the access token: errors drop it.
        let response = self
            .http
            .post(format!("{}/robot/send", self.endpoint))
            .query(&query)
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(&e.without_url()))?;
        let (status, errcode, errmsg) = super::errcode_answer(response).await;
        outcome(status, errcode, &errmsg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Mentions;

    /// Doc inputs (open.dingtalk.com), value computed independently (providers.md).
    #[test]
    fn sign_matches_the_documented_inputs() {
        assert_eq!(
            sign(1577262236757, "this is a secret"),
            "DJrE6qdyVGCQz9z5r2MDuNcNAhwYnuAkyj13cx169CA="
        );
    }

    #[test]
    fn text_and_markdown_payloads() {
        let text = Content {
            text: Some("hello".into()),
            mentions: Some(Mentions {
                mobiles: vec!["13800000000".into()],
                user_ids: vec!["u1".into()],
                all: false,
            }),
            ..Content::default()
        };
        assert_eq!(
            payload(&text).unwrap(),
            serde_json::json!({
                "msgtype": "text",
                "text": {"content": "hello"},
                "at": {"atMobiles": ["13800000000"], "atUserIds": ["u1"], "isAtAll": false}
            })
        );
        let md = Content {
            markdown: Some("## Deploy done\n- ok".into()),
            ..Content::default()
        };
        assert_eq!(payload(&md).unwrap()["markdown"]["title"], "Deploy done");
        let md = Content {
            subject: Some("Title".into()),
            ..md
        };
        assert_eq!(payload(&md).unwrap()["markdown"]["title"], "Title");
        assert_eq!(payload(&Content::default()).unwrap_err().code, "no_content");
    }

    #[test]
    fn answers_are_classified() {
        assert!(outcome(200, Some(0), "ok").unwrap().delivered);
        let e = outcome(200, Some(130101), "send too fast").unwrap_err();
        assert_eq!((e.class, e.retry_after), (ErrorClass::Deferrable, Some(THROTTLE_WAIT)));
        assert_eq!(outcome(200, Some(310000), "").unwrap_err().class, ErrorClass::Permanent);
        assert_eq!(outcome(200, Some(-1), "").unwrap_err().class, ErrorClass::Retryable);
        assert_eq!(outcome(502, None, "").unwrap_err().class, ErrorClass::Retryable);
        assert_eq!(outcome(200, None, "").unwrap_err().class, ErrorClass::Ambiguous);
        assert_eq!(outcome(404, None, "").unwrap_err().class, ErrorClass::Permanent);
    }
}
