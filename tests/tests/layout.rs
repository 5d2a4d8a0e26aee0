//! The layout of `shared/src` as the README describes it, checked from the source:
//! arrows between its top-level modules (`crate::x` references) form no cycle, and the
//! domain types live in domain modules, never in the adapters (`store/`, `providers/`).
//! Run alone with `cargo test -p pushgate-tests --test layout`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/src")
}

/// Top-level module → the top-level modules its code names through `crate::`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = root();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let module_of = |path: &Path| -> Option<String> {
        let rel = path.strip_prefix(&root).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        (first != "lib.rs").then(|| first.trim_end_matches(".rs").to_string())
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(file) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests (at the end of a file, from `#[cfg(test)]`) may use any module:
        // they are not part of the module's dependencies.
        let code = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .filter(|l| !l.trim_start().starts_with("//"));
        for line in code {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name != from && modules.contains(&name) {
                    graph.entry(from.clone()).or_default().insert(name);
                }
            }
        }
        graph.entry(from).or_default();
    }
    graph
}

/// One cycle of the graph, if any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_shared_modules_import_each_other_without_a_cycle() {
    let graph = module_graph();
    assert!(
        graph.contains_key("dispatch") && graph.contains_key("store"),
        "{graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
    // The domain imports no adapter.
    for domain in [
        "message",
        "request",
        "delivery",
        "shaping",
        "routing",
        "ports",
        "dispatch",
        "schedule",
        "batch",
        "events",
        "sweep",
        "recurring",
    ] {
        for adapter in ["store", "providers", "queue", "scheduler", "apps", "handlers", "wiring"] {
            assert!(
                !graph[domain].contains(adapter),
                "{domain} (domain) imports {adapter} (adapter)"
            );
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.insert("a".into(), ["b".to_string()].into());
    graph.insert("b".into(), ["c".to_string()].into());
    graph.insert("c".into(), ["a".to_string()].into());
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    graph.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn no_domain_type_is_defined_in_an_adapter() {
    let domain = [
        "Rate",
        "Throttle",
        "BreakerPolicy",
        "Circuit",
        "Finish",
        "Claim",
        "Charge",
        "Created",
        "ErrorClass",
        "ProviderError",
        "Sent",
        "Ambiguity",
        "Reconciled",
        "Message",
        "Status",
        "Channel",
        "Release",
        "ScheduleRecord",
        "Occurrence",
    ];
    let mut files = Vec::new();
    for dir in ["store", "providers"] {
        sources(&root().join(dir), &mut files);
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let line = line.trim_start();
            for kind in ["pub struct ", "pub enum ", "pub type "] {
                if let Some(rest) = line.strip_prefix(kind) {
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    assert!(
                        !domain.contains(&name.as_str()),
                        "{} defines the domain type {name}",
                        file.display()
                    );
                }
            }
        }
    }
}
