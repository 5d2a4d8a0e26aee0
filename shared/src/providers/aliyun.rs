//! Alibaba Cloud SMS (dysmsapi 2017-05-25) `SendSms`, RPC style, signed with signature v1
//! (HMAC-SHA1) as a form POST to `{endpoint}/`. Only registered templates can be sent.
//! After a lost answer, `QuerySendDetails` (same signing) tells whether the SMS went out.
//! ACS3-HMAC-SHA256 signing is here too (tested against the vendor vector) for the
//! APIs that require it.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::TokenReports;
use super::{transport_error, Provider};
use crate::apps::{AliyunAccount, AppConfig, ProviderAccounts, Receipts};
use crate::clock::Clock;
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Reconciled, Sent};
use crate::message::Status;
use crate::message::{Channel, Message};
use crate::receipts::{Receipt, ReceiptError};
use serde_json::Value;

pub const API_VERSION: &str = "2017-05-25";

/// How long per-number flow control (`isv.BUSINESS_LIMIT_CONTROL`) is waited out.
pub const THROTTLE_RETRY_AFTER: Duration = Duration::from_secs(60);

/// RFC 3986: everything but `A-Za-z0-9-_.~` is escaped (so space is `%20`, `*` is `%2A`).
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encoding of names and values for Aliyun signatures (RFC 3986 style).
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, RFC3986).to_string()
}

/// The canonical query: every parameter but `Signature`, sorted by name, encoded, `&`-joined.
pub fn canonical_query(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .filter(|(k, _)| k.as_str() != "Signature")
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// RPC signature v1 string to sign: `METHOD&%2F&percentEncode(canonical query)`.
pub fn string_to_sign_v1(method: &str, params: &BTreeMap<String, String>) -> String {
    format!("{method}&%2F&{}", percent_encode(&canonical_query(params)))
}

/// RPC signature v1: Base64(HMAC-SHA1(secret + "&", string to sign)).
pub fn sign_rpc_v1(method: &str, params: &BTreeMap<String, String>, access_key_secret: &str) -> String {
    let key = format!("{access_key_secret}&");
    B64.encode(crate::crypto::hmac_sha1(
        key.as_bytes(),
        &[string_to_sign_v1(method, params).as_bytes()],
    ))
}

/// The app's Aliyun account: its AccessKey id.
pub fn account_id(accounts: &ProviderAccounts, _to: &str) -> Option<String> {
    Some(accounts.aliyun.as_ref()?.access_key_id.clone())
}

/// The inputs of an ACS3-HMAC-SHA256 signature. `headers` are the signed headers (names
/// in any case; `host`, `content-type` if sent, and every `x-acs-*`); `query` is decoded.
#[derive(Debug, Clone)]
pub struct Acs3Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a BTreeMap<String, String>,
    pub headers: &'a BTreeMap<String, String>,
    pub body: &'a [u8],
}

/// ACS3 canonical request and the `SignedHeaders` list it covers.
pub fn acs3_canonical_request(req: &Acs3Request<'_>) -> (String, String) {
    let query = req
        .query
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let headers: BTreeMap<String, &str> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .collect();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers.keys().cloned().collect::<Vec<_>>().join(";");
    let canonical = format!(
        "{}\n{}\n{query}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method,
        req.path,
        hex::encode(Sha256::digest(req.body))
    );
    (canonical, signed_headers)
}

/// ACS3-HMAC-SHA256: hex(HMAC-SHA256(secret, "ACS3-HMAC-SHA256\n" + hex(sha256(canonical
/// request)))) and the `Authorization` header value carrying it.
pub fn sign_acs3(req: &Acs3Request<'_>, access_key_id: &str, access_key_secret: &str) -> (String, String) {
    let (canonical, signed_headers) = acs3_canonical_request(req);
    let to_sign = format!(
        "ACS3-HMAC-SHA256\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let signature = hex::encode(crate::crypto::hmac_sha256(
        access_key_secret.as_bytes(),
        &[to_sign.as_bytes()],
    ));
    let authorization =
        format!("ACS3-HMAC-SHA256 Credential={access_key_id},SignedHeaders={signed_headers},Signature={signature}");
    (signature, authorization)
}

