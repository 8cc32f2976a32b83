//! Waiting for a condition, never sleeping blindly: poll until the check says yes or the
//! deadline passes, and then fail with what was awaited *and what was last seen*, so a
//! failure on a busy CI machine says how far things got.
//!
//! A check answers `Ok(value)` when the condition holds and `Err(seen)` with a short
//! description of the state it saw otherwise. [`seen`] turns an `Option` into that.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(50);

fn timed_out(what: &str, timeout: Duration, last: &str) -> anyhow::Error {
    anyhow::anyhow!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
}

/// Poll the async `check` until it holds; returns its value and how long it took.
pub async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(last) if start.elapsed() > timeout => return Err(timed_out(what, timeout, &last)),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Poll `check` on this thread until it holds (tests without a runtime).
pub fn until_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() > timeout => return Err(timed_out(what, timeout, &last)),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`until`] for a check that answers `Option` (`None`: not yet).
pub async fn until_some<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    until(what, timeout, || {
        let poll = check();
        async move { poll.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
}

/// [`until_blocking`] for a check that answers `Option` (`None`: not yet).
pub fn until_some_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    until_blocking(what, timeout, || {
        check().ok_or_else(|| "not yet".to_string())
    })
}

/// `Some(v)` holds; `None` was not it yet, seen as `describe`.
pub fn seen<T>(value: Option<T>, describe: impl FnOnce() -> String) -> Result<T, String> {
    value.ok_or_else(describe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_names_what_was_awaited_and_what_was_seen() {
        let mut n = 0;
        let err = until_blocking("three", Duration::from_millis(120), || {
            n += 1;
            Err::<(), _>(format!("{n} so far"))
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("waiting for three"), "{err}");
        assert!(err.contains(&format!("last seen: {n} so far")), "{err}");
        assert!(n >= 2, "polled {n} times");
    }

    #[tokio::test]
    async fn a_condition_that_holds_returns_its_value() {
        let mut n = 0;
        let (v, _) = until("two polls", Duration::from_secs(5), || {
            n += 1;
            let now = n;
            async move { seen((now >= 2).then_some(now), || format!("{now}")) }
        })
        .await
        .unwrap();
        assert_eq!(v, 2);
    }
}
