//! `glory-group-master`: leads one group of node agents.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use glory_group_master::GroupMasterConfig;

#[derive(Parser)]
#[command(version, about = "GLORY-CL group master")]
struct Args {
    /// TOML configuration file (every option has a default; see docs/OPERATIONS.md).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Bootstrap token for the first start; overrides the config file.
    #[arg(long, env = "GLORY_BOOTSTRAP_TOKEN")]
    token: Option<String>,
}

fn load_config(args: &Args) -> anyhow::Result<GroupMasterConfig> {
    let mut config = match &args.config {
        Some(path) => GroupMasterConfig::from_toml(
            &std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        )?,
        None => GroupMasterConfig::default(),
    };
    if let Some(token) = &args.token {
        config.token = Some(token.clone());
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    glory_protocol::process::init_tracing("info");
    let args = Args::parse();
    let shutdown = glory_protocol::process::shutdown_on_signal();
    let result = match load_config(&args) {
        Ok(config) => glory_group_master::run(config, shutdown).await,
        Err(e) => Err(e),
    };
    glory_protocol::process::exit_code(result)
}
