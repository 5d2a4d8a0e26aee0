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
//! - [`SERVER_ERROR_SUFFIX`] `0004`: 500 `20500`;
//! - [`UNDELIVERED_SUFFIX`] `0005`: created, then reported `undelivered` (`30003`).
//!
//! Every message created is kept in the fake's ledger (and in [`FakeLog::accepted`],
//! provider id = its SID) and, as the carrier would, delivered at once (`delivered`,
//! `date_sent` = `date_created`). `GET Messages/{sid}.json` fetches one (404 `20404` if
//! none) and `GET Messages.json` lists them newest first, filtered by `To` and `From`,
//! paged by `PageSize` (≤ 1,000) and `Page` with a `next_page_uri`, all under the same
//! Basic auth. Faults scripted with [`FakeLog::script`] for a `To` play on the
//! authenticated creates to it, as for the SMS fakes: [`Fault::ServerError`] (500
//! `20500`) and [`Fault::Throttle`] (429 `20429`) create nothing, [`Fault::HangBefore`]
//! waits before creating, [`Fault::HangAfter`] creates then waits (the answer is lost);
//! [`Fault::Quota`] has no Twilio counterpart and plays nothing.

use axum::body::Bytes;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::{Accepted, FakeLog, Fault, Recorded};

pub const ACCOUNT_SID: &str = "AC00000000000000000000000000fake1";
pub const AUTH_TOKEN: &str = "fake-twilio-auth-token";
pub const FROM: &str = "+15005550006";
pub const MESSAGING_SERVICE_SID: &str = "MG00000000000000000000000000fake1";

pub const THROTTLED_SUFFIX: &str = "0001";
pub const UNSUBSCRIBED_SUFFIX: &str = "0002";
pub const INVALID_SUFFIX: &str = "0003";
pub const SERVER_ERROR_SUFFIX: &str = "0004";
pub const UNDELIVERED_SUFFIX: &str = "0005";
/// The `Retry-After` of a throttled answer.
pub const RETRY_AFTER_SECS: u64 = 7;

/// The fake's state: the request log and the messages it created, oldest first.
#[derive(Clone)]
struct Fake {
    log: FakeLog,
    messages: Arc<Mutex<Vec<Value>>>,
}

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(create_message).get(list_messages),
        )
        .route("/2010-04-01/Accounts/{sid}/Messages/{file}", get(fetch_message))
        .with_state(Fake {
            log,
            messages: Arc::default(),
        })
}

/// RFC 2822, as Twilio dates its resources.
fn rfc2822(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

/// A message as fetched or listed: what the carrier made of it by now.
fn as_stored(created: &Value) -> Value {
    let mut m = created.clone();
    let undelivered = m["to"].as_str().is_some_and(|t| t.ends_with(UNDELIVERED_SUFFIX));
    m["status"] = json!(if undelivered { "undelivered" } else { "delivered" });
    m["date_sent"] = m["date_created"].clone();
    if undelivered {
        m["error_code"] = json!(30003);
        m["error_message"] = json!("Unreachable destination handset");
    }
    m
}

async fn fetch_message(
    State(fake): State<Fake>,
    Path((sid, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let verified = authorized(&headers, &sid);
    let message_sid = file.strip_suffix(".json").unwrap_or_default().to_string();
    fake.log.push(Recorded {
        provider: "twilio",
        action: "FetchMessage".into(),
        verified,
        to: String::new(),
        body: json!({"Sid": message_sid}),
    });
    if !verified {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let messages = fake.messages.lock().map(|m| m.clone()).unwrap_or_default();
    match messages.iter().find(|m| m["sid"] == message_sid.as_str()) {
        Some(m) => (StatusCode::OK, Json(as_stored(m))).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{sid}/Messages/{file} was not found"),
        ),
    }
}

async fn list_messages(
    State(fake): State<Fake>,
    Path(sid): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let verified = authorized(&headers, &sid);
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    fake.log.push(Recorded {
        provider: "twilio",
        action: "ListMessages".into(),
        verified,
        to: param("To").unwrap_or_default().to_string(),
        body: Value::Object(query.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
    });
    if !verified {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let page_size = param("PageSize").map_or(Some(50), |p| p.parse::<usize>().ok());
    let Some(page_size) = page_size.filter(|n| (1..=1000).contains(n)) else {
        return error(StatusCode::BAD_REQUEST, 20001, "PageSize must be 1 to 1000");
    };
    let Some(page) = param("Page").map_or(Some(0), |p| p.parse::<usize>().ok()) else {
        return error(StatusCode::BAD_REQUEST, 20001, "Page must be a number");
    };
    let messages = fake.messages.lock().map(|m| m.clone()).unwrap_or_default();
    let matching: Vec<Value> = messages
        .iter()
        .rev()
        .filter(|m| param("To").is_none_or(|to| m["to"] == to))
        .filter(|m| param("From").is_none_or(|from| m["from"] == from))
        .map(as_stored)
        .collect();
    let uri = |page: usize| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for name in ["To", "From"] {
            if let Some(v) = param(name) {
                q.append_pair(name, v);
            }
        }
        q.append_pair("PageSize", &page_size.to_string());
        q.append_pair("Page", &page.to_string());
        format!("/2010-04-01/Accounts/{sid}/Messages.json?{}", q.finish())
    };
    let start = page.saturating_mul(page_size);
    let items: Vec<Value> = matching.iter().skip(start).take(page_size).cloned().collect();
    let more = start.saturating_add(page_size) < matching.len();
    let body = json!({
        "messages": items,
        "page": page,
        "page_size": page_size,
        "start": start,
        "end": start + items.len().saturating_sub(1),
        "uri": uri(page),
        "first_page_uri": uri(0),
        "previous_page_uri": if page > 0 { Value::String(uri(page - 1)) } else { Value::Null },
        "next_page_uri": if more { Value::String(uri(page + 1)) } else { Value::Null },
    });
    (StatusCode::OK, Json(body)).into_response()
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
    State(fake): State<Fake>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let log = &fake.log;
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
    let fault = log.next_fault(&to);
    match fault {
        Some(Fault::ServerError) => return error(StatusCode::INTERNAL_SERVER_ERROR, 20500, "Internal Server Error"),
        Some(Fault::Throttle) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(RETRY_AFTER_SECS));
            return response;
        }
        // Dropped here by hyper if the client gives up: nothing is created.
        Some(Fault::HangBefore(wait)) => tokio::time::sleep(wait).await,
        Some(Fault::HangAfter(_) | Fault::Quota) | None => {}
    }
    let message_sid = new_sid();
    let now = time::OffsetDateTime::now_utc();
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
        "date_created": rfc2822(now),
        "date_sent": null,
        "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message_sid}.json"),
    });
    if let Ok(mut messages) = fake.messages.lock() {
        messages.push(body.clone());
    }
    log.accept(Accepted {
        provider: "twilio",
        reference: String::new(),
        to: to.clone(),
        provider_id: message_sid.clone(),
        at_ms: i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or_default(),
    });
    if let Some(Fault::HangAfter(wait)) = fault {
        // The message exists already: only the answer is late.
        tokio::time::sleep(wait).await;
    }
    (StatusCode::CREATED, Json(body)).into_response()
}
