//! Ingest against moto: authentication, validation, idempotency, status reads.

use aws_sdk_dynamodb::types::AttributeValue;
use pushgate_tests::*;
use serde_json::json;

fn webhook_body(stack: &Stack, text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"channel":"webhook","to": stack.receiver.url("t"),"content":{"text": text}})).unwrap()
}

async fn send(stack: &Stack, body: &[u8], extra: &[(&str, &str)]) -> (u16, http::HeaderMap, serde_json::Value) {
    parts(
        stack
            .ingest
            .handle(signed("POST", "/v1/messages", body, APP, APP_SECRETS[0], now(), extra))
            .await,
    )
}

#[tokio::test]
async fn good_signature_is_accepted_with_one_record_and_one_job() {
    let stack = Stack::new().await;
    let (status, headers, body) = send(&stack, &webhook_body(&stack, "hi"), &[]).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap();
    assert_eq!(body["status"], "accepted");
    assert_eq!(id.len(), 26, "a ULID");
    assert_eq!(headers["location"], format!("/v1/messages/{id}").as_str());
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 1);
    let record = stack
        .store
        .get_by_id(id, pushgate_shared::clock::now_ms())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.app, APP);
    assert_eq!(record.status, pushgate_shared::message::Status::Accepted);
}

#[tokio::test]
async fn forged_expired_replayed_tampered_and_wrong_path_are_401_and_queue_nothing() {
    let stack = Stack::new().await;
    let body = webhook_body(&stack, "hi");
    let ts = now();
    let cases: Vec<(&str, lambda_http::Request)> = vec![
        (
            "forged",
            signed("POST", "/v1/messages", &body, APP, "not-the-secret", ts, &[]),
        ),
        (
            "expired",
            signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts - 301, &[]),
        ),
        (
            "future",
            signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts + 301, &[]),
        ),
        (
            "unknown app",
            signed("POST", "/v1/messages", &body, "nobody", APP_SECRETS[0], ts, &[]),
        ),
        ("wrong path", {
            let mut r = signed("POST", "/v1/other", &body, APP, APP_SECRETS[0], ts, &[]);
            *r.uri_mut() = "/v1/messages".parse().unwrap();
            r
        }),
        ("body tampered", {
            let mut r = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts, &[]);
            *r.body_mut() = lambda_http::Body::Binary(webhook_body(&stack, "changed"));
            r
        }),
        ("missing signature", {
            let mut r = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts, &[]);
            r.headers_mut().remove("x-signature");
            r
        }),
        ("malformed signature", {
            let mut r = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts, &[]);
            r.headers_mut().insert("x-signature", "v1=xyz".parse().unwrap());
            r
        }),
    ];
    for (name, req) in cases {
        let (status, headers, problem) = parts(stack.ingest.handle(req).await);
        assert_eq!(status, 401, "{name}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json", "{name}");
        assert_eq!(problem["status"], 401, "{name}");
    }
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0);

    // A replay: the same signed request twice. The first is accepted, the second refused.
    let first = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts, &[]);
    let again = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts, &[]);
    assert_eq!(parts(stack.ingest.handle(first).await).0, 202);
    let (status, _, problem) = parts(stack.ingest.handle(again).await);
    assert_eq!(status, 401);
    assert!(problem["detail"].as_str().unwrap().contains("replay"), "{problem}");
    assert_eq!(
        stack.queue_count(stack.res.send_queue()).await,
        1,
        "only the first was queued"
    );
}

#[tokio::test]
async fn both_rotating_secrets_verify() {
    let stack = Stack::new().await;
    for (i, secret) in APP_SECRETS.iter().enumerate() {
        let body = webhook_body(&stack, &format!("rotation {i}"));
        let req = signed("POST", "/v1/messages", &body, APP, secret, now(), &[]);
        assert_eq!(parts(stack.ingest.handle(req).await).0, 202, "secret {i}");
    }
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 2);
}

