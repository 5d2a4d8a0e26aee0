//! SMS through Twilio Programmable Messaging: a form POST to `Messages.json` with Basic
//! auth. Twilio answers with the message `sid`, which its status callbacks carry as
//! `MessageSid`; delivery is known from those callbacks, or by fetching the message.
//!
//! After a lost answer there is no SID to fetch: the account's messages to the
//! recipient are listed (`GET Messages.json?To=&From=`, newest first, [`LIST_PAGE_SIZE`]
//! a page, at most [`LIST_PAGES`] pages) and ours is the outbound one with our exact
//! text from our sender created since the interrupted send (see [`is_ours`]). Twilio
//! creates the Message resource before it answers the POST, so a send that reached it
//! is listed from then on.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use subtle::ConstantTimeEq;

use super::ReceiptSource;
use super::{transport_error, Provider};
use crate::apps::ServiceSecrets;
use crate::apps::{AppConfig, ProviderAccounts, Receipts, TwilioAccount};
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Reconciled, Sent};
use crate::message::Status;
use crate::message::{Channel, Message};
use crate::receipts::{Batch, Inbound, Receipt, ReceiptError, Refusal, Reply, Scope};

/// Wait used when Twilio throttles without a `Retry-After` header.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Upper bound on a `Retry-After` we honour, so a bogus header cannot park a message for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `X-Twilio-Signature` of a request: base64(HMAC-SHA1(auth token, full URL + every POST
/// parameter's name and value, sorted by name)). Pairs are sorted as (name, value) so
/// repeated names come out in a stable order.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut parts: Vec<&[u8]> = vec![url.as_bytes()];
    for (name, value) in sorted {
        parts.push(name.as_bytes());
        parts.push(value.as_bytes());
    }
    B64.encode(crate::crypto::hmac_sha1(auth_token.as_bytes(), &parts))
}

/// Checks an `X-Twilio-Signature` in constant time. Twilio may sign an https URL with or
/// without the default port, so both forms are accepted.
pub fn verify_signature(auth_token: &str, url: &str, params: &[(String, String)], given: &str) -> bool {
    url_variants(url)
        .iter()
        .any(|u| bool::from(signature(auth_token, u, params).as_bytes().ct_eq(given.as_bytes())))
}

/// `url` as given plus the same URL with the scheme's default port added or removed.
/// Works on the string, since Twilio signs the exact text of the URL it called.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some(scheme_end) = url.find("://") else {
        return out;
    };
    let default_port = match url[..scheme_end].to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return out,
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    // A port follows the last ':' that comes after any userinfo and IPv6 brackets.
    let host_start = authority.rfind(['@', ']']).map_or(0, |i| i + 1);
    let (prefix, rest) = (&url[..authority_start], &url[authority_end..]);
    let variant = match authority[host_start..].rfind(':') {
        Some(i) if &authority[host_start + i + 1..] == default_port => {
            format!("{prefix}{}{rest}", &authority[..host_start + i])
        }
        Some(_) => return out,
        None => format!("{prefix}{authority}:{default_port}{rest}"),
    };
    out.push(variant);
    out
}

/// Messages per page of a reconcile's list (Twilio's default page; the largest is 1,000).
pub const LIST_PAGE_SIZE: usize = 50;
/// Pages a reconcile reads at most before it gives up telling.
pub const LIST_PAGES: usize = 3;
/// Slack before the interrupted send within which our message may have been created.
const CREATED_SKEW_MS: i64 = 60_000;
/// The list is ordered by the time sent, not created: a page is "older than ours" only
/// when everything on it was created this long before the interrupted send.
const LIST_ORDER_SLACK_MS: i64 = 3_600_000;

/// One Message resource as Twilio fetches or lists it (the fields used here).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MessageResource {
    pub sid: String,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    /// `queued`, `sending`, `sent`, `delivered`, `undelivered`, `failed`, …
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub direction: Option<String>,
    /// RFC 2822, e.g. `Wed, 02 Dec 2026 16:00:00 +0000`.
    #[serde(default)]
    pub date_created: Option<String>,
    #[serde(default)]
    pub error_code: Option<i64>,
}

