//! Real processes for end-to-end tests: spawn the workspace's binaries with their logs
//! in files, stop them politely (SIGTERM) or brutally (SIGKILL), and kill whatever is
//! left when the test ends. Only processes this test started are touched, by PID.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::binary;

/// The processes a test started, by name.
#[derive(Default)]
pub struct Procs(Vec<(String, Child)>);

impl Procs {
    /// Start workspace binary `bin` as `name`, stdout and stderr to `log`. The log
    /// level is `GLORY_TEST_LOG` (default `info`). Stdin stays open (a pipe), as the
    /// simulated agents' process reads its commands there.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        &mut self,
        name: &str,
        bin: &str,
        args: &[S],
        log: &Path,
    ) -> anyhow::Result<u32> {
        self.spawn_command(name, Command::new(binary(bin)?), args, log)
    }

    /// [`Procs::spawn`] inside node `node`'s namespace of a fault-injection net.
    pub fn spawn_in<S: AsRef<std::ffi::OsStr>>(
        &mut self,
        net: &crate::faultnet::FaultNet,
        node: &str,
        name: &str,
        bin: &str,
        args: &[S],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let command = net.command(node, binary(bin)?.as_os_str());
        self.spawn_command(name, command, args, log)
    }

    fn spawn_command<S: AsRef<std::ffi::OsStr>>(
        &mut self,
        name: &str,
        mut command: Command,
        args: &[S],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let out = std::fs::File::create(log)?;
        let bin = format!("{:?}", command.get_program());
        let child = command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("GLORY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawn {bin}"))?;
        let pid = child.id();
        self.0.push((name.to_string(), child));
        Ok(pid)
    }

    fn take(&mut self, name: &str) -> anyhow::Result<Child> {
        let idx = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .context("no such process")?;
        Ok(self.0.remove(idx).1)
    }

    /// SIGTERM one process and wait (up to 10 s) for it to exit.
    pub fn terminate(&mut self, name: &str) -> anyhow::Result<ExitStatus> {
        let mut child = self.take(name)?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{name} did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (up to `timeout`) for a process to exit on its own.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = &mut self
                .0
                .iter_mut()
                .find(|(n, _)| n == name)
                .context("no such process")?
                .1;
            if let Some(status) = child.try_wait()? {
                self.take(name)?;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{name} still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether process `name` was started and not yet stopped or seen to exit.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// Send `signal` (`STOP`, `CONT`, ...) to process `name`.
    pub fn signal(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        let child = &self
            .0
            .iter()
            .find(|(n, _)| n == name)
            .context("no such process")?
            .1;
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {name}: {status}");
        Ok(())
    }

    /// SIGKILL: no goodbyes, no resignation.
    pub fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        let mut child = self.take(name)?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback UDP address free right now.
pub fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback UDP port")
}

/// A loopback TCP address free right now.
pub fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback TCP port")
}
