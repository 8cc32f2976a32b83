//! The three real binaries as separate processes with config files, driven by the
//! `glory` CLI, as an operator would deploy them.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use glory_tests::binary;
use glory_tests::procs::{free_tcp, free_udp, Procs};
use glory_tests::wait::until_some_blocking;
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

/// A cluster master and one group master (g00) as real processes, and a bootstrap token
/// for agents.
struct Masters {
    procs: Procs,
    dir: tempfile::TempDir,
    cm_quic: std::net::SocketAddr,
    api_url: String,
    op_token: String,
    bootstrap: String,
    ca_hash: String,
}

impl Masters {
    fn start() -> anyhow::Result<Masters> {
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
        let op_token = until_some_blocking("operator token file", Duration::from_secs(20), || {
            std::fs::read_to_string(&token_file)
                .ok()
                .filter(|t| !t.trim().is_empty())
        })?;
        let op_token = op_token.trim().to_string();
        let created = until_some_blocking("the API", Duration::from_secs(20), || {
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
        Ok(Masters {
            procs,
            dir,
            cm_quic,
            api_url,
            op_token,
            bootstrap,
            ca_hash,
        })
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    /// Write `<name>.toml` for an agent with its own state directory (`extra` appended)
    /// and start it, logging to `<name>.log` (or `log`).
    fn agent_config(&self, name: &str, extra: &str) -> anyhow::Result<()> {
        std::fs::write(
            self.path(&format!("{name}.toml")),
            format!(
                "cluster_master = '{}'\ntoken = '{}'\nca_cert_hash = '{}'\nstate_dir = '{}'\n\
                 bind = '127.0.0.1:0'\nmax_backoff_ms = 1000\n{extra}",
                self.cm_quic,
                self.bootstrap,
                self.ca_hash,
                self.path(name).display()
            ),
        )?;
        Ok(())
    }

    fn spawn_agent(&mut self, name: &str, log: &str) -> anyhow::Result<()> {
        let config = self.path(&format!("{name}.toml"));
        let log = self.path(log);
        self.procs.spawn(
            name,
            "glory-node-agent",
            &["--config", config.to_str().unwrap()],
            &log,
        )?;
        Ok(())
    }

    fn glory(&self, args: &[&str]) -> anyhow::Result<Value> {
        glory(&self.api_url, &self.op_token, args)
    }

    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap_or_default()
    }

    /// Every log, for a failure message.
    fn logs(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".log"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|f| format!("--- {f}\n{}", self.log(f)))
            .collect()
    }

    /// Wait for a condition on the API, with every log in the error.
    fn wait_api<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Masters) -> Option<T>,
    ) -> anyhow::Result<T> {
        until_some_blocking(what, timeout, || f(self)).map_err(|e| e.context(self.logs()))
    }

    /// The cluster's kept events so far (the SSE stream read for a moment).
    fn events(&self) -> anyhow::Result<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut resp = reqwest::Client::new()
                .get(format!("{}/api/v1/events", self.api_url))
                .bearer_auth(&self.op_token)
                .header("last-event-id", "0")
                .send()
                .await?;
            let mut body = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
                body.extend_from_slice(&chunk);
            }
            Ok(String::from_utf8_lossy(&body).into_owned())
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        for name in ["glory-group-master", "glory-cluster-master"] {
            let status = self.procs.terminate(name)?;
            assert!(status.success(), "{name} exit: {status}");
        }
        Ok(())
    }
}

#[test]
fn separate_processes_enroll_a_real_node_listed_by_the_cli() -> anyhow::Result<()> {
    let mut m = Masters::start()?;
    m.agent_config("agent", "")?;
    m.spawn_agent("agent", "agent.log")?;
    let nodes = m.wait_api(
        "the real node up in `glory nodes --json`",
        Duration::from_secs(30),
        |m| {
            let nodes = m.glory(&["nodes"]).ok()?;
            let up = nodes.as_array()?.iter().any(|n| n["state"] == "up");
            up.then_some(nodes)
        },
    )?;
    let node = &nodes.as_array().unwrap()[0];
    // It reports this very machine, under the identity of its hardware.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    assert_eq!(node["hostname"], hostname);
    assert_eq!(node["group"], "g00");
    let id = node["id"].as_str().unwrap().to_string();
    let detail = m.glory(&["node", &id])?;
    let inventory = &detail["inventory"];
    assert!(inventory["cpus"].as_u64().unwrap_or(0) >= 1);
    assert!(!inventory["kernel"].as_str().unwrap_or("").is_empty());
    assert!(inventory["nics"].as_array().is_some_and(|n| !n.is_empty()));
    let identity = inventory["identity"].as_str().unwrap_or("");
    assert!(
        identity.starts_with("uuid:") || identity.starts_with("mac:"),
        "a server's identity comes from its hardware: {identity:?}"
    );
    // The agent says at INFO what it is connected to.
    m.wait_api("the agent's connected line", Duration::from_secs(10), |m| {
        m.log("agent.log")
            .contains("connected to group master")
            .then_some(())
    })?;

    // The agent's clean shutdown shows as `left`.
    let status = m.procs.terminate("agent")?;
    assert!(status.success(), "agent exit: {status}");
    m.wait_api("node left", Duration::from_secs(10), |m| {
        let n = m.glory(&["node", &id]).ok()?;
        (n["state"] == "left").then_some(())
    })?;
    // The agent kept its identity on disk: it comes back as the same node, and says so.
    m.spawn_agent("agent", "agent2.log")?;
    m.wait_api("node up again", Duration::from_secs(20), |m| {
        let n = m.glory(&["node", &id]).ok()?;
        (n["state"] == "up").then_some(())
    })?;
    assert!(m
        .log("agent2.log")
        .contains("starting as the node enrolled earlier"));
    let cluster = m.glory(&["cluster"])?;
    assert_eq!(cluster["nodes"], 1);

    let status = m.procs.terminate("agent")?;
    assert!(status.success(), "agent exit: {status}");
    m.stop()
}

