//! Setting nodes up: each node's first-boot configuration (its profile's templates
//! rendered with its facts) and the packages it must have, sent to its agent through
//! its group master; what the agent reports back (applied, drifted, installed,
//! failed) kept per node, shown by the API and turned into events.
//!
//! Level-triggered: a pass computes what every node should have and sends what
//! differs from what was sent; a report that does not match what the node should have
//! (an agent restarted, a message lost) makes the next pass send it again. Passes run
//! when something changed, and every [`RECHECK`] while anything is configured at all
//! (labels and pools move nodes between profiles); with no profile and no
//! installation nothing runs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use glory_keymaster::schema::images::{ProfileRecord, SoftwareRecord};
use glory_protocol::setup::{NodeConfig, PackageSpec, SetupReport};
use glory_protocol::GroupToAgent;
use glory_provisioner::firstboot::{self, NodeFacts, RenderError};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::events::EventData;

/// How often a pass runs while anything is configured, besides on changes.
pub(crate) const RECHECK: Duration = Duration::from_secs(10);

/// What was sent to a node and what its agent said.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeSetup {
    /// The configuration hash sent last (Some(None): "no configuration" was sent).
    pub sent_config: Option<Option<String>>,
    pub sent_software: Option<Vec<PackageSpec>>,
    pub report: Option<SetupReport>,
    pub reported_ms: u64,
}

#[derive(Default)]
pub(crate) struct SetupState {
    nodes: Mutex<HashMap<String, NodeSetup>>,
    pub(crate) changed: tokio::sync::Notify,
}

impl SetupState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeSetup>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn of(&self, node: &str) -> Option<NodeSetup> {
        self.lock().get(node).cloned()
    }
}

/// What a node should have: its profile, its rendered configuration (or why it cannot
/// be rendered) and its packages.
#[derive(Clone, Debug)]
pub(crate) struct Desired {
    pub profile: Option<ProfileRecord>,
    pub config: Result<Option<NodeConfig>, RenderError>,
    pub software: Vec<PackageSpec>,
}

/// The packages a node gets: per package, the version of the most specific matching
/// installation (a service's nodes count like a node list). Pure.
pub(crate) fn packages_for(
    software: &[SoftwareRecord],
    facts: &NodeFacts,
    services_of_node: &[String],
    content_url: &str,
    p2p_min_bytes: Option<u64>,
) -> Vec<PackageSpec> {
    let mut out = Vec::new();
    for s in software {
        let mut best: Option<(u32, &str)> = None;
        for inst in &s.installations {
            let service_score = if inst.services.is_empty() {
                Some(0)
            } else if inst.services.iter().any(|x| services_of_node.contains(x)) {
                Some(500)
            } else {
                None
            };
            let (Some(a), Some(b)) = (service_score, firstboot::specificity(&inst.matches, facts))
            else {
                continue;
            };
            let score = a + b;
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, &inst.version));
            }
        }
        if let Some((_, version)) = best {
            if let Some(v) = s.versions.iter().find(|v| v.version == version) {
                out.push(PackageSpec {
                    name: s.name.clone(),
                    version: v.version.clone(),
                    sha256: v.blob.sha256.clone(),
                    size: v.blob.size,
                    url: format!("{content_url}/content/{}", v.blob.sha256),
                    torrent: p2p_min_bytes
                        .is_some_and(|min| v.blob.size >= min)
                        .then(|| format!("{content_url}/torrent/{}", v.blob.sha256)),
                });
            }
        }
    }
    out.sort();
    out
}

impl Cluster {
    /// Something that decides what nodes get changed: run a pass soon.
    pub(crate) fn setup_changed(&self) {
        self.setup.changed.notify_one();
    }

