//! Processes the cluster master asks this node to run (component masters), supervised
//! across group master sessions. Each process has an id and an epoch: a start with a
//! higher epoch replaces what runs under that id, a repeat of the current epoch only
//! confirms it. A process that ends is started again under the same epoch after a
//! backoff ([`crate::restart`]); one that keeps failing quickly is reported `failing`.
//! Every change is reported up; a new session first reports the state of every
//! supervised process, so nothing is lost while the agent was between masters.
//!
//! A process gets a clean environment: a default `PATH` (unless the spec sets one) and
//! the spec's variables, nothing of the agent's own (which may hold tokens). Its stdout
//! and stderr are logged and the last lines kept for the reports.
//!
//! On a simulated host nothing is executed: the process is recorded as running until it
//! is stopped or the simulated server loses power.
//!
//! A service instance (a spec with [`glory_protocol::InstanceSpec`]) also has a port
//! (picked here when the service says 0), health checks ([`crate::instances`]) and a
//! graceful stop: it runs in its own process group, which gets SIGTERM, then SIGKILL
//! after the stop timeout. A simulated instance is healthy at once.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use glory_protocol::{ProcessExit, ProcessReport, ProcessSpec, ProcessState};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{oneshot, Notify};
use tracing::{info, warn};

use crate::instances::{check_once, pick_port, simulated_port, with_port, HealthTracker};
use crate::restart::{RestartDecision, RestartPolicy, Restarts};

/// `PATH` of a process whose spec does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Output lines kept per process, and their bytes in all.
const OUTPUT_LINES: usize = 20;
const OUTPUT_BYTES: usize = 4096;
/// A longer line is cut to this many bytes.
const OUTPUT_LINE_BYTES: usize = 512;
/// After a process exited, how long its output pipes may take to drain (a child it
/// left behind may hold them open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(250);

