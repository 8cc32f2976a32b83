//! `glory up`: a whole cluster in one process: the embedded key master, a cluster
//! master, group masters and simulated node agents, all over real QUIC on 127.0.0.1
//! with mutual TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glory_cluster_master::{ClusterMasterConfig, KeyMasterConfig};
use glory_group_master::{GroupMaster, GroupMasterConfig};
use glory_keymaster::schema::BootstrapScope;
use glory_node_agent::AgentConfig;
use glory_protocol::CaTrust;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::sim::{LateFleet, SimFleet};

/// Options of `glory up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub nodes: usize,
    pub groups: usize,
    pub api_listen: SocketAddr,
    pub quic_listen: SocketAddr,
    pub heartbeat_interval_ms: u64,
    pub down_after_ms: u64,
    pub group_size_limit: usize,
    /// etcd endpoints for the key master; `None`: the embedded store in `data_dir`.
    pub etcd: Option<Vec<String>>,
    /// QEMU virtual machines that PXE-boot from a provisioner and enroll (the lab).
    pub lab_vms: usize,
    /// How many of them boot by UEFI (OVMF, `ipxe.efi` over TFTP); the rest by BIOS.
    pub lab_uefi: usize,
    pub lab_memory_mib: u32,
    /// A virtual disk of this many MiB per lab VM (0: none), for images deployed in
    /// `disk` mode.
    pub lab_disk_mib: u32,
    /// Lifetime of the token minted for each PXE boot, seconds.
    pub boot_token_ttl_seconds: u64,
    /// The agent put into the enrollment environment (default: beside this binary).
    pub lab_agent_binary: Option<PathBuf>,
    /// Real agents on this machine (real process supervision, each with its own
    /// state directory), in a group of their own, for services with real processes.
    pub real_agents: usize,
    /// `reclaim_grace_seconds` and `offer_timeout_seconds` of the cluster master.
    pub reclaim_grace_seconds: u64,
    pub offer_timeout_seconds: u64,
    /// Plain HTTP even when `api_listen` is not loopback (default: HTTPS there).
    pub insecure_http: bool,
    /// Lifetime of the certificates the cluster CA signs (`24h`, `2m`...).
    pub cert_lifetime: String,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            data_dir: PathBuf::from("glory-data"),
            nodes: 1000,
            groups: 4,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            quic_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat_interval_ms: 1000,
            down_after_ms: 3000,
            group_size_limit: 250,
            etcd: None,
            lab_vms: 0,
            lab_uefi: 0,
            lab_memory_mib: 512,
            lab_disk_mib: 0,
            boot_token_ttl_seconds: 600,
            lab_agent_binary: None,
            real_agents: 0,
            reclaim_grace_seconds: 60,
            insecure_http: false,
            cert_lifetime: "24h".to_string(),
            offer_timeout_seconds: 30,
        }
    }
}

/// A running all-in-one cluster.
pub struct Up {
    pub api_addr: SocketAddr,
    /// The API's URL: `https://` unless it is on loopback or `insecure_http`; an API
    /// bound to every address is named by loopback.
    pub api_url: String,
    /// The cluster CA's certificate, which the API's is checked against.
    pub ca_pem: String,
    pub quic_addr: SocketAddr,
    pub operator_token: String,
    pub fleet: SimFleet,
    fleet_shutdown: CancellationToken,
    groups_shutdown: CancellationToken,
    cm_shutdown: CancellationToken,
    groups: TaskTracker,
    cm: glory_cluster_master::ClusterMasterHandle,
    /// The lab's network and VMs (dropped last: stops the VMs, removes the namespace).
    pub lab: Option<crate::lab::Lab>,
    /// The lab's provisioner: its HTTP boot address.
    pub provisioner_http: Option<SocketAddr>,
    /// When each lab VM was powered on (ms since the epoch), in `lab.vms` order.
    pub lab_powered_on_ms: Vec<u64>,
    provisioner_shutdown: CancellationToken,
    /// The real agents' group and their node names.
    pub real_group: Option<String>,
    pub real_agents: Vec<String>,
    agents: TaskTracker,
    agents_shutdown: CancellationToken,
}

impl Up {
    /// The active cluster (benchmarks mint tokens with it).
    pub fn cluster(&self) -> std::sync::Arc<glory_cluster_master::Cluster> {
        self.cm.cluster.clone()
    }

