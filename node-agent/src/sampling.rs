//! The agent's monitoring for its whole life: probes and samples on one schedule, kept
//! in a buffer whether or not a group master is connected, so the master that takes
//! over after a failover gets the history with no hole where the agent was between
//! sessions (the buffer is sent as a backfill).

use std::time::Duration;

use glory_monitor::batch::BatchWriter;
use glory_monitor::buffer::SampleBuffer;
use glory_protocol::monitoring::{SampleBatch, SeriesKey};
use glory_protocol::AgentToGroup;
use tokio::time::Instant;

use crate::host::Host;
use crate::probes::Probes;

/// Batches of the buffer sent per metrics interval while backfilling (a minute's
/// worth at the default interval): a new group master is not flooded.
const BACKFILL_PER_INTERVAL: usize = 12;

/// What the group master lacks of the buffer: after `.0`, before `.1` (the session's
/// start).
pub type Pending = Option<(Option<u64>, u64)>;

/// Until `due`; never when None.
pub async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Probes, recent samples and when the next sample is due. Outlives sessions.
pub struct Monitoring {
    pub probes: Probes,
    buffer: SampleBuffer,
    /// None: the agent sends no metrics.
    every: Option<Duration>,
    next: Instant,
}

impl Monitoring {
    /// The first sample waits one interval (rates need a previous reading), which
    /// spreads agents over the interval by when each one started.
    pub fn new(every: Option<Duration>, buffer_reach: Duration) -> Self {
        Monitoring {
            probes: Probes::default(),
            buffer: SampleBuffer::new(buffer_reach.as_millis() as u64),
            every,
            next: Instant::now() + every.unwrap_or_default(),
        }
    }

    /// When the next sample is due (None: never). A value, so a `select!` branch
    /// waiting on it holds no borrow.
    pub fn due(&self) -> Option<Instant> {
        self.every.map(|_| self.next)
    }

    /// Advance the schedule; a late sample (a busy host) delays the next rather than
    /// bunching samples.
    fn advance(&mut self) {
        let Some(every) = self.every else { return };
        self.next += every;
        let now = Instant::now();
        if self.next <= now {
            self.next = now + every;
        }
    }

    /// One interval's batch, for a connected group master: node metrics and what the
    /// probes found, kept in the buffer too.
    pub fn sample(&mut self, host: &dyn Host, batches: &mut BatchWriter) -> SampleBatch {
        let now = glory_protocol::now_ms();
        let mut batch = SampleBatch {
            at_ms: now,
            ..SampleBatch::default()
        };
        let mut texts = Vec::new();
        self.record(
            host,
            now,
            &mut |key, value| batches.add(&mut batch, key, value),
            &mut texts,
        );
        for (key, text) in texts {
            batches.add_text(&mut batch, &key, text);
        }
        batch
    }

    /// Sample into the buffer only, on schedule, until the caller stops polling: what
    /// the agent does between sessions (reconnecting, backing off, asking where its
    /// group is led). Never returns.
    pub async fn keep_sampling(&mut self, host: &dyn Host) {
        loop {
            sleep_until_due(self.due()).await;
            let now = glory_protocol::now_ms();
            // Probe texts (command output) are only for a live master.
            self.record(host, now, &mut |_, _| {}, &mut Vec::new());
        }
    }

    /// Run `work` while sampling into the buffer.
    pub async fn while_away<T>(
        &mut self,
        host: &dyn Host,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::select! {
            biased;
            out = work => out,
            _ = self.keep_sampling(host) => unreachable!("sampling never ends"),
        }
    }

    /// Take one sample: into the buffer and to `also` (the live batch).
    fn record(
        &mut self,
        host: &dyn Host,
        now: u64,
        also: &mut dyn FnMut(&SeriesKey, f64),
        texts: &mut Vec<(SeriesKey, String)>,
    ) {
        self.advance();
        let buffer = &mut self.buffer;
        buffer.start(now);
        {
            let mut add = |key: &SeriesKey, value: f64| {
                also(key, value);
                buffer.add(key, value);
            };
            host.sample(now, &mut add);
            if !self.probes.is_empty() {
                self.probes.run(host, now, &mut add, &mut |key, text| {
                    texts.push((key.clone(), text))
                });
            }
        }
        buffer.finish();
    }

    /// Send the next part of what the group master lacks (`pending`: after, before),
    /// clearing `pending` when all is sent.
    pub async fn backfill(
        &self,
        pending: &mut Pending,
        batches: &mut BatchWriter,
        send: &mut glory_protocol::transport::ControlSender,
    ) -> Result<(), glory_protocol::FrameError> {
        let Some((after, before)) = *pending else {
            return Ok(());
        };
        let mut last = after;
        let mut sent = 0;
        for (at_ms, samples) in self
            .buffer
            .between(after, before)
            .take(BACKFILL_PER_INTERVAL)
        {
            let batch = batches.batch(at_ms, samples);
            send.send(&AgentToGroup::Backfill(batch)).await?;
            last = Some(at_ms);
            sent += 1;
        }
        *pending = (sent == BACKFILL_PER_INTERVAL).then_some((last, before));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::SimHost;

    #[tokio::test(start_paused = true)]
    async fn samples_are_buffered_between_sessions_on_one_schedule() {
        let host = SimHost::new(1);
        let mut m = Monitoring::new(Some(Duration::from_secs(1)), Duration::from_secs(600));
        // Away for 5.5 s (reconnecting): five samples, one per second.
        let out = m
            .while_away(&host, async {
                tokio::time::sleep(Duration::from_millis(5_500)).await;
                7
            })
            .await;
        assert_eq!(out, 7);
        assert_eq!(m.buffer.len(), 5);
        // The schedule carries on: the next sample is due at 6 s, not 1 s after the
        // session starts.
        let next = m.due().expect("metrics are on");
        assert_eq!(next - Instant::now(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_without_metrics_samples_nothing() {
        let host = SimHost::new(1);
        let mut m = Monitoring::new(None, Duration::from_secs(600));
        m.while_away(&host, tokio::time::sleep(Duration::from_secs(10)))
            .await;
        assert!(m.buffer.is_empty());
        assert_eq!(m.due(), None);
    }
}