/// Servers cloned from one image share /etc/machine-id; agents on one host share all of
/// their hardware. A second agent claiming a live node's identity is refused by name,
/// never merged into it; an explicit `node_name` makes it a node of its own.
#[test]
fn agents_sharing_one_server_identity_are_never_merged() -> anyhow::Result<()> {
    let mut m = Masters::start()?;
    m.agent_config("first", "")?;
    m.spawn_agent("first", "first.log")?;
    let first_id = m.wait_api("the first agent up", Duration::from_secs(30), |m| {
        let nodes = m.glory(&["nodes"]).ok()?;
        let up = nodes.as_array()?.iter().find(|n| n["state"] == "up")?;
        up["id"].as_str().map(str::to_string)
    })?;
    // The same server again, from another state directory: same identity, new key.
    m.agent_config("clone", "")?;
    m.spawn_agent("clone", "clone.log")?;
    let refusal = m.wait_api("the clone refused", Duration::from_secs(20), |m| {
        let log = m.log("clone.log");
        log.lines()
            .find(|l| l.contains("IdentityConflict"))
            .map(str::to_string)
    })?;
    assert!(
        refusal.contains(&first_id) && refusal.contains("is held by live node"),
        "the refusal names the holder: {refusal}"
    );
    let events = m.events()?;
    assert!(
        events.contains("node_identity_conflict") && events.contains(&first_id),
        "operators get an event: {events}"
    );
    let nodes = m.glory(&["nodes"])?;
    assert_eq!(
        nodes.as_array().map(Vec::len),
        Some(1),
        "never merged: {nodes}"
    );
    assert!(m
        .log("first.log")
        .lines()
        .all(|l| !l.contains("superseded")));
    let status = m.procs.terminate("clone")?;
    assert!(status.success(), "clone exit: {status}");

    // With a name of its own, a second agent on this host is a second node.
    m.agent_config("named", "node_name = 'lab-b'\n")?;
    m.spawn_agent("named", "named.log")?;
    let named_id = m.wait_api("two nodes up", Duration::from_secs(30), |m| {
        let nodes = m.glory(&["nodes"]).ok()?;
        let nodes = nodes.as_array()?;
        let up = nodes.iter().filter(|n| n["state"] == "up").count();
        (up == 2).then(|| {
            nodes
                .iter()
                .find(|n| n["id"] != first_id.as_str())
                .and_then(|n| n["id"].as_str())
                .map(str::to_string)
        })?
    })?;
    let named = m.glory(&["node", &named_id])?;
    assert_eq!(named["inventory"]["identity"], "name:lab-b");

    for name in ["named", "first"] {
        let status = m.procs.terminate(name)?;
        assert!(status.success(), "{name} exit: {status}");
    }
    m.stop()
}

