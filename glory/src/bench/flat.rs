//! The flat baseline, the way Kubernetes watches nodes: every node renews its own lease
//! through an API server, which writes it to the key master; a controller marks a node
//! down when its lease is older than the grace period (kubelet renews every 10 s, the
//! node lifecycle controller's grace period is 40 s).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use glory_keymaster::schema::NodeStatus;
use glory_keymaster::KeyMaster;
use glory_protocol::NodeState;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct FlatNode {
    last_renew: Instant,
    status: NodeStatus,
}

pub struct FlatController {
    km: Arc<dyn KeyMaster>,
    grace: Duration,
    nodes: Mutex<HashMap<String, FlatNode>>,
    pub writes: AtomicU64,
    pub down_transitions: AtomicU64,
    pub renewals: AtomicU64,
}

const LEASE_PREFIX: &str = "/glory/flat/leases/";
const STATUS_PREFIX: &str = "/glory/flat/status/";

impl FlatController {
    pub fn new(km: Arc<dyn KeyMaster>, grace: Duration) -> Arc<Self> {
        Arc::new(FlatController {
            km,
            grace,
            nodes: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
            down_transitions: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FlatNode>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn write_status(&self, node: &str, status: &NodeStatus) {
        let key = format!("{STATUS_PREFIX}{node}");
        if self
            .km
            .put(&key, glory_keymaster::schema::encode(status), None)
            .await
            .is_ok()
        {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A node renewed its lease: one key master write, plus a status write if it was
    /// new or down.
    async fn renew(&self, node: &str) -> Result<(), String> {
        self.km
            .put(
                &format!("{LEASE_PREFIX}{node}"),
                glory_protocol::now_ms().to_string().into_bytes(),
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.renewals.fetch_add(1, Ordering::Relaxed);
        let now_ms = glory_protocol::now_ms();
        let changed = {
            let mut nodes = self.lock();
            match nodes.get_mut(node) {
                Some(n) => {
                    n.last_renew = Instant::now();
                    n.status
                        .transition(NodeState::Up, now_ms, "lease renewed")
                        .then(|| n.status.clone())
                }
                None => {
                    let status = NodeStatus::new(NodeState::Up, now_ms, "registered");
                    nodes.insert(
                        node.to_string(),
                        FlatNode {
                            last_renew: Instant::now(),
                            status: status.clone(),
                        },
                    );
                    Some(status)
                }
            }
        };
        if let Some(status) = changed {
            self.write_status(node, &status).await;
        }
        Ok(())
    }

    /// One pass of the node lifecycle controller.
    async fn check(&self) {
        let now_ms = glory_protocol::now_ms();
        let expired: Vec<(String, NodeStatus)> = {
            let mut nodes = self.lock();
            nodes
                .iter_mut()
                .filter(|(_, n)| {
                    n.status.state == NodeState::Up && n.last_renew.elapsed() > self.grace
                })
                .filter_map(|(id, n)| {
                    n.status
                        .transition(NodeState::Down, now_ms, "lease expired")
                        .then(|| (id.clone(), n.status.clone()))
                })
                .collect()
        };
        for (id, status) in expired {
            self.down_transitions.fetch_add(1, Ordering::Relaxed);
            self.write_status(&id, &status).await;
        }
    }

    /// (up, total) nodes.
    pub fn counts(&self) -> (usize, usize) {
        let nodes = self.lock();
        (
            nodes
                .values()
                .filter(|n| n.status.state == NodeState::Up)
                .count(),
            nodes.len(),
        )
    }

    pub fn down_nodes(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, n)| n.status.state == NodeState::Down)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn list(&self) -> Value {
        let nodes = self.lock();
        let mut items: Vec<Value> = nodes
            .iter()
            .map(|(id, n)| json!({"id": id, "hostname": id, "state": n.status.state, "since_ms": n.status.since_ms}))
            .collect();
        items.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        json!({"items": items, "total": nodes.len(), "next": null})
    }

    /// Serve the lease API on `listen` and run the controller every second.
    pub async fn serve(
        self: Arc<Self>,
        listen: SocketAddr,
        shutdown: CancellationToken,
    ) -> anyhow::Result<SocketAddr> {
        let app = Router::new()
            .route("/flat/leases/{node}", put(renew_lease))
            .route(
                "/flat/nodes",
                get(|State(c): State<Arc<FlatController>>| async move { Json(c.list()) }),
            )
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => self.check().await,
                }
            }
        });
        Ok(addr)
    }
}

async fn renew_lease(
    State(c): State<Arc<FlatController>>,
    Path(node): Path<String>,
) -> Result<Json<Value>, (axum::http::StatusCode, String)> {
    c.renew(&node)
        .await
        .map_err(|e| (axum::http::StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(json!({"renewed": node})))
}
