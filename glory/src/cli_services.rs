//! `glory services`: create, list, show, remove, scale, start, stop and restart
//! services; their instances' output and the autoscaler's decisions
//! (docs/SERVICES.md). The spec is built here as JSON; the API validates it and names
//! the field of the first error, so only what the flags themselves can get wrong is
//! checked before sending.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{print_json, s};
use crate::client::{urlencode, ApiClient};
use crate::table::{render, when_value};

// Parsed once per run: the size of `Create` costs nothing worth boxing it for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ServicesAction {
    /// Create a service: `glory services create web --pool p1 --health http:/
    /// --instances 2:3:10 --balancer 127.0.0.1:8080 -- python3 -m http.server {port}`.
    Create(CreateArgs),
    /// List services: instances by health, balancer, state.
    List,
    /// One service: its spec, balancer and instances.
    Show { name: String },
    /// Delete a service: its instances are stopped and its balancer closed.
    #[command(alias = "delete")]
    Rm { name: String },
    /// Set how many instances run (within the service's min and max).
    Scale { name: String, desired: u32 },
    /// Start a stopped service on the nodes it ran on.
    Start { name: String },
    /// Stop every instance; placements are kept for `start`.
    Stop { name: String },
    /// Rolling restart, keeping at least min instances healthy.
    Restart { name: String },
    /// The last lines of each instance's output, prefixed with the instance id.
    Logs {
        name: String,
        /// Only this instance (`web-3`).
        #[arg(long)]
        instance: Option<String>,
    },
    /// The autoscaler's policy and its recent decisions, with their inputs.
    Scaling { name: String },
}

/// `glory services create`: a spec from flags, or from `--file`.
#[derive(Args)]
pub struct CreateArgs {
    /// The service's name (with --file: taken from the file when left out).
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// A JSON ServiceSpec (`-` reads it from stdin), instead of the flags below.
    #[arg(long, value_name = "PATH", conflicts_with_all = SPEC_FLAGS)]
    pub file: Option<PathBuf>,
    /// The pool whose nodes run the instances (its tenant owns the service).
    #[arg(long, required_unless_present = "file")]
    pub pool: Option<String>,
    /// The instances' port; 0 lets each agent pick a free one (`{port}` and PORT).
    #[arg(long)]
    pub port: Option<u16>,
    /// Health check: tcp, http (path /), http:/PATH, or exec:'COMMAND ARGS'.
    #[arg(long, value_name = "CHECK")]
    pub health: Option<String>,
    /// Seconds between health checks (default 5).
    #[arg(long, value_name = "SECONDS")]
    pub interval: Option<u32>,
    /// Seconds a health check may take (default 2).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// Failed checks in a row before an instance is replaced (default 3).
    #[arg(long, value_name = "N")]
    pub failures: Option<u32>,
    /// Instance counts in one flag: MIN:DESIRED:MAX (`2:3:10`).
    #[arg(long, value_name = "MIN:DESIRED:MAX", conflicts_with_all = ["min", "desired", "max"])]
    pub instances: Option<String>,
    /// Fewest instances (default 1, or 0 with --desired 0).
    #[arg(long)]
    pub min: Option<u32>,
    /// Instances to start with (default: --min, or 1).
    #[arg(long)]
    pub desired: Option<u32>,
    /// Most instances (default: --desired, at least 1).
    #[arg(long)]
    pub max: Option<u32>,
    /// Environment of the instances, NAME=VALUE (repeat the flag).
    #[arg(long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Autoscale on this metric: cpu.percent, requests_per_sec or a monitor item.
    #[arg(long, value_name = "METRIC", requires = "target")]
    pub scale_on: Option<String>,
    /// The metric's value per instance the autoscaler keeps.
    #[arg(long, requires = "scale_on")]
    pub target: Option<f64>,
    /// Seconds the load must stay low before scaling down (default 300).
    #[arg(long, value_name = "SECONDS", requires = "scale_on")]
    pub scale_down_window: Option<u32>,
    /// Put an L4 load balancer in front, listening on IP:PORT.
    #[arg(long, value_name = "IP:PORT")]
    pub balancer: Option<String>,
    /// The balancer's algorithm (default roundrobin).
    #[arg(long, requires = "balancer", value_parser = ["roundrobin", "leastconn", "source"])]
    pub algorithm: Option<String>,
    /// The balancer's driver (default haproxy).
    #[arg(long, requires = "balancer",
          value_parser = ["haproxy", "nftables", "ipvs", "keepalived"])]
    pub driver: Option<String>,
    /// The command line as one string, split like a shell does
    /// (`--command "python3 -m http.server {port}"`); or give the words after `--`.
    #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
    pub command: Option<String>,
    /// The command line, word by word, after `--`.
    #[arg(last = true, value_name = "PROGRAM AND ARGS")]
    pub words: Vec<String>,
}

