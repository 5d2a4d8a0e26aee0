//! The chat-robot providers (DingTalk, WeCom, Feishu) against the local fakes: signatures
//! as the fakes verify them, message shapes (type, mentions, markdown title), and every
//! answer class (throttle and rate limit defer, server errors retry, refused credentials
//! and unknown robots are permanent). WeCom's key never shows in an error.

use std::time::Duration;

use pushgate_shared::apps::AppConfig;
use pushgate_shared::delivery::{Ambiguity, ErrorClass, ProviderError};
use pushgate_shared::message::{Channel, Content, Mentions, Message};
use pushgate_shared::providers::dingtalk::DingTalk;
use pushgate_shared::providers::feishu::Feishu;
use pushgate_shared::providers::wecom::WeCom;
use pushgate_shared::providers::{http_client, Provider};
use pushgate_tests::message;
use pushgate_tool::fakes::{dingtalk as fake_dt, feishu as fake_fs, wecom as fake_wc, Fakes};
use serde_json::json;

async fn fakes() -> Fakes {
    Fakes::start("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn http() -> reqwest::Client {
    http_client(Duration::from_secs(2)).unwrap()
}

/// An app with an "ops" robot of each kind holding the fakes' credentials, and a "bad"
/// robot of each kind with a wrong secret (WeCom: wrong key).
fn app() -> AppConfig {
    serde_json::from_value(json!({
        "key": "app-one",
        "secrets": ["s"],
        "providers": {
            "dingtalk": {
                "ops": {"token": fake_dt::TOKEN, "secret": fake_dt::SECRET},
                "bad": {"token": fake_dt::TOKEN, "secret": "SECwrong"},
            },
            "wecom": {
                "ops": {"token": fake_wc::KEY},
                "bad": {"token": "wrong-wecom-key-0000"},
            },
            "feishu": {
                "ops": {"token": fake_fs::TOKEN, "secret": fake_fs::SECRET},
                "bad": {"token": fake_fs::TOKEN, "secret": "wrong"},
                "unsigned": {"token": fake_fs::TOKEN},
            },
        }
    }))
    .unwrap()
}

fn text(channel: Channel, robot: &str, text: &str) -> Message {
    message(
        channel,
        robot,
        Content {
            text: Some(text.into()),
            ..Content::default()
        },
    )
}

fn with_mentions(channel: Channel, robot: &str, all: bool) -> Message {
    message(
        channel,
        robot,
        Content {
            text: Some("disk full on db-1".into()),
            mentions: Some(Mentions {
                mobiles: vec!["13800000000".into()],
                user_ids: vec!["user1".into()],
                all,
            }),
            ..Content::default()
        },
    )
}

fn markdown(channel: Channel, robot: &str, subject: Option<&str>) -> Message {
    message(
        channel,
        robot,
        Content {
            subject: subject.map(str::to_string),
            markdown: Some("## Deploy finished\n- **api**: ok".into()),
            ..Content::default()
        },
    )
}

fn assert_class(e: &ProviderError, class: ErrorClass, code: &str) {
    assert_eq!((e.class, e.code.as_str()), (class, code), "{e:?}");
}

// ---------------------------------------------------------------- DingTalk

#[tokio::test]
async fn dingtalk_posts_signed_text_with_mentions() {
    let f = fakes().await;
    let p = DingTalk::new(http(), f.endpoints().dingtalk, pushgate_shared::clock::system());
    assert_eq!(
        (p.name(), p.channel(), p.on_ambiguous()),
        ("dingtalk", Channel::Dingtalk, Ambiguity::MarkUnknown)
    );
    let sent = p
        .send(&with_mentions(Channel::Dingtalk, "ops", true), &app())
        .await
        .unwrap();
    assert!(sent.delivered);
    assert_eq!(sent.provider_message_id, None);
    let log = f.log.of("dingtalk");
    assert_eq!(log.len(), 1);
    let r = &log[0];
    assert!(r.verified, "the fake checks timestamp and sign");
    assert_eq!(r.to, fake_dt::TOKEN);
    assert_eq!(r.body["msgtype"], "text");
    assert_eq!(r.body["text"]["content"], "disk full on db-1");
    assert_eq!(
        r.body["at"],
        json!({"atMobiles": ["13800000000"], "atUserIds": ["user1"], "isAtAll": true})
    );
}

#[tokio::test]
async fn dingtalk_markdown_takes_its_title_from_the_subject_or_first_line() {
    let f = fakes().await;
    let p = DingTalk::new(http(), f.endpoints().dingtalk, pushgate_shared::clock::system());
    p.send(&markdown(Channel::Dingtalk, "ops", Some("Release 1.2")), &app())
        .await
        .unwrap();
    p.send(&markdown(Channel::Dingtalk, "ops", None), &app()).await.unwrap();
    let log = f.log.of("dingtalk");
    assert!(log.iter().all(|r| r.verified));
    assert_eq!(log[0].body["msgtype"], "markdown");
    assert_eq!(log[0].body["markdown"]["title"], "Release 1.2");
    assert_eq!(log[0].body["markdown"]["text"], "## Deploy finished\n- **api**: ok");
    assert_eq!(log[1].body["markdown"]["title"], "Deploy finished");
}

#[tokio::test]
async fn dingtalk_throttle_defers_ten_minutes_and_boom_retries() {
    let f = fakes().await;
    let p = DingTalk::new(http(), f.endpoints().dingtalk, pushgate_shared::clock::system());
    let e = p
        .send(
            &text(Channel::Dingtalk, "ops", &format!("x {}", fake_dt::THROTTLE)),
            &app(),
        )
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Deferrable, "130101");
    assert_eq!(e.retry_after, Some(Duration::from_secs(600)));
    let e = p
        .send(&text(Channel::Dingtalk, "ops", &format!("x {}", fake_dt::BOOM)), &app())
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Retryable, "http_500");
}

