//! Profiles and first-boot configuration, pure: which profile a node gets (the most
//! specific match), and its configuration rendered from the profile's templates
//! (minijinja, strict: an undefined variable is an error, not an empty string) with
//! the node's facts and labels, as the files the agent writes.
//!
//! What becomes which file:
//!
//! | setting | file |
//! |---|---|
//! | `hostname` | `/etc/hostname` (and the running hostname) |
//! | `ssh_authorized_keys` | `/root/.ssh/authorized_keys` (0600) |
//! | `ntp_servers` | `/etc/systemd/timesyncd.conf.d/glory.conf` |
//! | `dns_servers`, `dns_search` | `/etc/resolv.conf` |
//! | `interfaces` | `/etc/systemd/network/10-glory-<name>.network` (+ `.netdev` for bonds and VLANs) |
//! | `agent` | `/etc/glory/agent.toml` |
//! | `files` | as given |

use std::collections::BTreeMap;

use glory_keymaster::schema::images::{
    DriftPolicy, FirstBootConfig, ImageRecord, InterfaceConfig, NodeMatch, ProfileRecord,
};
use glory_protocol::setup::{ConfigFile, NodeConfig};
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// What templates know of a node (`{{ node.id }}`, `{{ node.labels.rack }}`...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeFacts {
    pub id: String,
    pub hostname: String,
    pub group: String,
    pub labels: BTreeMap<String, String>,
    /// Pools it belongs to.
    pub pools: Vec<String>,
    /// Its boot MAC, when it booted from us.
    pub mac: Option<String>,
    /// The address its agent connects from.
    pub ip: Option<String>,
    pub cpus: u32,
    pub memory_mb: u64,
}

/// How specifically `m` matches `facts` (higher wins), or None when it does not.
/// Nodes 1000, groups 100, pools 10, labels 1 each; every given field must hold.
pub fn specificity(m: &NodeMatch, facts: &NodeFacts) -> Option<u32> {
    let mut score = 0;
    if !m.nodes.is_empty() {
        if !m.nodes.contains(&facts.id) {
            return None;
        }
        score += 1000;
    }
    if !m.groups.is_empty() {
        if !m.groups.contains(&facts.group) {
            return None;
        }
        score += 100;
    }
    if !m.pools.is_empty() {
        if !m.pools.iter().any(|p| facts.pools.contains(p)) {
            return None;
        }
        score += 10;
    }
    for (k, v) in &m.labels {
        if facts.labels.get(k) != Some(v) {
            return None;
        }
        score += 1;
    }
    Some(score)
}

/// The profile a node gets: the most specific match; a tie goes to the first name.
pub fn select<'a>(
    profiles: impl IntoIterator<Item = &'a ProfileRecord>,
    facts: &NodeFacts,
) -> Option<&'a ProfileRecord> {
    let mut best: Option<(u32, &ProfileRecord)> = None;
    for p in profiles {
        let Some(score) = specificity(&p.matches, facts) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((s, b)) => score > s || (score == s && p.name < b.name),
        };
        if better {
            best = Some((score, p));
        }
    }
    best.map(|(_, p)| p)
}

