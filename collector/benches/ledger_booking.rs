//! The booking cost of the ledger's transparency log, per closed minute at
//! 5,000 agents × 4 GPUs (20,000 ledger rows a minute):
//!
//! - `booking`: `Store::close_minutes` of 20,000 open rows, committed (the
//!   whole booking pass: chain hashes, inserts, the tree);
//! - what the tree adds to it: the leaf hashes (one SHA-256 per row over the
//!   canonical bytes the chain hash already wrote), and
//!   `store::tree::extend_tree` for those 20,000 leaves (frontier, node
//!   hashes, node inserts) on a tree of `--prefill` leaves, in a transaction
//!   rolled back after each run; their sum; and the node hashing alone;
//! - `checkpoint`: `Store::checkpoint_due` (frontier read back, Ed25519
//!   signature, insert): once an hour, so 1/60 of it per minute;
//! - `statement proofs`: inclusion proofs of 1,000 rows spread over the tree
//!   (a statement's cost, not booking's).
//!
//! `cargo bench -p dcwatt-collector --bench ledger_booking [-- --quick]`
//! prints, per step, the fastest and the median of several runs, in ms.
//! `--quick` (or `DCWATT_BENCH_QUICK=1`): 2,000 rows and few runs, a smoke
//! test, not a measurement.

use std::path::Path;
use std::time::Instant;

use dcwatt_collector::config::{Config, Site};
use dcwatt_collector::store::ledger::{Row, GENESIS};
use dcwatt_collector::store::{tree, Store};
use dcwatt_collector::transparency;
use dcwatt_verify::merkle::{self, Frontier, Hash};

/// The bench's size.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Ledger rows booked per minute.
    pub rows: usize,
    /// Leaves already in the tree.
    pub prefill: usize,
    /// Timed runs per step.
    pub runs: usize,
}

impl Plan {
    /// 20,000 rows a minute on a tree of 1.2 M leaves (an hour), 7 runs.
    pub fn full() -> Plan {
        Plan {
            rows: 20_000,
            prefill: 1_200_000,
            runs: 7,
        }
    }

    /// A smoke test.
    pub fn quick() -> Plan {
        Plan {
            rows: 2_000,
            prefill: 10_000,
            runs: 2,
        }
    }
}

/// One step's timings, ms.
#[derive(Debug, Clone)]
pub struct Timing {
    /// The step.
    pub what: &'static str,
    /// The fastest run.
    pub min_ms: f64,
    /// The median run.
    pub median_ms: f64,
}

fn timing(what: &'static str, mut ms: Vec<f64>) -> Timing {
    ms.sort_by(f64::total_cmp);
    Timing {
        what,
        min_ms: ms[0],
        median_ms: ms[ms.len() / 2],
    }
}

fn site(dir: &Path) -> Site {
    let key = dir.join("ledger.key");
    if !key.exists() {
        transparency::write_new_key(&key).unwrap();
    }
    Config::from_toml(&format!(
        "[ledger]\npath = \"{}\"\nsynchronous = \"normal\"\nsigning_key_file = \"{}\"\n",
        dir.join("c.sqlite").display(),
        key.display()
    ))
    .unwrap()
    .build()
    .unwrap()
}

/// A plausible booked row (tenant `t-NNNN`, 1 kW for a minute, statistics).
fn row(id: i64, minute_ms: i64) -> Row {
    Row {
        id,
        minute_ms,
        tenant: format!("t-{:04}", id % 5000),
        it_joules: 60_000.0 + id as f64,
        facility_joules: Some(72_000.0 + id as f64),
        pue: Some(1.2),
        pue_basis: "minute".into(),
        gpu_ms: 60_000,
        late: false,
        util_mean: Some(0.7),
        peak_watts: Some(1100.0),
        excursions: 0,
        node_joules: None,
        sm_active_mean: None,
        tensor_active_mean: None,
        idle_joules: None,
        module_joules: None,
        delivery: None,
        prev_hash: GENESIS.into(),
        hash: GENESIS.into(),
    }
}

