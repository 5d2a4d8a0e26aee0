//! What the chat robots (DingTalk, WeCom, Feishu) have in common: a message's `to` names
//! one of the app's robots, the body is markdown or text, and the answer is a JSON
//! `{code, message}` pair read the same way. Each robot's module keeps its own signing,
//! body layout and documented error codes.

use std::collections::HashMap;
use std::time::Duration;

use sha2::Digest;

use crate::apps::RobotAccount;
use crate::delivery::{ErrorClass, ProviderError, Sent};
use crate::message::Content;

/// The account of the robot named `to` among `robots`: its token, hashed (hex of the first
/// 8 bytes of SHA-256) so it never leaves as a secret; `"default"` for a name the app
/// does not have (the send then fails as `unknown_robot`); `None` without any robot.
pub(crate) fn account(robots: &HashMap<String, RobotAccount>, to: &str) -> Option<String> {
    if robots.is_empty() {
        return None;
    }
    Some(robots.get(to).map_or_else(
        || "default".to_string(),
        |r| hex::encode(&sha2::Sha256::digest(r.token.as_bytes())[..8]),
    ))
}

/// The app's robot named `name` (a message's `to`), or a permanent error.
pub(crate) fn lookup<'a>(
    robots: &'a HashMap<String, RobotAccount>,
    name: &str,
    vendor: &str,
) -> Result<&'a RobotAccount, ProviderError> {
    robots.get(name).ok_or_else(|| {
        ProviderError::new(
            ErrorClass::Permanent,
            "unknown_robot",
            format!("the app has no {vendor} robot named {name:?}"),
        )
    })
}

/// The two bodies every robot takes; which one a message gets is decided once, here.
pub(crate) enum Body<'a> {
    Markdown(&'a str),
    Text(&'a str),
}

/// Markdown when the message has it, else text, else a permanent `no_content` error that
/// names `what` ("a DingTalk robot message").
pub(crate) fn body<'a>(content: &'a Content, what: &str) -> Result<Body<'a>, ProviderError> {
    let given = |s: &'a Option<String>| s.as_deref().filter(|s| !s.is_empty());
    if let Some(markdown) = given(&content.markdown) {
        return Ok(Body::Markdown(markdown));
    }
    given(&content.text).map(Body::Text).ok_or_else(|| {
        ProviderError::new(
            ErrorClass::Permanent,
            "no_content",
            format!("{what} needs content.text or content.markdown"),
        )
    })
}

/// A robot vendor's API base and the client that posts to it.
pub(crate) struct Endpoint {
    http: reqwest::Client,
    base: String,
}

impl Endpoint {
    /// `base` is the API base URL; a trailing slash is dropped.
    pub(crate) fn new(http: reqwest::Client, base: String) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// A POST to `{base}{path}`.
    pub(crate) fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base))
    }
}

/// Where a vendor puts its answer's code and message: the first key present wins (Feishu
/// answers `code`/`msg`, older deployments `StatusCode`/`StatusMessage`).
pub(crate) struct AnswerKeys {
    pub code: &'static [&'static str],
    pub message: &'static [&'static str],
}

/// DingTalk's and WeCom's `{"errcode", "errmsg"}`.
pub(crate) const ERRCODE: AnswerKeys = AnswerKeys {
    code: &["errcode"],
    message: &["errmsg"],
};

/// A robot's answer: HTTP status, code and message (empty when absent).
pub(crate) struct Answer {
    pub status: u16,
    pub code: Option<i64>,
    pub message: String,
}

/// Sends `request` and reads the answer. Robot URLs carry the robot's credential, so a
/// transport error loses its URL before it is classified.
pub(crate) async fn post(request: reqwest::RequestBuilder, keys: &AnswerKeys) -> Result<Answer, ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| super::transport_error(&e.without_url()))?;
    let status = response.status().as_u16();
    let answer: Option<serde_json::Value> = response.json().await.ok();
    let field = |names: &[&str]| {
        let answer = answer.as_ref()?;
        names.iter().find_map(|n| answer.get(*n))
    };
    Ok(Answer {
        status,
        code: field(keys.code).and_then(|v| v.as_i64()),
        message: field(keys.message)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
    })
}

/// The answer codes a robot vendor documents (providers.md).
pub(crate) struct Codes {
    /// As it appears in messages ("DingTalk").
    pub vendor: &'static str,
    /// The code for "too many messages": deferred by `throttle_wait`.
    pub throttled: i64,
    pub throttle_wait: Duration,
    /// The code for "system busy", if the vendor has one: retried.
    pub busy: Option<i64>,
    /// Whether an HTTP 429 without a code means throttled too.
    pub http_429_throttles: bool,
}

impl Codes {
    /// Maps an answer to a result: `0` on a 2xx is delivered (robots have no receipts:
    /// posted is delivered); throttles defer, busy and server errors retry, a 2xx we
    /// cannot read is ambiguous (the post may have gone through), anything else is final.
    /// `secret` (a credential the vendor may echo) is cut out of the message.
    pub(crate) fn outcome(
        &self,
        status: u16,
        code: Option<i64>,
        message: &str,
        secret: &str,
    ) -> Result<Sent, ProviderError> {
        let ok = (200..300).contains(&status);
        let (class, code) = match code {
            Some(0) if ok => {
                return Ok(Sent {
                    provider_message_id: None,
                    delivered: true,
                })
            }
            Some(c) if c == self.throttled => (ErrorClass::Deferrable, c.to_string()),
            Some(c) if Some(c) == self.busy => (ErrorClass::Retryable, c.to_string()),
            _ if status >= 500 => (ErrorClass::Retryable, format!("http_{status}")),
            None if status == 429 && self.http_429_throttles => (ErrorClass::Deferrable, "http_429".to_string()),
            None if ok => (ErrorClass::Ambiguous, "bad_response".to_string()),
            Some(c) => (ErrorClass::Permanent, c.to_string()),
            None => (ErrorClass::Permanent, format!("http_{status}")),
        };
        let message = if message.is_empty() {
            format!("{} answered HTTP {status}", self.vendor)
        } else if secret.is_empty() {
            message.to_string()
        } else {
            message.replace(secret, "[key]")
        };
        let error = ProviderError::new(class, code, message);
        Err(if class == ErrorClass::Deferrable {
            error.retry_after(self.throttle_wait)
        } else {
            error
        })
    }
}
