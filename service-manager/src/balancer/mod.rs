//! L4 load balancers in front of a service's healthy instances. Each driver makes the
//! balancer's backends equal a wanted set; removals drain first.
//!
//! - [`haproxy`]: a running HAProxy changed through its runtime API (no reload).
//! - [`keepalived`]: keepalived's LVS configuration, validated by `keepalived -t`,
//!   then a reload.
//! - [`nftables`]: a kernel L4 balancer of nftables DNAT rules (`numgen`/`jhash` maps),
//!   the whole table replaced in one `nft -j` transaction.
//! - [`ipvs`]: the kernel's IPVS programmed over generic netlink, as `ipvsadm` does;
//!   removed destinations drain at weight 0 until idle.

pub mod haproxy;
pub mod ipvs;
pub mod keepalived;
pub mod nftables;

use std::net::SocketAddr;

/// What a draining driver's `sync` did (haproxy, ipvs).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub removed: usize,
    pub reweighted: usize,
    /// Removed backends that still had connections at the drain timeout.
    pub cut: usize,
}

/// One backend the balancer should send to: an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The instance id (a server name in HAProxy: letters, digits, `_.:-`).
    pub name: String,
    pub addr: SocketAddr,
    /// 1-256.
    pub weight: u32,
}
