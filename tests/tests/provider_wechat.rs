//! The WeChat template-message provider against the fake WeChat API, with its access
//! token cached centrally in the (moto) messages table: one token request however many
//! instances send, none on a warm instance, one forced refresh and one retry on `40001`,
//! and every documented error classified.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use pushgate_shared::apps::AppConfig;
use pushgate_shared::delivery::{ErrorClass, ProviderError};
use pushgate_shared::message::{Channel, Content, Message, WechatTemplate};
use pushgate_shared::providers::wechat::{Wechat, TOKEN_PK_PREFIX};
use pushgate_shared::providers::{http_client, Provider};
use pushgate_tests::*;
use pushgate_tool::fakes::{wechat as fake, Fakes, Recorded};
use serde_json::json;

struct Env {
    stack: Stack,
    fakes: Fakes,
}

async fn env() -> Env {
    let stack = Stack::new().await;
    let fakes = Fakes::start("127.0.0.1:0".parse().unwrap()).await.expect("fakes");
    Env { stack, fakes }
}

impl Env {
    /// A provider as one Lambda instance holds it, counting its DynamoDB calls.
    fn instance(&self) -> (Wechat, CallCounter) {
        self.instance_at(self.fakes.endpoints().wechat, Duration::from_secs(5))
    }

    fn instance_at(&self, endpoint: String, timeout: Duration) -> (Wechat, CallCounter) {
        let calls = CallCounter::default();
        let ddb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&self.stack.sdk)
                .interceptor(calls.clone())
                .build(),
        );
        let http = http_client(timeout).expect("http client");
        let wechat = Wechat::new(
            http,
            endpoint,
            ddb,
            self.stack.res.messages_table().to_string(),
            pushgate_shared::clock::system(),
            timeout,
        );
        (wechat, calls)
    }

    fn token_requests(&self) -> Vec<Recorded> {
        self.recorded("stable_token")
    }

    fn sends(&self) -> Vec<Recorded> {
        self.recorded("send")
    }

    fn recorded(&self, action: &str) -> Vec<Recorded> {
        self.fakes
            .log
            .of("wechat")
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }

    fn ddb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.stack.sdk)
    }

    /// The central token item of `appid`.
    async fn token_item(&self, appid: &str) -> Option<HashMap<String, AttributeValue>> {
        self.ddb()
            .get_item()
            .table_name(self.stack.res.messages_table())
            .key("pk", AttributeValue::S(format!("{TOKEN_PK_PREFIX}{appid}")))
            .consistent_read(true)
            .send()
            .await
            .expect("get token item")
            .item
    }

    async fn stored_token(&self) -> String {
        let item = self.token_item(fake::APPID).await.expect("token item");
        item.get("access_token")
            .and_then(|v| v.as_s().ok())
            .expect("access_token")
            .clone()
    }

    /// Writes the token item as another instance would have left it.
    async fn plant(&self, attrs: &[(&str, AttributeValue)]) {
        let mut req = self
            .ddb()
            .put_item()
            .table_name(self.stack.res.messages_table())
            .item("pk", AttributeValue::S(format!("{TOKEN_PK_PREFIX}{}", fake::APPID)));
        for (k, v) in attrs {
            req = req.item(*k, v.clone());
        }
        req.send().await.expect("plant token item");
    }

    /// A token straight from the fake, as another instance would have fetched it.
    async fn fetch_token(&self) -> String {
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/cgi-bin/stable_token", self.fakes.endpoints().wechat))
            .json(&json!({"grant_type": "client_credential", "appid": fake::APPID, "secret": fake::SECRET}))
            .send()
            .await
            .expect("stable_token")
            .json()
            .await
            .expect("json");
        answer["access_token"].as_str().expect("token").to_string()
    }
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn now_ms() -> i64 {
    pushgate_shared::clock::now_ms()
}

fn app_with(appid: &str, secret: &str) -> AppConfig {
    serde_json::from_value(json!({
        "key": APP,
        "secrets": APP_SECRETS,
        "providers": {"wechat": {"appid": appid, "secret": secret}},
    }))
    .expect("app config")
}

