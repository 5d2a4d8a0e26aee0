//! `pushgate`: run the local stack, send and inspect signed messages, re-sign events.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pushgate_tool::client::ApiClient;
use pushgate_tool::BoxError;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "pushgate", version, about = "Pushgate developer tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline locally (moto, functions, poller, webhook receiver).
    Dev(DevArgs),
    /// Send a signed message (POST /v1/messages).
    Send(SendArgs),
    /// Send one message to every recipient of a CSV file (POST /v1/messages/batch);
    /// with --wait, a progress bar until every message settles.
    Batch(BatchArgs),
    /// Show a message's status (GET /v1/messages/{id}).
    Status {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a scheduled or not yet sent message (DELETE /v1/messages/{id}).
    Cancel { id: String },
    /// The app's status-event endpoints (signed /v1/endpoints calls).
    Endpoints {
        #[command(subcommand)]
        command: EndpointsCommand,
    },
    /// Recurring sends: create, list, show or delete the app's schedules (/v1/schedules).
    Schedules {
        #[command(subcommand)]
        command: SchedulesCommand,
    },
    /// Print the authentication headers for a request.
    Sign {
        #[arg(long, default_value = "POST")]
        method: String,
        #[arg(long, default_value = "/v1/messages")]
        path: String,
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// The Idempotency-Key the request will carry: v2 signs it too (and prints it).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Sign with the older v1 scheme, which does not cover Idempotency-Key.
        #[arg(long)]
        v1: bool,
    },
    /// Templates: preview a rendering, or seed the templates table from the repo's file.
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// The dead-letter queue (uses the AWS environment and PUSHGATE_DLQ_URL,
    /// PUSHGATE_QUEUE_URL, PUSHGATE_MESSAGES_TABLE; `.pushgate/dev.env` sets them locally).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Routing rules: check a routes file, or seed the routes table from it.
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// An app's balance of messages (metered apps, `limits.balance`); uses the AWS
    /// environment and PUSHGATE_MESSAGES_TABLE.
    Quota {
        #[command(subcommand)]
        command: QuotaCommand,
    },
    /// Benchmark the release binaries as Lambda runs them (Runtime API stand-in, moto
    /// behind a call-counting proxy); prints figures.
    BenchLambda(BenchArgs),
    /// Sample events for `cargo lambda invoke` / `sam local invoke`.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

/// `dev`'s ports and options.
#[derive(Args)]
struct DevArgs {
    #[arg(long, env = "PUSHGATE_MOTO_PORT", default_value_t = 4566)]
    moto_port: u16,
    #[arg(long, env = "PUSHGATE_API_PORT", default_value_t = 9000)]
    api_port: u16,
    #[arg(long, env = "PUSHGATE_RECEIVER_PORT", default_value_t = 9100)]
    receiver_port: u16,
    #[arg(long, env = "PUSHGATE_FAKES_PORT", default_value_t = 9200)]
    fakes_port: u16,
    #[arg(long, env = "PUSHGATE_SMTP_PORT", default_value_t = 2525)]
    smtp_port: u16,
    /// Local queue visibility timeout (seconds): how soon a retry is attempted.
    #[arg(long, default_value_t = 5)]
    visibility_timeout: u32,
    /// Run release builds of the functions.
    #[arg(long)]
    release: bool,
}

/// `bench-lambda`'s options.
#[derive(Args)]
struct BenchArgs {
    /// Messages sent through ingest and the dispatcher (half webhooks, half SMS).
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Directory holding the release binaries (default: the cargo target dir's `release`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run this function under `--wrap` (e.g. a profiler).
    #[arg(long, requires = "wrap")]
    wrap_function: Option<String>,
    /// Command line to run the function under, e.g. "valgrind --tool=callgrind".
    #[arg(long)]
    wrap: Option<String>,
}

/// `send`'s message: recipient, then a template with data or inline content.
#[derive(Args)]
struct SendArgs {
    #[arg(long)]
    to: String,
    #[command(flatten)]
    message: MessageArgs,
}

/// `batch`'s recipients (a CSV file) and the message they all get.
#[derive(Args)]
struct BatchArgs {
    /// CSV with a header row: a `to` column, and any other columns as each recipient's
    /// template data (merged over --data).
    #[arg(long)]
    file: PathBuf,
    #[command(flatten)]
    message: MessageArgs,
}

/// What a message says and how it is sent (shared by `send` and `batch`).
#[derive(Args)]
struct MessageArgs {
    #[arg(long)]
    channel: String,
    /// Template id (with --data), instead of inline content.
    #[arg(long)]
    template: Option<String>,
    /// Template data, a JSON object.
    #[arg(long)]
    data: Option<String>,
    #[arg(long)]
    subject: Option<String>,
    #[arg(long)]
    text: Option<String>,
    #[arg(long)]
    html: Option<String>,
    /// Markdown (chat robots).
    #[arg(long)]
    markdown: Option<String>,
    /// Webhook body, any JSON.
    #[arg(long)]
    body: Option<String>,
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Send at this time (RFC 3339 with an offset, e.g. 2026-01-01T09:00:00+08:00)
    /// instead of now.
    #[arg(long)]
    at: Option<String>,
    /// Poll the status until it settles.
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Render template ID for a channel with --data, as ingest would.
    Render {
        id: String,
        #[arg(long, default_value = "email")]
        channel: String,
        /// Template data, a JSON object.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Template set (JSON).
        #[arg(long, default_value = "infra/templates.json")]
        file: PathBuf,
    },
    /// Write every template of --file to the DynamoDB table (uses the AWS environment,
    /// e.g. AWS_ENDPOINT_URL for the local stack).
    Seed {
        #[arg(long, env = "PUSHGATE_TEMPLATES_TABLE")]
        table: String,
        #[arg(long, default_value = "infra/templates.json")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum EndpointsCommand {
    /// Create an endpoint (prints its secret, shown only once).
    Create {
        #[arg(long)]
        url: String,
        /// Event types, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// What its events carry beyond the status: recipient, content (comma-separated).
        #[arg(long, value_delimiter = ',')]
        include: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List the app's endpoints.
    List,
    /// Show one endpoint.
    Get { id: String },
    /// Change an endpoint: only the options given (`--events ''`: all types;
    /// `--include ''`: nothing beyond the status; `--disabled false` re-enables it).
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        include: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        disabled: Option<bool>,
    },
    /// Delete an endpoint.
    Delete { id: String },
    /// A new secret (the previous one keeps signing for 24 h).
    Rotate { id: String },
    /// The last delivery attempts to an endpoint.
    Attempts { id: String },
    /// Queue the app's kept events since --since (RFC 3339) again for an endpoint.
    Replay {
        id: String,
        #[arg(long)]
        since: String,
    },
}

#[derive(Subcommand)]
enum SchedulesCommand {
    /// Create a recurring schedule (POST /v1/schedules) sending one message per firing;
    /// without --idempotency-key a fresh key is made and printed (pass it again to retry).
    Create(Box<ScheduleArgs>),
    /// List the app's schedules (GET /v1/schedules, every page).
    List,
    /// Show one schedule (GET /v1/schedules/{id}).
    Get { id: String },
    /// Delete a schedule (DELETE /v1/schedules/{id}).
    Delete { id: String },
}

/// `schedules create`: when, and the message each firing sends.
#[derive(Args)]
struct ScheduleArgs {
    /// cron(minutes hours day-of-month month day-of-week year) or rate(value unit).
    #[arg(long)]
    expression: String,
    /// IANA time zone the expression is read in.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// First firing no earlier than this (RFC 3339 with an offset).
    #[arg(long)]
    start: Option<String>,
    /// No firing after this (RFC 3339 with an offset).
    #[arg(long)]
    end: Option<String>,
    #[arg(long)]
    to: String,
    #[command(flatten)]
    message: MessageArgs,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List the dead-lettered messages with their records.
    List,
    /// Queue dead-lettered messages again (a message that was in fact sent is not resent).
    Redrive {
        /// Only this app's messages.
        #[arg(long)]
        app: Option<String>,
        /// Only messages created since this time (RFC 3339, or Unix seconds).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// Parse --file and print each route (nothing written).
    Check {
        #[arg(long, default_value = "infra/routes.json")]
        file: PathBuf,
    },
    /// Write every route of --file to the routes table (uses the AWS environment).
    Seed {
        #[arg(long, env = "PUSHGATE_ROUTES_TABLE")]
        table: String,
        #[arg(long, default_value = "infra/routes.json")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum QuotaCommand {
    /// Print the app's balance.
    Show {
        #[arg(long)]
        app: String,
    },
    /// Set the app's balance to N messages.
    Set {
        #[arg(long)]
        app: String,
        units: i64,
    },
    /// Add N messages to the app's balance (negative to take away).
    Add {
        #[arg(long)]
        app: String,
        #[arg(allow_hyphen_values = true)]
        units: i64,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Re-sign the signed samples with the current time and PUSHGATE_APP_KEY/SECRET.
    Resign {
        #[arg(long, default_value = "events")]
        dir: PathBuf,
    },
}

fn parse_json(what: &str, text: &str) -> Result<Value, BoxError> {
    serde_json::from_str(text).map_err(|e| format!("--{what} is not valid JSON: {e}").into())
}

/// `later`: how long before the message is due (a scheduled send), added to the wait.
async fn show_status(client: &ApiClient, id: &str, wait: bool, later: Duration) -> Result<bool, BoxError> {
    let deadline = tokio::time::Instant::now() + later + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let resp = client.status(id).await?;
        if resp.status != 200 {
            println!("{}", serde_json::to_string_pretty(&resp.body)?);
            return Ok(false);
        }
        let status = resp.body["status"].as_str().unwrap_or_default().to_string();
        if status != last {
            println!("status: {status}");
            last = status.clone();
        }
        let settled = matches!(status.as_str(), "delivered" | "failed" | "cancelled" | "unknown");
        if !wait || settled || tokio::time::Instant::now() > deadline {
            println!("{}", serde_json::to_string_pretty(&resp.body)?);
            return Ok(status == "delivered" || !wait);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `pushgate endpoints …`: one signed call; prints the status and the answer.
async fn endpoints(command: EndpointsCommand) -> Result<bool, BoxError> {
    use pushgate_tool::client::EndpointsCall;
    // `--events ''` / `--include ''` arrive as one empty item: none.
    let list = |l: Option<Vec<String>>| l.map(|l| l.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>());
    let call = match command {
        EndpointsCommand::Create {
            url,
            events,
            include,
            description,
        } => EndpointsCall::Create {
            url,
            events: list(events),
            include: list(include),
            description,
        },
        EndpointsCommand::List => EndpointsCall::List,
        EndpointsCommand::Get { id } => EndpointsCall::Get(id),
        EndpointsCommand::Update {
            id,
            url,
            events,
            include,
            description,
            disabled,
        } => EndpointsCall::Update {
            id,
            url,
            events: list(events),
            include: list(include),
            description,
            disabled,
        },
        EndpointsCommand::Delete { id } => EndpointsCall::Delete(id),
        EndpointsCommand::Rotate { id } => EndpointsCall::Rotate(id),
        EndpointsCommand::Attempts { id } => EndpointsCall::Attempts(id),
        EndpointsCommand::Replay { id, since } => EndpointsCall::Replay { id, since },
    };
    let resp = ApiClient::from_env()?.endpoints(&call).await?;
    println!("HTTP {}", resp.status);
    if !resp.body.is_null() && resp.body != Value::String(String::new()) {
        println!("{}", serde_json::to_string_pretty(&resp.body)?);
    }
    Ok((200..300).contains(&resp.status))
}

async fn run(cli: Cli) -> Result<bool, BoxError> {
    match cli.command {
        Command::Dev(args) => dev(args).await,
        Command::Send(args) => send(args).await,
        Command::Batch(args) => batch(args).await,
        Command::Status { id, wait } => show_status(&ApiClient::from_env()?, &id, wait, Duration::ZERO).await,
        Command::Cancel { id } => {
            let resp = ApiClient::from_env()?.cancel(&id).await?;
            println!("HTTP {}", resp.status);
            println!("{}", serde_json::to_string_pretty(&resp.body)?);
            Ok(resp.status == 200)
        }
        Command::Endpoints { command } => endpoints(command).await,
        Command::Schedules { command } => schedules(command).await,
        Command::Sign {
            method,
            path,
            body,
            body_file,
            idempotency_key,
            v1,
        } => sign(&method, &path, body, body_file, idempotency_key.as_deref(), v1),
        Command::Template { command } => template(command).await,
        Command::Dlq { command } => dlq(command).await,
        Command::Routes { command } => routes(command).await,
        Command::Quota { command } => quota(command).await,
        Command::Events {
            command: EventsCommand::Resign { dir },
        } => resign(&dir),
        Command::BenchLambda(args) => bench_lambda(args).await,
    }
}

/// `dev`: runs the local stack until interrupted.
async fn dev(args: DevArgs) -> Result<bool, BoxError> {
    pushgate_tool::dev::run(pushgate_tool::dev::Options {
        moto_port: args.moto_port,
        api_port: args.api_port,
        receiver_port: args.receiver_port,
        fakes_port: args.fakes_port,
        smtp_port: args.smtp_port,
        visibility_timeout: args.visibility_timeout,
        release: args.release,
    })
    .await?;
    Ok(true)
}

/// `bench-lambda`: runs the benchmark of the release binaries.
async fn bench_lambda(args: BenchArgs) -> Result<bool, BoxError> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| pushgate_tool::workspace_root().join("target"));
    pushgate_tool::lambda_bench::run(pushgate_tool::lambda_bench::Options {
        messages: args.messages,
        bin_dir: args.bin_dir.unwrap_or_else(|| target.join("release")),
        wrap: args
            .wrap_function
            .zip(args.wrap)
            .map(|(f, w)| (f, w.split_whitespace().map(String::from).collect())),
        log_dir: pushgate_tool::workspace_root().join(".pushgate/bench"),
    })
    .await?;
    Ok(true)
}

/// The message `send` posts: a template with its data, or inline content.
fn message(args: &MessageArgs) -> Result<Value, BoxError> {
    let mut message = json!({"channel": args.channel});
    if let Some(t) = &args.template {
        message["template"] = json!(t);
        message["data"] = args
            .data
            .as_deref()
            .map(|d| parse_json("data", d))
            .transpose()?
            .unwrap_or_else(|| json!({}));
    } else {
        let mut content = json!({});
        for (k, v) in [
            ("subject", &args.subject),
            ("text", &args.text),
            ("html", &args.html),
            ("markdown", &args.markdown),
        ] {
            if let Some(v) = v {
                content[k] = json!(v);
            }
        }
        if let Some(b) = &args.body {
            content["body"] = parse_json("body", b)?;
        }
        message["content"] = content;
    }
    if let Some(at) = &args.at {
        message["send_at"] = Value::String(at.clone());
    }
    Ok(message)
}

/// `schedules`: the recurring-send routes, signed.
async fn schedules(command: SchedulesCommand) -> Result<bool, BoxError> {
    let client = ApiClient::from_env()?;
    let (resp, ok) = match command {
        SchedulesCommand::Create(args) => {
            if args.message.at.is_some() || args.message.wait {
                return Err("--at and --wait do not apply to a schedule: --expression says when".into());
            }
            let mut message = message(&args.message)?;
            message["to"] = json!(args.to);
            let mut body = json!({"expression": args.expression, "timezone": args.timezone, "message": message});
            for (k, v) in [("start", &args.start), ("end", &args.end)] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            let key = args
                .message
                .idempotency_key
                .clone()
                .unwrap_or_else(|| format!("schedule-{}", ulid::Ulid::new()));
            println!("Idempotency-Key: {key}");
            let resp = client
                .request("POST", "/v1/schedules", Some(&body), &[("Idempotency-Key", &key)])
                .await?;
            let ok = resp.status == 201;
            (resp, ok)
        }
        SchedulesCommand::List => {
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/v1/schedules?cursor={c}"),
                    None => "/v1/schedules".to_string(),
                };
                let resp = client.request("GET", &path, None, &[]).await?;
                if resp.status != 200 {
                    println!("HTTP {}", resp.status);
                    println!("{}", serde_json::to_string_pretty(&resp.body)?);
                    return Ok(false);
                }
                all.extend(resp.body["schedules"].as_array().cloned().unwrap_or_default());
                match resp.body["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            println!("{}", serde_json::to_string_pretty(&json!({"schedules": all}))?);
            return Ok(true);
        }
        SchedulesCommand::Get { id } => {
            let resp = client.request("GET", &format!("/v1/schedules/{id}"), None, &[]).await?;
            let ok = resp.status == 200;
            (resp, ok)
        }
        SchedulesCommand::Delete { id } => {
            let resp = client
                .request("DELETE", &format!("/v1/schedules/{id}"), None, &[])
                .await?;
            let ok = resp.status == 200;
            (resp, ok)
        }
    };
    println!("HTTP {}", resp.status);
    println!("{}", serde_json::to_string_pretty(&resp.body)?);
    Ok(ok)
}

/// `send`: posts the message; with `--wait`, follows its status until it settles.
/// The API client is made first so a missing environment is reported before a bad flag.
async fn send(args: SendArgs) -> Result<bool, BoxError> {
    let client = ApiClient::from_env()?;
    let mut message = message(&args.message)?;
    message["to"] = json!(args.to);
    let args = args.message;
    let resp = client.send(&message, args.idempotency_key.as_deref()).await?;
    println!("HTTP {}", resp.status);
    println!("{}", serde_json::to_string_pretty(&resp.body)?);
    if resp.status != 202 {
        return Ok(false);
    }
    let later = args
        .at
        .as_deref()
        .and_then(pushgate_shared::schedule::parse_send_at)
        .map_or(Duration::ZERO, |at| {
            Duration::from_millis((at - pushgate_shared::clock::now_ms()).max(0) as u64)
        });
    match resp.body["id"].as_str() {
        Some(id) if args.wait => show_status(&client, id, true, later).await,
        _ => Ok(true),
    }
}

/// `batch`: the CSV's recipients in one signed `POST /v1/messages/batch`; with
/// `--wait`, follows `GET /v1/batches/{id}` with a progress bar until every message has
/// settled.
async fn batch(args: BatchArgs) -> Result<bool, BoxError> {
    let client = ApiClient::from_env()?;
    let mut body = message(&args.message)?;
    let mut reader = csv::Reader::from_path(&args.file)?;
    let headers = reader.headers()?.clone();
    let to_column = headers
        .iter()
        .position(|h| h == "to")
        .ok_or("the CSV needs a `to` column")?;
    let mut recipients = Vec::new();
    for row in reader.records() {
        let row = row?;
        let mut recipient = json!({"to": row.get(to_column).unwrap_or_default()});
        let data: serde_json::Map<String, Value> = headers
            .iter()
            .zip(row.iter())
            .filter(|(h, _)| *h != "to")
            .map(|(h, v)| (h.to_string(), json!(v)))
            .collect();
        if !data.is_empty() && args.message.template.is_some() {
            recipient["data"] = Value::Object(data);
        }
        recipients.push(recipient);
    }
    body["recipients"] = Value::Array(recipients);
    // A batch needs a key; without one given, a fresh one (printed, so a retry of this
    // same batch can pass it with --idempotency-key).
    let key = args
        .message
        .idempotency_key
        .clone()
        .unwrap_or_else(|| format!("batch-{}", ulid::Ulid::new()));
    println!("Idempotency-Key: {key}");
    let extra = [("Idempotency-Key", key.as_str())];
    let resp = client
        .request("POST", "/v1/messages/batch", Some(&body), &extra)
        .await?;
    println!("HTTP {}", resp.status);
    println!("{}", serde_json::to_string_pretty(&resp.body)?);
    let (202, Some(id)) = (resp.status, resp.body["id"].as_str()) else {
        return Ok(false);
    };
    if !args.message.wait {
        return Ok(true);
    }
    let accepted = resp.body["accepted"].as_u64().unwrap_or(0);
    let bar = indicatif::ProgressBar::new(accepted);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} settled {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let status = client.request("GET", &format!("/v1/batches/{id}"), None, &[]).await?;
        let counts = status.body["counts"].as_object().cloned().unwrap_or_default();
        let waiting: u64 = ["accepted", "scheduled", "sending"]
            .iter()
            .filter_map(|s| counts.get(*s).and_then(Value::as_u64))
            .sum();
        bar.set_position(accepted.saturating_sub(waiting));
        bar.set_message(serde_json::to_string(&counts)?);
        if status.body["status"] == "completed" || tokio::time::Instant::now() > deadline {
            bar.finish();
            println!("{}", serde_json::to_string_pretty(&status.body["counts"])?);
            return Ok(status.body["status"] == "completed");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `sign`: prints the headers a request with this body would carry now (v2 by default,
/// covering `idempotency_key`; `v1` for the older scheme).
fn sign(
    method: &str,
    path: &str,
    body: Option<String>,
    body_file: Option<PathBuf>,
    idempotency_key: Option<&str>,
    v1: bool,
) -> Result<bool, BoxError> {
    let client = ApiClient::from_env()?;
    let bytes = match (body, body_file) {
        (Some(b), _) => b.into_bytes(),
        (None, Some(f)) => std::fs::read(f)?,
        (None, None) => Vec::new(),
    };
    let ts = pushgate_shared::clock::now_ms() / 1000;
    let version = if v1 {
        pushgate_tool::client::SignatureVersion::V1
    } else {
        pushgate_tool::client::SignatureVersion::V2
    };
    for (k, v) in client.sign_as(version, &method.to_ascii_uppercase(), path, &bytes, ts, idempotency_key) {
        println!("{k}: {v}");
    }
    if let Some(key) = idempotency_key {
        println!("Idempotency-Key: {key}");
    }
    Ok(true)
}

/// `template render|seed`.
async fn template(command: TemplateCommand) -> Result<bool, BoxError> {
    match command {
        TemplateCommand::Render {
            id,
            channel,
            data,
            file,
        } => render(&id, &channel, &data, &file),
        TemplateCommand::Seed { table, file } => seed(Seeded::Templates, &table, &file).await,
    }
}

/// `template render`: renders as ingest would; data errors are listed, not fatal.
fn render(id: &str, channel: &str, data: &str, file: &Path) -> Result<bool, BoxError> {
    let templates = pushgate_shared::templates::Templates::parse(&std::fs::read_to_string(file)?)?;
    let channel = pushgate_shared::message::Channel::parse(channel).ok_or("unknown --channel")?;
    let data = match parse_json("data", data)? {
        Value::Object(m) => m,
        _ => return Err("--data must be a JSON object".into()),
    };
    match templates.render(id, channel, &data) {
        Ok(content) => {
            println!("{}", serde_json::to_string_pretty(&content)?);
            Ok(true)
        }
        Err(pushgate_shared::templates::TemplateError::Data(errors)) => {
            for e in errors {
                eprintln!("{}: {}", e.pointer, e.detail);
            }
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The config-as-code tables `template seed` and `routes seed` fill from a file.
#[derive(Clone, Copy)]
enum Seeded {
    Templates,
    Routes,
}

/// `template seed` / `routes seed`: one path, so both report and fail alike.
async fn seed(what: Seeded, table: &str, file: &Path) -> Result<bool, BoxError> {
    let sdk = pushgate_shared::aws::load().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let json = std::fs::read_to_string(file)?;
    let (n, noun) = match what {
        Seeded::Templates => (
            pushgate_shared::templates::seed(&client, table, &json).await?,
            "templates",
        ),
        Seeded::Routes => (
            pushgate_shared::store::routes::seed(&client, table, &json).await?,
            "routes",
        ),
    };
    println!("seeded {n} {noun} into {table}");
    Ok(true)
}

/// `dlq list` / `dlq redrive`, against the queues and table of the environment.
async fn dlq(command: DlqCommand) -> Result<bool, BoxError> {
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set (source .pushgate/dev.env)"));
    let sdk = pushgate_shared::aws::load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlq = pushgate_tool::dlq::Dlq {
        dlq_url: var("PUSHGATE_DLQ_URL")?,
        queue: pushgate_shared::queue::Queue::new(sqs.clone(), var("PUSHGATE_QUEUE_URL")?),
        store: pushgate_shared::store::Store::new(aws_sdk_dynamodb::Client::new(&sdk), var("PUSHGATE_MESSAGES_TABLE")?),
        sqs,
    };
    match command {
        DlqCommand::List => list_dead_letters(&dlq).await?,
        DlqCommand::Redrive { app, since } => redrive(&dlq, app, since).await?,
    }
    Ok(true)
}

/// `dlq list`: one line per dead-lettered message, with its record if there is one.
async fn list_dead_letters(dlq: &pushgate_tool::dlq::Dlq) -> Result<(), BoxError> {
    let letters = dlq.list(30).await?;
    println!("{:<28} {:<16} {:<10} {:>8}  reason", "id", "app", "status", "receives");
    for l in &letters {
        let (id, app, status, reason) = match &l.record {
            Some(m) => (
                m.id.as_str(),
                m.app.as_str(),
                m.status.as_str(),
                m.reason.as_deref().unwrap_or(""),
            ),
            None => (
                l.job.as_ref().map(|j| j.id.as_str()).unwrap_or("?"),
                "?",
                "no record",
                "",
            ),
        };
        println!("{id:<28} {app:<16} {status:<10} {:>8}  {reason}", l.receive_count);
    }
    println!("{} dead-lettered", letters.len());
    Ok(())
}

/// `dlq redrive`: requeues the matching messages with a progress bar.
async fn redrive(dlq: &pushgate_tool::dlq::Dlq, app: Option<String>, since: Option<String>) -> Result<(), BoxError> {
    let since_ms = since.as_deref().map(parse_since).transpose()?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} redriven").map_err(|e| e.to_string())?);
    let report = dlq
        .redrive(&pushgate_tool::dlq::Filter { app, since_ms }, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .await?;
    bar.finish();
    println!(
        "requeued {}, already settled {}, without record {}, skipped {}",
        report.requeued, report.settled, report.orphaned, report.skipped
    );
    Ok(())
}

/// `routes check|seed`.
async fn routes(command: RoutesCommand) -> Result<bool, BoxError> {
    match command {
        RoutesCommand::Check { file } => check_routes(&file),
        RoutesCommand::Seed { table, file } => seed(Seeded::Routes, &table, &file).await,
    }
}

/// `routes check`: parses the file and prints one line per route, writing nothing.
fn check_routes(file: &Path) -> Result<bool, BoxError> {
    let routes = pushgate_shared::routing::Routes::parse(&std::fs::read_to_string(file)?)?;
    for (app, key, route) in routes.iter() {
        let channels: Vec<&str> = route.channels.iter().map(|c| c.as_str()).collect();
        println!(
            "{app}/{key}: channels [{}], {} provider lists, {} rules",
            channels.join(", "),
            route.providers.len(),
            route.rules.len()
        );
    }
    Ok(true)
}

/// `quota show|set|add`: prints the app's balance after the change.
async fn quota(command: QuotaCommand) -> Result<bool, BoxError> {
    let table = std::env::var("PUSHGATE_MESSAGES_TABLE")
        .map_err(|_| "PUSHGATE_MESSAGES_TABLE is not set (source .pushgate/dev.env)")?;
    let sdk = pushgate_shared::aws::load().await;
    let store = pushgate_shared::store::Store::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    let (app, balance) = match command {
        QuotaCommand::Show { app } => {
            let b = store.balance(&app).await?.unwrap_or(0);
            (app, b)
        }
        QuotaCommand::Set { app, units } => {
            store.set_balance(&app, units).await?;
            (app, units)
        }
        QuotaCommand::Add { app, units } => {
            let b = store.add_balance(&app, units).await?;
            (app, b)
        }
    };
    println!("{app}: {balance} messages available");
    Ok(true)
}

/// `events resign`: re-signs the samples in `dir` with the app credentials of the environment.
fn resign(dir: &Path) -> Result<bool, BoxError> {
    let key = std::env::var("PUSHGATE_APP_KEY").map_err(|_| "PUSHGATE_APP_KEY is not set")?;
    let secret = std::env::var("PUSHGATE_APP_SECRET").map_err(|_| "PUSHGATE_APP_SECRET is not set")?;
    let token = std::env::var("PUSHGATE_CALLBACK_TOKEN").ok();
    for f in pushgate_tool::events::resign_dir(dir, &key, &secret, token.as_deref())? {
        println!("re-signed {f}");
    }
    Ok(true)
}

/// `--since`: RFC 3339 or Unix seconds, as Unix milliseconds.
fn parse_since(s: &str) -> Result<i64, BoxError> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs * 1000);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("--since: {e}"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    match run(Cli::parse()).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("pushgate: {e}");
            std::process::exit(2);
        }
    }
}