impl MessageResource {
    /// `date_created` in Unix ms.
    pub fn created_ms(&self) -> Option<i64> {
        let t = time::OffsetDateTime::parse(
            self.date_created.as_deref()?,
            &time::format_description::well_known::Rfc2822,
        )
        .ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
    }

    fn found(&self) -> Reconciled {
        Reconciled::Sent(Sent {
            provider_message_id: Some(self.sid.clone()),
            delivered: matches!(self.status.as_deref(), Some("delivered" | "read")),
        })
    }
}

/// A page of the Messages list.
#[derive(Debug, Default, serde::Deserialize)]
struct MessagePage {
    #[serde(default)]
    messages: Vec<MessageResource>,
    next_page_uri: Option<String>,
}

/// What a reconcile looks for in the list.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub to: &'a str,
    pub body: &'a str,
    /// The sender asked for: a Messaging Service, else a `From` number.
    pub service: Option<&'a str>,
    pub from: Option<&'a str>,
    /// Created no earlier than this (Unix ms).
    pub not_before_ms: i64,
}

/// Whether a listed message is the one a lost send created: outbound through the API,
/// to our recipient, from our sender, with exactly our text, created since the
/// interrupted send. Twilio keeps no id of ours, so two identical texts to one number
/// within that window would be taken for one (never sent twice, possibly one lost).
pub fn is_ours(m: &MessageResource, wanted: &Wanted<'_>) -> bool {
    let sender = match wanted.service {
        Some(service) => m.messaging_service_sid.as_deref() == Some(service),
        None => m.from.as_deref() == wanted.from,
    };
    m.direction.as_deref() == Some("outbound-api")
        && m.to.as_deref() == Some(wanted.to)
        && m.body.as_deref() == Some(wanted.body)
        && sender
        && m.created_ms().is_some_and(|t| t >= wanted.not_before_ms)
}

/// The app's Twilio account, or a permanent error.
fn account(app: &AppConfig) -> Result<&TwilioAccount, ProviderError> {
    app.providers
        .twilio
        .as_ref()
        .ok_or_else(|| ProviderError::new(ErrorClass::Permanent, "no_account", "the app has no Twilio account"))
}

/// The app's Twilio account: its account SID.
pub fn account_id(accounts: &ProviderAccounts, _to: &str) -> Option<String> {
    Some(accounts.twilio.as_ref()?.account_sid.clone())
}

pub struct Twilio {
    http: reqwest::Client,
    endpoint: String,
    status_callback_base: Option<String>,
}

impl Twilio {
    /// `endpoint` is the API base (`https://api.twilio.com`); with `status_callback_base`
    /// (our public URL) every message asks for status callbacks at
    /// `{base}/v1/callbacks/twilio?app={app key}` (the app names the token that signs them).
    pub fn new(http: reqwest::Client, endpoint: String, status_callback_base: Option<String>) -> Self {
        Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            status_callback_base: status_callback_base.map(|b| b.trim_end_matches('/').to_string()),
        }
    }
}

impl Twilio {
    /// `{endpoint}/2010-04-01/Accounts/{sid}` for `account`.
    fn account_url(&self, account: &TwilioAccount) -> String {
        let sid = percent_encoding::utf8_percent_encode(&account.account_sid, percent_encoding::NON_ALPHANUMERIC);
        format!("{}/2010-04-01/Accounts/{sid}", self.endpoint)
    }

