//! Watches: order, resume, gapless handoff, prefix isolation, slow consumers.

use super::*;

pub async fn watch_order(km: Arc<dyn KeyMaster>) {
    let ns = namespace("watch_order");
    let mut watcher = km.watch_prefix(&ns, None).await.expect("watch");
    let key = |name: &str| format!("{ns}{name}");
    let r1 = km.put(&key("a"), b"1".to_vec(), None).await.expect("put a");
    let r2 = km.put(&key("b"), b"2".to_vec(), None).await.expect("put b");
    let r3 = km
        .put(&key("a"), b"3".to_vec(), None)
        .await
        .expect("put a again");
    let response = km
        .txn(Txn {
            success: vec![
                TxnOp::put(key("c"), "4"),
                TxnOp::delete(key("b")),
                TxnOp::put(key("a"), "5"),
            ],
            ..Txn::default()
        })
        .await
        .expect("txn");
    let r4 = response.revision;
    let r5 = revision_now(&km).await;
    assert_eq!(r5, r4);
    let r6 = km
        .delete(&key("c"))
        .await
        .map(|_| r4 + 1)
        .expect("delete c");

    let events = next_events(&mut watcher, 7, "watch_order").await;
    let seen: Vec<_> = events.iter().map(brief).collect();
    let expected = vec![
        (EventKind::Put, key("a"), r1),
        (EventKind::Put, key("b"), r2),
        (EventKind::Put, key("a"), r3),
        (EventKind::Put, key("c"), r4),
        (EventKind::Delete, key("b"), r4),
        (EventKind::Put, key("a"), r4),
        (EventKind::Delete, key("c"), r6),
    ];
    assert_eq!(seen, expected);

    // Put events carry the full metadata; delete events carry the key and revision.
    assert_eq!(
        events[2].kv,
        KeyValue {
            key: key("a"),
            value: b"3".to_vec(),
            create_revision: r1,
            mod_revision: r3,
            version: 2,
            lease: 0
        }
    );
    assert_eq!(events[5].kv.version, 3);
    assert_eq!(events[4].kv.value, Vec::<u8>::new());
}

/// Resume from a past revision: history is replayed exactly once, then live events
/// follow without a gap.
pub async fn watch_resume(km: Arc<dyn KeyMaster>) {
    let ns = namespace("watch_resume");
    let key = |name: &str| format!("{ns}{name}");
    let r1 = km.put(&key("a"), b"1".to_vec(), None).await.expect("put a");
    let r2 = km.put(&key("b"), b"2".to_vec(), None).await.expect("put b");
    km.delete(&key("a")).await.expect("delete a");
    let r3 = r2 + 1;
    let r4 = km.put(&key("c"), b"3".to_vec(), None).await.expect("put c");

    let mut watcher = km.watch_prefix(&ns, Some(r2)).await.expect("watch from r2");
    let replayed: Vec<_> = next_events(&mut watcher, 3, "replay")
        .await
        .iter()
        .map(brief)
        .collect();
    assert_eq!(
        replayed,
        vec![
            (EventKind::Put, key("b"), r2),
            (EventKind::Delete, key("a"), r3),
            (EventKind::Put, key("c"), r4)
        ]
    );
    let r5 = km.put(&key("d"), b"4".to_vec(), None).await.expect("put d");
    let live = next_event(&mut watcher, "live put d").await;
    assert_eq!(brief(&live), (EventKind::Put, key("d"), r5));
    km.put(&key("z"), Vec::new(), None)
        .await
        .expect("put sentinel");
    expect_then_sentinel(&mut watcher, &[], &key("z")).await;

    // From the very first revision of this check: everything, once.
    let mut watcher = km.watch_prefix(&ns, Some(r1)).await.expect("watch from r1");
    let all: Vec<_> = next_events(&mut watcher, 6, "full replay")
        .await
        .iter()
        .map(|e| e.kv.mod_revision)
        .collect();
    assert_eq!(all, vec![r1, r2, r3, r4, r5, r5 + 1]);
    let r7 = km.put(&key("y"), Vec::new(), None).await.expect("put y");
    assert_eq!(
        next_event(&mut watcher, "live put y").await.kv.mod_revision,
        r7
    );

    // A start revision in the future waits for it.
    let mut watcher = km
        .watch_prefix(&ns, Some(r7 + 2))
        .await
        .expect("watch from the future");
    km.put(&key("skipped"), Vec::new(), None)
        .await
        .expect("put skipped");
    let r9 = km
        .put(&key("seen"), Vec::new(), None)
        .await
        .expect("put seen");
    let event = next_event(&mut watcher, "first event at the future revision").await;
    assert_eq!(brief(&event), (EventKind::Put, key("seen"), r9));
}

