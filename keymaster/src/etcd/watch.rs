//! The task behind one etcd [`Watcher`](crate::Watcher): forward etcd's watch responses,
//! and when the stream breaks (member killed, connection lost) create the watch again
//! from the first revision not yet delivered, so that no event is lost or repeated.
//!
//! Resuming at `last delivered + 1` relies on etcd never splitting one revision over two
//! responses, which holds as long as the watch does not ask for `fragment`.

use etcd_client::{WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::convert;
use super::failure::{Failure, FailureKind};
use super::{Retry, Rpc, RETRY_MAX_DELAY, RETRY_START_DELAY};
use crate::{KeyMasterError, KmResult, Revision, WatchEvent};

/// Consecutive failed attempts to re-create a watch before it is logged as a warning.
const WARN_AFTER_ATTEMPTS: u32 = 10;

/// Create a watch on `prefix` from revision `from` and wait for etcd to confirm it.
/// Returns the stream and the first response if it carried more than the confirmation.
pub(super) async fn open(
    rpc: &Rpc,
    prefix: &[u8],
    from: Revision,
) -> Result<(WatchStream, Option<WatchResponse>), Failure> {
    let mut stream = rpc
        .call(Retry::Unavailable, || {
            let mut watch = rpc.watch.clone();
            let options = WatchOptions::new().with_prefix().with_start_revision(from);
            let prefix = prefix.to_vec();
            async move { watch.watch(prefix, Some(options)).await }
        })
        .await?;
    let first = timeout(rpc.options.request_timeout, stream.message())
        .await
        .map_err(|_| Failure::new(FailureKind::TimedOut, "watch was not confirmed in time"))?
        .map_err(|e| Failure::classify(&e))?;
    match first {
        Some(response)
            if response.created() && !response.canceled() && response.events().is_empty() =>
        {
            Ok((stream, None))
        }
        Some(response) => Ok((stream, Some(response))),
        None => Err(Failure::new(
            FailureKind::Unavailable,
            "watch stream ended before etcd confirmed it",
        )),
    }
}

/// What to do after one response.
enum Step {
    Continue,
    Stop,
    /// The stream is no longer usable; create the watch again.
    Broken(String),
}

pub(super) struct WatchTask {
    pub rpc: Rpc,
    pub prefix: Vec<u8>,
    /// The first revision not yet delivered: where a re-created watch starts.
    pub next_revision: Revision,
    pub tx: mpsc::Sender<KmResult<WatchEvent>>,
    /// Cancelled when the key master is dropped.
    pub shutdown: CancellationToken,
}

impl WatchTask {
    /// Forward events until the receiver is dropped, the key master shuts down, or a
    /// final error (compaction) has been delivered.
    pub async fn run(mut self, mut stream: WatchStream, mut pending: Option<WatchResponse>) {
        loop {
            let step = match pending.take() {
                Some(response) => self.handle(response).await,
                None => {
                    let received = tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = self.tx.closed() => return,
                        received = stream.message() => received,
                    };
                    match received {
                        Ok(Some(response)) => self.handle(response).await,
                        Ok(None) => Step::Broken("the watch stream ended".into()),
                        Err(error) => Step::Broken(Failure::classify(&error).message),
                    }
                }
            };
            match step {
                Step::Continue => {}
                Step::Stop => return,
                Step::Broken(reason) => {
                    debug!(
                        prefix = %String::from_utf8_lossy(&self.prefix),
                        from = self.next_revision,
                        %reason,
                        "etcd watch broke, re-creating it"
                    );
                    match self.reopen().await {
                        Some((reopened, first)) => {
                            stream = reopened;
                            pending = first;
                        }
                        None => return,
                    }
                }
            }
        }
    }

    async fn handle(&mut self, response: WatchResponse) -> Step {
        if response.compact_revision() > 0 {
            let compacted = KeyMasterError::Compacted {
                requested: self.next_revision,
                compacted: response.compact_revision(),
            };
            // Final item; if the receiver is gone there is nobody to tell.
            let _ = self.tx.send(Err(compacted)).await;
            return Step::Stop;
        }
        if response.canceled() {
            return Step::Broken(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason()
            ));
        }
        // Events before `floor` were delivered on an earlier stream.
        let floor = self.next_revision;
        let mut last_delivered = None;
        for event in response.events() {
            let event = match convert::watch_event(event) {
                Ok(event) => event,
                Err(failure) => {
                    let _ = self
                        .tx
                        .send(Err(failure.into_error("watch event", None)))
                        .await;
                    return Step::Stop;
                }
            };
            let revision = event.kv.mod_revision;
            if revision < floor {
                continue;
            }
            let sent = tokio::select! {
                sent = self.tx.send(Ok(event)) => sent.is_ok(),
                _ = self.shutdown.cancelled() => false,
            };
            if !sent {
                return Step::Stop;
            }
            last_delivered = Some(revision);
        }
        if let Some(revision) = last_delivered {
            self.next_revision = revision + 1;
        }
        Step::Continue
    }

    /// Create the watch again from `next_revision`, retrying with backoff for as long
    /// as somebody listens. `None` means stop.
    async fn reopen(&self) -> Option<(WatchStream, Option<WatchResponse>)> {
        let mut delay = RETRY_START_DELAY;
        let mut attempts = 0u32;
        loop {
            let opened = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = self.tx.closed() => return None,
                opened = open(&self.rpc, &self.prefix, self.next_revision) => opened,
            };
            match opened {
                Ok(opened) => {
                    if attempts >= WARN_AFTER_ATTEMPTS {
                        warn!(
                            prefix = %String::from_utf8_lossy(&self.prefix),
                            attempts,
                            "etcd watch re-created"
                        );
                    }
                    return Some(opened);
                }
                Err(failure) => {
                    attempts += 1;
                    if attempts == WARN_AFTER_ATTEMPTS {
                        warn!(
                            prefix = %String::from_utf8_lossy(&self.prefix),
                            error = %failure.message,
                            "etcd watch cannot be re-created yet; still retrying"
                        );
                    } else {
                        debug!(error = %failure.message, "re-creating etcd watch failed");
                    }
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = self.tx.closed() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX_DELAY);
        }
    }
}
