//! Superchip module energy beyond its GPUs (Grace CPU, LPDDR, board) is
//! billed to the owners of its GPUs by GPU time, conserved to the joule
//! with and without a node meter (never counted twice against the node's
//! remainder), durable across a restart, and bad module claims are refused
//! or ignored and counted. Driven through `ingest::validate`, `State::apply`,
//! the store and the ledger's close, with the clock passed in.

use std::collections::BTreeMap;

use dcwatt_collector::config::{token_hash, Config, Site};
use dcwatt_collector::ingest;
use dcwatt_collector::state::{Ignored, State};
use dcwatt_collector::store::ledger::NODE_WAIT_MS;
use dcwatt_collector::store::Store;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};

/// A UTC minute edge.
const T0: i64 = 1_795_000_020_000;
const MINUTES: i64 = 4;

fn site(metered: bool) -> Site {
    let h = |t: &str| hex::encode(token_hash(t));
    let meter = if metered {
        "meters = [\"psu-n1\"]\n[[meters]]\nid = \"psu-n1\"\nrole = \"it\"\nit_point = \"it_input\"\nnode = \"n1\"\n"
    } else {
        ""
    };
    Config::from_toml(&format!(
        r#"
        [[tenants]]
        id = "lab-a"
        token_sha256 = "{}"
        [[tenants]]
        id = "lab-b"
        token_sha256 = "{}"
        [[leases]]
        tenant = "lab-a"
        gpus = ["GPU-a1", "GPU-b1"]
        from = "2026-01-01T00:00:00Z"
        to = "2030-01-01T00:00:00Z"
        [[leases]]
        tenant = "lab-b"
        gpus = ["GPU-a2"]
        from = "2026-01-01T00:00:00Z"
        to = "2030-01-01T00:00:00Z"
        [[agents]]
        id = "n1"
        token_sha256 = "{}"
        {meter}
        "#,
        h("a"),
        h("b"),
        h("n1"),
    ))
    .unwrap()
    .build()
    .unwrap()
}

/// GPUs and their modules: superchip m0 holds lab-a's and lab-b's GPUs,
/// m1 one of lab-a's and one unleased GPU.
const GPUS: [(&str, &str, f64); 4] = [
    ("GPU-a1", "m0", 1000.0),
    ("GPU-a2", "m0", 600.0),
    ("GPU-b1", "m1", 500.0),
    ("GPU-b2", "m1", 500.0),
];
const MODULE_W: [(&str, f64); 2] = [("m0", 2000.0), ("m1", 1500.0)];
const NODE_W: f64 = 4000.0;

fn batch(seq: u64, ts: i64, metered: bool) -> Batch {
    let mut readings = Vec::new();
    let dt = (ts - T0) as f64 / 1000.0;
    for (uuid, _, w) in GPUS {
        readings.push(Reading {
            ts_ms: ts,
            entity: Entity::Gpu(uuid.into()),
            quantity: Quantity::EnergyJoules,
            value: 1.0e6 + w * dt,
        });
    }
    for (id, w) in MODULE_W {
        readings.push(Reading {
            ts_ms: ts,
            entity: Entity::Module(id.into()),
            quantity: Quantity::IntegratedEnergyJoules,
            value: w * dt,
        });
    }
    if metered {
        readings.push(Reading {
            ts_ms: ts,
            entity: Entity::Meter("psu-n1".into()),
            quantity: Quantity::EnergyJoules,
            value: 5.0e6 + NODE_W * dt,
        });
    }
    Batch {
        version: VERSION,
        agent: "n1".into(),
        seq,
        first_seq: None,
        node: "n1".into(),
        created_ms: ts,
        gpus: GPUS
            .iter()
            .enumerate()
            .map(|(i, (u, m, _))| GpuInfo {
                uuid: (*u).into(),
                index: i as u32,
                model: "NVIDIA GB300".into(),
                module: Some((*m).into()),
            })
            .collect(),
        readings,
    }
}

/// Per owner: (IT energy, module energy, node energy) over the minutes.
type Owners = BTreeMap<String, (f64, f64, f64)>;

