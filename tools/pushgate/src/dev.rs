//! `pushgate dev`: the whole pipeline on one machine. moto server as AWS, resources from
//! `template.yaml`, the three functions under `cargo lambda watch` (serving the HTTP API
//! routes on one port), the SQS → dispatcher poller, and a webhook receiver.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use crate::moto::Moto;
use crate::poller::{HttpInvoker, Poller};
use crate::receiver::Receiver;
use crate::resources::{self, Overrides};
use crate::BoxError;

/// The dev stack's recurring schedule groups are `pushgate.{app}` (its moto is its own).
pub const RECURRING_GROUP_PREFIX: &str = "pushgate";

/// Ports and paths of the local stack.
#[derive(Debug, Clone)]
pub struct Options {
    pub moto_port: u16,
    pub api_port: u16,
    pub receiver_port: u16,
    /// Visibility timeout of the local queue, seconds (retries show up this fast).
    pub visibility_timeout: u32,
    /// Port of the fake provider APIs.
    pub fakes_port: u16,
    /// Port of the fake SMTP relay.
    pub smtp_port: u16,
    /// Run release builds of the functions (for footprint measurements).
    pub release: bool,
}

fn random_token(bytes: usize) -> String {
    let mut raw = Vec::with_capacity(bytes);
    while raw.len() < bytes {
        raw.extend_from_slice(&ulid::Ulid::new().random().to_be_bytes()[6..]);
    }
    raw.truncate(bytes);
    hex::encode(raw)
}

fn state_dir() -> PathBuf {
    crate::workspace_root().join(".pushgate")
}

