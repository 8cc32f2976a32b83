//! Services on the cluster master's side (docs/SERVICES.md): the records in memory and
//! in the key master (`/glory/services/{name}`, each change one compare-and-swap), the
//! operations the API calls, and the tasks of the active master: the reconcile loop
//! (`reconcile.rs`, deciding with `glory_service_manager::reconcile`), the balancers
//! it owns (`balancers.rs`) and the autoscaler (`scaling.rs`).
//!
//! Instances are processes `svc/{service}/{instance}` supervised by the nodes'
//! agents, which check their health; the records say where each instance should run,
//! the agents' reports say how it is.

mod balancers;
mod reconcile;
mod scaling;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use glory_keymaster::schema;
use glory_keymaster::{Compare, KeyMaster, Revision, Txn, TxnOp};
use glory_service_manager::autoscale::{Autoscaler, Decision};
use glory_service_manager::model::ServiceRecord;
use glory_service_manager::reconcile::begin_restart;
use glory_service_manager::spec::ServiceSpec;

use crate::cluster::Cluster;
use crate::events::EventData;
use crate::pools::OpError;

pub(crate) use balancers::Balancers;
pub(crate) use reconcile::reconciler;
pub(crate) use scaling::autoscaler;

/// Scaling decisions kept per service for `GET /services/{name}/scaling`.
const DECISIONS_KEPT: usize = 200;

/// The services, in memory (the key master has them too).
#[derive(Default)]
pub(crate) struct ServiceState {
    /// Each record with the revision it was stored at.
    records: RwLock<BTreeMap<String, (ServiceRecord, Revision)>>,
    /// When a start of `(process id, epoch)` was last sent (repeated until confirmed).
    start_sent: Mutex<HashMap<(String, u64), Instant>>,
    /// Services whose "no node can take an instance" was announced.
    unplaced: Mutex<BTreeMap<String, String>>,
    /// When each service last grew its elastic pool.
    grown: Mutex<HashMap<String, Instant>>,
    /// The autoscaler's memory and its recent decisions, per service.
    scaling: Mutex<BTreeMap<String, (Autoscaler, VecDeque<Decision>)>>,
    pub(crate) balancers: Balancers,
    /// Wakes the reconciler (a service, a process or a node changed).
    pub(crate) changed: tokio::sync::Notify,
    /// Reconcile passes made, and the CPU time they took (ns; `/metrics`).
    pub(crate) passes: std::sync::atomic::AtomicU64,
    pub(crate) pass_cpu_ns: std::sync::atomic::AtomicU64,
}

impl ServiceState {
    pub(crate) async fn load(
        km: &dyn KeyMaster,
        balancer_dir: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        let (kvs, _) = km.get_prefix(schema::SERVICES_PREFIX).await?;
        let mut records = BTreeMap::new();
        for kv in kvs {
            let record: ServiceRecord = schema::decode(&kv.key, &kv.value)?;
            records.insert(record.spec.name.clone(), (record, kv.mod_revision));
        }
        Ok(ServiceState {
            records: RwLock::new(records),
            balancers: Balancers::new(balancer_dir),
            ..Default::default()
        })
    }