    pub async fn start(options: UpOptions) -> anyhow::Result<Up> {
        if options.groups == 0 {
            bail!("--groups must be at least 1");
        }
        if options.nodes > options.groups * options.group_size_limit {
            bail!(
                "{} nodes do not fit in {} groups of at most {}: use more --groups",
                options.nodes,
                options.groups,
                options.group_size_limit
            );
        }
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("create data dir {}", options.data_dir.display()))?;
        let lab = match options.lab_vms {
            0 => None,
            n => Some(crate::lab::Lab::create(
                n,
                options.lab_uefi,
                options.lab_memory_mib,
                options.lab_disk_mib,
                &options.data_dir.join("lab"),
            )?),
        };
        // Lab VMs reach the masters at the host's address on the boot network.
        let master_ip: std::net::IpAddr = match &lab {
            Some(lab) => lab.host_ip.into(),
            None => [127, 0, 0, 1].into(),
        };
        let quic_listen = match &lab {
            Some(lab) if options.quic_listen.ip().is_loopback() => {
                SocketAddr::new(lab.host_ip.into(), options.quic_listen.port())
            }
            _ => options.quic_listen,
        };
        let cm_config = ClusterMasterConfig {
            boot_token_ttl_seconds: options.boot_token_ttl_seconds,
            listen: quic_listen,
            api_listen: options.api_listen,
            data_dir: options.data_dir.clone(),
            keymaster: match &options.etcd {
                Some(endpoints) => KeyMasterConfig::Etcd {
                    endpoints: endpoints.clone(),
                },
                None => KeyMasterConfig::Embedded { path: None },
            },
            group_size_limit: options.group_size_limit,
            reclaim_grace_seconds: options.reclaim_grace_seconds,
            offer_timeout_seconds: options.offer_timeout_seconds,
            insecure_http: options.insecure_http,
            cert_lifetime: options.cert_lifetime.clone(),
            ..Default::default()
        };
        let cm_shutdown = CancellationToken::new();
        let km = glory_cluster_master::open_keymaster(&cm_config, &cm_shutdown).await?;
        let late_fleet = Arc::new(LateFleet::default());
        let cm = glory_cluster_master::start(
            cm_config.validate()?,
            km,
            Some(late_fleet.clone()),
            cm_shutdown.clone(),
        )
        .await?;
        let cluster = cm.cluster.clone();

