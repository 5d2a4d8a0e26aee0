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
    // The dispatcher creates only recurring schedules' occurrence records.
    let puts: Vec<_> = table_grants(&template, "DispatcherFunction")
        .into_iter()
        .filter(|(action, ..)| action == "dynamodb:PutItem")
        .collect();
    assert_eq!(puts, vec![only("PutItem", "*_ro_*")]);
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

/// The text of `!Sub "…"` (or a plain string).
fn sub_text(v: &Value) -> Option<String> {
    match v {
        Value::Tagged(t) if t.tag == "Sub" => t.value.as_str().map(str::to_string),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Ingest may create and delete schedules only in the stack's one-time group and the
/// apps' recurring groups `{RecurringGroupPrefix}.*`; the role Scheduler assumes only
/// sends to the send queue, and only for schedules of those groups.
#[test]
fn schedules_are_confined_to_the_stacks_groups() {
    let template = pushgate_tool::resources::load_template().unwrap();
    let mut scheduler_resources = BTreeSet::new();
    for s in statements(&template, "IngestFunction") {
        let actions = strings(&s["Action"]);
        if actions.iter().any(|a| a.starts_with("scheduler:")) {
            assert!(actions.iter().all(|a| a.starts_with("scheduler:")), "{actions:?}");
            for action in actions {
                scheduler_resources.insert((action, sub_text(&s["Resource"]).expect("a !Sub ARN")));
            }
        }
    }
    let arn = |rest: &str| format!("arn:${{AWS::Partition}}:scheduler:${{AWS::Region}}:${{AWS::AccountId}}:{rest}");
    let want: BTreeSet<(String, String)> = [
        ("scheduler:CreateSchedule", arn("schedule/${ScheduleGroup}/*")),
        ("scheduler:DeleteSchedule", arn("schedule/${ScheduleGroup}/*")),
        ("scheduler:CreateSchedule", arn("schedule/${RecurringGroupPrefix}.*/*")),
        ("scheduler:DeleteSchedule", arn("schedule/${RecurringGroupPrefix}.*/*")),
        (
            "scheduler:GetScheduleGroup",
            arn("schedule-group/${RecurringGroupPrefix}.*"),
        ),
        (
            "scheduler:CreateScheduleGroup",
            arn("schedule-group/${RecurringGroupPrefix}.*"),
        ),
    ]
    .into_iter()
    .map(|(a, r)| (a.to_string(), r))
    .collect();
    assert_eq!(scheduler_resources, want);
    assert_eq!(
        template["Parameters"]["RecurringGroupPrefix"]["AllowedPattern"].as_str(),
        Some("^[A-Za-z0-9_-]{1,20}$"),
        "a prefix cannot widen the grants (no '*', no '.')"
    );

    let role = &template["Resources"]["SchedulerRole"]["Properties"];
    let trust = &role["AssumeRolePolicyDocument"]["Statement"][0];
    let sources: Vec<String> = trust["Condition"]["ArnLike"]["aws:SourceArn"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(sub_text)
        .collect();
    assert_eq!(
        sources,
        vec![
            arn("schedule-group/${ScheduleGroup}"),
            arn("schedule-group/${RecurringGroupPrefix}.*")
        ]
    );
    let grants: Vec<Value> = role["Policies"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["PolicyDocument"]["Statement"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(grants.len(), 1);
    assert_eq!(strings(&grants[0]["Action"]), vec!["sqs:SendMessage".to_string()]);
    // The send queue, and Scheduler's dead-letter queue for jobs it gave up delivering.
    let queues = grants[0]["Resource"].as_sequence().expect("two queues");
    assert_eq!(queues.len(), 2);
    assert!(is_get_att(&queues[0], "SendQueue.Arn"));
    assert!(is_get_att(&queues[1], "ScheduleDeadLetterQueue.Arn"));
}

/// The worked example of an operator-declared recurring send: disabled by default, the
/// send queue as target through the scheduler role, and an input that (once Scheduler
/// substitutes the scheduled time) is an occurrence the dispatcher accepts, with a
/// message `POST /v1/messages` would accept.
#[test]
fn the_declared_weekly_digest_is_a_valid_occurrence() {
    let template = pushgate_tool::resources::load_template().unwrap();
    let params = &template["Parameters"];
    assert_eq!(params["WeeklyDigestState"]["Default"].as_str(), Some("DISABLED"));
    let schedule = &template["Resources"]["WeeklyDigestSchedule"];
    assert_eq!(schedule["Type"].as_str(), Some("AWS::Scheduler::Schedule"));
    let p = &schedule["Properties"];
    assert!(pushgate_shared::recurring::parse_expression(p["ScheduleExpression"].as_str().unwrap()).is_ok());
    assert!(pushgate_shared::recurring::time_zone(p["ScheduleExpressionTimezone"].as_str().unwrap()).is_some());
    assert!(is_get_att(&p["Target"]["Arn"], "SendQueue.Arn"));
    assert!(is_get_att(&p["Target"]["RoleArn"], "SchedulerRole.Arn"));
    let input = sub_text(&p["Target"]["Input"])
        .unwrap()
        .replace(
            "${WeeklyDigestApp}",
            params["WeeklyDigestApp"]["Default"].as_str().unwrap(),
        )
        .replace(
            "${WeeklyDigestUrl}",
            params["WeeklyDigestUrl"]["Default"].as_str().unwrap(),
        )
        .replace(
            pushgate_shared::recurring::SCHEDULED_TIME,
            &pushgate_shared::recurring::scheduled_time(1_767_574_800_000),
        );
    let Some(pushgate_shared::recurring::Queued::Occurrence { occurrence }) =
        pushgate_shared::recurring::Queued::parse(&input)
    else {
        panic!("not an occurrence: {input}");
    };
    let message = occurrence.message(1_767_574_800_000, 7).expect("a message");
    assert_eq!(message.recurring.as_deref(), Some("weekly-digest"));
    let body = serde_json::to_value(&occurrence.message).unwrap();
    pushgate_shared::request::validate(&body, false).expect("a valid POST /v1/messages body");
}
