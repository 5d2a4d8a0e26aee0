//! Ingest: `POST /v1/messages` (signed, validated, one conditional put + one SQS send)
//! and `GET /v1/messages/{id}` (signed status read).
//!
//! Replay rules: a signature is accepted once. The record key is the replay guard:
//! `{app}_s_{signature}` without an `Idempotency-Key`, `{app}_i_{sha256(key)}` with one.
//! A v2 signature covers the key, so a replay under the same key is an idempotent retry
//! (the first answer again) and any other key fails the signature. A v1 signature does
//! not cover it, so a v1 request with a key first writes `{app}_s_{signature}` as a
//! separate guard (one more conditional PutItem) holding the key's hash: the same key
//! again is an idempotent retry, another key (or none) is a replay.

use std::sync::Arc;

use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{body_bytes, header, json};
use crate::apps::{AppConfig, Apps};
use crate::auth::{self, AuthError, SignatureVersion};
use crate::clock::{rfc3339, Clock};
use crate::config;
use crate::filter::FilterCache;
use crate::message::{Alternate, FirstRecord, Job, Message, Status};
use crate::ports::{Created, SignatureGuard};
use crate::problem::{FieldError, Problem};
use crate::queue::Queue;
use crate::request::{self, check_content, RequestBody};
use crate::schedule::{SchedulePolicy, When};
use crate::scheduler::Scheduler;
use crate::store::{Store, StoreError, Unstorable};
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
    /// One-time schedules for `send_at` beyond SQS's 15-minute delay (none: refused).
    pub scheduler: Option<Scheduler>,
    /// The endpoints API (`/v1/endpoints…`), served behind the same signing; `None`
    /// where no endpoints table is configured (those routes are then 404s).
    pub endpoints: Option<super::endpoints::EndpointsApi>,
}

impl Ingest {
    /// Answers one API Gateway event: refuses what cannot be a request (an odd path or
    /// query, a bad base64 body) with a 400 before anything else, then [`Self::handle`].
    pub async fn handle_event(
        &self,
        event: aws_lambda_events::event::apigw::ApiGatewayV2httpRequest,
    ) -> aws_lambda_events::event::apigw::ApiGatewayV2httpResponse {
        super::edge::serve(event, |req| self.handle(req)).await
    }

