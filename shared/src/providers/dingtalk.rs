//! DingTalk custom group robots: `message.to` names one of the app's robots, whose
//! access token (and signing secret, when the robot uses "sign" security) are in the app
//! config. Robots have no receipts: `errcode 0` means posted to the group, so delivered.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::robot::{self, Body, Codes, Endpoint};
use super::Provider;
use crate::apps::{AppConfig, ProviderAccounts};
use crate::clock::Clock;
use crate::delivery::{Ambiguity, ProviderError, Sent};
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
    let mut body = match robot::body(content, "a DingTalk robot message")? {
        Body::Markdown(markdown) => {
            let title = content
                .subject
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| first_line_title(markdown));
            serde_json::json!({"msgtype": "markdown", "markdown": {"title": title, "text": markdown}})
        }
        Body::Text(text) => serde_json::json!({"msgtype": "text", "text": {"content": text}}),
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

/// DingTalk's answer codes (providers.md): `130101` is the throttle, `-1` busy; security
/// failures (`310000`) and the rest are final.
const CODES: Codes = Codes {
    vendor: "DingTalk",
    throttled: 130101,
    throttle_wait: THROTTLE_WAIT,
    busy: Some(-1),
    http_429_throttles: false,
};

fn outcome(status: u16, errcode: Option<i64>, errmsg: &str) -> Result<Sent, ProviderError> {
    CODES.outcome(status, errcode, errmsg, "")
}

/// The DingTalk robot `to` names (see [`super::robot::account`]).
pub fn account_id(accounts: &ProviderAccounts, to: &str) -> Option<String> {
    super::robot::account(&accounts.dingtalk, to)
}

pub struct DingTalk {
    endpoint: Endpoint,
    /// Signs posts (`timestamp`, milliseconds).
    clock: Clock,
}

impl DingTalk {
    /// `endpoint` is the API base (`https://oapi.dingtalk.com`).
    pub fn new(http: reqwest::Client, endpoint: String, clock: Clock) -> Self {
        Self {
            endpoint: Endpoint::new(http, endpoint),
            clock,
        }
    }
}

#[async_trait::async_trait]
impl Provider for DingTalk {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
    }

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

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let robot = robot::lookup(&app.providers.dingtalk, &message.to, "DingTalk")?;
        let body = payload(&message.content)?;
        let mut query = vec![("access_token", robot.token.clone())];
        if let Some(secret) = robot.secret.as_deref().filter(|s| !s.is_empty()) {
            let timestamp = (self.clock)();
            query.push(("timestamp", timestamp.to_string()));
            query.push(("sign", sign(timestamp, secret)));
        }
        let request = self.endpoint.post("/robot/send").query(&query).json(&body);
        let answer = robot::post(request, &robot::ERRCODE).await?;
        outcome(answer.status, answer.code, &answer.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::ErrorClass;
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
