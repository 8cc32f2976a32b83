//! The CLI's commands: read the API, print aligned tables or JSON.

use std::path::Path;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use crate::client::{urlencode, ApiClient};
use crate::table::{render, when_value};
use crate::up::{Up, UpOptions};

/// An API client with the token from the flag/env, or `<data_dir>/operator.token`,
/// checking an HTTPS API against `cacert` (the flag/env), or `<data_dir>/ca.pem`.
pub fn client(
    api: &str,
    token: Option<&str>,
    cacert: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<ApiClient> {
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
    let client = ApiClient::new(api, &token)?;
    let ca = match cacert {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--cacert {}", path.display()))?,
        ),
        None => std::fs::read_to_string(data_dir.join("ca.pem")).ok(),
    };
    match ca {
        Some(pem) => client
            .with_ca(&pem)
            .with_context(|| format!("the CA certificate for {api}")),
        None => Ok(client),
    }
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
    println!(
        "  web console:     {}/  (sign in with the operator token)",
        up.api_url
    );
    println!("  REST API:        {}", up.api_url);
    if up.api_url.starts_with("https://") {
        println!(
            "  CA certificate:  {} (the CLI finds it there; browsers and curl need it: --cacert)",
            data_dir.join("ca.pem").display()
        );
    }
    println!("  cluster master:  {} (QUIC)", up.quic_addr);
    println!(
        "  operator token:  {} (also in {})",
        up.operator_token,
        data_dir.join("operator.token").display()
    );
    println!("  try:             glory cluster    glory nodes --state down    glory groups");
    println!("  pools:           glory tenants create t    glory pools create p --tenant t --component fs --size 10 --spread groups");
    if let Some(group) = &up.real_group {
        println!(
            "  real agents:     {} in group {group}: glory pools create web --tenant t --component custom:web --size {} --groups {group}",
            up.real_agents.join(" "),
            up.real_agents.len()
        );
    }
    if let Some(lab) = &up.lab {
        println!(
            "  lab:             namespace {} (boot network {}/24 on {}), provisioner http://{}",
            lab.netns,
            lab.host_ip,
            lab.host_if,
            up.provisioner_http
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        for vm in &lab.vms {
            println!(
                "    {}  {}  {}  console {}",
                vm.name,
                vm.mac,
                if vm.uefi { "UEFI" } else { "BIOS" },
                vm.console.display()
            );
        }
        println!("  watch them boot: glory boot --watch    power: glory power mac:<MAC> off|on");
    }
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
    filter: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (k, v) in [
        ("state", state),
        ("group", group),
        ("q", q),
        ("filter", filter),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", urlencode(v)));
        }
    }
    let items = client.all_nodes(&query.join("&")).await?;
    if as_json {
        print_json(&Value::Array(items));
        return Ok(());
    }
    print!("{}", nodes_table(&items));
    Ok(())
}

/// The table of `glory nodes`, with its count line.
pub fn nodes_table(items: &[Value]) -> String {
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
    format!(
        "{}{} nodes\n",
        render(
            &["ID", "HOSTNAME", "STATE", "GROUP", "CPUS", "MEMORY", "CPU%"],
            &rows
        ),
        rows.len()
    )
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
            "certificate".into(),
            format!(
                "serial {}, expires {}",
                s(&n["serial"]),
                s(&n["cert_expires_at"])
            ),
        ],
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
        println!();
        print!("{}", history_table(history));
    }
    Ok(())
}

