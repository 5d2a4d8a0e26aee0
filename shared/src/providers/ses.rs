//! Email through Amazon SES v2 `SendEmail`. Tags carry our key and id so SES events can
//! be correlated even when the SES message id was never recorded (a send cut short).

use aws_sdk_sesv2::config::retry::RetryConfig;
use aws_sdk_sesv2::config::timeout::TimeoutConfig;
use aws_sdk_sesv2::error::SdkError;
use aws_sdk_sesv2::operation::send_email::SendEmailError;
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message as SesMessage, MessageTag};
use aws_sdk_sesv2::Client;
use std::time::Duration;

use super::sns::SnsError;
use super::Provider;
use super::{ReceiptSource, Trust};
use crate::apps::AppConfig;
use crate::apps::ServiceSecrets;
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::Status;
use crate::message::{Channel, Message};
use crate::receipts::{Batch, Inbound, Receipt, ReceiptError, Refusal, Reply, Scope};
use serde_json::Value;

/// Tag naming the record key (`pk`) on every email.
pub const TAG_PK: &str = "pushgate_pk";
/// Tag naming the message id on every email.
pub const TAG_ID: &str = "pushgate_id";

pub struct Ses {
    client: Client,
    default_from: String,
    configuration_set: Option<String>,
}

impl Ses {
    /// `client` is rebuilt for sending (see [`sending_client`]): `SendEmail` is not
    /// idempotent, so it is tried once and bounded by `timeout`, the provider timeout the
    /// dispatcher's lease fence allows for one call.
    pub fn new(client: Client, default_from: String, configuration_set: Option<String>, timeout: Duration) -> Self {
        Self {
            client: sending_client(&client, timeout),
            default_from,
            configuration_set,
        }
    }
}

/// `client` with automatic retries off and every operation bounded by `timeout` (its
/// other settings, interceptors included, kept). The SDK's default retries would resend
/// `SendEmail` after an IO error that may have followed SES's acceptance (a second email),
/// and without an operation timeout a slow call could outlive the lease fence, letting
/// another dispatcher take the message over and send it again. A timed-out call is
/// classified ambiguous ([`classify`]) and never resent (`MarkUnknown`).
pub fn sending_client(client: &Client, timeout: Duration) -> Client {
    let config = client
        .config()
        .to_builder()
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(3)))
                .build(),
        )
        .build();
    Client::from_conf(config)
}

fn content(data: &str) -> Result<Content, ProviderError> {
    Content::builder()
        .data(data)
        .charset("UTF-8")
        .build()
        .map_err(|e| ProviderError::new(ErrorClass::Permanent, "BuildError", e.to_string()))
}

fn tag(name: &str, value: &str) -> Result<MessageTag, ProviderError> {
    MessageTag::builder()
        .name(name)
        .value(value)
        .build()
        .map_err(|e| ProviderError::new(ErrorClass::Permanent, "BuildError", e.to_string()))
}

/// Maps SES errors to classes (providers.md: throttles retry, rejections are final).
fn classify(e: SdkError<SendEmailError>) -> ProviderError {
    let class = match &e {
        SdkError::ServiceError(se) => match se.err() {
            SendEmailError::TooManyRequestsException(_) | SendEmailError::LimitExceededException(_) => {
                ErrorClass::Retryable
            }
            SendEmailError::MessageRejected(_)
            | SendEmailError::SendingPausedException(_)
            | SendEmailError::AccountSuspendedException(_)
            | SendEmailError::MailFromDomainNotVerifiedException(_)
            | SendEmailError::BadRequestException(_)
            | SendEmailError::NotFoundException(_) => ErrorClass::Permanent,
            _ if se.raw().status().is_server_error() => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        },
        // Never left this machine: safe to retry.
        SdkError::ConstructionFailure(_) | SdkError::DispatchFailure(_) => ErrorClass::Retryable,
        // The request may have reached SES.
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => ErrorClass::Ambiguous,
        _ => ErrorClass::Retryable,
    };
    let code = aws_sdk_sesv2::error::ProvideErrorMetadata::code(&e)
        .unwrap_or("SdkError")
        .to_string();
    let message = aws_sdk_sesv2::error::ProvideErrorMetadata::message(&e)
        .map(str::to_string)
        .unwrap_or_else(|| aws_sdk_sesv2::error::DisplayErrorContext(&e).to_string());
    ProviderError::new(class, code, message)
}

/// The app's sending identity (its `email_from`, else the service's `default_from`),
/// escaped (see [`super::key_part`]). Every app sends through the service's SES account,
/// but SES throttles and refuses per identity (an unverified or paused sender), so one
/// app's failing identity must not open the circuit for every app.
pub fn account_id(app: &AppConfig, default_from: &str) -> Option<String> {
    Some(super::key_part(app.email_from.as_deref().unwrap_or(default_from)))
}

