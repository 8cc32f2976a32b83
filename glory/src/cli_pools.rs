//! `glory tokens` (API tokens), `glory pools` and `glory nodes label`.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{delete, print_json, s};
use crate::client::{urlencode, ApiClient};
use crate::table::{render, when_value};

#[derive(Subcommand)]
pub enum TokensAction {
    /// Create an API token (printed once).
    Create {
        /// operator, tenant or component.
        #[arg(long)]
        role: String,
        /// The tenant of a tenant or component token.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List API tokens (never their secrets).
    List,
    /// Revoke an API token.
    Revoke { id: String },
}

// Parsed once per run: the size of `Create` costs nothing worth boxing it for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum PoolsAction {
    /// Create a pool: `glory pools create fs-a --component fs --tenant a --size 100 --spread groups`.
    Create {
        name: String,
        /// fs, db, dp or custom:<name>.
        #[arg(long)]
        component: String,
        /// Owner (a tenant token's own tenant by default).
        #[arg(long)]
        tenant: Option<String>,
        /// Number of nodes (default: every free node that fits the selector).
        #[arg(long)]
        size: Option<usize>,
        /// groups: across as many groups as possible; none: packed.
        #[arg(long, default_value = "none")]
        spread: String,
        #[arg(long)]
        min_cpus: Option<u32>,
        #[arg(long)]
        min_memory_gib: Option<u64>,
        #[arg(long)]
        min_disk_gib: Option<u64>,
        /// Only nodes of these groups (comma-separated).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Only nodes with these labels (k=v, comma-separated).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Replace nodes that stay down by fitting free ones.
        #[arg(long)]
        replace_failed: bool,
        /// Seconds a node must stay down before it is replaced.
        #[arg(long)]
        replace_delay: Option<f64>,
        /// The master's command line as one string, split like a shell does
        /// (`--master-command "fsd --port 7000"`); or give the words after `--`.
        /// Started on the elected candidate.
        #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
        master_command: Option<String>,
        /// Port the component master listens on: its address is the node's address and
        /// this port, and the process finds both in GLORY_MASTER_ADDRESS.
        #[arg(long)]
        master_port: Option<u16>,
        /// The master's command line, word by word, after `--`
        /// (`glory pools create fs-a ... -- fsd --port 7000`).
        #[arg(last = true, value_name = "PROGRAM AND ARGS")]
        master_words: Vec<String>,
    },
    /// List pools.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        component: Option<String>,
    },
    /// One pool: nodes, candidates, master, recent events.
    Show { name: String },
    /// Delete a pool; its nodes return to the free set.
    Delete { name: String },
    /// Add nodes: a count chosen by the selector, or named nodes.
    AddNodes {
        name: String,
        #[arg(long, conflicts_with = "nodes")]
        count: Option<usize>,
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
    },
    /// Release one node back to the free set.
    RemoveNode { name: String, node: String },
    /// Register master candidates in election order (comma-separated node ids).
    Candidates {
        name: String,
        #[arg(value_delimiter = ',')]
        nodes: Vec<String>,
        /// Replace the list instead of appending.
        #[arg(long)]
        replace: bool,
    },
    /// The pool's component master: node, address, epoch, since.
    Master {
        name: String,
        /// Move the master to the next live candidate.
        #[arg(long)]
        failover: bool,
    },
    /// Print the pool's events as they come (Ctrl-C stops).
    Watch { name: String },
}

fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn pool_path(name: &str, rest: &str) -> String {
    format!("/api/v1/pools/{}{rest}", urlencode(name))
}

/// The table of `glory tokens list` (API tokens).
pub fn api_tokens_table(r: &Value) -> String {
    let rows: Vec<Vec<String>> = items(r)
        .iter()
        .map(|t| {
            vec![
                s(&t["id"]),
                s(&t["role"]),
                s(&t["tenant"]),
                when_value(&t["created_ms"], "-"),
                s(&t["description"]),
            ]
        })
        .collect();
    render(&["ID", "ROLE", "TENANT", "CREATED", "DESCRIPTION"], &rows)
}

