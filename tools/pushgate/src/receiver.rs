//! A local webhook receiver (the provider sandbox for the webhook channel). It checks
//! every request the way a Standard Webhooks consumer must: all three headers, a fresh
//! timestamp and a signature over the exact body bytes; it answers 401 otherwise.
//! `?status=NNN`, `?delay_ms=N` and `?fail_times=N` (503 for the first N requests to
//! that hook) on the target URL make it answer differently, so tests and demos can
//! provoke failures, timeouts and recoveries; a 3xx carries a `Location` to another hook.
//! It trusts the app's webhook secret and any secret added with [`Receiver::trust`] (the
//! dev stack's status-event endpoint), and names the status events it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

use crate::BoxError;

/// One request the receiver saw.
#[derive(Debug, Clone)]
pub struct Received {
    pub hook: String,
    pub webhook_id: String,
    pub verified: bool,
    /// What the receiver answered.
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Clone)]
struct AppState {
    secrets: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<Vec<Received>>>,
    verbose: bool,
}

/// A running receiver.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    secrets: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    /// Serves on `addr` (port 0 = any free one) until the runtime stops.
    pub async fn start(addr: SocketAddr, secret: &str, verbose: bool) -> Result<Receiver, BoxError> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let secrets = Arc::new(Mutex::new(vec![secret.to_string()]));
        let state = AppState {
            secrets: secrets.clone(),
            log: log.clone(),
            verbose,
        };
        let app = Router::new().route("/hooks/{hook}", post(hook)).with_state(state);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { addr, log, secrets })
    }

    /// Also accepts requests signed with `secret` (e.g. a status-event endpoint's).
    pub fn trust(&self, secret: &str) {
        if let Ok(mut s) = self.secrets.lock() {
            s.push(secret.to_string());
        }
    }

    /// URL of a hook on this receiver.
    pub fn url(&self, hook: &str) -> String {
        format!("http://{}/hooks/{hook}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

async fn hook(
    State(state): State<AppState>,
    Path(hook): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let verified = match (get("webhook-id"), get("webhook-timestamp"), get("webhook-signature")) {
        (Some(id), Some(ts), Some(sigs)) => ts.parse::<i64>().ok().is_some_and(|ts| {
            let fresh = (pushgate_shared::clock::now_ms() / 1000 - ts).abs() <= 300;
            let secrets = state.secrets.lock().map(|s| s.clone()).unwrap_or_default();
            let expected: Vec<String> = secrets
                .iter()
                .filter_map(|secret| pushgate_shared::providers::webhook::sign(secret, &id, ts, &body).ok())
                .collect();
            fresh && sigs.split(' ').any(|s| expected.iter().any(|e| e == s))
        }),
        _ => false,
    };
    // Requests to this hook so far (for `fail_times`), this one included.
    let seen = 1 + state
        .log
        .lock()
        .map(|l| l.iter().filter(|r| r.hook == hook && r.verified).count())
        .unwrap_or(0);
    let status = if !verified {
        StatusCode::UNAUTHORIZED
    } else if query
        .get("fail_times")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| seen <= n)
    {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        query
            .get("status")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::NO_CONTENT)
    };
    let entry = Received {
        hook: hook.clone(),
        webhook_id: get("webhook-id").unwrap_or_default(),
        verified,
        status: status.as_u16(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    };
    if state.verbose {
        let kind = entry.body["type"].as_str().filter(|t| *t != "message");
        let what = match kind {
            Some(t) => format!(
                "status event {t} ({})",
                entry.body["data"]["id"].as_str().unwrap_or("-")
            ),
            None => "webhook".to_string(),
        };
        println!(
            "receiver: {what} {} on /hooks/{hook}: signature {}, answered {}",
            entry.webhook_id,
            if verified { "verified" } else { "INVALID" },
            status.as_u16()
        );
    }
    if let Ok(mut log) = state.log.lock() {
        log.push(entry);
    }
    if verified {
        if let Some(ms) = query.get("delay_ms").and_then(|v| v.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    // A redirect points at another hook here, so a client that followed it would show.
    let mut response = axum::response::IntoResponse::into_response(status);
    if status.is_redirection() {
        if let Ok(location) = format!("/hooks/{hook}-redirected").parse() {
            response.headers_mut().insert(axum::http::header::LOCATION, location);
        }
    }
    response
}
