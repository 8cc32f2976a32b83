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

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use glory_protocol::{ProcessExit, ProcessReport, ProcessSpec, ProcessState};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{oneshot, Notify};
use tracing::{info, warn};

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
        };
        if self.simulated || entry.spec.command.is_empty() {
            entry.report.run = 1;
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
        let mut command = tokio::process::Command::new(&spec.command[0]);
        command
            .args(&spec.command[1..])
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
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
                tokio::spawn(wait(
                    Arc::downgrade(self),
                    spec.id.clone(),
                    spec.epoch,
                    entry.report.run,
                    child,
                    rx,
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

/// Wait for a run to end (or to be told to kill it), then report the exit.
async fn wait(
    supervisor: Weak<Supervisor>,
    id: String,
    epoch: u64,
    run: u32,
    mut child: tokio::process::Child,
    kill: oneshot::Receiver<()>,
    readers: Vec<tokio::task::JoinHandle<()>>,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        // Stopped, replaced, or the supervisor is gone (the sender was dropped).
        _ = kill => {
            let _ = child.kill().await;
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
mod tests {
    use super::*;

    const ID: &str = "pool/p/master";

    fn spec(epoch: u64, command: &[&str]) -> ProcessSpec {
        ProcessSpec {
            id: ID.into(),
            epoch,
            command: command.iter().map(|s| s.to_string()).collect(),
            env: [("GLORY_EPOCH".to_string(), epoch.to_string())].into(),
        }
    }

    /// Restarts fast enough for tests: 50 ms, 100 ms, 200 ms ...
    fn quick() -> RestartPolicy {
        RestartPolicy {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(400),
            stable_after: Duration::from_secs(30),
            failing_after: 3,
        }
    }

    /// Wait until the supervised process satisfies `check`, or fail saying what it was.
    async fn wait_for(
        s: &Supervisor,
        what: &str,
        check: impl Fn(&ProcessReport) -> bool,
    ) -> ProcessReport {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = s.state(ID);
            if let Some(r) = state.as_ref().filter(|r| check(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; state: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn simulated_processes_are_recorded_and_epochs_fence() {
        let s = Supervisor::new(true);
        s.start(spec(2, &["fs-master"]));
        assert_eq!(s.state(ID).unwrap().state, ProcessState::Running);
        s.start(spec(1, &["fs-master"])); // older epoch: ignored
        assert_eq!(s.state(ID).unwrap().epoch, 2);
        s.stop(ID, 1); // older epoch: ignored
        assert!(s.state(ID).is_some());
        s.stop(ID, 2);
        assert!(s.state(ID).is_none());
        let reports = s.take_unsent();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[1].state, ProcessState::Exited { code: None });
    }

    #[tokio::test]
    async fn an_exiting_process_is_restarted_with_backoff_and_reported_failing() {
        let s = Supervisor::with_policy(false, quick());
        s.start(spec(
            1,
            &[
                "sh",
                "-c",
                "echo boom; echo oops >&2; test \"$GLORY_EPOCH\" = 1 && exit 7",
            ],
        ));
        let first = s.take_unsent();
        assert_eq!(first[0].state, ProcessState::Running);
        assert!(first[0].pid.is_some());
        assert_eq!(first[0].run, 1);
        // Every exit and every restart is reported, in order, with growing delays; the
        // reports are read as they come so a slow machine cannot skip one.
        let mut reports = first;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reports.iter().any(|r| r.failing) {
            assert!(Instant::now() < deadline, "never failing: {reports:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
            reports.extend(s.take_unsent());
        }
        let failing = reports.iter().find(|r| r.failing).unwrap().clone();
        assert_eq!(failing.state, ProcessState::Exited { code: Some(7) });
        assert_eq!(failing.epoch, 1, "restarts keep the epoch");
        assert_eq!((failing.run, failing.failures), (3, 3));
        assert_eq!(failing.restart_in_ms, Some(200));
        assert_eq!(failing.last_exit.as_ref().and_then(|e| e.code), Some(7));
        assert!(
            failing.output.contains(&"boom".to_string()),
            "{:?}",
            failing.output
        );
        assert!(
            failing.output.contains(&"oops".to_string()),
            "{:?}",
            failing.output
        );
        let delays: Vec<u64> = reports.iter().filter_map(|r| r.restart_in_ms).collect();
        assert_eq!(delays, [50, 100, 200]);
        let runs: Vec<u32> = reports.iter().map(|r| r.run).collect();
        assert_eq!(
            runs,
            [1, 1, 2, 2, 3, 3],
            "start, exit, restart, exit, restart, exit"
        );
        s.take_unsent();
        // A repeated start of the same epoch only confirms; a stop ends the restarts.
        s.start(spec(1, &["sh", "-c", "exit 7"]));
        let confirmed = s.take_unsent();
        assert!(
            !confirmed.is_empty() && confirmed.iter().all(|r| r.epoch == 1 && r.failures >= 3),
            "a confirmation, not a fresh start: {confirmed:?}"
        );
        s.stop(ID, 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(s.state(ID).is_none());
        assert!(
            s.take_unsent()
                .iter()
                .all(|r| r.state != ProcessState::Running),
            "nothing restarted after the stop"
        );
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_retried_and_fails() {
        let s = Supervisor::with_policy(false, quick());
        s.start(spec(2, &["/nonexistent/program"]));
        let r = s.state(ID).unwrap();
        assert_eq!(r.state, ProcessState::Failed);
        assert_eq!(r.restart_in_ms, Some(50));
        assert!(r.last_exit.unwrap().detail.contains("cannot start"));
        let r = wait_for(&s, "failing", |r| r.failing).await;
        assert_eq!((r.state, r.run), (ProcessState::Failed, 3));
    }

    #[tokio::test]
    async fn processes_get_a_clean_environment() {
        std::env::set_var("GLORY_TOKEN_AGENT_UNIT_TEST", "secret");
        let s = Supervisor::with_policy(false, quick());
        let mut with_env = spec(1, &["sh", "-c", "env; exit 3"]);
        with_env.env.insert("CONFIGURED".into(), "yes".into());
        s.start(with_env);
        let r = wait_for(&s, "the first exit", |r| r.last_exit.is_some()).await;
        let mut env = r.output.clone();
        env.sort();
        env.retain(|l| {
            l != "PWD="
                && !l.starts_with("PWD=")
                && !l.starts_with("SHLVL=")
                && l != "_=/usr/bin/env"
        });
        assert_eq!(
            env,
            [
                "CONFIGURED=yes".to_string(),
                "GLORY_EPOCH=1".to_string(),
                format!("PATH={DEFAULT_PATH}"),
            ],
            "only the spec's variables and a default PATH (sh adds PWD, SHLVL and _)"
        );
        s.stop(ID, 1);
    }

    #[tokio::test]
    async fn a_stopped_process_is_killed() {
        let s = Supervisor::new(false);
        s.start(spec(3, &["sleep", "30"]));
        let pid = s.state(ID).unwrap().pid.unwrap();
        s.stop(ID, 3);
        wait_gone(pid, "still runs after the stop").await;
    }

    #[tokio::test]
    async fn dropping_the_supervisor_kills_its_processes() {
        let s = Supervisor::new(false);
        s.start(spec(1, &["sleep", "30"]));
        let pid = s.state(ID).unwrap().pid.unwrap();
        drop(s);
        wait_gone(pid, "outlived its supervisor").await;
    }

    /// Wait (up to 10 s) until process `pid` is gone or a zombie; else fail with `why`.
    async fn wait_gone(pid: u32, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let gone = || {
            !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
        };
        while !gone() {
            assert!(Instant::now() < deadline, "process {pid} {why}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn output_keeps_the_last_lines_within_bounds() {
        let mut out = Output::default();
        for i in 0..100 {
            out.push(format!("line {i}"));
        }
        assert_eq!(out.lines().len(), OUTPUT_LINES);
        assert_eq!(out.lines().last().unwrap(), "line 99");
        for _ in 0..30 {
            out.push("x".repeat(OUTPUT_LINE_BYTES));
        }
        assert!(out.bytes <= OUTPUT_BYTES && out.lines().len() == OUTPUT_BYTES / OUTPUT_LINE_BYTES);
    }
}
