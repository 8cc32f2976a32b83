//! The real binaries in a fault-injection net ([`crate::faultnet`]): etcd, cluster
//! masters, group masters and simulated agents, each in a namespace of its own, started
//! from configuration files the way an operator would, with their logs in a directory
//! (`GLORY_TEST_DIR` keeps it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use glory::client::ApiClient;
use glory_keymaster::testing::EtcdCluster;
use reqwest::Method;
use serde_json::Value;

use crate::faultnet::FaultNet;
use crate::procs::Procs;
use crate::wait::until_some;

/// The leadership lease of the cluster masters a rig starts.
pub const LEASE: Duration = Duration::from_secs(3);

/// Real processes in a fault-injection net. Fields drop in order: the processes
/// first, then etcd, then the net.
pub struct Rig {
    pub procs: Procs,
    pub etcd: Option<EtcdCluster>,
    pub net: FaultNet,
    pub dir: PathBuf,
    _temp: tempfile::TempDir,
    /// The operator's token, from the first cluster master started.
    pub token: String,
    pub bootstrap: String,
    pub ca_hash: String,
    /// How many times each process was started (its logs are numbered after the first).
    starts: std::collections::HashMap<String, usize>,
}

/// A node's QUIC address (cluster and group masters listen there).
pub fn quic(net: &FaultNet, node: &str) -> SocketAddr {
    SocketAddr::from((net.ip(node), 7000))
}

/// A cluster master's API address.
pub fn api_addr(net: &FaultNet, node: &str) -> SocketAddr {
    SocketAddr::from((net.ip(node), 7400))
}

/// `GET path`'s body whatever its status; `None` when nothing answered.
pub async fn get(api: &ApiClient, path: &str) -> Option<Value> {
    api.request(Method::GET, path, None)
        .await
        .ok()
        .map(|(_, body)| body)
}

impl Rig {
    /// A net of `nodes`; an etcd of `etcd_members` members in node `etcd` if it is one
    /// of them.
    pub async fn start(nodes: &[&str], etcd_members: usize) -> anyhow::Result<Rig> {
        let net = FaultNet::create(nodes)?;
        let etcd = if nodes.contains(&"etcd") {
            Some(EtcdCluster::start_in(etcd_members, net.namespace("etcd"), net.ip("etcd")).await?)
        } else {
            None
        };
        let temp = tempfile::tempdir()?;
        let dir = std::env::var_os("GLORY_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| temp.path().to_path_buf());
        Ok(Rig {
            procs: Procs::default(),
            etcd,
            net,
            dir,
            _temp: temp,
            token: String::new(),
            bootstrap: String::new(),
            ca_hash: String::new(),
            starts: Default::default(),
        })
    }

    /// The log of process `name`'s latest start.
    pub fn log(&self, name: &str) -> PathBuf {
        match self.starts.get(name).copied().unwrap_or(1) {
            0 | 1 => self.dir.join(format!("{name}.log")),
            n => self.dir.join(format!("{name}-{n}.log")),
        }
    }

    fn spawn(&mut self, node: &str, bin: &str, args: &[String]) -> anyhow::Result<()> {
        *self.starts.entry(node.to_string()).or_default() += 1;
        let log = self.log(node);
        self.procs
            .spawn_in(&self.net, node, node, bin, args, &log)?;
        Ok(())
    }

    /// An API client of cluster master `cm` with the operator's token.
    pub fn api(&self, cm: &str) -> anyhow::Result<ApiClient> {
        ApiClient::new(&format!("http://{}", api_addr(&self.net, cm)), &self.token)?
            .with_timeout(Duration::from_secs(2))
    }

    /// Cluster master `name` in its namespace (on etcd when the rig has it, else on
    /// its embedded key master), or started again on its configuration and data (as
    /// its supervisor would). The first one started leads: the operator's and a
    /// bootstrap token are taken from it.
    pub async fn cluster_master(&mut self, name: &str) -> anyhow::Result<()> {
        let keymaster = match &self.etcd {
            Some(etcd) => {
                let endpoints: Vec<String> =
                    etcd.endpoints().iter().map(|e| format!("'{e}'")).collect();
                format!(
                    "keymaster = {{ kind = 'etcd', endpoints = [{}] }}\n",
                    endpoints.join(", ")
                )
            }
            None => String::new(),
        };
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "listen = '{}'\napi_listen = '{}'\ninsecure_http = true\ndata_dir = '{}'\n\
                 leader_lease_ms = {}\n{keymaster}",
                quic(&self.net, name),
                api_addr(&self.net, name),
                self.dir.join(name).display(),
                LEASE.as_millis(),
            ),
        )?;
        self.spawn(
            name,
            "glory-cluster-master",
            &["--config".to_string(), path.display().to_string()],
        )?;
        if !self.token.is_empty() {
            return Ok(());
        }
        let token_file = self.dir.join(name).join("operator.token");
        (self.token, _) = until_some(
            &format!("{name} active"),
            Duration::from_secs(30),
            || async {
                std::fs::read_to_string(&token_file)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            },
        )
        .await?;
        let api = self.api(name)?;
        let (created, _) = until_some("a bootstrap token", Duration::from_secs(20), || async {
            let (status, body) = api
                .request(
                    Method::POST,
                    "/api/v1/bootstrap-tokens",
                    Some(serde_json::json!({"scope": "any", "ttl_seconds": 3600})),
                )
                .await
                .ok()?;
            (status == 201).then_some(body)
        })
        .await?;
        self.bootstrap = created["token"].as_str().context("token")?.to_string();
        self.ca_hash = created["ca_cert_hash"]
            .as_str()
            .context("ca hash")?
            .to_string();
        Ok(())
    }

    /// Group master `name` of `group`, knowing cluster masters `cms`.
    pub fn group_master(&mut self, name: &str, group: &str, cms: &[&str]) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{name}.toml"));
        let others: Vec<String> = cms[1..]
            .iter()
            .map(|cm| format!("'{}'", quic(&self.net, cm)))
            .collect();
        std::fs::write(
            &path,
            format!(
                "group = '{group}'\nlisten = '{}'\ncluster_master = '{}'\ncluster_masters = [{}]\n\
                 token = '{}'\nca_cert_hash = '{}'\ndata_dir = '{}'\n",
                quic(&self.net, name),
                quic(&self.net, cms[0]),
                others.join(", "),
                self.bootstrap,
                self.ca_hash,
                self.dir.join(name).display()
            ),
        )?;
        self.spawn(
            name,
            "glory-group-master",
            &["--config".to_string(), path.display().to_string()],
        )
    }

    /// `count` simulated servers in node `agents`, at the default heartbeat.
    pub fn agents(&mut self, count: usize, cms: &[&str]) -> anyhow::Result<()> {
        let others: Vec<String> = cms[1..]
            .iter()
            .map(|cm| quic(&self.net, cm).to_string())
            .collect();
        let mut args = vec![
            "sim-agents".to_string(),
            "--cluster-master".into(),
            quic(&self.net, cms[0]).to_string(),
            "--token".into(),
            self.bootstrap.clone(),
            "--ca-hash".into(),
            self.ca_hash.clone(),
            "--nodes".into(),
            count.to_string(),
        ];
        if !others.is_empty() {
            args.extend(["--cluster-masters".into(), others.join(",")]);
        }
        self.spawn("agents", "glory", &args)
    }

    /// Whether process `name` has exited (and how); it is forgotten if it has.
    pub fn exited(&mut self, name: &str) -> Option<ExitStatus> {
        self.procs.wait_exit(name, Duration::ZERO).ok()
    }
}
