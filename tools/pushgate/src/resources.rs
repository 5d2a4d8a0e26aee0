//! Creates the stack's tables and queues in a local AWS from `template.yaml` itself, so
//! the local stack and the deployed one share one definition.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_yaml::Value;

use crate::BoxError;

/// Names of what was created.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Logical id → physical name, for every table.
    pub tables: HashMap<String, String>,
    /// Logical id → queue URL, for every queue.
    pub queues: HashMap<String, String>,
    /// Logical id → queue ARN.
    pub queue_arns: HashMap<String, String>,
    /// Logical id → EventBridge Scheduler schedule group name.
    pub schedule_groups: HashMap<String, String>,
    /// Logical id → stream ARN, for every table with a `StreamSpecification`.
    pub streams: HashMap<String, String>,
}

impl Resources {
    pub fn messages_table(&self) -> &str {
        &self.tables["MessagesTable"]
    }
    pub fn send_queue(&self) -> &str {
        &self.queues["SendQueue"]
    }
    pub fn send_queue_arn(&self) -> &str {
        &self.queue_arns["SendQueue"]
    }
    pub fn dead_letter_queue(&self) -> &str {
        &self.queues["SendDeadLetterQueue"]
    }
    /// Where Scheduler puts a job it gave up delivering.
    pub fn schedule_dead_letter_queue_arn(&self) -> &str {
        &self.queue_arns["ScheduleDeadLetterQueue"]
    }
    pub fn schedule_group(&self) -> &str {
        &self.schedule_groups["ScheduleGroup"]
    }
    pub fn endpoints_table(&self) -> &str {
        &self.tables["EndpointsTable"]
    }
    pub fn delivery_queue(&self) -> &str {
        &self.queues["DeliveryQueue"]
    }
    pub fn delivery_queue_arn(&self) -> &str {
        &self.queue_arns["DeliveryQueue"]
    }
    /// The messages table's stream (status events are read from it).
    pub fn messages_stream(&self) -> Option<&str> {
        self.streams.get("MessagesTable").map(String::as_str)
    }
}

/// The role Scheduler assumes to send to the queue, locally: moto does not check it, so a
/// fixed ARN stands in for the template's `SchedulerRole`.
pub const LOCAL_SCHEDULER_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/pushgate-scheduler";

/// Local overrides of template values.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Shorter visibility timeout so retries show up in seconds, not minutes.
    pub visibility_timeout: Option<u32>,
}

/// Loads `template.yaml` from the workspace root.
pub fn load_template() -> Result<Value, BoxError> {
    let path = crate::workspace_root().join("template.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_yaml::from_str(&text)?)
}

/// What a resource declared without `Properties` has.
static NO_PROPERTIES: Value = Value::Null;

fn resources_of<'a>(template: &'a Value, kind: &str) -> Vec<(&'a str, &'a Value)> {
    template
        .get("Resources")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
                .filter_map(|(k, r)| Some((k.as_str()?, r.get("Properties").unwrap_or(&NO_PROPERTIES))))
                .collect()
        })
        .unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, key: &str) -> Result<&'a str, BoxError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("template: missing {key}").into())
}

fn key_schema(v: &Value) -> Result<Vec<KeySchemaElement>, BoxError> {
    v.get("KeySchema")
        .and_then(Value::as_sequence)
        .ok_or("template: missing KeySchema")?
        .iter()
        .map(|k| {
            Ok(KeySchemaElement::builder()
                .attribute_name(str_of(k, "AttributeName")?)
                .key_type(KeyType::from(str_of(k, "KeyType")?))
                .build()?)
        })
        .collect()
}