#[tokio::test]
async fn idempotency_replays_conflicts_and_mismatches() {
    let stack = Stack::new().await;
    let body = webhook_body(&stack, "once");
    let key = [("Idempotency-Key", "order-42")];
    let (s1, h1, b1) = send(&stack, &body, &key).await;
    assert_eq!(s1, 202);
    assert!(h1.get("idempotent-replayed").is_none());

    // Same key, same body, freshly signed: the first response again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s2, h2, b2) = send(&stack, &body, &key).await;
    assert_eq!((s2, &b2), (202, &b1));
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(h2["location"], h1["location"]);

    // Same key, different body: 422 naming the header.
    let (s3, _, b3) = send(&stack, &webhook_body(&stack, "other"), &key).await;
    assert_eq!(s3, 422, "{b3}");
    assert_eq!(b3["errors"][0]["pointer"], "header:Idempotency-Key");

    // The key is scoped per app: another app may use it.
    let req = signed("POST", "/v1/messages", &body, OTHER_APP, OTHER_SECRET, now(), &key);
    let (s4, _, b4) = parts(stack.ingest.handle(req).await);
    assert_eq!(s4, 202);
    assert_ne!(b4["id"], b1["id"]);
    assert_eq!(
        stack.queue_count(stack.res.send_queue()).await,
        2,
        "replays queue nothing"
    );
}

#[tokio::test]
async fn idempotent_request_still_in_flight_is_409() {
    let stack = Stack::new().await;
    let body = webhook_body(&stack, "in flight");
    // The first request's write has landed but its SQS send has not been confirmed:
    // simulate by writing the record the way ingest does, then stopping.
    let key = [("Idempotency-Key", "slow-1")];
    let (s1, _, b1) = send(&stack, &body, &key).await;
    assert_eq!(s1, 202);
    let id = b1["id"].as_str().unwrap();
    let record = stack
        .store
        .get_by_id(id, pushgate_shared::clock::now_ms())
        .await
        .unwrap()
        .unwrap();
    let pending = |created_at: i64| {
        let sdk = stack.sdk.clone();
        let (table, pk) = (stack.res.messages_table().to_string(), record.pk.clone());
        async move {
            aws_sdk_dynamodb::Client::new(&sdk)
                .update_item()
                .table_name(table)
                .key("pk", AttributeValue::S(pk))
                .update_expression("SET ingest_pending = :t, created_at = :c")
                .expression_attribute_values(":t", AttributeValue::Bool(true))
                .expression_attribute_values(":c", AttributeValue::N(created_at.to_string()))
                .send()
                .await
                .unwrap();
        }
    };
    pending(record.created_at).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s2, h2, b2) = send(&stack, &body, &key).await;
    assert_eq!(s2, 409, "{b2}");
    assert_eq!(h2["retry-after"], "1");

    // Still pending 30 s on, the first ingest died between its write and its SQS send:
    // the retry queues the job itself and answers as the first would have.
    pending(pushgate_shared::clock::now_ms() - 31_000).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s3, h3, b3) = send(&stack, &body, &key).await;
    assert_eq!((s3, &b3["id"]), (202, &b1["id"]));
    assert_eq!(h3["idempotent-replayed"], "true");
    assert_eq!(
        stack.queue_count(stack.res.send_queue()).await,
        2,
        "re-queued (the claim makes the copy harmless)"
    );
    let after = stack
        .store
        .get_by_id(id, pushgate_shared::clock::now_ms())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.ingest_pending, None);
}

#[tokio::test]
async fn a_failed_enqueue_answers_503_and_keeps_no_record() {
    let stack = Stack::new().await;
    // Same adapters, but a queue that does not exist.
    let broken = pushgate_shared::handlers::ingest::Ingest {
        store: stack.store.clone(),
        queue: pushgate_shared::queue::Queue::new(stack.sqs.clone(), format!("{}-missing", stack.res.send_queue())),
        apps: stack.ingest.apps.clone(),
        templates: pushgate_shared::templates::TemplateStore::bundled(),
        cfg: stack.ingest.cfg.clone(),
        clock: pushgate_shared::clock::system(),
        filters: Default::default(),
        scheduler: None,
        endpoints: None,
    };
    let body = webhook_body(&stack, "lost?");
    let (status, headers, problem) = parts(
        broken
            .handle(signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], now(), &[]))
            .await,
    );
    assert_eq!(status, 503, "{problem}");
    assert!(headers.contains_key("retry-after"));
    let items = aws_sdk_dynamodb::Client::new(&stack.sdk)
        .scan()
        .table_name(stack.res.messages_table())
        .send()
        .await
        .unwrap()
        .count();
    assert_eq!(items, 0, "the record was rolled back, so a retry starts clean");
    // The same request, re-signed, then succeeds through the real queue.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(send(&stack, &body, &[]).await.0, 202);
}

