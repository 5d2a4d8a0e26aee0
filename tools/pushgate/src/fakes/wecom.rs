//! Fake WeCom group robot: `POST /cgi-bin/webhook/send?key=KEY` (mounted under `/wecom`).
//! One robot, webhook key [`KEY`] (its only credential; any other key: `93000`). Serves
//! `text` (`content` ≤ 2,048 bytes, optional string arrays `mentioned_list` and
//! `mentioned_mobile_list`) and `markdown` (`content` ≤ 4,096 bytes); answers
//! `{"errcode":0,"errmsg":"ok"}`, or:
//! - an unknown `msgtype`: `40008`; empty content: `44004`; content over the limit or a
//!   malformed mention list: `45002` / `40058` (codes of the WeChat family, the fake's choice);
//! - more than [`PER_MINUTE`] posts a minute to the robot: `45009`.
//!
//! Magic content (anywhere in the body): [`THROTTLE`] `#throttle` → `45009`;
//! [`BOOM`] `#boom` → `-1` (system busy).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{FakeLog, Recorded};

pub const KEY: &str = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa";
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
    Router::new()
        .route("/cgi-bin/webhook/send", post(send))
        .with_state(fake)
}

fn answer(errcode: i64, errmsg: &str) -> Response {
    Json(json!({"errcode": errcode, "errmsg": errmsg})).into_response()
}

fn string_array_or_absent(v: Option<&Value>) -> bool {
    match v {
        None => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    }
}

/// The documented message shape, as WeCom's error code.
fn check_shape(body: &Value) -> Result<(), (i64, &'static str)> {
    let (content, limit) = match body.get("msgtype").and_then(Value::as_str) {
        Some("text") => {
            let text = body.get("text");
            if !string_array_or_absent(text.and_then(|t| t.get("mentioned_list")))
                || !string_array_or_absent(text.and_then(|t| t.get("mentioned_mobile_list")))
            {
                return Err((40058, "invalid mentioned_list"));
            }
            (body.pointer("/text/content"), 2048)
        }
        Some("markdown") => (body.pointer("/markdown/content"), 4096),
        _ => return Err((40008, "invalid message type")),
    };
    match content.and_then(Value::as_str) {
        None | Some("") => Err((44004, "empty content")),
        Some(c) if c.len() > limit => Err((45002, "content size out of limit")),
        Some(_) => Ok(()),
    }
}

async fn send(
    State(fake): State<Fake>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let key = query.get("key").cloned().unwrap_or_default();
    let verified = key == KEY;
    fake.log.push(Recorded {
        provider: "wecom",
        action: "send".into(),
        verified,
        to: key,
        body: body.clone(),
    });
    if !verified {
        return answer(
            93000,
            "invalid webhook url, hint: [fake], more info at https://open.work.weixin.qq.com/devtool/query?e=93000",
        );
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type || body.is_null() {
        return answer(40008, "invalid message type");
    }
    if let Err((code, msg)) = check_shape(&body) {
        return answer(code, msg);
    }
    let text = body.to_string();
    if text.contains(BOOM) {
        return answer(-1, "system busy");
    }
    if text.contains(THROTTLE) || !fake.posts.admit(KEY, &[(PER_MINUTE, Duration::from_secs(60))]) {
        return answer(45009, "api freq out of limit");
    }
    answer(0, "ok")
}
