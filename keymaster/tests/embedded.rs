//! The conformance suite against the embedded SQLite backend (each check on a fresh
//! in-memory store, the whole suite once on a file), plus what only a local store can
//! show: the initial revision, and persistence across a reopen.

#[macro_use]
mod conformance;

use std::sync::Arc;
use std::time::Duration;

use glory_keymaster::{EmbeddedKeyMaster, EventKind, KeyMaster, KeyMasterError};
use tokio::time::{timeout, Instant};

macro_rules! in_memory {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let km = EmbeddedKeyMaster::open_in_memory().expect("open in-memory store");
                conformance::$check(km).await;
            }
        )*
    };
}

for_each_check!(in_memory);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_on_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let km = EmbeddedKeyMaster::open(&dir.path().join("keymaster.db")).expect("open file store");
    assert_eq!(km.backend(), "embedded");
    conformance::all(km).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_store_starts_at_revision_one() {
    let km = EmbeddedKeyMaster::open_in_memory().expect("open");
    assert_eq!(
        km.get_prefix("").await.expect("get_prefix"),
        (Vec::new(), 1)
    );
    assert_eq!(
        km.put("k", b"v".to_vec(), None).await.expect("put"),
        2,
        "the first write is revision 2, as in etcd"
    );
    let (kvs, rev) = km.get_prefix("").await.expect("get_prefix");
    assert_eq!((kvs.len(), rev), (1, 2));
}

/// The conformance suite lets a backend round TTLs up (etcd does); this one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ttl_is_kept_exactly() {
    let km = EmbeddedKeyMaster::open_in_memory().expect("open");
    let ttl = Duration::from_millis(500);
    let lease = km.lease_grant(ttl).await.expect("grant");
    assert_eq!(km.lease_keep_alive(lease).await.expect("keep alive"), ttl);
}

#[test]
fn opening_outside_a_runtime_is_an_error() {
    let result = EmbeddedKeyMaster::open_in_memory();
    assert!(
        matches!(result, Err(KeyMasterError::Invalid(_))),
        "expected Invalid outside a runtime"
    );
}

/// Poll until the store at `km` no longer has `key`.
async fn wait_until_absent(km: &Arc<EmbeddedKeyMaster>, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = km.get(key).await.expect("get");
        if got.is_none() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} still present after 10s: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_revision_keys_leases_and_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keymaster.db");

    let short_ttl = Duration::from_millis(300);
    let (long_lease, short_lease, last_rev, short_expiry) = {
        let km = EmbeddedKeyMaster::open(&path).expect("open");
        km.put("plain", b"p".to_vec(), None)
            .await
            .expect("put plain");
        km.put("plain", b"p2".to_vec(), None)
            .await
            .expect("overwrite plain");
        let long_lease = km
            .lease_grant(Duration::from_secs(60))
            .await
            .expect("grant long");
        km.put("long", b"l".to_vec(), Some(long_lease))
            .await
            .expect("put long");
        let short_lease = km.lease_grant(short_ttl).await.expect("grant short");
        let short_expiry = Instant::now() + short_ttl;
        let last_rev = km
            .put("short", b"s".to_vec(), Some(short_lease))
            .await
            .expect("put short");
        (long_lease, short_lease, last_rev, short_expiry)
    };
    // The short lease expires while the store is closed.
    tokio::time::sleep_until(short_expiry + Duration::from_millis(50)).await;

    let km = EmbeddedKeyMaster::open(&path).expect("reopen");
    let plain = km
        .get("plain")
        .await
        .expect("get plain")
        .expect("plain survives");
    assert_eq!(
        (plain.value.as_slice(), plain.version, plain.create_revision),
        (&b"p2"[..], 2, 2)
    );
    let long = km
        .get("long")
        .await
        .expect("get long")
        .expect("long survives");
    assert_eq!(long.lease, long_lease);
    assert_eq!(
        km.lease_keep_alive(long_lease)
            .await
            .expect("long lease survives"),
        Duration::from_secs(60)
    );

    // The short lease is reaped right after the reopen, in one more revision.
    wait_until_absent(&km, "short").await;
    assert_eq!(
        km.lease_keep_alive(short_lease).await,
        Err(KeyMasterError::LeaseNotFound(short_lease))
    );
    let (_, rev) = km.get_prefix("").await.expect("get_prefix");
    assert_eq!(
        rev,
        last_rev + 1,
        "the revision persists and the expiry adds one"
    );
    assert_eq!(
        km.put("after", Vec::new(), None).await.expect("put after"),
        last_rev + 2
    );

    // History persists too: a watch from revision 1 replays everything.
    let mut watcher = km.watch_prefix("", Some(1)).await.expect("watch from 1");
    let mut seen = Vec::new();
    for _ in 0..6 {
        let event = timeout(Duration::from_secs(10), watcher.recv())
            .await
            .expect("event in time")
            .expect("watch open")
            .expect("event");
        seen.push((event.kind, event.kv.key, event.kv.mod_revision));
    }
    let expected = vec![
        (EventKind::Put, "plain".to_owned(), 2),
        (EventKind::Put, "plain".to_owned(), 3),
        (EventKind::Put, "long".to_owned(), 4),
        (EventKind::Put, "short".to_owned(), 5),
        (EventKind::Delete, "short".to_owned(), 6),
        (EventKind::Put, "after".to_owned(), 7),
    ];
    assert_eq!(seen, expected);
}
