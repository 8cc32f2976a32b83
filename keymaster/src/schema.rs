//! The key layout of GLORY-CL in the key master, and its versioned records.
//!
//! Every record is JSON with a `v` field. Readers ignore fields they do not know and
//! default fields that are missing, so adding a field never breaks an older reader; a
//! record with a `v` newer than [`RECORD_VERSION`] is still read (best effort) but
//! logged by the caller. Keys:
//!
//! | key | value |
//! |---|---|
//! | `/glory/ca` | [`CaRecord`] |
//! | `/glory/nodes/{node}` | [`NodeRecord`] (identity, group, inventory: changes rarely) |
//! | `/glory/node-status/{node}` | [`NodeStatus`] (state and its history: changes on transitions) |
//! | `/glory/identities/{identity}` | node id (UTF-8), so a re-enrolling server keeps its id |
//! | `/glory/removed/{identity}` | [`RemovedRecord`]: refused at enrollment until an operator re-admits it |
//! | `/glory/groups/{group}` | [`GroupRecord`] |
//! | `/glory/revoked/{serial}` | [`RevokedRecord`] |
//! | `/glory/tokens/bootstrap/{id}` | [`BootstrapTokenRecord`] |
//! | `/glory/tokens/api/{id}` | [`ApiTokenRecord`] |
//! | `/glory/election/cluster-master/…` | election keys of cluster masters |
//! | `/glory/events/{id:020}` | the cluster's event log, a ring of the last 4,096 (the cluster master's `events::StoredEvent` as JSON) |
//! | `/glory/tenants/{name}` | [`TenantRecord`] |
//! | `/glory/pools/{name}` | [`PoolRecord`] (spec, member nodes, candidates, elected master) |
//! | `/glory/pool-generation` | a counter; every change of pool membership compares and bumps it |
//! | `/glory/monitors/{name}` | [`MonitorRecord`] (what group masters evaluate) |
//! | `/glory/silences/{id}` | [`SilenceRecord`] |
//! | `/glory/users/{name}` | [`UserRecord`] (console users; an Argon2id password hash) |
//! | `/glory/boot/{mac}` | [`BootRecord`] (a machine's way from power-on to enrolled) |
//! | `/glory/bmc/{target}` | [`BmcRecord`] (power control of a node id or `mac:<mac>`; the password encrypted) |
//! | `/glory/provisioners/{name}` | [`ProvisionerRecord`] |
//!
//! Pool membership is guarded by one key, `/glory/pool-generation`: a transaction that
//! adds or removes pool nodes succeeds only if the generation is the one the writer read
//! its view at, so two cluster masters can never hand out the same node, whatever the
//! pool size (a per-node claim key would need one compare per node, and etcd limits a
//! transaction to 128 operations).
//!
//! Records hold a few wire types (a node's [`Inventory`], its [`NodeState`]) but store
//! them through their own types in [`stored`], so a change to a wire message never
//! silently changes the stored format.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use glory_protocol::{Inventory, NodeState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod images;
mod monitoring;
pub mod stored;

pub use monitoring::{
    AggregateRecord, MonitorRecord, MonitorScope, ProcessMatchRecord, RuleRecord, SilenceMatchers,
    SilenceRecord,
};

/// Version written into every record by this build.
pub const RECORD_VERSION: u32 = 1;

pub const ROOT: &str = "/glory/";
pub const CA_KEY: &str = "/glory/ca";
pub const NODES_PREFIX: &str = "/glory/nodes/";
pub const NODE_STATUS_PREFIX: &str = "/glory/node-status/";
pub const EVENTS_PREFIX: &str = "/glory/events/";
pub const IDENTITIES_PREFIX: &str = "/glory/identities/";
pub const REMOVED_PREFIX: &str = "/glory/removed/";
pub const GROUPS_PREFIX: &str = "/glory/groups/";
pub const REVOKED_PREFIX: &str = "/glory/revoked/";
pub const BOOTSTRAP_TOKENS_PREFIX: &str = "/glory/tokens/bootstrap/";
pub const API_TOKENS_PREFIX: &str = "/glory/tokens/api/";
pub const USERS_PREFIX: &str = "/glory/users/";
pub const CLUSTER_MASTER_ELECTION: &str = "/glory/election/cluster-master";
pub const TENANTS_PREFIX: &str = "/glory/tenants/";
pub const POOLS_PREFIX: &str = "/glory/pools/";
pub const POOL_GENERATION_KEY: &str = "/glory/pool-generation";
pub const MONITORS_PREFIX: &str = "/glory/monitors/";
pub const SILENCES_PREFIX: &str = "/glory/silences/";
pub const BOOT_PREFIX: &str = "/glory/boot/";
pub const BMC_PREFIX: &str = "/glory/bmc/";
pub const PROVISIONERS_PREFIX: &str = "/glory/provisioners/";
/// Services (`glory_service_manager::model::ServiceRecord`, JSON), by name.
pub const SERVICES_PREFIX: &str = "/glory/services/";
/// Frameworks ([`FrameworkRecord`]), by id.
pub const FRAMEWORKS_PREFIX: &str = "/glory/frameworks/";

