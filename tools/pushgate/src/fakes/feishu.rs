//! Fake Feishu custom bot: `POST /open-apis/bot/v2/hook/{token}` (mounted under `/feishu`).
//! One bot, [`TOKEN`] (any other: `19001`), with signature verification on and secret
//! [`SECRET`]: the body's `timestamp` (a string, seconds) must be within an hour and `sign`
//! must be base64(HMAC-SHA256(key = "{timestamp}\n{secret}", message = "")), checked here
//! with the fake's own code (else `19021`). Serves `text` (`content.text`), `post`
//! (`content.post.<lang>` with optional string `title` and `content`, an array of
//! paragraphs of `{"tag":…}` elements), `image`, `share_chat` and `interactive`; answers
//! `{"code":0,"msg":"success","data":{}}`, or:
//! - a malformed message or a body over 20 KB: HTTP 400 `9499` (the fake's choice);
//! - more than [`PER_SECOND`] posts a second or [`PER_MINUTE`] a minute: `11232`.
//!
//! Magic content (anywhere in the body): [`THROTTLE`] `#throttle` → `11232`;
//! [`BOOM`] `#boom` → HTTP 500.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::robot::{self, Answers, Robot};
pub use super::robot::{BOOM, THROTTLE};
use super::FakeLog;

pub const TOKEN: &str = "fake-feishu-hook-token";
pub const SECRET: &str = "fake-feishu-sign-secret";
/// Posts a second a bot accepts.
pub const PER_SECOND: usize = 5;
/// Posts a minute a bot accepts.
pub const PER_MINUTE: usize = 100;
/// Largest body accepted.
pub const MAX_BODY_BYTES: usize = 20 * 1024;

/// Feishu's payloads for what the shared robot flow decides.
const ANSWERS: Answers = Answers {
    sent: || answer(0, "success"),
    throttled: || answer(11232, "frequency limited psm[lark.oapi.app_platform_runtime]appID[0]"),
    boom: || (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
};

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    const LIMITS: &[(usize, Duration)] = &[
        (PER_SECOND, Duration::from_secs(1)),
        (PER_MINUTE, Duration::from_secs(60)),
    ];
    let fake = Robot::new("feishu", LIMITS, ANSWERS, log);
    Router::new()
        .route("/open-apis/bot/v2/hook/{token}", post(hook))
        .with_state(fake)
}

fn answer(code: i64, msg: &str) -> Response {
    Json(json!({"code": code, "msg": msg, "data": {}})).into_response()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The credential check: `Err` carries Feishu's refusal.
fn check_sign(token: &str, body: &Value) -> Result<(), (i64, &'static str)> {
    if token != TOKEN {
        return Err((19001, "param invalid: incoming webhook access token invalid"));
    }
    const SIGN_FAIL: (i64, &str) = (
        19021,
        "sign match fail or timestamp is not within one hour from current time",
    );
    let timestamp = body.get("timestamp").and_then(Value::as_str).ok_or(SIGN_FAIL)?;
    let seconds: i64 = timestamp.parse().map_err(|_| SIGN_FAIL)?;
    if (now_secs() - seconds).abs() > 3600 {
        return Err(SIGN_FAIL);
    }
    let given = body.get("sign").and_then(Value::as_str).ok_or(SIGN_FAIL)?;
    let key = [timestamp.as_bytes(), b"\n", SECRET.as_bytes()].concat();
    let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| SIGN_FAIL)?;
    if given != B64.encode(mac.finalize().into_bytes()) {
        return Err(SIGN_FAIL);
    }
    Ok(())
}

/// A `post` language block: optional string title, paragraphs of tagged elements.
fn valid_post_block(block: &Value) -> bool {
    let title_ok = block.get("title").is_none_or(Value::is_string);
    let content_ok = block
        .get("content")
        .and_then(Value::as_array)
        .is_some_and(|paragraphs| {
            paragraphs.iter().all(|p| {
                p.as_array()
                    .is_some_and(|els| els.iter().all(|e| e.get("tag").is_some_and(Value::is_string)))
            })
        });
    title_ok && content_ok
}

/// The documented message shape.
fn check_shape(body: &Value) -> bool {
    let content = body.get("content");
    match body.get("msg_type").and_then(Value::as_str) {
        Some("text") => content
            .and_then(|c| c.get("text"))
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty()),
        Some("post") => content
            .and_then(|c| c.get("post"))
            .and_then(Value::as_object)
            .is_some_and(|langs| !langs.is_empty() && langs.values().all(valid_post_block)),
        Some("image") => content.and_then(|c| c.get("image_key")).is_some_and(Value::is_string),
        Some("share_chat") => content
            .and_then(|c| c.get("share_chat_id"))
            .is_some_and(Value::is_string),
        Some("interactive") => body.get("card").is_some_and(Value::is_object),
        _ => false,
    }
}

async fn hook(State(fake): State<Robot>, Path(token): Path<String>, raw: Bytes) -> Response {
    let body = robot::json_body(&raw);
    let refused = check_sign(&token, &body).err().map(|(code, msg)| answer(code, msg));
    fake.post(TOKEN, token, body, refused, |body| {
        let malformed = raw.len() > MAX_BODY_BYTES || !check_shape(body);
        malformed.then(|| (StatusCode::BAD_REQUEST, answer(9499, "Bad Request")).into_response())
    })
}
