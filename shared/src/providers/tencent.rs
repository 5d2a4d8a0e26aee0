//! Tencent Cloud SMS (2021-01-11) `SendSms`: a JSON POST to `{endpoint}/` signed with
//! TC3-HMAC-SHA256. Results come per number in `SendStatusSet`; a request-level failure
//! comes as `Response.Error`. Only registered templates can be sent.
//!
//! After a lost answer, `PullSmsSendStatusByPhoneNumber` (same signing, 20 requests/s,
//! `Limit` ≤ 100, `Offset` fixed at 0, at most 7 days back) tells whether the SMS went
//! out: every send carries our message id as `SessionContext`, which the pulled status
//! reports echo. The pull lists carrier *reports* only, so a send whose report has not
//! come yet is invisible: "not found" is believed only [`REPORT_WAIT`] after the lost send.

use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::TokenReports;
use super::{transport_error, Provider};
use crate::apps::{AppConfig, ProviderAccounts};
use crate::apps::{Receipts, TencentAccount};
use crate::clock::Clock;
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Reconciled, Sent};
use crate::message::Status;
use crate::message::{Channel, Message};
use crate::receipts::{Receipt, ReceiptError};
use serde_json::Value;

pub const SERVICE: &str = "sms";
pub const API_VERSION: &str = "2021-01-11";
pub const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// How long after a lost send a pull that does not list it is believed: the pull shows
/// only sends the carrier has reported on, which mainland carriers do within seconds.
/// Until then a reconcile answers "cannot tell" and the dispatcher asks again after its
/// lease (so with the default 60 s lease, two or three looks).
pub const REPORT_WAIT: Duration = Duration::from_secs(120);

/// `PullSmsSendStatusByPhoneNumber`'s largest `Limit` (its `Offset` is fixed at 0).
pub const PULL_LIMIT: usize = 100;

/// How far back the pull reaches (Tencent keeps 7 days of reports for it).
const PULL_DAYS_MS: i64 = 7 * 86_400_000;

/// Slack before the lost send where its report is looked for (clocks differ).
const PULL_SKEW_MS: i64 = 60_000;

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
    /// PullSmsSendStatus(ByPhoneNumber): the carrier reports.
    #[serde(default)]
    pull_sms_send_status_set: Vec<Report>,
}

/// One pulled status report (`PullSmsSendStatus` in Tencent's data types).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    pub serial_no: Option<String>,
    /// `SUCCESS` or `FAIL`.
    pub report_status: Option<String>,
    /// The carrier's code, e.g. `DELIVRD`.
    pub description: Option<String>,
    /// What SendSms was given: our message id.
    pub session_context: Option<String>,
}

/// The report of our message `id` among `reports`.
pub fn find_report<'a>(reports: &'a [Report], id: &str) -> Option<&'a Report> {
    reports.iter().find(|r| r.session_context.as_deref() == Some(id))
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
    /// Signs requests (`X-TC-Timestamp`, the credential scope date) and dates pulls.
    clock: Clock,
    /// See [`REPORT_WAIT`].
    report_wait: Duration,
}

/// The app's Tencent account, or a permanent error.
fn account(app: &AppConfig) -> Result<&TencentAccount, ProviderError> {
    app.providers
        .tencent
        .as_ref()
        .ok_or_else(|| permanent("no_account", "the app has no Tencent SMS account"))
}

impl Tencent {
    /// `endpoint` is the base URL without trailing slash (`https://sms.tencentcloudapi.com`).
    pub fn new(http: reqwest::Client, endpoint: String, clock: Clock) -> Self {
        Self {
            http,
            endpoint,
            clock,
            report_wait: REPORT_WAIT,
        }
    }

    /// The same provider believing "not found" `wait` after a lost send (tests).
    pub fn with_report_wait(mut self, wait: Duration) -> Self {
        self.report_wait = wait;
        self
    }

    /// One API call: `body` signed with TC3 for `action`. The HTTP status and the
    /// answer, unless it is a request-level error (returned as the error it means).
    async fn call(
        &self,
        account: &TencentAccount,
        action: &str,
        body: &Value,
    ) -> Result<(u16, Option<Answer>), ProviderError> {
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
        let body = serde_json::to_vec(body).map_err(|e| permanent("encode", e.to_string()))?;
        let timestamp = (self.clock)() / 1000;
        let (canonical, signed_headers) = canonical_request(
            &[("content-type", CONTENT_TYPE), ("host", &host), ("x-tc-action", action)],
            &body,
        );
        let signature = sign_tc3(&account.secret_key, SERVICE, timestamp, &canonical);
        let response = self
            .http
            .post(url)
            .header("content-type", CONTENT_TYPE)
            .header("host", &host)
            .header("x-tc-action", action)
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
        Ok((status, answer))
    }

