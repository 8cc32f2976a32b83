//! `glory-provisioner`: serves one boot network (DHCP, TFTP, HTTP boot) for the cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use glory_provisioner::config::ProvisionerConfig;

#[derive(Parser)]
#[command(
    version,
    about = "GLORY-CL provisioner: PXE boot and enrollment of new servers"
)]
struct Args {
    /// TOML configuration file (docs/examples/provisioner.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Bootstrap token of scope provisioner; overrides the config file.
    #[arg(long, env = "GLORY_BOOTSTRAP_TOKEN")]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    glory_protocol::process::init_tracing("info");
    let args = Args::parse();
    let shutdown = glory_protocol::process::shutdown_on_signal();
    let result = async {
        let text = std::fs::read_to_string(&args.config)
            .with_context(|| format!("read {}", args.config.display()))?;
        let mut config = ProvisionerConfig::from_toml(&text)?;
        if args.token.is_some() {
            config.token = args.token.clone();
        }
        glory_provisioner::run::start(config, shutdown.clone()).await?;
        shutdown.cancelled().await;
        Ok(())
    }
    .await;
    glory_protocol::process::exit_code(result)
}
