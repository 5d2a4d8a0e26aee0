//! Callback: `POST /v1/callbacks/{provider}` records provider receipts (and `GET` answers
//! WeChat's server-URL check). The provider is looked up in the receipt sources'
//! registry ([`crate::providers::receipt_source`]), and its module says how it is
//! authenticated, what its callbacks carry and what it must read back:
//! - `ses`, `aliyun`, `tencent`: the shared callback token (`?token=`), compared in
//!   constant time (Aliyun and Tencent document no signature at all);
//! - `twilio`: `X-Twilio-Signature` with the auth token of the app named by `?app=`;
//! - `wechat`: WeChat's own `signature` = sha1(sorted token, timestamp, nonce), with the
//!   callback token configured as the WeChat server token.
//!
//! This handler only routes, authenticates through the source, applies and answers.

use std::sync::Arc;

use lambda_http::{Body, Request, Response};

use super::{body_bytes, header, json};
use crate::apps::Apps;
use crate::clock::Clock;
use crate::problem::Problem;
use crate::providers::{receipt_source, ReceiptSource};
use crate::receipts::{Inbound, Receipt, ReceiptError, Reply};
use crate::store::Store;

/// WeChat's server signature, where the tools and tests have always found it.
pub use crate::providers::wechat::server_signature as wechat_signature;

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

fn text(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Body::Text(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
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
        let Some(source) = receipt_source(&provider) else {
            return Err(match method {
                "POST" => Problem::not_found(format!("no callback for provider '{provider}'")),
                _ => method_not_allowed(),
            });
        };
        // The URL the provider called, as it signs it (Twilio).
        let base = match &self.public_url {
            Some(url) => url.clone(),
            None => format!("https://{}", header(req, "host").unwrap_or_default()),
        };
        let url = match req.uri().query() {
            Some(q) => format!("{base}{}?{q}", req.uri().path()),
            None => format!("{base}{}", req.uri().path()),
        };
        let call = Inbound {
            url: &url,
            query: &params,
            headers: req.headers(),
            body: body_bytes(req),
        };
        let authenticate = |source: &dyn ReceiptSource| {
            if source.authentic(&call, &secrets) {
                Ok(())
            } else {
                Err(refused(source.name()))
            }
        };
        match method {
            "GET" => {
                let reply = source.on_get(&call).ok_or_else(method_not_allowed)?;
                authenticate(source)?;
                Ok(respond(reply))
            }
            "POST" => {
                authenticate(source)?;
                let batch = source.parse(&call).map_err(bad_receipt)?;
                let applied = self.apply_all(&batch.receipts).await?;
                Ok(respond(source.reply(&batch, applied)))
            }
            _ => Err(method_not_allowed()),
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

fn respond(reply: Reply) -> Response<Body> {
    match reply {
        Reply::Text(body) => text(200, &body),
        Reply::Json(value) => json(200, &value),
    }
}

fn method_not_allowed() -> Problem {
    Problem::new(405, "method-not-allowed", "Method Not Allowed")
}

fn refused(provider: &str) -> Problem {
    tracing::warn!(provider, "callback refused: authentication failed");
    Problem::unauthorized("callback authentication failed")
}

fn bad_receipt(e: ReceiptError) -> Problem {
    Problem::new(400, "bad-receipt", "Bad Request").detail(e.to_string())
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "storage unavailable");
    Problem::unavailable("storage temporarily unavailable; retry")
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
