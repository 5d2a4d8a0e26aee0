//! Re-signs the sample API Gateway events in `events/` (their signatures go stale after
//! 300 s, and each may be used once: the replay guard refuses a second use).

use std::path::Path;

use base64::Engine;
use serde_json::Value;

use crate::BoxError;

/// SES events come through SNS, which signs them: the sample's SNS envelope is signed
/// with the local test key, on the local topic (what `pushgate dev` trusts).
fn sign_sns_body(event: &mut Value) -> Result<(), BoxError> {
    let body = event
        .get("body")
        .and_then(Value::as_str)
        .ok_or("SES event has no body")?;
    let mut envelope: Value = serde_json::from_str(body)?;
    envelope["TopicArn"] = Value::String(crate::fakes::sns::TOPIC_ARN.into());
    if envelope.get("Timestamp").is_none() {
        envelope["Timestamp"] = Value::String("2026-11-25T00:00:00.000Z".into());
    }
    crate::fakes::sns::sign(&mut envelope);
    event["body"] = Value::String(envelope.to_string());
    Ok(())
}

/// Re-signs one API Gateway HTTP API v2 event in place with `key`/`secret` at `now`
/// (Unix seconds). Events without an `x-signature` header are left alone. A callback
/// event's `token` query parameter is set to `callback_token` when given, and an SES
/// callback's SNS envelope is signed with the local SNS test key.
pub fn resign(
    event: &mut Value,
    key: &str,
    secret: &str,
    callback_token: Option<&str>,
    now: i64,
) -> Result<bool, BoxError> {
    if let (Some(token), Some(raw_path)) = (callback_token, event.get("rawPath").and_then(Value::as_str)) {
        if raw_path.starts_with("/v1/callbacks/") {
            let ses = raw_path == "/v1/callbacks/ses";
            event["rawQueryString"] = Value::String(format!("token={token}"));
            event["queryStringParameters"] = serde_json::json!({"token": token});
            if ses {
                sign_sns_body(event)?;
            }
            return Ok(true);
        }
    }
    if event.pointer("/headers/x-signature").is_none() {
        return Ok(false);
    }
    let method = event
        .pointer("/requestContext/http/method")
        .and_then(Value::as_str)
        .ok_or("event has no requestContext.http.method")?
        .to_string();
    let path = event
        .get("rawPath")
        .and_then(Value::as_str)
        .ok_or("event has no rawPath")?;
    let query = event.get("rawQueryString").and_then(Value::as_str).unwrap_or_default();
    let path_and_query = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let body = match event.get("body").and_then(Value::as_str) {
        None => Vec::new(),
        Some(b) if event.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) => {
            base64::engine::general_purpose::STANDARD.decode(b)?
        }
        Some(b) => b.as_bytes().to_vec(),
    };
    let signature = pushgate_shared::auth::sign(secret, now, &method, &path_and_query, &body);
    let headers = event
        .get_mut("headers")
        .and_then(Value::as_object_mut)
        .ok_or("event has no headers")?;
    headers.insert("x-app-key".into(), Value::String(key.into()));
    headers.insert("x-timestamp".into(), Value::String(now.to_string()));
    headers.insert("x-signature".into(), Value::String(signature));
    if let Some(ctx) = event.get_mut("requestContext").and_then(Value::as_object_mut) {
        ctx.insert("timeEpoch".into(), Value::from(now * 1000));
    }
    Ok(true)
}

/// Re-signs every `*.json` event in `dir`; returns the files changed.
pub fn resign_dir(dir: &Path, key: &str, secret: &str, callback_token: Option<&str>) -> Result<Vec<String>, BoxError> {
    let now = pushgate_shared::clock::now_ms() / 1000;
    let mut changed = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let mut event: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        if resign(&mut event, key, secret, callback_token, now)? {
            std::fs::write(&path, serde_json::to_string_pretty(&event)? + "\n")?;
            changed.push(path.display().to_string());
        }
    }
    Ok(changed)
}
