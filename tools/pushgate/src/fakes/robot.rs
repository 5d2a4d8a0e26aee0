//! What the chat-robot fakes (DingTalk, WeCom, Feishu) share, so each robot's file keeps
//! only its own credential check, message shape and documented payloads. Every robot
//! records a post as it arrives (refused or not), then refuses bad credentials, then a
//! malformed post, and only then plays the magic content: [`BOOM`] anywhere in the
//! body gets the vendor's server failure, [`THROTTLE`] the vendor's rate-limit refusal;
//! any other post counts against the robot's documented rate limits.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{FakeLog, RateWindow, Recorded};

/// Magic content: the post is refused as over the rate limit (and not counted).
pub const THROTTLE: &str = "#throttle";
/// Magic content: the vendor's server fails.
pub const BOOM: &str = "#boom";

/// A robot's documented payloads for the outcomes the shared flow decides.
#[derive(Clone, Copy)]
pub(super) struct Answers {
    /// An accepted post.
    pub sent: fn() -> Response,
    /// A post over the rate limit, or carrying [`THROTTLE`].
    pub throttled: fn() -> Response,
    /// A post carrying [`BOOM`].
    pub boom: fn() -> Response,
}

/// One robot fake's state: which provider it records as, its rate limits and answers,
/// and the posts it accepted.
#[derive(Clone)]
pub(super) struct Robot {
    provider: &'static str,
    limits: &'static [(usize, Duration)],
    answers: Answers,
    log: FakeLog,
    posts: RateWindow,
}

impl Robot {
    /// A robot recorded as `provider` that accepts posts within every `(count, per)` limit.
    pub fn new(provider: &'static str, limits: &'static [(usize, Duration)], answers: Answers, log: FakeLog) -> Self {
        Self {
            provider,
            limits,
            answers,
            log,
            posts: RateWindow::default(),
        }
    }

    /// Handles one post to the robot with credential `robot` (its rate-limit key),
    /// recorded as sent `to`: `refused` is the vendor's answer to bad credentials, if
    /// they are, and `check` gives the vendor's answer to a malformed request, if it is.
    pub fn post(
        &self,
        robot: &str,
        to: String,
        body: Value,
        refused: Option<Response>,
        check: impl FnOnce(&Value) -> Option<Response>,
    ) -> Response {
        self.log.push(Recorded {
            provider: self.provider,
            action: "send".into(),
            verified: refused.is_none(),
            to,
            body: body.clone(),
        });
        if let Some(refusal) = refused.or_else(|| check(&body)) {
            return refusal;
        }
        let text = body.to_string();
        if text.contains(BOOM) {
            return (self.answers.boom)();
        }
        if text.contains(THROTTLE) || !self.posts.admit(robot, self.limits) {
            return (self.answers.throttled)();
        }
        (self.answers.sent)()
    }
}

/// A post that carries its credentials in the query string (DingTalk, WeCom), extracted
/// as those handlers took it before: the query, then the headers, then the body, each
/// refused with axum's own rejection.
pub(super) struct QueryPost {
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub raw: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for QueryPost {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Query(query) = Query::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let headers = parts.headers.clone();
        let raw = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self { query, headers, raw })
    }
}

/// The body as JSON; `Null` when it is not, which every robot's shape check refuses.
pub(super) fn json_body(raw: &[u8]) -> Value {
    serde_json::from_slice(raw).unwrap_or(Value::Null)
}

/// Whether the request says its body is JSON, as DingTalk and WeCom require.
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The `{"errcode","errmsg"}` answer DingTalk and WeCom give to every post (HTTP 200).
pub(super) fn errcode(errcode: i64, errmsg: &str) -> Response {
    Json(json!({"errcode": errcode, "errmsg": errmsg})).into_response()
}

/// Whether an optional field is absent or an array of strings (mention lists).
pub(super) fn string_array_or_absent(v: Option<&Value>) -> bool {
    match v {
        None => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    }
}

/// A query-string parameter, empty when absent (what the robots record as the recipient).
pub(super) fn param(query: &HashMap<String, String>, name: &str) -> String {
    query.get(name).cloned().unwrap_or_default()
}
