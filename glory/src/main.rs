//! `glory`: the operator CLI over the REST API, and `glory up`, an all-in-one cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "GLORY-CL: cluster management for thousands of servers"
)]
struct Cli {
    /// Cluster master API address.
    #[arg(
        long,
        env = "GLORY_API",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    api: String,
    /// API bearer token; default: the `operator.token` file in --data-dir.
    #[arg(long, env = "GLORY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA's certificate, which an HTTPS API is checked against; default:
    /// `ca.pem` in --data-dir.
    #[arg(long, env = "GLORY_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// Data directory of `glory up` (where the CLI finds operator.token).
    #[arg(
        long,
        env = "GLORY_DATA_DIR",
        default_value = "glory-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start an all-in-one cluster: key master, cluster master, group masters and
    /// simulated nodes in this process. Runs until Ctrl-C.
    Up {
        /// Simulated nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Group masters.
        #[arg(long, default_value_t = 4)]
        groups: usize,
        /// REST API address: plain HTTP on loopback, HTTPS with a certificate from
        /// the cluster CA anywhere else (its `ca.pem` in --data-dir).
        #[arg(long, default_value = "127.0.0.1:7400")]
        api_listen: SocketAddr,
        /// Serve the API over plain HTTP even on an address that is not loopback.
        #[arg(long)]
        insecure_http: bool,
        /// Lifetime of every certificate the cluster CA signs (nodes, group masters,
        /// the cluster master, the API): `24h`, `2m`...; at least a minute. Each is
        /// renewed at about two thirds of it.
        #[arg(long, default_value = "24h")]
        cert_lifetime: String,
        /// QUIC address of the cluster master (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Heartbeat interval, milliseconds.
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// Silence after which a node is down, milliseconds.
        #[arg(long, default_value_t = 3000)]
        down_after_ms: u64,
        /// Most nodes per group.
        #[arg(long, default_value_t = 250)]
        group_size_limit: usize,
        /// Use an etcd key master at these endpoints (comma-separated) instead of the
        /// embedded store.
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Also create a lab: a boot network in a network namespace of its own, the
        /// provisioner on it and this many QEMU VMs that PXE-boot and enroll (root).
        #[arg(long, default_value_t = 0)]
        lab_vms: usize,
        /// How many of the lab VMs boot by UEFI (OVMF); the others by BIOS.
        #[arg(long, default_value_t = 0)]
        lab_uefi: usize,
        /// Memory of each lab VM, MiB.
        #[arg(long, default_value_t = 512)]
        lab_memory: u32,
        /// A virtual disk of this many MiB per lab VM (0: none), for images deployed
        /// in `disk` mode.
        #[arg(long, default_value_t = 0)]
        lab_disk: u32,
        /// Lifetime of the bootstrap token minted for each PXE boot, seconds.
        #[arg(long, default_value_t = 600)]
        boot_token_ttl: u64,
        /// Also start this many real agents on this machine (real processes, each
        /// with its own state directory), in a group of their own: services with
        /// real processes run on them.
        #[arg(long, default_value_t = 0)]
        real_agents: usize,
        /// How long a pool may drain a node reclaimed for another tenant's guarantee,
        /// seconds.
        #[arg(long, default_value_t = 60)]
        reclaim_grace: u64,
    },
    /// Cluster summary: nodes by state, groups, key master.
    Cluster,
    /// List nodes (or `glory nodes remove ID`).
    Nodes {
        #[command(subcommand)]
        action: Option<NodesAction>,
        /// Only nodes in this state (up, suspect, down, left, unreachable, joining).
        #[arg(long)]
        state: Option<String>,
        /// Only nodes of this group.
        #[arg(long)]
        group: Option<String>,
        /// Substring of hostname or id.
        #[arg(long, short)]
        q: Option<String>,
        /// The console's filter grammar: `state:down group:g03 label:rack=r12 q:web cpu>80`.
        #[arg(long)]
        filter: Option<String>,
    },
    /// One node in detail: inventory, load, state history.
    Node { id: String },
    /// Boot status: each MAC's way from power-on to enrolled.
    Boot(glory::cli_provision::BootArgs),
    /// Remote power control: `glory power NODE on|off|cycle|reset|pxe|status`,
    /// `glory power --filter group=g03 cycle`.
    Power(glory::cli_provision::PowerArgs),
    /// BMC settings of a node (or `mac:...`): `glory bmc set NODE --driver redfish ...`.
    Bmc {
        #[command(subcommand)]
        action: glory::cli_provision::BmcAction,
    },
    /// OS images: import, list, delete (`glory image import NAME --kernel F --initrd F
    /// --rootfs F`).
    Image {
        #[command(subcommand)]
        action: glory::cli_images::ImageAction,
    },
    /// Profiles: which image, deploy mode and first-boot configuration nodes get.
    Profiles {
        #[command(subcommand)]
        action: glory::cli_images::ProfilesAction,
    },
    /// A node's first-boot configuration: what it renders to, what was applied.
    Config {
        #[command(subcommand)]
        action: glory::cli_images::ConfigAction,
    },
    /// Deploy an image: `glory deploy --filter group=g03 --image web` (a profile for
    /// those nodes, a power cycle, each node followed until it is up on the image).
    Deploy(glory::cli_images::DeployArgs),
    /// Software packages streamed onto running nodes.
    Software {
        #[command(subcommand)]
        action: glory::cli_images::SoftwareAction,
    },
    /// Provisioning tools.
    Provision {
        #[command(subcommand)]
        action: ProvisionAction,
    },
    /// Console users (name and password, with a role like API tokens).
    Users {
        #[command(subcommand)]
        action: glory::cli_users::UsersAction,
    },
    /// Groups: the active group master, its standbys, nodes by state.
    Groups,
    /// Tenants: the owners of pools.
    Tenants {
        #[command(subcommand)]
        action: glory::cli_tenants::TenantsAction,
    },
    /// API tokens: what people and programs present to the REST API, with a role
    /// (operator, tenant, component). For enrolling machines see `bootstrap-tokens`.
    Tokens {
        #[command(subcommand)]
        action: glory::cli_pools::TokensAction,
    },
    /// Pools of nodes for the platform's components, and their masters.
    Pools {
        #[command(subcommand)]
        action: glory::cli_pools::PoolsAction,
    },
    /// How the tenants share the cluster: guarantee, use, borrowed nodes, reclaims,
    /// dominant share.
    Sharing,
    /// Frameworks (two-level scheduling) and their outstanding offers.
    Frameworks {
        #[command(subcommand)]
        action: glory::cli_tenants::FrameworksAction,
    },
    /// Services: supervised processes on a pool's nodes, health-checked, healed, scaled
    /// and balanced (`glory services create web --pool p1 -- PROGRAM ARGS`).
    Services {
        #[command(subcommand)]
        action: glory::cli_services::ServicesAction,
    },
    /// Monitors: what group masters watch and alert on, changed at run time.
    Monitors {
        #[command(subcommand)]
        action: glory::cli_monitoring::MonitorsAction,
    },
    /// Alerts (`--watch` to follow them); `glory alerts ack ID`.
    Alerts(glory::cli_monitoring::AlertsArgs),
    /// Silences: alerts they match are not forwarded until they end.
    Silences {
        #[command(subcommand)]
        action: glory::cli_monitoring::SilencesAction,
    },
    /// A node's history of one item: min/avg/max and a sparkline.
    Metrics(glory::cli_monitoring::MetricsArgs),
    /// The busiest nodes by CPU, refreshing (`--once` for scripts).
    Top(glory::cli_monitoring::TopArgs),
    /// Bootstrap tokens: what servers and group masters enroll with (not API tokens).
    /// `glory token` is the old name.
    #[command(alias = "token", alias = "bootstrap-token")]
    BootstrapTokens {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The scale and fault benchmark (`glory sim --nodes 10000 --groups 40 ...`), or
    /// fault injection into a running simulation (`glory sim kill ID`).
    #[command(args_conflicts_with_subcommands = true)]
    Sim {
        #[command(subcommand)]
        action: Option<SimAction>,
        #[command(flatten)]
        bench: BenchArgs,
    },
    /// The agents' process of `glory sim` (spawned by it).
    #[command(hide = true)]
    SimAgents(glory::bench::agents::AgentsArgs),
    /// Measure the service manager: an instance killed under load, scale-up and
    /// scale-down reaction (real agents, HAProxy), the reconcile loop's CPU with
    /// 1,000 services on 10,000 simulated nodes. Prints JSON (docs/BENCHMARKS.md).
    ServicesBench(glory::bench::services::ServicesBenchArgs),
    /// Measure sharing: allocation decisions per second, offer latency, fairness over
    /// time (Jain's index) and the time to give a tenant its guarantee back, with four
    /// tenants on 10,000 simulated nodes. Prints JSON (docs/BENCHMARKS.md).
    SharingBench(glory::bench::sharing::SharingBenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Group masters.
    #[arg(long, default_value_t = 4)]
    groups: usize,
    /// How long the scenario runs (e.g. 120s, 10m).
    #[arg(long, default_value = "60s")]
    duration: String,
    /// hierarchy (GLORY-CL) or flat (every node renews a lease in the key master).
    #[arg(long, value_enum, default_value = "hierarchy")]
    mode: glory::bench::Mode,
    /// Key master: `embedded`, or etcd endpoints (`http://127.0.0.1:2379,...`).
    #[arg(long, default_value = "embedded")]
    keymaster: String,
    /// Scheduled faults, e.g. kill-agents:50@30s,restart-agents:50@60s,
    /// kill-group-master:g07@70s,kill-cluster-master@90s,partition-group:g03@40s-55s
    #[arg(long, default_value = "")]
    faults: String,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// How often agents send metrics to their group master (0: monitoring off).
    #[arg(long, default_value_t = 5000)]
    metrics_ms: u64,
    #[arg(long, default_value_t = 3000)]
    down_after_ms: u64,
    /// QUIC client endpoints the simulated agents share.
    #[arg(long, default_value_t = 8)]
    agent_endpoints: usize,
    /// Power simulated servers on at most this many a second (0: all at once).
    #[arg(long, default_value_t = 1000)]
    ramp: usize,
    /// Lifetime of the certificates the cluster CA signs (default 24h): a short one
    /// (`2m`) has every node renew during the run, reported under `cert_renewals`.
    #[arg(long)]
    cert_lifetime: Option<String>,
    /// Once every node is up, `wrk` sends the API about this many requests a second
    /// (reads with the operator token) until the end; its latencies go into the
    /// report's `api_load`.
    #[arg(long, default_value_t = 0)]
    api_load: usize,
    /// Standby cluster masters (needs an etcd --keymaster): each cluster master runs
    /// on a runtime of its own, and `kill-cluster-master` kills the leader (kill -9
    /// semantics) so that a standby takes over through the leadership lease.
    #[arg(long, default_value_t = 0)]
    standby_cluster_masters: usize,
}

#[derive(Subcommand)]
enum NodesAction {
    /// Remove a node: its certificate is refused from then on, and its server may not
    /// enroll again until re-admitted (`glory nodes admit`).
    Remove { id: String },
    /// Let a removed node's server enroll again (by node id or identity).
    Admit { id: String },
    /// Nodes removed and not re-admitted: their servers are refused at enrollment.
    Removed,
    /// Set a node's labels (replaces them): `glory nodes label ID zone=a rack=r12`.
    Label { id: String, labels: Vec<String> },
    /// Add labels to every node a filter matches: `glory nodes bulk-label 'group:g03' rack=r12`.
    BulkLabel {
        filter: String,
        labels: Vec<String>,
        /// Only say how many nodes it would touch.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a bootstrap token (printed once).
    Create {
        /// Lifetime in seconds (0: never expires; default: the cluster's setting).
        #[arg(long)]
        ttl: Option<u64>,
        /// The token works for one enrollment only.
        #[arg(long)]
        single_use: bool,
        /// What it may enroll: node (servers), group_master, provisioner, or any (a
        /// node or a group master: one token for a whole small or test setup).
        #[arg(long, default_value = "node")]
        scope: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List bootstrap tokens (never their secrets).
    List,
    /// Delete a bootstrap token.
    Delete { id: String },
}

#[derive(Subcommand)]
enum ProvisionAction {
    /// A DHCP storm against the provisioner's DHCP server on loopback: DISCOVERs from
    /// N MACs, then their REQUESTs; offers and acks per second, latency, duplicates.
    DhcpBench {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
    },
    /// A boot storm: N simulated servers ask the provisioner (linked to a real cluster
    /// master in this process) for their iPXE script and kernel within a window.
    BootStorm {
        #[arg(long, default_value_t = 10_000)]
        servers: usize,
        /// The window they arrive in, seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Most servers fetching at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// The agent for the enrollment environment (default: beside this binary).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// Power-on to `up` at the API for a lab VM (root; QEMU under TCG), phase by phase,
    /// over several power cycles.
    LabBench {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Boot by UEFI (OVMF) instead of BIOS.
        #[arg(long)]
        uefi: bool,
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// Build the enrollment environment (kernel and initramfs with the node agent) into
    /// a directory, reproducibly.
    BuildInitramfs {
        /// Output directory (vmlinuz, initrd.img).
        #[arg(long, default_value = "boot")]
        out: std::path::PathBuf,
        /// The agent binary (default: glory-node-agent beside this binary).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum SimAction {
    /// Cut a simulated node's power: it stops sending anything.
    Kill { id: String },
    /// Power a simulated node back on.
    Restart { id: String },
    /// Hold a simulated node's CPU at a level for a while (alerts must catch it).
    Load {
        id: String,
        /// CPU percent, 0-100.
        #[arg(long, default_value_t = 95.0)]
        cpu: f64,
        /// How long, e.g. 60s, 5m.
        #[arg(long = "for", default_value = "60s")]
        duration: String,
    },
    /// Kill one of a simulated node's daemons (sshd, chronyd, glory-node-agent).
    KillProcess { id: String, name: String },
    /// Start one of a simulated node's daemons again.
    StartProcess { id: String, name: String },
}

/// `glory nodes | head` closes our stdout early: end quietly, as Unix tools do, instead
/// of panicking on the failed print (Rust ignores SIGPIPE, so `println!` panics).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Broken pipe") {
            std::process::exit(141); // what a shell reports for SIGPIPE
        }
        default(info);
    }));
}

fn main() -> std::process::ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    // The simulated agents' process runs on one thread: its thousands of connections
    // each do a little now and then, and on one thread quinn's endpoint and connection
    // tasks wake each other without crossing threads (fewer futex wake-ups and no work
    // stealing), which left more of the machine to the masters being measured.
    let mut builder = if matches!(cli.command, Command::SimAgents(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    use glory::cli as c;
    if let Command::Up {
        nodes,
        groups,
        api_listen,
        insecure_http,
        cert_lifetime,
        listen,
        heartbeat_ms,
        down_after_ms,
        group_size_limit,
        etcd,
        lab_vms,
        lab_uefi,
        lab_memory,
        lab_disk,
        boot_token_ttl,
        real_agents,
        reclaim_grace,
    } = cli.command
    {
        glory_protocol::process::init_tracing("info,glory_node_agent=error");
        let options = glory::up::UpOptions {
            data_dir: cli.data_dir,
            nodes,
            groups,
            api_listen,
            quic_listen: listen,
            heartbeat_interval_ms: heartbeat_ms,
            down_after_ms,
            group_size_limit,
            etcd: (!etcd.is_empty()).then_some(etcd),
            lab_vms,
            lab_uefi,
            lab_memory_mib: lab_memory,
            lab_disk_mib: lab_disk,
            boot_token_ttl_seconds: boot_token_ttl,
            lab_agent_binary: None,
            real_agents,
            reclaim_grace_seconds: reclaim_grace,
            insecure_http,
            cert_lifetime,
            ..Default::default()
        };
        return c::up(options).await;
    }
    if let Command::Provision {
        action: ProvisionAction::BuildInitramfs { out, agent },
    } = &cli.command
    {
        let config = glory_provisioner::config::ProvisionerConfig {
            agent_binary: agent.clone(),
            ..Default::default()
        };
        let agent = glory_provisioner::run::agent_binary(&config)?;
        let spec = glory_provisioner::initramfs::BuildSpec::detect(agent)?;
        let built = glory_provisioner::initramfs::build(&spec, out)?;
        println!(
            "kernel     {} ({})",
            built.kernel.display(),
            built.kernel_version
        );
        println!("           sha256 {}", built.kernel_sha256);
        println!(
            "initramfs  {} ({} bytes)",
            built.initrd.display(),
            built.bytes
        );
        println!("           sha256 {}", built.initrd_sha256);
        return Ok(());
    }
    if let Command::Provision {
        action:
            ProvisionAction::BootStorm {
                servers,
                seconds,
                concurrency,
                agent,
            },
    } = &cli.command
    {
        glory_protocol::process::init_tracing("warn");
        let report = glory::bench::boot_storm::run(
            *servers,
            std::time::Duration::from_secs(*seconds),
            (*concurrency).max(1),
            agent.clone(),
        )
        .await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let Command::Provision {
        action:
            ProvisionAction::LabBench {
                rounds,
                uefi,
                agent,
            },
    } = &cli.command
    {
        glory_protocol::process::init_tracing("warn");
        let report = glory::bench::lab::run((*rounds).max(1), *uefi, agent.clone()).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let Command::Provision {
        action: ProvisionAction::DhcpBench { clients },
    } = cli.command
    {
        let report = glory::bench::dhcp::run(clients).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let Command::ServicesBench(args) = cli.command {
        glory_protocol::process::init_tracing("warn,glory_node_agent=error");
        let report = glory::bench::services::run(args).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let Command::SharingBench(args) = cli.command {
        glory_protocol::process::init_tracing("warn,glory_node_agent=error");
        let report = glory::bench::sharing::run(args).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let Command::SimAgents(args) = cli.command {
        glory_protocol::process::init_tracing("error");
        return glory::bench::agents::run(args).await;
    }
    if let Command::Sim {
        action: None,
        bench,
    } = cli.command
    {
        glory_protocol::process::init_tracing("warn,glory_node_agent=error");
        return c::bench(bench_options(bench)?).await;
    }
    let client = c::client(
        &cli.api,
        cli.token.as_deref(),
        cli.cacert.as_deref(),
        &cli.data_dir,
    )?;
    match cli.command {
        Command::Up { .. }
        | Command::SimAgents(_)
        | Command::ServicesBench(_)
        | Command::SharingBench(_)
        | Command::Provision { .. }
        | Command::Sim { action: None, .. } => {
            unreachable!("handled above")
        }
        Command::Cluster => c::cluster(&client, cli.json).await,
        Command::Nodes {
            action: Some(NodesAction::Remove { id }),
            ..
        } => c::remove_node(&client, &id, cli.json).await,
        Command::Nodes {
            action: Some(NodesAction::Admit { id }),
            ..
        } => c::admit_node(&client, &id, cli.json).await,
        Command::Nodes {
            action: Some(NodesAction::Removed),
            ..
        } => c::removed_nodes(&client, cli.json).await,
        Command::Nodes {
            action: Some(NodesAction::Label { id, labels }),
            ..
        } => glory::cli_pools::label(&client, &id, &labels, cli.json).await,
        Command::Tenants { action } => glory::cli_tenants::tenants(&client, action, cli.json).await,
        Command::Tokens { action } => glory::cli_pools::tokens(&client, action, cli.json).await,
        Command::Pools { action } => glory::cli_pools::pools(&client, action, cli.json).await,
        Command::Sharing => glory::cli_tenants::sharing(&client, cli.json).await,
        Command::Image { action } => glory::cli_images::image(&client, action, cli.json).await,
        Command::Profiles { action } => {
            glory::cli_images::profiles(&client, action, cli.json).await
        }
        Command::Config { action } => glory::cli_images::config(&client, action, cli.json).await,
        Command::Deploy(args) => glory::cli_images::deploy(&client, args, cli.json).await,
        Command::Software { action } => {
            glory::cli_images::software(&client, action, cli.json).await
        }
        Command::Frameworks { action } => {
            glory::cli_tenants::frameworks(&client, action, cli.json).await
        }
        Command::Services { action } => {
            glory::cli_services::services(&client, action, cli.json).await
        }
        Command::Monitors { action } => {
            glory::cli_monitoring::monitors(&client, action, cli.json).await
        }
        Command::Alerts(args) => glory::cli_monitoring::alerts(&client, args, cli.json).await,
        Command::Silences { action } => {
            glory::cli_monitoring::silences(&client, action, cli.json).await
        }
        Command::Metrics(args) => glory::cli_monitoring::metrics(&client, args, cli.json).await,
        Command::Top(args) => glory::cli_monitoring::top(&client, args, cli.json).await,
        Command::Nodes {
            action: None,
            state,
            group,
            q,
            filter,
        } => {
            c::nodes(
                &client,
                state.as_deref(),
                group.as_deref(),
                q.as_deref(),
                filter.as_deref(),
                cli.json,
            )
            .await
        }
        Command::Nodes {
            action:
                Some(NodesAction::BulkLabel {
                    filter,
                    labels,
                    dry_run,
                }),
            ..
        } => c::bulk_label(&client, &filter, &labels, dry_run, cli.json).await,
        Command::Users { action } => glory::cli_users::users(&client, action, cli.json).await,
        Command::Boot(args) => glory::cli_provision::boot(&client, args, cli.json).await,
        Command::Power(args) => glory::cli_provision::power(&client, args, cli.json).await,
        Command::Bmc { action } => glory::cli_provision::bmc(&client, action, cli.json).await,
        Command::Node { id } => c::node(&client, &id, cli.json).await,
        Command::Groups => c::groups(&client, cli.json).await,
        Command::BootstrapTokens {
            action:
                TokenAction::Create {
                    ttl,
                    single_use,
                    scope,
                    description,
                },
        } => c::token_create(&client, ttl, single_use, &scope, &description, cli.json).await,
        Command::BootstrapTokens {
            action: TokenAction::List,
        } => c::token_list(&client, cli.json).await,
        Command::BootstrapTokens {
            action: TokenAction::Delete { id },
        } => c::token_delete(&client, &id, cli.json).await,
        Command::Sim {
            action: Some(SimAction::Kill { id }),
            ..
        } => c::sim(&client, &id, "kill", cli.json).await,
        Command::Sim {
            action: Some(SimAction::Restart { id }),
            ..
        } => c::sim(&client, &id, "restart", cli.json).await,
        Command::Sim {
            action: Some(SimAction::Load { id, cpu, duration }),
            ..
        } => c::sim_load(&client, &id, cpu, &duration, cli.json).await,
        Command::Sim {
            action: Some(SimAction::KillProcess { id, name }),
            ..
        } => c::sim_process(&client, &id, &name, "kill", cli.json).await,
        Command::Sim {
            action: Some(SimAction::StartProcess { id, name }),
            ..
        } => c::sim_process(&client, &id, &name, "start", cli.json).await,
    }
}

fn bench_options(b: BenchArgs) -> anyhow::Result<glory::bench::SimOptions> {
    use anyhow::anyhow;
    let etcd = match b.keymaster.as_str() {
        "embedded" => None,
        urls if urls.starts_with("http://") || urls.starts_with("https://") => {
            Some(urls.split(',').map(str::to_string).collect())
        }
        other => anyhow::bail!(
            "--keymaster {other}: use `embedded` or etcd endpoints (http://HOST:PORT,...)"
        ),
    };
    Ok(glory::bench::SimOptions {
        nodes: b.nodes,
        groups: b.groups,
        duration: glory::bench::parse_duration(&b.duration)
            .map_err(|e| anyhow!("--duration: {e}"))?,
        mode: b.mode,
        faults: glory::bench::parse_faults(&b.faults).map_err(|e| anyhow!("--faults: {e}"))?,
        faults_spec: b.faults,
        report: b.report,
        heartbeat_ms: b.heartbeat_ms,
        metrics_ms: b.metrics_ms,
        down_after_ms: b.down_after_ms,
        agent_endpoints: b.agent_endpoints,
        progress: true,
        etcd,
        ramp_per_sec: b.ramp,
        cert_lifetime: b.cert_lifetime,
        api_load: b.api_load,
        standby_cluster_masters: b.standby_cluster_masters,
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command, TokenAction};

    #[test]
    fn bootstrap_tokens_keep_the_old_name_as_a_hidden_alias() {
        for name in ["bootstrap-tokens", "token"] {
            let cli = Cli::try_parse_from(["glory", name, "list"]).unwrap();
            assert!(matches!(
                cli.command,
                Command::BootstrapTokens {
                    action: TokenAction::List
                }
            ));
        }
        let cli = Cli::try_parse_from(["glory", "tokens", "list"]).unwrap();
        assert!(matches!(cli.command, Command::Tokens { .. }));
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("bootstrap-tokens"), "{help}");
        assert!(
            !help.lines().any(|l| l.trim_start().starts_with("token ")),
            "{help}"
        );
    }
}
