//! The architecture's invariants, checked on every run: which crate may depend on which
//! (DESIGN's direction, lowest first: `protocol` <- {`monitor`, `content`} <- `keymaster` <-
//! {`node-agent`, `group-master`, `provisioner`, `service-manager`} <- `cluster-master` <-
//! `glory` <- `tests`), which crates own which external crates, and that every declared
//! dependency is used. Reads `cargo metadata` and the sources; no network.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A workspace crate's place in the dependency order: it may depend only on crates of a
/// lower rank.
fn rank(package: &str) -> Option<u32> {
    Some(match package {
        "glory-protocol" => 0,
        "glory-monitor" | "glory-content" => 1,
        "glory-keymaster" => 2,
        "glory-node-agent"
        | "glory-group-master"
        | "glory-provisioner"
        | "glory-service-manager" => 3,
        "glory-cluster-master" => 4,
        "glory" => 5,
        "glory-tests" => 6,
        _ => return None,
    })
}

/// External crates that only their owner may use: the wire format, the store's engines.
const OWNED: &[(&str, &[&str])] = &[
    ("rmp-serde", &["glory-protocol"]),
    // QUIC: everyone else uses `glory_protocol`'s link API (`link.rs`).
    ("quinn", &["glory-protocol"]),
    ("quinn-proto", &["glory-protocol"]),
    ("quinn-udp", &["glory-protocol"]),
    // The embedded key master's store, and the group masters' statistics store.
    ("rusqlite", &["glory-keymaster", "glory-monitor"]),
    ("etcd-client", &["glory-keymaster"]),
    ("tonic", &["glory-keymaster"]),
];

struct Package {
    name: String,
    dir: PathBuf,
    /// (dependency name, kind: "normal" | "dev" | "build")
    deps: Vec<(String, String)>,
}

fn workspace() -> Vec<Package> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| Package {
            name: p["name"].as_str().unwrap_or_default().to_string(),
            dir: Path::new(p["manifest_path"].as_str().unwrap_or_default())
                .parent()
                .expect("manifest dir")
                .to_path_buf(),
            deps: p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    (
                        d["name"].as_str().unwrap_or_default().to_string(),
                        d["kind"].as_str().unwrap_or("normal").to_string(),
                    )
                })
                .collect(),
        })
        .collect()
}

/// Every `.rs` file under `dir/sub`.
fn sources(dir: &Path, sub: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join(sub)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                out.push((path, text));
            }
        }
    }
    out
}

/// Whether Rust source names crate `ident` (as a path, a `use` or a macro).
fn mentions(text: &str, ident: &str) -> bool {
    text.match_indices(ident).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = &text[i + ident.len()..];
        // `std::time::` is not the `time` crate: a path segment after `::` is not a crate.
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" as "))
    })
}

