//! What makes a supervised process a service instance: its port (picked by the agent
//! when the service says 0), its health checks (TCP, HTTP or a command, run by the
//! agent on its own host, so 10,000 nodes' checks cost the masters nothing but the
//! transitions), and its graceful stop (SIGTERM to the process group, SIGKILL after a
//! timeout).
//!
//! Health follows Kubernetes' readiness idea with one grace rule instead of a separate
//! startup probe: before an instance was ever healthy, failed checks count only once
//! `interval x failures` passed since it started, the time a healthy instance would
//! need to be declared unhealthy. Only transitions are reported.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use glory_protocol::{HealthCheck, HealthCheckKind, HealthStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free TCP port on this host, as the kernel hands them out (bound and released:
/// another program could take it before the instance binds it; the instance then
/// fails to start and is restarted with the same port, or replaced).
pub fn pick_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", 0))?;
    Ok(listener.local_addr()?.port())
}

/// A port for a simulated instance: nothing binds it, so it only has to be stable and
/// differ between instances.
pub fn simulated_port(id: &str) -> u16 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    20_000 + (hash % 40_000) as u16
}

/// `text` with every `{port}` replaced.
pub fn with_port(text: &str, port: u16) -> String {
    text.replace("{port}", &port.to_string())
}

/// The health of one run of an instance, from its checks' results. Pure: time is
/// passed in.
pub struct HealthTracker {
    check: HealthCheck,
    started: Instant,
    failures: u32,
    status: Option<HealthStatus>,
}

impl HealthTracker {
    pub fn new(check: HealthCheck, started: Instant) -> Self {
        HealthTracker {
            check,
            started,
            failures: 0,
            status: None,
        }
    }

    /// How long to wait before the next check: quick (at most a second) until the
    /// first result, so a new instance joins its balancer fast; then the interval.
    pub fn next_check_in(&self) -> Duration {
        let interval = Duration::from_millis(self.check.interval_ms.max(100));
        match self.status {
            None => interval.min(Duration::from_secs(1)),
            Some(_) => interval,
        }
    }

    /// Record one check's result at `now` (wall clock `now_ms`); the new status when
    /// it changed (the first result, or healthy <-> unhealthy).
    pub fn observe(
        &mut self,
        ok: bool,
        detail: String,
        now: Instant,
        now_ms: u64,
    ) -> Option<HealthStatus> {
        let was = self.status.as_ref().map(|s| s.healthy);
        if ok {
            self.failures = 0;
        } else {
            let grace = Duration::from_millis(
                self.check
                    .interval_ms
                    .saturating_mul(self.check.failures as u64),
            );
            let in_grace = was.is_none() && now.duration_since(self.started) < grace;
            if !in_grace {
                self.failures += 1;
            }
        }
        let healthy = match (ok, was) {
            (true, _) => true,
            (false, _) if self.failures >= self.check.failures.max(1) => false,
            (false, Some(h)) => h,
            (false, None) => return None, // still starting
        };
        if was == Some(healthy) {
            if let Some(s) = &mut self.status {
                s.failures = self.failures;
            }
            return None;
        }
        let status = HealthStatus {
            healthy,
            failures: self.failures,
            detail,
            since_ms: now_ms,
        };
        self.status = Some(status.clone());
        Some(status)
    }
}

