//! The node filter grammar of the console and `glory nodes --filter` (docs/CONSOLE.md):
//! terms separated by spaces, all of which must hold.
//!
//! | term | holds when |
//! |---|---|
//! | `state:down` | the node is in that state (several `state:` terms: any of them) |
//! | `group:g03` | the node is in that group (several: any of them) |
//! | `label:rack=r12`, `label:rack` | the node has the label (with that value) |
//! | `q:web`, `web` | the id or host name contains the text (any case) |
//! | `cpu>80`, `cpu<=5`, `mem>90` | CPU or memory use in % from the last heartbeat (`>`, `>=`, `<`, `<=`) |

use glory_protocol::NodeState;

use crate::registry::NodeEntry;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Metric {
    Cpu,
    Mem,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Default, PartialEq)]
pub(crate) struct NodeFilter {
    states: Vec<NodeState>,
    groups: Vec<String>,
    labels: Vec<(String, Option<String>)>,
    words: Vec<String>,
    loads: Vec<(Metric, Cmp, f64)>,
}

const TERMS: &str = "state:, group:, label:, q:, cpu>N, mem>N";

fn comparison(term: &str) -> Option<Result<(Metric, Cmp, f64), String>> {
    let (metric, rest) = if let Some(rest) = term.strip_prefix("cpu") {
        (Metric::Cpu, rest)
    } else if let Some(rest) = term.strip_prefix("mem") {
        (Metric::Mem, rest)
    } else {
        return None;
    };
    let (cmp, number) = if let Some(n) = rest.strip_prefix(">=") {
        (Cmp::Ge, n)
    } else if let Some(n) = rest.strip_prefix("<=") {
        (Cmp::Le, n)
    } else if let Some(n) = rest.strip_prefix('>') {
        (Cmp::Gt, n)
    } else if let Some(n) = rest.strip_prefix('<') {
        (Cmp::Lt, n)
    } else {
        return None;
    };
    Some(match number.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok((metric, cmp, n)),
        _ => Err(format!("filter: {term:?}: {number:?} is not a number")),
    })
}

impl NodeFilter {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut f = NodeFilter::default();
        for term in text.split_whitespace() {
            if let Some(cmp) = comparison(term) {
                f.loads.push(cmp?);
                continue;
            }
            match term.split_once(':') {
                Some(("state", s)) => f.states.push(NodeState::parse(s).ok_or_else(|| {
                    let known: Vec<_> = NodeState::ALL.iter().map(|s| s.as_str()).collect();
                    format!("filter: state {s:?} is not one of {}", known.join(", "))
                })?),
                Some(("group", g)) if !g.is_empty() => f.groups.push(g.to_string()),
                Some(("label", l)) if !l.is_empty() => f.labels.push(match l.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (l.to_string(), None),
                }),
                Some(("q", w)) if !w.is_empty() => f.words.push(w.to_lowercase()),
                Some((key, _)) => {
                    return Err(format!(
                        "filter: {term:?} is not a term ({key}: unknown or empty; terms: {TERMS})"
                    ))
                }
                None => f.words.push(term.to_lowercase()),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, n: &NodeEntry) -> bool {
        let r = &n.record;
        (self.states.is_empty() || self.states.contains(&n.status.state))
            && (self.groups.is_empty() || self.groups.contains(&r.group))
            && self.labels.iter().all(|(k, v)| match v {
                Some(v) => r.labels.get(k) == Some(v),
                None => r.labels.contains_key(k),
            })
            && self
                .words
                .iter()
                .all(|w| r.id.to_lowercase().contains(w) || r.hostname.to_lowercase().contains(w))
            && self.loads.iter().all(|(metric, cmp, limit)| {
                let Some(load) = &n.load else { return false };
                let value = match metric {
                    Metric::Cpu => load.cpu as f64,
                    Metric::Mem if load.mem_total > 0 => {
                        load.mem_used as f64 * 100.0 / load.mem_total as f64
                    }
                    Metric::Mem => return false,
                };
                match cmp {
                    Cmp::Gt => value > *limit,
                    Cmp::Ge => value >= *limit,
                    Cmp::Lt => value < *limit,
                    Cmp::Le => value <= *limit,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_keymaster::schema::{NodeRecord, NodeStatus};
    use glory_protocol::Load;

    fn node(id: &str, group: &str, state: NodeState, rack: &str, cpu: f32) -> NodeEntry {
        let record = NodeRecord {
            v: 1,
            id: id.to_string(),
            hostname: format!("web-{id}"),
            machine_id: String::new(),
            group: group.to_string(),
            serial: String::new(),
            previous_serial: String::new(),
            cert_expires_ms: 0,
            enrolled_ms: 0,
            inventory: Default::default(),
            labels: [("rack".to_string(), rack.to_string())].into(),
            server_identity: String::new(),
            key_sha256: String::new(),
            reached_from: None,
        };
        NodeEntry {
            record,
            status: NodeStatus::new(state, 0, "test"),
            load: Some(Load {
                cpu,
                load1: 0.0,
                mem_used: 30,
                mem_total: 100,
                procs: 1,
            }),
            load_ms: 0,
        }
    }

    #[test]
    fn terms_combine_and_bad_ones_are_named() {
        let a = node("n-a", "g03", NodeState::Down, "r12", 95.0);
        let b = node("n-b", "g04", NodeState::Up, "r12", 10.0);
        let check = |text: &str| {
            let f = NodeFilter::parse(text).unwrap();
            (f.matches(&a), f.matches(&b))
        };
        assert_eq!(check(""), (true, true));
        assert_eq!(check("state:down"), (true, false));
        assert_eq!(check("state:down state:up"), (true, true));
        assert_eq!(check("group:g03 label:rack=r12"), (true, false));
        assert_eq!(check("label:rack"), (true, true));
        assert_eq!(check("label:rack=r13"), (false, false));
        assert_eq!(check("q:WEB-N-B"), (false, true));
        assert_eq!(check("n-a"), (true, false));
        assert_eq!(check("cpu>80"), (true, false));
        assert_eq!(check("cpu<=10 mem<50"), (false, true));
        for (bad, says) in [
            ("state:sleepy", "state \"sleepy\""),
            ("rack:r12", "rack: unknown"),
            ("cpu>lots", "not a number"),
            ("group:", "group: unknown or empty"),
        ] {
            let e = NodeFilter::parse(bad).unwrap_err();
            assert!(e.starts_with("filter:") && e.contains(says), "{bad}: {e}");
        }
    }
}
