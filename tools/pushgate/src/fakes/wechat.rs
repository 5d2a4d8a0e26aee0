//! Fake WeChat Official Account API: `POST /cgi-bin/stable_token` and
//! `POST /cgi-bin/message/template/send?access_token=…` (providers.md, WeChat).
//!
//! Tokens behave like WeChat's: 512 characters, `expires_in: 7200`; normal mode returns
//! the current token while it is valid, `force_refresh: true` invalidates every earlier
//! token. Sends are checked for a valid token (else `40001`) and the documented body
//! shape (else `47003`). Every token request is recorded as action `stable_token` (the
//! secret is not recorded) and every send as action `send` (`to` = `touser`, `verified`
//! = the token was valid). The magic OpenIDs and template id below answer with errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{FakeLog, Recorded};

/// The account's appid.
pub const APPID: &str = "wx1234567890abcdef";
/// The account's AppSecret.
pub const SECRET: &str = "fake-wechat-app-secret";
/// Recipient who does not follow the account: `43004`.
pub const OPENID_NOT_FOLLOWER: &str = "o_not_follower";
/// Recipient whose sends meet a busy system: `-1`.
pub const OPENID_BUSY: &str = "o_system_busy";
/// Recipient whose sends hit the daily quota: `45009`.
pub const OPENID_DAILY_QUOTA: &str = "o_daily_quota";
/// A malformed OpenID: `40003`.
pub const OPENID_INVALID: &str = "o_invalid_openid";
/// The first send to this recipient invalidates every token issued so far (as a forced
/// refresh elsewhere would) and answers `40001`; later sends to it succeed.
pub const OPENID_REVOKE_TOKENS: &str = "o_revoke_tokens";
/// Every send to this recipient answers `40001`, whatever the token.
pub const OPENID_ALWAYS_40001: &str = "o_always_40001";
/// A template id the account does not have: `40037`.
pub const TEMPLATE_INVALID: &str = "tpl_invalid";

/// Lifetime of an issued token, in seconds.
pub const EXPIRES_IN: u64 = 7200;

#[derive(Default)]
struct Tokens {
    /// Valid tokens and when they expire.
    valid: HashMap<String, Instant>,
    /// The token normal mode hands out while it is valid.
    current: Option<String>,
    revoked_once: bool,
    next_msgid: u64,
}

#[derive(Clone)]
struct Fake {
    log: FakeLog,
    tokens: Arc<Mutex<Tokens>>,
}

/// A 512-character token, unique per call.
fn new_token() -> String {
    let seed = ulid::Ulid::new().to_string();
    (0..8u8)
        .map(|i| hex::encode(Sha256::digest(format!("{seed}/{i}").as_bytes())))
        .collect()
}

fn err(errcode: i64, errmsg: &str) -> Json<Value> {
    Json(json!({"errcode": errcode, "errmsg": format!("{errmsg} rid: fake")}))
}

async fn stable_token(State(fake): State<Fake>, body: Bytes) -> Json<Value> {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let field = |name: &str| req.get(name).and_then(Value::as_str).unwrap_or_default();
    let force = req.get("force_refresh").and_then(Value::as_bool).unwrap_or(false);
    let verified = field("appid") == APPID && field("secret") == SECRET;
    fake.log.push(Recorded {
        provider: "wechat",
        action: "stable_token".into(),
        verified,
        to: field("appid").to_string(),
        body: json!({"grant_type": field("grant_type"), "appid": field("appid"), "force_refresh": force}),
    });
    if field("grant_type") != "client_credential" {
        return err(40002, "invalid grant_type");
    }
    if field("appid") != APPID {
        return err(40013, "invalid appid");
    }
    if field("secret") != SECRET {
        return err(40125, "invalid appsecret");
    }
    let Ok(mut t) = fake.tokens.lock() else {
        return err(-1, "system error");
    };
    let now = Instant::now();
    t.valid.retain(|_, until| *until > now);
    if force {
        t.valid.clear();
        t.current = None;
    }
    if let Some(current) = t.current.clone() {
        if let Some(until) = t.valid.get(&current) {
            let left = until.saturating_duration_since(now).as_secs();
            return Json(json!({"access_token": current, "expires_in": left}));
        }
    }
    let token = new_token();
    t.valid.insert(token.clone(), now + Duration::from_secs(EXPIRES_IN));
    t.current = Some(token.clone());
    Json(json!({"access_token": token, "expires_in": EXPIRES_IN}))
}

/// The documented body: `touser`, `template_id`, optional `url`, `data{key:{value}}`.
fn shape_error(body: &Value) -> Option<&'static str> {
    let nonempty = |name: &str| body.get(name).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    if !nonempty("touser") {
        return Some("touser missing");
    }
    if !nonempty("template_id") {
        return Some("template_id missing");
    }
    if body.get("url").is_some_and(|u| !u.is_string()) {
        return Some("url invalid");
    }
    let Some(data) = body.get("data").and_then(Value::as_object) else {
        return Some("data missing");
    };
    if data.values().any(|v| {
        v.as_object()
            .and_then(|o| o.get("value"))
            .and_then(Value::as_str)
            .is_none()
    }) {
        return Some("data.value invalid");
    }
    None
}

async fn send(State(fake): State<Fake>, Query(query): Query<HashMap<String, String>>, body: Bytes) -> Json<Value> {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let touser = req
        .get("touser")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Ok(mut t) = fake.tokens.lock() else {
        return err(-1, "system error");
    };
    let token = query.get("access_token").cloned().unwrap_or_default();
    let verified = t.valid.get(&token).is_some_and(|until| *until > Instant::now());
    fake.log.push(Recorded {
        provider: "wechat",
        action: "send".into(),
        verified,
        to: touser.clone(),
        body: req.clone(),
    });
    if token.is_empty() {
        return err(41001, "access_token missing");
    }
    if !verified {
        return err(40001, "invalid credential, access_token is invalid or not latest");
    }
    if touser == OPENID_REVOKE_TOKENS && !t.revoked_once {
        t.revoked_once = true;
        t.valid.clear();
        t.current = None;
        return err(40001, "invalid credential, access_token is invalid or not latest");
    }
    if touser == OPENID_ALWAYS_40001 {
        return err(40001, "invalid credential, access_token is invalid or not latest");
    }
    if let Some(why) = shape_error(&req) {
        return err(47003, &format!("argument invalid! {why}"));
    }
    if req.get("template_id").and_then(Value::as_str) == Some(TEMPLATE_INVALID) {
        return err(40037, "invalid template_id");
    }
    match touser.as_str() {
        OPENID_NOT_FOLLOWER => return err(43004, "require subscribe"),
        OPENID_BUSY => return err(-1, "system error"),
        OPENID_DAILY_QUOTA => return err(45009, "reach max api daily quota limit"),
        OPENID_INVALID => return err(40003, "invalid openid"),
        _ => {}
    }
    t.next_msgid += 1;
    let msgid = 2_000_000_000_000u64 + t.next_msgid;
    Json(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
}

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    let fake = Fake {
        log,
        tokens: Arc::new(Mutex::new(Tokens::default())),
    };
    Router::new()
        .route("/cgi-bin/stable_token", post(stable_token))
        .route("/cgi-bin/message/template/send", post(send))
        .with_state(fake)
}
