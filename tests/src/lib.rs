//! Test harness: one moto server per test binary, and per test a fresh stack (tables and
//! queues from `template.yaml` under a unique prefix, the service secret, a verified SES
//! sender, a webhook receiver) with the real handlers wired to it.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use lambda_http::{Body, Request};
use pushgate_shared::apps::{Apps, SecretsManagerSource};
use pushgate_shared::config;
use pushgate_shared::handlers::{
    callback::Callback,
    dispatch::{DispatchQueues, Dispatcher},
    ingest::Ingest,
};
use pushgate_shared::queue::Queue;
use pushgate_shared::store::Store;
use pushgate_shared::templates::TemplateStore;
use pushgate_tool::fakes::Fakes;
use pushgate_tool::moto::Moto;
use pushgate_tool::poller::{Invoke, Poller};
use pushgate_tool::receiver::Receiver;
use pushgate_tool::resources::{self, Overrides, Resources};
use pushgate_tool::BoxError;

/// The moto server of this test binary (started on first use, stopped at exit).
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| Moto::start(0).expect("start moto server (run `make venv`)"))
}

pub const APP: &str = "app-one";
pub const APP_SECRETS: [&str; 2] = ["secret-old", "secret-new"];
pub const OTHER_APP: &str = "app-two";
pub const OTHER_SECRET: &str = "other-secret";
/// An app rejecting sensitive words (signs with `OTHER_SECRET`).
pub const STRICT_APP: &str = "app-strict";
/// An app limited to 5 messages a minute (signs with `OTHER_SECRET`).
pub const RATED_APP: &str = "app-rated";
/// An app limited to 2 messages a minute (signs with `OTHER_SECRET`): replays must not
/// spend it.
pub const TIGHT_APP: &str = "app-tight";
/// An app masking sensitive words (signs with `OTHER_SECRET`).
pub const MASKING_APP: &str = "app-masking";
/// A metered app (`limits.balance`): each send takes one unit of its balance.
pub const METERED_APP: &str = "app-metered";
/// A metered app whose messages wait for a top-up instead of failing.
pub const WAITING_APP: &str = "app-waiting";
pub const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub const CALLBACK_TOKEN: &str = "cb-token-123";
/// `APP`'s own callback token (Aliyun/Tencent `?app=&token=`, its WeChat server token).
pub const APP_CALLBACK_TOKEN: &str = "app-one-cb-token";
/// `OTHER_APP`'s own callback token.
pub const OTHER_CALLBACK_TOKEN: &str = "app-two-cb-token";
pub const EMAIL_FROM: &str = "sender@pushgate.test";
/// The public base URL the test stack claims (providers sign callbacks over it).
pub const PUBLIC_URL: &str = "https://pushgate.test";

/// Counts AWS API round trips by `Service.Operation`, for budget assertions and benches.
#[derive(Debug, Clone, Default)]
pub struct CallCounter(Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>);

impl CallCounter {
    /// Calls so far, by `Service.Operation`.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, usize> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn reset(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
        }
    }

    /// Calls to one service.
    pub fn service(&self, service: &str) -> usize {
        self.snapshot()
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{service}.")))
            .map(|(_, v)| v)
            .sum()
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if let Some(md) = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>() {
            if let Ok(mut m) = self.0.lock() {
                *m.entry(format!("{}.{}", md.service(), md.name())).or_default() += 1;
            }
        }
        Ok(())
    }
}

/// Tunables per test.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub lease_secs: i64,
    pub max_attempts: u32,
    pub visibility_timeout: u32,
    pub webhook_timeout: Duration,
    /// Dispatcher concurrency within a batch.
    pub concurrency: usize,
    /// Circuit breakers, and how long an instance trusts the state it read.
    pub breaker: pushgate_shared::shaping::BreakerPolicy,
    pub breaker_cache_ms: i64,
    /// Cap on retry and deferral delays (the fault suite keeps them short).
    pub max_retry_delay: Duration,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            lease_secs: 60,
            max_attempts: 5,
            visibility_timeout: 1,
            webhook_timeout: Duration::from_secs(2),
            concurrency: 10,
            breaker: pushgate_shared::shaping::BreakerPolicy::default(),
            breaker_cache_ms: 1000,
            max_retry_delay: Duration::from_secs(900),
        }
    }
}

