//! `glory sim --api-load RATE`: a real HTTP load generator (`wrk`, Debian's package)
//! sends about RATE requests a second of an operator's and a dashboard's reads to the
//! API, with the operator token, from the moment every node is up to the end of the
//! run. Its latency percentiles and errors go into the report beside the run's false
//! downs: the API's load must not cost the failure detector anything.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// What `wrk` measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ApiLoadReport {
    /// Requests a second asked for, and what `wrk` achieved.
    pub target_per_sec: usize,
    pub achieved_per_sec: Option<f64>,
    pub requests: Option<u64>,
    pub seconds: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Answers that were not 2xx/3xx, and socket errors (connect, read, write, timeout).
    pub non_2xx: u64,
    pub socket_errors: u64,
    /// The request mix, as paths.
    pub paths: Vec<String>,
}

/// A running `wrk`.
pub(super) struct ApiLoad {
    child: tokio::process::Child,
    report: ApiLoadReport,
    seconds: u64,
}

/// Connections `wrk` keeps open for `rate` requests a second, and its threads. The
/// script keeps to a schedule (below), so connections only bound how many requests
/// are in flight: enough for answers of up to 100 ms at the full rate.
fn pacing(rate: usize) -> (usize, usize) {
    let connections = (rate / 10).clamp(2, 128);
    (connections, connections.min(2))
}

/// What the load reads: the cluster's summary, groups, alerts, pages of nodes and
/// single nodes, as a console and scripts do.
fn paths(node_ids: &[String]) -> Vec<String> {
    let mut paths: Vec<String> = [
        "/api/v1/cluster",
        "/api/v1/groups",
        "/api/v1/alerts",
        "/api/v1/nodes?limit=100",
        "/api/v1/nodes?state=down&limit=100",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    paths.extend(
        node_ids
            .iter()
            .take(5)
            .map(|id| format!("/api/v1/nodes/{id}")),
    );
    paths
}

/// The script of each of `wrk`'s threads: the request mix, and a schedule of
/// `per_sec` requests a second (the thread's share of the rate). Each connection, once
/// answered, waits for the next free slot of the schedule, or none when behind it: a
/// fixed pause instead would let the rate fall as answers slow down (a run at 1,000 a
/// second achieved 877 that way with the two cores full).
fn lua(token: &str, paths: &[String], per_sec: f64) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    format!(
        r#"local paths = {{ {} }}
local headers = {{ ["Authorization"] = "Bearer {token}" }}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1], headers)
end
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} glory_timespec;
int clock_gettime(int clock, glory_timespec *tp);
]]
local ts = ffi.new("glory_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local per_ms = {per_sec} / 1000
local start = nil
local slot = 0
delay = function()
  local t = now_ms()
  if start == nil then start = t end
  slot = slot + 1
  local wait = start + slot / per_ms - t
  if wait < 0 then return 0 end
  return math.floor(wait)
end
"#,
        list.join(", ")
    )
}

impl ApiLoad {
    /// Start `wrk` against `base` (`http://host:port`) for `seconds`.
    pub(super) fn start(
        base: &str,
        token: &str,
        rate: usize,
        seconds: u64,
        node_ids: &[String],
        dir: &Path,
    ) -> anyhow::Result<ApiLoad> {
        let (connections, threads) = pacing(rate);
        let paths = paths(node_ids);
        let script = dir.join("api-load.lua");
        let per_thread = rate as f64 / threads as f64;
        std::fs::write(&script, lua(token, &paths, per_thread))?;
        let child = tokio::process::Command::new("wrk")
            .arg("-t")
            .arg(threads.to_string())
            .arg("-c")
            .arg(connections.to_string())
            .arg("-d")
            .arg(format!("{}s", seconds.max(1)))
            .arg("--timeout")
            .arg("5s")
            .arg("--latency")
            .arg("-s")
            .arg(&script)
            .arg(base)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start wrk (Debian: apt-get install wrk) for --api-load")?;
        Ok(ApiLoad {
            child,
            report: ApiLoadReport {
                target_per_sec: rate,
                paths,
                ..Default::default()
            },
            seconds,
        })
    }

