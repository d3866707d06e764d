//! Tenant statements against the simulated hall's ground truth: two tenants
//! (rack 1 by a node glob, one node of rack 2 by GPU UUIDs) and an unleased
//! node, forty simulated minutes of training load read by per-node agents every
//! 2 s (on the second, as agents tick), fed through the collector's real
//! `State::apply`, store and ledger. Each tenant's booked IT energy equals the
//! simulator's truth for its GPUs; owners add up to all GPU energy.

use std::collections::BTreeMap;

use dcwatt_collector::config::{token_hash, Config};
use dcwatt_collector::state::State;
use dcwatt_collector::statement::statement;
use dcwatt_collector::store::Store;
use dcwatt_sim::hall::{Entity as SimEntity, Hall};
use dcwatt_sim::SimConfig;
use dcwatt_wire::time::days_from_civil;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};

const MINUTES: i64 = 40;

#[test]
fn statements_equal_the_truth_of_each_tenants_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        racks: 2,
        nodes_per_rack: 2,
        gpus_per_node: 4,
        seed: 5,
        state_dir: dir.path().to_path_buf(),
    };
    let start = days_from_civil(2026, 6, 10) * 86_400_000 + 3_600_000;
    let mut hall = Hall::new(&config, start).unwrap();
    let nodes: Vec<(String, Vec<String>)> = hall
        .nodes()
        .map(|n| (n.name.clone(), n.gpus.clone()))
        .collect();
    let lab_b_gpus = &nodes.iter().find(|(n, _)| n == "r2-n1").unwrap().1;
    let toml = format!(
        "[[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\n[[tenants]]\nid = \"lab-b\"\ntoken_sha256 = \"{}\"\n\
         [[leases]]\ntenant = \"lab-a\"\nnodes = [\"r1-*\"]\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2027-01-01T00:00:00Z\"\n\
         [[leases]]\ntenant = \"lab-b\"\ngpus = {:?}\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2027-01-01T00:00:00Z\"\n",
        hex::encode(token_hash("a")),
        hex::encode(token_hash("b")),
        lab_b_gpus
    );
    let site = Config::from_toml(&toml).unwrap().build().unwrap();
    let mut state = State::new(&site);
    let mut store = Store::in_memory().unwrap();
    let end = start + MINUTES * 60_000;
    let mut seq = 0;
    let mut t = start;
    while t <= end {
        while hall.tick_start_ms() < t {
            hall.step();
        }
        seq += 1;
        for (node, gpus) in &nodes {
            let batch = Batch {
                version: VERSION,
                agent: node.clone(),
                seq,
                first_seq: None,
                node: node.clone(),
                created_ms: t,
                gpus: gpus
                    .iter()
                    .enumerate()
                    .map(|(i, u)| GpuInfo {
                        uuid: u.clone(),
                        index: i as u32,
                        model: "NVIDIA GB300".into(),
                        module: None,
                    })
                    .collect(),
                // The counter counts from the start of the simulation.
                readings: gpus
                    .iter()
                    .map(|u| Reading {
                        ts_ms: t,
                        entity: Entity::Gpu(u.clone()),
                        quantity: Quantity::EnergyJoules,
                        value: hall.truth(&SimEntity::Gpu(u.clone()), start, t).unwrap(),
                    })
                    .collect(),
            };
            let (_, changes) = state.apply(&batch, &site, t);
            store.commit(node, &state, &changes, &site).unwrap();
        }
        t += 2_000;
    }
    store.close_minutes(&site, end + 600_000, None).unwrap();

    // The truth per owner over the booked minutes [start, end).
    let mut truth: BTreeMap<&str, f64> = BTreeMap::new();
    for (node, gpus) in &nodes {
        let owner = match node.as_str() {
            n if n.starts_with("r1-") => "lab-a",
            "r2-n1" => "lab-b",
            _ => "_unleased",
        };
        for u in gpus {
            *truth.entry(owner).or_default() +=
                hall.truth(&SimEntity::Gpu(u.clone()), start, end).unwrap();
        }
    }
    let totals: BTreeMap<String, f64> = store
        .ledger_totals()
        .unwrap()
        .into_iter()
        .map(|t| (t.owner, t.it_joules))
        .collect();
    for (owner, want) in &truth {
        let got = totals[*owner];
        assert!(
            (got - want).abs() <= 1e-9 * want,
            "{owner}: booked {got} J, truth {want} J"
        );
    }
    for tenant in ["lab-a", "lab-b"] {
        let s = statement(&store, &site, tenant, "2026-06", end + 600_000)
            .unwrap()
            .unwrap();
        let want = truth[tenant] / 3.6e6;
        assert!(
            (s.it_kwh - want).abs() <= 1e-9 * want,
            "{tenant}: statement {} kWh, truth {want} kWh",
            s.it_kwh
        );
        assert!(
            (s.gpu_hours - 4.0 * (nodes_of(tenant) * MINUTES) as f64 / 60.0).abs() < 1e-9,
            "{tenant}: {}",
            s.gpu_hours
        );
        // June 1st up to the day of issue, the 10th.
        assert_eq!(s.days.len(), 10);
    }
    assert!(store.verify_ledger().unwrap().broken.is_none());
}

fn nodes_of(tenant: &str) -> i64 {
    if tenant == "lab-a" {
        2
    } else {
        1
    }
}
