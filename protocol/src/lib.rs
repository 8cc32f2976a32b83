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
pub mod renewal;
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
pub use renewal::LiveIdentity;
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

/// A duration as operators write it: `500ms`, `30s`, `2m`, `24h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m, h or d)")),
    };
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}
