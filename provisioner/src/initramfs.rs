//! The enrollment environment: a boot kernel and a small initramfs whose `/init` brings the
//! network up and runs the node agent, which then enrolls with the cluster master.
//!
//! Built reproducibly: the same inputs give the same bytes (entries sorted; mtimes, owners
//! and inode numbers fixed; a gzip header without a time), so its sha256 names it. The cpio
//! "newc" archive is written here rather than by the `cpio` program.
//!
//! Contents: `/bin/busybox` (its applets linked by `/init` at boot), `/init` and the udhcpc
//! event script (`initramfs/init.sh`, `initramfs/udhcpc.sh`), the agent at
//! `/sbin/glory-node-agent` with the libraries `ldd` lists and the loader its `PT_INTERP`
//! names, the NIC drivers and what they depend on in `modules.dep` (their load order in
//! `/etc/glory/modules`), and minimal `/etc` files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

const INIT_SCRIPT: &str = include_str!("initramfs/init.sh");
const UDHCPC_SCRIPT: &str = include_str!("initramfs/udhcpc.sh");

/// Drivers always tried, by name: virtio's PCI transport (not a dependency of `virtio_net`
/// in `modules.dep`, but without it no virtio NIC is found) and common server NICs. Those
/// the kernel does not have as modules are skipped.
pub const DEFAULT_MODULES: &str = "virtio_pci virtio_net e1000 e1000e igb ixgbe i40e bnxt_en tg3 \
    virtio_blk ahci sd_mod nvme loop squashfs overlay";

/// Where the agent lives in the image; `/init` runs it from there.
pub const AGENT_PATH: &str = "sbin/glory-node-agent";
/// The modules `/init` loads, one absolute path a line, dependencies first.
const MODULE_LIST_PATH: &str = "etc/glory/modules";

/// What goes into the enrollment environment, all from the build host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The kernel image (`/boot/vmlinuz-VER`), copied as it is.
    pub kernel: PathBuf,
    /// `/lib/modules/VER` of that kernel; its name is the kernel version.
    pub modules_dir: PathBuf,
    /// A busybox binary (Debian's `busybox-static`).
    pub busybox: PathBuf,
    /// The `glory-node-agent` binary.
    pub agent: PathBuf,
    /// Modules wanted beyond [`DEFAULT_MODULES`], by name (`mlx5_core`).
    pub extra_modules: Vec<String>,
}

/// What [`build`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// `out_dir/vmlinuz`.
    pub kernel: PathBuf,
    /// `out_dir/initrd.img`: a gzip-compressed newc cpio archive.
    pub initrd: PathBuf,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    /// The name of the modules directory.
    pub kernel_version: String,
    /// Size of `initrd.img` in bytes (compressed, as served).
    pub bytes: u64,
}

impl BuildSpec {
    /// The host's newest kernel that has its modules installed, and `/bin/busybox`.
    pub fn detect(agent: PathBuf) -> anyhow::Result<Self> {
        Self::detect_in(Path::new("/"), agent)
    }

    fn detect_in(root: &Path, agent: PathBuf) -> anyhow::Result<Self> {
        let (boot, modules_root) = (root.join("boot"), root.join("lib/modules"));
        let mut versions: Vec<String> = fs::read_dir(&boot)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let version = name.strip_prefix("vmlinuz-")?.to_string();
                let dep = modules_root.join(&version).join("modules.dep");
                dep.is_file().then_some(version)
            })
            .collect();
        versions.sort_by_key(|v| version_key(v));
        let Some(version) = versions.pop() else {
            bail!(
                "no kernel in {} with its modules in {}: install Debian's linux-image-amd64",
                boot.display(),
                modules_root.display()
            );
        };
        let busybox = root.join("bin/busybox");
        if !busybox.is_file() {
            bail!("no {}: install Debian's busybox-static", busybox.display());
        }
        if !agent.is_file() {
            bail!("no node agent binary at {}", agent.display());
        }
        Ok(Self {
            kernel: boot.join(format!("vmlinuz-{version}")),
            modules_dir: modules_root.join(&version),
            busybox,
            agent,
            extra_modules: Vec::new(),
        })
    }
}

/// Orders versions with runs of digits compared as numbers (`6.1.0-57` after `6.1.0-9`).
fn version_key(version: &str) -> Vec<(u64, String)> {
    let (mut key, mut rest) = (Vec::new(), version);
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let other = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        key.push((number.parse().unwrap_or(0), tail[..other].to_string()));
        rest = &tail[other..];
    }
    key
}

