//! What the SQS event source mapping does on AWS, done locally: receive batches, invoke
//! the dispatcher with a real `SqsEvent`, delete what succeeded, leave the reported
//! `batchItemFailures` to reappear after the visibility timeout (and, past
//! maxReceiveCount, to be redriven to the DLQ by SQS itself).

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};

use crate::BoxError;

/// Something that runs the dispatcher on one event.
#[async_trait::async_trait]
pub trait Invoke: Send + Sync {
    async fn invoke(&self, event: SqsEvent) -> Result<SqsBatchResponse, BoxError>;
}

/// Invokes a function through the Lambda Invoke API of `cargo lambda watch`.
pub struct HttpInvoker {
    client: reqwest::Client,
    url: String,
}

impl HttpInvoker {
    /// `base` like `http://127.0.0.1:9000`, `function` like `dispatcher`.
    pub fn new(base: &str, function: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: format!("{base}/2015-03-31/functions/{function}/invocations"),
        }
    }
}

#[async_trait::async_trait]
impl Invoke for HttpInvoker {
    async fn invoke(&self, event: SqsEvent) -> Result<SqsBatchResponse, BoxError> {
        let response = self.client.post(&self.url).json(&event).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(format!("dispatcher invocation failed ({status}): {text}").into());
        }
        serde_json::from_str(&text).map_err(|e| format!("dispatcher answered {text}: {e}").into())
    }
}

/// One poll's figures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    pub received: usize,
    pub deleted: usize,
    pub failed: usize,
}

/// The local event source mapping.
pub struct Poller {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    invoker: Arc<dyn Invoke>,
    /// Long-poll wait, seconds.
    pub wait_seconds: i32,
}

impl Poller {
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: &str, queue_arn: &str, invoker: Arc<dyn Invoke>) -> Self {
        Self {
            sqs,
            queue_url: queue_url.to_string(),
            queue_arn: queue_arn.to_string(),
            invoker,
            wait_seconds: 1,
        }
    }

    /// Receives up to 10 messages, invokes once, deletes the successes.
    pub async fn poll_once(&self) -> Result<Polled, BoxError> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(self.wait_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(Polled::default());
        }
        let region = self.queue_arn.split(':').nth(3).unwrap_or("us-east-1").to_string();
        let records: Vec<SqsMessage> = messages
            .iter()
            .map(|m| {
                let mut r = SqsMessage::default();
                r.message_id = m.message_id.clone();
                r.receipt_handle = m.receipt_handle.clone();
                r.body = m.body.clone();
                r.md5_of_body = m.md5_of_body.clone();
                r.attributes = m
                    .attributes
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_string(), v))
                    .collect();
                r.event_source = Some("aws:sqs".into());
                r.event_source_arn = Some(self.queue_arn.clone());
                r.aws_region = Some(region.clone());
                r
            })
            .collect();
        let mut event = SqsEvent::default();
        event.records = records;
        // A failed invocation (crash, timeout) deletes nothing: the whole batch comes back.
        let response = self.invoker.invoke(event).await?;
        let failed: std::collections::HashSet<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        let entries: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.message_id.as_deref().is_some_and(|id| failed.contains(id)))
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle.clone())
                    .build()
                    .ok()
            })
            .collect();
        let deleted = entries.len();
        if !entries.is_empty() {
            self.sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        }
        Ok(Polled {
            received: messages.len(),
            deleted,
            failed: messages.len() - deleted,
        })
    }

    /// Polls until `stop` resolves.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                r = self.poll_once() => match r {
                    Ok(p) if p.received > 0 => tracing::info!(received = p.received, deleted = p.deleted, retried = p.failed, "dispatched batch"),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "poll failed");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}
