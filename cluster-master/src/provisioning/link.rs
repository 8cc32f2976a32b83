//! Provisioners' side of the cluster master's QUIC endpoint: enrollment (a bootstrap
//! token of scope `provisioner` gives a certificate of role `provisioner`) and the
//! link: `PlanBoot` answered with a [`glory_protocol::BootPlan`], `Progress` applied to
//! the boot table.

use std::sync::Arc;

use glory_keymaster::schema::BootstrapScope;
use glory_protocol::{
    close, CertRole, CertSubject, ClusterToProvisioner, ControlStream, Enrolled, Link,
    ProvisionerToCluster, Refusal, RefusalCode,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Source;
use crate::cluster::{refusal, unavailable, Cluster};

/// Most progress reports taken from one message (a provisioner batches them).
const MAX_PROGRESS: usize = 10_000;

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Cluster {
    /// Enroll a provisioner: check its token, sign its key, record it.
    pub(crate) async fn enroll_provisioner(
        &self,
        token: &str,
        name: &str,
        http: &str,
        csr_pem: &str,
    ) -> Result<Enrolled, Refusal> {
        if !valid_name(name) {
            return Err(refusal(
                RefusalCode::BadRequest,
                "provisioner name must be 1-64 letters, digits, '-' or '_'",
            ));
        }
        if !(http.starts_with("http://") || http.starts_with("https://")) || http.len() > 300 {
            return Err(refusal(
                RefusalCode::BadRequest,
                format!("provisioner {name}: http must be an http(s):// base URL (got {http:?})"),
            ));
        }
        self.bootstrap_token(token, BootstrapScope::Provisioner)
            .await?;
        let subject = CertSubject {
            id: name.to_string(),
            role: CertRole::Provisioner,
            group: None,
        };
        let signed = self
            .ca
            .sign_csr(csr_pem, &subject, self.settings.cert_validity)
            .map_err(|e| refusal(RefusalCode::BadRequest, e.to_string()))?;
        self.provisioner_enrolled(name, http)
            .await
            .map_err(unavailable)?;
        info!(provisioner = %name, %http, "provisioner enrolled");
        Ok(Enrolled {
            id: name.to_string(),
            group: None,
            group_masters: Vec::new(),
            cert_pem: signed.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        })
    }
}

/// One provisioner's link, until it closes.
pub(crate) async fn provisioner_link(
    conn: Link,
    control: ControlStream,
    cluster: Arc<Cluster>,
    name: String,
) {
    let (mut send, mut recv) = control.split();
    let (tx, mut rx) = mpsc::channel::<ClusterToProvisioner>(1024);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if send.send(&msg).await.is_err() {
                return;
            }
        }
    });
    info!(provisioner = %name, remote = %conn.remote_address(), "provisioner connected");
    loop {
        match recv.recv::<ProvisionerToCluster>().await {
            Ok(Some(ProvisionerToCluster::Register { http })) => {
                if let Err(e) = cluster.provisioner_enrolled(&name, &http).await {
                    warn!(provisioner = %name, error = %e, "cannot record provisioner");
                }
            }
            Ok(Some(ProvisionerToCluster::PlanBoot { request, mac, ip })) => {
                // Each plan writes to the key master: answered on its own task, so a
                // boot storm's plans overlap.
                let cluster = cluster.clone();
                let name = name.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let plan = cluster.plan_boot(&name, &mac, ip).await;
                    if let Err(e) = &plan {
                        info!(provisioner = %name, %mac, reason = %e, "boot refused");
                    }
                    let _ = tx
                        .send(ClusterToProvisioner::Plan { request, mac, plan })
                        .await;
                });
            }
            Ok(Some(ProvisionerToCluster::Renew { csr_pem })) => {
                match cluster.renew_provisioner(&name, &csr_pem) {
                    Ok(cert_pem) => {
                        info!(provisioner = %name, "provisioner certificate renewed");
                        let _ = tx
                            .send(ClusterToProvisioner::Certificate { cert_pem })
                            .await;
                    }
                    Err(e) => crate::cluster::renewal::log_refused(&name, &e),
                }
            }
            Ok(Some(ProvisionerToCluster::Progress(items))) => {
                for progress in items.into_iter().take(MAX_PROGRESS) {
                    let Some(mac) = super::normalize_mac(&progress.mac) else {
                        debug!(provisioner = %name, mac = %progress.mac, "progress for a bad MAC skipped");
                        continue;
                    };
                    let progress = glory_protocol::BootProgress {
                        mac,
                        detail: progress.detail.chars().take(1024).collect(),
                        ..progress
                    };
                    cluster
                        .boot_progress(progress, Source::Provisioner, &name, None)
                        .await;
                }
            }
            Ok(None) => break,
            Err(e) if e.is_skippable() => {
                debug!(provisioner = %name, error = %e, "message from a newer provisioner skipped");
            }
            Err(e) => {
                if !matches!(e, glory_protocol::FrameError::Io(_)) {
                    warn!(provisioner = %name, error = %e, "bad frame from provisioner; closing its link");
                    conn.close(close::PROTOCOL_ERROR, "bad frame");
                }
                break;
            }
        }
    }
    writer.abort();
    info!(provisioner = %name, "provisioner disconnected");
}