pub async fn tokens(client: &ApiClient, action: TokensAction, as_json: bool) -> anyhow::Result<()> {
    match action {
        TokensAction::Create {
            role,
            tenant,
            description,
        } => {
            let t = client
                .call(
                    Method::POST,
                    "/api/v1/tokens",
                    Some(json!({"role": role, "tenant": tenant, "description": description})),
                )
                .await?;
            if as_json {
                print_json(&t);
            } else {
                println!("{}", s(&t["token"]));
                eprintln!(
                    "id {}  role {}  tenant {}",
                    s(&t["id"]),
                    s(&t["role"]),
                    s(&t["tenant"])
                );
            }
        }
        TokensAction::List => {
            let r = client.get("/api/v1/tokens").await?;
            if as_json {
                print_json(&r["items"]);
            } else {
                print!("{}", api_tokens_table(&r));
            }
        }
        TokensAction::Revoke { id } => {
            let path = format!("/api/v1/tokens/{}", urlencode(&id));
            delete(client, &path, as_json, &format!("token {id} revoked")).await?;
        }
    }
    Ok(())
}

fn parse_labels(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("label {p:?}: expected key=value"))
        })
        .collect()
}

/// `glory nodes label ID k=v ...` (replaces the node's labels).
pub async fn label(
    client: &ApiClient,
    id: &str,
    pairs: &[String],
    as_json: bool,
) -> anyhow::Result<()> {
    let labels = parse_labels(pairs)?;
    let r = client
        .call(
            Method::PUT,
            &format!("/api/v1/nodes/{}/labels", urlencode(id)),
            Some(json!(labels)),
        )
        .await?;
    if as_json {
        print_json(&r);
    } else {
        println!("node {id} labels: {}", r["labels"]);
    }
    Ok(())
}

/// What a pool master's view says about its process: its state, how its last run
/// ended, and the last lines of its output.
fn process_lines(m: &Value) -> Vec<String> {
    let mut state = format!("process {}", s(&m["process"]));
    let failures = m["failures"].as_u64().unwrap_or(0);
    let restarts = m["restarts"].as_u64().unwrap_or(0);
    if failures > 0 || restarts > 0 {
        state.push_str(&format!(
            " ({failures} quick failures in a row, {restarts} restarts)"
        ));
    }
    let mut lines = vec![state];
    let exit = &m["last_exit"];
    if !exit.is_null() {
        lines.push(format!(
            "last exit {} after {} ms",
            s(&exit["detail"]),
            s(&exit["ran_ms"])
        ));
    }
    if let Some(output) = m["output"].as_array().filter(|o| !o.is_empty()) {
        lines.push("output:".to_string());
        lines.extend(output.iter().map(|l| format!("  {}", s(l))));
    }
    lines
}

/// `NODE at ADDRESS (epoch N, since 3m ago)`.
fn master_line(m: &Value) -> String {
    format!(
        "{} at {} (epoch {}, since {})",
        s(&m["node"]),
        s(&m["address"]),
        s(&m["epoch"]),
        when_value(&m["since"], "-")
    )
}

