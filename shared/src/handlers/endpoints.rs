//! The endpoints API (`/v1/endpoints…`): an app manages where its status events go.
//! Served by the ingest function behind the same request signing as `POST /v1/messages`;
//! this module starts after authentication, with the app it proved.
//!
//! Every call is scoped to that app's partition of the endpoints table, so another
//! app's endpoint id is a 404, exactly like an id that never existed.

use lambda_http::{Body, Response};
use serde_json::{json, Map, Value};

use super::json;
use crate::clock::Clock;
use crate::events::{self, Endpoint, Secret, MAX_ENDPOINTS, ROTATION_OVERLAP_MS};
use crate::net::check_webhook_url;
use crate::problem::{FieldError, Problem};
use crate::queue::Queue;
use crate::store::endpoints::{EndpointPatch, EndpointStore};

/// How many attempts `GET /v1/endpoints/{id}/attempts` returns (newest first).
pub const ATTEMPTS_PAGE: i32 = 50;
/// Most events one replay call queues; the answer's `next_since` continues from there.
pub const REPLAY_LIMIT: usize = 1000;
const MAX_DESCRIPTION: usize = 255;

/// The endpoints API over its store.
pub struct EndpointsApi {
    pub store: EndpointStore,
    /// The delivery queue, for replays.
    pub delivery: Queue,
    pub clock: Clock,
    /// `PUSHGATE_WEBHOOK_ALLOW_PRIVATE`: endpoints pass the webhook channel's SSRF rules.
    pub allow_private: bool,
}

/// One authenticated request to the endpoints API.
pub struct Call<'a> {
    pub app: &'a str,
    pub method: &'a str,
    /// The path after `/v1/endpoints`, without a trailing slash (`""`, `/{id}`, `/{id}/rotate`).
    pub rest: &'a str,
    pub body: &'a [u8],
    pub content_type: Option<&'a str>,
    pub query: Option<&'a str>,
}

impl EndpointsApi {
    /// Answers one call; every error is problem+json.
    pub async fn handle(&self, call: Call<'_>) -> Result<Response<Body>, Problem> {
        let parts: Vec<&str> = call.rest.trim_start_matches('/').split('/').collect();
        match (call.method, parts.as_slice()) {
            ("POST", [""]) => self.create(&call).await,
            ("GET", [""]) => self.list(call.app).await,
            (_, [""]) => Err(not_allowed()),
            (method, [id]) => {
                let id = endpoint_id(id)?;
                match method {
                    "GET" => self.get(call.app, id).await,
                    "PATCH" => self.patch(&call, id).await,
                    "DELETE" => self.delete(call.app, id).await,
                    _ => Err(not_allowed()),
                }
            }
            ("POST", [id, "rotate"]) => self.rotate(call.app, endpoint_id(id)?).await,
            ("GET", [id, "attempts"]) => self.attempts(call.app, endpoint_id(id)?).await,
            ("POST", [id, "replay"]) => self.replay(call.app, endpoint_id(id)?, call.query).await,
            (_, [_, "rotate" | "attempts" | "replay"]) => Err(not_allowed()),
            _ => Err(Problem::not_found("no such route")),
        }
    }

