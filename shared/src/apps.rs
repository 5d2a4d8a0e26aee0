//! Per-app configuration and service secrets, read from one Secrets Manager secret
//! (JSON) at cold start and re-read every few minutes so secret rotation takes effect.
//!
//! The provider account structs (`AliyunAccount` and the rest) stay here as the config
//! schema: they are what the secret document looks like. What they mean (which account a
//! message goes through, which providers an app can use, in what default order) belongs
//! to each vendor's module in `providers/`, so nothing here matches on provider names.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::cache::{Bounded, BoundedError, StalePolicy};
use crate::message::Channel;

/// One client application.
#[derive(Clone, Deserialize)]
pub struct AppConfig {
    /// The public key id sent as `X-App-Key`.
    pub key: String,
    #[serde(default)]
    pub name: String,
    /// Active signing secrets; two during rotation.
    pub secrets: Vec<String>,
    /// Standard Webhooks secret (`whsec_…`) used to sign outgoing webhooks.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Sender address for email; falls back to `PUSHGATE_EMAIL_FROM`.
    #[serde(default)]
    pub email_from: Option<String>,
    /// Credentials of the providers this app sends through.
    #[serde(default)]
    pub providers: ProviderAccounts,
    /// Sensitive-word filter applied at ingest.
    #[serde(default)]
    pub sensitive_words: Option<crate::filter::FilterConfig>,
    /// Request limits enforced at ingest.
    #[serde(default)]
    pub limits: Limits,
    /// This app's callback token: what its provider callback URLs carry
    /// (`/v1/callbacks/{aliyun,tencent}?app={key}&token={callback_token}`) and the server
    /// token of its WeChat official account. It lets its holder change this app's
    /// message statuses only, never another app's.
    #[serde(default)]
    pub callback_token: Option<String>,
}

/// Per-app request limits.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Messages accepted per calendar minute (all Lambda instances together); over it,
    /// ingest answers 429 with `Retry-After` and queues nothing.
    #[serde(default)]
    pub per_minute: Option<u32>,
    /// Metered app: each message sent takes one unit of its balance (`pushgate quota`);
    /// ingest refuses with 429 once the balance is spent.
    #[serde(default)]
    pub balance: bool,
    /// What a queued message does when the balance runs out before it is sent.
    #[serde(default)]
    pub when_exhausted: WhenExhausted,
}

/// What a message does when its app's balance is spent at send time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenExhausted {
    /// End `failed` with reason `quota_exhausted`.
    #[default]
    Fail,
    /// Stay queued and try again every minute until the balance is topped up (or the
    /// queue's retention ends and it dead-letters).
    Wait,
}

impl ProviderAccounts {
    /// Why `to` cannot be sent on robot `channel` (the app has no robot of that name),
    /// checked at ingest so the client hears it as a 422 instead of reading `failed`
    /// later. `None` for a known robot and for other channels.
    pub fn unknown_robot(&self, channel: Channel, to: &str) -> Option<String> {
        let (robots, vendor) = match channel {
            Channel::Dingtalk => (&self.dingtalk, "DingTalk"),
            Channel::Wecom => (&self.wecom, "WeCom"),
            Channel::Feishu => (&self.feishu, "Feishu"),
            _ => return None,
        };
        if robots.contains_key(to) {
            return None;
        }
        let mut names: Vec<&str> = robots.keys().map(String::as_str).collect();
        names.sort_unstable();
        Some(match names.is_empty() {
            true => format!("the app has no {vendor} robot configured"),
            false => format!(
                "the app has no {vendor} robot named this (it has: {})",
                names.join(", ")
            ),
        })
    }
}

/// An app's provider accounts. Robots are named: a message's `to` names the robot.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderAccounts {
    /// SMS providers in order of preference (default: the registry's order, aliyun,
    /// tencent, twilio, among those configured).
    #[serde(default)]
    pub sms_order: Vec<String>,
    #[serde(default)]
    pub aliyun: Option<AliyunAccount>,
    #[serde(default)]
    pub tencent: Option<TencentAccount>,
    #[serde(default)]
    pub twilio: Option<TwilioAccount>,
    #[serde(default)]
    pub dingtalk: HashMap<String, RobotAccount>,
    #[serde(default)]
    pub wecom: HashMap<String, RobotAccount>,
    #[serde(default)]
    pub feishu: HashMap<String, RobotAccount>,
    #[serde(default)]
    pub wechat: Option<WechatAccount>,
    /// Email providers in order of preference (default: the registry's order, ses, then
    /// smtp if configured).
    #[serde(default)]
    pub email_order: Vec<String>,
    #[serde(default)]
    pub smtp: Option<SmtpAccount>,
    /// Send rates per provider (`{"aliyun": {"per_second": 100}}`), overriding the
    /// documented limits the dispatcher shapes traffic to.
    #[serde(default)]
    pub rates: HashMap<String, crate::shaping::Rate>,
}

