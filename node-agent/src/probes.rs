//! The probes the group master hands this agent: process monitors and custom checks,
//! each at its own interval. Their values join the next sample batch, labelled
//! `monitor=<name>`; a check's output goes with its `check.status` as text.
//!
//! Checks run as child processes (in their own process group, killed with it at the
//! timeout), at most [`MAX_CHECKS_RUNNING`] at once per agent process: a simulation of
//! thousands of nodes shares one machine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use glory_monitor::procs::{Matcher, Tracker};
use glory_protocol::monitoring::{CheckSpec, Probe, ProbeSpec, SeriesKey, MAX_CHECK_OUTPUT};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::host::Host;

/// Checks running at once in this process.
pub const MAX_CHECKS_RUNNING: usize = 16;
static CHECKS: Semaphore = Semaphore::const_new(MAX_CHECKS_RUNNING);

/// Nagios' "unknown": the check could not run, or timed out.
const UNKNOWN: u8 = 3;

type CheckSlot = Arc<Mutex<Option<(u8, String)>>>;

enum State {
    Process {
        matcher: Matcher,
        tracker: Tracker,
    },
    Check {
        /// The result of the last run, until it is sent.
        done: CheckSlot,
        running: Option<tokio::task::JoinHandle<()>>,
    },
}

struct Running {
    spec: ProbeSpec,
    /// When it runs next (ms); 0: at the next sample.
    next_ms: u64,
    state: State,
}

/// This agent's probes.
#[derive(Default)]
pub struct Probes {
    running: Vec<Running>,
}

impl Probes {
    /// Replace the set; probes that did not change keep their state (restart counts,
    /// a check in flight).
    pub fn set(&mut self, specs: Vec<ProbeSpec>) {
        let mut old = std::mem::take(&mut self.running);
        for spec in specs {
            if let Some(i) = old.iter().position(|r| r.spec == spec) {
                self.running.push(old.swap_remove(i));
                continue;
            }
            let state = match &spec.probe {
                Probe::Process(m) => match Matcher::new(m) {
                    Ok(matcher) => State::Process {
                        matcher,
                        tracker: Tracker::default(),
                    },
                    Err(e) => {
                        warn!(monitor = %spec.monitor, error = %e, "process monitor skipped");
                        continue;
                    }
                },
                Probe::Check(_) => State::Check {
                    done: CheckSlot::default(),
                    running: None,
                },
            };
            self.running.push(Running {
                spec,
                next_ms: 0,
                state,
            });
        }
        // Checks of removed probes stop with them.
        for r in old {
            if let State::Check {
                running: Some(task),
                ..
            } = r.state
            {
                task.abort();
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Run what is due at `now_ms`: process monitors give their values at once,
    /// checks start and give theirs at the first call after they finished.
    pub fn run(
        &mut self,
        host: &dyn Host,
        now_ms: u64,
        out: &mut dyn FnMut(&SeriesKey, f64),
        text: &mut dyn FnMut(&SeriesKey, String),
    ) {
        for r in &mut self.running {
            let monitor = r.spec.monitor.as_str();
            match (&mut r.state, &r.spec.probe) {
                (State::Check { done, running }, Probe::Check(check)) => {
                    if let Some((status, output)) = done.lock().ok().and_then(|mut d| d.take()) {
                        let key = SeriesKey::new("check.status").label("monitor", monitor);
                        out(&key, status as f64);
                        text(&key, output);
                    }
                    if now_ms >= r.next_ms && running.as_ref().is_none_or(|t| t.is_finished()) {
                        r.next_ms = now_ms + r.spec.interval_seconds.max(1) * 1000;
                        let (check, done) = (check.clone(), done.clone());
                        *running = Some(tokio::spawn(async move {
                            let result = run_check(&check).await;
                            if let Ok(mut slot) = done.lock() {
                                *slot = Some(result);
                            }
                        }));
                    }
                }
                (State::Process { matcher, tracker }, _) if now_ms >= r.next_ms => {
                    r.next_ms = now_ms + r.spec.interval_seconds.max(1) * 1000;
                    let found = host.processes(matcher, now_ms);
                    tracker.observe(monitor, &found, now_ms, out);
                }
                _ => {}
            }
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.set(Vec::new());
    }
}

/// Run a check: its exit code (3 when it could not run, was killed or timed out) and
/// the first [`MAX_CHECK_OUTPUT`] bytes of its output (stdout, then stderr).
pub async fn run_check(check: &CheckSpec) -> (u8, String) {
    let Some((program, args)) = check.command.split_first() else {
        return (UNKNOWN, "empty command".into());
    };
    let Ok(_permit) = CHECKS.acquire().await else {
        return (UNKNOWN, "checks are shutting down".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => return (UNKNOWN, format!("cannot run {program}: {e}")),
    };
    let pid = child.id();
    let timeout = Duration::from_secs(check.timeout_seconds.max(1));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let status = match output.status.code() {
                Some(code @ 0..=3) => code as u8,
                _ => UNKNOWN,
            };
            let mut text = output.stdout;
            text.extend_from_slice(&output.stderr);
            (status, truncate(&text))
        }
        Ok(Err(e)) => (UNKNOWN, format!("check failed: {e}")),
        Err(_) => {
            // The whole process group, so that what a shell started dies too.
            if let Some(pid) = pid {
                let _ = tokio::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status()
                    .await;
            }
            (UNKNOWN, format!("timed out after {} s", timeout.as_secs()))
        }
    }
}

/// At most [`MAX_CHECK_OUTPUT`] bytes, cut at a character boundary.
fn truncate(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_CHECK_OUTPUT + 4)]);
    let mut end = text.len().min(MAX_CHECK_OUTPUT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::SimHost;
    use glory_protocol::monitoring::ProcessMatch;
    use std::collections::BTreeMap;

    fn sh(script: &str, timeout_seconds: u64) -> CheckSpec {
        CheckSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            timeout_seconds,
        }
    }

