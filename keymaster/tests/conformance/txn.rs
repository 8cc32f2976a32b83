//! Transactions: compares, branches, conflicts and compare-and-swap races.

use super::*;

async fn holds(km: &Arc<dyn KeyMaster>, compare: Compare) -> bool {
    let what = format!("{compare:?}");
    km.txn(Txn {
        compares: vec![compare],
        ..Txn::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"))
    .succeeded
}

pub async fn txn_compares(km: Arc<dyn KeyMaster>) {
    let ns = namespace("txn_compares");
    let key = format!("{ns}k");
    let missing = format!("{ns}missing");
    km.put(&key, b"m".to_vec(), None).await.expect("put");
    let rev = km.put(&key, b"m".to_vec(), None).await.expect("put again");
    let created = rev - 1;
    let cmp = |key: &str, op, target| Compare {
        key: key.to_owned(),
        op,
        target,
    };

    let cases = [
        (cmp(&key, CmpOp::Equal, CompareTarget::Version(2)), true),
        (cmp(&key, CmpOp::Greater, CompareTarget::Version(1)), true),
        (cmp(&key, CmpOp::Less, CompareTarget::Version(2)), false),
        (
            cmp(&key, CmpOp::Equal, CompareTarget::CreateRevision(created)),
            true,
        ),
        (
            cmp(&key, CmpOp::Equal, CompareTarget::ModRevision(rev)),
            true,
        ),
        (
            cmp(&key, CmpOp::Less, CompareTarget::ModRevision(rev + 1)),
            true,
        ),
        (
            cmp(&key, CmpOp::NotEqual, CompareTarget::ModRevision(rev)),
            false,
        ),
        (
            cmp(&key, CmpOp::Equal, CompareTarget::Value(b"m".to_vec())),
            true,
        ),
        (
            cmp(&key, CmpOp::Greater, CompareTarget::Value(b"a".to_vec())),
            true,
        ),
        (
            cmp(&key, CmpOp::Less, CompareTarget::Value(b"a".to_vec())),
            false,
        ),
        (
            cmp(&key, CmpOp::NotEqual, CompareTarget::Value(b"x".to_vec())),
            true,
        ),
        // A missing key has version and revisions 0 and never matches a value.
        (Compare::absent(missing.clone()), true),
        (Compare::absent(key.clone()), false),
        (Compare::mod_revision(missing.clone(), 0), true),
        (cmp(&missing, CmpOp::Equal, CompareTarget::Version(0)), true),
        (
            cmp(&missing, CmpOp::Equal, CompareTarget::Value(Vec::new())),
            false,
        ),
        (
            cmp(
                &missing,
                CmpOp::NotEqual,
                CompareTarget::Value(b"x".to_vec()),
            ),
            false,
        ),
        (
            cmp(&missing, CmpOp::Less, CompareTarget::Value(b"x".to_vec())),
            false,
        ),
    ];
    for (compare, expected) in cases {
        let what = format!("{compare:?}");
        assert_eq!(holds(&km, compare).await, expected, "{what}");
    }

    // All compares must hold.
    let both = Txn {
        compares: vec![
            Compare::value(key.clone(), "m"),
            Compare::absent(key.clone()),
        ],
        success: vec![TxnOp::put(format!("{ns}flag"), "set")],
        ..Txn::default()
    };
    assert!(!km.txn(both).await.expect("txn").succeeded);
    must_be_absent(&km, &format!("{ns}flag")).await;
}

pub async fn txn_failure_branch(km: Arc<dyn KeyMaster>) {
    let ns = namespace("txn_failure_branch");
    let key = format!("{ns}k");
    let rev = km.put(&key, b"current".to_vec(), None).await.expect("put");
    let txn = Txn {
        compares: vec![Compare::mod_revision(key.clone(), rev - 1)],
        success: vec![
            TxnOp::put(key.clone(), "success"),
            TxnOp::put(format!("{ns}success"), "1"),
        ],
        failure: vec![
            TxnOp::put(format!("{ns}failure"), "1"),
            TxnOp::Get { key: key.clone() },
        ],
    };
    let response = km.txn(txn).await.expect("txn");
    assert!(!response.succeeded);
    assert_eq!(response.revision, rev + 1, "the failure branch wrote once");
    match &response.results[..] {
        [OpResult::Put, OpResult::Get(kvs)] => {
            assert_eq!(kvs.len(), 1);
            assert_eq!(kvs[0].value, b"current");
        }
        other => panic!("unexpected failure-branch results {other:?}"),
    }
    assert_eq!(
        must_get(&km, &key).await.value,
        b"current",
        "success branch must not run"
    );
    must_be_absent(&km, &format!("{ns}success")).await;
    must_get(&km, &format!("{ns}failure")).await;

    // An empty failure branch: nothing happens, the revision stays.
    let txn = Txn {
        compares: vec![Compare::absent(key.clone())],
        success: vec![TxnOp::delete(key.clone())],
        failure: vec![],
    };
    let response = km.txn(txn).await.expect("txn");
    assert!(!response.succeeded);
    assert!(response.results.is_empty());
    assert_eq!(response.revision, rev + 1);
}

pub async fn txn_rejects_conflicting_ops(km: Arc<dyn KeyMaster>) {
    let ns = namespace("txn_conflicts");
    let key = format!("{ns}k");
    let branches = [
        vec![TxnOp::put(key.clone(), "1"), TxnOp::put(key.clone(), "2")],
        vec![TxnOp::put(key.clone(), "1"), TxnOp::delete(key.clone())],
        vec![
            TxnOp::put(key.clone(), "1"),
            TxnOp::DeletePrefix { prefix: ns.clone() },
        ],
    ];
    for branch in branches {
        let what = format!("{branch:?}");
        let result = km
            .txn(Txn {
                success: branch,
                ..Txn::default()
            })
            .await;
        assert!(
            matches!(result, Err(KeyMasterError::Invalid(_))),
            "{what}: expected Invalid, got {result:?}"
        );
    }
    must_be_absent(&km, &key).await;
}

pub async fn txn_with_missing_lease_writes_nothing(km: Arc<dyn KeyMaster>) {
    let ns = namespace("txn_missing_lease");
    let before = revision_now(&km).await;
    let bogus: LeaseId = 0x5eed_0000_0bad_1ea5;
    let txn = Txn {
        success: vec![
            TxnOp::put(format!("{ns}plain"), "x"),
            TxnOp::Put {
                key: format!("{ns}leased"),
                value: b"y".to_vec(),
                lease: bogus,
            },
        ],
        ..Txn::default()
    };
    let result = km.txn(txn).await;
    assert_eq!(result, Err(KeyMasterError::LeaseNotFound(bogus)));
    must_be_absent(&km, &format!("{ns}plain")).await;
    assert_eq!(
        revision_now(&km).await,
        before,
        "a failed txn must not move the revision"
    );
    let result = km
        .put(&format!("{ns}leased"), b"y".to_vec(), Some(bogus))
        .await;
    assert_eq!(result, Err(KeyMasterError::LeaseNotFound(bogus)));
}

/// Racers compare-and-swap on the same mod revision: exactly one wins each round.
pub async fn cas_race(km: Arc<dyn KeyMaster>) {
    let ns = namespace("cas_race");
    let key = format!("{ns}counter");
    let mut rev = km.put(&key, b"0".to_vec(), None).await.expect("put");
    for round in 1..=20 {
        let racers: Vec<_> = (0..4)
            .map(|racer| {
                let km = km.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let txn = Txn {
                        compares: vec![Compare::mod_revision(key.clone(), rev)],
                        success: vec![TxnOp::put(key, format!("{round}:{racer}"))],
                        failure: vec![],
                    };
                    km.txn(txn).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (racer, handle) in racers.into_iter().enumerate() {
            let response = handle.await.expect("racer task").expect("racer txn");
            if response.succeeded {
                winners.push((racer, response.revision));
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: expected exactly one winner, got {winners:?}"
        );
        let (racer, won_at) = winners[0];
        let kv = must_get(&km, &key).await;
        assert_eq!(kv.value, format!("{round}:{racer}").into_bytes());
        assert_eq!(kv.mod_revision, won_at);
        assert_eq!(won_at, rev + 1, "losers must not move the revision");
        rev = won_at;
    }
}
