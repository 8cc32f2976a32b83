//! Leases: expiry, keep-alive, revoke.

use super::*;

pub async fn lease_expiry(km: Arc<dyn KeyMaster>) {
    let ns = namespace("lease_expiry");
    let lease = km.lease_grant(SHORT_TTL).await.expect("grant");
    assert!(lease > 0, "lease ids are positive, got {lease}");
    let mut watcher = km.watch_prefix(&ns, None).await.expect("watch");
    let (a, b, kept) = (format!("{ns}a"), format!("{ns}b"), format!("{ns}kept"));
    km.put(&a, b"a".to_vec(), Some(lease)).await.expect("put a");
    km.put(&b, b"b".to_vec(), Some(lease)).await.expect("put b");
    km.put(&kept, b"kept".to_vec(), None)
        .await
        .expect("put kept");
    assert_eq!(must_get(&km, &a).await.lease, lease);

    wait_for("the leased keys to expire", || {
        let km = km.clone();
        let (a, b) = (a.clone(), b.clone());
        async move {
            let (ga, gb) = (
                km.get(&a).await.expect("get a"),
                km.get(&b).await.expect("get b"),
            );
            let seen = format!("a={:?} b={:?}", ga.is_some(), gb.is_some());
            ((ga.is_none() && gb.is_none()).then_some(()), seen)
        }
    })
    .await;
    must_get(&km, &kept).await;

    let events = next_events(&mut watcher, 5, "puts, then the expiry deletes").await;
    let deletes: Vec<_> = events[3..].iter().map(brief).collect();
    let expiry_rev = deletes[0].2;
    assert_eq!(
        deletes,
        vec![
            (EventKind::Delete, a.clone(), expiry_rev),
            (EventKind::Delete, b.clone(), expiry_rev)
        ]
    );
    assert!(expiry_rev > events[2].kv.mod_revision);

    assert_eq!(
        km.lease_keep_alive(lease).await,
        Err(KeyMasterError::LeaseNotFound(lease))
    );
    assert_eq!(
        km.put(&a, Vec::new(), Some(lease)).await,
        Err(KeyMasterError::LeaseNotFound(lease))
    );
}

pub async fn lease_keep_alive(km: Arc<dyn KeyMaster>) {
    let ns = namespace("lease_keep_alive");
    let ttl = Duration::from_millis(500);
    let lease = km.lease_grant(ttl).await.expect("grant");
    let key = format!("{ns}k");
    km.put(&key, b"alive".to_vec(), Some(lease))
        .await
        .expect("put");
    // A backend may round the TTL up (etcd counts whole seconds and has a minimum), but
    // never down, and every refresh reports the same TTL.
    let granted = km.lease_keep_alive(lease).await.expect("keep alive");
    assert!(
        granted >= ttl,
        "refreshed to {granted:?}, less than the {ttl:?} asked for"
    );
    // Keep it alive for several TTLs.
    let until = Instant::now() + granted * 4;
    while Instant::now() < until {
        assert_eq!(
            km.lease_keep_alive(lease).await.expect("keep alive"),
            granted
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        must_get(&km, &key).await.lease,
        lease,
        "kept-alive lease must keep its key"
    );
    // Then let it go.
    wait_for("the key to expire once keep-alives stop", || {
        let km = km.clone();
        let key = key.clone();
        async move {
            let got = km.get(&key).await.expect("get");
            (got.is_none().then_some(()), format!("{got:?}"))
        }
    })
    .await;
}

pub async fn lease_revoke(km: Arc<dyn KeyMaster>) {
    let ns = namespace("lease_revoke");
    let lease = km.lease_grant(LONG_TTL).await.expect("grant");
    let other = km.lease_grant(LONG_TTL).await.expect("grant other");
    assert_ne!(lease, other);
    let keys: Vec<String> = (0..3).map(|index| format!("{ns}{index}")).collect();
    for key in &keys {
        km.put(key, b"v".to_vec(), Some(lease)).await.expect("put");
    }
    let survivor = format!("{ns}other");
    km.put(&survivor, b"v".to_vec(), Some(other))
        .await
        .expect("put other");
    // Moving a key to no lease detaches it.
    let detached = format!("{ns}detached");
    km.put(&detached, b"v".to_vec(), Some(lease))
        .await
        .expect("put detached");
    km.put(&detached, b"v".to_vec(), None)
        .await
        .expect("detach");

    let before = revision_now(&km).await;
    let mut watcher = km.watch_prefix(&ns, Some(before + 1)).await.expect("watch");
    km.lease_revoke(lease).await.expect("revoke");
    let events = next_events(&mut watcher, 3, "revoke deletes").await;
    let seen: Vec<_> = events.iter().map(brief).collect();
    let expected: Vec<_> = keys
        .iter()
        .map(|key| (EventKind::Delete, key.clone(), before + 1))
        .collect();
    assert_eq!(
        seen, expected,
        "a revoke deletes all its keys at one revision"
    );
    assert_eq!(revision_now(&km).await, before + 1);
    for key in &keys {
        must_be_absent(&km, key).await;
    }
    must_get(&km, &survivor).await;
    must_get(&km, &detached).await;

    assert_eq!(
        km.lease_revoke(lease).await,
        Err(KeyMasterError::LeaseNotFound(lease))
    );
    assert_eq!(
        km.lease_keep_alive(lease).await,
        Err(KeyMasterError::LeaseNotFound(lease))
    );
    assert_eq!(
        km.put(&keys[0], Vec::new(), Some(lease)).await,
        Err(KeyMasterError::LeaseNotFound(lease))
    );

    // Revoking a lease without keys writes nothing.
    let empty = km.lease_grant(LONG_TTL).await.expect("grant empty");
    km.lease_revoke(empty).await.expect("revoke empty");
    assert_eq!(revision_now(&km).await, before + 1);
    km.lease_revoke(other).await.expect("revoke other");
}
