//! What provider callbacks write besides the message itself: receipts applied within the
//! scope the callback proved (only the authenticating app's messages), the replay guard
//! for callbacks signed over a nonce (WeChat), and receipts held until the dispatcher has
//! recorded the provider's reference.
//!
//! Item kinds (all in the messages table, all expiring through its `expires_at` TTL, none
//! with an `id`, so nothing mistakes them for messages):
//! - `_nonce.{provider}.{timestamp}.{nonce}`: a nonce seen (one conditional PutItem per
//!   signed callback);
//! - `_ref.{provider}.{provider message id}`: the meeting point of a receipt that came
//!   before its send was recorded and the dispatcher's record of that send. Both sides
//!   update the one item atomically, so whichever comes second sees the other.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::{aws_err, history, is_condition_failure, n, s, Store, StoreError};
use crate::message::{HistoryEntry, Status};
use crate::receipts::Scope;

/// What a receipt write its condition refused found: no message, another app's message
/// (out of the callback's scope), or one the receipt leaves as it is.
fn refused_receipt(old: Option<HashMap<String, AttributeValue>>, scope: &Scope) -> ReceiptOutcome {
    let Some(old) = old else {
        return ReceiptOutcome::Missing;
    };
    let app = old.get("app").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
    if scope.allows(&app) {
        ReceiptOutcome::Unchanged
    } else {
        ReceiptOutcome::OutOfScope { app }
    }
}

/// Prefix of the nonce items' keys.
pub const NONCE_PK_PREFIX: &str = "_nonce.";
/// Prefix of the held-receipt meeting items' keys.
pub const REF_PK_PREFIX: &str = "_ref.";
/// How long a reference item (and any receipt held on it) is kept: longer than any
/// vendor keeps pushing reports for a send.
pub const REF_TTL_SECS: i64 = 7 * 24 * 3600;

/// Most receipts held for one provider id ([`Store::hold_receipt`]).
pub const MAX_HELD: i64 = 16;

/// What applying a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// The status moved forward.
    Applied,
    /// The failed receipt sent the message on to its next leg (`Store::fall_back`).
    FellBack,
    /// The message already had this status or a later one (late or duplicate receipt).
    Unchanged,
    /// The message belongs to an app outside the callback's scope: nothing written.
    OutOfScope { app: String },
    /// No such message (expired, or never ours).
    Missing,
}

/// A receipt waiting for its reference, as stored on the `_ref` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReceipt {
    pub status: Status,
    pub note: String,
    pub scope: Scope,
}

fn held_item(h: &HeldReceipt, now_ms: i64) -> AttributeValue {
    let mut m = HashMap::from([
        ("st".to_string(), s(h.status.as_str())),
        ("note".to_string(), s(h.note.clone())),
        ("at".to_string(), n(now_ms)),
    ]);
    if let Scope::Apps(apps) = &h.scope {
        m.insert(
            "apps".into(),
            AttributeValue::L(apps.iter().map(|a| s(a.clone())).collect()),
        );
    }
    AttributeValue::M(m)
}

fn read_held(v: &AttributeValue) -> Option<HeldReceipt> {
    let m = v.as_m().ok()?;
    let status: Status = serde_json::from_value(serde_json::Value::String(m.get("st")?.as_s().ok()?.clone())).ok()?;
    let note = m.get("note").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
    let scope = match m.get("apps").and_then(|v| v.as_l().ok()) {
        Some(apps) => Scope::Apps(apps.iter().filter_map(|a| a.as_s().ok().cloned()).collect()),
        None => Scope::AnyApp,
    };
    Some(HeldReceipt { status, note, scope })
}

pub(super) fn ref_pk(provider: &str, provider_message_id: &str) -> String {
    format!("{REF_PK_PREFIX}{provider}.{provider_message_id}")
}

