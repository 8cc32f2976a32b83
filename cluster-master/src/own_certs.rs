//! The cluster master's own certificates: the one its QUIC endpoint presents (to group
//! masters, provisioners, agents and enrollees) and the API's when the cluster CA
//! issued it. This master holds the CA, so it re-issues both itself at its point of
//! the renewal window (`glory_protocol::renewal`); connections made after get the new
//! ones, open ones keep theirs.

use std::time::Duration;

use glory_protocol::api_tls::{issue_api_cert, CertSlot};
use glory_protocol::renewal::{retry_after, CertPeriod};
use glory_protocol::{CertSubject, ClusterCa, LiveIdentity};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) struct OwnCerts {
    pub ca: ClusterCa,
    pub subject: CertSubject,
    pub lifetime: Duration,
    /// What the QUIC endpoint presents.
    pub links: LiveIdentity,
    /// The API's certificate and the names it carries, when the cluster CA issued it.
    pub api: Option<(CertSlot, Vec<String>)>,
}

impl OwnCerts {
    /// Re-issue both certificates whenever the links' one is due, until `shutdown`.
    pub async fn renew(self, shutdown: CancellationToken) {
        let spread = rand::random::<f64>();
        loop {
            let wait = match CertPeriod::of(&self.links.current().cert_pem) {
                Ok(period) => {
                    let at_ms = (period.renew_at_s(spread) * 1000.0) as u64;
                    Duration::from_millis(at_ms.saturating_sub(glory_protocol::now_ms()))
                }
                Err(e) => {
                    warn!(error = %e, "our certificate does not parse; issuing a new one");
                    Duration::ZERO
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if let Err(e) = self.issue() {
                warn!(error = %e, "cannot renew our certificates; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(retry_after(self.lifetime)) => {}
                }
            }
        }
    }

    fn issue(&self) -> anyhow::Result<()> {
        let (identity, serial) = self.ca.issue(&self.subject, self.lifetime)?;
        self.links.replace(identity)?;
        if let Some((slot, names)) = &self.api {
            let (cert, key) = issue_api_cert(&self.ca, names, self.lifetime)?;
            slot.replace(&cert, &key)?;
        }
        info!(%serial, lifetime_s = self.lifetime.as_secs(), api = self.api.is_some(), "cluster master certificates renewed");
        Ok(())
    }
}
