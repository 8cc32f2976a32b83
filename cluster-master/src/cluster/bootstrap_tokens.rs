//! Bootstrap tokens: created, listed and deleted in the key master (only the SHA-256
//! of a secret is stored), and checked when a node or group master enrolls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use glory_keymaster::schema::{self, BootstrapScope, BootstrapTokenRecord, RECORD_VERSION};
use glory_keymaster::{Compare, KeyMasterError, Txn, TxnOp};
use glory_protocol::{Refusal, RefusalCode};

use super::{refusal, unavailable, Cluster};
use crate::auth::{self, TokenError};

impl Cluster {
    /// Check a bootstrap token for `scope`; returns its record and the revision it was
    /// read at.
    pub(crate) async fn bootstrap_token(
        &self,
        token: &str,
        scope: BootstrapScope,
    ) -> Result<(BootstrapTokenRecord, i64), Refusal> {
        let bad = |e: TokenError| {
            refusal(
                RefusalCode::BadToken,
                format!("bootstrap token rejected: {e}"),
            )
        };
        let (id, secret) = auth::parse_token(token).map_err(bad)?;
        let (record, rev) = match self.token_cache.get(id, Instant::now()) {
            Some((record, rev)) => (Some(record), rev),
            None => {
                let kv = self
                    .km
                    .get(&schema::bootstrap_token_key(id))
                    .await
                    .map_err(unavailable)?;
                match kv {
                    Some(kv) => {
                        let record = schema::decode::<BootstrapTokenRecord>(&kv.key, &kv.value)
                            .map_err(|e| refusal(RefusalCode::Unavailable, e.to_string()))?;
                        self.token_cache
                            .keep(id, &record, kv.mod_revision, Instant::now());
                        (Some(record), kv.mod_revision)
                    }
                    None => (None, 0),
                }
            }
        };
        if let Err(e) =
            auth::check_bootstrap(record.as_ref(), secret, scope, glory_protocol::now_ms())
        {
            let secret_known = e != TokenError::Invalid;
            let refused = bad(e);
            // A token minted for one boot, shown by the machine it was minted for (it
            // knows the secret): that boot ends here, and says why.
            let boot_mac = record
                .as_ref()
                .filter(|_| secret_known)
                .and_then(|r| r.boot_mac.as_deref());
            self.boot_token_used(boot_mac, Err(&refused.message)).await;
            return Err(refused);
        }
        Ok((record.ok_or_else(|| bad(TokenError::Invalid))?, rev))
    }

    /// Create a bootstrap token; returns the token string (shown once) and its record.
    pub async fn create_bootstrap_token(
        &self,
        ttl: Option<Duration>,
        single_use: bool,
        scope: BootstrapScope,
        description: &str,
    ) -> Result<(String, BootstrapTokenRecord), KeyMasterError> {
        self.create_bootstrap_token_for(ttl, single_use, scope, description, None)
            .await
    }

    /// A node token whose nodes join `group` (which must exist when they enroll).
    pub async fn create_group_bootstrap_token(
        &self,
        ttl: Option<Duration>,
        description: &str,
        group: &str,
    ) -> Result<String, KeyMasterError> {
        let binding = TokenBinding {
            boot_mac: None,
            group: Some(group.to_string()),
        };
        let (token, _) = self
            .create_bootstrap_token_for(
                ttl,
                false,
                BootstrapScope::Node,
                description,
                Some(binding),
            )
            .await?;
        Ok(token)
    }

    /// [`Self::create_bootstrap_token`], bound to one boot of a MAC or to a group
    /// when given.
    pub(crate) async fn create_bootstrap_token_for(
        &self,
        ttl: Option<Duration>,
        single_use: bool,
        scope: BootstrapScope,
        description: &str,
        binding: Option<TokenBinding>,
    ) -> Result<(String, BootstrapTokenRecord), KeyMasterError> {
        let binding = binding.unwrap_or_default();
        let (id, secret, token) = auth::new_token("gb-");
        let now = glory_protocol::now_ms();
        let record = BootstrapTokenRecord {
            v: RECORD_VERSION,
            id: id.clone(),
            secret_sha256: auth::hash_secret(&secret),
            created_ms: now,
            expires_ms: ttl.map(|t| now + t.as_millis() as u64),
            single_use,
            used: false,
            scope,
            description: description.to_string(),
            boot_mac: binding.boot_mac,
            group: binding.group,
        };
        self.km_txn(Txn {
            compares: vec![Compare::absent(schema::bootstrap_token_key(&id))],
            success: vec![TxnOp::put(
                schema::bootstrap_token_key(&id),
                schema::encode(&record),
            )],
            failure: vec![],
        })
        .await?;
        Ok((token, record))
    }

