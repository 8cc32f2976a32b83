//! Monitoring at the cluster master: monitors (configuration, in the key master, pushed
//! down to the group masters they apply to), the alerts group masters report (in
//! memory), silences (in the key master), and history queries answered by the node's
//! group master. No sample passes through here.

mod alertmanager;
pub(crate) use alertmanager::rfc3339;
mod alerts;
mod forward;
mod monitors;
mod queries;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use glory_keymaster::schema::{self, MonitorRecord, SilenceRecord};
use glory_keymaster::{KeyMaster, KeyMasterError};
use glory_protocol::monitoring::{MetricsAnswer, MonitorSpec};
use tokio::sync::oneshot;

pub(crate) use alerts::{Alert, AlertBook};
pub(crate) use forward::forward_alerts;

#[derive(Default)]
pub(crate) struct MonitoringState {
    monitors: RwLock<BTreeMap<String, MonitorRecord>>,
    silences: RwLock<BTreeMap<String, SilenceRecord>>,
    alerts: Mutex<AlertBook>,
    /// The specs last sent to each group's active master.
    sent: Mutex<HashMap<String, Vec<MonitorSpec>>>,
    /// History queries waiting for their group master's answer.
    queries: Mutex<HashMap<u64, oneshot::Sender<MetricsAnswer>>>,
    next_query: AtomicU64,
    /// Serialises this master's monitor and silence writes.
    write: tokio::sync::Mutex<()>,
}

fn guard<T>(r: Result<T, std::sync::PoisonError<T>>) -> T {
    r.unwrap_or_else(|p| p.into_inner())
}

impl MonitoringState {
    /// Monitors and silences from the key master.
    pub(crate) async fn load(km: &dyn KeyMaster) -> Result<Self, KeyMasterError> {
        let (kvs, _) = km.get_prefix(schema::MONITORS_PREFIX).await?;
        let monitors = kvs
            .iter()
            .filter_map(|kv| schema::decode::<MonitorRecord>(&kv.key, &kv.value).ok())
            .map(|m| (m.name.clone(), m))
            .collect();
        let (kvs, _) = km.get_prefix(schema::SILENCES_PREFIX).await?;
        let silences = kvs
            .iter()
            .filter_map(|kv| schema::decode::<SilenceRecord>(&kv.key, &kv.value).ok())
            .map(|s| (s.id.clone(), s))
            .collect();
        Ok(MonitoringState {
            monitors: RwLock::new(monitors),
            silences: RwLock::new(silences),
            ..Default::default()
        })
    }

    pub(crate) fn monitors(&self) -> RwLockReadGuard<'_, BTreeMap<String, MonitorRecord>> {
        guard(self.monitors.read())
    }
    fn monitors_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<String, MonitorRecord>> {
        guard(self.monitors.write())
    }
    pub(crate) fn silences(&self) -> RwLockReadGuard<'_, BTreeMap<String, SilenceRecord>> {
        guard(self.silences.read())
    }
    fn silences_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<String, SilenceRecord>> {
        guard(self.silences.write())
    }
    pub(crate) fn alerts(&self) -> MutexGuard<'_, AlertBook> {
        guard(self.alerts.lock())
    }
}