pub fn framework_key(id: &str) -> String {
    format!("{FRAMEWORKS_PREFIX}{id}")
}

pub fn service_key(name: &str) -> String {
    format!("{SERVICES_PREFIX}{name}")
}

pub fn node_key(node: &str) -> String {
    format!("{NODES_PREFIX}{node}")
}
pub fn node_status_key(node: &str) -> String {
    format!("{NODE_STATUS_PREFIX}{node}")
}
pub fn identity_key(identity: &str) -> String {
    format!("{IDENTITIES_PREFIX}{identity}")
}
pub fn removed_key(identity: &str) -> String {
    format!("{REMOVED_PREFIX}{identity}")
}
pub fn group_key(group: &str) -> String {
    format!("{GROUPS_PREFIX}{group}")
}
pub fn revoked_key(serial: &str) -> String {
    format!("{REVOKED_PREFIX}{serial}")
}
pub fn bootstrap_token_key(id: &str) -> String {
    format!("{BOOTSTRAP_TOKENS_PREFIX}{id}")
}
pub fn api_token_key(id: &str) -> String {
    format!("{API_TOKENS_PREFIX}{id}")
}
pub fn user_key(name: &str) -> String {
    format!("{USERS_PREFIX}{name}")
}
pub fn tenant_key(name: &str) -> String {
    format!("{TENANTS_PREFIX}{name}")
}
pub fn pool_key(name: &str) -> String {
    format!("{POOLS_PREFIX}{name}")
}
pub fn monitor_key(name: &str) -> String {
    format!("{MONITORS_PREFIX}{name}")
}
pub fn silence_key(id: &str) -> String {
    format!("{SILENCES_PREFIX}{id}")
}
pub fn boot_key(mac: &str) -> String {
    format!("{BOOT_PREFIX}{mac}")
}
pub fn bmc_key(target: &str) -> String {
    format!("{BMC_PREFIX}{target}")
}
pub fn provisioner_key(name: &str) -> String {
    format!("{PROVISIONERS_PREFIX}{name}")
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable record at {key}: {reason}")]
pub struct RecordError {
    pub key: String,
    pub reason: String,
}

/// Serialize a record (its `v` must already be set).
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(record).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RecordError> {
    serde_json::from_slice(bytes).map_err(|e| RecordError {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn v1() -> u32 {
    RECORD_VERSION
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub id: String,
    pub hostname: String,
    pub machine_id: String,
    pub group: String,
    /// Serial of the node's current certificate.
    pub serial: String,
    /// Serial of the certificate before its last renewal (accepted until it expires).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub previous_serial: String,
    /// When the current certificate expires, ms since the epoch (0: not recorded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cert_expires_ms: u64,
    pub enrolled_ms: u64,
    #[serde(with = "stored::inventory")]
    pub inventory: Inventory,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The server identity the node enrolled under (`uuid:…`, `mac:…`, `name:…`,
    /// `machine-id:…`). Empty in records written before the field: see
    /// [`NodeRecord::identity`].
    #[serde(default, rename = "identity")]
    pub server_identity: String,
    /// Hex SHA-256 of the public key the node's certificate was signed for: a repeated
    /// enrollment with the same key is the same agent retrying, another key is another
    /// server claiming the identity.
    #[serde(default)]
    pub key_sha256: String,
    /// The IP address the node's agent last connected to its group master from: the
    /// address a pool master on this node is published at by default.
    #[serde(default)]
    pub reached_from: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl NodeRecord {
    /// The identity this node holds; the machine id for records older than the field.
    pub fn identity(&self) -> String {
        if self.server_identity.is_empty() {
            format!("machine-id:{}", self.machine_id)
        } else {
            self.server_identity.clone()
        }
    }
}

/// A node an operator removed: its identity may not enroll again until re-admitted
/// (`glory nodes admit`), so a removed server restarted with a valid token stays out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub node: String,
    pub identity: String,
    pub hostname: String,
    pub at_ms: u64,
}

/// One entry of a node's state history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    #[serde(with = "stored::node_state")]
    pub state: NodeState,
    pub at_ms: u64,
    #[serde(default)]
    pub reason: String,
}

/// How many transitions a node's status keeps.
pub const STATE_HISTORY_LEN: usize = 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    #[serde(default = "v1")]
    pub v: u32,
    #[serde(with = "stored::node_state")]
    pub state: NodeState,
    pub since_ms: u64,
    /// Newest last, at most [`STATE_HISTORY_LEN`] entries.
    #[serde(default)]
    pub history: Vec<StateEntry>,
}

impl NodeStatus {
    pub fn new(state: NodeState, at_ms: u64, reason: &str) -> Self {
        NodeStatus {
            v: RECORD_VERSION,
            state,
            since_ms: at_ms,
            history: vec![StateEntry {
                state,
                at_ms,
                reason: reason.to_string(),
            }],
        }
    }

    /// Record a transition; a repeat of the current state changes nothing.
    pub fn transition(&mut self, state: NodeState, at_ms: u64, reason: &str) -> bool {
        if state == self.state {
            return false;
        }
        self.state = state;
        self.since_ms = at_ms;
        self.history.push(StateEntry {
            state,
            at_ms,
            reason: reason.to_string(),
        });
        if self.history.len() > STATE_HISTORY_LEN {
            let excess = self.history.len() - STATE_HISTORY_LEN;
            self.history.drain(..excess);
        }
        true
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub id: String,
    /// Where the group's active master serves agents, once one registered.
    pub master_addr: Option<SocketAddr>,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub serial: String,
    pub node: String,
    pub at_ms: u64,
}

/// What a bootstrap token may enroll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BootstrapScope {
    Node,
    GroupMaster,
    /// Nodes and group masters (never provisioners).
    Any,
    Provisioner,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapTokenRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub id: String,
    /// Hex SHA-256 of the secret part; the secret itself is never stored.
    pub secret_sha256: String,
    pub created_ms: u64,
    /// None: never expires.
    pub expires_ms: Option<u64>,
    pub single_use: bool,
    #[serde(default)]
    pub used: bool,
    pub scope: BootstrapScope,
    #[serde(default)]
    pub description: String,
    /// Minted for one boot of this MAC by a provisioner: the enrollment that uses it
    /// (or is refused with it) ends that boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mac: Option<String>,
    /// Nodes that enroll with it join this group (e.g. one per rack, or `glory up
    /// --real-agents`' own group) instead of the one assignment would choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A machine's way from power-on to enrolled, per MAC (`/glory/boot/{mac}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub mac: String,
    /// `discovered`, `booting`, `enrolling`, `enrolled` or `failed`.
    pub state: String,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    /// When it entered `state`, ms.
    pub since_ms: u64,
    #[serde(default)]
    pub detail: String,
    /// The provisioner whose boot network it is on.
    #[serde(default)]
    pub provisioner: String,
}

/// How a node (or a MAC not enrolled yet) is powered on and off (`/glory/bmc/{target}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcRecord {
    #[serde(default = "v1")]
    pub v: u32,
    /// `ipmi`, `redfish` or `qemu`.
    pub driver: String,
    pub address: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub user: Option<String>,
    /// The password sealed with the cluster masters' secrets key (never the clear text).
    #[serde(default)]
    pub password_sealed: Option<String>,
    #[serde(default)]
    pub system_id: Option<String>,
    #[serde(default)]
    pub insecure_tls: bool,
    pub updated_ms: u64,
}

/// A provisioner that enrolled (`/glory/provisioners/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionerRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub name: String,
    /// Base URL of its boot files.
    pub http: String,
    pub enrolled_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub id: String,
    pub secret_sha256: String,
    /// `operator`, `tenant` or `component`.
    pub role: String,
    #[serde(default)]
    pub tenant: Option<String>,
    pub created_ms: u64,
    #[serde(default)]
    pub description: String,
}

/// A console user: signs in with a name and password and acts with a role, like an
/// API token of that role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub name: String,
    /// `operator`, `tenant` or `component`.
    pub role: String,
    #[serde(default)]
    pub tenant: Option<String>,
    /// Argon2id, in PHC string form (algorithm, parameters, salt and hash).
    pub password_hash: String,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub name: String,
    pub created_ms: u64,
    #[serde(default)]
    pub description: String,
    /// Its share of the cluster; none: no limit and no guarantee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// A tenant's guarantee and limits (`PUT /api/v1/tenants/{name}/quota`). A limit that
/// is absent does not restrict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Nodes the tenant is sure to get; the sum over tenants fits the cluster (else 409).
    #[serde(default)]
    pub guaranteed_nodes: u64,
    /// At least guaranteed_nodes; absent: no limit.
    #[serde(default)]
    pub max_nodes: Option<u64>,
    #[serde(default)]
    pub max_cpus: Option<u64>,
    #[serde(default)]
    pub max_memory_gib: Option<u64>,
}

