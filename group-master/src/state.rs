//! The group master's in-memory state: members, liveness, sessions and what is waiting
//! to go up to the cluster master. Liveness lives here only; it is rebuilt within
//! seconds after a restart.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use glory_protocol::lean::LinkHandle;
use glory_protocol::monitoring::{AlertChange, MetricsAnswer};
use glory_protocol::{
    GroupReport, GroupToAgent, Inventory, Load, Member, NodeLoad, NodeState, ProcessReport,
    StateChange,
};
use tokio::sync::Notify;

use crate::detector::{DetectorConfig, FailureDetector, Transition};
use crate::monitoring::{Input, Monitoring};

pub(crate) struct Session {
    pub id: u64,
    /// The agent's link; waking it sends what is queued in `Inner::commands`.
    pub conn: LinkHandle,
    /// Serial of the certificate the agent connected with.
    pub serial: String,
}

/// A node's whole set of processes at the start of its agent's session.
pub(crate) struct ProcessSnapshot {
    pub node: String,
    pub processes: Vec<ProcessReport>,
    /// Where the agent connected from (the address others reach the node at).
    pub address: Option<IpAddr>,
}

pub(crate) struct Inner {
    pub detector: FailureDetector,
    /// node -> serial of its current certificate, as the cluster master told us.
    pub members: HashMap<String, String>,
    /// node -> serial of the certificate it held before its last renewal, accepted
    /// until it expires.
    pub previous: HashMap<String, String>,
    pub members_known: bool,
    pub revoked: HashSet<String>,
    pub sessions: HashMap<String, Session>,
    pub pending: Vec<StateChange>,
    pub loads: HashMap<String, Load>,
    pub inventories: Vec<(String, Inventory)>,
    /// Agents' process reports waiting to go up.
    pub processes: Vec<(String, ProcessReport)>,
    /// Messages for agents (process starts and stops), until their session sends them.
    pub commands: HashMap<String, Vec<GroupToAgent>>,
    /// Agents' whole process sets (session starts) waiting to go up.
    pub process_snapshots: Vec<ProcessSnapshot>,
    /// Agents' setup reports waiting to go up (the newest per node).
    pub setup_reports: HashMap<String, glory_protocol::setup::SetupReport>,
    /// Alert changes and history answers waiting to go up.
    pub alerts: Vec<AlertChange>,
    /// Every active alert, for a cluster master that just connected.
    pub alert_snapshot: Option<Vec<AlertChange>>,
    pub answers: Vec<MetricsAnswer>,
    /// Agents' certificate requests waiting to go up (the newest per node): the CSR
    /// and the serial the agent's session was opened with.
    pub renewals: HashMap<String, (String, String)>,
    next_session: u64,
}

/// What monitoring has to send up ([`Shared::take_monitoring`]).
pub(crate) struct MonitoringOut {
    pub snapshot: Option<Vec<AlertChange>>,
    pub alerts: Vec<AlertChange>,
    pub answers: Vec<MetricsAnswer>,
}

pub(crate) struct Shared {
    pub group: String,
    inner: Mutex<Inner>,
    /// Whether this group master leads its group (the cluster master decides).
    active: std::sync::atomic::AtomicBool,
    /// The group's masters, active first, as the cluster master last said; agent
    /// sessions follow changes and pass them on.
    masters: tokio::sync::watch::Sender<Vec<std::net::SocketAddr>>,
    /// Wakes the upstream task when state changes are pending.
    pub changed: Notify,
    /// The monitoring task, once started.
    monitoring: std::sync::OnceLock<Arc<Monitoring>>,
    /// The group's content proxy, once started.
    content: std::sync::OnceLock<Arc<crate::content::ContentProxy>>,
}

fn to_change(t: Transition) -> StateChange {
    StateChange {
        node: t.node,
        from: t.from,
        to: t.to,
        at_ms: glory_protocol::now_ms(),
        reason: t.reason.to_string(),
    }
}

impl Shared {
    pub fn new(group: String, detector: DetectorConfig, advertise: std::net::SocketAddr) -> Self {
        Shared {
            group,
            active: std::sync::atomic::AtomicBool::new(true),
            masters: tokio::sync::watch::Sender::new(vec![advertise]),
            inner: Mutex::new(Inner {
                detector: FailureDetector::new(detector),
                members: HashMap::new(),
                previous: HashMap::new(),
                members_known: false,
                revoked: HashSet::new(),
                sessions: HashMap::new(),
                pending: Vec::new(),
                loads: HashMap::new(),
                inventories: Vec::new(),
                processes: Vec::new(),
                process_snapshots: Vec::new(),
                setup_reports: HashMap::new(),
                commands: HashMap::new(),
                alerts: Vec::new(),
                alert_snapshot: None,
                answers: Vec::new(),
                renewals: HashMap::new(),
                next_session: 1,
            }),
            changed: Notify::new(),
            monitoring: std::sync::OnceLock::new(),
            content: std::sync::OnceLock::new(),
        }
    }

