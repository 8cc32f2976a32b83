//! Every request byte for byte against its layout, written out by hand from
//! `linux/netlink.h` (struct nlmsghdr, struct nlattr, NLA_ALIGN), `linux/genetlink.h`
//! (struct genlmsghdr) and `linux/ip_vs.h` (commands, attributes, struct
//! ip_vs_flags), and the parsers against replies laid out as the kernel's
//! `net/netfilter/ipvs/ip_vs_ctl.c` and `net/netlink/af_netlink.c` write them.
//!
//! Netlink is host byte order: these arrays are a little-endian host's (x86-64,
//! arm64), hence `cfg(target_endian = "little")` on this module. Ports and the IPv4
//! netmask are network order on every host.

use super::*;
use crate::spec::Algorithm;

/// The id the controller gave "IPVS" in these examples (it varies by machine).
const FAMILY: u16 = 0x24;

fn service_v4() -> Service {
    Service {
        listen: "10.0.0.1:8080".parse().unwrap(),
        algorithm: Algorithm::Roundrobin,
    }
}

fn service_v6() -> Service {
    Service {
        listen: "[2001:db8::1]:443".parse().unwrap(),
        algorithm: Algorithm::Leastconn,
    }
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Equal bytes, or a failure that names the first offset that differs.
fn assert_bytes(actual: &[u8], expected: &[u8]) {
    let first_difference = actual.iter().zip(expected).position(|(a, e)| a != e);
    assert!(
        actual == expected,
        "first difference at byte {:?} (lengths {} and {} expected)\n actual:   {actual:02x?}\n expected: {expected:02x?}",
        first_difference,
        actual.len(),
        expected.len()
    );
}

/// IPVS_CMD_ATTR_SERVICE with the identifying fields of 10.0.0.1:8080/TCP.
#[rustfmt::skip]
const SERVICE_V4_KEY: [u8; 48] = [
    48, 0, 0x01, 0x80,          // nla len=48 type=IPVS_CMD_ATTR_SERVICE (1) | NLA_F_NESTED (0x8000)
    6, 0, 1, 0, 2, 0, 0, 0,     // nla len=6 type=IPVS_SVC_ATTR_AF value AF_INET (2), 2 bytes padding
    6, 0, 2, 0, 6, 0, 0, 0,     // nla len=6 type=IPVS_SVC_ATTR_PROTOCOL value IPPROTO_TCP (6), padding
    20, 0, 3, 0,                // nla len=20 type=IPVS_SVC_ATTR_ADDR, union nf_inet_addr (16 bytes):
    10, 0, 0, 1, 0, 0, 0, 0,    //   10.0.0.1 in the first 4 bytes,
    0, 0, 0, 0, 0, 0, 0, 0,     //   zeros after
    6, 0, 4, 0, 0x1f, 0x90, 0, 0, // nla len=6 type=IPVS_SVC_ATTR_PORT value 0x1f90 (8080, network order)
];

/// The same service as a full entry (adding or changing it): scheduler `wrr`.
#[rustfmt::skip]
const SERVICE_V4_FULL: [u8; 84] = [
    84, 0, 0x01, 0x80,          // nla len=84 type=IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED
    6, 0, 1, 0, 2, 0, 0, 0,     // IPVS_SVC_ATTR_AF AF_INET
    6, 0, 2, 0, 6, 0, 0, 0,     // IPVS_SVC_ATTR_PROTOCOL IPPROTO_TCP
    20, 0, 3, 0, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // IPVS_SVC_ATTR_ADDR 10.0.0.1
    6, 0, 4, 0, 0x1f, 0x90, 0, 0, // IPVS_SVC_ATTR_PORT 8080
    8, 0, 6, 0, b'w', b'r', b'r', 0, // nla len=8 type=IPVS_SVC_ATTR_SCHED_NAME "wrr\0" (NLA_NUL_STRING)
    12, 0, 7, 0,                // nla len=12 type=IPVS_SVC_ATTR_FLAGS, struct ip_vs_flags:
    0, 0, 0, 0,                 //   flags = 0
    0xff, 0xff, 0xff, 0xff,     //   mask = ~0
    8, 0, 8, 0, 0, 0, 0, 0,     // nla len=8 type=IPVS_SVC_ATTR_TIMEOUT value 0 (no persistence)
    8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff, // nla len=8 type=IPVS_SVC_ATTR_NETMASK 255.255.255.255
];

/// IPVS_CMD_ATTR_SERVICE with the identifying fields of [2001:db8::1]:443/TCP.
#[rustfmt::skip]
const SERVICE_V6_KEY: [u8; 48] = [
    48, 0, 0x01, 0x80,          // nla len=48 type=IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED
    6, 0, 1, 0, 10, 0, 0, 0,    // IPVS_SVC_ATTR_AF value AF_INET6 (10), padding
    6, 0, 2, 0, 6, 0, 0, 0,     // IPVS_SVC_ATTR_PROTOCOL IPPROTO_TCP
    20, 0, 3, 0,                // IPVS_SVC_ATTR_ADDR, all 16 bytes:
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, // 2001:db8:0:0:
    0, 0, 0, 0, 0, 0, 0, 1,     //   0:0:0:1
    6, 0, 4, 0, 0x01, 0xbb, 0, 0, // IPVS_SVC_ATTR_PORT 0x01bb (443, network order)
];

/// The IPv6 service as a full entry: scheduler `wlc`, netmask as a prefix length.
#[rustfmt::skip]
const SERVICE_V6_FULL: [u8; 84] = [
    84, 0, 0x01, 0x80,          // nla len=84 type=IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED
    6, 0, 1, 0, 10, 0, 0, 0,    // IPVS_SVC_ATTR_AF AF_INET6
    6, 0, 2, 0, 6, 0, 0, 0,     // IPVS_SVC_ATTR_PROTOCOL IPPROTO_TCP
    20, 0, 3, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // ADDR 2001:db8::1
    6, 0, 4, 0, 0x01, 0xbb, 0, 0, // IPVS_SVC_ATTR_PORT 443
    8, 0, 6, 0, b'w', b'l', b'c', 0, // IPVS_SVC_ATTR_SCHED_NAME "wlc\0"
    12, 0, 7, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // IPVS_SVC_ATTR_FLAGS flags=0 mask=~0
    8, 0, 8, 0, 0, 0, 0, 0,     // IPVS_SVC_ATTR_TIMEOUT 0
    8, 0, 9, 0, 128, 0, 0, 0,   // IPVS_SVC_ATTR_NETMASK: prefix length 128 (host order u32)
];

/// IPVS_CMD_ATTR_DEST for 10.0.1.5:9001, weight 3, as a full entry.
#[rustfmt::skip]
const DEST_V4_FULL: [u8; 72] = [
    72, 0, 0x02, 0x80,          // nla len=72 type=IPVS_CMD_ATTR_DEST (2) | NLA_F_NESTED
    20, 0, 1, 0,                // nla len=20 type=IPVS_DEST_ATTR_ADDR:
    10, 0, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 10.0.1.5, zeros after
    6, 0, 2, 0, 0x23, 0x29, 0, 0, // nla len=6 type=IPVS_DEST_ATTR_PORT value 0x2329 (9001, network order)
    8, 0, 3, 0, 0, 0, 0, 0,     // nla len=8 type=IPVS_DEST_ATTR_FWD_METHOD IP_VS_CONN_F_MASQ (0)
    8, 0, 4, 0, 3, 0, 0, 0,     // nla len=8 type=IPVS_DEST_ATTR_WEIGHT 3
    8, 0, 5, 0, 0, 0, 0, 0,     // nla len=8 type=IPVS_DEST_ATTR_U_THRESH 0 (none)
    8, 0, 6, 0, 0, 0, 0, 0,     // nla len=8 type=IPVS_DEST_ATTR_L_THRESH 0
    6, 0, 11, 0, 2, 0, 0, 0,    // nla len=6 type=IPVS_DEST_ATTR_ADDR_FAMILY AF_INET, padding
];

/// IPVS_CMD_ATTR_DEST identifying 10.0.1.5:9001 (for deleting it).
#[rustfmt::skip]
const DEST_V4_KEY: [u8; 40] = [
    40, 0, 0x02, 0x80,          // nla len=40 type=IPVS_CMD_ATTR_DEST | NLA_F_NESTED
    20, 0, 1, 0, 10, 0, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // IPVS_DEST_ATTR_ADDR 10.0.1.5
    6, 0, 2, 0, 0x23, 0x29, 0, 0, // IPVS_DEST_ATTR_PORT 9001
    6, 0, 11, 0, 2, 0, 0, 0,    // IPVS_DEST_ATTR_ADDR_FAMILY AF_INET
];

/// IPVS_CMD_ATTR_DEST for [2001:db8::2:5]:8443, weight 256, as a full entry.
#[rustfmt::skip]
const DEST_V6_FULL: [u8; 72] = [
    72, 0, 0x02, 0x80,          // nla len=72 type=IPVS_CMD_ATTR_DEST | NLA_F_NESTED
    20, 0, 1, 0,                // IPVS_DEST_ATTR_ADDR:
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, // 2001:db8:0:0:
    0, 0, 0, 0, 0, 0x02, 0, 0x05, //   0:0:2:5
    6, 0, 2, 0, 0x20, 0xfb, 0, 0, // IPVS_DEST_ATTR_PORT 0x20fb (8443, network order)
    8, 0, 3, 0, 0, 0, 0, 0,     // IPVS_DEST_ATTR_FWD_METHOD masquerading
    8, 0, 4, 0, 0, 1, 0, 0,     // IPVS_DEST_ATTR_WEIGHT 256 (0x100, host order)
    8, 0, 5, 0, 0, 0, 0, 0,     // IPVS_DEST_ATTR_U_THRESH 0
    8, 0, 6, 0, 0, 0, 0, 0,     // IPVS_DEST_ATTR_L_THRESH 0
    6, 0, 11, 0, 10, 0, 0, 0,   // IPVS_DEST_ATTR_ADDR_FAMILY AF_INET6
];

/// IPVS_CMD_ATTR_DEST identifying [2001:db8::2:5]:8443.
#[rustfmt::skip]
const DEST_V6_KEY: [u8; 40] = [
    40, 0, 0x02, 0x80,          // nla len=40 type=IPVS_CMD_ATTR_DEST | NLA_F_NESTED
    20, 0, 1, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0x05, // ADDR
    6, 0, 2, 0, 0x20, 0xfb, 0, 0, // IPVS_DEST_ATTR_PORT 8443
    6, 0, 11, 0, 10, 0, 0, 0,   // IPVS_DEST_ATTR_ADDR_FAMILY AF_INET6
];

fn dest_v4() -> SocketAddr {
    "10.0.1.5:9001".parse().unwrap()
}

fn dest_v6() -> SocketAddr {
    "[2001:db8::2:5]:8443".parse().unwrap()
}

#[test]
#[rustfmt::skip]
fn the_family_lookup_asks_the_controller_for_ipvs() {
    assert_bytes(&get_family(1), &[
        32, 0, 0, 0,       // nlmsghdr len = 32
        0x10, 0,           // type = GENL_ID_CTRL
        0x05, 0,           // flags = NLM_F_REQUEST | NLM_F_ACK
        1, 0, 0, 0,        // seq = 1
        0, 0, 0, 0,        // pid = 0 (the kernel)
        3, 1, 0, 0,        // genlmsghdr cmd=CTRL_CMD_GETFAMILY version=1 reserved=0
        9, 0, 2, 0,        // nla len=9 type=CTRL_ATTR_FAMILY_NAME
        b'I', b'P', b'V', b'S', 0, // "IPVS\0"
        0, 0, 0,           // padding to 4 bytes
    ]);
}

#[test]
#[rustfmt::skip]
fn new_service_carries_the_full_entry() {
    let header: [u8; 20] = [
        104, 0, 0, 0,      // nlmsghdr len = 20 + 84
        0x24, 0,           // type = the IPVS family id
        0x05, 0,           // flags = NLM_F_REQUEST | NLM_F_ACK
        7, 0, 0, 0,        // seq = 7
        0, 0, 0, 0,        // pid = 0
        1, 1, 0, 0,        // genlmsghdr cmd=IPVS_CMD_NEW_SERVICE version=IPVS_GENL_VERSION (1)
    ];
    assert_bytes(&new_service(FAMILY, 7, &service_v4()), &concat(&[&header, &SERVICE_V4_FULL]));
    let header: [u8; 20] = [104, 0, 0, 0, 0x24, 0, 0x05, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0];
    assert_bytes(&new_service(FAMILY, 8, &service_v6()), &concat(&[&header, &SERVICE_V6_FULL]));
}

#[test]
#[rustfmt::skip]
fn set_service_carries_the_full_entry() {
    let header: [u8; 20] = [
        104, 0, 0, 0, 0x24, 0, 0x05, 0, 9, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr, seq 9
        2, 1, 0, 0,        // genlmsghdr cmd=IPVS_CMD_SET_SERVICE version=1
    ];
    assert_bytes(&set_service(FAMILY, 9, &service_v4()), &concat(&[&header, &SERVICE_V4_FULL]));
    let header: [u8; 20] = [104, 0, 0, 0, 0x24, 0, 0x05, 0, 10, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0];
    assert_bytes(&set_service(FAMILY, 10, &service_v6()), &concat(&[&header, &SERVICE_V6_FULL]));
}

#[test]
#[rustfmt::skip]
fn del_service_names_the_service_only() {
    let header: [u8; 20] = [
        68, 0, 0, 0,       // nlmsghdr len = 20 + 48
        0x24, 0, 0x05, 0, 11, 0, 0, 0, 0, 0, 0, 0, // type, REQUEST|ACK, seq 11, pid 0
        3, 1, 0, 0,        // genlmsghdr cmd=IPVS_CMD_DEL_SERVICE version=1
    ];
    assert_bytes(&del_service(FAMILY, 11, &service_v4()), &concat(&[&header, &SERVICE_V4_KEY]));
    let header: [u8; 20] = [68, 0, 0, 0, 0x24, 0, 0x05, 0, 12, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0];
    assert_bytes(&del_service(FAMILY, 12, &service_v6()), &concat(&[&header, &SERVICE_V6_KEY]));
}

#[test]
#[rustfmt::skip]
fn new_dest_names_the_service_and_carries_the_full_destination() {
    let header: [u8; 20] = [
        140, 0, 0, 0,      // nlmsghdr len = 20 + 48 + 72
        0x24, 0, 0x05, 0, 13, 0, 0, 0, 0, 0, 0, 0, // type, REQUEST|ACK, seq 13, pid 0
        5, 1, 0, 0,        // genlmsghdr cmd=IPVS_CMD_NEW_DEST version=1
    ];
    assert_bytes(
        &new_dest(FAMILY, 13, &service_v4(), dest_v4(), 3),
        &concat(&[&header, &SERVICE_V4_KEY, &DEST_V4_FULL]),
    );
    let header: [u8; 20] = [140, 0, 0, 0, 0x24, 0, 0x05, 0, 14, 0, 0, 0, 0, 0, 0, 0, 5, 1, 0, 0];
    assert_bytes(
        &new_dest(FAMILY, 14, &service_v6(), dest_v6(), 256),
        &concat(&[&header, &SERVICE_V6_KEY, &DEST_V6_FULL]),
    );
}

#[test]
#[rustfmt::skip]
fn set_dest_changes_the_weight_and_zero_drains() {
    let header: [u8; 20] = [
        140, 0, 0, 0, 0x24, 0, 0x05, 0, 15, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr, seq 15
        6, 1, 0, 0,        // genlmsghdr cmd=IPVS_CMD_SET_DEST version=1
    ];
    assert_bytes(
        &set_dest(FAMILY, 15, &service_v4(), dest_v4(), 3),
        &concat(&[&header, &SERVICE_V4_KEY, &DEST_V4_FULL]),
    );
    // Draining: the same entry with weight 0.
    let mut drained = DEST_V4_FULL;
    drained[44..48].copy_from_slice(&[0, 0, 0, 0]); // IPVS_DEST_ATTR_WEIGHT's value
    assert_bytes(
        &set_dest(FAMILY, 15, &service_v4(), dest_v4(), 0),
        &concat(&[&header, &SERVICE_V4_KEY, &drained]),
    );
    let header: [u8; 20] = [140, 0, 0, 0, 0x24, 0, 0x05, 0, 16, 0, 0, 0, 0, 0, 0, 0, 6, 1, 0, 0];
    assert_bytes(
        &set_dest(FAMILY, 16, &service_v6(), dest_v6(), 256),
        &concat(&[&header, &SERVICE_V6_KEY, &DEST_V6_FULL]),
    );
}

#[test]
#[rustfmt::skip]
fn del_dest_names_service_and_destination_only() {
    let header: [u8; 20] = [
        108, 0, 0, 0,      // nlmsghdr len = 20 + 48 + 40
        0x24, 0, 0x05, 0, 17, 0, 0, 0, 0, 0, 0, 0, // type, REQUEST|ACK, seq 17, pid 0
        7, 1, 0, 0,        // genlmsghdr cmd=IPVS_CMD_DEL_DEST version=1
    ];
    assert_bytes(
        &del_dest(FAMILY, 17, &service_v4(), dest_v4()),
        &concat(&[&header, &SERVICE_V4_KEY, &DEST_V4_KEY]),
    );
    let header: [u8; 20] = [108, 0, 0, 0, 0x24, 0, 0x05, 0, 18, 0, 0, 0, 0, 0, 0, 0, 7, 1, 0, 0];
    assert_bytes(
        &del_dest(FAMILY, 18, &service_v6(), dest_v6()),
        &concat(&[&header, &SERVICE_V6_KEY, &DEST_V6_KEY]),
    );
}

#[test]
#[rustfmt::skip]
fn get_dest_is_a_dump_request_for_the_service() {
    let header: [u8; 20] = [
        68, 0, 0, 0,       // nlmsghdr len = 20 + 48
        0x24, 0,           // type = the IPVS family id
        0x01, 0x03,        // flags = NLM_F_REQUEST | NLM_F_DUMP (0x0301), no ACK: DONE ends it
        19, 0, 0, 0, 0, 0, 0, 0, // seq 19, pid 0
        8, 1, 0, 0,        // genlmsghdr cmd=IPVS_CMD_GET_DEST version=1
    ];
    assert_bytes(&get_dests(FAMILY, 19, &service_v4()), &concat(&[&header, &SERVICE_V4_KEY]));
    let header: [u8; 20] = [68, 0, 0, 0, 0x24, 0, 0x01, 0x03, 20, 0, 0, 0, 0, 0, 0, 0, 8, 1, 0, 0];
    assert_bytes(&get_dests(FAMILY, 20, &service_v6()), &concat(&[&header, &SERVICE_V6_KEY]));
}

/// What this machine's kernel (no IPVS) answered to `get_family(1)`, sent from a
/// socket without NETLINK_CAP_ACK or NETLINK_EXT_ACK.
#[rustfmt::skip]
const NO_SUCH_FAMILY: [u8; 52] = [
    52, 0, 0, 0,           // nlmsghdr len = 52
    0x02, 0,               // type = NLMSG_ERROR
    0, 0,                  // flags = 0 (not capped, no ack TLVs)
    1, 0, 0, 0,            // seq = 1, the request's
    0xa9, 0x18, 0, 0,      // pid = 6313, the socket's port
    0xfe, 0xff, 0xff, 0xff, // struct nlmsgerr error = -2 (-ENOENT)
    32, 0, 0, 0, 0x10, 0, 0x05, 0, 1, 0, 0, 0, 0, 0, 0, 0, // the request's nlmsghdr, echoed,
    3, 1, 0, 0, 9, 0, 2, 0, b'I', b'P', b'V', b'S', 0, 0, 0, 0, // and the rest of it
];

#[test]
fn an_error_reply_gives_its_errno() {
    let messages = split(&NO_SUCH_FAMILY).unwrap();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!((m.kind, m.flags, m.seq), (NLMSG_ERROR, 0, 1));
    assert_eq!(
        parse_error(m.flags, m.payload).unwrap(),
        ErrorReply {
            errno: 2,
            message: None
        }
    );
}

#[test]
#[rustfmt::skip]
fn a_capped_error_reply_gives_the_kernels_explanation() {
    let reply: [u8; 52] = [
        52, 0, 0, 0,           // nlmsghdr len = 52
        0x02, 0,               // type = NLMSG_ERROR
        0x00, 0x03,            // flags = NLM_F_CAPPED | NLM_F_ACK_TLVS
        5, 0, 0, 0, 0xa9, 0x18, 0, 0, // seq 5, pid
        0xea, 0xff, 0xff, 0xff, // error = -22 (-EINVAL)
        140, 0, 0, 0, 0x24, 0, 0x05, 0, 5, 0, 0, 0, 0, 0, 0, 0, // the request's header only
        15, 0, 1, 0,           // nla len=15 type=NLMSGERR_ATTR_MSG
        b'b', b'a', b'd', b' ', b'w', b'e', b'i', b'g', b'h', b't', 0, // "bad weight\0"
        0,                     // padding
    ];
    let m = &split(&reply).unwrap()[0];
    assert_eq!(
        parse_error(m.flags, m.payload).unwrap(),
        ErrorReply { errno: 22, message: Some("bad weight".into()) }
    );
    // The acknowledgement: error 0, the request's header.
    let ack: [u8; 36] = [
        36, 0, 0, 0, 0x02, 0, 0x00, 0x01, 5, 0, 0, 0, 0xa9, 0x18, 0, 0, // NLMSG_ERROR, NLM_F_CAPPED
        0, 0, 0, 0,            // error = 0
        140, 0, 0, 0, 0x24, 0, 0x05, 0, 5, 0, 0, 0, 0, 0, 0, 0, // the request's header
    ];
    let m = &split(&ack).unwrap()[0];
    assert_eq!(parse_error(m.flags, m.payload).unwrap().errno, 0);
}

#[test]
#[rustfmt::skip]
fn the_controllers_answer_gives_the_family_id() {
    // As ctrl_fill_info writes it: name, id, version, header size, max attribute,
    // then the operations (nested, without NLA_F_NESTED), cut to one here.
    let reply: [u8; 88] = [
        88, 0, 0, 0,           // nlmsghdr len = 88
        0x10, 0,               // type = GENL_ID_CTRL
        0, 0,                  // flags = 0
        1, 0, 0, 0, 0xa9, 0x18, 0, 0, // seq 1, pid
        1, 2, 0, 0,            // genlmsghdr cmd=CTRL_CMD_NEWFAMILY version=2 (the controller's)
        9, 0, 2, 0, b'I', b'P', b'V', b'S', 0, 0, 0, 0, // CTRL_ATTR_FAMILY_NAME "IPVS\0", padding
        6, 0, 1, 0, 0x24, 0, 0, 0, // nla len=6 type=CTRL_ATTR_FAMILY_ID value 0x24, padding
        8, 0, 3, 0, 1, 0, 0, 0,    // CTRL_ATTR_VERSION 1
        8, 0, 4, 0, 0, 0, 0, 0,    // CTRL_ATTR_HDRSIZE 0
        8, 0, 5, 0, 6, 0, 0, 0,    // CTRL_ATTR_MAXATTR 6 (IPVS_CMD_ATTR_MAX)
        24, 0, 6, 0,               // CTRL_ATTR_OPS:
        20, 0, 1, 0,               //   operation 1:
        8, 0, 1, 0, 1, 0, 0, 0,    //     CTRL_ATTR_OP_ID IPVS_CMD_NEW_SERVICE
        8, 0, 2, 0, 0x0b, 0, 0, 0, //     CTRL_ATTR_OP_FLAGS ADMIN_PERM | DO | HASPOL
    ];
    let messages = split(&reply).unwrap();
    assert_eq!(messages[0].kind, GENL_ID_CTRL);
    assert_eq!(parse_family_id(messages[0].payload).unwrap(), 0x24);
    // Without the id, or another command: refused, not guessed.
    assert!(parse_family_id(&[1, 2, 0, 0, 8, 0, 3, 0, 1, 0, 0, 0]).is_err());
    assert!(parse_family_id(&[2, 2, 0, 0, 6, 0, 1, 0, 0x24, 0, 0, 0]).is_err());
}

#[test]
#[rustfmt::skip]
fn a_dest_dump_gives_address_weight_and_connections() {
    // One IPVS_CMD_NEW_DEST as ip_vs_genl_fill_dest writes it (stats cut to one
    // counter), then NLMSG_DONE, in one datagram.
    let dump: [u8; 172] = [
        152, 0, 0, 0,          // nlmsghdr len = 152
        0x24, 0,               // type = the IPVS family id
        0x02, 0,               // flags = NLM_F_MULTI
        21, 0, 0, 0, 0xa9, 0x18, 0, 0, // seq 21, pid
        5, 1, 0, 0,            // genlmsghdr cmd=IPVS_CMD_NEW_DEST version=1
        132, 0, 2, 0,          // nla len=132 type=IPVS_CMD_ATTR_DEST (nla_nest_start_noflag)
        20, 0, 1, 0, 10, 0, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ADDR 10.0.1.5
        6, 0, 2, 0, 0x23, 0x29, 0, 0, // PORT 9001
        8, 0, 3, 0, 0, 0, 0, 0,    // FWD_METHOD masquerading
        8, 0, 4, 0, 0, 0, 0, 0,    // WEIGHT 0 (draining)
        5, 0, 14, 0, 0, 0, 0, 0,   // TUN_TYPE (u8) 0, padding
        6, 0, 15, 0, 0, 0, 0, 0,   // TUN_PORT 0
        6, 0, 16, 0, 0, 0, 0, 0,   // TUN_FLAGS 0
        8, 0, 5, 0, 0, 0, 0, 0,    // U_THRESH 0
        8, 0, 6, 0, 0, 0, 0, 0,    // L_THRESH 0
        8, 0, 7, 0, 4, 0, 0, 0,    // ACTIVE_CONNS 4
        8, 0, 8, 0, 9, 0, 0, 0,    // INACT_CONNS 9
        8, 0, 9, 0, 0, 0, 0, 0,    // PERSIST_CONNS 0
        6, 0, 11, 0, 2, 0, 0, 0,   // ADDR_FAMILY AF_INET
        12, 0, 10, 0,              // STATS:
        8, 0, 1, 0, 42, 0, 0, 0,   //   CONNS 42
        20, 0, 0, 0,           // nlmsghdr len = 20
        0x03, 0,               // type = NLMSG_DONE
        0x02, 0,               // flags = NLM_F_MULTI
        21, 0, 0, 0, 0xa9, 0x18, 0, 0, // seq 21, pid
        0, 0, 0, 0,            // error 0
    ];
    let messages = split(&dump).unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!((messages[0].kind, messages[0].flags), (FAMILY, NLM_F_MULTI));
    assert_eq!(
        parse_dest(messages[0].payload, AF_INET).unwrap(),
        Dest {
            addr: dest_v4(),
            weight: 0,
            active_conns: 4,
            inactive_conns: 9,
        }
    );
    assert_eq!(messages[1].kind, NLMSG_DONE);
    assert_eq!(done_errno(messages[1].payload), 0);
    // A dump that failed: NLMSG_DONE with -EINVAL.
    assert_eq!(done_errno(&[0xea, 0xff, 0xff, 0xff]), 22);
}

#[test]
#[rustfmt::skip]
fn an_old_kernels_dest_without_address_family_takes_the_services() {
    let payload: [u8; 52] = [
        5, 1, 0, 0,            // genlmsghdr cmd=IPVS_CMD_NEW_DEST version=1
        48, 0, 2, 0,           // nla len=48 type=IPVS_CMD_ATTR_DEST
        20, 0, 1, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0x05, // ADDR
        6, 0, 2, 0, 0x20, 0xfb, 0, 0, // PORT 8443
        8, 0, 4, 0, 0, 1, 0, 0,    // WEIGHT 256
        8, 0, 7, 0, 0, 0, 0, 0,    // ACTIVE_CONNS 0
        // no IPVS_DEST_ATTR_ADDR_FAMILY (before Linux 3.18)
    ];
    assert_eq!(
        parse_dest(&payload, AF_INET6).unwrap(),
        Dest { addr: dest_v6(), weight: 256, active_conns: 0, inactive_conns: 0 }
    );
}

#[test]
fn truncated_replies_are_malformed_not_misread() {
    // nlmsg_len longer than the datagram.
    assert!(split(&NO_SUCH_FAMILY[..40]).is_err());
    // nlmsg_len shorter than a header.
    assert!(split(&[8, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).is_err());
    // A datagram of 3 bytes.
    assert!(split(&[1, 2, 3]).is_err());
    // An attribute running past its message.
    assert!(parse_dest(&[5, 1, 0, 0, 60, 0, 2, 0, 6, 0, 2, 0], AF_INET).is_err());
    // An IPv4 destination with a 2-byte address.
    assert!(parse_dest(
        &[
            5, 1, 0, 0, 28, 0, 2, 0, 6, 0, 1, 0, 10, 0, 0, 0, 6, 0, 2, 0, 0, 80, 0, 0, 8, 0, 4, 0,
            1, 0, 0, 0
        ][..],
        AF_INET
    )
    .is_err());
}
