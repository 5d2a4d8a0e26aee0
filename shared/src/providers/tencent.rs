//! Tencent Cloud SMS (2021-01-11) `SendSms`: a JSON POST to `{endpoint}/` signed with
//! TC3-HMAC-SHA256. Results come per number in `SendStatusSet`; a request-level failure
//! comes as `Response.Error`. Only registered templates can be sent.

use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::TokenReports;
use super::{transport_error, Provider};
use crate::apps::{AppConfig, ProviderAccounts};
use crate::clock::Clock;
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::Status;
use crate::message::{Channel, Message};
use crate::receipts::{Receipt, ReceiptError};
use serde_json::Value;

pub const SERVICE: &str = "sms";
pub const API_VERSION: &str = "2021-01-11";
pub const CONTENT_TYPE: &str = "application/json; charset=utf-8";

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    crate::crypto::hmac_sha256(key, &[data]).to_vec()
}

/// UTC `yyyy-MM-dd` of a unix timestamp (the credential scope date).
pub fn scope_date(timestamp: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from_unix_timestamp(timestamp)
        .ok()
        .and_then(|t| t.format(&f).ok())
        .unwrap_or_default()
}

/// TC3 canonical request for a POST to `/` without query, and its `SignedHeaders`.
/// Header names and values are lowercased and trimmed, sorted by name.
pub fn canonical_request(headers: &[(&str, &str)], payload: &[u8]) -> (String, String) {
    let mut hs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
        .collect();
    hs.sort();
    let canonical_headers: String = hs.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = hs.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    let canonical = format!(
        "POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}",
        hex::encode(Sha256::digest(payload))
    );
    (canonical, signed_headers)
}

