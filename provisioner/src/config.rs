//! `glory-provisioner`'s TOML configuration (docs/examples/provisioner.toml).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::dhcp::Mode;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionerConfig {
    /// This provisioner's name in the cluster (its certificate's id).
    pub name: String,
    /// Cluster master QUIC address, then standbys.
    pub cluster_master: SocketAddr,
    pub cluster_masters: Vec<SocketAddr>,
    /// Bootstrap token of scope `provisioner` (`glory bootstrap-tokens create --scope
    /// provisioner`); only needed until it has enrolled.
    pub token: Option<String>,
    /// SHA-256 of the cluster CA certificate (`glory ca-hash`); or `ca_cert`.
    pub ca_cert_hash: Option<String>,
    pub ca_cert: Option<PathBuf>,
    /// Identity, leases, boot files.
    pub state_dir: PathBuf,
    /// This server's IPv4 address on the boot network.
    pub server_ip: Ipv4Addr,
    /// The boot network's interface: DHCP and router advertisements are bound to it.
    /// None: all interfaces (a host with only the boot network).
    pub interface: Option<String>,
    /// `full` (addresses from `range_*`) or `proxy` (beside an existing DHCP server).
    pub mode: String,
    /// 0: no DHCP server (another one points machines at us, or a benchmark).
    pub dhcp_port: u16,
    /// 0: no TFTP server (every machine's firmware is iPXE already).
    pub tftp_port: u16,
    pub http_port: u16,
    pub range_first: Option<Ipv4Addr>,
    pub range_last: Option<Ipv4Addr>,
    pub subnet_mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_seconds: u32,
    /// MAC -> fixed address.
    pub reservations: BTreeMap<String, Ipv4Addr>,
    /// Where Debian's `ipxe` package put `undionly.kpxe` and `ipxe.efi`.
    pub undionly: PathBuf,
    pub ipxe_efi: PathBuf,
    /// The agent put into the enrollment environment (default: next to this binary,
    /// then /usr/bin).
    pub agent_binary: Option<PathBuf>,
    /// Extra kernel command line for booted machines.
    pub kernel_args: String,
    /// Answer IPv6 router solicitations on the boot network with a bare router
    /// advertisement (iPXE otherwise waits 13-16 s for one).
    pub router_advertisements: bool,
    /// Machines booting an image fetch its root filesystem peer-to-peer: from each
    /// other, this provisioner seeding and tracking (our BitTorrent peer, here and in
    /// the image's initramfs; HTTP from this provisioner when the swarm is slow).
    /// Diskless boots only: a disk boot streams the image onto the disk.
    pub boot_p2p: bool,
    /// This provisioner's seeders' upload limit in KiB/s (0: none).
    pub seed_upload_kib: u64,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            name: "provisioner".into(),
            cluster_master: SocketAddr::from(([127, 0, 0, 1], 7401)),
            cluster_masters: Vec::new(),
            token: None,
            ca_cert_hash: None,
            ca_cert: None,
            state_dir: PathBuf::from("/var/lib/glory-provisioner"),
            server_ip: Ipv4Addr::new(10, 0, 0, 1),
            interface: None,
            mode: "full".into(),
            dhcp_port: 67,
            tftp_port: 69,
            http_port: 7480,
            range_first: None,
            range_last: None,
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: Vec::new(),
            ntp: Vec::new(),
            domain: None,
            lease_seconds: 3600,
            reservations: BTreeMap::new(),
            undionly: PathBuf::from("/usr/lib/ipxe/undionly.kpxe"),
            ipxe_efi: PathBuf::from("/usr/lib/ipxe/ipxe.efi"),
            agent_binary: None,
            kernel_args: String::new(),
            router_advertisements: true,
            boot_p2p: true,
            seed_upload_kib: 0,
        }
    }
}

impl ProvisionerConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).context("parse provisioner config")
    }

    pub fn mode(&self) -> anyhow::Result<Mode> {
        match self.mode.as_str() {
            "full" => Ok(Mode::Full),
            "proxy" => Ok(Mode::Proxy),
            other => bail!("mode must be full or proxy (got {other:?})"),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("name must be 1-64 letters, digits, '-' or '_'");
        }
        let mode = self.mode()?;
        if mode == Mode::Full {
            match (self.range_first, self.range_last) {
                (Some(a), Some(b)) if u32::from(a) <= u32::from(b) => {}
                (Some(_), Some(_)) => bail!("range_first must not be after range_last"),
                _ => bail!("full mode needs range_first and range_last"),
            }
        }
        for mac in self.reservations.keys() {
            if crate::leases::parse_mac(mac).is_none() {
                bail!("reservations: {mac:?} is not a MAC address");
            }
        }
        if let Some(hash) = &self.ca_cert_hash {
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("ca_cert_hash must be 64 hex digits (SHA-256)");
            }
        }
        if self.kernel_args.chars().any(|c| c.is_control()) {
            bail!("kernel_args may not contain control characters");
        }
        Ok(())
    }

    /// The HTTP base URL machines on the boot network use.
    pub fn http_base(&self) -> String {
        format!("http://{}:{}", self.server_ip, self.http_port)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn documented_example_parses_and_validates() {
        let text = include_str!("../../docs/examples/provisioner.toml");
        let config = super::ProvisionerConfig::from_toml(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.mode().unwrap(), crate::dhcp::Mode::Full);
        let bad = super::ProvisionerConfig {
            mode: "half".into(),
            ..config.clone()
        };
        assert!(bad.validate().is_err());
        assert!(super::ProvisionerConfig::from_toml("nmae = 'x'").is_err());
    }
}