/// One isolated stack.
pub struct Stack {
    pub sdk: aws_config::SdkConfig,
    pub res: Resources,
    pub secret_id: String,
    pub ingest: Arc<Ingest>,
    pub dispatcher: Arc<Dispatcher>,
    pub callback: Arc<Callback>,
    pub receiver: Receiver,
    pub sqs: aws_sdk_sqs::Client,
    pub store: Store,
    /// Round trips the handlers (not the harness) made to AWS.
    pub calls: CallCounter,
    /// The fake providers this stack's app is configured for.
    pub fakes: Fakes,
    pub smtp: pushgate_tool::fakes::smtp::SmtpFake,
    /// The SNS subscriptions the callback confirmed (their `SubscribeURL`s).
    pub sns_confirmations: Arc<SnsConfirmations>,
    /// Recurring schedules go in the groups `{recurring_prefix}.{app}`.
    pub recurring_prefix: String,
}

/// Records SNS subscription confirmations instead of visiting SNS.
#[derive(Default)]
pub struct SnsConfirmations(pub std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl pushgate_shared::providers::sns::Confirmer for SnsConfirmations {
    async fn confirm(&self, subscribe_url: &str) -> Result<(), pushgate_shared::providers::sns::SnsError> {
        self.0.lock().unwrap().push(subscribe_url.to_string());
        Ok(())
    }
}

impl Stack {
    pub async fn new() -> Stack {
        Self::with(StackOptions::default()).await
    }

    pub async fn with(opts: StackOptions) -> Stack {
        let moto = moto();
        let sdk = resources::local_sdk(&moto.endpoint()).await;
        let prefix = format!("t{}-", ulid::Ulid::new().to_string().to_lowercase());
        let res = resources::create(
            &sdk,
            &prefix,
            &Overrides {
                visibility_timeout: Some(opts.visibility_timeout),
            },
        )
        .await
        .expect("create resources");
        let fakes = Fakes::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("provider fakes");
        let smtp = pushgate_tool::fakes::smtp::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("smtp fake");
        let accounts = pushgate_tool::fakes::sandbox_accounts(smtp.addr);
        let doc = serde_json::json!({
            "apps": [
                {"key": APP, "secrets": APP_SECRETS, "webhook_secret": WEBHOOK_SECRET, "providers": accounts,
                 "callback_token": APP_CALLBACK_TOKEN},
                {"key": OTHER_APP, "secrets": [OTHER_SECRET], "webhook_secret": WEBHOOK_SECRET,
                 "callback_token": OTHER_CALLBACK_TOKEN},
                {"key": STRICT_APP, "secrets": [OTHER_SECRET], "webhook_secret": WEBHOOK_SECRET,
                 "sensitive_words": {"terms": ["casino", "赌博"], "action": "reject"}},
                {"key": RATED_APP, "secrets": [OTHER_SECRET], "webhook_secret": WEBHOOK_SECRET,
                 "limits": {"per_minute": 5}},
                {"key": TIGHT_APP, "secrets": [OTHER_SECRET], "webhook_secret": WEBHOOK_SECRET,
                 "limits": {"per_minute": 2}},
                {"key": MASKING_APP, "secrets": [OTHER_SECRET], "webhook_secret": WEBHOOK_SECRET,
                 "sensitive_words": {"terms": ["casino"], "action": "mask"}},
                {"key": METERED_APP, "secrets": [OTHER_SECRET], "webhook_secret": WEBHOOK_SECRET,
                 "providers": accounts, "limits": {"balance": true}},
                {"key": WAITING_APP, "secrets": [OTHER_SECRET], "webhook_secret": WEBHOOK_SECRET,
                 "limits": {"balance": true, "when_exhausted": "wait"}},
            ],
            "callback_token": CALLBACK_TOKEN,
        });
        let secret_id = resources::put_secret(&sdk, &format!("{prefix}config"), &doc)
            .await
            .expect("secret");
        resources::verify_sender(&sdk, EMAIL_FROM).await.expect("verify sender");
        pushgate_shared::templates::seed(
            &aws_sdk_dynamodb::Client::new(&sdk),
            &res.tables["TemplatesTable"],
            pushgate_shared::templates::BUNDLED,
        )
        .await
        .expect("seed templates");
        let receiver = Receiver::start(SocketAddr::from(([127, 0, 0, 1], 0)), WEBHOOK_SECRET, false)
            .await
            .expect("receiver");

        // This stack's recurring schedules' groups (moto is shared by the tests).
        let recurring_prefix = prefix.trim_end_matches('-').to_string();
        // The handlers' clients count their calls; the harness's own clients do not.
        let calls = CallCounter::default();
        let ddb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .interceptor(calls.clone())
                .build(),
        );
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&sdk)
                .interceptor(calls.clone())
                .build(),
        );
        let ses = aws_sdk_sesv2::Client::from_conf(
            aws_sdk_sesv2::config::Builder::from(&sdk)
                .interceptor(calls.clone())
                .build(),
        );
        let sm = aws_sdk_secretsmanager::Client::from_conf(
            aws_sdk_secretsmanager::config::Builder::from(&sdk)
                .interceptor(calls.clone())
                .build(),
        );
        let ddb_for_providers = ddb.clone();
        let store_client_for_endpoints = ddb.clone();
        let store = Store::new(ddb, res.messages_table());
        let apps = Arc::new(Apps::new(
            Arc::new(SecretsManagerSource::new(sm, secret_id.clone())),
            Duration::from_secs(300),
        ));
        let ingest = Arc::new(Ingest {
            store: store.clone(),
            queue: Queue::new(sqs.clone(), res.send_queue()),
            apps: apps.clone(),
            templates: TemplateStore::table(
                aws_sdk_dynamodb::Client::new(&sdk),
                res.tables["TemplatesTable"].clone(),
                Duration::from_secs(60),
            ),
            cfg: config::Ingest {
                queue_url: res.send_queue().to_string(),
                clock_skew_secs: 300,
                max_body_bytes: 65536,
                retention_days: 7,
                webhook_allow_private: true,
                templates_table: Some(res.tables["TemplatesTable"].clone()),
                templates_ttl: Duration::from_secs(60),
                scheduling: None,
                schedule_horizon_days: 365,
                max_batch_body_bytes: 5 * 1024 * 1024,
            },
            clock: pushgate_shared::clock::system(),
            filters: Default::default(),
            scheduler: Some(
                pushgate_shared::scheduler::Scheduler::new(
                    aws_sdk_scheduler::Client::from_conf(
                        aws_sdk_scheduler::config::Builder::from(&sdk)
                            .interceptor(calls.clone())
                            .build(),
                    ),
                    res.schedule_group().to_string(),
                    res.send_queue_arn().to_string(),
                    resources::LOCAL_SCHEDULER_ROLE_ARN.to_string(),
                )
                .with_dead_letter(Some(res.schedule_dead_letter_queue_arn().to_string()))
                .with_recurring_prefix(recurring_prefix.clone()),
            ),
            endpoints: Some(pushgate_shared::handlers::endpoints::EndpointsApi {
                store: pushgate_shared::store::endpoints::EndpointStore::new(
                    store_client_for_endpoints.clone(),
                    res.endpoints_table(),
                ),
                delivery: Queue::new(sqs.clone(), res.delivery_queue()),
                clock: pushgate_shared::clock::system(),
                allow_private: true,
            }),
        });
        let dispatch_cfg = config::Dispatch {
            queue_url: res.send_queue().to_string(),
            dlq_url: res.dead_letter_queue().to_string(),
            email_from: EMAIL_FROM.into(),
            ses_configuration_set: None,
            lease_secs: opts.lease_secs,
            max_attempts: opts.max_attempts,
            concurrency: opts.concurrency,
            webhook_timeout: opts.webhook_timeout,
            webhook_allow_private: true,
            provider_timeout: opts.webhook_timeout,
            endpoints: fakes.endpoints(),
            public_url: Some(PUBLIC_URL.into()),
            routes_table: Some(res.tables["RoutesTable"].clone()),
            routes_ttl: Duration::from_secs(3600),
            breaker: opts.breaker,
            breaker_cache_ms: opts.breaker_cache_ms,
            max_retry_delay: opts.max_retry_delay,
            retention_days: 7,
        };
        let providers =
            pushgate_shared::providers::standard(&dispatch_cfg, ses, ddb_for_providers, res.messages_table())
                .expect("providers");
        let dispatcher = Arc::new(Dispatcher {
            routes: pushgate_shared::store::routes::RouteStore::table(
                aws_sdk_dynamodb::Client::new(&sdk),
                res.tables["RoutesTable"].clone(),
                // Loaded at the first dispatch: tests seed their routes before it.
                Duration::from_secs(3600),
            ),
            breaker: pushgate_shared::store::Breaker::new(store.clone(), opts.breaker, opts.breaker_cache_ms),
            store: store.clone(),
            providers,
            apps: apps.clone(),
            cfg: dispatch_cfg,
            clock: pushgate_shared::clock::system(),
            queues: DispatchQueues {
                send: Queue::new(sqs.clone(), res.send_queue()),
                dead_letter: Queue::new(sqs.clone(), res.dead_letter_queue()),
            },
        });
        let sns_confirmations = Arc::new(SnsConfirmations::default());
        let callback = Arc::new(Callback {
            receipts: pushgate_shared::handlers::receipt::Receipts {
                store: store.clone(),
                apps,
                fallback: Some(pushgate_shared::handlers::receipt::Fallback {
                    // Cached like the dispatcher's (loaded at the first failed receipt).
                    routes: pushgate_shared::store::routes::RouteStore::table(
                        aws_sdk_dynamodb::Client::new(&sdk),
                        res.tables["RoutesTable"].clone(),
                        Duration::from_secs(3600),
                    ),
                    queue: Queue::new(sqs.clone(), res.send_queue()),
                }),
            },
            clock: pushgate_shared::clock::system(),
            public_url: Some(PUBLIC_URL.into()),
            sns: Arc::new(
                pushgate_shared::providers::sns::SnsTrust::new(
                    vec![pushgate_tool::fakes::sns::TOPIC_ARN.to_string()],
                    pushgate_tool::fakes::sns::pinned_certs(),
                    reqwest::Client::new(),
                )
                .with_confirmer(sns_confirmations.clone()),
            ),
            allowed_ips: Default::default(),
        });
        let harness_store = Store::new(aws_sdk_dynamodb::Client::new(&sdk), res.messages_table());
        Stack {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sdk,
            res,
            secret_id,
            ingest,
            dispatcher,
            callback,
            receiver,
            store: harness_store,
            calls,
            fakes,
            smtp,
            sns_confirmations,
            recurring_prefix,
        }
    }

    /// Messages waiting on (or in flight from) a queue.
    pub async fn queue_count(&self, url: &str) -> usize {
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .unwrap_or_default();
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|k| attrs.get(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0))
        .sum()
    }

    /// Receives up to `max` jobs as one SQS event (as the event source mapping would).
    pub async fn receive_event(&self, max: i32) -> SqsEvent {
        let out = self
            .sqs
            .receive_message()
            .queue_url(self.res.send_queue())
            .max_number_of_messages(max)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        let mut event = SqsEvent::default();
        event.records = out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let mut r = SqsMessage::default();
                r.message_id = m.message_id;
                r.receipt_handle = m.receipt_handle;
                r.body = m.body;
                r.event_source = Some("aws:sqs".into());
                r.event_source_arn = Some(self.res.send_queue_arn().to_string());
                r
            })
            .collect();
        event
    }

    /// The local event source mapping, invoking the dispatcher in process.
    pub fn poller(&self) -> Poller {
        Poller::new(
            self.sqs.clone(),
            self.res.send_queue(),
            self.res.send_queue_arn(),
            Arc::new(InProcess(self.dispatcher.clone())),
        )
    }

    /// Polls until the queue is empty (or `limit` passes).
    pub async fn drain(&self, limit: Duration) {
        let poller = self.poller();
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let polled = poller.poll_once().await.expect("poll");
            if polled.received == 0 && self.queue_count(self.res.send_queue()).await == 0 {
                return;
            }
        }
    }

    /// Sends a message through ingest as the test app; returns its id (asserts 202).
    pub async fn accept(&self, message: serde_json::Value) -> String {
        let body = serde_json::to_vec(&message).expect("json");
        let req = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], now(), &[]);
        let (status, _, b) = parts(self.ingest.handle(req).await);
        assert_eq!(status, 202, "{b}");
        b["id"].as_str().expect("id").to_string()
    }

    /// Changes the harness app's `providers` config (merging `extra`'s keys), before the
    /// stack first reads the service secret.
    pub async fn set_app_providers(&self, extra: serde_json::Value) {
        let sm = aws_sdk_secretsmanager::Client::new(&self.sdk);
        let current = sm
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .expect("secret");
        let mut doc: serde_json::Value =
            serde_json::from_str(current.secret_string().expect("secret string")).expect("secret json");
        for (k, v) in extra.as_object().expect("an object").iter() {
            doc["apps"][0]["providers"][k] = v.clone();
        }
        sm.put_secret_value()
            .secret_id(&self.secret_id)
            .secret_string(doc.to_string())
            .send()
            .await
            .expect("put secret");
    }

    /// Every message record, by id (one paginated Scan: cheaper than a lookup per id
    /// when a test checks thousands).
    pub async fn all_records(&self) -> std::collections::HashMap<String, pushgate_shared::message::Message> {
        let ddb = aws_sdk_dynamodb::Client::new(&self.sdk);
        let mut out = std::collections::HashMap::new();
        let mut start = None;
        loop {
            let page = ddb
                .scan()
                .table_name(self.res.messages_table())
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            for item in page.items() {
                // Counters, balances and buckets share the table; only messages have an id.
                if item.contains_key("id") && item.contains_key("status") {
                    let m: pushgate_shared::message::Message = serde_dynamo::from_item(item.clone()).expect("message");
                    out.insert(m.id.clone(), m);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return out,
            }
        }
    }

    /// Sends a message through ingest as `app` (signed with `secret`); returns the status
    /// and body.
    pub async fn submit_as(
        &self,
        app: &str,
        secret: &str,
        message: serde_json::Value,
    ) -> (u16, http::HeaderMap, serde_json::Value) {
        let body = serde_json::to_vec(&message).expect("json");
        let req = signed("POST", "/v1/messages", &body, app, secret, now(), &[]);
        parts(self.ingest.handle(req).await)
    }

    /// The stored record of message `id`.
    pub async fn record(&self, id: &str) -> pushgate_shared::message::Message {
        self.store
            .get_by_id(id, pushgate_shared::clock::now_ms())
            .await
            .expect("store")
            .expect("record")
    }

    /// Emails SES (moto) accepted to `to`.
    pub async fn emails_to(&self, to: &str) -> usize {
        moto()
            .sent_emails()
            .await
            .expect("moto data")
            .iter()
            .filter(|m| m.to_string().contains(to))
            .count()
    }
}

