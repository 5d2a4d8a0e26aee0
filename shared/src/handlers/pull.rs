//! Receipt pull (function `pull`, on its own EventBridge schedule): SMS still `sent` a
//! short while after their send, of apps whose provider account says
//! `"receipts": "pull"`, are asked about at the provider (Tencent
//! `PullSmsSendStatusByPhoneNumber`, Twilio fetch by SID, Aliyun `QuerySendDetails`:
//! [`crate::providers::Provider::pull_receipt`]), and a final report is applied through
//! the callback's own path ([`Receipts::apply`]), so status events, their
//! sequence and whatever follows a receipt happen exactly as for a pushed one.
//!
//! It reads the sweep index's `sent` SMS entries of the window (one Query per shard),
//! never the table. Per entry of an app that pulls: one GetItem (the message), one
//! provider call, and for a final report the receipt's conditional UpdateItem. Provider
//! calls go one at a time, at most `calls_per_account` per provider account and run.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::receipt::Receipts;
use crate::apps::AppConfig;
use crate::clock::Clock;
use crate::message::{Channel, Status};
use crate::providers::Providers;
use crate::receipts::Scope;
use crate::store::sweep::SweepIndex;
use crate::sweep::Waiting;

/// Entries read per sweep-index shard and run: a backlog drains over several runs.
pub const BATCH: i32 = 100;

/// How the pull paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Asked about from this long after the send.
    pub delay: Duration,
    /// Until this long after the send.
    pub window: Duration,
    /// Provider calls per provider account and run, at most.
    pub calls_per_account: u32,
}

pub struct Pull {
    pub index: SweepIndex,
    /// The path every receipt takes (the callback's, with its fallback on failures).
    pub receipts: Receipts,
    /// The providers whose receipts can be pulled.
    pub providers: Providers,
    pub settings: Settings,
    pub clock: Clock,
}

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pulled {
    /// Provider calls made.
    pub asked: usize,
    /// Receipts that changed a message.
    pub applied: usize,
    /// Messages the provider has no final report for yet.
    pub pending: usize,
    /// Messages left for the next run: their account's calls for this run were spent.
    pub deferred: usize,
    /// Reads, calls or writes that failed (logged; the next run asks again).
    pub failed: usize,
}

/// Whether a record key may belong to one of `apps`: keys start with `{app}_`. A key of
/// app `a_b` also passes for `a`; the message's own app is checked once it is read.
fn may_belong(pk: &str, apps: &[&AppConfig]) -> bool {
    apps.iter().any(|a| {
        pk.strip_prefix(a.key.as_str())
            .is_some_and(|rest| rest.starts_with('_'))
    })
}

impl Pull {
    /// Whether the app pulls any provider's receipts.
    fn pulls(&self, app: &AppConfig) -> bool {
        self.providers
            .candidates(Channel::Sms, app, None)
            .iter()
            .any(|p| p.pulls_receipts(app))
    }

    pub async fn run(&self) -> Pulled {
        let now = (self.clock)();
        let mut pulled = Pulled::default();
        let secrets = match self.receipts.apps.current().await {
            Ok(secrets) => secrets,
            Err(e) => {
                tracing::error!(error = %e, "service secret unavailable");
                pulled.failed += 1;
                return pulled;
            }
        };
        let pulling: Vec<&AppConfig> = secrets.apps.iter().filter(|a| self.pulls(a)).collect();
        if pulling.is_empty() {
            // Nobody pulls: no read at all.
            return pulled;
        }
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let (after, before) = (
            now.saturating_sub(ms(self.settings.window)),
            now.saturating_sub(ms(self.settings.delay)),
        );
        let due = match self
            .index
            .due_between(Waiting::Receipt, Channel::Sms, after, before, BATCH)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "sweep index unreadable");
                pulled.failed += 1;
                return pulled;
            }
        };
        let mut calls: HashMap<String, u32> = HashMap::new();
        for entry in due.into_iter().filter(|e| may_belong(&e.pk, &pulling)) {
            let message = match self.receipts.store.get(&entry.pk, now).await {
                Ok(Some(m)) if m.id == entry.id && m.status == Status::Sent => m,
                // Moved on (the stream takes its entry away) or gone.
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, id = %entry.id, "message unreadable");
                    pulled.failed += 1;
                    continue;
                }
            };
            let Some(app) = pulling.iter().find(|a| a.key == message.app) else {
                continue;
            };
            let Some(provider) = message.provider.as_deref().and_then(|p| self.providers.named(p)) else {
                continue;
            };
            if !provider.pulls_receipts(app) {
                continue;
            }
            let account = format!(
                "{}.{}",
                provider.name(),
                provider.account(app, &message.to).unwrap_or_default()
            );
            let used = calls.entry(account).or_default();
            if *used >= self.settings.calls_per_account {
                pulled.deferred += 1;
                continue;
            }
            *used += 1;
            pulled.asked += 1;
            match provider.pull_receipt(&message, app).await {
                Ok(Some(receipt)) => match self.receipts.apply(&receipt, &Scope::app(&app.key), now).await {
                    Ok(true) => pulled.applied += 1,
                    Ok(false) => {}
                    Err(_) => pulled.failed += 1,
                },
                Ok(None) => pulled.pending += 1,
                Err(e) => {
                    tracing::warn!(id = %message.id, provider = provider.name(), error = %e, "receipt pull failed");
                    pulled.failed += 1;
                }
            }
        }
        tracing::info!(
            asked = pulled.asked,
            applied = pulled.applied,
            pending = pulled.pending,
            deferred = pulled.deferred,
            failed = pulled.failed,
            "receipt pull done"
        );
        pulled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_are_matched_to_apps_by_their_prefix() {
        let app = |key: &str| -> AppConfig {
            serde_json::from_value(serde_json::json!({"key": key, "secrets": []})).unwrap()
        };
        let (a, shop) = (app("a"), app("shop"));
        let apps = [&a, &shop];
        assert!(may_belong("a_s_0123", &apps));
        assert!(may_belong("shop_bi_ff_3", &apps));
        assert!(may_belong("a_b_s_0123", &apps), "checked again once read");
        assert!(!may_belong("ab_s_0123", &apps));
        assert!(!may_belong("other_s_0123", &apps));
        assert!(!may_belong("shop", &apps));
    }
}
