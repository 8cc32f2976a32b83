//! Keys, values, metadata and revisions.

use super::*;

pub async fn kv_basics(km: Arc<dyn KeyMaster>) {
    let ns = namespace("kv_basics");
    let a = format!("{ns}a");
    assert_eq!(km.get(&a).await.expect("get missing"), None);

    let r1 = km.put(&a, b"one".to_vec(), None).await.expect("put a");
    let kv = must_get(&km, &a).await;
    assert_eq!(
        kv,
        KeyValue {
            key: a.clone(),
            value: b"one".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            version: 1,
            lease: 0
        }
    );

    let r2 = km
        .put(&a, b"two".to_vec(), None)
        .await
        .expect("overwrite a");
    assert_eq!(r2, r1 + 1, "an overwrite is one write");
    let kv = must_get(&km, &a).await;
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (&b"two"[..], r1, r2, 2)
    );

    // Deleting resets the metadata: a recreated key starts over.
    assert_eq!(km.delete(&a).await.expect("delete a"), 1);
    must_be_absent(&km, &a).await;
    let after_delete = revision_now(&km).await;
    assert_eq!(after_delete, r2 + 1, "a delete is one write");
    let r4 = km.put(&a, Vec::new(), None).await.expect("recreate a");
    assert_eq!(r4, after_delete + 1);
    let kv = must_get(&km, &a).await;
    assert_eq!(
        (
            kv.value.len(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (0, r4, r4, 1)
    );

    // Prefix reads: key order, exact prefix boundaries, and the revision read at.
    for key in ["b", "b/1", "b/0", "ba", "c"] {
        km.put(&format!("{ns}{key}"), key.as_bytes().to_vec(), None)
            .await
            .expect("put");
    }
    let last = revision_now(&km).await;
    let (kvs, read_at) = km
        .get_prefix(&format!("{ns}b"))
        .await
        .expect("get_prefix b");
    let keys: Vec<&str> = kvs
        .iter()
        .map(|kv| kv.key.strip_prefix(&ns).unwrap_or(&kv.key))
        .collect();
    assert_eq!(keys, ["b", "b/0", "b/1", "ba"]);
    assert_eq!(read_at, last);
    let (kvs, _) = km
        .get_prefix(&format!("{ns}b/"))
        .await
        .expect("get_prefix b/");
    assert_eq!(kvs.len(), 2, "prefix b/ must not include b or ba: {kvs:?}");
    let (kvs, _) = km.get_prefix(&ns).await.expect("get_prefix ns");
    assert_eq!(kvs.len(), 6);
    let (kvs, _) = km
        .get_prefix(&format!("{ns}zzz"))
        .await
        .expect("get_prefix empty");
    assert!(kvs.is_empty());
}

pub async fn key_validation(km: Arc<dyn KeyMaster>) {
    let invalid = |what: &str, result: Result<(), KeyMasterError>| {
        assert!(
            matches!(result, Err(KeyMasterError::Invalid(_))),
            "{what}: expected Invalid, got {result:?}"
        );
    };
    invalid(
        "put empty key",
        km.put("", b"x".to_vec(), None).await.map(drop),
    );
    invalid("get empty key", km.get("").await.map(drop));
    invalid("delete empty key", km.delete("").await.map(drop));
    invalid(
        "txn put empty key",
        km.txn(Txn {
            success: vec![TxnOp::put("", "x")],
            ..Txn::default()
        })
        .await
        .map(drop),
    );
    invalid("zero TTL", km.lease_grant(Duration::ZERO).await.map(drop));
}

pub async fn revisions(km: Arc<dyn KeyMaster>) {
    let ns = namespace("revisions");
    let start = km
        .put(&format!("{ns}base"), b"0".to_vec(), None)
        .await
        .expect("put base");
    assert_eq!(
        revision_now(&km).await,
        start,
        "reads do not move the revision"
    );
    assert_eq!(revision_now(&km).await, start);

    let next = km
        .put(&format!("{ns}x"), b"1".to_vec(), None)
        .await
        .expect("put x");
    assert_eq!(next, start + 1);

    // Deleting a missing key changes nothing.
    assert_eq!(
        km.delete(&format!("{ns}missing"))
            .await
            .expect("delete missing"),
        0
    );
    assert_eq!(revision_now(&km).await, next);

    // All writes of one txn share one revision.
    let txn = Txn {
        success: vec![
            TxnOp::put(format!("{ns}t1"), "a"),
            TxnOp::put(format!("{ns}t2"), "b"),
            TxnOp::delete(format!("{ns}x")),
            TxnOp::Get {
                key: format!("{ns}t1"),
            },
        ],
        ..Txn::default()
    };
    let response = km.txn(txn).await.expect("multi-op txn");
    assert!(response.succeeded);
    assert_eq!(response.revision, next + 1);
    for key in ["t1", "t2"] {
        let kv = must_get(&km, &format!("{ns}{key}")).await;
        assert_eq!(
            (kv.create_revision, kv.mod_revision),
            (next + 1, next + 1),
            "{key}"
        );
    }
    match &response.results[..] {
        [OpResult::Put, OpResult::Put, OpResult::Delete(1), OpResult::Get(kvs)] => {
            assert_eq!(kvs.len(), 1, "a get inside the txn sees the txn's own put");
            assert_eq!(kvs[0].mod_revision, next + 1);
        }
        other => panic!("unexpected txn results {other:?}"),
    }

    // A txn that only reads, or whose ops write nothing, does not move the revision.
    let read_only = Txn {
        success: vec![
            TxnOp::Get {
                key: format!("{ns}t1"),
            },
            TxnOp::GetPrefix { prefix: ns.clone() },
        ],
        ..Txn::default()
    };
    let response = km.txn(read_only).await.expect("read-only txn");
    assert_eq!(response.revision, next + 1);
    let noop = Txn {
        success: vec![
            TxnOp::delete(format!("{ns}missing")),
            TxnOp::DeletePrefix {
                prefix: format!("{ns}none/"),
            },
        ],
        ..Txn::default()
    };
    let response = km.txn(noop).await.expect("no-op delete txn");
    assert_eq!(response.revision, next + 1);
    assert_eq!(
        response.results,
        vec![OpResult::Delete(0), OpResult::Delete(0)]
    );
    assert_eq!(revision_now(&km).await, next + 1);
}
