//! `pushgate bench-lambda`: the three release binaries run the way Lambda runs them.
//! Each is spawned with `AWS_LAMBDA_RUNTIME_API` pointing at a stand-in of the Lambda
//! Runtime API (it polls `GET /2018-06-01/runtime/invocation/next` and posts
//! `/response`), and reaches moto through a proxy that counts AWS calls by operation
//! (`X-Amz-Target`, or the SQS `Action`). Prints figures; asserts nothing about time.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::dev::{self, Local};
use crate::moto::Moto;
use crate::poller::{Invoke, Poller};
use crate::receiver::Receiver;
use crate::sandbox::ReceiptSandbox;
use crate::BoxError;

/// What to run.
pub struct Options {
    /// Messages sent through ingest and dispatched (half webhooks, half SMS).
    pub messages: usize,
    /// Where the release binaries `ingest`, `dispatcher`, `callback` are.
    pub bin_dir: PathBuf,
    /// Function to run under `wrap` (a profiler command line), if any.
    pub wrap: Option<(String, Vec<String>)>,
    /// Where each function's output goes (`<name>.log`).
    pub log_dir: PathBuf,
}

const FUNCTIONS: [&str; 3] = ["ingest", "dispatcher", "callback"];

/// AWS calls one function made, and when each was in flight.
#[derive(Default)]
struct Ledger {
    calls: BTreeMap<String, usize>,
    spans: Vec<(Instant, Instant)>,
}

/// A forwarding proxy to moto that counts calls by operation.
#[derive(Clone)]
pub struct CountingProxy {
    pub url: String,
    ledger: Arc<Mutex<Ledger>>,
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
}

impl CountingProxy {
    pub async fn start(upstream: &str) -> Result<Self, BoxError> {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            ledger: ledger.clone(),
        });
        let app = Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, ledger })
    }

    /// Calls so far, by `Service.Operation`.
    pub fn calls(&self) -> BTreeMap<String, usize> {
        self.ledger.lock().map(|l| l.calls.clone()).unwrap_or_default()
    }

    /// How long, within `from..to`, at least one AWS call was in flight.
    pub fn busy(&self, from: Instant, to: Instant) -> Duration {
        let mut spans: Vec<(Instant, Instant)> = self
            .ledger
            .lock()
            .map(|l| l.spans.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(s, e)| *e > from && *s < to)
            .map(|(s, e)| (s.max(from), e.min(to)))
            .collect();
        spans.sort();
        let (mut total, mut reach) = (Duration::ZERO, from);
        for (s, e) in spans {
            let s = s.max(reach);
            if e > s {
                total += e - s;
                reach = e;
            }
        }
        total
    }
}

/// The AWS operation of a request: JSON protocols name it in `X-Amz-Target`, the SQS
/// query protocol in the `Action` form field, SES v2 in its REST path.
fn operation(headers: &HeaderMap, method: &Method, path: &str, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let (service, op) = target.split_once('.').unwrap_or(("?", target));
        let service = match service {
            s if s.starts_with("DynamoDB") => "DynamoDB",
            "AmazonSQS" => "SQS",
            "secretsmanager" => "SecretsManager",
            s => s,
        };
        return format!("{service}.{op}");
    }
    if let Some((_, action)) = url::form_urlencoded::parse(body).find(|(k, _)| k == "Action") {
        return format!("SQS.{action}");
    }
    if path.starts_with("/v2/email/outbound-emails") {
        return "SESv2.SendEmail".into();
    }
    format!("{method} {path}")
}