/// Writes `out_dir/vmlinuz` and `out_dir/initrd.img`, each through a temporary file
/// renamed into place, so a server never hands out half a file.
pub fn build(spec: &BuildSpec, out_dir: &Path) -> anyhow::Result<Built> {
    let kernel_version = spec
        .modules_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .with_context(|| format!("no kernel version in {}", spec.modules_dir.display()))?;
    fs::create_dir_all(out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    // The agent without its debug information: a debug build is 130 MB, stripped about
    // 20; the guest unpacks (and the network carries) every byte under emulation.
    let stripped = out_dir.join(".glory-node-agent.stripped");
    let spec = &match strip_debug(&spec.agent, &stripped) {
        true => BuildSpec {
            agent: stripped.clone(),
            ..spec.clone()
        },
        false => spec.clone(),
    };
    let image = image_tree(spec, &kernel_version)?;

    let kernel = out_dir.join("vmlinuz");
    let (kernel_sha256, _) = write_atomically(&kernel, |out| {
        let mut src = File::open(&spec.kernel)
            .with_context(|| format!("open kernel {}", spec.kernel.display()))?;
        io::copy(&mut src, out).context("copy kernel")?;
        Ok(())
    })?;
    let initrd = out_dir.join("initrd.img");
    let written = write_atomically(&initrd, |out| {
        // GzBuilder writes mtime 0 and no file name: the header carries no build time.
        let mut cpio = NewcWriter::new(GzBuilder::new().write(out, Compression::default()));
        image.write_to(&mut cpio)?;
        cpio.finish()?.finish()?;
        Ok(())
    });
    let _ = fs::remove_file(&stripped);
    let (initrd_sha256, bytes) = written?;
    tracing::info!(%kernel_version, bytes, %initrd_sha256, "built the enrollment initramfs");
    Ok(Built {
        kernel,
        initrd,
        kernel_sha256,
        initrd_sha256,
        kernel_version,
        bytes,
    })
}

/// `strip --strip-debug` of `binary` into `out`; false (use the binary as it is) when
/// binutils' strip is missing or fails (not an ELF file).
/// Copy `binary` to `out` without its debug information; false when `strip` failed.
pub fn strip_debug(binary: &Path, out: &Path) -> bool {
    std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(out)
        .arg(binary)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Lays out the image's entries.
fn image_tree(spec: &BuildSpec, kernel_version: &str) -> anyhow::Result<Tree> {
    let mut tree = Tree::default();
    for dir in "proc sys dev run tmp bin sbin usr/bin usr/sbin var/lib".split(' ') {
        tree.insert(dir, S_IFDIR | 0o755, Content::None);
    }
    tree.insert("root", S_IFDIR | 0o700, Content::None);
    tree.insert("var/lib/glory-agent", S_IFDIR | 0o700, Content::None);
    // The kernel opens /dev/console for /init before anything is mounted.
    tree.insert("dev/console", S_IFCHR | 0o600, Content::Device(5, 1));
    let files = [
        ("init", 0o755, INIT_SCRIPT),
        ("usr/share/udhcpc/default.script", 0o755, UDHCPC_SCRIPT),
        ("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", 0o644, "root:x:0:\n"),
        ("etc/hosts", 0o644, "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
        ("etc/nsswitch.conf", 0o644, "hosts: files dns\n"),
    ];
    for (path, mode, text) in files {
        tree.insert(path, S_IFREG | mode, Content::Bytes(text.into()));
    }

    tree.host_file("bin/busybox", &spec.busybox)?;
    tree.host_file(AGENT_PATH, &spec.agent)?;
    // A dynamic busybox (Debian's `busybox` rather than `busybox-static`) works too.
    for binary in [&spec.busybox, &spec.agent] {
        for lib in runtime_libraries(binary)? {
            tree.host_file(lib.to_string_lossy().trim_start_matches('/'), &lib)?;
        }
    }

    let dep_path = spec.modules_dir.join("modules.dep");
    let modules_dep =
        fs::read_to_string(&dep_path).with_context(|| format!("read {}", dep_path.display()))?;
    let wanted: Vec<String> = DEFAULT_MODULES
        .split(' ')
        .map(str::to_string)
        .chain(spec.extra_modules.iter().cloned())
        .collect();
    let mut list = String::new();
    for relative in module_load_order(&modules_dep, &wanted)? {
        if !relative.ends_with(".ko") {
            // Debian bookworm's modules are uncompressed (CONFIG_MODULE_COMPRESS_NONE); a
            // kernel with .ko.xz or .ko.zst modules needs a decompression step here.
            bail!("module {relative} is compressed: only uncompressed .ko modules are supported");
        }
        let inside = format!("lib/modules/{kernel_version}/{relative}");
        tree.host_file(&inside, &spec.modules_dir.join(&relative))?;
        list.push_str(&format!("/{inside}\n"));
    }
    tree.insert(
        MODULE_LIST_PATH,
        S_IFREG | 0o644,
        Content::Bytes(list.into_bytes()),
    );
    Ok(tree)
}

/// The module's name as the kernel knows it: `kernel/x/virtio-rng.ko.xz` -> `virtio_rng`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.find(".ko")
        .map_or(file, |end| &file[..end])
        .replace('-', "_")
}

/// The modules to load for `wanted` (names), as paths relative to the modules directory,
/// each after the modules it depends on. Wanted modules that `modules.dep` does not list
/// (absent, or built into the kernel) are skipped.
pub fn module_load_order(modules_dep: &str, wanted: &[String]) -> anyhow::Result<Vec<String>> {
    let (mut deps, mut by_name) = (HashMap::new(), HashMap::new());
    for (module, rest) in modules_dep.lines().filter_map(|line| line.split_once(':')) {
        deps.insert(module.trim(), rest.split_whitespace().collect());
        by_name.insert(module_name(module.trim()), module.trim());
    }
    fn visit<'a>(
        module: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        visiting: &mut HashSet<&'a str>,
        order: &mut Vec<&'a str>,
    ) -> anyhow::Result<()> {
        if order.contains(&module) {
            return Ok(());
        }
        if !visiting.insert(module) {
            bail!("modules.dep has a dependency cycle through {module}");
        }
        for dep in deps.get(module).into_iter().flatten() {
            visit(dep, deps, visiting, order)?;
        }
        visiting.remove(module);
        order.push(module);
        Ok(())
    }
    let (mut order, mut visiting) = (Vec::new(), HashSet::new());
    for name in wanted {
        match by_name.get(&name.replace('-', "_")) {
            Some(module) => visit(module, &deps, &mut visiting, &mut order)?,
            None => tracing::debug!(module = %name, "not in modules.dep: skipped"),
        }
    }
    Ok(order.into_iter().map(str::to_string).collect())
}

/// The shared libraries and the loader a binary needs at run time, as absolute host paths:
/// what `ldd` lists. ld.so names itself in that list by the path in the binary's
/// `PT_INTERP`, which is where the image needs it. A file that is not a dynamic executable
/// (a static busybox, a small test file) needs none.
fn runtime_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("run ldd (Debian package libc-bin)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = format!("{stdout}{stderr}");
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        bail!("ldd {} failed: {}", binary.display(), text.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("ldd {}", binary.display()))
}

/// The paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// the loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
fn parse_ldd(output: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, target)) if target.trim().starts_with("not found") => {
                bail!("library {} not found", name.trim())
            }
            Some((_, target)) => target,
            None => line,
        };
        if let Some(path) = target
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// What an entry of the image holds.
enum Content {
    None,
    Bytes(Vec<u8>),
    /// A host file and its size, read while the archive is written (the agent: 100+ MB).
    HostFile(PathBuf, u64),
    /// A device's major and minor numbers.
    Device(u32, u32),
}