/// Runs the stack until Ctrl-C.
pub async fn run(opts: Options) -> Result<(), BoxError> {
    println!("pushgate dev: starting moto server on 127.0.0.1:{}", opts.moto_port);
    let moto = Moto::start(opts.moto_port)?;
    let endpoint = moto.endpoint();
    let sdk = resources::local_sdk(&endpoint).await;
    let local = provision(
        &sdk,
        "pushgate-dev-",
        opts.visibility_timeout,
        SocketAddr::from(([127, 0, 0, 1], opts.fakes_port)),
        SocketAddr::from(([127, 0, 0, 1], opts.smtp_port)),
        true,
    )
    .await?;
    let Local {
        res,
        templates_table,
        routes_table,
        secret_arn: _,
        email_from: _,
        app_key,
        app_secret,
        webhook_secret,
        callback_token,
        app_callback_token,
        fakes: _fakes,
        smtp: _smtp,
    } = &local;
    let receiver = Receiver::start(
        SocketAddr::from(([127, 0, 0, 1], opts.receiver_port)),
        webhook_secret,
        true,
    )
    .await?;
    let api = format!("http://127.0.0.1:{}", opts.api_port);

    let function_env = function_env(&local, &endpoint, &api)?;
    // The dev app's credentials and settings, as written to `.pushgate/dev.env` (the
    // first three are printed).
    let dev_env: Vec<(&str, String)> = vec![
        ("PUSHGATE_URL", api.clone()),
        ("PUSHGATE_APP_KEY", app_key.clone()),
        ("PUSHGATE_APP_SECRET", app_secret.clone()),
        ("PUSHGATE_CALLBACK_TOKEN", callback_token.clone()),
        ("PUSHGATE_APP_CALLBACK_TOKEN", app_callback_token.clone()),
        ("PUSHGATE_RECEIVER", format!("http://{}", receiver.addr)),
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("PUSHGATE_TEMPLATES_TABLE", templates_table.clone()),
        ("PUSHGATE_ROUTES_TABLE", routes_table.clone()),
        ("PUSHGATE_MESSAGES_TABLE", res.messages_table().to_string()),
        ("PUSHGATE_QUEUE_URL", res.send_queue().to_string()),
        ("PUSHGATE_DLQ_URL", res.dead_letter_queue().to_string()),
    ];
    std::fs::create_dir_all(state_dir())?;
    let env_file = state_dir().join("dev.env");
    let text: String = dev_env.iter().map(|(k, v)| format!("export {k}={v}\n")).collect();
    std::fs::write(&env_file, text)?;
    // Functions read the same configuration when invoked by `cargo lambda invoke`.
    let fn_env: String = function_env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(state_dir().join("functions.env"), fn_env)?;

    println!("pushgate dev: starting the functions (cargo lambda watch on {api}); the first build takes a while");
    let mut watch = spawn_watch(&opts, &function_env)?;
    wait_for_port(opts.api_port, Duration::from_secs(600)).await?;
    warm_up(&api).await;

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let poller = Poller::new(
        sqs,
        res.send_queue(),
        res.send_queue_arn(),
        Arc::new(HttpInvoker::new(&api, "dispatcher")),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let poll_task = tokio::spawn(async move {
        poller
            .run(async {
                let _ = stop_rx.await;
            })
            .await
    });
    // Status events: the messages table's stream → `events`, the delivery queue → `deliver`.
    let stream_reader = crate::streams::StreamReader::new(
        aws_sdk_dynamodbstreams::Client::new(&sdk),
        res.messages_stream().ok_or("the messages table has no stream")?,
        Arc::new(crate::streams::HttpStreamInvoker::new(&api, "events")),
    );
    let stream_task = tokio::spawn(async move { stream_reader.run(std::future::pending()).await });
    let delivery_poller = Poller::new(
        aws_sdk_sqs::Client::new(&sdk),
        res.delivery_queue(),
        res.delivery_queue_arn(),
        Arc::new(HttpInvoker::new(&api, "deliver")),
    );
    let delivery_task = tokio::spawn(async move { delivery_poller.run(std::future::pending()).await });
    // The dev app's status events go to the receiver, which trusts that endpoint's secret.
    let events_hook = format!("http://{}/hooks/events", receiver.addr);
    let client = crate::client::ApiClient::new(&api, app_key, app_secret);
    match client
        .request(
            "POST",
            "/v1/endpoints",
            Some(&serde_json::json!({"url": events_hook})),
            &[],
        )
        .await
    {
        Ok(r) if r.status == 201 => {
            if let Some(secret) = r.body["secret"].as_str() {
                receiver.trust(secret);
            }
            println!("pushgate dev: the dev app's status events go to {events_hook}");
        }
        Ok(r) => tracing::warn!(status = r.status, "could not create the dev app's event endpoint"),
        Err(e) => tracing::warn!(error = %e, "could not create the dev app's event endpoint"),
    }
    // The sweep's schedule (EventBridge on AWS) on the dev stack's clock: every minute.
    let sweep_url = format!("{api}/2015-03-31/functions/sweep/invocations");
    let sweep_task = tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            if let Err(e) = http.post(&sweep_url).json(&serde_json::json!({})).send().await {
                tracing::warn!(error = %e, "sweep invocation failed");
            }
        }
    });

    // The receipt pull's schedule, likewise: every minute.
    let pull_url = format!("{api}/2015-03-31/functions/pull/invocations");
    let pull_task = tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            if let Err(e) = http.post(&pull_url).json(&serde_json::json!({})).send().await {
                tracing::warn!(error = %e, "receipt pull invocation failed");
            }
        }
    });

    // moto keeps schedules but never fires them: deliver the due ones as Scheduler would.
    let local_scheduler =
        crate::schedules::LocalScheduler::new(&sdk, res.schedule_group()).with_recurring(RECURRING_GROUP_PREFIX);
    let scheduler_task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = local_scheduler.fire_due(pushgate_shared::clock::now_ms()).await {
                tracing::warn!(error = %e, "local scheduler could not fire due schedules");
            }
        }
    });

    let mut sandbox = crate::sandbox::ReceiptSandbox::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        res.messages_table(),
        callback_token,
        &api,
    )
    .with_app_tokens([(app_key.clone(), app_callback_token.clone())].into());
    let callback_base = api.clone();
    let sandbox_task = tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match sandbox.pending().await {
                Ok(callbacks) => {
                    for cb in callbacks {
                        let mut req = http
                            .post(format!("{callback_base}{}", cb.path))
                            .header("content-type", cb.content_type)
                            .body(cb.body);
                        for (k, v) in cb.headers {
                            req = req.header(k, v);
                        }
                        if let Err(e) = req.send().await {
                            tracing::warn!(error = %e, "receipt sandbox could not reach the callback");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "receipt sandbox poll failed"),
            }
        }
    });

    println!("\nPushgate is running locally.\n");
    for (k, v) in &dev_env[..3] {
        println!("  {k}={v}");
    }
    println!("\n  (also written to {})", env_file.display());
    println!("\nSend a signed webhook message to the local receiver and watch it reach `delivered`:\n");
    println!(
        "  source .pushgate/dev.env && cargo run -q -p pushgate -- send --channel webhook --to \"$PUSHGATE_RECEIVER/hooks/demo\" --text 'Hello from Pushgate' --wait\n"
    );
    println!("Every other channel goes to a local fake of its provider, which prints what it received:\n");
    for example in [
        "--channel email --to ann@example.com --template order_shipped --data '{\"name\":\"Ann\",\"order_id\":\"A-1\"}'",
        "--channel sms --to '+86 138 0013 8000' --template verification_code --data '{\"code\":\"1234\",\"minutes\":5}'",
        "--channel dingtalk --to ops --template alert --data '{\"severity\":\"P1\",\"title\":\"DB down\",\"detail\":\"primary unreachable\"}'",
        "--channel wecom --to ops --markdown '**deploy** done'",
        "--channel feishu --to ops --text 'hello from Pushgate'",
        "--channel wechat --to oUser123 --template order_shipped --data '{\"name\":\"Ann\",\"order_id\":\"A-1\"}'",
    ] {
        println!("  cargo run -q -p pushgate -- send {example} --wait");
    }
    println!("\nSchedule a send (`--at` takes RFC 3339; within 15 minutes SQS delays it, later an EventBridge");
    println!("Scheduler schedule queues it, fired locally by the dev stack), and cancel one before it goes:\n");
    println!(
        "  cargo run -q -p pushgate -- send --channel webhook --to \"$PUSHGATE_RECEIVER/hooks/later\" --text 'in 10 s' --at \"$(date -u -d '+10 seconds' +%Y-%m-%dT%H:%M:%SZ)\" --wait"
    );
    println!("  cargo run -q -p pushgate -- cancel <id>");
    println!("\nA recurring send (one message per firing, fired by the dev stack on its clock), listed and deleted:\n");
    println!(
        "  cargo run -q -p pushgate -- schedules create --expression 'rate(1 minute)' --channel webhook --to \"$PUSHGATE_RECEIVER/hooks/minutely\" --text 'every minute'"
    );
    println!("  cargo run -q -p pushgate -- schedules list");
    println!("  cargo run -q -p pushgate -- schedules delete <id>");
    println!("\nSend one template to every recipient of a CSV file (one signed batch request):\n");
    println!(
        "  printf 'to,name,order_id\\nann@example.com,Ann,A-1\\nbob@example.com,Bob,B-2\\n' > .pushgate/recipients.csv && cargo run -q -p pushgate -- batch --file .pushgate/recipients.csv --channel email --template order_shipped --wait"
    );
    println!("\nCtrl-C stops everything.\n");

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        status = watch.wait() => {
            eprintln!("cargo lambda watch exited: {status:?}");
        }
    }
    println!("pushgate dev: stopping");
    let _ = stop_tx.send(());
    let _ = poll_task.await;
    stream_task.abort();
    sweep_task.abort();
    pull_task.abort();
    delivery_task.abort();
    sandbox_task.abort();
    scheduler_task.abort();
    stop_group(&mut watch).await;
    drop(moto);
    Ok(())
}