/// Creates every DynamoDB table, SQS queue and Scheduler schedule group of the template,
/// named `{prefix}{LogicalId}`.
pub async fn create(sdk: &aws_config::SdkConfig, prefix: &str, overrides: &Overrides) -> Result<Resources, BoxError> {
    let template = load_template()?;
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut out = Resources {
        tables: HashMap::new(),
        queues: HashMap::new(),
        queue_arns: HashMap::new(),
        schedule_groups: HashMap::new(),
        streams: HashMap::new(),
    };
    let scheduler = aws_sdk_scheduler::Client::new(sdk);
    for (logical, _) in resources_of(&template, "AWS::Scheduler::ScheduleGroup") {
        let name = format!("{prefix}{logical}");
        let created = scheduler.create_schedule_group().name(&name).send().await;
        if let Err(e) = created {
            if !e.as_service_error().is_some_and(|s| s.is_conflict_exception()) {
                return Err(aws_sdk_scheduler::error::DisplayErrorContext(e).to_string().into());
            }
        }
        out.schedule_groups.insert(logical.to_string(), name);
    }

    let mut out_streams = HashMap::new();
    for (logical, props) in resources_of(&template, "AWS::DynamoDB::Table") {
        let name = format!("{prefix}{logical}");
        let mut req = ddb
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_key_schema(Some(key_schema(props)?));
        for a in props
            .get("AttributeDefinitions")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            req = req.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(str_of(a, "AttributeName")?)
                    .attribute_type(ScalarAttributeType::from(str_of(a, "AttributeType")?))
                    .build()?,
            );
        }
        for g in props
            .get("GlobalSecondaryIndexes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let projection = g
                .get("Projection")
                .and_then(|p| p.get("ProjectionType"))
                .and_then(Value::as_str)
                .unwrap_or("ALL");
            req = req.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(str_of(g, "IndexName")?)
                    .set_key_schema(Some(key_schema(g)?))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::from(projection))
                            .set_non_key_attributes(
                                g.get("Projection")
                                    .and_then(|p| p.get("NonKeyAttributes"))
                                    .and_then(Value::as_sequence)
                                    .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()),
                            )
                            .build(),
                    )
                    .build()?,
            );
        }
        if let Some(view) = props
            .get("StreamSpecification")
            .and_then(|s| s.get("StreamViewType"))
            .and_then(Value::as_str)
        {
            req = req.stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::from(view))
                    .build()?,
            );
        }
        match req.send().await {
            Ok(out) => {
                if let Some(arn) = out.table_description.and_then(|d| d.latest_stream_arn) {
                    out_streams.insert(logical.to_string(), arn);
                }
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {
                let arn = ddb
                    .describe_table()
                    .table_name(&name)
                    .send()
                    .await
                    .ok()
                    .and_then(|d| d.table)
                    .and_then(|t| t.latest_stream_arn);
                if let Some(arn) = arn {
                    out_streams.insert(logical.to_string(), arn);
                }
            }
            Err(e) => return Err(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string().into()),
        }
        if let Some(ttl) = props.get("TimeToLiveSpecification") {
            ddb.update_time_to_live()
                .table_name(&name)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name(str_of(ttl, "AttributeName")?)
                        .enabled(true)
                        .build()?,
                )
                .send()
                .await
                .ok();
        }
        out.tables.insert(logical.to_string(), name);
    }

    out.streams = out_streams;

    // Queues without a redrive policy first: a dead-letter queue must exist before the
    // policy that names it.
    let mut queues = resources_of(&template, "AWS::SQS::Queue");
    queues.sort_by_key(|(_, p)| p.get("RedrivePolicy").is_some());
    for (logical, props) in queues {
        let fifo = props.get("FifoQueue").and_then(Value::as_bool).unwrap_or(false);
        let name = format!("{prefix}{logical}{}", if fifo { ".fifo" } else { "" });
        let mut req = sqs.create_queue().queue_name(&name);
        if fifo {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
            for (key, attr) in [
                ("DeduplicationScope", QueueAttributeName::DeduplicationScope),
                ("FifoThroughputLimit", QueueAttributeName::FifoThroughputLimit),
            ] {
                if let Some(v) = props.get(key) {
                    req = req.attributes(attr, yaml_scalar(v));
                }
            }
        }
        let visibility = overrides
            .visibility_timeout
            .map(|v| v.to_string())
            .or_else(|| props.get("VisibilityTimeout").map(yaml_scalar));
        if let Some(v) = visibility {
            req = req.attributes(QueueAttributeName::VisibilityTimeout, v);
        }
        if let Some(v) = props.get("MessageRetentionPeriod") {
            req = req.attributes(QueueAttributeName::MessageRetentionPeriod, yaml_scalar(v));
        }
        if let Some(policy) = props.get("RedrivePolicy") {
            let target = policy
                .get("deadLetterTargetArn")
                .and_then(get_att_target)
                .ok_or("template: RedrivePolicy.deadLetterTargetArn must be !GetAtt <Queue>.Arn")?;
            let arn = out
                .queue_arns
                .get(target)
                .ok_or_else(|| format!("template: unknown DLQ {target}"))?;
            let max = policy
                .get("maxReceiveCount")
                .map(yaml_scalar)
                .unwrap_or_else(|| "5".into());
            let json = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string();
            req = req.attributes(QueueAttributeName::RedrivePolicy, json);
        }
        let url = req
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?
            .queue_url
            .ok_or("create_queue returned no URL")?;
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or("queue has no ARN")?;
        out.queues.insert(logical.to_string(), url);
        out.queue_arns.insert(logical.to_string(), arn);
    }
    Ok(out)
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// `!GetAtt Name.Arn` → `Name`.
fn get_att_target(v: &Value) -> Option<&str> {
    match v {
        Value::Tagged(t) if t.tag == "GetAtt" => t.value.as_str().and_then(|s| s.strip_suffix(".Arn")),
        _ => None,
    }
}

/// Stores the service secret (apps, callback token) in Secrets Manager; returns its ARN.
pub async fn put_secret(
    sdk: &aws_config::SdkConfig,
    name: &str,
    document: &serde_json::Value,
) -> Result<String, BoxError> {
    let sm = aws_sdk_secretsmanager::Client::new(sdk);
    let created = sm
        .create_secret()
        .name(name)
        .secret_string(document.to_string())
        .send()
        .await;
    match created {
        Ok(out) => Ok(out.arn.unwrap_or_else(|| name.to_string())),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_exists_exception()) => {
            let out = sm
                .put_secret_value()
                .secret_id(name)
                .secret_string(document.to_string())
                .send()
                .await
                .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())?;
            Ok(out.arn.unwrap_or_else(|| name.to_string()))
        }
        Err(e) => Err(aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string().into()),
    }
}

/// Verifies a sender identity in SES (moto rejects mail from unverified senders, as SES does).
pub async fn verify_sender(sdk: &aws_config::SdkConfig, address: &str) -> Result<(), BoxError> {
    let ses = aws_sdk_sesv2::Client::new(sdk);
    match ses.create_email_identity().email_identity(address).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_already_exists_exception()) => Ok(()),
        Err(e) => Err(aws_sdk_sesv2::error::DisplayErrorContext(e).to_string().into()),
    }
}

/// SDK configuration for a local endpoint with dummy credentials.
pub async fn local_sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "pushgate-local",
        ))
        .load()
        .await
}
