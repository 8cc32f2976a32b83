//! The bytes IPVS speaks: generic netlink requests and the kernel's replies, laid out
//! as the kernel's UAPI headers define them (`linux/netlink.h`, `linux/genetlink.h`,
//! `linux/ip_vs.h`). Pure: no socket, so every message is checked byte for byte in
//! `wire/tests.rs` against layouts written out by hand from those headers.
//!
//! Netlink headers and attribute values are in host byte order; IPVS keeps ports and
//! the IPv4 netmask in network order, as in a packet.
//!
//! Written by hand rather than with `netlink-packet-generic`: that crate covers the
//! generic netlink controller only, so IPVS's attributes would have to be written as
//! its `Nla` implementations anyway, with more code between the header and the bytes.
//! Here a handful of helpers produce the layout and the tests read next to it.

use std::net::{IpAddr, SocketAddr};

use super::{Dest, Service};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 0x2;
pub const NLMSG_DONE: u16 = 0x3;
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
/// `NLM_F_ROOT | NLM_F_MATCH`: every matching object, in as many messages as needed.
pub const NLM_F_DUMP: u16 = 0x300;
/// In an NLMSG_ERROR: the echoed request was cut to its header (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// In an NLMSG_ERROR: extended ack attributes follow (`NETLINK_EXT_ACK`).
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_HDRLEN: usize = 4;
pub const NLA_F_NESTED: u16 = 1 << 15;
const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// linux/genetlink.h
const GENL_HDRLEN: usize = 4;
/// The generic netlink controller's fixed family id (`NLMSG_MIN_TYPE`).
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_NEWFAMILY: u8 = 1;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// The controller does not check the version; libnl's `genl_ctrl_resolve` sends 1.
const CTRL_VERSION: u8 = 1;

// linux/ip_vs.h
pub const IPVS_GENL_NAME: &str = "IPVS";
pub const IPVS_GENL_VERSION: u8 = 0x1;
pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
pub const IPVS_CMD_SET_SERVICE: u8 = 2;
pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
pub const IPVS_CMD_NEW_DEST: u8 = 5;
pub const IPVS_CMD_SET_DEST: u8 = 6;
pub const IPVS_CMD_DEL_DEST: u8 = 7;
pub const IPVS_CMD_GET_DEST: u8 = 8;
pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
pub const IPVS_CMD_ATTR_DEST: u16 = 2;
pub const IPVS_SVC_ATTR_AF: u16 = 1;
pub const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
pub const IPVS_SVC_ATTR_ADDR: u16 = 3;
pub const IPVS_SVC_ATTR_PORT: u16 = 4;
pub const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
pub const IPVS_SVC_ATTR_FLAGS: u16 = 7;
pub const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
pub const IPVS_SVC_ATTR_NETMASK: u16 = 9;
pub const IPVS_DEST_ATTR_ADDR: u16 = 1;
pub const IPVS_DEST_ATTR_PORT: u16 = 2;
pub const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
pub const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
pub const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
pub const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
pub const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
pub const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
pub const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
/// Masquerading (NAT): the only forwarding that works with instances on any node
/// without changing their network configuration.
pub const IP_VS_CONN_F_MASQ: u32 = 0x0000;