    /// A GET under Basic auth: the JSON answer, `None` for a 404, else the error the
    /// answer means (classified as a send's).
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        account: &TwilioAccount,
        url: &str,
    ) -> Result<Option<T>, ProviderError> {
        let response = self
            .http
            .get(url)
            .basic_auth(&account.account_sid, Some(&account.auth_token))
            .send()
            .await
            .map_err(|e| transport_error(&e.without_url()))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| super::unreadable_answer("Twilio", status, "a readable answer"));
        }
        Err(answer_error(status, &headers, serde_json::from_slice(&bytes).ok()))
    }

    /// The message `sid` (`GET Messages/{sid}.json`), `None` if Twilio has none.
    pub async fn fetch(&self, account: &TwilioAccount, sid: &str) -> Result<Option<MessageResource>, ProviderError> {
        let sid = percent_encoding::utf8_percent_encode(sid, percent_encoding::NON_ALPHANUMERIC);
        let url = format!("{}/Messages/{sid}.json", self.account_url(account));
        self.get(account, &url).await
    }

    /// Lists the account's messages to `wanted.to` from its sender, page by page, for
    /// the one [`is_ours`]. `Err` (ambiguous) if [`LIST_PAGES`] pages did not settle it.
    async fn find(&self, account: &TwilioAccount, wanted: &Wanted<'_>) -> Result<Reconciled, ProviderError> {
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("To", wanted.to);
            if let (None, Some(from)) = (wanted.service, wanted.from) {
                query.append_pair("From", from);
            }
            query.append_pair("PageSize", &LIST_PAGE_SIZE.to_string());
            query.finish()
        };
        let mut url = format!("{}/Messages.json?{query}", self.account_url(account));
        for _ in 0..LIST_PAGES {
            let page: MessagePage = self.get(account, &url).await?.unwrap_or_default();
            if let Some(m) = page.messages.iter().find(|m| is_ours(m, wanted)) {
                return Ok(m.found());
            }
            let older = |m: &MessageResource| {
                m.created_ms()
                    .is_some_and(|t| t < wanted.not_before_ms - LIST_ORDER_SLACK_MS)
            };
            match page.next_page_uri {
                Some(next) if !page.messages.iter().all(older) => url = format!("{}{next}", self.endpoint),
                _ => return Ok(Reconciled::NotSent),
            }
        }
        Err(ProviderError::new(
            ErrorClass::Ambiguous,
            "too_many_messages",
            "too many messages to the recipient to tell whether ours went out",
        ))
    }
}

/// The error a non-2xx Twilio answer means, from its status, `code` and `message`.
fn answer_error(status: u16, headers: &reqwest::header::HeaderMap, body: Option<serde_json::Value>) -> ProviderError {
    let field = |name: &str| body.as_ref().and_then(|b| b.get(name));
    let code = field("code").and_then(|v| v.as_i64());
    let class = classify(status, code);
    let text = field("message")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("Twilio answered HTTP {status}"));
    let code = code.map(|c| c.to_string()).unwrap_or_else(|| format!("http_{status}"));
    let error = ProviderError::new(class, code, text);
    if class == ErrorClass::Deferrable {
        error.retry_after(retry_after(headers))
    } else {
        error
    }
}

/// Maps a Twilio error answer to a class (providers.md): throttles defer, rejected numbers
/// and bad credentials are final, server errors retry.
fn classify(status: u16, code: Option<i64>) -> ErrorClass {
    match (status, code) {
        (429, _) | (_, Some(20429)) => ErrorClass::Deferrable,
        (_, Some(21211 | 21610 | 21614 | 21606 | 21608 | 20003)) => ErrorClass::Permanent,
        (500..=599, _) => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Twilio).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
        .unwrap_or(DEFAULT_RETRY_AFTER)
}

