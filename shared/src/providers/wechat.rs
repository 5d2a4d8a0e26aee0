//! WeChat Official Account template messages (`/cgi-bin/message/template/send`).
//!
//! Every send needs the account's access token, and WeChat hands out one token per
//! appid: a forced refresh (and, at expiry, a normal one) invalidates the token every
//! other Lambda instance holds. So the token lives centrally, in its own item of the
//! messages table, and one refresher at a time renews it under a conditional-write lock
//! while the others wait for its result instead of stampeding `stable_token`. Each
//! instance keeps an in-memory copy too, so a warm send costs no DynamoDB call at all.
//!
//! The token is a bearer credential: it is never logged, never put in an error, and
//! transport errors lose their URL (which carries it) before they are classified.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::ReceiptSource;
use super::{transport_error, Provider};
use crate::apps::ServiceSecrets;
use crate::apps::{AppConfig, ProviderAccounts, WechatAccount};
use crate::clock::Clock;
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::Status;
use crate::message::{Channel, Message, WechatTemplate};
use crate::receipts::{constant_time_eq, Batch, Inbound, Receipt, ReceiptError, Refusal, Reply, Scope};
use sha1::{Digest, Sha1};

/// Prefix of the token items' keys. Message keys are `{app}_s_{hex}` / `{app}_i_{hex}`:
/// their last `_`-separated part is hex, while here it holds dots (and the appid is
/// alphanumeric), so the two can never collide. Token items carry no `id`, so they stay
/// out of the `by_id` index as well.
pub const TOKEN_PK_PREFIX: &str = "_token.wechat.";

/// Refresh this long before the token's end, so sends never race its expiry.
const REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;
/// Never schedule refreshes closer together than this: WeChat's normal mode returns the
/// same token (with its remaining lifetime) until it expires.
const MIN_REFRESH_INTERVAL_MS: i64 = 30 * 1000;
/// How long a refresher holds the lock: longer than one `stable_token` call should take;
/// a crashed holder is overtaken after it.
const LOCK_MS: i64 = 5_000;
/// How often a waiter re-reads the item while another instance refreshes.
const POLL: Duration = Duration::from_millis(100);
/// How long a send waits for someone else's refresh before giving up (retryable). Longer
/// than the lock, so a dead holder is overtaken within one send.
const WAIT_MS: i64 = 6_000;
/// How long a token that is due but still valid is reused while another instance refreshes.
const BORROW_MS: i64 = 1_000;
/// Token items outlive the token by this much before the table TTL deletes them.
const ITEM_SLACK_SECS: i64 = 86_400;
/// WeChat's daily quotas reset at midnight Beijing time (UTC+8).
const QUOTA_DAY_OFFSET_MS: i64 = 8 * 3_600_000;
/// Longest deferral after a daily-quota answer: operators can reset the quota
/// (`clear_quota`) before midnight, so look again every hour.
const QUOTA_RECHECK_MS: i64 = 3_600_000;

/// An access token. Its `Debug` is redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
struct AccessToken(String);

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

/// A token and its schedule (Unix milliseconds).
#[derive(Clone, Debug)]
struct Cached {
    token: AccessToken,
    /// When to fetch a new one (early, before `expires_at`).
    refresh_at: i64,
    /// When WeChat stops accepting it.
    expires_at: i64,
}

impl Cached {
    /// Fresh enough to use without asking anyone, and not the one just rejected.
    fn fresh(&self, stale: Option<&AccessToken>, now: i64) -> bool {
        now < self.refresh_at && now < self.expires_at && stale != Some(&self.token)
    }
}

/// When to refresh a token that WeChat says lives `expires_in_s` from `now`: the margin
/// before its end, but never sooner than the minimum interval (nor after its end).
fn schedule(now: i64, expires_in_s: i64) -> (i64, i64) {
    let expires_at = now + expires_in_s * 1000;
    let early = expires_at - REFRESH_MARGIN_MS.min(expires_in_s * 500);
    let refresh_at = early.max((now + MIN_REFRESH_INTERVAL_MS).min(expires_at));
    (refresh_at, expires_at)
}

/// How long to defer after a daily-quota answer: until just past midnight Beijing time,
/// or an hour, whichever comes first.
fn until_quota_reset(now: i64) -> Duration {
    let day = 86_400_000;
    let into_day = (now + QUOTA_DAY_OFFSET_MS).rem_euclid(day);
    let until = day - into_day + 60_000;
    Duration::from_millis(until.min(QUOTA_RECHECK_MS) as u64)
}