/// Fills `tenant_open` with one minute of `n` owners.
fn open_minute(db: &Path, minute_ms: i64, n: usize) {
    let mut c = rusqlite::Connection::open(db).unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare("INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms, util_sum, util_n, peak_w) VALUES (?1, ?2, 60000, 60000, 0.7, 1, 1100)")
            .unwrap();
        for i in 0..n {
            stmt.execute(rusqlite::params![minute_ms, format!("t-{i:05}")])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Runs every step; returns the timings.
pub fn run(plan: Plan) -> Vec<Timing> {
    let dir = tempfile::tempdir().unwrap();
    let site = site(dir.path());
    let db = dir.path().join("c.sqlite");
    let mut store = Store::open(&db).unwrap();
    let hour = 1_788_000_000_000i64.div_euclid(3_600_000) * 3_600_000;
    // The prefill: a tree of `prefill` leaves, through the tree code.
    {
        let mut c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("DROP TRIGGER ledger_no_update; DROP TRIGGER ledger_no_delete;")
            .unwrap();
        let tx = c.transaction().unwrap();
        let rows: Vec<Row> = (1..=plan.prefill as i64).map(|i| row(i, hour)).collect();
        let leaves: Vec<(i64, Hash)> = rows.iter().map(|r| (r.id, r.leaf_hash())).collect();
        tree::extend_tree(&tx, &leaves).unwrap();
        // The tree's leaves must match ledger ids: insert the rows too.
        let mut stmt = tx
            .prepare("INSERT INTO ledger (id, minute_ms, tenant, it_joules, pue_basis, gpu_ms, late, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, 'minute', 60000, 0, ?5, ?5)")
            .unwrap();
        for r in &rows {
            stmt.execute(rusqlite::params![
                r.id,
                r.minute_ms,
                r.tenant,
                r.it_joules,
                GENESIS
            ])
            .unwrap();
        }
        drop(stmt);
        tx.commit().unwrap();
        c.execute_batch(dcwatt_collector::store::ledger::SCHEMA)
            .unwrap();
    }
    let mut out = Vec::new();

    // What the tree adds to a booking pass: one more SHA-256 per row (the
    // canonical bytes are already written for the chain hash) ...
    let base = plan.prefill as i64;
    let rows: Vec<Row> = (1..=plan.rows as i64)
        .map(|i| row(base + i, hour + 60_000))
        .collect();
    let canonical: Vec<String> = rows.iter().map(Row::canonical).collect();
    let mut ms = Vec::new();
    let mut leaves: Vec<(i64, Hash)> = Vec::new();
    for _ in 0..plan.runs {
        let start = Instant::now();
        leaves = rows
            .iter()
            .zip(&canonical)
            .map(|(r, c)| (r.id, merkle::leaf_hash(c.as_bytes())))
            .collect();
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let leaf_ms = ms.clone();
    out.push(timing("leaf hashes", ms));
    // ... and `extend_tree` (frontier, node hashes, node inserts), rolled back.
    let mut c = rusqlite::Connection::open(&db).unwrap();
    let mut ms = Vec::new();
    for _ in 0..plan.runs {
        let tx = c.transaction().unwrap();
        let start = Instant::now();
        tree::extend_tree(&tx, &leaves).unwrap();
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        tx.rollback().unwrap();
    }
    let tree_ms = ms.clone();
    out.push(timing("extend_tree (frontier, nodes, inserts)", ms));
    out.push(timing(
        "added per closed minute (the two above)",
        leaf_ms.iter().zip(&tree_ms).map(|(a, b)| a + b).collect(),
    ));
    let mut ms = Vec::new();
    for _ in 0..plan.runs {
        let start = Instant::now();
        let mut f = Frontier::new();
        for (_, leaf) in &leaves {
            f.push(*leaf, |_, _, _| {}).unwrap();
        }
        std::hint::black_box(f.root());
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    out.push(timing("of which node hashing (in memory)", ms));
    drop(c);

    // Whole booking passes, each a new minute, committed.
    let mut ms = Vec::new();
    for k in 0..plan.runs as i64 {
        let minute = hour + (k + 1) * 60_000;
        open_minute(&db, minute, plan.rows);
        let start = Instant::now();
        let n = store
            .close_minutes(&site, minute + 3 * 60_000, Some(1.2))
            .unwrap();
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(n, plan.rows);
    }
    out.push(timing("booking pass (close_minutes, all of it)", ms));

    // Checkpoints, each for a later hour.
    let mut ms = Vec::new();
    for k in 0..plan.runs as i64 {
        let now = hour + (k + 2) * 3_600_000 + 10 * 60_000;
        let start = Instant::now();
        let cp = store.checkpoint_due(&site, now).unwrap();
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(cp.is_some());
    }
    out.push(timing("checkpoint (once an hour)", ms));

    // A statement's proofs: 1,000 rows of one tenant spread over the tree.
    let size = plan.prefill as i64 + plan.rows as i64 * plan.runs as i64;
    let tenant_rows: Vec<Row> = (0..1000i64)
        .map(|k| row(1 + k * (size / 1000), hour))
        .collect();
    let mut ms = Vec::new();
    for _ in 0..plan.runs {
        let start = Instant::now();
        let p = store
            .statement_proofs(&tenant_rows, hour + 100 * 3_600_000)
            .unwrap();
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(p.unproven_rows, 0);
    }
    out.push(timing("statement proofs, 1,000 rows", ms));
    out
}

/// The timings as a table.
pub fn table(rows: &[Timing]) -> String {
    let mut t = String::from("| step | fastest ms | median ms |\n|---|---:|---:|\n");
    for r in rows {
        t += &format!("| {} | {:.2} | {:.2} |\n", r.what, r.min_ms, r.median_ms);
    }
    t
}

#[allow(dead_code)]
fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("DCWATT_BENCH_QUICK").is_some_and(|v| v == "1");
    let mut plan = if quick { Plan::quick() } else { Plan::full() };
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = args
        .iter()
        .position(|a| a == "--prefill")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        plan.prefill = n;
    }
    println!(
        "{} rows a minute, tree of {} leaves before",
        plan.rows, plan.prefill
    );
    println!("{}", table(&run(plan)));
}
