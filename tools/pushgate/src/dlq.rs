//! Operator commands for the dead-letter queue: list what is there, and redrive it.
//! Redrive keeps each message's claim: a message a provider had in fact accepted is
//! dropped from the DLQ without a second send; one dead-lettered after spending its
//! attempts is reopened (`pushgate_shared::store::Store::reopen`) and queued again; a job
//! SQS moved there itself (still `accepted`/`sending`) is queued again, and its claim
//! decides as for any duplicate.

use std::collections::HashSet;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use pushgate_shared::message::{Job, Message, Status};
use pushgate_shared::queue::Queue;
use pushgate_shared::store::Store;

use crate::BoxError;

/// One job waiting in the DLQ, with its record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub receipt_handle: String,
    pub job: Option<Job>,
    pub record: Option<Message>,
    pub receive_count: u32,
}

/// Which dead letters to redrive.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub app: Option<String>,
    /// Only messages created at or after this instant (Unix ms).
    pub since_ms: Option<i64>,
}

impl Filter {
    fn matches(&self, record: Option<&Message>) -> bool {
        let Some(m) = record else {
            return self.app.is_none() && self.since_ms.is_none();
        };
        self.app.as_deref().is_none_or(|a| a == m.app) && self.since_ms.is_none_or(|t| m.created_at >= t)
    }
}

/// What a redrive did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Redriven {
    /// Queued again for sending.
    pub requeued: usize,
    /// Already settled (sent, delivered, failed for good): removed without sending.
    pub settled: usize,
    /// No record (expired or never written): removed.
    pub orphaned: usize,
    /// Not matching the filter: left in the DLQ.
    pub skipped: usize,
}

pub struct Dlq {
    pub sqs: aws_sdk_sqs::Client,
    pub dlq_url: String,
    pub queue: Queue,
    pub store: Store,
}

impl Dlq {
    /// Reads every message in the DLQ (each once; they stay in the queue, hidden for
    /// `hide_secs` so the read terminates).
    pub async fn list(&self, hide_secs: i32) -> Result<Vec<DeadLetter>, BoxError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .visibility_timeout(hide_secs)
                .wait_time_seconds(0)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?
                .messages
                .unwrap_or_default();
            let fresh: Vec<_> = received
                .into_iter()
                .filter(|m| m.message_id.as_ref().is_some_and(|id| seen.insert(id.clone())))
                .collect();
            if fresh.is_empty() {
                return Ok(out);
            }
            let now = pushgate_shared::clock::now_ms();
            for m in fresh {
                let job: Option<Job> = m.body.as_deref().and_then(|b| serde_json::from_str(b).ok());
                let record = match &job {
                    Some(j) => self.store.get(&j.pk, now).await?.filter(|r| r.id == j.id),
                    None => None,
                };
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                out.push(DeadLetter {
                    receipt_handle: m.receipt_handle.unwrap_or_default(),
                    job,
                    record,
                    receive_count,
                });
            }
        }
    }

    /// Redrives the dead letters matching `filter`; `progress(done, total)` is called
    /// after each.
    pub async fn redrive(&self, filter: &Filter, mut progress: impl FnMut(usize, usize)) -> Result<Redriven, BoxError> {
        let letters = self.list(120).await?;
        let total = letters.len();
        let mut report = Redriven::default();
        for (i, letter) in letters.into_iter().enumerate() {
            if !filter.matches(letter.record.as_ref()) {
                self.make_visible(&letter.receipt_handle).await?;
                report.skipped += 1;
            } else {
                match (&letter.job, &letter.record) {
                    (Some(job), Some(record)) => {
                        let now = pushgate_shared::clock::now_ms();
                        let requeue = match record.status {
                            Status::Accepted | Status::Sending => true,
                            Status::Failed => self.store.reopen(&record.pk, now).await?,
                            _ => false,
                        };
                        if requeue {
                            self.queue.send(job).await?;
                            report.requeued += 1;
                        } else {
                            report.settled += 1;
                        }
                    }
                    _ => report.orphaned += 1,
                }
                self.delete(&letter.receipt_handle).await?;
            }
            progress(i + 1, total);
        }
        Ok(report)
    }

    async fn delete(&self, handle: &str) -> Result<(), BoxError> {
        self.sqs
            .delete_message()
            .queue_url(&self.dlq_url)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        Ok(())
    }

    async fn make_visible(&self, handle: &str) -> Result<(), BoxError> {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.dlq_url)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        Ok(())
    }
}
