//! Fake Tencent Cloud SMS (`SendSms`, version 2021-01-11) at `/` of its mount.
//!
//! Checks the `X-TC-*` headers and recomputes the TC3-HMAC-SHA256 signature with its own
//! code over whatever `SignedHeaders` the request declares (which must include
//! `content-type` and `host`), then the body. Like Tencent it answers HTTP 200 with
//! `{"Response":{"Error":{"Code","Message"},"RequestId"}}` for request-level errors
//! (`AuthFailure.SignatureFailure` for a bad signature, `AuthFailure.SecretIdNotFound`,
//! `AuthFailure.SignatureExpire` beyond ±5 min, `AuthFailure.InvalidAuthorization`) and
//! per-number results in `SendStatusSet` otherwise.
//!
//! Only [`SECRET_ID`] / [`SECRET_KEY`] and the app [`SDK_APP_ID`] are known. Magic
//! recipients, by the last four digits of a number in `PhoneNumberSet`:
//! - [`SUFFIX_THROTTLE`] `0001` → that number's status `LimitExceeded.PhoneNumberThirtySecondLimit`
//! - [`SUFFIX_QUOTA`] `0002` → request error `FailedOperation.InsufficientBalanceInSmsPackage`
//! - [`SUFFIX_PERMANENT`] `0003` → that number's status `InvalidParameterValue.IncorrectPhoneNumber`
//! - [`SUFFIX_SERVER_ERROR`] `0004` → HTTP 502 with a plain-text body (a gateway failure)
//! - [`SUFFIX_AMBIGUOUS`] `0005` → request error `InternalError.SendAndRecvFail`
//!
//! Every number a `SendSms` sent to is recorded in the [`FakeLog::accepted`] ledger
//! (reference = `SessionContext`, provider id = `SerialNo`), and
//! `PullSmsSendStatusByPhoneNumber` answers from that ledger: the sends to `PhoneNumber`
//! between `BeginTime` and `EndTime` (seconds), oldest first, at most `Limit` (≤ 100;
//! `Offset` must be 0, `BeginTime` at most 7 days back), each reported delivered
//! (`SUCCESS`, `DELIVRD`) as the carrier would. Faults scripted with [`FakeLog::script`]
//! for the first number of `PhoneNumberSet` play on authenticated `SendSms` requests, as
//! for the Aliyun fake: [`Fault::ServerError`] (HTTP 502), [`Fault::Throttle`],
//! [`Fault::Quota`] without sending, [`Fault::HangBefore`] before sending and
//! [`Fault::HangAfter`] after (the answer is lost).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::sms::{request_id, Magic};
use super::{Accepted, FakeLog, Fault, Recorded};

/// The only SecretId the fake knows.
pub const SECRET_ID: &str = "fake-tencent-id";
/// Its key.
pub const SECRET_KEY: &str = "fake-tencent-key";
/// The only SMS application.
pub const SDK_APP_ID: &str = "1400000000";
/// Magic recipients: see the module documentation for Tencent's answer to each.
pub use super::sms::{SUFFIX_PERMANENT, SUFFIX_QUOTA, SUFFIX_SERVER_ERROR, SUFFIX_THROTTLE};
/// Recipients ending in this get `InternalError.SendAndRecvFail` (outcome unknown).
pub const SUFFIX_AMBIGUOUS: &str = "0005";

/// Allowed clock skew of `X-TC-Timestamp`.
const MAX_SKEW_SECS: i64 = 300;

/// How far back `PullSmsSendStatusByPhoneNumber` reaches.
const PULL_DAYS: i64 = 7;
/// Its largest `Limit`.
const PULL_LIMIT: u64 = 100;

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    Router::new().route("/", any(handle)).with_state(log)
}

