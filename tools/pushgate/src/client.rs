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
