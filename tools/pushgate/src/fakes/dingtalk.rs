//! Fake DingTalk custom robot: `POST /robot/send?access_token=…&timestamp=…&sign=…`
//! (mounted under `/dingtalk`). One robot, [`TOKEN`], with "sign" security and secret
//! [`SECRET`]: the timestamp (ms) must be within an hour and `sign` must be
//! base64(HMAC-SHA256(secret, "{timestamp}\n{secret}")) (URL-encoded on the wire), checked
//! here with the fake's own code. Answers `{"errcode":0,"errmsg":"ok"}`, or:
//! - an unknown token: `300001`; a missing/bad sign or stale timestamp: `310000`;
//! - a body that is not a `text` (`text.content`) or `markdown` (`markdown.title`,
//!   `markdown.text`) message, or a malformed `at`: `40035`;
//! - more than [`PER_MINUTE`] posts a minute to the robot: `130101`.
//!
//! Magic content (anywhere in the body): [`THROTTLE`] `#throttle` → `130101`;
//! [`BOOM`] `#boom` → HTTP 500.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::robot::{self, errcode as answer, string_array_or_absent, Answers, QueryPost, Robot};
pub use super::robot::{BOOM, THROTTLE};
use super::FakeLog;

pub const TOKEN: &str = "fake-dingtalk-access-token";
pub const SECRET: &str = "SECfake-dingtalk-sign-secret";
/// Posts a minute a robot accepts.
pub const PER_MINUTE: usize = 20;

/// DingTalk's payloads for what the shared robot flow decides.
const ANSWERS: Answers = Answers {
    sent: || answer(0, "ok"),
    throttled: || answer(130101, "send too fast, exceed 20 times per minute"),
    boom: || (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
};

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    const LIMITS: &[(usize, Duration)] = &[(PER_MINUTE, Duration::from_secs(60))];
    let fake = Robot::new("dingtalk", LIMITS, ANSWERS, log);
    Router::new().route("/robot/send", post(send)).with_state(fake)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The credential check: `Err` carries DingTalk's refusal.
fn check_sign(query: &HashMap<String, String>) -> Result<(), (i64, &'static str)> {
    if query.get("access_token").map(String::as_str) != Some(TOKEN) {
        return Err((300001, "token is not exist"));
    }
    let timestamp = query
        .get("timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or((310000, "sign not match, timestamp missing"))?;
    if (now_ms() - timestamp).abs() > 3_600_000 {
        return Err((310000, "invalid timestamp"));
    }
    let given = query.get("sign").ok_or((310000, "sign not match, sign missing"))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).map_err(|_| (310000, "bad key"))?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(SECRET.as_bytes());
    let expected = B64.encode(mac.finalize().into_bytes());
    if *given != expected {
        return Err((310000, "sign not match"));
    }
    Ok(())
}

fn non_empty_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

/// The documented message shape for the types this fake serves.
fn check_shape(body: &Value) -> Result<(), &'static str> {
    match body.get("msgtype").and_then(Value::as_str) {
        Some("text") if non_empty_str(body.pointer("/text/content")) => {}
        Some("markdown")
            if non_empty_str(body.pointer("/markdown/title")) && non_empty_str(body.pointer("/markdown/text")) => {}
        Some("text" | "markdown") => return Err("missing parameter: content"),
        _ => return Err("missing parameter: msgtype"),
    }
    if let Some(at) = body.get("at") {
        let ok = at.is_object()
            && string_array_or_absent(at.get("atMobiles"))
            && string_array_or_absent(at.get("atUserIds"))
            && at.get("isAtAll").is_none_or(Value::is_boolean);
        if !ok {
            return Err("invalid parameter: at");
        }
    }
    Ok(())
}

async fn send(State(fake): State<Robot>, QueryPost { query, headers, raw }: QueryPost) -> Response {
    let refused = check_sign(&query).err().map(|(code, msg)| answer(code, msg));
    let to = robot::param(&query, "access_token");
    fake.post(TOKEN, to, robot::json_body(&raw), refused, |body| {
        if !robot::is_json(&headers) || body.is_null() {
            return Some(answer(40035, "missing parameter: json"));
        }
        check_shape(body).err().map(|msg| answer(40035, msg))
    })
}
