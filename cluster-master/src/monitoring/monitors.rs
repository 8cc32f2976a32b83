//! Monitors: checked, written to the key master, then pushed to the active master of
//! every group they apply to. A group master gets the monitors in force for its group,
//! with pool, label and node scopes resolved to its nodes (it knows neither pools nor
//! labels); the set is sent again whenever it changes.

use std::collections::BTreeSet;

use glory_keymaster::schema::{
    self, MonitorRecord, MonitorScope, ProcessMatchRecord, RuleRecord, RECORD_VERSION,
};
use glory_keymaster::{Compare, Txn, TxnOp};
use glory_protocol::monitoring::{
    Aggregate, CheckSpec, Level, MonitorSpec, Op, Probe, ProcessMatch, Rule,
};
use glory_protocol::ClusterToGroup;
use tracing::info;

use crate::cluster::Cluster;
use crate::pools::{check_name, OpError, OpResultT};
use crate::registry::Registry;

fn invalid(message: String) -> OpError {
    OpError::Invalid(message)
}

fn level_of(text: &str) -> Option<Level> {
    match text {
        "info" => Some(Level::Info),
        "warning" => Some(Level::Warning),
        "critical" => Some(Level::Critical),
        _ => None,
    }
}

fn op_of(text: &str) -> Option<Op> {
    match text {
        ">" => Some(Op::Gt),
        ">=" => Some(Op::Ge),
        "<" => Some(Op::Lt),
        "<=" => Some(Op::Le),
        "==" => Some(Op::Eq),
        "!=" => Some(Op::Ne),
        _ => None,
    }
}

/// A group rule's aggregate; an unknown function is malformed (400), `fraction_over`
/// without its threshold is one field against another (422). `at` names the field.
fn aggregate_of(record: &schema::AggregateRecord, at: &str) -> Result<Aggregate, OpError> {
    match (record.function.as_str(), record.threshold) {
        ("avg", _) => Ok(Aggregate::Avg),
        ("max", _) => Ok(Aggregate::Max),
        ("fraction_over", Some(threshold)) if threshold.is_finite() => {
            Ok(Aggregate::FractionOver { threshold })
        }
        ("fraction_over", _) => Err(OpError::Unprocessable(format!(
            "{at}: fraction_over needs a numeric threshold"
        ))),
        (other, _) => Err(OpError::Invalid(format!(
            "{at}: {other:?} is not an aggregate (avg, max, fraction_over)"
        ))),
    }
}

/// The rule as group masters evaluate it (the record was validated).
fn rule_of(r: &RuleRecord) -> Rule {
    Rule {
        level: level_of(&r.level).unwrap_or_default(),
        op: op_of(&r.op).unwrap_or_default(),
        threshold: r.threshold,
        for_seconds: r.for_seconds,
        recover_threshold: r.recover_threshold,
        keep_firing_seconds: r.keep_firing_seconds,
        aggregate: r.aggregate.as_ref().and_then(|a| aggregate_of(a, "").ok()),
    }
}

fn rule(level: &str, op: &str, threshold: f64) -> RuleRecord {
    RuleRecord {
        level: level.to_string(),
        op: op.to_string(),
        threshold,
        for_seconds: 0,
        recover_threshold: None,
        keep_firing_seconds: 0,
        aggregate: None,
    }
}

/// Longest timeout of a check.
const MAX_CHECK_TIMEOUT: u64 = 300;

/// Fill in what a process or check monitor may leave out: the item its rules look at
/// (`proc.alive`, `check.status`), its rules (a dead process is critical; a check's
/// warning is a warning, critical and unknown are critical) and a check's timeout.
pub(crate) fn complete_monitor(m: &mut MonitorRecord) {
    match m.kind.as_str() {
        "process" => {
            if m.item.is_empty() {
                m.item = "proc.alive".into();
            }
            if m.rules.is_empty() && m.item == "proc.alive" {
                m.rules = vec![rule("critical", "<", 1.0)];
            }
        }
        "check" => {
            if m.item.is_empty() {
                m.item = glory_monitor::items::CHECK_ITEM.into();
            }
            if m.rules.is_empty() {
                m.rules = vec![rule("warning", "==", 1.0), rule("critical", ">=", 2.0)];
            }
            m.timeout_seconds.get_or_insert(10);
        }
        _ => {}
    }
}

/// The wire form of a process monitor's match.
fn process_match(r: &ProcessMatchRecord) -> ProcessMatch {
    ProcessMatch {
        name: r.name.clone(),
        cmdline: r.cmdline.clone(),
        pidfile: r.pidfile.clone(),
        unit: r.unit.clone(),
    }
}