    /// Attach the content proxy (once).
    pub fn set_content(&self, proxy: Arc<crate::content::ContentProxy>) {
        let _ = self.content.set(proxy);
    }

    /// Packages sent to agents are fetched through the content proxy.
    pub fn through_proxy(&self, msg: &mut GroupToAgent) {
        if let (GroupToAgent::Software(specs), Some(proxy)) = (msg, self.content.get()) {
            proxy.rewrite(specs);
        }
    }

    /// An agent's setup report: sent up at once (a newer one replaces one not sent).
    pub fn setup_report(&self, node: &str, report: glory_protocol::setup::SetupReport) {
        self.lock().setup_reports.insert(node.to_string(), report);
        self.changed.notify_one();
    }

    /// A connected agent asks for its next certificate: passed up with the next batch.
    pub fn renewal(&self, node: &str, csr_pem: String, serial: String) {
        self.lock()
            .renewals
            .insert(node.to_string(), (csr_pem, serial));
        self.changed.notify_one();
    }

    pub fn take_renewals(&self) -> Vec<(String, (String, String))> {
        std::mem::take(&mut self.lock().renewals)
            .into_iter()
            .collect()
    }

    pub fn take_setup_reports(&self) -> Vec<(String, glory_protocol::setup::SetupReport)> {
        std::mem::take(&mut self.lock().setup_reports)
            .into_iter()
            .collect()
    }

