//! The key that seals secrets the cluster masters keep in the key master (BMC
//! passwords): ChaCha20-Poly1305, 32 bytes from a file every cluster master shares.
//! A key master dump or backup then holds no password in clear; the API never returns
//! one and nothing logs one.

use std::path::Path;

use anyhow::{bail, Context};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

const PREFIX: &str = "v1:";

pub(crate) struct SecretsKey {
    cipher: ChaCha20Poly1305,
}

impl SecretsKey {
    /// Read the key from `path` (64 hex digits), or create it there (mode 0600).
    pub(crate) fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        let key = match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .with_context(|| format!("{}: not hex", path.display()))?;
                if bytes.len() != 32 {
                    bail!(
                        "{}: a secrets key is 64 hex digits (32 bytes)",
                        path.display()
                    );
                }
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                glory_protocol::process::write_private(path, hex::encode(&bytes).as_bytes())
                    .with_context(|| format!("write {}", path.display()))?;
                bytes
            }
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        Ok(Self::from_bytes(&key))
    }

    pub(crate) fn from_bytes(key: &[u8]) -> Self {
        SecretsKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// `v1:<hex of nonce and ciphertext>`.
    pub(crate) fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .unwrap_or_default();
        format!("{PREFIX}{}{}", hex::encode(nonce), hex::encode(sealed))
    }

    pub(crate) fn open(&self, sealed: &str) -> Result<String, String> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() > 12)
            .ok_or("the stored password is not a sealed secret")?;
        let (nonce, body) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| {
                "the stored password was sealed with another secrets key: give every cluster \
                 master the same secrets_key_file, or set the BMC password again"
                    .to_string()
            })?;
        String::from_utf8(plain).map_err(|_| "the stored password is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_with_the_same_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let key = SecretsKey::load_or_create(&path).unwrap();
        let sealed = key.seal("hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, key.seal("hunter2"), "a fresh nonce each time");
        // The same file gives the same key (another cluster master, a restart).
        let again = SecretsKey::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), "hunter2");
        let other = SecretsKey::from_bytes(&[7u8; 32]);
        assert!(other
            .open(&sealed)
            .unwrap_err()
            .contains("another secrets key"));
        assert!(key.open("v1:zz").is_err());
        assert!(key.open("clear text").is_err());
        std::fs::write(&path, "abc").unwrap();
        assert!(SecretsKey::load_or_create(&path).is_err());
    }
}