/// The image's entries (mode with the file type) by path without the leading `/`, in
/// path order, which puts every directory before its contents.
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<String, (u32, Content)>,
}

impl Tree {
    /// Adds an entry and any parent directory not yet there.
    fn insert(&mut self, path: &str, mode: u32, content: Content) {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let key = dir.to_string_lossy().into_owned();
            self.nodes
                .entry(key)
                .or_insert((S_IFDIR | 0o755, Content::None));
            parent = dir.parent();
        }
        self.nodes.insert(path.to_string(), (mode, content));
    }

    /// A copy of a host file, symlinks resolved, with the host file's permissions.
    fn host_file(&mut self, path: &str, source: &Path) -> anyhow::Result<()> {
        let resolved =
            fs::canonicalize(source).with_context(|| format!("resolve {}", source.display()))?;
        let meta = fs::metadata(&resolved)?;
        if !meta.is_file() {
            bail!("{} is not a regular file", resolved.display());
        }
        let mode = S_IFREG | (meta.permissions().mode() & 0o7777);
        self.insert(path, mode, Content::HostFile(resolved, meta.len()));
        Ok(())
    }

    fn write_to<W: Write>(&self, cpio: &mut NewcWriter<W>) -> anyhow::Result<()> {
        for (path, (mode, content)) in &self.nodes {
            let (rdev, size, mut data): (_, _, Box<dyn Read>) = match content {
                Content::None => ((0, 0), 0, Box::new(io::empty())),
                Content::Bytes(bytes) => ((0, 0), bytes.len() as u64, Box::new(&bytes[..])),
                Content::HostFile(source, size) => {
                    let file =
                        File::open(source).with_context(|| format!("open {}", source.display()))?;
                    ((0, 0), *size, Box::new(file))
                }
                Content::Device(major, minor) => ((*major, *minor), 0, Box::new(io::empty())),
            };
            cpio.entry(path, *mode, rdev, size, &mut data)
                .with_context(|| format!("archive /{path}"))?;
        }
        Ok(())
    }
}