/// Removal is an operator's decision: the removed server, restarted with its unchanged
/// config (whose bootstrap token is still valid), is refused until re-admitted.
#[test]
fn a_removed_node_stays_out_until_admitted() -> anyhow::Result<()> {
    let mut m = Masters::start()?;
    m.agent_config("agent", "node_name = 'to-remove'\n")?;
    m.spawn_agent("agent", "agent.log")?;
    let id = m.wait_api("the agent up", Duration::from_secs(30), |m| {
        let nodes = m.glory(&["nodes"]).ok()?;
        let up = nodes.as_array()?.iter().find(|n| n["state"] == "up")?;
        up["id"].as_str().map(str::to_string)
    })?;
    m.glory(&["nodes", "remove", &id])?;
    let status = m.procs.wait_exit("agent", Duration::from_secs(15))?;
    assert!(
        !status.success(),
        "a removed agent stops with an error: {status}"
    );
    let removed = m.glory(&["nodes", "removed"])?;
    assert_eq!(removed[0]["node"], id.as_str(), "{removed}");
    assert_eq!(removed[0]["identity"], "name:to-remove", "{removed}");

    // Restarted as it was: refused, and told why.
    m.spawn_agent("agent", "agent2.log")?;
    let refusal = m.wait_api("the removed node refused", Duration::from_secs(20), |m| {
        m.log("agent2.log")
            .lines()
            .find(|l| l.contains("removed by an operator"))
            .map(str::to_string)
    })?;
    assert!(refusal.contains("glory nodes admit"), "{refusal}");
    let nodes = m.glory(&["nodes"])?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(0), "{nodes}");

    // Re-admitted: the running agent's next attempt enrolls it, with its old id.
    let admitted = m.glory(&["nodes", "admit", &id])?;
    assert_eq!(admitted["node"], id.as_str());
    m.wait_api("the node up again", Duration::from_secs(20), |m| {
        let n = m.glory(&["node", &id]).ok()?;
        (n["state"] == "up").then_some(())
    })?;
    assert_eq!(
        m.glory(&["nodes", "removed"])?.as_array().map(Vec::len),
        Some(0)
    );
    let status = m.procs.terminate("agent")?;
    assert!(status.success(), "agent exit: {status}");
    m.stop()
}

/// A real agent watches a real process: `sleep`, found by name and command line. The
/// test kills it: a critical alert within about one interval; a new one starts: the
/// alert resolves and a restart is counted.
#[test]
fn a_real_agent_watches_a_real_process_that_dies() -> anyhow::Result<()> {
    let mut m = Masters::start()?;
    m.agent_config("agent", "metrics_interval_ms = 1000\n")?;
    m.spawn_agent("agent", "agent.log")?;
    let node = m.wait_api("the real node up", Duration::from_secs(30), |m| {
        let nodes = m.glory(&["nodes"]).ok()?;
        let n = nodes.as_array()?.iter().find(|n| n["state"] == "up")?;
        n["id"].as_str().map(str::to_string)
    })?;
    // A command line no other process has.
    let marker = format!("86399.{}", std::process::id());
    let spawn_sleep = || Command::new("sleep").arg(&marker).spawn();
    let mut sleeper = spawn_sleep()?;
    let pattern = format!("^sleep {}$", marker.replace('.', "\\."));
    m.glory(&[
        "monitors",
        "add",
        "sleeper",
        "--process",
        "sleep",
        "--cmdline",
        &pattern,
        "--scope",
        &format!("node={node}"),
        "--interval",
        "1",
    ])?;
    let alert = |m: &Masters, state: &str| -> Option<Value> {
        let alerts = m.glory(&["alerts", "--node", &node]).ok()?;
        let items = alerts.get("items").cloned().unwrap_or(alerts);
        items
            .as_array()?
            .iter()
            .find(|a| a["monitor"] == "sleeper" && a["state"] == state)
            .cloned()
    };
    // Whether `item`'s history has reached 1 (its maximum, over the last minutes).
    let reached_one = |m: &Masters, item: &str| -> Option<()> {
        let h = m
            .glory(&[
                "metrics",
                &node,
                item,
                "--labels",
                "monitor=sleeper",
                "--since",
                "5m",
            ])
            .ok()?;
        h["points"]
            .as_array()?
            .iter()
            .any(|p| p[3] == 1.0)
            .then_some(())
    };
    // Alive: its values are in the node's history, and nothing fires.
    m.wait_api("the process seen alive", Duration::from_secs(20), |m| {
        reached_one(m, "proc.alive")
    })?;
    assert!(alert(&m, "firing").is_none());
    sleeper.kill()?;
    sleeper.wait()?;
    let killed = std::time::Instant::now();
    let fired = m.wait_api("the dead process alert", Duration::from_secs(10), |m| {
        alert(m, "firing")
    })?;
    eprintln!("real process death alerted after {:?}", killed.elapsed());
    assert_eq!(fired["level"], "critical", "{fired}");
    let mut sleeper = spawn_sleep()?;
    m.wait_api("the alert resolved", Duration::from_secs(10), |m| {
        alert(m, "resolved")
    })?;
    m.wait_api("a restart counted", Duration::from_secs(10), |m| {
        reached_one(m, "proc.restarts")
    })?;
    sleeper.kill()?;
    sleeper.wait()?;
    let status = m.procs.terminate("agent")?;
    assert!(status.success(), "agent exit: {status}");
    m.stop()
}