/// TC3-HMAC-SHA256 signature (hex) of a canonical request, for `service` at `timestamp`.
pub fn sign_tc3(secret_key: &str, service: &str, timestamp: i64, canonical_request: &str) -> String {
    let date = scope_date(timestamp);
    let to_sign = format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac_sha256(&k_date, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    hex::encode(hmac_sha256(&k_signing, to_sign.as_bytes()))
}

/// The `Authorization` header value.
pub fn authorization(secret_id: &str, service: &str, timestamp: i64, signed_headers: &str, signature: &str) -> String {
    format!(
        "TC3-HMAC-SHA256 Credential={secret_id}/{}/{service}/tc3_request, SignedHeaders={signed_headers}, \
         Signature={signature}",
        scope_date(timestamp)
    )
}

/// Classifies a Tencent error code (per number or request level), with how long to wait
/// for the deferrable ones.
pub fn classify(code: &str) -> (ErrorClass, Option<Duration>) {
    match code {
        "LimitExceeded.PhoneNumberThirtySecondLimit" => (ErrorClass::Deferrable, Some(Duration::from_secs(30))),
        "LimitExceeded.PhoneNumberOneHourLimit" => (ErrorClass::Deferrable, Some(Duration::from_secs(3600))),
        c if c.starts_with("LimitExceeded.PhoneNumber") => (ErrorClass::Deferrable, Some(Duration::from_secs(3600))),
        "LimitExceeded.DeliveryFrequencyLimit" => (ErrorClass::Deferrable, Some(Duration::from_secs(60))),
        // API rate limit: refused before any send.
        "RequestLimitExceeded" => (ErrorClass::Deferrable, Some(Duration::from_secs(1))),
        c if c.starts_with("LimitExceeded.App") => (ErrorClass::Quota, None),
        "FailedOperation.InsufficientBalanceInSmsPackage" => (ErrorClass::Quota, None),
        // Tencent says retry but "guard duplicates": the SMS may have gone out.
        c if c == "InternalError" || c.starts_with("InternalError.") => (ErrorClass::Ambiguous, None),
        _ => (ErrorClass::Permanent, None),
    }
}

fn error(code: &str, message: Option<String>) -> ProviderError {
    let (class, after) = classify(code);
    let e = ProviderError::new(class, code, message.unwrap_or_default());
    match after {
        Some(d) => e.retry_after(d),
        None => e,
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    response: Answer,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    error: Option<ApiError>,
    #[serde(default)]
    send_status_set: Vec<SendStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiError {
    code: String,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendStatus {
    serial_no: Option<String>,
    code: String,
    message: Option<String>,
}

/// The app's Tencent SMS account: its SDK app id.
pub fn account_id(accounts: &ProviderAccounts, _to: &str) -> Option<String> {
    Some(accounts.tencent.as_ref()?.sdk_app_id.clone())
}

pub struct Tencent {
    http: reqwest::Client,
    endpoint: String,
    /// Signs requests (`X-TC-Timestamp`, the credential scope date).
    clock: Clock,
}

impl Tencent {
    /// `endpoint` is the base URL without trailing slash (`https://sms.tencentcloudapi.com`).
    pub fn new(http: reqwest::Client, endpoint: String, clock: Clock) -> Self {
        Self { http, endpoint, clock }
    }
}

fn permanent(code: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::Permanent, code, message)
}

#[async_trait::async_trait]
impl Provider for Tencent {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
    }

    fn name(&self) -> &'static str {
        "tencent"
    }

    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn on_ambiguous(&self) -> Ambiguity {
        // SendSms is not idempotent: a second call is a second SMS.
        Ambiguity::MarkUnknown
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let account = app
            .providers
            .tencent
            .as_ref()
            .ok_or_else(|| permanent("no_account", "the app has no Tencent SMS account"))?;
        let template = message
            .content
            .sms
            .as_ref()
            .and_then(|s| s.tencent.as_ref())
            .ok_or_else(|| {
                permanent(
                    "no_template",
                    "Tencent only sends registered templates: content.sms.tencent is missing",
                )
            })?;
        // The base URL as is: a bare host means path `/` (what TC3 signs), and a prefixed
        // fake (axum's nest serves `/tencent`, not `/tencent/`) is reached too.
        let url = url::Url::parse(&self.endpoint)
            .map_err(|_| permanent("bad_endpoint", "the Tencent SMS endpoint is not a URL"))?;
        // Host as it goes on the wire: the URL's host, with the port only if not the default.
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(permanent("bad_endpoint", "the Tencent SMS endpoint has no host")),
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "PhoneNumberSet": [message.to],
            "SmsSdkAppId": account.sdk_app_id,
            "TemplateId": template.template_id,
            "SignName": account.sign_name,
            "TemplateParamSet": template.params,
            "SessionContext": message.id,
        }))
        .map_err(|e| permanent("encode", e.to_string()))?;
        let timestamp = (self.clock)() / 1000;
        let (canonical, signed_headers) = canonical_request(
            &[
                ("content-type", CONTENT_TYPE),
                ("host", &host),
                ("x-tc-action", "SendSms"),
            ],
            &body,
        );
        let signature = sign_tc3(&account.secret_key, SERVICE, timestamp, &canonical);
        let response = self
            .http
            .post(url)
            .header("content-type", CONTENT_TYPE)
            .header("host", &host)
            .header("x-tc-action", "SendSms")
            .header("x-tc-version", API_VERSION)
            .header("x-tc-timestamp", timestamp.to_string())
            .header("x-tc-region", &account.region)
            .header(
                "authorization",
                authorization(&account.secret_id, SERVICE, timestamp, &signed_headers, &signature),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
        let answer = serde_json::from_slice::<Envelope>(&bytes).ok().map(|e| e.response);
        if let Some(e) = answer.as_ref().and_then(|a| a.error.as_ref()) {
            return Err(error(&e.code, e.message.clone()));
        }
        match answer.and_then(|a| a.send_status_set.into_iter().next()) {
            Some(s) if s.code == "Ok" => Ok(Sent {
                provider_message_id: s.serial_no,
                delivered: false,
            }),
            Some(s) => Err(error(&s.code, s.message)),
            None => Err(super::unreadable_answer("Tencent", status, "a result")),
        }
    }
}

// Receipts: Tencent pushes status reports to `/v1/callbacks/tencent`.

/// One report of a Tencent SMS status callback; `sid` is the send's `SerialNo`.
fn report(r: &Value) -> Result<Receipt, ReceiptError> {
    let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
    let status = match text("report_status").as_deref() {
        Some("SUCCESS") => Status::Delivered,
        Some("FAIL") => Status::Failed,
        _ => return Err(ReceiptError::Unrecognised("report_status must be SUCCESS or FAIL")),
    };
    Ok(Receipt {
        provider: "tencent",
        pk: None,
        id: None,
        provider_message_id: Some(text("sid").ok_or(ReceiptError::Unrecognised("report without sid"))?),
        note: format!("tencent: {}", text("errmsg").unwrap_or_default()),
        code: match status {
            Status::Failed => text("errmsg").unwrap_or_default(),
            _ => String::new(),
        },
        status,
    })
}