/// The flags that describe the spec, which `--file` replaces.
const SPEC_FLAGS: [&str; 19] = [
    "pool",
    "port",
    "health",
    "interval",
    "timeout",
    "failures",
    "instances",
    "min",
    "desired",
    "max",
    "env",
    "scale_on",
    "target",
    "scale_down_window",
    "balancer",
    "algorithm",
    "driver",
    "command",
    "words",
];

/// `--health`: `tcp`, `http`, `http:/PATH` or `exec:COMMAND`, as the spec's
/// `{kind, path}`.
pub fn parse_health(check: &str) -> anyhow::Result<Value> {
    let (kind, rest) = match check.split_once(':') {
        Some((kind, rest)) => (kind, Some(rest)),
        None => (check, None),
    };
    match (kind, rest) {
        ("tcp", None) => Ok(json!({"kind": "tcp"})),
        ("tcp", Some(_)) => bail!("--health {check}: a tcp check has no path; write tcp"),
        ("http", None) => Ok(json!({"kind": "http", "path": "/"})),
        ("http", Some(path)) => {
            if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
                bail!(
                    "--health {check}: the path starts with '/' and has no spaces (http:/healthz)"
                );
            }
            Ok(json!({"kind": "http", "path": path}))
        }
        ("exec", rest) => match rest.map(str::trim).filter(|c| !c.is_empty()) {
            Some(command) => Ok(json!({"kind": "exec", "path": command})),
            None => bail!("--health {check}: give the command to run: exec:'COMMAND ARGS'"),
        },
        _ => bail!("--health {check}: use tcp, http, http:/PATH or exec:'COMMAND ARGS'"),
    }
}

/// `{min, desired, max}` from `--instances MIN:DESIRED:MAX`, or from `--min`,
/// `--desired` and `--max` with their defaults; in order, or an error naming the flags.
pub fn parse_instances(
    spec: Option<&str>,
    min: Option<u32>,
    desired: Option<u32>,
    max: Option<u32>,
) -> anyhow::Result<Value> {
    let (min, desired, max) = match spec {
        Some(spec) => {
            let numbers: Option<Vec<u32>> =
                spec.split(':').map(|p| p.trim().parse().ok()).collect();
            match numbers.as_deref() {
                Some(&[min, desired, max]) => (min, desired, max),
                _ => bail!(
                    "--instances {spec}: write it as MIN:DESIRED:MAX, three whole numbers (2:3:10)"
                ),
            }
        }
        None => {
            let desired = desired.unwrap_or(min.unwrap_or(1));
            let min = min.unwrap_or(desired.min(1));
            (min, desired, max.unwrap_or(desired.max(min).max(1)))
        }
    };
    // Errors name the parts of `--instances`, or the flags that were given.
    let (prefix, name): (String, fn(&str) -> String) = match spec {
        Some(spec) => (format!("--instances {spec}: "), |what| {
            format!("{} ", what.to_uppercase())
        }),
        None => (String::new(), |what| format!("--{what} ")),
    };
    if min > desired {
        bail!(
            "{prefix}{}{min} is above {}{desired}",
            name("min"),
            name("desired")
        );
    }
    if desired > max {
        bail!(
            "{prefix}{}{desired} is above {}{max}",
            name("desired"),
            name("max")
        );
    }
    if max == 0 {
        bail!("{prefix}{}must be at least 1", name("max"));
    }
    Ok(json!({"min": min, "desired": desired, "max": max}))
}

