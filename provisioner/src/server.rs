//! The DHCP server: [`crate::dhcp::handle`] on a UDP socket. Leases are written to
//! their file after every change that binds or frees one, before the answer goes out,
//! so a restart never hands an address out twice. Packets that do not decode are
//! dropped and counted; the server goes on.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::dhcp::{handle, BootConfig, DhcpError};
use crate::leases::{LeaseConfig, Leases};

/// Where answers go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// To 255.255.255.255:68, as clients without an address need (a real boot network).
    Broadcast,
    /// Back to the packet's source address and port (relays, tests, load generators).
    Source,
}

/// Counters of one server.
#[derive(Debug, Default)]
pub struct DhcpStats {
    pub received: AtomicU64,
    pub answered: AtomicU64,
    pub undecodable: AtomicU64,
    pub ignored: AtomicU64,
}

pub struct DhcpServer {
    socket: UdpSocket,
    boot: BootConfig,
    leases: Leases,
    leases_file: Option<PathBuf>,
    reply_to: ReplyTo,
    pub stats: Arc<DhcpStats>,
    observer: Option<tokio::sync::mpsc::UnboundedSender<DhcpSeen>>,
}

/// An answer this server gave a PXE client (one whose answer names a boot program).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpSeen {
    pub mac: String,
    /// `offer` or `ack`.
    pub kind: &'static str,
    /// The address offered or acknowledged (none in proxy mode).
    pub ip: Option<Ipv4Addr>,
    /// The boot program or script URL it was told.
    pub boot_file: String,
}

/// What an answer tells about a PXE client, read back from our own encoded answer.
fn seen(answer: &[u8]) -> Option<DhcpSeen> {
    use dhcproto::v4::{Message, MessageType};
    use dhcproto::{Decodable, Decoder};
    let m = Message::decode(&mut Decoder::new(answer)).ok()?;
    let boot_file = String::from_utf8_lossy(m.fname().unwrap_or_default())
        .trim_end_matches('\0')
        .to_string();
    if boot_file.is_empty() {
        return None;
    }
    let kind = match m.opts().msg_type()? {
        MessageType::Offer => "offer",
        MessageType::Ack => "ack",
        _ => return None,
    };
    let ip = (!m.yiaddr().is_unspecified()).then(|| m.yiaddr());
    let hw = m.chaddr();
    if hw.len() < 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&hw[..6]);
    Some(DhcpSeen {
        mac: crate::leases::mac_text(&mac),
        kind,
        ip,
        boot_file,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Leases from `file` when it exists, else none yet.
fn load_leases(config: LeaseConfig, file: Option<&std::path::Path>) -> anyhow::Result<Leases> {
    match file {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path)?;
            Leases::restore(config, &text).map_err(anyhow::Error::msg)
        }
        _ => Ok(Leases::new(config)),
    }
}