    pub async fn list_bootstrap_tokens(&self) -> Result<Vec<BootstrapTokenRecord>, KeyMasterError> {
        let (kvs, _) = self.km.get_prefix(schema::BOOTSTRAP_TOKENS_PREFIX).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| schema::decode(&kv.key, &kv.value).ok())
            .collect())
    }

    pub async fn delete_bootstrap_token(&self, id: &str) -> Result<bool, KeyMasterError> {
        self.token_cache.forget(id);
        self.km_delete(schema::bootstrap_token_key(id)).await
    }
}

/// How long a multi-use token read from the key master is used without reading it again.
const TOKEN_CACHE_FOR: Duration = Duration::from_secs(1);

/// Multi-use bootstrap tokens as last read from the key master, for a second: 10,000
/// machines enrolling with one token read it once a second, not 10,000 times. A token
/// deleted through another cluster master is refused here at most a second later (one
/// deleted through this one at once). Single-use tokens are always read afresh: their
/// enrollment compares the revision read.
#[derive(Default)]
pub(crate) struct TokenCache(Mutex<HashMap<String, (Instant, BootstrapTokenRecord, i64)>>);

impl TokenCache {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, BootstrapTokenRecord, i64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record and revision read less than [`TOKEN_CACHE_FOR`] before `now`.
    fn get(&self, id: &str, now: Instant) -> Option<(BootstrapTokenRecord, i64)> {
        let mut cache = self.lock();
        match cache.get(id) {
            Some((read, record, rev)) if now.saturating_duration_since(*read) < TOKEN_CACHE_FOR => {
                Some((record.clone(), *rev))
            }
            Some(_) => {
                cache.remove(id);
                None
            }
            None => None,
        }
    }

    fn keep(&self, id: &str, record: &BootstrapTokenRecord, rev: i64, now: Instant) {
        if record.single_use {
            return;
        }
        let mut cache = self.lock();
        // Bounded by the tokens in use at once; stale entries go when next looked up.
        if cache.len() >= 1024 {
            cache.retain(|_, (read, _, _)| now.saturating_duration_since(*read) < TOKEN_CACHE_FOR);
        }
        cache.insert(id.to_string(), (now, record.clone(), rev));
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// What a bootstrap token is bound to, beyond its scope.
#[derive(Default)]
pub(crate) struct TokenBinding {
    /// One boot of this MAC (minted for a provisioner).
    pub boot_mac: Option<String>,
    /// The group its nodes join.
    pub group: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(single_use: bool) -> BootstrapTokenRecord {
        BootstrapTokenRecord {
            v: RECORD_VERSION,
            id: "abc".into(),
            secret_sha256: String::new(),
            created_ms: 0,
            expires_ms: None,
            single_use,
            used: false,
            scope: BootstrapScope::Any,
            description: String::new(),
            boot_mac: None,
            group: None,
        }
    }

    #[test]
    fn multi_use_tokens_are_kept_for_a_second_single_use_ones_never() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        cache.keep("abc", &record(false), 7, t0);
        assert_eq!(
            cache
                .get("abc", t0 + Duration::from_millis(999))
                .map(|(_, rev)| rev),
            Some(7)
        );
        assert!(
            cache.get("abc", t0 + TOKEN_CACHE_FOR).is_none(),
            "read again after a second"
        );
        cache.keep("abc", &record(false), 8, t0);
        cache.forget("abc");
        assert!(
            cache.get("abc", t0).is_none(),
            "a token deleted here is forgotten at once"
        );
        cache.keep("abc", &record(true), 9, t0);
        assert!(
            cache.get("abc", t0).is_none(),
            "single-use tokens are always read afresh"
        );
    }
}
