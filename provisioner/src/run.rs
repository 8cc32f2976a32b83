//! A provisioner's servers, started together: the link to the cluster master, DHCP,
//! TFTP (the boot programs), HTTP boot and router advertisements, all on the boot
//! network; the enrollment environment built on first start when missing.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use glory_protocol::{BootProgress, BootState, CaTrust};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ProvisionerConfig;
use crate::dhcp::BootConfig;
use crate::http::{BootHttp, ServedFile};
use crate::initramfs::{self, BuildSpec};
use crate::leases::{parse_mac, LeaseConfig};
use crate::server::{DhcpServer, DhcpStats, ReplyTo};

/// What a started provisioner exposes.
pub struct Running {
    pub http: SocketAddr,
    pub dhcp_stats: Arc<DhcpStats>,
}

/// The agent binary put into the enrollment environment.
pub fn agent_binary(config: &ProvisionerConfig) -> anyhow::Result<PathBuf> {
    if let Some(p) = &config.agent_binary {
        return Ok(p.clone());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("glory-node-agent")));
    [beside, Some(PathBuf::from("/usr/bin/glory-node-agent"))]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .context(
            "no glory-node-agent binary beside this one or in /usr/bin: set agent_binary \
             (cargo build --release -p glory-node-agent)",
        )
}

/// The enrollment environment in `<state_dir>/boot`, built when missing.
pub fn ensure_boot_files(config: &ProvisionerConfig) -> anyhow::Result<(ServedFile, ServedFile)> {
    let dir = config.state_dir.join("boot");
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    if !(kernel.is_file() && initrd.is_file()) {
        let spec = BuildSpec::detect(agent_binary(config)?)?;
        info!(dir = %dir.display(), "building the enrollment environment (first start)");
        let built = initramfs::build(&spec, &dir)?;
        info!(kernel = %built.kernel_version, bytes = built.bytes, "enrollment environment built");
    }
    Ok((ServedFile::load(kernel)?, ServedFile::load(initrd)?))
}

fn dhcp_socket(config: &ProvisionerConfig) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    if let Some(dev) = &config.interface {
        socket
            .bind_device(Some(dev.as_bytes()))
            .with_context(|| format!("bind DHCP to interface {dev}"))?;
    }
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.dhcp_port));
    socket
        .bind(&addr.into())
        .with_context(|| format!("bind DHCP on {addr} (root, and no other DHCP server there?)"))?;
    Ok(socket.into())
}

