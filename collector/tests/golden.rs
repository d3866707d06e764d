//! The collector's `/metrics` text is an external format (dashboards and alert
//! rules depend on it): pinned by a golden file rendered from a fixed state at a
//! fixed instant. `UPDATE_GOLDEN=1 cargo test -p dcwatt-collector --test golden`
//! rewrites it; review the diff. The end-to-end tests run promtool on it.

use dcwatt_collector::config::{token_hash, Config};
use dcwatt_collector::{export, figures, state::State, store::Store, windows};
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};

const T0: i64 = 1_795_000_000_000;

fn batch(seq: u64, ts: i64, k: f64) -> Batch {
    let meter = |id: &str, q, v| Reading {
        ts_ms: ts,
        entity: Entity::Meter(id.into()),
        quantity: q,
        value: v,
    };
    let gpu = |q, v| Reading {
        ts_ms: ts,
        entity: Entity::Gpu("GPU-1".into()),
        quantity: q,
        value: v,
    };
    Batch {
        version: VERSION,
        agent: "gw-1".into(),
        seq,
        first_seq: None,
        node: "gw-1".into(),
        created_ms: ts,
        gpus: vec![GpuInfo {
            uuid: "GPU-1".into(),
            index: 0,
            model: "NVIDIA GB300".into(),
            module: None,
        }],
        readings: vec![
            meter("utility-a", Quantity::PowerWatts, 24_000.0),
            meter("utility-a", Quantity::EnergyJoules, 1.0e9 + k * 24_000.0),
            meter("pdu-r1", Quantity::PowerWatts, 20_000.0),
            meter("pdu-r1", Quantity::EnergyJoules, 2.0e9 + k * 20_000.0),
            meter("cooling-1", Quantity::PowerWatts, 2_500.0),
            meter(
                "water-1",
                Quantity::WaterVolumeCubicMeters,
                300.0 + k / 1024.0,
            ),
            gpu(Quantity::PowerWatts, 1_000.0),
            gpu(Quantity::TemperatureCelsius, 70.0),
            // Idle by SM activity (below 5 %) while NVML calls it half busy.
            gpu(Quantity::UtilizationRatio, 0.5),
            gpu(Quantity::SmActiveRatio, 0.02),
            gpu(Quantity::TensorActiveRatio, 0.0),
            gpu(Quantity::XidErrorsTotal, 2.0),
            gpu(Quantity::EnergyJoules, 5.0e6 + k * 1_000.0),
            Reading {
                ts_ms: ts,
                entity: Entity::Module("sn-1".into()),
                quantity: Quantity::PowerWatts,
                value: 1_400.0,
            },
            Reading {
                ts_ms: ts,
                entity: Entity::Module("sn-1".into()),
                quantity: Quantity::IntegratedEnergyJoules,
                value: k * 1_400.0,
            },
            // An entity kind of a later version: ignored, counted.
            Reading {
                ts_ms: ts,
                entity: Entity::Other("rack".into()),
                quantity: Quantity::PowerWatts,
                value: 1.0,
            },
        ],
    }
}

#[test]
fn metrics_match_golden() {
    let site = Config::from_toml(&format!(
        r#"
        [[agents]]
        id = "gw-1"
        token_sha256 = "{}"
        [[tenants]]
        id = "lab-a"
        token_sha256 = "{}"
        [[leases]]
        tenant = "lab-a"
        nodes = ["gw-*"]
        from = "2026-01-01T00:00:00Z"
        to = "2029-01-01T00:00:00Z"
        [[meters]]
        id = "utility-a"
        role = "facility"
        zone = "hall-1"
        [[meters]]
        id = "pdu-r1"
        role = "it"
        zone = "hall-1"
        it_point = "pdu_output"
        [[meters]]
        id = "cooling-1"
        role = "cooling"
        zone = "hall-1"
        [[meters]]
        id = "water-1"
        role = "water"
        zone = "hall-1"
        "#,
        hex::encode(token_hash("t")),
        hex::encode(token_hash("tenant"))
    ))
    .unwrap()
    .build()
    .unwrap();
    let mut state = State::new(&site);
    let mut store = Store::in_memory().unwrap();
    for i in 0..=360u32 {
        let secs = f64::from(i);
        let b = batch(u64::from(i) + 1, T0 + i64::from(i) * 1000, secs);
        let (_, changes) = state.apply(&b, &site, T0);
        store.commit("gw-1", &state, &changes, &site).unwrap();
    }
    let now = T0 + 361_000;
    let windows = windows::trailing(&store, &site, now).unwrap();
    // Book the ledger as it stands ten minutes later.
    store.close_minutes(&site, now + 600_000, None).unwrap();
    let totals = store.ledger_totals().unwrap();
    let text = export::render(
        &state,
        &site,
        &figures::compute(&state, &site, now, windows),
        &totals,
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/metrics.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text, golden,
        "/metrics changed: rerun with UPDATE_GOLDEN=1 and review the diff"
    );
    // 360 s at 24 kW facility and 20 kW IT; cooling integrated from power (2.5 kW).
    for line in [
        "dcwatt_energy_joules_total{role=\"facility\",zone=\"hall-1\"} 8640000\n",
        "dcwatt_energy_joules_total{role=\"it\",zone=\"hall-1\"} 7200000\n",
        "dcwatt_energy_joules_total{role=\"cooling\",zone=\"hall-1\"} 900000\n",
        // The 5 min window is covered; the hour is not, so it has no plain PUE.
        "dcwatt_pue_ratio{window=\"5m\",category=\"2\"} 1.2\n",
        // Five whole UTC minutes of the hour are stored.
        "dcwatt_pue_coverage_ratio{window=\"1h\"} 0.08333333333333333\n",
        // Water: 1/1024 m³ a second, 360 s; over 20 kW of IT, 1000/(1024 × 20 / 3600) L/kWh.
        "dcwatt_water_cubic_meters_total{zone=\"hall-1\"} 0.3515625\n",
        "dcwatt_meter_water_cubic_meters_total{meter=\"water-1\",role=\"water\",zone=\"hall-1\"} 0.3515625\n",
        "dcwatt_wue_litres_per_kilowatt_hour{window=\"5m\"} 175.78125\n",
        // Every GPU joule after the first reading was spent below 5 % SM activity.
        "dcwatt_zone_gpus_idle_energy_joules_total{zone=\"default\"} 360000\n",
        "dcwatt_gpus_idle_energy_joules_total 360000\n",
        "dcwatt_gpus_utilization_ratio{kind=\"sm_active\",window=\"1h\"} 0.02\n",
        "dcwatt_gpus_utilization_ratio{kind=\"utilization\",window=\"1h\"} 0.5\n",
        "dcwatt_zone_gpus_xid_errors_total{zone=\"default\"} 2\n",
        "dcwatt_modules_energy_joules_total 504000\n",
        "dcwatt_ingest_ignored_readings_total{reason=\"unknown_entity\"} 361\n",
    ] {
        assert!(text.contains(line), "missing {line}");
    }
    // GPU-1 (1 kW) leased to lab-a: its whole UTC minutes are booked, 60 kJ each.
    let booked = text
        .lines()
        .find(|l| l.starts_with("dcwatt_tenant_energy_joules_total{tenant=\"lab-a\",basis=\"it\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert!(
        booked > 0.0 && (booked / 60_000.0).fract() == 0.0,
        "{booked}"
    );
    assert!(!text.contains("dcwatt_pue_ratio{window=\"1h\""));
}