    #[tokio::test]
    async fn checks_follow_the_nagios_convention() {
        assert_eq!(run_check(&sh("echo fine", 5)).await, (0, "fine\n".into()));
        assert_eq!(run_check(&sh("echo warn; exit 1", 5)).await.0, 1);
        let (status, out) = run_check(&sh("echo bad >&2; exit 2", 5)).await;
        assert_eq!((status, out.as_str()), (2, "bad\n"));
        assert_eq!(run_check(&sh("exit 7", 5)).await.0, UNKNOWN);
        let (status, out) = run_check(&sh("sleep 30", 1)).await;
        assert_eq!(status, UNKNOWN);
        assert!(out.contains("timed out"), "{out}");
        let missing = CheckSpec {
            command: vec!["/nonexistent/check".into()],
            timeout_seconds: 1,
        };
        assert_eq!(run_check(&missing).await.0, UNKNOWN);
        let (_, long) = run_check(&sh("head -c 10000 /dev/zero | tr '\\0' x", 5)).await;
        assert_eq!(long.len(), MAX_CHECK_OUTPUT);
    }

    #[tokio::test]
    async fn a_killed_simulated_daemon_reads_dead_then_restarted() {
        let host = SimHost::new(3);
        let mut probes = Probes::default();
        probes.set(vec![ProbeSpec {
            monitor: "ssh".into(),
            interval_seconds: 5,
            probe: Probe::Process(ProcessMatch {
                unit: Some("ssh.service".into()),
                ..ProcessMatch::default()
            }),
        }]);
        let read = |probes: &mut Probes, now: u64| {
            let mut got = BTreeMap::new();
            probes.run(
                &host,
                now,
                &mut |k, v| {
                    got.insert(k.item.clone(), v);
                },
                &mut |_, _| {},
            );
            got
        };
        let t0 = glory_protocol::now_ms();
        assert_eq!(read(&mut probes, t0)["proc.alive"], 1.0);
        assert!(read(&mut probes, t0 + 1000).is_empty(), "not due yet");
        host.set_process("sshd", false).unwrap();
        assert!(host.set_process("sshd", false).is_err());
        assert_eq!(read(&mut probes, t0 + 5000)["proc.count"], 0.0);
        host.set_process("sshd", true).unwrap();
        let back = read(&mut probes, t0 + 10_000);
        assert_eq!((back["proc.alive"], back["proc.restarts"]), (1.0, 1.0));
        assert!(host
            .set_process("nginx", true)
            .unwrap_err()
            .contains("sshd"));
    }
}