/// Invokes the dispatcher handler directly.
pub struct InProcess(pub Arc<Dispatcher>);

#[async_trait::async_trait]
impl Invoke for InProcess {
    async fn invoke(&self, event: SqsEvent) -> Result<SqsBatchResponse, BoxError> {
        Ok(self.0.handle(event).await)
    }
}

/// A signed API request, as API Gateway hands it to the function.
pub fn signed(
    method: &str,
    path: &str,
    body: &[u8],
    key: &str,
    secret: &str,
    ts: i64,
    extra: &[(&str, &str)],
) -> Request {
    let sig = pushgate_shared::auth::sign(secret, ts, method, path, body);
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("x-app-key", key)
        .header("x-timestamp", ts.to_string())
        .header("x-signature", sig)
        .header("content-type", "application/json");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let body = if body.is_empty() {
        Body::Empty
    } else {
        Body::Binary(body.to_vec())
    };
    b.body(body).expect("request")
}

/// A request signed v2 (the signature covers `idempotency_key`, which it then carries as
/// `Idempotency-Key`), as API Gateway hands it to the function.
pub fn signed_v2(
    method: &str,
    path: &str,
    body: &[u8],
    key: &str,
    secret: &str,
    ts: i64,
    idempotency_key: Option<&str>,
) -> Request {
    let mut req = signed(method, path, body, key, secret, ts, &[]);
    let sig = pushgate_shared::auth::sign_v2(secret, ts, method, path, body, idempotency_key);
    req.headers_mut().insert("x-signature", sig.parse().expect("header"));
    if let Some(k) = idempotency_key {
        req.headers_mut().insert("idempotency-key", k.parse().expect("header"));
    }
    req
}

