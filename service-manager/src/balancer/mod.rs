//! L4 load balancers in front of a service's healthy instances. Each driver makes the
//! balancer's backends equal a wanted set; removals drain first.
//!
//! - [`haproxy`]: a running HAProxy changed through its runtime API (no reload).
//! - [`keepalived`]: keepalived's LVS configuration, validated by `keepalived -t`,
//!   then a reload.
//!
//! To come (issue 18): nftables and IPVS (generic netlink).

pub mod haproxy;
pub mod keepalived;

use std::net::SocketAddr;

/// One backend the balancer should send to: an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The instance id (a server name in HAProxy: letters, digits, `_.:-`).
    pub name: String,
    pub addr: SocketAddr,
    /// 1-256.
    pub weight: u32,
}
