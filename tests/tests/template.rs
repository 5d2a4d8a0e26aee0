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