/// `--env NAME=VALUE ...` as a map; a flag without `=`, or a name given twice, is
/// refused.
pub fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=').filter(|(n, _)| !n.is_empty()) else {
            bail!("--env {pair}: write it as NAME=VALUE");
        };
        if env.insert(name.to_string(), value.to_string()).is_some() {
            bail!("--env {name}: given twice");
        }
    }
    Ok(env)
}

/// The command line from `--command "..."` (split like a shell does) or the words
/// after `--`; exactly one of them.
pub fn command_words(quoted: Option<&str>, words: &[String]) -> anyhow::Result<Vec<String>> {
    match quoted {
        Some(_) if !words.is_empty() => bail!(
            "give the command either as --command \"PROGRAM ARGS\" or after --, not both"
        ),
        Some(line) => match shlex::split(line) {
            Some(words) if !words.is_empty() => Ok(words),
            Some(_) => bail!("--command is empty"),
            None => bail!("--command {line:?}: unbalanced quotes or a trailing backslash"),
        },
        None if words.is_empty() => bail!(
            "give the command to run after -- (`-- python3 -m http.server {{port}}`) or as --command \"...\""
        ),
        None => Ok(words.to_vec()),
    }
}

/// The ServiceSpec the flags describe (everything but `--file`).
pub fn spec_from_flags(a: &CreateArgs) -> anyhow::Result<Value> {
    let (Some(name), Some(pool)) = (&a.name, &a.pool) else {
        bail!("give the service's NAME and --pool, or --file");
    };
    let mut health = parse_health(a.health.as_deref().unwrap_or("tcp"))?;
    for (field, value) in [
        ("interval_seconds", a.interval),
        ("timeout_seconds", a.timeout),
        ("failures", a.failures),
    ] {
        if let Some(v) = value {
            health[field] = json!(v);
        }
    }
    let mut spec = json!({
        "name": name,
        "pool": pool,
        "command": command_words(a.command.as_deref(), &a.words)?,
        "env": parse_env(&a.env)?,
        "port": a.port.unwrap_or(0),
        "health": health,
        "instances": parse_instances(a.instances.as_deref(), a.min, a.desired, a.max)?,
    });
    if let (Some(metric), Some(target)) = (&a.scale_on, a.target) {
        if !(target.is_finite() && target > 0.0) {
            bail!("--target {target}: a positive number (the metric's value per instance)");
        }
        let mut scaling = json!({"metric": metric, "target": target});
        if let Some(w) = a.scale_down_window {
            scaling["scale_down_window_seconds"] = json!(w);
        }
        spec["scaling"] = scaling;
    }
    if let Some(listen) = &a.balancer {
        let addr: SocketAddr = listen.parse().map_err(|_| {
            anyhow::anyhow!("--balancer {listen}: write it as IP:PORT (10.0.0.10:80, [::1]:80)")
        })?;
        if addr.port() == 0 {
            bail!("--balancer {listen}: give a fixed port (clients connect to it)");
        }
        spec["balancer"] = json!({
            "listen": addr.to_string(),
            "algorithm": a.algorithm.as_deref().unwrap_or("roundrobin"),
            "driver": a.driver.as_deref().unwrap_or("haproxy"),
        });
    }
    Ok(spec)
}

/// A ServiceSpec read from a JSON file; `name` (the NAME argument) fills in a missing
/// name and must agree with one that is there.
pub fn spec_from_json(text: &str, origin: &str, name: Option<&str>) -> anyhow::Result<Value> {
    let mut spec: Value =
        serde_json::from_str(text).with_context(|| format!("--file {origin}: not JSON"))?;
    let Some(obj) = spec.as_object_mut() else {
        bail!("--file {origin}: expected a JSON object (a ServiceSpec)");
    };
    match (obj.get("name").and_then(Value::as_str), name) {
        (Some(inside), Some(given)) if inside != given => bail!(
            "--file {origin} names the service {inside:?}, not {given:?}; leave NAME out or make them agree"
        ),
        (None, Some(given)) => {
            obj.insert("name".into(), json!(given));
        }
        (None, None) => bail!("--file {origin} has no \"name\"; add it or give NAME"),
        _ => {}
    }
    Ok(spec)
}

