//! GLORY-CL node agent: enrolls its server with the cluster master, then keeps a QUIC
//! session with its group master and sends heartbeats carrying the host's load.
//!
//! Architecture invariant: depends on `glory-protocol` only (and later `glory-monitor`);
//! never on master code. The host is behind the [`Host`] trait so the same agent code
//! runs on a real server ([`RealHost`]) and in simulations ([`SimHost`]).
#![forbid(unsafe_code)]

mod agent;
mod cert;
pub mod config;
mod dialer;
pub mod host;
pub mod identity;
pub mod instances;
pub mod node_identity;
pub mod probes;
pub mod processes;
pub mod restart;
mod sampling;
pub mod setup;

use std::sync::Arc;

pub use agent::{run_agent, AgentDeps, AgentExit, AgentStats};
use anyhow::Context;
pub use config::{AgentConfig, AgentSettings};
pub use host::{Host, RealHost, SimHost};
pub use identity::{AgentIdentity, FileStore, IdentityStore, MemoryStore};
use tokio_util::sync::CancellationToken;

/// Run the agent of this machine with its configuration until `shutdown`.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = config.validate()?;
    if matches!(settings.ca_trust, glory_protocol::CaTrust::FirstUse) {
        tracing::warn!("neither ca_cert nor ca_cert_hash is set: trusting the cluster CA seen at first enrollment");
    }
    let endpoint =
        glory_protocol::transport::client_endpoint(config.bind).context("open QUIC endpoint")?;
    let deps = AgentDeps {
        endpoint: endpoint.clone(),
        host: Arc::new(RealHost::with_node_name(config.node_name.clone())),
        store: Arc::new(FileStore::new(&config.state_dir)),
        stats: Arc::new(AgentStats::default()),
    };
    let exit = run_agent(settings, deps, shutdown, CancellationToken::new()).await;
    endpoint.wait_idle().await;
    match exit? {
        AgentExit::Removed(reason) => anyhow::bail!("node was removed from the cluster: {reason}"),
        AgentExit::Shutdown | AgentExit::PoweredOff => Ok(()),
    }
}
