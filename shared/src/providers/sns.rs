//! Amazon SNS message signatures, which is how SES events reach the callback: every
//! envelope is signed by SNS with the key of a certificate it serves at
//! `SigningCertURL`. Verifying that signature (and that the topic is ours) is what makes
//! an SES event trustworthy; a shared URL token is not, since whoever holds it could mark
//! any tenant's email `sent` (so it is never sent) or `failed`.
//!
//! - `SignatureVersion` 1 is SHA1withRSA, 2 is SHA256withRSA, over the documented
//!   canonical string (`Key\nValue\n` for a fixed list of keys per message type).
//! - `SigningCertURL` must be `https` on `sns.{region}.amazonaws.com` (or `.com.cn`), no
//!   port, no credentials, a `.pem` path: an amazonaws.com host alone is not enough, S3
//!   buckets live there too.
//! - Certificates are cached per URL for the life of the instance.
//! - `TopicArn` must be one of `PUSHGATE_SNS_TOPIC_ARNS`; with none configured every SNS
//!   message is refused.
//! - Local stacks and tests trust a test certificate through `PUSHGATE_SNS_CERTS` (a JSON
//!   object from a cert URL, which must still pass the host check, to its PEM): the cert is
//!   then not fetched. Production never sets it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde_json::Value;
use x509_cert::der::{DecodePem, Encode};
use x509_cert::Certificate;

/// Why an SNS message is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnsError {
    #[error("not an SNS message: {0}")]
    Malformed(&'static str),
    #[error("unsupported SignatureVersion")]
    Version,
    #[error("SigningCertURL is not https on an sns.<region>.amazonaws.com host")]
    CertUrl,
    #[error("SubscribeURL is not https on an sns.<region>.amazonaws.com host")]
    SubscribeUrl,
    #[error("signing certificate unavailable: {0}")]
    Fetch(String),
    #[error("signing certificate unreadable")]
    Certificate,
    #[error("signature does not verify")]
    Signature,
    #[error("topic is not configured (PUSHGATE_SNS_TOPIC_ARNS)")]
    Topic,
}

