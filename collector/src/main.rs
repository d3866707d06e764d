//! `dcwatt-collector --config FILE` serves; `--check-config FILE` validates;
//! `dcwatt-collector ledger verify DB` checks a ledger's hash chain offline;
//! `dcwatt-collector keygen --out FILE` writes a checkpoint signing key;
//! `dcwatt-collector report efficiency --config FILE --from DAY --to DAY`
//! writes the site's efficiency report;
//! `dcwatt-collector gpu release UUID` asks a running collector to release a
//! GPU that moved to another node.

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
    /// GPUs a running collector knows.
    #[command(subcommand)]
    Gpu(GpuCommand),
    /// Write a tenant's monthly statement from the collector's database, offline.
    /// With several `--config` (one per hall), one statement: the halls' rows
    /// added up per day, each hall's own statement beside.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Report {
        /// Another report than the tenant statement.
        #[command(subcommand)]
        kind: Option<ReportKind>,
        /// The collector's configuration (for the database, leases and site);
        /// repeat it for each hall the tenant leases nodes in (never a mirror's:
        /// its database holds the same energy).
        #[arg(long, value_name = "FILE", required = true)]
        config: Vec<PathBuf>,
        /// The tenant.
        #[arg(long, required = true)]
        tenant: Option<String>,
        /// The month, YYYY-MM.
        #[arg(long, required = true)]
        month: Option<String>,
        /// json or csv.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// Write a new Ed25519 key for signing ledger checkpoints (`[ledger]
    /// signing_key_file`; mode 0600, never overwritten) and print its public key.
    Keygen {
        /// The key file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(clap::Subcommand)]
enum ReportKind {
    /// The site's efficiency report (PUE with its category and bounds,
    /// partial PUE, WUE, ERF, REF, CUE, energy by role, water, coverage,
    /// events, the meter inventory, months and quarters, the comparison with
    /// reference PUE values, provenance), from the collector's database,
    /// offline.
    Efficiency {
        /// The collector's configuration (for the database and the site).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The first day, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: String,
        /// The day after the last, YYYY-MM-DD (UTC; exclusive), at most 400
        /// days after `--from`.
        #[arg(long)]
        to: String,
        /// Only this zone's partial PUE, meters and events (the site figures
        /// stay the site's).
        #[arg(long)]
        zone: Option<String>,
        /// json, csv or html.
        #[arg(long, default_value = "json")]
        format: String,
    },
}

/// `report efficiency`: 0 written, 2 refused (the message names the option).
fn efficiency(
    config: &std::path::Path,
    from: &str,
    to: &str,
    zone: Option<&str>,
    format: &str,
) -> ExitCode {
    use dcwatt_collector::efficiency::{self, ReportError};
    if !matches!(format, "json" | "csv" | "html") {
        eprintln!("--format: {format:?} is not json, csv or html");
        return ExitCode::from(2);
    }
    let period = efficiency::parse_day("from", from).and_then(|f| {
        let t = efficiency::parse_day("to", to)?;
        efficiency::check_period(f, t).map(|()| (f, t))
    });
    let (from_ms, to_ms) = match period {
        Ok(p) => p,
        Err(e) => {
            eprintln!("--{e}");
            return ExitCode::from(2);
        }
    };
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
    let now = dcwatt_wire::time::now_ms();
    let result = dcwatt_collector::store::Store::open(&db)
        .map_err(ReportError::from)
        .and_then(|store| efficiency::report(&store, &site, from_ms, to_ms, zone, now));
    match result {
        Ok(r) => {
            let text = match format {
                "csv" => r.to_csv(),
                "html" => dcwatt_collector::efficiency_html::render(&r),
                _ => match serde_json::to_string_pretty(&r) {
                    Ok(t) => t + "\n",
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(ReportError::Invalid(key, why)) => {
            eprintln!("--{key}: {why}");
            ExitCode::from(2)
        }
        Err(ReportError::Store(e)) => {
            eprintln!("{}: {e}", db.display());
            ExitCode::from(2)
        }
    }
}

fn keygen(out: &std::path::Path) -> ExitCode {
    match dcwatt_collector::transparency::write_new_key(out) {
        Ok(key) => {
            println!("{}", hex::encode(key.verifying_key().to_bytes()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("--out: {e}");
            ExitCode::from(2)
        }
    }
}

/// One hall's statement, or the message and exit code of why not.
fn hall_statement(
    config: &std::path::Path,
    tenant: &str,
    month: &str,
    now: i64,
) -> Result<(PathBuf, dcwatt_collector::statement::Statement), String> {
    let site = Config::from_file(config)
        .and_then(Config::build)
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let Some(db) = site.ledger_path.clone().filter(|p| p.is_file()) else {
        return Err(format!(
            "{}: [ledger] path: no database to read",
            config.display()
        ));
    };
    if !site.tenant_tokens.values().any(|t| t == tenant) {
        return Err(format!(
            "--tenant: no tenant {tenant:?} in {}",
            config.display()
        ));
    }
    let result = dcwatt_collector::store::Store::open(&db).and_then(|store| {
        dcwatt_collector::statement::statement(&store, &site, tenant, month, now)
    });
    match result {
        Ok(Some(s)) => Ok((db, s)),
        Ok(None) => Err(format!("--month: {month:?} is not YYYY-MM")),
        Err(e) => Err(format!("{}: {e}", db.display())),
    }
}

fn report(configs: &[PathBuf], tenant: &str, month: &str, format: &str) -> ExitCode {
    if !matches!(format, "json" | "csv") {
        eprintln!("--format: {format:?} is neither json nor csv");
        return ExitCode::from(2);
    }
    let now = dcwatt_wire::time::now_ms();
    let mut halls = Vec::new();
    let mut databases: Vec<(PathBuf, &PathBuf)> = Vec::new();
    for config in configs {
        let (db, statement) = match hall_statement(config, tenant, month, now) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        // One database read twice would count its energy twice.
        let canonical = std::fs::canonicalize(&db).unwrap_or(db);
        if let Some((_, first)) = databases.iter().find(|(d, _)| *d == canonical) {
            eprintln!(
                "--config: {} and {} read the same database {}: its energy would count twice",
                first.display(),
                config.display(),
                canonical.display()
            );
            return ExitCode::from(2);
        }
        databases.push((canonical, config));
        halls.push(dcwatt_collector::statement::HallStatement {
            config: config.display().to_string(),
            statement,
        });
    }
    let text = if let [one] = halls.as_slice() {
        // One hall: its statement, as the API gives it.
        match format {
            "csv" => Ok(one.statement.to_csv()),
            _ => serde_json::to_string_pretty(&one.statement).map(|t| t + "\n"),
        }
    } else {
        let combined = dcwatt_collector::statement::combine(tenant, month, now, halls);
        match format {
            "csv" => Ok(combined.to_csv()),
            _ => serde_json::to_string_pretty(&combined).map(|t| t + "\n"),
        }
    };
    match text {
        Ok(t) => {
            print!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Subcommand)]
enum GpuCommand {
    /// Release a GPU that moved to another node: the next agent to report it
    /// owns it (its energy so far stays). Calls
    /// `POST /v1/admin/gpus/{uuid}/release` with the operator token.
    Release {
        /// The collector's URL, e.g. `https://collector-a:9400`.
        #[arg(long)]
        url: String,
        /// A file holding the operator's token.
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The site CA to trust (PEM), for HTTPS.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// The GPU's UUID.
        uuid: String,
    },
}

/// `gpu release`: 0 released, 1 refused by the collector, 2 not sent.
fn release_gpu(
    url: &str,
    token_file: &std::path::Path,
    ca_file: Option<&std::path::Path>,
    uuid: &str,
) -> ExitCode {
    let run = || -> anyhow::Result<(u16, String)> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("--token-file {}", token_file.display()))?;
        let mut client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("--ca-file {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--ca-file {}", ca.display()))?;
            client = client.add_root_certificate(cert);
        }
        let client = client.build()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let resp = client
                .post(format!(
                    "{}/v1/admin/gpus/{uuid}/release",
                    url.trim_end_matches('/')
                ))
                .bearer_auth(token.trim())
                .send()
                .await
                .with_context(|| format!("--url {url}"))?;
            let status = resp.status().as_u16();
            Ok((status, resp.text().await.unwrap_or_default()))
        })
    };
    match run() {
        Ok((200, body)) => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("{status}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
    }
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
        Some(Command::Gpu(GpuCommand::Release {
            url,
            token_file,
            ca_file,
            uuid,
        })) => return release_gpu(url, token_file, ca_file.as_deref(), uuid),
        Some(Command::Report {
            kind:
                Some(ReportKind::Efficiency {
                    config,
                    from,
                    to,
                    zone,
                    format,
                }),
            ..
        }) => return efficiency(config, from, to, zone.as_deref(), format),
        Some(Command::Report {
            kind: None,
            config,
            tenant,
            month,
            format,
        }) => {
            let (Some(tenant), Some(month)) = (tenant, month) else {
                eprintln!("--tenant and --month are required");
                return ExitCode::from(2);
            };
            return report(config, tenant, month, format);
        }
        Some(Command::Keygen { out }) => return keygen(out),
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