/// Which nodes may join a pool. Empty fields do not restrict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSelector {
    #[serde(default)]
    pub min_cpus: u32,
    #[serde(default)]
    pub min_memory_gib: u64,
    #[serde(default)]
    pub min_disk_gib: u64,
    /// Only nodes of these groups (each must exist).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Only nodes carrying all of these labels with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How a pool's nodes are placed: `none` fills from the fewest groups, `groups` spreads
/// across as many groups as possible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Spread {
    /// Fill from the fewest groups' worth of free nodes, in node order.
    #[default]
    None,
    /// Across as many groups as possible, so one group's loss takes few nodes.
    Groups,
}

/// The component master process the cluster master starts on the elected candidate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MasterSpec {
    /// Program and arguments; empty: the component starts its master itself and only
    /// uses the election.
    #[serde(default)]
    #[schema(schema_with = master_command_schema)]
    pub command: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = master_env_schema)]
    pub env: BTreeMap<String, String>,
    /// Port the master listens on; part of its published address.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<u16>,
}

/// The API's bounds on a master's command (the cluster master refuses more).
fn master_command_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(4096)),
        )
        .max_items(Some(64))
        .description(Some(
            "Program and arguments (the program not empty; at most 64 of at most 4096 bytes); \
             empty: the component starts its master itself and only uses the election. \
             `{port}` (needs `port`), `{node}`, `{pool}` and `{epoch}` are replaced when \
             the master is started.",
        ))
        .build()
}

