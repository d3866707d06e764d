//! Hostile input, by property: 10,000 cases each (PROPTEST_CASES overrides).
//! Batch bodies (random bytes, mutations of a valid batch, structured batches
//! with extreme values; JSON and the binary form) through the real decoder
//! and validator, and what it
//! accepts through `State::apply`; collector configs (valid ones with keys
//! replaced by random values) through the real parser and validator. Nothing
//! may panic; a rejected batch never reaches the state (the decoder runs
//! before the state is locked), and an accepted one applies.

use dcwatt_collector::config::{token_hash, Config, Site};
use dcwatt_collector::ingest;
use dcwatt_collector::state::State;
use dcwatt_wire::binary::Encoding;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};
use proptest::prelude::*;

const NOW: i64 = 1_795_000_000_000;

fn site() -> Site {
    Config::from_toml(&format!(
        "[[agents]]\nid = \"a\"\ntoken_sha256 = \"{}\"\n[[meters]]\nid = \"m\"\nrole = \"facility\"\n\
         [[meters]]\nid = \"p\"\nrole = \"it\"\nit_point = \"pdu_output\"\n",
        hex::encode(token_hash("t"))
    ))
    .unwrap()
    .build()
    .unwrap()
}

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig::with_cases(n)
}

fn good_batch() -> Batch {
    Batch {
        version: VERSION,
        agent: "a".into(),
        seq: 7,
        first_seq: None,
        node: "a".into(),
        created_ms: NOW,
        gpus: vec![GpuInfo {
            uuid: "GPU-1".into(),
            index: 0,
            model: "NVIDIA GB300".into(),
            module: None,
        }],
        readings: vec![
            Reading {
                ts_ms: NOW - 1000,
                entity: Entity::Meter("m".into()),
                quantity: Quantity::EnergyJoules,
                value: 1.0e9,
            },
            Reading {
                ts_ms: NOW - 1000,
                entity: Entity::Gpu("GPU-1".into()),
                quantity: Quantity::PowerWatts,
                value: 900.0,
            },
        ],
    }
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-0.0),
        Just(f64::MAX),
        -1.0e3f64..1.0e6,
    ]
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("m".to_owned()),
        Just("p".to_owned()),
        Just("GPU-1".to_owned()),
        "[ -~]{0,12}",
        "\\PC{0,8}",
        Just("x".repeat(200)),
    ]
}

fn quantity() -> impl Strategy<Value = Quantity> {
    prop_oneof![
        Just(Quantity::PowerWatts),
        Just(Quantity::EnergyJoules),
        Just(Quantity::TemperatureCelsius),
        Just(Quantity::UtilizationRatio),
        Just(Quantity::GpuUp),
        Just(Quantity::TemperatureSlowdownCelsius),
        Just(Quantity::ThrottleHwThermalSlowdown),
        Just(Quantity::CoolantSupplyTemperatureCelsius),
        Just(Quantity::CoolantFlowCubicMetersPerSecond),
        Just(Quantity::WaterVolumeCubicMeters),
        Just(Quantity::Other),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    (
        prop_oneof![
            Just(NOW),
            NOW - 10_000_000_000..NOW + 10_000_000_000,
            any::<i64>()
        ],
        prop_oneof![
            id().prop_map(Entity::Meter),
            id().prop_map(Entity::Gpu),
            id().prop_map(Entity::Node)
        ],
        quantity(),
        value(),
    )
        .prop_map(|(ts_ms, entity, quantity, value)| Reading {
            ts_ms,
            entity,
            quantity,
            value,
        })
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        prop_oneof![Just(VERSION), any::<u32>()],
        prop_oneof![Just("a".to_owned()), id()],
        any::<u64>(),
        prop::option::of(any::<u64>()),
        prop_oneof![Just("a".to_owned()), id()],
        prop::collection::vec((id(), any::<u32>(), "\\PC{0,20}"), 0..3),
        prop::collection::vec(reading(), 0..8),
    )
        .prop_map(
            |(version, agent, seq, first_seq, node, gpus, readings)| Batch {
                version,
                agent,
                seq,
                first_seq,
                node,
                created_ms: NOW,
                gpus: gpus
                    .into_iter()
                    .map(|(uuid, index, model)| GpuInfo {
                        uuid,
                        index,
                        model,
                        module: None,
                    })
                    .collect(),
                readings,
            },
        )
}