#[async_trait::async_trait]
impl Provider for Twilio {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
    }

    fn name(&self) -> &'static str {
        "twilio"
    }

    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn on_ambiguous(&self) -> Ambiguity {
        // Message creation is not idempotent (a second POST is a second SMS): after a
        // lost answer, look the message up before any resend.
        Ambiguity::Reconcile
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let account = account(app)?;
        let text = message
            .content
            .text
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ProviderError::new(ErrorClass::Permanent, "no_text", "Twilio SMS needs content.text"))?;
        let mut form: Vec<(&str, &str)> = vec![("To", message.to.as_str()), ("Body", text)];
        match (&account.messaging_service_sid, &account.from) {
            (Some(service), _) => form.push(("MessagingServiceSid", service)),
            (None, Some(from)) => form.push(("From", from)),
            (None, None) => {
                return Err(ProviderError::new(
                    ErrorClass::Permanent,
                    "no_sender",
                    "the Twilio account has neither from nor messaging_service_sid",
                ))
            }
        }
        // `?app=` tells the callback handler whose auth token signed the callback.
        let callback = self.status_callback_base.as_ref().map(|base| {
            let app_key: String = url::form_urlencoded::byte_serialize(app.key.as_bytes()).collect();
            format!("{base}/v1/callbacks/twilio?app={app_key}")
        });
        if let Some(cb) = &callback {
            form.push(("StatusCallback", cb));
        }
        let url = format!("{}/Messages.json", self.account_url(account));
        let response = self
            .http
            .post(url)
            .basic_auth(&account.account_sid, Some(&account.auth_token))
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(&e.without_url()))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body: Option<serde_json::Value> = response.json().await.ok();
        if (200..300).contains(&status) {
            let sid = body.as_ref().and_then(|b| b.get("sid")).and_then(|v| v.as_str());
            return Ok(Sent {
                provider_message_id: sid.map(str::to_string),
                delivered: false,
            });
        }
        Err(answer_error(status, &headers, body))
    }

    /// Fetches the message by its SID if we have one, else looks for it in the list of
    /// the recipient's messages (see [`is_ours`]).
    async fn reconcile(&self, message: &Message, app: &AppConfig) -> Result<Reconciled, ProviderError> {
        let account = account(app)?;
        if let Some(sid) = message.provider_message_id.as_deref() {
            return Ok(match self.fetch(account, sid).await? {
                Some(m) => m.found(),
                None => Reconciled::NotSent,
            });
        }
        let body = message.content.text.as_deref().unwrap_or_default();
        let wanted = Wanted {
            to: &message.to,
            body,
            service: account.messaging_service_sid.as_deref(),
            from: account.from.as_deref(),
            not_before_ms: super::interrupted_at(&message.history, message.created_at) - CREATED_SKEW_MS,
        };
        self.find(account, &wanted).await
    }

    fn pulls_receipts(&self, app: &AppConfig) -> bool {
        app.providers
            .twilio
            .as_ref()
            .is_some_and(|a| a.receipts == Receipts::Pull)
    }

    /// Fetches the message by its SID: a final status is its receipt.
    async fn pull_receipt(&self, message: &Message, app: &AppConfig) -> Result<Option<Receipt>, ProviderError> {
        let account = account(app)?;
        let Some(sid) = message.provider_message_id.as_deref() else {
            return Ok(None);
        };
        let Some(found) = self.fetch(account, sid).await? else {
            return Ok(None);
        };
        Ok(pulled_receipt(&found, &message.pk))
    }
}

/// The receipt a fetched message gives its record `pk`: only final statuses count.
pub fn pulled_receipt(m: &MessageResource, pk: &str) -> Option<Receipt> {
    let (status, note) = match m.status.as_deref()? {
        s @ ("delivered" | "read") => (Status::Delivered, format!("twilio: {s} (pulled)")),
        s @ ("undelivered" | "failed") => (
            Status::Failed,
            format!(
                "twilio: {s} (error {}) (pulled)",
                m.error_code.map_or("?".to_string(), |c| c.to_string())
            ),
        ),
        _ => return None,
    };
    Some(Receipt {
        provider: "twilio",
        pk: Some(pk.to_string()),
        id: None,
        provider_message_id: Some(m.sid.clone()),
        code: match status {
            Status::Failed => m.error_code.map(|c| c.to_string()).unwrap_or_default(),
            _ => String::new(),
        },
        status,
        note,
    })
}

// Receipts: Twilio's StatusCallback posts to `/v1/callbacks/twilio?app={app key}`.

/// Twilio StatusCallback (form fields). Intermediate statuses give no receipt.
pub fn parse(fields: &[(String, String)]) -> Result<Option<Receipt>, ReceiptError> {
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let sid = get("MessageSid")
        .or_else(|| get("SmsSid"))
        .ok_or(ReceiptError::Unrecognised("no MessageSid"))?;
    let status = get("MessageStatus")
        .or_else(|| get("SmsStatus"))
        .ok_or(ReceiptError::Unrecognised("no MessageStatus"))?;
    let (status, note, code) = match status {
        "delivered" | "read" => (Status::Delivered, format!("twilio: {status}"), String::new()),
        "undelivered" | "failed" => (
            Status::Failed,
            format!("twilio: {status} (error {})", get("ErrorCode").unwrap_or("?")),
            get("ErrorCode").unwrap_or_default().to_string(),
        ),
        "sent" => (Status::Sent, "twilio: sent".to_string(), String::new()),
        _ => return Ok(None),
    };
    Ok(Some(Receipt {
        provider: "twilio",
        pk: None,
        id: None,
        provider_message_id: Some(sid.to_string()),
        status,
        note,
        code,
    }))
}

