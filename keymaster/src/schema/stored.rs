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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<u32>,
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

/// Both conversions between a wire struct and its stored mirror. The patterns name
/// every field with no `..`, so a field added on either side fails to compile until
/// it is listed here. Fields in the second list are vectors of mirrored items.
macro_rules! mirror {
    ($wire:ident <-> $stored:ident { $($field:ident),* } vec { $($items:ident),* }) => {
        impl From<$wire> for $stored {
            fn from(value: $wire) -> Self {
                let $wire { $($field,)* $($items,)* } = value;
                $stored {
                    $($field,)*
                    $($items: $items.into_iter().map(Into::into).collect(),)*
                }
            }
        }

        impl From<$stored> for $wire {
            fn from(value: $stored) -> Self {
                let $stored { $($field,)* $($items,)* } = value;
                $wire {
                    $($field,)*
                    $($items: $items.into_iter().map(Into::into).collect(),)*
                }
            }
        }
    };
}

mirror!(Inventory <-> StoredInventory {
    hostname, identity, machine_id, cpus, cpu_model, memory_bytes, kernel, os, product,
    serial, agent_version, simulated, image, image_version
} vec { disks, nics });
mirror!(Disk <-> StoredDisk {
    name, mount_point, file_system, total_bytes, available_bytes
} vec {});
mirror!(Nic <-> StoredNic { name, mac, addresses } vec {});

/// `#[serde(with = "stored::inventory")]` for an [`Inventory`] field of a record.
pub mod inventory {
    use super::*;

    pub fn serialize<S: Serializer>(inventory: &Inventory, s: S) -> Result<S::Ok, S::Error> {
        StoredInventory::from(inventory.clone()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Inventory, D::Error> {
        StoredInventory::deserialize(d).map(Inventory::from)
    }
}
