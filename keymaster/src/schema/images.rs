//! Provisioning part 2 records: OS images, profiles (which image, deploy mode and
//! first-boot configuration a node gets) and software packages. The bytes themselves
//! (kernels, root filesystems, packages) are content-addressed files on the cluster
//! masters (`<data-dir>/content/sha256/<hex>`); these records only name them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::v1;

pub const IMAGES_PREFIX: &str = "/glory/images/";
pub const PROFILES_PREFIX: &str = "/glory/profiles/";
pub const SOFTWARE_PREFIX: &str = "/glory/software/";

/// `/glory/images/{name}/{version}`, the version zero-padded so keys sort by it.
pub fn image_key(name: &str, version: u32) -> String {
    format!("{IMAGES_PREFIX}{name}/{version:08}")
}

pub fn image_prefix(name: &str) -> String {
    format!("{IMAGES_PREFIX}{name}/")
}

pub fn profile_key(name: &str) -> String {
    format!("{PROFILES_PREFIX}{name}")
}

pub fn software_key(name: &str) -> String {
    format!("{SOFTWARE_PREFIX}{name}")
}

/// A content-addressed file: its SHA-256 (lower-case hex) and size in bytes.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// SHA-256 of the content, 64 lower-case hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    pub size: u64,
}

/// One version of an image; immutable once written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub name: String,
    pub version: u32,
    pub kernel: BlobRef,
    pub initrd: BlobRef,
    /// The root filesystem (a squashfs for `glory image build`).
    pub rootfs: BlobRef,
    #[serde(default)]
    pub description: String,
    /// The Debian suite it was built from, when built by us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    pub created_ms: u64,
}

impl ImageRecord {
    pub fn blobs(&self) -> [&BlobRef; 3] {
        [&self.kernel, &self.initrd, &self.rootfs]
    }
}

/// How an image is deployed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployMode {
    /// The root filesystem in RAM: the squashfs with a tmpfs overlay.
    #[default]
    Diskless,
    /// Written to the node's disk, verified, then booted from disk.
    Disk,
}

/// Which nodes a profile (or a software installation) is for. Every given field must
/// hold; an empty selector matches every node. The most specific match wins: a node
/// list beats a group list, which beats labels (more labels beat fewer), which beat
/// nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeMatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Nodes of these pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
}

/// A network interface as first-boot configuration sets it up (systemd-networkd
/// files). Every string is a template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Interface name (`eth0`, `bond0`, `bond0.20`).
    pub name: String,
    /// DHCP (the default when no address is given).
    #[serde(default)]
    pub dhcp: bool,
    /// A static address with its prefix, e.g. `10.1.{{ node.labels.rack }}.5/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// A bond of these interfaces (`mode`: `802.3ad`, `active-backup`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bond_members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_mode: Option<String>,
    /// A VLAN on `vlan_parent` with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_parent: Option<String>,
}

/// A file first-boot configuration writes. `path` and `content` are templates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileTemplate {
    /// An absolute path; a template.
    pub path: String,
    /// Octal permission bits as text, e.g. `"0644"`.
    #[serde(default = "file_mode")]
    pub mode: String,
    /// A minijinja template.
    pub content: String,
}

fn file_mode() -> String {
    "0644".to_string()
}

/// What the agent does with a file that no longer has its rendered content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftPolicy {
    /// Report it and write the rendered content back.
    #[default]
    Repair,
    /// Report it only.
    Report,
}

/// First-boot configuration: rendered per node (minijinja, with the node's facts and
/// labels), served to the node, applied by its agent. Templates see `node.id`,
/// `node.hostname`, `node.group`, `node.labels`, `node.pools`, `node.mac`, `node.ip`,
/// `node.cpus`, `node.memory_mb`, `profile` and `image`; an undefined variable is an
/// error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirstBootConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// The agent's own configuration file (`/etc/glory/agent.toml`), a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileTemplate>,
    #[serde(default)]
    pub drift: DriftPolicy,
}

impl FirstBootConfig {
    pub fn is_empty(&self) -> bool {
        self == &FirstBootConfig {
            drift: self.drift,
            ..FirstBootConfig::default()
        }
    }
}

/// Which image, deploy mode and configuration the nodes it matches get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A pinned version; none: the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<u32>,
    #[serde(default)]
    pub mode: DeployMode,
    #[serde(default, rename = "match")]
    pub matches: NodeMatch,
    #[serde(default)]
    pub config: FirstBootConfig,
    pub updated_ms: u64,
}

/// One version of a package: a tar.zst in the content store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageVersion {
    pub version: String,
    pub blob: BlobRef,
    pub created_ms: u64,
}

/// Where a version of a package is to be installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Installation {
    pub version: String,
    /// Nodes of these services' instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(default, rename = "match")]
    pub matches: NodeMatch,
}

/// A software package: its versions and where they are installed
/// (`/glory/software/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub name: String,
    pub versions: Vec<PackageVersion>,
    #[serde(default)]
    pub installations: Vec<Installation>,
    pub updated_ms: u64,
}
