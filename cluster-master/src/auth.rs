//! Tokens: bootstrap tokens that let a machine enroll, and API bearer tokens. Tokens
//! are `<id>.<secret>`; only the SHA-256 of the secret is stored. Checks are pure.

use glory_keymaster::schema::{BootstrapScope, BootstrapTokenRecord};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed (expected <id>.<secret>)")]
    Malformed,
    #[error("token is not valid")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("single-use token was already used")]
    Used,
    #[error("token may not enroll this kind of member")]
    WrongScope,
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compare two equal-length hex digests without an early exit.
fn digest_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A new token: `(id, secret, "<id>.<secret>")`. `prefix` tells kinds apart in logs.
pub fn new_token(prefix: &str) -> (String, String, String) {
    let id = format!("{prefix}{}", hex::encode(rand::random::<[u8; 4]>()));
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let token = format!("{id}.{secret}");
    (id, secret, token)
}

/// Split `<id>.<secret>`.
pub fn parse_token(token: &str) -> Result<(&str, &str), TokenError> {
    let (id, secret) = token.trim().split_once('.').ok_or(TokenError::Malformed)?;
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if ok(id) && ok(secret) {
        Ok((id, secret))
    } else {
        Err(TokenError::Malformed)
    }
}

/// Whether `secret` matches a stored hash.
pub fn secret_matches(stored_sha256: &str, secret: &str) -> bool {
    digest_eq(stored_sha256, &hash_secret(secret))
}

/// May this bootstrap token enroll a member of `scope` at `now_ms`?
pub fn check_bootstrap(
    record: Option<&BootstrapTokenRecord>,
    secret: &str,
    scope: BootstrapScope,
    now_ms: u64,
) -> Result<(), TokenError> {
    let record = record.ok_or(TokenError::Invalid)?;
    if !secret_matches(&record.secret_sha256, secret) {
        return Err(TokenError::Invalid);
    }
    if record.expires_ms.is_some_and(|exp| now_ms >= exp) {
        return Err(TokenError::Expired);
    }
    if record.single_use && record.used {
        return Err(TokenError::Used);
    }
    let covered = record.scope == scope
        || (record.scope == BootstrapScope::Any && scope != BootstrapScope::Provisioner);
    if !covered {
        return Err(TokenError::WrongScope);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        secret: &str,
        expires_ms: Option<u64>,
        single_use: bool,
        used: bool,
    ) -> BootstrapTokenRecord {
        BootstrapTokenRecord {
            v: 1,
            id: "b1".into(),
            secret_sha256: hash_secret(secret),
            created_ms: 0,
            expires_ms,
            single_use,
            used,
            scope: BootstrapScope::Node,
            description: String::new(),
            boot_mac: None,
            group: None,
        }
    }

    #[test]
    fn valid_token_passes() {
        let r = record("s3cret", Some(1000), false, false);
        assert_eq!(
            check_bootstrap(Some(&r), "s3cret", BootstrapScope::Node, 999),
            Ok(())
        );
    }

    #[test]
    fn wrong_unknown_expired_used_and_scope() {
        let r = record("s3cret", Some(1000), true, false);
        assert_eq!(
            check_bootstrap(Some(&r), "guess", BootstrapScope::Node, 0),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            check_bootstrap(None, "s3cret", BootstrapScope::Node, 0),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            check_bootstrap(Some(&r), "s3cret", BootstrapScope::Node, 1000),
            Err(TokenError::Expired)
        );
        let used = record("s3cret", None, true, true);
        assert_eq!(
            check_bootstrap(Some(&used), "s3cret", BootstrapScope::Node, 0),
            Err(TokenError::Used)
        );
        let reusable = record("s3cret", None, false, true);
        assert_eq!(
            check_bootstrap(
                Some(&reusable),
                "s3cret",
                BootstrapScope::Node,
                u64::MAX - 1
            ),
            Ok(())
        );
        assert_eq!(
            check_bootstrap(Some(&reusable), "s3cret", BootstrapScope::GroupMaster, 0),
            Err(TokenError::WrongScope)
        );
    }

    #[test]
    fn a_token_expires_at_its_expiry_time_not_after() {
        // (expires_ms, now_ms, allowed)
        let table = [
            (Some(1000), 0, true),
            (Some(1000), 999, true),
            (Some(1000), 1000, false),
            (Some(1000), 1001, false),
            // Made with no time to live: expired from the start.
            (Some(0), 0, false),
            (None, u64::MAX, true),
        ];
        for (expires_ms, now_ms, allowed) in table {
            let r = record("s3cret", expires_ms, false, false);
            let got = check_bootstrap(Some(&r), "s3cret", BootstrapScope::Node, now_ms);
            let want = if allowed {
                Ok(())
            } else {
                Err(TokenError::Expired)
            };
            assert_eq!(got, want, "expires_ms {expires_ms:?} at {now_ms}");
        }
    }

    #[test]
    fn token_format() {
        let (id, secret, token) = new_token("gb-");
        assert_eq!(parse_token(&token), Ok((id.as_str(), secret.as_str())));
        assert_eq!(parse_token("nodot"), Err(TokenError::Malformed));
        assert_eq!(parse_token("a.b c"), Err(TokenError::Malformed));
        assert_eq!(parse_token(".x"), Err(TokenError::Malformed));
        assert!(secret_matches(&hash_secret(&secret), &secret));
        assert!(!secret_matches(&hash_secret(&secret), "other"));
    }
}