/// Aliyun's `PhoneNumbers` form: country code and number without `+` (the SendSms doc
/// gives `1390000****` / `86…` for the mainland and `852000012**` for elsewhere).
pub fn phone_number(e164: &str) -> &str {
    e164.strip_prefix('+').unwrap_or(e164)
}

/// Aliyun's `Timestamp` format, UTC.
fn timestamp(now: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    now.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_default()
}

/// Classifies an answer by its `Code` (if any) and HTTP status (providers.md).
pub fn classify(status: u16, code: Option<&str>) -> ErrorClass {
    match code {
        Some("isv.BUSINESS_LIMIT_CONTROL") => ErrorClass::Deferrable,
        Some("isv.DAY_LIMIT_CONTROL" | "isv.MONTH_LIMIT_CONTROL" | "MONTH_LIMIT_CONTROL" | "isv.AMOUNT_NOT_ENOUGH") => {
            ErrorClass::Quota
        }
        Some("isp.SYSTEM_ERROR") => ErrorClass::Retryable,
        // API gateway flow control: the request was refused before any send.
        Some(c) if c.starts_with("Throttling") => ErrorClass::Deferrable,
        Some(c) if c.starts_with("isv.") => ErrorClass::Permanent,
        _ => match status {
            429 => ErrorClass::Deferrable,
            500..=599 => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        },
    }
}

/// An RPC answer: the common `Code` and `Message`, and the fields of the actions used here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    code: Option<String>,
    message: Option<String>,
    /// SendSms: the send's id.
    biz_id: Option<String>,
    /// QuerySendDetails: matches over all pages (a number, or a string in older answers).
    total_count: Option<serde_json::Value>,
    /// QuerySendDetails: this page's matches.
    #[serde(rename = "SmsSendDetailDTOs")]
    details: Option<SendDetails>,
}

impl Answer {
    fn total_count(&self) -> u64 {
        let count = self.total_count.as_ref();
        count
            .and_then(serde_json::Value::as_u64)
            .or_else(|| count?.as_str()?.parse().ok())
            .unwrap_or(0)
    }

    fn details(&self) -> &[SendDetail] {
        self.details.as_ref().map(|d| d.list.as_slice()).unwrap_or_default()
    }
}

#[derive(Debug, Default, Deserialize)]
struct SendDetails {
    #[serde(rename = "SmsSendDetailDTO", default)]
    list: Vec<SendDetail>,
}

/// One send in a QuerySendDetails answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendDetail {
    /// Our message id, as given to SendSms.
    out_id: Option<String>,
    /// 1 waiting for a receipt, 2 failed, 3 delivered.
    send_status: Option<i64>,
    /// The carrier's code (`DELIVERED` on success).
    err_code: Option<String>,
    /// Not documented in the DTO; used when present.
    biz_id: Option<String>,
}

/// `SendStatus` of a delivered SMS.
const STATUS_DELIVERED: i64 = 3;
/// `SendStatus` of an SMS the carrier failed.
const STATUS_FAILED: i64 = 2;

/// QuerySendDetails' largest page.
const QUERY_PAGE_SIZE: u64 = 50;

/// Aliyun keeps SMS days (`SendDate`) in China time.
const CHINA: time::UtcOffset = time::macros::offset!(+8);

/// Aliyun keeps send records queryable for 30 days.
const QUERY_DAYS: i64 = 30;

/// The China-time days (`yyyyMMdd`) a message created at `created_at_ms` may have been
/// sent on by `now_ms`: every day from its creation to now (a lost attempt may have come
/// after backoffs and deferrals), at most the last [`QUERY_DAYS`]. `None` for an
/// instant out of range.
fn send_dates(created_at_ms: i64, now_ms: i64) -> Option<Vec<String>> {
    let f = time::macros::format_description!("[year][month][day]");
    let china = |ms: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
        Some(t.to_offset(CHINA).date())
    };
    let last = china(now_ms.max(created_at_ms))?;
    let mut day = china(created_at_ms)?.max(last - time::Duration::days(QUERY_DAYS - 1));
    let mut out = Vec::new();
    while day <= last {
        out.push(day.format(&f).ok()?);
        day = day.next_day()?;
    }
    Some(out)
}

