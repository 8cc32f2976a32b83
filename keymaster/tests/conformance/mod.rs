//! The KeyMaster conformance suite: backend-independent checks of the etcd v3
//! semantics promised by the trait. Each check is an `async fn` taking an
//! `Arc<dyn KeyMaster>` and panicking with a message that says what was expected and
//! what was seen. A backend's test file declares `#[macro_use] mod conformance;` and runs
//! every check against a fresh store with `for_each_check!`; see `embedded.rs`.
//!
//! Every check works under its own random key prefix and only asserts revision
//! *differences*, so that the checks also hold on a shared store (an etcd cluster) as
//! long as nothing else writes while a check runs.

mod election;
mod kv;
mod lease;
mod txn;
mod watch;

pub use election::*;
pub use kv::*;
pub use lease::*;
pub use txn::*;
pub use watch::*;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use glory_keymaster::{
    CmpOp, Compare, CompareTarget, EventKind, KeyMaster, KeyMasterError, KeyValue, LeaseId,
    OpResult, Revision, Txn, TxnOp, WatchEvent, Watcher,
};
use tokio::time::{timeout, Instant};

/// How long any single expected thing may take before the check fails.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);
/// The TTL of leases that are meant to expire during a check.
const SHORT_TTL: Duration = Duration::from_millis(300);
/// The TTL of leases that must outlive a check.
const LONG_TTL: Duration = Duration::from_secs(60);

/// The one list of checks: `for_each_check!(m)` expands to `m!(check, check, ...)`, so a
/// backend's test file (`#[macro_use] mod conformance;`) makes a test of each check with
/// its own macro, and [`all`] runs them in order. A new check is added here only.
macro_rules! for_each_check {
    ($m:ident) => {
        $m!(
            kv_basics,
            key_validation,
            revisions,
            txn_compares,
            txn_failure_branch,
            txn_rejects_conflicting_ops,
            txn_with_missing_lease_writes_nothing,
            cas_race,
            watch_order,
            watch_resume,
            watch_handoff_under_load,
            watch_prefix_isolation,
            watch_slow_consumer,
            lease_expiry,
            lease_keep_alive,
            lease_revoke,
            election_handover_on_revoke,
            election_handover_on_expiry,
            election_lost_when_lease_ends,
            election_recampaign_same_lease,
        );
    };
}

macro_rules! run_in_order {
    ($($check:ident),* $(,)?) => {
        /// Every check, in order; for a backend that wants to run them all in one test.
        pub async fn all(km: Arc<dyn KeyMaster>) {
            $($check(km.clone()).await;)*
        }
    };
}

for_each_check!(run_in_order);

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// A prefix no other check (or earlier run against the same store) uses.
fn namespace(check: &str) -> String {
    format!("conformance/{check}/{:016x}/", rand::random::<u64>())
}

/// Poll `condition` until it returns `Some`, or fail saying what we waited for and the
/// last thing we saw.
async fn wait_for<T, F, Fut>(what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (Option<T>, String)>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (done, seen) = condition().await;
        if let Some(value) = done {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}; last saw: {seen}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn next_event(watcher: &mut Watcher, what: &str) -> WatchEvent {
    match timeout(PATIENCE, watcher.recv()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("waiting for {what}: watch failed: {error}"),
        Ok(None) => panic!("waiting for {what}: watch ended"),
        Err(_) => panic!("waiting for {what}: no event within {PATIENCE:?}"),
    }
}

async fn next_events(watcher: &mut Watcher, count: usize, what: &str) -> Vec<WatchEvent> {
    let mut events = Vec::with_capacity(count);
    for index in 0..count {
        events.push(next_event(watcher, &format!("{what} (event {index} of {count})")).await);
    }
    events
}

/// Assert that nothing except the given events arrived before `sentinel` (a key this
/// check puts last).
async fn expect_then_sentinel(
    watcher: &mut Watcher,
    expected: &[(EventKind, &str)],
    sentinel: &str,
) {
    for (kind, key) in expected {
        let event = next_event(watcher, &format!("{kind:?} {key}")).await;
        assert_eq!(
            (event.kind, event.kv.key.as_str()),
            (*kind, *key),
            "unexpected watch event {event:?}"
        );
    }
    let event = next_event(watcher, &format!("sentinel {sentinel}")).await;
    assert_eq!(
        event.kv.key, sentinel,
        "expected the sentinel next, got {event:?}"
    );
}

fn brief(event: &WatchEvent) -> (EventKind, String, Revision) {
    (event.kind, event.kv.key.clone(), event.kv.mod_revision)
}

async fn must_get(km: &Arc<dyn KeyMaster>, key: &str) -> KeyValue {
    match km.get(key).await {
        Ok(Some(kv)) => kv,
        other => panic!("expected {key} to exist, got {other:?}"),
    }
}

async fn must_be_absent(km: &Arc<dyn KeyMaster>, key: &str) {
    let got = km.get(key).await.expect("get");
    assert_eq!(got, None, "expected {key} to be absent");
}

async fn revision_now(km: &Arc<dyn KeyMaster>) -> Revision {
    km.get_prefix("conformance/revision-probe/")
        .await
        .expect("get_prefix")
        .1
}
