//! A signing client for the Pushgate API (`pushgate send`, `pushgate status`), reading
//! `PUSHGATE_URL`, `PUSHGATE_APP_KEY` and `PUSHGATE_APP_SECRET`.

use crate::BoxError;
pub use pushgate_shared::auth::SignatureVersion;

/// Where and as whom to call the API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub base_url: String,
    pub app_key: String,
    pub app_secret: String,
    http: reqwest::Client,
}

/// A response, as received.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl ApiClient {
    pub fn new(base_url: &str, app_key: &str, app_secret: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            app_key: app_key.to_string(),
            app_secret: app_secret.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// From the `PUSHGATE_*` environment variables.
    pub fn from_env() -> Result<Self, BoxError> {
        let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set (source .pushgate/dev.env)"));
        Ok(Self::new(
            &var("PUSHGATE_URL")?,
            &var("PUSHGATE_APP_KEY")?,
            &var("PUSHGATE_APP_SECRET")?,
        ))
    }

    /// The three authentication headers for a request, signed v2 (covering
    /// `idempotency_key`, which the request must then carry as `Idempotency-Key`).
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timestamp: i64,
        idempotency_key: Option<&str>,
    ) -> [(&'static str, String); 3] {
        self.sign_as(
            SignatureVersion::V2,
            method,
            path_and_query,
            body,
            timestamp,
            idempotency_key,
        )
    }

    /// The headers signed with a chosen scheme. v1 does not cover the key (the server
    /// then pays one more write to guard the signature); it stays for old clients.
    pub fn sign_as(
        &self,
        version: SignatureVersion,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timestamp: i64,
        idempotency_key: Option<&str>,
    ) -> [(&'static str, String); 3] {
        let signature = match version {
            SignatureVersion::V1 => {
                pushgate_shared::auth::sign(&self.app_secret, timestamp, method, path_and_query, body)
            }
            SignatureVersion::V2 => pushgate_shared::auth::sign_v2(
                &self.app_secret,
                timestamp,
                method,
                path_and_query,
                body,
                idempotency_key,
            ),
        };
        [
            ("X-App-Key", self.app_key.clone()),
            ("X-Timestamp", timestamp.to_string()),
            ("X-Signature", signature),
        ]
    }

    /// Sends a signed request.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        extra: &[(&str, &str)],
    ) -> Result<ApiResponse, BoxError> {
        let bytes = body.map(serde_json::to_vec).transpose()?.unwrap_or_default();
        let ts = pushgate_shared::clock::now_ms() / 1000;
        let mut req = self
            .http
            .request(method.parse()?, format!("{}{path}", self.base_url))
            .body(bytes.clone());
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let key = extra
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("idempotency-key"))
            .map(|(_, v)| *v);
        for (k, v) in self.sign(method, path, &bytes, ts, key) {
            req = req.header(k, v);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok(ApiResponse { status, headers, body })
    }

    /// `POST /v1/messages`.
    pub async fn send(
        &self,
        message: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<ApiResponse, BoxError> {
        let extra: Vec<(&str, &str)> = idempotency_key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        self.request("POST", "/v1/messages", Some(message), &extra).await
    }

    /// `GET /v1/messages/{id}`.
    pub async fn status(&self, id: &str) -> Result<ApiResponse, BoxError> {
        self.request("GET", &format!("/v1/messages/{id}"), None, &[]).await
    }

    /// `DELETE /v1/messages/{id}`: cancels a message not yet being sent.
    pub async fn cancel(&self, id: &str) -> Result<ApiResponse, BoxError> {
        self.request("DELETE", &format!("/v1/messages/{id}"), None, &[]).await
    }
}

/// One call of the endpoints API (`pushgate endpoints …`), as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointsCall {
    /// `POST /v1/endpoints`. `events`/`include`: `None` leaves them out (all types; no
    /// recipient or content).
    Create {
        url: String,
        events: Option<Vec<String>>,
        include: Option<Vec<String>>,
        description: Option<String>,
    },
    /// `GET /v1/endpoints`.
    List,
    /// `GET /v1/endpoints/{id}`.
    Get(String),
    /// `PATCH /v1/endpoints/{id}`: only the fields given; an empty list means none
    /// (`events`: every type; `include`: nothing).
    Update {
        id: String,
        url: Option<String>,
        events: Option<Vec<String>>,
        include: Option<Vec<String>>,
        description: Option<String>,
        disabled: Option<bool>,
    },
    /// `DELETE /v1/endpoints/{id}`.
    Delete(String),
    /// `POST /v1/endpoints/{id}/rotate`.
    Rotate(String),
    /// `GET /v1/endpoints/{id}/attempts`.
    Attempts(String),
    /// `POST /v1/endpoints/{id}/replay?since=…` (RFC 3339).
    Replay { id: String, since: String },
}

/// An endpoint id as it may stand in a path (`ep_` and a ULID; checked loosely here,
/// exactly by the API): nothing that would change the path.
fn path_id(id: &str) -> Result<&str, BoxError> {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(id)
    } else {
        Err(format!("not an endpoint id: {id:?}").into())
    }
}

/// A list option: `[]` stands for "none"/"all" (sent as `null`).
fn list_or_null(list: &[String]) -> serde_json::Value {
    match list.is_empty() {
        true => serde_json::Value::Null,
        false => serde_json::json!(list),
    }
}

