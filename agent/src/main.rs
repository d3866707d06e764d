//! The `dcwatt-agent` binary: parses the command line, loads the config, sets up
//! logging, binds the listener and calls [`dcwatt_agent::run`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Per-node agent: NVML and facility meters to /metrics and to collectors.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Run with this config file (TOML).
    #[arg(long, value_name = "FILE", required_unless_present = "check_config")]
    config: Option<PathBuf>,
    /// Validate this config file, print `ok` or the offending key and why, exit 0 or 2.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = cli.check_config {
        return match dcwatt_agent::config::load(&path) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::from(2)
            }
        };
    }
    let Some(path) = cli.config else {
        return ExitCode::from(2);
    };
    let config = match dcwatt_agent::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Agent failed.");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: dcwatt_agent::config::RuntimeConfig) -> anyhow::Result<()> {
    // One thread for all async work, whatever the node's core count: the
    // agent's async work is a few requests a second (NVML calls run on their
    // own threads, spool writes on the blocking pool) and must not spread over
    // the cores a training job uses. A multi-thread runtime spent more CPU
    // waking its idle second worker than on that work (docs/benchmarks.md).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}").context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
        drop(out);
        tracing::info!(addr = %addr, node = %config.node, "Agent started.");
        dcwatt_agent::run(config, listener, shutdown_signal()?).await?;
        tracing::info!("Agent stopped.");
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
