//! Request authentication: `X-App-Key`, `X-Timestamp` and `X-Signature`, an HMAC-SHA256
//! with one of the app's secrets over a canonical string:
//!
//! - `v1=<hex>`: `"{ts}\n{METHOD}\n{path?query}\n{hex(sha256(body))}"`;
//! - `v2=<hex>`: the same plus `"\n{Idempotency-Key or empty}"`, so that the one header
//!   that changes what ingest does with a request is covered too.
//!
//! Everything here runs on untrusted input before the caller is known, so nothing may
//! panic: parsing is strict and bounded, and arithmetic on request values is checked.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const HEADER_APP_KEY: &str = "x-app-key";
pub const HEADER_TIMESTAMP: &str = "x-timestamp";
pub const HEADER_SIGNATURE: &str = "x-signature";

/// At most this many digits in `X-Timestamp`: unix seconds have 10 until the year 2286,
/// and a bound keeps parsing trivially overflow-free.
pub const MAX_TIMESTAMP_DIGITS: usize = 12;

type HmacSha256 = Hmac<Sha256>;

/// Why a request was not authenticated. Every variant maps to 401. The edge shows the
/// caller [`AuthError::public_detail`], which never tells an unknown app key from a bad
/// signature (that would let anyone enumerate app keys); logs get the full reason.
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

impl AuthError {
    /// The text shown to the caller. An unknown app key and a bad signature read the
    /// same, so a 401 says nothing about which app keys exist.
    pub fn public_detail(&self) -> String {
        match self {
            AuthError::UnknownApp | AuthError::BadSignature => "invalid credentials (app key or signature)".into(),
            other => other.to_string(),
        }
    }
}

/// The signature scheme a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    /// Does not cover `Idempotency-Key`: such requests pay for a separate replay guard.
    V1,
    /// Covers `Idempotency-Key` (empty when absent).
    V2,
}

impl SignatureVersion {
    fn prefix(self) -> &'static str {
        match self {
            SignatureVersion::V1 => "v1",
            SignatureVersion::V2 => "v2",
        }
    }
}

/// The credentials a request carries, parsed but not yet verified.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub app_key: String,
    /// Unix seconds; never negative (the header is unsigned decimal digits).
    pub timestamp: i64,
    pub version: SignatureVersion,
    /// The raw MAC bytes of the signature.
    pub mac: Vec<u8>,
}

impl Credentials {
    /// Lowercase hex of the signature: stable per request (whatever case the client
    /// sent), used as the replay-guard key.
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
    let timestamp = parse_timestamp(ts).ok_or(AuthError::Malformed("X-Timestamp"))?;
    let sig = get(HEADER_SIGNATURE).ok_or(AuthError::Missing("X-Signature"))?;
    let (version, mac) = parse_signature(sig).ok_or(AuthError::Malformed("X-Signature"))?;
    Ok(Credentials {
        app_key: app_key.to_string(),
        timestamp,
        version,
        mac,
    })
}

/// `X-Timestamp`: plain decimal unix seconds, 1 to [`MAX_TIMESTAMP_DIGITS`] ASCII
/// digits, nothing else (no sign, no spaces, no exponent, no fraction). The bound means
/// the value always fits an `i64`.
pub fn parse_timestamp(raw: &str) -> Option<i64> {
    if raw.is_empty() || raw.len() > MAX_TIMESTAMP_DIGITS || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<i64>().ok()
}

/// `X-Signature`: `v1=<64 hex>` or `v2=<64 hex>` (surrounding whitespace ignored, as
/// HTTP does for header values).
pub fn parse_signature(raw: &str) -> Option<(SignatureVersion, Vec<u8>)> {
    let raw = raw.trim();
    let (version, hex_part) = if let Some(h) = raw.strip_prefix("v1=") {
        (SignatureVersion::V1, h)
    } else if let Some(h) = raw.strip_prefix("v2=") {
        (SignatureVersion::V2, h)
    } else {
        return None;
    };
    if hex_part.len() != 64 {
        return None;
    }
    let mac = hex::decode(hex_part).ok()?;
    Some((version, mac))
}

/// App keys are also part of storage keys, so they are restricted to a safe alphabet.
pub fn valid_app_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The exact bytes that are signed by a v1 signature.
pub fn string_to_sign(timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    format!(
        "{timestamp}\n{}\n{path_and_query}\n{}",
        method.to_ascii_uppercase(),
        hex::encode(Sha256::digest(body))
    )
}

/// The exact bytes that are signed by a v2 signature: v1's plus the `Idempotency-Key`
/// header (empty when the request has none), so the key cannot be added, changed or
/// removed by someone who captured the request.
pub fn string_to_sign_v2(
    timestamp: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    idempotency_key: Option<&str>,
) -> String {
    format!(
        "{}\n{}",
        string_to_sign(timestamp, method, path_and_query, body),
        idempotency_key.unwrap_or_default()
    )
}

