//! `glory-node-agent`: the agent that runs on every server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use glory_node_agent::{config::apply_cmdline, AgentConfig};

#[derive(Parser)]
#[command(version, about = "GLORY-CL node agent")]
struct Args {
    /// TOML configuration file (every option has a default; see docs/OPERATIONS.md).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Bootstrap token; overrides the config file and the kernel command line.
    #[arg(long, env = "GLORY_BOOTSTRAP_TOKEN")]
    token: Option<String>,
    /// Cluster master QUIC address; overrides the config file.
    #[arg(long)]
    cluster_master: Option<std::net::SocketAddr>,
    /// State directory; overrides the config file.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Enroll under this name instead of the hardware's identity (several agents on
    /// one host); overrides the config file.
    #[arg(long)]
    node_name: Option<String>,
    /// Where first-boot configuration and software packages go (`/` on a real
    /// server); overrides the config file.
    #[arg(long)]
    setup_root: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Fetch a file by its `.torrent` with the agent's BitTorrent peer, every piece
    /// checked by SHA-1, then seed it for a while (an image's initramfs fetches its
    /// root filesystem so).
    TorrentGet {
        /// The `.torrent` file.
        torrent: PathBuf,
        /// Where the file goes, under the torrent's name.
        #[arg(long)]
        dir: PathBuf,
        /// Created once the file is whole.
        #[arg(long)]
        done: Option<PathBuf>,
        /// How long to seed after the download before leaving the swarm.
        #[arg(long, default_value_t = 60)]
        seed_seconds: u64,
        /// The CA (PEM) an HTTPS tracker is checked against.
        #[arg(long)]
        cacert: Option<PathBuf>,
    },
}

fn load_config(args: &Args) -> anyhow::Result<AgentConfig> {
    let mut config = match &args.config {
        Some(path) => AgentConfig::from_toml(
            &std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        )?,
        None => AgentConfig::default(),
    };
    if let Some(token) = &args.token {
        config.token = Some(token.clone());
    }
    if let Some(addr) = args.cluster_master {
        config.cluster_master = addr;
    }
    // A PXE-booted server learns the rest from its kernel command line.
    if let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline") {
        apply_cmdline(&mut config, &cmdline).context("kernel command line")?;
    }
    if let Some(dir) = &args.state_dir {
        config.state_dir = dir.clone();
    }
    if let Some(name) = &args.node_name {
        config.node_name = Some(name.clone());
    }
    if let Some(root) = &args.setup_root {
        config.setup_root = Some(root.clone());
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    glory_protocol::process::init_tracing("info");
    let args = Args::parse();
    let shutdown = glory_protocol::process::shutdown_on_signal();
    if let Some(Command::TorrentGet {
        torrent,
        dir,
        done,
        seed_seconds,
        cacert,
    }) = &args.command
    {
        let seed = std::time::Duration::from_secs(*seed_seconds);
        let got = glory_node_agent::setup::p2p::torrent_get(
            torrent,
            dir,
            done.as_deref(),
            seed,
            cacert.as_deref(),
        );
        return glory_protocol::process::exit_code(got.await);
    }
    let result = match load_config(&args) {
        Ok(config) => glory_node_agent::run(config, shutdown).await,
        Err(e) => Err(e),
    };
    glory_protocol::process::exit_code(result)
}
