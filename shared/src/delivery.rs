//! The outcome of one delivery attempt, as every provider reports it and the dispatcher
//! decides on it: five error classes, the ambiguity policy, a successful send, and the
//! finish written to the message. Pure data shared by providers, routing and dispatch.

use crate::message::Status;

/// How a failed send should be handled (named in routing rules in snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Certainly not sent, worth retrying (throttle, 5xx, connection refused).
    Retryable,
    /// May or may not have been sent (timeout after the request left): handled by the
    /// provider's [`Ambiguity`] policy, like a lease that expired mid-send.
    Ambiguous,
    /// Will not succeed on retry (rejected address, bad request).
    Permanent,
    /// Rate-limited by the provider (throttle answer): try later, not a failed attempt.
    Deferrable,
    /// The account's quota or balance is spent: fail this message; others will too.
    Quota,
}

/// A failed send, with the provider's own code and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    /// When a deferred send may be tried again, if the provider said.
    pub retry_after: Option<std::time::Duration>,
}

impl ProviderError {
    pub fn new(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

/// A successful send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The provider's id, for correlating receipts.
    pub provider_message_id: Option<String>,
    /// True when the provider's answer already means delivered (webhook 2xx).
    pub delivered: bool,
}

/// What to do when a send may have happened but its outcome was lost (a lease that
/// expired mid-send, a timeout after the request left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// Send again; the receiver de-duplicates (webhooks keep the same `webhook-id`).
    Resend,
    /// Never risk a second send: mark `unknown`; a later receipt may settle it.
    MarkUnknown,
    /// Ask the provider ([`Provider::reconcile`]) whether it has the message: if so record
    /// it sent, if not send again. Never a second send, never a lost one.
    Reconcile,
}

/// What a provider says it holds of a message whose send outcome was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The provider accepted it: record it as sent (or delivered).
    Sent(Sent),
    /// The provider has no such message: sending again cannot double it.
    NotSent,
}

/// The outcome of a send, written when the lease holder finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub status: Status,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub reason: Option<String>,
    pub note: Option<String>,
    /// The provider's receipts may arrive before this outcome is written (it answers
    /// fast and names the message only by its own id): the finish also records the
    /// reference under which such receipts wait ([`crate::ports::Ledger::finish`]).
    pub early_receipts: bool,
}

impl Finish {
    /// A `failed` finish with `reason` (also its history note).
    pub fn failed(reason: &str, provider: Option<&str>) -> Self {
        Self {
            status: Status::Failed,
            provider: provider.map(String::from),
            provider_message_id: None,
            reason: Some(reason.to_string()),
            note: Some(reason.to_string()),
            early_receipts: false,
        }
    }

    /// The outcome of a send the provider accepted.
    pub fn sent(sent: Sent, provider: &str, note: String) -> Self {
        Self {
            status: if sent.delivered {
                Status::Delivered
            } else {
                Status::Sent
            },
            provider: Some(provider.into()),
            provider_message_id: sent.provider_message_id,
            reason: None,
            note: Some(note),
            early_receipts: false,
        }
    }
}
