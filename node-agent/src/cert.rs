//! The agent's certificate: renewed over its group master session before it expires
//! (`glory_protocol::renewal`), and checked when the agent starts: one that expired
//! while the agent was off (it renews only while connected) needs a bootstrap token.

use glory_protocol::renewal::{CertPeriod, Renewer};
use glory_protocol::AgentToGroup;
use tracing::{debug, info, warn};

use crate::identity::{AgentIdentity, IdentityStore};

/// One session's renewal: when to ask, and taking the answer.
pub(crate) struct CertRenewal {
    renewer: Option<Renewer>,
}

impl CertRenewal {
    pub fn new(identity: &AgentIdentity) -> Self {
        let renewer = Renewer::new(&identity.tls.cert_pem)
            .map_err(|e| warn!(node_id = %identity.node_id, error = %e, "our certificate does not parse; it will not be renewed"))
            .ok();
        CertRenewal { renewer }
    }

    /// When to ask (far away when there is nothing to renew).
    pub fn due(&self) -> tokio::time::Instant {
        match &self.renewer {
            Some(r) => r.due().into(),
            None => tokio::time::Instant::now() + std::time::Duration::from_secs(86400 * 365),
        }
    }

    /// The request to send now, if one can be made.
    pub fn request(&mut self, node_id: &str) -> Option<AgentToGroup> {
        let renewer = self.renewer.as_mut()?;
        match renewer.request() {
            Ok(csr_pem) => {
                debug!(%node_id, "asking for our next certificate");
                Some(AgentToGroup::Renew { csr_pem })
            }
            Err(e) => {
                warn!(%node_id, error = %e, "cannot make a certificate request");
                None
            }
        }
    }

    /// Our next certificate arrived: hold and keep it (later connections present it).
    pub fn accept(
        &mut self,
        identity: &mut AgentIdentity,
        store: &dyn IdentityStore,
        cert_pem: &str,
    ) {
        let Some(renewer) = self.renewer.as_mut() else {
            return;
        };
        match renewer.accept(&identity.tls, cert_pem) {
            Ok(tls) => {
                identity.tls = tls;
                if let Err(e) = store.save(identity) {
                    // This session goes on; the certificate before stays accepted until
                    // it expires, so a restart in that time still connects.
                    warn!(node_id = %identity.node_id, error = %e, "cannot save the renewed certificate");
                }
                info!(node_id = %identity.node_id, expires_ms = renewer.period().expires_ms(), "certificate renewed");
            }
            Err(e) => {
                warn!(node_id = %identity.node_id, error = %e, "certificate from the group master not taken")
            }
        }
    }
}

/// When the identity's certificate expired, if it has (seconds since the epoch).
pub(crate) fn expired_at(identity: &AgentIdentity) -> Option<u64> {
    let now_s = glory_protocol::now_ms() / 1000;
    match CertPeriod::of(&identity.tls.cert_pem) {
        Ok(period) if period.expired(now_s) => Some(period.expires_s),
        Ok(_) => None,
        Err(_) => Some(0),
    }
}

/// What an operator reads when an agent's certificate expired and it has no token.
pub(crate) fn expired_message(identity: &AgentIdentity, expired_s: u64) -> String {
    let when = if expired_s == 0 {
        "is unreadable".to_string()
    } else {
        format!(
            "expired {} s ago",
            (glory_protocol::now_ms() / 1000).saturating_sub(expired_s)
        )
    };
    format!(
        "the certificate of node {} {when}: the agent was offline past its renewal (it renews \
         only while connected), so it needs a bootstrap token to enroll again (it keeps its \
         node id): set `token` in the config, pass --token, or boot with glory.token= on the \
         kernel command line",
        identity.node_id
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use glory_protocol::{CertRole, CertSubject, ClusterCa};
    use tokio_util::sync::CancellationToken;

    use crate::{AgentConfig, AgentDeps, AgentIdentity, AgentStats, Host, IdentityStore};
    use crate::{MemoryStore, SimHost};

    /// An agent whose certificate expired while it was off, and that has no token,
    /// stops with an error saying it needs one; its identity is kept.
    #[tokio::test]
    async fn an_expired_certificate_without_a_token_asks_for_one() {
        let ca = ClusterCa::generate("t").unwrap();
        let subject = CertSubject {
            id: "n-7".into(),
            role: CertRole::Node,
            group: Some("g00".into()),
        };
        let (tls, _) = ca.issue(&subject, Duration::ZERO).unwrap();
        let host = SimHost::new(7);
        let identity = AgentIdentity {
            node_id: "n-7".into(),
            group: "g00".into(),
            group_masters: vec!["127.0.0.1:9".parse().unwrap()],
            tls,
            claim: host.inventory().identity,
        };
        assert!(super::expired_at(&identity).is_some());
        let store = Arc::new(MemoryStore::default());
        store.save(&identity).unwrap();
        let settings = AgentConfig {
            cluster_master: "127.0.0.1:9".parse().unwrap(),
            token: None,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let deps = AgentDeps {
            endpoint: glory_protocol::transport::client_endpoint("127.0.0.1:0".parse().unwrap())
                .unwrap(),
            host: Arc::new(host),
            store: store.clone(),
            stats: Arc::new(AgentStats::default()),
        };
        let run = crate::run_agent(
            settings,
            deps,
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let error = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the agent stops at once")
            .expect_err("an error, not a run");
        let text = error.to_string();
        assert!(
            text.contains("n-7") && text.contains("bootstrap token") && text.contains("expired"),
            "{text}"
        );
        assert_eq!(store.load().unwrap(), Some(identity), "identity kept");
    }
}