/// Token answers: the token is no longer (or never was) accepted.
fn is_token_error(errcode: i64) -> bool {
    matches!(errcode, 40001 | 40014 | 42001)
}

/// Classifies a WeChat `errcode` (providers.md). The token codes land here only after
/// the one refresh-and-retry, so they are final too.
fn classify(errcode: i64, errmsg: &str, now: i64) -> ProviderError {
    let code = errcode.to_string();
    match errcode {
        -1 => ProviderError::new(ErrorClass::Retryable, code, "system busy"),
        // Daily quota: the messages are fine, today's allowance is not.
        45009 => ProviderError::new(ErrorClass::Deferrable, code, "daily API quota reached")
            .retry_after(until_quota_reset(now)),
        // Per-minute API quota.
        45011 => ProviderError::new(ErrorClass::Deferrable, code, "API minute quota reached")
            .retry_after(Duration::from_secs(60)),
        43004 => ProviderError::new(ErrorClass::Permanent, code, "recipient does not follow the account"),
        40003 => ProviderError::new(ErrorClass::Permanent, code, "invalid OpenID"),
        40037 => ProviderError::new(ErrorClass::Permanent, code, "invalid template_id"),
        47003 => ProviderError::new(ErrorClass::Permanent, code, "template data invalid"),
        c if is_token_error(c) => {
            ProviderError::new(ErrorClass::Permanent, code, "access token rejected after refresh")
        }
        _ => ProviderError::new(ErrorClass::Permanent, code, errmsg.to_string()),
    }
}

/// An error message from WeChat, bounded and with the token cut out should it echo it.
fn scrub(errmsg: &str, token: &AccessToken) -> String {
    let mut msg = if token.0.is_empty() {
        errmsg.to_string()
    } else {
        errmsg.replace(&token.0, "***")
    };
    if msg.len() > 200 {
        let mut end = 200;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
    }
    msg
}

/// The template-send body: `data` values become `{"value": …}`.
fn payload(to: &str, t: &WechatTemplate) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> = t
        .data
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!({ "value": v })))
        .collect();
    let mut body = serde_json::json!({
        "touser": to,
        "template_id": t.template_id,
        "data": data,
    });
    if let Some(url) = &t.url {
        body["url"] = serde_json::Value::String(url.clone());
    }
    body
}

/// The token item's key for an appid; appids are alphanumeric (`wx` + hex).
fn token_pk(appid: &str) -> Result<String, ProviderError> {
    if appid.is_empty() || appid.len() > 64 || !appid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ProviderError::new(
            ErrorClass::Permanent,
            "bad_appid",
            "the WeChat appid must be alphanumeric",
        ));
    }
    Ok(format!("{TOKEN_PK_PREFIX}{appid}"))
}

/// DynamoDB failures around the token: nothing was sent, so retrying is safe.
fn store_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: fmt::Debug>(
    e: SdkError<E, R>,
) -> ProviderError {
    let message = match &e {
        // Service errors are described by their code and message, never by the request.
        SdkError::ServiceError(_) => format!("{}: {}", e.code().unwrap_or("error"), e.message().unwrap_or_default()),
        _ => DisplayErrorContext(&e).to_string(),
    };
    ProviderError::new(ErrorClass::Retryable, "token_store", format!("token store: {message}"))
}

fn num(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// What the token item says.
#[derive(Debug, Default)]
struct Central {
    token: Option<Cached>,
    lock_until: Option<i64>,
}

impl Central {
    /// Reads an item; one past its TTL (`expires_at`, seconds) counts as absent since
    /// DynamoDB deletes expired items late (and moto never does).
    fn parse(item: Option<&HashMap<String, AttributeValue>>, now: i64) -> Self {
        let Some(item) = item else {
            return Self::default();
        };
        if num(item, "expires_at").is_some_and(|ttl| ttl < now / 1000) {
            return Self::default();
        }
        let token = (|| {
            Some(Cached {
                token: AccessToken(item.get("access_token")?.as_s().ok()?.clone()),
                refresh_at: num(item, "refresh_at")?,
                expires_at: num(item, "token_expires_at")?,
            })
        })();
        Self {
            token: token.filter(|c| !c.token.0.is_empty()),
            lock_until: num(item, "lock_until"),
        }
    }

    /// A token this send may use now, if any: a fresh one, or, while someone else holds
    /// the lock, a due one that has not expired yet (borrowed briefly).
    fn usable(&self, stale: Option<&AccessToken>, now: i64) -> Option<Cached> {
        let c = self.token.as_ref()?;
        if c.fresh(stale, now) {
            return Some(c.clone());
        }
        let locked = self.lock_until.is_some_and(|l| l >= now);
        (locked && now < c.expires_at && stale != Some(&c.token)).then(|| Cached {
            refresh_at: (now + BORROW_MS).min(c.expires_at),
            ..c.clone()
        })
    }
}

/// The answer of `stable_token`, or of `template/send`.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    msgid: Option<serde_json::Value>,
}

