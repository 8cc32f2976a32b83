//! A bare IPv6 router advertisement on the boot network: iPXE sends router
//! solicitations and waits 13-16 s for an answer before it goes on without IPv6
//! (FACTS: "QEMU and PXE"). We answer each solicitation at once with a router
//! lifetime of 0 (not a default router, no prefixes): the client learns there is
//! nothing to configure and boots on.

use std::net::{Ipv6Addr, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// The advertisement: type, code, checksum (the kernel fills it in for ICMPv6 raw
/// sockets), hop limit 64, no flags, router lifetime 0, reachable and retransmit 0.
pub fn advertisement() -> [u8; 16] {
    [
        ROUTER_ADVERTISEMENT,
        0,
        0,
        0,
        64,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

fn ifindex(interface: &str) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other("bad ifindex"))
}

/// Answer router solicitations on `interface` until `shutdown`, on a thread of its
/// own. Needs root (a raw socket); without it, logs why and returns (boots are slower,
/// not broken).
pub fn spawn(interface: String, shutdown: CancellationToken) {
    let socket = match open(&interface) {
        Ok(s) => s,
        Err(e) => {
            warn!(%interface, error = %e, "no router advertisements on the boot network (iPXE waits ~15 s for one)");
            return;
        }
    };
    let index = ifindex(&interface).unwrap_or(0);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 1500];
        while !shutdown.is_cancelled() {
            let n = match (&socket).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    warn!(%interface, error = %e, "router solicitations no longer read");
                    return;
                }
            };
            // A raw ICMPv6 socket gives the ICMPv6 message, without the IPv6 header.
            if n == 0 || buf[0] != ROUTER_SOLICITATION {
                continue;
            }
            let dest = SocketAddrV6::new(ALL_NODES, 0, 0, index);
            if let Err(e) = socket.send_to(&advertisement(), &dest.into()) {
                debug!(%interface, error = %e, "router advertisement not sent");
            }
        }
    });
}

fn open(interface: &str) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    let index = ifindex(interface)?;
    socket.join_multicast_v6(&ALL_ROUTERS, index)?;
    socket.set_multicast_if_v6(index)?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_loop_v6(false)?;
    socket.set_read_timeout(Some(std::time::Duration::from_millis(500)))?;
    Ok(socket)
}