/// A writer of the cpio "newc" format (the one the kernel unpacks): a 110-byte ASCII
/// header of "070701" and 13 hex fields, the NUL-terminated name, then the data, name and
/// data each padded to 4 bytes. Owners and mtimes are 0 and inode numbers count up, so the
/// output depends only on the entries given.
pub struct NewcWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
}

impl<W: Write> NewcWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    /// One entry: `mode` includes the file type (`0o100644`); `rdev` is a device's
    /// (major, minor); exactly `size` bytes are taken from `data`.
    pub fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let nlink = if mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, [ino, mode, nlink], size, rdev)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            let message = format!("{name}: {copied} bytes instead of {size}");
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
        }
        self.offset += size;
        self.pad()
    }

    /// Writes the `TRAILER!!!` entry and hands back the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", [0, 0, 1], 0, (0, 0))?;
        Ok(self.out)
    }

    fn header(
        &mut self,
        name: &str,
        [ino, mode, nlink]: [u32; 3],
        size: u64,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: too big"));
        let size = u32::try_from(size).map_err(|_| too_big())?;
        let name_size = name.len() as u32 + 1;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.offset += 110 + u64::from(name_size);
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - self.offset % 4) % 4;
        self.out.write_all(&[0u8; 3][..padding as usize])?;
        self.offset += padding;
        Ok(())
    }
}

