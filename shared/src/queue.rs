//! The job queue (SQS): ingest puts one job per accepted message; the dispatcher is fed
//! by the SQS event source (on AWS) or the dev stack's poller (locally).

use aws_sdk_sqs::Client;

use crate::message::Job;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("sqs: {0}")]
    Aws(String),
}

/// SQS adapter.
#[derive(Clone, Debug)]
pub struct Queue {
    client: Client,
    url: String,
}

impl Queue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// Makes received messages visible again after their delays (one
    /// `ChangeMessageVisibilityBatch` call per 10). Delays are capped at SQS's 12 hours.
    pub async fn change_visibility(&self, delays: &[(String, std::time::Duration)]) -> Result<(), QueueError> {
        for (chunk_no, chunk) in delays.chunks(10).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (handle, after))| {
                    aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(format!("{chunk_no}-{i}"))
                        .receipt_handle(handle)
                        .visibility_timeout(after.as_secs().min(43_200) as i32)
                        .build()
                        .map_err(|e| QueueError::Aws(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError::Aws(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
        }
        Ok(())
    }

    /// Sends one job (one SendMessage call).
    pub async fn send(&self, job: &Job) -> Result<(), QueueError> {
        self.send_delayed(job, 0).await
    }

    /// Sends `job` hidden for `delay_secs` (at most 900, SQS's limit): a `send_at` within
    /// 15 minutes costs no more than sending now.
    pub async fn send_delayed(&self, job: &Job, delay_secs: u32) -> Result<(), QueueError> {
        let body = serde_json::to_string(job).map_err(|e| QueueError::Aws(e.to_string()))?;
        let mut req = self.client.send_message().queue_url(&self.url).message_body(body);
        if delay_secs > 0 {
            req = req.delay_seconds(delay_secs.min(900) as i32);
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| QueueError::Aws(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))
    }
}

impl Queue {
    /// Sends `jobs` hidden for `delay_secs` (≤ 900): 10 per `SendMessageBatch`, 8 calls
    /// at a time; entries SQS reports failed are sent again (three rounds), then an error.
    pub async fn send_all(&self, jobs: &[Job], delay_secs: u32) -> Result<(), QueueError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let chunks: Vec<&[Job]> = jobs.chunks(10).collect();
        stream::iter(chunks)
            .map(|chunk| self.send_chunk(chunk, delay_secs))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    async fn send_chunk(&self, chunk: &[Job], delay_secs: u32) -> Result<(), QueueError> {
        let mut left: Vec<(usize, &Job)> = chunk.iter().enumerate().collect();
        for _ in 0..3 {
            let mut req = self.client.send_message_batch().queue_url(&self.url);
            for (i, job) in &left {
                let body = serde_json::to_string(job).map_err(|e| QueueError::Aws(e.to_string()))?;
                let mut entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body);
                if delay_secs > 0 {
                    entry = entry.delay_seconds(delay_secs.min(900) as i32);
                }
                req = req.entries(entry.build().map_err(|e| QueueError::Aws(e.to_string()))?);
            }
            let out = req
                .send()
                .await
                .map_err(|e| QueueError::Aws(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
            left.retain(|(i, _)| failed.contains(&i.to_string().as_str()));
            if left.is_empty() {
                return Ok(());
            }
        }
        Err(QueueError::Aws(format!("{} jobs not accepted by SQS", left.len())))
    }
}

/// A message for a FIFO queue: its body, the group it is ordered in, and the id SQS
/// drops repeats of (within its 5-minute window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FifoBody {
    pub body: String,
    pub group: String,
    pub dedup: String,
}

impl Queue {
    /// Sends to a FIFO queue, ten per `SendMessageBatch` call. Any entry SQS refuses is
    /// an error (the caller retries the whole set; the dedup ids make that harmless).
    pub async fn send_fifo(&self, bodies: &[FifoBody]) -> Result<(), QueueError> {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&m.body)
                        .message_group_id(&m.group)
                        .message_deduplication_id(&m.dedup)
                        .build()
                        .map_err(|e| QueueError::Aws(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError::Aws(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            if let Some(failed) = out.failed.first() {
                return Err(QueueError::Aws(format!(
                    "{} of {} refused: {}",
                    out.failed.len(),
                    chunk.len(),
                    failed.code
                )));
            }
        }
        Ok(())
    }
}

/// The queues the dispatcher writes to besides acknowledging: the send queue (visibility
/// changes of the jobs it leaves for later) and the dead-letter queue.
#[derive(Clone, Debug)]
pub struct DispatchQueues {
    pub send: Queue,
    pub dead_letter: Queue,
}

#[async_trait::async_trait]
impl crate::ports::JobQueue for DispatchQueues {
    async fn delay(&self, handles: &[(String, std::time::Duration)]) -> Result<(), crate::ports::PortError> {
        self.send
            .change_visibility(handles)
            .await
            .map_err(|e| crate::ports::PortError(e.to_string()))
    }

    async fn dead_letter(&self, job: &Job) -> Result<(), crate::ports::PortError> {
        self.dead_letter
            .send(job)
            .await
            .map_err(|e| crate::ports::PortError(e.to_string()))
    }
}