#[test]
fn crates_depend_only_downward() {
    let mut wrong = Vec::new();
    for p in workspace() {
        let Some(own) = rank(&p.name) else { continue };
        for (dep, kind) in &p.deps {
            if dep == &p.name {
                continue; // a crate enabling its own test features
            }
            if let Some(theirs) = rank(dep) {
                if theirs >= own {
                    wrong.push(format!("{} ({kind}) depends on {dep}", p.name));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "against DESIGN's direction: {wrong:#?}");
}

#[test]
fn the_agent_never_links_master_code_and_the_masters_never_each_other() {
    let packages = workspace();
    let deps = |name: &str| -> BTreeSet<String> {
        packages
            .iter()
            .find(|p| p.name == name)
            .map(|p| {
                p.deps
                    .iter()
                    .filter(|(d, k)| k != "dev" && rank(d).is_some())
                    .map(|(d, _)| d.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let agent = deps("glory-node-agent");
    // glory-content is the shared content-addressing and swarm library (rank 1, no
    // master code): the agent takes its aria2c flags from it.
    let allowed: BTreeSet<String> = ["glory-protocol", "glory-monitor", "glory-content"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(
        agent.is_subset(&allowed),
        "node-agent may depend on protocol, monitor and content only: {agent:?}"
    );
    assert!(!deps("glory-group-master").contains("glory-cluster-master"));
    assert!(!deps("glory-cluster-master").contains("glory-group-master"));
}

#[test]
fn owned_crates_stay_with_their_owners() {
    let mut wrong = Vec::new();
    for p in workspace() {
        for (dep, kind) in &p.deps {
            if let Some((_, owners)) = OWNED.iter().find(|(c, _)| c == dep) {
                if !owners.contains(&p.name.as_str()) {
                    wrong.push(format!("{} ({kind}) depends on {dep}", p.name));
                }
            }
        }
        // Not through a re-export either: the sources must not name them.
        let texts = ["src", "tests"].iter().flat_map(|s| sources(&p.dir, s));
        // This file names them in the checks' own tests.
        let texts = texts.filter(|(path, _)| !path.ends_with(file!()));
        for (path, text) in texts {
            for (dep, owners) in OWNED {
                let ident = dep.replace('-', "_");
                if !owners.contains(&p.name.as_str()) && mentions(&text, &ident) {
                    wrong.push(format!("{} names {ident}", path.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "crates used outside their owner: {wrong:#?}"
    );
}

#[test]
fn every_declared_dependency_is_used() {
    let mut unused = Vec::new();
    for p in workspace() {
        let lib: Vec<(PathBuf, String)> = ["src", "build.rs"]
            .iter()
            .flat_map(|s| sources(&p.dir, s))
            .collect();
        let all: Vec<(PathBuf, String)> = ["src", "tests", "benches", "examples"]
            .iter()
            .flat_map(|s| sources(&p.dir, s))
            .collect();
        for (dep, kind) in &p.deps {
            if dep == &p.name {
                continue;
            }
            let ident = dep.replace('-', "_");
            // glory-tests is a crate of tests: its integration tests use its dependencies.
            let files = if kind == "normal" && p.name != "glory-tests" {
                &lib
            } else {
                &all
            };
            let used = files.iter().any(|(_, text)| mentions(text, &ident));
            if !used {
                unused.push(format!("{}: {kind} dependency {dep} is not used", p.name));
            }
        }
    }
    assert!(unused.is_empty(), "remove them: {unused:#?}");
}

/// The cluster master builds JSON only at its API edge (`api/`): everything else hands
/// typed values (records, `events::EventData`) to it. Test code may build JSON.
#[test]
fn json_is_built_only_at_the_api_edge() {
    let packages = workspace();
    let cm = packages
        .iter()
        .find(|p| p.name == "glory-cluster-master")
        .expect("glory-cluster-master");
    let api = cm.dir.join("src").join("api");
    let mut wrong = Vec::new();
    for (path, text) in sources(&cm.dir, "src") {
        if path.starts_with(&api) || path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let production = text.split("#[cfg(test)]").next().unwrap_or_default();
        if production.contains("json!(") {
            wrong.push(path.display().to_string());
        }
    }
    assert!(wrong.is_empty(), "JSON built outside api/: {wrong:#?}");
}

#[test]
fn the_checks_see_what_they_check() {
    // The helpers must find real uses, or every check above passes vacuously.
    assert!(mentions("use quinn::VarInt;", "quinn"));
    assert!(mentions("let x = serde_json::json!({});", "serde_json"));
    assert!(!mentions("let quinnish = 1; // quinn", "quinn"));
    assert!(!mentions("use std::time::Duration;", "time"));
    let packages = workspace();
    assert!(
        packages.len() >= 7,
        "workspace packages: {}",
        packages.len()
    );
    let protocol = packages
        .iter()
        .find(|p| p.name == "glory-protocol")
        .expect("glory-protocol");
    assert!(sources(&protocol.dir, "src")
        .iter()
        .any(|(_, t)| mentions(t, "quinn")));
}