/// An SMTP relay account (second email provider).
#[derive(Clone, Deserialize)]
pub struct SmtpAccount {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// `starttls` (default), `tls` (implicit, port 465) or `none` (local relays only).
    #[serde(default = "default_smtp_security")]
    pub security: String,
}

fn default_smtp_port() -> u16 {
    587
}

fn default_smtp_security() -> String {
    "starttls".into()
}

/// How an SMS account's delivery receipts reach us (`"receipts"` in its settings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Receipts {
    /// The vendor pushes them to `/v1/callbacks/{provider}` (configured at the vendor).
    #[default]
    Callback,
    /// The `pull` function asks the vendor for them on a schedule (for accounts whose
    /// callback is not configured or not reachable).
    Pull,
}

/// Alibaba Cloud SMS (dysmsapi) account.
#[derive(Clone, Deserialize)]
pub struct AliyunAccount {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub sign_name: String,
    #[serde(default)]
    pub receipts: Receipts,
}

/// Tencent Cloud SMS account.
#[derive(Clone, Deserialize)]
pub struct TencentAccount {
    pub secret_id: String,
    pub secret_key: String,
    pub sdk_app_id: String,
    pub sign_name: String,
    #[serde(default = "default_tencent_region")]
    pub region: String,
    #[serde(default)]
    pub receipts: Receipts,
}

fn default_tencent_region() -> String {
    "ap-guangzhou".into()
}

/// Twilio Messaging account.
#[derive(Clone, Deserialize)]
pub struct TwilioAccount {
    pub account_sid: String,
    pub auth_token: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    #[serde(default)]
    pub receipts: Receipts,
}

/// A chat robot: DingTalk (`token` = access_token, `secret` = signing secret), WeCom
/// (`token` = webhook key, no secret), Feishu (`token` = hook token, `secret` = signing secret).
#[derive(Clone, Deserialize)]
pub struct RobotAccount {
    pub token: String,
    #[serde(default)]
    pub secret: Option<String>,
}

/// WeChat Official Account.
#[derive(Clone, Deserialize)]
pub struct WechatAccount {
    pub appid: String,
    pub secret: String,
}

// None of the accounts print their secrets.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), " { .. }"))
            }
        }
    )*};
}
redacted_debug!(
    ProviderAccounts,
    AliyunAccount,
    TencentAccount,
    TwilioAccount,
    RobotAccount,
    WechatAccount
);

// Secrets never reach logs through Debug.
impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppConfig")
            .field("key", &self.key)
            .field("name", &self.name)
            .field("secrets", &format_args!("[{} redacted]", self.secrets.len()))
            .finish_non_exhaustive()
    }
}

/// The whole secret document.
#[derive(Clone, Default, Deserialize)]
pub struct ServiceSecrets {
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// The former shared callback token. It authenticates no callback any more (each app
    /// has its own `callback_token`; SES events are verified by their SNS signature) and
    /// is kept so existing secret documents still parse.
    #[serde(default)]
    pub callback_token: Option<String>,
}

impl ServiceSecrets {
    pub fn parse(json: &str) -> Result<Self, AppsError> {
        serde_json::from_str(json).map_err(|e| AppsError::Invalid(e.to_string()))
    }

    pub fn app(&self, key: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.key == key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    #[error("service secret unavailable: {0}")]
    Unavailable(String),
    #[error("service secret is not valid JSON config: {0}")]
    Invalid(String),
}

/// Where the service secret comes from.
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    async fn load(&self) -> Result<ServiceSecrets, AppsError>;
}

/// A fixed document (tests, tools).
pub struct StaticSecrets(pub ServiceSecrets);

