//! Spool benchmark: write and replay throughput, and the CPU one append costs
//! (the agent's extra CPU per tick from spooling: it makes one batch per tick).
//!
//! `cargo bench -p dcwatt-agent --bench spool [-- BATCHES]` prints a table.
//! Batches are JSON of a GPU node's tick: 8 GPUs × 8 readings plus a meter,
//! about 7 KB. The spool lives in a temporary directory (the disk under `$TMPDIR`).

#![allow(dead_code)]

use std::time::Instant;

use dcwatt_agent::spool::{Fsync, Spool, SpoolSpec, Storage};
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};

/// One measured line of the table.
pub struct Row {
    /// What was measured.
    pub what: String,
    /// Batches per second.
    pub batches_per_s: f64,
    /// MB (10^6 bytes) of batch JSON per second.
    pub mb_per_s: f64,
    /// Process CPU time per batch, microseconds.
    pub cpu_us_per_batch: f64,
}

/// A GPU node's batch, encoded.
pub fn sample_batch(seq: u64) -> Vec<u8> {
    let mut readings = Vec::new();
    let mut gpus = Vec::new();
    let quantities = [
        Quantity::PowerWatts,
        Quantity::EnergyJoules,
        Quantity::TemperatureCelsius,
        Quantity::UtilizationRatio,
        Quantity::MemoryUtilizationRatio,
        Quantity::MemoryUsedBytes,
        Quantity::MemoryTotalBytes,
        Quantity::PowerLimitWatts,
    ];
    for g in 0..8u32 {
        let uuid = format!("GPU-2b7f{g:04x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
        for (k, q) in quantities.iter().enumerate() {
            readings.push(Reading {
                ts_ms: 1_764_340_000_000 + seq as i64 * 1000,
                entity: Entity::Gpu(uuid.clone()),
                quantity: *q,
                value: 1234.5678 * (k + 1) as f64 + seq as f64,
            });
        }
        gpus.push(GpuInfo {
            uuid,
            index: g,
            model: "NVIDIA GB300".into(),
            module: None,
        });
    }
    readings.push(Reading {
        ts_ms: 1_764_340_000_000,
        entity: Entity::Meter("pdu-r12-a".into()),
        quantity: Quantity::EnergyJoules,
        value: 203_176_800_000.0,
    });
    let b = Batch {
        version: VERSION,
        agent: "r12-n03".into(),
        seq,
        first_seq: None,
        node: "r12-n03".into(),
        created_ms: 1_764_340_000_000,
        gpus,
        readings,
    };
    serde_json::to_vec(&b).unwrap_or_default()
}

/// Process CPU time (user + system), seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; no other memory is involved.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn row(what: &str, n: usize, bytes: usize, wall: f64, cpu: f64) -> Row {
    Row {
        what: what.to_owned(),
        batches_per_s: n as f64 / wall,
        mb_per_s: bytes as f64 / wall / 1e6,
        cpu_us_per_batch: cpu / n as f64 * 1e6,
    }
}

/// Runs every measurement with `n` batches.
pub fn run(n: usize) -> Vec<Row> {
    let body = sample_batch(1);
    let mut rows = Vec::new();
    for (name, storage) in [
        ("memory", None),
        ("disk, fsync = \"never\"", Some(Fsync::Never)),
        ("disk, fsync = \"always\"", Some(Fsync::Always)),
    ] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let spec = SpoolSpec {
            storage: match storage {
                None => Storage::Memory,
                Some(fsync) => Storage::Disk {
                    dir: dir.path().to_owned(),
                    fsync,
                },
            },
            max_bytes: 1 << 34,
        };
        let labels = ["http://collector-a:9400".to_owned()];
        let mut spool = Spool::open(&spec, &labels).unwrap_or_else(|e| panic!("{e}"));
        let (t, c) = (Instant::now(), cpu_seconds());
        for _ in 0..n {
            spool
                .append(1_764_340_000_000, &body)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        rows.push(row(
            &format!("append, {name}"),
            n,
            n * body.len(),
            t.elapsed().as_secs_f64(),
            cpu_seconds() - c,
        ));
        if storage.is_some() {
            drop(spool);
            let (t, c) = (Instant::now(), cpu_seconds());
            let mut spool = Spool::open(&spec, &labels).unwrap_or_else(|e| panic!("{e}"));
            let mut after = spool.acked(0);
            let mut read = 0;
            loop {
                let recs = spool.read_after(after, 1 << 20, 600);
                let Some(last) = recs.last() else { break };
                after = last.seq;
                read += recs.len();
            }
            assert_eq!(read, n);
            rows.push(row(
                &format!("reopen + replay, {name}"),
                n,
                n * body.len(),
                t.elapsed().as_secs_f64(),
                cpu_seconds() - c,
            ));
        }
    }
    rows
}

/// The table, as docs/benchmarks.md shows it.
pub fn table(rows: &[Row]) -> String {
    let mut out =
        String::from("| operation | batches/s | MB/s | CPU µs/batch |\n|---|---:|---:|---:|\n");
    for r in rows {
        out += &format!(
            "| {} | {:.0} | {:.1} | {:.1} |\n",
            r.what, r.batches_per_s, r.mb_per_s, r.cpu_us_per_batch
        );
    }
    out
}

fn main() {
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    println!(
        "spool benchmark: {n} batches of {} bytes of JSON each\n",
        sample_batch(1).len()
    );
    print!("{}", table(&run(n)));
}