/// Drives the node for MINUTES minutes (a reading every 10 s), optionally
/// restarting the collector (state reloaded from the database) halfway, and
/// books everything. Returns the totals per owner and the store.
fn run(metered: bool, restart: bool) -> (Owners, Store, tempfile::TempDir) {
    let site = site(metered);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let mut store = Store::open(&db).unwrap();
    let mut state = State::new(&site);
    for (k, ts) in (0..=MINUTES * 6).map(|k| (k, T0 + k * 10_000)) {
        if restart && k == 13 {
            drop(store);
            store = Store::open(&db).unwrap();
            state = State::new(&site);
            store.load(&mut state).unwrap();
        }
        let b = batch(k as u64 + 1, ts, metered);
        ingest::validate(&b, "n1", &site, ts).unwrap();
        let (_, changes) = state.apply(&b, &site, ts);
        store.commit("n1", &state, &changes, &site).unwrap();
    }
    let end = T0 + MINUTES * 60_000;
    store
        .close_minutes(&site, end + 60_000 + site.close_after_ms + 1, None)
        .unwrap();
    assert!(store.verify_ledger().unwrap().broken.is_none());
    let mut owners = Owners::new();
    for owner in ["lab-a", "lab-b", "_unleased"] {
        for r in store.tenant_rows(owner, T0, end).unwrap() {
            let e = owners.entry(owner.to_owned()).or_default();
            e.0 += r.it_joules;
            e.1 += r.module_joules.unwrap_or(0.0);
            e.2 += r.node_joules.unwrap_or(0.0);
        }
    }
    (owners, store, dir)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn module_remainder_is_split_by_gpu_time_and_conserved() {
    let (owners, ..) = run(false, false);
    let m = MINUTES as f64 * 60.0; // seconds
    let gpus: f64 = GPUS.iter().map(|g| g.2).sum::<f64>() * m;
    // m0: 2000 − 1600 W beyond its GPUs; lab-a's and lab-b's GPUs each hold
    // half its GPU time: 200 W each, whatever their own GPU energy. m1:
    // 1500 − 1000 W, half to lab-a, half (the unleased GPU's) to _unleased.
    let (a, b, u) = (&owners["lab-a"], &owners["lab-b"], &owners["_unleased"]);
    assert!(close(a.1, (200.0 + 250.0) * m), "lab-a module {a:?}");
    assert!(close(b.1, 200.0 * m), "lab-b module {b:?}");
    assert!(close(u.1, 250.0 * m), "_unleased module {u:?}");
    assert!(close(a.0, (1000.0 + 500.0 + 450.0) * m), "lab-a {a:?}");
    assert!(close(b.0, (600.0 + 200.0) * m), "lab-b {b:?}");
    assert!(close(u.0, (500.0 + 250.0) * m), "_unleased {u:?}");
    // Conservation: Σ owners = GPU energy + module remainders, to the joule;
    // no node meter, no node energy.
    let total: f64 = owners.values().map(|o| o.0).sum();
    assert!(close(total, gpus + (400.0 + 500.0) * m), "{owners:?}");
    assert!(owners.values().all(|o| o.2 == 0.0), "{owners:?}");
}

#[test]
fn with_a_node_meter_the_module_part_is_not_counted_twice() {
    let (owners, ..) = run(true, false);
    let m = MINUTES as f64 * 60.0;
    let gpus: f64 = GPUS.iter().map(|g| g.2).sum::<f64>() * m;
    let modules = (400.0 + 500.0) * m;
    // The node remainder is the meter less GPUs less module remainders:
    // 4000 − 2600 − 900 = 500 W, shared by GPU time over four GPUs (two
    // of them lab-a's).
    let node: f64 = owners.values().map(|o| o.2).sum();
    assert!(close(node, 500.0 * m), "{owners:?}");
    assert!(close(owners["lab-a"].2, 250.0 * m), "{owners:?}");
    assert!(close(owners["lab-b"].2, 125.0 * m), "{owners:?}");
    let module: f64 = owners.values().map(|o| o.1).sum();
    assert!(close(module, modules), "{owners:?}");
    // Σ owners = GPU energy + module remainders + node remainder = the
    // node meter, exactly.
    let total: f64 = owners.values().map(|o| o.0).sum();
    assert!(close(total, gpus + modules + 500.0 * m), "{owners:?}");
    assert!(close(total, NODE_W * m), "{total} vs the meter");
}

#[test]
fn a_restart_loses_no_module_energy() {
    let (straight, ..) = run(true, false);
    let (restarted, ..) = run(true, true);
    for (owner, s) in &straight {
        let r = &restarted[owner];
        assert!(
            close(s.0, r.0) && close(s.1, r.1) && close(s.2, r.2),
            "{owner}: {s:?} vs {r:?} after a restart"
        );
    }
}

#[test]
fn bad_module_claims_are_refused_or_ignored_and_counted() {
    let site = site(false);
    let ts = T0;
    // A GPU listed twice with two modules: refused, naming the field.
    let mut b = batch(1, ts, false);
    let mut twice = b.gpus[0].clone();
    twice.module = Some("m1".into());
    b.gpus.push(twice);
    let err = ingest::validate(&b, "n1", &site, ts).unwrap_err();
    assert!(format!("{err:?}").contains("gpus[4].module"), "{err:?}");
    // A module id outside the id alphabet: refused.
    let mut b = batch(1, ts, false);
    b.gpus[0].module = Some("m/0".into());
    let err = ingest::validate(&b, "n1", &site, ts).unwrap_err();
    assert!(format!("{err:?}").contains("gpus[0].module"), "{err:?}");
    // A module the node does not report: ignored, counted, the GPU in none
    // (its minutes bill no module).
    let mut state = State::new(&site);
    let mut b = batch(1, ts, false);
    b.gpus[0].module = Some("m9".into());
    ingest::validate(&b, "n1", &site, ts).unwrap();
    state.apply(&b, &site, ts);
    assert_eq!(state.ignored.get(&Ignored::UnknownModule), Some(&1));
    assert_eq!(state.gpus["GPU-a1"].module, None);
    assert_eq!(state.gpus["GPU-a2"].module.as_deref(), Some("m0"));
    // A node at the 16-module cap: a GPU naming a 17th is counted as such.
    let mut b = batch(2, ts + 1, false);
    b.readings = (0..16)
        .map(|i| Reading {
            ts_ms: ts + 1,
            entity: Entity::Module(format!("x{i}")),
            quantity: Quantity::PowerWatts,
            value: 1.0,
        })
        .collect();
    b.gpus[0].module = Some("x99".into());
    state.apply(&b, &site, ts + 1);
    // Two of the sixteen readings are past the cap (m0 and m1 are in), and
    // the GPU's claim.
    assert_eq!(state.ignored.get(&Ignored::TooManyModules), Some(&3));
    assert_eq!(state.gpus["GPU-a1"].module, None);
}

#[test]
fn a_late_gpu_minute_adjusts_the_module_share() {
    let site = site(false);
    let mut state = State::new(&site);
    let mut store = Store::in_memory().unwrap();
    let instants: Vec<i64> = (0..=MINUTES * 6).map(|k| T0 + k * 10_000).collect();
    let mut seq = 0;
    // GPU-a2's energy readings are held back (a spool replay later).
    for ts in &instants {
        seq += 1;
        let mut b = batch(seq, *ts, false);
        b.readings
            .retain(|r| r.entity != Entity::Gpu("GPU-a2".into()));
        let (_, changes) = state.apply(&b, &site, *ts);
        store.commit("n1", &state, &changes, &site).unwrap();
    }
    let end = T0 + MINUTES * 60_000;
    let module_of = |store: &Store, owner: &str| -> f64 {
        store
            .tenant_rows(owner, T0, end)
            .unwrap()
            .iter()
            .filter_map(|r| r.module_joules)
            .sum()
    };
    let m = MINUTES as f64 * 60.0;
    // m0's minutes wait for GPU-a2, then take it as down: lab-a, the only
    // owner with GPU time in m0, gets m0's whole 2000 − 1000 W.
    let first = end + 60_000 + site.close_after_ms + 1;
    store.close_minutes(&site, first, None).unwrap();
    assert!(close(module_of(&store, "lab-a"), 250.0 * m));
    store
        .close_minutes(&site, first + NODE_WAIT_MS, None)
        .unwrap();
    assert!(close(module_of(&store, "lab-a"), (1000.0 + 250.0) * m));
    // GPU-a2's minutes arrive: corrected by adjustment rows.
    seq += 1;
    let mut late = batch(seq, instants[instants.len() - 1], false);
    late.readings = instants
        .iter()
        .map(|ts| Reading {
            ts_ms: *ts,
            entity: Entity::Gpu("GPU-a2".into()),
            quantity: Quantity::EnergyJoules,
            value: 1.0e6 + 600.0 * (ts - T0) as f64 / 1000.0,
        })
        .collect();
    let (_, changes) = state.apply(&late, &site, first + NODE_WAIT_MS);
    store.commit("n1", &state, &changes, &site).unwrap();
    store
        .close_minutes(&site, first + NODE_WAIT_MS + 10_000, None)
        .unwrap();
    assert!(close(module_of(&store, "lab-a"), (200.0 + 250.0) * m));
    assert!(close(module_of(&store, "lab-b"), 200.0 * m));
    let rows = store.tenant_rows("lab-a", T0, end).unwrap();
    assert!(
        rows.iter()
            .any(|r| r.late && r.module_joules.is_some_and(|j| j < 0.0)),
        "the correction is a late adjustment row: {rows:?}"
    );
    let total: f64 = ["lab-a", "lab-b", "_unleased"]
        .iter()
        .flat_map(|o| store.tenant_rows(o, T0, end).unwrap())
        .map(|r| r.it_joules)
        .sum();
    let gpus: f64 = GPUS.iter().map(|g| g.2).sum::<f64>() * m;
    assert!(close(total, gpus + 900.0 * m), "{total}");
    assert!(store.verify_ledger().unwrap().broken.is_none());
}
