//! The SMTP email provider against the local fake relay: the message as the relay received
//! it (From, To, Subject, text and html alternatives, our Message-ID), connection reuse,
//! and every failure class (transient and throttled replies, rejected mailboxes, bad
//! credentials, refused connections, a reply lost after DATA, a missing account), plus
//! the app's email provider order.

use std::sync::Arc;
use std::time::Duration;

use pushgate_shared::apps::AppConfig;
use pushgate_shared::delivery::{Ambiguity, ErrorClass};
use pushgate_shared::message::{Channel, Content};
use pushgate_shared::providers::smtp::{message_id, Smtp};
use pushgate_shared::providers::{Provider, Providers};
use pushgate_tests::message;
use pushgate_tool::fakes::smtp::{self as fake, SmtpFake};
use serde_json::{json, Value};

const DEFAULT_FROM: &str = "default@pushgate.test";
const APP_FROM: &str = "Alerts <alerts@app.test>";

async fn relay() -> SmtpFake {
    fake::start("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn provider() -> Smtp {
    Smtp::new(DEFAULT_FROM.into(), Duration::from_secs(2), true)
}

fn app(providers: Value, email_from: Option<&str>) -> AppConfig {
    serde_json::from_value(json!({
        "key": "app-one",
        "secrets": ["s"],
        "email_from": email_from,
        "providers": providers,
    }))
    .unwrap()
}

fn account(port: u16, password: &str) -> Value {
    json!({"smtp": {
        "host": "127.0.0.1",
        "port": port,
        "username": fake::USERNAME,
        "password": password,
        "security": "none",
    }})
}

fn app_for(f: &SmtpFake) -> AppConfig {
    app(account(f.addr.port(), fake::PASSWORD), Some(APP_FROM))
}

fn email(to: &str) -> pushgate_shared::message::Message {
    message(
        Channel::Email,
        to,
        Content {
            subject: Some("Your receipt".into()),
            text: Some("Thanks for your order.".into()),
            html: Some("<p>Thanks for your <b>order</b>.</p>".into()),
            ..Content::default()
        },
    )
}

/// The value of a header in a raw message (first occurrence, unfolded).
fn header<'a>(data: &'a str, name: &str) -> Option<&'a str> {
    data.split("\r\n\r\n").next()?.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn sends_text_and_html_with_our_message_id() {
    let f = relay().await;
    let p = provider();
    assert_eq!(
        (p.name(), p.channel(), p.on_ambiguous()),
        ("smtp", Channel::Email, Ambiguity::MarkUnknown)
    );
    let m = email("someone@example.com");
    let sent = p.send(&m, &app_for(&f)).await.unwrap();
    assert_eq!(sent.provider_message_id.as_deref(), Some(message_id(&m.id).as_str()));
    assert_eq!(sent.provider_message_id, Some(format!("<{}@pushgate>", m.id)));
    assert!(!sent.delivered, "a relay accepting the mail is not delivery");

    let mails = f.received();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.authenticated);
    assert_eq!(mail.from, "alerts@app.test");
    assert_eq!(mail.to, vec!["someone@example.com".to_string()]);
    let data = &mail.data;
    assert_eq!(header(data, "From"), Some("Alerts <alerts@app.test>"));
    assert_eq!(header(data, "To"), Some("someone@example.com"));
    assert_eq!(header(data, "Subject"), Some("Your receipt"));
    assert_eq!(
        header(data, "Message-ID"),
        Some(format!("<{}@pushgate>", m.id).as_str())
    );
    assert!(
        header(data, "Content-Type").is_some_and(|v| v.starts_with("multipart/alternative")),
        "{data}"
    );
    assert!(data.contains("Content-Type: text/plain"), "{data}");
    assert!(data.contains("Content-Type: text/html"), "{data}");
    assert!(data.contains("Thanks for your order."), "{data}");
    assert!(data.contains("<p>Thanks for your <b>order</b>.</p>"), "{data}");
}