#[async_trait::async_trait]
impl SecretSource for StaticSecrets {
    async fn load(&self) -> Result<ServiceSecrets, AppsError> {
        Ok(self.0.clone())
    }
}

/// Secrets Manager `GetSecretValue` of `PUSHGATE_SECRET_ID`.
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self {
            client,
            secret_id: secret_id.into(),
        }
    }
}

#[async_trait::async_trait]
impl SecretSource for SecretsManagerSource {
    async fn load(&self) -> Result<ServiceSecrets, AppsError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| AppsError::Unavailable(aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string()))?;
        let text = out
            .secret_string()
            .ok_or_else(|| AppsError::Invalid("secret has no string value".into()))?;
        ServiceSecrets::parse(text)
    }
}

/// Caches the secret document (see [`Bounded`]): fresh for the ttl; when a refresh fails
/// the last good copy is served, so a Secrets Manager blip does not reject every
/// request, but only until it is `max_stale` old (`PUSHGATE_SECRET_MAX_STALE_SECONDS`),
/// so a revoked app key or signing secret stops working within that bound even while
/// Secrets Manager is unreachable. Failed loads back off (1 s doubling to 30 s) and are
/// single flight: one `GetSecretValue` at a time per instance, the other requests served
/// the stale copy meanwhile instead of queueing behind the refresh.
pub struct Apps {
    source: Arc<dyn SecretSource>,
    cache: Bounded<ServiceSecrets>,
}

impl Apps {
    /// How long a stale copy may be served by default (`PUSHGATE_SECRET_MAX_STALE_SECONDS`).
    pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(900);

    /// A cache fresh for `ttl`, stale copies served up to [`Apps::DEFAULT_MAX_STALE`].
    pub fn new(source: Arc<dyn SecretSource>, ttl: Duration) -> Self {
        Self::with_policy(source, StalePolicy::new(ttl, Self::DEFAULT_MAX_STALE))
    }

    pub fn with_policy(source: Arc<dyn SecretSource>, policy: StalePolicy) -> Self {
        Self {
            source,
            cache: Bounded::new(policy),
        }
    }

    /// A registry over a fixed document.
    pub fn fixed(secrets: ServiceSecrets) -> Self {
        Self::new(Arc::new(StaticSecrets(secrets)), Duration::from_secs(3600))
    }

    pub async fn current(&self) -> Result<Arc<ServiceSecrets>, AppsError> {
        self.cache
            .get("service secret", || self.source.load())
            .await
            .map_err(|e| match e {
                BoundedError::Load(e) => e,
                e @ BoundedError::BackingOff { .. } => AppsError::Unavailable(e.to_string()),
            })
    }

    /// The app's config, or `None` for an unknown key.
    pub async fn app(&self, key: &str) -> Result<Option<AppConfig>, AppsError> {
        Ok(self.current().await?.app(key).cloned())
    }
}

