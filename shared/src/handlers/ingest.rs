//! Ingest: `POST /v1/messages` (signed, validated, one conditional put + one SQS send)
//! and `GET /v1/messages/{id}` (signed status read).

use std::sync::Arc;

use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{body_bytes, header, json};
use crate::apps::{AppConfig, Apps};
use crate::auth::{self, AuthError};
use crate::clock::{rfc3339, Clock};
use crate::config;
use crate::filter::FilterCache;
use crate::message::{Alternate, HistoryEntry, Job, Message, Status};
use crate::ports::Created;
use crate::problem::{FieldError, Problem};
use crate::queue::Queue;
use crate::request::{self, check_content, RequestBody};
use crate::store::Store;
use crate::templates::{TemplateError, TemplateStore};

/// Header carrying the client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a response that repeats an earlier one.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";
/// How long an idempotent request counts as still in flight (ingest's own time limit is
/// 10 s; past this, a record whose job was never confirmed is re-queued by the retry).
pub const IN_FLIGHT_MS: i64 = 30_000;
/// `Retry-After` when a metered app is out of balance: a top-up is an operator action,
/// so clients should not hammer; a minute keeps them responsive to one.
pub const QUOTA_RETRY_AFTER_SECS: u64 = 60;

/// Everything ingest needs; built once per cold start.
pub struct Ingest {
    pub store: Store,
    pub queue: Queue,
    pub apps: Arc<Apps>,
    pub templates: TemplateStore,
    pub cfg: config::Ingest,
    pub clock: Clock,
    /// Compiled sensitive-word filters, per app.
    pub filters: FilterCache,
}

