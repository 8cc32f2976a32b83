//! `glory provision lab-bench`: power-on to `up` at the API for a lab VM under TCG,
//! phase by phase, over several power cycles of the same VM. Needs root and the lab's
//! packages (docs/PROVISIONING.md).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::ApiClient;

/// One boot, each phase in ms after power-on (server-side timestamps).
#[derive(Debug, Default, Serialize)]
pub struct BootTimeline {
    pub round: usize,
    /// DHCP answered the firmware (BIOS iPXE ROMs skip this: they ask for the script).
    pub discovered_ms: Option<u64>,
    /// The iPXE script was fetched (a token minted).
    pub script_ms: Option<u64>,
    /// The enrollment environment called back (network up, agent starting).
    pub enrolling_ms: Option<u64>,
    /// The agent enrolled.
    pub enrolled_ms: Option<u64>,
    /// The node was `up` at the API.
    pub up_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct LabBenchReport {
    pub uefi: bool,
    pub memory_mib: u32,
    pub rounds: Vec<BootTimeline>,
}

async fn follow(
    api: &ApiClient,
    mac: &str,
    round: usize,
    powered_on_ms: u64,
    node_before: Option<&str>,
) -> anyhow::Result<BootTimeline> {
    let mut t = BootTimeline {
        round,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let after = |since: u64| since.saturating_sub(powered_on_ms);
    loop {
        if Instant::now() > deadline {
            anyhow::bail!("round {round}: not up within 300 s: {t:?}");
        }
        let b = api.get(&format!("/api/v1/boot/{mac}")).await.ok();
        if let Some(b) = &b {
            let since = b["since"].as_u64().unwrap_or(0);
            if since >= powered_on_ms {
                let slot = match b["state"].as_str() {
                    Some("discovered") => Some(&mut t.discovered_ms),
                    Some("booting") => Some(&mut t.script_ms),
                    Some("enrolling") => Some(&mut t.enrolling_ms),
                    Some("enrolled") => Some(&mut t.enrolled_ms),
                    Some("failed") => anyhow::bail!("round {round}: boot failed: {b}"),
                    _ => None,
                };
                if let Some(slot) = slot {
                    slot.get_or_insert(after(since));
                }
            }
            if let (Some(_), Some(node)) = (t.enrolled_ms, b["node"].as_str()) {
                let n = api.get(&format!("/api/v1/nodes/{node}")).await?;
                let changed = n["since_ms"]
                    .as_u64()
                    .or_else(|| n["state_since_ms"].as_u64())
                    .unwrap_or(0);
                let fresh = node_before.is_none() || changed >= powered_on_ms;
                if n["state"] == "up" && fresh {
                    t.up_ms = Some(glory_protocol::now_ms().saturating_sub(powered_on_ms));
                    return Ok(t);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(
    rounds: usize,
    uefi: bool,
    agent: Option<std::path::PathBuf>,
) -> anyhow::Result<LabBenchReport> {
    let dir = tempfile::tempdir()?;
    let memory_mib = 512;
    let up = crate::up::Up::start(crate::up::UpOptions {
        data_dir: dir.path().to_path_buf(),
        nodes: 0,
        groups: 1,
        api_listen: "127.0.0.1:0".parse()?,
        lab_vms: 1,
        lab_uefi: usize::from(uefi),
        lab_memory_mib: memory_mib,
        lab_agent_binary: agent,
        ..Default::default()
    })
    .await?;
    let api = ApiClient::new(&up.api_addr.to_string(), &up.operator_token)?;
    let mac = up
        .lab
        .as_ref()
        .map(|l| l.vms[0].mac.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    let first = follow(&api, &mac, 1, up.lab_powered_on_ms[0], None).await;
    let first = match first {
        Ok(t) => t,
        Err(e) => {
            up.shutdown().await;
            return Err(e);
        }
    };
    out.push(first);
    for round in 2..=rounds {
        let node = api.get(&format!("/api/v1/boot/{mac}")).await?["node"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.call(
            reqwest::Method::POST,
            &format!("/api/v1/nodes/{node}/power"),
            Some(serde_json::json!({"action": "off"})),
        )
        .await?;
        // Down first, so `up` below is this boot's.
        let deadline = Instant::now() + Duration::from_secs(30);
        while api.get(&format!("/api/v1/nodes/{node}")).await?["state"] != "down" {
            if Instant::now() > deadline {
                anyhow::bail!("round {round}: the node did not go down");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let powered_on = glory_protocol::now_ms();
        api.call(
            reqwest::Method::POST,
            &format!("/api/v1/nodes/{node}/power"),
            Some(serde_json::json!({"action": "on"})),
        )
        .await?;
        out.push(follow(&api, &mac, round, powered_on, Some(&node)).await?);
    }
    up.shutdown().await;
    Ok(LabBenchReport {
        uefi,
        memory_mib,
        rounds: out,
    })
}
