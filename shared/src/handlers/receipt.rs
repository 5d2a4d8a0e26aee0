//! The one path every delivery receipt takes, whoever brought it (a provider's callback,
//! `handlers::callback`; or a receipt pulled from a vendor's API): find the message (by
//! our key, our id or the provider's id, holding a receipt that beat the send's record),
//! then apply it forward-only within the scope its authentication proved, or, for a
//! failed receipt under a route rule of scene `receipt`, send the message on to its next
//! leg ([`crate::dispatch::receipt`]).
//!
//! AWS calls a failed receipt adds, only for apps whose routes have a receipt rule:
//! 1 `GetItem` (the record, to decide; none for Aliyun, whose lookup already reads it);
//! falling back replaces the `failed` write with one conditional `UpdateItem` and adds
//! 1 `SendMessage` (the job). The routes are the cached set (one `Scan` of the routes
//! table per `PUSHGATE_ROUTES_TTL_SECONDS` per instance). Other receipts cost what they
//! did.

use std::sync::Arc;

use crate::apps::Apps;
use crate::dispatch::receipt::{on_failed_receipt, FailedReceipt, Verdict};
use crate::message::{Channel, Job, Message, Status};
use crate::providers::receipt_source;
use crate::queue::Queue;
use crate::receipts::{Receipt, Scope};
use crate::routing::RoutingError;
use crate::store::routes::RouteStore;
use crate::store::{HeldReceipt, ReceiptOutcome, Store, StoreError};

/// The longest id (ours or a vendor's) a receipt may name: far above any real one, far
/// below DynamoDB's key limits.
const MAX_ID_LEN: usize = 256;
/// How much of a vendor's note a receipt keeps.
const MAX_NOTE_CHARS: usize = 256;

/// What falling back on a failed receipt needs: the routes (cached) and the send queue.
pub struct Fallback {
    pub routes: RouteStore,
    pub queue: Queue,
}

/// Applies receipts; built once per cold start by whatever brings them.
pub struct Receipts {
    pub store: Store,
    pub apps: Arc<Apps>,
    /// Without it (no routes table or send queue configured) failed receipts never fall
    /// back.
    pub fallback: Option<Fallback>,
}

/// Why a receipt could not be applied now (the caller answers so the vendor retries).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("routes: {0}")]
    Routes(#[from] RoutingError),
    #[error("configuration: {0}")]
    Config(String),
}

impl Receipts {
    /// Finds the record (by our key, our id, or the provider's id) and applies the
    /// receipt, if the message is in the scope. Unknown messages are acknowledged
    /// (`Ok(false)`), so providers stop retrying, except those named by a provider id the
    /// dispatcher may not have recorded yet: those are held until it does. Returns
    /// whether the receipt changed the message.
    pub async fn apply(&self, receipt: &Receipt, scope: &Scope, now: i64) -> Result<bool, ApplyError> {
        let provider = receipt.provider;
        // The ids in a body are the vendor's word: one no message of ours could have is an
        // unknown message, never a key DynamoDB would refuse (a 5xx the vendor retries).
        let impossible = receipt
            .id
            .as_deref()
            .is_some_and(|id| ulid::Ulid::from_string(id).is_err())
            || receipt
                .pk
                .as_deref()
                .is_some_and(|pk| pk.is_empty() || pk.len() > MAX_ID_LEN)
            || receipt
                .provider_message_id
                .as_deref()
                .is_some_and(|p| p.is_empty() || p.len() > MAX_ID_LEN);
        if impossible {
            tracing::warn!(provider, "receipt naming no possible message ignored");
            return Ok(false);
        }
        // A vendor's note (an error message) is kept in the history: bounded.
        let note: String = receipt.note.chars().take(MAX_NOTE_CHARS).collect();
        let mut record = None;
        let pk = match (&receipt.pk, &receipt.id, &receipt.provider_message_id) {
            (Some(pk), _, _) => Some(pk.clone()),
            (None, Some(id), _) => {
                record = self.store.get_by_id(id, now).await?;
                record.as_ref().map(|m| m.pk.clone())
            }
            (None, None, Some(pid)) => self.store.key_by_provider_ref(provider, pid).await?,
            (None, None, None) => None,
        };
        let pk = match (pk, &receipt.provider_message_id) {
            (Some(pk), _) => pk,
            (None, Some(pid)) if receipt_source(provider).is_some_and(|s| s.early()) => {
                let held = HeldReceipt {
                    status: receipt.status,
                    note: note.clone(),
                    scope: scope.clone(),
                };
                match self.store.hold_receipt(provider, pid, &held, now).await? {
                    Some(pk) => pk,
                    None => {
                        tracing::info!(provider, "receipt held until its send is recorded");
                        return Ok(false);
                    }
                }
            }
            (None, _) => {
                tracing::warn!(provider, "receipt for an unknown message ignored");
                return Ok(false);
            }
        };
        if receipt.status == Status::Failed {
            if let Some(outcome) = self.fall_back(&pk, record, receipt, &note, scope, now).await? {
                tracing::info!(provider, ?outcome, "failed receipt: fell back");
                return Ok(outcome == ReceiptOutcome::FellBack);
            }
        }
        let outcome = self
            .store
            .apply_receipt_scoped(&pk, provider, receipt.status, Some(note), now, scope)
            .await?;
        match &outcome {
            ReceiptOutcome::OutOfScope { app } => tracing::warn!(
                provider,
                message_app = app.as_str(),
                "receipt for another app's message ignored: nothing written"
            ),
            _ => tracing::info!(provider, status = receipt.status.as_str(), ?outcome, "receipt"),
        }
        Ok(outcome == ReceiptOutcome::Applied)
    }