    /// Routes and answers one HTTP API request. Every error is problem+json.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().as_str().to_string();
        // Before authentication: an odd path or query is refused, whatever signs it.
        let target = super::edge::check_target("path", &path).and_then(|_| {
            req.uri()
                .query()
                .map_or(Ok(()), |q| super::edge::check_target("query", q))
        });
        if let Err(e) = target {
            return Problem::from(e).into_response();
        }
        let route = path.trim_end_matches('/');
        if let Some(rest) = route.strip_prefix("/v1/schedules") {
            if rest.is_empty() || rest.starts_with('/') {
                return self.schedules(&req, rest).await.unwrap_or_else(Problem::into_response);
            }
        }
        if let Some(rest) = route.strip_prefix("/v1/endpoints") {
            if rest.is_empty() || rest.starts_with('/') {
                return self.endpoints(&req, rest).await.unwrap_or_else(Problem::into_response);
            }
        }
        let id = route.strip_prefix("/v1/messages/").filter(|id| !id.is_empty());
        let batch = route.strip_prefix("/v1/batches/").filter(|id| !id.is_empty());
        let result = match (method.as_str(), route, id, batch) {
            ("POST", "/v1/messages", ..) => self.send(&req).await,
            ("POST", "/v1/messages/batch", ..) => self.batch(&req).await,
            ("GET", _, _, Some(batch)) => self.batch_status(&req, batch).await,
            ("GET", _, Some(id), _) => self.status(&req, id).await,
            ("DELETE", _, Some(id), _) => self.cancel(&req, id).await,
            (_, "/v1/messages" | "/v1/messages/batch", ..) => {
                Err(Problem::new(405, "method-not-allowed", "Method Not Allowed"))
            }
            _ => Err(Problem::not_found("no such route")),
        };
        result.unwrap_or_else(Problem::into_response)
    }

    /// Authenticates a request: headers, app, timestamp window, signature (a v2
    /// signature covers `idempotency_key`). An unknown app key is checked against a
    /// stand-in secret, so its answer (and the work behind it) is the same as a bad
    /// signature's: a 401 never tells which app keys exist.
    /// A write's body (at most `max` bytes, `what` naming it in the 413), its
    /// `Idempotency-Key` (read before authentication: a v2 signature covers it) and the
    /// app that signed it.
    pub(super) async fn signed_write<'r>(
        &self,
        req: &'r Request,
        max: usize,
        what: &str,
    ) -> Result<(&'r [u8], Option<String>, auth::Credentials, AppConfig), Problem> {
        let body = body_bytes(req);
        if body.len() > max {
            return Err(Problem::new(413, "too-large", "Content Too Large")
                .detail(format!("{what} may be at most {max} bytes")));
        }
        let idem_key = idempotency_key(req)?;
        let (creds, app) = self.authenticate(req, body, idem_key.as_deref()).await?;
        Ok((body, idem_key, creds, app))
    }

    pub(super) async fn authenticate(
        &self,
        req: &Request,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<(auth::Credentials, AppConfig), Problem> {
        let creds = auth::parse(|name| header(req, name)).map_err(|e| unauthorized(e, None))?;
        let app = self.apps.app(&creds.app_key).await.map_err(|e| {
            tracing::error!(error = %e, "service secret unavailable");
            Problem::unavailable("configuration temporarily unavailable")
        })?;
        let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let verify = |secrets: &[String]| {
            auth::verify(
                &creds,
                secrets,
                (self.clock)() / 1000,
                self.cfg.clock_skew_secs,
                req.method().as_str(),
                path_and_query,
                body,
                idempotency_key,
            )
        };
        let Some(app) = app else {
            let why = match verify(&[UNKNOWN_APP_SECRET.to_string()]) {
                Err(AuthError::Expired) => AuthError::Expired,
                _ => AuthError::UnknownApp,
            };
            return Err(unauthorized(why, Some(&creds.app_key)));
        };
        verify(&app.secrets).map_err(|e| unauthorized(e, Some(&app.key)))?;
        Ok((creds, app))
    }

    async fn send(&self, req: &Request) -> Result<Response<Body>, Problem> {
        let (body, idem_key, creds, app) = self.signed_write(req, self.cfg.max_body_bytes, "the body").await?;

        // `Content-Type` is not signed, so it decides nothing: were a wrong one refused
        // after authentication, a captured request a client saw refused could be replayed
        // with the right one and sent. The signed body is read as JSON whatever it says.
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Problem::new(400, "malformed-json", "Bad Request").detail(format!("body is not valid JSON: {e}"))
        })?;
        let request = request::validate(&value, self.cfg.webhook_allow_private).map_err(Problem::unprocessable)?;
        let Rendered {
            template,
            key,
            content,
            alternates,
        } = self.render(&request, &app).await?;

        let now = (self.clock)();
        let body_hash = hex::encode(Sha256::digest(body));
        let keyed_pk = idem_key
            .as_ref()
            .map(|k| format!("{}_i_{}", app.key, hex::encode(Sha256::digest(k.as_bytes()))));
        let when = match self.when(request.send_at, now) {
            Ok(when) => when,
            Err(refusal) => return self.unless_replay(keyed_pk.as_deref(), &body_hash, now, refusal).await,
        };
        if app.limits.balance {
            let available = self.store.balance(&app.key).await.map_err(unavailable)?;
            if available.unwrap_or(0) <= 0 {
                let refusal = Problem::new(429, "quota-exhausted", "Too Many Requests")
                    .detail(format!("app {} has no balance left; top it up to send", app.key))
                    .retry_after(QUOTA_RETRY_AFTER_SECS);
                return self.unless_replay(keyed_pk.as_deref(), &body_hash, now, refusal).await;
            }
        }
        let pointer = if template.is_some() { "/data" } else { "/content" };
        let signature = creds.signature_hex();
        // A signature's guard must outlive the window in which it verifies.
        let guard_expires = (now.max(creds.timestamp.saturating_mul(1000)) / 1000)
            .saturating_add(self.cfg.clock_skew_secs)
            .saturating_add(60);
        if let (Some(k), SignatureVersion::V1) = (&idem_key, creds.version) {
            // v1 does not sign the key: without this guard, a captured request re-sent
            // under a new key would be a new message.
            let key_hash = hex::encode(Sha256::digest(k.as_bytes()));
            let seen = self
                .store
                .guard_signature(&format!("{}_s_{signature}", app.key), &key_hash, guard_expires, now)
                .await
                .map_err(unavailable)?;
            if seen == (SignatureGuard::Seen { same_key: false }) {
                return Err(unauthorized(AuthError::Replayed, Some(&app.key)));
            }
        }
        let pk = keyed_pk.unwrap_or_else(|| format!("{}_s_{signature}", app.key));
        let message = new_message(
            NewMessage {
                pk: pk.clone(),
                app: &app.key,
                channel: request.channel,
                to: request.to,
                send_at: request.send_at,
                when,
                rendered: Rendered {
                    template,
                    key,
                    content,
                    alternates,
                },
                body_hash,
                signature: signature.clone(),
                pending: idem_key.is_some(),
            },
            now,
            self.cfg.retention_days,
        );

        let created = self.store.create(&message, now).await.map_err(|e| match e {
            StoreError::Unstorable(why) => unstorable(why, pointer),
            e => unavailable(e),
        })?;
        match created {
            Created::Guarded => Err(unauthorized(AuthError::Replayed, Some(&app.key))),
            Created::Created => {
                // Counted only now, once the write proved this is no replay: a refused
                // replay costs the app nothing.
                if let Some(limit) = app.limits.per_minute {
                    let hit = self.store.hit_rate_limit(&app.key, limit, 1, now).await;
                    let refused = match hit {
                        Ok(None) => None,
                        Ok(Some(retry_after)) => Some(
                            Problem::new(429, "rate-limited", "Too Many Requests")
                                .detail(format!("app {} may send {limit} messages per minute", app.key))
                                .retry_after(retry_after),
                        ),
                        Err(e) => Some(unavailable(e)),
                    };
                    if let Some(problem) = refused {
                        self.withdraw(&message, idem_key.is_some(), guard_expires).await;
                        return Err(problem);
                    }
                }
                if let Err(e) = self.enqueue(&message, now).await {
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
                tracing::info!(app = %app.key, id = %message.id, channel = message.channel.as_str(), status = message.status.as_str(), "accepted");
                Ok(accepted(&message, false))
            }
            Created::Exists(old) => {
                if idem_key.is_none() {
                    // The key derives from the signature: this signature was used.
                    return Err(unauthorized(AuthError::Replayed, Some(&app.key)));
                }
                // With a key, the same signature again is an exact repeat (v2 signs the
                // key; v1 passed its guard with the same key): an idempotent retry.
                if old.body_hash != message.body_hash {
                    return Err(key_reused());
                }
                if old.ingest_pending == Some(true) {
                    if now.saturating_sub(old.created_at) < IN_FLIGHT_MS {
                        return Err(Problem::new(409, "in-progress", "Conflict")
                            .detail("a request with this Idempotency-Key is still being processed")
                            .retry_after(1));
                    }
                    // The first ingest died between its write and its SQS send: queue it
                    // now. A duplicate job is harmless, the dispatcher's claim sends once.
                    self.enqueue(&old, now).await.map_err(|e| {
                        tracing::error!(error = %e, id = %old.id, "re-enqueue failed");
                        Problem::unavailable("could not queue the message; retry")
                    })?;
                    let _ = self.store.mark_enqueued(&old.pk).await;
                }
                tracing::info!(app = %app.key, id = %old.id, "idempotent replay");
                Ok(accepted(&old, true))
            }
        }
    }

    /// Renders a validated request for its channel and each fallback (a message that
    /// cannot be rendered for a channel it may fall back to is refused, not half-sent),
    /// and applies the app's sensitive-word filter. A 422 names every bad field.
    pub(super) async fn render(&self, request: &request::SendRequest, app: &AppConfig) -> Result<Rendered, Problem> {
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
        for (i, (channel, to, _)) in legs.iter().enumerate() {
            if let Some(why) = app.providers.unknown_robot(*channel, to) {
                let pointer = match i {
                    0 => "/to".to_string(),
                    i => format!("/fallback/{}/to", i - 1),
                };
                errors.push(FieldError::new(pointer, why));
            }
        }
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
        Ok(Rendered {
            template,
            key,
            content,
            alternates,
        })
    }

    /// `/v1/endpoints…`: authenticated like every route, then the endpoints API for the
    /// app the signature proved.
    async fn endpoints(&self, req: &Request, rest: &str) -> Result<Response<Body>, Problem> {
        let Some(api) = &self.endpoints else {
            return Err(Problem::not_found("no such route"));
        };
        let body = body_bytes(req);
        if body.len() > self.cfg.max_body_bytes {
            return Err(Problem::new(413, "too-large", "Content Too Large")
                .detail(format!("the body may be at most {} bytes", self.cfg.max_body_bytes)));
        }
        let (_, app) = self.authenticate(req, body, header(req, IDEMPOTENCY_KEY)).await?;
        api.handle(super::endpoints::Call {
            app: &app.key,
            method: req.method().as_str(),
            rest,
            body,
            content_type: header(req, "content-type"),
            query: req.uri().query(),
        })
        .await
    }

    /// Takes back a record written for a request refused after its write (rate limit):
    /// a keyed record is deleted, so the client may retry under the same key; a record
    /// keyed by its signature becomes a bare guard, so the signature stays spent.
    async fn withdraw(&self, message: &Message, keyed: bool, guard_expires: i64) {
        let done = if keyed {
            self.store.delete(&message.pk, &message.id).await
        } else {
            self.store
                .seal_as_guard(&message.pk, &message.id, guard_expires)
                .await
                .map(|_| ())
        };
        if let Err(e) = done {
            tracing::error!(error = %e, id = %message.id, "could not withdraw a refused record");
        }
    }

    async fn status(&self, req: &Request, id: &str) -> Result<Response<Body>, Problem> {
        let message = self.own_message(req, id).await?;
        Ok(json(200, &status_view(&message)))
    }

    /// Answers a refusal that depends on when the request is looked at (its `send_at`
    /// now past, the app's balance now spent) unless the same request under the same
    /// `Idempotency-Key` was accepted before: then the first answer again, as a retry
    /// expects. One GetItem, on refusals of keyed requests only.
    async fn unless_replay(
        &self,
        keyed_pk: Option<&str>,
        body_hash: &str,
        now: i64,
        refusal: Problem,
    ) -> Result<Response<Body>, Problem> {
        if let Some(pk) = keyed_pk {
            if let Ok(Some(old)) = self.store.get(pk, now).await {
                if old.body_hash == body_hash {
                    return Ok(accepted(&old, true));
                }
            }
        }
        Err(refusal)
    }

    /// `DELETE /v1/messages/{id}`: cancels a message not yet claimed for sending
    /// (`accepted` or `scheduled`): it becomes `cancelled`, its schedule is deleted, and
    /// a job that still arrives (a schedule firing in the race) finds nothing to send.
    /// Cancelling again answers the same; a message already sending or done is a 409
    /// naming its status. Idempotent, so a replayed signature can do no harm.
    async fn cancel(&self, req: &Request, id: &str) -> Result<Response<Body>, Problem> {
        let message = self.own_message(req, id).await?;
        let now = (self.clock)();
        let m = match self
            .store
            .cancel(&message.pk, &message.id, now)
            .await
            .map_err(unavailable)?
        {
            Ok(m) => m,
            Err(old) if old.status == Status::Cancelled => old,
            Err(old) => {
                let status = old.status.as_str();
                return Err(Problem::new(409, "not-cancellable", "Conflict")
                    .detail(format!("the message is already {status}"))
                    .errors(vec![FieldError::new("path:id", format!("status: {status}"))]));
            }
        };
        if let (Some(scheduler), Some(name)) = (&self.scheduler, &m.schedule) {
            // If this fails the schedule fires later and the dispatcher finds the message
            // cancelled: nothing is sent either way.
            if let Err(e) = scheduler.delete(name).await {
                tracing::warn!(error = %e, id = %m.id, "could not delete a cancelled message's schedule");
            }
        }
        tracing::info!(id = %m.id, "cancelled");
        Ok(json(200, &status_view(&m)))
    }

    /// How a message for `send_at` is queued; a 422 naming `/send_at` when it cannot be.
    pub(super) fn when(&self, send_at: Option<i64>, now: i64) -> Result<When, Problem> {
        let policy = SchedulePolicy {
            skew_secs: self.cfg.clock_skew_secs,
            horizon_days: self.cfg.schedule_horizon_days,
        };
        let refuse = |why: String| Problem::unprocessable(vec![FieldError::new("/send_at", why)]);
        match crate::schedule::when(send_at, now, policy) {
            Ok(When::At(_)) if self.scheduler.is_none() => Err(refuse(format!(
                "this deployment schedules at most {} minutes ahead",
                crate::schedule::MAX_DELAY_SECS / 60
            ))),
            Ok(when) => Ok(when),
            Err(e) => Err(refuse(e.to_string())),
        }
    }

    /// Puts `message`'s job on the queue: now, delayed, or through its one-time
    /// schedule, by its `send_at` as of `now` (a re-queue after a crash whose `send_at`
    /// has passed goes now).
    async fn enqueue(&self, message: &Message, now: i64) -> Result<(), String> {
        let job = Job::of(message);
        let policy = SchedulePolicy {
            skew_secs: 0,
            horizon_days: i64::MAX / 86_400_000,
        };
        match crate::schedule::when(message.send_at, now, policy).unwrap_or(When::Now) {
            When::Now => self.queue.send(&job).await.map_err(|e| e.to_string()),
            When::Delay(secs) => self.queue.send_delayed(&job, secs).await.map_err(|e| e.to_string()),
            When::At(at) => match (&self.scheduler, &message.schedule) {
                (Some(scheduler), Some(name)) => scheduler.create_at(name, at, &job).await.map_err(|e| e.to_string()),
                _ => self.queue.send(&job).await.map_err(|e| e.to_string()),
            },
        }
    }

    /// The message `id` of the request's app, after authenticating the request; another
    /// app's message is indistinguishable from a missing one.
    async fn own_message(&self, req: &Request, id: &str) -> Result<Message, Problem> {
        let (_, app) = self
            .authenticate(req, body_bytes(req), header(req, IDEMPOTENCY_KEY))
            .await?;
        super::ulid_id(id, "message")?;
        let message = self
            .store
            .get_by_id(id, (self.clock)())
            .await
            .map_err(unavailable)?
            .filter(|m| m.app == app.key)
            .ok_or_else(|| Problem::not_found("no such message"))?;
        Ok(message)
    }
}