fn app() -> AppConfig {
    app_with(fake::APPID, fake::SECRET)
}

fn template(template_id: &str) -> Content {
    Content {
        wechat: Some(WechatTemplate {
            template_id: template_id.into(),
            data: [
                ("first".to_string(), "Your order shipped".to_string()),
                ("keyword1".to_string(), "A-1001".to_string()),
            ]
            .into(),
            url: Some("https://shop.example/orders/A-1001".into()),
        }),
        ..Content::default()
    }
}

fn msg(to: &str) -> Message {
    message(Channel::Wechat, to, template("tpl_order_shipped"))
}

#[tokio::test]
async fn a_template_send_returns_the_msgid_with_the_documented_body() {
    let env = env().await;
    let (wechat, _) = env.instance();
    assert_eq!(wechat.name(), "wechat");
    assert_eq!(wechat.channel(), Channel::Wechat);
    assert_eq!(wechat.on_ambiguous(), pushgate_shared::delivery::Ambiguity::MarkUnknown);

    let sent = wechat.send(&msg("oUser_1"), &app()).await.expect("sent");
    assert!(!sent.delivered, "the TEMPLATESENDJOBFINISH receipt settles delivery");
    let msgid = sent.provider_message_id.expect("msgid");
    assert!(msgid.parse::<u64>().is_ok(), "{msgid}");

    let tokens = env.token_requests();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].verified);
    assert_eq!(tokens[0].body["force_refresh"], false);
    let sends = env.sends();
    assert_eq!(sends.len(), 1);
    assert!(sends[0].verified, "sent with the issued token");
    assert_eq!(sends[0].to, "oUser_1");
    assert_eq!(
        sends[0].body,
        json!({
            "touser": "oUser_1",
            "template_id": "tpl_order_shipped",
            "url": "https://shop.example/orders/A-1001",
            "data": {"first": {"value": "Your order shipped"}, "keyword1": {"value": "A-1001"}},
        })
    );

    // The central item: a 512-character token with its schedule, no lock left behind,
    // nothing that makes it look like a message.
    let item = env.token_item(fake::APPID).await.expect("token item");
    let token = item["access_token"].as_s().unwrap();
    assert!(token.len() >= 512);
    let num = |k: &str| item[k].as_n().unwrap().parse::<i64>().unwrap();
    let now = now_ms();
    assert!(num("token_expires_at") > now + 7_000_000);
    assert!(num("refresh_at") < num("token_expires_at") - 250_000);
    assert!(
        num("expires_at") > num("token_expires_at") / 1000,
        "TTL after the token's end"
    );
    for absent in ["lock_owner", "lock_until", "id", "status"] {
        assert!(!item.contains_key(absent), "{absent} on the token item");
    }
}

#[tokio::test]
async fn a_warm_instance_sends_without_any_dynamodb_call() {
    let env = env().await;
    let (wechat, calls) = env.instance();
    wechat.send(&msg("oUser_1"), &app()).await.expect("first send");
    calls.reset();
    for i in 0..5 {
        wechat.send(&msg(&format!("oUser_{i}")), &app()).await.expect("send");
    }
    assert_eq!(
        calls.snapshot(),
        Default::default(),
        "steady state reads the in-memory copy"
    );
    assert_eq!(env.token_requests().len(), 1);
    assert_eq!(env.sends().len(), 6);
}

#[tokio::test]
async fn many_instances_share_one_token_request() {
    let env = env().await;
    let instances: Vec<Arc<Wechat>> = (0..5).map(|_| Arc::new(env.instance().0)).collect();
    let app = Arc::new(app());
    let sends = (0..20).map(|i| {
        let wechat = instances[i % instances.len()].clone();
        let app = app.clone();
        async move { wechat.send(&msg(&format!("oUser_{i}")), &app).await }
    });
    for result in futures::future::join_all(sends).await {
        result.expect("concurrent send");
    }
    assert_eq!(
        env.token_requests().len(),
        1,
        "one refresher, the others waited for its token"
    );
    assert_eq!(env.sends().iter().filter(|r| r.verified).count(), 20);

    // A new instance (a cold Lambda) takes the stored token: one conditional write that
    // fails and returns the item, no token request.
    let (cold, calls) = env.instance();
    for i in 0..5 {
        cold.send(&msg(&format!("oLater_{i}")), &app).await.expect("send");
    }
    assert_eq!(env.token_requests().len(), 1, "the stored token was reused");
    let snapshot = calls.snapshot();
    assert_eq!(snapshot.values().sum::<usize>(), 1, "{snapshot:?}");
    assert_eq!(env.sends().iter().filter(|r| r.verified).count(), 25);
}

