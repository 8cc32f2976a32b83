//! Where an agent keeps what enrollment gave it: node id, group, group master
//! addresses and its TLS identity. A restarted agent reuses it and comes back with the
//! same node id without a token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use glory_protocol::TlsIdentity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    pub node_id: String,
    pub group: String,
    /// Group master addresses, active first.
    pub group_masters: Vec<SocketAddr>,
    pub tls: TlsIdentity,
    /// The server identity this was enrolled under (`uuid:…`, `mac:…`...). A state
    /// directory copied to another server (a cloned image) does not match it there,
    /// and that server enrolls afresh with its own key. Empty in files written before
    /// the field existed: adopted as they are.
    #[serde(default)]
    pub claim: String,
}

/// Persistence of the agent identity.
pub trait IdentityStore: Send + Sync + 'static {
    fn load(&self) -> anyhow::Result<Option<AgentIdentity>>;
    fn save(&self, identity: &AgentIdentity) -> anyhow::Result<()>;
    fn clear(&self) -> anyhow::Result<()>;
}

/// `identity.json` in the agent's state directory, readable by root only.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        FileStore {
            path: state_dir.into().join("identity.json"),
        }
    }
}

impl IdentityStore for FileStore {
    fn load(&self) -> anyhow::Result<Option<AgentIdentity>> {
        use anyhow::Context;
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("parse {}", self.path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", self.path.display())),
        }
    }

    fn save(&self, identity: &AgentIdentity) -> anyhow::Result<()> {
        glory_protocol::process::write_private(&self.path, &serde_json::to_vec_pretty(identity)?)?;
        Ok(())
    }

    fn clear(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// In memory, for simulated agents (they survive a simulated power-off, not the process).
#[derive(Default)]
pub struct MemoryStore {
    identity: Mutex<Option<AgentIdentity>>,
}

impl IdentityStore for MemoryStore {
    fn load(&self) -> anyhow::Result<Option<AgentIdentity>> {
        Ok(self
            .identity
            .lock()
            .map_err(|_| anyhow::anyhow!("identity lock poisoned"))?
            .clone())
    }
    fn save(&self, identity: &AgentIdentity) -> anyhow::Result<()> {
        *self
            .identity
            .lock()
            .map_err(|_| anyhow::anyhow!("identity lock poisoned"))? = Some(identity.clone());
        Ok(())
    }
    fn clear(&self) -> anyhow::Result<()> {
        *self
            .identity
            .lock()
            .map_err(|_| anyhow::anyhow!("identity lock poisoned"))? = None;
        Ok(())
    }
}
