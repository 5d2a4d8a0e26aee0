//! Feishu / Lark custom bots: `message.to` names one of the app's bots, whose hook token
//! (and signing secret, when the bot has "signature verification" on) are in the app
//! config. Bots have no receipts: `code 0` means posted to the chat, so delivered.
//!
//! Feishu signs unlike DingTalk: the HMAC *key* is "{timestamp}\n{secret}" and the
//! message is empty; the timestamp is in seconds and the signature goes in the body.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::robot::{self, AnswerKeys, Body, Codes, Endpoint};
use super::Provider;
use crate::apps::{AppConfig, ProviderAccounts};
use crate::clock::Clock;
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::{Channel, Content, Message};

/// `11232` (rate limited): Feishu asks for a backoff; the per-second window is short.
const THROTTLE_WAIT: Duration = Duration::from_secs(5);
/// Request body limit.
const MAX_BODY_BYTES: usize = 20 * 1024;

/// The bot signature: base64(HMAC-SHA256(key = "{timestamp_secs}\n{secret}", message = "")).
pub fn sign(timestamp_secs: i64, secret: &str) -> String {
    let key = format!("{timestamp_secs}\n{secret}");
    B64.encode(crate::crypto::hmac_sha256(key.as_bytes(), &[]))
}

/// The bot message (without `timestamp`/`sign`): a rich-text `post` for markdown (title =
/// subject; Feishu bots do not render markdown in posts, so lines go as text), else `text`
/// with `<at>` tags. Feishu mentions by user id only: `mentions.mobiles` cannot apply.
pub fn payload(content: &Content) -> Result<serde_json::Value, ProviderError> {
    let mentions = content.mentions.clone().unwrap_or_default();
    let mut ids: Vec<&str> = mentions.user_ids.iter().map(String::as_str).collect();
    if mentions.all {
        ids.push("all");
    }
    let text = match robot::body(content, "a Feishu bot message")? {
        Body::Markdown(markdown) => {
            let mut paragraphs: Vec<serde_json::Value> = markdown
                .lines()
                .map(|line| serde_json::json!([{"tag": "text", "text": line}]))
                .collect();
            if !ids.is_empty() {
                let ats: Vec<serde_json::Value> = ids
                    .iter()
                    .map(|id| serde_json::json!({"tag": "at", "user_id": id}))
                    .collect();
                paragraphs.push(ats.into());
            }
            let title = content.subject.clone().unwrap_or_default();
            return Ok(serde_json::json!({
                "msg_type": "post",
                "content": {"post": {"zh_cn": {"title": title, "content": paragraphs}}}
            }));
        }
        Body::Text(text) => text,
    };
    let mut text = text.to_string();
    for id in ids {
        text.push_str(&format!(" <at user_id=\"{}\"></at>", escape_attr(id)));
    }
    Ok(serde_json::json!({"msg_type": "text", "content": {"text": text}}))
}

/// Keeps a user id from closing the `<at>` attribute early.
fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Feishu's answer codes (providers.md): `11232` (or a bare HTTP 429) is the rate limit;
/// no busy code; any other nonzero code (bad sign `19021`, bad token, bad body) is final.
const CODES: Codes = Codes {
    vendor: "Feishu",
    throttled: 11232,
    throttle_wait: THROTTLE_WAIT,
    busy: None,
    http_429_throttles: true,
};

/// Older deployments answer `StatusCode`/`StatusMessage` instead of `code`/`msg`.
const ANSWER: AnswerKeys = AnswerKeys {
    code: &["code", "StatusCode"],
    message: &["msg", "StatusMessage"],
};

fn outcome(status: u16, code: Option<i64>, msg: &str) -> Result<Sent, ProviderError> {
    CODES.outcome(status, code, msg, "")
}

/// The Feishu bot `to` names (see [`super::robot::account`]).
pub fn account_id(accounts: &ProviderAccounts, to: &str) -> Option<String> {
    super::robot::account(&accounts.feishu, to)
}

pub struct Feishu {
    endpoint: Endpoint,
    /// Signs posts (`timestamp`, seconds).
    clock: Clock,
}