/// What agents run for `m` (validated): None for metric monitors.
fn probe_of(m: &MonitorRecord) -> Option<Probe> {
    match m.kind.as_str() {
        "process" => Some(Probe::Process(process_match(m.process_match.as_ref()?))),
        "check" => Some(Probe::Check(CheckSpec {
            command: m.command.clone()?,
            timeout_seconds: m.timeout_seconds.unwrap_or(10),
        })),
        _ => None,
    }
}

/// The kind-specific fields of a monitor: rules of one field against another (422).
fn validate_kind(m: &MonitorRecord) -> OpResultT<()> {
    let rule = OpError::Unprocessable;
    // An item of no kind at all is outside the schema's list: a 400 (none given: the
    // kind's rules below say whether it needs one).
    if !m.item.is_empty() && !glory_monitor::items::has_history(&m.item) {
        return Err(invalid(format!("item: unknown item {:?}", m.item)));
    }
    let only = |field: &str, kind: &str| {
        Err(rule(format!(
            "{field}: only for {kind} monitors (this one is a {})",
            m.kind
        )))
    };
    if m.kind != "process" && m.process_match.is_some() {
        return only("match", "process");
    }
    if m.kind != "check" && (m.command.is_some() || m.timeout_seconds.is_some()) {
        return only("command and timeout_seconds", "check");
    }
    if m.kind != "metric" && !m.labels.is_empty() {
        return Err(rule(format!(
            "labels: not for {} monitors (their series carry monitor={})",
            m.kind, m.name
        )));
    }
    match m.kind.as_str() {
        "metric" if !glory_monitor::items::is_known(&m.item) => Err(rule(format!(
            "item: unknown item {:?} (known: {})",
            m.item,
            glory_monitor::items::NODE_ITEMS.join(", ")
        ))),
        "metric" => Ok(()),
        "process" => {
            let spec = m
                .process_match
                .as_ref()
                .ok_or_else(|| rule("match: required for a process monitor".into()))?;
            glory_monitor::procs::Matcher::new(&process_match(spec)).map_err(rule)?;
            if !glory_monitor::procs::PROCESS_ITEMS.contains(&m.item.as_str()) {
                return Err(rule(format!(
                    "item: {:?} is not an item of process monitors (known: {})",
                    m.item,
                    glory_monitor::procs::PROCESS_ITEMS.join(", ")
                )));
            }
            Ok(())
        }
        "check" => {
            let command = m
                .command
                .as_ref()
                .ok_or_else(|| rule("command: required for a check".into()))?;
            if command.is_empty() || command[0].is_empty() {
                return Err(rule("command: empty".into()));
            }
            if command.len() > 64 || command.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
                return Err(rule(
                    "command: at most 64 arguments of 4096 bytes, without NUL".into(),
                ));
            }
            if !m
                .timeout_seconds
                .is_some_and(|t| (1..=MAX_CHECK_TIMEOUT).contains(&t))
            {
                // The schema's own bounds: a 400.
                return Err(invalid(format!(
                    "timeout_seconds: between 1 and {MAX_CHECK_TIMEOUT}"
                )));
            }
            if m.item != glory_monitor::items::CHECK_ITEM {
                return Err(rule(format!(
                    "item: {:?} is not an item of checks (check.status)",
                    m.item
                )));
            }
            Ok(())
        }
        other => Err(invalid(format!(
            "kind: {other:?} is not a kind of monitor (metric, process, check)"
        ))),
    }
}

/// Check a monitor before anything is written; every message names the field.
pub(crate) fn validate_monitor(m: &MonitorRecord) -> OpResultT<()> {
    check_name("name", &m.name)?;
    validate_kind(m)?;
    if !(1..=3600).contains(&m.interval_seconds) {
        return Err(invalid(format!(
            "interval_seconds: {} is not between 1 and 3600",
            m.interval_seconds
        )));
    }
    if let MonitorScope::All(false) = m.scope {
        return Err(invalid("scope: all must be true".into()));
    }
    if m.rules.is_empty() || m.rules.len() > 8 {
        // Required of metric monitors only (the others have defaults): a rule of `kind`.
        return Err(OpError::Unprocessable(
            "rules: between 1 and 8 rules".into(),
        ));
    }
    let mut levels = BTreeSet::new();
    for (i, r) in m.rules.iter().enumerate() {
        let field = |name: &str| format!("rules[{i}].{name}");
        if level_of(&r.level).is_none() {
            return Err(invalid(format!(
                "{}: {:?} is not a level (info, warning, critical)",
                field("level"),
                r.level
            )));
        }
        if !levels.insert((r.level.clone(), r.aggregate.is_some())) {
            return Err(invalid(format!(
                "{}: two rules of level {} (one per level, and one group rule per level)",
                field("level"),
                r.level
            )));
        }
        if op_of(&r.op).is_none() {
            return Err(invalid(format!(
                "{}: {:?} is not an operator (>, >=, <, <=, ==, !=)",
                field("op"),
                r.op
            )));
        }
        if !r.threshold.is_finite() {
            return Err(invalid(format!("{}: not a number", field("threshold"))));
        }
        if r.recover_threshold.is_some_and(|t| !t.is_finite()) {
            return Err(invalid(format!(
                "{}: not a number",
                field("recover_threshold")
            )));
        }
        if let Some(agg) = &r.aggregate {
            aggregate_of(agg, &field("aggregate"))?;
        }
        if r.for_seconds > 86_400 || r.keep_firing_seconds > 86_400 {
            return Err(invalid(format!(
                "{}: for_seconds and keep_firing_seconds are at most a day",
                field("for_seconds")
            )));
        }
    }
    Ok(())
}