        // Group masters, in this process, with identities issued by the CA directly.
        let groups_shutdown = CancellationToken::new();
        let groups = TaskTracker::new();
        for g in 0..options.groups {
            let id = format!("g{g:02}");
            let config = GroupMasterConfig {
                group: id.clone(),
                listen: SocketAddr::new(master_ip, 0),
                cluster_master: cm.quic_addr,
                heartbeat_interval_ms: options.heartbeat_interval_ms,
                down_after_ms: options.down_after_ms,
                stats_db: Some(options.data_dir.join("stats").join(format!("{id}.db"))),
                ..Default::default()
            };
            let identity = cluster.issue_group_master_identity(&id)?;
            let gm = GroupMaster::bind(config.validate()?, identity)?;
            let shutdown = groups_shutdown.clone();
            groups.spawn(async move {
                if let Err(e) = gm.serve(shutdown).await {
                    tracing::error!(group = %id, error = %format!("{e:#}"), "group master failed");
                }
            });
        }
        groups.close();
        // Agents enroll once every group master has registered its address.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connected = cluster.connected_groups();
            if connected >= options.groups {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {connected} of {} group masters registered within 30 s",
                    options.groups
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let (token, _) = cluster
            .create_bootstrap_token(
                None,
                false,
                BootstrapScope::Node,
                "glory up: simulated agents",
            )
            .await?;
        let agent_config = AgentConfig {
            cluster_master: cm.quic_addr,
            token: Some(token),
            heartbeat_interval_ms: options.heartbeat_interval_ms,
            max_backoff_ms: 2000,
            // Ten minutes of samples per simulated node (a real agent keeps an hour):
            // enough to refill a group master that failed over.
            metrics_buffer_seconds: 600,
            // Each simulated node applies its first-boot configuration and installs
            // packages under <data-dir>/nodes/sim-N/root, where they can be looked at.
            setup_root: Some(options.data_dir.join("nodes")),
            // Simulated nodes share this host: packages come over HTTP.
            p2p_seed_seconds: 0,
            ..Default::default()
        };
        let mut settings = agent_config.validate()?;
        settings.ca_trust = CaTrust::Pem(cluster.ca_pem());
        let fleet_shutdown = CancellationToken::new();
        let endpoints = options.nodes.div_ceil(1250).clamp(1, 8);
        let fleet = SimFleet::new(settings, endpoints, fleet_shutdown.clone())?;
        late_fleet.attach(fleet.clone());
        fleet.add(options.nodes);
        info!(
            nodes = options.nodes,
            groups = options.groups,
            "simulated fleet started"
        );
        let agents = TaskTracker::new();
        let agents_shutdown = CancellationToken::new();
        let (real_group, real_agents) = match options.real_agents {
            0 => (None, Vec::new()),
            n => {
                let group = format!("g{:02}", options.groups);
                start_real_agents(
                    &options,
                    n,
                    &group,
                    &cluster,
                    cm.quic_addr,
                    master_ip,
                    &groups,
                    &groups_shutdown,
                    &agents,
                    &agents_shutdown,
                )
                .await
                .map(|names| (Some(group), names))?
            }
        };
        let api_url = {
            let tls = !(options.insecure_http || options.api_listen.ip().is_loopback());
            let mut addr = cm.api_addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("{}://{addr}", if tls { "https" } else { "http" })
        };
        let ca_pem = cluster.ca_pem();
        let provisioner_shutdown = CancellationToken::new();
        let mut lab = lab;
        let mut lab_powered_on_ms = Vec::new();
        let provisioner_http = match &mut lab {
            Some(lab) => Some(
                start_lab(
                    &mut lab_powered_on_ms,
                    lab,
                    &options,
                    &cluster,
                    cm.quic_addr,
                    &api_url,
                    &cm.operator_token,
                    &provisioner_shutdown,
                )
                .await?,
            ),
            None => None,
        };
        Ok(Up {
            lab,
            lab_powered_on_ms,
            provisioner_http,
            provisioner_shutdown,
            api_addr: cm.api_addr,
            api_url,
            ca_pem,
            quic_addr: cm.quic_addr,
            operator_token: cm.operator_token.clone(),
            fleet,
            fleet_shutdown,
            groups_shutdown,
            cm_shutdown,
            groups,
            cm,
            real_group,
            real_agents,
            agents,
            agents_shutdown,
        })
    }

    /// Stop in order: agents leave cleanly, group masters pass that on, the cluster
    /// master writes it down. Returns after every task has ended.
    pub async fn shutdown(mut self) {
        // Lab VMs first: they are the slowest to notice the masters going.
        drop(self.lab.take());
        self.provisioner_shutdown.cancel();
        self.fleet_shutdown.cancel();
        self.agents_shutdown.cancel();
        self.agents.close();
        self.fleet.wait().await;
        self.agents.wait().await;
        // Let the last `left` transitions travel up before the group masters go.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.groups_shutdown.cancel();
        self.groups.wait().await;
        self.cm_shutdown.cancel();
        self.cm.wait().await;
    }
}