#[tokio::test]
async fn a_rejected_token_is_force_refreshed_and_the_send_retried_once() {
    let env = env().await;
    let (wechat, _) = env.instance();
    wechat.send(&msg("oUser_1"), &app()).await.expect("warm up");
    let before = env.stored_token().await;

    // The fake revokes every token and answers 40001 once.
    let sent = wechat
        .send(&msg(fake::OPENID_REVOKE_TOKENS), &app())
        .await
        .expect("sent after refresh");
    assert!(sent.provider_message_id.is_some());
    let tokens = env.token_requests();
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        tokens[1].body["force_refresh"], true,
        "a rejected token needs a forced refresh"
    );
    let attempts: Vec<_> = env
        .sends()
        .into_iter()
        .filter(|r| r.to == fake::OPENID_REVOKE_TOKENS)
        .collect();
    assert_eq!(attempts.len(), 2, "one retry");
    let after = env.stored_token().await;
    assert_ne!(before, after, "the new token is stored centrally");

    // Another instance holding the old token in memory would get 40001 too; here a new
    // instance simply reads the refreshed token: no further token request.
    let (other, _) = env.instance();
    other.send(&msg("oUser_2"), &app()).await.expect("send");
    assert_eq!(env.token_requests().len(), 2);
}

#[tokio::test]
async fn a_token_rejected_again_after_the_refresh_is_permanent() {
    let env = env().await;
    let (wechat, _) = env.instance();
    let e = wechat
        .send(&msg(fake::OPENID_ALWAYS_40001), &app())
        .await
        .expect_err("40001 twice");
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "40001"), "{e}");
    assert_eq!(env.sends().len(), 2, "exactly one retry");
    let tokens = env.token_requests();
    assert_eq!(tokens.len(), 2, "the first token and one forced refresh");
    assert_eq!(tokens[1].body["force_refresh"], true);
}