/// Computes a v1 `X-Signature` header value (kept for clients that cannot move yet;
/// see [`sign_v2`]).
pub fn sign(secret: &str, timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, &string_to_sign(timestamp, method, path_and_query, body)))
    )
}

/// Computes a v2 `X-Signature` header value, covering `idempotency_key`.
pub fn sign_v2(
    secret: &str,
    timestamp: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    idempotency_key: Option<&str>,
) -> String {
    let message = string_to_sign_v2(timestamp, method, path_and_query, body, idempotency_key);
    format!("v2={}", hex::encode(mac(secret, &message)))
}

fn new_mac(secret: &str) -> Option<HmacSha256> {
    // HMAC takes keys of any length, so this is always `Some`; no panic path either way.
    <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).ok()
}

fn mac(secret: &str, message: &str) -> Vec<u8> {
    new_mac(secret)
        .map(|mut m| {
            m.update(message.as_bytes());
            m.finalize().into_bytes().to_vec()
        })
        .unwrap_or_default()
}

/// Whether `timestamp` is within `skew_secs` of `now_secs`, without overflow for any
/// pair of values (`abs_diff` is exact over the whole `i64` range).
pub fn within_window(now_secs: i64, timestamp: i64, skew_secs: i64) -> bool {
    now_secs.abs_diff(timestamp) <= skew_secs.max(0).unsigned_abs()
}

