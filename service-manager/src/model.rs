//! What the key master holds for a service (`/glory/services/{name}`), and what the
//! API shows of its instances. The record is written only by the active cluster
//! master, each change one compare-and-swap, so a failover resumes from exactly what
//! was placed.

use serde::{Deserialize, Serialize};

use crate::spec::ServiceSpec;

/// A service and the instances placed for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub spec: ServiceSpec,
    /// The tenant of the service's pool when it was created.
    pub tenant: String,
    pub created_ms: u64,
    /// How many instances should run now: `spec.instances.desired` until the
    /// autoscaler or `scale` changes it; always within min..=max.
    pub desired: u32,
    /// Stopped by an operator: placements are kept, marked stopped, nothing runs.
    #[serde(default)]
    pub stopped: bool,
    pub instances: Vec<Placement>,
    /// The number of the next instance (`{service}-{n}`): ids are never reused.
    pub next_instance: u64,
    /// A rolling restart under way.
    #[serde(default)]
    pub restart: Option<RollingRestart>,
}

/// One instance the cluster master placed on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub id: String,
    pub node: String,
    /// Fencing number of its process on the node; a restart in place raises it.
    pub epoch: u64,
    pub created_ms: u64,
    /// Being drained out of the balancer before its process is stopped and the
    /// placement removed; why.
    #[serde(default)]
    pub draining: Option<Drain>,
    /// Kept but not running (the service is stopped).
    #[serde(default)]
    pub stopped: bool,
    /// A rolling restart's new instance, taking the place of this one once healthy.
    #[serde(default)]
    pub replaces: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub since_ms: u64,
    pub reason: String,
}

/// A rolling restart: the instances still to be replaced, one at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingRestart {
    pub started_ms: u64,
    pub pending: Vec<String>,
}

impl ServiceRecord {
    /// A new service's record: nothing placed yet.
    pub fn new(spec: ServiceSpec, tenant: String, now_ms: u64) -> Self {
        ServiceRecord {
            desired: spec.instances.desired,
            spec,
            tenant,
            created_ms: now_ms,
            stopped: false,
            instances: Vec::new(),
            next_instance: 1,
            restart: None,
        }
    }

    /// The process id of instance `id` on its node.
    pub fn process_id(&self, id: &str) -> String {
        process_id(&self.spec.name, id)
    }
}

/// `svc/{service}/{instance}`: the supervised process of an instance.
pub fn process_id(service: &str, instance: &str) -> String {
    format!("svc/{service}/{instance}")
}

/// `(service, instance)` of a process id made by [`process_id`].
pub fn parse_process_id(id: &str) -> Option<(&str, &str)> {
    id.strip_prefix("svc/")?.split_once('/')
}

/// An instance's state as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Starting,
    Healthy,
    Unhealthy,
    Stopping,
    Stopped,
    Failed,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Healthy => "healthy",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Failed => "failed",
        }
    }
}

/// What the cluster master knows of one placement's process, gathered from its
/// agent's reports and its node's state. Built by the cluster master, judged by
/// [`crate::reconcile`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The node is up (heard from).
    pub node_up: bool,
    /// Nobody knows how the node is (its group master is unreachable, a new cluster
    /// master has not heard yet, it is suspect): not a failure, not yet.
    pub node_unknown: bool,
    /// The newest report for this placement's epoch, if any.
    pub report: Option<Report>,
}

/// The parts of an agent's process report the reconciler uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub running: bool,
    /// The process ended and the agent has not started it again yet, or it could not
    /// start.
    pub ended: bool,
    /// `Some(true)`: passed its checks; `Some(false)`: failed them; `None`: no result
    /// yet (or no health check: then running counts as healthy).
    pub healthy: Option<bool>,
    pub has_check: bool,
    pub port: Option<u16>,
    /// When the current state began (ms since the Unix epoch).
    pub since_ms: u64,
    pub restarts: u32,
    pub detail: String,
}
