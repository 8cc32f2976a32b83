//! `glory provision dhcp-bench`: a storm of DHCP DISCOVERs from many MACs against the
//! provisioner's DHCP server on loopback (it answers the sender), then each client's
//! REQUEST: offers and acks per second, answer latency percentiles, and whether any
//! address was handed out twice.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};
use glory_provisioner::dhcp::{BootConfig, Mode};
use glory_provisioner::leases::LeaseConfig;
use glory_provisioner::server::{DhcpServer, ReplyTo};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize)]
pub struct DhcpBenchReport {
    pub clients: usize,
    pub offers: usize,
    pub offers_per_sec: f64,
    pub offer_latency_ms: Option<super::report::Percentiles>,
    pub acks: usize,
    pub acks_per_sec: f64,
    pub ack_latency_ms: Option<super::report::Percentiles>,
    pub duplicate_addresses: usize,
}

fn message(xid: u32, mac: &[u8; 6], kind: MessageType, ip: Option<Ipv4Addr>) -> Vec<u8> {
    let zero = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, zero, zero, zero, zero, mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(ip) = ip {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    }
    m.to_vec().unwrap_or_default()
}

/// Send one message per client as fast as the socket takes them (`send`), while a
/// receiver matches answers by transaction id; the latency of each is from its send
/// to its answer.
async fn storm(
    socket: &UdpSocket,
    packets: &[(u32, Vec<u8>)],
) -> anyhow::Result<(HashMap<u32, (Message, Duration)>, Duration)> {
    let started = Instant::now();
    let mut sent_at: HashMap<u32, Instant> = HashMap::with_capacity(packets.len());
    let mut answers = HashMap::with_capacity(packets.len());
    let mut buf = vec![0u8; 1500];
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while answers.len() < packets.len() && Instant::now() < deadline {
        // Keep at most 64 requests in flight: a burst, not a flood that only measures
        // the socket buffers.
        while next < packets.len() && sent_at.len() - answers.len() < 64 {
            let (xid, bytes) = &packets[next];
            sent_at.insert(*xid, Instant::now());
            socket.send(bytes).await?;
            next += 1;
        }
        let n = match tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
        {
            Ok(r) => r?,
            Err(_) => {
                // Lost in the socket buffers: send the missing ones again.
                for (xid, bytes) in &packets[..next] {
                    if !answers.contains_key(xid) {
                        sent_at.insert(*xid, Instant::now());
                        socket.send(bytes).await?;
                    }
                }
                continue;
            }
        };
        let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        if let Some(at) = sent_at.get(&m.xid()) {
            let took = at.elapsed();
            answers.entry(m.xid()).or_insert((m, took));
        }
    }
    Ok((answers, started.elapsed()))
}

pub async fn run(clients: usize) -> anyhow::Result<DhcpBenchReport> {
    let dir = tempfile::tempdir()?;
    let boot = BootConfig {
        mode: Mode::Full,
        server: Ipv4Addr::new(10, 9, 0, 1),
        subnet_mask: Ipv4Addr::new(255, 255, 0, 0),
        router: Some(Ipv4Addr::new(10, 9, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 9, 0, 1)],
        ntp: vec![],
        domain: Some("lab".into()),
        lease_seconds: 3600,
        bios_file: "undionly.kpxe".into(),
        uefi_file: "ipxe.efi".into(),
        script_url: "http://10.9.0.1/boot/{mac}.ipxe".into(),
    };
    let leases = LeaseConfig {
        first: Ipv4Addr::new(10, 9, 1, 0),
        last: Ipv4Addr::new(10, 9, 255, 255),
        lease_seconds: 3600,
        reservations: Default::default(),
    };
    let server = DhcpServer::bind(
        "127.0.0.1:0".parse()?,
        boot,
        leases,
        Some(dir.path().join("leases.json")),
        ReplyTo::Source,
    )
    .await?;
    let addr = server.local_addr()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.serve(stop.clone()));
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(addr).await?;
    let macs: Vec<[u8; 6]> = (0..clients as u32)
        .map(|i| [0x52, 0x54, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8])
        .collect();
    let discovers: Vec<(u32, Vec<u8>)> = macs
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            (
                i as u32,
                message(i as u32, mac, MessageType::Discover, None),
            )
        })
        .collect();
    let (offers, offer_time) = storm(&socket, &discovers).await?;
    let requests: Vec<(u32, Vec<u8>)> = macs
        .iter()
        .enumerate()
        .filter_map(|(i, mac)| {
            let (offer, _) = offers.get(&(i as u32))?;
            let xid = (clients + i) as u32;
            Some((
                xid,
                message(xid, mac, MessageType::Request, Some(offer.yiaddr())),
            ))
        })
        .collect();
    let (acks, ack_time) = storm(&socket, &requests).await?;
    stop.cancel();
    task.await??;
    let bound: Vec<Ipv4Addr> = acks
        .values()
        .filter(|(m, _)| m.opts().msg_type() == Some(MessageType::Ack))
        .map(|(m, _)| m.yiaddr())
        .collect();
    let distinct: BTreeSet<Ipv4Addr> = bound.iter().copied().collect();
    let ms = |a: &HashMap<u32, (Message, Duration)>| -> Vec<f64> {
        a.values().map(|(_, d)| d.as_secs_f64() * 1000.0).collect()
    };
    Ok(DhcpBenchReport {
        clients,
        offers: offers.len(),
        offers_per_sec: offers.len() as f64 / offer_time.as_secs_f64().max(1e-9),
        offer_latency_ms: super::report::percentiles(&ms(&offers)),
        acks: bound.len(),
        acks_per_sec: bound.len() as f64 / ack_time.as_secs_f64().max(1e-9),
        ack_latency_ms: super::report::percentiles(&ms(&acks)),
        duplicate_addresses: bound.len() - distinct.len(),
    })
}
