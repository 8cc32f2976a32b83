//! The stored forms of the wire types that records carry (a node's inventory, its
//! state).
//!
//! Records hold the wire types in memory, where the masters use them, but serialize
//! them through these types: the stored JSON is defined here, not by `protocol`'s
//! serde attributes, so a change to a wire message cannot silently change what is on
//! disk. The conversions destructure every field, so a field added to a wire type
//! fails to compile here until someone decides how it is stored (and, for an old
//! record without it, what it defaults to).

use glory_protocol::{Disk, Inventory, Nic, NodeState};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node's liveness state as stored (in [`super::NodeStatus`] and its history).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredNodeState {
    Joining,
    Up,
    Suspect,
    Down,
    Left,
    Unreachable,
}

impl From<NodeState> for StoredNodeState {
    fn from(state: NodeState) -> Self {
        match state {
            NodeState::Joining => StoredNodeState::Joining,
            NodeState::Up => StoredNodeState::Up,
            NodeState::Suspect => StoredNodeState::Suspect,
            NodeState::Down => StoredNodeState::Down,
            NodeState::Left => StoredNodeState::Left,
            NodeState::Unreachable => StoredNodeState::Unreachable,
        }
    }
}

impl From<StoredNodeState> for NodeState {
    fn from(state: StoredNodeState) -> Self {
        match state {
            StoredNodeState::Joining => NodeState::Joining,
            StoredNodeState::Up => NodeState::Up,
            StoredNodeState::Suspect => NodeState::Suspect,
            StoredNodeState::Down => NodeState::Down,
            StoredNodeState::Left => NodeState::Left,
            StoredNodeState::Unreachable => NodeState::Unreachable,
        }
    }
}

/// `#[serde(with = "stored::node_state")]` for a [`NodeState`] field of a record.
pub mod node_state {
    use super::*;

    pub fn serialize<S: Serializer>(state: &NodeState, s: S) -> Result<S::Ok, S::Error> {
        StoredNodeState::from(*state).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeState, D::Error> {
        StoredNodeState::deserialize(d).map(NodeState::from)
    }
}

/// A node's inventory as stored in its [`super::NodeRecord`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredInventory {
    pub hostname: String,
    #[serde(default)]
    pub identity: String,
    pub machine_id: String,
    pub cpus: u32,
    #[serde(default)]
    pub cpu_model: String,
    pub memory_bytes: u64,
    #[serde(default)]
    pub disks: Vec<StoredDisk>,
    #[serde(default)]
    pub nics: Vec<StoredNic>,
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
    #[serde(default)]
    pub simulated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredDisk {
    pub name: String,
    pub mount_point: String,
    pub file_system: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredNic {
    pub name: String,
    pub mac: String,
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl From<&Inventory> for StoredInventory {
    fn from(inventory: &Inventory) -> Self {
        let Inventory {
            hostname,
            identity,
            machine_id,
            cpus,
            cpu_model,
            memory_bytes,
            disks,
            nics,
            kernel,
            os,
            product,
            serial,
            agent_version,
            simulated,
        } = inventory.clone();
        StoredInventory {
            hostname,
            identity,
            machine_id,
            cpus,
            cpu_model,
            memory_bytes,
            disks: disks.into_iter().map(StoredDisk::from).collect(),
            nics: nics.into_iter().map(StoredNic::from).collect(),
            kernel,
            os,
            product,
            serial,
            agent_version,
            simulated,
        }
    }
}

impl From<StoredInventory> for Inventory {
    fn from(stored: StoredInventory) -> Self {
        let StoredInventory {
            hostname,
            identity,
            machine_id,
            cpus,
            cpu_model,
            memory_bytes,
            disks,
            nics,
            kernel,
            os,
            product,
            serial,
            agent_version,
            simulated,
        } = stored;
        Inventory {
            hostname,
            identity,
            machine_id,
            cpus,
            cpu_model,
            memory_bytes,
            disks: disks.into_iter().map(Disk::from).collect(),
            nics: nics.into_iter().map(Nic::from).collect(),
            kernel,
            os,
            product,
            serial,
            agent_version,
            simulated,
        }
    }
}

impl From<Disk> for StoredDisk {
    fn from(disk: Disk) -> Self {
        let Disk {
            name,
            mount_point,
            file_system,
            total_bytes,
            available_bytes,
        } = disk;
        StoredDisk {
            name,
            mount_point,
            file_system,
            total_bytes,
            available_bytes,
        }
    }
}

impl From<StoredDisk> for Disk {
    fn from(disk: StoredDisk) -> Self {
        let StoredDisk {
            name,
            mount_point,
            file_system,
            total_bytes,
            available_bytes,
        } = disk;
        Disk {
            name,
            mount_point,
            file_system,
            total_bytes,
            available_bytes,
        }
    }
}

impl From<Nic> for StoredNic {
    fn from(nic: Nic) -> Self {
        let Nic {
            name,
            mac,
            addresses,
        } = nic;
        StoredNic {
            name,
            mac,
            addresses,
        }
    }
}

impl From<StoredNic> for Nic {
    fn from(nic: StoredNic) -> Self {
        let StoredNic {
            name,
            mac,
            addresses,
        } = nic;
        Nic {
            name,
            mac,
            addresses,
        }
    }
}

/// `#[serde(with = "stored::inventory")]` for an [`Inventory`] field of a record.
pub mod inventory {
    use super::*;

    pub fn serialize<S: Serializer>(inventory: &Inventory, s: S) -> Result<S::Ok, S::Error> {
        StoredInventory::from(inventory).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Inventory, D::Error> {
        StoredInventory::deserialize(d).map(Inventory::from)
    }
}
