//! Process reports from agents (through their group masters): the last report per
//! node and process, which the master reconciler reads.

use glory_protocol::ProcessReport;
use tracing::warn;

use crate::cluster::Cluster;

impl Cluster {
    /// A node's whole set of processes (its agent's session started): forget what was
    /// known of it before, e.g. a master process that died with a restarted agent.
    /// `address` is where the agent connected from; a new one is stored with the node.
    pub(crate) async fn process_snapshot(
        &self,
        group: &str,
        node: &str,
        all: Vec<ProcessReport>,
        address: Option<std::net::IpAddr>,
    ) {
        let changed_record = {
            let mut reg = self.write();
            let Some(entry) = reg.nodes.get_mut(node) else {
                return;
            };
            if entry.record.group != group {
                return;
            }
            let address = address.map(|a| a.to_string());
            match address {
                Some(a) if entry.record.reached_from.as_ref() != Some(&a) => {
                    entry.record.reached_from = Some(a);
                    Some(entry.record.clone())
                }
                _ => None,
            }
        };
        {
            let mut procs = self
                .pools
                .processes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            procs.retain(|(n, _), _| n != node);
            for report in all {
                procs.insert((node.to_string(), report.id.clone()), report);
            }
        }
        self.pool_changed.notify_one();
        self.services.changed.notify_one();
        self.setup_session_started(node);
        if let Some(record) = changed_record {
            // Compared with the identity's key like a label change, so a node removed
            // meanwhile is not written back.
            if let Err(e) = self.store_node_record(&record).await {
                warn!(node_id = %node, error = %e, "could not store the node's address");
            }
        }
    }

    /// Agents reported on their processes (through their group master).
    pub(crate) fn process_reports(&self, reports: Vec<(String, ProcessReport)>) {
        let mut procs = self
            .pools
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (node, report) in reports {
            procs.insert((node, report.id.clone()), report);
        }
        drop(procs);
        self.pool_changed.notify_one();
        self.services.changed.notify_one();
    }
}