/// The API's bounds on a master's environment.
fn master_env_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(4096));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
        .description(Some(
            "Variable names `[A-Za-z_][A-Za-z0-9_]*` (at most 128) to values (at most \
             4096 bytes; placeholders as in `command`). The process gets these, a default \
             `PATH` unless set here, and the `GLORY_*` variables; nothing of the agent's \
             environment.",
        ))
        .build()
}

/// The elected master of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMaster {
    pub node: String,
    /// `ip` or `ip:port` of the node.
    pub address: String,
    /// Grows with every election; components fence older masters with it.
    pub epoch: u64,
    pub since_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub name: String,
    pub tenant: String,
    /// `fs`, `db`, `dp` or `custom:<name>`.
    pub component: String,
    #[serde(default)]
    pub selector: PoolSelector,
    #[serde(default)]
    pub spread: Spread,
    /// Give the pool a fitting free node in place of one that stays down.
    #[serde(default)]
    pub replace_failed: bool,
    /// How long a node must stay down before it is replaced.
    #[serde(default)]
    pub replace_delay_ms: u64,
    #[serde(default)]
    pub master_spec: MasterSpec,
    /// Member nodes, sorted.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Master candidates in election order.
    #[serde(default)]
    pub candidates: Vec<String>,
    #[serde(default)]
    pub master: Option<PoolMaster>,
    /// The highest epoch ever given out in this pool.
    #[serde(default)]
    pub epoch: u64,
    pub created_ms: u64,
    /// An elastic pool: holds `min` nodes for sure and may grow to `max` (borrowing
    /// idle nodes beyond its tenant's guarantee); none: a fixed size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic: Option<Elastic>,
    /// Nodes of this pool being reclaimed for another tenant's guarantee: each moves
    /// to `for_pool` at its deadline (or sooner, when this pool lets it go).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reclaims: Vec<Reclaim>,
}