    async fn create(&self, call: &Call<'_>) -> Result<Response<Body>, Problem> {
        let body = json_object(call)?;
        let patch = parse_fields(&body, true, self.allow_private)?;
        let now = (self.clock)();
        let secret = events::new_secret().map_err(|e| {
            tracing::error!(error = %e, "no randomness for a secret");
            Problem::unavailable("could not create a secret; retry")
        })?;
        let endpoint = Endpoint {
            id: format!("ep_{}", ulid::Ulid::new()),
            app: call.app.to_string(),
            url: patch.url.unwrap_or_default(),
            events: patch.events.unwrap_or_default(),
            include: patch.include.unwrap_or_default(),
            description: patch.description.flatten(),
            secrets: vec![Secret {
                secret: secret.clone(),
                until: None,
            }],
            disabled: false,
            disabled_reason: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        if !self.store.create(&endpoint, MAX_ENDPOINTS).await.map_err(unavailable)? {
            return Err(Problem::new(409, "too-many-endpoints", "Conflict").detail(format!(
                "an app may have at most {MAX_ENDPOINTS} endpoints; delete one first"
            )));
        }
        tracing::info!(app = call.app, endpoint = %endpoint.id, "endpoint created");
        let mut view = endpoint.view();
        view["secret"] = json!(secret);
        Ok(created(&view, &endpoint.id))
    }

    async fn list(&self, app: &str) -> Result<Response<Body>, Problem> {
        let endpoints = self.store.list(app).await.map_err(unavailable)?;
        let data: Vec<Value> = endpoints.iter().map(Endpoint::view).collect();
        Ok(json(200, &json!({ "data": data })))
    }

    async fn get(&self, app: &str, id: &str) -> Result<Response<Body>, Problem> {
        let endpoint = self
            .store
            .get(app, id)
            .await
            .map_err(unavailable)?
            .ok_or_else(missing)?;
        Ok(json(200, &endpoint.view()))
    }

    async fn patch(&self, call: &Call<'_>, id: &str) -> Result<Response<Body>, Problem> {
        let body = json_object(call)?;
        let patch = parse_fields(&body, false, self.allow_private)?;
        let endpoint = self
            .store
            .update(call.app, id, &patch, (self.clock)())
            .await
            .map_err(unavailable)?
            .ok_or_else(missing)?;
        Ok(json(200, &endpoint.view()))
    }

    async fn delete(&self, app: &str, id: &str) -> Result<Response<Body>, Problem> {
        if !self.store.delete(app, id).await.map_err(unavailable)? {
            return Err(missing());
        }
        Ok(Response::builder()
            .status(204)
            .body(Body::Empty)
            .unwrap_or_else(|_| Response::new(Body::Empty)))
    }

    /// A new current secret; the previous one keeps signing for 24 h, older ones stop.
    async fn rotate(&self, app: &str, id: &str) -> Result<Response<Body>, Problem> {
        let endpoint = self
            .store
            .get(app, id)
            .await
            .map_err(unavailable)?
            .ok_or_else(missing)?;
        let now = (self.clock)();
        let secret = events::new_secret().map_err(|_| Problem::unavailable("could not create a secret; retry"))?;
        let mut secrets = vec![Secret {
            secret: secret.clone(),
            until: None,
        }];
        secrets.extend(
            endpoint
                .secrets
                .iter()
                .filter(|s| s.until.is_none_or(|u| u > now))
                .map(|s| Secret {
                    secret: s.secret.clone(),
                    until: Some(
                        s.until
                            .unwrap_or(now + ROTATION_OVERLAP_MS)
                            .min(now + ROTATION_OVERLAP_MS),
                    ),
                }),
        );
        let applied = self
            .store
            .set_secrets(app, id, &secrets, endpoint.updated_at, now)
            .await
            .map_err(unavailable)?;
        if !applied {
            return Err(Problem::new(409, "concurrent-change", "Conflict")
                .detail("the endpoint changed meanwhile; retry")
                .retry_after(1));
        }
        tracing::info!(app, endpoint = id, "endpoint secret rotated");
        Ok(json(
            200,
            &json!({"id": id, "secret": secret, "previous_valid_until": crate::clock::rfc3339(now + ROTATION_OVERLAP_MS)}),
        ))
    }

    async fn attempts(&self, app: &str, id: &str) -> Result<Response<Body>, Problem> {
        self.store
            .get(app, id)
            .await
            .map_err(unavailable)?
            .ok_or_else(missing)?;
        let attempts = self.store.attempts(app, id, ATTEMPTS_PAGE).await.map_err(unavailable)?;
        let data: Vec<Value> = attempts.iter().map(events::Attempt::view).collect();
        Ok(json(200, &json!({ "data": data })))
    }
}

impl EndpointsApi {
    /// Queues the app's kept events since `?since=` (RFC 3339) again for this endpoint,
    /// those it subscribes to, oldest first, at most [`REPLAY_LIMIT`] per call. They keep
    /// their event ids (`webhook-id`); a disabled endpoint gets them once re-enabled.
    async fn replay(&self, app: &str, id: &str, query: Option<&str>) -> Result<Response<Body>, Problem> {
        let since = since_param(query)?;
        let endpoint = self
            .store
            .get(app, id)
            .await
            .map_err(unavailable)?
            .ok_or_else(missing)?;
        let events = self
            .store
            .events_since(app, since, REPLAY_LIMIT)
            .await
            .map_err(unavailable)?;
        let now = (self.clock)();
        // Wanted regardless of `disabled`: the jobs wait on the queue, and are dropped by
        // the deliver function if the endpoint is still disabled when they come.
        let mut subscribed = endpoint.clone();
        subscribed.disabled = false;
        let jobs: Vec<_> = events
            .iter()
            .flat_map(|ev| super::events::jobs_for(ev, std::slice::from_ref(&subscribed), Some(now), None))
            .collect();
        self.delivery.send_fifo(&jobs).await.map_err(unavailable)?;
        tracing::info!(app, endpoint = id, events = jobs.len(), "events replayed");
        let mut answer = json!({"queued": jobs.len(), "since": crate::clock::rfc3339(since)});
        if events.len() >= REPLAY_LIMIT {
            if let Some(last) = events.last() {
                answer["next_since"] = json!(crate::clock::rfc3339(last.at + 1));
            }
        }
        Ok(json(202, &answer))
    }
}

/// `?since=<RFC 3339>` as Unix ms; a 422 naming `query:since` otherwise.
fn since_param(query: Option<&str>) -> Result<i64, Problem> {
    let raw = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "since")
        .map(|(_, v)| v.into_owned());
    let bad = |why: &str| Problem::unprocessable(vec![FieldError::new("query:since", why)]);
    let raw = raw.ok_or_else(|| bad("is required: an RFC 3339 time, e.g. 2026-01-01T00:00:00Z"))?;
    time::OffsetDateTime::parse(&raw, &time::format_description::well_known::Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        .map_err(|_| bad("must be an RFC 3339 time, e.g. 2026-01-01T00:00:00Z"))
}

/// The endpoint id from the path: `ep_` and a ULID, else a 404 before any call.
fn endpoint_id(raw: &str) -> Result<&str, Problem> {
    raw.strip_prefix("ep_")
        .filter(|u| u.len() == 26 && ulid::Ulid::from_string(u).is_ok())
        .map(|_| raw)
        .ok_or_else(|| {
            Problem::not_found("no such endpoint").errors(vec![FieldError::new(
                "path:id",
                "not an endpoint id (ep_ and a 26-character ULID)",
            )])
        })
}

/// The body as a JSON object (415 if not JSON, 400 if malformed, 422 if not an object).
fn json_object(call: &Call<'_>) -> Result<Map<String, Value>, Problem> {
    let is_json = call
        .content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Problem::new(415, "unsupported-media-type", "Unsupported Media Type")
            .detail("send the body as application/json"));
    }
    let value: Value = serde_json::from_slice(call.body).map_err(|e| {
        Problem::new(400, "malformed-json", "Bad Request").detail(format!("body is not valid JSON: {e}"))
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Problem::unprocessable(vec![FieldError::new(
            "",
            "must be a JSON object",
        )])),
    }
}

