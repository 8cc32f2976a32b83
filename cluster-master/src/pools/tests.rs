//! Two cluster masters that both believe they lead (a split brain, or a standby that
//! has not noticed it lost), on one key master: concurrent pool allocations never hand
//! out a node twice. Run against the embedded store and a real etcd.

use std::sync::Arc;

use glory_keymaster::schema::{self, NodeRecord, NodeStatus, PoolRecord, RECORD_VERSION};
use glory_keymaster::{EmbeddedKeyMaster, KeyMaster};
use glory_protocol::{Inventory, NodeState};

use crate::cluster::{load_or_create_ca, Cluster};
use crate::config::ClusterMasterConfig;

const NODES: usize = 30;

pub(crate) async fn seed(km: &dyn KeyMaster) {
    for i in 0..NODES {
        let id = format!("n-{i:03}");
        let record = NodeRecord {
            v: RECORD_VERSION,
            id: id.clone(),
            hostname: id.clone(),
            machine_id: format!("m-{i}"),
            group: format!("g{}", i % 3),
            serial: format!("{i:04x}"),
            previous_serial: String::new(),
            cert_expires_ms: 0,
            enrolled_ms: 0,
            inventory: Inventory {
                hostname: id.clone(),
                machine_id: format!("m-{i}"),
                cpus: 16,
                memory_bytes: 64 << 30,
                ..Default::default()
            },
            labels: Default::default(),
            // Records as an older version wrote them: loading migrates them.
            server_identity: String::new(),
            key_sha256: String::new(),
            reached_from: None,
        };
        km.put(&schema::node_key(&id), schema::encode(&record), None)
            .await
            .unwrap();
        let status = NodeStatus::new(NodeState::Up, 0, "seed");
        km.put(&schema::node_status_key(&id), schema::encode(&status), None)
            .await
            .unwrap();
    }
}

