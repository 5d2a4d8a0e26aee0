//! Callback: `POST /v1/callbacks/{provider}` records provider receipts (and `GET` answers
//! WeChat's server-URL check). The provider is looked up in the receipt sources'
//! registry ([`crate::providers::receipt_source`]), and its module says how it is
//! authenticated, what its callbacks carry and what it must read back:
//! - `aliyun`, `tencent`: the app's own callback token (`?app={key}&token={token}`),
//!   compared in constant time (Aliyun and Tencent document no signature at all);
//! - `twilio`: `X-Twilio-Signature` with the auth token of the app named by `?app=`;
//! - `wechat`: WeChat's own `signature` = sha1(sorted token, timestamp, nonce) under the
//!   app's callback token, timestamp within 5 minutes, nonce used once;
//! - `ses`: the SNS message signature, with SNS's certificate, on a configured topic
//!   ([`crate::providers::sns`]).
//!
//! Authentication yields a [`Scope`]: the apps whose secret the call proved. Receipts are
//! applied only to those apps' messages; one for another app's message is ignored and
//! logged. A receipt that names a message by a provider id not yet recorded (the send's
//! answer and its receipt race) is held until the dispatcher records it.
//!
//! This handler only routes, authenticates through the source, applies (through
//! [`Receipts`], the path every receipt takes, with its fallback on failed receipts) and
//! answers.

use std::sync::Arc;

use lambda_http::{Body, Request, Response};

use super::receipt::Receipts;
use super::{body_bytes, header, json};
use crate::allowlist::AllowLists;
use crate::clock::Clock;
use crate::problem::Problem;
use crate::providers::sns::SnsTrust;
use crate::providers::{receipt_source, ReceiptSource, Trust};
use crate::receipts::{Inbound, Receipt, ReceiptError, Refusal, Reply, Scope};

/// How long a callback nonce is remembered: past the whole window in which its
/// timestamp is accepted (±5 minutes), so a replay inside the window is always caught.
pub const NONCE_TTL_SECS: i64 = 900;

/// WeChat's server signature, where the tools and tests have always found it.
pub use crate::providers::wechat::server_signature as wechat_signature;

/// Everything the callback function needs; built once per cold start.
pub struct Callback {
    /// Where receipts are applied (and fall back): the path pulled receipts take too.
    pub receipts: Receipts,
    pub clock: Clock,
    /// `PUSHGATE_PUBLIC_URL`: this API's public base URL, which providers sign over
    /// (Twilio); without it, `https://{Host}` is assumed.
    pub public_url: Option<String>,
    /// What SES events (through SNS) are verified against.
    pub sns: Arc<SnsTrust>,
    /// `PUSHGATE_CALLBACK_ALLOWED_IPS`: optional per-provider ranges callers must come from.
    pub allowed_ips: AllowLists,
}