/// The fields of a create (`url` required) or a PATCH, every problem named.
fn parse_fields(body: &Map<String, Value>, create: bool, allow_private: bool) -> Result<EndpointPatch, Problem> {
    let mut errors = Vec::new();
    let mut patch = EndpointPatch::default();
    for (name, value) in body {
        match name.as_str() {
            "url" => match value.as_str().map(|u| check_webhook_url(u, allow_private)) {
                Some(Ok(_)) => patch.url = value.as_str().map(str::to_string),
                Some(Err(why)) => errors.push(FieldError::new("/url", why)),
                None => errors.push(FieldError::new("/url", "must be a string")),
            },
            // `null` (like omitting it at creation) subscribes to every type.
            "events" if value.is_null() => patch.events = Some(Vec::new()),
            "events" => match events::check_events(value) {
                Ok(list) => patch.events = Some(list),
                Err(why) => errors.push(FieldError::new("/events", why)),
            },
            // `null` (like omitting it at creation) includes nothing.
            "include" if value.is_null() => patch.include = Some(Vec::new()),
            "include" => match events::check_include(value) {
                Ok(list) => patch.include = Some(list),
                Err(why) => errors.push(FieldError::new("/include", why)),
            },
            "description" => match value {
                Value::Null => patch.description = Some(None),
                Value::String(d) if d.chars().count() <= MAX_DESCRIPTION => patch.description = Some(Some(d.clone())),
                _ => errors.push(FieldError::new(
                    "/description",
                    format!("must be a string of at most {MAX_DESCRIPTION} characters"),
                )),
            },
            "disabled" if !create => match value.as_bool() {
                Some(d) => patch.disabled = Some(d),
                None => errors.push(FieldError::new("/disabled", "must be true or false")),
            },
            other => errors.push(FieldError::new(format!("/{other}"), "unknown field")),
        }
    }
    if create && !body.contains_key("url") {
        errors.push(FieldError::new("/url", "is required"));
    }
    if errors.is_empty() {
        Ok(patch)
    } else {
        Err(Problem::unprocessable(errors))
    }
}