/// Start a resuming watch while a writer is busy: the replay and the live stream must
/// join without a gap or a duplicate.
pub async fn watch_handoff_under_load(km: Arc<dyn KeyMaster>) {
    const WRITES: usize = 300;
    let ns = namespace("watch_handoff");
    let start = km
        .put(&format!("{ns}start"), Vec::new(), None)
        .await
        .expect("put start");
    let writer = {
        let km = km.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            for index in 0..WRITES {
                km.put(&format!("{ns}w/{index:04}"), Vec::new(), None)
                    .await
                    .expect("writer put");
            }
        })
    };
    // Let the writer get going, then start watching from before its first write.
    let ns_poll = ns.clone();
    wait_for("the writer to make progress", || {
        let km = km.clone();
        let prefix = format!("{ns_poll}w/");
        async move {
            let (kvs, _) = km.get_prefix(&prefix).await.expect("get_prefix");
            (
                (kvs.len() >= 20).then_some(()),
                format!("{} writes", kvs.len()),
            )
        }
    })
    .await;
    let mut watcher = km.watch_prefix(&ns, Some(start)).await.expect("watch");
    let events = next_events(&mut watcher, WRITES + 1, "handoff").await;
    writer.await.expect("writer task");
    let keys: Vec<String> = events
        .iter()
        .map(|e| e.kv.key.strip_prefix(&ns).unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<String> = std::iter::once("start".to_owned())
        .chain((0..WRITES).map(|index| format!("w/{index:04}")))
        .collect();
    assert_eq!(keys, expected, "events must arrive once each, in order");
    for pair in events.windows(2) {
        assert!(
            pair[0].kv.mod_revision < pair[1].kv.mod_revision,
            "revisions must increase: {pair:?}"
        );
    }
}

pub async fn watch_prefix_isolation(km: Arc<dyn KeyMaster>) {
    let ns = namespace("watch_isolation");
    let watched = format!("{ns}a/");
    let mut watcher = km.watch_prefix(&watched, None).await.expect("watch");
    for key in ["a", "ab", "a0", "b/1", "a/1", "A/1"] {
        km.put(&format!("{ns}{key}"), Vec::new(), None)
            .await
            .expect("put");
    }
    km.delete(&format!("{ns}ab")).await.expect("delete outside");
    km.delete(&format!("{ns}a/1")).await.expect("delete inside");
    km.put(&format!("{watched}zz"), Vec::new(), None)
        .await
        .expect("put sentinel");
    let inside = format!("{watched}1");
    expect_then_sentinel(
        &mut watcher,
        &[(EventKind::Put, &inside), (EventKind::Delete, &inside)],
        &format!("{watched}zz"),
    )
    .await;
}

/// A watcher that does not read for a while must still get every event, in order.
pub async fn watch_slow_consumer(km: Arc<dyn KeyMaster>) {
    const WRITES: usize = 3000;
    let ns = namespace("watch_slow_consumer");
    let mut watcher = km.watch_prefix(&ns, None).await.expect("watch");
    let mut revisions = Vec::with_capacity(WRITES);
    for index in 0..WRITES {
        revisions.push(
            km.put(
                &format!("{ns}{}", index % 7),
                index.to_string().into_bytes(),
                None,
            )
            .await
            .expect("put"),
        );
    }
    let events = next_events(&mut watcher, WRITES, "slow consumer").await;
    let seen: Vec<Revision> = events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(
        seen, revisions,
        "a slow watcher must see every event once, in order"
    );
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.kv.value, index.to_string().into_bytes());
    }
}