/// The centrally cached tokens, with this instance's copies.
struct Tokens {
    http: reqwest::Client,
    endpoint: String,
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    /// This instance's copies, by appid: the steady state reads only these.
    memory: RwLock<HashMap<String, Cached>>,
    /// One refresh per appid at a time within this instance.
    flights: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Token schedules, lock leases and waits are measured on it.
    clock: Clock,
}

impl Tokens {
    /// A token for `account`. `stale` is one WeChat just rejected: it is not returned
    /// again, and a refresh because of it forces a new token.
    async fn get(&self, account: &WechatAccount, stale: Option<&AccessToken>) -> Result<AccessToken, ProviderError> {
        let pk = token_pk(&account.appid)?;
        if let Some(t) = self.remembered(&account.appid, stale).await {
            return Ok(t);
        }
        let flight = self
            .flights
            .lock()
            .await
            .entry(account.appid.clone())
            .or_default()
            .clone();
        let _flight = flight.lock().await;
        // Another task of this instance may have refreshed while this one waited.
        if let Some(t) = self.remembered(&account.appid, stale).await {
            return Ok(t);
        }
        let cached = self.central(&pk, account, stale).await?;
        let token = cached.token.clone();
        self.memory.write().await.insert(account.appid.clone(), cached);
        Ok(token)
    }

    async fn remembered(&self, appid: &str, stale: Option<&AccessToken>) -> Option<AccessToken> {
        let now = (self.clock)();
        self.memory
            .read()
            .await
            .get(appid)
            .filter(|c| c.fresh(stale, now))
            .map(|c| c.token.clone())
    }

    /// The central token: taken from the item, or refreshed under its lock, or awaited
    /// from whoever holds the lock.
    async fn central(
        &self,
        pk: &str,
        account: &WechatAccount,
        stale: Option<&AccessToken>,
    ) -> Result<Cached, ProviderError> {
        let deadline = (self.clock)() + WAIT_MS;
        loop {
            let owner = ulid::Ulid::new().to_string();
            let now = (self.clock)();
            match self.lock(pk, &owner, stale, now).await? {
                None => return self.refresh(pk, &owner, account, stale.is_some()).await,
                Some(item) => {
                    if let Some(c) = item.usable(stale, now) {
                        return Ok(c);
                    }
                }
            }
            // Someone else is refreshing: wait for their token rather than ask WeChat too.
            loop {
                if (self.clock)() >= deadline {
                    return Err(ProviderError::new(
                        ErrorClass::Retryable,
                        "token_busy",
                        "another instance is still refreshing the access token",
                    ));
                }
                tokio::time::sleep(POLL).await;
                let item = self.read(pk).await?;
                let now = (self.clock)();
                if let Some(c) = item.usable(stale, now) {
                    return Ok(c);
                }
                if item.lock_until.is_none_or(|l| l < now) {
                    break; // The holder finished without a usable token, or died: try the lock.
                }
            }
        }
    }

