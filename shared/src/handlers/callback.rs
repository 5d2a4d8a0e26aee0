//! Callback: `POST /v1/callbacks/{provider}` records provider receipts. Authentication
//! is per provider behind [`authenticate`]; today every provider presents the shared
//! callback token (`?token=`), compared in constant time. Provider-native signatures
//! (SNS, Twilio, WeChat) plug in at the same place.

use std::sync::Arc;

use lambda_http::{Body, Request, Response};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{body_bytes, json};
use crate::apps::Apps;
use crate::clock::Clock;
use crate::problem::Problem;
use crate::receipts::{self, Receipt, SesCallback};
use crate::store::Store;

/// Everything the callback function needs; built once per cold start.
pub struct Callback {
    pub store: Store,
    pub apps: Arc<Apps>,
    pub clock: Clock,
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
        if req.method().as_str() != "POST" {
            return Err(Problem::new(405, "method-not-allowed", "Method Not Allowed"));
        }
        self.authenticate(req, &provider).await?;
        match provider.as_str() {
            "ses" => self.ses(body_bytes(req)).await,
            _ => Err(Problem::not_found(format!("no callback for provider '{provider}'"))),
        }
    }

    async fn authenticate(&self, req: &Request, provider: &str) -> Result<(), Problem> {
        let secrets = self.apps.current().await.map_err(|e| {
            tracing::error!(error = %e, "service secret unavailable");
            Problem::unavailable("configuration temporarily unavailable")
        })?;
        let presented = req
            .uri()
            .query()
            .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token"))
            .map(|(_, v)| v.into_owned());
        let ok = match (secrets.callback_token.as_deref(), presented.as_deref()) {
            (Some(expected), Some(given)) => expected.as_bytes().ct_eq(given.as_bytes()).into(),
            // No token configured: refuse everything rather than accept anyone.
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            tracing::warn!(provider, "callback refused: bad token");
            Err(Problem::unauthorized("callback token missing or wrong"))
        }
    }

    async fn ses(&self, body: &[u8]) -> Result<Response<Body>, Problem> {
        let parsed = receipts::parse_ses(body)
            .map_err(|e| Problem::new(400, "bad-receipt", "Bad Request").detail(e.to_string()))?;
        match parsed {
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

    async fn apply(&self, receipt: &Receipt) -> Result<bool, Problem> {
        let now = (self.clock)();
        let pk = match (&receipt.pk, &receipt.id) {
            (Some(pk), _) => pk.clone(),
            (None, Some(id)) => match self.store.get_by_id(id, now).await.map_err(unavailable)? {
                Some(m) => m.pk,
                None => return Ok(false),
            },
            (None, None) => {
                tracing::warn!(provider_message_id = ?receipt.provider_message_id, "receipt without our tags ignored");
                return Ok(false);
            }
        };
        let applied = self
            .store
            .apply_receipt(&pk, receipt.status, Some(receipt.note.clone()), now)
            .await
            .map_err(unavailable)?;
        tracing::info!(status = receipt.status.as_str(), applied, "receipt");
        Ok(applied)
    }
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "storage unavailable");
    Problem::unavailable("storage temporarily unavailable; retry")
}
