//! Fake Alibaba Cloud SMS (dysmsapi 2017-05-25, RPC style) at `/` of its mount.
//!
//! Accepts `SendSms` and `QuerySendDetails` as GET query or form POST, signed with RPC
//! signature v1 (HMAC-SHA1), which it recomputes with its own code from the raw
//! parameters. It answers as Aliyun documents: `SignatureDoesNotMatch` (HTTP 400) for a
//! bad signature, `InvalidAccessKeyId.NotFound` (404) for an unknown key,
//! `InvalidTimeStamp.Expired` (400) beyond ±15 min, `SignatureNonceUsed` (400) on a
//! replayed nonce, `Missing<Name>` (400) for a missing parameter, and
//! `{"Code":"OK","BizId":…}` on success.
//!
//! Every successful `SendSms` is recorded in the [`FakeLog::accepted`] ledger (reference
//! = `OutId`, provider id = `BizId`); `QuerySendDetails` answers from that ledger, by
//! `PhoneNumber` and China-time (UTC+8) `SendDate`, paged, every send delivered
//! (`SendStatus` 3). The fake knows no template texts: `Content` is the sign name and the
//! `TemplateParam`.
//!
//! Only [`ACCESS_KEY_ID`] / [`ACCESS_KEY_SECRET`] are known. Magic recipients, by the
//! last four digits of any number in `PhoneNumbers`:
//! - [`SUFFIX_THROTTLE`] `0001` → `isv.BUSINESS_LIMIT_CONTROL` (HTTP 200)
//! - [`SUFFIX_QUOTA`] `0002` → `isv.AMOUNT_NOT_ENOUGH` (HTTP 200)
//! - [`SUFFIX_PERMANENT`] `0003` → `isv.MOBILE_NUMBER_ILLEGAL` (HTTP 200)
//! - [`SUFFIX_SERVER_ERROR`] `0004` → `isp.SYSTEM_ERROR` with HTTP 500
//!
//! Faults scripted with [`FakeLog::script`] for a `PhoneNumbers` value are played on the
//! authenticated `SendSms` requests to it, one each, in order: [`Fault::ServerError`]
//! answers `isp.SYSTEM_ERROR` (HTTP 500) and [`Fault::Quota`] `isv.AMOUNT_NOT_ENOUGH`
//! (HTTP 200), both without sending, [`Fault::HangBefore`] waits before sending (a
//! client that gives up meanwhile leaves nothing sent), and [`Fault::HangAfter`] sends,
//! then waits before answering (the answer is lost).

use std::collections::{BTreeMap, HashMap, HashSet};
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

use super::sms::{self, Magic};
use super::{Accepted, FakeLog, Fault, Recorded};

/// The only AccessKeyId the fake knows.
pub const ACCESS_KEY_ID: &str = "fake-aliyun-id";
/// Its secret.
pub const ACCESS_KEY_SECRET: &str = "fake-aliyun-secret";
/// Magic recipients: see the module documentation for Aliyun's answer to each.
pub use super::sms::{SUFFIX_PERMANENT, SUFFIX_QUOTA, SUFFIX_SERVER_ERROR, SUFFIX_THROTTLE};

/// Allowed clock skew of `Timestamp`.
const MAX_SKEW_SECS: i64 = 15 * 60;

/// The largest `PageSize` QuerySendDetails takes.
const MAX_PAGE_SIZE: usize = 50;

/// Aliyun's days (`SendDate`) are China time.
const CHINA: time::UtcOffset = time::macros::offset!(+8);

#[derive(Clone)]
struct Fake {
    log: FakeLog,
    nonces: Arc<Mutex<HashSet<String>>>,
    /// What QuerySendDetails tells of a send beyond the ledger, by `BizId`.
    texts: Arc<Mutex<HashMap<String, SmsText>>>,
}

/// The template and content of an accepted send.
#[derive(Debug, Clone, Default)]
struct SmsText {
    template_code: String,
    content: String,
}

