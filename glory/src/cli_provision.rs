//! `glory boot` (each MAC's way from power-on to enrolled), `glory power` (remote
//! power control, one node or a filter) and `glory bmc` (a node's BMC settings; the
//! password read from a file or the terminal, never from the command line).

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{print_json, s};
use crate::client::{urlencode, ApiClient};
use crate::table::{render, when_value};

#[derive(clap::Args)]
pub struct BootArgs {
    /// Only boots in this state (discovered, booting, enrolling, enrolled, failed).
    #[arg(long)]
    pub state: Option<String>,
    /// Redraw every 2 seconds until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

#[derive(clap::Args)]
pub struct PowerArgs {
    /// A node id (or `mac:52:54:00:..` for a server not enrolled yet), then the
    /// action: on, off, cycle, reset, pxe or status. With --filter, only the action.
    pub words: Vec<String>,
    /// Act on every node matching `key=value` terms: state=, group=, label:K=V.
    #[arg(long, value_delimiter = ',')]
    pub filter: Vec<String>,
}

#[derive(clap::Subcommand)]
pub enum BmcAction {
    /// Set a node's BMC (or `mac:...` before it enrolls). The password comes from
    /// --password-file, GLORY_BMC_PASSWORD, or the terminal.
    Set {
        node: String,
        /// ipmi, redfish or qemu.
        #[arg(long)]
        driver: String,
        /// BMC host (ipmi, redfish: `https://host` or `host`), or the QMP socket (qemu).
        #[arg(long)]
        address: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
        /// Redfish system id (default: the first system).
        #[arg(long)]
        system_id: Option<String>,
        /// Do not verify the BMC's TLS certificate (self-signed BMCs).
        #[arg(long)]
        insecure_tls: bool,
    },
    /// Show a node's BMC settings (never the password).
    Show { node: String },
    /// Forget a node's BMC settings.
    Rm { node: String },
}

/// `/api/v1/nodes/{id}` or `/api/v1/boot/{mac}` for `mac:...`.
fn target_path(target: &str) -> String {
    match target.strip_prefix("mac:") {
        Some(mac) => format!("/api/v1/boot/{}", urlencode(mac)),
        None => format!("/api/v1/nodes/{}", urlencode(target)),
    }
}

fn boot_rows(r: &Value) -> Vec<Vec<String>> {
    r["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            vec![
                s(&b["mac"]),
                s(&b["state"]),
                s(&b["node"]),
                s(&b["ip"]),
                when_value(&b["since"], "-"),
                s(&b["detail"]),
            ]
        })
        .collect()
}

