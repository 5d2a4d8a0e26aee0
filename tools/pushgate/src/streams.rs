//! What Lambda's DynamoDB event source mapping does on AWS, done locally: read every
//! shard of a table's stream from its start (`TRIM_HORIZON`), hand each batch of records
//! to the function as a real DynamoDB stream event, and advance past a batch only when
//! the function reports no failure (a reported failure resumes at that record).

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};

use crate::BoxError;

/// Something that runs the events function on one stream event.
#[async_trait::async_trait]
pub trait InvokeStream: Send + Sync {
    async fn invoke(&self, event: Event) -> Result<DynamoDbEventResponse, BoxError>;
}

/// Invokes a function through the Lambda Invoke API of `cargo lambda watch`.
pub struct HttpStreamInvoker {
    client: reqwest::Client,
    url: String,
}

impl HttpStreamInvoker {
    pub fn new(base: &str, function: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: format!("{base}/2015-03-31/functions/{function}/invocations"),
        }
    }
}

#[async_trait::async_trait]
impl InvokeStream for HttpStreamInvoker {
    async fn invoke(&self, event: Event) -> Result<DynamoDbEventResponse, BoxError> {
        let response = self.client.post(&self.url).json(&event).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(format!("events invocation failed ({status}): {text}").into());
        }
        serde_json::from_str(&text).map_err(|e| format!("events function answered {text}: {e}").into())
    }
}

/// Where a shard is read next.
enum Position {
    Iterator(String),
    /// Resume at this sequence number (a reported failure).
    At(String),
    Closed,
}

/// The local event source mapping of one stream.
pub struct StreamReader {
    client: aws_sdk_dynamodbstreams::Client,
    stream_arn: String,
    region: String,
    invoker: Arc<dyn InvokeStream>,
    shards: tokio::sync::Mutex<HashMap<String, Position>>,
}

impl StreamReader {
    pub fn new(client: aws_sdk_dynamodbstreams::Client, stream_arn: &str, invoker: Arc<dyn InvokeStream>) -> Self {
        Self {
            client,
            stream_arn: stream_arn.to_string(),
            region: stream_arn.split(':').nth(3).unwrap_or("us-east-1").to_string(),
            invoker,
            shards: Default::default(),
        }
    }

    /// Reads each shard once (up to 100 records) and invokes per non-empty batch;
    /// returns how many records were handed over and acknowledged.
    pub async fn poll_once(&self) -> Result<usize, BoxError> {
        let described = self
            .client
            .describe_stream()
            .stream_arn(&self.stream_arn)
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodbstreams::error::DisplayErrorContext(e).to_string())?;
        let shard_ids: Vec<String> = described
            .stream_description
            .and_then(|d| d.shards)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| s.shard_id)
            .collect();
        let mut shards = self.shards.lock().await;
        let mut done = 0;
        for shard in shard_ids {
            let iterator = match shards.remove(&shard) {
                Some(Position::Closed) => {
                    shards.insert(shard, Position::Closed);
                    continue;
                }
                Some(Position::Iterator(it)) => it,
                Some(Position::At(seq)) => {
                    self.iterator(&shard, ShardIteratorType::AtSequenceNumber, Some(seq))
                        .await?
                }
                None => self.iterator(&shard, ShardIteratorType::TrimHorizon, None).await?,
            };
            let out = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(100)
                .send()
                .await
                .map_err(|e| aws_sdk_dynamodbstreams::error::DisplayErrorContext(e).to_string())?;
            let records = out.records.unwrap_or_default();
            let next = match out.next_shard_iterator {
                Some(it) => Position::Iterator(it),
                None => Position::Closed,
            };
            if records.is_empty() {
                shards.insert(shard, next);
                continue;
            }
            let event = self.event(&records)?;
            match self.invoker.invoke(event).await {
                Ok(resp) => match resp.batch_item_failures.into_iter().find_map(|f| f.item_identifier) {
                    Some(seq) => {
                        shards.insert(shard, Position::At(seq));
                    }
                    None => {
                        done += records.len();
                        shards.insert(shard, next);
                    }
                },
                Err(e) => {
                    // A failed invocation retries the whole batch, as the mapping does.
                    let first = records
                        .first()
                        .and_then(|r| r.dynamodb.as_ref())
                        .and_then(|d| d.sequence_number.clone());
                    shards.insert(shard, first.map(Position::At).unwrap_or(Position::Closed));
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    async fn iterator(
        &self,
        shard: &str,
        kind: ShardIteratorType,
        sequence: Option<String>,
    ) -> Result<String, BoxError> {
        self.client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard)
            .shard_iterator_type(kind)
            .set_sequence_number(sequence)
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodbstreams::error::DisplayErrorContext(e).to_string())?
            .shard_iterator
            .ok_or_else(|| "no shard iterator".into())
    }

    /// The records as Lambda hands them to a function (`Records[].dynamodb` with the
    /// images in DynamoDB JSON, `eventSourceARN`).
    fn event(&self, records: &[Record]) -> Result<Event, BoxError> {
        let records: Vec<serde_json::Value> = records.iter().map(|r| self.record(r)).collect();
        Ok(serde_json::from_value(serde_json::json!({ "Records": records }))?)
    }

    fn record(&self, r: &Record) -> serde_json::Value {
        let change = r
            .dynamodb
            .clone()
            .unwrap_or_else(|| aws_sdk_dynamodbstreams::types::StreamRecord::builder().build());
        let item = |i: Option<HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>>| {
            i.map(|i| serde_json::to_value(serde_dynamo::Item::from(i)).unwrap_or_default())
                .unwrap_or_else(|| serde_json::json!({}))
        };
        serde_json::json!({
            "eventID": r.event_id,
            "eventName": r.event_name.as_ref().map(|n| n.as_str().to_string()),
            "eventVersion": r.event_version,
            "eventSource": "aws:dynamodb",
            "awsRegion": self.region,
            "eventSourceARN": self.stream_arn,
            "dynamodb": {
                "ApproximateCreationDateTime": change.approximate_creation_date_time.map(|t| t.secs()).unwrap_or(0),
                "Keys": item(change.keys),
                "NewImage": item(change.new_image),
                "OldImage": item(change.old_image),
                "SequenceNumber": change.sequence_number,
                "SizeBytes": change.size_bytes.unwrap_or(0),
                "StreamViewType": change.stream_view_type.map(|v| v.as_str().to_string()),
            },
        })
    }

    /// Reads until `stop` resolves.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                r = self.poll_once() => {
                    match r {
                        Ok(n) if n > 0 => tracing::info!(records = n, "stream records handed to events"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "stream read failed"),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }
}
