//! `dcwatt-verify`: checks a tenant's statement against the collector's
//! public key, the checkpoints the tenant saved and consistency proofs, on the
//! tenant's own machine, offline. Exit 0: everything verified; 1: a check
//! failed (the first failure is named); 2: an input could not be read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use dcwatt_verify::check::{self, ConsistencyProof, Inputs, StatementView};
use dcwatt_verify::checkpoint::{self, Checkpoint};

/// Verify a dcwatt energy statement offline.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The collector's public key (the JSON of GET /v1/ledger/public-key, or 64 hex digits).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// Saved checkpoints: the JSON of GET /v1/ledger/checkpoints (repeat for several files).
    #[arg(long = "checkpoints", value_name = "FILE")]
    checkpoints: Vec<PathBuf>,
    /// The statement: the JSON of GET /v1/tenants/{tenant}/statement.
    #[arg(long, value_name = "FILE")]
    statement: PathBuf,
    /// A consistency proof: the JSON of GET /v1/ledger/consistency (repeat for several).
    #[arg(long = "consistency", value_name = "FILE")]
    consistency: Vec<PathBuf>,
    /// Accept rows booked after the statement's checkpoint (they have no proof yet).
    #[arg(long)]
    allow_unproven: bool,
}

/// Reads and parses one input file; the error names the file.
fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The checkpoints of one saved file: the endpoint's answer
/// (`{"checkpoints": [...]}`), a list, or one checkpoint.
fn read_checkpoints(path: &Path) -> Result<Vec<(String, Checkpoint)>, String> {
    let v: serde_json::Value = read(path)?;
    let list = match v.get("checkpoints") {
        Some(list) => list.clone(),
        None if v.is_array() => v,
        None => serde_json::Value::Array(vec![v]),
    };
    let list: Vec<Checkpoint> =
        serde_json::from_value(list).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(list
        .into_iter()
        .map(|c| (path.display().to_string(), c))
        .collect())
}

fn inputs(cli: &Cli) -> Result<Inputs, String> {
    let key_text = std::fs::read_to_string(&cli.public_key)
        .map_err(|e| format!("{}: {e}", cli.public_key.display()))?;
    let public_key = checkpoint::parse_public_key(&key_text)
        .map_err(|e| format!("{}: {e}", cli.public_key.display()))?;
    let mut checkpoints = Vec::new();
    for path in &cli.checkpoints {
        checkpoints.extend(read_checkpoints(path)?);
    }
    let statement: StatementView = read(&cli.statement)?;
    let mut consistency = Vec::new();
    for path in &cli.consistency {
        let p: ConsistencyProof = read(path)?;
        consistency.push((path.display().to_string(), p));
    }
    Ok(Inputs {
        public_key,
        checkpoints,
        statement,
        consistency,
        allow_unproven: cli.allow_unproven,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let inputs = match inputs(&cli) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("dcwatt-verify: {e}");
            return ExitCode::from(2);
        }
    };
    let mut said = Vec::new();
    let result = check::verify(&inputs, &mut said);
    for line in said {
        println!("{line}");
    }
    match result {
        Ok(()) => {
            println!("verified");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("FAILED: {why}");
            ExitCode::FAILURE
        }
    }
}
