//! Leader election built on kv, txn, watch and leases.

use super::*;

/// Wait until `handle` (a campaign) resolves.
async fn campaign_result(
    handle: tokio::task::JoinHandle<Result<glory_keymaster::LeaderKey, KeyMasterError>>,
    what: &str,
) -> Result<glory_keymaster::LeaderKey, KeyMasterError> {
    match timeout(PATIENCE, handle).await {
        Ok(joined) => joined.expect("campaign task"),
        Err(_) => panic!("{what}: campaign did not resolve within {PATIENCE:?}"),
    }
}

fn spawn_campaign(
    km: &Arc<dyn KeyMaster>,
    election: &str,
    value: &str,
    lease: LeaseId,
) -> tokio::task::JoinHandle<Result<glory_keymaster::LeaderKey, KeyMasterError>> {
    let km = km.clone();
    let election = election.to_owned();
    let value = value.as_bytes().to_vec();
    tokio::spawn(async move { km.campaign(&election, value, lease).await })
}

/// A campaign that must not resolve yet. Proving that something does not happen needs
/// some waiting; a short window is enough to catch a campaign that does not wait at all.
async fn assert_still_waiting(
    handle: &mut tokio::task::JoinHandle<Result<glory_keymaster::LeaderKey, KeyMasterError>>,
    what: &str,
) {
    if let Ok(result) = timeout(Duration::from_millis(300), handle).await {
        panic!("{what}: campaign resolved while it should wait: {result:?}");
    }
}

async fn leader_value(km: &Arc<dyn KeyMaster>, election: &str) -> Option<Vec<u8>> {
    km.leader(election)
        .await
        .expect("leader")
        .map(|kv| kv.value)
}

pub async fn election_handover_on_revoke(km: Arc<dyn KeyMaster>) {
    let election = namespace("election_revoke");
    let election = election.trim_end_matches('/');
    assert_eq!(km.leader(election).await.expect("leader"), None);

    let lease_a = km.lease_grant(LONG_TTL).await.expect("grant a");
    let lease_b = km.lease_grant(LONG_TTL).await.expect("grant b");
    let a = km
        .campaign(election, b"a".to_vec(), lease_a)
        .await
        .expect("a campaigns");
    assert_eq!((a.election.as_str(), a.lease), (election, lease_a));
    assert!(
        a.key.starts_with(&format!("{election}/")),
        "election key {} must live under the election",
        a.key
    );
    assert_eq!(leader_value(&km, election).await, Some(b"a".to_vec()));

    let mut b = spawn_campaign(&km, election, "b", lease_b);
    assert_still_waiting(&mut b, "b while a leads").await;
    let leader = km.leader(election).await.expect("leader").expect("a leads");
    assert_eq!(
        (leader.key.as_str(), leader.create_revision),
        (a.key.as_str(), a.create_revision)
    );

    km.lease_revoke(lease_a).await.expect("revoke a");
    let b = campaign_result(b, "b after a's lease was revoked")
        .await
        .expect("b leads");
    assert!(b.create_revision > a.create_revision);
    assert_eq!(leader_value(&km, election).await, Some(b"b".to_vec()));

    km.resign(&b).await.expect("b resigns");
    assert_eq!(km.leader(election).await.expect("leader"), None);
    // Resigning twice is harmless.
    km.resign(&b).await.expect("b resigns again");
    km.lease_revoke(lease_b).await.expect("revoke b");
}

pub async fn election_handover_on_expiry(km: Arc<dyn KeyMaster>) {
    let election = namespace("election_expiry");
    let election = election.trim_end_matches('/');
    let lease_a = km.lease_grant(SHORT_TTL).await.expect("grant a");
    let lease_b = km.lease_grant(LONG_TTL).await.expect("grant b");
    km.campaign(election, b"a".to_vec(), lease_a)
        .await
        .expect("a campaigns");
    let b = spawn_campaign(&km, election, "b", lease_b);
    // a never keeps its lease alive.
    let b = campaign_result(b, "b after a's lease expired")
        .await
        .expect("b leads");
    assert_eq!(leader_value(&km, election).await, Some(b"b".to_vec()));
    assert_eq!(
        km.leader(election).await.expect("leader").map(|kv| kv.key),
        Some(b.key.clone())
    );
    km.lease_revoke(lease_b).await.expect("revoke b");
    assert_eq!(km.leader(election).await.expect("leader"), None);
}

pub async fn election_lost_when_lease_ends(km: Arc<dyn KeyMaster>) {
    let election = namespace("election_lost");
    let election = election.trim_end_matches('/');
    let lease_a = km.lease_grant(LONG_TTL).await.expect("grant a");
    let lease_b = km.lease_grant(LONG_TTL).await.expect("grant b");
    let lease_c = km.lease_grant(LONG_TTL).await.expect("grant c");
    let a = km
        .campaign(election, b"a".to_vec(), lease_a)
        .await
        .expect("a campaigns");
    let b = spawn_campaign(&km, election, "b", lease_b);
    // c queues behind b (wait until b's key exists so the order is certain).
    wait_for("b to be queued", || {
        let km = km.clone();
        let prefix = format!("{election}/");
        async move {
            let (kvs, _) = km.get_prefix(&prefix).await.expect("get_prefix");
            (
                (kvs.len() == 2).then_some(()),
                format!("{} candidates", kvs.len()),
            )
        }
    })
    .await;
    let mut c = spawn_campaign(&km, election, "c", lease_c);
    assert_still_waiting(&mut c, "c behind a and b").await;

    // b's lease ends while it waits: b loses, and c keeps waiting for a.
    km.lease_revoke(lease_b).await.expect("revoke b");
    let lost = campaign_result(b, "b after its lease was revoked").await;
    assert!(
        matches!(lost, Err(KeyMasterError::ElectionLost(_))),
        "b: expected ElectionLost, got {lost:?}"
    );
    assert_still_waiting(&mut c, "c while a still leads").await;
    assert_eq!(leader_value(&km, election).await, Some(b"a".to_vec()));

    km.resign(&a).await.expect("a resigns");
    let c = campaign_result(c, "c after a resigned")
        .await
        .expect("c leads");
    assert_eq!(leader_value(&km, election).await, Some(b"c".to_vec()));
    km.resign(&c).await.expect("c resigns");
    for lease in [lease_a, lease_c] {
        km.lease_revoke(lease).await.expect("revoke");
    }
}

pub async fn election_recampaign_same_lease(km: Arc<dyn KeyMaster>) {
    let election = namespace("election_recampaign");
    let election = election.trim_end_matches('/');
    let lease = km.lease_grant(LONG_TTL).await.expect("grant");
    let first = km
        .campaign(election, b"v1".to_vec(), lease)
        .await
        .expect("campaign");
    let again = km
        .campaign(election, b"v2".to_vec(), lease)
        .await
        .expect("campaign again");
    assert_eq!(
        again, first,
        "campaigning again with the same lease keeps the same key"
    );
    assert_eq!(
        leader_value(&km, election).await,
        Some(b"v2".to_vec()),
        "the value is updated"
    );
    assert!(matches!(
        km.campaign(election, Vec::new(), 0).await,
        Err(KeyMasterError::Invalid(_))
    ));
    km.lease_revoke(lease).await.expect("revoke");
}