/// Start everything; runs until `shutdown`.
pub async fn start(
    config: ProvisionerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    config.validate()?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("create {}", config.state_dir.display()))?;
    let trust = match (&config.ca_cert, &config.ca_cert_hash) {
        (Some(path), _) => CaTrust::Pem(
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        ),
        (None, Some(hash)) => CaTrust::Sha256(hash.clone()),
        (None, None) => CaTrust::FirstUse,
    };
    let mut masters = vec![config.cluster_master];
    masters.extend(
        config
            .cluster_masters
            .iter()
            .filter(|m| **m != config.cluster_master),
    );
    let base = config.http_base();
    let (kernel, initrd) = ensure_boot_files(&config)?;
    let identity = crate::uplink::identity(
        &config.state_dir,
        &config.name,
        &base,
        config.token.as_deref(),
        &trust,
        &masters,
        &shutdown,
    )
    .await?;
    // Image parts come from the cluster master's content URL, HTTPS when its API is.
    let client = glory_content::http_client(Some(&identity.ca_pem))?;
    let uplink = crate::uplink::start(
        identity,
        config.state_dir.join("identity.json"),
        config.name.clone(),
        base.clone(),
        masters,
        shutdown.clone(),
    )?;

    // TFTP: the boot programs, copied from Debian's ipxe package.
    let tftp_dir = config.state_dir.join("tftp");
    std::fs::create_dir_all(&tftp_dir)?;
    let mut files = Vec::new();
    for (name, src) in [
        ("undionly.kpxe", &config.undionly),
        ("ipxe.efi", &config.ipxe_efi),
    ] {
        let dest = tftp_dir.join(name);
        match std::fs::copy(src, &dest) {
            Ok(_) => files.push((name.to_string(), ServedFile::load(dest)?)),
            Err(e) => {
                warn!(file = %src.display(), error = %e, "boot program missing (install Debian's ipxe)")
            }
        }
    }
    let tftp_addr = SocketAddr::from((config.server_ip, config.tftp_port));
    if config.tftp_port != 0 {
        let tftp = async_tftp::server::TftpServerBuilder::with_dir_ro(&tftp_dir)
            .map_err(|e| anyhow::anyhow!("TFTP directory {}: {e}", tftp_dir.display()))?
            .bind(tftp_addr)
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("bind TFTP on {tftp_addr}: {e}"))?;
        {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    r = tftp.serve() => if let Err(e) = r { warn!(error = %e, "TFTP server stopped") },
                }
            });
        }
    }

    // HTTP boot.
    let http_addr = SocketAddr::from((config.server_ip, config.http_port));
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("bind HTTP boot on {http_addr}"))?;
    let http_addr = listener.local_addr()?;
    let content = glory_content::ContentStore::open(config.state_dir.join("content"))
        .context("content cache")?;
    let swarms = match config.boot_p2p {
        false => None,
        true => Some(glory_content::swarm::Swarms::new(
            crate::p2p::TRACKER_INTERVAL_S,
            config.state_dir.join("torrents"),
            content.root().join("sha256"),
            config.seed_upload_kib,
        )),
    };
    let app = crate::http::router(Arc::new(BootHttp {
        base: base.clone(),
        kernel,
        initrd,
        files,
        kernel_args: config.kernel_args.clone(),
        uplink: uplink.clone(),
        content: glory_content::ContentCache::new(content),
        client,
        swarms,
    }));
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
        });
    }

    // DHCP.
    let mode = config.mode()?;
    let boot = BootConfig {
        mode,
        server: config.server_ip,
        subnet_mask: config.subnet_mask,
        router: config.router,
        dns: config.dns.clone(),
        ntp: config.ntp.clone(),
        domain: config.domain.clone(),
        lease_seconds: config.lease_seconds,
        bios_file: "undionly.kpxe".into(),
        uefi_file: "ipxe.efi".into(),
        script_url: format!("{base}/boot/{{mac}}.ipxe"),
    };
    let leases = LeaseConfig {
        first: config.range_first.unwrap_or(config.server_ip),
        last: config.range_last.unwrap_or(config.server_ip),
        lease_seconds: config.lease_seconds,
        reservations: config
            .reservations
            .iter()
            .filter_map(|(mac, ip)| Some((parse_mac(mac)?, *ip)))
            .collect(),
    };
    let dhcp_stats = if config.dhcp_port == 0 {
        Arc::default()
    } else {
        let mut dhcp = DhcpServer::from_std(
            dhcp_socket(&config)?,
            boot,
            leases,
            Some(config.state_dir.join("leases.json")),
            ReplyTo::Broadcast,
        )?;
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        dhcp.observe(seen_tx);
        let dhcp_stats = dhcp.stats.clone();
        {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = dhcp.serve(shutdown).await {
                    warn!(error = %e, "DHCP server stopped");
                }
            });
        }
        {
            let uplink = uplink.clone();
            tokio::spawn(async move {
                while let Some(seen) = seen_rx.recv().await {
                    let ip = seen.ip.map(|ip| ip.to_string());
                    let detail = match &ip {
                        Some(ip) => {
                            format!("DHCP {} {ip}, boot program {}", seen.kind, seen.boot_file)
                        }
                        None => format!(
                            "DHCP {} (proxy), boot program {}",
                            seen.kind, seen.boot_file
                        ),
                    };
                    uplink.report(BootProgress {
                        mac: seen.mac,
                        state: BootState::Discovered,
                        ip,
                        detail,
                        at_ms: glory_protocol::now_ms(),
                    });
                }
            });
        }
        dhcp_stats
    };
    if config.router_advertisements {
        if let Some(dev) = &config.interface {
            crate::ra::spawn(dev.clone(), shutdown.clone());
        }
    }
    info!(name = %config.name, http = %http_addr, tftp = %tftp_addr, mode = %config.mode, "provisioner serving its boot network");
    Ok(Running {
        http: http_addr,
        dhcp_stats,
    })
}