/// Checks the timestamp window and the signature against every active secret of the app
/// (two during rotation). The MAC comparison is constant time (`verify_slice`).
/// `idempotency_key` is the request's `Idempotency-Key` header; v2 signatures cover it.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    creds: &Credentials,
    secrets: &[String],
    now_secs: i64,
    skew_secs: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    idempotency_key: Option<&str>,
) -> Result<(), AuthError> {
    if !within_window(now_secs, creds.timestamp, skew_secs) {
        return Err(AuthError::Expired);
    }
    let message = match creds.version {
        SignatureVersion::V1 => string_to_sign(creds.timestamp, method, path_and_query, body),
        SignatureVersion::V2 => string_to_sign_v2(creds.timestamp, method, path_and_query, body, idempotency_key),
    };
    let mut ok = false;
    // Check every secret, not just until the first match, so timing does not reveal
    // which secret of a rotating pair matched.
    for secret in secrets {
        if let Some(mut mac) = new_mac(secret) {
            mac.update(message.as_bytes());
            ok |= mac.verify_slice(&creds.mac).is_ok();
        }
    }
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

/// The version prefix of a signature header value, for logs.
pub fn version_name(v: SignatureVersion) -> &'static str {
    v.prefix()
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
        verify(&creds, secrets, now, 300, "POST", path, body, None)
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

    #[test]
    fn hostile_timestamps_are_malformed_never_a_panic() {
        let sig = sign("s3cret", 5, "POST", "/", b"");
        for ts in [
            "-9223372036854775808",
            "9223372036854775807",
            "+5",
            " 5",
            "5 ",
            "5.0",
            "1e9",
            "0x10",
            "1234567890123456789012345678901234567890",
            "",
            "٥",
            "５",
            "-1",
        ] {
            let h = HashMap::from([
                (HEADER_APP_KEY, "app".to_string()),
                (HEADER_TIMESTAMP, ts.to_string()),
                (HEADER_SIGNATURE, sig.clone()),
            ]);
            assert_eq!(
                check(&h, &["s3cret".into()], 5, "/", b""),
                Err(AuthError::Malformed("X-Timestamp")),
                "{ts:?}"
            );
        }
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_timestamp("000000000005"), Some(5));
    }

    #[test]
    fn the_window_never_overflows() {
        for (now, ts) in [(i64::MAX, i64::MIN), (i64::MIN, i64::MAX), (0, i64::MIN), (i64::MIN, 0)] {
            assert!(!within_window(now, ts, 300), "{now} {ts}");
        }
        assert!(within_window(i64::MAX, i64::MAX, 0));
        assert!(within_window(1000, 700, 300));
        assert!(!within_window(1000, 699, 300));
        assert!(within_window(1000, 1000, -1), "a negative skew admits only now");
        assert!(!within_window(1000, 1001, -1));
        // A parsed timestamp can still be as large as 12 digits allow.
        let creds = Credentials {
            app_key: "app".into(),
            timestamp: 999_999_999_999,
            version: SignatureVersion::V1,
            mac: vec![0; 32],
        };
        assert_eq!(
            verify(&creds, &["s".into()], i64::MIN, i64::MAX, "POST", "/", b"", None),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn v2_covers_the_idempotency_key() {
        let secrets = vec!["s3cret".to_string()];
        let sig = sign_v2("s3cret", 9, "POST", "/v1/messages", b"{}", Some("k-1"));
        assert!(sig.starts_with("v2="));
        let h = headers("app", 9, &sig);
        let creds = parse(|k| h.get(k).map(String::as_str)).unwrap();
        assert_eq!(creds.version, SignatureVersion::V2);
        let v = |key: Option<&str>| verify(&creds, &secrets, 9, 300, "POST", "/v1/messages", b"{}", key);
        assert_eq!(v(Some("k-1")), Ok(()));
        assert_eq!(v(Some("k-2")), Err(AuthError::BadSignature), "changed key");
        assert_eq!(v(None), Err(AuthError::BadSignature), "removed key");
        // Without a key, v2 signs an empty last line; adding one breaks it.
        let sig = sign_v2("s3cret", 9, "POST", "/v1/messages", b"{}", None);
        let h = headers("app", 9, &sig);
        let creds = parse(|k| h.get(k).map(String::as_str)).unwrap();
        assert_eq!(
            verify(&creds, &secrets, 9, 300, "POST", "/v1/messages", b"{}", None),
            Ok(())
        );
        assert_eq!(
            verify(&creds, &secrets, 9, 300, "POST", "/v1/messages", b"{}", Some("new")),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            string_to_sign_v2(1, "get", "/p", b"", Some("k")),
            format!("{}\nk", string_to_sign(1, "GET", "/p", b""))
        );
        // v1 ignores the key (the handler guards such requests separately).
        let sig = sign("s3cret", 9, "POST", "/v1/messages", b"{}");
        let h = headers("app", 9, &sig);
        let creds = parse(|k| h.get(k).map(String::as_str)).unwrap();
        assert_eq!(
            verify(&creds, &secrets, 9, 300, "POST", "/v1/messages", b"{}", Some("any")),
            Ok(())
        );
    }

    #[test]
    fn unknown_app_and_bad_signature_read_the_same() {
        assert_eq!(
            AuthError::UnknownApp.public_detail(),
            AuthError::BadSignature.public_detail()
        );
        assert!(AuthError::Replayed.public_detail().contains("replay"));
    }

    #[test]
    fn signatures_of_the_wrong_length_or_scheme_are_malformed() {
        for s in [
            "v1=",
            "v3=00",
            "v1=0",
            &format!("v1={}", "0".repeat(66)),
            &format!("v2={}", "g".repeat(64)),
        ] {
            assert_eq!(parse_signature(s), None, "{s}");
        }
        let upper = format!("v1={}", "AB".repeat(32));
        assert_eq!(
            parse_signature(&upper).map(|(v, m)| (v, m.len())),
            Some((SignatureVersion::V1, 32))
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any string as `X-Timestamp` parses to a value in range or is refused.
            #[test]
            fn any_timestamp_header_parses_or_is_refused(raw in "\\PC{0,24}|[0-9+\\- .e]{0,45}") {
                if let Some(ts) = parse_timestamp(&raw) {
                    prop_assert!(ts >= 0);
                    prop_assert!(raw.bytes().all(|b| b.is_ascii_digit()));
                    prop_assert!(raw.len() <= MAX_TIMESTAMP_DIGITS);
                }
            }

            /// Every integer timestamp either verifies its own signature or is out of
            /// the window: no overflow anywhere in between.
            #[test]
            fn any_window_pair_is_decided(now in any::<i64>(), ts in any::<i64>(), skew in any::<i64>()) {
                let inside = within_window(now, ts, skew);
                let wide = (i128::from(now) - i128::from(ts)).abs() <= i128::from(skew.max(0));
                prop_assert_eq!(inside, wide);
            }

            /// Any string as `X-Signature` parses to a 32-byte MAC or is refused.
            #[test]
            fn any_signature_header_parses_or_is_refused(raw in "\\PC{0,80}|v[12]=[0-9a-fA-F]{0,70}") {
                if let Some((_, mac)) = parse_signature(&raw) {
                    prop_assert_eq!(mac.len(), 32);
                }
            }

            /// The three headers together, anything at all: an answer, never a panic.
            #[test]
            fn any_headers_are_answered(app in "\\PC{0,70}", ts in "\\PC{0,20}", sig in "\\PC{0,80}", now in any::<i64>()) {
                let h = std::collections::HashMap::from([
                    (HEADER_APP_KEY, app),
                    (HEADER_TIMESTAMP, ts),
                    (HEADER_SIGNATURE, sig),
                ]);
                if let Ok(creds) = parse(|k| h.get(k).map(String::as_str)) {
                    let _ = verify(&creds, &["s".into()], now, 300, "POST", "/", b"", Some("k"));
                }
            }
        }
    }
}
