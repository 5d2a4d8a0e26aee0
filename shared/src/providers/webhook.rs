//! Generic webhook: POST JSON signed per Standard Webhooks (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64>`). 2xx is delivered; redirects
//! are not followed; private targets are refused by the guarded resolver.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::Provider;
use crate::apps::AppConfig;
use crate::clock::Clock;
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::{Channel, Message};
use crate::net::{check_webhook_url, guarded_resolver, BlockedAddress};

/// Standard Webhooks signature of the exact bytes sent: `v1,` + base64(HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}")) where key is the base64 part of `whsec_…`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, ProviderError> {
    let key = B64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| {
            ProviderError::new(
                ErrorClass::Permanent,
                "bad_webhook_secret",
                "webhook secret is not whsec_<base64>",
            )
        })?;
    let ts = timestamp.to_string();
    let mac = crate::crypto::hmac_sha256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    Ok(format!("v1,{}", B64.encode(mac)))
}

/// The JSON posted to the target.
pub fn payload(message: &Message, timestamp: i64) -> serde_json::Value {
    serde_json::json!({
        "type": "message",
        "timestamp": crate::clock::rfc3339(timestamp * 1000),
        "data": {
            "id": message.id,
            "template": message.template,
            "subject": message.content.subject,
            "text": message.content.text,
            "html": message.content.html,
            "body": message.content.body,
        }
    })
}

pub struct Webhook {
    client: reqwest::Client,
    allow_private: bool,
    /// Signs deliveries (`webhook-timestamp`, seconds).
    clock: Clock,
}

impl Webhook {
    /// A client with no redirects, a total timeout and the address guard. Proxies from
    /// the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) are ignored: through a
    /// proxy the guard would check the proxy's address, not the tenant's target, and the
    /// proxy could reach whatever the guard refuses.
    pub fn new(timeout: Duration, allow_private: bool, clock: Clock) -> Result<Self, reqwest::Error> {
        let client = crate::tls::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .dns_resolver(guarded_resolver(allow_private))
            .no_proxy()
            .user_agent("Pushgate-Webhooks/1")
            .build()?;
        Ok(Self {
            client,
            allow_private,
            clock,
        })
    }
}

fn classify_status(status: u16) -> ErrorClass {
    match status {
        408 | 425 | 429 | 500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

fn classify_error(e: &reqwest::Error) -> ProviderError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<BlockedAddress>().is_some() {
            return ProviderError::new(
                ErrorClass::Permanent,
                "target_not_allowed",
                "target resolves to a disallowed address",
            );
        }
        source = s.source();
    }
    super::transport_error(e)
}

/// `{app}.{origin}` (both escaped, see [`super::key_part`]): the target is the tenant's
/// choice, so its circuit and rate bucket belong to the app and the origin (scheme, host,
/// port) it sends to. Keyed by host alone, one tenant failing to reach `https://host:1/`
/// would open the circuit for every tenant's webhooks to that host. Every app can send
/// webhooks; the origin is `default` for a `to` that is not a URL, which the send refuses.
pub fn account_id(app: &AppConfig, to: &str) -> Option<String> {
    let origin = url::Url::parse(to)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_ascii_lowercase();
            let port = u.port_or_known_default()?;
            Some(format!("{}://{host}:{port}", u.scheme()))
        })
        .unwrap_or_else(|| "default".into());
    Some(format!("{}.{}", super::key_part(&app.key), super::key_part(&origin)))
}

#[async_trait::async_trait]
impl Provider for Webhook {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(app, to)
    }

    fn name(&self) -> &'static str {
        "webhook"
    }

    fn channel(&self) -> Channel {
        Channel::Webhook
    }

    fn on_ambiguous(&self) -> Ambiguity {
        // The webhook-id stays the message id on every attempt, so receivers following
        // Standard Webhooks drop the duplicate.
        Ambiguity::Resend
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let url = check_webhook_url(&message.to, self.allow_private)
            .map_err(|why| ProviderError::new(ErrorClass::Permanent, "target_not_allowed", why))?;
        let secret = app.webhook_secret.as_deref().ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Permanent,
                "no_webhook_secret",
                "the app has no webhook signing secret",
            )
        })?;
        let timestamp = (self.clock)() / 1000;
        let body = serde_json::to_vec(&payload(message, timestamp))
            .map_err(|e| ProviderError::new(ErrorClass::Permanent, "encode", e.to_string()))?;
        let signature = sign(secret, &message.id, timestamp, &body)?;
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| classify_error(&e))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            Ok(Sent {
                provider_message_id: None,
                delivered: true,
            })
        } else {
            Err(ProviderError::new(
                classify_status(status),
                format!("http_{status}"),
                format!("target answered {status}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vectors() {
        let sig = sign(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(503), ErrorClass::Retryable);
        assert_eq!(classify_status(429), ErrorClass::Retryable);
        assert_eq!(classify_status(410), ErrorClass::Permanent);
        assert_eq!(classify_status(302), ErrorClass::Permanent);
        assert_eq!(classify_status(400), ErrorClass::Permanent);
    }
}
