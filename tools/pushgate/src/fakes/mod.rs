//! Local fakes of the third-party providers (the provider sandbox). One HTTP server
//! serves them all, each under its own prefix (`/aliyun`, `/tencent`, `/twilio`,
//! `/dingtalk`, `/wecom`, `/feishu`, `/wechat`); point the provider endpoints there
//! (`Endpoints::all_at` with the prefix per provider, see [`Fakes::endpoints`]).
//! Each fake checks the request shape and signature the provider documents
//! (`../shared/providers.md`) and answers with the provider's documented success, error
//! and rate-limit payloads. Every request is recorded for assertions, and so is every
//! send a fake performed ([`FakeLog::accepted`]); the Aliyun fake also plays faults
//! scripted per recipient ([`FakeLog::script`]) to lose requests or answers.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;

use crate::BoxError;

pub mod aliyun;
pub mod dingtalk;
pub mod feishu;
mod robot;
mod sms;
pub mod smtp;
pub mod sns;
pub mod tencent;
pub mod twilio;
pub mod wechat;
pub mod wecom;

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `aliyun`, `tencent`, `twilio`, `dingtalk`, `wecom`, `feishu`, `wechat`.
    pub provider: &'static str,
    /// Which API (e.g. `SendSms`, `send`, `token`).
    pub action: String,
    /// Whether the signature/credentials checked out.
    pub verified: bool,
    /// The recipient(s) as the provider saw them.
    pub to: String,
    /// The parsed request (JSON, or form/query fields as a JSON object).
    pub body: serde_json::Value,
}

/// A send a fake really performed: what a fault test counts to find doubled or lost sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub provider: &'static str,
    /// Our id as the provider got it (Aliyun `OutId`), empty if none was given.
    pub reference: String,
    /// The recipient(s) as the provider saw them.
    pub to: String,
    /// The provider's id for the send (Aliyun `BizId`).
    pub provider_id: String,
    /// When it was accepted, Unix ms.
    pub at_ms: i64,
}

/// A fault a fake plays on one request, to test what a client does when a send goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer the provider's server error: nothing is sent.
    ServerError,
    /// Answer the provider's flow-control refusal: nothing is sent.
    Throttle,
    /// Answer the provider's balance-spent refusal: nothing is sent.
    Quota,
    /// Wait this long, then handle the request: a client that gives up first (hyper then
    /// drops the handler) leaves nothing sent.
    HangBefore(std::time::Duration),
    /// Handle the request (the send happens), then wait this long before answering: a
    /// client that gives up first loses an answer for a send that happened.
    HangAfter(std::time::Duration),
}

/// Shared state of all fakes.
#[derive(Clone, Default)]
pub struct FakeLog {
    entries: Arc<Mutex<Vec<Recorded>>>,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    /// Faults still to play, per recipient, in order.
    faults: Arc<Mutex<HashMap<String, VecDeque<Fault>>>>,
    /// Print each request as it arrives (the dev stack shows what providers received).
    verbose: bool,
}

impl FakeLog {
    pub fn push(&self, r: Recorded) {
        if self.verbose {
            println!(
                "fake {}: {} to {} (credentials {}): {}",
                r.provider,
                r.action,
                r.to,
                if r.verified { "verified" } else { "REFUSED" },
                r.body
            );
        }
        if let Ok(mut log) = self.entries.lock() {
            log.push(r);
        }
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.entries.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Requests to one provider.
    pub fn of(&self, provider: &str) -> Vec<Recorded> {
        self.all().into_iter().filter(|r| r.provider == provider).collect()
    }

    /// Records a send the provider performed.
    pub fn accept(&self, a: Accepted) {
        if let Ok(mut accepted) = self.accepted.lock() {
            accepted.push(a);
        }
    }

    /// Sends one provider performed, oldest first.
    pub fn accepted(&self, provider: &str) -> Vec<Accepted> {
        self.accepted
            .lock()
            .map(|l| l.iter().filter(|a| a.provider == provider).cloned().collect())
            .unwrap_or_default()
    }

    /// Plans `faults` for the next requests to `to` (the recipient as the provider sees
    /// it, e.g. Aliyun `PhoneNumbers`), one per request, after any already planned.
    pub fn script(&self, to: &str, faults: Vec<Fault>) {
        if let Ok(mut planned) = self.faults.lock() {
            planned.entry(to.to_string()).or_default().extend(faults);
        }
    }

    /// Takes the next fault planned for `to`, if any.
    pub fn next_fault(&self, to: &str) -> Option<Fault> {
        self.faults.lock().ok()?.get_mut(to)?.pop_front()
    }
}

/// Posts accepted per robot in a sliding window, for the fakes' documented rate limits.
#[derive(Clone, Default)]
pub struct RateWindow(Arc<Mutex<std::collections::HashMap<String, std::collections::VecDeque<std::time::Instant>>>>);

impl RateWindow {
    /// Whether one more post by `key` stays within every `(count, per)` limit; counts it
    /// if so.
    pub fn admit(&self, key: &str, limits: &[(usize, std::time::Duration)]) -> bool {
        let Ok(mut posts) = self.0.lock() else { return true };
        let now = std::time::Instant::now();
        let longest = limits.iter().map(|(_, per)| *per).max().unwrap_or_default();
        let window = posts.entry(key.to_string()).or_default();
        while window.front().is_some_and(|t| now.duration_since(*t) >= longest) {
            window.pop_front();
        }
        let within = |per: std::time::Duration| window.iter().filter(|t| now.duration_since(**t) < per).count();
        if limits.iter().any(|(count, per)| within(*per) >= *count) {
            return false;
        }
        window.push_back(now);
        true
    }
}

/// The running fakes.
#[derive(Clone)]
pub struct Fakes {
    pub addr: SocketAddr,
    pub log: FakeLog,
}

impl Fakes {
    /// Serves every fake on `addr` (port 0 = a free one) until the runtime stops.
    pub async fn start(addr: SocketAddr) -> Result<Fakes, BoxError> {
        Self::serve(addr, FakeLog::default()).await
    }