    /// Wait for `wrk` to finish and read what it measured.
    pub(super) async fn finish(self) -> anyhow::Result<ApiLoadReport> {
        let wait = Duration::from_secs(self.seconds + 15);
        let out = tokio::time::timeout(wait, self.child.wait_with_output())
            .await
            .context("wrk did not finish")??;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            anyhow::bail!(
                "wrk failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                text
            );
        }
        Ok(parse(&text, self.report))
    }
}

/// `1.23ms`, `950.00us`, `1.10s` in milliseconds.
fn millis(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// Read `wrk --latency`'s summary.
fn parse(text: &str, mut report: ApiLoadReport) -> ApiLoadReport {
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => report.p50_ms = millis(v),
            ["90%", v] => report.p90_ms = millis(v),
            ["99%", v] => report.p99_ms = millis(v),
            ["Requests/sec:", v] => report.achieved_per_sec = v.parse().ok(),
            [n, "requests", "in", secs, ..] => {
                report.requests = n.parse().ok();
                report.seconds = millis(secs.trim_end_matches(',')).map(|ms| ms / 1000.0);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => report.non_2xx = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                report.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 5m test @ http://127.0.0.1:7400
  2 threads and 25 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms    3.10ms  95.23ms   97.84%
    Req/Sec   480.21     30.50   560.00     71.23%
  Latency Distribution
     50%  850.00us
     75%    1.21ms
     90%    2.05ms
     99%   12.40ms
  287874 requests in 5.00m, 1.20GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:    959.36
Transfer/sec:      4.09MB
";

    #[test]
    fn reads_what_wrk_measured() {
        let r = parse(OUTPUT, ApiLoadReport::default());
        assert_eq!(r.p50_ms, Some(0.85));
        assert_eq!(r.p90_ms, Some(2.05));
        assert_eq!(r.p99_ms, Some(12.4));
        assert_eq!(r.requests, Some(287_874));
        assert_eq!(r.seconds, Some(300.0));
        assert_eq!(r.achieved_per_sec, Some(959.36));
        assert_eq!((r.non_2xx, r.socket_errors), (4, 3));
    }

    #[test]
    fn pacing_asks_for_the_rate() {
        assert_eq!(pacing(1000), (100, 2));
        assert_eq!(pacing(10), (2, 2));
        let script = lua("tok", &paths(&["n-1".into()]), 500.0);
        assert!(script.contains("\"/api/v1/nodes/n-1\"") && script.contains("Bearer tok"));
        assert!(script.contains("local per_ms = 500 / 1000"));
    }

    /// The schedule holds against a real server whose answers take a while: `wrk`
    /// keeps to the rate asked, not to what a fixed pause would give.
    #[test]
    fn wrk_keeps_to_the_schedule() {
        if std::process::Command::new("wrk")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("no wrk on this machine");
            return;
        }
        // A server whose answers take 40 ms. 16 connections each pausing its share of
        // 200 a second (80 ms) would get 16 / 120 ms, about 133 a second.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve_slowly(stream));
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("load.lua");
        std::fs::write(&script, lua("tok", &paths(&[]), 100.0)).unwrap();
        let out = std::process::Command::new("wrk")
            .args(["-t", "2", "-c", "16", "-d", "3s", "--latency", "-s"])
            .arg(&script)
            .arg(format!("http://{addr}"))
            .output()
            .unwrap();
        let r = parse(
            &String::from_utf8_lossy(&out.stdout),
            ApiLoadReport::default(),
        );
        let achieved = r.achieved_per_sec.expect("wrk's rate");
        // 2 threads of 100 a second each.
        assert!((170.0..230.0).contains(&achieved), "{achieved} a second");
    }

    fn serve_slowly(mut stream: std::net::TcpStream) {
        use std::io::{Read, Write};
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(40));
            let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}
