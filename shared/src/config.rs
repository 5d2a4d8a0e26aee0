//! Environment configuration. Every variable is documented in the README and wired in
//! `template.yaml`; defaults suit production, the dev stack overrides a few.

use std::time::Duration;

/// Errors reading configuration at cold start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {0} is invalid: {1}")]
    Invalid(&'static str, String),
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    var(name).ok_or(ConfigError::Missing(name))
}

fn number<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid(name, v)),
    }
}

fn flag(name: &'static str) -> Result<bool, ConfigError> {
    match var(name).as_deref().map(str::trim) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ConfigError::Invalid(name, other.to_string())),
    }
}

/// `PUSHGATE_PUBLIC_URL` (optional): this API's public base URL, which providers call
/// back and sign over.
pub fn public_url() -> Option<String> {
    var("PUSHGATE_PUBLIC_URL").map(|v| v.trim_end_matches('/').to_string())
}

/// Settings common to all functions.
#[derive(Debug, Clone)]
pub struct Common {
    /// `PUSHGATE_MESSAGES_TABLE`
    pub messages_table: String,
    /// `PUSHGATE_SECRET_ID`: Secrets Manager id of the service secret (apps, tokens).
    pub secret_id: String,
    /// `PUSHGATE_SECRET_TTL_SECONDS` (300): how long the secret is cached.
    pub secret_ttl: Duration,
    /// `PUSHGATE_SECRET_MAX_STALE_SECONDS` (900, at least the ttl): how long a copy of the
    /// secret is served at most, since it was read, while refreshes fail; the bound on
    /// how long a revoked app key keeps working during a Secrets Manager outage.
    pub secret_max_stale: Duration,
    /// `PUSHGATE_WEBHOOK_ALLOW_PRIVATE` (false)
    pub webhook_allow_private: bool,
}

impl Common {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            messages_table: required("PUSHGATE_MESSAGES_TABLE")?,
            secret_id: required("PUSHGATE_SECRET_ID")?,
            secret_ttl: Duration::from_secs(number("PUSHGATE_SECRET_TTL_SECONDS", 300u64)?),
            secret_max_stale: Duration::from_secs(number("PUSHGATE_SECRET_MAX_STALE_SECONDS", 900u64)?),
            webhook_allow_private: flag("PUSHGATE_WEBHOOK_ALLOW_PRIVATE")?,
        })
    }
}

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// `PUSHGATE_QUEUE_URL`
    pub queue_url: String,
    /// `PUSHGATE_CLOCK_SKEW_SECONDS` (300)
    pub clock_skew_secs: i64,
    /// `PUSHGATE_MAX_BODY_BYTES` (65536)
    pub max_body_bytes: usize,
    /// `PUSHGATE_RETENTION_DAYS` (7, at least 1): how long message records (and so
    /// idempotency keys) are kept.
    pub retention_days: i64,
    pub webhook_allow_private: bool,
    /// `PUSHGATE_TEMPLATES_TABLE` (optional): DynamoDB table of templates; without it
    /// the templates bundled with the build are used.
    pub templates_table: Option<String>,
    /// `PUSHGATE_TEMPLATES_TTL_SECONDS` (60): how long templates are cached.
    pub templates_ttl: Duration,
    /// `PUSHGATE_SCHEDULE_GROUP`, `PUSHGATE_SEND_QUEUE_ARN`, `PUSHGATE_SCHEDULER_ROLE_ARN`
    /// (optional, all three or none): EventBridge Scheduler for `send_at` more than 15
    /// minutes ahead. Without them such a `send_at` is a 422.
    pub scheduling: Option<Scheduling>,
    /// `PUSHGATE_SCHEDULE_HORIZON_DAYS` (365): how far ahead `send_at` may be.
    pub schedule_horizon_days: i64,
    /// `PUSHGATE_MAX_BATCH_BODY_BYTES` (5 MiB): the largest `POST /v1/messages/batch`
    /// body (10,000 recipients with a little data each; API Gateway takes up to 10 MB,
    /// a synchronous Lambda invocation 6 MB).
    pub max_batch_body_bytes: usize,
}

