//! A metered node's energy beyond its GPUs is shared among the owners of its
//! GPUs once every GPU has its minute (or is taken as down), a late GPU
//! minute corrects the share with adjustment rows instead of a second full
//! count, and a remainder nobody can be billed for is counted as unbooked.
//! Driven through the collector's own `State::apply`, store and ledger, with
//! the clock passed in.

use dcwatt_collector::config::{token_hash, Config, Site};
use dcwatt_collector::store::ledger::{NODE_KEEP_MS, NODE_WAIT_MS};
use dcwatt_collector::{state::State, store::Store};
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};

/// A UTC minute edge.
const T0: i64 = 1_795_000_020_000;
const MINUTES: i64 = 4;

fn site() -> Site {
    let h = |t: &str| hex::encode(token_hash(t));
    Config::from_toml(&format!(
        r#"
        [[agents]]
        id = "n1"
        token_sha256 = "{}"
        meters = ["psu-n1"]
        [[agents]]
        id = "n2"
        token_sha256 = "{}"
        meters = ["psu-n2"]
        [[meters]]
        id = "psu-n1"
        role = "it"
        it_point = "it_input"
        node = "n1"
        [[meters]]
        id = "psu-n2"
        role = "it"
        it_point = "it_input"
        node = "n2"
        [[tenants]]
        id = "lab-a"
        token_sha256 = "{}"
        [[tenants]]
        id = "lab-b"
        token_sha256 = "{}"
        [[leases]]
        tenant = "lab-a"
        gpus = ["GPU-a1"]
        from = "2026-01-01T00:00:00Z"
        to = "2030-01-01T00:00:00Z"
        [[leases]]
        tenant = "lab-b"
        gpus = ["GPU-a2"]
        from = "2026-01-01T00:00:00Z"
        to = "2030-01-01T00:00:00Z"
        "#,
        h("n1"),
        h("n2"),
        h("a"),
        h("b")
    ))
    .unwrap()
    .build()
    .unwrap()
}

fn counter(ts_ms: i64, entity: Entity, watts: f64) -> Reading {
    Reading {
        ts_ms,
        entity,
        quantity: Quantity::EnergyJoules,
        value: 1.0e6 + watts * (ts_ms - T0) as f64 / 1000.0,
    }
}

fn batch(agent: &str, seq: u64, gpus: &[&str], readings: Vec<Reading>) -> Batch {
    Batch {
        version: VERSION,
        agent: agent.into(),
        seq,
        first_seq: None,
        node: agent.into(),
        created_ms: T0,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, u)| GpuInfo {
                uuid: (*u).into(),
                index: i as u32,
                model: "NVIDIA GB300".into(),
                module: None,
            })
            .collect(),
        readings,
    }
}

/// Every reading instant of the four minutes, 10 s apart.
fn instants() -> impl Iterator<Item = i64> {
    (0..=MINUTES * 6).map(|k| T0 + k * 10_000)
}

/// Per minute and tenant, the IT energy of every row booked (late ones included).
fn booked(store: &Store, tenant: &str, minute: i64) -> f64 {
    store
        .tenant_rows(tenant, minute, minute + 60_000)
        .unwrap()
        .iter()
        .map(|r| r.it_joules)
        .sum()
}