/// Twilio status callbacks, authenticated by `X-Twilio-Signature` under the auth token
/// of the app named by `?app=`.
pub struct TwilioReceipts;

#[async_trait::async_trait]
impl ReceiptSource for TwilioReceipts {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn channel(&self) -> crate::message::Channel {
        crate::message::Channel::Sms
    }

    /// Status callbacks name the message by its SID only and may beat the send's record.
    fn early(&self) -> bool {
        true
    }

    /// An app without a Twilio account cannot have sent through Twilio. A signature
    /// under app A's auth token proves the call is about A's messages only: the scope is
    /// A, so a SID of another app's message changes nothing.
    fn authentic(&self, call: &Inbound<'_>, secrets: &ServiceSecrets) -> Result<Scope, Refusal> {
        let key = call.param("app").ok_or(Refusal::NoApp)?;
        let app = secrets.app(key).ok_or(Refusal::UnknownApp)?;
        let account = app.providers.twilio.as_ref().ok_or(Refusal::NoAccount)?;
        let given = call.header("x-twilio-signature").ok_or(Refusal::BadSignature)?;
        if verify_signature(&account.auth_token, call.url, &call.form(), given) {
            Ok(Scope::app(&app.key))
        } else {
            Err(Refusal::BadSignature)
        }
    }

    fn parse(&self, call: &Inbound<'_>) -> Result<Batch, ReceiptError> {
        Ok(Batch::of(parse(&call.form())?.into_iter().collect()))
    }

