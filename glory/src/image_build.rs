//! `glory image build NAME --suite bookworm [--packages a,b]`: a Debian root
//! filesystem (mmdebstrap, minbase with systemd) with the node agent installed and
//! started at boot, packed as a squashfs; the cluster's boot kernel and initramfs
//! (Debian's kernel, busybox, the agent: the enrollment environment, whose `/init`
//! also boots images); all three uploaded (with progress bars) and stored as the next
//! version of the image.
//!
//! Needs root, `mmdebstrap` and `squashfs-tools` (./test.sh installs them), and a
//! Debian mirror (the machine's own apt sources unless `--mirror` says otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::client::ApiClient;

/// What to build.
#[derive(Clone)]
pub struct BuildOptions {
    pub name: String,
    pub suite: String,
    pub packages: Vec<String>,
    pub mirror: Option<String>,
    /// The agent to install (default: `glory-node-agent` beside this binary).
    pub agent: Option<PathBuf>,
    pub description: String,
}

/// Packages every image has: an init, device management, the tools the agent and
/// operators expect.
pub const BASE_PACKAGES: &[&str] = &["systemd-sysv", "udev", "iproute2", "kmod", "procps"];

/// The agent's unit: started at boot, configured by the kernel command line the boot
/// gives it (token, cluster masters, CA hash), applying configuration to `/`.
const AGENT_UNIT: &str = "[Unit]
Description=GLORY-CL node agent
After=local-fs.target

[Service]
ExecStart=/usr/local/sbin/glory-node-agent --state-dir /var/lib/glory-agent --setup-root /
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
";

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Build the root filesystem of `opts` into `work/root.squashfs`.
pub fn build_rootfs(opts: &BuildOptions, agent: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    for tool in ["mmdebstrap", "mksquashfs"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is missing: apt-get install mmdebstrap squashfs-tools");
        }
    }
    for p in &opts.packages {
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.:".contains(&b))
        {
            bail!("--packages: {p:?} is not a Debian package name");
        }
    }
    let root = work.join("root");
    let mut include: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
    include.extend(opts.packages.iter().cloned());
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", include.join(",")))
        .arg("--quiet")
        .arg(&opts.suite)
        .arg(&root);
    if let Some(m) = &opts.mirror {
        cmd.arg(m);
    }
    eprintln!("building a {} root filesystem (mmdebstrap)", opts.suite);
    run(&mut cmd, "mmdebstrap")?;
    // The agent, its unit, enabled.
    let sbin = root.join("usr/local/sbin");
    std::fs::create_dir_all(&sbin)?;
    // Without its debug information (a debug build is 130 MB, stripped about 20).
    let installed = sbin.join("glory-node-agent");
    if !glory_provisioner::initramfs::strip_debug(agent, &installed) {
        std::fs::copy(agent, &installed).with_context(|| format!("copy {}", agent.display()))?;
    }
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(units.join("multi-user.target.wants"))?;
    std::fs::write(units.join("glory-node-agent.service"), AGENT_UNIT)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/glory-node-agent.service",
        units.join("multi-user.target.wants/glory-node-agent.service"),
    )?;
    // Each boot is a new machine to systemd; first-boot configuration names it.
    std::fs::write(root.join("etc/machine-id"), "")?;
    std::fs::write(root.join("etc/hostname"), "glory-node\n")?;
    // The network is up before init runs (the initramfs configured it); nothing in
    // the image may take it down.
    let out = work.join("root.squashfs");
    eprintln!("packing {}", out.display());
    run(
        Command::new("mksquashfs").arg(&root).arg(&out).args([
            "-comp",
            "zstd",
            "-noappend",
            "-quiet",
            "-no-progress",
            "-no-xattrs",
        ]),
        "mksquashfs",
    )?;
    Ok(out)
}

/// Build, upload and store a new version of the image: its record.
pub async fn build(client: &ApiClient, opts: BuildOptions) -> anyhow::Result<Value> {
    let config = glory_provisioner::config::ProvisionerConfig {
        agent_binary: opts.agent.clone(),
        ..Default::default()
    };
    let agent = glory_provisioner::run::agent_binary(&config)?;
    let work = tempfile::Builder::new()
        .prefix("glory-image-")
        .tempdir_in(std::env::temp_dir())?;
    let (rootfs, boot) = {
        let (agent, dir, opts2) = (agent.clone(), work.path().to_path_buf(), opts.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let rootfs = build_rootfs(&opts2, &agent, &dir)?;
            eprintln!("building the boot kernel and initramfs");
            let spec = glory_provisioner::initramfs::BuildSpec::detect(agent)?;
            let boot = glory_provisioner::initramfs::build(&spec, &dir.join("boot"))?;
            Ok((rootfs, boot))
        })
        .await??
    };
    let kernel = crate::cli_images::upload(client, "kernel", &boot.kernel).await?;
    let initrd = crate::cli_images::upload(client, "initrd", &boot.initrd).await?;
    let rootfs = crate::cli_images::upload(client, "rootfs", &rootfs).await?;
    let description = if opts.description.is_empty() {
        format!(
            "{} minbase + {}; kernel {}",
            opts.suite,
            BASE_PACKAGES
                .iter()
                .map(|s| s.to_string())
                .chain(opts.packages.iter().cloned())
                .collect::<Vec<_>>()
                .join(","),
            boot.kernel_version
        )
    } else {
        opts.description
    };
    let body = json!({"name": opts.name, "kernel": kernel, "initrd": initrd, "rootfs": rootfs,
        "suite": opts.suite, "packages": opts.packages, "description": description});
    client
        .call(reqwest::Method::POST, "/api/v1/images", Some(body))
        .await
}
