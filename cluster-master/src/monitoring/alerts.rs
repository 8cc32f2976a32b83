//! Alerts as the group masters report them, kept in the active cluster master's memory
//! (a new one learns them from each group master's snapshot), with acknowledgements
//! and silences. Firing and resolution are events on the cluster's stream.

use std::collections::{HashMap, VecDeque};

use glory_keymaster::schema::{self, SilenceMatchers, SilenceRecord, RECORD_VERSION};
use glory_keymaster::{Txn, TxnOp};
use glory_protocol::monitoring::{AlertChange, AlertKey, AlertState};

use crate::cluster::Cluster;
use crate::events::{AlertEvent, EventData};
use crate::pools::{OpError, OpResultT};

/// Resolved alerts kept for the API.
const RESOLVED_KEPT: usize = 1000;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Alert {
    pub id: String,
    pub key: AlertKey,
    pub group: String,
    pub state: AlertState,
    pub value: f64,
    pub since_ms: u64,
    pub acked: bool,
    /// What else the node said (a check's output).
    pub detail: Option<String>,
}

/// A stable id per alert key: the same alert firing again has the same id.
fn alert_id(key: &AlertKey) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes().chain([0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&key.monitor);
    eat(key.node.as_deref().unwrap_or(""));
    for (n, v) in &key.labels {
        eat(n);
        eat(v);
    }
    eat(key.level.as_str());
    format!("a-{h:016x}")
}

#[derive(Default)]
pub(crate) struct AlertBook {
    active: HashMap<String, Alert>,
    resolved: VecDeque<Alert>,
}

impl AlertBook {
    /// Apply `group`'s changes; returns the alerts that fired or resolved (for events).
    pub fn apply(&mut self, group: &str, changes: Vec<AlertChange>) -> Vec<Alert> {
        let mut out = Vec::new();
        for c in changes {
            let id = alert_id(&c.key);
            match c.state {
                AlertState::Resolved => {
                    if let Some(mut alert) = self.active.remove(&id) {
                        let fired = alert.state == AlertState::Firing;
                        alert.state = AlertState::Resolved;
                        alert.since_ms = c.since_ms;
                        if c.value.is_finite() {
                            alert.value = c.value;
                        }
                        if c.detail.is_some() {
                            alert.detail = c.detail;
                        }
                        if self.resolved.len() == RESOLVED_KEPT {
                            self.resolved.pop_back();
                        }
                        self.resolved.push_front(alert.clone());
                        if fired {
                            out.push(alert);
                        }
                    }
                }
                state => {
                    let was = self.active.get(&id).map(|a| a.state);
                    let alert = Alert {
                        id: id.clone(),
                        key: c.key,
                        group: group.to_string(),
                        state,
                        value: c.value,
                        since_ms: c.since_ms,
                        acked: self.active.get(&id).is_some_and(|a| a.acked),
                        detail: c.detail,
                    };
                    self.active.insert(id, alert.clone());
                    if state == AlertState::Firing && was != Some(AlertState::Firing) {
                        out.push(alert);
                    }
                }
            }
        }
        out
    }

    /// `group`'s master says these are all its active alerts: the group's others are
    /// resolved.
    pub fn snapshot(&mut self, group: &str, all: Vec<AlertChange>, now_ms: u64) -> Vec<Alert> {
        let listed: std::collections::HashSet<String> =
            all.iter().map(|c| alert_id(&c.key)).collect();
        let gone: Vec<AlertChange> = self
            .active
            .values()
            .filter(|a| a.group == group && !listed.contains(&a.id))
            .map(|a| AlertChange {
                key: a.key.clone(),
                state: AlertState::Resolved,
                value: f64::NAN,
                since_ms: now_ms,
                detail: None,
            })
            .collect();
        let mut out = self.apply(group, gone);
        out.extend(self.apply(group, all));
        out
    }

    pub fn ack(&mut self, id: &str) -> Option<Alert> {
        let alert = self.active.get_mut(id)?;
        alert.acked = true;
        Some(alert.clone())
    }