    /// Where group masters and agents fetch content from this cluster master.
    pub(crate) fn content_url(&self) -> String {
        if let Some(url) = &self.settings.content_url {
            return url.trim_end_matches('/').to_string();
        }
        let api = self
            .settings
            .api_advertise
            .unwrap_or(self.settings.api_listen);
        let ip = if api.ip().is_unspecified() {
            self.settings
                .advertise
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified())
                .unwrap_or(api.ip())
        } else {
            api.ip()
        };
        let scheme = crate::https::scheme(&self.settings.api_tls);
        format!("{scheme}://{}", std::net::SocketAddr::new(ip, api.port()))
    }

    /// The facts templates see of every node (or only `only`), with the services
    /// each runs instances of.
    fn facts(&self, only: Option<&str>) -> Vec<(NodeFacts, Vec<String>)> {
        let mut services: HashMap<String, Vec<String>> = HashMap::new();
        for s in self.services.all() {
            for p in &s.instances {
                if only.is_none_or(|n| n == p.node) {
                    services
                        .entry(p.node.clone())
                        .or_default()
                        .push(s.spec.name.clone());
                }
            }
        }
        let mut out: Vec<(NodeFacts, Vec<String>)> = {
            let reg = self.read();
            let records = match only {
                Some(n) => reg.nodes.get(n).into_iter().collect::<Vec<_>>(),
                None => reg.nodes.values().collect(),
            };
            records
                .into_iter()
                .map(|entry| {
                    let r = &entry.record;
                    let facts = NodeFacts {
                        id: r.id.clone(),
                        hostname: r.hostname.clone(),
                        group: r.group.clone(),
                        labels: r.labels.clone(),
                        pools: Vec::new(),
                        mac: r
                            .inventory
                            .identity
                            .strip_prefix("mac:")
                            .map(str::to_string),
                        ip: r.reached_from.clone(),
                        cpus: r.inventory.cpus,
                        memory_mb: r.inventory.memory_bytes >> 20,
                    };
                    let svcs = services.remove(&r.id).unwrap_or_default();
                    (facts, svcs)
                })
                .collect()
        };
        // The registry's lock is released before the pools' is taken.
        let book = self.pools.book();
        for (facts, _) in &mut out {
            if let Some(pool) = book.owner(&facts.id) {
                facts.pools.push(pool.to_string());
            }
        }
        out
    }

    /// What `node` should have now.
    pub(crate) fn desired_setup(&self, node: &str) -> Option<Desired> {
        let (facts, services) = self.facts(Some(node)).pop()?;
        let profiles = self.images.profiles();
        let software = self.images.software();
        Some(self.desired_for(&facts, &services, &profiles, &software))
    }

    fn desired_for(
        &self,
        facts: &NodeFacts,
        services: &[String],
        profiles: &[ProfileRecord],
        software: &[SoftwareRecord],
    ) -> Desired {
        let profile = firstboot::select(profiles, facts).cloned();
        let config = match &profile {
            Some(p) => {
                let image = p
                    .image
                    .as_deref()
                    .and_then(|i| self.images.image(i, p.image_version));
                firstboot::render(p, facts, image.as_ref())
            }
            None => Ok(None),
        };
        Desired {
            profile,
            config,
            software: packages_for(
                software,
                facts,
                services,
                &self.content_url(),
                self.settings.p2p_min_bytes,
            ),
        }
    }

    /// One pass: send every node what differs from what it was sent.
    pub(crate) fn setup_pass(&self) {
        let profiles = self.images.profiles();
        let software = self.images.software();
        let configured =
            !profiles.is_empty() || software.iter().any(|s| !s.installations.is_empty());
        if !configured
            && self
                .setup
                .lock()
                .values()
                .all(|s| s.sent_config.is_none() && s.sent_software.is_none())
        {
            return;
        }
        let all = self.facts(None);
        let mut sends = Vec::new();
        {
            let mut state = self.setup.lock();
            for (facts, services) in all {
                let node = facts.id.clone();
                let want = self.desired_for(&facts, &services, &profiles, &software);
                let entry = state.entry(node.clone()).or_default();
                // A node that cannot be rendered keeps what it has.
                if let Ok(config) = want.config {
                    let hash = config.as_ref().map(|c| c.hash.clone());
                    // Nothing to say to a node that never had a configuration.
                    let silent = hash.is_none() && entry.sent_config.is_none();
                    if !silent && entry.sent_config.as_ref() != Some(&hash) {
                        entry.sent_config = Some(hash);
                        sends.push((node.clone(), GroupToAgent::Config(config)));
                    }
                }
                let silent = want.software.is_empty() && entry.sent_software.is_none();
                if !silent && entry.sent_software.as_ref() != Some(&want.software) {
                    entry.sent_software = Some(want.software.clone());
                    sends.push((node, GroupToAgent::Software(want.software)));
                }
            }
        }
        for (node, msg) in sends {
            self.send_to_agent(&node, msg);
        }
    }

    /// An agent's report: kept, turned into events, and what it lacks sent again.
    pub(crate) fn setup_reports(&self, reports: Vec<(String, SetupReport)>) {
        let mut events = Vec::new();
        let mut resend = false;
        for (node, report) in reports {
            let want = self.desired_setup(&node);
            let mut state = self.setup.lock();
            let entry = state.entry(node.clone()).or_default();
            let before = entry.report.take().unwrap_or_default();
            if let Some(want) = &want {
                let hash = want
                    .config
                    .as_ref()
                    .ok()
                    .map(|c| c.as_ref().map(|c| c.hash.clone()));
                if let Some(hash) = hash {
                    if hash.is_some() && report.config_hash != hash && report.config_error.is_none()
                    {
                        entry.sent_config = None;
                        resend = true;
                    }
                    if report.config_hash != before.config_hash && report.config_hash == hash {
                        events.push(EventData::ConfigApplied {
                            node: node.clone(),
                            profile: want.profile.as_ref().map(|p| p.name.clone()),
                            hash: report.config_hash.clone().unwrap_or_default(),
                        });
                    }
                }
                let installed: Vec<(&str, &str)> = report
                    .installed
                    .iter()
                    .map(|p| (p.name.as_str(), p.version.as_str()))
                    .collect();
                let missing = want.software.iter().any(|p| {
                    !installed.contains(&(p.name.as_str(), p.version.as_str()))
                        && !report
                            .failed
                            .iter()
                            .any(|f| f.name == p.name && f.version == p.version)
                });
                if missing {
                    entry.sent_software = None;
                    resend = true;
                }
            }
            if let Some(e) = &report.config_error {
                if before.config_error.as_ref() != Some(e) {
                    events.push(EventData::ConfigFailed {
                        node: node.clone(),
                        error: e.clone(),
                    });
                }
            }
            if !report.drift.is_empty() && report.drift != before.drift {
                events.push(EventData::ConfigDrift {
                    node: node.clone(),
                    paths: report.drift.clone(),
                });
            }
            for p in &report.installed {
                if !before.installed.contains(p) {
                    events.push(EventData::SoftwareInstalled {
                        node: node.clone(),
                        package: p.name.clone(),
                        version: p.version.clone(),
                    });
                }
            }
            for f in &report.failed {
                if !before.failed.contains(f) {
                    events.push(EventData::SoftwareFailed {
                        node: node.clone(),
                        package: f.name.clone(),
                        version: f.version.clone(),
                        error: f.error.clone(),
                    });
                }
            }
            entry.report = Some(report);
            entry.reported_ms = glory_protocol::now_ms();
        }
        for e in events {
            self.events.emit(None, e);
        }
        if resend {
            self.setup_changed();
        }
    }

    /// A node's agent opened a session (it may have restarted and lost what it was
    /// sent): what it should have goes again, if anything.
    pub(crate) fn setup_session_started(&self, node: &str) {
        let configured = self.images.configured();
        let mut state = self.setup.lock();
        if let Some(entry) = state.get_mut(node) {
            entry.sent_config = None;
            entry.sent_software = None;
        } else if !configured {
            return;
        }
        drop(state);
        self.setup_changed();
    }

    /// A node left the cluster: forget what it was sent.
    pub(crate) fn forget_setup(&self, node: &str) {
        self.setup.lock().remove(node);
    }
}

/// Passes on changes, and every [`RECHECK`] while anything is configured.
pub(crate) async fn setup_loop(cluster: std::sync::Arc<Cluster>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = cluster.setup.changed.notified() => {
                // Changes come in bursts (a profile and its nodes' reports).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tick.tick() => {}
        }
        let c = cluster.clone();
        // Rendering thousands of nodes' templates is CPU work: off the I/O threads.
        let _ = tokio::task::spawn_blocking(move || c.setup_pass()).await;
    }
}
