//! The enrollee's side of enrollment: one request on a connection without a client
//! certificate, answered with a signed certificate or a refusal.

use std::net::SocketAddr;
use std::time::Duration;

use crate::frame::DEFAULT_MAX_FRAME;
use crate::messages::{EnrollReply, EnrollRequest, Enrolled, Hello, Role};
use crate::tls::{enroll_client_tls, CaTrust, CLUSTER_MASTER_NAME};
use crate::transport::{client_config, client_hello, close, connect, LinkError, LinkTiming};

/// How long an enrollee waits for the cluster master to take up its connection: longer
/// than the cluster master's admission queue holds one (see `glory_protocol::admission`).
pub const ENROLL_CONNECT_PATIENCE: Duration = Duration::from_secs(20);

/// What enrollment errors say it was doing, before the address.
pub const ENROLL_ACTION: &str = "enroll with cluster master";

/// Ask the cluster master at `cluster_master` to enroll us. Every error but the
/// cluster master's refusal names the address and the action ([`ENROLL_ACTION`]).
pub async fn enroll(
    endpoint: &crate::link::LinkEndpoint,
    cluster_master: SocketAddr,
    trust: &CaTrust,
    machine_id: &str,
    request: &EnrollRequest,
    timeout: Duration,
) -> Result<Enrolled, LinkError> {
    // In an enrollment storm the cluster master holds new connections in its
    // admission queue for up to 16 s before their handshake starts: waiting costs
    // both sides almost nothing, where giving up and retrying costs a new handshake.
    let patience = timeout.max(ENROLL_CONNECT_PATIENCE);
    enroll_within(
        endpoint,
        cluster_master,
        trust,
        machine_id,
        request,
        timeout,
        patience,
    )
    .await
}

/// [`enroll`], waiting `patience` (not at least [`ENROLL_CONNECT_PATIENCE`]) for the
/// cluster master to take up the connection.
pub async fn enroll_within(
    endpoint: &crate::link::LinkEndpoint,
    cluster_master: SocketAddr,
    trust: &CaTrust,
    machine_id: &str,
    request: &EnrollRequest,
    timeout: Duration,
    patience: Duration,
) -> Result<Enrolled, LinkError> {
    let exchange = async {
        let timing = LinkTiming {
            idle_timeout: patience,
            keep_alive: None,
            initial_rtt: crate::transport::STORM_INITIAL_RTT,
        };
        let config = client_config(enroll_client_tls(trust)?, timing)?;
        let conn = connect(
            endpoint,
            config,
            cluster_master,
            CLUSTER_MASTER_NAME,
            patience,
        )
        .await?;
        let result = async {
            let mut control = client_hello(
                &conn,
                &Hello::new(Role::Enrollee, machine_id),
                DEFAULT_MAX_FRAME,
                timeout,
            )
            .await?;
            control.send(request).await?;
            let reply = tokio::time::timeout(timeout, control.recv::<EnrollReply>())
                .await
                .map_err(|_| LinkError::Timeout(timeout))??;
            match reply {
                Some(EnrollReply::Accepted(enrolled)) => Ok(enrolled),
                Some(EnrollReply::Refused(refusal)) => Err(LinkError::Refused(refusal)),
                None => Err(LinkError::Closed),
            }
        }
        .await;
        conn.close(close::NORMAL, "enrolled");
        result
    };
    exchange
        .await
        .map_err(|e| e.at(ENROLL_ACTION, cluster_master))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::EnrollKind;

    #[tokio::test]
    async fn an_unanswered_enrollment_names_the_address_and_the_action() {
        // A bound socket that never reads: nothing answers, and no ICMP "port
        // unreachable" comes back either, as with a wrong address on a real network.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let endpoint = crate::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let (_, csr_pem) = crate::tls::generate_csr().unwrap();
        let request = EnrollRequest {
            token: "gb-00000000.secret".into(),
            kind: EnrollKind::GroupMaster {
                group: "g00".into(),
                listen: "127.0.0.1:7402".parse().unwrap(),
            },
            csr_pem,
        };
        let error = enroll_within(
            &endpoint,
            addr,
            &CaTrust::FirstUse,
            "m-1",
            &request,
            Duration::from_millis(300),
            Duration::from_millis(300),
        )
        .await
        .expect_err("nothing answers");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!(
                "enroll with cluster master {addr}: no answer within 300ms"
            )),
            "{text}"
        );
        assert!(
            text.contains("is a cluster master listening there?"),
            "{text}"
        );
        assert!(!error.is_busy() && error.refusal().is_none());
    }

    #[test]
    fn context_keeps_refusals_and_replaces_the_action_for_the_same_address() {
        let addr: SocketAddr = "10.0.0.9:7401".parse().unwrap();
        let refused = LinkError::Refused(crate::messages::Refusal::new(
            crate::messages::RefusalCode::BadToken,
            "no such token",
        ))
        .at(ENROLL_ACTION, addr);
        assert!(matches!(refused, LinkError::Refused(_)));
        let dial = LinkError::Closed
            .at("connect to cluster master", addr)
            .at(ENROLL_ACTION, addr);
        assert_eq!(
            dial.to_string(),
            "enroll with cluster master 10.0.0.9:7401: peer closed the stream before answering"
        );
    }
}
