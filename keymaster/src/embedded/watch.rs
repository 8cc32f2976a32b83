//! The task behind one [`Watcher`](crate::Watcher): replay history, then forward live
//! batches from the broadcast channel. A watcher that falls behind the broadcast
//! channel re-reads the event table from the last event it accounted for, so a slow
//! consumer costs itself a database read, never anybody else a stall or a lost event.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::store::{self, Batch, HistoryPosition, StoredEvent};
use super::Inner;
use crate::{KmResult, Revision, WatchEvent};

pub(super) struct WatchTask {
    pub inner: Arc<Inner>,
    pub prefix: Vec<u8>,
    /// Events below this revision are not delivered (0 for a live-only watch).
    pub start_revision: Revision,
    /// The newest event (by id) and store revision already accounted for: every event
    /// at or before it was either delivered or did not match.
    pub position: HistoryPosition,
    pub tx: mpsc::Sender<KmResult<WatchEvent>>,
    /// Cancelled when the key master is dropped.
    pub shutdown: CancellationToken,
}

impl WatchTask {
    /// Deliver `replay`, then live events, until the receiver is dropped, the key
    /// master shuts down, or the history needed to recover from lag is gone.
    pub async fn run(mut self, mut live: broadcast::Receiver<Batch>, replay: Vec<StoredEvent>) {
        if !self.deliver_history(replay).await {
            return;
        }
        loop {
            let received = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.tx.closed() => return,
                received = live.recv() => received,
            };
            match received {
                Ok(batch) => {
                    if !self.deliver_batch(&batch).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(missed, "watcher fell behind, re-reading event history");
                    match self.catch_up().await {
                        Ok((resubscribed, events, position)) => {
                            live = resubscribed;
                            let delivered = self.deliver_history(events).await;
                            self.position = position;
                            if !delivered {
                                return;
                            }
                        }
                        Err(error) => {
                            // Final item; if the receiver is gone there is nobody to tell.
                            let _ = self.tx.send(Err(error)).await;
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Subscribe again and read what we missed, under the connection lock so that the
    /// new subscription starts exactly where the read ends.
    async fn catch_up(
        &self,
    ) -> KmResult<(
        broadcast::Receiver<Batch>,
        Vec<StoredEvent>,
        HistoryPosition,
    )> {
        let prefix = self.prefix.clone();
        let after_id = self.position.last_id;
        let min_revision = self.start_revision.max(self.position.last_revision + 1);
        self.inner
            .with_conn("catch up watcher", move |inner, conn| {
                let live = inner.publish.subscribe();
                let (events, position) =
                    store::history_after(conn, &prefix, after_id, min_revision)?;
                Ok((live, events, position))
            })
            .await
    }

    /// Events read from the table are already filtered by prefix and revision.
    async fn deliver_history(&mut self, events: Vec<StoredEvent>) -> bool {
        for stored in events {
            if !self.deliver(stored.event).await {
                return false;
            }
        }
        true
    }

    async fn deliver_batch(&mut self, batch: &Batch) -> bool {
        for stored in batch.iter() {
            // Anything at or before our position was covered by a history read.
            if stored.id <= self.position.last_id {
                continue;
            }
            self.position.last_id = stored.id;
            self.position.last_revision = stored.event.kv.mod_revision;
            let wanted = stored.event.kv.mod_revision >= self.start_revision
                && stored.event.kv.key.as_bytes().starts_with(&self.prefix);
            if wanted && !self.deliver(stored.event.clone()).await {
                return false;
            }
        }
        true
    }

    /// Returns false when the watch should end.
    async fn deliver(&self, event: WatchEvent) -> bool {
        tokio::select! {
            sent = self.tx.send(Ok(event)) => sent.is_ok(),
            _ = self.shutdown.cancelled() => false,
        }
    }
}
