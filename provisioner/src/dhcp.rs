//! DHCP for the boot network, pure: a packet in, the answer out (time passed in).
//!
//! - **Full mode** hands out addresses from [`Leases`] with the network's options
//!   (router, DNS, NTP, domain) and the boot file.
//! - **Proxy mode** runs beside an existing DHCP server: it answers only PXE clients,
//!   with the boot file and no address (proxyDHCP, RFC 4578 / PXE 2.1).
//!
//! Firmware is told apart by option 93 (client architecture: 0 legacy BIOS, 6, 7 and 9
//! UEFI) and iPXE by option 175 or the user class `iPXE`: BIOS gets `undionly.kpxe`
//! and UEFI `ipxe.efi` over TFTP; iPXE gets the URL of its script over HTTP.

use std::net::Ipv4Addr;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

use crate::leases::{mac_text, LeaseError, Leases, Mac};

/// iPXE's own option: present when iPXE (not the firmware) is asking.
const IPXE_OPTION: u8 = 175;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
    Ipxe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Full,
    Proxy,
}

/// What the boot network's clients are told.
#[derive(Clone, Debug)]
pub struct BootConfig {
    pub mode: Mode,
    /// This server's address on the boot network (server identifier, next server).
    pub server: Ipv4Addr,
    pub subnet_mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_seconds: u32,
    /// Boot files over TFTP.
    pub bios_file: String,
    pub uefi_file: String,
    /// The iPXE script's URL; `{mac}` is replaced with the client's MAC.
    pub script_url: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DhcpError {
    /// Not a DHCP message (dropped and counted by the caller).
    Undecodable(String),
    /// A message we do not answer (not a request, no hardware address...).
    Ignored(&'static str),
}

impl std::fmt::Display for DhcpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DhcpError::Undecodable(e) => write!(f, "undecodable DHCP packet: {e}"),
            DhcpError::Ignored(why) => write!(f, "ignored: {why}"),
        }
    }
}

/// Which boot program is asking, if any (None: not a network boot).
pub fn firmware(msg: &Message) -> Option<Firmware> {
    let opts = msg.opts();
    let user_class_ipxe = matches!(opts.get(OptionCode::UserClass),
        Some(DhcpOption::UserClass(c)) if c.windows(4).any(|w| w == b"iPXE"));
    if user_class_ipxe || opts.get(OptionCode::Unknown(IPXE_OPTION)).is_some() {
        return Some(Firmware::Ipxe);
    }
    match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(arch)) => Some(match arch {
            Architecture::Intelx86PC => Firmware::Bios,
            _ => Firmware::Uefi,
        }),
        _ => match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(id)) if id.starts_with(b"PXEClient") => {
                Some(Firmware::Bios)
            }
            _ => None,
        },
    }
}

/// The client's Ethernet address. (dhcproto's `chaddr()` slices by the packet's own
/// length field, so a length over 16 is refused here before it is called.)
fn mac_of(msg: &Message) -> Option<Mac> {
    if msg.hlen() != 6 {
        return None;
    }
    msg.chaddr().get(..6)?.try_into().ok()
}

/// The boot file or URL for `fw`.
fn boot_file(cfg: &BootConfig, fw: Firmware, mac: &Mac) -> String {
    match fw {
        Firmware::Bios => cfg.bios_file.clone(),
        Firmware::Uefi => cfg.uefi_file.clone(),
        Firmware::Ipxe => cfg.script_url.replace("{mac}", &mac_text(mac)),
    }
}

/// The answer's skeleton: a BOOTREPLY echoing the request's transaction.
fn reply(req: &Message, kind: MessageType, cfg: &BootConfig) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(cfg.server));
    m
}

/// Add the boot program's name for `fw` (and where to fetch it).
fn add_boot(m: &mut Message, cfg: &BootConfig, fw: Option<Firmware>, mac: &Mac) {
    let Some(fw) = fw else { return };
    let file = boot_file(cfg, fw, mac);
    m.set_siaddr(cfg.server).set_fname_str(&file);
    m.opts_mut()
        .insert(DhcpOption::BootfileName(file.into_bytes()));
    // iPXE's own option, sub-option 176 (no_pxedhcp) = 1: no proxyDHCP server to wait
    // for (iPXE otherwise waits about 2 s for one; FACTS "QEMU and PXE").
    m.opts_mut()
        .insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
            OptionCode::Unknown(IPXE_OPTION),
            vec![176, 1, 1],
        )));
    if fw != Firmware::Ipxe && cfg.mode == Mode::Proxy {
        // A proxyDHCP offer is known by the vendor class echoed back, and option 43's
        // discovery control bit 3 says "boot the file named here" (no boot server
        // discovery on port 4011). In full mode neither is sent: an address with a
        // boot file is an offer every PXE firmware takes as it is, where UEFI's PXE
        // (EDK2) takes "PXEClient" without option 43 as an offer that needs a boot
        // server and refuses it ("PXE-E16: No valid offer received").
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        m.opts_mut()
            .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
}