    fn reply(&self, _batch: &Batch, _applied: usize) -> Reply {
        Reply::Text(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// twilio-python request validator vectors.
    #[test]
    fn signature_matches_published_vectors() {
        let params = vector_params();
        assert_eq!(
            signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            signature("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", &params),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
    }

    #[test]
    fn verification_accepts_either_port_form_only_with_the_right_token() {
        let params = vector_params();
        for url in [
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        ] {
            assert!(verify_signature("12345", url, &params, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
            assert!(verify_signature("12345", url, &params, "kvajT1Ptam85bY51eRf/AJRuM3w="));
            assert!(!verify_signature("54321", url, &params, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        }
        let mut tampered = params.clone();
        tampered[1].1 = "9999".into();
        assert!(!verify_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &tampered,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn url_variants_toggle_the_default_port() {
        assert_eq!(
            url_variants("https://a.example/cb?x=1"),
            ["https://a.example/cb?x=1", "https://a.example:443/cb?x=1"]
        );
        assert_eq!(
            url_variants("https://u:p@a.example:443"),
            ["https://u:p@a.example:443", "https://u:p@a.example"]
        );
        assert_eq!(url_variants("https://a.example:8443/x"), ["https://a.example:8443/x"]);
        assert_eq!(url_variants("http://[::1]/x"), ["http://[::1]/x", "http://[::1]:80/x"]);
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(classify(429, None), ErrorClass::Deferrable);
        assert_eq!(classify(429, Some(20429)), ErrorClass::Deferrable);
        for code in [21211, 21610, 21614, 21606, 21608] {
            assert_eq!(classify(400, Some(code)), ErrorClass::Permanent);
        }
        assert_eq!(classify(401, Some(20003)), ErrorClass::Permanent);
        assert_eq!(classify(500, None), ErrorClass::Retryable);
        assert_eq!(classify(503, Some(20500)), ErrorClass::Retryable);
        assert_eq!(classify(400, Some(21602)), ErrorClass::Permanent);
    }

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), DEFAULT_RETRY_AFTER);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(7));
        h.insert(reqwest::header::RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&h), MAX_RETRY_AFTER);
    }

    #[test]
    fn status_callbacks_parse() {
        let fields = vec![
            ("MessageSid".to_string(), "SM1".to_string()),
            ("MessageStatus".to_string(), "undelivered".to_string()),
            ("ErrorCode".to_string(), "30003".to_string()),
        ];
        let r = parse(&fields).unwrap().unwrap();
        assert_eq!(
            (r.status, r.provider_message_id.as_deref()),
            (Status::Failed, Some("SM1"))
        );
        assert!(r.note.contains("30003"));
        let queued = vec![
            ("MessageSid".to_string(), "SM1".to_string()),
            ("MessageStatus".to_string(), "queued".to_string()),
        ];
        assert_eq!(parse(&queued).unwrap(), None);
    }

    fn listed(body: &str, created: &str) -> MessageResource {
        serde_json::from_value(serde_json::json!({
            "sid": "SM1", "to": "+14155550100", "from": "+15005550006", "messaging_service_sid": null,
            "body": body, "status": "delivered", "direction": "outbound-api", "date_created": created,
            "date_sent": null, "error_code": null, "num_segments": "1",
        }))
        .unwrap()
    }

    #[test]
    fn ours_is_the_outbound_message_with_our_text_from_our_sender_since_the_send() {
        // Wed, 02 Dec 2026 16:00:00 +0000
        let at = 1_796_227_200_000;
        let m = listed("Your code is 1234", "Wed, 02 Dec 2026 16:00:00 +0000");
        assert_eq!(m.created_ms(), Some(at));
        let wanted = Wanted {
            to: "+14155550100",
            body: "Your code is 1234",
            service: None,
            from: Some("+15005550006"),
            not_before_ms: at,
        };
        assert!(is_ours(&m, &wanted));
        assert!(
            !is_ours(
                &m,
                &Wanted {
                    not_before_ms: at + 1000,
                    ..wanted
                }
            ),
            "created before"
        );
        assert!(!is_ours(
            &m,
            &Wanted {
                body: "Your code is 1235",
                ..wanted
            }
        ));
        assert!(!is_ours(
            &m,
            &Wanted {
                to: "+14155550101",
                ..wanted
            }
        ));
        assert!(!is_ours(
            &m,
            &Wanted {
                from: Some("+15005550007"),
                ..wanted
            }
        ));
        assert!(!is_ours(
            &m,
            &Wanted {
                service: Some("MG1"),
                ..wanted
            }
        ));
        let mut inbound = m.clone();
        inbound.direction = Some("inbound".into());
        assert!(!is_ours(&inbound, &wanted));
        let mut undated = m.clone();
        undated.date_created = None;
        assert!(!is_ours(&undated, &wanted));
        assert_eq!(
            m.found(),
            Reconciled::Sent(Sent {
                provider_message_id: Some("SM1".into()),
                delivered: true
            })
        );
        let queued = listed("x", "Wed, 02 Dec 2026 16:00:00 +0000");
        let queued = MessageResource {
            status: Some("queued".into()),
            ..queued
        };
        assert!(matches!(
            queued.found(),
            Reconciled::Sent(Sent { delivered: false, .. })
        ));
    }

    #[test]
    fn only_final_fetched_statuses_are_receipts() {
        let mut m = listed("hi", "Wed, 02 Dec 2026 16:00:00 +0000");
        let r = pulled_receipt(&m, "app_s_1").unwrap();
        assert_eq!(
            (r.status, r.pk.as_deref(), r.provider_message_id.as_deref()),
            (Status::Delivered, Some("app_s_1"), Some("SM1"))
        );
        m.status = Some("undelivered".into());
        m.error_code = Some(30003);
        let r = pulled_receipt(&m, "app_s_1").unwrap();
        assert_eq!(r.status, Status::Failed);
        assert!(r.note.contains("30003"), "{}", r.note);
        for pending in ["queued", "accepted", "sending", "sent"] {
            m.status = Some(pending.into());
            assert!(pulled_receipt(&m, "app_s_1").is_none(), "{pending}");
        }
    }
}