    /// The lock is never held across an await; a poisoned lock (a panic while holding
    /// it) is recovered because every critical section leaves the data consistent.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, inner: &mut Inner, transitions: impl IntoIterator<Item = Transition>) {
        let before = inner.pending.len();
        inner.pending.extend(transitions.into_iter().map(to_change));
        if inner.pending.len() > before {
            for change in &inner.pending[before..] {
                if matches!(change.to, NodeState::Down | NodeState::Left) {
                    self.monitor(Input::Down(change.node.clone()));
                }
            }
            self.changed.notify_one();
        }
    }

    /// Attach the monitoring task (once).
    pub fn set_monitoring(&self, monitoring: Arc<Monitoring>) {
        let _ = self.monitoring.set(monitoring);
    }

    /// Hand `input` to the monitoring task, if there is one (never waits).
    pub fn monitor(&self, input: Input) {
        if let Some(m) = self.monitoring.get() {
            m.offer(input);
        }
    }

    /// Alert changes to send up.
    pub fn queue_alerts(&self, changes: Vec<AlertChange>) {
        if changes.is_empty() {
            return;
        }
        self.lock().alerts.extend(changes);
        self.changed.notify_one();
    }

    /// Every active alert, to send up before any later change.
    pub fn queue_alert_snapshot(&self, all: Vec<AlertChange>) {
        let mut inner = self.lock();
        inner.alerts.clear();
        inner.alert_snapshot = Some(all);
        drop(inner);
        self.changed.notify_one();
    }

    /// A history answer to send up.
    pub fn queue_answer(&self, answer: MetricsAnswer) {
        self.lock().answers.push(answer);
        self.changed.notify_one();
    }

    /// What monitoring has to send up: a snapshot of every active alert (after a
    /// reconnect), the changes since, and history answers.
    pub fn take_monitoring(&self) -> MonitoringOut {
        let mut inner = self.lock();
        MonitoringOut {
            snapshot: inner.alert_snapshot.take(),
            alerts: std::mem::take(&mut inner.alerts),
            answers: std::mem::take(&mut inner.answers),
        }
    }

    pub fn heartbeat(&self, node: &str, seq: u64, load: Load, now: Instant) {
        let mut inner = self.lock();
        let transition = inner.detector.heartbeat(node, seq, now);
        match inner.loads.get_mut(node) {
            Some(last) => *last = load,
            None => {
                inner.loads.insert(node.to_string(), load);
            }
        }
        self.push(&mut inner, transition);
    }

    /// The agent answered a probe.
    pub fn alive(&self, node: &str, now: Instant) {
        let mut inner = self.lock();
        let transition = inner.detector.heard(node, now, "answered a probe");
        self.push(&mut inner, transition);
    }

    pub fn left(&self, node: &str) {
        let mut inner = self.lock();
        let transition = inner.detector.left(node);
        self.push(&mut inner, transition);
    }

    pub fn tick(&self, now: Instant) {
        let mut inner = self.lock();
        let stalled_before = inner.detector.stalled();
        let transitions = inner.detector.tick(now);
        let stall = inner.detector.stalled() - stalled_before;
        if !stall.is_zero() {
            tracing::warn!(group = %self.group, stall_ms = stall.as_millis() as u64,
                "this group master did not run for a while (CPU starvation or a pause); the stall is not counted as node silence");
        }
        // A node just become suspect is asked whether it is alive, over the reliable
        // control stream: its answer makes it `up` again before it could be `down`.
        let probe: Vec<String> = transitions
            .iter()
            .filter(|t| t.to == NodeState::Suspect)
            .map(|t| t.node.clone())
            .collect();
        self.push(&mut inner, transitions);
        drop(inner);
        for node in probe {
            self.to_agent(&node, GroupToAgent::Probe);
        }
    }

    pub fn inventory(&self, node: &str, inventory: Inventory) {
        self.lock().inventories.push((node.to_string(), inventory));
    }

    /// Register a session, returning its id and the connection it replaces.
    pub fn open_session(
        &self,
        node: &str,
        serial: &str,
        conn: LinkHandle,
    ) -> (u64, Option<LinkHandle>) {
        let mut inner = self.lock();
        let id = inner.next_session;
        inner.next_session += 1;
        let old = inner.sessions.insert(
            node.to_string(),
            Session {
                id,
                conn,
                serial: serial.to_string(),
            },
        );
        (id, old.map(|s| s.conn))
    }

    pub fn close_session(&self, node: &str, id: u64) {
        let mut inner = self.lock();
        if inner.sessions.get(node).is_some_and(|s| s.id == id) {
            inner.sessions.remove(node);
            inner.commands.remove(node);
        }
    }

    /// An agent reported on a supervised process: send it up at once.
    pub fn process_report(&self, node: &str, report: ProcessReport) {
        self.lock().processes.push((node.to_string(), report));
        self.changed.notify_one();
    }

    /// An agent's whole set of processes (its session started), and the address it
    /// connected from.
    pub fn process_snapshot(&self, node: &str, all: Vec<ProcessReport>, address: Option<IpAddr>) {
        let mut inner = self.lock();
        // Reports queued before the snapshot are superseded by it.
        inner.processes.retain(|(n, _)| n != node);
        inner.process_snapshots.push(ProcessSnapshot {
            node: node.to_string(),
            processes: all,
            address,
        });
        drop(inner);
        self.changed.notify_one();
    }

    /// Take the pending process snapshots and reports (snapshots first).
    pub fn take_process_reports(&self) -> (Vec<ProcessSnapshot>, Vec<(String, ProcessReport)>) {
        let mut inner = self.lock();
        (
            std::mem::take(&mut inner.process_snapshots),
            std::mem::take(&mut inner.processes),
        )
    }

    /// Most messages queued for one agent; older ones are dropped beyond it (the
    /// cluster master repeats what it still wants).
    const MAX_QUEUED: usize = 16;

    /// Pass a message to a connected agent; false if it is not connected.
    pub fn to_agent(&self, node: &str, msg: GroupToAgent) -> bool {
        let mut inner = self.lock();
        let Some(link) = inner.sessions.get(node).map(|s| s.conn.clone()) else {
            return false;
        };
        let queue = inner.commands.entry(node.to_string()).or_default();
        if queue.len() >= Self::MAX_QUEUED {
            queue.remove(0);
        }
        queue.push(msg);
        drop(inner);
        link.wake();
        true
    }

    /// The nodes whose agents are connected now.
    pub fn connected_nodes(&self) -> Vec<String> {
        self.lock().sessions.keys().cloned().collect()
    }

    /// Messages queued for `node`'s agent.
    pub fn take_commands(&self, node: &str) -> Vec<GroupToAgent> {
        self.lock().commands.remove(node).unwrap_or_default()
    }

    /// Take the pending state changes.
    pub fn take_changes(&self) -> Vec<StateChange> {
        std::mem::take(&mut self.lock().pending)
    }

    pub fn report(&self) -> GroupReport {
        let mut inner = self.lock();
        let (received, lost) = inner.detector.heartbeat_stats();
        let loads = inner
            .loads
            .drain()
            .map(|(node, load)| NodeLoad { node, load })
            .collect();
        GroupReport {
            group: self.group.clone(),
            counts: inner.detector.counts(),
            heartbeats_received: received,
            heartbeats_lost: lost,
            loads,
            inventories: std::mem::take(&mut inner.inventories),
            samples_ingested: self
                .monitoring
                .get()
                .map_or(0, |m| m.ingested.load(std::sync::atomic::Ordering::Relaxed)),
            samples_dropped: self
                .monitoring
                .get()
                .map_or(0, |m| m.dropped.load(std::sync::atomic::Ordering::Relaxed)),
            stats_store_bytes: self.monitoring.get().map_or(0, |m| {
                m.store_bytes.load(std::sync::atomic::Ordering::Relaxed)
            }),
        }
    }

    /// The cluster master's member list arrived (after (re)connecting): adopt it and
    /// return the changes that bring the cluster's record in line with what we saw.
    /// Nodes no longer listed are dropped and their sessions closed.
    pub fn sync_members(
        &self,
        members: Vec<Member>,
        revoked: Vec<String>,
        now: Instant,
    ) -> Vec<LinkHandle> {
        let mut inner = self.lock();
        inner.pending.clear();
        let listed: HashSet<String> = members.iter().map(|m| m.node.clone()).collect();
        let revoked: HashSet<String> = revoked.into_iter().collect();
        // Connected agents whose certificate was revoked meanwhile are removed nodes.
        let removed: Vec<String> = inner
            .sessions
            .iter()
            .filter(|(_, s)| revoked.contains(&s.serial))
            .map(|(n, _)| n.clone())
            .collect();
        let mut closing = Vec::new();
        for node in removed {
            inner.detector.forget(&node);
            if let Some(session) = inner.sessions.remove(&node) {
                closing.push(session.conn);
            }
        }
        // Unlisted nodes we only remember are dropped; unlisted nodes that are connected
        // (their certificate proved their group) enrolled after the list was made.
        let stale: Vec<String> = inner
            .detector
            .states()
            .map(|(n, _)| n.to_string())
            .filter(|n| !listed.contains(n) && !inner.sessions.contains_key(n))
            .collect();
        for node in stale {
            inner.detector.forget(&node);
        }
        inner.members.clear();
        inner.previous.clear();
        let mut diffs = Vec::new();
        for member in members {
            inner.detector.track(&member.node, member.state, now);
            if let Some(seen) = inner.detector.state(&member.node) {
                if seen != member.state {
                    diffs.push(Transition {
                        node: member.node.clone(),
                        from: member.state,
                        to: seen,
                        reason: "group master resync",
                    });
                }
            }
            if let Some(previous) = member.previous_serial {
                inner.previous.insert(member.node.clone(), previous);
            }
            inner.members.insert(member.node, member.serial);
        }
        inner.members_known = true;
        inner.revoked = revoked;
        self.push(&mut inner, diffs);
        closing
    }

    pub fn member_added(&self, member: Member, now: Instant) {
        let mut inner = self.lock();
        inner.detector.track(&member.node, member.state, now);
        inner.revoked.remove(&member.serial);
        match member.previous_serial {
            Some(previous) => inner.previous.insert(member.node.clone(), previous),
            None => inner.previous.remove(&member.node),
        };
        inner.members.insert(member.node, member.serial);
    }

    /// Forget a removed node; returns its live connection, to be closed.
    pub fn member_removed(&self, node: &str, serial: String) -> Option<LinkHandle> {
        let mut inner = self.lock();
        inner.members.remove(node);
        if let Some(previous) = inner.previous.remove(node) {
            inner.revoked.insert(previous);
        }
        inner.revoked.insert(serial);
        inner.detector.forget(node);
        inner.loads.remove(node);
        inner.sessions.remove(node).map(|s| s.conn)
    }

    pub fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn masters(&self) -> Vec<std::net::SocketAddr> {
        self.masters.borrow().clone()
    }

    /// Follow changes of the masters list.
    pub fn watch_masters(&self) -> tokio::sync::watch::Receiver<Vec<std::net::SocketAddr>> {
        self.masters.subscribe()
    }

    /// The cluster master said whether we lead. A master sent back to standby closes
    /// its agent sessions so their agents go to the active one.
    pub fn set_role(&self, active: bool, masters: Vec<std::net::SocketAddr>) -> Vec<LinkHandle> {
        if !masters.is_empty() {
            self.masters.send_if_modified(|current| {
                let changed = *current != masters;
                *current = masters;
                changed
            });
        }
        let was = self
            .active
            .swap(active, std::sync::atomic::Ordering::Relaxed);
        if was && !active {
            let mut inner = self.lock();
            // A standby judges nobody: what this detector knows goes stale as the
            // agents leave, and would wrongly condemn them if this master led again
            // (then it tracks them afresh, with the rejoin grace). Judgements not yet
            // sent are the active master's business now.
            inner.detector.forget_all();
            inner.pending.clear();
            return inner.sessions.drain().map(|(_, s)| s.conn).collect();
        }
        Vec::new()
    }
}
