//! Tests of embedded-only internals (history trimming, task lifetimes); the behaviour
//! shared with other backends is tested by the conformance suite in `tests/`.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::time::{timeout, Instant};

use super::EmbeddedKeyMaster;
use crate::{EventKind, KeyMaster, KeyMasterError, Revision};

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn small_history_store(limit: i64) -> Arc<EmbeddedKeyMaster> {
    let conn = Connection::open_in_memory().expect("open in-memory database");
    EmbeddedKeyMaster::start(conn, limit).expect("start store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_reports_compaction() {
    let km = small_history_store(10);
    let mut last: Revision = 0;
    for index in 0..30 {
        last = km
            .put(&format!("k/{index}"), Vec::new(), None)
            .await
            .expect("put");
    }
    assert_eq!(last, 31);

    // The reaper trims to the newest 10 events once the history is 10% over: so in the
    // end revisions 22..=31 remain, or 21..=31 when its last trim came at revision 30
    // (11 events are not over the limit's margin; this depends on when it ran).
    let deadline = Instant::now() + Duration::from_secs(10);
    let compacted = loop {
        let mut watcher = km.watch_prefix("k/", Some(1)).await.expect("watch");
        let first = timeout(Duration::from_secs(10), watcher.recv())
            .await
            .expect("first item in time");
        match first {
            Some(Err(KeyMasterError::Compacted {
                requested,
                compacted,
            })) => {
                assert_eq!(requested, 1);
                assert!(timeout(Duration::from_secs(10), watcher.recv())
                    .await
                    .expect("end in time")
                    .is_none());
                // The reaper may have trimmed while the puts were still going on (to
                // the newest 10 of fewer revisions); its next pass trims the rest.
                if (21..=22).contains(&compacted) {
                    break compacted;
                }
                assert!(
                    compacted < 21 && Instant::now() < deadline,
                    "history trimmed to {compacted}, expected 21 or 22"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(Ok(_)) => {
                assert!(Instant::now() < deadline, "history was never trimmed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("unexpected first watch item {other:?}"),
        }
    };
    assert!((21..=22).contains(&compacted), "{compacted}");

    // Resuming at the oldest available revision still works, with nothing missing.
    let mut watcher = km.watch_prefix("k/", Some(compacted)).await.expect("watch");
    for rev in compacted..=last {
        let event = watcher.recv().await.expect("open").expect("event");
        assert_eq!((event.kind, event.kv.mod_revision), (EventKind::Put, rev));
    }
    // And live events follow the replay.
    let rev = km.put("k/live", Vec::new(), None).await.expect("put");
    assert_eq!(
        watcher
            .recv()
            .await
            .expect("open")
            .expect("event")
            .kv
            .mod_revision,
        rev
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_task_ends_when_receiver_is_dropped() {
    let km = EmbeddedKeyMaster::open_in_memory().expect("open");
    let watchers: Vec<_> = open_watchers(&km, 3).await;
    assert_eq!(km.inner.publish.receiver_count(), 3);
    drop(watchers);
    // Wake the tasks up with a write; they must notice their receivers are gone.
    km.put("w/x", Vec::new(), None).await.expect("put");
    wait_for("watcher tasks to end", || {
        km.inner.publish.receiver_count() == 0
    })
    .await;
}

async fn open_watchers(km: &Arc<EmbeddedKeyMaster>, count: usize) -> Vec<crate::Watcher> {
    let mut watchers = Vec::with_capacity(count);
    for _ in 0..count {
        watchers.push(km.watch_prefix("w/", None).await.expect("watch"));
    }
    watchers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_ends_reaper_and_watchers() {
    let km = EmbeddedKeyMaster::open_in_memory().expect("open");
    let mut watcher = km.watch_prefix("", None).await.expect("watch");
    let inner = Arc::clone(&km.inner);
    drop(km);
    let ended = timeout(Duration::from_secs(10), watcher.recv())
        .await
        .expect("watch ends in time");
    assert!(ended.is_none(), "expected the watch to end, got {ended:?}");
    wait_for("the reaper and watcher to release the store", || {
        Arc::strong_count(&inner) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ttls_are_refused() {
    let km = EmbeddedKeyMaster::open_in_memory().expect("open");
    for ttl in [Duration::ZERO, Duration::from_millis(99)] {
        assert!(
            matches!(km.lease_grant(ttl).await, Err(KeyMasterError::Invalid(_))),
            "{ttl:?}"
        );
    }
    km.lease_grant(Duration::from_millis(100))
        .await
        .expect("100 ms is allowed");
}

/// Writes from many tasks at once are committed in groups; each is answered with its
/// own revision, and a watcher sees every one of them once, in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_get_their_own_revisions() {
    let km = EmbeddedKeyMaster::open_in_memory().expect("open");
    let mut watcher = km.watch_prefix("w/", None).await.expect("watch");
    let writers: Vec<_> = (0..300)
        .map(|i| {
            let km = km.clone();
            tokio::spawn(async move { km.put(&format!("w/{i}"), vec![1], None).await })
        })
        .collect();
    let mut revisions = Vec::new();
    for writer in writers {
        revisions.push(writer.await.expect("join").expect("put"));
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (2..302).collect::<Vec<Revision>>());
    let mut seen = Vec::new();
    while seen.len() < 300 {
        let event = timeout(Duration::from_secs(10), watcher.recv())
            .await
            .expect("event in time")
            .expect("watch open")
            .expect("event");
        seen.push(event.kv.mod_revision);
    }
    assert_eq!(seen, (2..302).collect::<Vec<Revision>>());
}
