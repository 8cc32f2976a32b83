//! `glory image`, `glory profiles`, `glory config` and `glory software`: OS images,
//! which image and configuration nodes get, what a node's configuration renders to,
//! and software packages streamed onto running nodes. Uploads show a progress bar.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{print_json, s};
use crate::client::{urlencode, ApiClient};
use crate::table::{render, when_value};

#[derive(Subcommand)]
pub enum ImageAction {
    /// Build a Debian image with the agent (root, mmdebstrap, squashfs-tools): `glory
    /// image build web --suite bookworm --packages nginx,curl`.
    Build {
        name: String,
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// More Debian packages, comma-separated.
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// A Debian mirror (default: this machine's apt sources).
        #[arg(long)]
        mirror: Option<String>,
        /// The agent to install (default: glory-node-agent beside this binary).
        #[arg(long)]
        agent: Option<PathBuf>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Import existing files as a new version of an image: `glory image import web
    /// --kernel vmlinuz --initrd initrd.img --rootfs root.squashfs`.
    Import {
        name: String,
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        #[arg(long)]
        rootfs: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List images (every version), or one image's versions.
    List { name: Option<String> },
    /// Write an image's `.torrent` (its seeder starts): `glory image torrent web -o
    /// web.torrent`, then e.g. `aria2c web.torrent`.
    Torrent {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Delete an image (`NAME`) or one version (`NAME:VERSION`); refused while a
    /// profile uses it.
    Rm { image: String },
}

#[derive(Subcommand)]
pub enum ProfilesAction {
    /// Create or replace a profile from a TOML or JSON file: `image`, `image_version`,
    /// `mode` (diskless, disk), `[match]` (nodes, groups, labels, pools), `[config]`
    /// (hostname, ssh_authorized_keys, ntp_servers, dns_servers, interfaces, agent,
    /// files, drift). See docs/PROVISIONING.md.
    Set {
        name: String,
        #[arg(long, short)]
        file: PathBuf,
    },
    List,
    Show {
        name: String,
    },
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// What a node's configuration renders to: its profile, image and files.
    Render { node: String },
    /// What the node applied and installed, and what drifted.
    Status { node: String },
}

#[derive(Subcommand)]
pub enum SoftwareAction {
    /// Upload a package (a tar.zst) as a version: `glory software add tool 1.2
    /// tool-1.2.tar.zst`.
    Add {
        name: String,
        version: String,
        file: PathBuf,
    },
    /// Install a version on nodes: of pools, of services, of groups, with labels, or
    /// named (`--all` for every node). Adds to the package's installations
    /// (`--replace`: instead of them).
    Install {
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        pool: Vec<String>,
        #[arg(long)]
        service: Vec<String>,
        #[arg(long)]
        group: Vec<String>,
        /// `key=value`, repeatable.
        #[arg(long)]
        label: Vec<String>,
        #[arg(long)]
        node: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        replace: bool,
    },
    /// Stop installing a package anywhere (nodes remove it).
    Uninstall {
        name: String,
    },
    List,
    /// Delete a package (`NAME`) or a version (`NAME:VERSION`) no installation uses.
    Rm {
        package: String,
    },
}

fn progress_bar(what: &str, len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Upload `path` with a progress bar: its `{sha256, size}`.
pub(crate) async fn upload(client: &ApiClient, what: &str, path: &Path) -> anyhow::Result<Value> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    let bar = progress_bar(what, len);
    let inc = bar.clone();
    let (sha256, size) = client.upload(path, move |n| inc.inc(n)).await?;
    bar.finish();
    Ok(json!({"sha256": sha256, "size": size}))
}

/// `base/NAME` or, for `NAME:VERSION`, `base/NAME/VERSION`.
fn versioned_path(base: &str, text: &str) -> String {
    match text.split_once(':') {
        Some((n, v)) => format!("{base}/{}/{}", urlencode(n), urlencode(v)),
        None => format!("{base}/{}", urlencode(text)),
    }
}

fn mib(bytes: &Value) -> String {
    bytes
        .as_u64()
        .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

pub fn images_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                s(&i["name"]),
                s(&i["version"]),
                mib(&i["size"]),
                s(&i["sha256"]).chars().take(12).collect(),
                when_value(&i["created_ms"], "-"),
                s(&i["description"]),
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "VERSION",
            "SIZE",
            "SHA256",
            "CREATED",
            "DESCRIPTION",
        ],
        &rows,
    )
}

pub async fn image(client: &ApiClient, action: ImageAction, as_json: bool) -> anyhow::Result<()> {
    let r = match action {
        ImageAction::Build {
            name,
            suite,
            packages,
            mirror,
            agent,
            description,
        } => {
            let opts = crate::image_build::BuildOptions {
                name,
                suite,
                packages,
                mirror,
                agent,
                description,
            };
            crate::image_build::build(client, opts).await?
        }
        ImageAction::Import {
            name,
            kernel,
            initrd,
            rootfs,
            description,
        } => {
            let kernel = upload(client, "kernel", &kernel).await?;
            let initrd = upload(client, "initrd", &initrd).await?;
            let rootfs = upload(client, "rootfs", &rootfs).await?;
            let body = json!({"name": name, "kernel": kernel, "initrd": initrd,
                "rootfs": rootfs, "description": description});
            client
                .call(Method::POST, "/api/v1/images", Some(body))
                .await?
        }
        ImageAction::Torrent { name, version, out } => {
            let mut path = format!("/api/v1/images/{}/torrent", urlencode(&name));
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let bytes = client.get_bytes(&path).await?;
            std::fs::write(&out, &bytes).with_context(|| format!("write {}", out.display()))?;
            json!({"torrent": out.display().to_string(), "bytes": bytes.len()})
        }
        ImageAction::List { name } => match name {
            Some(n) => {
                let r = client
                    .get(&format!("/api/v1/images/{}", urlencode(&n)))
                    .await?;
                json!({"items": r["versions"]})
            }
            None => client.get("/api/v1/images").await?,
        },
        ImageAction::Rm { image } => {
            let path = versioned_path("/api/v1/images", &image);
            client.call(Method::DELETE, &path, None).await?
        }
    };
    if as_json {
        print_json(&r);
    } else if let Some(items) = r["items"].as_array() {
        print!("{}", images_table(items));
    } else if let Some(t) = r["torrent"].as_str() {
        println!("wrote {t} ({} bytes)", s(&r["bytes"]));
    } else if let Some(gone) = r["deleted"].as_array() {
        for i in gone {
            println!("deleted {} version {}", s(&i["name"]), s(&i["version"]));
        }
    } else {
        println!(
            "image {} version {} ({})",
            s(&r["name"]),
            s(&r["version"]),
            mib(&r["size"])
        );
    }
    Ok(())
}

/// A profile file (TOML, or JSON when it says so) as the API's JSON.
pub fn profile_body(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text).with_context(|| format!("{}", path.display()));
    }
    let value: toml::Value =
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    Ok(serde_json::to_value(value)?)
}