/// Run one check against an instance on `port`; `Ok` with what it saw, or `Err` why
/// it failed.
pub async fn check_once(
    kind: &HealthCheckKind,
    port: u16,
    timeout: Duration,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    let run = async {
        match kind {
            HealthCheckKind::Tcp => {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map_err(|e| format!("tcp 127.0.0.1:{port}: {e}"))?;
                Ok(format!("tcp 127.0.0.1:{port} accepted"))
            }
            HealthCheckKind::Http { path } => http_check(port, path).await,
            HealthCheckKind::Exec { command } => exec_check(command, port, env).await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn http_check(port: u16, path: &str) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("http 127.0.0.1:{port}: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: glory-agent\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("http: {e}"))?;
    let mut head = vec![0u8; 256];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| format!("http: {e}"))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let line = line.lines().next().unwrap_or("").trim().to_string();
    let status: Option<u16> = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    match status {
        Some(code) if (200..400).contains(&code) => Ok(format!("GET {path}: {code}")),
        Some(code) => Err(format!("GET {path}: {code}")),
        None => Err(format!("GET {path}: not an HTTP answer: {line:?}")),
    }
}

async fn exec_check(
    command: &[String],
    port: u16,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    let Some(program) = command.first() else {
        return Err("exec: empty command".into());
    };
    let output = tokio::process::Command::new(with_port(program, port))
        .args(command[1..].iter().map(|a| with_port(a, port)))
        .env_clear()
        .env("PATH", crate::processes::DEFAULT_PATH)
        .envs(env)
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("exec {program:?}: {e}"))?;
    let said = String::from_utf8_lossy(&output.stdout);
    let said = said
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    if output.status.success() {
        Ok(format!("exec: {} {said}", output.status).trim().to_string())
    } else {
        Err(format!("exec: {} {said}", output.status).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(interval_ms: u64, failures: u32) -> HealthCheck {
        HealthCheck {
            kind: HealthCheckKind::Tcp,
            interval_ms,
            timeout_ms: 100,
            failures,
        }
    }

    #[test]
    fn health_changes_only_on_transitions_and_starting_has_grace() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = HealthTracker::new(check(1000, 3), t0);
        assert_eq!(h.next_check_in(), Duration::from_secs(1));
        // Starting: failures within 3 x 1 s do not count.
        assert!(h.observe(false, "refused".into(), at(500), 1).is_none());
        assert!(h.observe(false, "refused".into(), at(1500), 2).is_none());
        let s = h.observe(true, "ok".into(), at(2000), 3).unwrap();
        assert!(s.healthy && s.since_ms == 3);
        assert!(h.observe(true, "ok".into(), at(3000), 4).is_none());
        // Healthy: unhealthy after 3 failures in a row; a success in between resets.
        assert!(h.observe(false, "x".into(), at(4000), 5).is_none());
        assert!(h.observe(true, "ok".into(), at(5000), 6).is_none());
        assert!(h.observe(false, "x".into(), at(6000), 7).is_none());
        assert!(h.observe(false, "x".into(), at(7000), 8).is_none());
        let s = h.observe(false, "x".into(), at(8000), 9).unwrap();
        assert!(!s.healthy && s.failures == 3 && s.detail == "x");
        assert!(h.observe(false, "x".into(), at(9000), 10).is_none());
        assert!(
            h.observe(true, "back".into(), at(10000), 11)
                .unwrap()
                .healthy
        );
    }

    #[test]
    fn an_instance_that_never_answers_becomes_unhealthy_after_the_grace() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(check(1000, 2), t0);
        let mut changed = None;
        for i in 1..=5u64 {
            if let Some(s) = h.observe(false, "refused".into(), t0 + Duration::from_secs(i), i) {
                changed = Some((i, s));
                break;
            }
        }
        let (i, s) = changed.expect("never declared unhealthy");
        assert!(!s.healthy);
        assert_eq!(i, 3, "grace of 2 s, then two failures");
    }

    #[tokio::test]
    async fn checks_see_what_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let answer = if req.starts_with("GET /ok ") {
                        "HTTP/1.0 200 OK\r\n\r\nfine"
                    } else {
                        "HTTP/1.0 503 Service Unavailable\r\n\r\n"
                    };
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        let env = BTreeMap::new();
        let t = Duration::from_secs(2);
        assert!(check_once(&HealthCheckKind::Tcp, port, t, &env)
            .await
            .is_ok());
        let ok = HealthCheckKind::Http { path: "/ok".into() };
        assert_eq!(
            check_once(&ok, port, t, &env).await.unwrap(),
            "GET /ok: 200"
        );
        let bad = HealthCheckKind::Http {
            path: "/bad".into(),
        };
        assert_eq!(
            check_once(&bad, port, t, &env).await.unwrap_err(),
            "GET /bad: 503"
        );
        let exec = HealthCheckKind::Exec {
            command: vec!["sh".into(), "-c".into(), "test $PORT = {port}".into()],
        };
        assert!(check_once(&exec, port, t, &env).await.is_ok());
        let fails = HealthCheckKind::Exec {
            command: vec!["false".into()],
        };
        assert!(check_once(&fails, port, t, &env).await.is_err());
        let free = pick_port().unwrap();
        let refused = check_once(&HealthCheckKind::Tcp, free, t, &env).await;
        assert!(refused.unwrap_err().contains("tcp 127.0.0.1"));
        assert_ne!(simulated_port("svc/a/1"), simulated_port("svc/a/2"));
        assert_eq!(with_port("-p {port} {port}", 80), "-p 80 80");
    }
}