/// A template that does not parse or render, named by where it is in the profile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("config.{field}: {message}")]
pub struct RenderError {
    pub field: String,
    pub message: String,
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Every template of `config` with where it is (`hostname`, `files[2].content`...).
fn templates(config: &FirstBootConfig) -> Vec<(String, &str)> {
    let mut out: Vec<(String, &str)> = Vec::new();
    if let Some(h) = &config.hostname {
        out.push(("hostname".into(), h));
    }
    for (i, k) in config.ssh_authorized_keys.iter().enumerate() {
        out.push((format!("ssh_authorized_keys[{i}]"), k));
    }
    for (i, n) in config.interfaces.iter().enumerate() {
        out.push((format!("interfaces[{i}].name"), &n.name));
        if let Some(a) = &n.address {
            out.push((format!("interfaces[{i}].address"), a));
        }
        if let Some(g) = &n.gateway {
            out.push((format!("interfaces[{i}].gateway"), g));
        }
    }
    if let Some(a) = &config.agent {
        out.push(("agent".into(), a));
    }
    for (i, f) in config.files.iter().enumerate() {
        out.push((format!("files[{i}].path"), &f.path));
        out.push((format!("files[{i}].content"), &f.content));
    }
    out
}

/// Check that every template of `config` parses, every file mode and path is valid:
/// for a profile being written.
pub fn check(config: &FirstBootConfig) -> Result<(), RenderError> {
    let env = env();
    for (field, text) in templates(config) {
        env.template_from_str(text).map_err(|e| RenderError {
            field,
            message: describe(&e),
        })?;
    }
    for (i, f) in config.files.iter().enumerate() {
        parse_mode(&f.mode).map_err(|message| RenderError {
            field: format!("files[{i}].mode"),
            message,
        })?;
        // A path that is a template is checked once rendered.
        if !f.path.contains("{{") {
            check_path(&f.path).map_err(|message| RenderError {
                field: format!("files[{i}].path"),
                message,
            })?;
        }
    }
    for (i, n) in config.interfaces.iter().enumerate() {
        if n.vlan_id.is_some() != n.vlan_parent.is_some() {
            return Err(RenderError {
                field: format!("interfaces[{i}]"),
                message: "vlan_id and vlan_parent go together".into(),
            });
        }
        if n.dhcp && n.address.is_some() {
            return Err(RenderError {
                field: format!("interfaces[{i}]"),
                message: "dhcp or a static address, not both".into(),
            });
        }
    }
    Ok(())
}

fn parse_mode(mode: &str) -> Result<u32, String> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{mode:?} is not an octal file mode such as \"0644\""))
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.ends_with('/') {
        return Err(format!("{path:?}: an absolute path of a file"));
    }
    if path
        .split('/')
        .any(|c| c == ".." || c == "." || c.contains('\0'))
    {
        return Err(format!("{path:?}: no `.` or `..` components"));
    }
    Ok(())
}

#[derive(Serialize)]
struct ImageFacts<'a> {
    name: &'a str,
    version: u32,
}

#[derive(Serialize)]
struct Context<'a> {
    node: &'a NodeFacts,
    profile: &'a str,
    image: Option<ImageFacts<'a>>,
}

/// `profile`'s configuration rendered for the node of `facts`. None when the profile
/// configures nothing.
pub fn render(
    profile: &ProfileRecord,
    facts: &NodeFacts,
    image: Option<&ImageRecord>,
) -> Result<Option<NodeConfig>, RenderError> {
    let config = &profile.config;
    if config.is_empty() {
        return Ok(None);
    }
    let env = env();
    let ctx = Context {
        node: facts,
        profile: &profile.name,
        image: image.map(|i| ImageFacts {
            name: &i.name,
            version: i.version,
        }),
    };
    let r = |field: String, text: &str| -> Result<String, RenderError> {
        env.render_str(text, &ctx).map_err(|e| RenderError {
            field,
            message: describe(&e),
        })
    };
    let mut files = Vec::new();
    let mut file = |path: String, mode: u32, content: String| {
        files.push(ConfigFile {
            path,
            mode,
            content,
        })
    };
    let hostname = match &config.hostname {
        Some(h) => {
            let name = r("hostname".into(), h)?.trim().to_string();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(RenderError {
                    field: "hostname".into(),
                    message: format!("{name:?} is not a host name (letters, digits, '-', '.')"),
                });
            }
            file("/etc/hostname".into(), 0o644, format!("{name}\n"));
            Some(name)
        }
        None => None,
    };
    if !config.ssh_authorized_keys.is_empty() {
        let mut keys = String::new();
        for (i, k) in config.ssh_authorized_keys.iter().enumerate() {
            keys.push_str(r(format!("ssh_authorized_keys[{i}]"), k)?.trim());
            keys.push('\n');
        }
        file("/root/.ssh/authorized_keys".into(), 0o600, keys);
    }
    if !config.ntp_servers.is_empty() {
        file(
            "/etc/systemd/timesyncd.conf.d/glory.conf".into(),
            0o644,
            format!("[Time]\nNTP={}\n", config.ntp_servers.join(" ")),
        );
    }
    if !config.dns_servers.is_empty() || !config.dns_search.is_empty() {
        let mut text = String::new();
        for s in &config.dns_servers {
            text.push_str(&format!("nameserver {s}\n"));
        }
        if !config.dns_search.is_empty() {
            text.push_str(&format!("search {}\n", config.dns_search.join(" ")));
        }
        file("/etc/resolv.conf".into(), 0o644, text);
    }
    for (path, content) in network_files(&config.interfaces, &r)? {
        file(path, 0o644, content);
    }
    if let Some(agent) = &config.agent {
        file(
            "/etc/glory/agent.toml".into(),
            0o600,
            r("agent".into(), agent)?,
        );
    }
    for (i, f) in config.files.iter().enumerate() {
        let path = r(format!("files[{i}].path"), &f.path)?;
        check_path(&path).map_err(|message| RenderError {
            field: format!("files[{i}].path"),
            message,
        })?;
        let mode = parse_mode(&f.mode).map_err(|message| RenderError {
            field: format!("files[{i}].mode"),
            message,
        })?;
        let content = r(format!("files[{i}].content"), &f.content)?;
        file(path, mode, content);
    }
    // One file per path: the last word wins (a custom file over a generated one).
    let mut by_path: BTreeMap<String, ConfigFile> = BTreeMap::new();
    for f in files {
        by_path.insert(f.path.clone(), f);
    }
    let files: Vec<ConfigFile> = by_path.into_values().collect();
    Ok(Some(NodeConfig {
        profile: profile.name.clone(),
        hash: NodeConfig::hash_of(hostname.as_deref(), &files),
        hostname,
        files,
        repair: config.drift == DriftPolicy::Repair,
    }))
}