impl DhcpServer {
    /// Bind `listen`; leases come from `leases_file` when it exists.
    pub async fn bind(
        listen: SocketAddr,
        boot: BootConfig,
        lease_config: LeaseConfig,
        leases_file: Option<PathBuf>,
        reply_to: ReplyTo,
    ) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(listen).await?;
        let leases = load_leases(lease_config, leases_file.as_deref())?;
        Self::with_socket(socket, boot, leases, leases_file, reply_to)
    }

    /// Serve on a socket bound by the caller (to a device, with SO_REUSEADDR...).
    pub fn from_std(
        socket: std::net::UdpSocket,
        boot: BootConfig,
        lease_config: LeaseConfig,
        leases_file: Option<PathBuf>,
        reply_to: ReplyTo,
    ) -> anyhow::Result<Self> {
        let leases = load_leases(lease_config, leases_file.as_deref())?;
        socket.set_nonblocking(true)?;
        Self::with_socket(
            UdpSocket::from_std(socket)?,
            boot,
            leases,
            leases_file,
            reply_to,
        )
    }

    fn with_socket(
        socket: UdpSocket,
        boot: BootConfig,
        leases: Leases,
        leases_file: Option<PathBuf>,
        reply_to: ReplyTo,
    ) -> anyhow::Result<Self> {
        socket.set_broadcast(reply_to == ReplyTo::Broadcast)?;
        Ok(DhcpServer {
            observer: None,
            socket,
            boot,
            leases,
            leases_file,
            reply_to,
            stats: Arc::default(),
        })
    }

    /// Tell `observer` about every answer given to a PXE client.
    pub fn observe(&mut self, observer: tokio::sync::mpsc::UnboundedSender<DhcpSeen>) {
        self.observer = Some(observer);
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn save(&self) {
        let Some(path) = &self.leases_file else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, self.leases.to_json()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            warn!(path = %path.display(), error = %e, "cannot save DHCP leases");
        }
    }

    /// Serve until `shutdown`.
    pub async fn serve(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 1500];
        loop {
            let (len, from) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.socket.recv_from(&mut buf) => r?,
            };
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            let before = self.leases.generation();
            match handle(&buf[..len], &self.boot, &mut self.leases, now_ms()) {
                Ok(answer) => {
                    if self.leases.generation() != before {
                        self.save();
                    }
                    let Some(bytes) = answer else { continue };
                    if let Some(observer) = &self.observer {
                        if let Some(seen) = seen(&bytes) {
                            let _ = observer.send(seen);
                        }
                    }
                    let to = match self.reply_to {
                        ReplyTo::Broadcast => {
                            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
                        }
                        ReplyTo::Source => from,
                    };
                    if let Err(e) = self.socket.send_to(&bytes, to).await {
                        warn!(%to, error = %e, "cannot send a DHCP answer");
                    } else {
                        self.stats.answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(DhcpError::Undecodable(e)) => {
                    let n = self.stats.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 1 || n.is_multiple_of(1000) {
                        warn!(%from, error = %e, dropped = n, "undecodable DHCP packets dropped");
                    }
                }
                Err(e) => {
                    self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, error = %e, "DHCP packet not answered");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::Mode;
    use dhcproto::v4::{DhcpOption, Message, MessageType};
    use dhcproto::{Decodable, Decoder, Encodable};
    use std::collections::BTreeSet;

    fn boot() -> BootConfig {
        BootConfig {
            mode: Mode::Full,
            server: Ipv4Addr::new(10, 9, 0, 1),
            subnet_mask: Ipv4Addr::new(255, 255, 0, 0),
            router: None,
            dns: vec![],
            ntp: vec![],
            domain: None,
            lease_seconds: 600,
            bios_file: "undionly.kpxe".into(),
            uefi_file: "ipxe.efi".into(),
            script_url: "http://10.9.0.1/boot/{mac}.ipxe".into(),
        }
    }

    fn leases() -> LeaseConfig {
        LeaseConfig {
            first: Ipv4Addr::new(10, 9, 1, 0),
            last: Ipv4Addr::new(10, 9, 8, 255),
            lease_seconds: 600,
            reservations: Default::default(),
        }
    }

    async fn exchange(client: &UdpSocket, msg: &Message) -> Message {
        client.send(&msg.to_vec().unwrap()).await.unwrap();
        let mut buf = vec![0u8; 1500];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        Message::decode(&mut Decoder::new(&buf[..n])).unwrap()
    }

    /// 1,000 clients, each DISCOVER then REQUEST over real UDP: every one is acked, no
    /// address twice, garbage in between is counted and dropped, and a restarted server
    /// keeps every lease.
    #[tokio::test]
    async fn a_thousand_clients_get_distinct_addresses_that_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("leases.json");
        let server = DhcpServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            boot(),
            leases(),
            Some(file.clone()),
            ReplyTo::Source,
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let stats = server.stats.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(stop.clone()));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        let zero = Ipv4Addr::UNSPECIFIED;
        let mut given = BTreeSet::new();
        for i in 0..1000u32 {
            let mac = [0x52, 0x54, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            let mut discover = Message::new_with_id(i, zero, zero, zero, zero, &mac);
            discover
                .opts_mut()
                .insert(DhcpOption::MessageType(MessageType::Discover));
            let offer = exchange(&client, &discover).await;
            assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
            let mut request = Message::new_with_id(i, zero, zero, zero, zero, &mac);
            request
                .opts_mut()
                .insert(DhcpOption::MessageType(MessageType::Request));
            request
                .opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            let ack = exchange(&client, &request).await;
            assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack), "client {i}");
            assert!(
                given.insert(ack.yiaddr()),
                "{} handed out twice",
                ack.yiaddr()
            );
            if i % 100 == 0 {
                client.send(b"not dhcp at all").await.unwrap();
            }
        }
        assert_eq!(stats.undecodable.load(Ordering::Relaxed), 10);
        stop.cancel();
        task.await.unwrap().unwrap();

        // Restarted on the same file: the leases are there, and a new client gets a
        // new address.
        let again = DhcpServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            boot(),
            leases(),
            Some(file),
            ReplyTo::Source,
        )
        .await
        .unwrap();
        let addr = again.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(again.serve(stop.clone()));
        client.connect(addr).await.unwrap();
        let mut discover = Message::new_with_id(5000, zero, zero, zero, zero, &[2, 0, 0, 0, 0, 1]);
        discover
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        let offer = exchange(&client, &discover).await;
        assert!(!given.contains(&offer.yiaddr()), "{} again", offer.yiaddr());
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
