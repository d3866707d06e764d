//! Collector hot paths, one at a time, through the public API: batch decode
//! (serde alone, then with validation), apply to the live state, the stored
//! window rollups behind `dcwatt_pue_ratio{window}`, and the `/metrics`
//! exposition of a whole hall.
//!
//! `cargo bench -p dcwatt-collector --bench hot_paths [-- --quick]` prints a
//! table of ns/op and ops/s. Each row is timed in several runs of at least a
//! fixed duration; the table gives the fastest run (the least disturbed by
//! other processes on the machine) and the median. `--quick` (or
//! `DCWATT_BENCH_QUICK=1`) runs a small hall and short runs: a smoke test that
//! the bench works, not a measurement.

#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use dcwatt_collector::config::{token_hash, Config, Site};
use dcwatt_collector::state::{Changes, State};
use dcwatt_collector::store::{self, Prepared, Store};
use dcwatt_collector::{export, figures, ingest, windows};
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};

/// Every quantity an agent reports per GPU, with a plausible value.
const GPU_QUANTITIES: [(Quantity, f64); 19] = [
    (Quantity::PowerWatts, 1000.0),
    (Quantity::EnergyJoules, 1.0e6),
    (Quantity::TemperatureCelsius, 65.0),
    (Quantity::MemoryTemperatureCelsius, 60.0),
    (Quantity::UtilizationRatio, 0.95),
    (Quantity::MemoryUtilizationRatio, 0.4),
    (Quantity::MemoryUsedBytes, 1.9e11),
    (Quantity::MemoryTotalBytes, 2.88e11),
    (Quantity::PowerLimitWatts, 1400.0),
    (Quantity::GpuUp, 1.0),
    (Quantity::TemperatureSlowdownCelsius, 87.0),
    (Quantity::TemperatureShutdownCelsius, 92.0),
    (Quantity::TemperatureGpuMaxCelsius, 85.0),
    (Quantity::TemperatureMemoryMaxCelsius, 95.0),
    (Quantity::ThrottleSwPowerCap, 0.0),
    (Quantity::ThrottleHwSlowdown, 0.0),
    (Quantity::ThrottleHwThermalSlowdown, 0.0),
    (Quantity::ThrottleSwThermalSlowdown, 0.0),
    (Quantity::ThrottleHwPowerBrakeSlowdown, 0.0),
];

/// The batch of agent `i` at `ts_ms`: 4 GPUs × every GPU quantity, plus its
/// PDU's power and energy counter (78 readings).
pub fn batch(i: usize, seq: u64, ts_ms: i64) -> Batch {
    let node = format!("n{i:05}");
    let mut gpus = Vec::new();
    let mut readings = Vec::new();
    for g in 0..4u32 {
        let uuid = format!("GPU-{i:08x}-{g:04x}-4000-8000-000000000000");
        gpus.push(GpuInfo {
            uuid: uuid.clone(),
            index: g,
            model: "NVIDIA GB300".into(),
            module: None,
        });
        for (q, v) in GPU_QUANTITIES {
            let value = if q == Quantity::EnergyJoules {
                v + seq as f64 * 1000.0
            } else {
                v
            };
            readings.push(Reading {
                ts_ms,
                entity: Entity::Gpu(uuid.clone()),
                quantity: q,
                value,
            });
        }
    }
    let meter = format!("pdu-{i:05}");
    readings.push(Reading {
        ts_ms,
        entity: Entity::Meter(meter.clone()),
        quantity: Quantity::PowerWatts,
        value: 4700.0,
    });
    readings.push(Reading {
        ts_ms,
        entity: Entity::Meter(meter),
        quantity: Quantity::EnergyJoules,
        value: 1.0e8 + seq as f64 * 4700.0,
    });
    Batch {
        version: VERSION,
        agent: node.clone(),
        seq,
        first_seq: None,
        node,
        created_ms: ts_ms,
        gpus,
        readings,
    }
}

/// A hall of `agents` agents, each with its PDU, and one utility meter.
pub fn site(agents: usize) -> Site {
    let mut toml = String::new();
    for i in 0..agents {
        toml += &format!(
            "[[agents]]\nid = \"n{i:05}\"\ntoken_sha256 = \"{}\"\nmeters = [\"pdu-{i:05}\"{}]\n[[meters]]\nid = \"pdu-{i:05}\"\nrole = \"it\"\nzone = \"hall-1\"\nit_point = \"pdu_output\"\n",
            hex::encode(token_hash(&format!("token-{i}"))),
            // The first agent also reads the utility meter.
            if i == 0 { ", \"utility\"" } else { "" }
        );
    }
    toml += "[[meters]]\nid = \"utility\"\nrole = \"facility\"\nzone = \"hall-1\"\n";
    let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("bench site: {e}"));
    config.build().unwrap_or_else(|e| panic!("bench site: {e}"))
}