/// systemd-networkd files for `interfaces`: `(path, content)`.
fn network_files(
    interfaces: &[InterfaceConfig],
    r: &dyn Fn(String, &str) -> Result<String, RenderError>,
) -> Result<Vec<(String, String)>, RenderError> {
    #[derive(Default)]
    struct Iface {
        network: Vec<String>,
        link: Vec<String>,
        netdev: Option<String>,
    }
    let mut out: BTreeMap<String, Iface> = BTreeMap::new();
    fn at<'a>(out: &'a mut BTreeMap<String, Iface>, name: &str) -> &'a mut Iface {
        out.entry(name.to_string()).or_default()
    }
    for (i, n) in interfaces.iter().enumerate() {
        let name = r(format!("interfaces[{i}].name"), &n.name)?
            .trim()
            .to_string();
        if name.is_empty()
            || name.len() > 15
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(RenderError {
                field: format!("interfaces[{i}].name"),
                message: format!("{name:?} is not an interface name (at most 15 characters)"),
            });
        }
        at(&mut out, &name);
        match &n.address {
            Some(a) => {
                let address = r(format!("interfaces[{i}].address"), a)?;
                if address.parse::<ipnet::IpNet>().is_err() {
                    return Err(RenderError {
                        field: format!("interfaces[{i}].address"),
                        message: format!("{address:?} is not an address with its prefix"),
                    });
                }
                at(&mut out, &name)
                    .network
                    .push(format!("Address={address}"));
            }
            None if n.bond_members.is_empty() || n.dhcp => {
                at(&mut out, &name).network.push("DHCP=yes".into());
            }
            None => {}
        }
        if let Some(g) = &n.gateway {
            let gateway = r(format!("interfaces[{i}].gateway"), g)?;
            at(&mut out, &name)
                .network
                .push(format!("Gateway={gateway}"));
        }
        if let Some(mtu) = n.mtu {
            at(&mut out, &name).link.push(format!("MTUBytes={mtu}"));
        }
        if !n.bond_members.is_empty() {
            let mode = n.bond_mode.as_deref().unwrap_or("802.3ad");
            at(&mut out, &name).netdev = Some(format!(
                "[NetDev]\nName={name}\nKind=bond\n\n[Bond]\nMode={mode}\n"
            ));
            for m in &n.bond_members {
                at(&mut out, m).network.push(format!("Bond={name}"));
            }
        }
        if let (Some(id), Some(parent)) = (n.vlan_id, &n.vlan_parent) {
            at(&mut out, &name).netdev = Some(format!(
                "[NetDev]\nName={name}\nKind=vlan\n\n[VLAN]\nId={id}\n"
            ));
            at(&mut out, parent).network.push(format!("VLAN={name}"));
        }
    }
    let mut files = Vec::new();
    for (name, iface) in out {
        let base = format!("/etc/systemd/network/10-glory-{name}");
        if let Some(netdev) = iface.netdev {
            files.push((format!("{base}.netdev"), netdev));
        }
        let mut text = format!("[Match]\nName={name}\n");
        if !iface.link.is_empty() {
            text.push_str(&format!("\n[Link]\n{}\n", iface.link.join("\n")));
        }
        text.push_str(&format!("\n[Network]\n{}\n", iface.network.join("\n")));
        files.push((format!("{base}.network"), text));
    }
    Ok(files)
}

#[cfg(test)]
mod tests;