/// A request rendered for its channel and fallbacks.
pub(super) struct Rendered {
    pub template: Option<String>,
    pub key: Option<String>,
    pub content: crate::message::Content,
    pub alternates: Vec<Alternate>,
}

/// What a new message record is made of.
pub(super) struct NewMessage<'a> {
    pub pk: String,
    pub app: &'a str,
    pub channel: crate::message::Channel,
    pub to: String,
    pub send_at: Option<i64>,
    pub when: When,
    pub rendered: Rendered,
    pub body_hash: String,
    pub signature: String,
    /// Written before its job is queued, to be marked queued after (`ingest_pending`).
    pub pending: bool,
}

/// A new message record: `accepted`, or `scheduled` for a later `send_at`.
pub(super) fn new_message(m: NewMessage<'_>, now: i64, retention_days: i64) -> Message {
    let id = ulid::Ulid::new().to_string();
    let initial = match m.when {
        When::Now => Status::Accepted,
        _ => Status::Scheduled,
    };
    Message {
        schedule: matches!(m.when, When::At(_)).then(|| Scheduler::name_of(&id)),
        send_at: m.send_at,
        template: m.rendered.template,
        body_hash: m.body_hash,
        signature: m.signature,
        ingest_pending: m.pending.then_some(true),
        key: m.rendered.key,
        alternates: m.rendered.alternates,
        ..Message::first(FirstRecord {
            pk: m.pk,
            id: id.clone(),
            app: m.app.to_string(),
            channel: m.channel,
            to: m.to,
            content: m.rendered.content,
            status: initial,
            now,
            // Kept its retention past when it is sent, not past when it was accepted: a
            // message scheduled beyond the retention must not expire before it goes.
            expires_at: now.max(m.send_at.unwrap_or(now)) / 1000 + retention_days * 86_400,
            note: None,
        })
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
    let mut view = json!({
        "id": m.id,
        "status": m.status,
        "channel": m.channel,
        "template": m.template,
        "provider": m.provider,
        "provider_message_id": m.provider_message_id,
        "reason": m.reason,
        "attempts": m.attempts,
        "send_at": m.send_at.map(rfc3339),
        "created_at": rfc3339(m.created_at),
        "updated_at": rfc3339(m.updated_at),
        "history": history,
    });
    // An occurrence of a recurring schedule names its schedule.
    if let Some(schedule) = &m.recurring {
        view["schedule_id"] = json!(schedule);
    }
    view
}

fn accepted(m: &Message, replayed: bool) -> Response<Body> {
    let mut builder = Response::builder()
        .status(202)
        .header("content-type", "application/json")
        .header("location", format!("/v1/messages/{}", m.id));
    if replayed {
        builder = builder.header(IDEMPOTENT_REPLAYED, "true");
    }
    // A replay answers as the first response did: `accepted`, or `scheduled` with when.
    let first = match (m.history.first().map(|h| h.status), m.send_at) {
        (Some(Status::Scheduled), Some(at)) => json!({"id": m.id, "status": "scheduled", "send_at": rfc3339(at)}),
        _ => json!({"id": m.id, "status": "accepted"}),
    };
    builder
        .body(Body::Text(first.to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// The stand-in secret an unknown app key is verified against (it never matches a real
/// signature; it only makes the refusal cost what a known app's does).
const UNKNOWN_APP_SECRET: &str = "pushgate-unknown-app";

/// The 401 for `e`. The log keeps the exact reason and the app key (never a secret);
/// the caller gets [`AuthError::public_detail`].
pub(super) fn unauthorized(e: AuthError, app: Option<&str>) -> Problem {
    tracing::info!(reason = %e, app = app.unwrap_or("-"), "unauthenticated request refused");
    Problem::unauthorized(e.public_detail())
}

/// The request's `Idempotency-Key`: absent, or exactly one value of 1-255 printable
/// ASCII characters. Anything else (non-ASCII bytes, several headers) is a 400, never
/// silently "no key": that would change what the request means.
pub(super) fn idempotency_key(req: &Request) -> Result<Option<String>, Problem> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY).iter();
    let Some(first) = values.next() else { return Ok(None) };
    let bad = |why: &str| {
        Problem::new(400, "bad-idempotency-key", "Bad Request")
            .errors(vec![FieldError::new("header:Idempotency-Key", why)])
    };
    if values.next().is_some() {
        return Err(bad("give one Idempotency-Key header"));
    }
    let k = first.as_bytes();
    if k.is_empty() || k.len() > 255 || !k.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(bad("must be 1-255 printable ASCII characters without spaces"));
    }
    Ok(Some(String::from_utf8_lossy(k).into_owned()))
}

/// A message DynamoDB cannot hold: the client's to fix (4xx), not an outage to retry.
pub(super) fn unstorable(why: Unstorable, pointer: &str) -> Problem {
    let status = match why {
        Unstorable::TooLarge(_) => 413,
        _ => 422,
    };
    let detail = match &why {
        Unstorable::TooLarge(n) => format!(
            "the message as stored (rendered for every channel and fallback) would take {n} bytes, over {} KB",
            crate::store::MAX_ITEM_BYTES / 1024
        ),
        other => other.to_string(),
    };
    Problem::new(status, "unstorable", "Cannot Store")
        .detail(detail.clone())
        .errors(vec![FieldError::new(pointer, detail)])
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> Problem {
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

/// The answer to an `Idempotency-Key` used before with another body (a message, a batch
/// or a schedule): a 422 naming the header.
pub(super) fn key_reused() -> Problem {
    Problem::new(422, "idempotency-key-reused", "Unprocessable Content")
        .detail("this Idempotency-Key was used with a different body")
        .errors(vec![FieldError::new(
            "header:Idempotency-Key",
            "already used with a different body",
        )])
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
                scheduling: None,
                schedule_horizon_days: 365,
                max_batch_body_bytes: 1024,
            },
            clock: crate::clock::fixed(1_700_000_000_000),
            filters: Default::default(),
            scheduler: None,
            endpoints: None,
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
        // Content-Type is not signed and decides nothing: an invalid body under any
        // media type is still refused for what it is.
        let bad = br#"{"channel":"email","to":"a@example.com","content":{}}"#;
        assert_eq!(answer(request(bad, "text/plain", offline::SECRET)).await.0, 422);
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

    #[tokio::test]
    async fn hostile_timestamps_are_401_before_any_aws_call() {
        let body = br#"{"channel":"email","to":"a@example.com","content":{"subject":"s","text":"t"}}"#;
        for ts in [
            "-9223372036854775808",
            "9223372036854775807",
            "+5",
            " 5",
            "5.0",
            "1e9",
            "1234567890123456789012345678901234567890",
            "",
        ] {
            let mut req = request(body, "application/json", offline::SECRET);
            req.headers_mut()
                .insert("x-timestamp", http::HeaderValue::from_bytes(ts.as_bytes()).unwrap());
            let (status, problem) = answer(req).await;
            assert_eq!(status, 401, "{ts:?}: {problem}");
            assert_eq!(problem["detail"], "malformed header X-Timestamp", "{ts:?}");
        }
        // Not ASCII (or not even UTF-8): the header does not read as text, still a 401.
        for raw in ["１７００".as_bytes(), b"17\xff00"] {
            let mut req = request(body, "application/json", offline::SECRET);
            req.headers_mut()
                .insert("x-timestamp", http::HeaderValue::from_bytes(raw).unwrap());
            assert_eq!(answer(req).await.0, 401);
        }
    }

    #[tokio::test]
    async fn a_bad_idempotency_key_is_400_naming_the_header() {
        let body = br#"{"channel":"email","to":"a@example.com","content":{"subject":"s","text":"t"}}"#;
        for key in [&b"has space"[..], b"", b"caf\xc3\xa9", &[b'k'; 256]] {
            let mut req = request(body, "application/json", offline::SECRET);
            req.headers_mut()
                .insert(IDEMPOTENCY_KEY, http::HeaderValue::from_bytes(key).unwrap());
            let (status, problem) = answer(req).await;
            assert_eq!(status, 400, "{problem}");
            assert_eq!(problem["errors"][0]["pointer"], "header:Idempotency-Key");
        }
        let mut req = request(body, "application/json", offline::SECRET);
        req.headers_mut().append(IDEMPOTENCY_KEY, "a".parse().unwrap());
        req.headers_mut().append(IDEMPOTENCY_KEY, "b".parse().unwrap());
        assert_eq!(answer(req).await.0, 400, "two keys");
    }
}