/// `PUSHGATE_RECURRING_GROUP_PREFIX`, checked: it names IAM resources (`{prefix}.*`).
fn recurring_prefix() -> Result<String, ConfigError> {
    let prefix = var("PUSHGATE_RECURRING_GROUP_PREFIX").unwrap_or_else(|| "pushgate".into());
    let ok = (1..=20).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match ok {
        true => Ok(prefix),
        false => Err(ConfigError::Invalid("PUSHGATE_RECURRING_GROUP_PREFIX", prefix)),
    }
}

/// Where one-time schedules go ([`Ingest::scheduling`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduling {
    pub group: String,
    pub queue_arn: String,
    pub role_arn: String,
    /// `PUSHGATE_SCHEDULER_DLQ_ARN` (optional): where Scheduler puts a job it could not
    /// deliver after its retries, for operators to see (the sweep releases the message
    /// anyway).
    pub dead_letter_arn: Option<String>,
    /// `PUSHGATE_RECURRING_GROUP_PREFIX` (`pushgate`; 1-20 of `[A-Za-z0-9_-]`): recurring
    /// schedules go in one group per app, `{prefix}.{app}`.
    pub recurring_prefix: String,
}

impl Ingest {
    pub fn from_env(common: &Common) -> Result<Self, ConfigError> {
        Ok(Self {
            queue_url: required("PUSHGATE_QUEUE_URL")?,
            clock_skew_secs: number("PUSHGATE_CLOCK_SKEW_SECONDS", 300)?,
            max_body_bytes: number("PUSHGATE_MAX_BODY_BYTES", 65536)?,
            retention_days: number("PUSHGATE_RETENTION_DAYS", 7i64)?.max(1),
            webhook_allow_private: common.webhook_allow_private,
            templates_table: var("PUSHGATE_TEMPLATES_TABLE"),
            templates_ttl: Duration::from_secs(number("PUSHGATE_TEMPLATES_TTL_SECONDS", 60u64)?),
            scheduling: match (
                var("PUSHGATE_SCHEDULE_GROUP"),
                var("PUSHGATE_SEND_QUEUE_ARN"),
                var("PUSHGATE_SCHEDULER_ROLE_ARN"),
            ) {
                (Some(group), Some(queue_arn), Some(role_arn)) => Some(Scheduling {
                    group,
                    queue_arn,
                    role_arn,
                    dead_letter_arn: var("PUSHGATE_SCHEDULER_DLQ_ARN"),
                    recurring_prefix: recurring_prefix()?,
                }),
                (None, None, None) => None,
                _ => return Err(ConfigError::Missing(
                    "PUSHGATE_SCHEDULE_GROUP, PUSHGATE_SEND_QUEUE_ARN and PUSHGATE_SCHEDULER_ROLE_ARN (all or none)",
                )),
            },
            schedule_horizon_days: number("PUSHGATE_SCHEDULE_HORIZON_DAYS", 365i64)?.max(1),
            max_batch_body_bytes: number("PUSHGATE_MAX_BATCH_BODY_BYTES", 5 * 1024 * 1024)?,
        })
    }
}

/// Settings of the event functions (`events`, `deliver`) and of the endpoints API.
#[derive(Debug, Clone)]
pub struct Events {
    /// `PUSHGATE_ENDPOINTS_TABLE`: apps' event endpoints and their delivery attempts.
    pub endpoints_table: String,
    /// `PUSHGATE_DELIVERY_QUEUE_URL`: one job per event and endpoint.
    pub delivery_queue_url: String,
    /// `PUSHGATE_WEBHOOK_TIMEOUT_MS` (5000): one delivery POST, connection included.
    pub timeout: Duration,
    /// `PUSHGATE_WEBHOOK_ALLOW_PRIVATE` (false): endpoints pass the webhook SSRF rules.
    pub allow_private: bool,
    /// `PUSHGATE_DELIVERY_CONCURRENCY` (10): deliveries of a batch in flight at once.
    pub concurrency: usize,
}

impl Events {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            endpoints_table: required("PUSHGATE_ENDPOINTS_TABLE")?,
            delivery_queue_url: required("PUSHGATE_DELIVERY_QUEUE_URL")?,
            timeout: Duration::from_millis(number("PUSHGATE_WEBHOOK_TIMEOUT_MS", 5000u64)?),
            allow_private: flag("PUSHGATE_WEBHOOK_ALLOW_PRIVATE")?,
            concurrency: number("PUSHGATE_DELIVERY_CONCURRENCY", 10usize)?.max(1),
        })
    }
}

