//! Provider delivery reports, normalised to status updates: the shared types and helpers.
//! Each vendor's parsing and callback authentication live in its module in `providers/`
//! (a [`crate::providers::ReceiptSource`]); `handlers::callback` looks the vendor up by
//! its path name and only routes, applies and answers.

use lambda_http::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::apps::ServiceSecrets;
use crate::message::Status;

/// One delivery report, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The provider that sent it (its [`crate::providers::ReceiptSource::name`]).
    pub provider: &'static str,
    /// Our record key, when the provider echoes it (SES tags).
    pub pk: Option<String>,
    /// Our message id, when known.
    pub id: Option<String>,
    pub provider_message_id: Option<String>,
    pub status: Status,
    pub note: String,
    /// The vendor's error code of a failed report (empty otherwise), which a route's
    /// receipt rules match (`"when": {"scene": "receipt", "code": …}`).
    pub code: String,
}

/// Whose messages an authenticated callback may change. A callback proves who sent it
/// (a per-app token, an app's Twilio auth token, an app's WeChat server token), and what
/// it proves bounds what it may write: a receipt for another app's message is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Only messages of these apps (the apps whose secret authenticated the call).
    Apps(Vec<String>),
    /// Any app's messages: only for callbacks authenticated at the service level (SES
    /// events signed by SNS on our topic, which carry our own record key).
    AnyApp,
}

impl Scope {
    /// A scope of one app.
    pub fn app(key: &str) -> Self {
        Self::Apps(vec![key.to_string()])
    }

    /// Whether a message of `app` is in scope.
    pub fn allows(&self, app: &str) -> bool {
        match self {
            Self::Apps(apps) => apps.iter().any(|a| a == app),
            Self::AnyApp => true,
        }
    }
}

/// Why a callback was refused (401): logged, never the payload or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no app named (?app=)")]
    NoApp,
    #[error("unknown app")]
    UnknownApp,
    #[error("the app has no callback token configured")]
    NoAppToken,
    #[error("no token given (?token=)")]
    NoToken,
    #[error("token does not match")]
    BadToken,
    #[error("the app has no account with this provider")]
    NoAccount,
    #[error("signature missing or wrong")]
    BadSignature,
    #[error("timestamp missing or outside the allowed window")]
    Stale,
    #[error("nonce already seen (replay)")]
    Replayed,
    #[error("caller address not in the provider's allow-list")]
    Address,
    #[error("not a signed SNS message")]
    Unsigned,
    #[error("SNS message not trusted: {0}")]
    Sns(String),
    /// Not a refusal: what the check needs (a signing certificate) could not be had now,
    /// so the sender should retry (503).
    #[error("cannot verify now: {0}")]
    Unverifiable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("body is not valid JSON")]
    NotJson,
    #[error("unrecognised payload: {0}")]
    Unrecognised(&'static str),
}

/// A provider's callback request, as its [`crate::providers::ReceiptSource`] sees it.
pub struct Inbound<'a> {
    /// The URL the provider called, as it would sign it: this API's public base URL, the
    /// path and the query exactly as received.
    pub url: &'a str,
    /// The query parameters, decoded.
    pub query: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// Now (Unix milliseconds), for callbacks whose signature carries a timestamp.
    pub now_ms: i64,
}

impl Inbound<'_> {
    /// The first query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body's form fields (`application/x-www-form-urlencoded`), decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body).into_owned().collect()
    }

    /// Whether the request carries the shared callback token (`?token=`), compared in
    /// constant time. With no token configured nothing passes, rather than anyone. No
    /// callback relies on it any more; kept for tools that still put it in URLs.
    pub fn has_callback_token(&self, secrets: &ServiceSecrets) -> bool {
        match (secrets.callback_token.as_deref(), self.param("token")) {
            (Some(expected), Some(given)) => constant_time_eq(expected, given),
            _ => false,
        }
    }

    /// The per-app callback check for vendors that sign nothing (Aliyun, Tencent): the
    /// app's callback URL carries `?app={key}&token={its callback_token}`, compared in
    /// constant time. The scope is that app alone, so a leaked token exposes one
    /// tenant's statuses, not every tenant's.
    pub fn app_token(&self, secrets: &ServiceSecrets) -> Result<Scope, Refusal> {
        let key = self.param("app").ok_or(Refusal::NoApp)?;
        let app = secrets.app(key).ok_or(Refusal::UnknownApp)?;
        let expected = app
            .callback_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::NoAppToken)?;
        let given = self.param("token").ok_or(Refusal::NoToken)?;
        if constant_time_eq(expected, given) {
            Ok(Scope::app(&app.key))
        } else {
            Err(Refusal::BadToken)
        }
    }
}

/// Compares two secrets without leaking, through timing, how much of them matched.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The receipts one callback carried.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub receipts: Vec<Receipt>,
    /// How many reports the callback held, receipts or not (an SES open is a report
    /// that gives no receipt; an SNS handshake holds none).
    pub received: usize,
}

impl Batch {
    /// A batch of these receipts, each one report.
    pub fn of(receipts: Vec<Receipt>) -> Self {
        Self {
            received: receipts.len(),
            receipts,
        }
    }
}

/// What the provider must read back (all with status 200): some retry unless they read
/// exactly their word.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Text(String),
    Json(serde_json::Value),
}

/// Parses a JSON array of reports, one receipt each.
pub fn parse_reports(
    body: &[u8],
    report: impl Fn(&serde_json::Value) -> Result<Receipt, ReceiptError>,
) -> Result<Vec<Receipt>, ReceiptError> {
    let reports: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|_| ReceiptError::NotJson)?;
    reports.iter().map(report).collect()
}

/// Every receipt parser faces the internet before any of its data is trusted: none may
/// panic, whatever the body.
#[cfg(test)]
mod never_panic {
    use proptest::prelude::*;

    use crate::providers::{receipt_source, ses, sns, twilio, wechat};

    fn bodies() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            ".{0,256}".prop_map(String::into_bytes),
            // Near-misses of each format, where parsers do real work.
            r#"\[\{("[a-z_]{1,12}":("[A-Za-z0-9]{0,6}"|true|false|1|null),?){0,6}\}\]"#.prop_map(String::into_bytes),
            r#"\{"Type":"(Notification|SubscriptionConfirmation|X)","Message":"[{}\[\]a-zA-Z":,]{0,64}"\}"#
                .prop_map(String::into_bytes),
            "<xml>(<(Event|MsgID|Status)>(<!\\[CDATA\\[)?[a-zA-Z:]{0,8}(\\]\\]>)?(</(Event|MsgID|Status)>)?){0,4}</xml>"
                .prop_map(String::into_bytes),
            "((MessageSid|MessageStatus|SmsSid|ErrorCode)=[a-z%0-9]{0,8}&?){0,5}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn receipt_parsers_never_panic(body in bodies()) {
            let _ = ses::parse(&body);
            if let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(&body) {
                let _ = sns::canonical_string(&envelope);
            }
            let _ = wechat::parse(&body);
            let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
            let _ = twilio::parse(&fields);
            for name in ["aliyun", "tencent", "ses", "twilio", "wechat"] {
                let source = receipt_source(name).expect("registered");
                let headers = lambda_http::http::HeaderMap::new();
                let call = super::Inbound { url: "https://x/", query: &[], headers: &headers, body: &body, now_ms: 0 };
                let _ = source.parse(&call);
            }
        }
    }
}
