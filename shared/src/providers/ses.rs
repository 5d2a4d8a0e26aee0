//! Email through Amazon SES v2 `SendEmail`. Tags carry our key and id so SES events can
//! be correlated even when the SES message id was never recorded (a send cut short).

use aws_sdk_sesv2::error::SdkError;
use aws_sdk_sesv2::operation::send_email::SendEmailError;
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message as SesMessage, MessageTag};
use aws_sdk_sesv2::Client;

use super::Provider;
use crate::apps::{AppConfig, ProviderAccounts};
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::{Channel, Message};

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
    pub fn new(client: Client, default_from: String, configuration_set: Option<String>) -> Self {
        Self {
            client,
            default_from,
            configuration_set,
        }
    }
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

/// SES needs no per-app account: every app sends through the service's one.
pub fn account_id(_accounts: &ProviderAccounts, _to: &str) -> Option<String> {
    Some("default".into())
}

#[async_trait::async_trait]
impl Provider for Ses {
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

    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(&app.providers, to)
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
