//! `dcwatt-sim`: the simulated hall as a process. Parses the command line,
//! binds, prints `listening on ADDR` on stdout, logs to stderr, and stops on
//! SIGINT or SIGTERM. Everything else is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use dcwatt_sim::{Sim, SimConfig};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "dcwatt-sim",
    version,
    about = "A simulated GPU hall for dcwatt."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the hall's meters over Redfish, its truth over /sim/*, and write
    /// fake NVML state files.
    Serve(ServeArgs),
    /// Run the whole pipeline: this hall, a collector and one agent per node as
    /// real processes on 127.0.0.1, with a live line per second until Ctrl-C.
    Demo(dcwatt_sim::demo::DemoArgs),
    /// Load one collector on 127.0.0.1 with N simulated agents and print a
    /// table (batches/s, latency, collector CPU and RSS, decode-only ceiling).
    Load(dcwatt_sim::loadgen::LoadArgs),
    /// Run one agent (fake NVML GPUs + 4 Redfish meters at 1 Hz) beside
    /// node_exporter, scrape both, and print their CPU, peak RSS and /metrics latency.
    AgentBench(dcwatt_sim::agentbench::AgentBenchArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Racks (one IT PDU each).
    #[arg(long, default_value_t = 2)]
    racks: u32,
    /// Nodes per rack.
    #[arg(long, default_value_t = 2)]
    nodes_per_rack: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = 4)]
    gpus_per_node: u32,
    /// Seed of loads, jitter and GPU UUIDs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the per-node fake NVML state files.
    #[arg(long)]
    state_dir: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The zone of every meter in `/sim/site` (a second hall: `hall-2`).
    #[arg(long, default_value = "hall-1")]
    zone: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Serve(args) => run_serve(args).await,
        Command::Demo(args) => dcwatt_sim::demo::run(args).await,
        Command::Load(args) => {
            let counts = if args.sweep.is_empty() {
                vec![args.agents]
            } else {
                args.sweep.clone()
            };
            let mut reports = Vec::new();
            for agents in counts {
                let one = dcwatt_sim::loadgen::LoadArgs {
                    agents,
                    ..args.clone()
                };
                eprintln!("loading with {agents} agents for {} s…", one.duration_s);
                reports.push(dcwatt_sim::loadgen::run(&one).await?);
            }
            println!("{}", dcwatt_sim::loadgen::table(&reports));
            Ok(())
        }
        Command::AgentBench(args) => {
            eprintln!("measuring the agent for {} s…", args.duration_s);
            let report = dcwatt_sim::agentbench::run(&args).await?;
            println!("{}", dcwatt_sim::agentbench::table(&report));
            Ok(())
        }
    }
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = SimConfig {
        racks: args.racks,
        nodes_per_rack: args.nodes_per_rack,
        gpus_per_node: args.gpus_per_node,
        seed: args.seed,
        state_dir: args.state_dir,
    };
    // Handlers first, so a signal right after the line below stops us cleanly.
    let shutdown = shutdown_signal().context("cannot install signal handlers")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    // State files before the line, so whoever reads it can start agents at once.
    let sim = Sim::new(config)?.with_zone(args.zone);
    println!("listening on {addr}");
    sim.serve(listener, shutdown).await?;
    Ok(())
}

/// Installs SIGINT and SIGTERM handlers now; the future completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
