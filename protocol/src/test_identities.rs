//! Identities for the transport tests: a cluster CA, a server and a node client.

use std::time::Duration;

use crate::tls::{CertRole, CertSubject, ClusterCa, TlsIdentity, GROUP_MASTER_NAME};
use crate::transport::{LinkTiming, CONTROL_INITIAL_RTT};

pub(crate) struct Identities {
    /// A group master's identity (its certificate names [`GROUP_MASTER_NAME`]).
    pub server: TlsIdentity,
    pub server_name: &'static str,
    /// Node "n1" of group "g1".
    pub client: TlsIdentity,
    pub timing: LinkTiming,
}

impl Identities {
    pub fn new() -> Identities {
        let ca = ClusterCa::generate("test").unwrap();
        let subject = |id: &str, role, group: Option<&str>| CertSubject {
            id: id.into(),
            role,
            group: group.map(str::to_string),
        };
        let issue = |s: &CertSubject| ca.issue(s, Duration::from_secs(60)).unwrap().0;
        Identities {
            server: issue(&subject("g1", CertRole::GroupMaster, Some("g1"))),
            server_name: GROUP_MASTER_NAME,
            client: issue(&subject("n1", CertRole::Node, Some("g1"))),
            timing: LinkTiming {
                idle_timeout: Duration::from_secs(5),
                keep_alive: None,
                initial_rtt: CONTROL_INITIAL_RTT,
            },
        }
    }
}