#[tokio::test]
async fn validation_errors_name_fields_and_change_nothing() {
    let stack = Stack::new().await;
    let cases: Vec<(Vec<u8>, &str, u16, Vec<&str>)> = vec![
        (b"{not json".to_vec(), "application/json", 400, vec![]),
        // Content-Type is not signed and decides nothing: the body is read as JSON.
        (
            br#"{"channel":"email","to":"a@b.co","content":{}}"#.to_vec(),
            "text/plain",
            422,
            vec!["/content/subject", "/content/text"],
        ),
        (
            br#"{"channel":"pigeon","to":"","content":{"subject":5}}"#.to_vec(),
            "application/json",
            422,
            vec!["/channel", "/to", "/content/subject"],
        ),
        (
            br#"{"channel":"email","to":"a@b.co","template":"welcome","data":{"name":"x"}}"#.to_vec(),
            "application/json",
            422,
            vec!["/data/product"],
        ),
        (
            br#"{"channel":"email","to":"a@b.co","template":"no_such_template"}"#.to_vec(),
            "application/json",
            422,
            vec!["/template"],
        ),
        (
            br#"{"channel":"webhook","to":"http://169.254.169.254/x","content":{"text":"x"}}"#.to_vec(),
            "application/json",
            202,
            vec![],
        ),
        (vec![b' '; 70_000], "application/json", 413, vec![]),
    ];
    let mut accepted = 0;
    for (body, content_type, want, pointers) in cases {
        let mut req = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], now(), &[]);
        req.headers_mut().insert("content-type", content_type.parse().unwrap());
        let (status, headers, problem) = parts(stack.ingest.handle(req).await);
        assert_eq!(status, want, "{problem}");
        if want == 202 {
            // The test stack allows private webhook targets (as the dev stack does).
            accepted += 1;
            continue;
        }
        assert_eq!(headers["content-type"], "application/problem+json");
        let got: Vec<&str> = problem["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|x| x["pointer"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(got, pointers, "{problem}");
    }
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, accepted);
}

#[tokio::test]
async fn private_webhook_targets_are_refused_by_default() {
    let body = br#"{"channel":"webhook","to":"http://169.254.169.254/latest/meta-data","content":{"text":"x"}}"#;
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    let errors = pushgate_shared::request::validate(&value, false).unwrap_err();
    assert_eq!(errors[0].pointer, "/to");
}

#[tokio::test]
async fn status_is_readable_by_its_app_only() {
    let stack = Stack::new().await;
    let (_, _, b) = send(&stack, &webhook_body(&stack, "mine"), &[]).await;
    let id = b["id"].as_str().unwrap();
    let path = format!("/v1/messages/{id}");
    let (status, _, view) = parts(
        stack
            .ingest
            .handle(signed("GET", &path, b"", APP, APP_SECRETS[1], now(), &[]))
            .await,
    );
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["id"], id);
    assert_eq!(view["status"], "accepted");
    assert_eq!(view["channel"], "webhook");
    assert_eq!(view["history"][0]["status"], "accepted");
    assert!(view.get("to").is_none(), "no recipient in the status view");

    let (status, _, problem) = parts(
        stack
            .ingest
            .handle(signed("GET", &path, b"", OTHER_APP, OTHER_SECRET, now(), &[]))
            .await,
    );
    assert_eq!(status, 404, "{problem}");
    let (status, _, _) = parts(
        stack
            .ingest
            .handle(signed(
                "GET",
                "/v1/messages/01NOSUCHMESSAGE00000000000",
                b"",
                APP,
                APP_SECRETS[0],
                now(),
                &[],
            ))
            .await,
    );
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sensitive_words_are_rejected_or_masked_per_app() {
    let stack = Stack::new().await;
    let body = webhook_body(&stack, "Visit our Casino tonight");
    let req = signed("POST", "/v1/messages", &body, STRICT_APP, OTHER_SECRET, now(), &[]);
    let (status, _, problem) = parts(stack.ingest.handle(req).await);
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/content/text");
    assert!(problem["errors"][0]["detail"].as_str().unwrap().contains("'casino'"));
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0, "nothing queued");

    // Terms in template data are caught after rendering too.
    let body = serde_json::to_vec(
        &json!({"channel":"email","to":"a@example.com","template":"welcome","data":{"name":"赌博","product":"P"}}),
    )
    .unwrap();
    let req = signed("POST", "/v1/messages", &body, STRICT_APP, OTHER_SECRET, now(), &[]);
    assert_eq!(parts(stack.ingest.handle(req).await).0, 422);

    let req = signed(
        "POST",
        "/v1/messages",
        &webhook_body(&stack, "Visit our Casino tonight"),
        MASKING_APP,
        OTHER_SECRET,
        now(),
        &[],
    );
    let (status, _, accepted) = parts(stack.ingest.handle(req).await);
    assert_eq!(status, 202);
    let record = stack
        .store
        .get_by_id(accepted["id"].as_str().unwrap(), pushgate_shared::clock::now_ms())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.content.text.as_deref(), Some("Visit our ****** tonight"));
}