pub(crate) async fn master(km: Arc<dyn KeyMaster>) -> Arc<Cluster> {
    // Reclaims move at the next pass (the race test drives them by hand).
    let settings = ClusterMasterConfig {
        reclaim_grace_seconds: 0,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let ca = load_or_create_ca(km.as_ref(), "test").await.unwrap();
    let (cluster, _rx) = Cluster::load(settings, km, None, ca).await.unwrap();
    // Loading marks live nodes unreachable until their group masters report; these
    // nodes have none, so make them up by hand.
    for node in cluster.write().nodes.values_mut() {
        node.status.state = NodeState::Up;
    }
    cluster
}

fn pool(name: &str) -> PoolRecord {
    PoolRecord {
        v: RECORD_VERSION,
        name: name.to_string(),
        tenant: "t".to_string(),
        component: "fs".to_string(),
        selector: Default::default(),
        spread: Default::default(),
        replace_failed: false,
        replace_delay_ms: 0,
        master_spec: Default::default(),
        nodes: vec![],
        candidates: vec![],
        master: None,
        epoch: 0,
        created_ms: 0,
        elastic: None,
        reclaims: vec![],
    }
}

async fn two_masters_never_double_allocate(km: Arc<dyn KeyMaster>) {
    seed(km.as_ref()).await;
    let a = master(km.clone()).await;
    a.create_tenant("t", "").await.unwrap();
    // B loaded before A's pools exist: it plans on a stale view every time.
    let b = master(km.clone()).await;
    let mut handles = Vec::new();
    for i in 0..8 {
        let (cm, name) = if i % 2 == 0 {
            (a.clone(), format!("a{i}"))
        } else {
            (b.clone(), format!("b{i}"))
        };
        handles.push(tokio::spawn(async move {
            cm.create_pool(pool(&name), Some(6)).await
        }));
    }
    let mut created = 0;
    let mut refused = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(p) => {
                assert_eq!(p.nodes.len(), 6);
                created += 1;
            }
            Err(crate::pools::OpError::Conflict { fit: Some(_), .. }) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    // 30 nodes hold 5 pools of 6: exactly 5 succeed, whoever wins each race.
    assert_eq!((created, refused), (5, 3));
    let (kvs, _) = km.get_prefix(schema::POOLS_PREFIX).await.unwrap();
    let mut owner = std::collections::HashMap::new();
    for kv in kvs {
        let p: PoolRecord = schema::decode(&kv.key, &kv.value).unwrap();
        for n in p.nodes {
            if let Some(other) = owner.insert(n.clone(), p.name.clone()) {
                panic!("node {n} is in pools {other} and {}", p.name);
            }
        }
    }
    assert_eq!(owner.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_on_the_embedded_store_never_double_allocate() {
    let km: Arc<dyn KeyMaster> = EmbeddedKeyMaster::open_in_memory().unwrap();
    two_masters_never_double_allocate(km.clone()).await;
    two_masters_never_double_reclaim(km).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_on_one_etcd_never_double_allocate() {
    let etcd = glory_keymaster::testing::EtcdProcess::start()
        .await
        .expect("etcd (./test.sh installs etcd-server)");
    let km: Arc<dyn KeyMaster> =
        glory_keymaster::EtcdKeyMaster::connect(&etcd.endpoints(), Default::default())
            .await
            .unwrap();
    two_masters_never_double_allocate(km.clone()).await;
    two_masters_never_double_reclaim(km).await;
}

/// Reclaim under the same race: tenant `u` (guaranteed 12) claims borrowed nodes of
/// `t` from both masters at once, one of them planning on a stale view, then both
/// carry the claims out at once. Each node ends in one pool, `u` gets its 12 and no
/// more, and no claim is left.
async fn two_masters_never_double_reclaim(km: Arc<dyn KeyMaster>) {
    let a = master(km.clone()).await;
    let old: Vec<String> = a.pools.book().pools().map(|p| p.name.clone()).collect();
    for name in old {
        a.delete_pool(&name).await.unwrap();
    }
    a.create_tenant("u", "").await.unwrap();
    a.set_quota(
        "u",
        glory_keymaster::schema::Quota {
            guaranteed_nodes: 12,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // B knows the quota but not the pool that takes every node.
    let b = master(km.clone()).await;
    a.create_pool(pool("big"), Some(NODES)).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..6 {
        let cm = if i % 2 == 0 { a.clone() } else { b.clone() };
        let mut p = pool(&format!("u{i}"));
        p.tenant = "u".into();
        handles.push(tokio::spawn(
            async move { cm.create_pool(p, Some(4)).await },
        ));
    }
    let mut created = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(p) => {
                assert!(p.nodes.is_empty(), "nothing was free: {:?}", p.nodes);
                created += 1;
            }
            Err(crate::pools::OpError::Conflict { fit: Some(0), .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(created, 3, "12 guaranteed: three claims of 4");
    let (x, y) = (a.clone(), b.clone());
    let (r1, r2) = tokio::join!(
        tokio::spawn(async move { x.reconcile_reclaims().await }),
        tokio::spawn(async move { y.reconcile_reclaims().await })
    );
    r1.unwrap();
    r2.unwrap();
    // Whatever one master left (its plan lost every race), a later pass finishes.
    a.reconcile_reclaims().await;
    let (kvs, _) = km.get_prefix(schema::POOLS_PREFIX).await.unwrap();
    let mut owner = std::collections::HashMap::new();
    let mut held_by_u = 0;
    for kv in kvs {
        let p: PoolRecord = schema::decode(&kv.key, &kv.value).unwrap();
        assert!(
            p.reclaims.is_empty(),
            "claims left in {}: {:?}",
            p.name,
            p.reclaims
        );
        if p.tenant == "u" {
            held_by_u += p.nodes.len();
        }
        for n in p.nodes {
            if let Some(other) = owner.insert(n.clone(), p.name.clone()) {
                panic!("node {n} is in pools {other} and {}", p.name);
            }
        }
    }
    assert_eq!((held_by_u, owner.len()), (12, NODES));
}

/// A report of pool `p`'s master process from its agent.
fn report(
    epoch: u64,
    state: glory_protocol::ProcessState,
    failures: u32,
    failing: bool,
) -> glory_protocol::ProcessReport {
    let running = state == glory_protocol::ProcessState::Running;
    glory_protocol::ProcessReport {
        pid: running.then_some(42),
        detail: "exited: exit status: 3".into(),
        run: failures + 1,
        failures,
        failing,
        restart_in_ms: (!running).then_some(1000),
        last_exit: (failures > 0).then(|| glory_protocol::ProcessExit {
            code: Some(3),
            signal: None,
            ran_ms: 10,
            detail: "exit status: 3".into(),
        }),
        output: vec!["boom".into()],
        ..glory_protocol::ProcessReport::new(crate::pools::process_id("p"), epoch, state)
    }
}

/// The reconciler's decisions without a network: a master whose process exits is
/// restarted by its agent under the same epoch; one that keeps failing is moved once to
/// each candidate, then stays (no flapping); a master whose node goes down is replaced
/// by the next live candidate with a higher epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_fail_over_on_process_exit_and_node_down() {
    use glory_protocol::ProcessState::{Exited, Running};
    let km: Arc<dyn KeyMaster> = EmbeddedKeyMaster::open_in_memory().unwrap();
    seed(km.as_ref()).await;
    let cm = master(km).await;
    cm.create_tenant("t", "").await.unwrap();
    let p = cm.create_pool(pool("p"), Some(3)).await.unwrap();
    let (a, b) = (p.nodes[0].clone(), p.nodes[1].clone());
    cm.set_candidates("p", &[a.clone(), b.clone()], false)
        .await
        .unwrap();
    cm.reconcile_pools().await;
    let master_of = |cm: &Cluster| cm.pools.book().get("p").unwrap().master.clone().unwrap();
    let process = |cm: &Cluster| cm.master_process("p", &master_of(cm));
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (a.clone(), 1));
    assert_eq!(process(&cm).state, "starting");
    cm.process_reports(vec![(a.clone(), report(1, Running, 0, false))]);
    cm.reconcile_pools().await;
    assert_eq!(process(&cm).state, "running");
    assert_eq!(master_of(&cm).epoch, 1, "a healthy master stays");
    // The process exits; its agent restarts it after a backoff: same master, same epoch.
    cm.process_reports(vec![(
        a.clone(),
        report(1, Exited { code: Some(3) }, 1, false),
    )]);
    cm.reconcile_pools().await;
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (a.clone(), 1));
    let view = process(&cm);
    assert_eq!(view.state, "restarting");
    assert_eq!(view.last_exit.unwrap().code, Some(3));
    assert_eq!(view.output, ["boom"]);
    // It keeps failing: the next candidate takes over.
    cm.process_reports(vec![(
        a.clone(),
        report(1, Exited { code: Some(3) }, 3, true),
    )]);
    assert_eq!(process(&cm).state, "failing");
    cm.reconcile_pools().await;
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (b.clone(), 2));
    let failed = cm.events.recent(10, |e| e.kind() == "master_failed");
    assert!(
        matches!(&failed[0].data, crate::events::EventData::MasterFailed { reason, .. } if reason.contains("failing")),
        "{:?}",
        failed[0].data
    );
    // It fails there too: every candidate failed with this spec, so the master stays
    // (no flapping back to the first), announced once.
    cm.process_reports(vec![(
        b.clone(),
        report(2, Exited { code: Some(3) }, 3, true),
    )]);
    for _ in 0..3 {
        cm.reconcile_pools().await;
    }
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (b.clone(), 2));
    assert_eq!(process(&cm).state, "failing");
    assert_eq!(
        cm.events.recent(10, |e| e.kind() == "master_failing").len(),
        1
    );
    // Its node goes down: a live candidate is better than none, even one that failed.
    cm.write().nodes.get_mut(&b).unwrap().status.state = NodeState::Down;
    cm.reconcile_pools().await;
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (a.clone(), 3));
    // No live candidate: the pool has no master, and gets one back when a node is up.
    cm.write().nodes.get_mut(&a).unwrap().status.state = NodeState::Down;
    cm.reconcile_pools().await;
    assert!(cm.pools.book().get("p").unwrap().master.is_none());
    cm.write().nodes.get_mut(&b).unwrap().status.state = NodeState::Up;
    cm.reconcile_pools().await;
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (b.clone(), 4));
    // By hand: every candidate gets a new try.
    cm.write().nodes.get_mut(&a).unwrap().status.state = NodeState::Up;
    let moved = cm.failover_master("p").await.unwrap();
    assert_eq!((moved.node, moved.epoch), (a.clone(), 5));
    // A process that ends without a restart pending (an older agent) counts as failed.
    let mut ended = report(5, Exited { code: Some(3) }, 0, false);
    ended.restart_in_ms = None;
    cm.process_reports(vec![(a.clone(), ended)]);
    assert_eq!(process(&cm).state, "stopped");
    cm.reconcile_pools().await;
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (b.clone(), 6));
    cm.process_reports(vec![(
        b.clone(),
        report(6, Exited { code: Some(3) }, 3, true),
    )]);
    cm.reconcile_pools().await;
    assert_eq!(master_of(&cm).epoch, 6, "both failed: it stays");
    // A changed candidate list forgets the failures: a failing master moves again.
    cm.set_candidates("p", &[b.clone(), a.clone()], true)
        .await
        .unwrap();
    cm.reconcile_pools().await;
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (a.clone(), 7));
    // A report from a node not heard from is not trusted to be running.
    cm.process_reports(vec![(a.clone(), report(7, Running, 0, false))]);
    assert_eq!(process(&cm).state, "running");
    cm.write().nodes.get_mut(&a).unwrap().status.state = NodeState::Suspect;
    assert_eq!(process(&cm).state, "unknown");
    // Epochs survive in the key master.
    let kv = cm.km.get(&schema::pool_key("p")).await.unwrap().unwrap();
    let stored: PoolRecord = schema::decode(&kv.key, &kv.value).unwrap();
    assert_eq!(stored.epoch, 7);
}