/// Sweep settings.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// `PUSHGATE_ENDPOINTS_TABLE`: where the sweep index is kept.
    pub endpoints_table: String,
    /// `PUSHGATE_QUEUE_URL`: the send queue, for orphaned records.
    pub queue_url: String,
    /// `PUSHGATE_RECEIPT_TIMEOUT_HOURS` (`sms=72,email=48`, merged over those defaults) and
    /// `PUSHGATE_ORPHAN_AFTER_SECONDS` (300).
    pub timeouts: crate::sweep::Timeouts,
}

impl Sweep {
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut timeouts = crate::sweep::Timeouts::default();
        if let Some(spec) = var("PUSHGATE_RECEIPT_TIMEOUT_HOURS") {
            timeouts = timeouts
                .with_receipt_hours(&spec)
                .map_err(|bad| ConfigError::Invalid("PUSHGATE_RECEIPT_TIMEOUT_HOURS", bad))?;
        }
        timeouts.dispatch = Duration::from_secs(number("PUSHGATE_ORPHAN_AFTER_SECONDS", 300u64)?);
        Ok(Self {
            endpoints_table: required("PUSHGATE_ENDPOINTS_TABLE")?,
            queue_url: required("PUSHGATE_QUEUE_URL")?,
            timeouts,
        })
    }
}

/// Receipt pull settings (function `pull`).
#[derive(Debug, Clone)]
pub struct Pull {
    /// `PUSHGATE_ENDPOINTS_TABLE`: where the sweep index is kept.
    pub endpoints_table: String,
    /// `PUSHGATE_PULL_DELAY_SECONDS` (120): how long after its send a message is first
    /// asked about (receipts usually come within seconds; a push may still beat the pull).
    pub delay: Duration,
    /// `PUSHGATE_PULL_WINDOW_HOURS` (24): how long after its send a message is still
    /// asked about, every run (Tencent keeps 7 days, Aliyun 30; the sweep's receipt
    /// timeout settles what stays unreported).
    pub window: Duration,
    /// `PUSHGATE_PULL_CALLS_PER_ACCOUNT` (100): provider calls per provider account and
    /// run, at most (calls go one at a time).
    pub calls_per_account: u32,
    /// `PUSHGATE_PROVIDER_TIMEOUT_MS` (5000): one provider call.
    pub provider_timeout: Duration,
    /// The provider endpoints (as the dispatcher's).
    pub endpoints: Endpoints,
}

impl Pull {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            endpoints_table: required("PUSHGATE_ENDPOINTS_TABLE")?,
            delay: Duration::from_secs(number("PUSHGATE_PULL_DELAY_SECONDS", 120u64)?),
            window: Duration::from_secs(number("PUSHGATE_PULL_WINDOW_HOURS", 24u64)?.saturating_mul(3_600)),
            calls_per_account: number("PUSHGATE_PULL_CALLS_PER_ACCOUNT", 100u32)?,
            provider_timeout: Duration::from_millis(number("PUSHGATE_PROVIDER_TIMEOUT_MS", 5000)?),
            endpoints: Endpoints::from_env(),
        })
    }
}

/// What the receipt path needs to fall back on failed receipts (the callback function):
/// `PUSHGATE_ROUTES_TABLE` and `PUSHGATE_QUEUE_URL`, both or neither (without them failed
/// receipts never fall back), and `PUSHGATE_ROUTES_TTL_SECONDS`.
pub fn receipt_fallback() -> Result<Option<(String, String, Duration)>, ConfigError> {
    match (var("PUSHGATE_ROUTES_TABLE"), var("PUSHGATE_QUEUE_URL")) {
        (Some(table), Some(queue)) => Ok(Some((
            table,
            queue,
            Duration::from_secs(number("PUSHGATE_ROUTES_TTL_SECONDS", 60)?),
        ))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Invalid(
            "PUSHGATE_QUEUE_URL",
            "required with PUSHGATE_ROUTES_TABLE (receipt fallback)".into(),
        )),
        (None, Some(_)) => Ok(None),
    }
}

