//! A group master's alerting: every monitor's rules over the latest samples of the
//! group's nodes, per node and series, and group rules over aggregates. Plain data, time
//! passed in; the group master feeds it samples and node states and sends up what it
//! returns.

use std::collections::HashMap;

use glory_protocol::monitoring::{AlertChange, AlertKey, AlertState, MonitorSpec, SeriesKey};

use crate::rules::{aggregate, step, Tracked, Transition};

#[derive(Default)]
pub struct Evaluator {
    monitors: Vec<MonitorSpec>,
    tracked: HashMap<AlertKey, Tracked>,
    /// The latest value of each series of each node, for group rules.
    latest: HashMap<String, HashMap<SeriesKey, f64>>,
}

fn change(key: AlertKey, t: Transition) -> AlertChange {
    AlertChange {
        key,
        state: t.state,
        value: t.value,
        since_ms: t.at_ms,
        detail: None,
    }
}

/// Labels that split an item into parts of a whole: a monitor watches those series
/// only when it names the label (`core=*` for every core), so `cpu.percent` alone
/// means the total.
const PART_LABELS: &[&str] = &["core"];

/// Whether `series` is one `monitor` looks at: every label the monitor names has that
/// value (`*`: any value), and a part label it does not name is absent.
pub fn watches(monitor: &MonitorSpec, series: &SeriesKey) -> bool {
    series.item == monitor.item
        && monitor.labels.iter().all(|(n, v)| match series.get(n) {
            Some(have) => v == "*" || have == v,
            None => false,
        })
        && PART_LABELS
            .iter()
            .all(|p| monitor.labels.contains_key(*p) || series.get(p).is_none())
}

fn in_scope(monitor: &MonitorSpec, node: &str) -> bool {
    monitor
        .nodes
        .as_ref()
        .is_none_or(|nodes| nodes.iter().any(|n| n == node))
}

impl Evaluator {
    /// The monitors now in force. Alerts of monitors that went away (or whose rules
    /// changed) are resolved.
    pub fn set_monitors(&mut self, monitors: Vec<MonitorSpec>, now_ms: u64) -> Vec<AlertChange> {
        let kept: HashMap<&str, &MonitorSpec> =
            monitors.iter().map(|m| (m.name.as_str(), m)).collect();
        let old: HashMap<String, MonitorSpec> = self
            .monitors
            .drain(..)
            .map(|m| (m.name.clone(), m))
            .collect();
        let mut out = Vec::new();
        self.tracked.retain(|key, tracked| {
            let same = kept.get(key.monitor.as_str()).is_some_and(|m| {
                old.get(&key.monitor) == Some(*m)
                    && key.node.as_deref().is_none_or(|n| in_scope(m, n))
            });
            if !same && *tracked != Tracked::Quiet {
                out.push(AlertChange {
                    key: key.clone(),
                    state: AlertState::Resolved,
                    value: f64::NAN,
                    since_ms: now_ms,
                    detail: None,
                });
            }
            same
        });
        self.monitors = monitors;
        out
    }

    pub fn monitors(&self) -> &[MonitorSpec] {
        &self.monitors
    }

    /// A node's samples at `now_ms`: its per-node rules move on.
    pub fn samples(
        &mut self,
        node: &str,
        samples: &[(&SeriesKey, f64)],
        now_ms: u64,
    ) -> Vec<AlertChange> {
        let mut out = Vec::new();
        // Latest values are kept only for what group rules aggregate.
        let aggregated: Vec<&MonitorSpec> = self
            .monitors
            .iter()
            .filter(|m| m.rules.iter().any(|r| r.aggregate.is_some()))
            .collect();
        if !aggregated.is_empty() {
            let latest = self.latest.entry(node.to_string()).or_default();
            for (series, value) in samples {
                if aggregated.iter().any(|m| watches(m, series)) {
                    latest.insert((*series).clone(), *value);
                }
            }
        }
        for monitor in &self.monitors {
            if !in_scope(monitor, node) {
                continue;
            }
            for (series, value) in samples.iter().filter(|(s, _)| watches(monitor, s)) {
                for rule in monitor.rules.iter().filter(|r| r.aggregate.is_none()) {
                    let key = AlertKey {
                        monitor: monitor.name.clone(),
                        node: Some(node.to_string()),
                        labels: series.labels.clone(),
                        level: rule.level,
                    };
                    // Quiet alerts are not kept: most series never breach.
                    let mut tracked = self.tracked.get(&key).copied().unwrap_or_default();
                    let transition = step(rule, &mut tracked, *value, now_ms, false);
                    if tracked == Tracked::Quiet {
                        self.tracked.remove(&key);
                    } else {
                        self.tracked.insert(key.clone(), tracked);
                    }
                    if let Some(t) = transition {
                        out.push(change(key, t));
                    }
                }
            }
        }
        out
    }