/// The nodes of `group` that `scope` names: None for the whole group, Some(empty) for
/// none of them.
fn scope_nodes(
    scope: &MonitorScope,
    group: &str,
    reg: &Registry,
    pool_nodes: &dyn Fn(&str) -> Vec<String>,
) -> Option<Vec<String>> {
    let in_group = |n: &String| reg.nodes.get(n).is_some_and(|e| e.record.group == group);
    match scope {
        MonitorScope::All(_) => None,
        MonitorScope::Group(g) if g == group => None,
        MonitorScope::Group(_) => Some(Vec::new()),
        MonitorScope::Node(n) => Some(std::iter::once(n.clone()).filter(in_group).collect()),
        MonitorScope::Pool(p) => Some(pool_nodes(p).into_iter().filter(in_group).collect()),
        MonitorScope::Labels(want) => Some(
            reg.groups
                .get(group)
                .map(|g| {
                    g.members
                        .iter()
                        .filter(|n| {
                            reg.nodes.get(*n).is_some_and(|e| {
                                want.iter().all(|(k, v)| e.record.labels.get(k) == Some(v))
                            })
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        ),
    }
}

impl Cluster {
    /// Create (`create`) or replace a monitor.
    pub(crate) async fn put_monitor(
        &self,
        mut record: MonitorRecord,
        create: bool,
    ) -> OpResultT<MonitorRecord> {
        complete_monitor(&mut record);
        validate_monitor(&record)?;
        self.check_scope(&record.scope)?;
        let _serial = self.monitoring.write.lock().await;
        let now = glory_protocol::now_ms();
        let old = self.monitoring.monitors().get(&record.name).cloned();
        match (&old, create) {
            (Some(_), true) => {
                return Err(OpError::Conflict {
                    message: format!("monitor {} already exists", record.name),
                    fit: None,
                })
            }
            (None, false) => {
                return Err(OpError::NotFound(format!(
                    "monitor {} does not exist",
                    record.name
                )))
            }
            _ => {}
        }
        record.v = RECORD_VERSION;
        record.created_ms = old.as_ref().map_or(now, |o| o.created_ms);
        record.updated_ms = now;
        let key = schema::monitor_key(&record.name);
        // Creation must not overwrite a monitor another master wrote meanwhile; a
        // replacement replaces whatever is there.
        let compares = if create {
            vec![Compare::absent(key.clone())]
        } else {
            Vec::new()
        };
        let resp = self
            .km_txn(Txn {
                compares,
                success: vec![TxnOp::put(key, schema::encode(&record))],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(OpError::Conflict {
                message: format!("monitor {} changed meanwhile; try again", record.name),
                fit: None,
            });
        }
        info!(monitor = %record.name, "monitor {}", if create { "created" } else { "replaced" });
        self.monitoring
            .monitors_mut()
            .insert(record.name.clone(), record.clone());
        self.push_monitors();
        Ok(record)
    }

    pub(crate) async fn delete_monitor(&self, name: &str) -> OpResultT<()> {
        let _serial = self.monitoring.write.lock().await;
        if !self.monitoring.monitors().contains_key(name) {
            return Err(OpError::NotFound(format!("monitor {name} does not exist")));
        }
        self.km_txn(Txn {
            success: vec![TxnOp::delete(schema::monitor_key(name))],
            ..Default::default()
        })
        .await?;
        info!(monitor = %name, "monitor deleted");
        self.monitoring.monitors_mut().remove(name);
        self.push_monitors();
        Ok(())
    }

    /// A scope must name things that exist.
    fn check_scope(&self, scope: &MonitorScope) -> OpResultT<()> {
        let missing = |what: &str, name: &str| {
            Err(OpError::Unprocessable(format!(
                "scope.{what}: {what} {name} does not exist"
            )))
        };
        match scope {
            MonitorScope::Pool(p) if self.pools.book().get(p).is_none() => missing("pool", p),
            MonitorScope::Group(g) if !self.read().groups.contains_key(g) => missing("group", g),
            MonitorScope::Node(n) if !self.read().nodes.contains_key(n) => missing("node", n),
            MonitorScope::Labels(l) if l.is_empty() => {
                Err(invalid("scope.labels: at least one label".into()))
            }
            _ => Ok(()),
        }
    }

    /// The monitors in force for `group`, scopes resolved to its nodes.
    pub(crate) fn monitor_specs(&self, group: &str) -> Vec<MonitorSpec> {
        let pool_nodes = |p: &str| {
            self.pools
                .book()
                .get(p)
                .map(|p| p.nodes.clone())
                .unwrap_or_default()
        };
        let monitors = self.monitoring.monitors();
        let reg = self.read();
        monitors
            .values()
            .filter_map(|m| {
                let nodes = scope_nodes(&m.scope, group, &reg, &pool_nodes);
                if nodes.as_ref().is_some_and(Vec::is_empty) {
                    return None;
                }
                let probe = probe_of(m);
                let labels = match probe {
                    Some(_) => [("monitor".to_string(), m.name.clone())].into(),
                    None => m.labels.clone(),
                };
                Some(MonitorSpec {
                    name: m.name.clone(),
                    item: m.item.clone(),
                    labels,
                    nodes,
                    rules: m.rules.iter().map(rule_of).collect(),
                    probe,
                    interval_seconds: m.interval_seconds,
                })
            })
            .collect()
    }

    /// Send each group's active master its monitors, where they changed since last
    /// sent (monitor changes, and pools or labels that moved nodes in or out of scope).
    pub(crate) fn push_monitors(&self) {
        let groups: Vec<String> = self.read().groups.keys().cloned().collect();
        for group in groups {
            let specs = self.monitor_specs(&group);
            let mut sent = super::guard(self.monitoring.sent.lock());
            if sent.get(&group) == Some(&specs) {
                continue;
            }
            let reg = self.read();
            let Some(entry) = reg.groups.get(&group) else {
                continue;
            };
            if entry.link.is_some() {
                entry.notify(ClusterToGroup::Monitors(specs.clone()));
                sent.insert(group, specs);
            }
        }
    }

    /// A group's active master (re)connected: it gets its monitors in its first
    /// messages.
    pub(crate) fn monitors_for_new_link(&self, group: &str) -> ClusterToGroup {
        let specs = self.monitor_specs(group);
        super::guard(self.monitoring.sent.lock()).insert(group.to_string(), specs.clone());
        ClusterToGroup::Monitors(specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn good() -> Value {
        json!({"name": "cpu", "scope": {"all": true}, "kind": "metric", "item": "cpu.percent",
        "interval_seconds": 5, "created_ms": 0, "updated_ms": 0,
        "rules": [
            {"level": "warning", "op": ">", "threshold": 90, "for_seconds": 60, "recover_threshold": 80},
            {"level": "critical", "threshold": 30, "aggregate": {"fn": "fraction_over", "threshold": 90}}
        ]})
    }

    #[test]
    fn bad_monitors_are_refused_naming_the_field() {
        let record = |v: Value| serde_json::from_value::<MonitorRecord>(v).unwrap();
        validate_monitor(&record(good())).unwrap();
        type Edit = fn(&mut Value);
        let cases: [(&str, Edit); 11] = [
            ("item", |v| v["item"] = "cpu.percentage".into()),
            ("kind", |v| v["kind"] = "probe".into()),
            ("match", |v| v["kind"] = "process".into()),
            ("match.cmdline", |v| {
                v["kind"] = "process".into();
                v["item"] = "proc.alive".into();
                v["match"] = json!({"cmdline": "(unclosed"});
            }),
            ("command", |v| v["command"] = json!(["true"])),
            ("interval_seconds", |v| v["interval_seconds"] = 0.into()),
            ("rules[0].level", |v| {
                v["rules"][0]["level"] = "fatal".into()
            }),
            ("rules[0].op", |v| v["rules"][0]["op"] = "=".into()),
            ("name", |v| v["name"] = "CPU".into()),
            ("rules[1].aggregate", |v| {
                v["rules"][1]["aggregate"]["fn"] = "median".into()
            }),
            ("rules[1].level", |v| {
                v["rules"][1] = json!({"level": "warning", "threshold": 1})
            }),
        ];
        for (field, edit) in cases {
            let mut v = good();
            edit(&mut v);
            let err = validate_monitor(&record(v)).unwrap_err().to_string();
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }
}