/// A node under reclaim (issue 21): borrowed by this pool's tenant beyond its
/// guarantee, wanted by another tenant within its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reclaim {
    pub node: String,
    pub for_pool: String,
    pub for_tenant: String,
    pub since_ms: u64,
    pub deadline_ms: u64,
}

/// A framework (issue 21): a component that receives offers of free nodes for its
/// tenant's pool and accepts or declines them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub pool: String,
    /// Nodes labelled `role=<r>` go only to frameworks with role `r`; unlabelled
    /// nodes go to anyone.
    #[serde(default)]
    pub roles: Vec<String>,
    pub registered_ms: u64,
}

/// The bounds of an elastic pool (`"size": {"min": M, "max": X}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Elastic {
    /// Nodes the pool holds for sure (allocated at creation).
    #[schema(maximum = 100000)]
    pub min: usize,
    /// Most nodes it may grow to (at least min).
    #[schema(minimum = 1, maximum = 100000)]
    pub max: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_reader_ignores_new_fields_and_defaults_missing_ones() {
        let json = br#"{"v":2,"id":"g01","master_addr":null,"created_ms":5,"shiny":true}"#;
        let group: GroupRecord = decode("/glory/groups/g01", json).unwrap();
        assert_eq!(group.id, "g01");
        let json = br#"{"state":"up","since_ms":1}"#;
        let status: NodeStatus = decode("k", json).unwrap();
        assert_eq!((status.v, status.history.len()), (RECORD_VERSION, 0));
    }

    /// The stored format, pinned: records written by earlier builds must read the
    /// same, and this build must write them the same, whatever the wire types do.
    #[test]
    fn stored_records_keep_their_format() {
        let node = r#"{"v":1,"id":"n-1","hostname":"h1","machine_id":"m1","group":"g00","serial":"ab","enrolled_ms":7,"inventory":{"hostname":"h1","identity":"uuid:1","machine_id":"m1","cpus":8,"cpu_model":"x","memory_bytes":1024,"disks":[{"name":"sda","mount_point":"/","file_system":"ext4","total_bytes":10,"available_bytes":5}],"nics":[{"name":"eth0","mac":"aa","addresses":["10.0.0.1/24"]}],"kernel":"6.1","os":"debian","product":null,"serial":null,"agent_version":"0.1","simulated":true},"labels":{"rack":"r1"},"identity":"uuid:1","key_sha256":"cd","reached_from":"10.0.0.1"}"#;
        let record: NodeRecord = decode("k", node.as_bytes()).unwrap();
        assert_eq!(record.inventory.nics[0].addresses, ["10.0.0.1/24"]);
        assert_eq!(String::from_utf8(encode(&record)).unwrap(), node);
        let status = r#"{"v":1,"state":"unreachable","since_ms":3,"history":[{"state":"up","at_ms":1,"reason":"a"},{"state":"unreachable","at_ms":3,"reason":"b"}]}"#;
        let record: NodeStatus = decode("k", status.as_bytes()).unwrap();
        assert_eq!(record.state, NodeState::Unreachable);
        assert_eq!(String::from_utf8(encode(&record)).unwrap(), status);
        for state in NodeState::ALL {
            let stored = serde_json::to_value(stored::StoredNodeState::from(state)).unwrap();
            assert_eq!(stored.as_str(), Some(state.as_str()));
        }
    }

    #[test]
    fn status_history_is_bounded_and_ignores_repeats() {
        let mut status = NodeStatus::new(NodeState::Joining, 0, "enrolled");
        assert!(!status.transition(NodeState::Joining, 1, "again"));
        for i in 0..50 {
            let state = if i % 2 == 0 {
                NodeState::Up
            } else {
                NodeState::Down
            };
            assert!(status.transition(state, i, "flap"));
        }
        assert_eq!(status.history.len(), STATE_HISTORY_LEN);
        assert_eq!(status.history.last().unwrap().at_ms, 49);
    }
}