pub async fn profiles(
    client: &ApiClient,
    action: ProfilesAction,
    as_json: bool,
) -> anyhow::Result<()> {
    let r = match action {
        ProfilesAction::Set { name, file } => {
            let body = profile_body(&file)?;
            let path = format!("/api/v1/profiles/{}", urlencode(&name));
            client.call(Method::PUT, &path, Some(body)).await?
        }
        ProfilesAction::List => client.get("/api/v1/profiles").await?,
        ProfilesAction::Show { name } => {
            client
                .get(&format!("/api/v1/profiles/{}", urlencode(&name)))
                .await?
        }
        ProfilesAction::Rm { name } => {
            let path = format!("/api/v1/profiles/{}", urlencode(&name));
            client.call(Method::DELETE, &path, None).await?
        }
    };
    if as_json || r.get("items").is_none() {
        print_json(&r);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let image = match (&p["image"], &p["image_version"]) {
                (Value::String(i), Value::Number(v)) => format!("{i}:{v}"),
                (Value::String(i), _) => format!("{i} (newest)"),
                _ => "-".into(),
            };
            vec![
                s(&p["name"]),
                image,
                s(&p["mode"]),
                match_text(&p["match"]),
                when_value(&p["updated_ms"], "-"),
            ]
        })
        .collect();
    print!(
        "{}",
        render(&["NAME", "IMAGE", "MODE", "MATCH", "UPDATED"], &rows)
    );
    Ok(())
}