// linux/socket.h, linux/in.h
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// A reply that does not have the documented layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn malformed<T>(what: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(what.into()))
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// One request under construction: nlmsghdr, genlmsghdr, then attributes, each
/// padded to 4 bytes. `nlmsg_len` and nested attributes' lengths are filled in
/// when their contents are known.
struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    fn new(kind: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Self {
        let mut buf = Vec::with_capacity(160);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by `finish`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        // nlmsg_pid 0: the message is for the kernel, which knows our port.
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Builder { buf }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = (NLA_HDRLEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
    }

    fn nested(&mut self, kind: u16, fill: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]); // nla_len, set below
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        fill(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

pub fn address_family(addr: SocketAddr) -> u16 {
    match addr {
        SocketAddr::V4(_) => AF_INET,
        SocketAddr::V6(_) => AF_INET6,
    }
}

/// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first 4.
fn inet_addr(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// `CTRL_CMD_GETFAMILY` for "IPVS": the kernel answers with the family's id, which
/// is assigned when the ip_vs module registers and so differs between machines.
pub fn get_family(seq: u32) -> Vec<u8> {
    let mut m = Builder::new(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        CTRL_VERSION,
    );
    let mut name = IPVS_GENL_NAME.as_bytes().to_vec();
    name.push(0);
    m.attr(CTRL_ATTR_FAMILY_NAME, &name);
    m.finish()
}

/// `IPVS_CMD_ATTR_SERVICE`. The identifying fields (family, TCP, address, port) are
/// all that deleting a service or naming it for a destination needs; adding or
/// changing one needs the full entry (the kernel answers EINVAL otherwise).
fn service_attr(m: &mut Builder, service: &Service, full: bool) {
    m.nested(IPVS_CMD_ATTR_SERVICE, |m| {
        m.attr(
            IPVS_SVC_ATTR_AF,
            &address_family(service.listen).to_ne_bytes(),
        );
        m.attr(IPVS_SVC_ATTR_PROTOCOL, &IPPROTO_TCP.to_ne_bytes());
        m.attr(IPVS_SVC_ATTR_ADDR, &inet_addr(service.listen.ip()));
        m.attr(IPVS_SVC_ATTR_PORT, &service.listen.port().to_be_bytes());
        if full {
            let mut sched = service.scheduler().as_bytes().to_vec();
            sched.push(0);
            m.attr(IPVS_SVC_ATTR_SCHED_NAME, &sched);
            // struct ip_vs_flags { flags, mask }: no flag set, every flag ours to
            // decide, so a persistence someone else turned on is turned off.
            let mut flags = [0u8; 8];
            flags[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
            m.attr(IPVS_SVC_ATTR_FLAGS, &flags);
            // No persistence: `source` affinity comes from the `sh` scheduler.
            m.attr(IPVS_SVC_ATTR_TIMEOUT, &0u32.to_ne_bytes());
            // The persistence netmask: a mask in network order for IPv4, a prefix
            // length (1-128, the kernel refuses 0) for IPv6.
            let netmask = match service.listen {
                SocketAddr::V4(_) => u32::MAX.to_be_bytes(),
                SocketAddr::V6(_) => 128u32.to_ne_bytes(),
            };
            m.attr(IPVS_SVC_ATTR_NETMASK, &netmask);
        }
    });
}

/// `IPVS_CMD_ATTR_DEST`: address and port identify a destination; `weight` (for
/// adding or changing one) brings the rest of the full entry: masquerading, no
/// connection thresholds.
fn dest_attr(m: &mut Builder, addr: SocketAddr, weight: Option<u32>) {
    m.nested(IPVS_CMD_ATTR_DEST, |m| {
        m.attr(IPVS_DEST_ATTR_ADDR, &inet_addr(addr.ip()));
        m.attr(IPVS_DEST_ATTR_PORT, &addr.port().to_be_bytes());
        if let Some(weight) = weight {
            m.attr(IPVS_DEST_ATTR_FWD_METHOD, &IP_VS_CONN_F_MASQ.to_ne_bytes());
            m.attr(IPVS_DEST_ATTR_WEIGHT, &weight.to_ne_bytes());
            m.attr(IPVS_DEST_ATTR_U_THRESH, &0u32.to_ne_bytes());
            m.attr(IPVS_DEST_ATTR_L_THRESH, &0u32.to_ne_bytes());
        }
        m.attr(
            IPVS_DEST_ATTR_ADDR_FAMILY,
            &address_family(addr).to_ne_bytes(),
        );
    });
}

fn ipvs_request(family: u16, seq: u32, cmd: u8) -> Builder {
    Builder::new(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        cmd,
        IPVS_GENL_VERSION,
    )
}

fn service_request(family: u16, seq: u32, cmd: u8, service: &Service, full: bool) -> Vec<u8> {
    let mut m = ipvs_request(family, seq, cmd);
    service_attr(&mut m, service, full);
    m.finish()
}

pub fn new_service(family: u16, seq: u32, service: &Service) -> Vec<u8> {
    service_request(family, seq, IPVS_CMD_NEW_SERVICE, service, true)
}

pub fn set_service(family: u16, seq: u32, service: &Service) -> Vec<u8> {
    service_request(family, seq, IPVS_CMD_SET_SERVICE, service, true)
}

pub fn del_service(family: u16, seq: u32, service: &Service) -> Vec<u8> {
    service_request(family, seq, IPVS_CMD_DEL_SERVICE, service, false)
}

fn dest_request(
    family: u16,
    seq: u32,
    cmd: u8,
    service: &Service,
    addr: SocketAddr,
    weight: Option<u32>,
) -> Vec<u8> {
    let mut m = ipvs_request(family, seq, cmd);
    service_attr(&mut m, service, false);
    dest_attr(&mut m, addr, weight);
    m.finish()
}

pub fn new_dest(
    family: u16,
    seq: u32,
    service: &Service,
    addr: SocketAddr,
    weight: u32,
) -> Vec<u8> {
    dest_request(family, seq, IPVS_CMD_NEW_DEST, service, addr, Some(weight))
}

pub fn set_dest(
    family: u16,
    seq: u32,
    service: &Service,
    addr: SocketAddr,
    weight: u32,
) -> Vec<u8> {
    dest_request(family, seq, IPVS_CMD_SET_DEST, service, addr, Some(weight))
}

pub fn del_dest(family: u16, seq: u32, service: &Service, addr: SocketAddr) -> Vec<u8> {
    dest_request(family, seq, IPVS_CMD_DEL_DEST, service, addr, None)
}

/// `IPVS_CMD_GET_DEST` as a dump: one `IPVS_CMD_NEW_DEST` message per destination,
/// then NLMSG_DONE. A service that does not exist dumps nothing (no error).
pub fn get_dests(family: u16, seq: u32, service: &Service) -> Vec<u8> {
    let mut m = Builder::new(
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        IPVS_CMD_GET_DEST,
        IPVS_GENL_VERSION,
    );
    service_attr(&mut m, service, false);
    m.finish()
}

/// One netlink message out of a received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// What follows the nlmsghdr.
    pub payload: &'a [u8],
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16, Malformed> {
    match buf.get(at..at + 2) {
        Some(b) => Ok(u16::from_ne_bytes([b[0], b[1]])),
        None => malformed(format!("{} bytes, a u16 expected at {at}", buf.len())),
    }
}

fn u32_at(buf: &[u8], at: usize) -> Result<u32, Malformed> {
    match buf.get(at..at + 4) {
        Some(b) => Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        None => malformed(format!("{} bytes, a u32 expected at {at}", buf.len())),
    }
}

/// The netlink messages in a datagram (a dump packs several into one).
pub fn split(datagram: &[u8]) -> Result<Vec<Received<'_>>, Malformed> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = u32_at(rest, 0)? as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return malformed(format!(
                "nlmsg_len {len} with {} bytes left in the datagram",
                rest.len()
            ));
        }
        out.push(Received {
            kind: u16_at(rest, 4)?,
            flags: u16_at(rest, 6)?,
            seq: u32_at(rest, 8)?,
            payload: &rest[NLMSG_HDRLEN..len],
        });
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(out)
}

