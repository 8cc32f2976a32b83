//! `glory monitors`, `glory alerts`, `glory silences`, `glory metrics` and `glory top`.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::bench::faults::parse_duration;
use crate::cli::print_json;
use crate::client::{urlencode, ApiClient};
use crate::table::{render, when_value};

// Parsed once per command line: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum MonitorsAction {
    /// Add a monitor: `glory monitors add cpu-hot --item cpu.percent --rule 'warning > 90 for=60 recover=80'`;
    /// a process monitor: `glory monitors add ssh --unit ssh.service`; a check:
    /// `glory monitors add raid --check '/usr/lib/nagios/plugins/check_raid'`.
    Add {
        name: String,
        /// The item watched (cpu.percent, mem.used_bytes, disk.used_percent, ...;
        /// proc.alive by default for process monitors, check.status for checks).
        #[arg(long, default_value = "")]
        item: String,
        /// Process monitor: the process name, exactly.
        #[arg(long)]
        process: Option<String>,
        /// Process monitor: a regular expression over the command line.
        #[arg(long)]
        cmdline: Option<String>,
        /// Process monitor: a file holding the pid.
        #[arg(long)]
        pidfile: Option<String>,
        /// Process monitor: a systemd unit.
        #[arg(long)]
        unit: Option<String>,
        /// Check: a command run by `sh -c`, Nagios exit codes (0 ok, 1 warning,
        /// 2 critical, 3 unknown).
        #[arg(long)]
        check: Option<String>,
        /// Check: its timeout in seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// all, group=G, pool=P, node=N or labels=k=v[,k=v].
        #[arg(long, default_value = "all")]
        scope: String,
        /// Only series with these labels, `k=v[,k=v]` (e.g. mount=/).
        #[arg(long)]
        labels: Option<String>,
        /// `LEVEL OP THRESHOLD [for=S] [recover=V] [keep=S] [agg=avg|max|fraction_over:T]`;
        /// repeat for more levels (required for metric monitors).
        #[arg(long = "rule")]
        rules: Vec<String>,
        #[arg(long, default_value_t = 5)]
        interval: u64,
    },
    /// List monitors.
    List,
    /// Show one monitor.
    Show { name: String },
    /// Remove a monitor (its alerts resolve).
    Rm { name: String },
}

#[derive(Args)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub action: Option<AlertsAction>,
    /// pending, firing or resolved.
    #[arg(long)]
    pub state: Option<String>,
    /// info, warning or critical.
    #[arg(long)]
    pub level: Option<String>,
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    /// Keep printing alerts as they fire and resolve.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Subcommand)]
pub enum AlertsAction {
    /// Acknowledge an active alert.
    Ack { id: String },
}

#[derive(Subcommand)]
pub enum SilencesAction {
    /// Silence matching alerts for a while: `glory silences add --node n-1 --for 2h`.
    Add {
        #[arg(long)]
        monitor: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        level: Option<String>,
        /// How long, e.g. 30m, 2h.
        #[arg(long = "for")]
        duration: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// List silences.
    List,
    /// Remove a silence.
    Rm { id: String },
}

/// `k=v,k=v` into a map.
fn pairs(text: &str, what: &str) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("{what}: {pair:?} is not name=value"))?;
        out.insert(k.to_string(), json!(v));
    }
    Ok(out)
}

fn scope(text: &str) -> anyhow::Result<Value> {
    if text == "all" {
        return Ok(json!({"all": true}));
    }
    let (kind, rest) = text.split_once('=').with_context(|| {
        format!("scope: {text:?} is not all, group=G, pool=P, node=N or labels=k=v")
    })?;
    Ok(match kind {
        "group" | "pool" | "node" => json!({ kind: rest }),
        "labels" => json!({"labels": pairs(rest, "scope labels")?}),
        other => bail!("scope: {other:?} is not group, pool, node or labels"),
    })
}