/// `groups=g01,g02 labels=rack=12` or `all`.
fn match_text(m: &Value) -> String {
    let mut parts = Vec::new();
    for key in ["nodes", "groups", "pools"] {
        if let Some(list) = m[key].as_array() {
            let names: Vec<String> = list.iter().map(s).collect();
            parts.push(format!("{key}={}", names.join(",")));
        }
    }
    if let Some(labels) = m["labels"].as_object() {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect();
        parts.push(format!("labels={}", l.join(",")));
    }
    if let Some(services) = m["services"].as_array() {
        let names: Vec<String> = services.iter().map(s).collect();
        parts.push(format!("services={}", names.join(",")));
    }
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join(" ")
    }
}

pub async fn config(client: &ApiClient, action: ConfigAction, as_json: bool) -> anyhow::Result<()> {
    match action {
        ConfigAction::Render { node } => {
            let r = client
                .get(&format!("/api/v1/nodes/{}/config", urlencode(&node)))
                .await?;
            if as_json {
                print_json(&r);
                return Ok(());
            }
            println!(
                "# node {}: profile {}, image {}, hash {}",
                s(&r["node"]),
                r["profile"].as_str().unwrap_or("(none)"),
                match &r["image"] {
                    Value::Object(i) =>
                        format!("{}:{} ({})", s(&i["name"]), s(&i["version"]), s(&i["mode"])),
                    _ => "(none)".into(),
                },
                r["hash"].as_str().unwrap_or("-"),
            );
            for f in r["files"].as_array().map(Vec::as_slice).unwrap_or_default() {
                println!("\n==> {} (mode {}) <==", s(&f["path"]), s(&f["mode"]));
                print!("{}", s(&f["content"]));
            }
        }
        ConfigAction::Status { node } => {
            let r = client
                .get(&format!("/api/v1/nodes/{}/setup", urlencode(&node)))
                .await?;
            if as_json {
                print_json(&r);
                return Ok(());
            }
            let c = &r["config"];
            println!(
                "profile {}  config {}  applied {}  in sync {}",
                r["profile"].as_str().unwrap_or("(none)"),
                c["hash"]
                    .as_str()
                    .map_or("-".into(), |h| h[..12].to_string()),
                c["applied_hash"]
                    .as_str()
                    .map_or("-".into(), |h| h[..12.min(h.len())].to_string()),
                s(&c["in_sync"]),
            );
            if let Some(e) = c["error"].as_str() {
                println!("error: {e}");
            }
            for d in c["drift"].as_array().map(Vec::as_slice).unwrap_or_default() {
                println!("drifted: {}", s(d));
            }
            let sw = &r["software"];
            let installed = sw["installed"].as_array().cloned().unwrap_or_default();
            let failed = sw["failed"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = sw["desired"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let same = |x: &Value| x["name"] == p["name"] && x["version"] == p["version"];
                    let state = if installed.iter().any(same) {
                        "installed".to_string()
                    } else if let Some(f) = failed.iter().find(|x| same(x)) {
                        format!("failed: {}", s(&f["error"]))
                    } else {
                        "pending".to_string()
                    };
                    vec![s(&p["name"]), s(&p["version"]), state]
                })
                .collect();
            if !rows.is_empty() {
                print!("{}", render(&["PACKAGE", "VERSION", "STATE"], &rows));
            }
        }
    }
    Ok(())
}