#[tokio::test]
async fn falls_back_to_the_default_sender_and_sends_text_only() {
    let f = relay().await;
    let app = app(account(f.addr.port(), fake::PASSWORD), None);
    let m = message(
        Channel::Email,
        "someone@example.com",
        Content {
            subject: Some("Plain".into()),
            text: Some("Just text.".into()),
            ..Content::default()
        },
    );
    provider().send(&m, &app).await.unwrap();
    let mails = f.received();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].from, DEFAULT_FROM);
    assert!(header(&mails[0].data, "Content-Type").is_some_and(|v| v.starts_with("text/plain")));
    assert!(!mails[0].data.contains("text/html"));
}

#[tokio::test]
async fn reuses_one_connection_per_account() {
    let f = relay().await;
    let p = provider();
    let app = app_for(&f);
    for i in 0..3 {
        p.send(&email(&format!("user{i}@example.com")), &app).await.unwrap();
    }
    assert_eq!(f.received().len(), 3);
    assert_eq!(f.connections(), 1, "idle connections are reused");
    // A failed transaction gives its connection up; the next send opens a new one.
    let err = p.send(&email(fake::REJECTED_RCPT), &app).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    p.send(&email("after@example.com"), &app).await.unwrap();
    assert_eq!(f.received().len(), 4);
    assert_eq!(f.connections(), 2);
}

#[tokio::test]
async fn a_transient_reply_is_retryable() {
    let f = relay().await;
    let err = provider()
        .send(&email(fake::BUSY_RCPT), &app_for(&f))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Retryable, "{err}");
    assert_eq!(err.code, "smtp_450");
    assert!(err.message.contains("Mailbox busy"), "{err}");
    assert!(f.received().is_empty());
}

#[tokio::test]
async fn a_rate_limit_reply_is_deferrable() {
    let f = relay().await;
    let err = provider()
        .send(&email(fake::THROTTLED_RCPT), &app_for(&f))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Deferrable, "{err}");
    assert_eq!(err.code, "smtp_451");
}

#[tokio::test]
async fn an_unavailable_mailbox_is_permanent() {
    let f = relay().await;
    let err = provider()
        .send(&email(fake::REJECTED_RCPT), &app_for(&f))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{err}");
    assert_eq!(err.code, "smtp_550");
    assert!(f.received().is_empty());
}

#[tokio::test]
async fn a_wrong_password_is_permanent_and_never_shown() {
    let f = relay().await;
    let secret = "not-the-password-42";
    let app = app(account(f.addr.port(), secret), None);
    let err = provider().send(&email("someone@example.com"), &app).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{err}");
    assert_eq!(err.code, "auth_535");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(f.received().is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = app(account(port, fake::PASSWORD), None);
    let err = provider().send(&email("someone@example.com"), &app).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Retryable, "{err}");
    assert_eq!(err.code, "connect");
}

#[tokio::test]
async fn no_reply_after_the_message_is_ambiguous() {
    let f = relay().await;
    let p = Smtp::new(DEFAULT_FROM.into(), Duration::from_millis(300), true);
    let err = p.send(&email(fake::SILENT_RCPT), &app_for(&f)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Ambiguous, "{err}");
    assert_eq!(err.code, "timeout");
    assert_eq!(f.received().len(), 1, "the relay has the message");
}

#[tokio::test]
async fn a_missing_account_or_bad_security_is_permanent() {
    let err = provider()
        .send(&email("someone@example.com"), &app(json!({}), None))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.code.as_str()), (ErrorClass::Permanent, "no_account"));

    let bad = app(json!({"smtp": {"host": "127.0.0.1", "security": "sometimes"}}), None);
    let err = provider().send(&email("someone@example.com"), &bad).await.unwrap_err();
    assert_eq!((err.class, err.code.as_str()), (ErrorClass::Permanent, "bad_config"));
}

