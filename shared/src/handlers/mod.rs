//! The three functions' logic. Each handler takes its adapters explicitly, so the
//! function binaries only build clients and call in.

pub mod callback;
pub mod dispatch;
pub mod ingest;

use lambda_http::{Body, Request, Response};

/// The raw request body bytes, exactly as signed.
pub(crate) fn body_bytes(req: &Request) -> &[u8] {
    match req.body() {
        Body::Empty => &[],
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => &[],
    }
}

/// A header as text, if present and valid UTF-8.
pub(crate) fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A JSON response.
pub(crate) fn json(status: u16, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(value.to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}