/// Now, Unix seconds.
pub fn now() -> i64 {
    pushgate_shared::clock::now_ms() / 1000
}

/// A response's status and JSON body.
pub fn parts(resp: lambda_http::Response<Body>) -> (u16, http::HeaderMap, serde_json::Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap_or(serde_json::Value::Null),
        Body::Binary(b) => serde_json::from_slice(b).unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    };
    (status, headers, body)
}

/// A stored-message value for calling a provider directly.
pub fn message(
    channel: pushgate_shared::message::Channel,
    to: &str,
    content: pushgate_shared::message::Content,
) -> pushgate_shared::message::Message {
    let now = pushgate_shared::clock::now_ms();
    let id = ulid::Ulid::new().to_string();
    pushgate_shared::message::Message {
        attempts: 1,
        // Sending, with no history: as a provider sees a message in flight.
        history: Vec::new(),
        ..pushgate_shared::message::Message::first(pushgate_shared::message::FirstRecord {
            pk: format!("{APP}_s_{}", id.to_lowercase()),
            id,
            app: APP.into(),
            channel,
            to: to.into(),
            content,
            status: pushgate_shared::message::Status::Sending,
            now,
            expires_at: now / 1000 + 86_400,
            note: None,
        })
    }
}

/// An unsigned POST as API Gateway hands it over (provider callbacks).
pub fn post(path: &str, content_type: &str, body: &[u8], headers: &[(&str, &str)]) -> lambda_http::Request {
    let mut b = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", content_type)
        .header("host", "pushgate.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(lambda_http::Body::Binary(body.to_vec())).unwrap()
}

/// An API Gateway HTTP API event for `raw_path?raw_query`, as the function receives it.
pub fn api_event(
    method: &str,
    raw_path: &str,
    raw_query: &str,
) -> aws_lambda_events::event::apigw::ApiGatewayV2httpRequest {
    serde_json::from_value(serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": {"host": "pushgate.test", "content-type": "application/json", "x-app-key": APP,
                    "x-timestamp": now().to_string(), "x-signature": format!("v2={}", "0".repeat(64))},
        "requestContext": {"accountId": "1", "apiId": "a", "domainName": "pushgate.test", "domainPrefix": "p",
                           "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "t"},
                           "requestId": "r", "routeKey": "$default", "stage": "$default",
                           "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 0},
        "body": "{}",
        "isBase64Encoded": false
    }))
    .expect("an HTTP API event")
}