/// The last lines a process wrote, bounded in lines and bytes.
#[derive(Default)]
struct Output {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Output {
    fn push(&mut self, line: String) {
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > OUTPUT_LINES || self.bytes > OUTPUT_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

struct Entry {
    spec: ProcessSpec,
    report: ProcessReport,
    restarts: Restarts,
    output: Arc<Mutex<Output>>,
    /// Ends what is under way for this entry: the running process's waiter (which
    /// kills it) or a pending restart. Dropping it does the same.
    cancel: Option<oneshot::Sender<()>>,
    /// A service instance's port, fixed for the epoch (restarts keep it).
    port: Option<u16>,
}

impl Entry {
    fn output_lines(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines()
    }
}

#[derive(Default)]
struct Inner {
    procs: HashMap<String, Entry>,
    /// Reports not yet sent up.
    unsent: Vec<ProcessReport>,
}

/// The processes of one agent run. Tasks it spawns hold it weakly: when the agent run
/// ends and drops it, every process is killed and no restart happens.
pub struct Supervisor {
    simulated: bool,
    policy: RestartPolicy,
    inner: Mutex<Inner>,
    /// Wakes the session when there are unsent reports.
    pub changed: Notify,
}

impl Supervisor {
    pub fn new(simulated: bool) -> Arc<Self> {
        Self::with_policy(simulated, RestartPolicy::default())
    }

    /// A supervisor whose restarts follow `policy`.
    pub fn with_policy(simulated: bool, policy: RestartPolicy) -> Arc<Self> {
        Arc::new(Supervisor {
            simulated,
            policy,
            inner: Mutex::default(),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, inner: &mut Inner, report: ProcessReport) {
        inner.unsent.push(report);
        self.changed.notify_one();
    }

    /// Reports to send now.
    pub fn take_unsent(&self) -> Vec<ProcessReport> {
        std::mem::take(&mut self.lock().unsent)
    }

    /// Everything supervised, for a new session (replaces what was unsent).
    pub fn snapshot(&self) -> Vec<ProcessReport> {
        let mut inner = self.lock();
        inner.unsent.clear();
        inner.procs.values().map(|e| e.report.clone()).collect()
    }

    /// The state of process `id`, if supervised.
    pub fn state(&self, id: &str) -> Option<ProcessReport> {
        self.lock().procs.get(id).map(|e| e.report.clone())
    }

    pub fn start(self: &Arc<Self>, spec: ProcessSpec) {
        let mut inner = self.lock();
        if let Some(entry) = inner.procs.get(&spec.id) {
            if entry.report.epoch > spec.epoch {
                return; // a newer master already replaced this one
            }
            if entry.report.epoch == spec.epoch {
                // Running, or waiting for its restart: only confirm.
                let again = entry.report.clone();
                self.record(&mut inner, again);
                return;
            }
        }
        if let Some(mut old) = inner.procs.remove(&spec.id) {
            if let Some(cancel) = old.cancel.take() {
                let _ = cancel.send(());
            }
        }
        let id = spec.id.clone();
        let mut entry = Entry {
            report: ProcessReport::new(spec.id.clone(), spec.epoch, ProcessState::Running),
            spec,
            restarts: Restarts::new(self.policy),
            output: Arc::default(),
            cancel: None,
            port: None,
        };
        if let Some(instance) = &entry.spec.instance {
            let port = match instance.port {
                0 if self.simulated => Ok(simulated_port(&id)),
                0 => pick_port(),
                port => Ok(port),
            };
            match port {
                Ok(port) => entry.port = Some(port),
                Err(e) => warn!(process = %id, error = %e, "no free port for the instance"),
            }
            entry.report.port = entry.port;
        }
        if self.simulated || entry.spec.command.is_empty() {
            entry.report.run = 1;
            if entry.spec.instance.is_some() {
                entry.report.health = Some(glory_protocol::HealthStatus {
                    healthy: true,
                    failures: 0,
                    detail: "simulated host: healthy".into(),
                    since_ms: glory_protocol::now_ms(),
                });
            }
            entry.report.detail = if self.simulated {
                "simulated host: recorded as running".into()
            } else {
                "no command: holding the role".into()
            };
            info!(process = %id, epoch = entry.report.epoch, "process recorded as running");
            let report = entry.report.clone();
            inner.procs.insert(id, entry);
            self.record(&mut inner, report);
            return;
        }
        self.launch(&mut entry);
        let report = entry.report.clone();
        inner.procs.insert(id, entry);
        self.record(&mut inner, report);
    }

    /// Start the entry's process (again); on failure, schedule the next try.
    fn launch(self: &Arc<Self>, entry: &mut Entry) {
        let spec = &entry.spec;
        entry.report.run += 1;
        entry.report.health = None;
        let port = entry.port;
        let word = |w: &String| match port {
            Some(p) => with_port(w, p),
            None => w.clone(),
        };
        let env: std::collections::BTreeMap<String, String> =
            spec.env.iter().map(|(k, v)| (k.clone(), word(v))).collect();
        let mut command = tokio::process::Command::new(word(&spec.command[0]));
        command
            .args(spec.command[1..].iter().map(word))
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(p) = port {
            command.env("PORT", p.to_string());
        }
        if spec.instance.is_some() {
            // Its own process group, so a stop reaches whatever it started.
            command.process_group(0);
        }
        let now = Instant::now();
        match command.spawn() {
            Ok(mut child) => {
                entry.restarts.started(now);
                let mut readers = Vec::new();
                if let Some(out) = child.stdout.take() {
                    readers.push(tokio::spawn(capture(
                        out,
                        entry.output.clone(),
                        spec.id.clone(),
                        "stdout",
                    )));
                }
                if let Some(err) = child.stderr.take() {
                    readers.push(tokio::spawn(capture(
                        err,
                        entry.output.clone(),
                        spec.id.clone(),
                        "stderr",
                    )));
                }
                let (tx, rx) = oneshot::channel();
                entry.cancel = Some(tx);
                entry.report.state = ProcessState::Running;
                entry.report.pid = child.id();
                entry.report.detail = "running".into();
                entry.report.restart_in_ms = None;
                entry.report.output = entry.output_lines();
                info!(process = %spec.id, epoch = spec.epoch, run = entry.report.run, pid = ?entry.report.pid, "process started");
                let instance = spec.instance.as_ref();
                let stop_timeout = instance.map(|i| Duration::from_millis(i.stop_timeout_ms));
                if let (Some(check), Some(port)) = (instance.and_then(|i| i.health.clone()), port) {
                    tokio::spawn(health_loop(
                        Arc::downgrade(self),
                        spec.id.clone(),
                        spec.epoch,
                        entry.report.run,
                        port,
                        check,
                        env,
                    ));
                }
                tokio::spawn(wait(
                    Arc::downgrade(self),
                    spec.id.clone(),
                    spec.epoch,
                    entry.report.run,
                    child,
                    (rx, stop_timeout),
                    readers,
                ));
            }
            Err(e) => {
                let detail = format!("cannot start {:?}: {e}", spec.command[0]);
                let decision = entry.restarts.ended(now);
                entry.report.state = ProcessState::Failed;
                entry.report.pid = None;
                entry.report.last_exit = Some(ProcessExit {
                    code: None,
                    signal: None,
                    ran_ms: 0,
                    detail: detail.clone(),
                });
                entry.report.detail = detail;
                self.schedule_restart(entry, decision);
            }
        }
    }

    /// The entry's process ended (or could not start): start it again after the
    /// decision's delay, unless it is stopped or replaced meanwhile.
    fn schedule_restart(self: &Arc<Self>, entry: &mut Entry, decision: RestartDecision) {
        entry.report.failures = decision.failures;
        entry.report.failing = decision.failing;
        entry.report.restart_in_ms = Some(decision.delay.as_millis() as u64);
        entry.report.output = entry.output_lines();
        let (tx, rx) = oneshot::channel::<()>();
        entry.cancel = Some(tx);
        let log = |failing: bool| {
            if failing {
                warn!(process = %entry.spec.id, epoch = entry.spec.epoch, failures = decision.failures, delay = ?decision.delay, detail = %entry.report.detail, "process keeps failing; restarting after a backoff");
            } else {
                info!(process = %entry.spec.id, epoch = entry.spec.epoch, failures = decision.failures, delay = ?decision.delay, detail = %entry.report.detail, "process ended; restarting after a backoff");
            }
        };
        log(decision.failing);
        let weak = Arc::downgrade(self);
        let (id, epoch, run) = (entry.spec.id.clone(), entry.spec.epoch, entry.report.run);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(decision.delay) => {}
                _ = rx => return, // stopped, replaced, or the supervisor is gone
            }
            let Some(this) = weak.upgrade() else { return };
            let mut inner = this.lock();
            let Some(entry) = inner.procs.get_mut(&id) else {
                return;
            };
            if entry.spec.epoch != epoch || entry.report.run != run {
                return;
            }
            this.launch(entry);
            let report = entry.report.clone();
            this.record(&mut inner, report);
        });
    }

    /// Run `id` of `epoch` ended with `status` after its output drained.
    fn exited(
        self: &Arc<Self>,
        id: &str,
        epoch: u64,
        run: u32,
        status: std::io::Result<std::process::ExitStatus>,
    ) {
        let mut inner = self.lock();
        let Some(entry) = inner.procs.get_mut(id) else {
            return;
        };
        if entry.spec.epoch != epoch || entry.report.run != run {
            return;
        }
        let decision = entry.restarts.ended(Instant::now());
        let (code, signal, detail) = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                (s.code(), s.signal(), s.to_string())
            }
            Err(e) => (None, None, format!("wait failed: {e}")),
        };
        entry.report.state = ProcessState::Exited { code };
        entry.report.pid = None;
        entry.report.health = None;
        entry.report.last_exit = Some(ProcessExit {
            code,
            signal,
            ran_ms: decision.ran.as_millis() as u64,
            detail: detail.clone(),
        });
        entry.report.detail = format!("exited: {detail}");
        self.schedule_restart(entry, decision);
        let report = entry.report.clone();
        self.record(&mut inner, report);
    }

