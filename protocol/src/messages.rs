//! Every message that crosses a GLORY-CL link. Each link has its own enums; fields are
//! named on the wire (MessagePack maps), so a peer can add fields without breaking an
//! older reader (unknown fields are ignored, missing optional ones default).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Version of the wire protocol. A peer with another version is refused at `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// What the connecting side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A node agent with its node certificate.
    Agent,
    /// A group master (to the cluster master).
    GroupMaster,
    /// A machine without a certificate yet, asking to enroll.
    Enrollee,
    /// A provisioner (to the cluster master), with its provisioner certificate.
    Provisioner,
}

/// First frame on the control stream of every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub role: Role,
    /// Node id, group id, or (for an enrollee) its machine id.
    pub id: String,
}

impl Hello {
    pub fn new(role: Role, id: impl Into<String>) -> Self {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            role,
            id: id.into(),
        }
    }
}

/// Why a peer was refused. Stable codes so that a peer can decide whether retrying helps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    VersionMismatch,
    /// The certificate does not match the claimed identity or role.
    BadIdentity,
    /// The node (or its certificate) was removed from the cluster.
    Removed,
    /// The bootstrap token is unknown, wrong, expired or used up.
    BadToken,
    /// No group can take the node (all full).
    NoCapacity,
    /// This master cannot serve the request right now (not the leader, store down...).
    Unavailable,
    /// The request was malformed.
    BadRequest,
    /// This peer was replaced by a newer connection with the same identity.
    Replaced,
    /// Another live server holds the identity this enrollee claims (a cloned server).
    IdentityConflict,
}

