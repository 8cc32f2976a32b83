//! The network misbehaving, with the real binaries each in a network namespace of its
//! own and every packet between them through the fault-injection switch
//! (`glory_tests::faultnet`): lossy and slow links to the agents, a one-way partition
//! between a group master and the cluster master, a cluster master cut off from etcd.

use std::time::{Duration, Instant};

use glory::client::ApiClient;
use glory_tests::faultnet::Impairment;
use glory_tests::rig::{get, quic, Rig, LEASE};
use glory_tests::wait::until_some;
use serde_json::Value;

/// The cluster summary once `count` nodes are up in one connected group.
async fn all_up(api: &ApiClient, count: u64) -> anyhow::Result<Value> {
    let (c, took) = until_some(
        &format!("{count} nodes up"),
        Duration::from_secs(60),
        || async {
            let c = get(api, "/api/v1/cluster").await?;
            (c["nodes_by_state"]["up"] == count && c["groups_connected"] == 1).then_some(c)
        },
    )
    .await?;
    eprintln!("{count} nodes up after {took:?}");
    Ok(c)
}

/// How many nodes have been marked down since the cluster master started.
fn downs(cluster: &Value) -> u64 {
    cluster["transitions"]["down"].as_u64().unwrap_or(0)
        + cluster["nodes_by_state"]["down"].as_u64().unwrap_or(0)
}

/// Agents on links that lose 5% of packets each way and add 50 ms each way (100 ms
/// round trips to their group master), for five minutes (`GLORY_LOSSY_SECONDS`), at
/// the default heartbeat and detection settings: nobody is reported down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_slow_links_make_no_false_downs() -> anyhow::Result<()> {
    glory_tests::init_logging();
    let seconds: u64 = std::env::var("GLORY_LOSSY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut rig = Rig::start(&["cm", "gm", "agents"], 1).await?;
    rig.cluster_master("cm").await?;
    rig.group_master("gm", "g00", &["cm"])?;
    let nodes = 20;
    rig.agents(nodes, &["cm"])?;
    let api = rig.api("cm")?;
    all_up(&api, nodes as u64).await?;
    let impairment = Impairment {
        delay: Duration::from_millis(50),
        loss: 0.05,
    };
    rig.net.impair("agents", impairment);
    let start = Instant::now();
    let mut worst = Value::Null;
    let mut suspects = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Some(c) = get(&api, "/api/v1/cluster").await else {
            continue;
        };
        suspects = c["transitions"]["suspect"].as_u64().unwrap_or(0);
        if downs(&c) > 0 {
            worst = c;
            break;
        }
    }
    let stats = rig.net.stats();
    eprintln!(
        "{seconds} s at {impairment:?}: {} packets delivered, {} lost; {suspects} suspicions",
        stats.delivered, stats.lost
    );
    assert!(
        worst.is_null(),
        "a node was marked down after {:?} on a lossy link: {worst}",
        start.elapsed()
    );
    assert!(stats.lost > 0, "the switch lost nothing: {stats:?}");
    Ok(())
}

/// What the cluster master says about group g00: (active, standbys).
async fn group_view(api: &ApiClient) -> Option<(String, Vec<String>)> {
    let g = get(api, "/api/v1/groups/g00").await?;
    if g["connected"] != true {
        return Some((String::new(), Vec::new()));
    }
    let standbys = g["standbys"]
        .as_array()?
        .iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    Some((g["master"].as_str()?.to_string(), standbys))
}

