//! Real etcd members for tests: [`EtcdProcess`] (one member) and [`EtcdCluster`]
//! (several), each on free loopback ports with its data in a temporary directory, so
//! that the tests of any crate can run against etcd. Dropping one kills the members it
//! started (by their process ids, nothing else) and deletes the data.
//!
//! A test that needs etcd fails, rather than passes quietly, when the `etcd` binary is
//! missing; `./test.sh` installs Debian's `etcd-server`.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

/// How long members may take to become healthy after a start or restart.
const START_PATIENCE: Duration = Duration::from_secs(20);
/// How often health and leadership are polled.
const POLL: Duration = Duration::from_millis(50);
/// Attempts at a start when another process takes one of the chosen ports first.
const START_ATTEMPTS: usize = 3;

/// Where the `etcd` binary is: the first on `PATH`, then the usual places.
fn etcd_binary() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let usual = [PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")];
    on_path
        .into_iter()
        .chain(usual)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .context(
            "etcd is not installed (looked on PATH, in /usr/bin and /usr/local/bin); \
             ./test.sh installs it (Debian package etcd-server)",
        )
}

/// Ports that were free a moment ago. All listeners are held until every port is
/// chosen so that one call never returns the same port twice.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("find free loopback ports")?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("read free port")
}

/// A temporary directory, in memory when possible: etcd syncs its log on every write,
/// which is slow on a disk and costs nothing in tmpfs.
fn temp_dir() -> anyhow::Result<TempDir> {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut builder = tempfile::Builder::new();
        builder.prefix("glory-etcd-");
        builder
    };
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder
        .tempdir()
        .context("create temporary directory for etcd")
}

struct Member {
    name: String,
    /// The address it listens on (loopback, or its network namespace's).
    host: std::net::IpAddr,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }
}

/// A cluster of etcd members on loopback. Members are numbered from 0.
pub struct EtcdCluster {
    binary: PathBuf,
    dir: TempDir,
    members: Vec<Member>,
    token: String,
    /// The network namespace the members run in (None: this one).
    netns: Option<String>,
}

