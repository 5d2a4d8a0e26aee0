//! Fake Twilio Messaging: `POST /2010-04-01/Accounts/{sid}/Messages.json` (mounted under
//! `/twilio`). Checks Basic auth against [`ACCOUNT_SID`]:[`AUTH_TOKEN`] (else 401 `20003`),
//! the form (`To` in E.164, `From` = [`FROM`] or a `MessagingServiceSid` = [`MESSAGING_SERVICE_SID`],
//! `Body` of 1–1,600 characters, `StatusCallback` an http(s) URL when given) and answers
//! 201 with a queued message `sid` (`SM` + 32 hex), or Twilio's error body
//! `{"code","message","more_info","status"}`.
//!
//! Magic recipients (last four digits of `To`):
//! - [`THROTTLED_SUFFIX`] `0001`: 429 `20429` with `Retry-After: ` [`RETRY_AFTER_SECS`];
//! - [`UNSUBSCRIBED_SUFFIX`] `0002`: 400 `21610` (recipient replied STOP);
//! - [`INVALID_SUFFIX`] `0003`: 400 `21211` (invalid `To`);
//! - [`SERVER_ERROR_SUFFIX`] `0004`: 500 `20500`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::{FakeLog, Recorded};

pub const ACCOUNT_SID: &str = "AC00000000000000000000000000fake1";
pub const AUTH_TOKEN: &str = "fake-twilio-auth-token";
pub const FROM: &str = "+15005550006";
pub const MESSAGING_SERVICE_SID: &str = "MG00000000000000000000000000fake1";

pub const THROTTLED_SUFFIX: &str = "0001";
pub const UNSUBSCRIBED_SUFFIX: &str = "0002";
pub const INVALID_SUFFIX: &str = "0003";
pub const SERVER_ERROR_SUFFIX: &str = "0004";
/// The `Retry-After` of a throttled answer.
pub const RETRY_AFTER_SECS: u64 = 7;

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(create_message))
        .with_state(log)
}

/// Twilio's error answer.
fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

/// Whether `Authorization: Basic` carries the fake account's sid and token for this path.
fn authorized(headers: &HeaderMap, path_sid: &str) -> bool {
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = B64.decode(encoded.trim()) else {
        return false;
    };
    let Ok(pair) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = pair.split_once(':') else {
        return false;
    };
    user == ACCOUNT_SID && password == AUTH_TOKEN && path_sid == ACCOUNT_SID
}

/// `+` then 8–15 digits, not starting with 0.
fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

fn new_sid() -> String {
    format!("SM{:032x}", u128::from(ulid::Ulid::new()))
}

async fn create_message(
    State(log): State<FakeLog>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut fields = Map::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        fields.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    let field = |name: &str| fields.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let to = field("To");
    let verified = authorized(&headers, &sid);
    log.push(Recorded {
        provider: "twilio",
        action: "CreateMessage".into(),
        verified,
        to: to.clone(),
        body: Value::Object(fields.clone()),
    });
    if !verified {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let form_ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_ok {
        return error(
            StatusCode::BAD_REQUEST,
            20001,
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    let (from, service) = (field("From"), field("MessagingServiceSid"));
    let text = field("Body");
    let callback = field("StatusCallback");
    if to.is_empty() {
        return error(StatusCode::BAD_REQUEST, 21604, "A 'To' phone number is required.");
    }
    if from.is_empty() && service.is_empty() {
        return error(StatusCode::BAD_REQUEST, 21603, "A 'From' phone number is required.");
    }
    if !from.is_empty() && from != FROM {
        return error(
            StatusCode::BAD_REQUEST,
            21606,
            "The From phone number is not a valid, SMS-capable inbound phone number or short code for your account.",
        );
    }
    if !service.is_empty() && service != MESSAGING_SERVICE_SID {
        return error(StatusCode::BAD_REQUEST, 21701, "The Messaging Service Sid is invalid.");
    }
    if text.is_empty() {
        return error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    }
    if text.chars().count() > 1600 {
        return error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    if !callback.is_empty() && !callback.starts_with("https://") && !callback.starts_with("http://") {
        return error(StatusCode::BAD_REQUEST, 21609, "Invalid StatusCallback URL.");
    }
    if !is_e164(&to) || to.ends_with(INVALID_SUFFIX) {
        return error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    if to.ends_with(THROTTLED_SUFFIX) {
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(RETRY_AFTER_SECS));
        return response;
    }
    if to.ends_with(UNSUBSCRIBED_SUFFIX) {
        return error(
            StatusCode::BAD_REQUEST,
            21610,
            "Attempt to send to unsubscribed recipient",
        );
    }
    if to.ends_with(SERVER_ERROR_SUFFIX) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, 20500, "Internal Server Error");
    }
    let message_sid = new_sid();
    let body = json!({
        "sid": message_sid,
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": text,
        "to": to,
        "from": if from.is_empty() { Value::Null } else { Value::String(from) },
        "messaging_service_sid": if service.is_empty() { Value::Null } else { Value::String(service) },
        "status": if field("MessagingServiceSid").is_empty() { "queued" } else { "accepted" },
        "num_segments": "1",
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message_sid}.json"),
    });
    (StatusCode::CREATED, Json(body)).into_response()
}