impl RefusalCode {
    /// Whether the same request may succeed later without operator action.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RefusalCode::Unavailable | RefusalCode::NoCapacity | RefusalCode::Replaced
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
    /// Where to go instead (a standby names the active master).
    #[serde(default)]
    pub redirect: Option<SocketAddr>,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            redirect: None,
        }
    }

    pub fn redirect_to(mut self, addr: Option<SocketAddr>) -> Self {
        self.redirect = addr;
        self
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Answer to `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelloReply {
    Welcome {
        protocol_version: u32,
        server_id: String,
    },
    Refused(Refusal),
}

// ---------------------------------------------------------------------------------------
// Node state and host data
// ---------------------------------------------------------------------------------------

/// Liveness state of a node as the cluster sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Enrolled, not yet heard by its group master.
    Joining,
    Up,
    /// Missed heartbeats, not yet `down`.
    Suspect,
    Down,
    /// Shut down cleanly.
    Left,
    /// Its group master is not reachable: we do not know.
    Unreachable,
}

impl NodeState {
    pub const ALL: [NodeState; 6] = [
        NodeState::Joining,
        NodeState::Up,
        NodeState::Suspect,
        NodeState::Down,
        NodeState::Left,
        NodeState::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
            NodeState::Left => "left",
            NodeState::Unreachable => "unreachable",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    pub name: String,
    pub mount_point: String,
    pub file_system: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    /// Addresses with prefix length, e.g. `10.1.2.3/24`.
    pub addresses: Vec<String>,
}

/// What a node is: reported at enrollment and when it changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    /// What makes this server this server, and so its node id: `name:…` (set by the
    /// operator), `uuid:…` (SMBIOS), `mac:…` (boot NIC) or `machine-id:…` (last
    /// resort). Empty from agents older than the field: the machine id stands in.
    #[serde(default)]
    pub identity: String,
    pub machine_id: String,
    pub cpus: u32,
    #[serde(default)]
    pub cpu_model: String,
    pub memory_bytes: u64,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub agent_version: String,
    /// True for simulated hosts (`glory up`, `glory sim`).
    #[serde(default)]
    pub simulated: bool,
    /// The OS image the node booted (`glory.image=NAME:VERSION` on its kernel
    /// command line), when it runs one deployed by the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<u32>,
}

impl Inventory {
    /// Every IP address on the node's interfaces (their prefix lengths dropped;
    /// entries that are not addresses skipped), in the order reported.
    pub fn ip_addresses(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.nics
            .iter()
            .flat_map(|nic| nic.addresses.iter())
            .filter_map(|a| a.split('/').next()?.parse().ok())
    }
}

/// A compact load sample carried by every heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// CPU busy percentage over all cores, 0-100.
    pub cpu: f32,
    /// 1-minute load average.
    pub load1: f32,
    pub mem_used: u64,
    pub mem_total: u64,
    /// Number of processes.
    pub procs: u32,
}

// ---------------------------------------------------------------------------------------
// Enrollment (enrollee -> cluster master, on a connection without client certificate)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollKind {
    /// A server with a node agent (boxed: an inventory is much larger than the other
    /// variant; the wire format is the same).
    Node { inventory: Box<Inventory> },
    /// A group master for `group`, serving agents at `listen`.
    GroupMaster { group: String, listen: SocketAddr },
    /// A provisioner named `name`, serving boot files at `http` (its base URL).
    Provisioner { name: String, http: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// Bootstrap token, `<id>.<secret>`.
    pub token: String,
    pub kind: EnrollKind,
    /// PKCS#10 request for the key the peer generated; the key never leaves the peer.
    pub csr_pem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The node id (for nodes) or the group id (for group masters).
    pub id: String,
    /// The node's group.
    pub group: Option<String>,
    /// Where the group's masters listen, active first.
    pub group_masters: Vec<SocketAddr>,
    /// Signed certificate for the CSR's key.
    pub cert_pem: String,
    /// The cluster CA, to verify masters from now on.
    pub ca_pem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollReply {
    Accepted(Enrolled),
    Refused(Refusal),
}

// ---------------------------------------------------------------------------------------
// Agent <-> group master
// ---------------------------------------------------------------------------------------

/// Sent as a QUIC datagram every heartbeat interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    /// Sender's wall clock, ms since the Unix epoch (for lag statistics only).
    pub sent_ms: u64,
    pub load: Load,
}

/// Agent -> group master, on the control stream after `Hello`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentToGroup {
    /// The host's inventory changed (or the first report after connecting).
    Inventory(Box<Inventory>),
    /// Clean shutdown: mark the node `left` now.
    Leaving,
    /// A supervised process started, exited or could not start.
    Process(ProcessReport),
    /// Every supervised process, first thing in each session (empty after a restart):
    /// what the cluster master knew of this node's processes before is replaced.
    Processes(Vec<ProcessReport>),
    /// One interval's monitoring samples.
    Samples(crate::monitoring::SampleBatch),
    /// Samples taken earlier that the group master does not hold (after
    /// [`GroupToAgent::SamplesHeld`]): stored, not evaluated.
    Backfill(crate::monitoring::SampleBatch),
    /// What the agent applied and installed (when a session opens and after each
    /// change).
    Setup(crate::setup::SetupReport),
    /// Sign this request for the next certificate (for a fresh key); answered with
    /// [`GroupToAgent::Certificate`] through the group master.
    Renew { csr_pem: String },
    /// The answer to [`GroupToAgent::Probe`]: this agent is alive.
    Alive,
}

/// Group master -> agent, on the control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupToAgent {
    /// Addresses of this group's masters (active first), for reconnecting.
    GroupMasters(Vec<SocketAddr>),
    /// The node was removed from the cluster; the agent must stop and not retry.
    Removed { reason: String },
    /// Start (or keep running) a process; a spec with a higher epoch replaces a running
    /// one of the same id.
    Start(ProcessSpec),
    /// Stop the process `id` if its epoch is at most `epoch`.
    Stop { id: String, epoch: u64 },
    /// The probes (process monitors, checks) this node runs; replaces the previous set.
    Probes(Vec<crate::monitoring::ProbeSpec>),
    /// The newest sample of this node the group master holds (None: none), sent when a
    /// session opens: the agent backfills what it buffered after it.
    SamplesHeld { through_ms: Option<u64> },
    /// The node's first-boot configuration (None: it has none; files applied before
    /// are left as they are).
    Config(Option<crate::setup::NodeConfig>),
    /// Every package the node must have (replaces the previous set).
    Software(Vec<crate::setup::PackageSpec>),
    /// The node's next certificate, signed for the key of its `Renew`.
    Certificate { cert_pem: String },
    /// The group master has not heard this agent's heartbeats for a while (it is
    /// `suspect`): answer [`AgentToGroup::Alive`] at once. Both go on the control
    /// stream, which QUIC retransmits, so heartbeats lost on a lossy link do not make
    /// a live node `down`.
    Probe,
}

/// A process the cluster master wants running on a node (a component master).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Stable name, e.g. `pool/fs-a/master`.
    pub id: String,
    /// Fencing number; larger wins.
    pub epoch: u64,
    /// Program and arguments; empty: nothing to run, the node only holds the role.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// A service instance's port, health check and graceful stop (absent for component
    /// masters, which are killed at once when stopped).
    #[serde(default)]
    pub instance: Option<InstanceSpec>,
}

/// What makes a supervised process a service instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// The port it listens on; 0: the agent picks a free one. `{port}` in the command
    /// and the environment's values is replaced by it, and `PORT` set to it.
    pub port: u16,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// A stop sends SIGTERM to the process group, then SIGKILL after this long.
    pub stop_timeout_ms: u64,
}

/// How the agent checks an instance's health, every `interval_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Failed checks in a row before the instance is unhealthy.
    pub failures: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// A TCP connection to the instance's port on the loopback address.
    Tcp,
    /// `GET path` answered with a 2xx or 3xx status.
    Http { path: String },
    /// The command exits 0 (run with the instance's environment).
    Exec { command: Vec<String> },
}