    /// A failed receipt under a route that falls back: sends the message on and returns
    /// the outcome; `None` when the receipt is to be recorded as usual.
    async fn fall_back(
        &self,
        pk: &str,
        record: Option<Message>,
        receipt: &Receipt,
        note: &str,
        scope: &Scope,
        now: i64,
    ) -> Result<Option<ReceiptOutcome>, ApplyError> {
        let Some(fallback) = &self.fallback else {
            return Ok(None);
        };
        let Some(source) = receipt_source(receipt.provider) else {
            return Ok(None);
        };
        let routes = fallback.routes.current().await?;
        // Apps without a receipt rule pay nothing more.
        let any = match scope {
            Scope::Apps(apps) => apps.iter().any(|a| routes.any_receipt_rules(Some(a))),
            Scope::AnyApp => routes.any_receipt_rules(None),
        };
        if !any {
            return Ok(None);
        }
        let message = match record {
            Some(m) => m,
            None => match self.store.get(pk, now).await? {
                Some(m) => m,
                None => return Ok(None),
            },
        };
        if !scope.allows(&message.app) {
            return Ok(None);
        }
        let route = routes.find(&message.app, message.key.as_deref()).unwrap_or_default();
        let app = self
            .apps
            .app(&message.app)
            .await
            .map_err(|e| ApplyError::Config(e.to_string()))?;
        // The providers the dispatcher's plan would try per channel: the route's list,
        // else the app's order (other channels: not known here).
        let providers = |c: Channel| -> Vec<String> {
            if let Some(listed) = route.providers.get(&c).filter(|l| !l.is_empty()) {
                return listed.clone();
            }
            match (c, &app) {
                (Channel::Sms, Some(app)) => app.providers.sms_order.clone(),
                (Channel::Email, Some(app)) => app.providers.email_order.clone(),
                _ => Vec::new(),
            }
        };
        let failed = FailedReceipt {
            provider: receipt.provider,
            channel: source.channel(),
            code: &receipt.code,
            note,
        };
        let plan = match on_failed_receipt(&message, &route, &failed, providers) {
            Verdict::Stay(why) => {
                tracing::info!(id = %message.id, provider = receipt.provider, why, "failed receipt: no fallback");
                return Ok(None);
            }
            Verdict::FallBack(plan) => plan,
        };
        match self.store.fall_back(pk, &plan, scope, now).await? {
            ReceiptOutcome::FellBack => {}
            // Moved on since it was read (a receipt that raced the send's record, a
            // concurrent duplicate): the usual write decides, and leaves a message that
            // fell back from this provider alone.
            ReceiptOutcome::Unchanged => return Ok(None),
            other => return Ok(Some(other)),
        }
        if let Err(e) = fallback.queue.send(&Job::of(&message)).await {
            // The record is `accepted` again: the sweep queues it.
            tracing::error!(error = %e, id = %message.id, "fallback job not queued; the sweep will queue it");
        }
        Ok(Some(ReceiptOutcome::FellBack))
    }
}
