//! `glory sharing-bench`: how the cluster is shared (issue 21, docs/BENCHMARKS.md).
//!
//! N simulated nodes and four tenants, each guaranteed a fifth of the cluster and
//! allowed up to 45%, each with a framework that listens for offers and an elastic
//! pool. Their demand changes every few seconds (a seeded random walk): a framework
//! accepts offered nodes up to its demand and declines the rest for a second, and
//! gives nodes back when its demand falls. Measured:
//! - allocation decisions per second: a burst of grow-by-one and release calls from
//!   four clients at once, each one a pool write the key master acknowledged;
//! - offer latency: from a node's release to its appearance in an offer (p50, p99);
//! - fairness over time: Jain's index of the tenants' weighted dominant shares,
//!   sampled every second from `/api/v1/sharing` (1.0 is ideal);
//! - guarantee back: the three busy tenants take all they may, then the fourth asks
//!   for its whole guarantee through its elastic pool; the time until it holds it
//!   (reclaim grace included, and without it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glory_cluster_master::pools::sharing::jain;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};

use super::report::{percentiles, Percentiles};
use crate::client::ApiClient;
use crate::up::{Up, UpOptions};

#[derive(Clone, Debug, clap::Args)]
pub struct SharingBenchArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// How long demand changes, seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// The reclaim grace period, seconds.
    #[arg(long, default_value_t = 5)]
    pub grace: u64,
    /// Grow-and-release calls of the burst, per client (4 clients).
    #[arg(long, default_value_t = 250)]
    pub burst: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn water_filling_gives_the_small_demands_first() {
        assert_eq!(super::fair_shares(10, &[2, 10, 10]), vec![2.0, 4.0, 4.0]);
        assert_eq!(super::fair_shares(10, &[0, 3, 3]), vec![0.0, 3.0, 3.0]);
        assert_eq!(super::jain(&[1.0, 1.0]), Some(1.0));
    }
}

#[derive(Debug, Default, Serialize)]
pub struct SharingReport {
    pub nodes: usize,
    pub tenants: usize,
    pub seconds: u64,
    /// Pool writes per second in the burst (grow by one, release one).
    pub decisions_per_second: f64,
    /// Answers to offers and releases per second while demand changed.
    pub framework_decisions_per_second: f64,
    pub offers: u64,
    pub offer_latency_ms: Option<Percentiles>,
    /// Jain's index of each tenant's nodes over its max-min fair share given the
    /// demands (1.0: everyone has its fair share): lowest and mean while demand
    /// changed.
    pub fairness_min: f64,
    pub fairness_mean: f64,
    /// One sample every 5 s.
    pub fairness_series: Vec<f64>,
    /// What `/api/v1/sharing` reports (Jain's index of the weighted dominant shares,
    /// which differing demands keep below 1.0): mean while demand changed, and with
    /// every tenant wanting all it may.
    pub dominant_share_index_mean: f64,
    pub dominant_share_index_end: f64,
    pub guarantee_nodes: u64,
    pub grace_seconds: u64,
    pub guarantee_back_seconds: f64,
    pub guarantee_back_beyond_grace_seconds: f64,
}

/// What the framework clients share.
#[derive(Default)]
struct Shared {
    /// Node -> when it was released, for offer latency.
    released: Mutex<HashMap<String, Instant>>,
    latencies_ms: Mutex<Vec<f64>>,
    decisions: AtomicU64,
    offers: AtomicU64,
}

