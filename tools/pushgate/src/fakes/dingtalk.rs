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

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{FakeLog, Recorded};

pub const TOKEN: &str = "fake-dingtalk-access-token";
pub const SECRET: &str = "SECfake-dingtalk-sign-secret";
pub const THROTTLE: &str = "#throttle";
pub const BOOM: &str = "#boom";
/// Posts a minute a robot accepts.
pub const PER_MINUTE: usize = 20;

#[derive(Clone)]
struct Fake {
    log: FakeLog,
    /// Accepted posts per robot, for the rate limits.
    posts: super::RateWindow,
}

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    let fake = Fake {
        log,
        posts: super::RateWindow::default(),
    };
    Router::new().route("/robot/send", post(send)).with_state(fake)
}

fn answer(errcode: i64, errmsg: &str) -> Response {
    Json(json!({"errcode": errcode, "errmsg": errmsg})).into_response()
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

fn string_array_or_absent(v: Option<&Value>) -> bool {
    match v {
        None => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    }
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

async fn send(
    State(fake): State<Fake>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let verified = check_sign(&query);
    fake.log.push(Recorded {
        provider: "dingtalk",
        action: "send".into(),
        verified: verified.is_ok(),
        to: query.get("access_token").cloned().unwrap_or_default(),
        body: body.clone(),
    });
    if let Err((code, msg)) = verified {
        return answer(code, msg);
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type || body.is_null() {
        return answer(40035, "missing parameter: json");
    }
    if let Err(msg) = check_shape(&body) {
        return answer(40035, msg);
    }
    let text = body.to_string();
    if text.contains(BOOM) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    }
    if text.contains(THROTTLE) || !fake.posts.admit(TOKEN, &[(PER_MINUTE, Duration::from_secs(60))]) {
        return answer(130101, "send too fast, exceed 20 times per minute");
    }
    answer(0, "ok")
}