/// The app's Aliyun account, or a permanent error.
fn account(app: &AppConfig) -> Result<&AliyunAccount, ProviderError> {
    app.providers
        .aliyun
        .as_ref()
        .ok_or_else(|| ProviderError::new(ErrorClass::Permanent, "no_account", "the app has no Aliyun SMS account"))
}

pub struct Aliyun {
    http: reqwest::Client,
    endpoint: String,
    /// Signs requests (`Timestamp`) and bounds the days a reconcile asks about.
    clock: Clock,
}

impl Aliyun {
    /// `endpoint` is the base URL without trailing slash (`https://dysmsapi.aliyuncs.com`).
    pub fn new(http: reqwest::Client, endpoint: String, clock: Clock) -> Self {
        Self { http, endpoint, clock }
    }

    /// One RPC call: `params` plus the common ones and a fresh nonce, signed (v1) and
    /// POSTed as a form. The answer if its `Code` is `OK`, else the error it means.
    async fn call(
        &self,
        account: &AliyunAccount,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<Answer, ProviderError> {
        let nonce = ulid::Ulid::new().to_string();
        let now = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from((self.clock)()) * 1_000_000)
            .map(timestamp)
            .unwrap_or_default();
        let mut params: BTreeMap<String, String> = [
            ("Action", action),
            ("Version", API_VERSION),
            ("Format", "JSON"),
            ("AccessKeyId", account.access_key_id.as_str()),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", nonce.as_str()),
            ("Timestamp", now.as_str()),
        ]
        .iter()
        .chain(params)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let signature = sign_rpc_v1("POST", &params, &account.access_key_secret);
        params.insert("Signature".into(), signature);
        let body = params
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");

        let response = self
            .http
            // The base URL as is: a bare host means path `/`, and a prefixed fake (axum's
            // nest serves `/aliyun`, not `/aliyun/`) is reached too.
            .post(&self.endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
        let answer: Option<Answer> = serde_json::from_slice(&bytes).ok();
        let code = answer.as_ref().and_then(|a| a.code.as_deref());
        if (200..300).contains(&status) && code == Some("OK") {
            return Ok(answer.unwrap_or_default());
        }
        let Some(code) = code else {
            return Err(super::unreadable_answer("Aliyun", status, "a Code"));
        };
        let class = classify(status, Some(code));
        let text = answer.as_ref().and_then(|a| a.message.clone()).unwrap_or_default();
        let error = ProviderError::new(class, code, text);
        Err(if class == ErrorClass::Deferrable {
            error.retry_after(THROTTLE_RETRY_AFTER)
        } else {
            error
        })
    }
}

#[async_trait::async_trait]
impl Provider for Aliyun {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
    }

    fn name(&self) -> &'static str {
        "aliyun"
    }

    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn on_ambiguous(&self) -> Ambiguity {
        // SendSms is not idempotent (a second call is a second SMS), so after a lost
        // answer ask QuerySendDetails whether it was sent, as providers.md advises.
        Ambiguity::Reconcile
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let account = account(app)?;
        let template = message
            .content
            .sms
            .as_ref()
            .and_then(|s| s.aliyun.as_ref())
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorClass::Permanent,
                    "no_template",
                    "Aliyun only sends registered templates: content.sms.aliyun is missing",
                )
            })?;
        let template_param = serde_json::to_string(&template.params)
            .map_err(|e| ProviderError::new(ErrorClass::Permanent, "encode", e.to_string()))?;
        let params = [
            ("PhoneNumbers", phone_number(&message.to)),
            ("SignName", account.sign_name.as_str()),
            ("TemplateCode", template.template_code.as_str()),
            ("TemplateParam", template_param.as_str()),
            ("OutId", message.id.as_str()),
        ];
        let answer = self.call(account, "SendSms", &params).await?;
        Ok(Sent {
            provider_message_id: answer.biz_id,
            delivered: false,
        })
    }

    /// Looks for our id among the sends QuerySendDetails lists (see [`Aliyun::detail`]).
    async fn reconcile(&self, message: &Message, app: &AppConfig) -> Result<Reconciled, ProviderError> {
        Ok(match self.detail(account(app)?, message).await? {
            Some(found) => Reconciled::Sent(Sent {
                provider_message_id: found.biz_id.clone(),
                delivered: found.send_status == Some(STATUS_DELIVERED),
            }),
            None => Reconciled::NotSent,
        })
    }

    fn pulls_receipts(&self, app: &AppConfig) -> bool {
        app.providers
            .aliyun
            .as_ref()
            .is_some_and(|a| a.receipts == Receipts::Pull)
    }

    /// The send's `SendStatus` as QuerySendDetails tells it: delivered or failed is its
    /// receipt, waiting (1) is none yet.
    async fn pull_receipt(&self, message: &Message, app: &AppConfig) -> Result<Option<Receipt>, ProviderError> {
        let detail = self.detail(account(app)?, message).await?;
        let fallback = message.provider_message_id.as_deref();
        Ok(detail.and_then(|d| pulled_receipt(&d, &message.pk, fallback)))
    }
}