/// The utility meter's reading at `ts_ms` (20 % over the hall's IT power).
fn utility(agents: usize, seq: u64, ts_ms: i64) -> Batch {
    let watts = agents as f64 * 4700.0 * 1.2;
    let mut b = batch(0, seq, ts_ms);
    b.gpus.clear();
    b.readings = vec![
        Reading {
            ts_ms,
            entity: Entity::Meter("utility".into()),
            quantity: Quantity::PowerWatts,
            value: watts,
        },
        Reading {
            ts_ms,
            entity: Entity::Meter("utility".into()),
            quantity: Quantity::EnergyJoules,
            value: 1.0e9 + seq as f64 * watts,
        },
    ];
    b
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was timed.
    pub what: String,
    /// Nanoseconds per operation, fastest run.
    pub min_ns: f64,
    /// Nanoseconds per operation, median run.
    pub median_ns: f64,
    /// Runs timed.
    pub runs: usize,
}

impl Row {
    /// Operations per second at the fastest run.
    pub fn ops_per_s(&self) -> f64 {
        1e9 / self.min_ns
    }
}

/// How long and how often each row is timed.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Agents in the hall rendered and rolled up.
    pub agents: usize,
    /// Runs per row.
    pub runs: usize,
    /// Each run repeats the operation for at least this long.
    pub run_for: Duration,
}

impl Plan {
    /// The measurement: 5,000 agents × 4 GPUs, 7 runs of ≥ 300 ms.
    pub fn full() -> Plan {
        Plan {
            agents: 5_000,
            runs: 7,
            run_for: Duration::from_millis(300),
        }
    }

    /// The smoke test: 50 agents, 2 runs of ≥ 5 ms.
    pub fn quick() -> Plan {
        Plan {
            agents: 50,
            runs: 2,
            run_for: Duration::from_millis(5),
        }
    }
}

/// Times `op` (which does `per_call` operations) `plan.runs` times.
fn time(what: &str, plan: Plan, per_call: usize, mut op: impl FnMut()) -> Row {
    let mut per_op = Vec::with_capacity(plan.runs);
    for _ in 0..plan.runs {
        let start = Instant::now();
        let mut calls = 0u64;
        while calls == 0 || start.elapsed() < plan.run_for {
            op();
            calls += 1;
        }
        per_op.push(start.elapsed().as_nanos() as f64 / (calls as f64 * per_call as f64));
    }
    per_op.sort_by(f64::total_cmp);
    Row {
        what: what.to_owned(),
        min_ns: per_op[0],
        median_ns: per_op[per_op.len() / 2],
        runs: plan.runs,
    }
}