impl Store {
    /// Applies a receipt from provider `from` to the message `pk` if it is in `scope`
    /// and moves its status forward (one conditional UpdateItem; on refusal DynamoDB
    /// returns the item, so telling why costs no second call). A message that fell back
    /// from `from` after its failed receipt is left alone: that provider's reports no
    /// longer speak for it.
    pub async fn apply_receipt_scoped(
        &self,
        pk: &str,
        from: &str,
        status: Status,
        note: Option<String>,
        now_ms: i64,
        scope: &Scope,
    ) -> Result<ReceiptOutcome, StoreError> {
        let entry = HistoryEntry {
            at: now_ms,
            status,
            note: note.clone(),
        };
        let mut condition = "attribute_exists(pk) AND status_rank < :rank AND \
                             (attribute_not_exists(fell_back_from) OR fell_back_from <> :from)"
            .to_string();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":from", s(from))
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":rank", n(status.rank()))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":entry", history(entry)?);
        if let Scope::Apps(apps) = scope {
            if apps.is_empty() {
                return Ok(ReceiptOutcome::OutOfScope { app: String::new() });
            }
            let names: Vec<String> = (0..apps.len()).map(|i| format!(":app{i}")).collect();
            condition.push_str(&format!(" AND app IN ({})", names.join(", ")));
            for (name, app) in names.into_iter().zip(apps) {
                req = req.expression_attribute_values(name, s(app.clone()));
            }
        }
        let mut expr =
            "SET #st = :status, status_rank = :rank, updated_at = :now, history = list_append(history, :entry)"
                .to_string();
        if status == Status::Failed {
            expr.push_str(", reason = :reason");
            req = req.expression_attribute_values(":reason", s(note.unwrap_or_else(|| "failed".into())));
        }
        match req.condition_expression(condition).update_expression(expr).send().await {
            Ok(_) => Ok(ReceiptOutcome::Applied),
            Err(e) => Ok(refused_receipt(super::refused_item(e)?, scope)),
        }
    }

    /// Sends message `pk` on to its next leg after a failed receipt from `fallback.from`
    /// ([`crate::dispatch::receipt`]): back to `accepted`, with what is given up added to
    /// `tried`/`spent`, the receipt and the decision in its history, and `fell_back_from`
    /// set, so the dispatcher's claim (which takes only `accepted` records) sends it once
    /// more and never again for this receipt. One conditional UpdateItem: it applies only
    /// while the message is `sent`/`unknown` through that provider, in `scope`, and has
    /// never fallen back, so a duplicated or concurrent receipt cannot fall back twice.
    /// The caller queues the job; if that fails, the sweep queues the `accepted` record.
    pub async fn fall_back(
        &self,
        pk: &str,
        fallback: &crate::dispatch::receipt::Fallback,
        scope: &Scope,
        now_ms: i64,
    ) -> Result<ReceiptOutcome, StoreError> {
        let mut entries = Vec::new();
        for (status, note) in [Status::Failed, Status::Accepted].into_iter().zip(&fallback.notes) {
            let entry = HistoryEntry {
                at: now_ms,
                status,
                note: Some(note.clone()),
            };
            entries.push(history(entry)?);
        }
        let entries: Vec<AttributeValue> = entries
            .into_iter()
            .flat_map(|e| match e {
                AttributeValue::L(l) => l,
                other => vec![other],
            })
            .collect();
        let list = |l: &[String]| AttributeValue::L(l.iter().map(|t| s(t.as_str())).collect());
        let mut condition = "attribute_exists(pk) AND status_rank = :two AND provider = :from AND \
                             attribute_not_exists(fell_back_from)"
            .to_string();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(
                "SET #st = :accepted, status_rank = :zero, updated_at = :now, \
                 history = list_append(history, :entries), tried = :tried, spent = :spent, \
                 fell_back_from = :from \
                 REMOVE via, lease_until, lease_owner, rate_slot, provider, provider_message_id, reason",
            )
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":accepted", s(Status::Accepted.as_str()))
            .expression_attribute_values(":zero", n(Status::Accepted.rank()))
            .expression_attribute_values(":two", n(Status::Sent.rank()))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":entries", AttributeValue::L(entries))
            .expression_attribute_values(":tried", list(&fallback.tried))
            .expression_attribute_values(":spent", list(&fallback.spent))
            .expression_attribute_values(":from", s(&fallback.from));
        if let Scope::Apps(apps) = scope {
            if apps.is_empty() {
                return Ok(ReceiptOutcome::OutOfScope { app: String::new() });
            }
            let names: Vec<String> = (0..apps.len()).map(|i| format!(":app{i}")).collect();
            condition.push_str(&format!(" AND app IN ({})", names.join(", ")));
            for (name, app) in names.into_iter().zip(apps) {
                req = req.expression_attribute_values(name, s(app.clone()));
            }
        }
        match req.condition_expression(condition).send().await {
            Ok(_) => Ok(ReceiptOutcome::FellBack),
            Err(e) => Ok(refused_receipt(super::refused_item(e)?, scope)),
        }
    }

    /// Records a callback's nonce; `false` if it was seen before (a replay). One
    /// conditional PutItem; the item expires `ttl_secs` after `now_ms`, past the window
    /// in which the callback's timestamp is accepted.
    pub async fn claim_nonce(&self, key: &str, now_ms: i64, ttl_secs: i64) -> Result<bool, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("{NONCE_PK_PREFIX}{key}")))
            .item("expires_at", n(now_ms / 1000 + ttl_secs))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(aws_err(e)),
        }
    }

    /// Forgets a nonce claimed by a callback that then failed (storage trouble), so the
    /// vendor's retry of the same call is not taken for a replay.
    pub async fn release_nonce(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(format!("{NONCE_PK_PREFIX}{key}")))
            .send()
            .await
            .map(|_| ())
            .map_err(aws_err)
    }

    /// Holds a receipt whose provider reference is not (visibly) recorded yet. Returns
    /// the message's key if the dispatcher recorded the reference meanwhile (the caller
    /// then applies the receipt itself). One UpdateItem. At most [`MAX_HELD`] receipts
    /// wait per reference (a vendor reports a message a few times): a flood of receipts
    /// for one id, from a caller holding a valid token, cannot grow the item without
    /// bound; the ones past the cap are dropped and logged.
    pub async fn hold_receipt(
        &self,
        provider: &str,
        provider_message_id: &str,
        held: &HeldReceipt,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(ref_pk(provider, provider_message_id)))
            .update_expression("SET held = list_append(if_not_exists(held, :none), :r), expires_at = :exp")
            .condition_expression("attribute_not_exists(held) OR size(held) < :cap")
            .expression_attribute_values(":cap", n(MAX_HELD))
            .expression_attribute_values(":none", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":r", AttributeValue::L(vec![held_item(held, now_ms)]))
            .expression_attribute_values(":exp", n(now_ms / 1000 + REF_TTL_SECS))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) if is_condition_failure(&e) => {
                tracing::warn!(provider, "too many receipts held for one provider id; dropped");
                return Ok(None);
            }
            Err(e) => return Err(aws_err(e)),
        };
        Ok(out
            .attributes()
            .and_then(|a| a.get("target"))
            .and_then(|v| v.as_s().ok())
            .cloned())
    }

    /// Records that `provider`'s message `provider_message_id` is our message `pk`, and
    /// applies any receipt held for it (one UpdateItem, plus one per held receipt).
    /// Returns how many held receipts applied.
    pub async fn record_ref(
        &self,
        provider: &str,
        provider_message_id: &str,
        pk: &str,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(ref_pk(provider, provider_message_id)))
            .update_expression("SET target = :pk, expires_at = :exp")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":exp", n(now_ms / 1000 + REF_TTL_SECS))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(aws_err)?;
        let held: Vec<HeldReceipt> = out
            .attributes()
            .and_then(|a| a.get("held"))
            .and_then(|v| v.as_l().ok())
            .map(|l| l.iter().filter_map(read_held).collect())
            .unwrap_or_default();
        let mut applied = 0;
        for h in held {
            let outcome = self
                .apply_receipt_scoped(pk, provider, h.status, Some(h.note.clone()), now_ms, &h.scope)
                .await?;
            if let ReceiptOutcome::OutOfScope { app } = &outcome {
                tracing::warn!(
                    provider,
                    app = app.as_str(),
                    "held receipt for another app's message ignored"
                );
            }
            applied += usize::from(outcome == ReceiptOutcome::Applied);
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_receipts_round_trip() {
        for scope in [
            Scope::app("a"),
            Scope::AnyApp,
            Scope::Apps(vec!["a".into(), "b".into()]),
        ] {
            let h = HeldReceipt {
                status: Status::Delivered,
                note: "twilio: delivered".into(),
                scope,
            };
            assert_eq!(read_held(&held_item(&h, 5)), Some(h));
        }
        assert_eq!(read_held(&s("junk")), None);
    }
}