#[tokio::test]
async fn an_app_over_its_per_minute_limit_gets_429_with_retry_after_and_nothing_is_queued() {
    let stack = Stack::new().await;
    // Stay inside one calendar minute (the limit's window).
    let into_minute = pushgate_shared::clock::now_ms() % 60_000;
    if into_minute > 50_000 {
        tokio::time::sleep(std::time::Duration::from_millis((60_000 - into_minute + 100) as u64)).await;
    }
    // Concurrent, as several Lambda instances would see them: the counter is shared.
    let requests = (0..8).map(|i| {
        let body = webhook_body(&stack, &format!("burst {i}"));
        let ingest = stack.ingest.clone();
        async move {
            parts(
                ingest
                    .handle(signed(
                        "POST",
                        "/v1/messages",
                        &body,
                        RATED_APP,
                        OTHER_SECRET,
                        now(),
                        &[],
                    ))
                    .await,
            )
        }
    });
    let answers = futures::future::join_all(requests).await;
    let accepted = answers.iter().filter(|(s, _, _)| *s == 202).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!((accepted, limited.len()), (5, 3), "{answers:?}");
    for (_, headers, problem) in &limited {
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry));
        assert_eq!(problem["type"], "urn:pushgate:problem:rate-limited");
    }
    assert_eq!(
        stack.queue_count(stack.res.send_queue()).await,
        accepted,
        "nothing queued for a 429"
    );
    // Other apps are not affected.
    let (status, _, _) = send(&stack, &webhook_body(&stack, "other app"), &[]).await;
    assert_eq!(status, 202);
}

