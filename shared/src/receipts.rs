//! Provider delivery reports, normalised to status updates. Each provider's format gets
//! its own parser; authentication of the callback is a separate seam (`handlers::callback`).

use serde_json::Value;

use crate::message::Status;

/// One delivery report, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The provider that sent it (`ses`, `twilio`, `aliyun`, `tencent`, `wechat`).
    pub provider: &'static str,
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
        provider: "ses",
        pk: tag(crate::providers::ses::TAG_PK),
        id: tag(crate::providers::ses::TAG_ID),
        provider_message_id: mail.get("messageId").and_then(Value::as_str).map(str::to_string),
        status,
        note,
    }))
}

/// Twilio StatusCallback (form fields). Intermediate statuses give no receipt.
pub fn parse_twilio(fields: &[(String, String)]) -> Result<Option<Receipt>, ReceiptError> {
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let sid = get("MessageSid")
        .or_else(|| get("SmsSid"))
        .ok_or(ReceiptError::Unrecognised("no MessageSid"))?;
    let status = get("MessageStatus")
        .or_else(|| get("SmsStatus"))
        .ok_or(ReceiptError::Unrecognised("no MessageStatus"))?;
    let (status, note) = match status {
        "delivered" | "read" => (Status::Delivered, format!("twilio: {status}")),
        "undelivered" | "failed" => (
            Status::Failed,
            format!("twilio: {status} (error {})", get("ErrorCode").unwrap_or("?")),
        ),
        "sent" => (Status::Sent, "twilio: sent".to_string()),
        _ => return Ok(None),
    };
    Ok(Some(Receipt {
        provider: "twilio",
        pk: None,
        id: None,
        provider_message_id: Some(sid.to_string()),
        status,
        note,
    }))
}

/// Aliyun SmsReport push: a JSON array; `out_id` is our message id.
pub fn parse_aliyun(body: &[u8]) -> Result<Vec<Receipt>, ReceiptError> {
    let reports: Vec<Value> = serde_json::from_slice(body).map_err(|_| ReceiptError::NotJson)?;
    reports
        .iter()
        .map(|r| {
            let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
            let success = r
                .get("success")
                .and_then(Value::as_bool)
                .ok_or(ReceiptError::Unrecognised("report without success"))?;
            Ok(Receipt {
                provider: "aliyun",
                pk: None,
                id: text("out_id").filter(|s| !s.is_empty()),
                provider_message_id: text("biz_id"),
                status: if success { Status::Delivered } else { Status::Failed },
                note: format!("aliyun: {}", text("err_code").unwrap_or_default()),
            })
        })
        .collect()
}

/// Tencent SMS status callback: a JSON array; `sid` is the send's `SerialNo`.
pub fn parse_tencent(body: &[u8]) -> Result<Vec<Receipt>, ReceiptError> {
    let reports: Vec<Value> = serde_json::from_slice(body).map_err(|_| ReceiptError::NotJson)?;
    reports
        .iter()
        .map(|r| {
            let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
            let status = match text("report_status").as_deref() {
                Some("SUCCESS") => Status::Delivered,
                Some("FAIL") => Status::Failed,
                _ => return Err(ReceiptError::Unrecognised("report_status must be SUCCESS or FAIL")),
            };
            Ok(Receipt {
                provider: "tencent",
                pk: None,
                id: None,
                provider_message_id: Some(text("sid").ok_or(ReceiptError::Unrecognised("report without sid"))?),
                status,
                note: format!("tencent: {}", text("errmsg").unwrap_or_default()),
            })
        })
        .collect()
}

/// WeChat `TEMPLATESENDJOBFINISH` event (XML). Other events give no receipt.
pub fn parse_wechat(body: &[u8]) -> Result<Option<Receipt>, ReceiptError> {
    let xml = std::str::from_utf8(body).map_err(|_| ReceiptError::Unrecognised("not UTF-8"))?;
    if xml_field(xml, "Event").as_deref() != Some("TEMPLATESENDJOBFINISH") {
        return Ok(None);
    }
    let msg_id = xml_field(xml, "MsgID").ok_or(ReceiptError::Unrecognised("no MsgID"))?;
    let status = xml_field(xml, "Status").ok_or(ReceiptError::Unrecognised("no Status"))?;
    Ok(Some(Receipt {
        provider: "wechat",
        pk: None,
        id: None,
        provider_message_id: Some(msg_id),
        status: if status == "success" {
            Status::Delivered
        } else {
            Status::Failed
        },
        note: format!("wechat: {status}"),
    }))
}

/// The text of `<name>…</name>`, CDATA unwrapped (WeChat's flat event XML).
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let raw = xml[start..end].trim();
    let raw = raw
        .strip_prefix("<![CDATA[")
        .and_then(|r| r.strip_suffix("]]>"))
        .unwrap_or(raw);
    Some(raw.to_string())
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
    fn sms_and_wechat_receipts_parse() {
        let fields = vec![
            ("MessageSid".to_string(), "SM1".to_string()),
            ("MessageStatus".to_string(), "undelivered".to_string()),
            ("ErrorCode".to_string(), "30003".to_string()),
        ];
        let r = parse_twilio(&fields).unwrap().unwrap();
        assert_eq!(
            (r.status, r.provider_message_id.as_deref()),
            (Status::Failed, Some("SM1"))
        );
        assert!(r.note.contains("30003"));
        let queued = vec![
            ("MessageSid".to_string(), "SM1".to_string()),
            ("MessageStatus".to_string(), "queued".to_string()),
        ];
        assert_eq!(parse_twilio(&queued).unwrap(), None);

        let a = parse_aliyun(
            br#"[{"phone_number":"138","success":true,"err_code":"DELIVERED","biz_id":"b1","out_id":"01ID"}]"#,
        )
        .unwrap();
        assert_eq!((a[0].status, a[0].id.as_deref()), (Status::Delivered, Some("01ID")));
        let t = parse_tencent(br#"[{"mobile":"138","report_status":"FAIL","errmsg":"MK:0001","sid":"s-1"}]"#).unwrap();
        assert_eq!(
            (t[0].status, t[0].provider_message_id.as_deref()),
            (Status::Failed, Some("s-1"))
        );

        let xml = b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>200163836</MsgID><Status><![CDATA[failed:user block]]></Status></xml>";
        let w = parse_wechat(xml).unwrap().unwrap();
        assert_eq!(
            (w.status, w.provider_message_id.as_deref()),
            (Status::Failed, Some("200163836"))
        );
        assert_eq!(parse_wechat(b"<xml><Event>subscribe</Event></xml>").unwrap(), None);
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
