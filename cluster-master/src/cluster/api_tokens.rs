//! API bearer tokens: every record kept in memory (each request is checked against
//! it without a key master read), created and revoked in the key master first. Only
//! the SHA-256 of a secret is stored.

use std::collections::HashMap;

use anyhow::Context;
use glory_keymaster::schema::{self, ApiTokenRecord, RECORD_VERSION};
use glory_keymaster::{Compare, KeyMaster, Txn, TxnOp};

use super::Cluster;
use crate::auth;
use crate::pools::{OpError, OpResultT};

/// Every API token record in the key master, by id.
pub(super) async fn load(km: &dyn KeyMaster) -> anyhow::Result<HashMap<String, ApiTokenRecord>> {
    let mut api_tokens = HashMap::new();
    let (tokens, _) = km
        .get_prefix(schema::API_TOKENS_PREFIX)
        .await
        .context("load api tokens")?;
    for kv in tokens {
        let record: ApiTokenRecord = schema::decode(&kv.key, &kv.value)?;
        api_tokens.insert(record.id.clone(), record);
    }
    Ok(api_tokens)
}

impl Cluster {
    /// Make sure an API token exists for `token` (the operator token file of `glory up`).
    pub(crate) async fn ensure_api_token(&self, token: &str, role: &str) -> anyhow::Result<()> {
        let (id, secret) =
            auth::parse_token(token).map_err(|e| anyhow::anyhow!("operator token: {e}"))?;
        if self.check_api_token(token).is_some() {
            return Ok(());
        }
        let record = ApiTokenRecord {
            v: RECORD_VERSION,
            id: id.to_string(),
            secret_sha256: auth::hash_secret(secret),
            role: role.to_string(),
            tenant: None,
            created_ms: glory_protocol::now_ms(),
            description: "operator token".to_string(),
        };
        self.km
            .put(&schema::api_token_key(id), schema::encode(&record), None)
            .await?;
        self.remember_api_token(record);
        Ok(())
    }

    /// Every API token record.
    pub(crate) fn api_tokens(&self) -> Vec<ApiTokenRecord> {
        let tokens = self.api_tokens.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ApiTokenRecord> = tokens.values().cloned().collect();
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        out
    }

    /// Keep a token that the key master has acknowledged.
    pub(crate) fn remember_api_token(&self, record: ApiTokenRecord) {
        self.api_tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), record);
    }

    /// Forget tokens that the key master has deleted.
    pub(crate) fn forget_api_tokens(&self, ids: &[String]) {
        let mut tokens = self.api_tokens.write().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            tokens.remove(id);
        }
    }

    /// The record of a valid API bearer token.
    pub(crate) fn check_api_token(&self, token: &str) -> Option<ApiTokenRecord> {
        let (id, secret) = auth::parse_token(token).ok()?;
        let tokens = self.api_tokens.read().unwrap_or_else(|p| p.into_inner());
        let record = tokens.get(id)?;
        auth::secret_matches(&record.secret_sha256, secret).then(|| record.clone())
    }

    /// Whether `role` (with `tenant`) is one an API token or a user may have.
    pub(crate) fn check_role(&self, role: &str, tenant: Option<&str>) -> OpResultT<()> {
        match (role, tenant) {
            ("operator", None) => {}
            ("operator", Some(_)) => {
                return Err(OpError::Unprocessable(
                    "tenant: the operator role belongs to no tenant".into(),
                ))
            }
            ("tenant" | "component", Some(t)) => {
                if !self.pools.tenants().contains_key(t) {
                    return Err(OpError::Unprocessable(format!(
                        "tenant: {t} does not exist"
                    )));
                }
            }
            ("tenant" | "component", None) => {
                return Err(OpError::Unprocessable(format!(
                    "tenant: the {role} role needs a tenant"
                )))
            }
            (other, _) => {
                return Err(OpError::Invalid(format!(
                    "role: {other:?} is not one of operator, tenant, component"
                )))
            }
        }
        Ok(())
    }

    /// Create an API token; returns the token (shown once) and its record.
    pub async fn create_api_token(
        &self,
        role: &str,
        tenant: Option<&str>,
        description: &str,
    ) -> OpResultT<(String, ApiTokenRecord)> {
        self.check_role(role, tenant)?;
        if description.len() > 256 {
            return Err(OpError::Invalid(
                "description: at most 256 characters".into(),
            ));
        }
        let (id, secret, token) = auth::new_token("ga-");
        let record = ApiTokenRecord {
            v: RECORD_VERSION,
            id: id.clone(),
            secret_sha256: auth::hash_secret(&secret),
            role: role.to_string(),
            tenant: tenant.map(str::to_string),
            created_ms: glory_protocol::now_ms(),
            description: description.to_string(),
        };
        self.km_txn(Txn {
            compares: vec![Compare::absent(schema::api_token_key(&id))],
            success: vec![TxnOp::put(
                schema::api_token_key(&id),
                schema::encode(&record),
            )],
            failure: vec![],
        })
        .await?;
        self.remember_api_token(record.clone());
        Ok((token, record))
    }

    /// Revoke an API token: it is refused from now on.
    pub async fn revoke_api_token(&self, id: &str) -> OpResultT<()> {
        if !self.api_tokens().iter().any(|t| t.id == id) {
            return Err(OpError::NotFound(format!("token {id} does not exist")));
        }
        self.km_txn(Txn {
            success: vec![TxnOp::delete(schema::api_token_key(id))],
            ..Default::default()
        })
        .await?;
        self.forget_api_tokens(&[id.to_string()]);
        Ok(())
    }
}
