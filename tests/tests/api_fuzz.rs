//! The API's JSON bodies under generated and mutated input (issue 20): every route
//! that takes a body gets a valid one, then that body with its values replaced (wrong
//! types, huge and negative numbers, long and odd strings, deep nesting), keys removed
//! and unknown ones added, and its text flipped, cut and spliced. No answer may be a
//! server error, and the API must go on serving.
//!
//! `GLORY_API_FUZZ_INPUTS` sets how many requests (default 100,000, over the routes;
//! see docs/BENCHMARKS.md). One request in ten goes over HTTP; the others go to the
//! API's router in this process: the same handlers and extractors with the same bytes,
//! without HTTP's cost, which makes the 10 million of the documented benchmark
//! feasible. `GLORY_API_FUZZ_VIA=http` sends all over HTTP, `process` none.

use std::time::{Duration, Instant};

use glory_tests::rng::Rng;
use glory_tests::TestCluster;
use reqwest::Method;
use serde_json::{json, Value};

/// A value of any JSON type, some of them hostile.
fn wild(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 12 } else { 14 }) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(0),
        4 => json!(u64::MAX),
        5 => json!(i64::MIN),
        6 => json!(1e308),
        7 => json!(-0.5),
        8 => json!(""),
        9 => json!("x".repeat(1 + rng.below(70_000))),
        10 => json!("../../etc/passwd\u{0}\u{202e}ä\n{{ x }}"),
        11 => json!(format!("n-{:012x}", rng.next_u64())),
        12 => Value::Array((0..rng.below(4)).map(|_| wild(rng, depth + 1)).collect()),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                m.insert(format!("k{}", rng.below(5)), wild(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Replace one value somewhere in `v`, remove a key, or add one.
fn mutate_value(rng: &mut Rng, v: &mut Value) {
    match v {
        Value::Object(m) if !m.is_empty() && rng.below(3) > 0 => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.below(keys.len())];
            match rng.below(4) {
                0 => {
                    m.remove(k);
                }
                1 => {
                    m.insert(format!("unknown{}", rng.below(3)), wild(rng, 0));
                }
                2 => mutate_value(rng, m.get_mut(k).expect("key")),
                _ => {
                    m.insert(k.clone(), wild(rng, 0));
                }
            }
        }
        Value::Array(a) if !a.is_empty() && rng.below(2) == 0 => {
            let i = rng.below(a.len());
            mutate_value(rng, &mut a[i]);
        }
        _ => *v = wild(rng, 0),
    }
}

/// The body's text, mutated: bytes flipped, cut, spliced or duplicated, or a value
/// nested thousands deep (a parser that recursed without a limit would overflow; the
/// nesting is made as text, so this process never holds it as a tree).
fn mutate_text(rng: &mut Rng, text: &[u8]) -> Vec<u8> {
    let mut t = text.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            4 => {
                let n = 100 + rng.below(5000);
                let at = t.iter().position(|b| *b == b':').map_or(0, |i| i + 1);
                let mut deep = vec![b'['; n];
                deep.push(b'1');
                deep.extend(std::iter::repeat_n(b']', n));
                t.splice(at..at, deep);
            }
            0 if !t.is_empty() => {
                let i = rng.below(t.len());
                t[i] ^= 1 << rng.below(8);
            }
            1 => t.truncate(rng.below(t.len() + 1)),
            2 => {
                let i = rng.below(t.len() + 1);
                t.insert(i, b"{}[]\",:\\0e9-"[rng.below(12)]);
            }
            _ => {
                let cut = rng.below(t.len() + 1);
                let tail = t[cut..].to_vec();
                t.extend_from_slice(&tail);
            }
        }
    }
    t
}

