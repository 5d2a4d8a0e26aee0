//! Fake Alibaba Cloud SMS (dysmsapi 2017-05-25, RPC style) at `/` of its mount.
//!
//! Accepts `SendSms` as GET query or form POST, signed with RPC signature v1
//! (HMAC-SHA1), which it recomputes with its own code from the raw parameters. It
//! answers as Aliyun documents: `SignatureDoesNotMatch` (HTTP 400) for a bad signature,
//! `InvalidAccessKeyId.NotFound` (404) for an unknown key, `InvalidTimeStamp.Expired`
//! (400) beyond ±15 min, `SignatureNonceUsed` (400) on a replayed nonce, `Missing<Name>`
//! (400) for a missing parameter, and `{"Code":"OK","BizId":…}` on success.
//!
//! Only [`ACCESS_KEY_ID`] / [`ACCESS_KEY_SECRET`] are known. Magic recipients, by the
//! last four digits of any number in `PhoneNumbers`:
//! - [`SUFFIX_THROTTLE`] `0001` → `isv.BUSINESS_LIMIT_CONTROL` (HTTP 200)
//! - [`SUFFIX_QUOTA`] `0002` → `isv.AMOUNT_NOT_ENOUGH` (HTTP 200)
//! - [`SUFFIX_PERMANENT`] `0003` → `isv.MOBILE_NUMBER_ILLEGAL` (HTTP 200)
//! - [`SUFFIX_SERVER_ERROR`] `0004` → `isp.SYSTEM_ERROR` with HTTP 500

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use super::{FakeLog, Recorded};

/// The only AccessKeyId the fake knows.
pub const ACCESS_KEY_ID: &str = "fake-aliyun-id";
/// Its secret.
pub const ACCESS_KEY_SECRET: &str = "fake-aliyun-secret";
/// Recipients ending in this are flow-controlled (`isv.BUSINESS_LIMIT_CONTROL`).
pub const SUFFIX_THROTTLE: &str = "0001";
/// Recipients ending in this find the balance spent (`isv.AMOUNT_NOT_ENOUGH`).
pub const SUFFIX_QUOTA: &str = "0002";
/// Recipients ending in this are invalid (`isv.MOBILE_NUMBER_ILLEGAL`).
pub const SUFFIX_PERMANENT: &str = "0003";
/// Recipients ending in this get `isp.SYSTEM_ERROR` with HTTP 500.
pub const SUFFIX_SERVER_ERROR: &str = "0004";

/// Allowed clock skew of `Timestamp`.
const MAX_SKEW_SECS: i64 = 15 * 60;

#[derive(Clone)]
struct Fake {
    log: FakeLog,
    nonces: Arc<Mutex<HashSet<String>>>,
}

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    let fake = Fake {
        log,
        nonces: Arc::default(),
    };
    Router::new().route("/", any(handle)).with_state(fake)
}

/// RFC 3986 percent-encoding, written out here so the fake does not share the
/// provider's code.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn expected_signature(method: &str, params: &BTreeMap<String, String>, secret: &str) -> (String, String) {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "Signature")
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    pairs.sort();
    let canonical: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let to_sign = format!("{method}&{}&{}", encode("/"), encode(&canonical.join("&")));
    let mut mac =
        <Hmac<sha1::Sha1> as Mac>::new_from_slice(format!("{secret}&").as_bytes()).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (sig, to_sign)
}

fn answer(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "RequestId": ulid::Ulid::new().to_string(),
        "Code": code,
        "Message": message,
        "HostId": "dysmsapi.aliyuncs.com",
    });
    (status, Json(body)).into_response()
}

fn unix_time(timestamp: &str) -> Option<i64> {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::PrimitiveDateTime::parse(timestamp, &f)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Box<Response> {
    Box::new(answer(status, code, message))
}

/// Checks the common parameters and the signature: `Err` is the answer to give.
fn verify(fake: &Fake, method: &str, params: &BTreeMap<String, String>) -> Result<(), Box<Response>> {
    for name in [
        "Action",
        "Version",
        "AccessKeyId",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "Timestamp",
        "Signature",
    ] {
        if params.get(name).is_none_or(|v| v.is_empty()) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                &format!("Missing{name}"),
                &format!("{name} is mandatory for this action."),
            ));
        }
    }
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    if get("SignatureMethod") != "HMAC-SHA1" {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "InvalidSignatureMethod",
            "Specified signature method is not valid.",
        ));
    }
    if get("SignatureVersion") != "1.0" {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "InvalidSignatureVersion",
            "Specified signature version is not valid.",
        ));
    }
    if get("AccessKeyId") != ACCESS_KEY_ID {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        ));
    }
    let Some(at) = unix_time(get("Timestamp")) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "InvalidTimeStamp.Format",
            "Specified time stamp is not valid.",
        ));
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - at).abs() > MAX_SKEW_SECS {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        ));
    }
    let (expected, to_sign) = expected_signature(method, params, ACCESS_KEY_SECRET);
    if get("Signature") != expected {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "SignatureDoesNotMatch",
            &format!("Specified signature is not matched with our calculation. server string to sign is:{to_sign}"),
        ));
    }
    let fresh = fake
        .nonces
        .lock()
        .map(|mut n| n.insert(get("SignatureNonce").to_string()))
        .unwrap_or(true);
    if !fresh {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        ));
    }
    Ok(())
}

