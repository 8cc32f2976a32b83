//! Provisioning on the cluster master's side: the boot table (each MAC's way from
//! power-on to enrolled), boot plans for provisioners (a bootstrap token minted per
//! boot), the provisioners' links (`link.rs`) and remote power control (`power.rs`).
//!
//! Who says what: a provisioner reports what its boot network saw (DHCP, the iPXE
//! script and kernel fetched, the enrollment environment calling back); the end of a
//! boot is learnt here, from the enrollment that uses (or is refused with) the boot's
//! token. [`advance`] decides each change, pure.

pub(crate) mod images;
pub(crate) mod link;
pub(crate) mod power;
mod replica;
pub(crate) mod seeders;
pub(crate) use replica::follow_content;
mod secrets;
pub(crate) mod setup;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use glory_keymaster::schema::{
    self, BootRecord, BootstrapScope, ProvisionerRecord, RECORD_VERSION,
};
use glory_keymaster::{KeyMaster, TxnOp};
use glory_protocol::{BootPlan, BootProgress, BootState};
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::events::EventData;

pub(crate) use secrets::SecretsKey;

/// Boot records and provisioners, in memory (the key master has them too).
#[derive(Default)]
pub(crate) struct ProvisioningState {
    boots: Mutex<BTreeMap<String, BootRecord>>,
    provisioners: Mutex<BTreeMap<String, ProvisionerRecord>>,
}

impl ProvisioningState {
    pub(crate) async fn load(km: &dyn KeyMaster) -> anyhow::Result<Self> {
        let (kvs, _) = km.get_prefix(schema::BOOT_PREFIX).await?;
        let mut boots = BTreeMap::new();
        for kv in kvs {
            let record: BootRecord = schema::decode(&kv.key, &kv.value)?;
            boots.insert(record.mac.clone(), record);
        }
        let (kvs, _) = km.get_prefix(schema::PROVISIONERS_PREFIX).await?;
        let mut provisioners = BTreeMap::new();
        for kv in kvs {
            let record: ProvisionerRecord = schema::decode(&kv.key, &kv.value)?;
            provisioners.insert(record.name.clone(), record);
        }
        Ok(ProvisioningState {
            boots: Mutex::new(boots),
            provisioners: Mutex::new(provisioners),
        })
    }

