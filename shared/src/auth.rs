//! Request authentication: `X-App-Key`, `X-Timestamp`, `X-Signature: v1=<hex>` where
//! hex = HMAC-SHA256(secret, "{ts}\n{METHOD}\n{path?query}\n{hex(sha256(body))}").

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const HEADER_APP_KEY: &str = "x-app-key";
pub const HEADER_TIMESTAMP: &str = "x-timestamp";
pub const HEADER_SIGNATURE: &str = "x-signature";

type HmacSha256 = Hmac<Sha256>;

/// Why a request was not authenticated. Every variant maps to 401; the text is safe to
/// show the caller (it never echoes secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("malformed header {0}")]
    Malformed(&'static str),
    #[error("unknown app key")]
    UnknownApp,
    #[error("timestamp outside the accepted window")]
    Expired,
    #[error("signature does not match")]
    BadSignature,
    #[error("request already seen (replay)")]
    Replayed,
}

/// The credentials a request carries, parsed but not yet verified.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub app_key: String,
    pub timestamp: i64,
    /// The raw MAC bytes of the `v1=` signature.
    pub mac: Vec<u8>,
}

impl Credentials {
    /// Lowercase hex of the signature: stable per request, used as the replay-guard key.
    pub fn signature_hex(&self) -> String {
        hex::encode(&self.mac)
    }
}

/// Reads the three authentication headers through `get`, which looks a header up by
/// lowercase name.
pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Credentials, AuthError> {
    let app_key = get(HEADER_APP_KEY).ok_or(AuthError::Missing("X-App-Key"))?;
    if !valid_app_key(app_key) {
        return Err(AuthError::Malformed("X-App-Key"));
    }
    let ts = get(HEADER_TIMESTAMP).ok_or(AuthError::Missing("X-Timestamp"))?;
    let timestamp = ts
        .trim()
        .parse::<i64>()
        .map_err(|_| AuthError::Malformed("X-Timestamp"))?;
    let sig = get(HEADER_SIGNATURE).ok_or(AuthError::Missing("X-Signature"))?;
    let hex_part = sig
        .trim()
        .strip_prefix("v1=")
        .ok_or(AuthError::Malformed("X-Signature"))?;
    let mac = hex::decode(hex_part).map_err(|_| AuthError::Malformed("X-Signature"))?;
    if mac.len() != 32 {
        return Err(AuthError::Malformed("X-Signature"));
    }
    Ok(Credentials {
        app_key: app_key.to_string(),
        timestamp,
        mac,
    })
}

/// App keys are also part of storage keys, so they are restricted to a safe alphabet.
pub fn valid_app_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The exact bytes that are signed.
pub fn string_to_sign(timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    format!(
        "{timestamp}\n{}\n{path_and_query}\n{}",
        method.to_ascii_uppercase(),
        hex::encode(Sha256::digest(body))
    )
}

/// Computes the `X-Signature` header value for a request.
pub fn sign(secret: &str, timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(string_to_sign(timestamp, method, path_and_query, body).as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn new_mac(secret: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length")
}

/// Checks the timestamp window and the signature against every active secret of the app
/// (two during rotation). The MAC comparison is constant time (`verify_slice`).
pub fn verify(
    creds: &Credentials,
    secrets: &[String],
    now_secs: i64,
    skew_secs: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<(), AuthError> {
    if (now_secs - creds.timestamp).abs() > skew_secs {
        return Err(AuthError::Expired);
    }
    let message = string_to_sign(creds.timestamp, method, path_and_query, body);
    let mut ok = false;
    // Check every secret, not just until the first match, so timing does not reveal
    // which secret of a rotating pair matched.
    for secret in secrets {
        let mut mac = new_mac(secret);
        mac.update(message.as_bytes());
        ok |= mac.verify_slice(&creds.mac).is_ok();
    }
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn headers(app: &str, ts: i64, sig: &str) -> HashMap<&'static str, String> {
        HashMap::from([
            (HEADER_APP_KEY, app.to_string()),
            (HEADER_TIMESTAMP, ts.to_string()),
            (HEADER_SIGNATURE, sig.to_string()),
        ])
    }

    fn check(
        h: &HashMap<&'static str, String>,
        secrets: &[String],
        now: i64,
        path: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let creds = parse(|k| h.get(k).map(String::as_str))?;
        verify(&creds, secrets, now, 300, "POST", path, body)
    }

    #[test]
    fn string_to_sign_covers_the_body_hash() {
        let s = string_to_sign(1700000000, "post", "/v1/messages?x=1", b"{}");
        assert_eq!(
            s,
            "1700000000\nPOST\n/v1/messages?x=1\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn good_signature_verifies_and_tampering_fails() {
        let secrets = vec!["s3cret".to_string()];
        let body = br#"{"a":1}"#;
        let sig = sign("s3cret", 1000, "POST", "/v1/messages", body);
        let h = headers("app", 1000, &sig);
        assert_eq!(check(&h, &secrets, 1000, "/v1/messages", body), Ok(()));
        assert_eq!(
            check(&h, &secrets, 1000, "/v1/messages", br#"{"a":2}"#),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check(&h, &secrets, 1000, "/v1/other", body),
            Err(AuthError::BadSignature)
        );
        assert_eq!(check(&h, &secrets, 1301, "/v1/messages", body), Err(AuthError::Expired));
        assert_eq!(check(&h, &secrets, 699, "/v1/messages", body), Err(AuthError::Expired));
        assert_eq!(
            check(&h, &["other".to_string()], 1000, "/v1/messages", body),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn either_rotating_secret_verifies() {
        let secrets = vec!["old".to_string(), "new".to_string()];
        for s in ["old", "new"] {
            let sig = sign(s, 5, "POST", "/v1/messages/1", b"");
            let h = headers("app", 5, &sig);
            assert_eq!(check(&h, &secrets, 5, "/v1/messages/1", b""), Ok(()));
        }
    }

    #[test]
    fn malformed_headers_are_named() {
        let mut h = headers("app", 5, "v1=zz");
        assert_eq!(check(&h, &[], 5, "/", b""), Err(AuthError::Malformed("X-Signature")));
        h.insert(HEADER_SIGNATURE, "sha256=00".into());
        assert_eq!(check(&h, &[], 5, "/", b""), Err(AuthError::Malformed("X-Signature")));
        h.insert(HEADER_TIMESTAMP, "soon".into());
        assert_eq!(check(&h, &[], 5, "/", b""), Err(AuthError::Malformed("X-Timestamp")));
        h.insert(HEADER_APP_KEY, "bad key!".into());
        assert_eq!(check(&h, &[], 5, "/", b""), Err(AuthError::Malformed("X-App-Key")));
        h.remove(HEADER_APP_KEY);
        assert_eq!(check(&h, &[], 5, "/", b""), Err(AuthError::Missing("X-App-Key")));
    }
}
