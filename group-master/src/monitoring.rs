//! The group's monitoring, on its own task: agents' sample batches go into the
//! statistics store and through the monitors' rules; alert changes and query answers go
//! up to the cluster master. Samples stay here: only changes travel up.
//!
//! The agent sessions' callbacks run on the endpoint's driver and must never wait, so
//! they hand batches over a bounded channel ([`Monitoring::offer`]); when the task falls
//! behind, batches are dropped and counted rather than queued without end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glory_monitor::batch::BatchReader;
use glory_monitor::evaluate::Evaluator;
use glory_monitor::store::{Retention, Store};
use glory_protocol::monitoring::{
    AlertChange, AlertKey, AlertState, MetricsAnswer, MetricsQuery, MonitorSpec, ProbeSpec,
    SampleBatch, SeriesKey,
};
use glory_protocol::GroupToAgent;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::state::Shared;

/// What the task is handed.
pub(crate) enum Input {
    Batch {
        node: String,
        session: u64,
        batch: SampleBatch,
        /// False for a backfill of older samples: stored, not evaluated.
        live: bool,
    },
    /// A node's agent connected: tell it what the store holds and which probes to run.
    Opened {
        node: String,
    },
    /// The node went down or left: its alerts are inhibited.
    Down(String),
    Monitors(Vec<MonitorSpec>),
    Query(MetricsQuery),
    /// A cluster master (re)connected: send it every active alert.
    Resync,
}

/// Batches the task may fall behind by before new ones are dropped.
const QUEUE: usize = 4096;
/// Group rules are evaluated, and the store committed, this often.
const TICK: Duration = Duration::from_secs(1);

/// The sessions' and the upstream link's side of the task.
pub(crate) struct Monitoring {
    tx: mpsc::Sender<Input>,
    pub dropped: AtomicU64,
    pub ingested: Arc<AtomicU64>,
    /// What the statistics store holds, in bytes (updated every [`SIZE_EVERY`] ticks).
    pub store_bytes: Arc<AtomicU64>,
}

/// The store's size is read this many ticks apart.
const SIZE_EVERY: u64 = 5;

impl Monitoring {
    /// Start the task; its store is at `path` (None: in memory).
    pub fn start(
        shared: Arc<Shared>,
        path: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Arc<Monitoring>, tokio::task::JoinHandle<()>)> {
        let store = match &path {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Store::open(path, Retention::default())?
            }
            None => Store::in_memory(Retention::default())?,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let ingested = Arc::new(AtomicU64::new(0));
        let store_bytes = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            store,
            rx,
            shared,
            shutdown,
            ingested.clone(),
            store_bytes.clone(),
        ));
        Ok((
            Arc::new(Monitoring {
                tx,
                dropped: AtomicU64::new(0),
                ingested,
                store_bytes,
            }),
            task,
        ))
    }

    /// Hand `input` to the task without waiting; dropped (and counted) when it is
    /// behind.
    pub fn offer(&self, input: Input) {
        if self.tx.try_send(input).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_multiple_of(1000) {
                warn!(dropped, "monitoring is behind; sample batches dropped");
            }
        }
    }
}

struct Task {
    store: Store,
    evaluator: Evaluator,
    /// Per node: its session, and what the session's series numbers are in the store.
    readers: HashMap<String, (u64, BatchReader<u32>)>,
    /// Alerts pending or firing now, as last reported.
    active: HashMap<AlertKey, AlertChange>,
    /// The monitors with a probe (process, check), to hand to agents.
    probing: Vec<MonitorSpec>,
    /// The probes each agent was last sent.
    probes_sent: HashMap<String, Vec<ProbeSpec>>,
    /// The last text (a check's output) per node and monitor.
    texts: HashMap<(String, String), String>,
    shared: Arc<Shared>,
    ingested: Arc<AtomicU64>,
    store_bytes: Arc<AtomicU64>,
    ticks: u64,
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Input>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    ingested: Arc<AtomicU64>,
    store_bytes: Arc<AtomicU64>,
) {
    let mut task = Task {
        store,
        evaluator: Evaluator::default(),
        readers: HashMap::new(),
        active: HashMap::new(),
        probing: Vec::new(),
        probes_sent: HashMap::new(),
        texts: HashMap::new(),
        shared,
        ingested,
        store_bytes,
        ticks: 0,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            input = rx.recv() => match input {
                Some(input) => task.handle(input),
                None => break,
            },
            _ = tick.tick() => task.tick(),
        }
    }
    task.tick();
}