#[test]
fn late_gpu_minutes_adjust_the_node_share_and_energy_is_conserved() {
    let site = site();
    let mut state = State::new(&site);
    let mut store = Store::in_memory().unwrap();
    let mut seq = 0;
    let apply = |state: &mut State, store: &mut Store, b: Batch| {
        let (_, changes) = state.apply(&b, &site, T0);
        store.commit(&b.agent, state, &changes, &site).unwrap();
    };
    // Node n1: 2 kW at its input; GPU-a1 1 kW (lab-a); GPU-a2 0.6 kW
    // (lab-b), whose readings arrive late. Node n2: 0.5 kW, no GPUs.
    for ts in instants() {
        seq += 1;
        let b = batch(
            "n1",
            seq,
            &["GPU-a1", "GPU-a2"],
            vec![
                counter(ts, Entity::Meter("psu-n1".into()), 2000.0),
                counter(ts, Entity::Gpu("GPU-a1".into()), 1000.0),
            ],
        );
        apply(&mut state, &mut store, b);
        let b = batch(
            "n2",
            seq,
            &[],
            vec![counter(ts, Entity::Meter("psu-n2".into()), 500.0)],
        );
        apply(&mut state, &mut store, b);
    }
    let end = T0 + MINUTES * 60_000;
    // The first close past the minutes: GPU-a2 has not reported, so the
    // node-minutes wait for it.
    let first = end + 60_000 + site.close_after_ms + 1;
    store.close_minutes(&site, first, None).unwrap();
    for m in 0..MINUTES {
        let minute = T0 + m * 60_000;
        assert_eq!(booked(&store, "lab-a", minute), 60_000.0, "minute {m}");
    }
    // NODE_WAIT_MS later GPU-a2 is taken as down: lab-a, the only owner
    // with GPU time, gets the node's whole remainder.
    store
        .close_minutes(&site, first + NODE_WAIT_MS, None)
        .unwrap();
    for m in 0..MINUTES {
        let minute = T0 + m * 60_000;
        assert_eq!(booked(&store, "lab-a", minute), 120_000.0, "minute {m}");
    }
    // GPU-a2's minutes arrive (a spool replay): the share is corrected by
    // adjustment rows, not counted again.
    let late: Vec<Reading> = instants()
        .map(|ts| counter(ts, Entity::Gpu("GPU-a2".into()), 600.0))
        .collect();
    seq += 1;
    apply(
        &mut state,
        &mut store,
        batch("n1", seq, &["GPU-a1", "GPU-a2"], late),
    );
    store
        .close_minutes(&site, first + NODE_WAIT_MS + 10_000, None)
        .unwrap();
    for m in 0..MINUTES {
        let minute = T0 + m * 60_000;
        let (a, b) = (
            booked(&store, "lab-a", minute),
            booked(&store, "lab-b", minute),
        );
        // Remainder 2 − 1.6 kW, shared by GPU time (equal): 12 kJ each.
        assert!((a - 72_000.0).abs() < 1e-6, "minute {m}: lab-a {a}");
        assert!((b - 48_000.0).abs() < 1e-6, "minute {m}: lab-b {b}");
        // Conservation: the owners hold exactly what the node meter measured.
        assert!((a + b - 120_000.0).abs() < 1e-6, "minute {m}: {a} + {b}");
    }
    let rows = store.tenant_rows("lab-a", T0, end).unwrap();
    assert!(
        rows.iter()
            .any(|r| r.late && r.node_joules.is_some_and(|j| j < 0.0)),
        "the correction is a late adjustment row: {rows:?}"
    );
    assert!(store.verify_ledger().unwrap().broken.is_none());
    // Node n2 has no GPU time to share by: nothing booked, and once its
    // minutes are past keeping, their energy is counted as unbooked.
    assert_eq!(store.unbooked_node_joules().unwrap(), 0.0);
    store
        .close_minutes(&site, first + NODE_KEEP_MS + 1, None)
        .unwrap();
    let unbooked = store.unbooked_node_joules().unwrap();
    assert!(
        (unbooked - MINUTES as f64 * 60.0 * 500.0).abs() < 1e-6,
        "{unbooked}"
    );
    // Nothing is booked twice after the rows are gone.
    store
        .close_minutes(&site, first + 2 * NODE_KEEP_MS, None)
        .unwrap();
    assert_eq!(store.unbooked_node_joules().unwrap(), unbooked);
    for m in 0..MINUTES {
        let minute = T0 + m * 60_000;
        let total = booked(&store, "lab-a", minute) + booked(&store, "lab-b", minute);
        assert!((total - 120_000.0).abs() < 1e-6, "minute {m}: {total}");
    }
}