/// What `glory pools show` prints.
pub fn pool_text(p: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let master = &p["master"];
    let _ = writeln!(out, "pool       {}", s(&p["name"]));
    let _ = writeln!(out, "tenant     {}", s(&p["tenant"]));
    let _ = writeln!(out, "component  {}", s(&p["component"]));
    let _ = writeln!(out, "spread     {}", s(&p["spread"]));
    let _ = writeln!(
        out,
        "nodes      {}  by group {}",
        s(&p["size"]),
        p["nodes_by_group"]
    );
    if !p["created_ms"].is_null() {
        let _ = writeln!(out, "created    {}", when_value(&p["created_ms"], "-"));
    }
    if master.is_null() {
        if p["candidates"].as_array().is_none_or(|c| c.is_empty()) {
            let _ = writeln!(
                out,
                "master     - (no candidates: glory pools candidates {} NODE,NODE,...)",
                s(&p["name"])
            );
        } else {
            let _ = writeln!(out, "master     - (no live candidate)");
        }
    } else {
        let _ = writeln!(out, "master     {}", master_line(master));
        for line in process_lines(master) {
            let _ = writeln!(out, "           {line}");
        }
    }
    let rows: Vec<Vec<String>> = p["candidates"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| {
                    vec![
                        s(&c["order"]),
                        s(&c["node"]),
                        s(&c["state"]),
                        if c["master"].as_bool() == Some(true) {
                            "*".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&render(&["ORDER", "CANDIDATE", "STATE", "MASTER"], &rows));
    }
    let rows: Vec<Vec<String>> = p["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .map(|n| vec![s(&n["id"]), s(&n["group"]), s(&n["state"])])
                .collect()
        })
        .unwrap_or_default();
    out.push('\n');
    out.push_str(&render(&["NODE", "GROUP", "STATE"], &rows));
    if let Some(events) = p["events"].as_array().filter(|e| !e.is_empty()) {
        out.push_str("\nrecent events:\n");
        for e in events {
            let _ = writeln!(out, "  {}", event_line(&s(&e["kind"]), e));
        }
    }
    out
}

fn event_line(kind: &str, data: &Value) -> String {
    let mut fields: Vec<String> = Vec::new();
    if let Some(obj) = data.as_object() {
        for (k, v) in obj {
            if ["id", "kind", "pool", "tenant"].contains(&k.as_str()) {
                continue;
            }
            // Times (`at_ms`, `since`) as people read them.
            match k.strip_suffix("_ms") {
                Some(name) if v.is_u64() => fields.push(format!("{name}={}", when_value(v, "-"))),
                _ if k == "since" && v.is_u64() => {
                    fields.push(format!("since={}", when_value(v, "-")))
                }
                _ => fields.push(format!("{k}={}", s(v))),
            }
        }
    }
    format!("{kind:<18} {}", fields.join(" "))
}

pub async fn pools(client: &ApiClient, action: PoolsAction, as_json: bool) -> anyhow::Result<()> {
    match action {
        PoolsAction::Create {
            name,
            component,
            tenant,
            size,
            spread,
            min_cpus,
            min_memory_gib,
            min_disk_gib,
            groups,
            labels,
            replace_failed,
            replace_delay,
            master_command,
            master_port,
            master_words,
        } => {
            let master_command = master_command_words(master_command.as_deref(), master_words)?;
            if !["none", "groups"].contains(&spread.as_str()) {
                bail!("--spread must be none or groups");
            }
            let mut selector = serde_json::Map::new();
            if let Some(v) = min_cpus {
                selector.insert("min_cpus".into(), json!(v));
            }
            if let Some(v) = min_memory_gib {
                selector.insert("min_memory_gib".into(), json!(v));
            }
            if let Some(v) = min_disk_gib {
                selector.insert("min_disk_gib".into(), json!(v));
            }
            if !groups.is_empty() {
                selector.insert("groups".into(), json!(groups));
            }
            let labels = parse_labels(&labels)?;
            if !labels.is_empty() {
                selector.insert("labels".into(), json!(labels));
            }
            let mut body = json!({
                "name": name,
                "component": component,
                "spread": spread,
                "replace_failed": replace_failed,
            });
            if let Some(t) = tenant {
                body["tenant"] = json!(t);
            }
            if let Some(n) = size {
                body["size"] = json!(n);
            }
            if !selector.is_empty() || size.is_none() {
                body["selector"] = Value::Object(selector);
            }
            if let Some(d) = replace_delay {
                body["replace_delay_seconds"] = json!(d);
            }
            if !master_command.is_empty() || master_port.is_some() {
                body["master"] = json!({"command": master_command, "port": master_port});
            }
            let p = client
                .call(Method::POST, "/api/v1/pools", Some(body))
                .await?;
            if as_json {
                print_json(&p);
            } else {
                print!("{}", created_text(&p));
            }
        }
        PoolsAction::List { tenant, component } => {
            let mut query = Vec::new();
            if let Some(t) = tenant {
                query.push(format!("tenant={}", urlencode(&t)));
            }
            if let Some(c) = component {
                query.push(format!("component={}", urlencode(&c)));
            }
            let path = if query.is_empty() {
                "/api/v1/pools".to_string()
            } else {
                format!("/api/v1/pools?{}", query.join("&"))
            };
            let r = client.get(&path).await?;
            if as_json {
                print_json(&r["items"]);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items(&r)
                .iter()
                .map(|p| {
                    let up = p["nodes"]
                        .as_array()
                        .map(|n| n.iter().filter(|n| n["state"] == "up").count())
                        .unwrap_or(0);
                    vec![
                        s(&p["name"]),
                        s(&p["tenant"]),
                        s(&p["component"]),
                        s(&p["size"]),
                        up.to_string(),
                        s(&p["nodes_by_group"].as_object().map(|m| m.len()).into()),
                        s(&p["master"]["node"]),
                        s(&p["master"]["epoch"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                render(
                    &[
                        "POOL",
                        "TENANT",
                        "COMPONENT",
                        "NODES",
                        "UP",
                        "GROUPS",
                        "MASTER",
                        "EPOCH"
                    ],
                    &rows
                )
            );
        }
        PoolsAction::Show { name } => {
            let p = client.get(&pool_path(&name, "")).await?;
            if as_json {
                print_json(&p);
            } else {
                print!("{}", pool_text(&p));
            }
        }
        PoolsAction::Delete { name } => {
            let r = client
                .call(Method::DELETE, &pool_path(&name, ""), None)
                .await?;
            if as_json {
                print_json(&r);
            } else {
                println!("pool {name} deleted; {} nodes released", s(&r["released"]));
            }
        }
        PoolsAction::AddNodes { name, count, nodes } => {
            let body = match count {
                Some(n) => json!({"count": n}),
                None if !nodes.is_empty() => json!({"nodes": nodes}),
                None => bail!("give --count N or --nodes ID,ID,..."),
            };
            let p = client
                .call(Method::POST, &pool_path(&name, "/nodes"), Some(body))
                .await?;
            if as_json {
                print_json(&p);
            } else {
                println!(
                    "pool {name}: added {}; now {} nodes",
                    p["added"],
                    s(&p["size"])
                );
            }
        }
        PoolsAction::RemoveNode { name, node } => {
            let p = client
                .call(
                    Method::DELETE,
                    &pool_path(&name, &format!("/nodes/{}", urlencode(&node))),
                    None,
                )
                .await?;
            if as_json {
                print_json(&p);
            } else {
                println!("pool {name}: released {node}; now {} nodes", s(&p["size"]));
            }
        }
        PoolsAction::Candidates {
            name,
            nodes,
            replace,
        } => {
            let r = client
                .call(
                    Method::POST,
                    &pool_path(&name, "/candidates"),
                    Some(json!({"nodes": nodes, "replace": replace})),
                )
                .await?;
            if as_json {
                print_json(&r);
            } else {
                let list: Vec<String> = items(&r).iter().map(|c| s(&c["node"])).collect();
                println!("pool {name} candidates: {}", list.join(", "));
            }
        }
        PoolsAction::Master { name, failover } => {
            let m = if failover {
                client
                    .call(Method::POST, &pool_path(&name, "/master/failover"), None)
                    .await?
            } else {
                client.get(&pool_path(&name, "/master")).await?
            };
            if as_json {
                print_json(&m);
            } else {
                println!("{}", master_line(&m));
                for line in process_lines(&m) {
                    println!("{line}");
                }
            }
        }
        PoolsAction::Watch { name } => {
            let mut stream = client.events(&pool_path(&name, "/events")).await?;
            while let Some(msg) = stream.next().await? {
                if as_json {
                    println!("{}", json!({"event": msg.event, "data": msg.data}));
                } else {
                    println!("{}", event_line(&msg.event, &msg.data));
                }
            }
        }
    }
    Ok(())
}

/// The master's command line from `--master-command "..."` (split like a shell does)
/// or the words after `--`; not both.
fn master_command_words(quoted: Option<&str>, words: Vec<String>) -> anyhow::Result<Vec<String>> {
    match quoted {
        Some(_) if !words.is_empty() => bail!(
            "give the master command either as --master-command \"PROGRAM ARGS\" or after --, not both"
        ),
        Some(line) => match shlex::split(line) {
            Some(words) if !words.is_empty() => Ok(words),
            Some(_) => bail!("--master-command is empty"),
            None => bail!("--master-command {line:?}: unbalanced quotes or a trailing backslash"),
        },
        None => Ok(words),
    }
}

/// What `glory pools create` says: the pool, and that it has no master until
/// candidates are set.
pub fn created_text(p: &Value) -> String {
    let name = s(&p["name"]);
    let mut out = format!(
        "pool {name} created with {} nodes: {}\n",
        s(&p["size"]),
        p["nodes_by_group"]
    );
    if p["candidates"].as_array().is_none_or(|c| c.is_empty()) {
        out.push_str(&format!(
            "note: the pool has no master until candidates are set: \
             glory pools candidates {name} NODE,NODE,... (in election order)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use serde_json::json;

    use super::{master_command_words, process_lines, PoolsAction};

    #[derive(Parser)]
    struct Pools {
        #[command(subcommand)]
        action: PoolsAction,
    }

    /// The master command `glory pools ARGS` would send.
    fn master_command(args: &[&str]) -> anyhow::Result<Vec<String>> {
        let parsed = Pools::try_parse_from(std::iter::once("pools").chain(args.iter().copied()))?;
        match parsed.action {
            PoolsAction::Create {
                master_command,
                master_words,
                ..
            } => master_command_words(master_command.as_deref(), master_words),
            _ => anyhow::bail!("not create"),
        }
    }

    #[test]
    fn the_master_command_is_one_quoted_string_or_the_words_after_dashes() {
        let want = ["fsd", "--port", "7000", "--name", "a b"];
        // One string, anywhere among the flags.
        let quoted = master_command(&[
            "create",
            "fs-a",
            "--master-command",
            "fsd --port 7000 --name 'a b'",
            "--component",
            "fs",
            "--size",
            "3",
        ])
        .unwrap();
        assert_eq!(quoted, want);
        // The words after `--`, flags of the program included.
        let words = master_command(&[
            "create",
            "fs-a",
            "--component",
            "fs",
            "--master-port",
            "7000",
            "--",
            "fsd",
            "--port",
            "7000",
            "--name",
            "a b",
        ])
        .unwrap();
        assert_eq!(words, want);
        assert!(master_command(&["create", "fs-a", "--component", "fs"])
            .unwrap()
            .is_empty());
        // Both, or a string a shell would not accept: refused with a reason.
        let both = master_command(&[
            "create",
            "fs-a",
            "--component",
            "fs",
            "--master-command",
            "fsd",
            "--",
            "fsd",
        ]);
        assert!(both.unwrap_err().to_string().contains("not both"));
        let unbalanced = master_command(&[
            "create",
            "fs-a",
            "--component",
            "fs",
            "--master-command",
            "fsd 'a",
        ]);
        assert!(unbalanced.unwrap_err().to_string().contains("unbalanced"));
    }

    #[test]
    fn a_failing_master_shows_its_last_exit_and_output() {
        let m = json!({"node": "n-1", "address": "10.0.0.1:7000", "epoch": 2, "since": 1,
                       "process": "failing", "failures": 3, "restarts": 5,
                       "last_exit": {"code": 3, "signal": null, "ran_ms": 12, "detail": "exit status: 3"},
                       "output": ["boom"]});
        assert_eq!(
            process_lines(&m),
            [
                "process failing (3 quick failures in a row, 5 restarts)",
                "last exit exit status: 3 after 12 ms",
                "output:",
                "  boom",
            ]
        );
        let running = json!({"process": "running", "failures": 0, "restarts": 0});
        assert_eq!(process_lines(&running), ["process running"]);
    }
}
