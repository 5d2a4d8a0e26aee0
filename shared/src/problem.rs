//! RFC 9457 problem details: the one error shape every HTTP function answers with.

use lambda_http::{Body, Response};
use serde::Serialize;

/// One invalid field: `pointer` is a JSON Pointer (RFC 6901) into the request body, or
/// the name of a header as `header:<Name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// A problem+json response body with its HTTP status.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// `slug` names the problem type (`urn:pushgate:problem:<slug>`).
    pub fn new(status: u16, slug: &str, title: &str) -> Self {
        Self {
            kind: format!("urn:pushgate:problem:{slug}"),
            title: title.to_string(),
            status,
            detail: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", "Unauthorized").detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "not-found", "Not Found").detail(detail)
    }

    pub fn unprocessable(errors: Vec<FieldError>) -> Self {
        Self::new(422, "validation", "Unprocessable Content")
            .detail("the request has invalid fields")
            .errors(errors)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(503, "unavailable", "Service Unavailable")
            .detail(detail)
            .retry_after(1)
    }

    /// Renders as an HTTP response with `Content-Type: application/problem+json`.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::to_string(&self).unwrap_or_else(|_| "{}".to_string());
        let mut builder = Response::builder()
            .status(self.status)
            .header("content-type", "application/problem+json");
        if let Some(secs) = self.retry_after {
            builder = builder.header("retry-after", secs.to_string());
        }
        builder
            .body(Body::Text(body))
            .unwrap_or_else(|_| Response::new(Body::Empty))
    }
}
