//! The fault schedule of `glory sim --faults`: pure parsing.
//!
//! `kill-agents:50@30s,restart-agents:50@60s,kill-group-master:g07@70s,`
//! `kill-cluster-master@90s,partition-group:g03@40s-55s`

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut the power of this many running agents, chosen at random.
    KillAgents(usize),
    /// Hold this many running agents' CPU at 95 % for 30 s; a monitor (`sim-spike`,
    /// critical over 90, no `for`) must alert for each (hierarchy only).
    SpikeLoad(usize),
    /// Power this many killed agents on again.
    RestartAgents(usize),
    /// Stop a group master; a replacement takes over its address.
    KillGroupMaster(String),
    /// Stop the cluster master; a replacement takes over.
    KillClusterMaster,
    /// Drop every packet between a group master and the cluster master until `until`.
    PartitionGroup { group: String, until: Duration },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// Time since the agents were started.
    pub at: Duration,
    pub fault: Fault,
}

pub use glory_protocol::parse_duration;

fn parse_one(item: &str) -> Result<Scheduled, String> {
    let (what, when) = item
        .split_once('@')
        .ok_or_else(|| format!("{item:?}: missing @time"))?;
    let (kind, arg) = match what.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (what, None),
    };
    let count = |arg: Option<&str>| -> Result<usize, String> {
        let n: usize = arg
            .ok_or_else(|| format!("{item:?}: needs a count"))?
            .parse()
            .map_err(|_| format!("{item:?}: bad count"))?;
        if n == 0 {
            return Err(format!("{item:?}: count must be positive"));
        }
        Ok(n)
    };
    let group = |arg: Option<&str>| -> Result<String, String> {
        arg.filter(|g| !g.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("{item:?}: needs a group"))
    };
    let (at, fault) = match kind {
        "kill-agents" => (parse_duration(when)?, Fault::KillAgents(count(arg)?)),
        "restart-agents" => (parse_duration(when)?, Fault::RestartAgents(count(arg)?)),
        "spike-load" => (parse_duration(when)?, Fault::SpikeLoad(count(arg)?)),
        "kill-group-master" => (parse_duration(when)?, Fault::KillGroupMaster(group(arg)?)),
        "kill-cluster-master" => {
            if arg.is_some() {
                return Err(format!("{item:?}: kill-cluster-master takes no argument"));
            }
            (parse_duration(when)?, Fault::KillClusterMaster)
        }
        "partition-group" => {
            let (from, to) = when.split_once('-').ok_or_else(|| format!("{item:?}: needs @FROM-TO"))?;
            let (from, until) = (parse_duration(from)?, parse_duration(to)?);
            if until <= from {
                return Err(format!("{item:?}: the partition must end after it starts"));
            }
            (from, Fault::PartitionGroup { group: group(arg)?, until })
        }
        other => {
            return Err(format!(
                "unknown fault {other:?} (kill-agents, restart-agents, spike-load, kill-group-master, kill-cluster-master, partition-group)"
            ))
        }
    };
    Ok(Scheduled { at, fault })
}

/// Parse a comma-separated schedule, sorted by time.
pub fn parse_faults(spec: &str) -> Result<Vec<Scheduled>, String> {
    let mut out: Vec<Scheduled> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_one)
        .collect::<Result<_, _>>()?;
    out.sort_by_key(|s| s.at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let faults = parse_faults(
            "kill-agents:50@30s,restart-agents:50@60s,kill-group-master:g07@70s,kill-cluster-master@90s,partition-group:g03@40s-55s",
        )
        .unwrap();
        assert_eq!(faults.len(), 5);
        assert_eq!(
            faults[0],
            Scheduled {
                at: Duration::from_secs(30),
                fault: Fault::KillAgents(50)
            }
        );
        assert_eq!(
            faults[1],
            Scheduled {
                at: Duration::from_secs(40),
                fault: Fault::PartitionGroup {
                    group: "g03".into(),
                    until: Duration::from_secs(55)
                }
            }
        );
        assert_eq!(faults[4].fault, Fault::KillClusterMaster);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("kill-agents@30s", "needs a count"),
            ("kill-agents:x@30s", "bad count"),
            ("kill-agents:5", "missing @time"),
            ("explode:1@1s", "unknown fault"),
            ("partition-group:g01@50s-40s", "must end after"),
            ("kill-agents:5@3parsecs", "unit"),
        ] {
            let err = parse_faults(spec).unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
        assert!(parse_faults("").unwrap().is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("-1s").is_err());
    }
}