    /// The node is down (or gone): its alerts are inhibited (resolved) and its values
    /// leave the group aggregates.
    pub fn node_down(&mut self, node: &str, now_ms: u64) -> Vec<AlertChange> {
        self.latest.remove(node);
        let mut out = Vec::new();
        for (key, tracked) in self.tracked.iter_mut() {
            if key.node.as_deref() != Some(node) {
                continue;
            }
            let rule_nan = glory_protocol::monitoring::Rule {
                threshold: 0.0,
                level: key.level,
                op: Default::default(),
                for_seconds: 0,
                recover_threshold: None,
                keep_firing_seconds: 0,
                aggregate: None,
            };
            if let Some(t) = step(&rule_nan, tracked, f64::NAN, now_ms, true) {
                out.push(change(key.clone(), t));
            }
        }
        self.tracked.retain(|_, t| *t != Tracked::Quiet);
        out
    }

    /// Group rules over the latest values of the group's nodes in scope.
    pub fn group_rules(&mut self, now_ms: u64) -> Vec<AlertChange> {
        let mut out = Vec::new();
        for monitor in &self.monitors {
            for rule in &monitor.rules {
                let Some(agg) = rule.aggregate else { continue };
                let values: Vec<f64> = self
                    .latest
                    .iter()
                    .filter(|(node, _)| in_scope(monitor, node))
                    .flat_map(|(_, series)| {
                        series
                            .iter()
                            .filter(|(s, _)| watches(monitor, s))
                            .map(|(_, v)| *v)
                    })
                    .collect();
                let Some(value) = aggregate(agg, &values) else {
                    continue;
                };
                let key = AlertKey {
                    monitor: monitor.name.clone(),
                    node: None,
                    labels: Vec::new(),
                    level: rule.level,
                };
                let tracked = self.tracked.entry(key.clone()).or_default();
                if let Some(t) = step(rule, tracked, value, now_ms, false) {
                    out.push(change(key, t));
                }
            }
        }
        out
    }

