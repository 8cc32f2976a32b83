//! `glory-cluster-master`: the cluster's coordinator and REST API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use glory_cluster_master::ClusterMasterConfig;

#[derive(Parser)]
#[command(version, about = "GLORY-CL cluster master")]
struct Args {
    /// TOML configuration file (every option has a default; see docs/OPERATIONS.md).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory; overrides the config file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn load_config(args: &Args) -> anyhow::Result<ClusterMasterConfig> {
    let mut config = match &args.config {
        Some(path) => ClusterMasterConfig::from_toml(
            &std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        )?,
        None => ClusterMasterConfig::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    glory_protocol::process::init_tracing("info");
    let args = Args::parse();
    let shutdown = glory_protocol::process::shutdown_on_signal();
    let result = match load_config(&args) {
        Ok(config) => glory_cluster_master::run(config, shutdown).await,
        Err(e) => Err(e),
    };
    glory_protocol::process::exit_code(result)
}