impl Task {
    fn handle(&mut self, input: Input) {
        let now = glory_protocol::now_ms();
        match input {
            Input::Batch {
                node,
                session,
                batch,
                live,
            } => {
                let reader = match self.readers.get_mut(&node) {
                    Some((s, reader)) if *s == session => reader,
                    _ => {
                        self.readers
                            .insert(node.clone(), (session, BatchReader::default()));
                        &mut self.readers.get_mut(&node).expect("inserted").1
                    }
                };
                let store = &mut self.store;
                let samples = match reader.read(&batch, |key| store.series_id(key)) {
                    Ok(samples) => samples,
                    Err(e) => {
                        debug!(node_id = %node, error = %e, "sample batch dropped");
                        return;
                    }
                };
                // Stored at the agent's time; rules run on ours (clocks drift).
                if let Err(e) = self.store.ingest(&node, batch.at_ms, &samples) {
                    warn!(node_id = %node, error = %e, "cannot store samples");
                }
                self.ingested
                    .fetch_add(samples.len() as u64, Ordering::Relaxed);
                for (id, text) in &batch.texts {
                    let monitor = reader
                        .get(*id)
                        .and_then(|sid| self.store.key(sid))
                        .and_then(|key| key.get("monitor"));
                    if let Some(monitor) = monitor {
                        self.texts
                            .insert((node.clone(), monitor.to_string()), text.clone());
                    }
                }
                if live && !self.evaluator.monitors().is_empty() {
                    let keyed: Vec<(&SeriesKey, f64)> = samples
                        .iter()
                        .filter(|(_, v)| v.is_finite())
                        .filter_map(|(id, v)| Some((self.store.key(*id)?, *v)))
                        .collect();
                    let changes = self.evaluator.samples(&node, &keyed, now);
                    self.publish(changes);
                }
            }
            Input::Down(node) => {
                self.readers.remove(&node);
                let changes = self.evaluator.node_down(&node, now);
                self.publish(changes);
            }
            Input::Monitors(monitors) => {
                self.probing = monitors
                    .iter()
                    .filter(|m| m.probe.is_some())
                    .cloned()
                    .collect();
                let changes = self.evaluator.set_monitors(monitors, now);
                self.publish(changes);
                self.send_probes(None);
            }
            Input::Opened { node } => {
                self.probes_sent.remove(&node);
                let through_ms = match self.store.latest(&node) {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(node_id = %node, error = %e, "cannot read the statistics store");
                        None
                    }
                };
                self.shared
                    .to_agent(&node, GroupToAgent::SamplesHeld { through_ms });
                self.send_probes(Some(node));
            }
            Input::Query(query) => {
                let answer = self.answer(&query, now);
                self.shared.queue_answer(answer);
            }
            Input::Resync => {
                let all: Vec<AlertChange> = self.active.values().cloned().collect();
                self.shared.queue_alert_snapshot(all);
            }
        }
    }

    fn answer(&self, q: &MetricsQuery, now: u64) -> MetricsAnswer {
        let result = match &q.node {
            Some(node) => self.store.query(
                node,
                &q.series,
                q.from_ms,
                q.to_ms,
                q.step_seconds.saturating_mul(1000),
                now,
            ),
            None => self.store.query_all(
                &q.series,
                q.from_ms,
                q.to_ms,
                q.step_seconds.saturating_mul(1000),
                now,
            ),
        };
        match result {
            Ok((step, points)) => MetricsAnswer {
                id: q.id,
                step_seconds: step / 1000,
                points,
                error: None,
            },
            Err(e) => MetricsAnswer {
                id: q.id,
                step_seconds: q.step_seconds,
                points: Vec::new(),
                error: Some(e.to_string()),
            },
        }
    }

    /// The probes `node` runs: those of the monitors with a probe whose scope holds it.
    fn probes_for(&self, node: &str) -> Vec<ProbeSpec> {
        self.probing
            .iter()
            .filter(|m| m.nodes.as_ref().is_none_or(|n| n.iter().any(|n| n == node)))
            .filter_map(|m| {
                Some(ProbeSpec {
                    monitor: m.name.clone(),
                    interval_seconds: m.interval_seconds,
                    probe: m.probe.clone()?,
                })
            })
            .collect()
    }

    /// Send each connected agent (or only `only`) its probes when they changed.
    fn send_probes(&mut self, only: Option<String>) {
        let nodes: Vec<String> = match only {
            Some(node) => vec![node],
            None if self.probing.is_empty() && self.probes_sent.is_empty() => return,
            None => self.shared.connected_nodes(),
        };
        for node in nodes {
            let probes = self.probes_for(&node);
            let before = self.probes_sent.get(&node);
            if before.map_or(probes.is_empty(), |b| *b == probes) {
                continue;
            }
            if self
                .shared
                .to_agent(&node, GroupToAgent::Probes(probes.clone()))
            {
                if probes.is_empty() {
                    self.probes_sent.remove(&node);
                } else {
                    self.probes_sent.insert(node, probes);
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = glory_protocol::now_ms();
        let changes = self.evaluator.group_rules(now);
        self.publish(changes);
        if let Err(e) = self.store.commit(now) {
            warn!(error = %e, "cannot write the statistics store");
        }
        if self.ticks.is_multiple_of(SIZE_EVERY) {
            if let Ok(bytes) = self.store.size_bytes() {
                self.store_bytes.store(bytes, Ordering::Relaxed);
            }
        }
        self.ticks += 1;
    }

    fn publish(&mut self, changes: Vec<AlertChange>) {
        if changes.is_empty() {
            return;
        }
        let mut changes = changes;
        for c in &mut changes {
            if let Some(node) = &c.key.node {
                c.detail = self
                    .texts
                    .get(&(node.clone(), c.key.monitor.clone()))
                    .cloned();
            }
        }
        for c in &changes {
            match c.state {
                AlertState::Resolved => {
                    self.active.remove(&c.key);
                }
                _ => {
                    self.active.insert(c.key.clone(), c.clone());
                }
            }
        }
        self.shared.queue_alerts(changes);
    }
}