/// Decodes; what is accepted is applied to a fresh state (must not panic).
fn decode_and_apply(site: &Site, body: &[u8]) -> bool {
    decode_and_apply_as(Encoding::Json, site, body)
}

fn decode_and_apply_as(encoding: Encoding, site: &Site, body: &[u8]) -> bool {
    match ingest::decode_as(encoding, body, "a", site, NOW) {
        Ok(b) => {
            let mut state = State::new(site);
            let (applied, _) = state.apply(&b, site, NOW);
            assert!(applied <= b.readings.len());
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let site = site();
        decode_and_apply(&site, &body);
    }

    #[test]
    fn mutated_batches_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let site = site();
        let mut body = serde_json::to_vec(&good_batch()).unwrap();
        for (at, byte) in edits {
            let i = at.index(body.len());
            body[i] = byte;
        }
        if truncate {
            let n = cut.index(body.len());
            body.truncate(n);
        }
        decode_and_apply(&site, &body);
    }

    #[test]
    fn random_binary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let site = site();
        // Past the magic, so the binary decoder's own checks are reached.
        let mut b = b"DCWB\x01".to_vec();
        b.extend_from_slice(&body);
        decode_and_apply_as(Encoding::Binary, &site, &b);
        decode_and_apply_as(Encoding::Binary, &site, &body);
    }

    #[test]
    fn mutated_binary_batches_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let site = site();
        let mut body = dcwatt_wire::binary::encode(&good_batch());
        for (at, byte) in edits {
            let i = at.index(body.len());
            body[i] = byte;
        }
        if truncate {
            let n = cut.index(body.len());
            body.truncate(n);
        }
        decode_and_apply_as(Encoding::Binary, &site, &body);
    }

    #[test]
    fn structured_batches_are_accepted_only_when_valid(b in batch()) {
        let site = site();
        let body = serde_json::to_vec(&b).unwrap();
        let accepted = decode_and_apply(&site, &body);
        // The binary form of the same batch gets the same verdict.
        let binary = decode_and_apply_as(Encoding::Binary, &site, &dcwatt_wire::binary::encode(&b));
        prop_assert_eq!(binary, accepted);
        if accepted {
            // Every accepted value is finite and every id plain.
            for r in &b.readings {
                prop_assert!(r.value.is_finite());
                let (_, i) = r.entity.parts();
                prop_assert!(i.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(&c)));
            }
            prop_assert_eq!(&b.agent, "a");
            prop_assert_eq!(&b.node, "a");
        }
    }

    #[test]
    fn collector_configs_never_panic(
        key in prop::sample::select(vec![
            "listen", "stale_after", "max_gap", "max_reading_age", "max_clock_skew",
            "max_body_bytes", "max_readings_per_batch", "pue_it_floor_watts", "pue_max_ratio",
            "carbon_intensity_kg_per_kwh", "meter_tree_tolerance", "max_connections",
            "header_timeout", "request_timeout", "agent_batches_per_second",
            "agent_batch_burst", "max_gpus_per_agent", "unknown_key",
        ]),
        section in prop::sample::select(vec!["", "[thermal]\n", "[ledger]\n", "[[meters]]\nid = \"x\"\nrole = \"other\"\n", "[[agents]]\nid = \"b\"\ntoken_sha256 = \"00\"\n"]),
        raw in prop_oneof![
            Just("\"\"".to_owned()),
            Just("-1".to_owned()),
            Just("nan".to_owned()),
            Just("inf".to_owned()),
            Just("1e308".to_owned()),
            Just("\"1y\"".to_owned()),
            Just("\"0s\"".to_owned()),
            Just("[1, 2]".to_owned()),
            Just("{ a = 1 }".to_owned()),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v:?}")),
            "\"[ -~]{0,16}\"",
        ],
        junk in "\\PC{0,24}",
    ) {
        let base = format!(
            "[[agents]]\nid = \"a\"\ntoken_sha256 = \"{}\"\n[[meters]]\nid = \"m\"\nrole = \"facility\"\n",
            hex::encode(token_hash("t"))
        );
        for text in [
            format!("{key} = {raw}\n{base}"),
            format!("{base}{section}{key} = {raw}\n"),
            format!("{base}{junk}"),
        ] {
            match Config::from_toml(&text).and_then(Config::build) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
