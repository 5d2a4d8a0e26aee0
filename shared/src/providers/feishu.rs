//! Feishu / Lark custom bots: `message.to` names one of the app's bots, whose hook token
//! (and signing secret, when the bot has "signature verification" on) are in the app
//! config. Bots have no receipts: `code 0` means posted to the chat, so delivered.
//!
//! Feishu signs unlike DingTalk: the HMAC *key* is "{timestamp}\n{secret}" and the
//! message is empty; the timestamp is in seconds and the signature goes in the body.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::{transport_error, Provider};
use crate::apps::{AppConfig, ProviderAccounts};
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
    if let Some(markdown) = content.markdown.as_deref().filter(|m| !m.is_empty()) {
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
    let text = content.text.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
        ProviderError::new(
            ErrorClass::Permanent,
            "no_content",
            "a Feishu bot message needs content.text or content.markdown",
        )
    })?;
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

/// Maps a bot answer to a result (providers.md): rate limit defers with backoff, server
/// errors retry, any other nonzero code (bad sign `19021`, bad token, bad body) is final.
fn outcome(status: u16, code: Option<i64>, msg: &str) -> Result<Sent, ProviderError> {
    let (class, code) = match code {
        Some(0) if (200..300).contains(&status) => {
            return Ok(Sent {
                provider_message_id: None,
                delivered: true,
            })
        }
        Some(11232) => (ErrorClass::Deferrable, "11232".to_string()),
        _ if status >= 500 => (ErrorClass::Retryable, format!("http_{status}")),
        None if status == 429 => (ErrorClass::Deferrable, "http_429".to_string()),
        // A 2xx we cannot read: the post may have gone through.
        None if (200..300).contains(&status) => (ErrorClass::Ambiguous, "bad_response".to_string()),
        Some(c) => (ErrorClass::Permanent, c.to_string()),
        None => (ErrorClass::Permanent, format!("http_{status}")),
    };
    let message = if msg.is_empty() {
        format!("Feishu answered HTTP {status}")
    } else {
        msg.to_string()
    };
    let error = ProviderError::new(class, code, message);
    Err(if class == ErrorClass::Deferrable {
        error.retry_after(THROTTLE_WAIT)
    } else {
        error
    })
}

pub struct Feishu {
    http: reqwest::Client,
    endpoint: String,
}

impl Feishu {
    /// `endpoint` is the API base (`https://open.feishu.cn`, or Lark's).
    pub fn new(http: reqwest::Client, endpoint: String) -> Self {
        Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }
}

/// The Feishu bot `to` names (see [`super::robot::account`]).
pub fn account_id(accounts: &ProviderAccounts, to: &str) -> Option<String> {
    super::robot::account(&accounts.feishu, to)
}

#[async_trait::async_trait]
impl Provider for Feishu {
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

    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let robot = super::robot::lookup(&app.providers.feishu, &message.to, "Feishu")?;
        let mut body = payload(&message.content)?;
        if let Some(secret) = robot.secret.as_deref().filter(|s| !s.is_empty()) {
            let timestamp = crate::clock::now_ms() / 1000;
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
        // The URL carries the hook token: errors drop it.
        let response = self
            .http
            .post(format!("{}/open-apis/bot/v2/hook/{token}", self.endpoint))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .await
            .map_err(|e| transport_error(&e.without_url()))?;
        let status = response.status().as_u16();
        let answer: Option<serde_json::Value> = response.json().await.ok();
        // Older deployments answer `StatusCode`/`StatusMessage` instead of `code`/`msg`.
        let field = |new: &str, old: &str| answer.as_ref().and_then(|a| a.get(new).or_else(|| a.get(old)));
        let code = field("code", "StatusCode").and_then(|v| v.as_i64());
        let msg = field("msg", "StatusMessage")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        outcome(status, code, msg)
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