fn query(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn text(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Body::Text(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

impl Callback {
    /// Answers one API Gateway event; odd targets get a 400 before anything else
    /// ([`super::edge`]).
    pub async fn handle_event(
        &self,
        event: aws_lambda_events::event::apigw::ApiGatewayV2httpRequest,
    ) -> aws_lambda_events::event::apigw::ApiGatewayV2httpResponse {
        super::edge::serve(event, |req| self.handle(req)).await
    }

    pub async fn handle(&self, req: Request) -> Response<Body> {
        self.route(&req).await.unwrap_or_else(Problem::into_response)
    }

    async fn route(&self, req: &Request) -> Result<Response<Body>, Problem> {
        let path = req.uri().path().trim_end_matches('/');
        let provider = path
            .strip_prefix("/v1/callbacks/")
            .filter(|p| !p.is_empty() && !p.contains('/'))
            .ok_or_else(|| Problem::not_found("no such route"))?
            .to_string();
        let secrets = self.receipts.apps.current().await.map_err(|e| {
            tracing::error!(error = %e, "service secret unavailable");
            Problem::unavailable("configuration temporarily unavailable")
        })?;
        let params = query(req);
        let method = req.method().as_str();
        let Some(source) = receipt_source(&provider) else {
            return Err(match method {
                "POST" => Problem::not_found(format!("no callback for provider '{provider}'")),
                _ => method_not_allowed(),
            });
        };
        if !self.allowed_ips.allows(source.name(), source_ip(req)) {
            return Err(refused(source.name(), &Refusal::Address));
        }
        // The URL the provider called, as it signs it (Twilio).
        let base = match &self.public_url {
            Some(url) => url.clone(),
            None => format!("https://{}", header(req, "host").unwrap_or_default()),
        };
        let url = match req.uri().query() {
            Some(q) => format!("{base}{}?{q}", req.uri().path()),
            None => format!("{base}{}", req.uri().path()),
        };
        let now = (self.clock)();
        let call = Inbound {
            url: &url,
            query: &params,
            headers: req.headers(),
            body: body_bytes(req),
            now_ms: now,
        };
        let trust = Trust {
            secrets: &secrets,
            sns: &self.sns,
        };
        let authenticate = |source: &'static dyn ReceiptSource| {
            let (call, trust) = (&call, &trust);
            async move {
                source
                    .authenticate(call, trust)
                    .await
                    .map_err(|r| refused(source.name(), &r))
            }
        };
        match method {
            "GET" => {
                let reply = source.on_get(&call).ok_or_else(method_not_allowed)?;
                authenticate(source).await?;
                Ok(respond(reply))
            }
            "POST" => {
                let scope = authenticate(source).await?;
                let batch = source.parse(&call).map_err(|e| bad_receipt(source.name(), e))?;
                let nonce = source.replay_key(&call);
                if let Some(key) = &nonce {
                    if !self
                        .receipts
                        .store
                        .claim_nonce(key, now, NONCE_TTL_SECS)
                        .await
                        .map_err(unavailable)?
                    {
                        return Err(refused(source.name(), &Refusal::Replayed));
                    }
                }
                match self.apply_all(&batch.receipts, &scope, now).await {
                    Ok(applied) => Ok(respond(source.reply(&batch, applied))),
                    Err(problem) => {
                        // The vendor will retry this very call: it must not look replayed.
                        if let Some(key) = &nonce {
                            if let Err(e) = self.receipts.store.release_nonce(key).await {
                                tracing::error!(error = %e, "releasing a callback nonce failed");
                            }
                        }
                        Err(problem)
                    }
                }
            }
            _ => Err(method_not_allowed()),
        }
    }

    async fn apply_all(&self, receipts: &[Receipt], scope: &Scope, now: i64) -> Result<usize, Problem> {
        let mut applied = 0;
        for r in receipts {
            applied += usize::from(self.receipts.apply(r, scope, now).await.map_err(unavailable)?);
        }
        Ok(applied)
    }
}

/// The caller's address as API Gateway saw it (none for a request without that context).
fn source_ip(req: &Request) -> Option<std::net::IpAddr> {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.as_deref()?.parse().ok(),
        _ => None,
    }
}

fn respond(reply: Reply) -> Response<Body> {
    match reply {
        Reply::Text(body) => text(200, &body),
        Reply::Json(value) => json(200, &value),
    }
}

fn method_not_allowed() -> Problem {
    Problem::new(405, "method-not-allowed", "Method Not Allowed")
}

/// A refused callback: 401, nothing written, the reason logged (never the payload).
fn refused(provider: &str, reason: &Refusal) -> Problem {
    if let Refusal::Unverifiable(_) = reason {
        tracing::error!(provider, %reason, "callback cannot be verified now; the sender retries");
        return Problem::unavailable("cannot verify the callback now; retry");
    }
    tracing::warn!(provider, %reason, "callback refused");
    Problem::unauthorized("callback authentication failed")
}

fn bad_receipt(provider: &str, e: ReceiptError) -> Problem {
    tracing::warn!(provider, error = %e, "callback refused: unreadable receipt");
    Problem::new(400, "bad-receipt", "Bad Request").detail(e.to_string())
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "storage unavailable");
    Problem::unavailable("storage temporarily unavailable; retry")
}

#[cfg(test)]
mod offline_tests {
    use super::*;
    use crate::apps::{AppConfig, Apps, ServiceSecrets};
    use crate::handlers::offline;

    const NOW_S: i64 = 1_700_000_000;

    /// Two apps with their own callback tokens, and the shared token `tok`.
    fn callback() -> Callback {
        let app = |key: &str, token: &str| -> AppConfig {
            serde_json::from_value(serde_json::json!({
                "key": key, "secrets": ["s"], "callback_token": token,
                "providers": {"wechat": {"appid": format!("wx{key}"), "secret": "x"}},
            }))
            .unwrap()
        };
        Callback {
            receipts: Receipts {
                store: offline::store(),
                apps: Arc::new(Apps::fixed(ServiceSecrets {
                    apps: vec![app("a", "tok-a"), app("b", "tok-b")],
                    callback_token: Some("tok".into()),
                })),
                fallback: None,
            },
            clock: crate::clock::fixed(NOW_S * 1000),
            public_url: None,
            sns: Arc::new(SnsTrust::new(Vec::new(), Default::default(), reqwest::Client::new())),
            allowed_ips: AllowLists::default(),
        }
    }

