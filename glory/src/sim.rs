//! Simulated servers: the real agent code over [`SimHost`]s, many agents sharing a few
//! QUIC client endpoints. Used by `glory up`, `glory sim` and the testkit. Each agent
//! can be powered off (silence, as if the server lost power), shut down cleanly
//! (`left`), or started again with its old identity.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use glory_node_agent::{
    run_agent, AgentDeps, AgentExit, AgentSettings, AgentStats, IdentityStore, MemoryStore, SimHost,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

struct SimAgent {
    host: Arc<SimHost>,
    store: Arc<MemoryStore>,
    /// Present while the agent runs: (graceful stop, power off).
    running: Option<(CancellationToken, CancellationToken)>,
    generation: u64,
}

struct FleetInner {
    settings: AgentSettings,
    endpoints: Vec<glory_protocol::LinkEndpoint>,
    agents: Mutex<Vec<SimAgent>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    stats: Arc<AgentStats>,
}

/// A fleet of simulated agents.
#[derive(Clone)]
pub struct SimFleet {
    inner: Arc<FleetInner>,
}

impl SimFleet {
    /// A fleet that enrolls with `settings`, spreading agents over `endpoints` client
    /// endpoints (quinn drives each endpoint's I/O on one task).
    pub fn new(
        settings: AgentSettings,
        endpoints: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        // Loopback for a cluster on loopback (as `glory sim` runs); any address of
        // this host otherwise (agents in a network namespace of their own).
        let on_loopback = settings
            .cluster_masters
            .iter()
            .all(|cm| cm.ip().is_loopback());
        let bind = match on_loopback {
            true => SocketAddr::from(([127, 0, 0, 1], 0)),
            false => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let endpoints = (0..endpoints.max(1))
            .map(|_| {
                glory_protocol::transport::client_endpoint(bind)
                    .context("open simulated agents' endpoint")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(SimFleet {
            inner: Arc::new(FleetInner {
                settings,
                endpoints,
                agents: Mutex::new(Vec::new()),
                tasks: TaskTracker::new(),
                shutdown,
                stats: Arc::new(AgentStats::default()),
            }),
        })
    }

    fn agents(&self) -> MutexGuard<'_, Vec<SimAgent>> {
        self.inner.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add `count` agents (numbered after the existing ones) and start them all at once.
    pub fn add(&self, count: usize) {
        let range = self.push_agents(count, false);
        for i in range {
            self.start_index(i);
        }
    }

    /// Add `count` agents that really run the processes the cluster master asks them
    /// to run (component masters), on this machine, and start them.
    pub fn add_with_processes(&self, count: usize) {
        let range = self.push_agents(count, true);
        for i in range {
            self.start_index(i);
        }
    }

    /// Add `count` agents and power them on at most `per_second` a second, the way a
    /// datacenter comes up rack by rack (a power-on storm of thousands of handshakes
    /// in the same millisecond is a denial of service, not a boot). Returns at once.
    pub fn add_ramped(&self, count: usize, per_second: usize) {
        let range = self.push_agents(count, false);
        let fleet = self.clone();
        let per_tick = per_second.max(10) / 10;
        let shutdown = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            let mut next = range.start;
            while next < range.end {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let end = (next + per_tick).min(range.end);
                for i in next..end {
                    fleet.start_index(i);
                }
                next = end;
            }
        });
    }

    fn push_agents(&self, count: usize, run_processes: bool) -> std::ops::Range<usize> {
        let mut agents = self.agents();
        let start = agents.len();
        for i in start..start + count {
            let host = if run_processes {
                SimHost::with_processes(i as u32)
            } else {
                SimHost::new(i as u32)
            };
            agents.push(SimAgent {
                host: Arc::new(host),
                store: Arc::new(MemoryStore::default()),
                running: None,
                generation: 0,
            });
        }
        start..start + count
    }

    /// Agent `index`'s settings: each simulated node applies its configuration and
    /// installs its packages in a directory of its own under the fleet's `setup_root`.
    fn settings_of(&self, index: usize) -> AgentSettings {
        let mut settings = self.inner.settings.clone();
        if let Some(base) = &settings.setup_root {
            let own = base.join(format!("sim-{index}"));
            settings.setup_root = Some(own.join("root"));
            settings.setup_state = own.join("setup.json");
        }
        settings
    }

    /// Where agent `index` applies its configuration and installs packages.
    pub fn setup_root_of(&self, index: usize) -> Option<std::path::PathBuf> {
        self.settings_of(index).setup_root
    }

    /// Counters of every agent of this fleet.
    pub fn stats(&self) -> Arc<AgentStats> {
        self.inner.stats.clone()
    }

    pub fn len(&self) -> usize {
        self.agents().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start agent `index` if it is not running. Returns false if it already runs.
    pub fn start_index(&self, index: usize) -> bool {
        let mut agents = self.agents();
        let Some(agent) = agents.get_mut(index) else {
            return false;
        };
        if agent.running.is_some() {
            return false;
        }
        let stop = self.inner.shutdown.child_token();
        let power = CancellationToken::new();
        agent.running = Some((stop.clone(), power.clone()));
        agent.generation += 1;
        let generation = agent.generation;
        let deps = AgentDeps {
            endpoint: self.inner.endpoints[index % self.inner.endpoints.len()].clone(),
            host: agent.host.clone(),
            store: agent.store.clone(),
            stats: self.inner.stats.clone(),
        };
        let settings = self.settings_of(index);
        let fleet = self.clone();
        self.inner.tasks.spawn(async move {
            match run_agent(settings, deps, stop, power).await {
                Ok(AgentExit::Removed(_)) | Ok(AgentExit::Shutdown) | Ok(AgentExit::PoweredOff) => {
                }
                Err(e) => warn!(index, error = %e, "simulated agent failed"),
            }
            let mut agents = fleet.agents();
            if let Some(agent) = agents.get_mut(index) {
                if agent.generation == generation {
                    agent.running = None;
                }
            }
        });
        true
    }

    /// Hold agent `index`'s CPU at `cpu_percent` for `seconds`. False when there is
    /// no such agent.
    pub fn load_index(&self, index: usize, cpu_percent: f64, seconds: u64) -> bool {
        let Some(host) = self.agents().get(index).map(|a| a.host.clone()) else {
            return false;
        };
        host.force_cpu(
            cpu_percent,
            glory_protocol::now_ms().saturating_add(seconds.saturating_mul(1000)),
        );
        true
    }

    /// Cut agent `index`'s power.
    pub fn kill_index(&self, index: usize) -> bool {
        let mut agents = self.agents();
        match agents.get_mut(index).and_then(|a| a.running.take()) {
            Some((_, power)) => {
                power.cancel();
                true
            }
            None => false,
        }
    }

    /// Shut agent `index` down cleanly (it announces it is leaving).
    pub fn stop_index(&self, index: usize) -> bool {
        let mut agents = self.agents();
        match agents.get_mut(index).and_then(|a| a.running.take()) {
            Some((stop, _)) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.agents()
            .get(index)
            .is_some_and(|a| a.running.is_some())
    }

    /// The node id agent `index` enrolled as, once it has.
    pub fn node_id(&self, index: usize) -> Option<String> {
        let store = self.agents().get(index)?.store.clone();
        store.load().ok().flatten().map(|i| i.node_id)
    }

    /// The index of the agent that enrolled as `node`.
    pub fn index_of(&self, node: &str) -> Option<usize> {
        let stores: Vec<Arc<MemoryStore>> = self.agents().iter().map(|a| a.store.clone()).collect();
        stores
            .iter()
            .position(|s| s.load().ok().flatten().is_some_and(|i| i.node_id == node))
    }

    /// Node ids of every enrolled agent, by index.
    pub fn node_ids(&self) -> HashMap<usize, String> {
        (0..self.len())
            .filter_map(|i| self.node_id(i).map(|id| (i, id)))
            .collect()
    }

    /// Wait for every agent task to end (after the fleet's shutdown token fired).
    pub async fn wait(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        for endpoint in &self.inner.endpoints {
            endpoint.close(glory_protocol::close::SHUTDOWN, "shutdown");
        }
    }
}

#[async_trait::async_trait]
impl glory_cluster_master::SimControl for SimFleet {
    async fn kill(&self, node: &str) -> Result<(), String> {
        let index = self
            .index_of(node)
            .ok_or_else(|| format!("node {node} is not a simulated agent here"))?;
        if self.kill_index(index) {
            Ok(())
        } else {
            Err(format!("node {node} is not running"))
        }
    }

    async fn restart(&self, node: &str) -> Result<(), String> {
        let index = self
            .index_of(node)
            .ok_or_else(|| format!("node {node} is not a simulated agent here"))?;
        if self.start_index(index) {
            Ok(())
        } else {
            Err(format!("node {node} is already running"))
        }
    }

    async fn load(&self, node: &str, cpu_percent: f64, seconds: u64) -> Result<(), String> {
        let index = self
            .index_of(node)
            .ok_or_else(|| format!("node {node} is not a simulated agent here"))?;
        self.load_index(index, cpu_percent, seconds);
        Ok(())
    }

    async fn process(&self, node: &str, name: &str, start: bool) -> Result<(), String> {
        let index = self
            .index_of(node)
            .ok_or_else(|| format!("node {node} is not a simulated agent here"))?;
        let host = self
            .agents()
            .get(index)
            .map(|a| a.host.clone())
            .ok_or_else(|| format!("node {node} is not a simulated agent here"))?;
        host.set_process(name, start)
    }
}

/// A [`SimControl`](glory_cluster_master::SimControl) whose fleet is attached after the
/// cluster master started (the fleet needs the master's address first).
#[derive(Default)]
pub struct LateFleet {
    fleet: std::sync::OnceLock<SimFleet>,
}

impl LateFleet {
    pub fn attach(&self, fleet: SimFleet) {
        let _ = self.fleet.set(fleet);
    }
    fn get(&self) -> Result<&SimFleet, String> {
        self.fleet
            .get()
            .ok_or_else(|| "the simulated fleet is not started yet".to_string())
    }
}

#[async_trait::async_trait]
impl glory_cluster_master::SimControl for LateFleet {
    async fn kill(&self, node: &str) -> Result<(), String> {
        glory_cluster_master::SimControl::kill(self.get()?, node).await
    }
    async fn restart(&self, node: &str) -> Result<(), String> {
        glory_cluster_master::SimControl::restart(self.get()?, node).await
    }
    async fn load(&self, node: &str, cpu_percent: f64, seconds: u64) -> Result<(), String> {
        glory_cluster_master::SimControl::load(self.get()?, node, cpu_percent, seconds).await
    }
    async fn process(&self, node: &str, name: &str, start: bool) -> Result<(), String> {
        glory_cluster_master::SimControl::process(self.get()?, node, name, start).await
    }
}