#[tokio::test]
async fn dingtalk_rate_limit_defers_the_post_over_twenty_a_minute() {
    let f = fakes().await;
    let p = DingTalk::new(http(), f.endpoints().dingtalk, pushgate_shared::clock::system());
    for i in 0..fake_dt::PER_MINUTE {
        p.send(&text(Channel::Dingtalk, "ops", &format!("n{i}")), &app())
            .await
            .unwrap();
    }
    let e = p
        .send(&text(Channel::Dingtalk, "ops", "one too many"), &app())
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Deferrable, "130101");
    assert!(e.retry_after.is_some());
}

#[tokio::test]
async fn dingtalk_wrong_secret_is_refused_and_permanent() {
    let f = fakes().await;
    let p = DingTalk::new(http(), f.endpoints().dingtalk, pushgate_shared::clock::system());
    let e = p.send(&text(Channel::Dingtalk, "bad", "hi"), &app()).await.unwrap_err();
    assert_class(&e, ErrorClass::Permanent, "310000");
    let log = f.log.of("dingtalk");
    assert_eq!(log.len(), 1);
    assert!(!log[0].verified);
}

#[tokio::test]
async fn dingtalk_unknown_robot_is_permanent_without_a_request() {
    let f = fakes().await;
    let p = DingTalk::new(http(), f.endpoints().dingtalk, pushgate_shared::clock::system());
    let e = p
        .send(&text(Channel::Dingtalk, "nope", "hi"), &app())
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Permanent, "unknown_robot");
    assert!(f.log.of("dingtalk").is_empty());
}

// ---------------------------------------------------------------- WeCom

#[tokio::test]
async fn wecom_posts_text_with_mention_lists_and_at_all() {
    let f = fakes().await;
    let p = WeCom::new(http(), f.endpoints().wecom);
    assert_eq!(
        (p.name(), p.channel(), p.on_ambiguous()),
        ("wecom", Channel::Wecom, Ambiguity::MarkUnknown)
    );
    let sent = p
        .send(&with_mentions(Channel::Wecom, "ops", true), &app())
        .await
        .unwrap();
    assert!(sent.delivered);
    let r = &f.log.of("wecom")[0];
    assert!(r.verified);
    assert_eq!(r.to, fake_wc::KEY);
    assert_eq!(
        r.body,
        json!({"msgtype": "text", "text": {
            "content": "disk full on db-1",
            "mentioned_list": ["user1", "@all"],
            "mentioned_mobile_list": ["13800000000"],
        }})
    );
}