    /// Active alerts (most severe, then oldest first), then resolved ones (newest
    /// first).
    pub fn list(&self) -> Vec<Alert> {
        let mut active: Vec<Alert> = self.active.values().cloned().collect();
        active.sort_by(|a, b| {
            b.key
                .level
                .cmp(&a.key.level)
                .then(a.since_ms.cmp(&b.since_ms))
                .then(a.id.cmp(&b.id))
        });
        active.extend(self.resolved.iter().cloned());
        active
    }

    pub fn count_firing(&self) -> usize {
        self.active
            .values()
            .filter(|a| a.state == AlertState::Firing)
            .count()
    }
}

/// Whether `silence` (in force at `now_ms`) matches the alert described by `event`.
pub(crate) fn silences(silence: &SilenceRecord, event: &AlertEvent, now_ms: u64) -> bool {
    let m = &silence.matchers;
    now_ms < silence.ends_at_ms
        && m.monitor.as_ref().is_none_or(|x| *x == event.monitor)
        && m.node
            .as_ref()
            .is_none_or(|x| Some(x.as_str()) == event.node.as_deref())
        && m.group.as_ref().is_none_or(|x| *x == event.group)
        && m.level.as_ref().is_none_or(|x| *x == event.level)
}

impl Alert {
    /// What events and silences see of the alert.
    pub(crate) fn event(&self) -> AlertEvent {
        AlertEvent {
            id: self.id.clone(),
            monitor: self.key.monitor.clone(),
            node: self.key.node.clone(),
            group: self.group.clone(),
            level: self.key.level.as_str().to_string(),
            value: self.value,
            detail: self.detail.clone(),
        }
    }
}

fn event(alert: &Alert) -> EventData {
    let fields = alert.event();
    match alert.state {
        AlertState::Resolved => EventData::AlertResolved(fields),
        _ => EventData::AlertFiring(fields),
    }
}

impl Cluster {
    /// Alert changes from `group`'s master.
    pub(crate) fn alerts_changed(&self, group: &str, changes: Vec<AlertChange>) {
        let changed = self.monitoring.alerts().apply(group, changes);
        self.announce_alerts(changed);
    }

    /// Every active alert of `group`, from its master after it (re)connected.
    pub(crate) fn alert_snapshot(&self, group: &str, all: Vec<AlertChange>) {
        let changed = self
            .monitoring
            .alerts()
            .snapshot(group, all, glory_protocol::now_ms());
        self.announce_alerts(changed);
    }

    fn announce_alerts(&self, changed: Vec<Alert>) {
        for alert in changed {
            tracing::info!(alert = %alert.id, monitor = %alert.key.monitor, node = ?alert.key.node,
                level = alert.key.level.as_str(), value = alert.value, "alert {}", alert.state.as_str());
            self.events.emit(None, event(&alert));
        }
    }

    /// Whether a silence in force matches the alert `event` describes.
    pub(crate) fn is_silenced(&self, event: &AlertEvent, now_ms: u64) -> bool {
        self.monitoring
            .silences()
            .values()
            .any(|s| silences(s, event, now_ms))
    }

    pub(crate) async fn add_silence(
        &self,
        matchers: SilenceMatchers,
        ends_at_ms: u64,
        comment: String,
    ) -> OpResultT<SilenceRecord> {
        let now = glory_protocol::now_ms();
        if ends_at_ms <= now {
            return Err(OpError::Unprocessable(
                "ends_at: must be in the future".into(),
            ));
        }
        if matchers == SilenceMatchers::default() {
            return Err(OpError::Unprocessable(
                "matchers: at least one of monitor, node, group, level".into(),
            ));
        }
        if let Some(level) = &matchers.level {
            if !["info", "warning", "critical"].contains(&level.as_str()) {
                return Err(OpError::Invalid(format!(
                    "matchers.level: {level:?} is not a level (info, warning, critical)"
                )));
            }
        }
        if comment.len() > 1024 {
            return Err(OpError::Invalid("comment: at most 1024 characters".into()));
        }
        let record = SilenceRecord {
            v: RECORD_VERSION,
            id: format!("s-{:016x}", rand::random::<u64>()),
            matchers,
            ends_at_ms,
            comment,
            created_ms: now,
        };
        let _serial = self.monitoring.write.lock().await;
        self.km_txn(Txn {
            success: vec![TxnOp::put(
                schema::silence_key(&record.id),
                schema::encode(&record),
            )],
            ..Default::default()
        })
        .await?;
        self.monitoring
            .silences_mut()
            .insert(record.id.clone(), record.clone());
        Ok(record)
    }