    /// Takes the refresh lock if it is free and the stored token needs replacing (one
    /// conditional UpdateItem). `None` = taken; otherwise the item as it stands.
    async fn lock(
        &self,
        pk: &str,
        owner: &str,
        stale: Option<&AccessToken>,
        now: i64,
    ) -> Result<Option<Central>, ProviderError> {
        let mut needs = "attribute_not_exists(access_token) OR refresh_at <= :now OR expires_at < :now_s".to_string();
        let mut req = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.to_string()))
            .update_expression("SET lock_owner = :owner, lock_until = :until, expires_at = :ttl")
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_string()))
            .expression_attribute_values(":until", AttributeValue::N((now + LOCK_MS).to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":now_s", AttributeValue::N((now / 1000).to_string()))
            .expression_attribute_values(":ttl", AttributeValue::N((now / 1000 + ITEM_SLACK_SECS).to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(stale) = stale {
            needs.push_str(" OR access_token = :stale");
            req = req.expression_attribute_values(":stale", AttributeValue::S(stale.0.clone()));
        }
        let condition = format!("(attribute_not_exists(lock_until) OR lock_until < :now) AND ({needs})");
        match req.condition_expression(condition).send().await {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                    Ok(Some(Central::parse(c.item(), now)))
                }
                _ => Err(store_error(e)),
            },
        }
    }

    /// Reads the token item (strongly consistent: a waiter must see the refresh at once).
    async fn read(&self, pk: &str) -> Result<Central, ProviderError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(Central::parse(out.item.as_ref(), (self.clock)()))
    }

    /// As lock holder: fetch a token, store it and release the lock in one write.
    async fn refresh(
        &self,
        pk: &str,
        owner: &str,
        account: &WechatAccount,
        force: bool,
    ) -> Result<Cached, ProviderError> {
        let now = (self.clock)();
        let fetched = match self.fetch(account, force).await {
            Ok(f) => f,
            Err(e) => {
                self.unlock(pk, owner).await;
                return Err(e);
            }
        };
        let (token, expires_in) = fetched;
        let (refresh_at, expires_at) = schedule(now, expires_in);
        let cached = Cached {
            token,
            refresh_at,
            expires_at,
        };
        let stored = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.to_string()))
            .update_expression(
                "SET access_token = :token, refresh_at = :refresh, token_expires_at = :expires, \
                 expires_at = :ttl, updated_at = :now REMOVE lock_owner, lock_until",
            )
            .condition_expression("lock_owner = :owner")
            .expression_attribute_values(":token", AttributeValue::S(cached.token.0.clone()))
            .expression_attribute_values(":refresh", AttributeValue::N(refresh_at.to_string()))
            .expression_attribute_values(":expires", AttributeValue::N(expires_at.to_string()))
            .expression_attribute_values(
                ":ttl",
                AttributeValue::N((expires_at / 1000 + ITEM_SLACK_SECS).to_string()),
            )
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_string()))
            .send()
            .await;
        // The token is good either way; if the lock was overtaken, the new holder's
        // token is the one others will read, and ours stays valid in normal mode.
        if let Err(e) = stored {
            let e = store_error(e);
            tracing::warn!(appid = %account.appid, error = %e, "wechat token not stored centrally");
        }
        tracing::info!(appid = %account.appid, force, "wechat access token refreshed");
        Ok(cached)
    }

    /// Releases the lock after a failed refresh, so the next send may try at once.
    async fn unlock(&self, pk: &str, owner: &str) {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.to_string()))
            .update_expression("REMOVE lock_owner, lock_until")
            .condition_expression("lock_owner = :owner")
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_string()))
            .send()
            .await;
        if let Err(e) = result {
            if !matches!(
                e.as_service_error(),
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(_))
            ) {
                tracing::warn!(error = %store_error(e), "wechat token lock not released; it will expire");
            }
        }
    }

    /// `POST /cgi-bin/stable_token`. No message goes out here, so every failure short
    /// of a rejected credential is retryable (a timeout too).
    async fn fetch(&self, account: &WechatAccount, force: bool) -> Result<(AccessToken, i64), ProviderError> {
        let retryable = |e: reqwest::Error| {
            let e = transport_error(&e.without_url());
            ProviderError::new(ErrorClass::Retryable, format!("token_{}", e.code), e.message)
        };
        let response = self
            .http
            .post(format!("{}/cgi-bin/stable_token", self.endpoint))
            .json(&serde_json::json!({
                "grant_type": "client_credential",
                "appid": account.appid,
                "secret": account.secret,
                "force_refresh": force,
            }))
            .send()
            .await
            .map_err(retryable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(retryable)?;
        if !status.is_success() {
            let class = if status.is_server_error() || status.as_u16() == 429 {
                ErrorClass::Retryable
            } else {
                ErrorClass::Permanent
            };
            return Err(ProviderError::new(
                class,
                format!("token_http_{}", status.as_u16()),
                format!("stable_token answered {status}"),
            ));
        }
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|_| {
            ProviderError::new(
                ErrorClass::Retryable,
                "token_malformed",
                "stable_token answer is not JSON",
            )
        })?;
        if answer.errcode != 0 {
            let class = match answer.errcode {
                -1 => ErrorClass::Retryable,
                45009 | 45011 => ErrorClass::Deferrable,
                // Wrong appid/secret, IP not allow-listed…: configuration, not this message.
                _ => ErrorClass::Permanent,
            };
            let mut e = ProviderError::new(
                class,
                format!("token_{}", answer.errcode),
                format!("stable_token: {}", scrub(&answer.errmsg, &AccessToken(String::new()))),
            );
            if class == ErrorClass::Deferrable {
                e = e.retry_after(Duration::from_secs(60));
            }
            return Err(e);
        }
        match (answer.access_token, answer.expires_in) {
            (Some(t), Some(s)) if !t.is_empty() && s > 0 => Ok((AccessToken(t), s)),
            _ => Err(ProviderError::new(
                ErrorClass::Retryable,
                "token_malformed",
                "stable_token answer has no token",
            )),
        }
    }
}