/// Runs every row.
pub fn run(plan: Plan) -> Vec<Row> {
    let now = dcwatt_wire::time::now_ms();
    let site = site(plan.agents);
    let mut rows = Vec::new();

    // Decode: the same 64 bodies over and over (≈ 14 KB each).
    let bodies: Vec<(String, Vec<u8>)> = (0..64.min(plan.agents))
        .map(|i| {
            let b = batch(i, 1, now);
            let json = serde_json::to_vec(&b).unwrap_or_default();
            (b.agent, json)
        })
        .collect();
    let n = bodies.len();
    rows.push(time("decode, serde only (1 batch)", plan, n, || {
        for (_, body) in &bodies {
            let b: Result<Batch, _> = serde_json::from_slice(body);
            black_box(b.is_ok());
        }
    }));
    rows.push(time("decode + validate (1 batch)", plan, n, || {
        for (agent, body) in &bodies {
            black_box(ingest::decode(body, agent, &site, now).is_ok());
        }
    }));

    // Apply: every agent's next batch into a state that knows the whole hall.
    let mut state = State::new(&site);
    for i in 0..plan.agents {
        state.apply(&batch(i, 1, now - 1000), &site, now - 1000);
    }
    let mut seq = 1u64;
    let next: Vec<Batch> = (0..plan.agents.min(256))
        .map(|i| batch(i, 2, now))
        .collect();
    let m = next.len();
    rows.push(time("apply to state (1 batch)", plan, m, || {
        seq += 1;
        for b in &next {
            let mut b = b.clone();
            b.seq = seq;
            black_box(state.apply(&b, &site, now));
        }
    }));
    rows.push(time(
        "clone of the batch (subtract from apply)",
        plan,
        m,
        || {
            for b in &next {
                black_box(b.clone());
            }
        },
    ));

    // Serializing what a batch changed, and writing it: the group commit's
    // transactions of 32 batches into a file-backed store (WAL, synchronous =
    // NORMAL, as the collector runs it), the store already holding the hall.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("bench tempdir: {e}"));
    let mut store = Store::open(&dir.path().join("bench.sqlite"))
        .unwrap_or_else(|e| panic!("bench store: {e}"));
    let mut prepared = Vec::with_capacity(plan.agents);
    for i in 0..plan.agents {
        let b = batch(i, 1, now - 500);
        let (_, changes) = state.apply(&b, &site, now - 500);
        prepared.push(
            store::prepare(&b.agent, &state, &changes).unwrap_or_else(|e| panic!("prepare: {e}")),
        );
    }
    for chunk in prepared.chunks(256) {
        store
            .commit_group(chunk, &site)
            .unwrap_or_else(|e| panic!("commit: {e}"));
    }
    let changes: Vec<(String, Changes)> = next
        .iter()
        .map(|b| {
            let mut b = b.clone();
            seq += 1;
            b.seq = seq;
            (b.agent.clone(), state.apply(&b, &site, now).1)
        })
        .collect();
    rows.push(time(
        "prepare: serialize a batch's changed rows",
        plan,
        m,
        || {
            for (agent, c) in &changes {
                black_box(store::prepare(agent, &state, c).is_ok());
            }
        },
    ));
    let group: Vec<Prepared> = changes
        .iter()
        .filter_map(|(agent, c)| store::prepare(agent, &state, c).ok())
        .collect();
    rows.push(time(
        "store: write in transactions of 32 batches (1 batch)",
        plan,
        group.len(),
        || {
            for chunk in group.chunks(32) {
                black_box(store.commit_group(chunk, &site).is_ok());
            }
        },
    ));

    // Exposition of the whole hall, from the live state.
    let figures = figures::compute(&state, &site, now, Vec::new());
    let text = export::render(&state, &site, &figures, &[]);
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    rows.push(time(
        &format!(
            "/metrics render, {} agents × 4 GPUs ({} series, {} KiB)",
            plan.agents,
            series,
            text.len() / 1024
        ),
        plan,
        1,
        || {
            black_box(export::render(&state, &site, &figures, &[]).len());
        },
    ));
    rows.push(time(
        &format!("figures for /metrics, {} agents", plan.agents),
        plan,
        1,
        || {
            black_box(figures::compute(&state, &site, now, Vec::new()).now_ms);
        },
    ));

    // Window rollup: a small site (3 meters) with 26 h of stored minutes,
    // committed batch by batch as the collector does.
    let small = {
        let mut toml = String::from(
            "[[agents]]\nid = \"gw\"\ntoken_sha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"\n",
        );
        toml += "[[meters]]\nid = \"utility\"\nrole = \"facility\"\nzone = \"hall-1\"\n";
        toml += "[[meters]]\nid = \"pdu-00000\"\nrole = \"it\"\nzone = \"hall-1\"\nit_point = \"pdu_output\"\n";
        toml += "[[meters]]\nid = \"pdu-00001\"\nrole = \"it\"\nzone = \"hall-1\"\nit_point = \"pdu_output\"\n";
        Config::from_toml(&toml)
            .and_then(Config::build)
            .unwrap_or_else(|e| panic!("bench window site: {e}"))
    };
    let mut store = Store::in_memory().unwrap_or_else(|e| panic!("in-memory store: {e}"));
    let mut small_state = State::new(&small);
    let minutes: i64 = if plan.agents >= 1000 { 26 * 60 } else { 90 };
    let step_ms = 20_000;
    let start_ms = now - minutes * 60_000;
    let mut ts = start_ms;
    let mut s = 0u64;
    while ts <= now {
        s += 1;
        let mut b = utility(2, s, ts);
        b.agent = "gw".into();
        b.node = "gw".into();
        b.seq = s;
        for i in 0..2 {
            let mut pdu = batch(i, s, ts).readings.split_off(76);
            for r in &mut pdu {
                r.value = if r.quantity == Quantity::EnergyJoules {
                    1.0e8 + (ts - start_ms) as f64 * 4.7
                } else {
                    r.value
                };
            }
            b.readings.extend(pdu);
        }
        let (_, changes) = small_state.apply(&b, &small, ts);
        if let Err(e) = store.commit("gw", &small_state, &changes, &small) {
            panic!("commit: {e}");
        }
        ts += step_ms;
    }
    rows.push(time(
        &format!(
            "window rollup: {} ({minutes} min stored)",
            windows::TRAILING
                .iter()
                .map(|w| w.label)
                .collect::<Vec<_>>()
                .join("/")
        ),
        plan,
        1,
        || {
            black_box(windows::trailing(&store, &small, now).map(|w| w.len()).ok());
        },
    ));
    rows
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| operation | ns/op (min) | ns/op (median) | ops/s (min) | runs |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out += &format!(
            "| {} | {:.0} | {:.0} | {:.0} | {} |\n",
            r.what,
            r.min_ns,
            r.median_ns,
            r.ops_per_s(),
            r.runs
        );
    }
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("DCWATT_BENCH_QUICK").is_some_and(|v| v == "1");
    let mut plan = if quick { Plan::quick() } else { Plan::full() };
    // `--agents N`: another hall size (e.g. 10000 for the top of the sweep).
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = args
        .iter()
        .position(|a| a == "--agents")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        plan.agents = n;
    }
    println!("{}", table(&run(plan)));
}
