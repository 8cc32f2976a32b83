//! Console users: a name, a role (as API tokens have) and an Argon2id password hash, in
//! the key master. Read there at each sign-in (users are few and sign in rarely), so
//! every cluster master sees the same users without a cache to keep in step.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use glory_keymaster::schema::{self, UserRecord, RECORD_VERSION};
use glory_keymaster::{Compare, Txn, TxnOp};

use super::Cluster;
use crate::pools::{check_name, OpError, OpResultT};

/// Shortest and longest password accepted.
const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 12..=256;

fn hash_password(password: &str) -> Result<String, OpError> {
    // 16 random bytes from the OS-seeded generator the tokens use.
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| OpError::Invalid(format!("password: cannot be salted: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| OpError::Invalid(format!("password: cannot be hashed: {e}")))
}

fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

impl Cluster {
    /// Create a user; `role` and `tenant` as for API tokens.
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        role: &str,
        tenant: Option<&str>,
    ) -> OpResultT<UserRecord> {
        check_name("name", name)?;
        self.check_role(role, tenant)?;
        if !PASSWORD_LEN.contains(&password.chars().count()) {
            return Err(OpError::Invalid(format!(
                "password: between {} and {} characters",
                PASSWORD_LEN.start(),
                PASSWORD_LEN.end()
            )));
        }
        let record = UserRecord {
            v: RECORD_VERSION,
            name: name.to_string(),
            role: role.to_string(),
            tenant: tenant.map(str::to_string),
            password_hash: hash_password(password)?,
            created_ms: glory_protocol::now_ms(),
        };
        let key = schema::user_key(name);
        let done = self
            .km_txn(Txn {
                compares: vec![Compare::absent(key.clone())],
                success: vec![TxnOp::put(key, schema::encode(&record))],
                failure: vec![],
            })
            .await?;
        if !done.succeeded {
            return Err(OpError::Conflict {
                message: format!("user {name} already exists"),
                fit: None,
            });
        }
        Ok(record)
    }

    /// Every user, by name.
    pub async fn users(&self) -> OpResultT<Vec<UserRecord>> {
        let (kvs, _) = self.km.get_prefix(schema::USERS_PREFIX).await?;
        let mut users: Vec<UserRecord> = kvs
            .iter()
            .filter_map(|kv| schema::decode(&kv.key, &kv.value).ok())
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    pub async fn delete_user(&self, name: &str) -> OpResultT<()> {
        let key = schema::user_key(name);
        if self.km.get(&key).await?.is_none() {
            return Err(OpError::NotFound(format!("user {name} does not exist")));
        }
        self.km_txn(Txn {
            success: vec![TxnOp::delete(key)],
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// The user `name` if `password` is theirs. An unknown name costs a hash too, so
    /// the answer's time does not tell which names exist.
    pub async fn check_user(&self, name: &str, password: &str) -> OpResultT<Option<UserRecord>> {
        let kv = self.km.get(&schema::user_key(name)).await?;
        let record: Option<UserRecord> = kv.and_then(|kv| schema::decode(&kv.key, &kv.value).ok());
        let password = password.to_string();
        let hash = record.as_ref().map(|r| r.password_hash.clone());
        // Hashing takes tens of milliseconds: off the async workers.
        let ok = tokio::task::spawn_blocking(move || match hash {
            Some(hash) => password_matches(&hash, &password),
            None => {
                let _ = hash_password(&password);
                false
            }
        })
        .await
        .unwrap_or(false);
        Ok(record.filter(|_| ok))
    }
}