    pub(crate) fn boots(&self) -> Vec<BootRecord> {
        self.boots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn boot(&self, mac: &str) -> Option<BootRecord> {
        self.boots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(mac)
            .cloned()
    }

    pub(crate) fn provisioners(&self) -> Vec<ProvisionerRecord> {
        self.provisioners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Where a change to a boot comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A provisioner's report of its boot network.
    Provisioner,
    /// The cluster master itself: an enrollment, a refusal, a timeout.
    Cluster,
}

/// The boot record after `progress`, or `None` when it changes nothing. Pure.
///
/// - `discovered` and `booting` start a new boot from any state (a machine that
///   reboots, a failed one tried again);
/// - a provisioner's `enrolling` or `failed` never undoes `enrolled` (the agent
///   enrolled before the call-back arrived, or stopped after it enrolled: the node's
///   own state says the rest), and a second failure keeps the first reason;
/// - a provisioner's report made before the current state began changes nothing;
/// - the cluster's word (enrolled, refused, timed out) always counts.
pub(crate) fn advance(
    current: Option<&BootRecord>,
    progress: &BootProgress,
    source: Source,
    provisioner: &str,
    node: Option<&str>,
) -> Option<BootRecord> {
    let state = progress.state.as_str();
    if let Some(cur) = current {
        let same = cur.state == state
            && cur.detail == progress.detail
            && (progress.ip.is_none() || cur.ip == progress.ip);
        if same {
            return None;
        }
        if source == Source::Provisioner {
            // Reports travel in batches: one made before the current state began (a
            // DHCP answer that arrives after the script fetch it led to) is history.
            if progress.at_ms < cur.since_ms {
                return None;
            }
            match (cur.state.as_str(), progress.state) {
                ("enrolled", BootState::Enrolling | BootState::Failed) => return None,
                ("failed", BootState::Failed) => return None,
                ("failed", BootState::Enrolling) => return None,
                _ => {}
            }
        }
    }
    let since_ms = match current {
        Some(cur) if cur.state == state => cur.since_ms,
        _ => progress.at_ms,
    };
    Some(BootRecord {
        v: RECORD_VERSION,
        mac: progress.mac.clone(),
        state: state.to_string(),
        node: node
            .map(str::to_string)
            .or_else(|| current.and_then(|c| c.node.clone())),
        ip: progress
            .ip
            .clone()
            .or_else(|| current.and_then(|c| c.ip.clone())),
        since_ms,
        detail: progress.detail.clone(),
        provisioner: if provisioner.is_empty() {
            current.map(|c| c.provisioner.clone()).unwrap_or_default()
        } else {
            provisioner.to_string()
        },
    })
}

/// Boots stuck in one state past `timeout` at `now_ms`, with the reason. Pure.
pub(crate) fn timed_out(boots: &[BootRecord], timeout: Duration, now_ms: u64) -> Vec<BootProgress> {
    let limit = timeout.as_millis() as u64;
    boots
        .iter()
        .filter(|b| matches!(b.state.as_str(), "discovered" | "booting" | "enrolling"))
        .filter(|b| now_ms.saturating_sub(b.since_ms) >= limit)
        .map(|b| {
            let waited_for = match b.state.as_str() {
                "discovered" => "its boot program and iPXE script (TFTP/HTTP) were not fetched",
                "booting" => "its enrollment environment did not call back (kernel or initramfs not fetched, or it did not start)",
                _ => "its agent did not enroll",
            };
            BootProgress {
                mac: b.mac.clone(),
                state: BootState::Failed,
                ip: None,
                detail: format!(
                    "no call-back within {} s: {waited_for} (last: {}: {})",
                    timeout.as_secs(),
                    b.state,
                    b.detail
                ),
                at_ms: now_ms,
            }
        })
        .collect()
}

/// A MAC as the boot table keys it (lower case, colons), or `None` if it is not one.
pub(crate) fn normalize_mac(mac: &str) -> Option<String> {
    let hex: String = mac
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    Some(
        (0..6)
            .map(|i| &hex[i * 2..i * 2 + 2])
            .collect::<Vec<_>>()
            .join(":"),
    )
}

impl Cluster {
    /// Apply a change to a MAC's boot: kept in memory, written to the key master,
    /// and an event. Key master errors are logged (the next change writes again).
    pub(crate) async fn boot_progress(
        &self,
        progress: BootProgress,
        source: Source,
        provisioner: &str,
        node: Option<&str>,
    ) {
        let record = {
            let mut boots = self
                .provisioning
                .boots
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let Some(record) = advance(
                boots.get(&progress.mac),
                &progress,
                source,
                provisioner,
                node,
            ) else {
                return;
            };
            boots.insert(record.mac.clone(), record.clone());
            record
        };
        if record.state == "failed" {
            warn!(mac = %record.mac, detail = %record.detail, "boot failed");
        } else {
            info!(mac = %record.mac, state = %record.state, node = ?record.node, detail = %record.detail, "boot progress");
        }
        if let Err(e) = self
            .km_txn(glory_keymaster::Txn {
                compares: vec![],
                success: vec![TxnOp::put(
                    schema::boot_key(&record.mac),
                    schema::encode(&record),
                )],
                failure: vec![],
            })
            .await
        {
            warn!(mac = %record.mac, error = %e, "cannot record boot progress");
        }
        self.events.emit(
            None,
            EventData::BootChanged {
                mac: record.mac.clone(),
                state: progress.state,
                node: record.node.clone(),
                ip: record.ip.clone(),
                detail: record.detail.clone(),
            },
        );
    }

    /// Plan one boot of `mac` for `provisioner`: a single-use bootstrap token for
    /// agents, minted for this boot, and where the cluster masters are.
    pub(crate) async fn plan_boot(
        &self,
        provisioner: &str,
        mac: &str,
        ip: Option<String>,
    ) -> Result<BootPlan, String> {
        let mac = normalize_mac(mac).ok_or_else(|| format!("{mac:?} is not a MAC address"))?;
        let identity = format!("mac:{mac}");
        let node = {
            let reg = self.read();
            if let Some(removed) = reg.removed.get(&identity) {
                return Err(format!(
                    "node {} (MAC {mac}) was removed by an operator; glory nodes admit {} first",
                    removed.node, removed.node
                ));
            }
            reg.identities.get(&identity).cloned().or_else(|| {
                reg.nodes
                    .values()
                    .find(|n| {
                        n.record
                            .inventory
                            .nics
                            .iter()
                            .any(|i| i.mac.eq_ignore_ascii_case(&mac))
                    })
                    .map(|n| n.record.id.clone())
            })
        };
        let ttl = self.settings.boot_token_ttl;
        let (token, record) = self
            .create_boot_token(ttl, &mac, provisioner)
            .await
            .map_err(|e| format!("cannot mint a boot token: {e}"))?;
        let ca_sha256 = self
            .ca
            .cert_hash()
            .map_err(|e| format!("cannot hash the cluster CA: {e}"))?;
        let mut cluster_masters = vec![self.settings.advertise.unwrap_or(self.settings.listen)];
        for extra in &self.settings.boot_cluster_masters {
            if !cluster_masters.contains(extra) {
                cluster_masters.push(*extra);
            }
        }
        // A node whose profile names an image boots it; anything else (a new machine,
        // a node without one) the enrollment environment.
        let (profile, image) = match node.as_deref().and_then(|n| self.boot_image_of(n)) {
            Some((profile, image)) => (profile, Some(image)),
            None => ("enroll".to_string(), None),
        };
        let what = match &image {
            Some(i) => format!("image {}:{} ({})", i.name, i.version, i.mode),
            None => "the enrollment environment".to_string(),
        };
        let detail = match &node {
            Some(n) => format!(
                "iPXE script fetched; boots {what} as node {n} (token {} for {} s)",
                record.id,
                ttl.as_secs()
            ),
            None => format!(
                "iPXE script fetched; boots {what} (token {} for {} s)",
                record.id,
                ttl.as_secs()
            ),
        };
        self.boot_progress(
            BootProgress {
                mac: mac.clone(),
                state: BootState::Booting,
                ip,
                detail,
                at_ms: glory_protocol::now_ms(),
            },
            Source::Cluster,
            provisioner,
            node.as_deref(),
        )
        .await;
        Ok(BootPlan {
            token,
            expires_ms: record.expires_ms.unwrap_or(u64::MAX),
            cluster_masters,
            ca_sha256,
            node,
            profile,
            image,
        })
    }

    /// The image `node`'s profile boots, with the profile's name.
    fn boot_image_of(&self, node: &str) -> Option<(String, glory_protocol::BootImage)> {
        let want = self.desired_setup(node)?;
        let profile = want.profile?;
        let image = self
            .images
            .image(profile.image.as_deref()?, profile.image_version)?;
        let part = |b: &glory_keymaster::schema::images::BlobRef| glory_protocol::ImagePart {
            sha256: b.sha256.clone(),
            size: b.size,
        };
        let mode = match profile.mode {
            glory_keymaster::schema::images::DeployMode::Diskless => "diskless",
            glory_keymaster::schema::images::DeployMode::Disk => "disk",
        };
        Some((
            profile.name.clone(),
            glory_protocol::BootImage {
                name: image.name.clone(),
                version: image.version,
                mode: mode.to_string(),
                kernel: part(&image.kernel),
                initrd: part(&image.initrd),
                rootfs: part(&image.rootfs),
                content_url: self.content_url(),
            },
        ))
    }

    /// Record a provisioner that enrolled.
    pub(crate) async fn provisioner_enrolled(
        &self,
        name: &str,
        http: &str,
    ) -> Result<(), glory_keymaster::KeyMasterError> {
        let record = ProvisionerRecord {
            v: RECORD_VERSION,
            name: name.to_string(),
            http: http.to_string(),
            enrolled_ms: glory_protocol::now_ms(),
        };
        self.km_txn(glory_keymaster::Txn {
            compares: vec![],
            success: vec![TxnOp::put(
                schema::provisioner_key(name),
                schema::encode(&record),
            )],
            failure: vec![],
        })
        .await?;
        self.provisioning
            .provisioners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), record);
        Ok(())
    }