/// The receipt a send's detail gives record `pk` (sent as `biz_id`), if its status is
/// final.
fn pulled_receipt(d: &SendDetail, pk: &str, biz_id: Option<&str>) -> Option<Receipt> {
    let status = match d.send_status? {
        STATUS_DELIVERED => Status::Delivered,
        STATUS_FAILED => Status::Failed,
        _ => return None,
    };
    Some(Receipt {
        provider: "aliyun",
        pk: Some(pk.to_string()),
        id: None,
        provider_message_id: d.biz_id.clone().or_else(|| biz_id.map(str::to_string)),
        status,
        note: format!("aliyun: {} (pulled)", d.err_code.as_deref().unwrap_or_default()),
        // The same code a pushed report carries, for receipt rules.
        code: match status {
            Status::Failed => d.err_code.clone().unwrap_or_default(),
            _ => String::new(),
        },
    })
}

impl Aliyun {
    /// Pages through QuerySendDetails for the recipient on the day(s) the message may
    /// have been sent, looking for our id as `OutId`.
    async fn detail(&self, account: &AliyunAccount, message: &Message) -> Result<Option<SendDetail>, ProviderError> {
        let days = send_dates(message.created_at, (self.clock)()).ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Ambiguous,
                "created_at",
                format!("created_at {} is out of range", message.created_at),
            )
        })?;
        let page_size = QUERY_PAGE_SIZE.to_string();
        for day in &days {
            for page in 1u64.. {
                let current = page.to_string();
                let params = [
                    ("PhoneNumber", phone_number(&message.to)),
                    ("SendDate", day.as_str()),
                    ("PageSize", page_size.as_str()),
                    ("CurrentPage", current.as_str()),
                ];
                let answer = self.call(account, "QuerySendDetails", &params).await?;
                let details = answer.details();
                if let Some(found) = details
                    .iter()
                    .find(|d| d.out_id.as_deref() == Some(message.id.as_str()))
                {
                    return Ok(Some(found.clone()));
                }
                if details.is_empty() || page * QUERY_PAGE_SIZE >= answer.total_count() {
                    break;
                }
            }
        }
        Ok(None)
    }
}

// Receipts: Aliyun pushes SmsReport batches to `/v1/callbacks/aliyun`.

/// One report of an Aliyun SmsReport push; `out_id` is our message id.
fn report(r: &Value) -> Result<Receipt, ReceiptError> {
    let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
    let success = r
        .get("success")
        .and_then(Value::as_bool)
        .ok_or(ReceiptError::Unrecognised("report without success"))?;
    Ok(Receipt {
        provider: "aliyun",
        pk: None,
        id: text("out_id").filter(|s| !s.is_empty()),
        provider_message_id: text("biz_id"),
        status: if success { Status::Delivered } else { Status::Failed },
        note: format!("aliyun: {}", text("err_code").unwrap_or_default()),
        code: match success {
            true => String::new(),
            false => text("err_code").unwrap_or_default(),
        },
    })
}

