//! Certificates that renew (issue 20). With a 20 s lifetime every node, group master
//! and the cluster master (its links and its HTTPS API) renew over what they already
//! have before their certificates expire, nobody goes down for it, and once every
//! first certificate has expired, new connections of every kind still work: only
//! renewed certificates can make them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use glory::client::ApiClient;
use glory_tests::TestCluster;

const LIFETIME: Duration = Duration::from_secs(20);
const AGENTS: usize = 6;

/// `(serial, cert_expires_ms)` of every node, from the API.
async fn certificates(c: &TestCluster) -> anyhow::Result<HashMap<String, (String, u64)>> {
    let mut out = HashMap::new();
    for node in c.api.all_nodes("").await? {
        let id = node["id"].as_str().unwrap_or_default().to_string();
        let serial = node["serial"].as_str().unwrap_or_default().to_string();
        let expires = node["cert_expires_ms"].as_u64().unwrap_or(0);
        out.insert(id, (serial, expires));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_over_the_links_before_they_expire() -> anyhow::Result<()> {
    let mut c = TestCluster::builder()
        .groups(2)
        .agents(AGENTS)
        // Off loopback: the API is HTTPS with a certificate from the cluster CA.
        .api_listen(SocketAddr::from(([0, 0, 0, 0], 0)))
        .cert_lifetime(LIFETIME)
        .start()
        .await?;
    c.wait_all_up(AGENTS as u64, Duration::from_secs(30))
        .await?;
    let first = certificates(&c).await?;
    let now = glory_protocol::now_ms();
    let latest_first_expiry = first.values().map(|(_, e)| *e).max().unwrap_or(0);
    for (node, (_, expires)) in &first {
        assert!(
            *expires > now && *expires <= now + LIFETIME.as_millis() as u64 + 1000,
            "{node}: cert_expires_ms {expires} is not within the lifetime from {now}"
        );
    }
    let shown = c
        .api
        .get(&format!("/api/v1/nodes/{}", c.node_id(0)?))
        .await?;
    let at = shown["cert_expires_at"].as_str().unwrap_or_default();
    assert!(
        at.starts_with("20") && at.ends_with('Z'),
        "cert_expires_at {shown}"
    );

    // Every node asks for its next certificate at about two thirds of its life: all
    // renewed before the first certificates expire.
    let renewed = c
        .wait_until(
            "every node holds a renewed certificate",
            Duration::from_millis(latest_first_expiry.saturating_sub(glory_protocol::now_ms())),
            async |c| {
                let now = certificates(c).await.unwrap_or_default();
                now.len() == AGENTS
                    && now.iter().all(|(node, (serial, expires))| {
                        first
                            .get(node)
                            .is_some_and(|(s, e)| s != serial && expires > e)
                    })
            },
        )
        .await;
    renewed?;

    // Past the expiry of every first certificate (the group masters' and the cluster
    // master's too): nobody went down meanwhile.
    let past = Duration::from_millis(
        (latest_first_expiry + 2000).saturating_sub(glory_protocol::now_ms()),
    );
    tokio::time::sleep(past).await;
    assert_eq!(c.count("up").await, AGENTS as u64);
    for node in c.api.all_nodes("").await? {
        let id = node["id"].as_str().unwrap_or_default();
        let shown = c.api.get(&format!("/api/v1/nodes/{id}")).await?;
        let history = shown["history"].as_array().cloned().unwrap_or_default();
        assert!(
            !history.iter().any(|h| h["state"] == "down"),
            "{id} went down while certificates renewed: {history:?}"
        );
    }

    // New connections of every kind. Agents reconnect to their group masters: each
    // side checks the other's renewed certificate.
    for i in 0..AGENTS {
        assert!(c.fleet().kill_index(i), "agent {i} powered off");
    }
    c.wait_until(
        "every agent marked down after its power-off",
        Duration::from_secs(10),
        async |c| c.count("down").await == AGENTS as u64,
    )
    .await?;
    for i in 0..AGENTS {
        assert!(c.fleet().start_index(i), "agent {i} powered on");
    }
    c.wait_all_up(AGENTS as u64, Duration::from_secs(20))
        .await?;
    // A group master restarted reconnects to the cluster master (its renewed
    // certificate checked), and its agents to it.
    c.kill_group_master("g00").await?;
    c.restart_group_master("g00").await?;
    c.wait_until("g00 registered again", Duration::from_secs(10), async |c| {
        c.cluster().group_master_count("g00") == 1
    })
    .await?;
    c.wait_all_up(AGENTS as u64, Duration::from_secs(20))
        .await?;
    // The API, from a client that never connected before: a new TLS handshake.
    let fresh =
        ApiClient::new(c.api.base(), &c.operator_token())?.with_ca(&c.cluster().ca_pem())?;
    let nodes = fresh.all_nodes("").await?;
    assert_eq!(nodes.len(), AGENTS);
    c.shutdown().await;
    Ok(())
}
