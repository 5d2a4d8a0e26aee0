//! Callback: `POST /v1/callbacks/{provider}` records provider receipts (and `GET` answers
//! WeChat's server-URL check). Each provider is authenticated the way it can be:
//! - `ses`, `aliyun`, `tencent`: the shared callback token (`?token=`), compared in
//!   constant time (Aliyun and Tencent document no signature at all);
//! - `twilio`: `X-Twilio-Signature` with the auth token of the app named by `?app=`;
//! - `wechat`: WeChat's own `signature` = sha1(sorted token, timestamp, nonce), with the
//!   callback token configured as the WeChat server token.
//!
//! SNS message signatures for `ses` are the next seam to fill here.

use std::sync::Arc;

use lambda_http::{Body, Request, Response};
use serde_json::json;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::{body_bytes, header, json};
use crate::apps::{Apps, ServiceSecrets};
use crate::clock::Clock;
use crate::problem::Problem;
use crate::receipts::{self, Receipt, SesCallback};
use crate::store::Store;

/// Everything the callback function needs; built once per cold start.
pub struct Callback {
    pub store: Store,
    pub apps: Arc<Apps>,
    pub clock: Clock,
    /// `PUSHGATE_PUBLIC_URL`: this API's public base URL, which providers sign over
    /// (Twilio); without it, `https://{Host}` is assumed.
    pub public_url: Option<String>,
}