/// Fills `dest` through a temporary file in the same directory, synced and renamed into
/// place; returns the sha256 (hex) and size of what is now on disk.
fn write_atomically(
    dest: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> anyhow::Result<()>,
) -> anyhow::Result<(String, u64)> {
    let name = dest.file_name().context("no file name")?.to_string_lossy();
    let temp = dest.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let file = File::create(&temp).with_context(|| format!("create {}", temp.display()))?;
        let mut out = BufWriter::new(file);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
            .with_context(|| format!("sync {}", temp.display()))?;
        let mut hasher = Sha256::new();
        let bytes = io::copy(&mut File::open(&temp)?, &mut hasher)?;
        fs::rename(&temp, dest).with_context(|| format!("rename to {}", dest.display()))?;
        Ok((hex::encode(hasher.finalize()), bytes))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    /// An entry read back: name, mode, rdev, data.
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// Reads a newc archive's entries before the trailer, checking that every header starts
    /// 4-byte aligned.
    fn read_newc(archive: &[u8]) -> Vec<Entry> {
        let (mut entries, mut at) = (Vec::new(), 0usize);
        loop {
            assert_eq!(at % 4, 0);
            let header = std::str::from_utf8(&archive[at..at + 110]).unwrap();
            assert_eq!(&header[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&header[6 + 8 * i..][..8], 16).unwrap();
            let (name_size, size) = (field(11) as usize, field(6) as usize);
            let name = String::from_utf8(archive[at + 110..][..name_size - 1].to_vec()).unwrap();
            let data = (at + 110 + name_size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                return entries;
            }
            let content = archive[data..data + size].to_vec();
            entries.push((name, field(1), (field(9), field(10)), content));
            at = (data + size).div_ceil(4) * 4;
        }
    }

    #[test]
    fn newc_writer_writes_headers_padding_and_trailer() {
        let mut cpio = NewcWriter::new(Vec::new());
        let mut add = |name, mode, rdev, data: &[u8]| {
            let size = data.len() as u64;
            cpio.entry(name, mode, rdev, size, &mut &data[..]).unwrap()
        };
        add("bin", S_IFDIR | 0o755, (0, 0), b"");
        add("bin/hi", S_IFREG | 0o644, (0, 0), b"hi\n");
        add("dev/console", S_IFCHR | 0o600, (5, 1), b"");
        let out = cpio.finish().unwrap();
        // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check. Names are padded so that data starts at a multiple of 4
        // (110 + 4 -> 116, 110 + 7 -> 120, 110 + 12 -> 124, 110 + 11 -> 124), data too.
        let header = |fields: [u32; 13]| {
            let hex: Vec<String> = fields.iter().map(|f| format!("{f:08x}")).collect();
            format!("070701{}", hex.concat())
        };
        let expected = [
            header([1, 0o40755, 0, 0, 2, 0, 0, 0, 0, 0, 0, 4, 0]) + "bin\0\0\0",
            header([2, 0o100644, 0, 0, 1, 0, 3, 0, 0, 0, 0, 7, 0]) + "bin/hi\0\0\0\0hi\n\0",
            header([3, 0o20600, 0, 0, 1, 0, 0, 0, 0, 5, 1, 12, 0]) + "dev/console\0\0\0",
            header([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0]) + "TRAILER!!!\0\0\0\0",
        ];
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expected.concat());
        let entries = read_newc(&out);
        assert_eq!(entries[1].3, b"hi\n");
        assert_eq!(entries[2].2, (5, 1));

        // A source shorter than announced is an error, not a corrupt archive.
        let mut cpio = NewcWriter::new(Vec::new());
        let result = cpio.entry("x", S_IFREG | 0o644, (0, 0), 10, &mut &b"abc"[..]);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    const FAKE_MODULES_DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn modules_load_after_their_dependencies() {
        let order = |wanted: &str| -> Vec<String> {
            let wanted: Vec<String> = wanted.split(' ').map(str::to_string).collect();
            let order = module_load_order(FAKE_MODULES_DEP, &wanted).unwrap();
            order.iter().map(|path| module_name(path)).collect()
        };
        assert_eq!(
            order(DEFAULT_MODULES).join(" "),
            "virtio_pci_legacy_dev virtio_pci_modern_dev virtio_ring virtio virtio_pci \
             failover net_failover virtio_net e1000"
        );
        // Each module once, after its dependencies; names given with '-' or '_' match.
        assert_eq!(
            order("virtio-rng virtio"),
            ["virtio_ring", "virtio", "virtio_rng"]
        );
        assert!(order("absent").is_empty());
        let paths = module_load_order(FAKE_MODULES_DEP, &["virtio_pci".into()]).unwrap();
        assert_eq!(paths[0], "kernel/drivers/virtio/virtio_pci_legacy_dev.ko");
        assert!(module_load_order("a.ko: b.ko\nb.ko: a.ko\n", &["a".into()]).is_err());
        assert_eq!(module_name("x/virtio-rng.ko.xz"), "virtio_rng");
    }

    #[test]
    fn ldd_output_gives_libraries_and_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1b)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1c)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f1d)\n";
        let expected = [
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ];
        assert_eq!(parse_ldd(out).unwrap(), expected.map(PathBuf::from));
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    /// A fake host: small files for the kernel, busybox and agent, and two fake modules.
    fn fake_host(root: &Path, version: &str) -> PathBuf {
        let modules = root.join("lib/modules").join(version);
        let virtio = modules.join("kernel/drivers/virtio");
        for dir in [&virtio, &root.join("boot"), &root.join("bin")] {
            fs::create_dir_all(dir).unwrap();
        }
        let dep = "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio.ko:\n";
        fs::write(modules.join("modules.dep"), dep).unwrap();
        fs::write(virtio.join("virtio.ko"), b"virtio module").unwrap();
        fs::write(virtio.join("virtio_pci.ko"), b"pci module").unwrap();
        let kernel = root.join(format!("boot/vmlinuz-{version}"));
        fs::write(kernel, b"kernel image").unwrap();
        fs::write(root.join("bin/busybox"), b"#!/bin/false\n").unwrap();
        let agent = root.join("agent");
        fs::write(&agent, b"not an ELF file").unwrap();
        fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
        agent
    }

    #[test]
    fn detect_picks_the_newest_kernel_with_modules() {
        let root = tempfile::tempdir().unwrap();
        let agent = fake_host(root.path(), "6.1.0-9-amd64");
        fake_host(root.path(), "6.1.0-57-amd64");
        // Newer, but without modules: not a candidate.
        fs::write(root.path().join("boot/vmlinuz-6.2.0-1-amd64"), b"k").unwrap();
        let spec = BuildSpec::detect_in(root.path(), agent.clone()).unwrap();
        assert_eq!(spec.kernel, root.path().join("boot/vmlinuz-6.1.0-57-amd64"));
        assert!(spec.modules_dir.ends_with("lib/modules/6.1.0-57-amd64"));
        assert!(version_key("6.10.0-1") > version_key("6.9.0-1"));

        let empty = tempfile::tempdir().unwrap();
        let err = BuildSpec::detect_in(empty.path(), agent.clone()).unwrap_err();
        assert!(err.to_string().contains("linux-image-amd64"), "{err}");
        fs::remove_file(root.path().join("bin/busybox")).unwrap();
        let err = BuildSpec::detect_in(root.path(), agent).unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }

    #[test]
    fn builds_are_reproducible_and_hold_what_init_needs() {
        let root = tempfile::tempdir().unwrap();
        let agent = fake_host(root.path(), "6.1.0-test");
        let spec = BuildSpec::detect_in(root.path(), agent).unwrap();
        let first = build(&spec, &root.path().join("out1")).unwrap();
        // A later mtime on an input changes nothing. (ldd says the fakes are not dynamic.)
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&spec.busybox, b"#!/bin/false\n").unwrap();
        let second = build(&spec, &root.path().join("out2")).unwrap();
        let again = build(&spec, &root.path().join("out1")).unwrap();
        assert_eq!(first, again);
        let read = |path: &Path| fs::read(path).unwrap();
        assert_eq!(read(&first.initrd), read(&second.initrd));
        assert_eq!(first.initrd_sha256, second.initrd_sha256);
        assert_eq!(first.kernel_version, "6.1.0-test");
        assert_eq!(first.bytes, read(&first.initrd).len() as u64);
        assert_eq!(read(&first.kernel), b"kernel image");
        let kernel_sha256 = hex::encode(Sha256::digest(b"kernel image"));
        assert_eq!(first.kernel_sha256, kernel_sha256);
        // Only the two results: no temporary file left behind.
        assert_eq!(fs::read_dir(root.path().join("out1")).unwrap().count(), 2);

        let gz = read(&first.initrd);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip header without a time");
        let mut cpio = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut cpio).unwrap();
        let entries = read_newc(&cpio);
        assert!(entries.windows(2).all(|pair| pair[0].0 < pair[1].0)); // path order
        let get = |path: &str| {
            let entry = entries.iter().find(|e| e.0 == path);
            entry.unwrap_or_else(|| panic!("{path} missing")).clone()
        };
        assert_eq!(get("init").1, S_IFREG | 0o755);
        assert_eq!(get("init").3, INIT_SCRIPT.as_bytes());
        let udhcpc_script = get("usr/share/udhcpc/default.script").3;
        assert_eq!(udhcpc_script, UDHCPC_SCRIPT.as_bytes());
        assert_eq!(get("sbin/glory-node-agent").3, b"not an ELF file");
        assert_eq!(get("bin/busybox").3, b"#!/bin/false\n");
        assert_eq!(get("var/lib/glory-agent").1, S_IFDIR | 0o700);
        assert_eq!(get("dev/console").2, (5, 1));
        for path in "etc/passwd etc/group etc/hosts proc sys run tmp".split(' ') {
            get(path);
        }
        let modules = "lib/modules/6.1.0-test/kernel/drivers/virtio";
        assert_eq!(get(&format!("{modules}/virtio_pci.ko")).3, b"pci module");
        let list = format!("/{modules}/virtio.ko\n/{modules}/virtio_pci.ko\n");
        assert_eq!(get(MODULE_LIST_PATH).3, list.as_bytes());
    }
}
