//! The routes table: route documents (`{id: "app/key", definition}`) loaded into
//! [`Routes`] and cached by the dispatcher; written by `pushgate routes seed`.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::Bounded;
use crate::routing::{Routes, RoutingError};

/// Where the dispatcher gets routes: the routes table, re-read every `ttl`; or none.
pub struct RouteStore {
    table: Option<(aws_sdk_dynamodb::Client, String)>,
    cached: Bounded<Routes>,
}

impl RouteStore {
    /// No routes: every app uses its own provider order and the default actions.
    pub fn none() -> Self {
        Self {
            table: None,
            cached: Bounded::config(Duration::MAX),
        }
    }

    /// Routes from a DynamoDB table (items `{id: "app/key", definition}`), cached for `ttl`.
    pub fn table(client: aws_sdk_dynamodb::Client, table: impl Into<String>, ttl: Duration) -> Self {
        Self {
            table: Some((client, table.into())),
            cached: Bounded::config(ttl),
        }
    }

    /// The current routes; a failed refresh keeps the last good set, for a while
    /// ([`crate::cache::CONFIG_MAX_STALE`]).
    pub async fn current(&self) -> Result<Arc<Routes>, RoutingError> {
        self.cached
            .get("routes", || async {
                match &self.table {
                    None => Ok(Routes::default()),
                    Some((client, table)) => load(client, table).await,
                }
            })
            .await
            .map_err(|e| e.into_inner(RoutingError::Unavailable))
    }
}

async fn load(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<Routes, RoutingError> {
    let docs = crate::cache::scan_definitions(client, table)
        .await
        .map_err(RoutingError::Unavailable)?
        .into_iter()
        .map(|(_, definition)| serde_json::from_str(&definition).map_err(|e| RoutingError::Invalid(e.to_string())))
        .collect::<Result<Vec<serde_json::Value>, _>>()?;
    Routes::parse(&serde_json::Value::Array(docs).to_string())
}

/// Writes every route of a routes file to the table, after checking the whole file
/// parses. Returns how many were written.
pub async fn seed(client: &aws_sdk_dynamodb::Client, table: &str, json: &str) -> Result<usize, RoutingError> {
    use crate::cache::SeedError;
    let check = |json: &str| Routes::parse(json).map(drop);
    // A route is stored under `app/key`, the whole document as its definition.
    let entry = |doc: serde_json::Value| {
        let id = format!(
            "{}/{}",
            doc["app"].as_str().unwrap_or_default(),
            doc["key"].as_str().unwrap_or_default()
        );
        (id, doc)
    };
    crate::cache::seed_definitions::<Vec<serde_json::Value>, _>(client, table, json, check, entry, None)
        .await
        .map_err(|e| match e {
            SeedError::Check(e) => e,
            SeedError::Invalid(m) => RoutingError::Invalid(m),
            SeedError::Unavailable(m) => RoutingError::Unavailable(m),
        })
}