fn read_spec_file(path: &std::path::Path, name: Option<&str>) -> anyhow::Result<Value> {
    let origin = path.display().to_string();
    let text = if origin == "-" {
        std::io::read_to_string(std::io::stdin()).context("--file -: read stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("--file {origin}: read"))?
    };
    spec_from_json(&text, &origin, name)
}

fn service_path(name: &str, rest: &str) -> String {
    format!("/api/v1/services/{}{rest}", urlencode(name))
}

fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// One word for a service's condition, worst first. Fewer healthy instances than
/// desired with none failing means they are on their way (`starting`).
pub fn service_state(v: &Value) -> String {
    let (desired, healthy) = (count(&v["desired"]), count(&v["healthy"]));
    let unhealthy = count(&v["unhealthy"]);
    if v["stopped"].as_bool() == Some(true) {
        "stopped".into()
    } else if !v["balancer"]["error"].is_null() {
        "balancer-failing".into()
    } else if !v["restarting"].is_null() {
        let pending = &v["restarting"]["pending"];
        let pending = pending
            .as_array()
            .map_or_else(|| s(pending), |p| p.len().to_string());
        format!("restarting ({pending} pending)")
    } else if healthy >= desired {
        "ok".into()
    } else if unhealthy == 0 {
        "starting".into()
    } else if healthy == 0 {
        "down".into()
    } else {
        "degraded".into()
    }
}

/// A JSON array's items, comma-separated.
fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| s(v))
}

fn balancer_cell(b: &Value) -> String {
    if b.is_null() {
        return "-".into();
    }
    format!("{} {}", s(&b["listen"]), s(&b["driver"]))
}