impl Feishu {
    /// `endpoint` is the API base (`https://open.feishu.cn`, or Lark's).
    pub fn new(http: reqwest::Client, endpoint: String, clock: Clock) -> Self {
        Self {
            endpoint: Endpoint::new(http, endpoint),
            clock,
        }
    }
}

#[async_trait::async_trait]
impl Provider for Feishu {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
    }

    fn name(&self) -> &'static str {
        "feishu"
    }

    fn channel(&self) -> Channel {
        Channel::Feishu
    }

    /// Documented per robot (`../shared/providers.md`).
    fn documented_rate(&self) -> Option<crate::shaping::Rate> {
        Some(crate::shaping::Rate::per_second(5))
    }

    fn on_ambiguous(&self) -> Ambiguity {
        // A second post is a second chat message, and there is no receipt to ask.
        Ambiguity::MarkUnknown
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let robot = robot::lookup(&app.providers.feishu, &message.to, "Feishu")?;
        let mut body = payload(&message.content)?;
        if let Some(secret) = robot.secret.as_deref().filter(|s| !s.is_empty()) {
            let timestamp = (self.clock)() / 1000;
            body["timestamp"] = timestamp.to_string().into();
            body["sign"] = sign(timestamp, secret).into();
        }
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| ProviderError::new(ErrorClass::Permanent, "encode", e.to_string()))?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(ProviderError::new(
                ErrorClass::Permanent,
                "content_too_long",
                "Feishu bot messages are limited to 20 KB",
            ));
        }
        let token = percent_encoding::utf8_percent_encode(&robot.token, percent_encoding::NON_ALPHANUMERIC);
        let request = self
            .endpoint
            .post(&format!("/open-apis/bot/v2/hook/{token}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes);
        let answer = robot::post(request, &ANSWER).await?;
        outcome(answer.status, answer.code, &answer.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Mentions;

    /// Doc inputs (open.feishu.cn custom bot guide), value computed independently
    /// (providers.md): the key is "1599360473\ndemo", the message empty.
    #[test]
    fn sign_matches_the_documented_inputs() {
        assert_eq!(sign(1599360473, "demo"), "l1N0gAcBjdwBvGm1xMjOF0XSyaLRpR7tuO5dHfhAYc8=");
    }

    #[test]
    fn text_payload_has_at_tags() {
        let c = Content {
            text: Some("hi".into()),
            mentions: Some(Mentions {
                user_ids: vec!["ou_1".into()],
                all: true,
                ..Mentions::default()
            }),
            ..Content::default()
        };
        assert_eq!(
            payload(&c).unwrap(),
            serde_json::json!({"msg_type": "text", "content": {
                "text": "hi <at user_id=\"ou_1\"></at> <at user_id=\"all\"></at>"
            }})
        );
        assert_eq!(payload(&Content::default()).unwrap_err().code, "no_content");
    }

    #[test]
    fn markdown_becomes_a_post_with_the_subject_as_title() {
        let c = Content {
            subject: Some("Deploy".into()),
            markdown: Some("line 1\nline 2".into()),
            mentions: Some(Mentions {
                all: true,
                ..Mentions::default()
            }),
            ..Content::default()
        };
        assert_eq!(
            payload(&c).unwrap(),
            serde_json::json!({"msg_type": "post", "content": {"post": {"zh_cn": {
                "title": "Deploy",
                "content": [
                    [{"tag": "text", "text": "line 1"}],
                    [{"tag": "text", "text": "line 2"}],
                    [{"tag": "at", "user_id": "all"}],
                ],
            }}}})
        );
    }

    #[test]
    fn answers_are_classified() {
        assert!(outcome(200, Some(0), "success").unwrap().delivered);
        let e = outcome(200, Some(11232), "frequency limited").unwrap_err();
        assert_eq!((e.class, e.retry_after), (ErrorClass::Deferrable, Some(THROTTLE_WAIT)));
        assert_eq!(
            outcome(200, Some(19021), "sign match fail").unwrap_err().class,
            ErrorClass::Permanent
        );
        assert_eq!(
            outcome(400, Some(9499), "Bad Request").unwrap_err().class,
            ErrorClass::Permanent
        );
        assert_eq!(outcome(500, None, "").unwrap_err().class, ErrorClass::Retryable);
        assert_eq!(outcome(200, None, "").unwrap_err().class, ErrorClass::Ambiguous);
    }
}
