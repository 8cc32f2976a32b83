//! Remote power control: BMC settings per node (or per MAC before a machine enrolls),
//! the password sealed in the key master, and power actions carried out by the
//! drivers in `glory_provisioner::power` (ipmi, redfish, qemu). Bulk actions start at
//! most `power_actions_per_group_per_second` per group (inrush current) and report
//! every node's result.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glory_keymaster::schema::{self, BmcRecord, RECORD_VERSION};
use glory_keymaster::{KeyMasterError, Txn, TxnOp};
use glory_provisioner::power::{self, BmcSettings, Driver, PowerAction, PowerState};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::events::EventData;

/// How long one power action or status query may take.
const POWER_TIMEOUT: Duration = Duration::from_secs(30);

/// BMC settings as an operator gives them (the password only ever comes in).
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BmcRequest)]
pub(crate) struct BmcInput {
    pub driver: Driver,
    /// A host name or address (no spaces or control characters).
    #[schema(
        pattern = "^[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+$"
    )]
    pub address: String,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<u16>,
    #[serde(default)]
    #[schema(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub user: Option<String>,
    /// Stored sealed; never returned.
    #[serde(default)]
    #[schema(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub password: Option<String>,
    #[serde(default)]
    pub system_id: Option<String>,
    #[serde(default)]
    pub insecure_tls: bool,
}

/// Last known power state of a target.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Power)]
pub(crate) struct PowerView {
    pub state: PowerState,
    pub driver: Driver,
    pub checked_at: u64,
}

/// What went wrong with a power request, mapped to 404/409/502 by the API.
#[derive(Debug)]
pub(crate) enum PowerFailure {
    NoBmc(String),
    Bmc(String),
    Store(KeyMasterError),
}

impl std::fmt::Display for PowerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PowerFailure::NoBmc(m) | PowerFailure::Bmc(m) => f.write_str(m),
            PowerFailure::Store(e) => write!(f, "key master: {e}"),
        }
    }
}

#[derive(Default)]
pub(crate) struct PowerStates {
    last: Mutex<HashMap<String, PowerView>>,
}

pub(crate) fn driver_name(d: Driver) -> &'static str {
    match d {
        Driver::Ipmi => "ipmi",
        Driver::Redfish => "redfish",
        Driver::Qemu => "qemu",
    }
}

fn parse_driver(s: &str) -> Option<Driver> {
    match s {
        "ipmi" => Some(Driver::Ipmi),
        "redfish" => Some(Driver::Redfish),
        "qemu" => Some(Driver::Qemu),
        _ => None,
    }
}

pub(crate) fn action_name(a: PowerAction) -> &'static str {
    match a {
        PowerAction::On => "on",
        PowerAction::Off => "off",
        PowerAction::Cycle => "cycle",
        PowerAction::Reset => "reset",
        PowerAction::Pxe => "pxe",
    }
}

impl Cluster {
    /// Store BMC settings for `target` (a node id or `mac:<mac>`). A missing password
    /// keeps the one stored before.
    pub(crate) async fn set_bmc(
        &self,
        target: &str,
        input: BmcInput,
    ) -> Result<BmcRecord, PowerFailure> {
        let settings = BmcSettings {
            driver: input.driver,
            address: input.address.clone(),
            port: input.port,
            user: input.user.clone(),
            password: input.password.clone(),
            system_id: input.system_id.clone(),
            insecure_tls: input.insecure_tls,
        };
        settings.validate().map_err(PowerFailure::Bmc)?;
        let previous = self.bmc_record(target).await.map_err(PowerFailure::Store)?;
        let password_sealed = match &input.password {
            Some(p) => Some(self.secrets.seal(p)),
            None => previous.and_then(|p| p.password_sealed),
        };
        let record = BmcRecord {
            v: RECORD_VERSION,
            driver: driver_name(input.driver).to_string(),
            address: input.address,
            port: input.port,
            user: input.user,
            password_sealed,
            system_id: input.system_id,
            insecure_tls: input.insecure_tls,
            updated_ms: glory_protocol::now_ms(),
        };
        self.km_txn(Txn {
            compares: vec![],
            success: vec![TxnOp::put(schema::bmc_key(target), schema::encode(&record))],
            failure: vec![],
        })
        .await
        .map_err(PowerFailure::Store)?;
        info!(%target, driver = %record.driver, address = %record.address, "BMC settings stored");
        Ok(record)
    }