#[tokio::test]
async fn wecom_posts_markdown_with_the_subject_as_heading() {
    let f = fakes().await;
    let p = WeCom::new(http(), f.endpoints().wecom);
    p.send(&markdown(Channel::Wecom, "ops", Some("Release 1.2")), &app())
        .await
        .unwrap();
    let r = &f.log.of("wecom")[0];
    assert!(r.verified);
    assert_eq!(r.body["msgtype"], "markdown");
    assert_eq!(
        r.body["markdown"]["content"],
        "# Release 1.2\n## Deploy finished\n- **api**: ok"
    );
}

#[tokio::test]
async fn wecom_throttle_defers_a_minute_and_busy_retries() {
    let f = fakes().await;
    let p = WeCom::new(http(), f.endpoints().wecom);
    let e = p
        .send(
            &text(Channel::Wecom, "ops", &format!("x {}", fake_wc::THROTTLE)),
            &app(),
        )
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Deferrable, "45009");
    assert_eq!(e.retry_after, Some(Duration::from_secs(60)));
    let e = p
        .send(&text(Channel::Wecom, "ops", &format!("x {}", fake_wc::BOOM)), &app())
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Retryable, "-1");
}

#[tokio::test]
async fn wecom_rate_limit_defers_the_post_over_twenty_a_minute() {
    let f = fakes().await;
    let p = WeCom::new(http(), f.endpoints().wecom);
    for i in 0..fake_wc::PER_MINUTE {
        p.send(&text(Channel::Wecom, "ops", &format!("n{i}")), &app())
            .await
            .unwrap();
    }
    let e = p
        .send(&text(Channel::Wecom, "ops", "one too many"), &app())
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Deferrable, "45009");
}

#[tokio::test]
async fn wecom_wrong_key_is_refused_permanent_and_never_shown() {
    let f = fakes().await;
    let p = WeCom::new(http(), f.endpoints().wecom);
    let e = p.send(&text(Channel::Wecom, "bad", "hi"), &app()).await.unwrap_err();
    assert_class(&e, ErrorClass::Permanent, "93000");
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains("wrong-wecom-key-0000"), "{shown}");
    }
    let log = f.log.of("wecom");
    assert_eq!(log.len(), 1);
    assert!(!log[0].verified);
}

#[tokio::test]
async fn wecom_transport_errors_never_contain_the_key() {
    // Refused: nothing listens on a port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = WeCom::new(http(), format!("http://127.0.0.1:{port}"));
    let e = p.send(&text(Channel::Wecom, "ops", "hi"), &app()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Retryable);
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains(fake_wc::KEY), "{shown}");
    }
    // Timed out: a server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let p = WeCom::new(
        http_client(Duration::from_millis(300)).unwrap(),
        format!("http://{addr}"),
    );
    let e = p.send(&text(Channel::Wecom, "ops", "hi"), &app()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Ambiguous);
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains(fake_wc::KEY), "{shown}");
    }
    hold.abort();
}

#[tokio::test]
async fn wecom_unknown_robot_and_oversized_text_are_permanent_without_a_request() {
    let f = fakes().await;
    let p = WeCom::new(http(), f.endpoints().wecom);
    let e = p.send(&text(Channel::Wecom, "nope", "hi"), &app()).await.unwrap_err();
    assert_class(&e, ErrorClass::Permanent, "unknown_robot");
    let e = p
        .send(&text(Channel::Wecom, "ops", &"x".repeat(2049)), &app())
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Permanent, "content_too_long");
    assert!(f.log.of("wecom").is_empty());
}

// ---------------------------------------------------------------- Feishu