async fn forward(State(st): State<Arc<ProxyState>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let op = operation(&parts.headers, &parts.method, parts.uri.path(), &body);
    let url = format!(
        "{}{}",
        st.upstream,
        parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut headers = parts.headers;
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    let response = match st
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status();
            let mut headers = r.headers().clone();
            for h in [header::TRANSFER_ENCODING, header::CONTENT_LENGTH, header::CONNECTION] {
                headers.remove(h);
            }
            let bytes = r.bytes().await.unwrap_or_default();
            (status, headers, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    if let Ok(mut l) = st.ledger.lock() {
        *l.calls.entry(op).or_default() += 1;
        l.spans.push((started, Instant::now()));
    }
    response
}

/// One invocation as the stand-in saw it.
pub struct Outcome {
    pub ok: bool,
    pub body: Bytes,
    /// When `/next` handed the event over, and when the response was posted.
    pub started: Instant,
    pub finished: Instant,
}

impl Outcome {
    pub fn elapsed(&self) -> Duration {
        self.finished - self.started
    }
}

struct Job {
    event: Vec<u8>,
    reply: oneshot::Sender<Outcome>,
}

/// The Lambda Runtime API stand-in of one function instance.
struct RuntimeApi {
    name: &'static str,
    first_poll: OnceLock<Instant>,
    polled: Notify,
    jobs: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    inflight: Mutex<HashMap<String, (Instant, oneshot::Sender<Outcome>)>>,
    next_id: AtomicU64,
}

async fn next(State(rt): State<Arc<RuntimeApi>>) -> Response {
    if rt.first_poll.set(Instant::now()).is_ok() {
        rt.polled.notify_one();
    }
    let job = rt.jobs.lock().await.recv().await;
    let Some(job) = job else {
        return StatusCode::GONE.into_response();
    };
    let id = format!("bench-{:06}", rt.next_id.fetch_add(1, Ordering::Relaxed));
    let deadline = pushgate_shared::clock::now_ms() + 900_000;
    if let Ok(mut m) = rt.inflight.lock() {
        m.insert(id.clone(), (Instant::now(), job.reply));
    }
    (
        [
            ("lambda-runtime-aws-request-id", id),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                format!("arn:aws:lambda:us-east-1:123456789012:function:{}", rt.name),
            ),
            (
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0".into(),
            ),
            ("content-type", "application/json".into()),
        ],
        job.event,
    )
        .into_response()
}

fn finish(rt: &RuntimeApi, id: &str, ok: bool, body: Bytes) -> StatusCode {
    let entry = rt.inflight.lock().ok().and_then(|mut m| m.remove(id));
    match entry {
        Some((started, reply)) => {
            let _ = reply.send(Outcome {
                ok,
                body,
                started,
                finished: Instant::now(),
            });
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn response(State(rt): State<Arc<RuntimeApi>>, UrlPath(id): UrlPath<String>, body: Bytes) -> StatusCode {
    finish(&rt, &id, true, body)
}

async fn error(State(rt): State<Arc<RuntimeApi>>, UrlPath(id): UrlPath<String>, body: Bytes) -> StatusCode {
    eprintln!("{}: invocation error: {}", rt.name, String::from_utf8_lossy(&body));
    finish(&rt, &id, false, body)
}

async fn init_error(State(rt): State<Arc<RuntimeApi>>, body: Bytes) -> StatusCode {
    eprintln!("{}: init error: {}", rt.name, String::from_utf8_lossy(&body));
    StatusCode::ACCEPTED
}

/// One function instance: its process, its runtime API and its AWS proxy.
pub struct Function {
    pub name: &'static str,
    child: tokio::process::Child,
    pid: u32,
    spawned: Instant,
    jobs: mpsc::Sender<Job>,
    rt: Arc<RuntimeApi>,
    pub proxy: CountingProxy,
}

impl Function {
    async fn start(
        name: &'static str,
        bin: &Path,
        env: &[(&'static str, String)],
        wrap: Option<&[String]>,
        log: &Path,
    ) -> Result<Self, BoxError> {
        let (jobs, rx) = mpsc::channel(1);
        let rt = Arc::new(RuntimeApi {
            name,
            first_poll: OnceLock::new(),
            polled: Notify::new(),
            jobs: tokio::sync::Mutex::new(rx),
            inflight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(rt.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let api = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let endpoint = env
            .iter()
            .find(|(k, _)| *k == "AWS_ENDPOINT_URL")
            .map(|(_, v)| v.clone())
            .ok_or("no AWS_ENDPOINT_URL")?;
        let proxy = CountingProxy::start(&endpoint).await?;
        let mut cmd = match wrap {
            Some([program, args @ ..]) => {
                let mut c = tokio::process::Command::new(program);
                c.args(args).arg(bin);
                c
            }
            _ => tokio::process::Command::new(bin),
        };
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", &proxy.url)
            .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::create(log.with_extension("stderr.log"))?)
            .kill_on_drop(true);
        let spawned = Instant::now();
        let child = cmd.spawn()?;
        let pid = child.id().ok_or("function exited at once")?;
        Ok(Self {
            name,
            child,
            pid,
            spawned,
            jobs,
            rt,
            proxy,
        })
    }

    /// Spawn → first poll of `/next`: what Lambda bills as the init phase.
    async fn init(&mut self) -> Result<Duration, BoxError> {
        tokio::select! {
            _ = self.rt.polled.notified() => {}
            status = self.child.wait() => return Err(format!("{} exited during init: {status:?}", self.name).into()),
            _ = tokio::time::sleep(Duration::from_secs(120)) => return Err(format!("{} never polled /next", self.name).into()),
        }
        Ok(*self.rt.first_poll.get().ok_or("no poll")? - self.spawned)
    }

    async fn invoke(&self, event: &impl serde::Serialize) -> Result<Outcome, BoxError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job {
                event: serde_json::to_vec(event)?,
                reply,
            })
            .await
            .map_err(|_| "runtime API closed")?;
        let outcome = tokio::time::timeout(Duration::from_secs(120), rx)
            .await
            .map_err(|_| format!("{}: no response within 120 s", self.name))??;
        if !outcome.ok {
            return Err(format!("{}: invocation failed", self.name).into());
        }
        Ok(outcome)
    }

    /// User + system CPU of the process so far (`/proc/<pid>/stat`, in clock ticks of
    /// 10 ms: Linux's USER_HZ is 100).
    fn cpu(&self) -> Result<Duration, BoxError> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let fields: Vec<&str> = stat.rsplit_once(')').ok_or("odd stat")?.1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(Duration::from_millis(ticks * 10))
    }

    /// Peak resident memory (`VmHWM`), KiB.
    fn peak_rss_kib(&self) -> Result<u64, BoxError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).ok_or("no VmHWM")?;
        Ok(line.split_whitespace().nth(1).ok_or("odd VmHWM")?.parse()?)
    }

    /// Stops the process politely (a profiler writes its output on SIGTERM).
    async fn stop(mut self) {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One function's figures.
#[derive(Default)]
struct Figures {
    size_bytes: u64,
    init: Duration,
    first: Duration,
    /// Messages handled after the first invocation, and the CPU they took.
    measured: usize,
    cpu: Duration,
    durations: Vec<Duration>,
    rss_kib: u64,
    messages: usize,
    calls: BTreeMap<String, usize>,
}

impl Figures {
    /// Records the first invocation: its time, and the CPU mark later ones are measured from.
    fn first(&mut self, f: &Function, outcome: &Outcome) -> Result<Duration, BoxError> {
        self.first = outcome.elapsed();
        f.cpu()
    }

    fn close(&mut self, f: &Function, cpu_mark: Duration) -> Result<(), BoxError> {
        self.cpu = f.cpu()?.saturating_sub(cpu_mark);
        self.rss_kib = f.peak_rss_kib()?;
        self.calls = f.proxy.calls();
        Ok(())
    }
}

fn percentile(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An API Gateway HTTP API (v2) event for `POST /v1/messages`, signed by the dev app.
fn send_event(local: &Local, i: usize, receiver: &Receiver) -> Result<Value, BoxError> {
    let message = if i.is_multiple_of(2) {
        json!({"channel": "webhook", "to": receiver.url("bench"), "content": {"text": format!("bench {i}")}})
    } else {
        // Distinct numbers ending in 0 (the fakes' magic suffixes 0001-0004 fail).
        json!({"channel": "sms", "to": format!("+86138{:08}", 10_000_000 + i * 10),
               "template": "verification_code", "data": {"code": format!("{:04}", i % 10_000), "minutes": 5}})
    };
    let mut event = api_event(
        "POST",
        "/v1/messages",
        "",
        &[("content-type", "application/json".into())],
        message.to_string(),
    );
    event["headers"]["x-signature"] = json!("v1=0");
    crate::events::resign(
        &mut event,
        &local.app_key,
        &local.app_secret,
        None,
        pushgate_shared::clock::now_ms() / 1000,
    )?;
    Ok(event)
}

fn api_event(method: &str, path: &str, query: &str, headers: &[(&str, String)], body: String) -> Value {
    let mut h = serde_json::Map::new();
    h.insert("host".into(), json!("pushgate.local"));
    h.insert("user-agent".into(), json!("bench"));
    for (k, v) in headers {
        h.insert(k.to_string(), json!(v));
    }
    let params: serde_json::Map<String, Value> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let now = pushgate_shared::clock::now_ms();
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "queryStringParameters": params,
        "headers": h,
        "requestContext": {
            "accountId": "123456789012", "apiId": "pushgate", "domainName": "pushgate.local",
            "domainPrefix": "pushgate",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "bench"},
            "requestId": ulid::Ulid::new().to_string(), "routeKey": "$default", "stage": "$default",
            "time": "02/Dec/2026:00:00:00 +0000", "timeEpoch": now,
        },
        "isBase64Encoded": false,
        "body": body,
    })
}

fn status_of(outcome: &Outcome) -> u64 {
    serde_json::from_slice::<Value>(&outcome.body)
        .ok()
        .and_then(|v| v["statusCode"].as_u64())
        .unwrap_or(0)
}

/// Runs the dispatcher through the stand-in, noting each batch.
struct DispatchInvoker {
    function: Function,
    batches: Mutex<Vec<(usize, Outcome)>>,
}

#[async_trait::async_trait]
impl Invoke for DispatchInvoker {
    async fn invoke(&self, event: SqsEvent) -> Result<SqsBatchResponse, BoxError> {
        let size = event.records.len();
        let outcome = self.function.invoke(&event).await?;
        let response = serde_json::from_slice(&outcome.body)?;
        if let Ok(mut b) = self.batches.lock() {
            b.push((size, outcome));
        }
        Ok(response)
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(opts: Options) -> Result<(), BoxError> {
    let n = opts.messages.max(2);
    std::fs::create_dir_all(&opts.log_dir)?;
    let moto = Moto::start(0)?;
    let sdk = crate::resources::local_sdk(&moto.endpoint()).await;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    // Long visibility: nothing comes back unless the dispatcher reports it failed.
    let local = dev::provision(&sdk, "bench-", 600, any, any, false).await?;
    let receiver = Receiver::start(any, &local.webhook_secret, false).await?;
    let public_url = "https://pushgate.local";
    let env = dev::function_env(&local, &moto.endpoint(), public_url)?;
    let mut figures: BTreeMap<&str, Figures> = BTreeMap::new();
    let wrap_for = |name: &str| opts.wrap.as_ref().filter(|(f, _)| f == name).map(|(_, w)| w.clone());
    let spawn = |name: &'static str| {
        let (bin, log, wrap) = (
            opts.bin_dir.join(name),
            opts.log_dir.join(format!("{name}.log")),
            wrap_for(name),
        );
        let env = &env;
        async move { Function::start(name, &bin, env, wrap.as_deref(), &log).await }
    };

    // Ingest: n signed requests, one at a time, as one instance serves them.
    let mut f = spawn("ingest").await?;
    let mut fig = Figures {
        init: f.init().await?,
        messages: n,
        ..Figures::default()
    };
    let (mut mark, mut first_sms) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let outcome = f.invoke(&send_event(&local, i, &receiver)?).await?;
        if status_of(&outcome) != 202 {
            return Err(format!("ingest answered {}", String::from_utf8_lossy(&outcome.body)).into());
        }
        // The first webhook and the first SMS each load what that channel needs once
        // per instance (the SMS one, libphonenumber's metadata): both stay out of the
        // steady-state figures.
        match i {
            0 => fig.first = outcome.elapsed(),
            1 => {
                first_sms = outcome.elapsed();
                mark = f.cpu()?;
            }
            _ => fig.durations.push(outcome.elapsed()),
        }
    }
    fig.measured = n - 2;
    fig.close(&f, mark)?;
    figures.insert("ingest", fig);
    f.stop().await;

    // Dispatcher: batches of up to 10 from the queue, as the SQS event source sends them.
    let mut f = spawn("dispatcher").await?;
    let init = f.init().await?;
    let invoker = Arc::new(DispatchInvoker {
        function: f,
        batches: Mutex::new(Vec::new()),
    });
    let poller = Poller::new(
        aws_sdk_sqs::Client::new(&sdk),
        local.res.send_queue(),
        local.res.send_queue_arn(),
        invoker.clone(),
    );
    let (mut handled, mut idle, mut mark, mut first_size) = (0, 0, Duration::ZERO, 0);
    while handled < n && idle < 10 {
        let polled = poller.poll_once().await?;
        if polled.failed > 0 {
            eprintln!("dispatcher: {} records reported failed", polled.failed);
        }
        idle = if polled.received == 0 { idle + 1 } else { 0 };
        if handled == 0 && polled.received > 0 {
            mark = invoker.function.cpu()?;
            first_size = polled.received;
        }
        handled += polled.deleted;
    }
    drop(poller);
    let invoker = Arc::into_inner(invoker).ok_or("dispatcher still shared")?;
    let batches = invoker.batches.into_inner().map_err(|_| "poisoned")?;
    let f = invoker.function;
    let mut fig = Figures {
        init,
        messages: handled,
        measured: handled.saturating_sub(first_size),
        ..Figures::default()
    };
    let mut above_floor = Vec::new();
    for (i, (_, outcome)) in batches.iter().enumerate() {
        if i == 0 {
            fig.first = outcome.elapsed();
            continue;
        }
        fig.durations.push(outcome.elapsed());
        above_floor.push(
            outcome
                .elapsed()
                .saturating_sub(f.proxy.busy(outcome.started, outcome.finished)),
        );
    }
    fig.close(&f, mark)?;
    figures.insert("dispatcher", fig);
    f.stop().await;
    let mean_batch = handled as f64 / batches.len().max(1) as f64;

    // Callback: the carrier's receipt for each SMS, as the provider posts it.
    let mut sandbox = ReceiptSandbox::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        local.res.messages_table(),
        &local.callback_token,
        public_url,
    )
    .with_app_tokens([(local.app_key.clone(), local.app_callback_token.clone())].into());
    let receipts = sandbox.pending().await?;
    let mut f = spawn("callback").await?;
    let mut fig = Figures {
        init: f.init().await?,
        messages: receipts.len(),
        measured: receipts.len().saturating_sub(1),
        ..Figures::default()
    };
    for (i, cb) in receipts.into_iter().enumerate() {
        let (path, query) = cb.path.split_once('?').unwrap_or((cb.path.as_str(), ""));
        let mut headers = vec![("content-type", cb.content_type.to_string())];
        headers.extend(cb.headers.iter().map(|(k, v)| (*k, v.clone())));
        let event = api_event("POST", path, query, &headers, String::from_utf8(cb.body.clone())?);
        let outcome = f.invoke(&event).await?;
        if status_of(&outcome) >= 300 {
            return Err(format!("callback answered {}", String::from_utf8_lossy(&outcome.body)).into());
        }
        if i == 0 {
            mark = fig.first(&f, &outcome)?;
        } else {
            fig.durations.push(outcome.elapsed());
        }
    }
    fig.close(&f, mark)?;
    figures.insert("callback", fig);
    f.stop().await;

    for name in FUNCTIONS {
        if let Some(fig) = figures.get_mut(name) {
            fig.size_bytes = std::fs::metadata(opts.bin_dir.join(name))?.len();
        }
    }
    print_report(&opts, n, &figures, &above_floor, mean_batch, first_sms);
    Ok(())
}

fn print_report(
    opts: &Options,
    n: usize,
    figures: &BTreeMap<&str, Figures>,
    above_floor: &[Duration],
    mean_batch: f64,
    first_sms: Duration,
) {
    println!(
        "Lambda benchmark: {n} messages ({} webhook, {} SMS via the Aliyun fake) through the release binaries in {},\n\
         each run by a Runtime API stand-in, moto behind a call-counting proxy. Figures only.",
        n.div_ceil(2),
        n / 2,
        opts.bin_dir.display()
    );
    let row = |label: &str, f: &dyn Fn(&Figures) -> String| {
        let cells: Vec<String> = FUNCTIONS
            .iter()
            .map(|name| figures.get(name).map(f).unwrap_or_default())
            .collect();
        println!(
            "| {label:<42} | {:>10} | {:>10} | {:>10} |",
            cells[0], cells[1], cells[2]
        );
    };
    println!(
        "| {:<42} | {:>10} | {:>10} | {:>10} |",
        "figure", "ingest", "dispatcher", "callback"
    );
    println!("|{:-<44}|{:-<12}|{:-<12}|{:-<12}|", "", "", "", "");
    row("binary size (MiB)", &|f| {
        format!("{:.2}", f.size_bytes as f64 / 1048576.0)
    });
    row("init (spawn -> first /next, ms)", &|f| format!("{:.1}", ms(f.init)));
    row("first invocation (ms)", &|f| format!("{:.1}", ms(f.first)));
    row("messages (requests / records / receipts)", &|f| f.messages.to_string());
    row("CPU per message after the first (ms)", &|f| {
        format!("{:.2}", ms(f.cpu) / f.measured.max(1) as f64)
    });
    row("invocation p50 (ms)", &|f| {
        format!("{:.1}", percentile(&f.durations, 0.5))
    });
    row("invocation p95 (ms)", &|f| {
        format!("{:.1}", percentile(&f.durations, 0.95))
    });
    row("peak RSS, VmHWM (MiB)", &|f| {
        format!("{:.1}", f.rss_kib as f64 / 1024.0)
    });
    let ops: std::collections::BTreeSet<&String> = figures.values().flat_map(|f| f.calls.keys()).collect();
    println!("AWS calls per message, by operation (all invocations, cold loads included):");
    for op in ops {
        row(&format!("  {op}"), &|f| {
            f.calls
                .get(op)
                .map(|c| format!("{:.3}", *c as f64 / f.messages.max(1) as f64))
                .unwrap_or_else(|| "-".into())
        });
    }
    row("  total", &|f| {
        format!(
            "{:.3}",
            f.calls.values().sum::<usize>() as f64 / f.messages.max(1) as f64
        )
    });
    println!(
        "dispatcher, {} batches after the first (mean {mean_batch:.1} records): batch time above the storage floor \
         (invocation time minus the time an AWS call was in flight) p50 {:.1} ms, p95 {:.1} ms",
        above_floor.len(),
        percentile(above_floor, 0.5),
        percentile(above_floor, 0.95)
    );
    println!(
        "ingest's first SMS request (loads libphonenumber's metadata, once per instance): {:.1} ms",
        ms(first_sms)
    );
    println!(
        "(CPU from /proc/<pid>/stat utime+stime, 10 ms ticks; the first invocation, and ingest's first SMS, \
         with their one-time loads, are left out)"
    );
}