    pub(crate) fn all(&self) -> Vec<ServiceRecord> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(r, _)| r.clone())
            .collect()
    }

    pub(crate) fn get(&self, name: &str) -> Option<ServiceRecord> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|(r, _)| r.clone())
    }

    fn revision(&self, name: &str) -> Option<Revision> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|(_, rev)| *rev)
    }

    /// The recent scaling decisions of a service, oldest first.
    pub(crate) fn decisions(&self, name: &str) -> Vec<Decision> {
        self.scaling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|(_, d)| d.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn invalid(field: &str, message: impl std::fmt::Display) -> OpError {
    OpError::Invalid(format!("{field}: {message}"))
}

fn conflict(message: impl Into<String>) -> OpError {
    OpError::Conflict {
        message: message.into(),
        fit: None,
    }
}

impl Cluster {
    /// Store `record` if the service is still at `rev` (`None`: absent); the new
    /// revision, or `None` when someone wrote first.
    async fn store_service(
        &self,
        record: &ServiceRecord,
        rev: Option<Revision>,
    ) -> Result<Option<Revision>, OpError> {
        let key = schema::service_key(&record.spec.name);
        let compare = match rev {
            Some(rev) => Compare::mod_revision(key.clone(), rev),
            None => Compare::absent(key.clone()),
        };
        let resp = self
            .km_txn(Txn {
                compares: vec![compare],
                success: vec![TxnOp::put(key, schema::encode(record))],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Ok(None);
        }
        {
            let mut records = self
                .services
                .records
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let name = &record.spec.name;
            // An update lands only on a record still here: a service deleted between
            // this write and now stays deleted (its key is gone from the key master).
            let keep = rev.is_none() || records.get(name).is_some_and(|(_, r)| *r < resp.revision);
            if keep {
                records.insert(name.clone(), (record.clone(), resp.revision));
            }
        }
        self.services.changed.notify_one();
        Ok(Some(resp.revision))
    }

    /// Reload one service from the key master (after a lost compare-and-swap).
    async fn reload_service(&self, name: &str) -> Result<(), OpError> {
        let key = schema::service_key(name);
        let mut records = match self.km.get(&key).await? {
            Some(kv) => {
                let record: ServiceRecord = schema::decode(&kv.key, &kv.value)
                    .map_err(|e| OpError::Invalid(e.to_string()))?;
                let mut records = self
                    .services
                    .records
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                // Read before a deletion that finished since: not brought back.
                if let Some(entry) = records.get_mut(name) {
                    if entry.1 < kv.mod_revision {
                        *entry = (record, kv.mod_revision);
                    }
                }
                return Ok(());
            }
            None => self
                .services
                .records
                .write()
                .unwrap_or_else(|p| p.into_inner()),
        };
        records.remove(name);
        Ok(())
    }

    /// Change service `name` with `f` and store it, retrying on a lost
    /// compare-and-swap; the stored record.
    pub(crate) async fn update_service(
        &self,
        name: &str,
        f: impl Fn(&mut ServiceRecord) -> Result<(), OpError>,
    ) -> Result<ServiceRecord, OpError> {
        for _ in 0..5 {
            // Record and revision read together: a service deleted meanwhile is not
            // written back as new (a missing revision would mean "create").
            let entry = self
                .services
                .records
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned();
            let Some((mut record, rev)) = entry else {
                return Err(OpError::NotFound(format!("service {name} does not exist")));
            };
            let rev = Some(rev);
            f(&mut record)?;
            if self.store_service(&record, rev).await?.is_some() {
                return Ok(record);
            }
            self.reload_service(name).await?;
        }
        Err(conflict(format!(
            "service {name} keeps changing; try again"
        )))
    }

    /// Create a service on `spec.pool` (already visible to the caller).
    pub(crate) async fn create_service(&self, spec: ServiceSpec) -> Result<ServiceRecord, OpError> {
        spec.validate().map_err(|e| match e.rule {
            true => OpError::Unprocessable(e.to_string()),
            false => OpError::Invalid(e.to_string()),
        })?;
        let tenant = self
            .pools
            .book()
            .get(&spec.pool)
            .map(|p| p.tenant.clone())
            .ok_or_else(|| {
                OpError::Unprocessable(format!("pool: pool {} does not exist", spec.pool))
            })?;
        if self.services.get(&spec.name).is_some() {
            return Err(conflict(format!("service {} already exists", spec.name)));
        }
        self.check_listen(&spec)?;
        let record = ServiceRecord::new(spec, tenant, glory_protocol::now_ms());
        match self.store_service(&record, None).await? {
            Some(_) => {
                self.emit_service(
                    &record,
                    EventData::ServiceCreated {
                        service: record.spec.name.clone(),
                    },
                );
                Ok(record)
            }
            None => Err(conflict(format!(
                "service {} already exists",
                record.spec.name
            ))),
        }
    }

    /// A balancer address is used by one service only.
    fn check_listen(&self, spec: &ServiceSpec) -> Result<(), OpError> {
        let Some(b) = &spec.balancer else {
            return Ok(());
        };
        let taken = self.services.all().into_iter().find(|r| {
            r.spec.name != spec.name
                && r.spec
                    .balancer
                    .as_ref()
                    .is_some_and(|o| o.listen == b.listen)
        });
        match taken {
            Some(other) => Err(conflict(format!(
                "balancer.listen: {} is service {}'s balancer",
                b.listen, other.spec.name
            ))),
            None => Ok(()),
        }
    }

    /// Replace a service's spec. What its processes run (command, package, env,
    /// port, health) changing means a rolling restart; the pool cannot change.
    pub(crate) async fn replace_service(
        &self,
        spec: ServiceSpec,
    ) -> Result<ServiceRecord, OpError> {
        spec.validate().map_err(|e| match e.rule {
            true => OpError::Unprocessable(e.to_string()),
            false => OpError::Invalid(e.to_string()),
        })?;
        self.check_listen(&spec)?;
        let now = glory_protocol::now_ms();
        let record = self
            .update_service(&spec.name.clone(), |r| {
                if r.spec.pool != spec.pool {
                    return Err(invalid(
                        "pool",
                        format!(
                            "service {} runs on pool {}; a service cannot move (create another)",
                            r.spec.name, r.spec.pool
                        ),
                    ));
                }
                let old = &r.spec;
                let runtime_changed = old.command != spec.command
                    || old.package != spec.package
                    || old.env != spec.env
                    || old.port != spec.port
                    || old.health != spec.health;
                let instances_changed = old.instances != spec.instances;
                r.spec = spec.clone();
                if instances_changed {
                    r.desired = spec.instances.desired;
                }
                r.desired = r.desired.clamp(spec.instances.min, spec.instances.max);
                if runtime_changed {
                    begin_restart(r, now);
                }
                Ok(())
            })
            .await?;
        self.emit_service(
            &record,
            EventData::ServiceChanged {
                service: record.spec.name.clone(),
                change: "updated".into(),
                desired: record.desired,
            },
        );
        Ok(record)
    }

    /// Delete a service: its instances' processes are stopped (nothing wants them any
    /// more) and its balancer is closed.
    pub(crate) async fn delete_service(&self, name: &str) -> Result<ServiceRecord, OpError> {
        let Some(record) = self.services.get(name) else {
            return Err(OpError::NotFound(format!("service {name} does not exist")));
        };
        self.km_txn(Txn::alone(TxnOp::delete(schema::service_key(name))))
            .await?;
        self.services
            .records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.services
            .scaling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.services.balancers.close(name).await;
        self.services.changed.notify_one();
        self.emit_service(
            &record,
            EventData::ServiceDeleted {
                service: name.to_string(),
            },
        );
        Ok(record)
    }

    /// `start`, `stop`, `restart` (rolling) or `scale` to `desired`.
    pub(crate) async fn service_action(
        &self,
        name: &str,
        action: &str,
        desired: Option<u32>,
    ) -> Result<ServiceRecord, OpError> {
        let now = glory_protocol::now_ms();
        let record = self
            .update_service(name, |r| {
                match action {
                    "start" => r.stopped = false,
                    "stop" => r.stopped = true,
                    "restart" => {
                        if r.stopped {
                            return Err(conflict(format!("service {name} is stopped; start it")));
                        }
                        begin_restart(r, now);
                    }
                    "scale" => {
                        let d = desired.unwrap_or(r.desired);
                        let i = r.spec.instances;
                        if !(i.min..=i.max).contains(&d) {
                            return Err(OpError::Unprocessable(format!(
                                "desired: {d} is outside the service's min {} and max {}",
                                i.min, i.max
                            )));
                        }
                        r.desired = d;
                    }
                    other => return Err(OpError::Invalid(format!("unknown action {other}"))),
                }
                Ok(())
            })
            .await?;
        self.emit_service(
            &record,
            EventData::ServiceChanged {
                service: name.to_string(),
                change: action.to_string(),
                desired: record.desired,
            },
        );
        Ok(record)
    }

    /// Publish a service's event on its pool's stream.
    pub(crate) fn emit_service(&self, record: &ServiceRecord, data: EventData) {
        self.events
            .emit(Some((&record.spec.pool, &record.tenant)), data);
    }
}