/// Whether `url` is an SNS endpoint: `https://sns.{region}.amazonaws.com[.cn]/…`, with no
/// port or credentials.
pub fn is_sns_url(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let host = u.host_str().unwrap_or_default();
    let region = host.strip_prefix("sns.").and_then(|h| {
        h.strip_suffix(".amazonaws.com")
            .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
    });
    u.scheme() == "https"
        && u.port().is_none()
        && u.username().is_empty()
        && u.password().is_none()
        && region.is_some_and(|r| {
            !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether `url` names an SNS signing certificate as SNS does:
/// `https://sns.{region}.amazonaws.com[.cn]/SimpleNotificationService-{name}.pem`, no
/// query or fragment. Anything else is refused before any fetch, so a forged envelope
/// cannot make the function fetch arbitrary paths or fill the certificate cache.
pub fn is_cert_url(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let name = u
        .path()
        .strip_prefix("/SimpleNotificationService-")
        .and_then(|p| p.strip_suffix(".pem"));
    is_sns_url(url)
        && u.query().is_none()
        && u.fragment().is_none()
        && name.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Most certificates kept per instance (SNS uses one per region at a time).
const MAX_CACHED_CERTS: usize = 16;

/// The string SNS signs: `Key\nValue\n` for each present key of the type's list, in order.
pub fn canonical_string(envelope: &Value) -> Result<String, SnsError> {
    let kind = envelope
        .get("Type")
        .and_then(Value::as_str)
        .ok_or(SnsError::Malformed("no Type"))?;
    let keys: &[&str] = match kind {
        "Notification" => &["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
        _ => return Err(SnsError::Malformed("unknown Type")),
    };
    let mut out = String::new();
    for key in keys {
        match envelope.get(*key).and_then(Value::as_str) {
            Some(v) => {
                out.push_str(key);
                out.push('\n');
                out.push_str(v);
                out.push('\n');
            }
            None if *key == "Subject" => {}
            None => return Err(SnsError::Malformed("a signed field is missing")),
        }
    }
    Ok(out)
}

/// The RSA key of a PEM certificate.
pub fn public_key(pem: &str) -> Result<RsaPublicKey, SnsError> {
    let cert = Certificate::from_pem(pem.as_bytes()).map_err(|_| SnsError::Certificate)?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| SnsError::Certificate)?;
    rsa::pkcs8::DecodePublicKey::from_public_key_der(&spki).map_err(|_| SnsError::Certificate)
}

/// Checks the envelope's signature with `key` (no network, no topic check).
pub fn verify_with(envelope: &Value, key: &RsaPublicKey) -> Result<(), SnsError> {
    let text = canonical_string(envelope)?;
    let sig = envelope
        .get("Signature")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or(SnsError::Signature)?;
    let sig = Signature::try_from(sig.as_slice()).map_err(|_| SnsError::Signature)?;
    let ok = match envelope.get("SignatureVersion").and_then(Value::as_str) {
        Some("1") => VerifyingKey::<sha1::Sha1>::new(key.clone()).verify(text.as_bytes(), &sig),
        Some("2") => VerifyingKey::<sha2::Sha256>::new(key.clone()).verify(text.as_bytes(), &sig),
        _ => return Err(SnsError::Version),
    };
    ok.map_err(|_| SnsError::Signature)
}

/// Confirms a verified SNS subscription.
#[async_trait::async_trait]
pub trait Confirmer: Send + Sync {
    /// Visits (or otherwise acts on) the `SubscribeURL`, already checked to be SNS's.
    async fn confirm(&self, subscribe_url: &str) -> Result<(), SnsError>;
}

/// The documented way: `GET SubscribeURL`.
struct HttpConfirmer(reqwest::Client);

#[async_trait::async_trait]
impl Confirmer for HttpConfirmer {
    async fn confirm(&self, subscribe_url: &str) -> Result<(), SnsError> {
        let resp = self
            .0
            .get(subscribe_url)
            .send()
            .await
            .map_err(|e| SnsError::Fetch(e.without_url().to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SnsError::Fetch(format!("status {}", resp.status())))
        }
    }
}

/// What the callback trusts of SNS: the topics, the certificates, and how to confirm.
pub struct SnsTrust {
    /// `PUSHGATE_SNS_TOPIC_ARNS`: the topics whose messages are accepted.
    pub topic_arns: Vec<String>,
    /// `PUSHGATE_SNS_CERTS`: certificates trusted without fetching (local stacks, tests).
    pub pinned: HashMap<String, String>,
    http: reqwest::Client,
    confirmer: Arc<dyn Confirmer>,
    cache: RwLock<HashMap<String, Arc<RsaPublicKey>>>,
}

impl SnsTrust {
    pub fn new(topic_arns: Vec<String>, pinned: HashMap<String, String>, http: reqwest::Client) -> Self {
        Self {
            topic_arns,
            pinned,
            confirmer: Arc::new(HttpConfirmer(http.clone())),
            http,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Confirms subscriptions through `confirmer` instead of `GET SubscribeURL` (tests).
    pub fn with_confirmer(mut self, confirmer: Arc<dyn Confirmer>) -> Self {
        self.confirmer = confirmer;
        self
    }

    /// From `PUSHGATE_SNS_TOPIC_ARNS` (comma-separated) and `PUSHGATE_SNS_CERTS` (JSON).
    pub fn from_env() -> Result<Self, String> {
        let topics = std::env::var("PUSHGATE_SNS_TOPIC_ARNS").unwrap_or_default();
        let topic_arns = topics
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        let pinned = match std::env::var("PUSHGATE_SNS_CERTS") {
            Ok(json) if !json.trim().is_empty() => {
                serde_json::from_str(&json).map_err(|e| format!("PUSHGATE_SNS_CERTS: {e}"))?
            }
            _ => HashMap::new(),
        };
        let http = crate::tls::http_client_builder()
            .timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self::new(topic_arns, pinned, http))
    }

    /// Verifies an SNS envelope: topic, certificate URL, signature. Fetches (once per URL
    /// per instance) the certificate unless it is pinned.
    pub async fn verify(&self, envelope: &Value) -> Result<(), SnsError> {
        let topic = envelope
            .get("TopicArn")
            .and_then(Value::as_str)
            .ok_or(SnsError::Topic)?;
        if !self.topic_arns.iter().any(|t| t == topic) {
            return Err(SnsError::Topic);
        }
        let url = envelope
            .get("SigningCertURL")
            .and_then(Value::as_str)
            .ok_or(SnsError::CertUrl)?;
        if !is_cert_url(url) {
            return Err(SnsError::CertUrl);
        }
        if let Some(kind @ ("SubscriptionConfirmation" | "UnsubscribeConfirmation")) =
            envelope.get("Type").and_then(Value::as_str)
        {
            let subscribe = envelope.get("SubscribeURL").and_then(Value::as_str).unwrap_or_default();
            if kind == "SubscriptionConfirmation" && !is_sns_url(subscribe) {
                return Err(SnsError::SubscribeUrl);
            }
        }
        let key = self.key(url).await?;
        verify_with(envelope, &key)
    }

    async fn key(&self, url: &str) -> Result<Arc<RsaPublicKey>, SnsError> {
        if let Some(k) = self.cache.read().ok().and_then(|c| c.get(url).cloned()) {
            return Ok(k);
        }
        let pem = match self.pinned.get(url) {
            Some(pem) => pem.clone(),
            None => {
                let resp = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| SnsError::Fetch(e.without_url().to_string()))?;
                if !resp.status().is_success() {
                    return Err(SnsError::Fetch(format!("status {}", resp.status())));
                }
                resp.text()
                    .await
                    .map_err(|e| SnsError::Fetch(e.without_url().to_string()))?
            }
        };
        let key = Arc::new(public_key(&pem)?);
        if let Ok(mut c) = self.cache.write() {
            if c.len() >= MAX_CACHED_CERTS {
                c.clear();
            }
            c.insert(url.to_string(), key.clone());
        }
        Ok(key)
    }

    /// Confirms a verified subscription through its `SubscribeURL` (checked to be an SNS
    /// endpoint by [`SnsTrust::verify`], and again here).
    pub async fn confirm(&self, envelope: &Value) -> Result<(), SnsError> {
        let url = envelope
            .get("SubscribeURL")
            .and_then(Value::as_str)
            .filter(|u| is_sns_url(u))
            .ok_or(SnsError::SubscribeUrl)?;
        self.confirmer.confirm(url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_pass() {
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        ] {
            assert!(is_sns_url(ok), "{ok}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
            "https://evil.s3.amazonaws.com/x.pem",
            "https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.US_EAST.amazonaws.com/x.pem",
            "https://evilsns.us-east-1.amazonaws.com/x.pem",
            "not a url",
        ] {
            assert!(!is_sns_url(bad), "{bad}");
        }
        // Certificates: SNS's own file names only, no query or fragment.
        assert!(is_cert_url(
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"
        ));
        for bad in [
            "https://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?x=.pem",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem#a",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-.pem",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a/b.pem",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem/",
            "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        ] {
            assert!(!is_cert_url(bad), "{bad}");
        }
    }

    #[test]
    fn canonical_strings_follow_the_documented_key_order() {
        let n = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": "hi",
                                   "Timestamp": "ts", "Signature": "x", "SignatureVersion": "1"});
        assert_eq!(
            canonical_string(&n).unwrap(),
            "Message\nhi\nMessageId\nm\nTimestamp\nts\nTopicArn\nt\nType\nNotification\n"
        );
        let mut with_subject = n.clone();
        with_subject["Subject"] = "s".into();
        assert!(canonical_string(&with_subject)
            .unwrap()
            .contains("MessageId\nm\nSubject\ns\nTimestamp"));
        let c = serde_json::json!({"Type": "SubscriptionConfirmation", "MessageId": "m", "Token": "k", "TopicArn": "t",
                                   "Message": "c", "SubscribeURL": "u", "Timestamp": "ts"});
        assert_eq!(
            canonical_string(&c).unwrap(),
            "Message\nc\nMessageId\nm\nSubscribeURL\nu\nTimestamp\nts\nToken\nk\nTopicArn\nt\nType\nSubscriptionConfirmation\n"
        );
        assert_eq!(
            canonical_string(&serde_json::json!({"Type": "Notification"})),
            Err(SnsError::Malformed("a signed field is missing"))
        );
    }
}