/// `PUSHGATE_ENDPOINTS_TABLE` and `PUSHGATE_DELIVERY_QUEUE_URL` (optional for ingest):
/// without both the endpoints API is off.
pub fn endpoints_api() -> Option<(String, String)> {
    var("PUSHGATE_ENDPOINTS_TABLE").zip(var("PUSHGATE_DELIVERY_QUEUE_URL"))
}

/// Dispatcher settings.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// `PUSHGATE_QUEUE_URL`: the send queue (retry delays).
    pub queue_url: String,
    /// `PUSHGATE_DLQ_URL`: the dead-letter queue.
    pub dlq_url: String,
    /// `PUSHGATE_EMAIL_FROM`: default sender.
    pub email_from: String,
    /// `PUSHGATE_SES_CONFIGURATION_SET` (optional): SES events for delivery receipts.
    pub ses_configuration_set: Option<String>,
    /// `PUSHGATE_LEASE_SECONDS` (60): claim lease; longer than one provider call.
    pub lease_secs: i64,
    /// `PUSHGATE_MAX_ATTEMPTS` (5): retryable failures before `failed`.
    pub max_attempts: u32,
    /// `PUSHGATE_DISPATCH_CONCURRENCY` (10): records of a batch sent at once.
    pub concurrency: usize,
    /// `PUSHGATE_WEBHOOK_TIMEOUT_MS` (5000)
    pub webhook_timeout: Duration,
    pub webhook_allow_private: bool,
    /// `PUSHGATE_PROVIDER_TIMEOUT_MS` (5000): timeout of provider API calls.
    pub provider_timeout: Duration,
    /// Provider API base URLs (overridable so tests and the dev stack use fakes).
    pub endpoints: Endpoints,
    /// `PUSHGATE_PUBLIC_URL` (optional): this API's public base URL, for provider status
    /// callbacks (Twilio `StatusCallback`).
    pub public_url: Option<String>,
    /// `PUSHGATE_ROUTES_TABLE` (optional): routing rules; without it every app uses its
    /// own provider order and the default error actions.
    pub routes_table: Option<String>,
    /// `PUSHGATE_ROUTES_TTL_SECONDS` (60): how long an instance caches the routes.
    pub routes_ttl: Duration,
    /// `PUSHGATE_BREAKER_FAILURES` (5) failures within `PUSHGATE_BREAKER_WINDOW_SECONDS`
    /// (60) open a provider account's circuit for `PUSHGATE_BREAKER_COOLDOWN_SECONDS` (30).
    pub breaker: crate::shaping::BreakerPolicy,
    /// `PUSHGATE_MAX_RETRY_DELAY_SECONDS` (900): the longest a retry or deferral hides a
    /// job (backoff cap; provider-requested waits are cut to it too).
    pub max_retry_delay: Duration,
    /// `PUSHGATE_BREAKER_CACHE_MS` (1000): how long an instance trusts the circuit state
    /// it read (the happy path reads it at most this often per provider account).
    pub breaker_cache_ms: i64,
    /// `PUSHGATE_RETENTION_DAYS` (7, at least 1): how long the message records it creates
    /// for recurring schedules' occurrences are kept.
    pub retention_days: i64,
}

/// Provider API base URLs, each from its own variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `PUSHGATE_ALIYUN_SMS_ENDPOINT`
    pub aliyun_sms: String,
    /// `PUSHGATE_TENCENT_SMS_ENDPOINT`
    pub tencent_sms: String,
    /// `PUSHGATE_TWILIO_ENDPOINT`
    pub twilio: String,
    /// `PUSHGATE_DINGTALK_ENDPOINT`
    pub dingtalk: String,
    /// `PUSHGATE_WECOM_ENDPOINT`
    pub wecom: String,
    /// `PUSHGATE_FEISHU_ENDPOINT`
    pub feishu: String,
    /// `PUSHGATE_WECHAT_ENDPOINT`
    pub wechat: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            aliyun_sms: "https://dysmsapi.aliyuncs.com".into(),
            tencent_sms: "https://sms.tencentcloudapi.com".into(),
            twilio: "https://api.twilio.com".into(),
            dingtalk: "https://oapi.dingtalk.com".into(),
            wecom: "https://qyapi.weixin.qq.com".into(),
            feishu: "https://open.feishu.cn".into(),
            wechat: "https://api.weixin.qq.com".into(),
        }
    }
}

