//! `template.yaml` is the one definition: the local stack creates its tables and queues
//! from it (see `resources.rs`), and the routes `cargo lambda watch` serves locally
//! (`[workspace.metadata.lambda.watch.router]` in Cargo.toml) must be exactly its API.

use std::collections::BTreeSet;

use serde_yaml::Value;

fn root() -> std::path::PathBuf {
    pushgate_tool::workspace_root()
}

/// (METHOD, path, binary) of every HttpApi event in template.yaml.
fn template_routes() -> BTreeSet<(String, String, String)> {
    let template = pushgate_tool::resources::load_template().unwrap();
    let mut routes = BTreeSet::new();
    for (_, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap()
            .to_string();
        let Some(events) = resource["Properties"].get("Events").and_then(Value::as_mapping) else {
            continue;
        };
        for (_, event) in events {
            if event["Type"].as_str() == Some("HttpApi") {
                let p = &event["Properties"];
                routes.insert((
                    p["Method"].as_str().unwrap().to_uppercase(),
                    p["Path"].as_str().unwrap().to_string(),
                    binary.clone(),
                ));
            }
        }
    }
    routes
}

fn local_routes() -> BTreeSet<(String, String, String)> {
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let router = manifest["workspace"]["metadata"]["lambda"]["watch"]["router"]
        .as_table()
        .unwrap();
    let mut routes = BTreeSet::new();
    for (path, targets) in router {
        for t in targets.as_array().unwrap() {
            routes.insert((
                t["method"].as_str().unwrap().to_string(),
                path.clone(),
                t["function"].as_str().unwrap().to_string(),
            ));
        }
    }
    routes
}

#[test]
fn the_local_router_serves_exactly_the_template_api() {
    let template = template_routes();
    assert!(template.contains(&("POST".into(), "/v1/messages".into(), "ingest".into())));
    assert_eq!(local_routes(), template);
}

#[test]
fn every_function_binary_in_the_template_exists_in_the_workspace() {
    for (_, _, binary) in template_routes() {
        assert!(
            root().join("functions").join(&binary).join("src/main.rs").exists(),
            "{binary}"
        );
    }
    let template = pushgate_tool::resources::load_template().unwrap();
    let dispatcher = &template["Resources"]["DispatcherFunction"];
    assert_eq!(
        dispatcher["Metadata"]["BuildProperties"]["Binary"].as_str(),
        Some("dispatcher")
    );
    let sqs = dispatcher["Properties"]["Events"]
        .as_mapping()
        .unwrap()
        .values()
        .find(|e| e["Type"].as_str() == Some("SQS"))
        .expect("an SQS event source");
    assert_eq!(
        sqs["Properties"]["FunctionResponseTypes"][0].as_str(),
        Some("ReportBatchItemFailures")
    );
}