fn add_network(m: &mut Message, cfg: &BootConfig) {
    let o = m.opts_mut();
    o.insert(DhcpOption::SubnetMask(cfg.subnet_mask));
    o.insert(DhcpOption::AddressLeaseTime(cfg.lease_seconds));
    if let Some(r) = cfg.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !cfg.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(cfg.dns.clone()));
    }
    if !cfg.ntp.is_empty() {
        o.insert(DhcpOption::NtpServers(cfg.ntp.clone()));
    }
    if let Some(d) = &cfg.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
}

/// Answer one packet: `Ok(Some(bytes))` to send back, `Ok(None)` when nothing is due
/// (a RELEASE), an error for what is dropped.
pub fn handle(
    packet: &[u8],
    cfg: &BootConfig,
    leases: &mut Leases,
    now_ms: u64,
) -> Result<Option<Vec<u8>>, DhcpError> {
    // dhcproto 0.12 checks some option lengths with `debug_assert!`: a packet that
    // trips one is refused like any other bad packet, and the server goes on.
    let req = match std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(packet))) {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(DhcpError::Undecodable(e.to_string())),
        Err(_) => return Err(DhcpError::Undecodable("the decoder gave up on it".into())),
    };
    if req.opcode() != Opcode::BootRequest {
        return Err(DhcpError::Ignored("not a BOOTREQUEST"));
    }
    let mac = mac_of(&req).ok_or(DhcpError::Ignored("no Ethernet hardware address"))?;
    let fw = firmware(&req);
    let kind = req
        .opts()
        .msg_type()
        .ok_or(DhcpError::Ignored("no DHCP message type"))?;
    let answer = match (cfg.mode, kind) {
        // proxyDHCP: boot information for PXE clients only, never an address.
        (Mode::Proxy, MessageType::Discover | MessageType::Request) => {
            if fw.is_none() {
                return Err(DhcpError::Ignored("proxy mode answers PXE clients only"));
            }
            let kind = if kind == MessageType::Discover {
                MessageType::Offer
            } else {
                MessageType::Ack
            };
            let mut m = reply(&req, kind, cfg);
            add_boot(&mut m, cfg, fw, &mac);
            m
        }
        (Mode::Full, MessageType::Discover) => {
            let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
                _ => None,
            };
            let ip = leases
                .offer(mac, requested, now_ms)
                .map_err(|_| DhcpError::Ignored("no free address"))?;
            let mut m = reply(&req, MessageType::Offer, cfg);
            m.set_yiaddr(ip);
            add_network(&mut m, cfg);
            add_boot(&mut m, cfg, fw, &mac);
            m
        }
        (Mode::Full, MessageType::Request) => {
            let asked = match req.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => req.ciaddr(),
            };
            // A REQUEST naming another server is that server's business.
            if let Some(DhcpOption::ServerIdentifier(s)) =
                req.opts().get(OptionCode::ServerIdentifier)
            {
                if *s != cfg.server {
                    leases.release(&mac);
                    return Ok(None);
                }
            }
            match leases.request(mac, asked, now_ms) {
                Ok(lease) => {
                    let mut m = reply(&req, MessageType::Ack, cfg);
                    m.set_yiaddr(lease.ip);
                    add_network(&mut m, cfg);
                    add_boot(&mut m, cfg, fw, &mac);
                    m
                }
                Err(LeaseError::NotYours(_) | LeaseError::Exhausted) => {
                    reply(&req, MessageType::Nak, cfg)
                }
            }
        }
        (Mode::Full, MessageType::Release | MessageType::Decline) => {
            leases.release(&mac);
            return Ok(None);
        }
        _ => return Err(DhcpError::Ignored("message type not answered")),
    };
    answer
        .to_vec()
        .map(Some)
        .map_err(|e| DhcpError::Undecodable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::LeaseConfig;

    fn cfg(mode: Mode) -> BootConfig {
        BootConfig {
            mode,
            server: Ipv4Addr::new(10, 9, 0, 1),
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 9, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 9, 0, 1)],
            ntp: vec![],
            domain: Some("lab".into()),
            lease_seconds: 600,
            bios_file: "undionly.kpxe".into(),
            uefi_file: "ipxe.efi".into(),
            script_url: "http://10.9.0.1:8080/boot/{mac}.ipxe".into(),
        }
    }

    fn leases() -> Leases {
        Leases::new(LeaseConfig {
            first: Ipv4Addr::new(10, 9, 0, 100),
            last: Ipv4Addr::new(10, 9, 0, 200),
            lease_seconds: 600,
            reservations: Default::default(),
        })
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn client(kind: MessageType, arch: Option<Architecture>, ipxe: bool) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut m =
            Message::new_with_id(7, unspecified, unspecified, unspecified, unspecified, &MAC);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(a) = arch {
            m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(a));
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000".to_vec(),
            ));
        }
        if ipxe {
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        m
    }

    /// The boot file name without the NUL that ends it on the wire.
    fn fname(m: &Message) -> &str {
        m.fname_str()
            .and_then(Result::ok)
            .unwrap_or("")
            .trim_end_matches('\0')
    }

    fn answer(cfg: &BootConfig, l: &mut Leases, m: &Message) -> Option<Message> {
        let bytes = handle(&m.to_vec().unwrap(), cfg, l, 0).unwrap()?;
        Some(Message::decode(&mut Decoder::new(&bytes)).unwrap())
    }

    #[test]
    fn firmware_gets_its_boot_program_and_ipxe_its_script() {
        let full = cfg(Mode::Full);
        let mut l = leases();
        let bios = answer(
            &full,
            &mut l,
            &client(MessageType::Discover, Some(Architecture::Intelx86PC), false),
        )
        .unwrap();
        assert_eq!(bios.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(bios.yiaddr(), Ipv4Addr::new(10, 9, 0, 100));
        assert_eq!(fname(&bios), "undionly.kpxe");
        assert_eq!(bios.siaddr(), full.server);
        let uefi = answer(
            &full,
            &mut l,
            &client(MessageType::Discover, Some(Architecture::X86_64), false),
        )
        .unwrap();
        assert_eq!(fname(&uefi), "ipxe.efi");
        let ipxe = answer(
            &full,
            &mut l,
            &client(MessageType::Discover, Some(Architecture::Intelx86PC), true),
        )
        .unwrap();
        assert_eq!(
            fname(&ipxe),
            "http://10.9.0.1:8080/boot/52:54:00:12:34:56.ipxe"
        );
        // The same client keeps the address it was offered.
        assert_eq!(ipxe.yiaddr(), bios.yiaddr());
        // iPXE is told not to wait for a proxyDHCP server; in full mode no PXEClient
        // vendor class (UEFI's PXE would wait for a boot server).
        for m in [&bios, &uefi, &ipxe] {
            match m.opts().get(OptionCode::Unknown(IPXE_OPTION)) {
                Some(DhcpOption::Unknown(o)) => assert_eq!(o.data(), [176, 1, 1]),
                other => panic!("option 175: {other:?}"),
            }
            assert!(m.opts().get(OptionCode::ClassIdentifier).is_none());
        }
    }

    #[test]
    fn requests_are_acked_or_refused_and_proxy_mode_gives_no_address() {
        let full = cfg(Mode::Full);
        let mut l = leases();
        let offer = answer(&full, &mut l, &client(MessageType::Discover, None, false)).unwrap();
        let mut req = client(MessageType::Request, None, false);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        req.opts_mut()
            .insert(DhcpOption::ServerIdentifier(full.server));
        let ack = answer(&full, &mut l, &req).unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), offer.yiaddr());
        assert!(
            matches!(ack.opts().get(OptionCode::Router), Some(DhcpOption::Router(r)) if r == &vec![full.server])
        );
        // Outside the range: NAK.
        let mut wrong = client(MessageType::Request, None, false);
        wrong
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 1, 5,
            )));
        let nak = answer(&full, &mut l, &wrong).unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));

        let proxy = cfg(Mode::Proxy);
        let mut l = leases();
        let pxe = answer(
            &proxy,
            &mut l,
            &client(MessageType::Discover, Some(Architecture::X86_64), false),
        )
        .unwrap();
        assert_eq!(
            pxe.yiaddr(),
            Ipv4Addr::UNSPECIFIED,
            "proxyDHCP hands out no address"
        );
        assert_eq!(fname(&pxe), "ipxe.efi");
        let plain = client(MessageType::Discover, None, false);
        assert!(handle(&plain.to_vec().unwrap(), &proxy, &mut l, 0).is_err());
    }

    #[test]
    fn random_bytes_never_panic_and_are_refused() {
        let full = cfg(Mode::Full);
        let mut l = leases();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut refused = 0;
        for round in 0..5_000 {
            let len = (round % 600) + 1;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (seed >> 33) as u8
                })
                .collect();
            if handle(&bytes, &full, &mut l, 0).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 4_900, "{refused}");
        // A real message cut short is refused too.
        let whole = client(MessageType::Discover, None, false).to_vec().unwrap();
        for cut in [0, 10, 100, 235] {
            assert!(
                handle(&whole[..cut], &full, &mut l, 0).is_err(),
                "cut at {cut}"
            );
        }
    }
}
