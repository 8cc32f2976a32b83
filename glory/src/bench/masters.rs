//! The masters of a hierarchy run, in this process: the key master, the cluster master
//! and the group masters (with standbys), started, replaced under faults and stopped.
//! With standby cluster masters (on etcd), each cluster master has a runtime of its own
//! (`CmProcess`), so killing the leader drops it without a word, as `kill -9` would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use glory_cluster_master::{ClusterMasterConfig, ClusterMasterHandle, KeyMasterConfig};
use glory_group_master::{GroupMaster, GroupMasterConfig};
use glory_keymaster::KeyMaster;
use tokio_util::sync::CancellationToken;

use super::cm_process::{free_addrs, CmProcess};
use super::relay::Relay;
use super::{Fault, SimOptions};

pub(super) struct GroupSlot {
    pub(super) id: String,
    /// Its relay to the cluster master (none with standby cluster masters, which
    /// group masters dial directly, as they would in a datacenter: a standby's refusal
    /// names the leader by its own address, which a relay would hide).
    relay: Option<Relay>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl GroupSlot {
    /// Partition the group master from the cluster master, or heal it.
    pub(super) fn set_blocked(&self, blocked: bool) {
        if let Some(r) = &self.relay {
            r.set_blocked(blocked);
        }
    }
}

/// Numbers the group masters' statistics files (a standby has its own).
static STATS_FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The masters of a hierarchy run, in this process.
pub(super) struct Masters {
    pub(super) km: Arc<dyn KeyMaster>,
    cm_config: ClusterMasterConfig,
    pub(super) cm: Option<ClusterMasterHandle>,
    cm_stop: CancellationToken,
    pub(super) groups: Vec<GroupSlot>,
    /// Standby group masters (for the groups a fault will kill), promoted by the
    /// cluster master when their active one stops.
    standbys: Vec<GroupSlot>,
    options: SimOptions,
    shutdown: CancellationToken,
    /// Down transitions counted by cluster master instances that were replaced.
    past_downs: u64,
    past_writes: u64,
    /// Observations for the report's notes.
    pub(super) notes: Vec<String>,
    /// With standby cluster masters: each on a runtime of its own, the leader first
    /// (`cm` is its handle); empty when the cluster master runs on this runtime.
    processes: Vec<CmProcess>,
    /// Where the group masters and agents find the cluster masters.
    pub(super) cm_quic: Vec<SocketAddr>,
}

impl Masters {
    pub(super) fn cm(&self) -> &ClusterMasterHandle {
        self.cm.as_ref().expect("cluster master running")
    }

    pub(super) fn downs(&self) -> u64 {
        let now = self.cm.as_ref().map(|cm| {
            cm.cluster
                .transition_counts()
                .into_iter()
                .find(|(s, _)| *s == glory_protocol::NodeState::Down)
                .map(|(_, n)| n)
                .unwrap_or(0)
        });
        self.past_downs + now.unwrap_or(0)
    }

    pub(super) fn km_writes(&self) -> u64 {
        self.past_writes
            + self
                .cm
                .as_ref()
                .map(|cm| cm.cluster.keymaster_writes())
                .unwrap_or(0)
    }