    /// The boot a bootstrap token was minted for, if any, ends: enrolled as `node`,
    /// or refused with `reason`.
    pub(crate) async fn boot_token_used(
        &self,
        boot_mac: Option<&str>,
        outcome: Result<&str, &str>,
    ) {
        let Some(mac) = boot_mac else { return };
        let (state, detail, node) = match outcome {
            Ok(node) => (
                BootState::Enrolled,
                format!("enrolled as node {node}"),
                Some(node),
            ),
            Err(reason) => (BootState::Failed, reason.to_string(), None),
        };
        self.boot_progress(
            BootProgress {
                mac: mac.to_string(),
                state,
                ip: None,
                detail,
                at_ms: glory_protocol::now_ms(),
            },
            Source::Cluster,
            "",
            node,
        )
        .await;
    }

    /// Fail boots that stopped calling back, and delete expired boot tokens. Runs while
    /// this master leads.
    pub(crate) async fn boot_sweeper(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut rounds = 0u64;
        loop {
            tick.tick().await;
            rounds += 1;
            let now = glory_protocol::now_ms();
            let stuck = timed_out(&self.provisioning.boots(), self.settings.boot_timeout, now);
            for progress in stuck {
                self.boot_progress(progress, Source::Cluster, "", None)
                    .await;
            }
            if rounds.is_multiple_of(30) {
                self.delete_expired_boot_tokens(now).await;
            }
        }
    }

    async fn delete_expired_boot_tokens(&self, now_ms: u64) {
        let Ok(tokens) = self.list_bootstrap_tokens().await else {
            return;
        };
        // Kept an hour past expiry, so a late enrollment is still told "expired".
        let expired: Vec<TxnOp> = tokens
            .iter()
            .filter(|t| t.boot_mac.is_some())
            .filter(|t| t.expires_ms.is_some_and(|e| e + 3_600_000 < now_ms))
            .map(|t| TxnOp::delete(schema::bootstrap_token_key(&t.id)))
            .collect();
        for chunk in expired.chunks(crate::cluster::TXN_CHUNK) {
            let _ = self
                .km_txn(glory_keymaster::Txn {
                    compares: vec![],
                    success: chunk.to_vec(),
                    failure: vec![],
                })
                .await;
        }
    }

    async fn create_boot_token(
        &self,
        ttl: Duration,
        mac: &str,
        provisioner: &str,
    ) -> Result<(String, schema::BootstrapTokenRecord), glory_keymaster::KeyMasterError> {
        self.create_bootstrap_token_for(
            Some(ttl),
            true,
            BootstrapScope::Node,
            &format!("boot of {mac} via provisioner {provisioner}"),
            Some(crate::cluster::bootstrap_tokens::TokenBinding {
                boot_mac: Some(mac.to_string()),
                group: None,
            }),
        )
        .await
    }
}

#[cfg(test)]
mod tests;