    /// Every alert that is pending or firing now.
    #[cfg(test)]
    fn active(&self) -> Vec<(AlertKey, AlertState)> {
        self.tracked
            .iter()
            .filter_map(|(k, t)| match t {
                Tracked::Quiet => None,
                Tracked::Pending { .. } => Some((k.clone(), AlertState::Pending)),
                Tracked::Firing { .. } => Some((k.clone(), AlertState::Firing)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_protocol::monitoring::{Aggregate, Level, Op, Rule};

    fn cpu_monitor(rules: Vec<Rule>) -> MonitorSpec {
        MonitorSpec {
            name: "cpu".into(),
            item: "cpu.percent".into(),
            labels: Default::default(),
            nodes: None,
            rules,
            probe: None,
            interval_seconds: 5,
        }
    }

    fn over(threshold: f64, level: Level) -> Rule {
        Rule {
            level,
            op: Op::Gt,
            threshold,
            for_seconds: 0,
            recover_threshold: None,
            keep_firing_seconds: 0,
            aggregate: None,
        }
    }

    fn states(changes: &[AlertChange]) -> Vec<(Option<&str>, Level, AlertState)> {
        changes
            .iter()
            .map(|c| (c.key.node.as_deref(), c.key.level, c.state))
            .collect()
    }

    #[test]
    fn levels_fire_separately_and_a_down_node_is_inhibited() {
        let cpu = SeriesKey::new("cpu.percent");
        let core = SeriesKey::new("cpu.percent").label("core", "0");
        let mut e = Evaluator::default();
        e.set_monitors(
            vec![MonitorSpec {
                labels: Default::default(),
                ..cpu_monitor(vec![
                    over(80.0, Level::Warning),
                    over(95.0, Level::Critical),
                ])
            }],
            0,
        );
        let c = e.samples("n1", &[(&cpu, 90.0)], 0);
        assert_eq!(
            states(&c),
            vec![(Some("n1"), Level::Warning, AlertState::Firing)]
        );
        let c = e.samples("n1", &[(&cpu, 99.0)], 5000);
        assert_eq!(
            states(&c),
            vec![(Some("n1"), Level::Critical, AlertState::Firing)]
        );
        // `cpu.percent` alone is the total: per-core series are not watched...
        assert!(e.samples("n2", &[(&core, 85.0)], 5000).is_empty());
        // ...unless the monitor names the core (`*`: every core), each its own alert.
        let mut per_core = cpu_monitor(vec![over(80.0, Level::Warning)]);
        per_core.name = "cores".into();
        per_core.labels = [("core".to_string(), "*".to_string())].into();
        let mut both = e.monitors().to_vec();
        both.push(per_core);
        e.set_monitors(both, 5000);
        let c = e.samples("n2", &[(&core, 85.0), (&cpu, 10.0)], 5000);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].key.labels, vec![("core".into(), "0".into())]);
        assert_eq!(e.active().len(), 3);
        let mut c = e.node_down("n1", 10_000);
        c.sort_by_key(|c| c.key.level);
        assert_eq!(
            states(&c),
            vec![
                (Some("n1"), Level::Warning, AlertState::Resolved),
                (Some("n1"), Level::Critical, AlertState::Resolved)
            ]
        );
        assert_eq!(e.active().len(), 1);
    }

    #[test]
    fn group_rules_fire_on_the_fraction_of_nodes_over() {
        let cpu = SeriesKey::new("cpu.percent");
        let mut rule = over(30.0, Level::Critical);
        rule.aggregate = Some(Aggregate::FractionOver { threshold: 90.0 });
        let mut e = Evaluator::default();
        e.set_monitors(vec![cpu_monitor(vec![rule])], 0);
        for (i, v) in [95.0, 20.0, 30.0, 10.0].iter().enumerate() {
            assert!(e.samples(&format!("n{i}"), &[(&cpu, *v)], 0).is_empty());
        }
        assert!(e.group_rules(0).is_empty(), "25 % over 90: not yet");
        e.samples("n1", &[(&cpu, 97.0)], 5000);
        let c = e.group_rules(5000);
        assert_eq!(
            states(&c),
            vec![(None, Level::Critical, AlertState::Firing)]
        );
        assert_eq!(c[0].value, 50.0);
    }

    #[test]
    fn a_removed_or_changed_monitor_resolves_its_alerts() {
        let cpu = SeriesKey::new("cpu.percent");
        let mut e = Evaluator::default();
        e.set_monitors(vec![cpu_monitor(vec![over(80.0, Level::Warning)])], 0);
        e.samples("n1", &[(&cpu, 90.0)], 0);
        // Unchanged: nothing happens.
        assert!(e
            .set_monitors(vec![cpu_monitor(vec![over(80.0, Level::Warning)])], 1)
            .is_empty());
        let c = e.set_monitors(Vec::new(), 2);
        assert_eq!(
            states(&c),
            vec![(Some("n1"), Level::Warning, AlertState::Resolved)]
        );
        assert!(e.active().is_empty());
    }

    #[test]
    fn scope_and_label_matchers_limit_what_is_watched() {
        let root = SeriesKey::new("disk.used_percent").label("mount", "/");
        let data = SeriesKey::new("disk.used_percent").label("mount", "/data");
        let mut e = Evaluator::default();
        e.set_monitors(
            vec![MonitorSpec {
                name: "root-full".into(),
                item: "disk.used_percent".into(),
                labels: [("mount".to_string(), "/".to_string())].into(),
                nodes: Some(vec!["n1".into()]),
                rules: vec![over(90.0, Level::Critical)],
                probe: None,
                interval_seconds: 5,
            }],
            0,
        );
        assert!(
            e.samples("n2", &[(&root, 99.0)], 0).is_empty(),
            "n2 is out of scope"
        );
        assert!(
            e.samples("n1", &[(&data, 99.0)], 0).is_empty(),
            "/data is not watched"
        );
        assert_eq!(e.samples("n1", &[(&root, 99.0)], 0).len(), 1);
    }
}