/// `n` real agents (`real-0`...) on this machine, each with its own state directory
/// under `<data_dir>/agents/`, enrolled with a token bound to a group master of their
/// own. Their node names.
#[allow(clippy::too_many_arguments)]
async fn start_real_agents(
    options: &UpOptions,
    n: usize,
    group: &str,
    cluster: &glory_cluster_master::Cluster,
    quic: SocketAddr,
    master_ip: std::net::IpAddr,
    groups: &TaskTracker,
    groups_shutdown: &CancellationToken,
    agents: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let config = GroupMasterConfig {
        group: group.to_string(),
        listen: SocketAddr::new(master_ip, 0),
        cluster_master: quic,
        heartbeat_interval_ms: options.heartbeat_interval_ms,
        down_after_ms: options.down_after_ms,
        stats_db: Some(options.data_dir.join("stats").join(format!("{group}.db"))),
        ..Default::default()
    };
    let identity = cluster.issue_group_master_identity(group)?;
    let gm = GroupMaster::bind(config.validate()?, identity)?;
    let (id, stop) = (group.to_string(), groups_shutdown.clone());
    groups.spawn(async move {
        if let Err(e) = gm.serve(stop).await {
            tracing::error!(group = %id, error = %format!("{e:#}"), "group master failed");
        }
    });
    let wanted = options.groups + 1;
    while cluster.connected_groups() < wanted {
        if Instant::now() > deadline {
            bail!("the real agents' group master {group} did not register");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = options.data_dir.join("ca.pem");
    std::fs::write(&ca, cluster.ca_pem()).with_context(|| format!("write {}", ca.display()))?;
    let token = cluster
        .create_group_bootstrap_token(
            Some(Duration::from_secs(600)),
            "glory up --real-agents",
            group,
        )
        .await?;
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("real-{i}");
        let config = AgentConfig {
            cluster_master: quic,
            token: Some(token.clone()),
            ca_cert: Some(ca.clone()),
            state_dir: options.data_dir.join("agents").join(&name),
            node_name: Some(name.clone()),
            heartbeat_interval_ms: options.heartbeat_interval_ms,
            max_backoff_ms: 2000,
            ..Default::default()
        };
        let stop = shutdown.clone();
        let who = name.clone();
        agents.spawn(async move {
            if let Err(e) = glory_node_agent::run(config, stop).await {
                tracing::error!(agent = %who, error = %format!("{e:#}"), "real agent failed");
            }
        });
        names.push(name);
    }
    info!(agents = n, group, "real agents started");
    Ok(names)
}

/// The lab's provisioner (in this process, enrolled over QUIC with a token of scope
/// `provisioner`), the VMs registered with the `qemu` power driver and powered on one
/// after another. Returns the provisioner's HTTP address.
#[allow(clippy::too_many_arguments)]
async fn start_lab(
    powered_on_ms: &mut Vec<u64>,
    lab: &mut crate::lab::Lab,
    options: &UpOptions,
    cluster: &glory_cluster_master::Cluster,
    quic: SocketAddr,
    api_url: &str,
    operator_token: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let dir = options.data_dir.join("lab");
    let (token, _) = cluster
        .create_bootstrap_token(
            Some(Duration::from_secs(3600)),
            true,
            BootstrapScope::Provisioner,
            "glory up --lab-vms: the lab's provisioner",
        )
        .await?;
    let ca_sha256 = glory_protocol::tls::cert_sha256_hex(
        glory_protocol::tls::pem_to_der(&cluster.ca_pem())?.as_ref(),
    );
    let config = glory_provisioner::config::ProvisionerConfig {
        name: "lab".into(),
        cluster_master: quic,
        token: Some(token),
        ca_cert_hash: Some(ca_sha256),
        state_dir: options.data_dir.join("provisioner"),
        server_ip: lab.host_ip,
        interface: Some(lab.host_if.clone()),
        range_first: Some(std::net::Ipv4Addr::from(u32::from(lab.host_ip) + 99)),
        range_last: Some(std::net::Ipv4Addr::from(u32::from(lab.host_ip) + 199)),
        lease_seconds: 600,
        agent_binary: options.lab_agent_binary.clone(),
        ..Default::default()
    };
    let running = glory_provisioner::run::start(config, shutdown.clone()).await?;
    lab.start_vms(&dir)?;
    let client =
        crate::client::ApiClient::new(api_url, operator_token)?.with_ca(&cluster.ca_pem())?;
    for vm in &lab.vms {
        let body =
            serde_json::json!({"driver": "qemu", "address": format!("unix:{}", vm.qmp.display())});
        let (status, answer) = client
            .request(
                reqwest::Method::PUT,
                &format!("/api/v1/boot/{}/bmc", vm.mac),
                Some(body),
            )
            .await?;
        if status >= 300 {
            bail!(
                "register {} with the qemu power driver: {status} {answer}",
                vm.name
            );
        }
    }
    for vm in &lab.vms {
        powered_on_ms.push(glory_protocol::now_ms());
        let (status, answer) = client
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/boot/{}/power", vm.mac),
                Some(serde_json::json!({"action": "on"})),
            )
            .await?;
        if status >= 300 {
            bail!("power on {}: {status} {answer}", vm.name);
        }
        info!(vm = %vm.name, mac = %vm.mac, uefi = vm.uefi, "lab VM powered on");
        // One after another, as an operator racking servers would.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(running.http)
}
