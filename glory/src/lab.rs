//! `glory up --lab-vms N`: a boot network in a network namespace of its own (a bridge,
//! tap devices, no route out), joined to this host by a veth pair whose host end
//! carries the provisioner and the masters' addresses; N QEMU virtual machines on the
//! bridge (TCG), registered with the `qemu` power driver and powered on one after
//! another. Each PXE-boots from the provisioner and enrolls. Dropping the lab stops
//! the VMs and removes the namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use tracing::{info, warn};

/// One lab virtual machine.
#[derive(Clone, Debug)]
pub struct LabVm {
    pub name: String,
    pub mac: String,
    pub uefi: bool,
    pub memory_mib: u32,
    /// Its QMP socket (the `qemu` power driver's address).
    pub qmp: PathBuf,
    /// Its serial console.
    pub console: PathBuf,
    /// Its virtual disk (a sparse raw file on virtio), if it has one.
    pub disk: Option<(PathBuf, u32)>,
}

/// The boot network: namespace, veth, bridge, taps and the VMs' processes.
pub struct Lab {
    pub netns: String,
    /// The host end of the veth pair (the provisioner's interface).
    pub host_if: String,
    /// The host's address on the boot network (/24).
    pub host_ip: Ipv4Addr,
    pub vms: Vec<LabVm>,
    children: Vec<Child>,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A /24 in 10.213.0.0/16 that no interface of this host uses.
fn free_subnet() -> anyhow::Result<u8> {
    let out = Command::new("ip").args(["-4", "-o", "addr"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = (std::process::id() % 200) as u8;
    (0..200u16)
        .map(|i| ((start as u16 + i) % 200 + 20) as u8)
        .find(|n| !text.contains(&format!(" 10.213.{n}.")))
        .context("no free 10.213.x.0/24 for the lab")
}

/// What the lab needs on this machine, with the Debian packages that bring it.
pub fn check_tools() -> anyhow::Result<()> {
    let need = [
        (
            "/usr/bin/qemu-system-x86_64",
            "qemu-system-x86 (from bookworm-backports beside qemu-utils 10)",
        ),
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
        ("/bin/busybox", "busybox-static"),
        ("/sbin/ip", "iproute2"),
    ];
    let missing: Vec<String> = need
        .iter()
        .filter(|(p, _)| !Path::new(p).exists())
        .map(|(p, pkg)| format!("{p} (install {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!("the lab needs: {}", missing.join(", "));
    }
    Ok(())
}

impl Lab {
    /// Create the network (the VMs come with [`Lab::start_vms`]).
    pub fn create(
        vms: usize,
        uefi: usize,
        memory_mib: u32,
        disk_mib: u32,
        dir: &Path,
    ) -> anyhow::Result<Lab> {
        check_tools()?;
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let subnet = free_subnet()?;
        let netns = format!("glory-lab-{pid}-{n}");
        let host_if = format!("glh{pid}x{n}");
        let peer = format!("gln{pid}x{n}");
        let host_ip = Ipv4Addr::new(10, 213, subnet, 1);
        std::fs::create_dir_all(dir)?;
        let mut lab = Lab {
            netns: netns.clone(),
            host_if: host_if.clone(),
            host_ip,
            vms: Vec::new(),
            children: Vec::new(),
        };
        run(&["ip", "netns", "add", &netns])?;
        let ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", netns.as_str()];
            all.extend_from_slice(args);
            run(&all)
        };
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer, "netns", &netns,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &host_if,
        ])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        ns(&["ip", "link", "set", "lo", "up"])?;
        ns(&["ip", "link", "add", "br0", "type", "bridge"])?;
        ns(&["ip", "link", "set", &peer, "master", "br0"])?;
        ns(&["ip", "link", "set", &peer, "up"])?;
        ns(&["ip", "link", "set", "br0", "up"])?;
        for i in 0..vms {
            let tap = format!("tap{i}");
            ns(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
            ns(&["ip", "link", "set", &tap, "master", "br0"])?;
            ns(&["ip", "link", "set", &tap, "up"])?;
            let uefi = i >= vms - uefi.min(vms);
            lab.vms.push(LabVm {
                name: format!("vm{i}"),
                mac: format!(
                    "52:54:00:{:02x}:{:02x}:{:02x}",
                    subnet,
                    (pid >> 8) as u8,
                    i as u8
                ),
                uefi,
                memory_mib,
                qmp: dir.join(format!("vm{i}.qmp")),
                console: dir.join(format!("vm{i}.console")),
                disk: (disk_mib > 0).then(|| (dir.join(format!("vm{i}.disk")), disk_mib)),
            });
        }
        info!(%netns, %host_if, %host_ip, vms, "lab network created");
        Ok(lab)
    }

    /// Start every VM paused (powered off): the `qemu` driver powers them on.
    pub fn start_vms(&mut self, dir: &Path) -> anyhow::Result<()> {
        for (i, vm) in self.vms.clone().iter().enumerate() {
            let _ = std::fs::remove_file(&vm.qmp);
            let mut args: Vec<String> = [
                "netns",
                "exec",
                &self.netns,
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-S",
                "-no-shutdown",
                "-display",
                "none",
                "-boot",
                "n",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(["-name".into(), vm.name.clone()]);
            args.extend(["-m".into(), vm.memory_mib.to_string()]);
            args.extend(["-serial".into(), format!("file:{}", vm.console.display())]);
            args.extend([
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", vm.qmp.display()),
            ]);
            args.extend([
                "-netdev".into(),
                format!("tap,id=n0,ifname=tap{i},script=no,downscript=no"),
            ]);
            if let Some((path, mib)) = &vm.disk {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("create {}", path.display()))?;
                f.set_len(u64::from(*mib) << 20)?;
                args.extend([
                    "-drive".into(),
                    format!("file={},if=virtio,format=raw", path.display()),
                ]);
            }
            if vm.uefi {
                let vars = dir.join(format!("{}-vars.fd", vm.name));
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .context("copy OVMF_VARS_4M.fd (install ovmf)")?;
                args.extend([
                    "-drive".into(),
                    "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                    "-drive".into(),
                    format!("if=pflash,format=raw,file={}", vars.display()),
                    // No iPXE option ROM: OVMF's own PXE asks for ipxe.efi over TFTP.
                    "-device".into(),
                    format!("virtio-net-pci,netdev=n0,mac={},romfile=", vm.mac),
                ]);
            } else {
                args.extend([
                    "-device".into(),
                    format!("virtio-net-pci,netdev=n0,mac={}", vm.mac),
                ]);
            }
            let child = Command::new("ip")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(
                    dir.join(format!("{}.qemu.log", vm.name)),
                )?))
                .spawn()
                .context("start qemu-system-x86_64")?;
            self.children.push(child);
            info!(vm = %vm.name, mac = %vm.mac, uefi = vm.uefi, "lab VM created (powered off)");
        }
        // QEMU creates its QMP socket at once; wait for them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for vm in &self.vms {
            while !vm.qmp.exists() {
                if std::time::Instant::now() > deadline {
                    bail!("{} did not start: see {}.qemu.log", vm.name, vm.name);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            // `ip netns exec` execs QEMU: the pid is QEMU's.
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = run(&["ip", "netns", "delete", &self.netns]) {
            warn!(netns = %self.netns, error = %e, "cannot remove the lab's namespace");
        }
        // The host end goes with its peer; make sure.
        let _ = run(&["ip", "link", "delete", &self.host_if]);
        info!(netns = %self.netns, "lab removed");
    }
}