impl Fake {
    fn new(log: FakeLog) -> Self {
        Self {
            log,
            nonces: Arc::default(),
            texts: Arc::default(),
        }
    }
}

/// The fake's routes (mounted under its prefix).
pub fn router(log: FakeLog) -> Router {
    Router::new().route("/", any(handle)).with_state(Fake::new(log))
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
        "RequestId": sms::request_id(),
        "Code": code,
        "Message": message,
        "HostId": "dysmsapi.aliyuncs.com",
    });
    (status, Json(body)).into_response()
}

/// Aliyun's answer to a magic recipient, and to the scripted faults that play the same
/// refusals.
fn magic_answer(magic: Magic) -> Response {
    match magic {
        Magic::Throttle => answer(
            StatusCode::OK,
            "isv.BUSINESS_LIMIT_CONTROL",
            "触发号码天级流控Permits:1",
        ),
        Magic::Quota => answer(StatusCode::OK, "isv.AMOUNT_NOT_ENOUGH", "账户余额不足"),
        Magic::Permanent => answer(StatusCode::OK, "isv.MOBILE_NUMBER_ILLEGAL", "非法手机号"),
        Magic::ServerError => answer(StatusCode::INTERNAL_SERVER_ERROR, "isp.SYSTEM_ERROR", "系统错误"),
    }
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

/// The answer to an authenticated request.
async fn respond(fake: &Fake, params: &BTreeMap<String, String>) -> Response {
    let action = params.get("Action").map(String::as_str).unwrap_or_default();
    if !matches!(action, "SendSms" | "QuerySendDetails") {
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
    if action == "SendSms" {
        return send_sms(fake, params).await;
    }
    let accepted = fake.log.accepted("aliyun");
    let texts = fake.texts.lock().map(|t| t.clone()).unwrap_or_default();
    query_send_details(params, &accepted, &texts)
}

/// Answers `Missing<Name>` for the first of `names` absent or empty.
fn require(params: &BTreeMap<String, String>, names: &[&str]) -> Result<(), Box<Response>> {
    match names.iter().find(|n| params.get(**n).is_none_or(|v| v.is_empty())) {
        Some(name) => Err(refuse(
            StatusCode::BAD_REQUEST,
            &format!("Missing{name}"),
            &format!("{name} is mandatory for this action."),
        )),
        None => Ok(()),
    }
}

/// SendSms: the fault scripted for the recipient, if any, around the send itself.
async fn send_sms(fake: &Fake, params: &BTreeMap<String, String>) -> Response {
    let fault = fake
        .log
        .next_fault(params.get("PhoneNumbers").map(String::as_str).unwrap_or_default());
    match fault {
        Some(Fault::ServerError) => return magic_answer(Magic::ServerError),
        // Minute-level flow control, where the magic recipient hits the daily one.
        Some(Fault::Throttle) => {
            return answer(
                StatusCode::OK,
                "isv.BUSINESS_LIMIT_CONTROL",
                "触发号码分钟级流控Permits:1",
            );
        }
        Some(Fault::Quota) => return magic_answer(Magic::Quota),
        // Dropped here by hyper if the client gives up: nothing is sent.
        Some(Fault::HangBefore(wait)) => tokio::time::sleep(wait).await,
        Some(Fault::HangAfter(_)) | None => {}
    }
    let response = match check_send(params) {
        Ok(()) => accept(fake, params),
        Err(refusal) => *refusal,
    };
    if let Some(Fault::HangAfter(wait)) = fault {
        // The send is recorded already: only the answer is late.
        tokio::time::sleep(wait).await;
    }
    response
}

/// Why SendSms refuses these parameters, if it does.
fn check_send(params: &BTreeMap<String, String>) -> Result<(), Box<Response>> {
    require(params, &["PhoneNumbers", "SignName", "TemplateCode"])?;
    if let Some(p) = params.get("TemplateParam") {
        let ok = serde_json::from_str::<Value>(p)
            .ok()
            .and_then(|v| v.as_object().map(|o| o.values().all(Value::is_string)))
            .unwrap_or(false);
        if !ok {
            return Err(refuse(
                StatusCode::OK,
                "isv.INVALID_JSON_PARAM",
                "JSON参数不合法，只接受字符串值",
            ));
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
        return Err(refuse(StatusCode::OK, "isv.MOBILE_NUMBER_ILLEGAL", "非法手机号"));
    }
    const PRECEDENCE: [Magic; 4] = [Magic::Throttle, Magic::Quota, Magic::Permanent, Magic::ServerError];
    match Magic::first(&numbers, &PRECEDENCE) {
        Some(magic) => Err(Box::new(magic_answer(magic))),
        None => Ok(()),
    }
}

/// Performs a checked send: records it in the ledger and answers its `BizId`.
fn accept(fake: &Fake, params: &BTreeMap<String, String>) -> Response {
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let biz_id = format!("{}^0", ulid::Ulid::new());
    let text = SmsText {
        template_code: get("TemplateCode"),
        content: format!("【{}】{}", get("SignName"), get("TemplateParam")),
    };
    if let Ok(mut texts) = fake.texts.lock() {
        texts.insert(biz_id.clone(), text);
    }
    let at_ms = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or_default();
    fake.log.accept(Accepted {
        provider: "aliyun",
        reference: get("OutId"),
        to: get("PhoneNumbers"),
        provider_id: biz_id.clone(),
        at_ms,
    });
    let body = json!({
        "Code": "OK",
        "Message": "OK",
        "BizId": biz_id,
        "RequestId": sms::request_id(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// `at_ms` in China time, formatted by `f`.
fn china_time(at_ms: i64, f: &[time::format_description::FormatItem<'_>]) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .map(|t| t.to_offset(CHINA))
        .ok()
        .and_then(|t| t.format(f).ok())
        .unwrap_or_default()
}

/// QuerySendDetails: the sends in `accepted` to `PhoneNumber` on the China-time day
/// `SendDate`, one page of them.
fn query_send_details(
    params: &BTreeMap<String, String>,
    accepted: &[Accepted],
    texts: &HashMap<String, SmsText>,
) -> Response {
    if let Err(refusal) = require(params, &["PhoneNumber", "SendDate", "PageSize", "CurrentPage"]) {
        return *refusal;
    }
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    let phone = get("PhoneNumber");
    let day_format = time::macros::format_description!("[year][month][day]");
    let day = get("SendDate");
    let page_size = get("PageSize")
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_PAGE_SIZE).contains(n));
    let page = get("CurrentPage").parse::<usize>().ok().filter(|n| *n >= 1);
    let (Some(page_size), Some(page), true) = (
        page_size,
        page,
        time::Date::parse(day, &day_format).is_ok() && day.len() == 8,
    ) else {
        return answer(StatusCode::OK, "isv.INVALID_PARAMETERS", "参数异常");
    };
    let matches: Vec<&Accepted> = accepted
        .iter()
        .filter(|a| a.to.split(',').any(|n| n.trim() == phone) && china_time(a.at_ms, day_format) == day)
        .collect();
    let date_time = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let dtos: Vec<Value> = matches
        .iter()
        .skip((page - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|a| {
            let text = texts.get(&a.provider_id).cloned().unwrap_or_default();
            let sent = china_time(a.at_ms, date_time);
            let mut dto = json!({
                "PhoneNum": phone,
                "SendStatus": 3,
                "ErrCode": "DELIVERED",
                "TemplateCode": text.template_code,
                "Content": text.content,
                "SendDate": sent,
                "ReceiveDate": sent,
            });
            if !a.reference.is_empty() {
                dto["OutId"] = json!(a.reference);
            }
            dto
        })
        .collect();
    let body = json!({
        "Code": "OK",
        "Message": "OK",
        "RequestId": sms::request_id(),
        "TotalCount": matches.len(),
        "SmsSendDetailDTOs": {"SmsSendDetailDTO": dtos},
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
    // Recorded on arrival: a request whose client gave up during a fault counts too.
    fake.log.push(Recorded {
        provider: "aliyun",
        action: params.get("Action").cloned().unwrap_or_default(),
        verified: verdict.is_ok(),
        to: params
            .get("PhoneNumbers")
            .or_else(|| params.get("PhoneNumber"))
            .cloned()
            .unwrap_or_default(),
        body: Value::Object(
            params
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    });
    match verdict {
        Ok(()) => respond(&fake, &params).await,
        Err(refusal) => *refusal,
    }
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

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    async fn json_body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn ms(t: time::OffsetDateTime) -> i64 {
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }

    #[tokio::test]
    async fn magic_recipients_answer_as_documented() {
        let fake = Fake::new(FakeLog::default());
        let mut params = params(&[
            ("Action", "SendSms"),
            ("Version", "2017-05-25"),
            ("SignName", "S"),
            ("TemplateCode", "T"),
        ]);
        for (suffix, status) in [
            (SUFFIX_THROTTLE, StatusCode::OK),
            (SUFFIX_QUOTA, StatusCode::OK),
            (SUFFIX_PERMANENT, StatusCode::OK),
            (SUFFIX_SERVER_ERROR, StatusCode::INTERNAL_SERVER_ERROR),
            ("8000", StatusCode::OK),
        ] {
            params.insert("PhoneNumbers".into(), format!("86138000{suffix}"));
            assert_eq!(respond(&fake, &params).await.status(), status, "{suffix}");
        }
        let accepted = fake.log.accepted("aliyun");
        assert_eq!(accepted.len(), 1, "only the good number was sent to");
        assert_eq!(accepted[0].to, "861380008000");
    }

    #[tokio::test]
    async fn scripted_server_error_sends_nothing() {
        let fake = Fake::new(FakeLog::default());
        fake.log.script("8613800138000", vec![Fault::ServerError]);
        let params = params(&[
            ("Action", "SendSms"),
            ("Version", "2017-05-25"),
            ("PhoneNumbers", "8613800138000"),
            ("SignName", "S"),
            ("TemplateCode", "T"),
            ("OutId", "m1"),
        ]);
        let first = respond(&fake, &params).await;
        assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json_body(first).await["Code"], "isp.SYSTEM_ERROR");
        assert!(fake.log.accepted("aliyun").is_empty());
        // The fault was for one request only.
        let second = json_body(respond(&fake, &params).await).await;
        assert_eq!(second["Code"], "OK");
        let accepted = fake.log.accepted("aliyun");
        assert_eq!(accepted.len(), 1);
        assert_eq!(
            (accepted[0].reference.as_str(), accepted[0].provider_id.as_str()),
            ("m1", second["BizId"].as_str().unwrap())
        );
    }

    fn ledger() -> (Vec<Accepted>, HashMap<String, SmsText>) {
        use time::macros::datetime;
        let sent = |reference: &str, to: &str, at: time::OffsetDateTime| Accepted {
            provider: "aliyun",
            reference: reference.into(),
            to: to.into(),
            provider_id: format!("{reference}^0"),
            at_ms: ms(at),
        };
        let accepted = vec![
            sent("a", "8613800138000", datetime!(2026-11-25 10:00:00 +8)),
            sent("other", "8613900139000", datetime!(2026-11-25 10:00:00 +8)),
            // 00:30 in Beijing, still the 25th in UTC.
            sent("next", "8613800138000", datetime!(2026-11-26 00:30:00 +8)),
            sent("b", "8613900139000,8613800138000", datetime!(2026-11-25 11:00:00 +8)),
            sent("", "8613800138000", datetime!(2026-11-25 12:00:00 +8)),
        ];
        let texts = HashMap::from([(
            "a^0".to_string(),
            SmsText {
                template_code: "SMS_1".into(),
                content: "【Pushgate】{\"code\":\"1234\"}".into(),
            },
        )]);
        (accepted, texts)
    }

    fn query(day: &str, size: &str, page: &str) -> BTreeMap<String, String> {
        params(&[
            ("PhoneNumber", "8613800138000"),
            ("SendDate", day),
            ("PageSize", size),
            ("CurrentPage", page),
        ])
    }

    #[tokio::test]
    async fn query_send_details_answers_the_documented_shape() {
        let (accepted, texts) = ledger();
        let response = query_send_details(&query("20261125", "50", "1"), &accepted, &texts);
        assert_eq!(response.status(), StatusCode::OK);
        let body = json_body(response).await;
        assert_eq!((&body["Code"], &body["Message"]), (&json!("OK"), &json!("OK")));
        assert!(body["RequestId"].is_string());
        assert_eq!(body["TotalCount"], 3);
        let dtos = body["SmsSendDetailDTOs"]["SmsSendDetailDTO"].as_array().unwrap();
        assert_eq!(
            dtos[0],
            json!({
                "PhoneNum": "8613800138000",
                "SendStatus": 3,
                "ErrCode": "DELIVERED",
                "TemplateCode": "SMS_1",
                "Content": "【Pushgate】{\"code\":\"1234\"}",
                "SendDate": "2026-11-25 10:00:00",
                "ReceiveDate": "2026-11-25 10:00:00",
                "OutId": "a",
            })
        );
        assert_eq!(dtos[1]["OutId"], "b", "one of several numbers of a send");
        assert!(dtos[2].get("OutId").is_none(), "no OutId was given");

        // China-time days: 00:30 on the 26th in Beijing is the 26th.
        let body = json_body(query_send_details(&query("20261126", "50", "1"), &accepted, &texts)).await;
        assert_eq!(body["TotalCount"], 1);
        assert_eq!(body["SmsSendDetailDTOs"]["SmsSendDetailDTO"][0]["OutId"], "next");
        assert_eq!(
            body["SmsSendDetailDTOs"]["SmsSendDetailDTO"][0]["SendDate"],
            "2026-11-26 00:30:00"
        );
        let body = json_body(query_send_details(&query("20261124", "50", "1"), &accepted, &texts)).await;
        assert_eq!(body["TotalCount"], 0);
        assert_eq!(body["SmsSendDetailDTOs"]["SmsSendDetailDTO"], json!([]));
    }

    #[tokio::test]
    async fn query_send_details_pages() {
        let (accepted, texts) = ledger();
        let page = |n: &str| json_body(query_send_details(&query("20261125", "2", n), &accepted, &texts));
        let first = page("1").await;
        let second = page("2").await;
        let third = page("3").await;
        for body in [&first, &second, &third] {
            assert_eq!(body["TotalCount"], 3);
        }
        let ids = |body: &Value| -> Vec<Value> {
            body["SmsSendDetailDTOs"]["SmsSendDetailDTO"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["OutId"].clone())
                .collect()
        };
        assert_eq!(ids(&first), vec![json!("a"), json!("b")]);
        assert_eq!(ids(&second), vec![Value::Null]);
        assert!(ids(&third).is_empty());
    }

    #[tokio::test]
    async fn query_send_details_refuses_bad_parameters() {
        let (accepted, texts) = ledger();
        for name in ["PhoneNumber", "SendDate", "PageSize", "CurrentPage"] {
            let mut params = query("20261125", "50", "1");
            params.remove(name);
            let response = query_send_details(&params, &accepted, &texts);
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}");
            assert_eq!(json_body(response).await["Code"], format!("Missing{name}"));
        }
        for (day, size, page) in [
            ("2026-11-25", "50", "1"),
            ("20261325", "50", "1"),
            ("20261125", "51", "1"),
            ("20261125", "0", "1"),
            ("20261125", "50", "0"),
        ] {
            let body = json_body(query_send_details(&query(day, size, page), &accepted, &texts)).await;
            assert_eq!(body["Code"], "isv.INVALID_PARAMETERS", "{day} {size} {page}");
        }
    }
}