/// Aliyun SmsReport pushes, authenticated by the shared callback token (Aliyun documents
/// no signature); Aliyun pushes again unless it reads `{"code": 0, "msg": "success"}`.
pub static RECEIPTS: TokenReports = TokenReports {
    name: "aliyun",
    channel: Channel::Sms,
    report,
    ack: || serde_json::json!({"code": 0, "msg": "success"}),
    // Aliyun's reports carry our OutId: they never wait for the send's record.
    early: false,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipts::parse_reports;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// help.aliyun.com RPC signature doc example.
    #[test]
    fn rpc_v1_describe_regions_vector() {
        let params = map(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]);
        assert_eq!(
            sign_rpc_v1("GET", &params, "testsecret"),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        // A Signature already present is not part of what is signed.
        let mut with_sig = params.clone();
        with_sig.insert("Signature".into(), "x".into());
        assert_eq!(
            sign_rpc_v1("GET", &with_sig, "testsecret"),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
    }

    /// darabonba-openapi-util SDK test.
    #[test]
    fn rpc_v1_darabonba_vector() {
        let params = map(&[("query", "test"), ("body", "test")]);
        assert_eq!(string_to_sign_v1("GET", &params), "GET&%2F&body%3Dtest%26query%3Dtest");
        assert_eq!(sign_rpc_v1("GET", &params, "secret"), "XlUyV4sXjOuX5FnjUz9IF9tm5rU=");
    }

    #[test]
    fn percent_encoding_is_rfc3986() {
        assert_eq!(percent_encode("a b*c~d-_.+/:"), "a%20b%2Ac~d-_.%2B%2F%3A");
        assert_eq!(percent_encode("短信"), "%E7%9F%AD%E4%BF%A1");
    }

    /// alibabacloud.com "V3 request structure and signature" fixed-value example.
    #[test]
    fn acs3_vendor_vector() {
        let query = map(&[
            ("ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"),
            ("RegionId", "cn-shanghai"),
        ]);
        let headers = map(&[
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            (
                "x-acs-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ]);
        let req = Acs3Request {
            method: "POST",
            path: "/",
            query: &query,
            headers: &headers,
            body: b"",
        };
        let (canonical, signed) = acs3_canonical_request(&req);
        assert_eq!(
            signed,
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
        );
        assert_eq!(
            hex::encode(Sha256::digest(canonical.as_bytes())),
            "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        let (signature, authorization) = sign_acs3(&req, "YourAccessKeyId", "YourAccessKeySecret");
        assert_eq!(
            signature,
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
        assert_eq!(
            authorization,
            "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;\
             x-acs-date;x-acs-signature-nonce;x-acs-version,\
             Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn codes_are_classified() {
        assert_eq!(
            classify(200, Some("isv.BUSINESS_LIMIT_CONTROL")),
            ErrorClass::Deferrable
        );
        assert_eq!(classify(200, Some("isv.DAY_LIMIT_CONTROL")), ErrorClass::Quota);
        assert_eq!(classify(200, Some("isv.MONTH_LIMIT_CONTROL")), ErrorClass::Quota);
        assert_eq!(classify(200, Some("isv.AMOUNT_NOT_ENOUGH")), ErrorClass::Quota);
        for code in [
            "isv.MOBILE_NUMBER_ILLEGAL",
            "isv.OUT_OF_SERVICE",
            "isv.SMS_SIGNATURE_ILLEGAL",
            "isv.SMS_TEMPLATE_ILLEGAL",
            "isv.TEMPLATE_MISSING_PARAMETERS",
            "isv.INVALID_PARAMETERS",
            "isv.BLACK_KEY_CONTROL_LIMIT",
        ] {
            assert_eq!(classify(200, Some(code)), ErrorClass::Permanent, "{code}");
        }
        assert_eq!(classify(500, Some("isp.SYSTEM_ERROR")), ErrorClass::Retryable);
        assert_eq!(classify(200, Some("isp.SYSTEM_ERROR")), ErrorClass::Retryable);
        assert_eq!(classify(400, Some("SignatureDoesNotMatch")), ErrorClass::Permanent);
        assert_eq!(classify(503, Some("ServiceUnavailable")), ErrorClass::Retryable);
        assert_eq!(classify(502, None), ErrorClass::Retryable);
        assert_eq!(classify(404, None), ErrorClass::Permanent);
    }

    #[test]
    fn phone_numbers_lose_the_plus() {
        assert_eq!(phone_number("+8613800138000"), "8613800138000");
        assert_eq!(phone_number("+85200001234"), "85200001234");
    }

    fn ms(t: time::OffsetDateTime) -> i64 {
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }

    #[test]
    fn send_dates_are_china_days_from_creation_to_now() {
        use time::macros::datetime;
        // 00:05 in Beijing is still the previous day in UTC.
        let created = ms(datetime!(2026-11-25 00:05 +8));
        assert_eq!(send_dates(created, created + 1000), Some(vec!["20261125".into()]));
        assert_eq!(
            send_dates(created, ms(datetime!(2026-11-26 00:01 +8))),
            Some(vec!["20261125".into(), "20261126".into()])
        );
        assert_eq!(
            send_dates(ms(datetime!(2026-12-31 23:55 +8)), ms(datetime!(2027-01-01 00:10 +8))),
            Some(vec!["20261231".into(), "20270101".into()])
        );
        // Never more than Aliyun keeps.
        let long = send_dates(created, ms(datetime!(2027-03-01 12:00 +8))).unwrap();
        assert_eq!((long.len(), long.last().map(String::as_str)), (30, Some("20270301")));
        assert_eq!(send_dates(i64::MAX, i64::MAX), None);
    }

    #[test]
    fn query_answers_are_read() {
        let answer: Answer = serde_json::from_value(serde_json::json!({
            "Code": "OK", "Message": "OK", "RequestId": "r", "TotalCount": 2,
            "SmsSendDetailDTOs": {"SmsSendDetailDTO": [
                {"PhoneNum": "8613800138000", "SendStatus": 3, "ErrCode": "DELIVERED", "TemplateCode": "SMS_1",
                 "Content": "c", "SendDate": "2026-11-25 10:00:00", "ReceiveDate": "2026-11-25 10:00:05", "OutId": "a"},
                {"PhoneNum": "8613800138000", "SendStatus": 1, "BizId": "b^0", "OutId": "b"},
            ]},
        }))
        .unwrap();
        assert_eq!(answer.total_count(), 2);
        let details = answer.details();
        assert_eq!(details.len(), 2);
        assert_eq!(
            (
                details[0].out_id.as_deref(),
                details[0].send_status,
                details[0].biz_id.as_deref()
            ),
            (Some("a"), Some(STATUS_DELIVERED), None)
        );
        assert_eq!(details[1].biz_id.as_deref(), Some("b^0"));

        // Older answers give TotalCount as a string; an empty day has no DTOs.
        let answer: Answer =
            serde_json::from_value(serde_json::json!({"Code": "OK", "TotalCount": "0", "SmsSendDetailDTOs": {}}))
                .unwrap();
        assert_eq!(answer.total_count(), 0);
        assert!(answer.details().is_empty());
        let answer: Answer = serde_json::from_value(serde_json::json!({"Code": "OK"})).unwrap();
        assert_eq!((answer.total_count(), answer.details().len()), (0, 0));
    }

    #[test]
    fn timestamp_format() {
        let t = time::macros::datetime!(2017-05-25 12:00:00 UTC);
        assert_eq!(timestamp(t), "2017-05-25T12:00:00Z");
    }

    #[test]
    fn sms_reports_parse() {
        let a = parse_reports(
            br#"[{"phone_number":"138","success":true,"err_code":"DELIVERED","biz_id":"b1","out_id":"01ID"}]"#,
            report,
        )
        .unwrap();
        assert_eq!((a[0].status, a[0].id.as_deref()), (Status::Delivered, Some("01ID")));
    }

    #[test]
    fn send_details_with_a_final_status_are_receipts() {
        let detail = |status: i64, code: &str| SendDetail {
            out_id: Some("id".into()),
            send_status: Some(status),
            err_code: Some(code.into()),
            biz_id: None,
        };
        let r = pulled_receipt(&detail(3, "DELIVERED"), "app_s_1", Some("b^0")).unwrap();
        assert_eq!(
            (r.status, r.pk.as_deref(), r.provider_message_id.as_deref()),
            (Status::Delivered, Some("app_s_1"), Some("b^0"))
        );
        assert_eq!(r.note, "aliyun: DELIVERED (pulled)");
        let r = pulled_receipt(&detail(2, "MK:0001"), "app_s_1", None).unwrap();
        assert_eq!(
            (r.status, r.note.as_str()),
            (Status::Failed, "aliyun: MK:0001 (pulled)")
        );
        assert!(pulled_receipt(&detail(1, ""), "app_s_1", None).is_none(), "waiting");
    }
}
