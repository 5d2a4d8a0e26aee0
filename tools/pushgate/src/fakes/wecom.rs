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

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::Value;

use super::robot::{self, errcode as answer, string_array_or_absent, Answers, QueryPost, Robot};
pub use super::robot::{BOOM, THROTTLE};
use super::FakeLog;

pub const KEY: &str = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa";
/// Posts a minute a robot accepts.
pub const PER_MINUTE: usize = 20;

/// WeCom's payloads for what the shared robot flow decides.
const ANSWERS: Answers = Answers {
    sent: || answer(0, "ok"),
    throttled: || answer(45009, "api freq out of limit"),
    boom: || answer(-1, "system busy"),
};

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    const LIMITS: &[(usize, Duration)] = &[(PER_MINUTE, Duration::from_secs(60))];
    let fake = Robot::new("wecom", LIMITS, ANSWERS, log);
    Router::new()
        .route("/cgi-bin/webhook/send", post(send))
        .with_state(fake)
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

async fn send(State(fake): State<Robot>, QueryPost { query, headers, raw }: QueryPost) -> Response {
    let key = robot::param(&query, "key");
    // The webhook key is the robot's only credential.
    let refused = (key != KEY).then(|| {
        answer(
            93000,
            "invalid webhook url, hint: [fake], more info at https://open.work.weixin.qq.com/devtool/query?e=93000",
        )
    });
    fake.post(KEY, key, robot::json_body(&raw), refused, |body| {
        if !robot::is_json(&headers) || body.is_null() {
            return Some(answer(40008, "invalid message type"));
        }
        check_shape(body).err().map(|(code, msg)| answer(code, msg))
    })
}
