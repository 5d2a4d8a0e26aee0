//! The HTTP edge of the API functions (ingest, callback): API Gateway's event turned
//! into a request without any path that can panic. `lambda_http`'s own conversion `unwrap`s URI parsing and base64
//! decoding, so a raw query with `"` or `<`, or a bad base64 body, would abort the
//! function; here such requests get a clean 400 problem+json before anything else.

use aws_lambda_events::event::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use base64::Engine;
use lambda_http::request::LambdaRequest;
use lambda_http::{Body, Request, Response};

use crate::problem::{FieldError, Problem};

/// Why a request target was refused before authentication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0} has a character outside the URL alphabet")]
    Character(&'static str),
    #[error("{0} has a malformed percent-escape")]
    Escape(&'static str),
    #[error("{0} decodes to invalid UTF-8 or a control character")]
    Decoded(&'static str),
    #[error("header {0} is malformed")]
    Header(&'static str),
    #[error("the body is not valid base64")]
    Base64,
}

impl From<TargetError> for Problem {
    fn from(e: TargetError) -> Self {
        let pointer = match &e {
            TargetError::Character(p) | TargetError::Escape(p) | TargetError::Decoded(p) => (*p).to_string(),
            TargetError::Header(h) => format!("header:{h}"),
            TargetError::Base64 => String::new(),
        };
        Problem::new(400, "bad-request", "Bad Request")
            .detail(e.to_string())
            .errors(vec![FieldError::new(pointer, e.to_string())])
    }
}

/// Checks a path or query (`part` names it) as sent: only RFC 3986 characters
/// (unreserved, sub-delims, `:@/?`) and `%XX` escapes that decode to UTF-8 without
/// control characters (no `%00`, no `%FF`). Our routes take no query parameters and ids
/// are plain ASCII, so nothing legitimate is refused.
pub fn check_target(part: &'static str, raw: &str) -> Result<(), TargetError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(TargetError::Escape(part))?;
            let text = std::str::from_utf8(hex).map_err(|_| TargetError::Escape(part))?;
            let v = u8::from_str_radix(text, 16).map_err(|_| TargetError::Escape(part))?;
            decoded.push(v);
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b);
        if !allowed {
            return Err(TargetError::Character(part));
        }
        decoded.push(b);
        i += 1;
    }
    let text = String::from_utf8(decoded).map_err(|_| TargetError::Decoded(part))?;
    if text.chars().any(char::is_control) {
        return Err(TargetError::Decoded(part));
    }
    Ok(())
}

/// Turns API Gateway's event into a request, or the 400 that answers it. Everything the
/// library conversion would `unwrap` is checked first: the raw path and query, `Host`
/// and `X-Forwarded-Proto` (they become part of a URL), and a base64 body.
pub fn into_request(mut event: ApiGatewayV2httpRequest) -> Result<Request, TargetError> {
    check_target("path", event.raw_path.as_deref().unwrap_or("/"))?;
    if let Some(q) = &event.raw_query_string {
        check_target("query", q)?;
    }
    if let Some(stage) = &event.request_context.stage {
        check_target("path", stage)?;
    }
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
    };
    if let Some(h) = event.headers.get(http::header::HOST) {
        if !h.to_str().is_ok_and(host_ok) {
            return Err(TargetError::Header("Host"));
        }
    }
    if event.headers.get(http::header::HOST).is_none() {
        if let Some(d) = &event.request_context.domain_name {
            if !host_ok(d) {
                return Err(TargetError::Header("Host"));
            }
        }
    }
    if let Some(p) = event.headers.get("x-forwarded-proto") {
        if !p.to_str().is_ok_and(|p| p == "http" || p == "https") {
            return Err(TargetError::Header("X-Forwarded-Proto"));
        }
    }
    let body = match event.body.take() {
        None => Body::Empty,
        Some(b) if event.is_base64_encoded => Body::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|_| TargetError::Base64)?,
        ),
        Some(b) => Body::Text(b),
    };
    event.is_base64_encoded = false;
    let mut req: Request = LambdaRequest::ApiGatewayV2(event).into();
    *req.body_mut() = body;
    Ok(req)
}

/// Serves one API Gateway event with `handle`, or answers it with the 400 that refuses
/// it at the edge.
pub async fn serve<F, Fut>(event: ApiGatewayV2httpRequest, handle: F) -> ApiGatewayV2httpResponse
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response<Body>>,
{
    match into_request(event) {
        Ok(req) => into_event_response(handle(req).await),
        Err(e) => {
            tracing::info!(reason = %e, "request refused at the edge");
            problem_response(e.into())
        }
    }
}

/// The API Gateway (HTTP API, payload 2.0) shape of a response.
pub fn into_event_response(resp: Response<Body>) -> ApiGatewayV2httpResponse {
    let (parts, body) = resp.into_parts();
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.headers = parts.headers;
    match body {
        Body::Empty => {}
        Body::Text(t) => out.body = Some(Body::Text(t)),
        Body::Binary(b) => {
            out.body = Some(Body::Text(base64::engine::general_purpose::STANDARD.encode(b)));
            out.is_base64_encoded = true;
        }
        _ => {}
    }
    out
}

/// A problem as an event response (for requests refused before they are requests).
pub fn problem_response(p: Problem) -> ApiGatewayV2httpResponse {
    into_event_response(p.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_targets_are_refused_and_plain_ones_pass() {
        for ok in ["/v1/messages", "/v1/messages/01HZX", "a=1&b=%20x", "", "x=%C3%A9"] {
            assert_eq!(check_target("query", ok), Ok(()), "{ok}");
        }
        for bad in [
            "a=\"", "a=<", "a=>", "a=%00", "a=%FF", "a=%", "a=%G0", "a b", "a=\u{e9}", "a=\\", "%0A",
        ] {
            assert!(check_target("query", bad).is_err(), "{bad}");
        }
    }
}