/// The function resource `name`'s IAM statements.
fn statements(template: &Value, name: &str) -> Vec<Value> {
    let policies = template["Resources"][name]["Properties"]["Policies"]
        .as_sequence()
        .unwrap();
    policies
        .iter()
        .flat_map(|p| p["Statement"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

/// Whether `v` is `!GetAtt {what}`.
fn is_get_att(v: &Value, what: &str) -> bool {
    matches!(v, Value::Tagged(t) if t.tag == "GetAtt" && t.value.as_str() == Some(what))
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
        _ => vec![],
    }
}

/// Every (action, condition operator, key patterns) the function is granted on the
/// messages table itself (not its indexes).
fn table_grants(template: &Value, function: &str) -> BTreeSet<(String, String, Vec<String>)> {
    let mut grants = BTreeSet::new();
    for s in statements(template, function) {
        if !is_get_att(&s["Resource"], "MessagesTable.Arn") {
            continue;
        }
        assert_eq!(s["Effect"].as_str(), Some("Allow"));
        let condition = s.get("Condition").and_then(Value::as_mapping);
        let (op, patterns) = condition
            .and_then(|c| c.iter().next())
            .map(|(op, keys)| (op.as_str().unwrap().to_string(), strings(&keys["dynamodb:LeadingKeys"])))
            .unwrap_or_default();
        for action in strings(&s["Action"]) {
            grants.insert((action, op.clone(), patterns.clone()));
        }
    }
    grants
}

/// Ingest and callbacks are the internet-facing functions: they may touch message items
/// (keys without '.') but not the balances, circuits, rate buckets and access tokens kept
/// beside them (keys with '.'); ingest's two exceptions are its per-minute counter and
/// reading a balance, the callback's its nonce guard and held receipts.
#[test]
fn internet_facing_functions_touch_only_message_items() {
    let template = pushgate_tool::resources::load_template().unwrap();
    let messages_only = |action: &str| {
        (
            format!("dynamodb:{action}"),
            "ForAllValues:StringNotLike".to_string(),
            vec!["*.*".to_string()],
        )
    };
    let only = |action: &str, pattern: &str| {
        (
            format!("dynamodb:{action}"),
            "ForAllValues:StringLike".to_string(),
            vec![pattern.to_string()],
        )
    };
    let ingest: BTreeSet<_> = [
        messages_only("PutItem"),
        messages_only("UpdateItem"),
        messages_only("DeleteItem"),
        messages_only("GetItem"),
        // A batch's recipients' records.
        messages_only("BatchWriteItem"),
        only("UpdateItem", "_rate.*"),
        only("GetItem", "_balance.*"),
    ]
    .into();
    assert_eq!(table_grants(&template, "IngestFunction"), ingest);
    // The callback's exceptions: the nonce replay guard and receipts held on a provider
    // reference (both written by the callback itself; without these grants AWS would
    // refuse those writes, which moto does not check).
    let callback: BTreeSet<_> = [
        messages_only("UpdateItem"),
        messages_only("GetItem"),
        only("PutItem", "_nonce.*"),
        only("DeleteItem", "_nonce.*"),
        only("UpdateItem", "_ref.*"),
    ]
    .into();
    assert_eq!(table_grants(&template, "CallbackFunction"), callback);
    assert_eq!(
        (
            pushgate_shared::store::callbacks::NONCE_PK_PREFIX,
            pushgate_shared::store::callbacks::REF_PK_PREFIX
        ),
        ("_nonce.", "_ref."),
        "the prefixes the grants name"
    );
    // The '.' that sets the service's items apart is in every one of their keys.
    assert!(pushgate_shared::providers::wechat::TOKEN_PK_PREFIX.starts_with("_token."));
    assert!(
        !pushgate_shared::auth::valid_app_key("app.x"),
        "app keys, hence message keys, have no '.'"
    );
}

/// The receipt pull reads the sweep index only, and reads and writes message items only
/// (it applies receipts as the callback does), on its own schedule.
#[test]
fn the_receipt_pull_reads_the_index_and_touches_message_items_only() {
    let template = pushgate_tool::resources::load_template().unwrap();
    let messages_only = |action: &str| {
        (
            format!("dynamodb:{action}"),
            "ForAllValues:StringNotLike".to_string(),
            vec!["*.*".to_string()],
        )
    };
    let pull: BTreeSet<_> = [messages_only("GetItem"), messages_only("UpdateItem")].into();
    assert_eq!(table_grants(&template, "PullFunction"), pull);
    let on_index: Vec<String> = statements(&template, "PullFunction")
        .iter()
        .filter(|s| is_get_att(&s["Resource"], "EndpointsTable.Arn"))
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    assert_eq!(on_index, ["dynamodb:Query"]);
    let all: Vec<String> = statements(&template, "PullFunction")
        .iter()
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    assert_eq!(
        all,
        [
            "dynamodb:Query",
            "dynamodb:GetItem",
            "dynamodb:UpdateItem",
            "dynamodb:Scan",
            "sqs:SendMessage",
            "secretsmanager:GetSecretValue"
        ]
    );
    let function = &template["Resources"]["PullFunction"];
    assert_eq!(function["Metadata"]["BuildProperties"]["Binary"].as_str(), Some("pull"));
    assert!(root().join("functions/pull/src/main.rs").exists());
    let schedule = function["Properties"]["Events"]
        .as_mapping()
        .unwrap()
        .values()
        .find(|e| e["Type"].as_str() == Some("ScheduleV2"))
        .expect("a schedule");
    assert!(schedule["Properties"]["ScheduleExpression"]
        .as_str()
        .unwrap()
        .starts_with("rate("));
}

/// The callback reads the routes and queues a message again only for a fallback on a
/// failed receipt: a Scan of the routes table and SendMessage to the send queue, nothing
/// wider.
#[test]
fn the_callback_reads_routes_and_queues_only_to_the_send_queue() {
    let template = pushgate_tool::resources::load_template().unwrap();
    // The pull applies receipts through the same path, fallback included.
    for function in ["CallbackFunction", "PullFunction"] {
        let statements = statements(&template, function);
        let on = |action: &str| -> Vec<Value> {
            statements
                .iter()
                .filter(|s| strings(&s["Action"]).contains(&action.to_string()))
                .map(|s| s["Resource"].clone())
                .collect()
        };
        let scan = on("dynamodb:Scan");
        assert_eq!(scan.len(), 1, "{function}");
        assert!(is_get_att(&scan[0], "RoutesTable.Arn"), "{function}");
        let send = on("sqs:SendMessage");
        assert_eq!(send.len(), 1, "{function}");
        assert!(is_get_att(&send[0], "SendQueue.Arn"), "{function}");
    }
}

#[test]
fn ses_sends_only_from_the_configured_senders() {
    let template = pushgate_tool::resources::load_template().unwrap();
    let ses: Vec<Value> = statements(&template, "DispatcherFunction")
        .into_iter()
        .filter(|s| strings(&s["Action"]).contains(&"ses:SendEmail".to_string()))
        .collect();
    assert_eq!(ses.len(), 1);
    assert!(ses[0]["Condition"]["StringLike"].get("ses:FromAddress").is_some());
}

#[test]
fn functions_have_reserved_concurrency_and_the_api_is_throttled_and_logged() {
    let template = pushgate_tool::resources::load_template().unwrap();
    for f in ["IngestFunction", "DispatcherFunction", "CallbackFunction"] {
        assert!(
            template["Resources"][f]["Properties"]
                .get("ReservedConcurrentExecutions")
                .is_some(),
            "{f}"
        );
    }
    let api = &template["Resources"]["HttpApi"]["Properties"];
    assert!(api["DefaultRouteSettings"].get("ThrottlingRateLimit").is_some());
    assert!(api["DefaultRouteSettings"].get("ThrottlingBurstLimit").is_some());
    assert!(is_get_att(
        &api["AccessLogSettings"]["DestinationArn"],
        "ApiAccessLogGroup.Arn"
    ));
    assert!(api["AccessLogSettings"]["Format"]
        .as_str()
        .unwrap()
        .contains("$context.requestId"));
    let env = &template["Globals"]["Function"]["Environment"]["Variables"];
    assert!(env.get("PUSHGATE_SECRET_MAX_STALE_SECONDS").is_some());
}