/// The same signed request with extra headers (as someone who captured it would send it).
fn with_headers(mut req: lambda_http::Request, extra: &[(&str, &str)]) -> lambda_http::Request {
    for (k, v) in extra {
        req.headers_mut()
            .insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn a_v1_request_replayed_under_a_new_idempotency_key_is_refused() {
    let stack = Stack::new().await;
    let ts = now();
    let body = webhook_body(&stack, "pay out once");
    let v1 = || signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts, &[]);
    assert_eq!(parts(stack.ingest.handle(v1()).await).0, 202);
    // v1 does not sign the key: adding one must not make the replay a new message.
    for key in ["fresh-1", "fresh-2"] {
        let (status, _, problem) = parts(
            stack
                .ingest
                .handle(with_headers(v1(), &[("Idempotency-Key", key)]))
                .await,
        );
        assert_eq!(status, 401, "{key}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("replay"), "{problem}");
    }

    // A v1 request that carries a key: an exact repeat is an idempotent retry, the
    // same request under another key (or none) is a replay.
    let body = webhook_body(&stack, "keyed v1");
    let keyed = |key: Option<&str>| {
        let req = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts, &[]);
        match key {
            Some(k) => with_headers(req, &[("Idempotency-Key", k)]),
            None => req,
        }
    };
    let (s1, _, b1) = parts(stack.ingest.handle(keyed(Some("k-a"))).await);
    assert_eq!(s1, 202, "{b1}");
    let (s2, h2, b2) = parts(stack.ingest.handle(keyed(Some("k-a"))).await);
    assert_eq!((s2, &b2), (202, &b1), "an exact repeat gets the first answer");
    assert_eq!(h2["idempotent-replayed"], "true");
    for key in [Some("k-b"), None] {
        let (status, _, problem) = parts(stack.ingest.handle(keyed(key)).await);
        assert_eq!(status, 401, "{key:?}: {problem}");
    }
    assert_eq!(
        stack.queue_count(stack.res.send_queue()).await,
        2,
        "one message per signed request"
    );
}

#[tokio::test]
async fn a_v2_signature_covers_the_idempotency_key() {
    let stack = Stack::new().await;
    let ts = now();
    let body = webhook_body(&stack, "v2");
    let (s1, h1, b1) = parts(
        stack
            .ingest
            .handle(signed_v2(
                "POST",
                "/v1/messages",
                &body,
                APP,
                APP_SECRETS[0],
                ts,
                Some("v2-k"),
            ))
            .await,
    );
    assert_eq!(s1, 202, "{b1}");
    assert!(h1.get("idempotent-replayed").is_none());
    // The exact request again (a client's retry, or a replay: the same either way).
    let (s2, h2, b2) = parts(
        stack
            .ingest
            .handle(signed_v2(
                "POST",
                "/v1/messages",
                &body,
                APP,
                APP_SECRETS[0],
                ts,
                Some("v2-k"),
            ))
            .await,
    );
    assert_eq!((s2, &b2), (202, &b1), "{b2}");
    assert_eq!(h2["idempotent-replayed"], "true");
    // Changed, removed or added keys break the signature.
    let changed = with_headers(
        signed_v2("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts, Some("v2-k")),
        &[("Idempotency-Key", "other")],
    );
    let mut removed = signed_v2("POST", "/v1/messages", &body, APP, APP_SECRETS[0], ts, Some("v2-k"));
    removed.headers_mut().remove("idempotency-key");
    let body2 = webhook_body(&stack, "v2 without key");
    let first = signed_v2("POST", "/v1/messages", &body2, APP, APP_SECRETS[0], ts, None);
    assert_eq!(parts(stack.ingest.handle(first).await).0, 202);
    let added = with_headers(
        signed_v2("POST", "/v1/messages", &body2, APP, APP_SECRETS[0], ts, None),
        &[("Idempotency-Key", "added")],
    );
    let again = signed_v2("POST", "/v1/messages", &body2, APP, APP_SECRETS[0], ts, None);
    for (name, req) in [
        ("changed", changed),
        ("removed", removed),
        ("added", added),
        ("again", again),
    ] {
        let (status, _, problem) = parts(stack.ingest.handle(req).await);
        assert_eq!(status, 401, "{name}: {problem}");
    }
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 2);
}

#[tokio::test]
async fn an_unknown_app_key_reads_like_a_bad_signature() {
    let stack = Stack::new().await;
    let body = webhook_body(&stack, "who");
    let ts = now();
    let unknown = parts(
        stack
            .ingest
            .handle(signed("POST", "/v1/messages", &body, "nobody", APP_SECRETS[0], ts, &[]))
            .await,
    );
    let forged = parts(
        stack
            .ingest
            .handle(signed("POST", "/v1/messages", &body, APP, "wrong", ts, &[]))
            .await,
    );
    assert_eq!(unknown.0, 401);
    assert_eq!((unknown.0, &unknown.2), (forged.0, &forged.2), "one answer for both");
    // Expired reads the same for known and unknown apps too.
    let old = |app| signed("POST", "/v1/messages", &body, app, APP_SECRETS[0], ts - 1000, &[]);
    let a = parts(stack.ingest.handle(old("nobody")).await);
    let b = parts(stack.ingest.handle(old(APP)).await);
    assert_eq!((a.0, &a.2), (b.0, &b.2));
}

#[tokio::test]
async fn values_dynamodb_cannot_store_are_4xx_naming_the_field_never_503() {
    let stack = Stack::new().await;
    let url = stack.receiver.url("t");
    let mut deep = json!("leaf");
    for _ in 0..40 {
        deep = json!({ "d": deep });
    }
    let cases: Vec<(&str, serde_json::Value, u16, &str)> = vec![
        (
            "huge number",
            json!({"channel":"webhook","to": url,"content":{"body":{"n": 1e200}}}),
            422,
            "/content/body/n",
        ),
        (
            "tiny number",
            json!({"channel":"webhook","to": url,"content":{"body":{"list":[1, -1e-200]}}}),
            422,
            "/content/body/list/1",
        ),
        (
            "number in template data",
            json!({"channel":"webhook","to": url,"template":"welcome","data":{"name": 1e200, "product": "P"}}),
            422,
            "/data/name",
        ),
        (
            "deep nesting",
            json!({"channel":"webhook","to": url,"content":{"body": deep}}),
            422,
            "/content/body/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d",
        ),
    ];
    for (name, message, want, pointer) in cases {
        let (status, headers, problem) = stack.submit_as(APP, APP_SECRETS[0], message).await;
        assert_eq!(status, want, "{name}: {problem}");
        assert!(headers.get("retry-after").is_none(), "{name}: not a retry");
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{name}: {problem}");
    }
    // Template data rendered for the channel and three fallbacks: each alone is small,
    // the stored record would be over 400 KB.
    let id = "x".repeat(60_000);
    let (status, headers, problem) = stack
        .submit_as(
            APP,
            APP_SECRETS[0],
            json!({"channel":"email","to":"a@example.com","template":"order_shipped",
                   "data":{"order_id": id, "name": "Ann"},
                   "fallback":[{"channel":"webhook","to": url},{"channel":"dingtalk","to":"ops"},
                               {"channel":"sms","to":"+8613800138000"}]}),
        )
        .await;
    assert_eq!(status, 413, "{problem}");
    assert!(headers.get("retry-after").is_none());
    assert_eq!(problem["errors"][0]["pointer"], "/data", "{problem}");
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0, "nothing queued");

    // An id longer than a key may be: no such message, not an outage.
    let path = format!("/v1/messages/{}", "A".repeat(3000));
    let (status, _, problem) = parts(
        stack
            .ingest
            .handle(signed("GET", &path, b"", APP, APP_SECRETS[0], now(), &[]))
            .await,
    );
    assert_eq!(status, 404, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "path:id");
}

