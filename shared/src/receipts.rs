//! Provider delivery reports, normalised to status updates. Each provider's format gets
//! its own parser; authentication of the callback is a separate seam (`handlers::callback`).

use serde_json::Value;

use crate::model::Status;

/// One delivery report, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Our record key, when the provider echoes it (SES tags).
    pub pk: Option<String>,
    /// Our message id, when known.
    pub id: Option<String>,
    pub provider_message_id: Option<String>,
    pub status: Status,
    pub note: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("body is not valid JSON")]
    NotJson,
    #[error("unrecognised payload: {0}")]
    Unrecognised(&'static str),
}

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
pub fn parse_ses(body: &[u8]) -> Result<SesCallback, ReceiptError> {
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
    let (status, note) = match kind {
        "Send" => (Status::Sent, "ses: accepted for sending".to_string()),
        "Delivery" => (Status::Delivered, "ses: delivered".to_string()),
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
            )
        }
        "Reject" => (Status::Failed, "ses: rejected".to_string()),
        "Rendering Failure" => (Status::Failed, "ses: rendering failure".to_string()),
        _ => return Ok(None),
    };
    Ok(Some(Receipt {
        pk: tag(crate::providers::ses::TAG_PK),
        id: tag(crate::providers::ses::TAG_ID),
        provider_message_id: mail.get("messageId").and_then(Value::as_str).map(str::to_string),
        status,
        note,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sns(event: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"Type":"Notification","MessageId":"m","TopicArn":"arn:aws:sns:us-east-1:1:t","Message": event.to_string()})).unwrap()
    }

    #[test]
    fn delivery_and_bounce_map_to_statuses() {
        let mail = json!({"messageId":"ses-1","tags":{"pushgate_pk":["app_s_ab"],"pushgate_id":["01X"]}});
        let SesCallback::Event(Some(r)) = parse_ses(&sns(json!({"eventType":"Delivery","mail":mail}))).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.status, r.pk.as_deref(), r.provider_message_id.as_deref()),
            (Status::Delivered, Some("app_s_ab"), Some("ses-1"))
        );
        let SesCallback::Event(Some(r)) = parse_ses(&sns(
            json!({"eventType":"Bounce","mail":mail,"bounce":{"bounceType":"Permanent","bounceSubType":"General"}}),
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.note, "ses: bounce Permanent/General");
        assert_eq!(
            parse_ses(&sns(json!({"eventType":"Open","mail":mail}))).unwrap(),
            SesCallback::Event(None)
        );
    }

    #[test]
    fn junk_is_refused() {
        assert!(parse_ses(b"nope").is_err());
        assert!(parse_ses(br#"{"Type":"Notification","Message":"{}"}"#).is_err());
        assert!(matches!(
            parse_ses(br#"{"Type":"SubscriptionConfirmation","TopicArn":"t"}"#).unwrap(),
            SesCallback::Subscription { .. }
        ));
    }
}
