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

async fn seed(km: &dyn KeyMaster) {
    for i in 0..NODES {
        let id = format!("n-{i:03}");
        let record = NodeRecord {
            v: RECORD_VERSION,
            id: id.clone(),
            hostname: id.clone(),
            machine_id: format!("m-{i}"),
            group: format!("g{}", i % 3),
            serial: format!("{i:04x}"),
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

async fn master(km: Arc<dyn KeyMaster>) -> Arc<Cluster> {
    let settings = ClusterMasterConfig::default().validate().unwrap();
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
    two_masters_never_double_allocate(km).await;
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
    two_masters_never_double_allocate(km).await;
}

/// The reconciler's decisions without a network: a master whose process exits or
/// whose node goes down is replaced by the next live candidate with a higher epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_fail_over_on_process_exit_and_node_down() {
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
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (a.clone(), 1));
    assert_eq!(cm.master_process_state("p", &master_of(&cm)), "starting");
    let report = |state| glory_protocol::ProcessReport {
        id: crate::pools::process_id("p"),
        epoch: 1,
        state,
        pid: Some(42),
        detail: "exit status: 1".into(),
    };
    cm.process_reports(vec![(
        a.clone(),
        report(glory_protocol::ProcessState::Running),
    )]);
    cm.reconcile_pools().await;
    assert_eq!(cm.master_process_state("p", &master_of(&cm)), "running");
    assert_eq!(master_of(&cm).epoch, 1, "a healthy master stays");
    // The process exits: the next candidate takes over.
    cm.process_reports(vec![(
        a.clone(),
        report(glory_protocol::ProcessState::Exited { code: Some(1) }),
    )]);
    cm.reconcile_pools().await;
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (b.clone(), 2));
    let failed = cm.events.recent(10, |e| e.kind == "master_failed");
    assert!(failed[0].data["reason"]
        .as_str()
        .unwrap()
        .contains("process ended"));
    // Its node goes down: back to the first candidate (up again), epoch 3.
    cm.write().nodes.get_mut(&b).unwrap().status.state = NodeState::Down;
    cm.reconcile_pools().await;
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (a.clone(), 3));
    // No live candidate: the pool has no master, and gets one back when a node is up.
    cm.write().nodes.get_mut(&a).unwrap().status.state = NodeState::Down;
    cm.reconcile_pools().await;
    assert!(cm.pools.book().get("p").unwrap().master.is_none());
    cm.write().nodes.get_mut(&b).unwrap().status.state = NodeState::Up;
    cm.reconcile_pools().await;
    assert_eq!((master_of(&cm).node, master_of(&cm).epoch), (b, 4));
    // Epochs survive in the key master.
    let kv = cm.km.get(&schema::pool_key("p")).await.unwrap().unwrap();
    let stored: PoolRecord = schema::decode(&kv.key, &kv.value).unwrap();
    assert_eq!(stored.epoch, 4);
}
