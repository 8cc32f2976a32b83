//! Processes the cluster master asks this node to run (component masters), supervised
//! across group master sessions. Each process has an id and an epoch: a start with a
//! higher epoch replaces what runs under that id, a repeat of the running epoch only
//! confirms it. Every change is reported up; a new session first reports the state of
//! every supervised process, so nothing is lost while the agent was between masters.
//!
//! On a simulated host nothing is executed: the process is recorded as running until it
//! is stopped or the simulated server loses power.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};

use glory_protocol::{ProcessReport, ProcessSpec, ProcessState};
use tokio::sync::{oneshot, Notify};
use tracing::{info, warn};

struct Entry {
    report: ProcessReport,
    /// Tells a real process's waiter task to kill it.
    kill: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Inner {
    procs: HashMap<String, Entry>,
    /// Reports not yet sent up.
    unsent: Vec<ProcessReport>,
}

/// The processes of one agent run.
pub struct Supervisor {
    simulated: bool,
    inner: Mutex<Inner>,
    /// Wakes the session when there are unsent reports.
    pub changed: Notify,
}

impl Supervisor {
    pub fn new(simulated: bool) -> Arc<Self> {
        Arc::new(Supervisor {
            simulated,
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
                let again = entry.report.clone();
                self.record(&mut inner, again);
                return;
            }
        }
        if let Some(mut old) = inner.procs.remove(&spec.id) {
            if let Some(kill) = old.kill.take() {
                let _ = kill.send(());
            }
        }
        let mut report = ProcessReport {
            id: spec.id.clone(),
            epoch: spec.epoch,
            state: ProcessState::Running,
            pid: None,
            detail: String::new(),
        };
        let mut kill = None;
        if self.simulated || spec.command.is_empty() {
            report.detail = if self.simulated {
                "simulated host: recorded as running".into()
            } else {
                "no command: holding the role".into()
            };
        } else {
            let mut command = tokio::process::Command::new(&spec.command[0]);
            command
                .args(&spec.command[1..])
                .envs(&spec.env)
                .stdin(Stdio::null())
                .kill_on_drop(true);
            match command.spawn() {
                Ok(child) => {
                    report.pid = child.id();
                    let (tx, rx) = oneshot::channel();
                    kill = Some(tx);
                    tokio::spawn(self.clone().wait(spec.id.clone(), spec.epoch, child, rx));
                }
                Err(e) => {
                    report.state = ProcessState::Failed;
                    report.detail = format!("cannot start {:?}: {e}", spec.command[0]);
                }
            }
        }
        info!(process = %spec.id, epoch = spec.epoch, state = ?report.state, pid = ?report.pid, "process started");
        inner.procs.insert(
            spec.id.clone(),
            Entry {
                report: report.clone(),
                kill,
            },
        );
        self.record(&mut inner, report);
    }

    async fn wait(
        self: Arc<Self>,
        id: String,
        epoch: u64,
        mut child: tokio::process::Child,
        kill: oneshot::Receiver<()>,
    ) {
        let (code, detail) = tokio::select! {
            status = child.wait() => match status {
                Ok(s) => (s.code(), format!("exited: {s}")),
                Err(e) => (None, format!("wait failed: {e}")),
            },
            _ = kill => {
                let _ = child.kill().await;
                (None, "stopped".to_string())
            }
        };
        let mut inner = self.lock();
        let Some(entry) = inner.procs.get_mut(&id) else {
            return;
        };
        if entry.report.epoch != epoch {
            return;
        }
        warn!(process = %id, epoch, %detail, "process ended");
        entry.kill = None;
        entry.report.state = ProcessState::Exited { code };
        entry.report.detail = detail;
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
            if let Some(kill) = entry.kill.take() {
                let _ = kill.send(());
            }
            info!(process = %id, epoch = entry.report.epoch, "process stopped");
            entry.report.state = ProcessState::Exited { code: None };
            entry.report.pid = None;
            entry.report.detail = "stopped by the cluster master".into();
            let report = entry.report;
            self.record(&mut inner, report);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for entry in self.lock().procs.values_mut() {
            if let Some(kill) = entry.kill.take() {
                let _ = kill.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(epoch: u64, command: &[&str]) -> ProcessSpec {
        ProcessSpec {
            id: "pool/p/master".into(),
            epoch,
            command: command.iter().map(|s| s.to_string()).collect(),
            env: [("GLORY_EPOCH".to_string(), epoch.to_string())].into(),
        }
    }

    #[tokio::test]
    async fn simulated_processes_are_recorded_and_epochs_fence() {
        let s = Supervisor::new(true);
        s.start(spec(2, &["fs-master"]));
        assert_eq!(
            s.state("pool/p/master").unwrap().state,
            ProcessState::Running
        );
        s.start(spec(1, &["fs-master"])); // older epoch: ignored
        assert_eq!(s.state("pool/p/master").unwrap().epoch, 2);
        s.stop("pool/p/master", 1); // older epoch: ignored
        assert!(s.state("pool/p/master").is_some());
        s.stop("pool/p/master", 2);
        assert!(s.state("pool/p/master").is_none());
        let reports = s.take_unsent();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[1].state, ProcessState::Exited { code: None });
    }

    #[tokio::test]
    async fn real_processes_run_and_their_exit_is_reported() {
        let s = Supervisor::new(false);
        s.start(spec(
            1,
            &["sh", "-c", "test \"$GLORY_EPOCH\" = 1 && exit 7"],
        ));
        let first = s.take_unsent();
        assert_eq!(first[0].state, ProcessState::Running);
        assert!(first[0].pid.is_some());
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                s.changed.notified().await;
                if s.state("pool/p/master").unwrap().state != ProcessState::Running {
                    break;
                }
            }
        })
        .await
        .expect("exit reported");
        assert_eq!(
            s.state("pool/p/master").unwrap().state,
            ProcessState::Exited { code: Some(7) }
        );
        s.start(spec(2, &["/nonexistent/program"]));
        assert_eq!(
            s.state("pool/p/master").unwrap().state,
            ProcessState::Failed
        );
        s.start(spec(3, &["sleep", "30"]));
        let pid = s.state("pool/p/master").unwrap().pid.unwrap();
        s.stop("pool/p/master", 3);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
        );
    }
}