/// Max-min fair shares of `total` nodes among `demands` (water-filling).
fn fair_shares(total: u64, demands: &[u64]) -> Vec<f64> {
    let mut fair = vec![0.0; demands.len()];
    let mut left = total as f64;
    let mut open: Vec<usize> = (0..demands.len()).filter(|&i| demands[i] > 0).collect();
    while !open.is_empty() && left > 1e-9 {
        let each = left / open.len() as f64;
        let mut still = Vec::new();
        for &i in &open {
            let want = demands[i] as f64 - fair[i];
            let give = want.min(each);
            fair[i] += give;
            left -= give;
            if demands[i] as f64 - fair[i] > 1e-9 {
                still.push(i);
            }
        }
        if still.len() == open.len() {
            break; // everyone took an equal part and wants more: nothing left
        }
        open = still;
    }
    fair
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

async fn ok(api: &ApiClient, method: Method, path: &str, body: Value) -> anyhow::Result<Value> {
    let (status, v) = api.request(method, path, Some(body)).await?;
    anyhow::ensure!(status < 300, "{path}: {status} {v}");
    Ok(v)
}

fn pool_nodes(v: &Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .map(|a| a.iter().map(|n| s(&n["id"])).collect())
        .unwrap_or_default()
}

/// Release `count` nodes of `pool`, noting when.
async fn release(api: &ApiClient, shared: &Shared, pool: &str, count: usize) -> anyhow::Result<()> {
    let nodes = pool_nodes(&api.get(&format!("/api/v1/pools/{pool}")).await?);
    for n in nodes.iter().take(count) {
        shared
            .released
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(n.clone(), Instant::now());
        let (status, _) = api
            .request(
                Method::DELETE,
                &format!("/api/v1/pools/{pool}/nodes/{n}"),
                None,
            )
            .await?;
        if status < 300 {
            shared.decisions.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// A framework: accept offers up to `demand`, decline the rest for a second.
async fn framework(
    api: ApiClient,
    id: String,
    demand: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut stream = api
        .events(&format!("/api/v1/frameworks/{id}/offers"))
        .await?;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = stream.next() => m?,
        };
        let Some(msg) = msg else { return Ok(()) };
        if msg.event != "offer_made" {
            continue;
        }
        shared.offers.fetch_add(1, Ordering::Relaxed);
        let nodes = pool_nodes(&msg.data);
        {
            let mut released = shared.released.lock().unwrap_or_else(|p| p.into_inner());
            let mut lat = shared
                .latencies_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for n in &nodes {
                if let Some(at) = released.remove(n) {
                    lat.push(at.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        let offer = s(&msg.data["offer"]);
        let want = demand
            .load(Ordering::Relaxed)
            .saturating_sub(held.load(Ordering::Relaxed)) as usize;
        let (path, body) = if want > 0 {
            let take: Vec<&String> = nodes.iter().take(want).collect();
            (
                format!("/api/v1/offers/{offer}/accept"),
                json!({"nodes": take}),
            )
        } else {
            (
                format!("/api/v1/offers/{offer}/decline"),
                json!({"refuse_seconds": 1}),
            )
        };
        // A rescinded offer (a node taken meanwhile) answers 404: the next one comes.
        let (status, r) = api.request(Method::POST, &path, Some(body)).await?;
        if status < 300 {
            shared.decisions.fetch_add(1, Ordering::Relaxed);
            if let Some(size) = r["size"].as_u64() {
                held.store(size, Ordering::Relaxed);
            }
        }
    }
}

/// Every second until `stop`: the fairness against the max-min fair shares of the
/// demands, and the raw index of `/api/v1/sharing`; and one of the former every 5 s.
async fn sample_fairness(
    api: ApiClient,
    demands: Vec<Arc<AtomicU64>>,
    n: u64,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut fairness, mut dominant, mut series) = (Vec::new(), Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for i in 0u64.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(sharing) = api.get("/api/v1/sharing").await else {
            continue;
        };
        if let Some(f) = sharing["fairness"].as_f64() {
            dominant.push(f);
        }
        let wants: Vec<u64> = demands.iter().map(|d| d.load(Ordering::Relaxed)).collect();
        let fair = fair_shares(n, &wants);
        let held = |t: usize| {
            sharing["items"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["tenant"] == format!("t{t}").as_str()))
                .and_then(|r| r["used"]["nodes"].as_f64())
                .unwrap_or(0.0)
        };
        let x: Vec<f64> = (0..demands.len())
            .filter(|&t| fair[t] >= 1.0)
            .map(|t| held(t) / fair[t])
            .collect();
        if let Some(f) = jain(&x) {
            if i % 5 == 0 {
                series.push((f * 1000.0).round() / 1000.0);
            }
            fairness.push(f);
        }
    }
    (fairness, dominant, series)
}

pub async fn run(args: SharingBenchArgs) -> anyhow::Result<SharingReport> {
    let dir = tempfile::tempdir()?;
    let up = Up::start(UpOptions {
        data_dir: dir.path().to_path_buf(),
        nodes: args.nodes,
        groups: args.nodes.div_ceil(250).max(1),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        reclaim_grace_seconds: args.grace,
        offer_timeout_seconds: 10,
        ..Default::default()
    })
    .await?;
    let api = ApiClient::new(&format!("http://{}", up.api_addr), &up.operator_token)?
        .with_timeout(Duration::from_secs(60))?;
    let result = scenario(&api, &args).await;
    up.shutdown().await;
    result
}

async fn scenario(api: &ApiClient, args: &SharingBenchArgs) -> anyhow::Result<SharingReport> {
    let n = args.nodes as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while api.get("/api/v1/cluster").await?["nodes_by_state"]["up"] != n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the simulated nodes did not come up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let tenants = 4u64;
    let guarantee = n / 5;
    let max = n * 45 / 100;
    for t in 0..tenants {
        ok(
            api,
            Method::POST,
            "/api/v1/tenants",
            json!({"name": format!("t{t}")}),
        )
        .await?;
        ok(
            api,
            Method::PUT,
            &format!("/api/v1/tenants/t{t}/quota"),
            json!({"guaranteed_nodes": guarantee, "max_nodes": max}),
        )
        .await?;
        ok(
            api,
            Method::POST,
            "/api/v1/pools",
            json!({"name": format!("el-t{t}"), "tenant": format!("t{t}"), "component": "dp",
                   "size": {"min": 0, "max": max}}),
        )
        .await?;
    }
    let shared = Arc::new(Shared::default());

    // The burst: four clients grow their elastic pool by one and release it again.
    let t0 = Instant::now();
    let mut burst = tokio::task::JoinSet::new();
    for t in 0..tenants {
        let (api, count) = (api.clone(), args.burst);
        burst.spawn(async move {
            let pool = format!("el-t{t}");
            let mut writes = 0u64;
            for _ in 0..count {
                let v = ok(
                    &api,
                    Method::POST,
                    &format!("/api/v1/pools/{pool}/nodes"),
                    json!({"count": 1}),
                )
                .await?;
                writes += 1;
                if let Some(node) = v["added"][0].as_str() {
                    let path = format!("/api/v1/pools/{pool}/nodes/{node}");
                    ok(&api, Method::DELETE, &path, Value::Null).await?;
                    writes += 1;
                }
            }
            anyhow::Ok(writes)
        });
    }
    let mut writes = 0;
    while let Some(r) = burst.join_next().await {
        writes += r??;
    }
    let decisions_per_second = writes as f64 / t0.elapsed().as_secs_f64();

    // Frameworks with changing demand.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut demands = Vec::new();
    let mut helds = Vec::new();
    let mut clients = tokio::task::JoinSet::new();
    for t in 0..tenants {
        let f = ok(
            api,
            Method::POST,
            "/api/v1/frameworks",
            json!({"name": "fw", "tenant": format!("t{t}"), "pool": format!("fw-t{t}")}),
        )
        .await?;
        let demand = Arc::new(AtomicU64::new(rng.random_range(n / 20..=n / 5)));
        demands.push(demand.clone());
        let held = Arc::new(AtomicU64::new(0));
        helds.push(held.clone());
        clients.spawn(framework(
            api.clone(),
            s(&f["id"]),
            demand,
            held,
            shared.clone(),
            stop.clone(),
        ));
    }
    let start = Instant::now();
    let decisions0 = shared.decisions.load(Ordering::Relaxed);
    let demand_phase_over = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn(sample_fairness(
        api.clone(),
        demands.clone(),
        n,
        demand_phase_over.clone(),
    ));
    let mut next_change = Instant::now();
    while start.elapsed() < Duration::from_secs(args.seconds) {
        if Instant::now() >= next_change {
            next_change += Duration::from_secs(5);
            for (t, d) in demands.iter().enumerate() {
                let step = (n / 40) as i64;
                let now = d.load(Ordering::Relaxed) as i64;
                let new = (now + rng.random_range(-step..=step)).clamp(0, max as i64) as u64;
                d.store(new, Ordering::Relaxed);
                let pool = format!("fw-t{t}");
                let held = api.get(&format!("/api/v1/pools/{pool}")).await?["size"]
                    .as_u64()
                    .unwrap_or(0);
                if held > new {
                    release(api, &shared, &pool, (held - new) as usize).await?;
                }
                helds[t].store(held.min(new), Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let framework_decisions = shared.decisions.load(Ordering::Relaxed) - decisions0;
    demand_phase_over.cancel();
    let (fairness, dominant, series) = sampler.await?;
    let framework_decisions_per_second = framework_decisions as f64 / start.elapsed().as_secs_f64();

    // Guarantee back: three tenants take all they may; t3 gives its nodes back and
    // then asks for its whole guarantee.
    for d in &demands[..3] {
        d.store(max, Ordering::Relaxed);
    }
    demands[3].store(0, Ordering::Relaxed);
    let held3 = api.get("/api/v1/pools/fw-t3").await?["size"]
        .as_u64()
        .unwrap_or(0);
    release(api, &shared, "fw-t3", held3 as usize).await?;
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let sharing = api.get("/api/v1/sharing").await?;
        let held: u64 = sharing["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["used"]["nodes"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        // Everything the three may take is taken (or nothing is left).
        if held >= (3 * max).min(n) || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fairness_end = api.get("/api/v1/sharing").await?["fairness"]
        .as_f64()
        .unwrap_or(0.0);
    let asked = Instant::now();
    ok(
        api,
        Method::POST,
        "/api/v1/pools/el-t3/nodes",
        json!({"count": guarantee}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(args.grace + 60);
    loop {
        let pool = api.get("/api/v1/pools/el-t3").await?;
        if pool["size"].as_u64().unwrap_or(0) >= guarantee {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "t3 did not get its guarantee back: {}",
            pool["size"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = asked.elapsed().as_secs_f64();
    stop.cancel();
    while clients.join_next().await.is_some() {}
    let lat = shared
        .latencies_ms
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(SharingReport {
        nodes: args.nodes,
        tenants: tenants as usize,
        seconds: args.seconds,
        decisions_per_second,
        framework_decisions_per_second,
        offers: shared.offers.load(Ordering::Relaxed),
        offer_latency_ms: percentiles(&lat),
        fairness_min: fairness.iter().copied().fold(f64::INFINITY, f64::min),
        fairness_mean: fairness.iter().sum::<f64>() / fairness.len().max(1) as f64,
        fairness_series: series,
        dominant_share_index_mean: dominant.iter().sum::<f64>() / dominant.len().max(1) as f64,
        dominant_share_index_end: fairness_end,
        guarantee_nodes: guarantee,
        grace_seconds: args.grace,
        guarantee_back_seconds: back,
        guarantee_back_beyond_grace_seconds: back - args.grace as f64,
    })
}