#[tokio::test]
async fn odd_paths_and_queries_are_a_clean_400_before_authentication() {
    let stack = Stack::new().await;
    for (path, query) in [
        ("/v1/messages", "a=\""),
        ("/v1/messages", "a=<b>"),
        ("/v1/messages", "a=%00"),
        ("/v1/messages", "a=%FF"),
        ("/v1/messages", "a=%"),
        ("/v1/messages/\"", ""),
        ("/v1/messages/<x>", ""),
        ("/v1/messages/%00", ""),
        ("/v1/messages/%FF", ""),
    ] {
        let resp = stack.ingest.handle_event(api_event("POST", path, query)).await;
        assert_eq!(resp.status_code, 400, "{path}?{query}: {:?}", resp.body);
        assert_eq!(resp.headers["content-type"], "application/problem+json");
    }
    // A bad base64 body is a 400 too (the library conversion would panic on it).
    let mut ev = api_event("POST", "/v1/messages", "");
    ev.body = Some("***".into());
    ev.is_base64_encoded = true;
    assert_eq!(stack.ingest.handle_event(ev).await.status_code, 400);
    // A plain event goes through to authentication (the signature is a dummy).
    let resp = stack.ingest.handle_event(api_event("POST", "/v1/messages", "")).await;
    assert_eq!(resp.status_code, 401, "{:?}", resp.body);
    // Requests that http can represent are checked by `handle` as well.
    for uri in [
        "/v1/messages?a=%00",
        "/v1/messages?a=%FF",
        "/v1/messages/%FF",
        "/v1/messages?a=\"",
    ] {
        let Ok(uri) = uri.parse::<http::Uri>() else { continue };
        let mut req = signed("POST", "/v1/messages", b"{}", APP, APP_SECRETS[0], now(), &[]);
        *req.uri_mut() = uri.clone();
        let (status, _, problem) = parts(stack.ingest.handle(req).await);
        assert_eq!(status, 400, "{uri}: {problem}");
    }
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0);
}