fn error(code: &str, message: &str) -> Response {
    let body = json!({"Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id()}});
    (StatusCode::OK, Json(body)).into_response()
}

fn hmac(key: &[u8], msg: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Hex TC3-HMAC-SHA256 signature of a canonical request.
fn tc3(secret_key: &str, service: &str, ts: i64, date: &str, canonical: &str) -> String {
    let to_sign = format!(
        "TC3-HMAC-SHA256\n{ts}\n{date}/{service}/tc3_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("TC3{secret_key}").as_bytes(), date);
    let k = hmac(&k, service);
    let k = hmac(&k, "tc3_request");
    hex::encode(hmac(&k, &to_sign))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Authorization: TC3-HMAC-SHA256 Credential=id/date/service/tc3_request,
/// SignedHeaders=a;b, Signature=hex`.
struct Authorization<'a> {
    secret_id: &'a str,
    date: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("TC3-HMAC-SHA256 ")?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => return None,
        }
    }
    let mut scope = credential?.split('/');
    let auth = Authorization {
        secret_id: scope.next()?,
        date: scope.next()?,
        service: scope.next()?,
        terminator: scope.next()?,
        signed_headers: signed_headers?,
        signature: signature?,
    };
    scope.next().is_none().then_some(auth)
}

fn utc_date(timestamp: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(timestamp).ok()?;
    Some(format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
}

fn refuse(code: &str, message: &str) -> Box<Response> {
    Box::new(error(code, message))
}

/// Checks headers and signature: `Err` is the answer to give.
fn verify(headers: &HeaderMap, body: &[u8]) -> Result<(), Box<Response>> {
    let Some(auth) = header(headers, "authorization").and_then(parse_authorization) else {
        return Err(refuse(
            "AuthFailure.InvalidAuthorization",
            "Authorization header is missing or malformed.",
        ));
    };
    let Some(ts) = header(headers, "x-tc-timestamp").and_then(|t| t.parse::<i64>().ok()) else {
        return Err(refuse(
            "MissingParameter",
            "The request is missing a valid X-TC-Timestamp.",
        ));
    };
    if (time::OffsetDateTime::now_utc().unix_timestamp() - ts).abs() > MAX_SKEW_SECS {
        return Err(refuse("AuthFailure.SignatureExpire", "Signature expired."));
    }
    if auth.secret_id != SECRET_ID {
        return Err(refuse("AuthFailure.SecretIdNotFound", "The SecretId is not found."));
    }
    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    if !signed.contains(&"content-type") || !signed.contains(&"host") || signed.iter().any(|h| h.is_empty()) {
        return Err(refuse(
            "AuthFailure.InvalidAuthorization",
            "SignedHeaders must cover content-type and host.",
        ));
    }
    let date = utc_date(ts).unwrap_or_default();
    if auth.date != date || auth.service != "sms" || auth.terminator != "tc3_request" {
        return Err(refuse(
            "AuthFailure.SignatureFailure",
            "The credential scope does not match.",
        ));
    }
    let mut canonical_headers = String::new();
    for name in &signed {
        let value = header(headers, name).unwrap_or_default();
        canonical_headers.push_str(&format!("{}:{}\n", name, value.trim().to_lowercase()));
    }
    let canonical = format!(
        "POST\n/\n\n{canonical_headers}\n{}\n{}",
        auth.signed_headers,
        hex::encode(Sha256::digest(body))
    );
    if tc3(SECRET_KEY, "sms", ts, &date, &canonical) != auth.signature {
        return Err(refuse(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. Please check your signature is correct.",
        ));
    }
    Ok(())
}

/// The answer to an authenticated request, by its `X-TC-Action`.
async fn respond(log: &FakeLog, headers: &HeaderMap, body: &Value) -> Response {
    if header(headers, "x-tc-version") != Some("2021-01-11") {
        return error("NoSuchVersion", "The API version does not exist.");
    }
    if header(headers, "x-tc-region").is_none_or(str::is_empty) {
        return error("MissingParameter", "The request is missing X-TC-Region.");
    }
    if !header(headers, "content-type").is_some_and(|c| c.starts_with("application/json")) {
        return error("InvalidParameter", "Content-Type must be application/json.");
    }
    match header(headers, "x-tc-action") {
        Some("SendSms") => send_with_faults(log, body).await,
        Some("PullSmsSendStatusByPhoneNumber") => pull_by_phone_number(body, &log.accepted("tencent")),
        _ => error("InvalidAction", "The action does not exist."),
    }
}

/// SendSms: the fault scripted for the first number, if any, around the send itself.
async fn send_with_faults(log: &FakeLog, body: &Value) -> Response {
    let first = body["PhoneNumberSet"][0].as_str().unwrap_or_default();
    let fault = log.next_fault(first);
    match fault {
        Some(Fault::ServerError) => return (StatusCode::BAD_GATEWAY, "502 Bad Gateway").into_response(),
        Some(Fault::Throttle) => {
            return error(
                "LimitExceeded.PhoneNumberThirtySecondLimit",
                "the number of sms messages sent from a single mobile number within 30 seconds exceeds the upper limit",
            )
        }
        Some(Fault::Quota) => {
            return error(
                "FailedOperation.InsufficientBalanceInSmsPackage",
                "Insufficient balance in SMS package.",
            )
        }
        // Dropped here by hyper if the client gives up: nothing is sent.
        Some(Fault::HangBefore(wait)) => tokio::time::sleep(wait).await,
        Some(Fault::HangAfter(_)) | None => {}
    }
    let response = send_sms(log, body);
    if let Some(Fault::HangAfter(wait)) = fault {
        // The send is recorded already: only the answer is late.
        tokio::time::sleep(wait).await;
    }
    response
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or_default()
}

/// PullSmsSendStatusByPhoneNumber: the ledger's sends to `PhoneNumber` in the window,
/// every one reported delivered.
fn pull_by_phone_number(body: &Value, accepted: &[Accepted]) -> Response {
    for name in ["BeginTime", "Offset", "Limit", "PhoneNumber", "SmsSdkAppId"] {
        if body[name].is_null() {
            return error("MissingParameter", &format!("The request is missing {name}."));
        }
    }
    if body["SmsSdkAppId"].as_str() != Some(SDK_APP_ID) {
        return error("InvalidParameterValue.SdkAppIdNotExist", "SmsSdkAppId does not exist.");
    }
    let now = now_ms() / 1000;
    let (Some(begin), Some(limit), Some(phone)) = (
        body["BeginTime"].as_i64(),
        body["Limit"].as_u64(),
        body["PhoneNumber"].as_str(),
    ) else {
        return error(
            "InvalidParameter",
            "BeginTime, Limit and PhoneNumber must be given as documented.",
        );
    };
    if body["Offset"].as_u64() != Some(0) {
        return error("InvalidParameterValue", "Offset is currently fixed at 0.");
    }
    if !(1..=PULL_LIMIT).contains(&limit) {
        return error("InvalidParameterValue", "Limit is 1 to 100.");
    }
    if begin < now - PULL_DAYS * 86_400 {
        return error("InvalidParameterValue", "Only the last 7 days can be pulled.");
    }
    let end = body["EndTime"].as_i64().unwrap_or(now);
    let reports: Vec<Value> = accepted
        .iter()
        .filter(|a| a.to == phone && (begin..=end).contains(&(a.at_ms / 1000)))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|a| {
            let (country, subscriber) = match phone.strip_prefix("+86") {
                Some(rest) => ("86", rest),
                None => ("", phone.trim_start_matches('+')),
            };
            json!({
                "UserReceiveTime": a.at_ms / 1000,
                "CountryCode": country,
                "SubscriberNumber": subscriber,
                "PhoneNumber": phone,
                "SerialNo": a.provider_id,
                "ReportStatus": "SUCCESS",
                "Description": "DELIVRD",
                "SessionContext": a.reference,
            })
        })
        .collect();
    let answer = json!({"Response": {"PullSmsSendStatusSet": reports, "RequestId": request_id()}});
    (StatusCode::OK, Json(answer)).into_response()
}

/// What SendSms answers once the request is authenticated; every number sent to is
/// recorded in the ledger.
fn send_sms(log: &FakeLog, body: &Value) -> Response {
    let Some(numbers) = body["PhoneNumberSet"].as_array() else {
        return error("MissingParameter", "The request is missing PhoneNumberSet.");
    };
    let numbers: Vec<&str> = numbers.iter().filter_map(Value::as_str).collect();
    if numbers.is_empty() || numbers.len() > 200 {
        return error(
            "InvalidParameterValue.IncorrectPhoneNumber",
            "PhoneNumberSet holds 1 to 200 numbers.",
        );
    }
    if body["SmsSdkAppId"].as_str() != Some(SDK_APP_ID) {
        return error("InvalidParameterValue.SdkAppIdNotExist", "SmsSdkAppId does not exist.");
    }
    for name in ["TemplateId", "SignName"] {
        if body[name].as_str().is_none_or(str::is_empty) {
            return error("MissingParameter", &format!("The request is missing {name}."));
        }
    }
    let params_ok = match &body["TemplateParamSet"] {
        Value::Null => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    };
    if !params_ok {
        return error(
            "InvalidParameterValue.TemplateParameterFormatError",
            "TemplateParamSet must be an array of strings.",
        );
    }
    // A gateway failure or a spent package fails the whole request; throttled and
    // invalid numbers fail only their own status below.
    match Magic::first(&numbers, &[Magic::ServerError, Magic::Quota]) {
        Some(Magic::ServerError) => return (StatusCode::BAD_GATEWAY, "502 Bad Gateway").into_response(),
        Some(Magic::Quota) => {
            return error(
                "FailedOperation.InsufficientBalanceInSmsPackage",
                "Insufficient balance in SMS package.",
            )
        }
        Some(Magic::Throttle | Magic::Permanent) | None => {}
    }
    if numbers.iter().any(|n| n.ends_with(SUFFIX_AMBIGUOUS)) {
        return error(
            "InternalError.SendAndRecvFail",
            "Failed to send or receive the request.",
        );
    }
    let session = body["SessionContext"].as_str().unwrap_or_default();
    let statuses: Vec<Value> = numbers
        .iter()
        .map(|n| {
            let (code, message) = match Magic::of(n) {
                Some(Magic::Throttle) => (
                    "LimitExceeded.PhoneNumberThirtySecondLimit",
                    "the number of sms messages sent from a single mobile number within 30 seconds exceeds the upper limit",
                ),
                magic if magic == Some(Magic::Permanent) || !n.starts_with('+') => {
                    ("InvalidParameterValue.IncorrectPhoneNumber", "incorrect phone number")
                }
                _ => ("Ok", "send success"),
            };
            let ok = code == "Ok";
            let serial = if ok { format!("2640:{}", ulid::Ulid::new()) } else { String::new() };
            if ok {
                log.accept(Accepted {
                    provider: "tencent",
                    reference: session.to_string(),
                    to: n.to_string(),
                    provider_id: serial.clone(),
                    at_ms: now_ms(),
                });
            }
            json!({
                "SerialNo": serial,
                "PhoneNumber": n,
                "Fee": u8::from(ok),
                "SessionContext": session,
                "Code": code,
                "Message": message,
                "IsoCode": if n.starts_with("+86") { "CN" } else { "XX" },
            })
        })
        .collect();
    let answer = json!({"Response": {"SendStatusSet": statuses, "RequestId": request_id()}});
    (StatusCode::OK, Json(answer)).into_response()
}

async fn handle(State(log): State<FakeLog>, headers: HeaderMap, body: Bytes) -> Response {
    let verdict = verify(&headers, &body);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let to = match parsed["PhoneNumberSet"].as_array() {
        Some(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
        None => parsed["PhoneNumber"].as_str().unwrap_or_default().to_string(),
    };
    // Recorded on arrival: a request whose client gave up during a fault counts too.
    log.push(Recorded {
        provider: "tencent",
        action: header(&headers, "x-tc-action").unwrap_or_default().to_string(),
        verified: verdict.is_ok(),
        to,
        body: parsed.clone(),
    });
    match verdict {
        Ok(()) => respond(&log, &headers, &parsed).await,
        Err(refusal) => *refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fake's own signer reproduces Tencent's published vector (cvm example).
    #[test]
    fn signer_matches_vendor_vector() {
        let payload = r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let canonical = format!(
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\n\
             content-type;host\n{}",
            hex::encode(Sha256::digest(payload.as_bytes()))
        );
        let date = utc_date(1551113065).unwrap();
        assert_eq!(date, "2019-02-25");
        assert_eq!(
            tc3("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "cvm", 1551113065, &date, &canonical),
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    #[test]
    fn authorization_is_parsed() {
        let a = parse_authorization(
            "TC3-HMAC-SHA256 Credential=AKID/2019-02-25/sms/tc3_request, SignedHeaders=content-type;host, Signature=ab",
        )
        .unwrap();
        assert_eq!(
            (a.secret_id, a.date, a.service, a.terminator),
            ("AKID", "2019-02-25", "sms", "tc3_request")
        );
        assert_eq!((a.signed_headers, a.signature), ("content-type;host", "ab"));
        assert!(parse_authorization("HMAC Credential=x").is_none());
        assert!(parse_authorization("TC3-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=h, Signature=s").is_none());
    }

    async fn json_body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn the_pull_answers_from_the_ledger_within_the_documented_limits() {
        let now = now_ms();
        let sent = |reference: &str, to: &str, at_ms: i64| Accepted {
            provider: "tencent",
            reference: reference.into(),
            to: to.into(),
            provider_id: format!("{reference}-serial"),
            at_ms,
        };
        let ledger = vec![
            sent("old", "+8613800138000", now - 3_600_000),
            sent("a", "+8613800138000", now - 1_000),
            sent("b", "+8613900139000", now - 1_000),
        ];
        let query = |begin: i64, limit: u64, offset: u64| {
            json!({"BeginTime": begin, "Offset": offset, "Limit": limit,
                   "PhoneNumber": "+8613800138000", "SmsSdkAppId": SDK_APP_ID})
        };
        let reports = |v: &Value| {
            v["Response"]["PullSmsSendStatusSet"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let recent = json_body(pull_by_phone_number(&query(now / 1000 - 60, 100, 0), &ledger)).await;
        let recent = reports(&recent);
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0]["SessionContext"], "a");
        assert_eq!(recent[0]["SerialNo"], "a-serial");
        assert_eq!(recent[0]["ReportStatus"], "SUCCESS");
        assert_eq!(recent[0]["SubscriberNumber"], "13800138000");
        let day = json_body(pull_by_phone_number(&query(now / 1000 - 7_200, 100, 0), &ledger)).await;
        assert_eq!(reports(&day).len(), 2);
        let one = json_body(pull_by_phone_number(&query(now / 1000 - 7_200, 1, 0), &ledger)).await;
        assert_eq!(reports(&one)[0]["SessionContext"], "old", "oldest first, at most Limit");
        for bad in [
            query(now / 1000, 101, 0),
            query(now / 1000, 0, 0),
            query(now / 1000, 100, 1),
            query(now / 1000 - 8 * 86_400, 100, 0),
        ] {
            let answer = json_body(pull_by_phone_number(&bad, &ledger)).await;
            assert!(answer["Response"]["Error"]["Code"].is_string(), "{bad}");
        }
        let mut missing = query(now / 1000, 100, 0);
        missing.as_object_mut().unwrap().remove("PhoneNumber");
        let answer = json_body(pull_by_phone_number(&missing, &ledger)).await;
        assert_eq!(answer["Response"]["Error"]["Code"], "MissingParameter");
    }
}