    pub(crate) async fn delete_silence(&self, id: &str) -> OpResultT<()> {
        let _serial = self.monitoring.write.lock().await;
        if !self.monitoring.silences().contains_key(id) {
            return Err(OpError::NotFound(format!("silence {id} does not exist")));
        }
        self.km_txn(Txn {
            success: vec![TxnOp::delete(schema::silence_key(id))],
            ..Default::default()
        })
        .await?;
        self.monitoring.silences_mut().remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_protocol::monitoring::Level;

    fn change(node: &str, level: Level, state: AlertState, at: u64) -> AlertChange {
        AlertChange {
            key: AlertKey {
                monitor: "cpu".into(),
                node: Some(node.into()),
                labels: vec![],
                level,
            },
            state,
            value: 95.0,
            since_ms: at,
            detail: None,
        }
    }

    #[test]
    fn firing_and_resolution_are_announced_once_and_acks_stick_while_active() {
        let mut book = AlertBook::default();
        let pending = book.apply(
            "g00",
            vec![change("n1", Level::Warning, AlertState::Pending, 1)],
        );
        assert!(pending.is_empty(), "pending is not announced");
        let fired = book.apply(
            "g00",
            vec![change("n1", Level::Warning, AlertState::Firing, 2)],
        );
        assert_eq!(fired.len(), 1);
        let id = fired[0].id.clone();
        assert!(book.ack(&id).unwrap().acked);
        // A repeat changes nothing and announces nothing.
        assert!(book
            .apply(
                "g00",
                vec![change("n1", Level::Warning, AlertState::Firing, 2)]
            )
            .is_empty());
        assert!(book.list()[0].acked);
        let resolved = book.apply(
            "g00",
            vec![change("n1", Level::Warning, AlertState::Resolved, 3)],
        );
        assert_eq!(resolved[0].state, AlertState::Resolved);
        assert_eq!(book.count_firing(), 0);
        assert_eq!(book.list().len(), 1, "kept as resolved");
        assert!(
            book.ack(&id).is_none(),
            "only active alerts are acknowledged"
        );
    }

    #[test]
    fn a_snapshot_resolves_what_the_group_no_longer_has() {
        let mut book = AlertBook::default();
        book.apply(
            "g00",
            vec![change("n1", Level::Warning, AlertState::Firing, 1)],
        );
        book.apply(
            "g01",
            vec![change("n9", Level::Warning, AlertState::Firing, 1)],
        );
        let out = book.snapshot(
            "g00",
            vec![change("n2", Level::Critical, AlertState::Firing, 5)],
            6,
        );
        let states: Vec<(Option<&str>, AlertState)> = out
            .iter()
            .map(|a| (a.key.node.as_deref(), a.state))
            .collect();
        assert_eq!(
            states,
            vec![
                (Some("n1"), AlertState::Resolved),
                (Some("n2"), AlertState::Firing)
            ]
        );
        assert_eq!(book.count_firing(), 2, "g01's alert is untouched");
    }

    #[test]
    fn silences_match_on_every_given_field_until_they_end() {
        let alert = AlertBook::default()
            .apply(
                "g00",
                vec![change("n1", Level::Critical, AlertState::Firing, 1)],
            )
            .remove(0);
        let silence = |m: SilenceMatchers, ends| SilenceRecord {
            v: 1,
            id: "s".into(),
            matchers: m,
            ends_at_ms: ends,
            comment: String::new(),
            created_ms: 0,
        };
        let by_node = SilenceMatchers {
            node: Some("n1".into()),
            ..Default::default()
        };
        let alert = alert.event();
        assert!(silences(&silence(by_node.clone(), 10), &alert, 5));
        assert!(!silences(&silence(by_node, 10), &alert, 10), "ended");
        let other_level = SilenceMatchers {
            node: Some("n1".into()),
            level: Some("warning".into()),
            ..Default::default()
        };
        assert!(!silences(&silence(other_level, 10), &alert, 5));
    }
}
