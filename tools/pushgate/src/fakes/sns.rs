//! SNS's side of SES events, locally: a test-only RSA key and its self-signed
//! certificate (committed; never trusted in production), with which the dev stack and the
//! receipt sandbox sign SNS envelopes exactly as SNS does. The callback trusts the
//! certificate only through `PUSHGATE_SNS_CERTS`, which maps [`CERT_URL`] (an ordinary
//! `sns.<region>.amazonaws.com` URL, so the host check is the production one) to
//! [`CERT_PEM`].

use base64::Engine;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde_json::Value;

/// The test certificate (PEM).
pub const CERT_PEM: &str = include_str!("sns-test-cert.pem");
const KEY_PEM: &str = include_str!("sns-test-key.pem");
/// Where the test certificate claims to live.
pub const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-pushgate-test.pem";
/// The SES events topic of local stacks.
pub const TOPIC_ARN: &str = "arn:aws:sns:us-east-1:123456789012:pushgate-ses-events";

/// `PUSHGATE_SNS_CERTS` for a local stack: the test certificate, pinned.
pub fn pinned_certs() -> std::collections::HashMap<String, String> {
    [(CERT_URL.to_string(), CERT_PEM.to_string())].into()
}

/// Signs an SNS envelope in place (`SignatureVersion` 2 unless it says 1), setting its
/// `SigningCertURL` to [`CERT_URL`].
pub fn sign(envelope: &mut Value) {
    let version = envelope
        .get("SignatureVersion")
        .and_then(Value::as_str)
        .unwrap_or("2")
        .to_string();
    envelope["SignatureVersion"] = Value::String(version.clone());
    envelope["SigningCertURL"] = Value::String(CERT_URL.into());
    let text = pushgate_shared::providers::sns::canonical_string(envelope).expect("a complete SNS envelope");
    let key = RsaPrivateKey::from_pkcs8_pem(KEY_PEM).expect("test key");
    let sig = if version == "1" {
        SigningKey::<sha1::Sha1>::new(key).sign(text.as_bytes()).to_vec()
    } else {
        SigningKey::<sha2::Sha256>::new(key).sign(text.as_bytes()).to_vec()
    };
    envelope["Signature"] = Value::String(base64::engine::general_purpose::STANDARD.encode(sig));
}

/// A signed SNS `Notification` carrying `message` on [`TOPIC_ARN`].
pub fn notification(message: &Value) -> Value {
    let mut envelope = serde_json::json!({
        "Type": "Notification",
        "MessageId": ulid::Ulid::new().to_string(),
        "TopicArn": TOPIC_ARN,
        "Message": message.to_string(),
        "Timestamp": "2026-11-25T00:00:00.000Z",
    });
    sign(&mut envelope);
    envelope
}
