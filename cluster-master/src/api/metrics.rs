//! `GET /metrics`: the cluster in Prometheus' text exposition format (bearer token as
//! for the API, operators only). Cluster and per-group series only: a node's history is
//! its group master's (`/api/v1/nodes/{id}/metrics`), and 10,000 nodes' series would
//! be a cardinality Prometheus should not be asked to carry.

use std::fmt::Write;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use glory_protocol::NodeState;

use super::Active;
use crate::role::Node;

/// One metric family: its help, its type and its samples (`labels`, value).
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: &'a str,
    samples: Vec<(String, f64)>,
}

fn render(families: &[Family<'_>]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in &f.samples {
            let _ = writeln!(out, "{}{labels} {value}", f.name);
        }
    }
    out
}

/// `{name="value",...}` with values escaped as the format asks.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

pub(super) async fn scrape(
    State(node): State<Arc<Node>>,
    Active(cluster): Active,
) -> impl IntoResponse {
    let mut families = Vec::new();
    let mut latency = Vec::new();
    for ((route, method), h) in node.api_latency.snapshot() {
        for (le, n) in h.cumulative() {
            let l = labels(&[("route", &route), ("method", &method), ("le", &le)]);
            latency.push((format!("_bucket{l}"), n as f64));
        }
        let l = labels(&[("route", &route), ("method", &method)]);
        latency.push((format!("_sum{l}"), h.sum));
        latency.push((format!("_count{l}"), h.count as f64));
    }
    families.push(Family {
        name: "glory_api_request_duration_seconds",
        help: "REST API request latency by route and method, until the response's headers.",
        kind: "histogram",
        samples: latency,
    });
    {
        let reg = cluster.read();
        let counts = reg.counts();
        families.push(Family {
            name: "glory_nodes",
            help: "Nodes by state.",
            kind: "gauge",
            samples: NodeState::ALL
                .iter()
                .map(|s| {
                    let n = counts.get(s).copied().unwrap_or(0);
                    (labels(&[("state", s.as_str())]), n as f64)
                })
                .collect(),
        });
        let groups: Vec<_> = reg.groups.values().collect();
        let per_group = |value: &dyn Fn(&crate::registry::GroupEntry) -> f64| {
            groups
                .iter()
                .map(|g| (labels(&[("group", &g.record.id)]), value(g)))
                .collect::<Vec<_>>()
        };
        families.push(Family {
            name: "glory_group_master_connected",
            help: "Whether the group's active master is connected (1) or not (0).",
            kind: "gauge",
            samples: per_group(&|g| f64::from(u8::from(g.link.is_some()))),
        });
        families.push(Family {
            name: "glory_group_nodes",
            help: "Nodes per group.",
            kind: "gauge",
            samples: per_group(&|g| g.members.len() as f64),
        });
        families.push(Family {
            name: "glory_group_heartbeats_received_total",
            help: "Heartbeats the group master received since it started.",
            kind: "counter",
            samples: per_group(&|g| g.heartbeats_received as f64),
        });
        families.push(Family {
            name: "glory_group_heartbeats_lost_total",
            help: "Heartbeats the group master found missing since it started.",
            kind: "counter",
            samples: per_group(&|g| g.heartbeats_lost as f64),
        });
        families.push(Family {
            name: "glory_group_samples_ingested_total",
            help: "Monitoring samples the group master stored since it started.",
            kind: "counter",
            samples: per_group(&|g| g.samples_ingested as f64),
        });
        families.push(Family {
            name: "glory_group_stats_store_bytes",
            help: "Bytes the group master's statistics store holds.",
            kind: "gauge",
            samples: per_group(&|g| g.stats_store_bytes as f64),
        });
        families.push(Family {
            name: "glory_group_sample_batches_dropped_total",
            help: "Sample batches the group master dropped because it fell behind.",
            kind: "counter",
            samples: per_group(&|g| g.samples_dropped as f64),
        });
    }
    families.push(Family {
        name: "glory_content_served_total",
        help: "Files served by GET /content/{sha256} (images, packages) since start.",
        kind: "counter",
        samples: vec![(
            String::new(),
            cluster
                .images
                .served
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        )],
    });
    {
        use std::sync::atomic::Ordering;
        let s = &cluster.services;
        let services = s.all();
        families.push(Family {
            name: "glory_services",
            help: "Services defined.",
            kind: "gauge",
            samples: vec![(String::new(), services.len() as f64)],
        });
        families.push(Family {
            name: "glory_service_instances",
            help: "Instances placed (running, starting, draining or stopped).",
            kind: "gauge",
            samples: vec![(
                String::new(),
                services.iter().map(|r| r.instances.len()).sum::<usize>() as f64,
            )],
        });
        families.push(Family {
            name: "glory_services_reconcile_passes_total",
            help: "Passes of the services reconciler.",
            kind: "counter",
            samples: vec![(String::new(), s.passes.load(Ordering::Relaxed) as f64)],
        });
        families.push(Family {
            name: "glory_services_reconcile_cpu_seconds_total",
            help: "CPU time the services reconciler's passes used.",
            kind: "counter",
            samples: vec![(
                String::new(),
                s.pass_cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
            )],
        });
    }
    let alerts = cluster.monitoring.alerts().list();
    let mut by_level = std::collections::BTreeMap::new();
    for a in alerts
        .iter()
        .filter(|a| a.state != glory_protocol::monitoring::AlertState::Resolved)
    {
        *by_level
            .entry((a.key.level.as_str(), a.state.as_str()))
            .or_insert(0u64) += 1;
    }
    let mut alert_samples = Vec::new();
    for level in ["info", "warning", "critical"] {
        for state in ["pending", "firing"] {
            let n = by_level.get(&(level, state)).copied().unwrap_or(0);
            alert_samples.push((labels(&[("level", level), ("state", state)]), n as f64));
        }
    }
    families.push(Family {
        name: "glory_alerts",
        help: "Active alerts by level and state.",
        kind: "gauge",
        samples: alert_samples,
    });
    families.push(Family {
        name: "glory_keymaster_available",
        help: "Whether the key master answered the last probe (1) or not (0).",
        kind: "gauge",
        samples: vec![(
            String::new(),
            f64::from(u8::from(cluster.keymaster_available())),
        )],
    });
    families.push(Family {
        name: "glory_keymaster_writes_total",
        help: "Key master operations this cluster master wrote since it started.",
        kind: "counter",
        samples: vec![(String::new(), cluster.keymaster_writes() as f64)],
    });
    families.push(Family {
        name: "glory_node_transitions_total",
        help: "Node state transitions into each state since this cluster master started.",
        kind: "counter",
        samples: cluster
            .transition_counts()
            .into_iter()
            .map(|(s, n)| (labels(&[("state", s.as_str())]), n as f64))
            .collect(),
    });
    families.push(Family {
        name: "glory_uptime_seconds",
        help: "Seconds since this cluster master started.",
        kind: "gauge",
        samples: vec![(String::new(), cluster.started.elapsed().as_secs_f64())],
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&families),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_well_formed() {
        let text = render(&[Family {
            name: "glory_x",
            help: "An example.",
            kind: "gauge",
            samples: vec![(labels(&[("group", "g\"0\\1")]), 2.0), (String::new(), 0.5)],
        }]);
        assert_eq!(
            text,
            "# HELP glory_x An example.\n# TYPE glory_x gauge\nglory_x{group=\"g\\\"0\\\\1\"} 2\nglory_x 0.5\n"
        );
    }
}