/// A group master cut off from the cluster master in one direction only, then the
/// other: the cluster master accepts one active group master for the group at any
/// time, moves the group to the standby, takes the old one back only as a standby
/// after the partition heals, and nobody is reported down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_partitions_never_make_two_active_group_masters() -> anyhow::Result<()> {
    glory_tests::init_logging();
    let mut rig = Rig::start(&["cm", "gm-a", "gm-b", "agents"], 1).await?;
    rig.cluster_master("cm").await?;
    let api = rig.api("cm")?;
    let (a, b) = (
        quic(&rig.net, "gm-a").to_string(),
        quic(&rig.net, "gm-b").to_string(),
    );
    rig.group_master("gm-a", "g00", &["cm"])?;
    until_some("gm-a active", Duration::from_secs(30), || async {
        let (active, _) = group_view(&api).await?;
        (active == a).then_some(())
    })
    .await?;
    rig.group_master("gm-b", "g00", &["cm"])?;
    until_some("gm-b standing by", Duration::from_secs(30), || async {
        let (_, standbys) = group_view(&api).await?;
        standbys.contains(&b).then_some(())
    })
    .await?;
    let nodes = 10;
    rig.agents(nodes, &["cm"])?;
    all_up(&api, nodes as u64).await?;

    // Each direction in turn, from the group master that is active at the time.
    let mut active = ("gm-a", a.clone());
    let mut standby = ("gm-b", b.clone());
    for direction in [
        "group master to cluster master",
        "cluster master to group master",
    ] {
        let (from, to) = if direction.starts_with("group") {
            (active.0, "cm")
        } else {
            ("cm", active.0)
        };
        rig.net.cut_one_way(from, to);
        let cut = Instant::now();
        // Watch the cluster master's view: the active master goes from the cut one to
        // the standby (through none, while it promotes) and never back.
        let mut seen = vec![active.1.clone()];
        while cut.elapsed() < Duration::from_secs(25) {
            if let Some((now, standbys)) = group_view(&api).await {
                assert!(
                    !standbys.contains(&now) || now.is_empty(),
                    "{direction}: {now} is both active and standing by"
                );
                if !now.is_empty() && seen.last() != Some(&now) {
                    seen.push(now);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            seen,
            [active.1.clone(), standby.1.clone()],
            "{direction}: the group moves to the standby once, and stays"
        );
        eprintln!("{direction} cut: the group moved to {}", standby.1);
        rig.net.heal();
        let (_, took) = until_some(
            "the cut group master back, as a standby",
            Duration::from_secs(30),
            || async {
                let (now, standbys) = group_view(&api).await?;
                (now == standby.1 && standbys.contains(&active.1)).then_some(())
            },
        )
        .await?;
        eprintln!("{direction} healed: {} stands by after {took:?}", active.1);
        let c = all_up(&api, nodes as u64).await?;
        assert_eq!(downs(&c), 0, "{direction}: nobody marked down: {c}");
        std::mem::swap(&mut active, &mut standby);
    }
    Ok(())
}

/// The leading cluster master cut off from etcd steps down within its lease; the
/// standby, which still reaches etcd, takes over, and the group follows it with nobody
/// reported down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_cut_off_from_etcd_steps_down_within_its_lease() -> anyhow::Result<()> {
    glory_tests::init_logging();
    let mut rig = Rig::start(&["etcd", "cm1", "cm2", "gm", "agents"], 1).await?;
    rig.cluster_master("cm1").await?;
    rig.cluster_master("cm2").await?;
    let (cm1, cm2) = (rig.api("cm1")?, rig.api("cm2")?);
    until_some("cm2 standing by", Duration::from_secs(30), || async {
        let h = get(&cm2, "/healthz").await?;
        (h["role"] == "standby").then_some(())
    })
    .await?;
    rig.group_master("gm", "g00", &["cm1", "cm2"])?;
    let nodes = 10;
    rig.agents(nodes, &["cm1", "cm2"])?;
    all_up(&cm1, nodes as u64).await?;

    rig.net.partition("cm1", "etcd");
    let cut = Instant::now();
    // It stops leading before its lease can run out (at five sixths of it after its
    // last renewal, so at most that after the cut), with some slack for a busy machine.
    let (_, stepped_down) = until_some(
        "cm1 no longer active",
        LEASE + Duration::from_secs(2),
        || async {
            let h = get(&cm1, "/healthz").await;
            (h.is_none_or(|h| h["role"] != "active")).then_some(())
        },
    )
    .await?;
    eprintln!("cm1 cut off from etcd: stopped leading after {stepped_down:?}");
    assert!(
        stepped_down < LEASE + Duration::from_secs(1),
        "cm1 stepped down after {stepped_down:?}, past its lease of {LEASE:?}"
    );
    let status = rig.procs.wait_exit("cm1", Duration::from_secs(15))?;
    eprintln!("cm1 exited {:?} after the cut: {status}", cut.elapsed());
    assert!(
        !status.success(),
        "a deposed master exits with an error, for its supervisor to restart it"
    );
    assert!(
        std::fs::read_to_string(rig.log("cm1"))?.contains("stepped down"),
        "cm1 says why it stopped"
    );
    let (_, took) = until_some("cm2 active", Duration::from_secs(15), || async {
        let h = get(&cm2, "/healthz").await?;
        (h["role"] == "active").then_some(())
    })
    .await?;
    eprintln!("cm2 active {took:?} after cm1 stepped down");
    let c = all_up(&cm2, nodes as u64).await?;
    assert_eq!(downs(&c), 0, "nobody marked down: {c}");
    Ok(())
}