/// The app's WeChat Official Account: its appid.
pub fn account_id(accounts: &ProviderAccounts, _to: &str) -> Option<String> {
    Some(accounts.wechat.as_ref()?.appid.clone())
}

/// WeChat Official Account template messages.
pub struct Wechat {
    tokens: Tokens,
    /// Bounds a whole send, the access-token wait included (see [`Wechat::new`]).
    timeout: Duration,
}

impl Wechat {
    /// `endpoint` is the API base without a trailing slash; `table` is the messages
    /// table, which also holds one token item per appid. `timeout` bounds a whole send:
    /// the access-token wait (another instance's refresh may take up to `WAIT_MS`), the
    /// template send and the retry after a rejected token together, because the
    /// dispatcher's lease fence allows one provider timeout per call.
    pub fn new(
        http: reqwest::Client,
        endpoint: String,
        ddb: aws_sdk_dynamodb::Client,
        table: String,
        clock: Clock,
        timeout: Duration,
    ) -> Self {
        Self {
            tokens: Tokens {
                http,
                endpoint,
                ddb,
                table,
                memory: RwLock::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                clock,
            },
            timeout,
        }
    }

    /// A token for `account` by `deadline`; nothing was sent yet, so running out of time
    /// is retryable.
    async fn token_by(
        &self,
        account: &WechatAccount,
        stale: Option<&AccessToken>,
        deadline: tokio::time::Instant,
    ) -> Result<AccessToken, ProviderError> {
        tokio::time::timeout_at(deadline, self.tokens.get(account, stale))
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::new(
                    ErrorClass::Retryable,
                    "token_timeout",
                    "no access token in time; nothing was sent",
                ))
            })
    }

    /// [`Wechat::post`] by `deadline`; the request may have reached WeChat, so running out
    /// of time is ambiguous.
    async fn post_by(
        &self,
        token: &AccessToken,
        body: &serde_json::Value,
        deadline: tokio::time::Instant,
    ) -> Result<Result<Sent, ProviderError>, ProviderError> {
        tokio::time::timeout_at(deadline, self.post(token, body))
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::new(
                    ErrorClass::Ambiguous,
                    "timeout",
                    "no answer in time",
                ))
            })
    }

    /// One template send with `token`. `Ok(Err(errcode))` is a token rejection.
    async fn post(
        &self,
        token: &AccessToken,
        body: &serde_json::Value,
    ) -> Result<Result<Sent, ProviderError>, ProviderError> {
        let response = self
            .tokens
            .http
            .post(format!("{}/cgi-bin/message/template/send", self.tokens.endpoint))
            .query(&[("access_token", token.0.as_str())])
            .json(body)
            .send()
            .await
            .map_err(|e| transport_error(&e.without_url()))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| transport_error(&e.without_url()))?;
        if !status.is_success() {
            let class = match status.as_u16() {
                // A gateway gave up waiting: the send may have happened behind it.
                502 | 504 => ErrorClass::Ambiguous,
                429 | 500..=599 => ErrorClass::Retryable,
                _ => ErrorClass::Permanent,
            };
            return Err(ProviderError::new(
                class,
                format!("http_{}", status.as_u16()),
                format!("WeChat answered {status}"),
            ));
        }
        // A 200 we cannot read may still mean sent.
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|_| ProviderError::new(ErrorClass::Ambiguous, "malformed", "WeChat answer is not JSON"))?;
        match answer.errcode {
            0 => Ok(Ok(Sent {
                provider_message_id: answer.msgid.and_then(|m| match m {
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    serde_json::Value::String(s) if !s.is_empty() => Some(s),
                    _ => None,
                }),
                delivered: false,
            })),
            c if is_token_error(c) => Ok(Err(classify(c, "", (self.tokens.clock)()))),
            c => Err(classify(c, &scrub(&answer.errmsg, token), (self.tokens.clock)())),
        }
    }
}