fn spawn_watch(opts: &Options, env: &[(&str, String)]) -> Result<tokio::process::Child, BoxError> {
    let venv_bin = crate::workspace_root().join(".pushgate/venv/bin");
    let path = format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = tokio::process::Command::new("cargo");
    cmd.current_dir(crate::workspace_root())
        .args(["lambda", "watch", "--invoke-address", "127.0.0.1", "--invoke-port"])
        .arg(opts.api_port.to_string())
        .args(["--ignore-changes"])
        .args(opts.release.then_some("--release"))
        .env("PATH", path)
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.spawn()?)
}

/// Stops `cargo lambda watch` and the function processes it started (one process group).
async fn stop_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", "--", &format!("-{pid}")])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = tokio::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status()
                .await;
        }
    }
    let _ = child.wait().await;
}

async fn wait_for_port(port: u16, limit: Duration) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("nothing listens on port {port} after {limit:?}").into())
}

/// Calls each function once so they are built and started before the first real request.
async fn warm_up(api: &str) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap_or_default();
    let _ = http.get(format!("{api}/v1/messages/warm-up")).send().await;
    let _ = http.post(format!("{api}/v1/callbacks/warm-up")).send().await;
    for function in ["dispatcher", "events", "deliver", "sweep", "pull"] {
        let _ = http
            .post(format!("{api}/2015-03-31/functions/{function}/invocations"))
            .json(&serde_json::json!({"Records": []}))
            .send()
            .await;
    }
}