/// Tencent SMS status callbacks, authenticated by the shared callback token (Tencent
/// documents no signature); Tencent pushes again unless it reads `{"result": 0, …}`.
pub static RECEIPTS: TokenReports = TokenReports {
    name: "tencent",
    channel: Channel::Sms,
    report,
    ack: || serde_json::json!({"result": 0, "errmsg": "OK"}),
    // Reports name the message by Tencent's SerialNo only, often within a second.
    early: true,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipts::parse_reports;

    /// Tencent Cloud international "Signature v3" doc example (service cvm).
    #[test]
    fn tc3_vendor_vector() {
        let payload = r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let (canonical, signed) = canonical_request(
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("host", "cvm.tencentcloudapi.com"),
            ],
            payload.as_bytes(),
        );
        assert_eq!(signed, "content-type;host");
        assert_eq!(scope_date(1551113065), "2019-02-25");
        assert_eq!(
            sign_tc3("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "cvm", 1551113065, &canonical),
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    #[test]
    fn canonical_request_shape() {
        let (canonical, signed) = canonical_request(
            &[
                ("X-TC-Action", "SendSms"),
                ("Host", "sms.tencentcloudapi.com"),
                ("Content-Type", CONTENT_TYPE),
            ],
            b"{}",
        );
        assert_eq!(signed, "content-type;host;x-tc-action");
        assert_eq!(
            canonical,
            format!(
                "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:sms.tencentcloudapi.com\n\
                 x-tc-action:sendsms\n\ncontent-type;host;x-tc-action\n{}",
                hex::encode(Sha256::digest(b"{}"))
            )
        );
        assert_eq!(
            authorization("AKID", "sms", 1551113065, &signed, "abc"),
            "TC3-HMAC-SHA256 Credential=AKID/2019-02-25/sms/tc3_request, \
             SignedHeaders=content-type;host;x-tc-action, Signature=abc"
        );
    }

    #[test]
    fn codes_are_classified() {
        for code in [
            "LimitExceeded.PhoneNumberThirtySecondLimit",
            "LimitExceeded.PhoneNumberOneHourLimit",
            "LimitExceeded.PhoneNumberDailyLimit",
            "LimitExceeded.PhoneNumberSameContentDailyLimit",
            "LimitExceeded.DeliveryFrequencyLimit",
            "RequestLimitExceeded",
        ] {
            let (class, after) = classify(code);
            assert_eq!(class, ErrorClass::Deferrable, "{code}");
            assert!(after.is_some(), "{code}");
        }
        assert_eq!(
            classify("LimitExceeded.PhoneNumberThirtySecondLimit").1,
            Some(Duration::from_secs(30))
        );
        assert_eq!(classify("LimitExceeded.AppDailyLimit").0, ErrorClass::Quota);
        assert_eq!(
            classify("FailedOperation.InsufficientBalanceInSmsPackage").0,
            ErrorClass::Quota
        );
        assert_eq!(classify("InternalError.Timeout").0, ErrorClass::Ambiguous);
        assert_eq!(classify("InternalError.SendAndRecvFail").0, ErrorClass::Ambiguous);
        for code in [
            "InvalidParameterValue.IncorrectPhoneNumber",
            "FailedOperation.PhoneNumberInBlacklist",
            "FailedOperation.SignatureIncorrectOrUnapproved",
            "FailedOperation.TemplateIncorrectOrUnapproved",
            "AuthFailure.SignatureFailure",
            "AuthFailure.SignatureExpire",
        ] {
            assert_eq!(classify(code), (ErrorClass::Permanent, None), "{code}");
        }
    }

    #[test]
    fn status_reports_parse() {
        let t = parse_reports(
            br#"[{"mobile":"138","report_status":"FAIL","errmsg":"MK:0001","sid":"s-1"}]"#,
            report,
        )
        .unwrap();
        assert_eq!(
            (t[0].status, t[0].provider_message_id.as_deref()),
            (Status::Failed, Some("s-1"))
        );
    }
}