#[async_trait::async_trait]
impl Provider for Ses {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, _to: &str) -> Option<String> {
        account_id(app, &self.default_from)
    }

    fn name(&self) -> &'static str {
        "ses"
    }

    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn on_ambiguous(&self) -> Ambiguity {
        // SendEmail is not idempotent and SES offers no way to ask whether a message
        // went out: never risk a second email.
        Ambiguity::MarkUnknown
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let c = &message.content;
        let mut body = Body::builder();
        if let Some(text) = &c.text {
            body = body.text(content(text)?);
        }
        if let Some(html) = &c.html {
            body = body.html(content(html)?);
        }
        let simple = SesMessage::builder()
            .subject(content(c.subject.as_deref().unwrap_or_default())?)
            .body(body.build())
            .build();
        let from = app.email_from.as_deref().unwrap_or(&self.default_from);
        let out = self
            .client
            .send_email()
            .from_email_address(from)
            .destination(Destination::builder().to_addresses(&message.to).build())
            .content(EmailContent::builder().simple(simple).build())
            .email_tags(tag(TAG_PK, &message.pk)?)
            .email_tags(tag(TAG_ID, &message.id)?)
            .set_configuration_set_name(self.configuration_set.clone())
            .send()
            .await
            .map_err(classify)?;
        Ok(Sent {
            provider_message_id: out.message_id,
            delivered: false,
        })
    }
}
// Receipts: SES events reach `/v1/callbacks/ses` through SNS (or EventBridge).

/// What an SES callback body turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum SesCallback {
    /// An SNS subscription handshake (confirmation waits for SNS signature checks).
    Subscription { topic_arn: Option<String> },
    /// Zero or one receipt (events we do not track, like opens, give none).
    Event(Option<Receipt>),
}

/// Parses an SES event delivered through SNS (`Type: Notification`, the SES record as a
/// JSON string in `Message`), through EventBridge (`detail`), or posted bare.
pub fn parse(body: &[u8]) -> Result<SesCallback, ReceiptError> {
    let outer: Value = serde_json::from_slice(body).map_err(|_| ReceiptError::NotJson)?;
    let event = match outer.get("Type").and_then(Value::as_str) {
        Some("SubscriptionConfirmation") | Some("UnsubscribeConfirmation") => {
            return Ok(SesCallback::Subscription {
                topic_arn: outer.get("TopicArn").and_then(Value::as_str).map(str::to_string),
            })
        }
        Some("Notification") => {
            let text = outer
                .get("Message")
                .and_then(Value::as_str)
                .ok_or(ReceiptError::Unrecognised("SNS notification without Message"))?;
            serde_json::from_str(text).map_err(|_| ReceiptError::Unrecognised("SNS Message is not an SES event"))?
        }
        Some(_) => return Err(ReceiptError::Unrecognised("unknown SNS message type")),
        None => outer.get("detail").cloned().unwrap_or(outer),
    };
    Ok(SesCallback::Event(ses_event(&event)?))
}