impl Endpoints {
    pub fn from_env() -> Self {
        let d = Self::default();
        let pick = |name: &'static str, default: String| {
            var(name)
                .map(|v| v.trim_end_matches('/').to_string())
                .unwrap_or(default)
        };
        Self {
            aliyun_sms: pick("PUSHGATE_ALIYUN_SMS_ENDPOINT", d.aliyun_sms),
            tencent_sms: pick("PUSHGATE_TENCENT_SMS_ENDPOINT", d.tencent_sms),
            twilio: pick("PUSHGATE_TWILIO_ENDPOINT", d.twilio),
            dingtalk: pick("PUSHGATE_DINGTALK_ENDPOINT", d.dingtalk),
            wecom: pick("PUSHGATE_WECOM_ENDPOINT", d.wecom),
            feishu: pick("PUSHGATE_FEISHU_ENDPOINT", d.feishu),
            wechat: pick("PUSHGATE_WECHAT_ENDPOINT", d.wechat),
        }
    }

    /// Every endpoint at one base URL (a local fake serving all providers).
    pub fn all_at(base: &str) -> Self {
        let base = base.trim_end_matches('/').to_string();
        Self {
            aliyun_sms: base.clone(),
            tencent_sms: base.clone(),
            twilio: base.clone(),
            dingtalk: base.clone(),
            wecom: base.clone(),
            feishu: base.clone(),
            wechat: base,
        }
    }
}

impl Dispatch {
    pub fn from_env(common: &Common) -> Result<Self, ConfigError> {
        let cfg = Self::read(common)?;
        // A send starts only if it can end before the lease does (see the dispatcher).
        let longest = cfg.provider_timeout.max(cfg.webhook_timeout).as_secs_f64();
        if cfg.lease_secs as f64 <= 2.0 * longest + 1.0 {
            return Err(ConfigError::Invalid(
                "PUSHGATE_LEASE_SECONDS",
                format!(
                    "{} s must exceed twice the provider/webhook timeout ({longest} s) by more than 1 s",
                    cfg.lease_secs
                ),
            ));
        }
        Ok(cfg)
    }

    fn read(common: &Common) -> Result<Self, ConfigError> {
        Ok(Self {
            queue_url: required("PUSHGATE_QUEUE_URL")?,
            dlq_url: required("PUSHGATE_DLQ_URL")?,
            email_from: var("PUSHGATE_EMAIL_FROM").unwrap_or_else(|| "noreply@example.com".into()),
            ses_configuration_set: var("PUSHGATE_SES_CONFIGURATION_SET"),
            lease_secs: number("PUSHGATE_LEASE_SECONDS", 60)?,
            max_attempts: number("PUSHGATE_MAX_ATTEMPTS", 5)?,
            concurrency: number("PUSHGATE_DISPATCH_CONCURRENCY", 10usize)?.max(1),
            webhook_timeout: Duration::from_millis(number("PUSHGATE_WEBHOOK_TIMEOUT_MS", 5000)?),
            webhook_allow_private: common.webhook_allow_private,
            provider_timeout: Duration::from_millis(number("PUSHGATE_PROVIDER_TIMEOUT_MS", 5000)?),
            endpoints: Endpoints::from_env(),
            public_url: public_url(),
            routes_table: var("PUSHGATE_ROUTES_TABLE"),
            routes_ttl: Duration::from_secs(number("PUSHGATE_ROUTES_TTL_SECONDS", 60)?),
            breaker: crate::shaping::BreakerPolicy {
                failures: number("PUSHGATE_BREAKER_FAILURES", 5u32)?.max(1),
                window_ms: number("PUSHGATE_BREAKER_WINDOW_SECONDS", 60i64)?.max(1) * 1000,
                cool_down_ms: number("PUSHGATE_BREAKER_COOLDOWN_SECONDS", 30i64)?.max(1) * 1000,
            },
            breaker_cache_ms: number("PUSHGATE_BREAKER_CACHE_MS", 1000)?,
            max_retry_delay: Duration::from_secs(number("PUSHGATE_MAX_RETRY_DELAY_SECONDS", 900u64)?.clamp(1, 43_200)),
            retention_days: number("PUSHGATE_RETENTION_DAYS", 7i64)?.max(1),
        })
    }
}