/// What SendSms answers once the request is authenticated.
fn send_sms(params: &BTreeMap<String, String>) -> Response {
    if params.get("Action").map(String::as_str) != Some("SendSms") {
        return answer(
            StatusCode::NOT_FOUND,
            "InvalidAction.NotFound",
            "Specified api is not found.",
        );
    }
    if params.get("Version").map(String::as_str) != Some("2017-05-25") {
        return answer(
            StatusCode::BAD_REQUEST,
            "InvalidVersion",
            "Specified parameter Version is not valid.",
        );
    }
    for name in ["PhoneNumbers", "SignName", "TemplateCode"] {
        if params.get(name).is_none_or(|v| v.is_empty()) {
            return answer(
                StatusCode::BAD_REQUEST,
                &format!("Missing{name}"),
                &format!("{name} is mandatory for this action."),
            );
        }
    }
    if let Some(p) = params.get("TemplateParam") {
        let ok = serde_json::from_str::<Value>(p)
            .ok()
            .and_then(|v| v.as_object().map(|o| o.values().all(Value::is_string)))
            .unwrap_or(false);
        if !ok {
            return answer(
                StatusCode::OK,
                "isv.INVALID_JSON_PARAM",
                "JSON参数不合法，只接受字符串值",
            );
        }
    }
    let numbers: Vec<&str> = params
        .get("PhoneNumbers")
        .map(|p| p.split(',').map(str::trim).collect())
        .unwrap_or_default();
    if numbers.len() > 1000
        || numbers
            .iter()
            .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return answer(StatusCode::OK, "isv.MOBILE_NUMBER_ILLEGAL", "非法手机号");
    }
    let has = |suffix: &str| numbers.iter().any(|n| n.ends_with(suffix));
    if has(SUFFIX_THROTTLE) {
        return answer(
            StatusCode::OK,
            "isv.BUSINESS_LIMIT_CONTROL",
            "触发号码天级流控Permits:1",
        );
    }
    if has(SUFFIX_QUOTA) {
        return answer(StatusCode::OK, "isv.AMOUNT_NOT_ENOUGH", "账户余额不足");
    }
    if has(SUFFIX_PERMANENT) {
        return answer(StatusCode::OK, "isv.MOBILE_NUMBER_ILLEGAL", "非法手机号");
    }
    if has(SUFFIX_SERVER_ERROR) {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, "isp.SYSTEM_ERROR", "系统错误");
    }
    let body = json!({
        "Code": "OK",
        "Message": "OK",
        "BizId": format!("{}^0", ulid::Ulid::new()),
        "RequestId": ulid::Ulid::new().to_string(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn handle(State(fake): State<Fake>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    // RPC parameters may come in the query, the form body, or both.
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    if let Some(q) = uri.query() {
        params.extend(url::form_urlencoded::parse(q.as_bytes()).into_owned());
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        params.extend(url::form_urlencoded::parse(&body).into_owned());
    }
    let verdict = verify(&fake, method.as_str(), &params);
    let verified = verdict.is_ok();
    let response = match verdict {
        Ok(()) => send_sms(&params),
        Err(refusal) => *refusal,
    };
    fake.log.push(Recorded {
        provider: "aliyun",
        action: params.get("Action").cloned().unwrap_or_default(),
        verified,
        to: params.get("PhoneNumbers").cloned().unwrap_or_default(),
        body: Value::Object(params.into_iter().map(|(k, v)| (k, Value::String(v))).collect()),
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fake's own signer reproduces the vendor's published v1 vectors.
    #[test]
    fn signer_matches_vendor_vectors() {
        let params: BTreeMap<String, String> = [
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            expected_signature("GET", &params, "testsecret").0,
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        let params: BTreeMap<String, String> = [("query", "test"), ("body", "test")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (sig, to_sign) = expected_signature("GET", &params, "secret");
        assert_eq!(to_sign, "GET&%2F&body%3Dtest%26query%3Dtest");
        assert_eq!(sig, "XlUyV4sXjOuX5FnjUz9IF9tm5rU=");
    }

    #[test]
    fn magic_recipients_answer_as_documented() {
        let mut params: BTreeMap<String, String> = [
            ("Action", "SendSms"),
            ("Version", "2017-05-25"),
            ("SignName", "S"),
            ("TemplateCode", "T"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (suffix, status) in [
            (SUFFIX_THROTTLE, StatusCode::OK),
            (SUFFIX_QUOTA, StatusCode::OK),
            (SUFFIX_PERMANENT, StatusCode::OK),
            (SUFFIX_SERVER_ERROR, StatusCode::INTERNAL_SERVER_ERROR),
            ("8000", StatusCode::OK),
        ] {
            params.insert("PhoneNumbers".into(), format!("86138000{suffix}"));
            assert_eq!(send_sms(&params).status(), status, "{suffix}");
        }
    }
}