    fn req(method: &str, uri: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::Empty)
            .unwrap()
    }

    async fn status(cb: &Callback, method: &str, uri: &str) -> u16 {
        cb.handle(req(method, uri)).await.status().as_u16()
    }

    #[tokio::test]
    async fn callbacks_are_authenticated_before_any_aws_call() {
        let cb = callback();
        assert_eq!(status(&cb, "POST", "/v1/callbacks/ses").await, 401);
        assert_eq!(status(&cb, "POST", "/v1/callbacks/aliyun?token=wrong").await, 401);
        assert_eq!(status(&cb, "POST", "/v1/callbacks/twilio?app=nobody").await, 401);
        assert_eq!(status(&cb, "POST", "/v1/callbacks/nope?token=tok").await, 404);
        let ts = NOW_S.to_string();
        let bad = format!("/v1/callbacks/wechat?signature=x&timestamp={ts}&nonce=n&echostr=hi");
        assert_eq!(status(&cb, "GET", &bad).await, 401);
        let sig = wechat_signature("tok-a", &ts, "n");
        let good = format!("/v1/callbacks/wechat?signature={sig}&timestamp={ts}&nonce=n&echostr=hi");
        let resp = cb.handle(req("GET", &good)).await;
        assert_eq!((resp.status().as_u16(), resp.body()), (200, &Body::Text("hi".into())));
    }

    /// The shared token used to authenticate Aliyun, Tencent and WeChat for every tenant;
    /// it now authenticates none of them (nor SES, whose events SNS signs).
    #[tokio::test]
    async fn the_shared_token_no_longer_opens_per_app_vendors() {
        let cb = callback();
        for p in ["aliyun", "tencent"] {
            assert_eq!(status(&cb, "POST", &format!("/v1/callbacks/{p}?token=tok")).await, 401);
            assert_eq!(
                status(&cb, "POST", &format!("/v1/callbacks/{p}?app=a&token=tok")).await,
                401
            );
            assert_eq!(
                status(&cb, "POST", &format!("/v1/callbacks/{p}?app=a&token=tok-b")).await,
                401
            );
            assert_eq!(
                status(&cb, "POST", &format!("/v1/callbacks/{p}?app=zz&token=tok-a")).await,
                401
            );
        }
        let ts = NOW_S.to_string();
        let sig = wechat_signature("tok", &ts, "n");
        let shared = format!("/v1/callbacks/wechat?signature={sig}&timestamp={ts}&nonce=n&echostr=hi");
        assert_eq!(status(&cb, "GET", &shared).await, 401);
        // App b's server token does not pass as app a's.
        let sig = wechat_signature("tok-b", &ts, "n");
        let crossed = format!("/v1/callbacks/wechat?app=a&signature={sig}&timestamp={ts}&nonce=n&echostr=hi");
        assert_eq!(status(&cb, "GET", &crossed).await, 401);
    }

    #[tokio::test]
    async fn an_allow_list_refuses_other_addresses_before_anything_else() {
        let mut cb = callback();
        cb.allowed_ips = AllowLists::parse(r#"{"aliyun": ["203.0.113.0/24"]}"#).unwrap();
        // No address known (no API Gateway context): refused, even with the right token.
        assert_eq!(status(&cb, "POST", "/v1/callbacks/aliyun?app=a&token=tok-a").await, 401);
        // Other providers are not restricted (this one then fails on its empty body).
        assert_eq!(
            status(&cb, "POST", "/v1/callbacks/tencent?app=a&token=wrong").await,
            401
        );
    }

    /// A days-old signed triple used to pass forever.
    #[tokio::test]
    async fn wechat_timestamps_outside_five_minutes_are_refused() {
        let cb = callback();
        for at in [NOW_S - 301, NOW_S + 301, NOW_S - 3 * 86_400] {
            let ts = at.to_string();
            let sig = wechat_signature("tok-a", &ts, "n");
            let uri = format!("/v1/callbacks/wechat?signature={sig}&timestamp={ts}&nonce=n&echostr=hi");
            assert_eq!(status(&cb, "GET", &uri).await, 401, "{at}");
            assert_eq!(status(&cb, "POST", &uri).await, 401, "{at}");
        }
        for at in [NOW_S - 300, NOW_S + 300] {
            let ts = at.to_string();
            let sig = wechat_signature("tok-a", &ts, "n");
            let uri = format!("/v1/callbacks/wechat?signature={sig}&timestamp={ts}&nonce=n&echostr=hi");
            assert_eq!(status(&cb, "GET", &uri).await, 200, "{at}");
        }
    }
}
