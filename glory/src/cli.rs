//! The CLI's commands: read the API, print aligned tables or JSON.

use std::path::Path;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{urlencode, ApiClient};
use crate::table::render;
use crate::up::{Up, UpOptions};

/// An API client with the token from the flag/env, or `<data_dir>/operator.token`.
pub fn client(api: &str, token: Option<&str>, data_dir: &Path) -> anyhow::Result<ApiClient> {
    let token = match token {
        Some(t) => t.to_string(),
        None => {
            let path = data_dir.join("operator.token");
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no API token: pass --token, set GLORY_TOKEN, or run from where {} exists",
                    path.display()
                )
            })?
        }
    };
    ApiClient::new(api, &token)
}

pub(crate) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.1}"))
        .unwrap_or_else(|| "-".into())
}

fn gib(bytes: &Value) -> String {
    bytes
        .as_u64()
        .map(|b| format!("{:.1}G", b as f64 / (1u64 << 30) as f64))
        .unwrap_or_else(|| "-".into())
}

fn states_line(by_state: &Value) -> String {
    by_state
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

pub async fn up(options: UpOptions) -> anyhow::Result<()> {
    let nodes = options.nodes;
    let data_dir = options.data_dir.clone();
    let up = Up::start(options).await?;
    println!("GLORY-CL all-in-one cluster is running ({nodes} simulated nodes).");
    println!("  REST API:        http://{}", up.api_addr);
    println!("  cluster master:  {} (QUIC)", up.quic_addr);
    println!(
        "  operator token:  {} (also in {})",
        up.operator_token,
        data_dir.join("operator.token").display()
    );
    println!("  try:             glory cluster    glory nodes --state down    glory groups");
    println!("  pools:           glory tenants create t    glory pools create p --tenant t --component fs --size 10 --spread groups");
    println!("Ctrl-C stops it.");
    let shutdown = glory_protocol::process::shutdown_on_signal();
    shutdown.cancelled().await;
    println!("shutting down...");
    up.shutdown().await;
    println!("stopped.");
    Ok(())
}

pub async fn cluster(client: &ApiClient, as_json: bool) -> anyhow::Result<()> {
    let c = client.get("/api/v1/cluster").await?;
    if as_json {
        print_json(&c);
        return Ok(());
    }
    let rows = vec![
        vec!["name".into(), s(&c["name"])],
        vec!["nodes".into(), s(&c["nodes"])],
        vec!["by state".into(), states_line(&c["nodes_by_state"])],
        vec![
            "groups".into(),
            format!(
                "{} ({} connected)",
                s(&c["groups"]),
                s(&c["groups_connected"])
            ),
        ],
        vec![
            "heartbeats".into(),
            format!(
                "received {} lost {}",
                s(&c["heartbeats"]["received"]),
                s(&c["heartbeats"]["lost"])
            ),
        ],
        vec![
            "key master".into(),
            format!(
                "{} ({}), {} writes",
                s(&c["keymaster"]["backend"]),
                if c["keymaster"]["available"].as_bool() == Some(true) {
                    "available"
                } else {
                    "UNAVAILABLE"
                },
                s(&c["keymaster"]["writes"])
            ),
        ],
        vec!["uptime".into(), format!("{}s", s(&c["uptime_seconds"]))],
    ];
    print!("{}", render(&["CLUSTER", ""], &rows));
    Ok(())
}

pub async fn nodes(
    client: &ApiClient,
    state: Option<&str>,
    group: Option<&str>,
    q: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (k, v) in [("state", state), ("group", group), ("q", q)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", urlencode(v)));
        }
    }
    let items = client.all_nodes(&query.join("&")).await?;
    if as_json {
        print_json(&Value::Array(items));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|n| {
            vec![
                s(&n["id"]),
                s(&n["hostname"]),
                s(&n["state"]),
                s(&n["group"]),
                s(&n["inventory"]["cpus"]),
                gib(&n["inventory"]["memory_bytes"]),
                n["load"]["cpu"]
                    .as_f64()
                    .map(|c| format!("{c:.0}%"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &["ID", "HOSTNAME", "STATE", "GROUP", "CPUS", "MEMORY", "CPU%"],
            &rows
        )
    );
    println!("{} nodes", rows.len());
    Ok(())
}

pub async fn node(client: &ApiClient, id: &str, as_json: bool) -> anyhow::Result<()> {
    let n = client
        .get(&format!("/api/v1/nodes/{}", urlencode(id)))
        .await?;
    if as_json {
        print_json(&n);
        return Ok(());
    }
    let inv = &n["inventory"];
    let nics = inv["nics"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|nic| {
                    format!(
                        "{} {} {}",
                        s(&nic["name"]),
                        s(&nic["mac"]),
                        nic["addresses"]
                            .as_array()
                            .map(|x| x.iter().map(s).collect::<Vec<_>>().join(","))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let disks = inv["disks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    format!(
                        "{} {} {}",
                        s(&d["name"]),
                        s(&d["mount_point"]),
                        gib(&d["total_bytes"])
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let rows = vec![
        vec!["id".into(), s(&n["id"])],
        vec!["hostname".into(), s(&n["hostname"])],
        vec!["state".into(), s(&n["state"])],
        vec!["group".into(), s(&n["group"])],
        vec!["machine id".into(), s(&inv["machine_id"])],
        vec![
            "cpus".into(),
            format!("{} {}", s(&inv["cpus"]), s(&inv["cpu_model"])),
        ],
        vec!["memory".into(), gib(&inv["memory_bytes"])],
        vec!["kernel".into(), s(&inv["kernel"])],
        vec!["os".into(), s(&inv["os"])],
        vec!["nics".into(), nics],
        vec!["disks".into(), disks],
        vec![
            "load".into(),
            format!(
                "cpu {}% load1 {} mem {}",
                num(&n["load"]["cpu"]),
                num(&n["load"]["load1"]),
                gib(&n["load"]["mem_used"])
            ),
        ],
    ];
    print!("{}", render(&["NODE", ""], &rows));
    if let Some(history) = n["history"].as_array() {
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|h| vec![s(&h["at_ms"]), s(&h["state"]), s(&h["reason"])])
            .collect();
        println!();
        print!("{}", render(&["AT_MS", "STATE", "REASON"], &rows));
    }
    Ok(())
}

/// DELETE `path`; print the answer as JSON, or `done` for people.
pub(crate) async fn delete(
    client: &ApiClient,
    path: &str,
    as_json: bool,
    done: &str,
) -> anyhow::Result<Value> {
    let r = client.call(Method::DELETE, path, None).await?;
    if as_json {
        print_json(&r);
    } else {
        println!("{done}");
    }
    Ok(r)
}

pub async fn remove_node(client: &ApiClient, id: &str, as_json: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/nodes/{}", urlencode(id));
    delete(client, &path, as_json, &format!("node {id} removed")).await?;
    Ok(())
}

pub async fn admit_node(client: &ApiClient, id: &str, as_json: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/nodes/{}/admit", urlencode(id));
    let r = client.call(Method::POST, &path, None).await?;
    if as_json {
        print_json(&r);
    } else {
        println!(
            "node {} ({}) may enroll again; its agent will on its next attempt",
            s(&r["node"]),
            s(&r["identity"])
        );
    }
    Ok(())
}

pub async fn removed_nodes(client: &ApiClient, as_json: bool) -> anyhow::Result<()> {
    let r = client.get("/api/v1/removed-nodes").await?;
    if as_json {
        print_json(&r["items"]);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|n| vec![s(&n["node"]), s(&n["hostname"]), s(&n["identity"])])
                .collect()
        })
        .unwrap_or_default();
    print!("{}", render(&["NODE", "HOSTNAME", "IDENTITY"], &rows));
    Ok(())
}

pub async fn groups(client: &ApiClient, as_json: bool) -> anyhow::Result<()> {
    let g = client.get("/api/v1/groups").await?;
    if as_json {
        print_json(&g["items"]);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = g["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|g| {
                    vec![
                        s(&g["id"]),
                        s(&g["master"]),
                        if g["connected"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "NO".into()
                        },
                        s(&g["nodes"]),
                        states_line(&g["nodes_by_state"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print!(
        "{}",
        render(&["GROUP", "MASTER", "CONNECTED", "NODES", "STATES"], &rows)
    );
    Ok(())
}

pub async fn token_create(
    client: &ApiClient,
    ttl: Option<u64>,
    single_use: bool,
    scope: &str,
    description: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    if !["node", "group_master", "any"].contains(&scope) {
        bail!("--scope must be node, group_master or any");
    }
    let mut body = json!({"single_use": single_use, "scope": scope, "description": description});
    if let Some(ttl) = ttl {
        body["ttl_seconds"] = json!(ttl);
    }
    let t = client
        .call(Method::POST, "/api/v1/bootstrap-tokens", Some(body))
        .await?;
    if as_json {
        print_json(&t);
    } else {
        println!("{}", s(&t["token"]));
        eprintln!(
            "id {}  expires_ms {}  single_use {}  ca_cert_hash {}",
            s(&t["id"]),
            s(&t["expires_ms"]),
            s(&t["single_use"]),
            s(&t["ca_cert_hash"])
        );
    }
    Ok(())
}

pub async fn token_list(client: &ApiClient, as_json: bool) -> anyhow::Result<()> {
    let t = client.get("/api/v1/bootstrap-tokens").await?;
    if as_json {
        print_json(&t["items"]);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = t["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|t| {
                    vec![
                        s(&t["id"]),
                        s(&t["scope"]),
                        s(&t["single_use"]),
                        s(&t["used"]),
                        s(&t["expires_ms"]),
                        s(&t["description"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print!(
        "{}",
        render(
            &[
                "ID",
                "SCOPE",
                "SINGLE_USE",
                "USED",
                "EXPIRES_MS",
                "DESCRIPTION"
            ],
            &rows
        )
    );
    Ok(())
}

pub async fn token_delete(client: &ApiClient, id: &str, as_json: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/bootstrap-tokens/{}", urlencode(id));
    delete(
        client,
        &path,
        as_json,
        &format!("bootstrap token {id} deleted"),
    )
    .await?;
    Ok(())
}

pub async fn sim(client: &ApiClient, id: &str, action: &str, as_json: bool) -> anyhow::Result<()> {
    let r = client
        .call(
            Method::POST,
            &format!("/api/v1/sim/nodes/{}/{action}", urlencode(id)),
            None,
        )
        .await?;
    if as_json {
        print_json(&r);
    } else {
        println!("node {id}: {}", s(&r["action"]));
    }
    Ok(())
}

/// `glory sim --nodes ...`: run the benchmark, print the summary table.
pub async fn bench(options: crate::bench::SimOptions) -> anyhow::Result<()> {
    eprintln!(
        "glory sim: {} nodes, {} groups, {:?} mode, {:.0} s{}",
        options.nodes,
        options.groups,
        options.mode,
        options.duration.as_secs_f64(),
        if options.faults_spec.is_empty() {
            String::new()
        } else {
            format!(", faults {}", options.faults_spec)
        }
    );
    let report = crate::bench::run(options.clone()).await?;
    print!("{}", report.table());
    if let Some(path) = &options.report {
        println!("report: {}", path.display());
    }
    Ok(())
}