#[tokio::test]
async fn the_email_order_picks_smtp_first() {
    let sdk = aws_sdk_sesv2::Config::builder()
        .behavior_version(aws_sdk_sesv2::config::BehaviorVersion::latest())
        .region(aws_sdk_sesv2::config::Region::new("us-east-1"))
        .build();
    let ses = pushgate_shared::providers::ses::Ses::new(
        aws_sdk_sesv2::Client::from_conf(sdk),
        DEFAULT_FROM.into(),
        None,
        Duration::from_secs(2),
    );
    let providers = Providers::new(vec![Arc::new(ses), Arc::new(provider())]);
    let smtp = account(2525, fake::PASSWORD)["smtp"].clone();

    let preferred = app(json!({"email_order": ["smtp", "ses"], "smtp": smtp}), None);
    let chosen = providers.select(Channel::Email, &preferred).unwrap();
    assert_eq!(chosen.name(), "smtp");

    let default_order = app(json!({"smtp": smtp}), None);
    assert_eq!(providers.select(Channel::Email, &default_order).unwrap().name(), "ses");

    let no_account = app(json!({"email_order": ["smtp", "ses"]}), None);
    assert_eq!(providers.select(Channel::Email, &no_account).unwrap().name(), "ses");
}

/// A relay that answers every line (greeting, commands, the message) `delay` late, each
/// reply well inside the provider timeout; `None` accepts and never answers at all.
async fn slow_relay(delay: Option<Duration>) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(delay) = delay else {
                    // Hold the connection open, silent.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    drop(socket);
                    return;
                };
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let mut in_data = false;
                tokio::time::sleep(delay).await;
                let _ = write.write_all(b"220 slow ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = match line.as_str() {
                        "." if in_data => {
                            in_data = false;
                            b"250 queued\r\n"
                        }
                        _ if in_data => continue,
                        l if l.starts_with("EHLO") => b"250 slow\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => b"221 bye\r\n",
                        _ => b"250 ok\r\n",
                    };
                    tokio::time::sleep(delay).await;
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn relay_at(port: u16) -> AppConfig {
    app(
        json!({"smtp": {"host": "127.0.0.1", "port": port, "security": "none"}}),
        None,
    )
}

/// The lease fence allows one provider timeout per send: a relay that answers each step
/// just in time must not stretch the whole conversation past it.
#[tokio::test]
async fn a_slow_relay_cannot_stretch_a_send_past_the_provider_timeout() {
    let timeout = Duration::from_millis(600);
    let port = slow_relay(Some(Duration::from_millis(250))).await;
    let p = Smtp::new(DEFAULT_FROM.into(), timeout, true);
    let started = std::time::Instant::now();
    let err = p
        .send(&email("someone@example.com"), &relay_at(port))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_millis(200), "took {took:?}");
    // The time ran out before the message: nothing can have been accepted.
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::Retryable, "timeout"),
        "{err}"
    );
}

#[tokio::test]
async fn a_relay_that_accepts_and_never_answers_ends_within_the_provider_timeout() {
    let timeout = Duration::from_millis(400);
    let port = slow_relay(None).await;
    let p = Smtp::new(DEFAULT_FROM.into(), timeout, true);
    let started = std::time::Instant::now();
    let err = p
        .send(&email("someone@example.com"), &relay_at(port))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_millis(200), "took {took:?}");
    assert_eq!(err.class, ErrorClass::Retryable, "{err}");
}

/// The relay is the tenant's choice: it passes the outbound-address guard like a webhook
/// target, so a private or loopback relay is refused (before any connection) unless the
/// service allows private targets.
#[tokio::test]
async fn a_relay_on_a_private_address_is_refused() {
    let f = relay().await;
    let guarded = Smtp::new(DEFAULT_FROM.into(), Duration::from_secs(2), false);
    for host in ["127.0.0.1", "localhost"] {
        let mut app = app_for(&f);
        app.providers.smtp.as_mut().unwrap().host = host.into();
        let err = guarded.send(&email("someone@example.com"), &app).await.unwrap_err();
        assert_eq!(
            (err.class, err.code.as_str()),
            (ErrorClass::Permanent, "target_not_allowed"),
            "{host}: {err}"
        );
    }
    assert_eq!(f.connections(), 0, "never connected");
}
