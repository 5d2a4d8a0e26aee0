//! The receipt sandbox: locally no provider sends delivery reports (moto's SES emits no
//! events; the fakes only answer sends), so this stands in for them. For every message
//! a provider accepted (`sent`), it produces the receipt that provider would post to the
//! callback route, authenticated the way that provider authenticates: an SNS-wrapped SES
//! event (signed with the local SNS test key), an Aliyun SmsReport and a Tencent status report (the app's own
//! callback token), a Twilio StatusCallback with `X-Twilio-Signature`, a WeChat
//! `TEMPLATESENDJOBFINISH` signed with the app's callback token as WeChat server token. Mail to the
//! SES mailbox simulator's bounce address bounces; everything else is delivered.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;

use crate::BoxError;

/// SES mailbox-simulator address that bounces.
pub const BOUNCE_ADDRESS: &str = "bounce@simulator.amazonses.com";

/// A receipt ready to post to the callback function.
#[derive(Debug, Clone)]
pub struct SimulatedCallback {
    /// Path and query, e.g. `/v1/callbacks/ses?token=…`.
    pub path: String,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

pub struct ReceiptSandbox {
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    callback_token: String,
    /// Each app's own callback token (`ServiceSecrets.apps[].callback_token`).
    app_tokens: HashMap<String, String>,
    /// Base URL the callback function is reached at (Twilio signs over it).
    public_url: String,
    seen: HashSet<String>,
}

struct Sent {
    pk: String,
    id: String,
    app: String,
    provider: String,
    provider_message_id: Option<String>,
    to: String,
}

impl ReceiptSandbox {
    pub fn new(ddb: aws_sdk_dynamodb::Client, table: &str, callback_token: &str, public_url: &str) -> Self {
        Self {
            ddb,
            table: table.to_string(),
            callback_token: callback_token.to_string(),
            app_tokens: HashMap::new(),
            public_url: public_url.trim_end_matches('/').to_string(),
            seen: HashSet::new(),
        }
    }

    /// Signs each app's receipts with its own callback token (app key → token); an app
    /// without one gets no Aliyun, Tencent or WeChat receipts, as in production.
    pub fn with_app_tokens(mut self, tokens: HashMap<String, String>) -> Self {
        self.app_tokens = tokens;
        self
    }

    /// Receipts for messages sent since the last call (each message once).
    pub async fn pending(&mut self) -> Result<Vec<SimulatedCallback>, BoxError> {
        let mut out = Vec::new();
        for sent in self.sent().await? {
            if self.seen.insert(sent.pk.clone()) {
                if let Some(cb) = self.receipt(&sent) {
                    out.push(cb);
                }
            }
        }
        Ok(out)
    }

    async fn sent(&self) -> Result<Vec<Sent>, BoxError> {
        // The local table is small; a scan is the simplest faithful lookup.
        let out = self
            .ddb
            .scan()
            .table_name(&self.table)
            .filter_expression("#st = :sent")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":sent", AttributeValue::S("sent".into()))
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
        Ok(out
            .items()
            .iter()
            .filter_map(|item| {
                let get = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                Some(Sent {
                    pk: get("pk")?,
                    id: get("id")?,
                    app: get("app")?,
                    provider: get("provider")?,
                    provider_message_id: get("provider_message_id"),
                    to: get("to")?,
                })
            })
            .collect())
    }

    fn receipt(&self, m: &Sent) -> Option<SimulatedCallback> {
        let token = &self.callback_token;
        let app_token = self.app_tokens.get(&m.app);
        let app: String = url::form_urlencoded::byte_serialize(m.app.as_bytes()).collect();
        let per_app = |provider: &str, body: serde_json::Value| {
            let t: String = url::form_urlencoded::byte_serialize(app_token?.as_bytes()).collect();
            Some(SimulatedCallback {
                path: format!("/v1/callbacks/{provider}?app={app}&token={t}"),
                content_type: "application/json",
                headers: Vec::new(),
                body: body.to_string().into_bytes(),
            })
        };
        let json_cb = |provider: &str, body: serde_json::Value| SimulatedCallback {
            path: format!("/v1/callbacks/{provider}?token={token}"),
            content_type: "application/json",
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        };
        match m.provider.as_str() {
            "ses" => {
                let bounced = m.to.eq_ignore_ascii_case(BOUNCE_ADDRESS);
                let mut event = json!({
                    "eventType": if bounced { "Bounce" } else { "Delivery" },
                    "mail": {"messageId": m.provider_message_id, "tags": {"pushgate_pk": [m.pk], "pushgate_id": [m.id]}},
                });
                if bounced {
                    event["bounce"] = json!({"bounceType": "Permanent", "bounceSubType": "General"});
                }
                // Signed as SNS signs it (test key); the URL token is no longer needed.
                let envelope = crate::fakes::sns::notification(&event);
                Some(SimulatedCallback {
                    path: "/v1/callbacks/ses".into(),
                    content_type: "text/plain; charset=UTF-8",
                    headers: vec![("x-amz-sns-message-type", "Notification".into())],
                    ..json_cb("ses", envelope)
                })
            }
            "aliyun" => per_app(
                "aliyun",
                json!([{"phone_number": m.to.trim_start_matches('+'), "success": true, "err_code": "DELIVERED",
                        "err_msg": "用户接收成功", "biz_id": m.provider_message_id, "out_id": m.id}]),
            ),
            "tencent" => per_app(
                "tencent",
                json!([{"mobile": m.to, "report_status": "SUCCESS", "errmsg": "DELIVRD", "description": "用户短信送达成功",
                        "sid": m.provider_message_id.clone()?}]),
            ),
            "twilio" => {
                let fields = vec![
                    ("MessageSid".to_string(), m.provider_message_id.clone()?),
                    ("MessageStatus".to_string(), "delivered".to_string()),
                    ("To".to_string(), m.to.clone()),
                ];
                let path = format!("/v1/callbacks/twilio?app={}", m.app);
                let signature = pushgate_shared::providers::twilio::signature(
                    crate::fakes::twilio::AUTH_TOKEN,
                    &format!("{}{path}", self.public_url),
                    &fields,
                );
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields.iter())
                    .finish();
                Some(SimulatedCallback {
                    path,
                    content_type: "application/x-www-form-urlencoded",
                    headers: vec![("x-twilio-signature", signature)],
                    body: body.into_bytes(),
                })
            }
            "wechat" => {
                let ts = (pushgate_shared::clock::now_ms() / 1000).to_string();
                let nonce = ulid::Ulid::new().to_string();
                let signature = pushgate_shared::handlers::callback::wechat_signature(app_token?, &ts, &nonce);
                let xml = format!(
                    "<xml><ToUserName><![CDATA[gh_pushgate]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName>\
                     <CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
                     <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{}</MsgID>\
                     <Status><![CDATA[success]]></Status></xml>",
                    m.to,
                    m.provider_message_id.clone()?
                );
                Some(SimulatedCallback {
                    path: format!("/v1/callbacks/wechat?app={app}&signature={signature}&timestamp={ts}&nonce={nonce}"),
                    content_type: "text/xml",
                    headers: Vec::new(),
                    body: xml.into_bytes(),
                })
            }
            // SMTP has no delivery reports; robots and webhooks settle synchronously.
            _ => None,
        }
    }
}