impl EtcdCluster {
    /// Start `size` members and wait until all of them are healthy. A single member
    /// runs with a short election timeout (500 ms), which also lowers etcd's minimum
    /// lease TTL to 1 s; a cluster keeps etcd's defaults (1 s, minimum TTL 2 s) so that
    /// a busy machine does not cause spurious elections.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        Self::start_on(size, None).await
    }

    /// Start `size` members inside network namespace `netns`, listening on `host` (an
    /// address of that namespace), as [`EtcdCluster::start`] does on loopback.
    pub async fn start_in(
        size: usize,
        netns: &str,
        host: std::net::Ipv4Addr,
    ) -> anyhow::Result<Self> {
        Self::start_on(size, Some((netns.to_string(), host))).await
    }

    async fn start_on(
        size: usize,
        place: Option<(String, std::net::Ipv4Addr)>,
    ) -> anyhow::Result<Self> {
        if size == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let binary = etcd_binary()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let mut cluster = Self::prepare(binary.clone(), size, place.clone())?;
            for member in 0..size {
                cluster.spawn(member)?;
            }
            let mut healthy = Ok(());
            for member in 0..size {
                healthy = cluster.wait_healthy(member, START_PATIENCE).await;
                if healthy.is_err() {
                    break;
                }
            }
            match healthy {
                Ok(()) => return Ok(cluster),
                // Someone took a port between our check and etcd's bind: try new ones.
                Err(error) if cluster.any_log_contains("address already in use") => {
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    fn prepare(
        binary: PathBuf,
        size: usize,
        place: Option<(String, std::net::Ipv4Addr)>,
    ) -> anyhow::Result<Self> {
        // A namespace of the test's own has every port free; these were free here.
        let ports = free_ports(size * 2)?;
        let host = place
            .as_ref()
            .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |(_, ip)| {
                (*ip).into()
            });
        let members = ports
            .chunks_exact(2)
            .enumerate()
            .map(|(index, pair)| Member {
                name: format!("m{index}"),
                host,
                client_port: pair[0],
                peer_port: pair[1],
                child: None,
            })
            .collect();
        Ok(EtcdCluster {
            binary,
            dir: temp_dir()?,
            members,
            token: format!("glory-test-{:016x}", rand::random::<u64>()),
            netns: place.map(|(netns, _)| netns),
        })
    }

    fn member(&self, member: usize) -> &Member {
        assert!(
            member < self.members.len(),
            "etcd member {member} does not exist (the cluster has {})",
            self.members.len()
        );
        &self.members[member]
    }

    fn log_path(&self, member: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.member(member).name))
    }

    /// Launch one member (its data dir is kept between launches).
    fn spawn(&mut self, member: usize) -> anyhow::Result<()> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let (heartbeat_ms, election_ms) = if self.members.len() == 1 {
            (50, 500)
        } else {
            (100, 1000)
        };
        let log_path = self.log_path(member);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicate etcd log handle")?;
        let data_dir = self.dir.path().join(&self.member(member).name);
        let m = self.member(member);
        let mut command = match &self.netns {
            Some(netns) => {
                let mut wrapped = Command::new("ip");
                // `ip netns exec` execs etcd: the child's pid is etcd's.
                wrapped.args(["netns", "exec", netns]).arg(&self.binary);
                wrapped
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--heartbeat-interval")
            .arg(heartbeat_ms.to_string())
            .arg("--election-timeout")
            .arg(election_ms.to_string())
            .arg("--logger")
            .arg("zap")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("run {}", self.binary.display()))?;
        self.members[member].child = Some(child);
        Ok(())
    }

    /// The client URLs of all members, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The client URL of one member.
    pub fn endpoint(&self, member: usize) -> String {
        self.member(member).client_url()
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Where the members keep their data (one sub-directory each) and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kill one member with SIGKILL (by its process id) and reap it.
    pub fn kill(&mut self, member: usize) {
        self.member(member);
        if let Some(mut child) = self.members[member].child.take() {
            // It may have exited already; either way it is gone afterwards.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a killed member again on the same ports and data, and wait until it is
    /// healthy.
    pub async fn restart(&mut self, member: usize) -> anyhow::Result<()> {
        if self.member(member).child.is_some() {
            bail!("etcd member {member} is still running");
        }
        self.spawn(member)?;
        self.wait_healthy(member, START_PATIENCE).await
    }

    /// Start several killed members again together (a majority cannot become healthy
    /// one at a time), then wait until each is healthy.
    pub async fn restart_many(&mut self, members: &[usize]) -> anyhow::Result<()> {
        for &member in members {
            if self.member(member).child.is_some() {
                bail!("etcd member {member} is still running");
            }
            self.spawn(member)?;
        }
        for &member in members {
            self.wait_healthy(member, START_PATIENCE).await?;
        }
        Ok(())
    }

    /// Poll the member's `/health` until it reports healthy (it has a leader and
    /// answers reads), or fail with the end of its log.
    pub async fn wait_healthy(&mut self, member: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let (host, port) = (self.member(member).host, self.member(member).client_port);
        loop {
            if let Some(child) = self.members[member].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.members[member].child = None;
                    bail!(
                        "etcd member {member} exited with {status} before it was healthy; log:\n{}",
                        self.log_tail(member)
                    );
                }
            } else {
                bail!("etcd member {member} is not running");
            }
            let last = match health(host, port).await {
                Ok(true) => return Ok(()),
                Ok(false) => "unhealthy".to_owned(),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "etcd member {member} not healthy within {within:?} (last: {last}); log:\n{}",
                    self.log_tail(member)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The index of the member that leads right now, asked of the running members.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let mut ids = Vec::new();
            let mut leader_id = None;
            for (index, member) in self.members.iter().enumerate() {
                if member.child.is_none() {
                    ids.push(None);
                    continue;
                }
                let status = async {
                    let options = ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(1))
                        .with_timeout(Duration::from_secs(1));
                    let mut client = Client::connect([member.client_url()], Some(options)).await?;
                    client.status().await
                };
                match status.await {
                    Ok(status) => {
                        ids.push(status.header().map(|header| header.member_id()));
                        if status.leader() != 0 {
                            leader_id = Some(status.leader());
                        }
                    }
                    Err(error) => {
                        tracing::debug!(member = index, %error, "etcd status failed");
                        ids.push(None);
                    }
                }
            }
            if let Some(leader) = leader_id {
                if let Some(index) = ids.iter().position(|id| *id == Some(leader)) {
                    return Ok(index);
                }
            }
            if Instant::now() >= deadline {
                bail!("no etcd member reported a running leader within {START_PATIENCE:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last lines of a member's log, for failure messages.
    pub fn log_tail(&self, member: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(member)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn any_log_contains(&self, needle: &str) -> bool {
        (0..self.members.len()).any(|member| {
            std::fs::read_to_string(self.log_path(member))
                .map(|text| text.contains(needle))
                .unwrap_or(false)
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in 0..self.members.len() {
            self.kill(member);
        }
    }
}

/// Ask `/health` on a client port. etcd 3.4 answers `{"health":"true"}` once the member
/// has a leader and can serve.
async fn health(host: std::net::IpAddr, port: u16) -> anyhow::Result<bool> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
        let ask = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(ask.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = timeout(Duration::from_secs(2), exchange)
        .await
        .context("health check timed out")??;
    Ok(answer.contains("\"health\":\"true\""))
}

/// One etcd member on free loopback ports: [`EtcdCluster`] of size one.
pub struct EtcdProcess {
    cluster: EtcdCluster,
}

impl EtcdProcess {
    /// Start a member and wait until it is healthy.
    pub async fn start() -> anyhow::Result<Self> {
        Ok(EtcdProcess {
            cluster: EtcdCluster::start(1).await?,
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    pub fn endpoint(&self) -> String {
        self.cluster.endpoint(0)
    }

    /// Kill the member with SIGKILL.
    pub fn kill(&mut self) {
        self.cluster.kill(0);
    }

    /// Start it again on the same ports and data, and wait until it is healthy.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.cluster.restart(0).await
    }

    pub fn log_tail(&self) -> String {
        self.cluster.log_tail(0)
    }
}
