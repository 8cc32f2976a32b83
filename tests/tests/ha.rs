//! High availability with real processes on a real 3-member etcd: two cluster masters,
//! an active and a standby group master, 20 simulated agents. `kill -9` the active
//! cluster master, then the active group master; lose an etcd member; lose etcd
//! altogether for a while. No node may ever be reported `down`. And a leader frozen
//! past its lease, whose queued writes must not land.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use glory::client::ApiClient;
use glory_keymaster::testing::EtcdCluster;
use glory_tests::procs::{free_tcp, free_udp, Procs};
use glory_tests::wait::until_some;
use reqwest::Method;
use serde_json::Value;

/// `GET path`'s body whatever its status; `None` when nothing answered.
async fn get(api: &ApiClient, path: &str) -> Option<Value> {
    api.request(Method::GET, path, None)
        .await
        .ok()
        .map(|(_, v)| v)
}

/// Ask for a bootstrap token: a write that needs the key master.
/// The next `n` `tenant_created` events of a stream: id and tenant.
async fn tenant_events(
    stream: &mut glory::client::EventStream,
    n: usize,
) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .context("no event within 10 s")??
            .context("the stream ended")?;
        if msg.event == "tenant_created" {
            let id = msg
                .id
                .as_deref()
                .context("an event without an id")?
                .parse()?;
            out.push((
                id,
                msg.data["tenant"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    Ok(out)
}

async fn post_token(api: &ApiClient) -> anyhow::Result<(u16, Value)> {
    api.request(
        Method::POST,
        "/api/v1/bootstrap-tokens",
        Some(serde_json::json!({"scope": "any", "ttl_seconds": 3600})),
    )
    .await
}

fn cm_config(
    dir: &Path,
    name: &str,
    quic: SocketAddr,
    api: SocketAddr,
    etcd: &[String],
) -> anyhow::Result<String> {
    let path = dir.join(format!("{name}.toml"));
    let endpoints: Vec<String> = etcd.iter().map(|e| format!("\"{e}\"")).collect();
    std::fs::write(
        &path,
        format!(
            "listen = '{quic}'\napi_listen = '{api}'\ndata_dir = '{}'\nleader_lease_ms = 5000\n\
             keymaster = {{ kind = 'etcd', endpoints = [{}] }}\n",
            dir.join(name).display(),
            endpoints.join(", ")
        ),
    )?;
    Ok(path.display().to_string())
}

/// Start cluster master `name` on etcd; its arguments, for a restart.
fn spawn_cm(
    procs: &mut Procs,
    dir: &Path,
    name: &str,
    (quic, api): (SocketAddr, SocketAddr),
    etcd: &[String],
) -> anyhow::Result<[String; 2]> {
    let args = [
        "--config".to_string(),
        cm_config(dir, name, quic, api, etcd)?,
    ];
    procs.spawn(
        name,
        "glory-cluster-master",
        &args,
        &dir.join(format!("{name}.log")),
    )?;
    Ok(args)
}

/// The operator token cluster master `name` writes once it leads.
async fn operator_token(dir: &Path, name: &str) -> anyhow::Result<String> {
    let file = dir.join(name).join("operator.token");
    let (token, _) = until_some(
        &format!("{name} active"),
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| t.trim().to_string())
        },
    )
    .await?;
    Ok(token)
}

/// Wait for the cluster master behind `api` to stand by naming a leader; its health.
async fn standing_by(api: &ApiClient, what: &str) -> anyhow::Result<Value> {
    let (health, _) = until_some(what, Duration::from_secs(20), || async {
        get(api, "/healthz")
            .await
            .filter(|h| h["role"] == "standby" && !h["leader"].is_null())
    })
    .await?;
    Ok(health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_fail_over_on_etcd_without_a_false_down() -> anyhow::Result<()> {
    let mut etcd = EtcdCluster::start(3).await?;
    let endpoints = etcd.endpoints();
    let dir = tempfile::tempdir()?;
    let d = match std::env::var_os("GLORY_TEST_DIR") {
        Some(keep) => std::path::PathBuf::from(keep),
        None => dir.path().to_path_buf(),
    };
    let d = d.as_path();
    let mut procs = Procs::default();
    let (q1, a1, q2, a2) = (free_udp(), free_tcp(), free_udp(), free_tcp());

    // Two cluster masters: the first leads, the second stands by and says so.
    spawn_cm(&mut procs, d, "cm1", (q1, a1), &endpoints)?;
    let token = operator_token(d, "cm1").await?;
    // Short timeouts: the checks below poll, and a hung request must not stall them.
    let cm1 = ApiClient::new(&a1.to_string(), &token)?.with_timeout(Duration::from_secs(5))?;
    let cm2 = ApiClient::new(&a2.to_string(), &token)?.with_timeout(Duration::from_secs(5))?;
    spawn_cm(&mut procs, d, "cm2", (q2, a2), &endpoints)?;
    let health = standing_by(&cm2, "cm2 standing by").await?;
    assert_eq!(
        health["leader"]["api"],
        a1.to_string(),
        "the standby names the leader"
    );
    let (status, body) = cm2.request(Method::GET, "/api/v1/cluster", None).await?;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "standby");
    assert_eq!(body["error"]["leader"]["quic"], q1.to_string());

    let (status, created) = post_token(&cm1).await?;
    assert_eq!(status, 201, "{created}");
    let bootstrap = created["token"].as_str().context("token")?.to_string();
    let ca_hash = created["ca_cert_hash"]
        .as_str()
        .context("ca hash")?
        .to_string();

    // An active and a standby group master for g00.
    let (ga, gb) = (free_udp(), free_udp());
    for (name, listen) in [("gm-a", ga), ("gm-b", gb)] {
        let path = d.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "group = 'g00'\nlisten = '{listen}'\ncluster_master = '{q1}'\ncluster_masters = ['{q2}']\n\
                 token = '{bootstrap}'\nca_cert_hash = '{ca_hash}'\ndata_dir = '{}'\n",
                d.join(name).display()
            ),
        )?;
        procs.spawn(
            name,
            "glory-group-master",
            &["--config".into(), path.display().to_string()],
            &d.join(format!("{name}.log")),
        )?;
        let want_master = ga.to_string();
        until_some(
            &format!("{name} registered"),
            Duration::from_secs(20),
            || async {
                let g = get(&cm1, "/api/v1/groups/g00").await?;
                (g["connected"] == true && g["master"] == want_master.as_str()).then_some(())
            },
        )
        .await?;
    }

    let want_standby = gb.to_string();
    until_some("gm-b standing by", Duration::from_secs(20), || async {
        let g = get(&cm1, "/api/v1/groups/g00").await?;
        g["standbys"]
            .as_array()?
            .iter()
            .any(|s| s == want_standby.as_str())
            .then_some(())
    })
    .await?;

    // Twenty simulated servers in their own process.
    procs.spawn(
        "agents",
        "glory",
        &[
            "sim-agents".into(),
            "--cluster-master".into(),
            q1.to_string(),
            "--cluster-masters".into(),
            q2.to_string(),
            "--token".into(),
            bootstrap.clone(),
            "--ca-hash".into(),
            ca_hash.clone(),
            "--nodes".into(),
            "20".into(),
            // Samples every second: the history across the group master failover below
            // is checked point by point.
            "--metrics-ms".into(),
            "1000".into(),
        ],
        &d.join("agents.log"),
    )?;
    let agents_started = glory_protocol::now_ms();
    let all_up = |api: &ApiClient| {
        let api = api.clone();
        async move {
            let c = get(&api, "/api/v1/cluster").await?;
            assert_eq!(
                c["nodes_by_state"]["down"].as_u64().unwrap_or(0),
                0,
                "a node was reported down: {c}"
            );
            (c["nodes_by_state"]["up"] == 20 && c["groups_connected"] == 1).then_some(c)
        }
    };
    until_some("20 nodes up", Duration::from_secs(30), || all_up(&cm1)).await?;

    // A package uploaded to the leader: the standby copies its bytes, so they are
    // still served after a failover.
    let package = d.join("tool.tar.zst");
    std::fs::write(&package, vec![42u8; 300_000])?;
    let (sha, size) = cm1.upload(&package, |_| {}).await?;
    let (status, r) = cm1
        .request(
            Method::POST,
            "/api/v1/software",
            Some(serde_json::json!({"name": "tool", "version": "1", "sha256": sha, "size": size})),
        )
        .await?;
    assert_eq!(status, 201, "{r}");
    let copy = d.join("cm2").join("content").join("sha256").join(&sha);
    until_some("the standby's copy", Duration::from_secs(20), || async {
        std::fs::metadata(&copy).ok().filter(|m| m.len() == size)
    })
    .await?;

    // Events are durable: a subscriber reads the leader's stream up to tenant t1's
    // event; t2 and t3 follow while it is away.
    let mut stream = cm1.events("/api/v1/events").await?;
    for t in ["t1", "t2", "t3"] {
        let (status, r) = cm1
            .request(
                Method::POST,
                "/api/v1/tenants",
                Some(serde_json::json!({"name": t})),
            )
            .await?;
        assert_eq!(status, 201, "{r}");
    }
    let seen = tenant_events(&mut stream, 3).await?;
    let resume_after = seen[0].0;
    drop(stream);

    // kill -9 the active cluster master: the standby leads within the lease (5 s) and
    // a few seconds, the group master finds it, every node stays up.
    procs.kill9("cm1")?;
    // The lease (5 s, the default: the leader steps down after 4.2 s without a renewal,
    // which leaves an etcd leader election room) and a few seconds.
    let (_, took) = until_some("cm2 active", Duration::from_secs(12), || async {
        get(&cm2, "/healthz")
            .await
            .filter(|h| h["role"] == "active")
    })
    .await?;
    eprintln!("cluster master failover: standby active after {took:?}");
    let (_, took) = until_some("all nodes up under cm2", Duration::from_secs(10), || {
        all_up(&cm2)
    })
    .await?;
    eprintln!("cluster master failover: everything up again {took:?} later");
    let nodes = get(&cm2, "/api/v1/nodes").await.context("list nodes")?;
    assert_eq!(nodes["total"], 20, "nothing acknowledged was lost");
    let served = reqwest::get(format!("http://{a2}/content/{sha}")).await?;
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await?.len() as u64, size);
    let tool = get(&cm2, "/api/v1/software/tool")
        .await
        .context("package")?;
    assert_eq!(
        tool["versions"][0]["blob"]["sha256"],
        sha.as_str(),
        "{tool}"
    );

    // The subscriber resumes at the new leader where it left off: t2 and t3 (written
    // by the old leader), then t4 (by the new one), in order, none twice.
    let (status, r) = cm2
        .request(
            Method::POST,
            "/api/v1/tenants",
            Some(serde_json::json!({"name": "t4"})),
        )
        .await?;
    assert_eq!(status, 201, "{r}");
    let mut resumed = cm2
        .events_after("/api/v1/events", Some(resume_after))
        .await?;
    let after = tenant_events(&mut resumed, 3).await?;
    let names: Vec<&str> = after.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(names, ["t2", "t3", "t4"], "{after:?}");
    assert_eq!(&after[..2], &seen[1..], "the same events, the same ids");
    assert!(
        after[2].0 > after[1].0,
        "ids grow across masters: {after:?}"
    );

    // The standby group master has found the new leader too.
    until_some(
        "gm-b standing by under cm2",
        Duration::from_secs(15),
        || async {
            let g = get(&cm2, "/api/v1/groups/g00").await?;
            g["standbys"]
                .as_array()?
                .iter()
                .any(|s| s == want_standby.as_str())
                .then_some(())
        },
    )
    .await?;

    // kill -9 the active group master: the standby leads, the agents move, none is down.
    // (Some seconds of history first, for the check of the history after.)
    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed = glory_protocol::now_ms();
    procs.kill9("gm-a")?;
    let want = gb.to_string();
    let (_, took) = until_some(
        "standby group master leads with all nodes up",
        Duration::from_secs(12),
        || async {
            let g = get(&cm2, "/api/v1/groups/g00").await?;
            let c = all_up(&cm2).await?;
            (g["master"] == want.as_str() && g["connected"] == true).then_some(c)
        },
    )
    .await?;
    eprintln!("group master failover: all nodes up under the standby after {took:?}");
    // The standby had no history of its own: the agents backfill it. A node's history
    // from before the failover is there again, and the failover left no hole in it.
    let node = get(&cm2, "/api/v1/nodes")
        .await
        .and_then(|n| n["items"][0]["id"].as_str().map(str::to_string))
        .context("a node id")?;
    let failover_ms = took.as_millis() as u64;
    // The backfill comes a dozen samples per interval, oldest first: wait until it has
    // all arrived. Agents sample on their own schedule between sessions too (every
    // second here), so the history then has no hole where the failover was.
    let seen = std::sync::Mutex::new((0u64, 0i64));
    let (gap, _) = until_some(
        "the node's history backfilled into the standby with no gap over 3 s",
        Duration::from_secs(30),
        || async {
            let to = glory_protocol::now_ms();
            let h = get(
                &cm2,
                &format!(
                    "/api/v1/nodes/{node}/metrics?item=cpu.percent&from={agents_started}&to={to}&step=1"
                ),
            )
            .await?;
            let times: Vec<u64> = h["points"]
                .as_array()?
                .iter()
                .filter_map(|p| p[0].as_u64())
                .collect();
            // Points from before the failover (the agents ran a few seconds) and after.
            let before = times.iter().filter(|t| **t + 1_000 < killed).count();
            if before < 5 || times.last().is_none_or(|t| *t <= killed + failover_ms) {
                return None;
            }
            // The largest gap, and where it starts relative to the kill.
            let gap = times
                .windows(2)
                .map(|w| (w[1] - w[0], w[0] as i64 - killed as i64))
                .max()
                .unwrap_or((0, 0));
            *seen.lock().unwrap() = gap;
            (gap.0 <= 3_000).then_some(gap)
        },
    )
    .await
    .with_context(|| {
        let (gap, from) = *seen.lock().unwrap();
        format!("a gap of {gap} ms in the history from {from} ms after the kill, with samples every 1000 ms (the failover took {failover_ms} ms)")
    })?;
    let (gap, gap_from) = gap;
    eprintln!(
        "group master failover: largest gap in node {node}'s history {gap} ms, from {gap_from} ms after the kill"
    );
    let transitions = get(&cm2, "/api/v1/cluster").await.context("cluster")?;
    assert_eq!(
        transitions["transitions"]["down"], 0,
        "no node was ever down: {transitions}"
    );

    // One etcd member down: writes still succeed.
    // (A write racing etcd's leader election, when the killed member led, may get a
    // 503 to retry for about a second; after that writes go through.)
    etcd.kill(0);
    let (_, took) = until_some(
        "a write with one etcd member down",
        Duration::from_secs(10),
        || async {
            let (status, _) = post_token(&cm2).await.ok()?;
            (status == 201).then_some(())
        },
    )
    .await?;
    eprintln!("one etcd member down: writes succeed (first success after {took:?})");
    for _ in 0..5 {
        let (status, body) = post_token(&cm2).await?;
        assert_eq!(
            status, 201,
            "writes keep succeeding with one member down: {body}"
        );
    }

    // All of etcd down: for a moment serving goes on from memory and changes are
    // refused clearly; then the leader steps down within its lease (it cannot tell
    // this from a partition that cuts only itself off), with an error for its
    // supervisor. Agents and the group master carry on. When etcd returns, the
    // restarted master leads again and nobody was ever marked down.
    etcd.kill(1);
    etcd.kill(2);
    let outage = Instant::now();
    until_some(
        "key master reported unavailable",
        Duration::from_secs(10),
        || async {
            let c = get(&cm2, "/api/v1/cluster").await?;
            (c["keymaster"]["available"] == false).then_some(())
        },
    )
    .await?;
    if let Ok((status, body)) = post_token(&cm2).await {
        assert_eq!(
            status, 503,
            "a change needing the key master is refused: {body}"
        );
    }
    let status = procs.wait_exit("cm2", Duration::from_secs(15))?;
    eprintln!(
        "all of etcd down: the leader stepped down {:?} into the outage ({status})",
        outage.elapsed()
    );
    assert!(
        !status.success(),
        "a master that steps down says so by its exit status"
    );
    etcd.restart_many(&[0, 1, 2]).await?;
    // Its supervisor restarts it (here, the test).
    let c2 = cm_config(d, "cm2", q2, a2, &endpoints)?;
    procs.spawn(
        "cm2",
        "glory-cluster-master",
        &["--config".into(), c2],
        &d.join("cm2-again.log"),
    )?;
    let (_, _) = until_some(
        "changes accepted again",
        Duration::from_secs(30),
        || async {
            let (status, _) = post_token(&cm2).await.ok()?;
            (status == 201).then_some(())
        },
    )
    .await?;
    until_some("all nodes up again", Duration::from_secs(20), || {
        all_up(&cm2)
    })
    .await?;
    let c = get(&cm2, "/api/v1/cluster").await.context("cluster")?;
    assert_eq!(c["nodes_by_state"]["up"], 20, "{c}");
    assert_eq!(c["transitions"]["down"], 0, "{c}");
    Ok(())
}