fn created(view: &Value, id: &str) -> Response<Body> {
    let mut resp = json(201, view);
    if let Ok(v) = http::HeaderValue::from_str(&format!("/v1/endpoints/{id}")) {
        resp.headers_mut().insert("location", v);
    }
    resp
}

fn missing() -> Problem {
    Problem::not_found("no such endpoint")
}

fn not_allowed() -> Problem {
    Problem::new(405, "method-not-allowed", "Method Not Allowed")
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "endpoints storage unavailable");
    Problem::unavailable("storage temporarily unavailable; retry")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_and_named() {
        let body = |v: Value| v.as_object().cloned().unwrap();
        let ok = parse_fields(
            &body(json!({"url": "https://example.com/h", "events": ["message.delivered"]})),
            true,
            false,
        )
        .unwrap();
        assert_eq!(ok.events.unwrap(), ["message.delivered"]);
        let bad = parse_fields(
            &body(json!({"url": "http://169.254.169.254/", "events": "all", "x": 1})),
            true,
            false,
        )
        .unwrap_err();
        let pointers: Vec<&str> = bad.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(bad.status, 422);
        assert!(pointers.contains(&"/url") && pointers.contains(&"/events") && pointers.contains(&"/x"));
        let missing = parse_fields(&body(json!({})), true, false).unwrap_err();
        assert_eq!(missing.errors[0].pointer, "/url");
        assert!(endpoint_id("ep_01HZZZZZZZZZZZZZZZZZZZZZZZ").is_ok());
        assert_eq!(
            since_param(Some("since=2026-01-01T00:00:00Z")).unwrap(),
            1_767_225_600_000
        );
        assert_eq!(
            since_param(Some("since=2026-01-01T08:00:00%2B08:00")).unwrap(),
            1_767_225_600_000
        );
        assert_eq!(
            since_param(Some("since=yesterday")).unwrap_err().errors[0].pointer,
            "query:since"
        );
        assert_eq!(since_param(None).unwrap_err().status, 422);
        assert_eq!(endpoint_id("../x").unwrap_err().status, 404);
    }
}