/// Convenience for tests: a document with the given apps.
pub fn secrets_with(apps: Vec<AppConfig>, callback_token: Option<&str>) -> ServiceSecrets {
    ServiceSecrets {
        apps,
        callback_token: callback_token.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_robot_message_must_name_one_of_the_apps_robots() {
        let accounts: ProviderAccounts = serde_json::from_value(serde_json::json!({
            "dingtalk": {"ops": {"token": "t", "secret": "s"}, "dev": {"token": "u"}}
        }))
        .unwrap();
        for (channel, to, unknown) in [
            (Channel::Dingtalk, "ops", None),
            (
                Channel::Dingtalk,
                "qa",
                Some("the app has no DingTalk robot named this (it has: dev, ops)"),
            ),
            (Channel::Feishu, "ops", Some("the app has no Feishu robot configured")),
            (Channel::Sms, "+8613800138000", None),
            (Channel::Webhook, "https://example.com/", None),
        ] {
            assert_eq!(
                accounts.unknown_robot(channel, to).as_deref(),
                unknown,
                "{channel:?} {to}"
            );
        }
    }
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A secret source that counts its loads, and can be slow, fail, or change.
    #[derive(Default)]
    struct Fake {
        loads: AtomicUsize,
        failing: AtomicBool,
        delay: Mutex<Duration>,
        keys: Mutex<Vec<&'static str>>,
    }

    #[async_trait::async_trait]
    impl SecretSource for Fake {
        async fn load(&self) -> Result<ServiceSecrets, AppsError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(AppsError::Unavailable("down".into()));
            }
            let apps = self.keys.lock().unwrap().iter().map(|k| app(k)).collect();
            Ok(secrets_with(apps, None))
        }
    }

    fn app(key: &str) -> AppConfig {
        serde_json::from_value(serde_json::json!({"key": key, "secrets": ["s"]})).unwrap()
    }

    const TTL: Duration = Duration::from_secs(300);
    const MAX_STALE: Duration = Duration::from_secs(900);

    fn setup() -> (Arc<Fake>, Arc<Apps>) {
        let fake = Arc::new(Fake::default());
        *fake.keys.lock().unwrap() = vec!["a", "b"];
        let apps = Arc::new(Apps::with_policy(fake.clone(), StalePolicy::new(TTL, MAX_STALE)));
        (fake, apps)
    }

    fn loads(fake: &Fake) -> usize {
        fake.loads.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_burst_makes_one_load() {
        let (fake, apps) = setup();
        *fake.delay.lock().unwrap() = Duration::from_millis(200);
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let apps = apps.clone();
                tokio::spawn(async move { apps.current().await.map(|d| d.apps.len()) })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), 2);
        }
        assert_eq!(loads(&fake), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_never_wait_for_a_refresh_while_a_stale_copy_is_usable() {
        let (fake, apps) = setup();
        apps.current().await.unwrap();
        tokio::time::advance(TTL + Duration::from_secs(1)).await;
        *fake.delay.lock().unwrap() = Duration::from_secs(10);
        let refresher = {
            let apps = apps.clone();
            tokio::spawn(async move { apps.current().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(loads(&fake), 2, "the refresh is under way");
        let started = tokio::time::Instant::now();
        for _ in 0..20 {
            assert!(apps.app("a").await.unwrap().is_some());
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "served the stale copy at once");
        assert_eq!(loads(&fake), 2, "one refresh in flight, no more");
        refresher.await.unwrap().unwrap();
    }

    /// A failed refresh serves the stale copy only until it is `max_stale` old, so a
    /// revoked key stops working within that bound; meanwhile loads back off instead of
    /// being retried by every request.
    #[tokio::test(start_paused = true)]
    async fn staleness_is_bounded_and_failed_refreshes_back_off() {
        let (fake, apps) = setup();
        apps.current().await.unwrap();
        fake.failing.store(true, Ordering::SeqCst);
        tokio::time::advance(TTL + Duration::from_secs(1)).await;
        assert!(apps.app("a").await.unwrap().is_some(), "stale copy served");
        assert_eq!(loads(&fake), 2);
        for _ in 0..100 {
            assert!(apps.app("a").await.unwrap().is_some());
        }
        assert_eq!(loads(&fake), 2, "backing off: no load per request");
        tokio::time::advance(Duration::from_millis(1_100)).await;
        apps.current().await.unwrap();
        assert_eq!(loads(&fake), 3, "retried after the first back-off (1 s)");
        tokio::time::advance(Duration::from_millis(1_100)).await;
        apps.current().await.unwrap();
        assert_eq!(loads(&fake), 3, "the second back-off is 2 s");

        // Past max_stale the copy is no longer served: the request fails, not the old key.
        tokio::time::advance(MAX_STALE).await;
        assert!(matches!(apps.current().await, Err(AppsError::Unavailable(_))));
        let failed = loads(&fake);
        assert!(matches!(apps.app("a").await, Err(AppsError::Unavailable(_))));
        assert_eq!(loads(&fake), failed, "still backing off, without a copy");

        // The source recovers without app "a" (revoked): it is gone at the next load.
        fake.failing.store(false, Ordering::SeqCst);
        *fake.keys.lock().unwrap() = vec!["b"];
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(apps.app("a").await.unwrap().is_none());
        assert!(apps.app("b").await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_failure_backs_off_too() {
        let (fake, apps) = setup();
        fake.failing.store(true, Ordering::SeqCst);
        assert!(apps.current().await.is_err());
        assert!(apps.current().await.is_err());
        assert_eq!(loads(&fake), 1, "the second call did not load again");
        fake.failing.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(apps.current().await.unwrap().apps.len(), 2);
        assert_eq!(loads(&fake), 2);
    }
}