    /// The status reports of `to` from `since_ms` (less some slack, at most 7 days back)
    /// to `now_ms`: one `PullSmsSendStatusByPhoneNumber` of up to [`PULL_LIMIT`].
    pub async fn pull(
        &self,
        account: &TencentAccount,
        to: &str,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<Report>, ProviderError> {
        let begin = (since_ms - PULL_SKEW_MS).max(now_ms - PULL_DAYS_MS + PULL_SKEW_MS) / 1000;
        let body = serde_json::json!({
            "BeginTime": begin,
            "EndTime": now_ms / 1000 + 1,
            "Offset": 0,
            "Limit": PULL_LIMIT,
            "PhoneNumber": to,
            "SmsSdkAppId": account.sdk_app_id,
        });
        let (status, answer) = self.call(account, "PullSmsSendStatusByPhoneNumber", &body).await?;
        match answer {
            Some(a) => Ok(a.pull_sms_send_status_set),
            None => Err(super::unreadable_answer("Tencent", status, "a result")),
        }
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
        // SendSms is not idempotent (a second call is a second SMS): after a lost answer,
        // ask the status pull whether it went out.
        Ambiguity::Reconcile
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let account = account(app)?;
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
        let body = serde_json::json!({
            "PhoneNumberSet": [message.to],
            "SmsSdkAppId": account.sdk_app_id,
            "TemplateId": template.template_id,
            "SignName": account.sign_name,
            "TemplateParamSet": template.params,
            "SessionContext": message.id,
        });
        let (status, answer) = self.call(account, "SendSms", &body).await?;
        match answer.and_then(|a| a.send_status_set.into_iter().next()) {
            Some(s) if s.code == "Ok" => Ok(Sent {
                provider_message_id: s.serial_no,
                delivered: false,
            }),
            Some(s) => Err(error(&s.code, s.message)),
            None => Err(super::unreadable_answer("Tencent", status, "a result")),
        }
    }

    /// Pulls the recipient's reports since the interrupted send and looks for our id in
    /// their `SessionContext`.
    async fn reconcile(&self, message: &Message, app: &AppConfig) -> Result<Reconciled, ProviderError> {
        let account = account(app)?;
        let now = (self.clock)();
        let lost_at = super::interrupted_at(&message.history, message.created_at);
        let reports = self.pull(account, &message.to, lost_at, now).await?;
        decide(&reports, &message.id, now - lost_at, self.report_wait)
    }

    fn pulls_receipts(&self, app: &AppConfig) -> bool {
        app.providers
            .tencent
            .as_ref()
            .is_some_and(|a| a.receipts == Receipts::Pull)
    }

    /// The recipient's reports since the message was created, ours among them.
    async fn pull_receipt(&self, message: &Message, app: &AppConfig) -> Result<Option<Receipt>, ProviderError> {
        let account = account(app)?;
        let reports = self
            .pull(account, &message.to, message.created_at, (self.clock)())
            .await?;
        let serial = message.provider_message_id.as_deref();
        Ok(pulled_receipt(&reports, &message.id, serial, &message.pk))
    }
}

/// The receipt, for record `pk`, of message `id` (sent as `serial`) among pulled
/// `reports`: found by our id, else by its `SerialNo`; only final reports count.
pub fn pulled_receipt(reports: &[Report], id: &str, serial: Option<&str>, pk: &str) -> Option<Receipt> {
    let r = find_report(reports, id).or_else(|| {
        reports
            .iter()
            .find(|r| serial.is_some() && r.serial_no.as_deref() == serial)
    })?;
    let status = match r.report_status.as_deref() {
        Some("SUCCESS") => Status::Delivered,
        Some("FAIL") => Status::Failed,
        _ => return None,
    };
    Some(Receipt {
        provider: "tencent",
        pk: Some(pk.to_string()),
        id: None,
        provider_message_id: r.serial_no.clone(),
        status,
        note: format!("tencent: {} (pulled)", r.description.as_deref().unwrap_or_default()),
        code: match status {
            Status::Failed => r.description.clone().unwrap_or_default(),
            _ => String::new(),
        },
    })
}

/// What a pull of `reports` says of message `id`, `waited_ms` after its lost send.
pub fn decide(reports: &[Report], id: &str, waited_ms: i64, wait: Duration) -> Result<Reconciled, ProviderError> {
    if let Some(r) = find_report(reports, id) {
        return Ok(Reconciled::Sent(Sent {
            provider_message_id: r.serial_no.clone(),
            delivered: r.report_status.as_deref() == Some("SUCCESS"),
        }));
    }
    if reports.len() >= PULL_LIMIT {
        // A full answer may have left ours out (the pull cannot page).
        return Err(ProviderError::new(
            ErrorClass::Ambiguous,
            "too_many_reports",
            "the pull is full: cannot tell whether the SMS went out",
        ));
    }
    if waited_ms < i64::try_from(wait.as_millis()).unwrap_or(i64::MAX) {
        return Err(ProviderError::new(
            ErrorClass::Ambiguous,
            "no_report_yet",
            "no carrier report yet: the SMS may still be on its way",
        ));
    }
    Ok(Reconciled::NotSent)
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

    fn pulled(context: &str, serial: &str, status: &str) -> Report {
        Report {
            serial_no: Some(serial.into()),
            report_status: Some(status.into()),
            description: Some("DELIVRD".into()),
            session_context: Some(context.into()),
        }
    }

    #[test]
    fn pulled_reports_parse_and_match_by_session_context() {
        // Tencent's example answer (PullSmsSendStatusByPhoneNumber, 2021-01-11).
        let answer: Envelope = serde_json::from_value(serde_json::json!({"Response": {
            "PullSmsSendStatusSet": [{
                "UserReceiveTime": 1570526400, "CountryCode": "86", "SubscriberNumber": "18501234444",
                "PhoneNumber": "+8618501234444", "SerialNo": "2019:1726468750467", "ReportStatus": "SUCCESS",
                "Description": "DELIVRD", "SessionContext": "01HMSG"
            }],
            "RequestId": "b5a9c6b6-4f7b-4b7b-8c8b-1d1b0c0e0f0a"
        }}))
        .unwrap();
        let reports = answer.response.pull_sms_send_status_set;
        let found = find_report(&reports, "01HMSG").unwrap();
        assert_eq!(found.serial_no.as_deref(), Some("2019:1726468750467"));
        assert!(find_report(&reports, "01HOTHER").is_none());
    }

    #[test]
    fn a_reconcile_believes_not_found_only_after_the_report_wait() {
        let wait = Duration::from_secs(120);
        let ours = [pulled("other", "s0", "SUCCESS"), pulled("id", "s1", "FAIL")];
        let found = Reconciled::Sent(Sent {
            provider_message_id: Some("s1".into()),
            delivered: false,
        });
        assert_eq!(decide(&ours, "id", 0, wait).unwrap(), found);
        let delivered = [pulled("id", "s1", "SUCCESS")];
        assert!(matches!(
            decide(&delivered, "id", 0, wait).unwrap(),
            Reconciled::Sent(Sent { delivered: true, .. })
        ));
        let others = [pulled("other", "s0", "SUCCESS")];
        let e = decide(&others, "id", 119_999, wait).unwrap_err();
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Ambiguous, "no_report_yet"));
        assert_eq!(decide(&others, "id", 120_000, wait).unwrap(), Reconciled::NotSent);
        let full = vec![pulled("other", "s0", "SUCCESS"); PULL_LIMIT];
        let e = decide(&full, "id", 600_000, wait).unwrap_err();
        assert_eq!(e.code, "too_many_reports");
    }

    #[test]
    fn pulled_reports_become_receipts_of_the_record() {
        let reports = [pulled("other", "s0", "FAIL"), pulled("id", "s1", "SUCCESS")];
        let r = pulled_receipt(&reports, "id", None, "app_s_1").unwrap();
        assert_eq!(
            (r.status, r.pk.as_deref(), r.provider_message_id.as_deref()),
            (Status::Delivered, Some("app_s_1"), Some("s1"))
        );
        assert_eq!(r.note, "tencent: DELIVRD (pulled)");
        // By SerialNo when the context is not ours (sent before SessionContext was set).
        let r = pulled_receipt(&reports, "nope", Some("s0"), "app_s_1").unwrap();
        assert_eq!(r.status, Status::Failed);
        assert!(pulled_receipt(&reports, "nope", None, "app_s_1").is_none());
        let odd = [pulled("id", "s1", "PENDING")];
        assert!(pulled_receipt(&odd, "id", None, "app_s_1").is_none(), "not final");
    }
}