/// `LEVEL OP THRESHOLD [for=S] [recover=V] [keep=S] [agg=...]` into a rule.
fn rule(text: &str) -> anyhow::Result<Value> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [level, op, threshold, options @ ..] = words.as_slice() else {
        bail!("rule {text:?}: expected LEVEL OP THRESHOLD, e.g. 'critical > 95'");
    };
    let threshold: f64 = threshold
        .parse()
        .with_context(|| format!("rule {text:?}: threshold {threshold:?} is not a number"))?;
    let mut r = json!({"level": level, "op": op, "threshold": threshold});
    for option in options {
        let (k, v) = option
            .split_once('=')
            .with_context(|| format!("rule {text:?}: {option:?} is not name=value"))?;
        let number = || -> anyhow::Result<f64> {
            v.parse()
                .with_context(|| format!("rule {text:?}: {k}={v} is not a number"))
        };
        match k {
            "for" => {
                r["for_seconds"] = json!(parse_duration(v).map_err(anyhow::Error::msg)?.as_secs())
            }
            "keep" => {
                r["keep_firing_seconds"] =
                    json!(parse_duration(v).map_err(anyhow::Error::msg)?.as_secs())
            }
            "recover" => r["recover_threshold"] = json!(number()?),
            "agg" => {
                r["aggregate"] = match v.split_once(':') {
                    Some((f, t)) => json!({"fn": f, "threshold": t.parse::<f64>()
                        .with_context(|| format!("rule {text:?}: {t:?} is not a number"))?}),
                    None => json!({"fn": v}),
                }
            }
            other => bail!("rule {text:?}: unknown option {other:?} (for, recover, keep, agg)"),
        }
    }
    Ok(r)
}

fn rule_text(r: &Value) -> String {
    let mut out = format!(
        "{} {} {}",
        crate::cli::s(&r["level"]),
        crate::cli::s(&r["op"]),
        r["threshold"]
    );
    if let Some(f) = r["for_seconds"].as_u64().filter(|f| *f > 0) {
        out += &format!(" for={f}s");
    }
    if !r["recover_threshold"].is_null() {
        out += &format!(" recover={}", r["recover_threshold"]);
    }
    if let Some(k) = r["keep_firing_seconds"].as_u64().filter(|k| *k > 0) {
        out += &format!(" keep={k}s");
    }
    if r["aggregate"].is_object() {
        out += &format!(" agg={}", r["aggregate"]);
    }
    out
}

pub async fn monitors(
    client: &ApiClient,
    action: MonitorsAction,
    as_json: bool,
) -> anyhow::Result<()> {
    match action {
        MonitorsAction::Add {
            name,
            item,
            process,
            cmdline,
            pidfile,
            unit,
            check,
            timeout,
            scope: scope_text,
            labels,
            rules,
            interval,
        } => {
            let mut body = json!({
                "name": name,
                "scope": scope(&scope_text)?,
                "kind": "metric",
                "item": item,
                "labels": labels.as_deref().map(|l| pairs(l, "labels")).transpose()?.unwrap_or_default(),
                "interval_seconds": interval,
                "rules": rules.iter().map(|r| rule(r)).collect::<anyhow::Result<Vec<_>>>()?,
            });
            let matcher =
                json!({"name": process, "cmdline": cmdline, "pidfile": pidfile, "unit": unit});
            let matcher: serde_json::Map<String, Value> = matcher
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !matcher.is_empty() {
                body["kind"] = "process".into();
                body["match"] = Value::Object(matcher);
            }
            if let Some(command) = check {
                body["kind"] = "check".into();
                body["command"] = command.into();
                if let Some(t) = timeout {
                    body["timeout_seconds"] = t.into();
                }
            }
            let r = client
                .call(Method::POST, "/api/v1/monitors", Some(body))
                .await?;
            if as_json {
                print_json(&r);
            } else {
                println!("monitor {} added", crate::cli::s(&r["name"]));
            }
        }
        MonitorsAction::List => {
            let r = client.get("/api/v1/monitors").await?;
            print_items(&r, as_json, &["NAME", "ITEM", "SCOPE", "RULES"], |m| {
                vec![
                    crate::cli::s(&m["name"]),
                    crate::cli::s(&m["item"]),
                    m["scope"].to_string(),
                    m["rules"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(rule_text)
                        .collect::<Vec<_>>()
                        .join("; "),
                ]
            });
        }
        MonitorsAction::Show { name } => {
            let r = client
                .get(&format!("/api/v1/monitors/{}", urlencode(&name)))
                .await?;
            print_json(&r);
        }
        MonitorsAction::Rm { name } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/monitors/{}", urlencode(&name)),
                    None,
                )
                .await?;
            if !as_json {
                println!("monitor {name} removed");
            }
        }
    }
    Ok(())
}

fn alert_row(a: &Value) -> Vec<String> {
    let mut flags = Vec::new();
    if a["acked"] == true {
        flags.push("acked");
    }
    if a["silenced"] == true {
        flags.push("silenced");
    }
    vec![
        crate::cli::s(&a["id"]),
        crate::cli::s(&a["level"]),
        crate::cli::s(&a["state"]),
        crate::cli::s(&a["monitor"]),
        a["node"].as_str().unwrap_or("(group)").to_string(),
        crate::cli::s(&a["group"]),
        match a["value"].as_f64() {
            Some(v) => format!("{v:.1}"),
            None => "-".into(),
        },
        when_value(&a["since"], "-"),
        flags.join(","),
    ]
}