pub async fn software(
    client: &ApiClient,
    action: SoftwareAction,
    as_json: bool,
) -> anyhow::Result<()> {
    let r = match action {
        SoftwareAction::Add {
            name,
            version,
            file,
        } => {
            let blob = upload(client, &name, &file).await?;
            let body = json!({"name": name, "version": version,
                "sha256": blob["sha256"], "size": blob["size"]});
            client
                .call(Method::POST, "/api/v1/software", Some(body))
                .await?
        }
        SoftwareAction::Install {
            name,
            version,
            pool,
            service,
            group,
            label,
            node,
            all,
            replace,
        } => {
            let mut labels = serde_json::Map::new();
            for l in &label {
                let Some((k, v)) = l.split_once('=') else {
                    bail!("--label {l:?}: key=value");
                };
                labels.insert(k.to_string(), json!(v));
            }
            let targeted = !(pool.is_empty()
                && service.is_empty()
                && group.is_empty()
                && labels.is_empty()
                && node.is_empty());
            if targeted == all {
                bail!("say where: --pool, --service, --group, --label or --node; or --all");
            }
            let installation = json!({"version": version, "services": service,
                "match": {"pools": pool, "groups": group, "labels": labels, "nodes": node}});
            let path = format!("/api/v1/software/{}", urlencode(&name));
            let mut list = if replace {
                Vec::new()
            } else {
                client.get(&path).await?["installations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            };
            list.push(installation);
            client
                .call(
                    Method::PUT,
                    &format!("{path}/installations"),
                    Some(json!({"installations": list})),
                )
                .await?
        }
        SoftwareAction::Uninstall { name } => {
            let path = format!("/api/v1/software/{}/installations", urlencode(&name));
            client
                .call(Method::PUT, &path, Some(json!({"installations": []})))
                .await?
        }
        SoftwareAction::List => client.get("/api/v1/software").await?,
        SoftwareAction::Rm { package } => {
            let path = versioned_path("/api/v1/software", &package);
            client.call(Method::DELETE, &path, None).await?
        }
    };
    if as_json {
        print_json(&r);
        return Ok(());
    }
    let list = match r["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![r],
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let versions: Vec<String> = p["versions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|v| s(&v["version"]))
                .collect();
            let installs: Vec<String> = p["installations"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|i| {
                    let mut m = i["match"].clone();
                    m["services"] = i["services"].clone();
                    format!("{} on {}", s(&i["version"]), match_text(&m))
                })
                .collect();
            vec![
                s(&p["name"]),
                versions.join(","),
                if installs.is_empty() {
                    "-".into()
                } else {
                    installs.join("; ")
                },
            ]
        })
        .collect();
    print!("{}", render(&["PACKAGE", "VERSIONS", "INSTALLED"], &rows));
    Ok(())
}

/// `glory deploy`: which nodes get which image.
#[derive(clap::Args)]
pub struct DeployArgs {
    #[arg(long)]
    pub image: String,
    /// A version (default: always the newest).
    #[arg(long)]
    pub version: Option<u32>,
    /// `diskless` (root filesystem in RAM) or `disk` (written to the first disk).
    #[arg(long, default_value = "diskless")]
    pub mode: String,
    /// `group=g03`, `label=rack=12` or `node=n-...`, comma-separated, repeatable.
    #[arg(long)]
    pub filter: Vec<String>,
    /// The profile to create or change (default: `deploy-<image>`); its first-boot
    /// configuration is kept.
    #[arg(long)]
    pub profile: Option<String>,
    /// Do not power-cycle the nodes (they get the image at their next boot).
    #[arg(long)]
    pub no_reboot: bool,
    /// Give up waiting after this long, seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

/// The node match a deploy's `--filter`s mean.
pub fn deploy_match(filters: &[String]) -> anyhow::Result<Value> {
    let (mut groups, mut nodes, mut labels) = (Vec::new(), Vec::new(), serde_json::Map::new());
    for f in filters.iter().flat_map(|f| f.split(',')) {
        match f.split_once('=') {
            Some(("group", g)) => groups.push(json!(g)),
            Some(("node", n)) => nodes.push(json!(n)),
            Some(("label", kv)) => match kv.split_once('=') {
                Some((k, v)) => {
                    labels.insert(k.to_string(), json!(v));
                }
                None => bail!("--filter label={kv}: label=key=value"),
            },
            _ => bail!("--filter {f:?}: group=G, node=N or label=K=V"),
        }
    }
    if groups.is_empty() && nodes.is_empty() && labels.is_empty() {
        bail!("--filter: say which nodes (group=g03, node=n-..., label=rack=12)");
    }
    Ok(json!({"groups": groups, "nodes": nodes, "labels": labels}))
}

/// Point the nodes of `--filter` at an image, power-cycle them, and follow each until
/// it is up on the image, with a progress bar.
pub async fn deploy(client: &ApiClient, args: DeployArgs, as_json: bool) -> anyhow::Result<()> {
    if !["diskless", "disk"].contains(&args.mode.as_str()) {
        bail!("--mode: diskless or disk");
    }
    let matches = deploy_match(&args.filter)?;
    let name = args
        .profile
        .clone()
        .unwrap_or_else(|| format!("deploy-{}", args.image));
    let path = format!("/api/v1/profiles/{}", urlencode(&name));
    let (status, existing) = client.request(Method::GET, &path, None).await?;
    let config = if status == 200 {
        existing["config"].clone()
    } else {
        json!({})
    };
    let profile = json!({"image": args.image, "image_version": args.version, "mode": args.mode,
        "match": matches, "config": config});
    client.call(Method::PUT, &path, Some(profile)).await?;
    // The nodes it matches now.
    let mut targets: Vec<String> = Vec::new();
    for n in client.all_nodes("").await? {
        let id = s(&n["id"]);
        let cfg = client
            .get(&format!("/api/v1/nodes/{}/config", urlencode(&id)))
            .await;
        if cfg.is_ok_and(|c| c["profile"] == name.as_str()) {
            targets.push(id);
        }
    }
    if targets.is_empty() {
        bail!("profile {name} is set, but no node matches it now");
    }
    let image = match args.version {
        Some(v) => {
            client
                .get(&format!("/api/v1/images/{}/{v}", urlencode(&args.image)))
                .await?
        }
        None => {
            let all = client
                .get(&format!("/api/v1/images/{}", urlencode(&args.image)))
                .await?;
            all["versions"]
                .as_array()
                .and_then(|v| v.last())
                .cloned()
                .unwrap_or_default()
        }
    };
    let version = image["version"].as_u64().unwrap_or_default();
    // A node counts once it came up again after the power cycle (its `up` is new).
    let mut up_since = std::collections::BTreeMap::new();
    if !args.no_reboot {
        for id in &targets {
            let n = client
                .get(&format!("/api/v1/nodes/{}", urlencode(id)))
                .await?;
            up_since.insert(id.clone(), n["state_since_ms"].clone());
        }
    }
    if !args.no_reboot {
        let r = client
            .call(
                Method::POST,
                "/api/v1/power",
                Some(json!({"action": "cycle", "nodes": targets})),
            )
            .await?;
        for item in r["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if item["ok"] != true {
                eprintln!(
                    "{}: power cycle failed: {}",
                    s(&item["node"]),
                    s(&item["error"])
                );
            }
        }
    }
    let bar = indicatif::ProgressBar::new(targets.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} nodes {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("{}:{version}", args.image));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout);
    let mut pending = targets.clone();
    let mut done = Vec::new();
    while !pending.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let mut still = Vec::new();
        for id in pending {
            let n = client
                .get(&format!("/api/v1/nodes/{}", urlencode(&id)))
                .await
                .unwrap_or_default();
            let on = n["state"] == "up"
                && up_since
                    .get(&id)
                    .is_none_or(|before| *before != n["state_since_ms"])
                && n["inventory"]["image"] == args.image.as_str()
                && n["inventory"]["image_version"].as_u64() == Some(version);
            if on {
                bar.println(format!("{id}: up on {}:{version}", args.image));
                bar.inc(1);
                done.push(id);
            } else {
                still.push(id);
            }
        }
        pending = still;
    }
    bar.finish();
    if as_json {
        print_json(
            &json!({"profile": name, "image": args.image, "version": version,
            "deployed": done, "pending": pending}),
        );
    }
    if !pending.is_empty() {
        bail!(
            "{} of {} nodes not up on {}:{version} within {} s: {}",
            pending.len(),
            targets.len(),
            args.image,
            args.timeout,
            pending.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