impl Ingest {
    /// Routes and answers one HTTP API request. Every error is problem+json.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().as_str().to_string();
        let result = match (method.as_str(), path.trim_end_matches('/')) {
            ("POST", "/v1/messages") => self.send(&req).await,
            ("GET", p) if p.starts_with("/v1/messages/") && p.len() > "/v1/messages/".len() => {
                self.status(&req, &p["/v1/messages/".len()..]).await
            }
            (_, "/v1/messages") => Err(Problem::new(405, "method-not-allowed", "Method Not Allowed")),
            _ => Err(Problem::not_found("no such route")),
        };
        result.unwrap_or_else(Problem::into_response)
    }

    /// Authenticates a request: headers, app, timestamp window, signature.
    async fn authenticate(&self, req: &Request, body: &[u8]) -> Result<(auth::Credentials, AppConfig), Problem> {
        let creds = auth::parse(|name| header(req, name)).map_err(unauthorized)?;
        let app = self
            .apps
            .app(&creds.app_key)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "service secret unavailable");
                Problem::unavailable("configuration temporarily unavailable")
            })?
            .ok_or_else(|| unauthorized(AuthError::UnknownApp))?;
        let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        auth::verify(
            &creds,
            &app.secrets,
            (self.clock)() / 1000,
            self.cfg.clock_skew_secs,
            req.method().as_str(),
            path_and_query,
            body,
            header(req, IDEMPOTENCY_KEY),
        )
        .map_err(unauthorized)?;
        Ok((creds, app))
    }

    async fn send(&self, req: &Request) -> Result<Response<Body>, Problem> {
        let body = body_bytes(req);
        if body.len() > self.cfg.max_body_bytes {
            return Err(Problem::new(413, "too-large", "Content Too Large")
                .detail(format!("the body may be at most {} bytes", self.cfg.max_body_bytes)));
        }
        let (creds, app) = self.authenticate(req, body).await?;

        let content_type = header(req, "content-type").unwrap_or_default();
        if !content_type
            .split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        {
            return Err(Problem::new(415, "unsupported-media-type", "Unsupported Media Type")
                .detail("send the body as application/json"));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Problem::new(400, "malformed-json", "Bad Request").detail(format!("body is not valid JSON: {e}"))
        })?;
        let idem_key = match header(req, IDEMPOTENCY_KEY) {
            None => None,
            Some(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x21..0x7f).contains(&b)) => {
                Some(k.to_string())
            }
            Some(_) => {
                return Err(
                    Problem::new(400, "bad-idempotency-key", "Bad Request").errors(vec![FieldError::new(
                        "header:Idempotency-Key",
                        "must be 1-255 printable ASCII characters without spaces",
                    )]),
                )
            }
        };
        let request = request::validate(&value, self.cfg.webhook_allow_private).map_err(Problem::unprocessable)?;
        // The primary channel, then each fallback channel, rendered now: a message that
        // cannot be rendered for a channel it may fall back to is refused, not half-sent.
        let mut legs = vec![(request.channel, request.to.clone(), "/template".to_string())];
        legs.extend(
            request
                .fallback
                .iter()
                .enumerate()
                .map(|(i, (c, to))| (*c, to.clone(), format!("/fallback/{i}/channel"))),
        );
        let mut rendered = Vec::with_capacity(legs.len());
        let mut errors = Vec::new();
        for (channel, to, at) in legs {
            let content = match &request.body {
                RequestBody::Inline(c) => {
                    let content = (**c).clone();
                    if channel != request.channel {
                        errors.extend(check_content(channel, &content, &at));
                    }
                    content
                }
                RequestBody::Template { id, data } => {
                    let templates = self.templates.current().await.map_err(template_problem)?;
                    let content = templates.render(id, channel, data).map_err(|e| match e {
                        // A fallback the template cannot serve is that fallback's fault.
                        TemplateError::NoVariant(id, channel) if channel != request.channel.as_str() => {
                            Problem::unprocessable(vec![FieldError::new(
                                at.as_str(),
                                format!("template '{id}' has no {channel} variant"),
                            )])
                        }
                        e => template_problem(e),
                    })?;
                    errors.extend(check_content(channel, &content, &at));
                    content
                }
            };
            rendered.push(Alternate { channel, to, content });
        }
        if !errors.is_empty() {
            return Err(Problem::unprocessable(errors));
        }
        if let Some(words) = &app.sensitive_words {
            let filter = self.filters.get(&app.key, words).map_err(|e| {
                tracing::error!(app = %app.key, error = %e, "sensitive-word filter invalid");
                Problem::new(500, "filter-invalid", "Internal Server Error")
            })?;
            for leg in &mut rendered {
                filter
                    .apply(&mut leg.content, "/content")
                    .map_err(Problem::unprocessable)?;
            }
        }
        let template = match &request.body {
            RequestBody::Template { id, .. } => Some(id.clone()),
            RequestBody::Inline(_) => None,
        };
        let key = request.key.clone().or_else(|| template.clone());
        let mut legs = rendered.into_iter();
        let content = legs.next().map(|l| l.content).unwrap_or_default();
        let alternates: Vec<Alternate> = legs.collect();

        let now = (self.clock)();
        if let Some(limit) = app.limits.per_minute {
            if let Some(retry_after) = self
                .store
                .hit_rate_limit(&app.key, limit, now)
                .await
                .map_err(unavailable)?
            {
                return Err(Problem::new(429, "rate-limited", "Too Many Requests")
                    .detail(format!("app {} may send {limit} messages per minute", app.key))
                    .retry_after(retry_after));
            }
        }
        if app.limits.balance {
            let available = self.store.balance(&app.key).await.map_err(unavailable)?;
            if available.unwrap_or(0) <= 0 {
                return Err(Problem::new(429, "quota-exhausted", "Too Many Requests")
                    .detail(format!("app {} has no balance left; top it up to send", app.key))
                    .retry_after(QUOTA_RETRY_AFTER_SECS));
            }
        }
        let signature = creds.signature_hex();
        let pk = match &idem_key {
            Some(k) => format!("{}_i_{}", app.key, hex::encode(Sha256::digest(k.as_bytes()))),
            None => format!("{}_s_{signature}", app.key),
        };
        let message = Message {
            pk: pk.clone(),
            id: ulid::Ulid::new().to_string(),
            app: app.key.clone(),
            channel: request.channel,
            to: request.to,
            template,
            content,
            status: Status::Accepted,
            status_rank: Status::Accepted.rank(),
            attempts: 0,
            created_at: now,
            updated_at: now,
            expires_at: now / 1000 + self.cfg.retention_days * 86_400,
            body_hash: hex::encode(Sha256::digest(body)),
            signature: signature.clone(),
            ingest_pending: idem_key.as_ref().map(|_| true),
            lease_until: None,
            lease_owner: None,
            provider: None,
            provider_message_id: None,
            reason: None,
            charged: None,
            key,
            alternates,
            tried: Vec::new(),
            spent: Vec::new(),
            rate_slot: None,
            via: None,
            history: vec![HistoryEntry {
                at: now,
                status: Status::Accepted,
                note: None,
            }],
        };

        match self.store.create(&message, now).await.map_err(unavailable)? {
            Created::Created => {
                let job = Job {
                    pk: pk.clone(),
                    id: message.id.clone(),
                };
                if let Err(e) = self.queue.send(&job).await {
                    tracing::error!(error = %e, app = %app.key, id = %message.id, "enqueue failed; rolling back");
                    if let Err(e) = self.store.delete(&pk, &message.id).await {
                        tracing::error!(error = %e, id = %message.id, "rollback failed");
                    }
                    return Err(Problem::unavailable("could not queue the message; retry"));
                }
                if idem_key.is_some() {
                    // Closes the in-flight window; the dispatcher's claim clears it too.
                    if let Err(e) = self.store.mark_enqueued(&pk).await {
                        tracing::warn!(error = %e, id = %message.id, "could not clear ingest_pending");
                    }
                }
                tracing::info!(app = %app.key, id = %message.id, channel = message.channel.as_str(), "accepted");
                Ok(accepted(&message.id, false))
            }
            Created::Exists(old) => {
                if old.signature == signature {
                    return Err(unauthorized(AuthError::Replayed));
                }
                if idem_key.is_none() {
                    // The key derives from the signature, so this cannot differ; refuse.
                    return Err(unauthorized(AuthError::Replayed));
                }
                if old.body_hash != message.body_hash {
                    return Err(Problem::new(422, "idempotency-key-reused", "Unprocessable Content")
                        .detail("this Idempotency-Key was used with a different body")
                        .errors(vec![FieldError::new(
                            "header:Idempotency-Key",
                            "already used with a different body",
                        )]));
                }
                if old.ingest_pending == Some(true) {
                    if now - old.created_at < IN_FLIGHT_MS {
                        return Err(Problem::new(409, "in-progress", "Conflict")
                            .detail("a request with this Idempotency-Key is still being processed")
                            .retry_after(1));
                    }
                    // The first ingest died between its write and its SQS send: queue it
                    // now. A duplicate job is harmless, the dispatcher's claim sends once.
                    self.queue
                        .send(&Job {
                            pk: old.pk.clone(),
                            id: old.id.clone(),
                        })
                        .await
                        .map_err(|e| {
                            tracing::error!(error = %e, id = %old.id, "re-enqueue failed");
                            Problem::unavailable("could not queue the message; retry")
                        })?;
                    let _ = self.store.mark_enqueued(&old.pk).await;
                }
                tracing::info!(app = %app.key, id = %old.id, "idempotent replay");
                Ok(accepted(&old.id, true))
            }
        }
    }

    async fn status(&self, req: &Request, id: &str) -> Result<Response<Body>, Problem> {
        let (_, app) = self.authenticate(req, body_bytes(req)).await?;
        let message = self
            .store
            .get_by_id(id, (self.clock)())
            .await
            .map_err(unavailable)?
            // Another app's message is indistinguishable from a missing one.
            .filter(|m| m.app == app.key)
            .ok_or_else(|| Problem::not_found("no such message"))?;
        Ok(json(200, &status_view(&message)))
    }
}