const ALERT_HEADERS: [&str; 9] = [
    "ID", "LEVEL", "STATE", "MONITOR", "NODE", "GROUP", "VALUE", "SINCE", "",
];

pub async fn alerts(client: &ApiClient, args: AlertsArgs, as_json: bool) -> anyhow::Result<()> {
    if let Some(AlertsAction::Ack { id }) = args.action {
        let r = client
            .call(
                Method::POST,
                &format!("/api/v1/alerts/{}/ack", urlencode(&id)),
                None,
            )
            .await?;
        if as_json {
            print_json(&r);
        } else {
            println!("alert {id} acknowledged");
        }
        return Ok(());
    }
    let mut query = Vec::new();
    for (k, v) in [
        ("state", &args.state),
        ("level", &args.level),
        ("group", &args.group),
        ("node", &args.node),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", urlencode(v)));
        }
    }
    let r = client
        .get(&format!("/api/v1/alerts?limit=1000&{}", query.join("&")))
        .await?;
    print_items(&r, as_json, &ALERT_HEADERS, alert_row);
    if !args.watch {
        return Ok(());
    }
    let mut stream = client.events("/api/v1/events").await?;
    while let Some(msg) = stream.next().await? {
        if !msg.event.starts_with("alert_") {
            continue;
        }
        if as_json {
            println!("{}", json!({"event": msg.event, "data": msg.data}));
        } else {
            let d = &msg.data;
            println!(
                "{} {} {} {} {} value={}",
                msg.event,
                crate::cli::s(&d["level"]),
                crate::cli::s(&d["monitor"]),
                d["node"].as_str().unwrap_or("(group)"),
                crate::cli::s(&d["group"]),
                d["value"]
            );
        }
    }
    Ok(())
}

pub async fn silences(
    client: &ApiClient,
    action: SilencesAction,
    as_json: bool,
) -> anyhow::Result<()> {
    match action {
        SilencesAction::Add {
            monitor,
            node,
            group,
            level,
            duration,
            comment,
        } => {
            let d = parse_duration(&duration).map_err(anyhow::Error::msg)?;
            let body = json!({
                "matchers": {"monitor": monitor, "node": node, "group": group, "level": level},
                "ends_at": glory_protocol::now_ms() + d.as_millis() as u64,
                "comment": comment,
            });
            // Matchers not given are left out rather than sent as null.
            let mut body = body;
            if let Some(m) = body["matchers"].as_object_mut() {
                m.retain(|_, v| !v.is_null());
            }
            let r = client
                .call(Method::POST, "/api/v1/silences", Some(body))
                .await?;
            if as_json {
                print_json(&r);
            } else {
                println!("silence {} added", crate::cli::s(&r["id"]));
            }
        }
        SilencesAction::List => {
            let r = client.get("/api/v1/silences").await?;
            print_items(
                &r,
                as_json,
                &["ID", "MATCHERS", "ENDS", "", "COMMENT"],
                |s| {
                    vec![
                        crate::cli::s(&s["id"]),
                        s["matchers"].to_string(),
                        when_value(&s["ends_at"], "-"),
                        if s["active"] == true {
                            "active"
                        } else {
                            "ended"
                        }
                        .to_string(),
                        crate::cli::s(&s["comment"]),
                    ]
                },
            );
        }
        SilencesAction::Rm { id } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/silences/{}", urlencode(&id)),
                    None,
                )
                .await?;
            if !as_json {
                println!("silence {id} removed");
            }
        }
    }
    Ok(())
}