/// A leader frozen past its lease (SIGSTOP) while writes queue up for it: the standby
/// takes over and writes; thawed (SIGCONT), the old leader lands none of the queued
/// writes, because each of its writes requires its own leadership key, which is gone.
/// It exits for its supervisor (here the test) to restart it, and comes back a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_lands_none_of_its_queued_writes() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(1).await?;
    let endpoints = etcd.endpoints();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut procs = Procs::default();
    let (q1, a1, q2, a2) = (free_udp(), free_tcp(), free_udp(), free_tcp());
    let cm1_args = spawn_cm(&mut procs, d, "cm1", (q1, a1), &endpoints)?;
    let token = operator_token(d, "cm1").await?;
    let cm2 = ApiClient::new(&a2.to_string(), &token)?.with_timeout(Duration::from_secs(5))?;
    spawn_cm(&mut procs, d, "cm2", (q2, a2), &endpoints)?;
    standing_by(&cm2, "cm2 standing by").await?;
    // A client that waits as long as the freeze lasts.
    let cm1 = ApiClient::new(&a1.to_string(), &token)?.with_timeout(Duration::from_secs(60))?;
    let create = |api: &ApiClient, name: &str| {
        let (api, body) = (api.clone(), serde_json::json!({"name": name}));
        async move {
            api.request(Method::POST, "/api/v1/tenants", Some(body))
                .await
        }
    };
    let (status, r) = create(&cm1, "before").await?;
    assert_eq!(status, 201, "{r}");

    procs.signal("cm1", "STOP")?;
    let frozen = Instant::now();
    let queued: Vec<_> = (0..3)
        .map(|i| tokio::spawn(create(&cm1, &format!("queued-{i}"))))
        .collect();
    // The lease is 5 s (cm_config): the standby takes over after it runs out.
    let (_, took) = until_some("cm2 active", Duration::from_secs(15), || async {
        get(&cm2, "/healthz")
            .await
            .filter(|h| h["role"] == "active")
    })
    .await?;
    eprintln!("cm2 active {took:?} after cm1 froze");
    let (status, r) = create(&cm2, "after").await?;
    assert_eq!(status, 201, "the new leader writes: {r}");

    procs.signal("cm1", "CONT")?;
    eprintln!("cm1 thawed after {:?}", frozen.elapsed());
    for (i, q) in queued.into_iter().enumerate() {
        match q.await? {
            Ok((status, body)) => {
                eprintln!("queued-{i}: {status} {body}");
                // Refused at its write, or before it as a standby: never written.
                assert_eq!(status, 503, "queued-{i} by a deposed leader: {body}");
            }
            // It exited before answering.
            Err(e) => eprintln!("queued-{i}: {e:#}"),
        }
    }
    let status = procs.wait_exit("cm1", Duration::from_secs(15))?;
    assert!(!status.success(), "a deposed leader exits with an error");
    let tenants = get(&cm2, "/api/v1/tenants").await.context("tenants")?;
    let names: Vec<&str> = tenants["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"before") && names.contains(&"after"),
        "{tenants}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("queued")),
        "no queued write landed: {names:?}"
    );

    // Its supervisor restarts it: it stands by, naming the new leader.
    procs.spawn(
        "cm1",
        "glory-cluster-master",
        &cm1_args,
        &d.join("cm1-again.log"),
    )?;
    let cm1 = ApiClient::new(&a1.to_string(), &token)?.with_timeout(Duration::from_secs(5))?;
    let health = standing_by(&cm1, "cm1 standing by").await?;
    assert_eq!(health["leader"]["api"], a2.to_string(), "{health}");
    Ok(())
}
