//! The supervisor's tests: real processes, simulated ones, instances.
use super::*;

const ID: &str = "pool/p/master";

fn spec(epoch: u64, command: &[&str]) -> ProcessSpec {
    ProcessSpec {
        id: ID.into(),
        epoch,
        command: command.iter().map(|s| s.to_string()).collect(),
        env: [("GLORY_EPOCH".to_string(), epoch.to_string())].into(),
        instance: None,
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
        l != "PWD=" && !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && l != "_=/usr/bin/env"
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
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    };
    while !gone() {
        assert!(Instant::now() < deadline, "process {pid} {why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_instance_gets_a_port_health_checks_and_a_graceful_stop() {
    let s = Supervisor::with_policy(false, quick());
    let mut instance = spec(
        1,
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "{port}",
        ],
    );
    instance.instance = Some(glory_protocol::InstanceSpec {
        port: 0,
        health: Some(glory_protocol::HealthCheck {
            kind: glory_protocol::HealthCheckKind::Http { path: "/".into() },
            interval_ms: 200,
            timeout_ms: 200,
            failures: 2,
        }),
        stop_timeout_ms: 3000,
    });
    s.start(instance);
    let r = s.state(ID).unwrap();
    let port = r.port.expect("a port was picked");
    assert!(r.health.is_none(), "not checked yet");
    let r = wait_for(&s, "healthy", |r| {
        r.health.as_ref().is_some_and(|h| h.healthy)
    })
    .await;
    assert_eq!(r.health.unwrap().detail, "GET /: 200");
    // Killed from outside: restarted on the same port, healthy again.
    let pid = r.pid.unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let r = wait_for(&s, "a second healthy run", |r| {
        r.run == 2 && r.health.as_ref().is_some_and(|h| h.healthy)
    })
    .await;
    assert_eq!(r.port, Some(port));
    // A graceful stop: SIGTERM reaches the process group, which ends at once.
    let pid = r.pid.unwrap();
    let stopped = Instant::now();
    s.stop(ID, 1);
    wait_gone(pid, "still runs after the stop").await;
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "SIGTERM was enough"
    );
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