/// An instance's health as its agent last checked it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    pub healthy: bool,
    /// Consecutive failed checks.
    pub failures: u32,
    /// The last check's result, for people.
    pub detail: String,
    /// When `healthy` last changed, ms since the Unix epoch.
    pub since_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    /// Exited (or was stopped); `code` is the exit status when there was one.
    Exited {
        code: Option<i32>,
    },
    /// Could not be started.
    Failed,
}

/// What became of a supervised process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessReport {
    pub id: String,
    pub epoch: u64,
    pub state: ProcessState,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Why it failed or exited, for people.
    #[serde(default)]
    pub detail: String,
    /// How many times this epoch's process was started on this node (1: the first
    /// start; a restart after an exit adds one).
    #[serde(default)]
    pub run: u32,
    /// Consecutive quick failures (exits or failed starts before a stable run) that
    /// led to the current run or pending restart; a stable run resets it.
    #[serde(default)]
    pub failures: u32,
    /// The process keeps failing quickly: the agent still restarts it at the longest
    /// backoff, and the cluster master may move the role to another candidate.
    #[serde(default)]
    pub failing: bool,
    /// A restart is scheduled this many milliseconds after the report was made.
    #[serde(default)]
    pub restart_in_ms: Option<u64>,
    /// How the last run of this epoch's process ended, if one did.
    #[serde(default)]
    pub last_exit: Option<ProcessExit>,
    /// The last lines the process wrote to stdout and stderr (bounded by the agent).
    #[serde(default)]
    pub output: Vec<String>,
    /// A service instance's port (the one the agent picked when the spec said 0).
    #[serde(default)]
    pub port: Option<u16>,
    /// A service instance's health; `None` until its first check ended (or when it has
    /// no health check).
    #[serde(default)]
    pub health: Option<HealthStatus>,
}

impl ProcessReport {
    /// A report of process `id` at `epoch` in `state`, with nothing else known yet.
    pub fn new(id: impl Into<String>, epoch: u64, state: ProcessState) -> Self {
        ProcessReport {
            id: id.into(),
            epoch,
            state,
            pid: None,
            detail: String::new(),
            run: 0,
            failures: 0,
            failing: false,
            restart_in_ms: None,
            last_exit: None,
            output: Vec::new(),
            port: None,
            health: None,
        }
    }
}

/// How one run of a supervised process ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExit {
    /// Exit status, when it exited by itself.
    #[serde(default)]
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// How long it ran, in milliseconds (0 when it could not be started).
    #[serde(default)]
    pub ran_ms: u64,
    /// The same for people, e.g. `exit status: 3`, or why it could not start.
    #[serde(default)]
    pub detail: String,
}

// ---------------------------------------------------------------------------------------
// Group master <-> cluster master
// ---------------------------------------------------------------------------------------

/// One state transition decided by a group master's failure detector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub node: String,
    pub from: NodeState,
    pub to: NodeState,
    /// Wall clock of the decision, ms since the Unix epoch.
    pub at_ms: u64,
    pub reason: String,
}

/// Last load of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub node: String,
    pub load: Load,
}

/// Sent once per report interval: counts, heartbeat statistics and loads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub group: String,
    pub counts: BTreeMap<NodeState, u32>,
    /// Heartbeats received since the group master started.
    pub heartbeats_received: u64,
    /// Heartbeats detected missing (sequence gaps) since start.
    pub heartbeats_lost: u64,
    /// Loads heard since the previous report.
    pub loads: Vec<NodeLoad>,
    /// Inventories that changed since the previous report.
    #[serde(default)]
    pub inventories: Vec<(String, Inventory)>,
    /// Monitoring samples stored since the group master started, and sample batches
    /// dropped because its monitoring fell behind.
    #[serde(default)]
    pub samples_ingested: u64,
    #[serde(default)]
    pub samples_dropped: u64,
    /// Bytes the group master's statistics store holds (its SQLite pages in use).
    #[serde(default)]
    pub stats_store_bytes: u64,
}