/// The table of `glory services list`.
pub fn services_table(r: &Value) -> String {
    let rows: Vec<Vec<String>> = items(r)
        .iter()
        .map(|v| {
            vec![
                s(&v["name"]),
                s(&v["pool"]),
                s(&v["desired"]),
                s(&v["healthy"]),
                s(&v["starting"]),
                s(&v["unhealthy"]),
                balancer_cell(&v["balancer"]),
                service_state(v),
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "POOL",
            "DESIRED",
            "HEALTHY",
            "STARTING",
            "UNHEALTHY",
            "BALANCER",
            "STATE",
        ],
        &rows,
    )
}

fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

fn health_line(h: &Value) -> String {
    let check = match h["path"].as_str() {
        Some(path) if h["kind"] == "exec" => format!("exec '{path}'"),
        Some(path) => format!("{} {path}", s(&h["kind"])),
        None => s(&h["kind"]),
    };
    format!(
        "{check} every {}s, timeout {}s, unhealthy after {} failures",
        s(&h["interval_seconds"]),
        s(&h["timeout_seconds"]),
        s(&h["failures"])
    )
}

fn policy_line(p: &Value) -> String {
    if p.is_null() {
        return "none (the count changes only by `glory services scale`)".into();
    }
    format!(
        "{} at {} per instance, scale down after {}s",
        s(&p["metric"]),
        number(&p["target"]),
        s(&p["scale_down_window_seconds"])
    )
}

/// A command line as one could type it: words with spaces or quotes quoted.
fn command_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.is_empty() || w.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
                shlex::try_quote(w).map_or_else(|_| format!("{w:?}"), |q| q.into_owned())
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ADDRESS:PORT` of an instance, as far as it is known.
fn endpoint(i: &Value) -> String {
    match (i["address"].as_str(), i["port"].as_u64().filter(|p| *p > 0)) {
        (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, Some(p)) => format!("-:{p}"),
        (None, None) => "-".into(),
    }
}

/// The instances table of `glory services show`.
pub fn instances_table(instances: &[Value]) -> String {
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                s(&i["id"]),
                s(&i["node"]),
                endpoint(i),
                s(&i["state"]),
                when_value(&i["since"], "-"),
                s(&i["restarts"]),
                match i["reason"].as_str() {
                    Some("") | None => "-".into(),
                    Some(r) => r.to_string(),
                },
            ]
        })
        .collect();
    render(
        &[
            "ID",
            "NODE",
            "ADDRESS:PORT",
            "STATE",
            "SINCE",
            "RESTARTS",
            "REASON",
        ],
        &rows,
    )
}

/// What `glory services show` prints: the service, then its instances.
pub fn service_text(v: &Value, instances: &[Value]) -> String {
    use std::fmt::Write;
    let spec = &v["spec"];
    let mut out = String::new();
    let _ = writeln!(out, "service    {}", s(&v["name"]));
    let _ = writeln!(
        out,
        "pool       {} (tenant {})",
        s(&v["pool"]),
        s(&v["tenant"])
    );
    let _ = writeln!(out, "state      {}", service_state(v));
    let command: Vec<String> = spec["command"]
        .as_array()
        .map(|c| c.iter().map(s).collect())
        .unwrap_or_default();
    let _ = writeln!(out, "command    {}", command_line(&command));
    if let Some(env) = spec["env"].as_object().filter(|e| !e.is_empty()) {
        let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
        let _ = writeln!(out, "env        {}", pairs.join(" "));
    }
    let port = match spec["port"].as_u64() {
        Some(0) | None => "picked by each agent".to_string(),
        Some(p) => p.to_string(),
    };
    let _ = writeln!(out, "port       {port}");
    let _ = writeln!(out, "health     {}", health_line(&spec["health"]));
    let i = &spec["instances"];
    let _ = writeln!(
        out,
        "instances  desired {} (min {}, max {}): {} healthy, {} starting, {} unhealthy, {} stopping",
        s(&v["desired"]),
        s(&i["min"]),
        s(&i["max"]),
        s(&v["healthy"]),
        s(&v["starting"]),
        s(&v["unhealthy"]),
        s(&v["stopping"])
    );
    let _ = writeln!(out, "scaling    {}", policy_line(&spec["scaling"]));
    let b = &v["balancer"];
    if b.is_null() {
        let _ = writeln!(out, "balancer   -");
    } else {
        let rate = b["requests_per_sec"]
            .as_f64()
            .map(|r| format!(", {r:.1} req/s"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "balancer   {} {} {}: {} serving{rate}",
            s(&b["listen"]),
            s(&b["driver"]),
            s(&b["algorithm"]),
            s(&b["serving"])
        );
        if !b["error"].is_null() {
            let _ = writeln!(out, "           error: {}", s(&b["error"]));
        }
    }
    if !v["restarting"].is_null() {
        let _ = writeln!(
            out,
            "restart    rolling since {}, pending {}",
            when_value(&v["restarting"]["since"], "-"),
            list(&v["restarting"]["pending"])
        );
    }
    let _ = writeln!(out, "created    {}", when_value(&v["created_ms"], "-"));
    out.push('\n');
    if instances.is_empty() {
        out.push_str("no instances\n");
    } else {
        out.push_str(&instances_table(instances));
    }
    out
}

/// The decisions table of `glory services scaling`.
pub fn decisions_table(decisions: &[Value]) -> String {
    let rows: Vec<Vec<String>> = decisions
        .iter()
        .map(|d| {
            vec![
                when_value(&d["at"], "-"),
                s(&d["metric"]),
                number(&d["value"]),
                s(&d["current"]),
                s(&d["desired"]),
                s(&d["reason"]),
            ]
        })
        .collect();
    render(
        &["AT", "METRIC", "VALUE", "CURRENT", "DESIRED", "REASON"],
        &rows,
    )
}

/// `glory services logs`: each instance's lines, prefixed with its id.
pub fn logs_text(r: &Value) -> String {
    let instances = items(r);
    let width = instances
        .iter()
        .map(|i| s(&i["instance"]).chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for i in instances {
        let id = s(&i["instance"]);
        for line in i["lines"].as_array().into_iter().flatten() {
            out.push_str(&format!("{id:<width$} | {}\n", s(line)));
        }
    }
    out
}

/// What `create` and the actions say for people.
fn summary(v: &Value) -> String {
    format!(
        "desired {}, {} healthy, {} starting; {}",
        s(&v["desired"]),
        s(&v["healthy"]),
        s(&v["starting"]),
        service_state(v)
    )
}

pub async fn services(
    client: &ApiClient,
    action: ServicesAction,
    as_json: bool,
) -> anyhow::Result<()> {
    match action {
        ServicesAction::Create(args) => {
            let spec = match &args.file {
                Some(path) => read_spec_file(path, args.name.as_deref())?,
                None => spec_from_flags(&args)?,
            };
            let v = client
                .call(Method::POST, "/api/v1/services", Some(spec))
                .await?;
            if as_json {
                print_json(&v);
            } else {
                let name = s(&v["name"]);
                println!(
                    "service {name} created on pool {}: {}",
                    s(&v["pool"]),
                    summary(&v)
                );
                if !v["balancer"].is_null() {
                    println!(
                        "balancer on {} ({})",
                        s(&v["balancer"]["listen"]),
                        s(&v["balancer"]["driver"])
                    );
                }
                println!("watch it come up: glory services show {name}");
            }
        }
        ServicesAction::List => {
            let r = client.get("/api/v1/services").await?;
            if as_json {
                print_json(&r["items"]);
            } else {
                print!("{}", services_table(&r));
            }
        }
        ServicesAction::Show { name } => {
            let mut v = client.get(&service_path(&name, "")).await?;
            let instances = client.get(&service_path(&name, "/instances")).await?;
            if as_json {
                v["instances"] = instances["items"].clone();
                print_json(&v);
            } else {
                print!("{}", service_text(&v, items(&instances)));
            }
        }
        ServicesAction::Rm { name } => {
            client
                .call(Method::DELETE, &service_path(&name, ""), None)
                .await?;
            if as_json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("service {name} deleted; its instances are being stopped");
            }
        }
        ServicesAction::Scale { name, desired } => {
            let v = client
                .call(
                    Method::POST,
                    &service_path(&name, "/scale"),
                    Some(json!({"desired": desired})),
                )
                .await?;
            if as_json {
                print_json(&v);
            } else {
                println!("service {name}: {}", summary(&v));
            }
        }
        ServicesAction::Start { name } => act(client, &name, "start", "started", as_json).await?,
        ServicesAction::Stop { name } => act(client, &name, "stop", "stopped", as_json).await?,
        ServicesAction::Restart { name } => {
            act(client, &name, "restart", "rolling restart begun", as_json).await?
        }
        ServicesAction::Logs { name, instance } => {
            let query = instance
                .map(|i| format!("?instance={}", urlencode(&i)))
                .unwrap_or_default();
            let r = client
                .get(&service_path(&name, &format!("/logs{query}")))
                .await?;
            if as_json {
                print_json(&r);
            } else {
                let text = logs_text(&r);
                if text.is_empty() {
                    eprintln!("no output from {} instances yet", items(&r).len());
                }
                print!("{text}");
            }
        }
        ServicesAction::Scaling { name } => {
            let r = client.get(&service_path(&name, "/scaling")).await?;
            if as_json {
                print_json(&r);
            } else {
                println!("policy   {}", policy_line(&r["policy"]));
                println!("desired  {}", s(&r["desired"]));
                if items(&r).is_empty() {
                    println!("no decisions yet");
                } else {
                    println!();
                    print!("{}", decisions_table(items(&r)));
                }
            }
        }
    }
    Ok(())
}

/// `start`, `stop`, `restart`: POST the action, say what the service does now.
async fn act(
    client: &ApiClient,
    name: &str,
    action: &str,
    done: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    let v = client
        .call(
            Method::POST,
            &service_path(name, &format!("/{action}")),
            Some(json!({})),
        )
        .await?;
    if as_json {
        print_json(&v);
    } else {
        println!("service {name} {done}: {}", summary(&v));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
