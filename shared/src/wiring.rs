//! Cold-start wiring: builds each handler's adapters from the environment, once.

use std::sync::Arc;

use crate::apps::{Apps, SecretsManagerSource};
use crate::config::{self, ConfigError};
use crate::handlers::{callback::Callback, dispatch::Dispatcher, ingest::Ingest};
use crate::queue::{DispatchQueues, Queue};
use crate::store::Store;
use crate::templates::TemplateStore;

/// Errors while wiring a function at cold start (fatal: the runtime reports them).
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("templates: {0}")]
    Templates(#[from] crate::templates::TemplateError),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("SNS trust: {0}")]
    Sns(String),
    #[error(transparent)]
    AllowList(#[from] crate::allowlist::AllowListError),
}

struct Shared {
    sdk: aws_config::SdkConfig,
    common: config::Common,
    store: Store,
    /// One DynamoDB client per cold start, shared by every adapter that needs one.
    ddb: aws_sdk_dynamodb::Client,
    apps: Arc<Apps>,
}

async fn shared() -> Result<Shared, WiringError> {
    let common = config::Common::from_env()?;
    let sdk = crate::aws::load().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let store = Store::new(ddb.clone(), common.messages_table.clone());
    let source = SecretsManagerSource::new(aws_sdk_secretsmanager::Client::new(&sdk), common.secret_id.clone());
    let policy = crate::cache::StalePolicy::new(common.secret_ttl, common.secret_max_stale);
    let apps = Arc::new(Apps::with_policy(Arc::new(source), policy));
    Ok(Shared {
        sdk,
        common,
        store,
        ddb,
        apps,
    })
}

impl Ingest {
    pub async fn from_env() -> Result<Self, WiringError> {
        let s = shared().await?;
        let cfg = config::Ingest::from_env(&s.common)?;
        Ok(Self {
            queue: Queue::new(aws_sdk_sqs::Client::new(&s.sdk), cfg.queue_url.clone()),
            store: s.store,
            apps: s.apps,
            templates: match &cfg.templates_table {
                Some(table) => TemplateStore::table(s.ddb.clone(), table.clone(), cfg.templates_ttl),
                None => TemplateStore::bundled(),
            },
            scheduler: cfg.scheduling.as_ref().map(|c| {
                crate::scheduler::Scheduler::new(
                    aws_sdk_scheduler::Client::new(&s.sdk),
                    c.group.clone(),
                    c.queue_arn.clone(),
                    c.role_arn.clone(),
                )
                .with_dead_letter(c.dead_letter_arn.clone())
                .with_recurring_prefix(c.recurring_prefix.clone())
            }),
            endpoints: config::endpoints_api().map(|(table, delivery)| crate::handlers::endpoints::EndpointsApi {
                store: crate::store::endpoints::EndpointStore::new(s.ddb.clone(), table),
                delivery: Queue::new(aws_sdk_sqs::Client::new(&s.sdk), delivery),
                clock: crate::clock::system(),
                allow_private: cfg.webhook_allow_private,
            }),
            cfg,
            clock: crate::clock::system(),
            filters: Default::default(),
        })
    }
}

impl Dispatcher {
    pub async fn from_env() -> Result<Self, WiringError> {
        let s = shared().await?;
        let cfg = config::Dispatch::from_env(&s.common)?;
        let sqs = aws_sdk_sqs::Client::new(&s.sdk);
        let providers = crate::providers::standard(
            &cfg,
            aws_sdk_sesv2::Client::new(&s.sdk),
            s.ddb.clone(),
            &s.common.messages_table,
        )?;
        let routes = match &cfg.routes_table {
            Some(table) => crate::store::routes::RouteStore::table(s.ddb.clone(), table.clone(), cfg.routes_ttl),
            None => crate::store::routes::RouteStore::none(),
        };
        Ok(Self {
            breaker: crate::store::Breaker::new(s.store.clone(), cfg.breaker, cfg.breaker_cache_ms),
            routes,
            store: s.store,
            providers,
            apps: s.apps,
            queues: DispatchQueues {
                send: Queue::new(sqs.clone(), cfg.queue_url.clone()),
                dead_letter: Queue::new(sqs, cfg.dlq_url.clone()),
            },
            cfg,
            clock: crate::clock::system(),
        })
    }
}

/// The receipt path, with its fallback on failed receipts when configured: what the
/// callback and the pull apply receipts through.
fn receipts(s: &Shared) -> Result<crate::handlers::receipt::Receipts, WiringError> {
    let fallback = config::receipt_fallback()?.map(|(table, queue, ttl)| crate::handlers::receipt::Fallback {
        routes: crate::store::routes::RouteStore::table(s.ddb.clone(), table, ttl),
        queue: Queue::new(aws_sdk_sqs::Client::new(&s.sdk), queue),
    });
    Ok(crate::handlers::receipt::Receipts {
        store: s.store.clone(),
        apps: s.apps.clone(),
        fallback,
    })
}

impl Callback {
    pub async fn from_env() -> Result<Self, WiringError> {
        let s = shared().await?;
        Ok(Self {
            receipts: receipts(&s)?,
            clock: crate::clock::system(),
            public_url: config::public_url(),
            sns: Arc::new(crate::providers::sns::SnsTrust::from_env().map_err(WiringError::Sns)?),
            allowed_ips: crate::allowlist::AllowLists::from_env()?,
        })
    }
}

impl crate::handlers::events::EventSource {
    pub async fn from_env() -> Result<Self, WiringError> {
        let cfg = config::Events::from_env()?;
        let sdk = crate::aws::load().await;
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        Ok(Self {
            sweep: crate::store::sweep::SweepIndex::new(ddb.clone(), cfg.endpoints_table.clone()),
            endpoints: crate::store::endpoints::EndpointStore::new(ddb, cfg.endpoints_table),
            delivery: Queue::new(aws_sdk_sqs::Client::new(&sdk), cfg.delivery_queue_url),
        })
    }
}

impl crate::handlers::events::Deliver {
    pub async fn from_env() -> Result<Self, WiringError> {
        let cfg = config::Events::from_env()?;
        let sdk = crate::aws::load().await;
        Ok(Self {
            endpoints: crate::store::endpoints::EndpointStore::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                cfg.endpoints_table,
            ),
            delivery: Queue::new(aws_sdk_sqs::Client::new(&sdk), cfg.delivery_queue_url),
            client: Self::client(cfg.timeout, cfg.allow_private)?,
            clock: crate::clock::system(),
            concurrency: cfg.concurrency,
        })
    }
}

impl crate::handlers::sweep::Sweep {
    pub async fn from_env() -> Result<Self, WiringError> {
        let s = shared().await?;
        let cfg = config::Sweep::from_env()?;
        Ok(Self {
            index: crate::store::sweep::SweepIndex::new(s.ddb.clone(), cfg.endpoints_table),
            store: s.store,
            queue: Queue::new(aws_sdk_sqs::Client::new(&s.sdk), cfg.queue_url),
            timeouts: cfg.timeouts,
            clock: crate::clock::system(),
        })
    }
}

impl crate::handlers::pull::Pull {
    pub async fn from_env() -> Result<Self, WiringError> {
        let s = shared().await?;
        let cfg = config::Pull::from_env()?;
        Ok(Self {
            index: crate::store::sweep::SweepIndex::new(s.ddb.clone(), cfg.endpoints_table.clone()),
            receipts: receipts(&s)?,
            providers: crate::providers::receipt_pullers(&cfg.endpoints, cfg.provider_timeout)?,
            settings: crate::handlers::pull::Settings {
                delay: cfg.delay,
                window: cfg.window,
                calls_per_account: cfg.calls_per_account,
            },
            clock: crate::clock::system(),
        })
    }
}