#[async_trait::async_trait]
impl Provider for Wechat {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
    }

    fn name(&self) -> &'static str {
        "wechat"
    }

    fn channel(&self) -> Channel {
        Channel::Wechat
    }

    fn on_ambiguous(&self) -> Ambiguity {
        // Template sends are not idempotent; the TEMPLATESENDJOBFINISH receipt may settle
        // an unknown one later.
        Ambiguity::MarkUnknown
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let account =
            app.providers.wechat.as_ref().ok_or_else(|| {
                ProviderError::new(ErrorClass::Permanent, "no_account", "the app has no WeChat account")
            })?;
        let template = message.content.wechat.as_ref().ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Permanent,
                "no_content",
                "the message has no wechat template",
            )
        })?;
        if message.to.is_empty() {
            return Err(ProviderError::new(ErrorClass::Permanent, "40003", "empty OpenID"));
        }
        let body = payload(&message.to, template);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let token = self.token_by(account, None, deadline).await?;
        match self.post_by(&token, &body, deadline).await? {
            Ok(sent) => Ok(sent),
            // The token was rejected, so nothing went out: refresh (forced) and retry once.
            Err(_) => {
                let token = self.token_by(account, Some(&token), deadline).await?;
                self.post_by(&token, &body, deadline).await?
            }
        }
    }
}

// Receipts: WeChat posts events to the server URL `/v1/callbacks/wechat`, after checking
// it with a GET.

/// WeChat's server signature: hex(sha1(concat(sorted [token, timestamp, nonce]))).
pub fn server_signature(token: &str, timestamp: &str, nonce: &str) -> String {
    let mut parts = [token, timestamp, nonce];
    parts.sort_unstable();
    hex::encode(Sha1::digest(parts.concat().as_bytes()))
}

/// WeChat `TEMPLATESENDJOBFINISH` event (XML). Other events give no receipt.
pub fn parse(body: &[u8]) -> Result<Option<Receipt>, ReceiptError> {
    let xml = std::str::from_utf8(body).map_err(|_| ReceiptError::Unrecognised("not UTF-8"))?;
    if xml_field(xml, "Event").as_deref() != Some("TEMPLATESENDJOBFINISH") {
        return Ok(None);
    }
    let msg_id = xml_field(xml, "MsgID").ok_or(ReceiptError::Unrecognised("no MsgID"))?;
    let status = xml_field(xml, "Status").ok_or(ReceiptError::Unrecognised("no Status"))?;
    Ok(Some(Receipt {
        provider: "wechat",
        pk: None,
        id: None,
        provider_message_id: Some(msg_id),
        status: if status == "success" {
            Status::Delivered
        } else {
            Status::Failed
        },
        note: format!("wechat: {status}"),
        code: match status.as_str() {
            "success" => String::new(),
            failed => failed.to_string(),
        },
    }))
}

/// The text of `<name>…</name>`, CDATA unwrapped (WeChat's flat event XML).
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let raw = xml[start..end].trim();
    let raw = raw
        .strip_prefix("<![CDATA[")
        .and_then(|r| r.strip_suffix("]]>"))
        .unwrap_or(raw);
    Some(raw.to_string())
}

/// How far a callback's `timestamp` may be from now, either way (seconds). WeChat's
/// signature covers token, timestamp and nonce but not the body, so a captured triple is
/// only worth something inside this window, and the nonce can be used once in it.
pub const CALLBACK_WINDOW_SECS: i64 = 300;

/// Longest nonce accepted (WeChat's are a few digits); it becomes part of an item key.
const MAX_NONCE_LEN: usize = 64;

