//! Providers: one file each behind one trait, so adding a provider is adding a file.

use std::sync::Arc;

use crate::apps::AppConfig;
use crate::model::{Channel, Message};

pub mod ses;
pub mod webhook;

/// How a failed send should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Certainly not sent, worth retrying (throttle, 5xx, connection refused).
    Retryable,
    /// May or may not have been sent (timeout after the request left): handled by the
    /// provider's [`Ambiguity`] policy, like a lease that expired mid-send.
    Ambiguous,
    /// Will not succeed on retry (rejected address, bad request).
    Permanent,
}

/// A failed send, with the provider's own code and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
}

impl ProviderError {
    pub fn new(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
        }
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
}

/// A delivery provider.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Stable name, stored on the message.
    fn name(&self) -> &'static str;
    fn channel(&self) -> Channel;
    fn on_ambiguous(&self) -> Ambiguity;
    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError>;
}

/// The providers in service, first match per channel.
#[derive(Clone, Default)]
pub struct Providers(Vec<Arc<dyn Provider>>);

impl Providers {
    pub fn new(list: Vec<Arc<dyn Provider>>) -> Self {
        Self(list)
    }

    pub fn for_channel(&self, channel: Channel) -> Option<&Arc<dyn Provider>> {
        self.0.iter().find(|p| p.channel() == channel)
    }
}
