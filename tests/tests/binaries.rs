//! The three real binaries as separate processes with config files, driven by the
//! `glory` CLI, as an operator would deploy them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glory_tests::binary;
use glory_tests::procs::{free_tcp, free_udp, Procs};
use serde_json::Value;

fn glory(api: &str, token: &str, args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(binary("glory")?)
        .args(["--api", api, "--token", token, "--json"])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "glory {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn separate_processes_enroll_a_real_node_listed_by_the_cli() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (cm_quic, api, gm_quic) = (free_udp(), free_tcp(), free_udp());
    let api_url = format!("http://{api}");
    std::fs::write(
        d.join("cm.toml"),
        format!(
            "listen = '{cm_quic}'\napi_listen = '{api}'\ndata_dir = '{}'\n",
            d.join("cm").display()
        ),
    )?;
    let mut procs = Procs::default();
    procs.spawn(
        "glory-cluster-master",
        "glory-cluster-master",
        &["--config", d.join("cm.toml").to_str().unwrap()],
        &d.join("cm.log"),
    )?;
    let token_file = d.join("cm").join("operator.token");
    let op_token = wait_for("operator token file", Duration::from_secs(20), || {
        std::fs::read_to_string(&token_file)
            .ok()
            .filter(|t| !t.trim().is_empty())
    })?;
    let op_token = op_token.trim().to_string();
    let created = wait_for("the API", Duration::from_secs(20), || {
        glory(
            &api_url,
            &op_token,
            &[
                "bootstrap-tokens",
                "create",
                "--scope",
                "any",
                "--ttl",
                "600",
            ],
        )
        .ok()
    })?;
    let bootstrap = created["token"].as_str().context("token")?.to_string();
    let ca_hash = created["ca_cert_hash"]
        .as_str()
        .context("ca_cert_hash")?
        .to_string();

    std::fs::write(
        d.join("gm.toml"),
        format!(
            "group = 'g00'\nlisten = '{gm_quic}'\ncluster_master = '{cm_quic}'\ntoken = '{bootstrap}'\n\
             ca_cert_hash = '{ca_hash}'\ndata_dir = '{}'\n",
            d.join("gm").display()
        ),
    )?;
    procs.spawn(
        "glory-group-master",
        "glory-group-master",
        &["--config", d.join("gm.toml").to_str().unwrap()],
        &d.join("gm.log"),
    )?;
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "cluster_master = '{cm_quic}'\ntoken = '{bootstrap}'\nca_cert_hash = '{ca_hash}'\nstate_dir = '{}'\n\
             bind = '127.0.0.1:0'\n",
            d.join("agent").display()
        ),
    )?;
    procs.spawn(
        "glory-node-agent",
        "glory-node-agent",
        &["--config", d.join("agent.toml").to_str().unwrap()],
        &d.join("agent.log"),
    )?;

    let nodes = wait_for(
        "the real node up in `glory nodes --json`",
        Duration::from_secs(30),
        || {
            let nodes = glory(&api_url, &op_token, &["nodes"]).ok()?;
            let up = nodes.as_array()?.iter().any(|n| n["state"] == "up");
            up.then_some(nodes)
        },
    )
    .map_err(|e| {
        let logs: String = ["cm.log", "gm.log", "agent.log"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(d.join(f)).unwrap_or_default()
                )
            })
            .collect();
        e.context(logs)
    })?;
    let node = &nodes.as_array().unwrap()[0];
    // It reports this very machine.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    assert_eq!(node["hostname"], hostname);
    assert_eq!(node["group"], "g00");
    assert!(node["inventory"]["cpus"].as_u64().unwrap_or(0) >= 1);
    assert!(!node["inventory"]["kernel"]
        .as_str()
        .unwrap_or("")
        .is_empty());
    assert!(node["inventory"]["nics"]
        .as_array()
        .is_some_and(|n| !n.is_empty()));
    let id = node["id"].as_str().unwrap().to_string();

    // The agent's clean shutdown shows as `left`.
    let status = procs.terminate("glory-node-agent")?;
    assert!(status.success(), "agent exit: {status}");
    wait_for("node left", Duration::from_secs(10), || {
        let n = glory(&api_url, &op_token, &["node", &id]).ok()?;
        (n["state"] == "left").then_some(())
    })?;
    // The agent kept its identity on disk: it comes back as the same node.
    procs.spawn(
        "glory-node-agent",
        "glory-node-agent",
        &["--config", d.join("agent.toml").to_str().unwrap()],
        &d.join("agent2.log"),
    )?;
    wait_for("node up again", Duration::from_secs(20), || {
        let n = glory(&api_url, &op_token, &["node", &id]).ok()?;
        (n["state"] == "up").then_some(())
    })?;
    let cluster = glory(&api_url, &op_token, &["cluster"])?;
    assert_eq!(cluster["nodes"], 1);

    for name in [
        "glory-node-agent",
        "glory-group-master",
        "glory-cluster-master",
    ] {
        let status = procs.terminate(name)?;
        assert!(status.success(), "{name} exit: {status}");
    }
    Ok(())
}
