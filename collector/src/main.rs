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
    /// Write a tenant's monthly statement from the collector's database, offline.
    Report {
        /// The collector's configuration (for the database, leases and site).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// json or csv.
        #[arg(long, default_value = "json")]
        format: String,
    },
}

fn report(config: &std::path::Path, tenant: &str, month: &str, format: &str) -> ExitCode {
    let site = match Config::from_file(config).and_then(Config::build) {
        Ok(site) => site,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::from(2);
        }
    };
    let Some(db) = site.ledger_path.clone().filter(|p| p.is_file()) else {
        eprintln!("{}: [ledger] path: no database to read", config.display());
        return ExitCode::from(2);
    };
    if !site.tenant_tokens.values().any(|t| t == tenant) {
        eprintln!("--tenant: no tenant {tenant:?} in {}", config.display());
        return ExitCode::from(2);
    }
    let now = dcwatt_collector::api::now_ms();
    let result = dcwatt_collector::store::Store::open(&db).and_then(|store| {
        dcwatt_collector::statement::statement(&store, &site, tenant, month, now)
    });
    match (result, format) {
        (Ok(Some(s)), "csv") => print!("{}", s.to_csv()),
        (Ok(Some(s)), "json") => match serde_json::to_string_pretty(&s) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        (Ok(Some(_)), other) => {
            eprintln!("--format: {other:?} is neither json nor csv");
            return ExitCode::from(2);
        }
        (Ok(None), _) => {
            eprintln!("--month: {month:?} is not YYYY-MM");
            return ExitCode::from(2);
        }
        (Err(e), _) => {
            eprintln!("{}: {e}", db.display());
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
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
    match &cli.command {
        Some(Command::Ledger(LedgerCommand::Verify { db })) => return verify(db),
        Some(Command::Report {
            config,
            tenant,
            month,
            format,
        }) => return report(config, tenant, month, format),
        None => {}
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Some(path) = cli.check_config {
        return match Config::from_file(&path).and_then(Config::build) {
            Ok(site) => {
                for m in site.unreported_meters() {
                    eprintln!("warning: meter {m:?} is listed in no agent's `meters`: no agent may report it");
                }
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
        Ok(mut site) => {
            site.config_path = Some(path.clone());
            site
        }
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
