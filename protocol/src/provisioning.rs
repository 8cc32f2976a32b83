//! The provisioner's link to the cluster master (role `provisioner`, mutual TLS).
//!
//! A provisioner serves one boot network. It registers, asks for a [`BootPlan`] each
//! time a machine fetches its iPXE script (a bootstrap token minted for that boot,
//! single-use and short-lived, and where the cluster masters are), and reports each
//! machine's progress ([`BootProgress`]). The cluster master keeps the boot table,
//! answers `GET /api/v1/boot` and learns the end of each boot itself: the enrollment
//! that uses (or is refused with) the boot's token. The provisioner never holds key
//! master credentials.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where a machine is on its way from power-on to enrolled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootState {
    /// Its firmware asked our DHCP server for an address.
    Discovered,
    /// It fetched its iPXE script (a token was minted) and its kernel.
    Booting,
    /// Its enrollment environment is up and its agent is enrolling.
    Enrolling,
    /// Its agent enrolled: it is a node.
    Enrolled,
    /// It failed; `detail` says why.
    Failed,
}

impl BootState {
    pub fn as_str(self) -> &'static str {
        match self {
            BootState::Discovered => "discovered",
            BootState::Booting => "booting",
            BootState::Enrolling => "enrolling",
            BootState::Enrolled => "enrolled",
            BootState::Failed => "failed",
        }
    }
}

/// One machine's progress as its provisioner saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootProgress {
    /// Lower-case, colon-separated.
    pub mac: String,
    pub state: BootState,
    #[serde(default)]
    pub ip: Option<String>,
    /// What happened (`"dhcp offer 10.0.0.12"`, `"fetched vmlinuz"`, the failure...).
    #[serde(default)]
    pub detail: String,
    /// When, milliseconds since the epoch.
    pub at_ms: u64,
}

/// What a machine boots, given by the cluster master for one boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPlan {
    /// `<id>.<secret>`: single-use, scoped to agents, expires at `expires_ms`.
    pub token: String,
    pub expires_ms: u64,
    /// The cluster masters' QUIC addresses (`glory.cm=`).
    pub cluster_masters: Vec<SocketAddr>,
    /// SHA-256 of the cluster CA certificate, hex (`glory.ca=`).
    pub ca_sha256: String,
    /// The node this MAC already is, if it enrolled before (it keeps its id).
    #[serde(default)]
    pub node: Option<String>,
    /// The profile it boots: `enroll` (the enrollment environment) or the name of
    /// the profile whose image it boots.
    pub profile: String,
    /// The OS image to boot instead of the enrollment environment.
    #[serde(default)]
    pub image: Option<BootImage>,
}

/// An OS image a machine boots: its parts by hash, fetched through the provisioner
/// from the cluster master's content store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootImage {
    pub name: String,
    pub version: u32,
    /// `diskless` (the root filesystem in RAM) or `disk` (written to the first disk).
    pub mode: String,
    pub kernel: ImagePart,
    pub initrd: ImagePart,
    pub rootfs: ImagePart,
    /// Where the parts are: `{content_url}/content/{sha256}`.
    pub content_url: String,
}

/// One part of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePart {
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionerToCluster {
    /// First message on the link: the boot network's base URL for boot files.
    Register { http: String },
    /// A machine fetches its script: plan its boot (answered by `Plan`).
    PlanBoot {
        request: u64,
        mac: String,
        #[serde(default)]
        ip: Option<String>,
    },
    /// Progress of machines on this boot network.
    Progress(Vec<BootProgress>),
    /// The provisioner asks for its next certificate (for a fresh key).
    Renew { csr_pem: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// One message at a time crosses the link: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum ClusterToProvisioner {
    /// The answer to `PlanBoot`: the plan, or why the machine may not boot.
    Plan {
        request: u64,
        mac: String,
        plan: Result<BootPlan, String>,
    },
    /// The provisioner's next certificate, signed for the key of its `Renew`.
    Certificate { cert_pem: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let msgs = [
            ProvisionerToCluster::Register {
                http: "http://10.0.0.1:7480".into(),
            },
            ProvisionerToCluster::PlanBoot {
                request: 7,
                mac: "52:54:00:00:00:01".into(),
                ip: Some("10.0.0.9".into()),
            },
            ProvisionerToCluster::Progress(vec![BootProgress {
                mac: "52:54:00:00:00:01".into(),
                state: BootState::Booting,
                ip: None,
                detail: "fetched vmlinuz".into(),
                at_ms: 1,
            }]),
        ];
        for m in msgs {
            let bytes = rmp_serde::to_vec_named(&m).unwrap();
            assert_eq!(
                rmp_serde::from_slice::<ProvisionerToCluster>(&bytes).unwrap(),
                m
            );
        }
        let plan = ClusterToProvisioner::Plan {
            request: 7,
            mac: "52:54:00:00:00:01".into(),
            plan: Err("no group can take it".into()),
        };
        let bytes = rmp_serde::to_vec_named(&plan).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<ClusterToProvisioner>(&bytes).unwrap(),
            plan
        );
    }
}