    /// A health check of run `run` of `id` at `epoch` changed the instance's health.
    fn health_changed(&self, id: &str, epoch: u64, run: u32, status: glory_protocol::HealthStatus) {
        let mut inner = self.lock();
        let Some(entry) = inner.procs.get_mut(id) else {
            return;
        };
        if entry.spec.epoch != epoch || entry.report.run != run {
            return;
        }
        if status.healthy {
            info!(process = %id, epoch, detail = %status.detail, "instance healthy");
        } else {
            warn!(process = %id, epoch, failures = status.failures, detail = %status.detail, "instance unhealthy");
        }
        entry.report.health = Some(status);
        entry.report.output = entry.output_lines();
        let report = entry.report.clone();
        self.record(&mut inner, report);
    }

    /// Whether run `run` of `id` at `epoch` is the one running now.
    fn is_running(&self, id: &str, epoch: u64, run: u32) -> bool {
        self.lock().procs.get(id).is_some_and(|e| {
            e.spec.epoch == epoch && e.report.run == run && e.report.state == ProcessState::Running
        })
    }

    /// Stop process `id` if its epoch is at most `epoch`.
    pub fn stop(&self, id: &str, epoch: u64) {
        let mut inner = self.lock();
        if inner.procs.get(id).is_none_or(|e| e.report.epoch > epoch) {
            return;
        }
        if let Some(mut entry) = inner.procs.remove(id) {
            if let Some(cancel) = entry.cancel.take() {
                let _ = cancel.send(());
            }
            info!(process = %id, epoch = entry.report.epoch, "process stopped");
            entry.report.state = ProcessState::Exited { code: None };
            entry.report.pid = None;
            entry.report.restart_in_ms = None;
            entry.report.failing = false;
            entry.report.health = None;
            entry.report.output = entry.output_lines();
            entry.report.detail = "stopped by the cluster master".into();
            let report = entry.report;
            self.record(&mut inner, report);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for entry in self.lock().procs.values_mut() {
            if let Some(cancel) = entry.cancel.take() {
                let _ = cancel.send(());
            }
        }
    }
}

/// Check an instance's health while run `run` is the one running; report changes.
async fn health_loop(
    supervisor: Weak<Supervisor>,
    id: String,
    epoch: u64,
    run: u32,
    port: u16,
    check: glory_protocol::HealthCheck,
    env: std::collections::BTreeMap<String, String>,
) {
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    let kind = check.kind.clone();
    let mut tracker = HealthTracker::new(check, Instant::now());
    loop {
        tokio::time::sleep(tracker.next_check_in()).await;
        if !supervisor
            .upgrade()
            .is_some_and(|s| s.is_running(&id, epoch, run))
        {
            return;
        }
        let (ok, detail) = match check_once(&kind, port, timeout, &env).await {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        let now_ms = glory_protocol::now_ms();
        if let Some(status) = tracker.observe(ok, detail, Instant::now(), now_ms) {
            match supervisor.upgrade() {
                Some(s) => s.health_changed(&id, epoch, run, status),
                None => return,
            }
        }
    }
}

/// Wait for a run to end (or to be told to kill it), then report the exit. A service
/// instance (a stop timeout given) is stopped gracefully: SIGTERM to its process
/// group, SIGKILL to the group after the timeout.
async fn wait(
    supervisor: Weak<Supervisor>,
    id: String,
    epoch: u64,
    run: u32,
    mut child: tokio::process::Child,
    (kill, stop_timeout): (oneshot::Receiver<()>, Option<Duration>),
    readers: Vec<tokio::task::JoinHandle<()>>,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        // Stopped, replaced, or the supervisor is gone (the sender was dropped).
        _ = kill => {
            match (stop_timeout, child.id()) {
                (Some(grace), Some(pid)) => {
                    use nix::sys::signal::{killpg, Signal};
                    let group = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = killpg(group, Signal::SIGTERM);
                    let ended = tokio::time::timeout(grace, child.wait()).await.is_ok();
                    if !ended {
                        warn!(process = %id, epoch, ?grace, "instance ignored SIGTERM; killing it");
                    }
                    let _ = killpg(group, Signal::SIGKILL);
                    let _ = child.kill().await;
                }
                _ => {
                    let _ = child.kill().await;
                }
            }
            return;
        }
    };
    // The last lines usually explain the exit: let the pipes drain first.
    let _ = tokio::time::timeout(OUTPUT_DRAIN, drain(readers)).await;
    if let Some(supervisor) = supervisor.upgrade() {
        supervisor.exited(&id, epoch, run, status);
    }
}

/// Wait for every output reader to reach the end of its stream.
async fn drain(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// Log a process's output stream line by line and keep the last lines. Lines are cut
/// at [`OUTPUT_LINE_BYTES`], so a stream without newlines cannot grow memory.
async fn capture(
    stream: impl AsyncRead + Unpin,
    output: Arc<Mutex<Output>>,
    id: String,
    name: &'static str,
) {
    let mut reader = BufReader::new(stream);
    let mut line: Vec<u8> = Vec::new();
    let flush = |line: &mut Vec<u8>| {
        let text = String::from_utf8_lossy(line)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        line.clear();
        info!(process = %id, stream = name, line = %text, "process output");
        output.lock().unwrap_or_else(|p| p.into_inner()).push(text);
    };
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            _ => break,
        };
        let (take, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = OUTPUT_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        reader.consume(take);
        if end {
            flush(&mut line);
        }
    }
    if !line.is_empty() {
        flush(&mut line);
    }
}

#[cfg(test)]
mod tests;
