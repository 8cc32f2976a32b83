//! What a node is set up with beyond its processes: first-boot configuration (files
//! rendered for it by the cluster master) and software packages (content-addressed
//! tar.zst files it downloads through its group master). Sent through the group
//! master ([`crate::GroupToAgent::Config`], [`crate::GroupToAgent::Software`]); the
//! agent answers with a [`SetupReport`] when a session opens and after every change.

use serde::{Deserialize, Serialize};

/// A node's rendered first-boot configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// The profile it comes from.
    pub profile: String,
    /// SHA-256 over the files (paths, modes, contents) and the hostname: what the
    /// agent reports back once applied.
    pub hash: String,
    /// Set as the running system's hostname too (besides `/etc/hostname`).
    pub hostname: Option<String>,
    pub files: Vec<ConfigFile>,
    /// Write back a file whose content drifted (otherwise only report it).
    pub repair: bool,
}

/// One file of a node's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Absolute path, no `..`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    pub content: String,
}

/// A package version the node must have installed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackageSpec {
    pub name: String,
    pub version: String,
    /// SHA-256 of the tar.zst file.
    pub sha256: String,
    pub size: u64,
    /// Where the agent downloads it: the cluster master's content URL
    /// (`http://host:port/content/<sha256>`), replaced by its group master's caching
    /// proxy when it passes through one.
    pub url: String,
    /// Its `.torrent` (`http://host:port/torrent/<sha256>`), for a package large enough
    /// to spread peer-to-peer; agents fall back to `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torrent: Option<String>,
}

/// A package the agent has installed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// A package that could not be installed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFailure {
    pub name: String,
    pub version: String,
    pub error: String,
}

/// What the agent has applied and installed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupReport {
    /// The hash of the configuration applied last (None: none yet).
    pub config_hash: Option<String>,
    /// Why the last configuration could not be applied.
    pub config_error: Option<String>,
    /// Files whose content is not what was applied (found by the periodic check).
    pub drift: Vec<String>,
    pub installed: Vec<InstalledPackage>,
    pub failed: Vec<PackageFailure>,
}

impl NodeConfig {
    /// The hash of a configuration's files and hostname.
    pub fn hash_of(hostname: Option<&str>, files: &[ConfigFile]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(hostname.unwrap_or("").as_bytes());
        h.update([0]);
        for f in files {
            h.update(f.path.as_bytes());
            h.update([0]);
            h.update(f.mode.to_be_bytes());
            h.update((f.content.len() as u64).to_be_bytes());
            h.update(f.content.as_bytes());
        }
        hex::encode(h.finalize())
    }
}
