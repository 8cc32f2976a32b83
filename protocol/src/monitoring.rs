//! Monitoring on the wire: the samples an agent sends each interval, the monitors the
//! cluster master pushes down, and the alert changes a group master sends up. The
//! logic over them (rule engine, statistics store, collection) is `glory-monitor`'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A series: an item and its labels, e.g. `disk.used_percent{mount=/}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    /// Dotted name, e.g. `cpu.percent`.
    pub item: String,
    /// Label names and values, sorted by name.
    #[serde(default)]
    pub labels: Vec<(String, String)>,
}

impl SeriesKey {
    pub fn new(item: &str) -> Self {
        SeriesKey {
            item: item.to_string(),
            labels: Vec::new(),
        }
    }

    /// With one more label (kept sorted).
    pub fn label(mut self, name: &str, value: &str) -> Self {
        let at = self.labels.partition_point(|(n, _)| n.as_str() < name);
        self.labels
            .insert(at, (name.to_string(), value.to_string()));
        self
    }

    /// The value of label `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.item)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (n, v)) in self.labels.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{n}={v}")?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// One interval's samples from an agent. Series are numbered per session: a batch
/// defines the numbers it uses for the first time (`defs`), later batches send only
/// numbers and values, so 40 values cost about 40 x 10 bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleBatch {
    /// When the values were taken (agent's clock, ms since the epoch).
    pub at_ms: u64,
    #[serde(default)]
    pub defs: Vec<(u32, SeriesKey)>,
    pub values: Vec<(u32, f64)>,
    /// Text that goes with a series' value, e.g. a check's output (at most
    /// [`MAX_CHECK_OUTPUT`] bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<(u32, String)>,
}

/// How much of a check's output is kept.
pub const MAX_CHECK_OUTPUT: usize = 4096;

/// Which processes a process monitor watches. Every given criterion must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMatch {
    /// The process name (`/proc/PID/comm`), exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A regular expression over the command line (arguments joined by spaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// A file holding the process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<String>,
    /// A systemd unit (`ssh.service`): processes in its control group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// A custom check: a command whose exit code follows the Nagios plugin convention
/// (0 ok, 1 warning, 2 critical, 3 unknown).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// Program and arguments (no shell unless the program is one).
    pub command: Vec<String>,
    pub timeout_seconds: u64,
}

/// What an agent runs for a monitor besides its node metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    Process(ProcessMatch),
    Check(CheckSpec),
}

/// A probe as an agent gets it. Its samples are labelled `monitor=<name>`:
/// `proc.alive`, `proc.count`, `proc.cpu_percent`, `proc.rss_bytes`, `proc.threads`,
/// `proc.fds`, `proc.restarts` for processes; `check.status` (the exit code, 3 when
/// the check could not run or timed out) and its output as text for checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub monitor: String,
    pub interval_seconds: u64,
    pub probe: Probe,
}

/// How bad an alert is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

/// Comparison of a value with a threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[default]
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => value == threshold,
            Op::Ne => value != threshold,
        }
    }
}

/// An aggregate over a group's nodes, for group rules.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
pub enum Aggregate {
    Avg,
    Max,
    /// The fraction (0-100 %) of the group's nodes whose value is over `threshold`.
    FractionOver {
        threshold: f64,
    },
}

/// One level of a monitor: when it fires and when it recovers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(default)]
    pub level: Level,
    #[serde(default)]
    pub op: Op,
    pub threshold: f64,
    /// Pending this long before firing (0: fire at once).
    #[serde(default)]
    pub for_seconds: u64,
    /// A firing alert resolves only once the value is back past this (hysteresis);
    /// None: the threshold itself.
    #[serde(default)]
    pub recover_threshold: Option<f64>,
    /// Keep firing this long after the value recovered (no flapping).
    #[serde(default)]
    pub keep_firing_seconds: u64,
    /// Evaluate an aggregate over the group instead of each node.
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
}

/// A monitor as group masters evaluate it, its scope resolved by the cluster master to
/// the group's nodes (group masters know neither pools nor labels). Process and check
/// monitors carry their probe, which the group master hands to the agents in scope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorSpec {
    pub name: String,
    /// The item the rules look at, e.g. `cpu.percent`.
    pub item: String,
    /// Only series with these labels (e.g. `{"mount": "/"}`); empty: every series.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Nodes in scope: resolved by the cluster master (pools and labels are its
    /// knowledge); None: every node of the group.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    pub rules: Vec<Rule>,
    /// What agents run for this monitor (None: node metrics, which they always take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// How often the probe runs.
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
}

fn default_interval() -> u64 {
    5
}

/// What an alert is about: a monitor on a node's series, or on the whole group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertKey {
    pub monitor: String,
    /// None for a group rule.
    pub node: Option<String>,
    /// The series' labels (empty for a series without labels and for group rules).
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    pub level: Level,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// An alert that changed state, group master -> cluster master.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertChange {
    pub key: AlertKey,
    pub state: AlertState,
    /// The value that made the change.
    pub value: f64,
    /// When the alert entered `state` (ms since the epoch).
    pub since_ms: u64,
    /// What else the node said, e.g. a check's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A history query, cluster master -> group master.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsQuery {
    /// Echoed in the answer.
    pub id: u64,
    /// None: an aggregate over the group's nodes.
    pub node: Option<String>,
    pub series: SeriesKey,
    pub from_ms: u64,
    pub to_ms: u64,
    /// Width of a point in seconds (0: the resolution's own).
    pub step_seconds: u64,
}

/// One point of history: `[t_ms, avg, min, max]`.
pub type Point = (u64, f64, f64, f64);

/// A history answer, group master -> cluster master.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsAnswer {
    pub id: u64,
    /// Width of a point in seconds.
    pub step_seconds: u64,
    pub points: Vec<Point>,
    /// Why there is no answer (unknown node, store error).
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keys_keep_labels_sorted_and_print_like_prometheus() {
        let key = SeriesKey::new("net.rx_bytes")
            .label("iface", "eth0")
            .label("dir", "in");
        assert_eq!(key.to_string(), "net.rx_bytes{dir=in,iface=eth0}");
        assert_eq!(key.get("iface"), Some("eth0"));
        assert_eq!(SeriesKey::new("load.1").to_string(), "load.1");
    }

    #[test]
    fn ops_and_levels_read_as_written() {
        let rule: Rule = serde_json::from_str(
            r#"{"level":"critical","op":">=","threshold":90,"aggregate":{"fn":"fraction_over","threshold":80}}"#,
        )
        .unwrap();
        assert_eq!(rule.level, Level::Critical);
        assert!(rule.op.holds(90.0, rule.threshold));
        assert_eq!(
            rule.aggregate,
            Some(Aggregate::FractionOver { threshold: 80.0 })
        );
        assert!(Level::Critical > Level::Warning && Level::Warning > Level::Info);
    }
}
