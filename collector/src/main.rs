//! `dcwatt-collector --config FILE` serves; `--check-config FILE` validates;
//! `dcwatt-collector ledger verify DB` checks a ledger's hash chain offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use dcwatt_collector::config::Config;

/// The dcwatt collector: agents' batches in, PUE and energy out.
#[derive(Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run with this configuration file.
    #[arg(long, value_name = "FILE", required_unless_present = "check_config")]
    config: Option<PathBuf>,
    /// Validate this configuration file and exit (0: valid, 2: not).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The tenant ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
}

#[derive(clap::Subcommand)]
enum LedgerCommand {
    /// Walk the hash chain of a collector's database and say where it breaks
    /// (exit 0: intact, 1: broken, 2: unreadable).
    Verify {
        /// The collector's SQLite file (`[ledger] path`).
        db: PathBuf,
    },
}

fn verify(db: &std::path::Path) -> ExitCode {
    if !db.is_file() {
        eprintln!("{}: no such file", db.display());
        return ExitCode::from(2);
    }
    let result = dcwatt_collector::store::Store::open(db).and_then(|s| s.verify_ledger());
    match result {
        Ok(v) => match v.broken {
            None => {
                println!("ok: {} rows, head {}", v.rows, v.head);
                ExitCode::SUCCESS
            }
            Some(why) => {
                println!("broken: {why}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{}: {e}", db.display());
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Ledger(LedgerCommand::Verify { db })) = &cli.command {
        return verify(db);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Some(path) = cli.check_config {
        return match Config::from_file(&path).and_then(Config::build) {
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
    let site = match Config::from_file(&path).and_then(Config::build) {
        Ok(site) => site,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match serve(site) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dcwatt-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(site: dcwatt_collector::config::Site) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&site.listen)
        .await
        .with_context(|| format!("cannot listen on {}", site.listen))?;
    println!("listening on {}", listener.local_addr()?);
    dcwatt_collector::run(site, listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("Shutting down.");
}
