//! Active or standby. Every cluster master binds its API and QUIC addresses at once;
//! while another master leads, it answers with a clear "standby, the leader is X" (HTTP
//! 503 with the leader's addresses, a QUIC refusal with a redirect) and campaigns for the
//! leadership lease in the key master. When it wins it loads the registry and serves.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};

use glory_keymaster::KeyMaster;
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::ClusterMasterSettings;

/// What a leader publishes in the election, so standbys can name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// QUIC address (group masters, enrollment).
    pub quic: SocketAddr,
    /// REST API address.
    pub api: SocketAddr,
}

impl LeaderInfo {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// One cluster master process, whatever its role.
pub struct Node {
    pub(crate) settings: ClusterMasterSettings,
    pub(crate) km: Arc<dyn KeyMaster>,
    /// Our own addresses as published when we lead.
    pub(crate) me: LeaderInfo,
    active: OnceLock<Arc<Cluster>>,
    leader: RwLock<Option<LeaderInfo>>,
    /// The API's latency per route, whether this master leads or stands by.
    pub(crate) api_latency: crate::api::ApiLatency,
}

impl Node {
    pub(crate) fn new(
        settings: ClusterMasterSettings,
        km: Arc<dyn KeyMaster>,
        me: LeaderInfo,
    ) -> Arc<Self> {
        Arc::new(Node {
            settings,
            km,
            me,
            active: OnceLock::new(),
            leader: RwLock::new(None),
            api_latency: Default::default(),
        })
    }

    /// The cluster, once this master leads.
    pub fn active(&self) -> Option<&Arc<Cluster>> {
        self.active.get()
    }

    pub(crate) fn activate(&self, cluster: Arc<Cluster>) {
        let _ = self.active.set(cluster);
    }

    /// The leader as last seen in the key master (standbys refresh it).
    pub fn leader(&self) -> Option<LeaderInfo> {
        if self.active.get().is_some() {
            return Some(self.me.clone());
        }
        self.leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_leader(&self, leader: Option<LeaderInfo>) {
        *self.leader.write().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// A sentence naming the leader, for refusals and 503s.
    pub(crate) fn standby_message(&self) -> String {
        match self.leader() {
            Some(l) => format!(
                "this cluster master is a standby; the leader is at {} (API http://{})",
                l.quic, l.api
            ),
            None => {
                "this cluster master is a standby and no leader is known right now; retry shortly"
                    .to_string()
            }
        }
    }
}