#[tokio::test]
async fn refused_replays_do_not_spend_the_apps_per_minute_limit() {
    let stack = Stack::new().await;
    let into_minute = pushgate_shared::clock::now_ms() % 60_000;
    if into_minute > 45_000 {
        tokio::time::sleep(std::time::Duration::from_millis((60_000 - into_minute + 100) as u64)).await;
    }
    let ts = now();
    let body = webhook_body(&stack, "once");
    let req = || signed("POST", "/v1/messages", &body, TIGHT_APP, OTHER_SECRET, ts, &[]);
    assert_eq!(parts(stack.ingest.handle(req()).await).0, 202);
    for _ in 0..5 {
        let (status, _, problem) = parts(stack.ingest.handle(req()).await);
        assert_eq!(status, 401, "{problem}");
    }
    // Idempotent repeats are not new messages either.
    let keyed = webhook_body(&stack, "keyed");
    let kreq = || signed_v2("POST", "/v1/messages", &keyed, TIGHT_APP, OTHER_SECRET, ts, Some("t-1"));
    assert_eq!(parts(stack.ingest.handle(kreq()).await).0, 202);
    for _ in 0..3 {
        let (status, headers, _) = parts(stack.ingest.handle(kreq()).await);
        assert_eq!(
            (status, &headers["idempotent-replayed"]),
            (202, &"true".parse().unwrap())
        );
    }
    // Two messages sent: the limit is spent now, and a third is refused...
    let (status, _, problem) = stack
        .submit_as(
            TIGHT_APP,
            OTHER_SECRET,
            json!({"channel":"webhook","to": stack.receiver.url("t"),"content":{"text":"third"}}),
        )
        .await;
    assert_eq!(status, 429, "{problem}");
    // ...and stays spent: its signature cannot be replayed into the next window.
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 2);
}

#[tokio::test]
async fn a_request_refused_by_the_rate_limit_keeps_its_signature_spent() {
    let stack = Stack::new().await;
    let into_minute = pushgate_shared::clock::now_ms() % 60_000;
    if into_minute > 45_000 {
        tokio::time::sleep(std::time::Duration::from_millis((60_000 - into_minute + 100) as u64)).await;
    }
    for i in 0..2 {
        let (status, _, _) = stack
            .submit_as(
                TIGHT_APP,
                OTHER_SECRET,
                json!({"channel":"webhook","to": stack.receiver.url("t"),"content":{"text": format!("m{i}")}}),
            )
            .await;
        assert_eq!(status, 202);
    }
    let ts = now();
    let body = webhook_body(&stack, "over");
    let req = || signed("POST", "/v1/messages", &body, TIGHT_APP, OTHER_SECRET, ts, &[]);
    assert_eq!(parts(stack.ingest.handle(req()).await).0, 429);
    // The refused request's signature stays spent: a replay is a replay, not a retry.
    let (status, _, problem) = parts(stack.ingest.handle(req()).await);
    assert_eq!(status, 401, "{problem}");
    assert_eq!(stack.all_records().await.len(), 2, "no record kept for the refused one");
}

/// A robot message names one of the app's robots: an unknown name (as the recipient or
/// in a fallback) is a 422 naming the field at ingest, with nothing stored or queued,
/// instead of a message that can only end `failed`.
#[tokio::test]
async fn an_unknown_robot_is_a_422_naming_the_field() {
    let stack = Stack::new().await;
    let (status, _, problem) = stack
        .submit_as(
            APP,
            APP_SECRETS[0],
            json!({"channel":"dingtalk","to":"nobody","content":{"text":"x"}}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/to", "{problem}");
    let (status, _, problem) = stack
        .submit_as(
            APP,
            APP_SECRETS[0],
            json!({"channel":"dingtalk","to":"ops","content":{"text":"x"},
                   "fallback":[{"channel":"feishu","to":"ops"},{"channel":"wecom","to":"night-shift"}]}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/fallback/1/to", "{problem}");
    assert_eq!(stack.queue_count(stack.res.send_queue()).await, 0, "nothing queued");
    // The app's own robot is fine.
    let (status, _, body) = stack
        .submit_as(
            APP,
            APP_SECRETS[0],
            json!({"channel":"wecom","to":"ops","content":{"text":"x"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}
