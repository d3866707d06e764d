//! The batch JSON is an external format: its exact shape is pinned by a golden
//! file. `UPDATE_GOLDEN=1 cargo test -p dcwatt-wire` rewrites it; review the diff.

use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};

fn sample() -> Batch {
    let ts = 1_795_000_000_000;
    let gpu = |q, v| Reading {
        ts_ms: ts,
        entity: Entity::Gpu("GPU-5d1c4a32-7e4f-4b61-9c1e-2f6a8b0d9e11".into()),
        quantity: q,
        value: v,
    };
    Batch {
        version: VERSION,
        agent: "r12-n03".into(),
        seq: 1_795_000_000_000_000,
        first_seq: None,
        node: "r12-n03".into(),
        created_ms: ts + 12,
        gpus: vec![GpuInfo {
            uuid: "GPU-5d1c4a32-7e4f-4b61-9c1e-2f6a8b0d9e11".into(),
            index: 0,
            model: "NVIDIA GB300".into(),
            module: None,
        }],
        readings: vec![
            gpu(Quantity::PowerWatts, 1104.25),
            gpu(Quantity::EnergyJoules, 523_000.125),
            gpu(Quantity::TemperatureCelsius, 71.0),
            gpu(Quantity::UtilizationRatio, 0.95),
            gpu(Quantity::MemoryUsedBytes, 190e9),
            Reading {
                ts_ms: ts + 3,
                entity: Entity::Meter("pdu-r12-a".into()),
                quantity: Quantity::EnergyJoules,
                value: 3.6e9,
            },
        ],
    }
}

#[test]
fn batch_json_matches_golden() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/batch.json");
    let text = serde_json::to_string_pretty(&sample()).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text, golden,
        "batch JSON changed: rerun with UPDATE_GOLDEN=1 and review the diff"
    );
    let back: Batch = serde_json::from_str(&golden).unwrap();
    assert_eq!(back, sample());
}