/// A list answer (`{"items": [...]}`) as JSON or as a table of `row`s.
fn print_items(r: &Value, as_json: bool, headers: &[&str], row: impl Fn(&Value) -> Vec<String>) {
    if as_json {
        print_json(&r["items"]);
    } else {
        let rows: Vec<Vec<String>> = r["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(row)
            .collect();
        print!("{}", render(headers, &rows));
    }
}

const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A sparkline of `values`, scaled to their own range.
pub fn sparkline(values: &[f64]) -> String {
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    values
        .iter()
        .map(|v| {
            let x = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
            SPARKS[((x * 7.0).round() as usize).min(7)]
        })
        .collect()
}

#[derive(Args)]
pub struct MetricsArgs {
    pub node: String,
    pub item: String,
    /// Label matchers `k=v[,k=v]`, e.g. mount=/.
    #[arg(long)]
    pub labels: Option<String>,
    /// How far back, e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Seconds per point (default: about 60 points).
    #[arg(long)]
    pub step: Option<u64>,
}

pub async fn metrics(client: &ApiClient, args: MetricsArgs, as_json: bool) -> anyhow::Result<()> {
    let since = parse_duration(&args.since).map_err(anyhow::Error::msg)?;
    let now = glory_protocol::now_ms();
    let step = args.step.unwrap_or((since.as_secs() / 60).max(1));
    let mut path = format!(
        "/api/v1/nodes/{}/metrics?item={}&from={}&to={now}&step={step}",
        urlencode(&args.node),
        urlencode(&args.item),
        now.saturating_sub(since.as_millis() as u64)
    );
    if let Some(l) = &args.labels {
        path += &format!("&labels={}", urlencode(l));
    }
    let r = client.get(&path).await?;
    if as_json {
        print_json(&r);
        return Ok(());
    }
    let points: Vec<(f64, f64, f64)> = r["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[1].as_f64()?, p[2].as_f64()?, p[3].as_f64()?)))
        .collect();
    if points.is_empty() {
        println!(
            "no samples of {} on {} in the last {}",
            args.item, args.node, args.since
        );
        return Ok(());
    }
    let min = points.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    let max = points.iter().map(|p| p.2).fold(f64::MIN, f64::max);
    let avg = points.iter().map(|p| p.0).sum::<f64>() / points.len() as f64;
    let avgs: Vec<f64> = points.iter().map(|p| p.0).collect();
    println!(
        "{} {} over {} ({} points of {}s): min {min:.2} avg {avg:.2} max {max:.2}",
        args.node,
        args.item,
        args.since,
        points.len(),
        r["step"]
    );
    println!("{}", sparkline(&avgs));
    Ok(())
}

#[derive(Args)]
pub struct TopArgs {
    /// Print once and exit (for scripts).
    #[arg(long)]
    pub once: bool,
    /// How many nodes.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Refresh period, e.g. 2s.
    #[arg(long, default_value = "2s")]
    pub every: String,
}

/// The busiest nodes by CPU, from the load their heartbeats carry.
pub async fn top(client: &ApiClient, args: TopArgs, as_json: bool) -> anyhow::Result<()> {
    let every = parse_duration(&args.every).map_err(anyhow::Error::msg)?;
    loop {
        let mut nodes = client.all_nodes("state=up").await?;
        nodes.sort_by(|a, b| {
            let cpu = |n: &Value| n["load"]["cpu"].as_f64().unwrap_or(-1.0);
            cpu(b).total_cmp(&cpu(a))
        });
        nodes.truncate(args.limit);
        if as_json {
            print_json(&Value::Array(nodes));
        } else {
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    let l = &n["load"];
                    let mem = match (l["mem_used"].as_f64(), l["mem_total"].as_f64()) {
                        (Some(u), Some(t)) if t > 0.0 => format!("{:.0}%", 100.0 * u / t),
                        _ => "-".into(),
                    };
                    vec![
                        crate::cli::s(&n["id"]),
                        crate::cli::s(&n["hostname"]),
                        crate::cli::s(&n["group"]),
                        l["cpu"].as_f64().map_or("-".into(), |c| format!("{c:.1}")),
                        l["load1"]
                            .as_f64()
                            .map_or("-".into(), |c| format!("{c:.2}")),
                        mem,
                    ]
                })
                .collect();
            if !args.once {
                // Clear the screen and go home, like top(1).
                print!("\x1b[2J\x1b[H");
            }
            print!(
                "{}",
                render(
                    &["NODE", "HOSTNAME", "GROUP", "CPU%", "LOAD1", "MEM"],
                    &rows
                )
            );
        }
        if args.once {
            return Ok(());
        }
        tokio::time::sleep(every.max(Duration::from_millis(500))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_scopes_parse_from_the_command_line() {
        let r = rule("warning > 90 for=1m recover=80 keep=30s").unwrap();
        assert_eq!(
            r,
            json!({"level": "warning", "op": ">", "threshold": 90.0, "for_seconds": 60,
                   "recover_threshold": 80.0, "keep_firing_seconds": 30})
        );
        let r = rule("critical > 30 agg=fraction_over:90").unwrap();
        assert_eq!(
            r["aggregate"],
            json!({"fn": "fraction_over", "threshold": 90.0})
        );
        assert!(rule("critical > lots")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        assert!(rule("critical").is_err());
        assert_eq!(scope("pool=fs-a").unwrap(), json!({"pool": "fs-a"}));
        assert_eq!(
            scope("labels=rack=r12").unwrap(),
            json!({"labels": {"rack": "r12"}})
        );
        assert!(scope("rack").is_err());
        assert_eq!(sparkline(&[0.0, 50.0, 100.0]), "▁▅█");
    }
}