pub async fn boot(client: &ApiClient, args: BootArgs, as_json: bool) -> anyhow::Result<()> {
    let path = match &args.state {
        Some(state) => format!("/api/v1/boot?state={}", urlencode(state)),
        None => "/api/v1/boot".to_string(),
    };
    loop {
        let r = client.get(&path).await?;
        if as_json {
            print_json(&r);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            print!(
                "{}",
                render(
                    &["MAC", "STATE", "NODE", "IP", "SINCE", "DETAIL"],
                    &boot_rows(&r)
                )
            );
            println!("{} boots", s(&r["total"]));
        }
        if !args.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

const ACTIONS: [&str; 5] = ["on", "off", "cycle", "reset", "pxe"];

pub async fn power(client: &ApiClient, args: PowerArgs, as_json: bool) -> anyhow::Result<()> {
    if !args.filter.is_empty() {
        let [action] = args.words.as_slice() else {
            bail!("with --filter, give only the action (on, off, cycle, reset, pxe)");
        };
        if !ACTIONS.contains(&action.as_str()) {
            bail!("{action:?} is not one of {}", ACTIONS.join(", "));
        }
        let mut filter = json!({});
        let mut labels = serde_json::Map::new();
        for term in &args.filter {
            match term.split_once('=') {
                Some(("state", v)) => filter["state"] = json!(v),
                Some(("group", v)) => filter["group"] = json!(v),
                Some((k, v)) if k.starts_with("label:") => {
                    labels.insert(k["label:".len()..].to_string(), json!(v));
                }
                _ => bail!("--filter {term:?}: use state=S, group=G or label:K=V"),
            }
        }
        if !labels.is_empty() {
            filter["labels"] = Value::Object(labels);
        }
        let r = client
            .call(
                Method::POST,
                "/api/v1/power",
                Some(json!({"action": action, "filter": filter})),
            )
            .await?;
        if as_json {
            print_json(&r);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = r["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                vec![
                    s(&i["node"]),
                    if i["ok"] == json!(true) {
                        "ok"
                    } else {
                        "FAILED"
                    }
                    .to_string(),
                    s(&i["state"]),
                    s(&i["error"]),
                ]
            })
            .collect();
        print!("{}", render(&["NODE", "RESULT", "POWER", "ERROR"], &rows));
        println!(
            "{}: {} succeeded, {} failed",
            action,
            s(&r["succeeded"]),
            s(&r["failed"])
        );
        if r["failed"].as_u64().unwrap_or(0) > 0 {
            bail!("{} nodes failed", s(&r["failed"]));
        }
        return Ok(());
    }
    let [target, action] = args.words.as_slice() else {
        bail!("usage: glory power NODE on|off|cycle|reset|pxe|status, or glory power --filter group=g03 cycle");
    };
    let path = format!("{}/power", target_path(target));
    let r = if action == "status" {
        client.get(&path).await?
    } else if ACTIONS.contains(&action.as_str()) {
        client
            .call(Method::POST, &path, Some(json!({"action": action})))
            .await?
    } else {
        bail!("{action:?} is not one of status, {}", ACTIONS.join(", "));
    };
    if as_json {
        print_json(&r);
    } else {
        println!("{target}: power {} ({})", s(&r["state"]), s(&r["driver"]));
    }
    Ok(())
}

fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    if let Ok(p) = std::env::var("GLORY_BMC_PASSWORD") {
        return Ok(Some(p));
    }
    eprint!("BMC password (empty: none or unchanged): ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    Ok((!line.is_empty()).then_some(line))
}

pub async fn bmc(client: &ApiClient, action: BmcAction, as_json: bool) -> anyhow::Result<()> {
    match action {
        BmcAction::Set {
            node,
            driver,
            address,
            port,
            user,
            password_file,
            system_id,
            insecure_tls,
        } => {
            let password = if driver == "qemu" {
                None
            } else {
                read_password(password_file.as_deref())?
            };
            let r = client
                .call(
                    Method::PUT,
                    &format!("{}/bmc", target_path(&node)),
                    Some(json!({"driver": driver, "address": address, "port": port,
                        "user": user, "password": password, "system_id": system_id,
                        "insecure_tls": insecure_tls})),
                )
                .await?;
            if as_json {
                print_json(&r);
            } else {
                println!(
                    "{node}: BMC {} at {} stored",
                    s(&r["driver"]),
                    s(&r["address"])
                );
            }
        }
        BmcAction::Show { node } => {
            let r = client.get(&format!("{}/bmc", target_path(&node))).await?;
            if as_json {
                print_json(&r);
            } else {
                let rows = [
                    "driver",
                    "address",
                    "port",
                    "user",
                    "password_set",
                    "system_id",
                ]
                .iter()
                .map(|k| vec![k.to_string(), s(&r[*k])])
                .collect::<Vec<_>>();
                print!("{}", render(&["FIELD", "VALUE"], &rows));
            }
        }
        BmcAction::Rm { node } => {
            crate::cli::delete(
                client,
                &format!("{}/bmc", target_path(&node)),
                as_json,
                &format!("{node}: BMC settings removed"),
            )
            .await?;
        }
    }
    Ok(())
}