#[tokio::test]
async fn errors_are_classified() {
    let env = env().await;
    let mut errors: Vec<ProviderError> = Vec::new();

    // Credentials are checked when the token is fetched (first, while none is stored).
    let (wrong, _) = env.instance();
    let e = wrong
        .send(&msg("oUser_1"), &app_with(fake::APPID, "not-the-secret"))
        .await
        .expect_err("bad secret");
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "token_40125"),
        "{e}"
    );
    assert!(!e.to_string().contains("not-the-secret"));
    errors.push(e);
    let e = wrong
        .send(&msg("oUser_1"), &app_with("wx0000000000000000", fake::SECRET))
        .await
        .expect_err("bad appid");
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "token_40013"),
        "{e}"
    );
    errors.push(e);
    assert!(env.sends().is_empty());

    let (wechat, _) = env.instance();
    let cases = [
        (
            fake::OPENID_NOT_FOLLOWER,
            "tpl_order_shipped",
            ErrorClass::Permanent,
            "43004",
        ),
        (
            fake::OPENID_INVALID,
            "tpl_order_shipped",
            ErrorClass::Permanent,
            "40003",
        ),
        ("oUser_1", fake::TEMPLATE_INVALID, ErrorClass::Permanent, "40037"),
        (fake::OPENID_BUSY, "tpl_order_shipped", ErrorClass::Retryable, "-1"),
        (
            fake::OPENID_DAILY_QUOTA,
            "tpl_order_shipped",
            ErrorClass::Deferrable,
            "45009",
        ),
    ];
    for (to, template_id, class, code) in cases {
        let m = message(Channel::Wechat, to, template(template_id));
        let e = wechat.send(&m, &app()).await.expect_err(to);
        assert_eq!((e.class, e.code.as_str()), (class, code), "{to}: {e}");
        if code == "45009" {
            let after = e.retry_after.expect("a quota answer says when to try again");
            assert!(
                after > Duration::ZERO && after <= Duration::from_secs(3600),
                "{after:?}"
            );
        }
        errors.push(e);
    }

    // A body WeChat would reject (a data value that is not a string cannot be built from
    // the model, so an empty template id stands in): 47003.
    let m = message(Channel::Wechat, "oUser_1", template(""));
    let e = wechat.send(&m, &app()).await.expect_err("bad argument");
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "47003"), "{e}");
    errors.push(e);

    // No account, no content: nothing to send with.
    let no_account: AppConfig = serde_json::from_value(json!({"key": APP, "secrets": APP_SECRETS})).unwrap();
    let e = wechat.send(&msg("oUser_1"), &no_account).await.expect_err("no account");
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Permanent, "no_account"));
    errors.push(e);
    let m = message(Channel::Wechat, "oUser_1", Content::default());
    let e = wechat.send(&m, &app()).await.expect_err("no content");
    assert_eq!(e.class, ErrorClass::Permanent);
    errors.push(e);

    // Nobody listening: certainly not sent.
    let (down, _) = env.instance_at("http://127.0.0.1:1".into(), Duration::from_secs(2));
    let e = down
        .send(&msg("oUser_1"), &app())
        .await
        .expect_err("connection refused");
    assert_eq!(e.class, ErrorClass::Retryable, "{e}");
    errors.push(e);

    let token = env.stored_token().await;
    for e in &errors {
        assert!(!format!("{e} {e:?}").contains(&token[..64]), "token in {e:?}");
    }
}

#[tokio::test]
async fn a_due_token_is_refreshed_early_and_an_item_past_its_ttl_is_ignored() {
    let env = env().await;
    let token = env.fetch_token().await;
    let now = now_ms();
    // Due for its early refresh, still valid for a minute, nobody refreshing.
    env.plant(&[
        ("access_token", s(&token)),
        ("refresh_at", n(now - 1)),
        ("token_expires_at", n(now + 60_000)),
        ("expires_at", n(now / 1000 + 86_400)),
    ])
    .await;
    let (wechat, _) = env.instance();
    wechat.send(&msg("oUser_1"), &app()).await.expect("send");
    let tokens = env.token_requests();
    assert_eq!(tokens.len(), 2, "refreshed early");
    assert_eq!(tokens[1].body["force_refresh"], false, "an early refresh is not forced");
    let item = env.token_item(fake::APPID).await.unwrap();
    let refresh_at: i64 = item["refresh_at"].as_n().unwrap().parse().unwrap();
    assert!(refresh_at > now + 3_600_000, "rescheduled from the new expiry");

    // An item past its TTL counts as absent even though its own fields look fresh
    // (DynamoDB deletes expired items late; moto never does).
    let env = self::env().await;
    let token = env.fetch_token().await;
    let now = now_ms();
    env.plant(&[
        ("access_token", s("a-token-from-yesterday")),
        ("refresh_at", n(now + 3_600_000)),
        ("token_expires_at", n(now + 3_600_000)),
        ("expires_at", n(now / 1000 - 1)),
    ])
    .await;
    let (wechat, _) = env.instance();
    wechat.send(&msg("oUser_1"), &app()).await.expect("send");
    assert_eq!(env.token_requests().len(), 2, "fetched anew");
    assert!(env.sends().iter().all(|r| r.verified));
    assert_eq!(
        env.stored_token().await,
        token,
        "normal mode hands out the current token"
    );
}

