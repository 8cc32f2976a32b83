//! Monitoring records: monitors (configuration the group masters evaluate) and
//! silences. Samples and alerts are never stored here: they stay with the group masters
//! and in the active cluster master's memory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::v1;

/// Where a monitor applies: `{"all": true}`, `{"group": "g03"}`, `{"pool": "fs-a"}`,
/// `{"labels": {"rack": "r12"}}` or `{"node": "n-..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MonitorScope {
    All(bool),
    Group(String),
    Pool(String),
    Labels(BTreeMap<String, String>),
    Node(String),
}

/// An aggregate over a group's nodes: `{"fn": "avg" | "max" | "fraction_over",
/// "threshold": N}` (the threshold only for `fraction_over`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateRecord {
    #[serde(rename = "fn")]
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

/// One level of a monitor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRecord {
    /// `info`, `warning` or `critical`.
    pub level: String,
    /// `>`, `>=`, `<` or `<=`.
    #[serde(default = "greater")]
    pub op: String,
    pub threshold: f64,
    #[serde(default)]
    pub for_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_threshold: Option<f64>,
    #[serde(default)]
    pub keep_firing_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateRecord>,
}

fn greater() -> String {
    ">".to_string()
}

/// Which processes a process monitor watches (every given field must hold).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessMatchRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A regular expression over the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<String>,
    /// A systemd unit, e.g. `ssh.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// `/glory/monitors/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub name: String,
    pub scope: MonitorScope,
    /// `metric`, `process` or `check`.
    pub kind: String,
    /// The item its rules look at, e.g. `cpu.percent`.
    pub item: String,
    /// Only series with these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub interval_seconds: u64,
    pub rules: Vec<RuleRecord>,
    /// Process monitors: which processes.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub process_match: Option<ProcessMatchRecord>,
    /// Checks: program and arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Checks: killed (and `unknown`) after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// What a silence matches: every given field must equal the alert's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceMatchers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

/// `/glory/silences/{id}`: alerts it matches are not forwarded until `ends_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub id: String,
    pub matchers: SilenceMatchers,
    pub ends_at_ms: u64,
    #[serde(default)]
    pub comment: String,
    pub created_ms: u64,
}