fn ses_event(event: &Value) -> Result<Option<Receipt>, ReceiptError> {
    let kind = event
        .get("eventType")
        .or_else(|| event.get("notificationType"))
        .and_then(Value::as_str)
        .ok_or(ReceiptError::Unrecognised("no eventType"))?;
    let mail = event.get("mail").ok_or(ReceiptError::Unrecognised("no mail"))?;
    let tag = |name: &str| {
        mail.get("tags")
            .and_then(|t| t.get(name))
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (status, note, code) = match kind {
        "Send" => (Status::Sent, "ses: accepted for sending".to_string(), String::new()),
        "Delivery" => (Status::Delivered, "ses: delivered".to_string(), String::new()),
        "Bounce" => {
            let b = event.get("bounce");
            let field = |k: &str| {
                b.and_then(|b| b.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            (
                Status::Failed,
                format!("ses: bounce {}/{}", field("bounceType"), field("bounceSubType")),
                format!("bounce.{}.{}", field("bounceType"), field("bounceSubType")),
            )
        }
        "Reject" => (Status::Failed, "ses: rejected".to_string(), "reject".to_string()),
        "Rendering Failure" => (
            Status::Failed,
            "ses: rendering failure".to_string(),
            "rendering_failure".to_string(),
        ),
        _ => return Ok(None),
    };
    Ok(Some(Receipt {
        provider: "ses",
        pk: tag(TAG_PK),
        id: tag(TAG_ID),
        provider_message_id: mail.get("messageId").and_then(Value::as_str).map(str::to_string),
        status,
        note,
        code,
    }))
}

/// SES events, delivered by SNS and authenticated by SNS's message signature
/// ([`super::sns`]): the topic must be configured and the certificate SNS's own. The
/// shared `?token=` no longer authenticates anything here: whoever held it could mark any
/// tenant's email `sent` (never sent) or `failed`. Events carry our record key, and only
/// SES (through our topic) can sign them, so the scope is any app.
pub struct SesReceipts;

#[async_trait::async_trait]
impl ReceiptSource for SesReceipts {
    fn name(&self) -> &'static str {
        "ses"
    }

    fn channel(&self) -> crate::message::Channel {
        crate::message::Channel::Email
    }

    /// Unsigned bodies (bare events, EventBridge `detail`) cannot be trusted.
    fn authentic(&self, _call: &Inbound<'_>, _secrets: &ServiceSecrets) -> Result<Scope, Refusal> {
        Err(Refusal::Unsigned)
    }

    /// Verifies the SNS envelope; a verified `SubscriptionConfirmation` is confirmed here,
    /// and only then.
    async fn authenticate(&self, call: &Inbound<'_>, trust: &Trust<'_>) -> Result<Scope, Refusal> {
        let envelope: Value = serde_json::from_slice(call.body).map_err(|_| Refusal::Unsigned)?;
        if envelope.get("Type").and_then(Value::as_str).is_none() {
            return Err(Refusal::Unsigned);
        }
        trust.sns.verify(&envelope).await.map_err(|e| match e {
            SnsError::Fetch(why) => Refusal::Unverifiable(why),
            other => Refusal::Sns(other.to_string()),
        })?;
        if envelope.get("Type").and_then(Value::as_str) == Some("SubscriptionConfirmation") {
            match trust.sns.confirm(&envelope).await {
                Ok(()) => tracing::info!(topic = ?envelope.get("TopicArn"), "SNS subscription confirmed"),
                Err(e) => tracing::error!(error = %e, "SNS subscription confirmation failed"),
            }
        }
        Ok(Scope::AnyApp)
    }

    fn parse(&self, call: &Inbound<'_>) -> Result<Batch, ReceiptError> {
        Ok(match parse(call.body)? {
            SesCallback::Subscription { topic_arn } => {
                // Verified and (if a subscription) confirmed by `authenticate`.
                tracing::info!(?topic_arn, "SNS subscription message received");
                Batch::default()
            }
            SesCallback::Event(receipt) => Batch {
                receipts: receipt.into_iter().collect(),
                received: 1,
            },
        })
    }

    fn reply(&self, batch: &Batch, applied: usize) -> Reply {
        Reply::Json(serde_json::json!({"received": batch.received, "applied": applied}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    #[test]
    fn send_email_is_tried_once_and_bounded_by_the_provider_timeout() {
        let given = Client::from_conf(
            aws_sdk_sesv2::Config::builder()
                .behavior_version(aws_sdk_sesv2::config::BehaviorVersion::latest())
                .region(aws_sdk_sesv2::config::Region::new("us-east-1"))
                .build(),
        );
        let ses = Ses::new(given, "a@b.c".into(), None, Duration::from_millis(1500));
        let config = ses.client.config();
        assert_eq!(
            config.retry_config().map(|r| r.max_attempts()),
            Some(1),
            "no automatic resend"
        );
        assert_eq!(
            config.timeout_config().and_then(|t| t.operation_timeout()),
            Some(Duration::from_millis(1500))
        );
    }

    fn sns(event: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"Type":"Notification","MessageId":"m","TopicArn":"arn:aws:sns:us-east-1:1:t","Message": event.to_string()})).unwrap()
    }

    #[test]
    fn delivery_and_bounce_map_to_statuses() {
        let mail = json!({"messageId":"ses-1","tags":{"pushgate_pk":["app_s_ab"],"pushgate_id":["01X"]}});
        let SesCallback::Event(Some(r)) = parse(&sns(json!({"eventType":"Delivery","mail":mail}))).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.status, r.pk.as_deref(), r.provider_message_id.as_deref()),
            (Status::Delivered, Some("app_s_ab"), Some("ses-1"))
        );
        let SesCallback::Event(Some(r)) = parse(&sns(
            json!({"eventType":"Bounce","mail":mail,"bounce":{"bounceType":"Permanent","bounceSubType":"General"}}),
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.note, "ses: bounce Permanent/General");
        assert_eq!(
            parse(&sns(json!({"eventType":"Open","mail":mail}))).unwrap(),
            SesCallback::Event(None)
        );
    }

    #[test]
    fn junk_is_refused() {
        assert!(parse(b"nope").is_err());
        assert!(parse(br#"{"Type":"Notification","Message":"{}"}"#).is_err());
        assert!(matches!(
            parse(br#"{"Type":"SubscriptionConfirmation","TopicArn":"t"}"#).unwrap(),
            SesCallback::Subscription { .. }
        ));
    }
}