    pub(crate) async fn bmc_record(
        &self,
        target: &str,
    ) -> Result<Option<BmcRecord>, KeyMasterError> {
        Ok(match self.km.get(&schema::bmc_key(target)).await? {
            Some(kv) => Some(
                schema::decode(&kv.key, &kv.value)
                    .map_err(|e| KeyMasterError::Unavailable(e.to_string()))?,
            ),
            None => None,
        })
    }

    pub(crate) async fn delete_bmc(&self, target: &str) -> Result<bool, KeyMasterError> {
        self.km_delete(schema::bmc_key(target)).await
    }

    /// Every BMC record, by target.
    pub(crate) async fn bmc_records(&self) -> Result<BTreeMap<String, BmcRecord>, KeyMasterError> {
        let (kvs, _) = self.km.get_prefix(schema::BMC_PREFIX).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let target = kv.key.strip_prefix(schema::BMC_PREFIX)?.to_string();
                Some((target, schema::decode(&kv.key, &kv.value).ok()?))
            })
            .collect())
    }

    fn bmc_settings(&self, target: &str, record: &BmcRecord) -> Result<BmcSettings, PowerFailure> {
        let driver = parse_driver(&record.driver).ok_or_else(|| {
            PowerFailure::Bmc(format!("{target}: unknown BMC driver {:?}", record.driver))
        })?;
        let password = match &record.password_sealed {
            Some(sealed) => Some(
                self.secrets
                    .open(sealed)
                    .map_err(|e| PowerFailure::Bmc(format!("{target}: {e}")))?,
            ),
            None => None,
        };
        Ok(BmcSettings {
            driver,
            address: record.address.clone(),
            port: record.port,
            user: record.user.clone(),
            password,
            system_id: record.system_id.clone(),
            insecure_tls: record.insecure_tls,
        })
    }

    /// A node's BMC settings, or those set for one of its MACs before it enrolled
    /// (a lab VM, a server registered by MAC at racking time).
    pub(crate) async fn bmc_for(&self, target: &str) -> Result<Option<BmcRecord>, KeyMasterError> {
        if let Some(r) = self.bmc_record(target).await? {
            return Ok(Some(r));
        }
        let macs: Vec<String> = {
            let reg = self.read();
            reg.nodes
                .get(target)
                .map(|n| {
                    n.record
                        .inventory
                        .nics
                        .iter()
                        .filter_map(|i| super::normalize_mac(&i.mac))
                        .collect()
                })
                .unwrap_or_default()
        };
        for mac in macs {
            if let Some(r) = self.bmc_record(&format!("mac:{mac}")).await? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    async fn settings_for(&self, target: &str) -> Result<BmcSettings, PowerFailure> {
        let record = self
            .bmc_for(target)
            .await
            .map_err(PowerFailure::Store)?
            .ok_or_else(|| {
                PowerFailure::NoBmc(format!(
                    "{target} has no BMC settings: set them first (PUT .../bmc, or glory bmc set)"
                ))
            })?;
        self.bmc_settings(target, &record)
    }

    /// Carry out `action` on `target`; an event either way.
    pub(crate) async fn power_action(
        &self,
        target: &str,
        action: PowerAction,
    ) -> Result<PowerView, PowerFailure> {
        let settings = self.settings_for(target).await?;
        self.power_with(target, &settings, action).await
    }

    async fn power_with(
        &self,
        target: &str,
        settings: &BmcSettings,
        action: PowerAction,
    ) -> Result<PowerView, PowerFailure> {
        let result = power::execute(settings, action, POWER_TIMEOUT).await;
        let (ok, detail) = match &result {
            Ok(state) => (true, format!("power is {}", state_name(*state))),
            Err(e) => (false, e.to_string()),
        };
        if ok {
            info!(%target, action = action_name(action), %detail, "power action");
        } else {
            warn!(%target, action = action_name(action), %detail, "power action failed");
        }
        self.events.emit(
            None,
            EventData::PowerChanged {
                target: target.to_string(),
                action: action_name(action).to_string(),
                ok,
                detail: detail.clone(),
            },
        );
        let state = result.map_err(|_| PowerFailure::Bmc(format!("{target}: {detail}")))?;
        Ok(self.remember(target, settings.driver, state))
    }

    /// Ask the BMC for `target`'s power state.
    pub(crate) async fn power_status(&self, target: &str) -> Result<PowerView, PowerFailure> {
        let settings = self.settings_for(target).await?;
        let state = power::status(&settings, POWER_TIMEOUT)
            .await
            .map_err(|e| PowerFailure::Bmc(format!("{target}: {e}")))?;
        Ok(self.remember(target, settings.driver, state))
    }

    fn remember(&self, target: &str, driver: Driver, state: PowerState) -> PowerView {
        let view = PowerView {
            state,
            driver,
            checked_at: glory_protocol::now_ms(),
        };
        self.power
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.to_string(), view.clone());
        view
    }

    /// One action on many nodes: per group at most `power_per_group_per_second`
    /// started each second, groups side by side; one result per node, in the order
    /// given.
    pub(crate) async fn power_bulk(
        self: &Arc<Self>,
        action: PowerAction,
        nodes: Vec<String>,
    ) -> Vec<BulkResult> {
        let records = match self.bmc_records().await {
            Ok(r) => r,
            Err(e) => {
                return nodes
                    .into_iter()
                    .map(|node| BulkResult::failed(node, format!("key master: {e}")))
                    .collect()
            }
        };
        let mut by_group: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
        {
            let reg = self.read();
            for (i, node) in nodes.iter().enumerate() {
                let group = reg
                    .nodes
                    .get(node)
                    .map(|n| n.record.group.clone())
                    .unwrap_or_default();
                by_group.entry(group).or_default().push((i, node.clone()));
            }
        }
        let gap = Duration::from_secs_f64(1.0 / self.settings.power_per_group_per_second as f64);
        let records = Arc::new(records);
        let mut tasks = Vec::new();
        for (_, members) in by_group {
            let cluster = self.clone();
            let records = records.clone();
            tasks.push(tokio::spawn(async move {
                let mut started = Vec::new();
                for (k, (i, node)) in members.into_iter().enumerate() {
                    if k > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    let cluster = cluster.clone();
                    let records = records.clone();
                    started.push(tokio::spawn(async move {
                        let record = match records.get(&node) {
                            Some(r) => Some(r.clone()),
                            None => cluster.bmc_for(&node).await.ok().flatten(),
                        };
                        let result = match record {
                            None => Err(PowerFailure::NoBmc(format!("{node} has no BMC settings"))),
                            Some(record) => match cluster.bmc_settings(&node, &record) {
                                Ok(s) => cluster.power_with(&node, &s, action).await,
                                Err(e) => Err(e),
                            },
                        };
                        (i, BulkResult::from_result(node, result))
                    }));
                }
                let mut out = Vec::new();
                for task in started {
                    if let Ok(r) = task.await {
                        out.push(r);
                    }
                }
                out
            }));
        }
        let mut results: Vec<Option<BulkResult>> = (0..nodes.len()).map(|_| None).collect();
        for task in tasks {
            if let Ok(done) = task.await {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
        }
        results
            .into_iter()
            .zip(nodes)
            .map(|(r, node)| {
                r.unwrap_or_else(|| BulkResult::failed(node, "the action's task failed".into()))
            })
            .collect()
    }
}

pub(crate) fn state_name(s: PowerState) -> &'static str {
    match s {
        PowerState::On => "on",
        PowerState::Off => "off",
        PowerState::Unknown => "unknown",
    }
}

/// One node's outcome of a bulk power action.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BulkPowerResult)]
pub(crate) struct BulkResult {
    pub node: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<PowerState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BulkResult {
    fn failed(node: String, error: String) -> Self {
        BulkResult {
            node,
            ok: false,
            state: None,
            error: Some(error),
        }
    }

    fn from_result(node: String, result: Result<PowerView, PowerFailure>) -> Self {
        match result {
            Ok(view) => BulkResult {
                node,
                ok: true,
                state: Some(view.state),
                error: None,
            },
            Err(e) => BulkResult::failed(node, e.to_string()),
        }
    }
}