    /// As [`Fakes::start`], printing every request received.
    pub async fn start_verbose(addr: SocketAddr) -> Result<Fakes, BoxError> {
        Self::serve(
            addr,
            FakeLog {
                verbose: true,
                ..FakeLog::default()
            },
        )
        .await
    }

    async fn serve(addr: SocketAddr, log: FakeLog) -> Result<Fakes, BoxError> {
        let app = Router::new()
            .nest("/aliyun", aliyun::router(log.clone()))
            .nest("/tencent", tencent::router(log.clone()))
            .nest("/twilio", twilio::router(log.clone()))
            .nest("/dingtalk", dingtalk::router(log.clone()))
            .nest("/wecom", wecom::router(log.clone()))
            .nest("/feishu", feishu::router(log.clone()))
            .nest("/wechat", wechat::router(log.clone()));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Fakes { addr, log })
    }

    /// Provider endpoints pointing at these fakes.
    pub fn endpoints(&self) -> pushgate_shared::config::Endpoints {
        let base = format!("http://{}", self.addr);
        pushgate_shared::config::Endpoints {
            aliyun_sms: format!("{base}/aliyun"),
            tencent_sms: format!("{base}/tencent"),
            twilio: format!("{base}/twilio"),
            dingtalk: format!("{base}/dingtalk"),
            wecom: format!("{base}/wecom"),
            feishu: format!("{base}/feishu"),
            wechat: format!("{base}/wechat"),
        }
    }
}

/// Provider accounts that authenticate against these fakes (and the fake SMTP relay at
/// `smtp`), as an app's `providers` document. Robots are named `ops`.
pub fn sandbox_accounts(smtp: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "aliyun": {"access_key_id": aliyun::ACCESS_KEY_ID, "access_key_secret": aliyun::ACCESS_KEY_SECRET, "sign_name": "Pushgate"},
        "tencent": {"secret_id": tencent::SECRET_ID, "secret_key": tencent::SECRET_KEY, "sdk_app_id": tencent::SDK_APP_ID, "sign_name": "Pushgate"},
        "twilio": {"account_sid": twilio::ACCOUNT_SID, "auth_token": twilio::AUTH_TOKEN, "from": twilio::FROM},
        "dingtalk": {"ops": {"token": dingtalk::TOKEN, "secret": dingtalk::SECRET}},
        "wecom": {"ops": {"token": wecom::KEY}},
        "feishu": {"ops": {"token": feishu::TOKEN, "secret": feishu::SECRET}},
        "wechat": {"appid": wechat::APPID, "secret": wechat::SECRET},
        "smtp": {"host": smtp.ip().to_string(), "port": smtp.port(), "username": smtp::USERNAME, "password": smtp::PASSWORD, "security": "none"},
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn faults_play_once_each_in_order_per_recipient() {
        let log = FakeLog::default();
        log.script("1", vec![Fault::ServerError, Fault::HangAfter(Duration::from_secs(1))]);
        log.script("1", vec![Fault::HangBefore(Duration::from_secs(2))]);
        let shared = log.clone();
        assert_eq!(shared.next_fault("2"), None);
        assert_eq!(shared.next_fault("1"), Some(Fault::ServerError));
        assert_eq!(log.next_fault("1"), Some(Fault::HangAfter(Duration::from_secs(1))));
        assert_eq!(log.next_fault("1"), Some(Fault::HangBefore(Duration::from_secs(2))));
        assert_eq!(log.next_fault("1"), None);
    }

    #[test]
    fn accepted_sends_are_kept_per_provider() {
        let log = FakeLog::default();
        let sent = |provider, reference: &str| Accepted {
            provider,
            reference: reference.into(),
            to: "1".into(),
            provider_id: format!("{reference}-id"),
            at_ms: 0,
        };
        log.clone().accept(sent("aliyun", "a"));
        log.accept(sent("tencent", "t"));
        log.accept(sent("aliyun", "b"));
        assert_eq!(log.accepted("aliyun"), vec![sent("aliyun", "a"), sent("aliyun", "b")]);
        assert_eq!(log.accepted("twilio"), vec![]);
    }
}