#[tokio::test]
async fn feishu_posts_signed_text_with_at_tags() {
    let f = fakes().await;
    let p = Feishu::new(http(), f.endpoints().feishu, pushgate_shared::clock::system());
    assert_eq!(
        (p.name(), p.channel(), p.on_ambiguous()),
        ("feishu", Channel::Feishu, Ambiguity::MarkUnknown)
    );
    let sent = p
        .send(&with_mentions(Channel::Feishu, "ops", true), &app())
        .await
        .unwrap();
    assert!(sent.delivered);
    let r = &f.log.of("feishu")[0];
    assert!(r.verified, "the fake checks timestamp and sign");
    assert_eq!(r.to, fake_fs::TOKEN);
    assert_eq!(r.body["msg_type"], "text");
    assert!(r.body["timestamp"].is_string());
    assert_eq!(
        r.body["content"]["text"],
        "disk full on db-1 <at user_id=\"user1\"></at> <at user_id=\"all\"></at>"
    );
}

#[tokio::test]
async fn feishu_markdown_is_a_post_titled_by_the_subject() {
    let f = fakes().await;
    let p = Feishu::new(http(), f.endpoints().feishu, pushgate_shared::clock::system());
    p.send(&markdown(Channel::Feishu, "ops", Some("Release 1.2")), &app())
        .await
        .unwrap();
    let r = &f.log.of("feishu")[0];
    assert!(r.verified);
    assert_eq!(r.body["msg_type"], "post");
    let post = &r.body["content"]["post"]["zh_cn"];
    assert_eq!(post["title"], "Release 1.2");
    assert_eq!(
        post["content"][0][0],
        json!({"tag": "text", "text": "## Deploy finished"})
    );
}

#[tokio::test]
async fn feishu_throttle_defers_and_server_errors_retry() {
    let f = fakes().await;
    let p = Feishu::new(http(), f.endpoints().feishu, pushgate_shared::clock::system());
    let e = p
        .send(
            &text(Channel::Feishu, "ops", &format!("x {}", fake_fs::THROTTLE)),
            &app(),
        )
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Deferrable, "11232");
    assert_eq!(e.retry_after, Some(Duration::from_secs(5)));
    let e = p
        .send(&text(Channel::Feishu, "ops", &format!("x {}", fake_fs::BOOM)), &app())
        .await
        .unwrap_err();
    assert_class(&e, ErrorClass::Retryable, "http_500");
}

#[tokio::test]
async fn feishu_rate_limit_defers_the_sixth_post_in_a_second() {
    let f = fakes().await;
    let p = Feishu::new(http(), f.endpoints().feishu, pushgate_shared::clock::system());
    let started = std::time::Instant::now();
    let mut outcomes = Vec::new();
    for i in 0..=fake_fs::PER_SECOND {
        outcomes.push(p.send(&text(Channel::Feishu, "ops", &format!("n{i}")), &app()).await);
    }
    let elapsed = started.elapsed();
    assert!(
        outcomes[..fake_fs::PER_SECOND].iter().all(Result::is_ok),
        "{outcomes:?}"
    );
    // Six local posts take milliseconds; only a stalled machine could spread them over a second.
    if elapsed < Duration::from_secs(1) {
        let e = outcomes[fake_fs::PER_SECOND].as_ref().unwrap_err();
        assert_class(e, ErrorClass::Deferrable, "11232");
        assert!(e.retry_after.is_some());
    }
}

#[tokio::test]
async fn feishu_wrong_or_missing_secret_is_refused_and_permanent() {
    let f = fakes().await;
    let p = Feishu::new(http(), f.endpoints().feishu, pushgate_shared::clock::system());
    for robot in ["bad", "unsigned"] {
        let e = p.send(&text(Channel::Feishu, robot, "hi"), &app()).await.unwrap_err();
        assert_class(&e, ErrorClass::Permanent, "19021");
    }
    let log = f.log.of("feishu");
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| !r.verified));
    assert!(log[1].body.get("sign").is_none());
}

#[tokio::test]
async fn feishu_unknown_robot_is_permanent_without_a_request() {
    let f = fakes().await;
    let p = Feishu::new(http(), f.endpoints().feishu, pushgate_shared::clock::system());
    let e = p.send(&text(Channel::Feishu, "nope", "hi"), &app()).await.unwrap_err();
    assert_class(&e, ErrorClass::Permanent, "unknown_robot");
    assert!(f.log.of("feishu").is_empty());
}