/// A node's state history.
pub fn history_table(history: &[Value]) -> String {
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|h| {
            vec![
                when_value(&h["at_ms"], "-"),
                s(&h["state"]),
                s(&h["reason"]),
            ]
        })
        .collect();
    render(&["AT", "STATE", "REASON"], &rows)
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
                .map(|n| {
                    vec![
                        s(&n["node"]),
                        s(&n["hostname"]),
                        s(&n["identity"]),
                        crate::table::when_value(&n["removed_ms"], "-"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print!(
        "{}",
        render(&["NODE", "HOSTNAME", "IDENTITY", "REMOVED"], &rows)
    );
    Ok(())
}

pub async fn groups(client: &ApiClient, as_json: bool) -> anyhow::Result<()> {
    let g = client.get("/api/v1/groups").await?;
    if as_json {
        print_json(&g["items"]);
        return Ok(());
    }
    print!("{}", groups_table(&g["items"]));
    Ok(())
}

/// Addresses in a JSON array, comma-separated; `-` for none.
fn list(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(",")
    }
}

/// The table of `glory groups`: each group's active master and its standbys.
pub fn groups_table(items: &Value) -> String {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|g| {
                    vec![
                        s(&g["id"]),
                        s(&g["master"]),
                        list(&g["standbys"]),
                        if g["connected"].as_bool() == Some(true) {
                            match &g["connected_since_ms"] {
                                Value::Null => "yes".into(),
                                since => format!("yes ({})", when_value(since, "-")),
                            }
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
    render(
        &[
            "GROUP",
            "MASTER",
            "STANDBYS",
            "CONNECTED",
            "NODES",
            "STATES",
        ],
        &rows,
    )
}

pub use crate::cli_bootstrap_tokens::{
    bootstrap_token_created_line, bootstrap_tokens_table, token_create, token_delete, token_list,
};

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

/// `glory sim kill-process ID NAME`, `glory sim start-process ID NAME`.
pub async fn sim_process(
    client: &ApiClient,
    id: &str,
    name: &str,
    action: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    let r = client
        .call(
            Method::POST,
            &format!(
                "/api/v1/sim/nodes/{}/processes/{}/{action}",
                urlencode(id),
                urlencode(name)
            ),
            None,
        )
        .await?;
    if as_json {
        print_json(&r);
    } else {
        println!("node {id}: {name} {}", s(&r["action"]));
    }
    Ok(())
}

/// `glory sim load ID --cpu 95 --for 60s`.
pub async fn sim_load(
    client: &ApiClient,
    id: &str,
    cpu: f64,
    duration: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    let seconds = crate::bench::faults::parse_duration(duration)
        .map_err(anyhow::Error::msg)?
        .as_secs()
        .max(1);
    let r = client
        .call(
            Method::POST,
            &format!("/api/v1/sim/nodes/{}/load", urlencode(id)),
            Some(serde_json::json!({"cpu_percent": cpu, "seconds": seconds})),
        )
        .await?;
    if as_json {
        print_json(&r);
    } else {
        println!("node {id}: CPU held at {cpu}% for {seconds} s");
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

/// `glory nodes bulk-label FILTER k=v...`: per-node results.
pub async fn bulk_label(
    client: &ApiClient,
    filter: &str,
    labels: &[String],
    dry_run: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .ok_or_else(|| anyhow::anyhow!("label {l:?}: write it as name=value"))
        })
        .collect::<anyhow::Result<_>>()?;
    let r = client
        .call(
            Method::POST,
            "/api/v1/nodes/bulk",
            Some(serde_json::json!({"filter": filter, "action": "label",
                "labels": labels, "dry_run": dry_run})),
        )
        .await?;
    if as_json {
        print_json(&r);
        return Ok(());
    }
    let results = r["results"].as_array().cloned().unwrap_or_default();
    if dry_run {
        println!("{} nodes match", r["matched"]);
        return Ok(());
    }
    let failed: Vec<&Value> = results.iter().filter(|x| x["ok"] != true).collect();
    println!(
        "{} of {} nodes labelled",
        results.len() - failed.len(),
        r["matched"]
    );
    for f in failed {
        println!("{}: {}", s(&f["node"]), s(&f["error"]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::cli_pools::{api_tokens_table, created_text, pool_text};
    use crate::cli_tenants::tenants_table;
    use crate::table::has_raw_epoch_ms;
    use glory_protocol::now_ms;

    /// Answers shaped like the API's, with times around now, a week ago and far ahead.
    fn times() -> (u64, u64, u64) {
        let now = now_ms();
        (
            now - 3 * 60_000,
            now + 59 * 60_000 + 30_000,
            now + 400 * 86_400_000,
        )
    }

    fn assert_readable(what: &str, text: &str) {
        assert!(
            !has_raw_epoch_ms(text),
            "{what} shows raw epoch milliseconds:\n{text}"
        );
    }

    #[test]
    fn tables_show_no_raw_epoch_milliseconds() {
        let (past, soon, far) = times();
        let bootstrap = json!([
            {"id": "gb-1", "scope": "any", "single_use": false, "used": 0,
             "created_ms": past, "expires_ms": soon, "description": "racks"},
            {"id": "gb-2", "scope": "node", "single_use": true, "used": 1,
             "created_ms": past, "expires_ms": null, "description": ""},
            {"id": "gb-3", "scope": "group_master", "single_use": false, "used": 0,
             "created_ms": past, "expires_ms": far, "description": ""},
        ]);
        let text = super::bootstrap_tokens_table(&bootstrap);
        assert_readable("glory bootstrap-tokens list", &text);
        assert!(text.contains("in 59m") && text.contains("3m ago"), "{text}");
        assert!(text.contains("never") && text.contains(" UTC"), "{text}");
        let created = json!({"id": "gb-1", "token": "gb-1.s", "expires_ms": soon,
                             "single_use": false, "ca_cert_hash": "ab"});
        let line = super::bootstrap_token_created_line(&created);
        assert_readable("glory bootstrap-tokens create", &line);
        assert!(line.contains("expires in 59m"), "{line}");

        let api = json!({"items": [{"id": "t-1", "role": "tenant", "tenant": "alpha",
                                    "created_ms": past, "description": ""}]});
        assert_readable("glory tokens list", &api_tokens_table(&api));
        let tenants = json!({"items": [{"name": "alpha", "created_ms": past, "description": ""}]});
        assert_readable("glory tenants list", &tenants_table(&tenants));

        let groups = json!([{"id": "g00", "master": "10.0.0.5:7402", "connected": true,
            "standbys": ["10.0.0.6:7402"], "connected_since_ms": past, "nodes": 2,
            "nodes_by_state": {"up": 2}, "last_report_ms": past, "created_ms": past}]);
        let text = super::groups_table(&groups);
        assert_readable("glory groups", &text);
        assert!(text.contains("yes (3m ago)"), "{text}");

        let nodes = vec![
            json!({"id": "n-1a2b3c4d5e6f", "hostname": "h1", "state": "up",
            "group": "g00", "state_since_ms": past, "enrolled_ms": past, "load_ms": past,
            "inventory": {"cpus": 8, "memory_bytes": 1u64 << 34}, "load": {"cpu": 12.0}}),
        ];
        assert_readable("glory nodes", &super::nodes_table(&nodes));
        let history = [json!({"at_ms": past, "state": "up", "reason": "heartbeat"})];
        assert_readable("glory node ID", &super::history_table(&history));

        let pool = json!({"name": "fs-a", "tenant": "alpha", "component": "fs",
            "spread": "groups", "size": 1, "nodes_by_group": {"g00": 1},
            "nodes": [{"id": "n-1", "group": "g00", "state": "up"}],
            "candidates": [{"node": "n-1", "order": 1, "state": "up", "master": true}],
            "master": {"node": "n-1", "address": "10.0.0.7:7000", "epoch": 3, "since": past},
            "created_ms": past,
            "events": [{"id": 7, "kind": "master_elected", "at_ms": past, "pool": "fs-a",
                        "node": "n-1", "epoch": 3}]});
        let text = pool_text(&pool);
        assert_readable("glory pools show", &text);
        assert!(
            text.contains("since 3m ago") && text.contains("at=3m ago"),
            "{text}"
        );
    }

    #[test]
    fn groups_show_their_standbys() {
        let groups = json!([
            {"id": "g00", "master": "10.0.0.5:7402", "connected": true,
             "standbys": ["10.0.0.6:7402", "10.0.0.7:7402"], "nodes": 0, "nodes_by_state": {}},
            {"id": "g01", "master": "10.0.1.5:7402", "connected": false, "standbys": [],
             "nodes": 0, "nodes_by_state": {}},
        ]);
        let text = super::groups_table(&groups);
        assert!(text.starts_with("GROUP  MASTER         STANDBYS"), "{text}");
        assert!(text.contains("10.0.0.6:7402,10.0.0.7:7402"), "{text}");
        let g01 = text.lines().find(|l| l.starts_with("g01")).unwrap();
        assert!(g01.contains(" - ") && g01.contains("NO"), "{text}");
    }

    #[test]
    fn a_pool_without_candidates_says_it_has_no_master() {
        let pool = json!({"name": "fs-a", "size": 2, "nodes_by_group": {"g00": 2},
                          "candidates": [], "master": null});
        let text = created_text(&pool);
        assert!(
            text.contains("no master until candidates are set: glory pools candidates fs-a"),
            "{text}"
        );
        let with = json!({"name": "fs-a", "size": 2, "nodes_by_group": {"g00": 2},
                          "candidates": [{"node": "n-1"}], "master": null});
        assert!(!created_text(&with).contains("note"));
    }
}