/// The local stack's AWS resources, the dev app's credentials and the provider sandbox,
/// as `pushgate dev` and the Lambda benchmark set them up.
pub struct Local {
    pub res: resources::Resources,
    pub templates_table: String,
    pub routes_table: String,
    pub secret_arn: String,
    pub email_from: String,
    pub app_key: String,
    pub app_secret: String,
    pub webhook_secret: String,
    pub callback_token: String,
    /// The app's own callback token: its Aliyun/Tencent callback URLs and WeChat server token.
    pub app_callback_token: String,
    pub fakes: crate::fakes::Fakes,
    pub smtp: crate::fakes::smtp::SmtpFake,
}

/// Creates the resources of `template.yaml` under `prefix`, the dev app (random
/// credentials) in the service secret, a verified sender, the seeded templates and
/// routes, and starts the provider fakes and SMTP relay on the given addresses.
pub async fn provision(
    sdk: &aws_config::SdkConfig,
    prefix: &str,
    visibility_timeout: u32,
    fakes_addr: SocketAddr,
    smtp_addr: SocketAddr,
    verbose: bool,
) -> Result<Local, BoxError> {
    let res = resources::create(
        sdk,
        prefix,
        &Overrides {
            visibility_timeout: Some(visibility_timeout),
        },
    )
    .await?;
    let app_key = "dev-app".to_string();
    let app_secret = random_token(32);
    let webhook_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(hex::decode(random_token(24))?)
    );
    let callback_token = random_token(16);
    let app_callback_token = random_token(16);
    let email_from = "noreply@pushgate.local".to_string();
    let fakes = if verbose {
        crate::fakes::Fakes::start_verbose(fakes_addr).await?
    } else {
        crate::fakes::Fakes::start(fakes_addr).await?
    };
    let smtp = crate::fakes::smtp::start(smtp_addr).await?;
    let doc = serde_json::json!({
        "apps": [{"key": app_key, "name": "Local development", "secrets": [app_secret], "webhook_secret": webhook_secret,
                  "callback_token": app_callback_token,
                  "providers": crate::fakes::sandbox_accounts(smtp.addr)}],
        "callback_token": callback_token,
    });
    let secret_arn = resources::put_secret(sdk, &format!("{prefix}config"), &doc).await?;
    resources::verify_sender(sdk, &email_from).await?;
    let templates_table = res.tables["TemplatesTable"].clone();
    let seeded = pushgate_shared::templates::seed(
        &aws_sdk_dynamodb::Client::new(sdk),
        &templates_table,
        &std::fs::read_to_string(crate::workspace_root().join("infra/templates.json"))?,
    )
    .await?;
    if verbose {
        println!("pushgate dev: seeded {seeded} templates from infra/templates.json");
    }
    let routes_table = res.tables["RoutesTable"].clone();
    let seeded = pushgate_shared::store::routes::seed(
        &aws_sdk_dynamodb::Client::new(sdk),
        &routes_table,
        &std::fs::read_to_string(crate::workspace_root().join("infra/routes.json"))?,
    )
    .await?;
    if verbose {
        println!("pushgate dev: seeded {seeded} routes from infra/routes.json");
    }
    Ok(Local {
        res,
        templates_table,
        routes_table,
        secret_arn,
        email_from,
        app_key,
        app_secret,
        webhook_secret,
        callback_token,
        app_callback_token,
        fakes,
        smtp,
    })
}

