//! Per tenant-minute GPU activity (GPM SM and tensor activity, weighted by
//! GPU time) and idle energy (GPU energy while SM activity is below
//! `[utilization] idle_sm_active_below`) are booked in the ledger row
//! (ledger v4, hash-covered), summed into the statement (JSON and CSV), and
//! absent for a tenant whose GPUs have no GPM (its rows keep their earlier
//! bytes). Driven through `State::apply`, the store and the ledger's close.

use dcwatt_collector::config::{token_hash, Config, Site};
use dcwatt_collector::state::State;
use dcwatt_collector::store::Store;
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
        h("a"),
        h("b"),
    ))
    .unwrap()
    .build()
    .unwrap()
}

fn reading(ts_ms: i64, uuid: &str, quantity: Quantity, value: f64) -> Reading {
    Reading {
        ts_ms,
        entity: Entity::Gpu(uuid.into()),
        quantity,
        value,
    }
}

/// GPU-a1 (lab-a, with GPM) idles (SM 2 %) for two minutes, then works
/// (SM 80 %), tensor 30 % throughout; GPU-a2 (lab-b) has no GPM. Both draw
/// 1 kW. Readings every 10 s, activity before energy in each batch.
fn batch(seq: u64, ts: i64) -> Batch {
    let dt = (ts - T0) as f64 / 1000.0;
    let sm = if ts - T0 < 120_000 { 0.02 } else { 0.8 };
    Batch {
        version: VERSION,
        agent: "n1".into(),
        seq,
        first_seq: None,
        node: "n1".into(),
        created_ms: ts,
        gpus: ["GPU-a1", "GPU-a2"]
            .iter()
            .enumerate()
            .map(|(i, u)| GpuInfo {
                uuid: (*u).into(),
                index: i as u32,
                model: "NVIDIA GB300".into(),
                module: None,
            })
            .collect(),
        readings: vec![
            reading(ts, "GPU-a1", Quantity::SmActiveRatio, sm),
            reading(ts, "GPU-a1", Quantity::TensorActiveRatio, 0.3),
            reading(ts, "GPU-a1", Quantity::UtilizationRatio, 0.9),
            reading(ts, "GPU-a2", Quantity::UtilizationRatio, 0.9),
            reading(ts, "GPU-a1", Quantity::EnergyJoules, 1.0e6 + 1000.0 * dt),
            reading(ts, "GPU-a2", Quantity::EnergyJoules, 1.0e6 + 1000.0 * dt),
        ],
    }
}

#[test]
fn activity_and_idle_energy_are_booked_per_tenant_minute() {
    let site = site();
    let mut state = State::new(&site);
    let mut store = Store::in_memory().unwrap();
    for k in 0..=MINUTES * 6 {
        let ts = T0 + k * 10_000;
        let b = batch(k as u64 + 1, ts);
        let (_, changes) = state.apply(&b, &site, ts);
        store.commit("n1", &state, &changes, &site).unwrap();
    }
    let end = T0 + MINUTES * 60_000;
    let now = end + 60_000 + site.close_after_ms + 1;
    store.close_minutes(&site, now, None).unwrap();
    assert!(store.verify_ledger().unwrap().broken.is_none());

    let a = store.tenant_rows("lab-a", T0, end).unwrap();
    assert_eq!(a.len(), MINUTES as usize, "{a:?}");
    let close = |x: Option<f64>, y: f64| x.is_some_and(|x| (x - y).abs() < 1e-9);
    for (m, r) in a.iter().enumerate() {
        let sm = if m < 2 { 0.02 } else { 0.8 };
        assert!(close(r.sm_active_mean, sm), "minute {m}: {r:?}");
        assert!(close(r.tensor_active_mean, 0.3), "minute {m}: {r:?}");
        assert!(r.canonical().starts_with("dcwatt-ledger-v4|"), "{r:?}");
        // Idle energy is part of the GPU energy; a busy minute has 0 J, not
        // none.
        let idle = r.idle_joules.unwrap();
        assert!((0.0..=r.it_joules).contains(&idle), "minute {m}: {r:?}");
        if m >= 2 {
            assert_eq!(idle, 0.0, "minute {m}: {r:?}");
        }
    }
    // Every 10 s stretch that ended while SM activity read 2 % (at 10 s …
    // 110 s; the stretch ending at 120 s reads 80 %): 11 × 10 kJ.
    let idle: f64 = a.iter().filter_map(|r| r.idle_joules).sum();
    assert!((idle - 110_000.0).abs() < 1e-6, "{idle}");
    // lab-b's GPU has no GPM: no activity, no idle energy, earlier bytes.
    let b = store.tenant_rows("lab-b", T0, end).unwrap();
    assert_eq!(b.len(), MINUTES as usize);
    for r in &b {
        assert_eq!(
            (r.sm_active_mean, r.tensor_active_mean, r.idle_joules),
            (None, None, None),
            "{r:?}"
        );
        assert!(!r.canonical().contains("dcwatt-ledger-v4"), "{r:?}");
    }

    // The statement: means weighted by GPU time, idle energy and its share
    // of the GPU energy, in JSON and CSV.
    let (y, mo, _) = dcwatt_wire::time::civil_from_days(T0 / 86_400_000);
    let month = format!("{y:04}-{mo:02}");
    let st = dcwatt_collector::statement::statement(&store, &site, "lab-a", &month, now)
        .unwrap()
        .unwrap();
    let act = st.activity.clone().expect("lab-a's statement has activity");
    assert!(close(act.sm_active_mean, 0.41), "{act:?}");
    assert!(close(act.tensor_active_mean, 0.3), "{act:?}");
    assert!(close(act.idle_kwh, 110_000.0 / 3.6e6), "{act:?}");
    assert!(
        close(act.idle_share_of_gpu_energy, 110.0 / 240.0),
        "{act:?}"
    );
    assert_eq!(act.module_kwh, 0.0);
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["activity"]["tensor_active_mean"], 0.3, "{json}");
    let csv = st.to_csv();
    assert!(
        csv.contains("# activity\nsm_active_mean,tensor_active_mean,idle_kwh,idle_share_of_gpu_energy,module_kwh,node_kwh\n"),
        "{csv}"
    );
    let b_st = dcwatt_collector::statement::statement(&store, &site, "lab-b", &month, now)
        .unwrap()
        .unwrap();
    assert!(b_st.activity.is_none(), "{:?}", b_st.activity);
    assert!(serde_json::to_value(&b_st)
        .unwrap()
        .get("activity")
        .is_none());
}