/// The apps whose WeChat server token signed this call: the app named by `?app=` when
/// the server URL names one, else every app with a WeChat account whose token verifies
/// (several official accounts, one URL). The token is the app's `callback_token`.
fn signing_apps(
    call: &Inbound<'_>,
    secrets: &ServiceSecrets,
    timestamp: &str,
    nonce: &str,
    given: &str,
) -> Vec<String> {
    let verifies = |app: &AppConfig| {
        app.providers.wechat.is_some()
            && app
                .callback_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .is_some_and(|token| constant_time_eq(&server_signature(token, timestamp, nonce), given))
    };
    match call.param("app") {
        Some(key) => secrets
            .app(key)
            .filter(|a| verifies(a))
            .map(|a| a.key.clone())
            .into_iter()
            .collect(),
        None => secrets
            .apps
            .iter()
            .filter(|a| verifies(a))
            .map(|a| a.key.clone())
            .collect(),
    }
}

/// WeChat server-URL events, authenticated by WeChat's own `signature` under the app's
/// WeChat server token (its `callback_token`), within [`CALLBACK_WINDOW_SECS`] of now and
/// with a nonce never seen before.
pub struct WechatReceipts;

#[async_trait::async_trait]
impl ReceiptSource for WechatReceipts {
    fn name(&self) -> &'static str {
        "wechat"
    }

    fn channel(&self) -> crate::message::Channel {
        crate::message::Channel::Wechat
    }

    /// `TEMPLATESENDJOBFINISH` names the message by its msgid only, within a second.
    fn early(&self) -> bool {
        true
    }

    /// WeChat checks the server URL by GET: echo `echostr` (once authenticated).
    fn on_get(&self, call: &Inbound<'_>) -> Option<Reply> {
        Some(Reply::Text(call.param("echostr").unwrap_or_default().to_string()))
    }

    fn authentic(&self, call: &Inbound<'_>, secrets: &ServiceSecrets) -> Result<Scope, Refusal> {
        let (Some(timestamp), Some(nonce), Some(given)) =
            (call.param("timestamp"), call.param("nonce"), call.param("signature"))
        else {
            return Err(Refusal::BadSignature);
        };
        let at: i64 = timestamp.parse().map_err(|_| Refusal::Stale)?;
        if (call.now_ms / 1000).abs_diff(at) > CALLBACK_WINDOW_SECS.unsigned_abs() {
            return Err(Refusal::Stale);
        }
        if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
            return Err(Refusal::BadSignature);
        }
        let apps = signing_apps(call, secrets, timestamp, nonce, given);
        if apps.is_empty() {
            return Err(Refusal::BadSignature);
        }
        Ok(Scope::Apps(apps))
    }

    /// `_nonce.wechat.{timestamp}.{nonce}`: the signature binds the two, so a replay
    /// repeats both.
    fn replay_key(&self, call: &Inbound<'_>) -> Option<String> {
        Some(format!(
            "wechat.{}.{}",
            call.param("timestamp").unwrap_or_default(),
            call.param("nonce").unwrap_or_default()
        ))
    }

    fn parse(&self, call: &Inbound<'_>) -> Result<Batch, ReceiptError> {
        Ok(Batch::of(parse(call.body)?.into_iter().collect()))
    }

    /// WeChat retries unless it reads exactly this within 5 s.
    fn reply(&self, _batch: &Batch, _applied: usize) -> Reply {
        Reply::Text("success".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcodes_are_classified() {
        let now = 0;
        assert_eq!(classify(-1, "", now).class, ErrorClass::Retryable);
        for c in [43004, 40003, 40037, 47003, 40001, 40014, 42001, 12345] {
            assert_eq!(classify(c, "", now).class, ErrorClass::Permanent, "{c}");
        }
        let quota = classify(45009, "", now);
        assert_eq!(quota.class, ErrorClass::Deferrable);
        assert!(quota.retry_after.is_some());
        assert_eq!(classify(45011, "", now).class, ErrorClass::Deferrable);
        assert_eq!(classify(43004, "x", now).code, "43004");
        assert!(is_token_error(40001) && is_token_error(40014) && is_token_error(42001));
        assert!(!is_token_error(43004));
    }

    #[test]
    fn quota_deferral_ends_just_after_beijing_midnight_or_within_the_hour() {
        // 15:30 UTC = 23:30 Beijing: 30 minutes to the reset, plus a minute.
        let at = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000 + (15 * 60 + 30) * 60_000;
        assert_eq!(until_quota_reset(at), Duration::from_secs(31 * 60));
        // 04:00 UTC = 12:00 Beijing: check again in an hour.
        let noon = at - at % 86_400_000 + 4 * 3_600_000;
        assert_eq!(until_quota_reset(noon), Duration::from_secs(3600));
    }

    #[test]
    fn tokens_are_refreshed_early_but_not_in_a_loop() {
        let (refresh, expires) = schedule(0, 7200);
        assert_eq!(expires, 7_200_000);
        assert_eq!(refresh, 7_200_000 - 300_000);
        // Normal mode near the end returns the same token with its remaining life:
        // refresh at most every 30 s, and never after the end.
        assert_eq!(schedule(0, 200).0, 100_000);
        assert_eq!(schedule(0, 40).0, 30_000);
        assert_eq!(schedule(0, 10).0, 10_000);
    }

    #[test]
    fn token_keys_cannot_be_message_keys() {
        let pk = token_pk("wx1234567890abcdef").unwrap();
        assert_eq!(pk, "_token.wechat.wx1234567890abcdef");
        let last = pk.rsplit('_').next().unwrap();
        assert!(!last.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(token_pk("wx_s_abc").is_err());
        assert!(token_pk("").is_err());
    }

    #[test]
    fn payload_has_the_documented_shape() {
        let t = WechatTemplate {
            template_id: "tpl".into(),
            data: [("first".to_string(), "Hello".to_string())].into(),
            url: Some("https://example.com/o/1".into()),
        };
        assert_eq!(
            payload("oOPENID", &t),
            serde_json::json!({
                "touser": "oOPENID",
                "template_id": "tpl",
                "url": "https://example.com/o/1",
                "data": {"first": {"value": "Hello"}},
            })
        );
        let no_url = WechatTemplate { url: None, ..t };
        assert!(payload("o", &no_url).get("url").is_none());
    }

    #[test]
    fn tokens_stay_out_of_text() {
        let token = AccessToken("SECRET-TOKEN".into());
        assert_eq!(format!("{token:?}"), "AccessToken(..)");
        assert_eq!(scrub("bad token SECRET-TOKEN rid: 1", &token), "bad token *** rid: 1");
        assert!(scrub(&"é".repeat(300), &token).len() <= 200);
    }

    #[test]
    fn items_past_their_ttl_are_absent_and_due_tokens_are_borrowed_only_while_locked() {
        let now = 1_000_000_000;
        let item = |ttl: i64, lock: Option<i64>| {
            let mut m = HashMap::from([
                ("access_token".to_string(), AttributeValue::S("T".into())),
                ("refresh_at".to_string(), AttributeValue::N((now - 1).to_string())),
                (
                    "token_expires_at".to_string(),
                    AttributeValue::N((now + 60_000).to_string()),
                ),
                ("expires_at".to_string(), AttributeValue::N(ttl.to_string())),
            ]);
            if let Some(l) = lock {
                m.insert("lock_until".into(), AttributeValue::N(l.to_string()));
            }
            m
        };
        assert!(Central::parse(Some(&item(now / 1000 - 1, None)), now).token.is_none());
        let due = Central::parse(Some(&item(now / 1000 + 10, None)), now);
        assert!(due.usable(None, now).is_none(), "due and unlocked: refresh it");
        let locked = Central::parse(Some(&item(now / 1000 + 10, Some(now + 1000))), now);
        assert_eq!(locked.usable(None, now).unwrap().token, AccessToken("T".into()));
        assert!(
            locked.usable(Some(&AccessToken("T".into())), now).is_none(),
            "never the stale one"
        );
    }

    #[test]
    fn server_signature_sorts_before_hashing() {
        let a = server_signature("token", "1700000000", "nonce");
        assert_eq!(a, server_signature("token", "1700000000", "nonce"));
        assert_eq!(a, hex::encode(Sha1::digest(b"1700000000noncetoken")));
    }

    #[test]
    fn template_job_events_parse() {
        let xml = b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>200163836</MsgID><Status><![CDATA[failed:user block]]></Status></xml>";
        let w = parse(xml).unwrap().unwrap();
        assert_eq!(
            (w.status, w.provider_message_id.as_deref()),
            (Status::Failed, Some("200163836"))
        );
        assert_eq!(parse(b"<xml><Event>subscribe</Event></xml>").unwrap(), None);
    }
}
