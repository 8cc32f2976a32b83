//! The enrollee's side of enrollment: one request on a connection without a client
//! certificate, answered with a signed certificate or a refusal.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::VarInt;

use crate::frame::DEFAULT_MAX_FRAME;
use crate::messages::{EnrollReply, EnrollRequest, Enrolled, Hello, Role};
use crate::tls::{enroll_client_tls, CaTrust, CLUSTER_MASTER_NAME};
use crate::transport::{client_config, client_hello, close, connect, LinkError, LinkTiming};

/// How long an enrollee waits for the cluster master to take up its connection: longer
/// than the cluster master's admission queue holds one (see `glory_protocol::admission`).
pub const ENROLL_CONNECT_PATIENCE: Duration = Duration::from_secs(20);

/// Ask the cluster master at `cluster_master` to enroll us.
pub async fn enroll(
    endpoint: &quinn::Endpoint,
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
    conn.close(VarInt::from_u32(close::NORMAL), b"enrolled");
    result
}
