//! Tenants: created and deleted in the key master first; a tenant is deleted only
//! without pools, and its API tokens go with it.

use std::collections::BTreeMap;

use crate::events::EventData;
use glory_keymaster::schema::{self, Quota, TenantRecord, RECORD_VERSION};
use glory_keymaster::{Compare, KeyMaster, KeyMasterError, Txn, TxnOp};

use super::{check_name, quota, sharing, OpError, OpResultT};
use crate::cluster::Cluster;

/// Every tenant in the key master, by name.
pub(crate) async fn load_tenants(
    km: &dyn KeyMaster,
) -> Result<BTreeMap<String, TenantRecord>, KeyMasterError> {
    let (kvs, _) = km.get_prefix(schema::TENANTS_PREFIX).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| schema::decode::<TenantRecord>(&kv.key, &kv.value).ok())
        .map(|t| (t.name.clone(), t))
        .collect())
}

impl Cluster {
    /// Create a tenant (a name pools and tokens belong to).
    pub async fn create_tenant(&self, name: &str, description: &str) -> OpResultT<TenantRecord> {
        check_name("name", name)?;
        if description.len() > 256 {
            return Err(OpError::Invalid(
                "description: at most 256 characters".into(),
            ));
        }
        let record = TenantRecord {
            v: RECORD_VERSION,
            name: name.to_string(),
            created_ms: glory_protocol::now_ms(),
            description: description.to_string(),
            quota: None,
        };
        let resp = self
            .km_txn(Txn {
                compares: vec![Compare::absent(schema::tenant_key(name))],
                success: vec![TxnOp::put(
                    schema::tenant_key(name),
                    schema::encode(&record),
                )],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(OpError::conflict(format!("tenant {name} already exists")));
        }
        self.pools
            .tenants_mut()
            .insert(name.to_string(), record.clone());
        self.events.emit(
            None,
            EventData::TenantCreated {
                tenant: name.to_string(),
            },
        );
        Ok(record)
    }

    /// Set a tenant's quota: valid on its own, and every tenant's guarantee still fits
    /// the cluster's nodes. Serialized with pool writes, so no pool grows past a limit
    /// that is being set.
    pub async fn set_quota(&self, name: &str, quota: Quota) -> OpResultT<TenantRecord> {
        quota::validate(&quota).map_err(OpError::Unprocessable)?;
        let _serial = self.pools.write.lock().await;
        let cluster_nodes = self.read().nodes.len() as u64;
        let mut record = {
            let tenants = self.pools.tenants();
            let record = tenants
                .get(name)
                .cloned()
                .ok_or_else(|| OpError::NotFound(format!("tenant {name} does not exist")))?;
            quota::check_guarantees(&tenants, name, &quota, cluster_nodes)
                .map_err(OpError::conflict)?;
            record
        };
        record.quota = Some(quota);
        self.km_txn(Txn::alone(TxnOp::put(
            schema::tenant_key(name),
            schema::encode(&record),
        )))
        .await?;
        self.pools
            .tenants_mut()
            .insert(name.to_string(), record.clone());
        Ok(record)
    }

    /// How the tenants share the cluster now, and the cluster's capacity (every
    /// enrolled node).
    pub fn sharing(&self) -> (Vec<sharing::TenantShare>, sharing::Capacity) {
        let facts = self.node_facts();
        let capacity = sharing::capacity(&facts);
        let tenants = self.pools.tenants().clone();
        let usage = {
            let book = self.pools.book();
            tenants
                .keys()
                .map(|t| (t.clone(), quota::usage(&book, &facts, t, None)))
                .collect()
        };
        (sharing::shares(&tenants, &usage, capacity), capacity)
    }

    /// Reclaims under way for `tenant` (nodes coming to it) and from it (nodes
    /// leaving it).
    pub fn pending_reclaims(&self, tenant: &str) -> (usize, usize) {
        super::reclaim::pending_for(&self.pools.book(), tenant)
    }

    /// What `name`'s pools hold now.
    pub fn tenant_usage(&self, name: &str) -> quota::Usage {
        let facts = self.node_facts();
        quota::usage(&self.pools.book(), &facts, name, None)
    }

    /// Delete a tenant that has no pools; its API tokens are revoked with it.
    pub async fn delete_tenant(&self, name: &str) -> OpResultT<()> {
        // No pool of this master can be created for the tenant meanwhile.
        let _serial = self.pools.write.lock().await;
        if !self.pools.tenants().contains_key(name) {
            return Err(OpError::NotFound(format!("tenant {name} does not exist")));
        }
        let pools = self.pools.book().tenant_pools(name);
        if !pools.is_empty() {
            return Err(OpError::conflict(format!(
                "tenant {name} still has pools: {}",
                pools.join(", ")
            )));
        }
        let tokens: Vec<String> = self
            .api_tokens()
            .into_iter()
            .filter(|t| t.tenant.as_deref() == Some(name))
            .map(|t| t.id)
            .collect();
        let mut success = vec![TxnOp::delete(schema::tenant_key(name))];
        success.extend(
            tokens
                .iter()
                .map(|id| TxnOp::delete(schema::api_token_key(id))),
        );
        self.km_txn(Txn {
            success,
            ..Default::default()
        })
        .await?;
        self.pools.tenants_mut().remove(name);
        self.forget_api_tokens(&tokens);
        self.events.emit(
            None,
            EventData::TenantDeleted {
                tenant: name.to_string(),
            },
        );
        Ok(())
    }
}
