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
