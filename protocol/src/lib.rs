//! GLORY-CL wire protocol: ids, messages, framing, the QUIC + mutual TLS transport and
//! the cluster CA. No business logic lives here.
//!
//! Architecture invariant: this is the only crate that knows MessagePack, QUIC and TLS.
//! Every link's messages are in [`messages`]; everything else uses them by name.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api_tls;
pub mod enroll;
pub mod frame;
pub mod lean;
pub mod link;
pub mod messages;
pub mod monitoring;
pub mod process;
pub mod provisioning;
pub mod setup;
pub mod targets;
#[cfg(test)]
mod test_identities;
pub mod tls;
pub mod transport;
mod verified;

pub use frame::{FrameError, DEFAULT_MAX_FRAME};
pub use link::{ClientLinkConfig, Link, LinkEnd, LinkEndpoint, RawStream, ServerLinkConfig};
pub use messages::*;
pub use provisioning::{
    BootImage, BootPlan, BootProgress, BootState, ClusterToProvisioner, ImagePart,
    ProvisionerToCluster,
};
pub use tls::{CaTrust, CertRole, CertSubject, ClientAuth, ClusterCa, PeerCert, TlsIdentity};
pub use transport::{
    close, ControlReceiver, ControlSender, ControlStream, FrameReader, LinkError, LinkTiming,
};

/// Wall clock in milliseconds since the Unix epoch (for timestamps on the wire and in
/// records; durations are measured with `Instant`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