/// Group master -> cluster master, on the control stream after `Hello`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupToCluster {
    /// First message: where this group master serves agents.
    Register {
        listen: SocketAddr,
    },
    StateChanges(Vec<StateChange>),
    Report(GroupReport),
    /// Alerts that changed state (pending, firing, resolved).
    Alerts(Vec<crate::monitoring::AlertChange>),
    /// Every alert pending or firing now, sent when the link (re)starts: the cluster
    /// master resolves those of the group it knew that are not in it.
    AlertSnapshot(Vec<crate::monitoring::AlertChange>),
    /// The answer to a [`ClusterToGroup::Metrics`] query.
    MetricsAnswer(crate::monitoring::MetricsAnswer),
    /// Agents' process reports, forwarded at once: `(node, report)`.
    Processes(Vec<(String, ProcessReport)>),
    /// A node's whole set of processes, at the start of its session.
    ProcessSnapshot {
        node: String,
        processes: Vec<ProcessReport>,
        /// The IP address the node's agent connected from: the address other machines
        /// reach the node at (absent from older group masters).
        #[serde(default)]
        address: Option<std::net::IpAddr>,
    },
    /// Agents' setup reports, forwarded at once: `(node, report)`.
    Setup(Vec<(String, crate::setup::SetupReport)>),
    /// A node of the group asks for its next certificate (its agent's `Renew`);
    /// `serial` is the certificate its session was opened with: the one it holds.
    RenewNode {
        node: String,
        csr_pem: String,
        #[serde(default)]
        serial: String,
    },
    /// The group master asks for its own next certificate.
    Renew {
        csr_pem: String,
    },
}

/// A node as the cluster master tells its group master about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    /// Serial of its current certificate (hex).
    pub serial: String,
    /// Serial of the certificate it held before its last renewal, still accepted
    /// until it expires (a renewal whose answer was lost strands no agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_serial: Option<String>,
    /// Last state the cluster recorded.
    pub state: NodeState,
}

/// Cluster master -> group master, on the control stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterToGroup {
    /// Whether this group master leads its group (the first to register does; the
    /// others stand by until the cluster master promotes one), and where the group's
    /// masters are, active first. Sent after `Register` and whenever it changes.
    Role {
        active: bool,
        masters: Vec<SocketAddr>,
    },
    /// The full member list, sent after `Register` (and after a resync).
    Members {
        members: Vec<Member>,
        /// Certificate serials that must be refused.
        revoked: Vec<String>,
    },
    MemberAdded(Member),
    MemberRemoved {
        node: String,
        serial: String,
    },
    /// Pass this on to the node's agent (`Start` or `Stop`); dropped when the agent is
    /// not connected (the cluster master repeats what it still wants).
    ToAgent {
        node: String,
        msg: GroupToAgent,
    },
    /// Every monitor that applies to the group (replaces the previous set).
    Monitors(Vec<crate::monitoring::MonitorSpec>),
    /// A history query; answered with [`GroupToCluster::MetricsAnswer`].
    Metrics(crate::monitoring::MetricsQuery),
    /// The group master's next certificate, signed for the key of its `Renew`.
    Certificate {
        cert_pem: String,
    },
}

// ---------------------------------------------------------------------------------------
// Agent -> cluster master (node certificate): where is my group master?
// ---------------------------------------------------------------------------------------

/// Cluster master -> agent, after `Hello { role: agent }`: the agent lost every group
/// master it knew and asks where its group is led now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLocation {
    pub group: String,
    /// Active first.
    pub masters: Vec<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_body, encode_body};

    /// Process reports and snapshots as peers from before restarts sent them.
    #[derive(Serialize)]
    struct OldReport {
        id: String,
        epoch: u64,
        state: ProcessState,
        pid: Option<u32>,
        detail: String,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum OldGroupToCluster {
        ProcessSnapshot {
            node: String,
            processes: Vec<OldReport>,
        },
    }

    #[test]
    fn process_messages_from_older_peers_decode_with_defaults() {
        let old = OldReport {
            id: "pool/p/master".into(),
            epoch: 3,
            state: ProcessState::Exited { code: Some(1) },
            pid: None,
            detail: "exited".into(),
        };
        let body = encode_body(&OldGroupToCluster::ProcessSnapshot {
            node: "n-1".into(),
            processes: vec![old],
        })
        .unwrap();
        match decode_body::<GroupToCluster>(&body).unwrap() {
            GroupToCluster::ProcessSnapshot {
                node,
                processes,
                address,
            } => {
                assert_eq!((node.as_str(), address), ("n-1", None));
                let r = &processes[0];
                assert_eq!((r.epoch, r.run, r.failures), (3, 0, 0));
                assert!(!r.failing && r.restart_in_ms.is_none() && r.last_exit.is_none());
                assert!(r.output.is_empty());
            }
            other => panic!("decoded as {other:?}"),
        }
        // And the new fields survive a round trip.
        let mut report = ProcessReport::new("pool/p/master", 4, ProcessState::Running);
        report.failing = true;
        report.output = vec!["boom".into()];
        report.last_exit = Some(ProcessExit {
            code: Some(3),
            ..Default::default()
        });
        let msg = GroupToCluster::ProcessSnapshot {
            node: "n-1".into(),
            processes: vec![report],
            address: Some("10.0.0.5".parse().unwrap()),
        };
        assert_eq!(
            decode_body::<GroupToCluster>(&encode_body(&msg).unwrap()).unwrap(),
            msg
        );
    }
}