/// Every route that takes a JSON body, with a valid body (power and BMC routes are
/// left out: a generated address would send traffic off this machine).
fn routes(node: &str) -> Vec<(Method, String, Value)> {
    let sha = "ab".repeat(32);
    let blob = json!({"sha256": sha, "size": 10});
    vec![
        (
            Method::POST,
            "/api/v1/tenants".into(),
            json!({"name": "ft", "description": "d"}),
        ),
        (
            Method::PUT,
            "/api/v1/tenants/t/quota".into(),
            json!({"guaranteed_nodes": 1, "max_nodes": 4, "max_cpus": 64, "max_memory_gib": 128}),
        ),
        (
            Method::POST,
            "/api/v1/tokens".into(),
            json!({"role": "tenant", "tenant": "t", "description": "f"}),
        ),
        (
            Method::POST,
            "/api/v1/bootstrap-tokens".into(),
            json!({"ttl_seconds": 60, "single_use": true, "scope": "node", "description": "f"}),
        ),
        (
            Method::POST,
            "/api/v1/pools".into(),
            json!({"name": "fp", "tenant": "t", "component": "fs", "size": 1, "spread": "groups", "replace_failed": true, "replace_delay_seconds": 1.5}),
        ),
        (
            Method::POST,
            "/api/v1/pools/p/nodes".into(),
            json!({"count": 1}),
        ),
        (
            Method::POST,
            "/api/v1/pools/p/candidates".into(),
            json!({"nodes": [node]}),
        ),
        (
            Method::PUT,
            format!("/api/v1/nodes/{node}/labels"),
            json!({"rack": "r1"}),
        ),
        (
            Method::POST,
            "/api/v1/nodes/bulk".into(),
            json!({"filter": "state:up", "action": "label", "labels": {"zone": "a"}, "dry_run": true}),
        ),
        (
            Method::POST,
            "/api/v1/monitors".into(),
            json!({"name": "fm", "scope": {"groups": ["g00"]}, "kind": "metric", "item": "cpu", "interval_seconds": 5, "rules": [{"level": "warning", "op": ">", "value": 90}]}),
        ),
        (
            Method::POST,
            "/api/v1/silences".into(),
            json!({"matchers": {"monitor": "fm"}, "ends_at": 4_102_444_800_000u64, "comment": "f"}),
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            json!({"name": "fu", "password": "a long password", "role": "operator"}),
        ),
        (
            Method::POST,
            "/api/v1/session".into(),
            json!({"name": "fu", "password": "a long password"}),
        ),
        (
            Method::POST,
            "/api/v1/services".into(),
            json!({"name": "fs", "pool": "p", "command": ["/bin/true"], "port": 8080, "health": {"kind": "tcp"}, "instances": {"min": 1, "desired": 1, "max": 2}}),
        ),
        (
            Method::POST,
            "/api/v1/services/fs/scale".into(),
            json!({"desired": 2}),
        ),
        (
            Method::POST,
            "/api/v1/frameworks".into(),
            json!({"name": "ff", "tenant": "t", "pool": "p", "roles": ["worker"]}),
        ),
        (
            Method::POST,
            "/api/v1/offers/o-1/decline".into(),
            json!({"refuse_seconds": 5}),
        ),
        (
            Method::POST,
            "/api/v1/images".into(),
            json!({"name": "fi", "kernel": blob, "initrd": blob, "rootfs": blob, "description": "d", "suite": "bookworm", "packages": []}),
        ),
        (
            Method::PUT,
            "/api/v1/profiles/fprof".into(),
            json!({"image": "fi", "mode": "diskless", "match": {"groups": ["g00"]}, "config": {"hostname": "n-{{ node.id[2:8] }}", "ssh_authorized_keys": ["ssh-ed25519 AAAA x"]}}),
        ),
        (
            Method::POST,
            "/api/v1/software".into(),
            json!({"name": "fsw", "version": "1", "sha256": sha, "size": 10}),
        ),
        (
            Method::PUT,
            "/api/v1/software/fsw/installations".into(),
            json!({"installations": [{"version": "1", "pools": ["p"]}]}),
        ),
        (
            Method::POST,
            format!("/api/v1/sim/nodes/{node}/load"),
            json!({"cpu": 50.0}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bodies_under_generated_input_never_get_a_server_error() -> anyhow::Result<()> {
    let inputs: usize = std::env::var("GLORY_API_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cluster = TestCluster::builder().groups(1).agents(4).start().await?;
    cluster.wait_all_up(4, Duration::from_secs(30)).await?;
    let api = &cluster.api;
    api.call(Method::POST, "/api/v1/tenants", Some(json!({"name": "t"})))
        .await?;
    api.call(
        Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "p", "tenant": "t", "component": "fs", "size": 2})),
    )
    .await?;
    let node = cluster.node_id(0)?;
    let routes = routes(&node);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let token = cluster.operator_token();
    let every_http = match std::env::var("GLORY_API_FUZZ_VIA").as_deref() {
        Ok("http") => 1,
        Ok("process") => usize::MAX,
        Ok(other) if other != "mixed" => {
            anyhow::bail!("GLORY_API_FUZZ_VIA: http, process or mixed (got {other:?})")
        }
        _ => 10,
    };
    let router = cluster.api_router();
    let started = Instant::now();
    let mut rng = Rng(0x0005_eed0_fa91);
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    // A few requests in flight, as clients would send them.
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..inputs {
        let (method, path, seed) = &routes[i % routes.len()];
        let body: Vec<u8> = match rng.below(10) {
            0 => serde_json::to_vec(seed)?,
            1..=6 => {
                let mut v = seed.clone();
                for _ in 0..1 + rng.below(3) {
                    mutate_value(&mut rng, &mut v);
                }
                serde_json::to_vec(&v)?
            }
            _ => mutate_text(&mut rng, &serde_json::to_vec(seed)?),
        };
        let what = format!("{method} {path}");
        if i % every_http != 0 {
            let mut req = axum::http::Request::builder()
                .method(method.clone())
                .uri(path.as_str())
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.clone()))?;
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    40_000,
                ))));
            let router = router.clone();
            batch.spawn(async move {
                let status = tower::ServiceExt::oneshot(router, req)
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string());
                (status, body, what)
            });
        } else {
            let req = http
                .request(method.clone(), format!("{}{path}", api.base()))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.clone());
            batch.spawn(async move {
                let status = req
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string());
                (status, body, what)
            });
        }
        if batch.len() == 16 || i + 1 == inputs {
            while let Some(done) = batch.join_next().await {
                let (status, body, what) = done?;
                let status = status.map_err(|e| {
                    anyhow::anyhow!(
                        "no answer: {e} (body {})",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )
                })?;
                assert!(
                    status < 500,
                    "{status} for {what} with {}",
                    String::from_utf8_lossy(&body[..body.len().min(2000)])
                );
                *by_status.entry(status).or_default() += 1;
            }
        }
    }
    eprintln!(
        "{inputs} bodies over {} routes in {:?}: answers by status {by_status:?}",
        routes.len(),
        started.elapsed()
    );
    // Still serving, and still itself.
    let summary = api.get("/api/v1/cluster").await?;
    assert_eq!(summary["nodes"], 4, "{summary}");
    Ok(())
}