/// The functions' environment (what template.yaml wires on AWS): AWS reached at
/// `endpoint`, the API at `api`.
pub fn function_env(local: &Local, endpoint: &str, api: &str) -> Result<Vec<(&'static str, String)>, BoxError> {
    let Local {
        res,
        templates_table,
        routes_table,
        secret_arn,
        email_from,
        fakes,
        ..
    } = local;
    let endpoints = fakes.endpoints();
    Ok(vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("PUSHGATE_MESSAGES_TABLE", res.messages_table().to_string()),
        ("PUSHGATE_QUEUE_URL", res.send_queue().to_string()),
        ("PUSHGATE_DLQ_URL", res.dead_letter_queue().to_string()),
        ("PUSHGATE_TEMPLATES_TABLE", templates_table.clone()),
        ("PUSHGATE_ROUTES_TABLE", routes_table.clone()),
        ("PUSHGATE_SCHEDULE_GROUP", res.schedule_group().to_string()),
        ("PUSHGATE_SEND_QUEUE_ARN", res.send_queue_arn().to_string()),
        ("PUSHGATE_RECURRING_GROUP_PREFIX", RECURRING_GROUP_PREFIX.into()),
        (
            "PUSHGATE_SCHEDULER_ROLE_ARN",
            crate::resources::LOCAL_SCHEDULER_ROLE_ARN.into(),
        ),
        (
            "PUSHGATE_SCHEDULER_DLQ_ARN",
            res.schedule_dead_letter_queue_arn().to_string(),
        ),
        ("PUSHGATE_ENDPOINTS_TABLE", res.endpoints_table().to_string()),
        ("PUSHGATE_DELIVERY_QUEUE_URL", res.delivery_queue().to_string()),
        // Seeded routes and circuit state take effect at once locally.
        ("PUSHGATE_ROUTES_TTL_SECONDS", "5".into()),
        ("PUSHGATE_SECRET_ID", secret_arn.clone()),
        ("PUSHGATE_EMAIL_FROM", email_from.clone()),
        ("PUSHGATE_WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ("PUSHGATE_PUBLIC_URL", api.to_string()),
        // SES events come through SNS; locally the sandbox signs them with a test key.
        ("PUSHGATE_SNS_TOPIC_ARNS", crate::fakes::sns::TOPIC_ARN.into()),
        (
            "PUSHGATE_SNS_CERTS",
            serde_json::to_string(&crate::fakes::sns::pinned_certs())?,
        ),
        ("PUSHGATE_ALIYUN_SMS_ENDPOINT", endpoints.aliyun_sms.clone()),
        ("PUSHGATE_TENCENT_SMS_ENDPOINT", endpoints.tencent_sms.clone()),
        ("PUSHGATE_TWILIO_ENDPOINT", endpoints.twilio.clone()),
        ("PUSHGATE_DINGTALK_ENDPOINT", endpoints.dingtalk.clone()),
        ("PUSHGATE_WECOM_ENDPOINT", endpoints.wecom.clone()),
        ("PUSHGATE_FEISHU_ENDPOINT", endpoints.feishu.clone()),
        ("PUSHGATE_WECHAT_ENDPOINT", endpoints.wechat.clone()),
        ("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())),
    ])
}
