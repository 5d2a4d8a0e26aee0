//! The SES provider sandbox: moto's SES keeps the mail it accepts but emits no events,
//! so locally this stands in for SES event publishing → SNS → the callback route. For
//! every email moto accepted, it finds our record by SES message id and produces the
//! SNS-wrapped SES event AWS would send: a Bounce for the SES mailbox simulator's
//! bounce address, a Delivery otherwise.

use std::collections::HashSet;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};

use crate::BoxError;

/// SES mailbox-simulator address that bounces.
pub const BOUNCE_ADDRESS: &str = "bounce@simulator.amazonses.com";

pub struct SesSandbox {
    moto_endpoint: String,
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    seen: HashSet<String>,
    http: reqwest::Client,
}

impl SesSandbox {
    pub fn new(moto_endpoint: &str, ddb: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            moto_endpoint: moto_endpoint.to_string(),
            ddb,
            table: table.to_string(),
            seen: HashSet::new(),
            http: reqwest::Client::new(),
        }
    }

    /// SNS notification bodies for emails accepted since the last call. An email whose
    /// record is not found yet (its outcome not recorded) is tried again next time.
    pub async fn pending_events(&mut self) -> Result<Vec<Vec<u8>>, BoxError> {
        let data: Value = self
            .http
            .get(format!("{}/moto-api/data.json", self.moto_endpoint))
            .send()
            .await?
            .json()
            .await?;
        let mails = data
            .pointer("/ses/Message")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut events = Vec::new();
        for mail in mails {
            let Some(ses_id) = mail.get("id").and_then(Value::as_str) else {
                continue;
            };
            if self.seen.contains(ses_id) {
                continue;
            }
            let Some((pk, id)) = self.find(ses_id).await? else {
                continue;
            };
            self.seen.insert(ses_id.to_string());
            let bounced = mail.to_string().contains(BOUNCE_ADDRESS);
            let mut event = json!({
                "eventType": if bounced { "Bounce" } else { "Delivery" },
                "mail": {"messageId": ses_id, "tags": {"pushgate_pk": [pk], "pushgate_id": [id]}},
            });
            if bounced {
                event["bounce"] = json!({"bounceType": "Permanent", "bounceSubType": "General"});
            }
            let envelope = json!({
                "Type": "Notification",
                "MessageId": ulid::Ulid::new().to_string(),
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:pushgate-ses-events",
                "Message": event.to_string(),
            });
            events.push(serde_json::to_vec(&envelope)?);
        }
        Ok(events)
    }

    async fn find(&self, ses_id: &str) -> Result<Option<(String, String)>, BoxError> {
        // The local table is small; on AWS, SES events carry the tags and need no lookup.
        let out = self
            .ddb
            .scan()
            .table_name(&self.table)
            .filter_expression("provider_message_id = :m")
            .expression_attribute_values(":m", AttributeValue::S(ses_id.to_string()))
            .projection_expression("pk, id")
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
        Ok(out.items().first().and_then(|item| {
            let pk = item.get("pk")?.as_s().ok()?.clone();
            let id = item.get("id")?.as_s().ok()?.clone();
            Some((pk, id))
        }))
    }
}