fn query(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn text(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Body::Text(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// WeChat's server signature: hex(sha1(concat(sorted [token, timestamp, nonce]))).
pub fn wechat_signature(token: &str, timestamp: &str, nonce: &str) -> String {
    let mut parts = [token, timestamp, nonce];
    parts.sort_unstable();
    hex::encode(Sha1::digest(parts.concat().as_bytes()))
}

impl Callback {
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
        let secrets = self.apps.current().await.map_err(|e| {
            tracing::error!(error = %e, "service secret unavailable");
            Problem::unavailable("configuration temporarily unavailable")
        })?;
        let params = query(req);
        let method = req.method().as_str();
        match (method, provider.as_str()) {
            ("GET", "wechat") => {
                self.wechat_auth(&secrets, &params)?;
                Ok(text(200, param(&params, "echostr").unwrap_or_default()))
            }
            ("POST", "wechat") => {
                self.wechat_auth(&secrets, &params)?;
                let receipt = receipts::parse_wechat(body_bytes(req)).map_err(bad_receipt)?;
                if let Some(r) = receipt {
                    self.apply(&r).await?;
                }
                // WeChat retries unless it reads exactly this within 5 s.
                Ok(text(200, "success"))
            }
            ("POST", "twilio") => self.twilio(req, &secrets, &params).await,
            ("POST", "ses" | "aliyun" | "tencent") => {
                token_auth(&secrets, &params, &provider)?;
                match provider.as_str() {
                    "ses" => self.ses(body_bytes(req)).await,
                    "aliyun" => {
                        let receipts = receipts::parse_aliyun(body_bytes(req)).map_err(bad_receipt)?;
                        self.apply_all(&receipts).await?;
                        Ok(json(200, &json!({"code": 0, "msg": "success"})))
                    }
                    _ => {
                        let receipts = receipts::parse_tencent(body_bytes(req)).map_err(bad_receipt)?;
                        self.apply_all(&receipts).await?;
                        Ok(json(200, &json!({"result": 0, "errmsg": "OK"})))
                    }
                }
            }
            ("POST", _) => Err(Problem::not_found(format!("no callback for provider '{provider}'"))),
            _ => Err(Problem::new(405, "method-not-allowed", "Method Not Allowed")),
        }
    }

    fn wechat_auth(&self, secrets: &ServiceSecrets, params: &[(String, String)]) -> Result<(), Problem> {
        let expected = match (
            secrets.callback_token.as_deref(),
            param(params, "timestamp"),
            param(params, "nonce"),
        ) {
            (Some(token), Some(ts), Some(nonce)) => wechat_signature(token, ts, nonce),
            _ => return Err(refused("wechat")),
        };
        match param(params, "signature") {
            Some(given) if equal(&expected, given) => Ok(()),
            _ => Err(refused("wechat")),
        }
    }

    async fn twilio(
        &self,
        req: &Request,
        secrets: &ServiceSecrets,
        params: &[(String, String)],
    ) -> Result<Response<Body>, Problem> {
        let fields: Vec<(String, String)> = url::form_urlencoded::parse(body_bytes(req)).into_owned().collect();
        // The app's auth token signs the request; an app without a Twilio account
        // cannot have sent through Twilio.
        let account = param(params, "app")
            .and_then(|key| secrets.app(key))
            .and_then(|app| app.providers.twilio.as_ref())
            .ok_or_else(|| refused("twilio"))?;
        let base = match &self.public_url {
            Some(url) => url.clone(),
            None => format!("https://{}", header(req, "host").unwrap_or_default()),
        };
        let url = match req.uri().query() {
            Some(q) => format!("{base}{}?{q}", req.uri().path()),
            None => format!("{base}{}", req.uri().path()),
        };
        let given = header(req, "x-twilio-signature").unwrap_or_default();
        if !crate::providers::twilio::verify_signature(&account.auth_token, &url, &fields, given) {
            return Err(refused("twilio"));
        }
        if let Some(receipt) = receipts::parse_twilio(&fields).map_err(bad_receipt)? {
            self.apply(&receipt).await?;
        }
        Ok(text(200, ""))
    }

    async fn ses(&self, body: &[u8]) -> Result<Response<Body>, Problem> {
        match receipts::parse_ses(body).map_err(bad_receipt)? {
            SesCallback::Subscription { topic_arn } => {
                // Confirming means fetching SubscribeURL, which waits for SNS signature
                // verification; until then operators confirm by hand.
                tracing::info!(?topic_arn, "SNS subscription message received; not auto-confirmed");
                Ok(json(200, &json!({"received": 0, "applied": 0})))
            }
            SesCallback::Event(None) => Ok(json(200, &json!({"received": 1, "applied": 0}))),
            SesCallback::Event(Some(receipt)) => {
                let applied = self.apply(&receipt).await?;
                Ok(json(200, &json!({"received": 1, "applied": u8::from(applied)})))
            }
        }
    }

    async fn apply_all(&self, receipts: &[Receipt]) -> Result<usize, Problem> {
        let mut applied = 0;
        for r in receipts {
            applied += usize::from(self.apply(r).await?);
        }
        Ok(applied)
    }

    /// Finds the record (by our key, our id, or the provider's id) and moves its status
    /// forward. Unknown messages are acknowledged, so providers stop retrying.
    async fn apply(&self, receipt: &Receipt) -> Result<bool, Problem> {
        let now = (self.clock)();
        let pk = match (&receipt.pk, &receipt.id, &receipt.provider_message_id) {
            (Some(pk), _, _) => Some(pk.clone()),
            (None, Some(id), _) => self.store.get_by_id(id, now).await.map_err(unavailable)?.map(|m| m.pk),
            (None, None, Some(pid)) => self
                .store
                .key_by_provider_ref(receipt.provider, pid)
                .await
                .map_err(unavailable)?,
            (None, None, None) => None,
        };
        let Some(pk) = pk else {
            tracing::warn!(provider = receipt.provider, "receipt for an unknown message ignored");
            return Ok(false);
        };
        let applied = self
            .store
            .apply_receipt(&pk, receipt.status, Some(receipt.note.clone()), now)
            .await
            .map_err(unavailable)?;
        tracing::info!(
            provider = receipt.provider,
            status = receipt.status.as_str(),
            applied,
            "receipt"
        );
        Ok(applied)
    }
}

fn token_auth(secrets: &ServiceSecrets, params: &[(String, String)], provider: &str) -> Result<(), Problem> {
    match (secrets.callback_token.as_deref(), param(params, "token")) {
        (Some(expected), Some(given)) if equal(expected, given) => Ok(()),
        // No token configured: refuse everything rather than accept anyone.
        _ => Err(refused(provider)),
    }
}

fn refused(provider: &str) -> Problem {
    tracing::warn!(provider, "callback refused: authentication failed");
    Problem::unauthorized("callback authentication failed")
}

fn bad_receipt(e: receipts::ReceiptError) -> Problem {
    Problem::new(400, "bad-receipt", "Bad Request").detail(e.to_string())
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "storage unavailable");
    Problem::unavailable("storage temporarily unavailable; retry")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wechat_signature_sorts_before_hashing() {
        let a = wechat_signature("token", "1700000000", "nonce");
        assert_eq!(a, wechat_signature("token", "1700000000", "nonce"));
        assert_eq!(a, hex::encode(Sha1::digest(b"1700000000noncetoken")));
    }
}

#[cfg(test)]
mod offline_tests {
    use super::*;
    use crate::handlers::offline;

    fn callback() -> Callback {
        Callback {
            store: offline::store(),
            apps: offline::apps(),
            clock: crate::clock::fixed(0),
            public_url: None,
        }
    }

    fn req(method: &str, uri: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::Empty)
            .unwrap()
    }

    #[tokio::test]
    async fn callbacks_are_authenticated_before_any_aws_call() {
        let cb = callback();
        assert_eq!(cb.handle(req("POST", "/v1/callbacks/ses")).await.status(), 401);
        assert_eq!(
            cb.handle(req("POST", "/v1/callbacks/aliyun?token=wrong"))
                .await
                .status(),
            401
        );
        assert_eq!(
            cb.handle(req("POST", "/v1/callbacks/twilio?app=nobody")).await.status(),
            401
        );
        assert_eq!(
            cb.handle(req("POST", "/v1/callbacks/nope?token=tok")).await.status(),
            404
        );
        let bad = "/v1/callbacks/wechat?signature=x&timestamp=1&nonce=n&echostr=hi";
        assert_eq!(cb.handle(req("GET", bad)).await.status(), 401);
        let sig = wechat_signature("tok", "1", "n");
        let good = format!("/v1/callbacks/wechat?signature={sig}&timestamp=1&nonce=n&echostr=hi");
        let resp = cb.handle(req("GET", &good)).await;
        assert_eq!((resp.status().as_u16(), resp.body()), (200, &Body::Text("hi".into())));
    }
}