/// Attributes as (type without the NESTED/BYTEORDER flags, payload).
fn attributes(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, Malformed> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let len = u16_at(buf, 0)? as usize;
        if len < NLA_HDRLEN || len > buf.len() {
            return malformed(format!(
                "attribute length {len} with {} bytes left",
                buf.len()
            ));
        }
        out.push((u16_at(buf, 2)? & NLA_TYPE_MASK, &buf[NLA_HDRLEN..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(out)
}

/// The attributes after a genlmsghdr whose command must be `cmd`.
fn genl_attributes(payload: &[u8], cmd: u8) -> Result<Vec<(u16, &[u8])>, Malformed> {
    match payload.first() {
        Some(&c) if c == cmd && payload.len() >= GENL_HDRLEN => attributes(&payload[GENL_HDRLEN..]),
        Some(&c) => malformed(format!("generic netlink command {c}, {cmd} expected")),
        None => malformed("no generic netlink header"),
    }
}

/// What an NLMSG_ERROR says. `errno` 0 acknowledges a request sent with NLM_F_ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// Positive (the kernel sends it negated).
    pub errno: i32,
    /// The kernel's extended ack text, when it gave one (`NETLINK_EXT_ACK`).
    pub message: Option<String>,
}

/// An NLMSG_ERROR's payload: `struct nlmsgerr { int error; struct nlmsghdr msg; }`,
/// then the rest of the request unless capped, then extended ack attributes when
/// the flags say so.
pub fn parse_error(flags: u16, payload: &[u8]) -> Result<ErrorReply, Malformed> {
    let error = u32_at(payload, 0)? as i32;
    let echoed_len = u32_at(payload, 4)? as usize;
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let tlvs_at = if flags & NLM_F_CAPPED != 0 {
            4 + NLMSG_HDRLEN
        } else {
            4 + align(echoed_len)
        };
        let tlvs = payload.get(tlvs_at..).unwrap_or_default();
        for (kind, value) in attributes(tlvs)? {
            if kind == NLMSGERR_ATTR_MSG {
                let text = value.split(|&b| b == 0).next().unwrap_or_default();
                message = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Ok(ErrorReply {
        errno: error.wrapping_neg(),
        message,
    })
}

/// The error a dump ended with: NLMSG_DONE carries an `int`, 0 or a negated errno
/// (extended ack attributes may follow it). 0 when it is missing.
pub fn done_errno(payload: &[u8]) -> i32 {
    u32_at(payload, 0).map_or(0, |e| (e as i32).wrapping_neg())
}

/// The family id in the controller's `CTRL_CMD_NEWFAMILY` answer.
pub fn parse_family_id(payload: &[u8]) -> Result<u16, Malformed> {
    for (kind, value) in genl_attributes(payload, CTRL_CMD_NEWFAMILY)? {
        if kind == CTRL_ATTR_FAMILY_ID {
            return u16_at(value, 0);
        }
    }
    malformed("CTRL_CMD_NEWFAMILY without CTRL_ATTR_FAMILY_ID")
}

/// One destination of a GET_DEST dump (`IPVS_CMD_NEW_DEST`). `service_family` is
/// the address family to assume when the kernel (before 3.18) sends no
/// `IPVS_DEST_ATTR_ADDR_FAMILY`.
pub fn parse_dest(payload: &[u8], service_family: u16) -> Result<Dest, Malformed> {
    let attrs = genl_attributes(payload, IPVS_CMD_NEW_DEST)?;
    let Some(&(_, nested)) = attrs.iter().find(|(k, _)| *k == IPVS_CMD_ATTR_DEST) else {
        return malformed("IPVS_CMD_NEW_DEST without IPVS_CMD_ATTR_DEST");
    };
    let (mut addr, mut port, mut family) = (None, None, service_family);
    let (mut weight, mut active, mut inactive) = (None, 0, 0);
    for (kind, value) in attributes(nested)? {
        match kind {
            IPVS_DEST_ATTR_ADDR => addr = Some(value),
            IPVS_DEST_ATTR_PORT => port = Some(u16::from_be(u16_at(value, 0)?)),
            IPVS_DEST_ATTR_WEIGHT => weight = Some(u32_at(value, 0)?),
            IPVS_DEST_ATTR_ACTIVE_CONNS => active = u32_at(value, 0)?,
            IPVS_DEST_ATTR_INACT_CONNS => inactive = u32_at(value, 0)?,
            IPVS_DEST_ATTR_ADDR_FAMILY => family = u16_at(value, 0)?,
            _ => {}
        }
    }
    let (Some(addr), Some(port), Some(weight)) = (addr, port, weight) else {
        return malformed("a destination without address, port or weight");
    };
    let ip = match (family, addr.len()) {
        (AF_INET, 4..) => IpAddr::from([addr[0], addr[1], addr[2], addr[3]]),
        (AF_INET6, 16..) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addr[..16]);
            IpAddr::from(octets)
        }
        _ => {
            return malformed(format!(
                "address family {family} with a {}-byte address",
                addr.len()
            ))
        }
    };
    Ok(Dest {
        addr: SocketAddr::new(ip, port),
        weight,
        active_conns: active,
        inactive_conns: inactive,
    })
}

// The expected bytes are written out for a little-endian host (netlink is host
// byte order); glory runs on x86-64 and arm64.
#[cfg(all(test, target_endian = "little"))]
mod tests;