    async fn start_group(&self, id: &str) -> anyhow::Result<GroupSlot> {
        let mut dial = self.cm_quic.clone();
        let relay = match self.processes.is_empty() {
            true => {
                let relay = Relay::start(self.cm_quic[0], self.shutdown.clone()).await?;
                dial = vec![relay.local];
                Some(relay)
            }
            false => None,
        };
        let config = GroupMasterConfig {
            group: id.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_master: dial[0],
            cluster_masters: dial[1..].to_vec(),
            heartbeat_interval_ms: self.options.heartbeat_ms,
            down_after_ms: self.options.down_after_ms,
            // On disk, as a real group master's: in memory, history would count as
            // the masters' memory.
            stats_db: Some(self.cm_config.data_dir.join(format!(
                "stats-{id}-{}.db",
                STATS_FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ))),
            ..Default::default()
        };
        let identity = self.cm().cluster.issue_group_master_identity(id)?;
        let gm = GroupMaster::bind(config.validate()?, identity)?;
        let stop = self.shutdown.child_token();
        let token = stop.clone();
        let gid = id.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = gm.serve(token).await {
                tracing::error!(group = %gid, error = %format!("{e:#}"), "group master failed");
            }
        });
        Ok(GroupSlot {
            id: id.to_string(),
            relay,
            stop,
            task,
        })
    }

    pub(super) async fn start(
        options: &SimOptions,
    ) -> anyhow::Result<(Masters, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let per_group = options.nodes.div_ceil(options.groups);
        let cm_config = ClusterMasterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().to_path_buf(),
            keymaster: match &options.etcd {
                Some(endpoints) => KeyMasterConfig::Etcd {
                    endpoints: endpoints.clone(),
                },
                None => KeyMasterConfig::Embedded { path: None },
            },
            group_size_limit: per_group.max(1),
            cert_lifetime: options
                .cert_lifetime
                .clone()
                .unwrap_or_else(|| ClusterMasterConfig::default().cert_lifetime),
            ..Default::default()
        };
        let km =
            glory_cluster_master::open_keymaster(&cm_config, &CancellationToken::new()).await?;
        let shutdown = CancellationToken::new();
        let cm_stop = shutdown.child_token();
        let (cm, cm_config, processes) = if options.standby_cluster_masters > 0 {
            start_processes(options, &cm_config).await?
        } else {
            let cm = glory_cluster_master::start(
                cm_config.validate()?,
                km.clone(),
                None,
                cm_stop.clone(),
            )
            .await?;
            // Restarts reuse the addresses the first instance got.
            let config = ClusterMasterConfig {
                listen: cm.quic_addr,
                api_listen: cm.api_addr,
                ..cm_config
            };
            (cm, config, Vec::new())
        };
        let cm_quic = match processes.is_empty() {
            true => vec![cm.quic_addr],
            false => processes.iter().map(|p| p.quic).collect(),
        };
        let mut masters = Masters {
            km,
            cm_config,
            cm: Some(cm),
            cm_stop,
            groups: Vec::new(),
            standbys: Vec::new(),
            options: options.clone(),
            shutdown,
            past_downs: 0,
            past_writes: 0,
            notes: Vec::new(),
            processes,
            cm_quic,
        };
        for g in 0..options.groups {
            let slot = masters.start_group(&format!("g{g:02}")).await?;
            masters.groups.push(slot);
        }
        let doomed: Vec<String> = options
            .faults
            .iter()
            .filter_map(|f| match &f.fault {
                Fault::KillGroupMaster(g) => Some(g.clone()),
                _ => None,
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while masters.cm().cluster.connected_groups() < options.groups {
            anyhow::ensure!(
                Instant::now() < deadline,
                "group masters did not all register within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Standbys register after the actives, so they stand by.
        for id in &doomed {
            let slot = masters.start_group(id).await?;
            masters.standbys.push(slot);
        }
        while doomed
            .iter()
            .any(|g| masters.cm().cluster.group_master_count(g) < 2)
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "group masters did not all register within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((masters, dir))
    }

    /// Stop group master `id` and start a replacement on its address at once.
    /// Stop the active group master of `id`; its standby takes over (the cluster
    /// master promotes it, the agents move to it).
    pub(super) async fn replace_group(&mut self, id: &str) -> anyhow::Result<()> {
        let idx = self
            .groups
            .iter()
            .position(|g| g.id == id)
            .context("no such group")?;
        let standby = self
            .standbys
            .iter()
            .position(|g| g.id == id)
            .context("no standby for the group")?;
        let old = self.groups.remove(idx);
        let t = Instant::now();
        old.stop.cancel();
        let _ = old.task.await;
        let promoted = self.standbys.remove(standby);
        self.groups.insert(idx, promoted);
        self.notes.push(format!(
            "group master {id} stopped in {:.2} s; its standby (on another address) took over",
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Stop the cluster master and start a replacement on the same key master and
    /// addresses.
    pub(super) async fn replace_cluster_master(&mut self) -> anyhow::Result<()> {
        let t = Instant::now();
        self.past_downs = self.downs();
        self.past_writes = self.km_writes();
        self.cm_stop.cancel();
        if let Some(cm) = self.cm.take() {
            cm.wait().await;
        }
        self.cm_stop = self.shutdown.child_token();
        // The replacement comes up on new addresses, as a standby on another host would;
        // the group masters' links (through their relays) are pointed at it.
        let config = ClusterMasterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..self.cm_config.clone()
        };
        let cm = glory_cluster_master::start(
            config.validate()?,
            self.km.clone(),
            None,
            self.cm_stop.clone(),
        )
        .await?;
        for group in self.groups.iter().chain(self.standbys.iter()) {
            if let Some(relay) = &group.relay {
                relay.set_target(cm.quic_addr);
            }
        }
        self.cm = Some(cm);
        let note = format!(
            "cluster master replaced by a new one on new addresses, serving after {:.2} s; group masters were pointed at it",
            t.elapsed().as_secs_f64()
        );
        if self.options.progress {
            eprintln!("{note}");
        }
        self.notes.push(note);
        Ok(())
    }

    /// Whether the cluster masters run as a leader and standbys (each on a runtime of
    /// its own).
    pub(super) fn has_standby_cluster_masters(&self) -> bool {
        self.processes.len() > 1
    }

    /// `kill -9` the leading cluster master: its runtime, sockets and etcd client go
    /// at once; nothing resigns. A standby takes over when the lease runs out.
    pub(super) fn kill_cluster_master(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.processes.len() > 1, "no standby cluster master");
        self.past_downs = self.downs();
        self.past_writes = self.km_writes();
        self.cm = None;
        let leader = self.processes.remove(0);
        let note = format!(
            "cluster master {} killed (its runtime dropped: no resignation, no close; its etcd lease of {} ms runs out)",
            leader.name, self.cm_config.leader_lease_ms
        );
        leader.kill();
        if self.options.progress {
            eprintln!("{note}");
        }
        self.notes.push(note);
        Ok(())
    }

    /// API addresses of the standbys (who may be leading by now).
    pub(super) fn standby_apis(&self) -> Vec<SocketAddr> {
        self.processes.iter().map(|p| p.api).collect()
    }

    /// After `kill_cluster_master`: true once a standby leads (its handle becomes `cm`).
    pub(super) async fn took_over(&mut self) -> anyhow::Result<bool> {
        if self.cm.is_some() {
            return Ok(true);
        }
        for i in 0..self.processes.len() {
            if let Some(handle) = self.processes[i].leading().await {
                let handle = handle?;
                let leader = self.processes.remove(i);
                self.notes.push(format!(
                    "standby cluster master {} took over through the leadership lease",
                    leader.name
                ));
                self.processes.insert(0, leader);
                self.cm = Some(handle);
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(super) async fn stop(mut self) {
        let standbys: Vec<GroupSlot> = self.standbys.drain(..).collect();
        self.groups.extend(standbys);
        for g in &self.groups {
            g.stop.cancel();
        }
        for g in self.groups.drain(..) {
            let _ = g.task.await;
        }
        self.shutdown.cancel();
        if self.processes.is_empty() {
            if let Some(cm) = self.cm.take() {
                cm.wait().await;
            }
        }
        let mut handle = self.cm.take();
        for p in self.processes.drain(..) {
            p.stop(handle.take()).await;
        }
    }
}

/// The cluster masters as a leader and standbys, each on a runtime of its own with its
/// own data directory, addresses and etcd client: the first is started alone so that
/// it leads; the standbys campaign behind it. The leader's handle and configuration.
async fn start_processes(
    options: &SimOptions,
    base: &ClusterMasterConfig,
) -> anyhow::Result<(ClusterMasterHandle, ClusterMasterConfig, Vec<CmProcess>)> {
    let mut processes = Vec::new();
    let mut configs = Vec::new();
    for i in 0..=options.standby_cluster_masters {
        let (listen, api_listen) = free_addrs()?;
        configs.push(ClusterMasterConfig {
            listen,
            api_listen,
            data_dir: base.data_dir.join(format!("cm{}", i + 1)),
            ..base.clone()
        });
    }
    let mut first = CmProcess::spawn("cm1", configs[0].clone())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let handle = loop {
        if let Some(h) = first.leading().await {
            break h?;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the first cluster master did not lead within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    processes.push(first);
    for (i, config) in configs.iter().enumerate().skip(1) {
        processes.push(CmProcess::spawn(&format!("cm{}", i + 1), config.clone())?);
    }
    Ok((handle, configs.swap_remove(0), processes))
}
