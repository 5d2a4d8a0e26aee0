//! The message ledger: one DynamoDB item per message, written with conditional writes so
//! that the record is the replay guard, the idempotency record, the dispatch lease and a
//! forward-only status at once. Every status transition of a message is written here.

use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};

use super::{
    applied, aws_err, decode, history, is_condition_failure, n, s, Store, StoreError, BY_ID_INDEX,
    BY_PROVIDER_REF_INDEX,
};
use crate::delivery::Finish;
use crate::message::{HistoryEntry, Message, Status};
use crate::ports::{Claim, Created, Release, RouteStep, SignatureGuard};

impl Store {
    /// Writes a new record unless a live one holds the key (one conditional PutItem).
    /// Records past their TTL count as absent: DynamoDB deletes them late. An item
    /// DynamoDB could never store is refused before the call ([`StoreError::Unstorable`]).
    pub async fn create(&self, message: &Message, now_ms: i64) -> Result<Created, StoreError> {
        let item: serde_dynamo::Item =
            serde_dynamo::to_item(message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let item: std::collections::HashMap<String, AttributeValue> = item.into();
        super::check_item(&item)?;
        match self.put_unless_live(item, now_ms).await? {
            None => Ok(Created::Created),
            Some(old) if !old.contains_key("id") => Ok(Created::Guarded),
            Some(old) => Ok(Created::Exists(Box::new(decode(old)?))),
        }
    }

    /// Writes `item` unless a live item (not past its TTL) holds its key: one conditional
    /// PutItem. `None` when written, else the item that holds the key, as stored.
    pub(super) async fn put_unless_live(
        &self,
        item: std::collections::HashMap<String, AttributeValue>,
        now_ms: i64,
    ) -> Result<Option<std::collections::HashMap<String, AttributeValue>>, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
            .expression_attribute_values(":now", n(now_ms / 1000))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => c
                    .item()
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| StoreError::Corrupt("condition failed without item".into())),
                _ => Err(aws_err(e)),
            },
        }
    }

    /// Marks signature `pk` (`{app}_s_{signature}`) as used by a v1 request carrying an
    /// `Idempotency-Key` (stored as `key_hash`), until `expires_at` (unix seconds, past
    /// the signature's window). One conditional PutItem: v1 does not sign the key, so
    /// this is what stops a captured request from being re-sent under another key.
    /// A message record at the same key (the signature was first used without a key)
    /// counts as seen with a different key.
    pub async fn guard_signature(
        &self,
        pk: &str,
        key_hash: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> Result<SignatureGuard, StoreError> {
        let item = [
            ("pk".to_string(), s(pk)),
            ("guard_key".to_string(), s(key_hash)),
            ("expires_at".to_string(), n(expires_at)),
        ]
        .into();
        Ok(match self.put_unless_live(item, now_ms).await? {
            None => SignatureGuard::Fresh,
            Some(old) => SignatureGuard::Seen {
                same_key: old
                    .get("guard_key")
                    .and_then(|v| v.as_s().ok())
                    .is_some_and(|k| k == key_hash),
            },
        })
    }

    /// Replaces record `pk` (if it is still message `id`) by a bare replay guard that
    /// lives until `expires_at`: the request it came from was refused (rate limit) after
    /// its write, and its signature must stay spent. One conditional PutItem.
    pub async fn seal_as_guard(&self, pk: &str, id: &str, expires_at: i64) -> Result<bool, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("expires_at", n(expires_at))
            .condition_expression("id = :id")
            .expression_attribute_values(":id", s(id))
            .send()
            .await;
        applied(result)
    }

    /// Clears `ingest_pending` once the job is on the queue.
    pub async fn mark_enqueued(&self, pk: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("REMOVE ingest_pending")
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        applied(result).map(|_| ())
    }

    /// Removes a record this ingest created but could not queue, so a retry starts clean.
    pub async fn delete(&self, pk: &str, id: &str) -> Result<(), StoreError> {
        self.delete_if(pk, "id", id).await
    }

    /// Deletes item `pk` only while its `attribute` is still `value` (the item this
    /// request wrote, not one written since under the same key).
    pub(super) async fn delete_if(&self, pk: &str, attribute: &str, value: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .condition_expression("#a = :v")
            .expression_attribute_names("#a", attribute)
            .expression_attribute_values(":v", s(value))
            .send()
            .await;
        applied(result).map(|_| ())
    }

    /// The item at `pk`, whatever it holds (one strongly consistent GetItem).
    pub(super) async fn get_item(
        &self,
        pk: &str,
    ) -> Result<Option<std::collections::HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_err)?;
        Ok(out.item)
    }

    /// Reads a record by key (strongly consistent).
    pub async fn get(&self, pk: &str, now_ms: i64) -> Result<Option<Message>, StoreError> {
        match self.get_item(pk).await? {
            Some(item) => Ok(Some(decode(item)?).filter(|m| m.expires_at >= now_ms / 1000)),
            None => Ok(None),
        }
    }

    /// Finds a record by message id through the `by_id` index.
    pub async fn get_by_id(&self, id: &str, now_ms: i64) -> Result<Option<Message>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_ID_INDEX)
            .key_condition_expression("id = :id")
            .expression_attribute_values(":id", s(id))
            .limit(1)
            .send()
            .await
            .map_err(aws_err)?;
        let Some(pk) = out
            .items()
            .first()
            .and_then(|i| i.get("pk"))
            .and_then(|v| v.as_s().ok())
        else {
            return Ok(None);
        };
        Ok(self.get(pk, now_ms).await?.filter(|m| m.id == id))
    }

    /// Finds a record's key by the provider's message id (`by_provider_ref` index).
    pub async fn key_by_provider_ref(
        &self,
        provider: &str,
        provider_message_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_PROVIDER_REF_INDEX)
            .key_condition_expression("provider_ref = :r")
            .expression_attribute_values(":r", s(format!("{provider}#{provider_message_id}")))
            .limit(1)
            .send()
            .await
            .map_err(aws_err)?;
        Ok(out
            .items()
            .first()
            .and_then(|i| i.get("pk"))
            .and_then(|v| v.as_s().ok())
            .cloned())
    }

    /// Cancels message `pk` (if it is still message `id`) unless it was claimed for
    /// sending: `accepted` or `scheduled` becomes `cancelled` (one conditional
    /// UpdateItem). `Ok(Ok(new))` when cancelled, `Ok(Err(old))` with the record as it
    /// stands when not (already cancelled, sending, done).
    pub async fn cancel(&self, pk: &str, id: &str, now_ms: i64) -> Result<Result<Message, Message>, StoreError> {
        let entry = HistoryEntry {
            at: now_ms,
            status: Status::Cancelled,
            note: Some("cancelled by the app".into()),
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(
                "SET #st = :cancelled, status_rank = :rank, reason = :reason, updated_at = :now, \
                 history = list_append(history, :entry) REMOVE ingest_pending",
            )
            .condition_expression("id = :id AND status_rank = :zero")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":cancelled", s(Status::Cancelled.as_str()))
            .expression_attribute_values(":rank", n(Status::Cancelled.rank()))
            .expression_attribute_values(":reason", s("cancelled"))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":id", s(id))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":entry", history(entry)?)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Ok(decode(out.attributes.unwrap_or_default())?)),
            Err(e) => match super::refused_item(e)? {
                Some(old) => Ok(Err(decode(old)?)),
                None => Err(StoreError::Corrupt("cancelled message vanished".into())),
            },
        }
    }

    /// Claims a record for sending with a lease (one conditional UpdateItem). Succeeds
    /// for a fresh record, or one in `sending` whose lease was released or has expired.
    pub async fn claim(
        &self,
        pk: &str,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        charge_first: bool,
    ) -> Result<Claim, StoreError> {
        let entry = HistoryEntry {
            at: now_ms,
            status: Status::Sending,
            note: None,
        };
        let (set_charge_first, remove_charge_first) = match charge_first {
            true => (", charge_first = :one_b", ""),
            false => ("", ", charge_first"),
        };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(format!(
                "SET #st = :sending, status_rank = :one, lease_until = :lease, lease_owner = :owner, \
                 attempts = if_not_exists(attempts, :zero) + :one, updated_at = :now, \
                 history = list_append(history, :entry){set_charge_first} REMOVE ingest_pending{remove_charge_first}",
            ));
        if charge_first {
            req = req.expression_attribute_values(":one_b", AttributeValue::Bool(true));
        }
        let result = req
            .condition_expression(
                "id = :id AND (attribute_not_exists(send_at) OR send_at <= :due) AND \
                 (status_rank = :zero OR (status_rank = :one AND \
                 (attribute_not_exists(lease_until) OR lease_until < :now)))",
            )
            .expression_attribute_names("#st", "status")
            // A second of slack for clocks: jobs are delayed to whole seconds, rounded up.
            .expression_attribute_values(":due", n(now_ms.saturating_add(1000)))
            .expression_attribute_values(":sending", s(Status::Sending.as_str()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":lease", n(lease_until_ms))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":id", s(id))
            .expression_attribute_values(":entry", history(entry)?)
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let mut message = decode(out.attributes.unwrap_or_default())?;
                // A lease still set on the old record means its holder neither finished
                // nor released: it was cut short mid-send.
                let takeover = message.status == Status::Sending && message.lease_until.is_some();
                message.status = Status::Sending;
                message.status_rank = Status::Sending.rank();
                message.attempts += 1;
                message.lease_until = Some(lease_until_ms);
                message.lease_owner = Some(owner.to_string());
                message.ingest_pending = None;
                Ok(Claim::Claimed {
                    message: Box::new(message),
                    takeover,
                })
            }
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let Some(old) = c.item().cloned() else {
                        return Ok(Claim::Missing);
                    };
                    let old = decode(old)?;
                    Ok(if old.id != id || old.expires_at < now_ms / 1000 {
                        Claim::Missing
                    } else if old.status_rank >= 2 {
                        Claim::Done(old.status)
                    } else if let Some(send_at) = old.send_at.filter(|at| *at > now_ms.saturating_add(1000)) {
                        Claim::Early {
                            send_at,
                            scheduled: old.schedule.is_some(),
                        }
                    } else {
                        Claim::Leased
                    })
                }
                _ => Err(aws_err(e)),
            },
        }
    }

    /// Records the outcome of an attempt: one conditional UpdateItem, or, for a provider
    /// whose receipts may come first ([`Finish::early_receipts`]), one transaction that
    /// also records the provider's reference where such receipts wait
    /// (`Store::hold_receipt`). Only when receipts already wait there does it take more
    /// calls: the outcome, then the reference, which applies them (`Store::record_ref`).
    /// Returns whether the outcome applied (this holder still held the lease).
    pub async fn finish(&self, pk: &str, owner: &str, finish: Finish, now_ms: i64) -> Result<bool, StoreError> {
        let reference = match (&finish.provider, &finish.provider_message_id) {
            (Some(p), Some(id)) if finish.early_receipts => Some((p.clone(), id.clone())),
            _ => None,
        };
        let Some((provider, id)) = reference else {
            return self.finish_only(pk, owner, finish, now_ms).await;
        };
        let record = self.finish_update(pk, owner, finish.clone(), now_ms, false)?;
        let reference = Update::builder()
            .table_name(&self.table)
            .key("pk", s(super::callbacks::ref_pk(&provider, &id)))
            .update_expression("SET target = :pk, expires_at = :exp")
            .condition_expression("attribute_not_exists(held)")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":exp", n(now_ms / 1000 + super::callbacks::REF_TTL_SECS))
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(record).build())
            .transact_items(TransactWriteItem::builder().update(reference).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => match super::quota::cancelled(&e) {
                // Another holder (or a receipt) moved the message on: nothing written.
                Some([true, _]) => Ok(false),
                // The held receipt's item wins a conflict, or a receipt is held there:
                // write the outcome, then the reference, which applies what is held.
                Some([false, _]) => {
                    let finished = self.finish_only(pk, owner, finish, now_ms).await?;
                    if finished {
                        // The send is recorded either way; receipts that cannot be
                        // applied now are applied by the vendor's next report.
                        if let Err(e) = self.record_ref(&provider, &id, pk, now_ms).await {
                            tracing::error!(error = %e, provider, "applying held receipts failed");
                        }
                    }
                    Ok(finished)
                }
                _ => Err(aws_err(e)),
            },
        }
    }

    async fn finish_only(&self, pk: &str, owner: &str, finish: Finish, now_ms: i64) -> Result<bool, StoreError> {
        let u = self.finish_update(pk, owner, finish, now_ms, false)?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(u.key))
            .update_expression(u.update_expression)
            .set_condition_expression(u.condition_expression)
            .set_expression_attribute_names(u.expression_attribute_names)
            .set_expression_attribute_values(u.expression_attribute_values)
            .send()
            .await;
        applied(result)
    }

    /// The update that records a finish; `uncharge` also clears the message's charge (for
    /// a refund written in the same transaction).
    pub(super) fn finish_update(
        &self,
        pk: &str,
        owner: &str,
        finish: Finish,
        now_ms: i64,
        uncharge: bool,
    ) -> Result<Update, StoreError> {
        let entry = HistoryEntry {
            at: now_ms,
            status: finish.status,
            note: finish.note.clone(),
        };
        let mut sets = vec![
            "#st = :status",
            "status_rank = :rank",
            "updated_at = :now",
            "history = list_append(history, :entry)",
        ];
        let mut req = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .condition_expression("lease_owner = :owner AND status_rank < :rank")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":status", s(finish.status.as_str()))
            .expression_attribute_values(":rank", n(finish.status.rank()))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":entry", history(entry)?);
        if let (Some(provider), Some(provider_id)) = (&finish.provider, &finish.provider_message_id) {
            sets.push("provider_ref = :provider_ref");
            req = req.expression_attribute_values(":provider_ref", s(format!("{provider}#{provider_id}")));
        }
        for (name, value) in [
            ("provider", finish.provider),
            ("provider_message_id", finish.provider_message_id),
            ("reason", finish.reason),
        ] {
            if let Some(v) = value {
                sets.push(match name {
                    "provider" => "provider = :provider",
                    "provider_message_id" => "provider_message_id = :provider_message_id",
                    _ => "reason = :reason",
                });
                req = req.expression_attribute_values(format!(":{name}"), s(v));
            }
        }
        let removes = if uncharge {
            "lease_until, lease_owner, rate_slot, charged"
        } else {
            "lease_until, lease_owner, rate_slot"
        };
        req.update_expression(format!("SET {} REMOVE {removes}", sets.join(", ")))
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Records, before a send that is not the plan's first choice, which provider it
    /// goes to (`via`), which were given up on (`tried`, of which `spent` for good), and
    /// why (history notes).
    pub async fn route_step(&self, pk: &str, owner: &str, step: &RouteStep, now_ms: i64) -> Result<(), StoreError> {
        let entries: Vec<AttributeValue> = step
            .notes
            .iter()
            .map(|note| {
                let entry = HistoryEntry {
                    at: now_ms,
                    status: Status::Sending,
                    note: Some(note.clone()),
                };
                serde_dynamo::to_item(entry)
                    .map(|item: serde_dynamo::Item| AttributeValue::M(item.into()))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let list = |l: &[String]| AttributeValue::L(l.iter().map(|t| s(t.as_str())).collect());
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(
                "SET via = :via, tried = :tried, spent = :spent, updated_at = :now, \
                 history = list_append(history, :entries)",
            )
            .condition_expression("lease_owner = :owner")
            .expression_attribute_values(":via", s(&step.via))
            .expression_attribute_values(":tried", list(&step.tried))
            .expression_attribute_values(":spent", list(&step.spent))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":entries", AttributeValue::L(entries))
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await
            .map_err(aws_err)?;
        Ok(())
    }

    /// Gives the lease back after an attempt that certainly did not send (see
    /// [`Release`]), so the next delivery of the job may claim at once. The note marks
    /// the attempt as closed. Returns whether it applied.
    pub async fn release(&self, pk: &str, owner: &str, release: &Release, now_ms: i64) -> Result<bool, StoreError> {
        let entry = HistoryEntry {
            at: now_ms,
            status: Status::Sending,
            note: Some(release.note.clone()),
        };
        let mut sets = vec!["updated_at = :now", "history = list_append(history, :entry)"];
        let mut removes = vec!["lease_until", "lease_owner"];
        if release.refund {
            sets.push("attempts = attempts - :one");
        }
        match release.slot {
            Some(_) => sets.push("rate_slot = :slot"),
            None => removes.push("rate_slot"),
        }
        if release.tried.is_some() {
            sets.push("tried = :tried");
        }
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(format!("SET {} REMOVE {}", sets.join(", "), removes.join(", ")));
        if release.refund {
            req = req.expression_attribute_values(":one", n(1));
        }
        if let Some(slot) = &release.slot {
            req = req.expression_attribute_values(":slot", s(slot));
        }
        if let Some(tried) = &release.tried {
            req = req.expression_attribute_values(
                ":tried",
                AttributeValue::L(tried.iter().map(|t| s(t.as_str())).collect()),
            );
        }
        let result = req
            .condition_expression("lease_owner = :owner")
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":entry", history(entry)?)
            .send()
            .await;
        applied(result)
    }

    /// Counts `messages` (1 for a single send, a batch's accepted recipients) against
    /// `app`'s limit for the calendar minute containing `now_ms`, all or none (one
    /// conditional UpdateItem on a counter item that expires with its window). Returns
    /// `None` when allowed, else how long until the window ends. `messages` above `limit`
    /// can never fit: the caller refuses those before.
    pub async fn hit_rate_limit(
        &self,
        app: &str,
        limit: u32,
        messages: u32,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let window = now_ms / 60_000;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            // '.' never occurs in message keys, so counters cannot collide with them.
            .key("pk", s(format!("_rate.{app}.{window}")))
            .update_expression("SET expires_at = :ttl ADD hits :n")
            .condition_expression("attribute_not_exists(hits) OR hits <= :room")
            .expression_attribute_values(":ttl", n((window + 2) * 60))
            .expression_attribute_values(":n", n(messages))
            .expression_attribute_values(":room", n(i64::from(limit) - i64::from(messages)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(e) if is_condition_failure(&e) => {
                let window_end = (window + 1) * 60_000;
                Ok(Some(((window_end - now_ms + 999) / 1000).max(1) as u64))
            }
            Err(e) => Err(aws_err(e)),
        }
    }

    /// Reopens a dead-lettered message for an operator's redrive: the one transition
    /// against the forward-only rule, allowed only from `failed` with a `dead_lettered`
    /// reason (never from a message a provider accepted). Returns whether it applied.
    pub async fn reopen(&self, pk: &str, now_ms: i64) -> Result<bool, StoreError> {
        let entry = HistoryEntry {
            at: now_ms,
            status: Status::Accepted,
            note: Some("redriven from the DLQ".into()),
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(
                "SET #st = :accepted, status_rank = :zero, attempts = :zero, updated_at = :now, \
                 history = list_append(history, :entry) REMOVE reason, lease_until, lease_owner",
            )
            .condition_expression("#st = :failed AND begins_with(reason, :dead)")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":accepted", s(Status::Accepted.as_str()))
            .expression_attribute_values(":failed", s(Status::Failed.as_str()))
            .expression_attribute_values(":dead", s("dead_lettered"))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":entry", history(entry)?)
            .send()
            .await;
        applied(result)
    }

    /// Applies a provider receipt: moves the status forward only (a late or duplicate
    /// receipt changes nothing). Returns whether it applied.
    pub async fn apply_receipt(
        &self,
        pk: &str,
        status: Status,
        note: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let entry = HistoryEntry {
            at: now_ms,
            status,
            note: note.clone(),
        };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .condition_expression("attribute_exists(pk) AND status_rank < :rank")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":rank", n(status.rank()))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":entry", history(entry)?);
        let mut expr =
            "SET #st = :status, status_rank = :rank, updated_at = :now, history = list_append(history, :entry)"
                .to_string();
        if status == Status::Failed {
            expr.push_str(", reason = :reason");
            req = req.expression_attribute_values(":reason", s(note.unwrap_or_else(|| "failed".into())));
        }
        match req.update_expression(expr).send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(aws_err(e)),
        }
    }
}