impl EndpointsCall {
    /// The method, path (with query) and JSON body of the call.
    pub fn request(&self) -> Result<(&'static str, String, Option<serde_json::Value>), BoxError> {
        use serde_json::{json, Map, Value};
        let base = "/v1/endpoints";
        Ok(match self {
            EndpointsCall::Create {
                url,
                events,
                include,
                description,
            } => {
                let mut body = Map::new();
                body.insert("url".into(), json!(url));
                if let Some(e) = events {
                    body.insert("events".into(), list_or_null(e));
                }
                if let Some(i) = include {
                    body.insert("include".into(), list_or_null(i));
                }
                if let Some(d) = description {
                    body.insert("description".into(), json!(d));
                }
                ("POST", base.to_string(), Some(Value::Object(body)))
            }
            EndpointsCall::List => ("GET", base.to_string(), None),
            EndpointsCall::Get(id) => ("GET", format!("{base}/{}", path_id(id)?), None),
            EndpointsCall::Update {
                id,
                url,
                events,
                include,
                description,
                disabled,
            } => {
                let mut body = Map::new();
                if let Some(u) = url {
                    body.insert("url".into(), json!(u));
                }
                if let Some(e) = events {
                    body.insert("events".into(), list_or_null(e));
                }
                if let Some(i) = include {
                    body.insert("include".into(), list_or_null(i));
                }
                if let Some(d) = description {
                    body.insert("description".into(), json!(d));
                }
                if let Some(d) = disabled {
                    body.insert("disabled".into(), json!(d));
                }
                ("PATCH", format!("{base}/{}", path_id(id)?), Some(Value::Object(body)))
            }
            EndpointsCall::Delete(id) => ("DELETE", format!("{base}/{}", path_id(id)?), None),
            EndpointsCall::Rotate(id) => ("POST", format!("{base}/{}/rotate", path_id(id)?), None),
            EndpointsCall::Attempts(id) => ("GET", format!("{base}/{}/attempts", path_id(id)?), None),
            EndpointsCall::Replay { id, since } => {
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("since", since)
                    .finish();
                ("POST", format!("{base}/{}/replay?{query}", path_id(id)?), None)
            }
        })
    }
}

impl ApiClient {
    /// One signed call of the endpoints API.
    pub async fn endpoints(&self, call: &EndpointsCall) -> Result<ApiResponse, BoxError> {
        let (method, path, body) = call.request()?;
        self.request(method, &path, body.as_ref(), &[]).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use serde_json::{json, Value};

    /// What the stand-in API saw: method, path and query, body, and whether the
    /// signature verified under the app's secret.
    type Seen = Arc<Mutex<Vec<(String, String, String, bool)>>>;

    async fn stand_in(secret: &'static str) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let state = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let state = state.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                let path = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                let get = |k: &str| parts.headers.get(k).and_then(|v| v.to_str().ok());
                let verified = pushgate_shared::auth::parse(get).is_ok_and(|creds| {
                    pushgate_shared::auth::verify(
                        &creds,
                        &[secret.to_string()],
                        pushgate_shared::clock::now_ms() / 1000,
                        300,
                        parts.method.as_str(),
                        &path,
                        &body,
                        None,
                    )
                    .is_ok()
                });
                state.lock().unwrap().push((
                    parts.method.to_string(),
                    path,
                    String::from_utf8_lossy(&body).into_owned(),
                    verified,
                ));
                axum::Json(json!({"ok": true}))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn every_endpoints_command_is_one_signed_call_of_its_route() {
        let (url, seen) = stand_in("s3cret").await;
        let client = ApiClient::new(&url, "app-one", "s3cret");
        let id = "ep_01HZZZZZZZZZZZZZZZZZZZZZZZ".to_string();
        let list = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let calls = [
            (
                EndpointsCall::Create {
                    url: "https://example.com/h".into(),
                    events: list(&["message.failed"]),
                    include: list(&["recipient"]),
                    description: Some("ops".into()),
                },
                "POST",
                "/v1/endpoints".to_string(),
                json!({"url": "https://example.com/h", "events": ["message.failed"], "include": ["recipient"], "description": "ops"}),
            ),
            (EndpointsCall::List, "GET", "/v1/endpoints".into(), Value::Null),
            (
                EndpointsCall::Get(id.clone()),
                "GET",
                format!("/v1/endpoints/{id}"),
                Value::Null,
            ),
            (
                EndpointsCall::Update {
                    id: id.clone(),
                    url: None,
                    events: list(&[]),
                    include: list(&[]),
                    description: None,
                    disabled: Some(false),
                },
                "PATCH",
                format!("/v1/endpoints/{id}"),
                json!({"events": null, "include": null, "disabled": false}),
            ),
            (
                EndpointsCall::Delete(id.clone()),
                "DELETE",
                format!("/v1/endpoints/{id}"),
                Value::Null,
            ),
            (
                EndpointsCall::Rotate(id.clone()),
                "POST",
                format!("/v1/endpoints/{id}/rotate"),
                Value::Null,
            ),
            (
                EndpointsCall::Attempts(id.clone()),
                "GET",
                format!("/v1/endpoints/{id}/attempts"),
                Value::Null,
            ),
            (
                EndpointsCall::Replay {
                    id: id.clone(),
                    since: "2026-01-01T08:00:00+08:00".into(),
                },
                "POST",
                format!("/v1/endpoints/{id}/replay?since=2026-01-01T08%3A00%3A00%2B08%3A00"),
                Value::Null,
            ),
        ];
        for (call, method, path, body) in &calls {
            let resp = client.endpoints(call).await.unwrap();
            assert_eq!(resp.status, 200);
            let (m, p, b, verified) = seen.lock().unwrap().pop().unwrap();
            assert_eq!((m.as_str(), p.as_str()), (*method, path.as_str()), "{call:?}");
            let sent: Value = if b.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&b).unwrap()
            };
            assert_eq!(&sent, body, "{call:?}");
            assert!(verified, "{call:?} is signed");
        }
        assert!(EndpointsCall::Get("../x".into()).request().is_err());
        assert!(EndpointsCall::Delete("a?b".into()).request().is_err());
    }
}