/// The public view of a message (no content, no recipient).
pub fn status_view(m: &Message) -> Value {
    const HISTORY: usize = 20;
    let history: Vec<Value> = m
        .history
        .iter()
        .rev()
        .take(HISTORY)
        .rev()
        .map(|h| json!({"at": rfc3339(h.at), "status": h.status, "note": h.note}))
        .collect();
    json!({
        "id": m.id,
        "status": m.status,
        "channel": m.channel,
        "template": m.template,
        "provider": m.provider,
        "provider_message_id": m.provider_message_id,
        "reason": m.reason,
        "attempts": m.attempts,
        "created_at": rfc3339(m.created_at),
        "updated_at": rfc3339(m.updated_at),
        "history": history,
    })
}

fn accepted(id: &str, replayed: bool) -> Response<Body> {
    let mut builder = Response::builder()
        .status(202)
        .header("content-type", "application/json")
        .header("location", format!("/v1/messages/{id}"));
    if replayed {
        builder = builder.header(IDEMPOTENT_REPLAYED, "true");
    }
    builder
        .body(Body::Text(json!({"id": id, "status": "accepted"}).to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

fn unauthorized(e: AuthError) -> Problem {
    tracing::info!(reason = %e, "unauthenticated request refused");
    Problem::unauthorized(e.public_detail())
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "storage unavailable");
    Problem::unavailable("storage temporarily unavailable; retry")
}

fn template_problem(e: TemplateError) -> Problem {
    match e {
        TemplateError::UnknownTemplate(id) => Problem::new(422, "unknown-template", "Unprocessable Content")
            .detail(format!("unknown template '{id}'"))
            .errors(vec![FieldError::new("/template", format!("unknown template '{id}'"))]),
        TemplateError::NoVariant(id, channel) => Problem::unprocessable(vec![FieldError::new(
            "/template",
            format!("template '{id}' has no {channel} variant"),
        )]),
        TemplateError::Data(errors) => Problem::unprocessable(errors),
        TemplateError::Invalid(why) => {
            tracing::error!(%why, "template set invalid");
            Problem::new(500, "template-invalid", "Internal Server Error")
        }
        TemplateError::Unavailable(why) => {
            tracing::error!(%why, "templates unavailable");
            Problem::unavailable("templates temporarily unavailable; retry")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::offline;

    fn ingest() -> Ingest {
        Ingest {
            store: offline::store(),
            queue: offline::queue(),
            apps: offline::apps(),
            templates: TemplateStore::bundled(),
            cfg: config::Ingest {
                queue_url: String::new(),
                clock_skew_secs: 300,
                max_body_bytes: 1024,
                retention_days: 7,
                webhook_allow_private: false,
                templates_table: None,
                templates_ttl: std::time::Duration::from_secs(60),
            },
            clock: crate::clock::fixed(1_700_000_000_000),
            filters: Default::default(),
        }
    }

    fn request(body: &[u8], content_type: &str, secret: &str) -> Request {
        let sig = auth::sign(secret, 1_700_000_000, "POST", "/v1/messages", body);
        http::Request::builder()
            .method("POST")
            .uri("/v1/messages")
            .header("x-app-key", "app")
            .header("x-timestamp", "1700000000")
            .header("x-signature", sig)
            .header("content-type", content_type)
            .body(Body::Binary(body.to_vec()))
            .unwrap()
    }

    async fn answer(req: Request) -> (u16, Value) {
        let resp = ingest().handle(req).await;
        let status = resp.status().as_u16();
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body = match resp.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap(),
            _ => Value::Null,
        };
        (status, body)
    }

    #[tokio::test]
    async fn refusals_happen_before_any_aws_call() {
        let good = br#"{"channel":"email","to":"a@example.com","content":{"subject":"s","text":"t"}}"#;
        assert_eq!(answer(request(good, "application/json", "forged")).await.0, 401);
        assert_eq!(answer(request(good, "text/plain", offline::SECRET)).await.0, 415);
        assert_eq!(answer(request(b"{", "application/json", offline::SECRET)).await.0, 400);
        assert_eq!(
            answer(request(&[b' '; 2000], "application/json", offline::SECRET))
                .await
                .0,
            413
        );
        let (status, problem) = answer(request(
            br#"{"channel":"sms","to":"123","template":"verification_code","data":{}}"#,
            "application/json",
            offline::SECRET,
        ))
        .await;
        assert_eq!(status, 422);
        assert_eq!(problem["errors"][0]["pointer"], "/to");
        let (status, problem) = answer(request(
            br#"{"channel":"email","to":"a@example.com","template":"welcome","data":{"name":"x"}}"#,
            "application/json",
            offline::SECRET,
        ))
        .await;
        assert_eq!(
            (status, problem["errors"][0]["pointer"].as_str()),
            (422, Some("/data/product"))
        );
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_503() {
        let body = br#"{"channel":"email","to":"a@example.com","content":{"subject":"s","text":"t"}}"#;
        let (status, problem) = answer(request(body, "application/json", offline::SECRET)).await;
        assert_eq!(status, 503, "{problem}");
    }
}