#[tokio::test]
async fn a_send_waits_for_the_lock_holders_token_instead_of_fetching_one() {
    let env = env().await;
    let now = now_ms();
    env.plant(&[
        ("lock_owner", s("another-instance")),
        ("lock_until", n(now + 4_000)),
        ("expires_at", n(now / 1000 + 86_400)),
    ])
    .await;
    let (wechat, _) = env.instance();
    let started = Instant::now();
    let send = tokio::spawn(async move { wechat.send(&msg("oUser_1"), &app()).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!send.is_finished(), "waiting for the holder");
    // The holder finishes: its token lands in the item and the lock goes.
    let token = env.fetch_token().await;
    let now = now_ms();
    env.plant(&[
        ("access_token", s(&token)),
        ("refresh_at", n(now + 6_900_000)),
        ("token_expires_at", n(now + 7_200_000)),
        ("expires_at", n(now / 1000 + 2 * 86_400)),
    ])
    .await;
    send.await.unwrap().expect("sent with the holder's token");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(env.token_requests().len(), 1, "only the holder asked WeChat");
    assert!(env.sends()[0].verified);
}

#[tokio::test]
async fn a_dead_lock_holder_is_overtaken_once_its_lock_expires() {
    let env = env().await;
    let now = now_ms();
    env.plant(&[
        ("lock_owner", s("crashed-instance")),
        ("lock_until", n(now + 1_000)),
        ("expires_at", n(now / 1000 + 86_400)),
    ])
    .await;
    let (wechat, _) = env.instance();
    let started = Instant::now();
    wechat.send(&msg("oUser_1"), &app()).await.expect("send");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(env.token_requests().len(), 1);
    let item = env.token_item(fake::APPID).await.unwrap();
    assert!(!item.contains_key("lock_owner"), "released after the refresh");
}

/// A WeChat stand-in whose token is known, to prove it leaks into no error: a send that
/// times out (reqwest errors carry the URL, and the URL carries the token), an error
/// message echoing the token, and an unreadable answer containing it.
#[tokio::test]
async fn the_token_never_appears_in_an_error() {
    use axum::routing::post;
    const TOKEN_LEN: usize = 600;
    let token: String = "AbC-123_".repeat(TOKEN_LEN / 8);
    let t = token.clone();
    let router = axum::Router::new()
        .route(
            "/cgi-bin/stable_token",
            post(move || {
                let t = t.clone();
                async move { axum::Json(json!({"access_token": t, "expires_in": 7200})) }
            }),
        )
        .route(
            "/cgi-bin/message/template/send",
            post(
                |axum::extract::RawQuery(q): axum::extract::RawQuery, body: axum::body::Bytes| async move {
                    let q = q.unwrap_or_default();
                    let to = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["touser"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    match to.as_str() {
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            String::new()
                        }
                        "echo" => json!({"errcode": 48001, "errmsg": format!("api unauthorized for {q}")}).to_string(),
                        "stale" => json!({"errcode": 40001, "errmsg": format!("invalid credential {q}")}).to_string(),
                        _ => format!("<html>{q}</html>"),
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let env = env().await;
    let (wechat, _) = env.instance_at(format!("http://{addr}"), Duration::from_millis(500));
    let expect = [
        ("slow", ErrorClass::Ambiguous),
        ("echo", ErrorClass::Permanent),
        ("stale", ErrorClass::Permanent),
        ("garbage", ErrorClass::Ambiguous),
    ];
    for (to, class) in expect {
        let e = wechat.send(&msg(to), &app()).await.expect_err(to);
        assert_eq!(e.class, class, "{to}: {e}");
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&token[..32]), "{to}: token in {text}");
    }
}

/// The access-token wait counts against the provider timeout: a send behind another
/// instance's (live) refresh lock ends within the timeout, retryable, never at the
/// token wait's own longer limit.
#[tokio::test]
async fn the_token_wait_ends_within_the_provider_timeout() {
    let env = env().await;
    let now = now_ms();
    env.plant(&[
        ("lock_owner", s("another-instance")),
        ("lock_until", n(now + 20_000)),
        ("expires_at", n(now / 1000 + 86_400)),
    ])
    .await;
    let timeout = Duration::from_millis(700);
    let (wechat, _) = env.instance_at(env.fakes.endpoints().wechat, timeout);
    let started = Instant::now();
    let err = wechat.send(&msg("oUser_1"), &app()).await.unwrap_err();
    assert!(
        started.elapsed() < timeout + Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::Retryable, "token_timeout"),
        "{err}"
    );
    assert!(env.sends().is_empty());
}
