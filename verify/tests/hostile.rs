//! The verifier on hostile inputs: checkpoints signed with the right key but
//! with any hour and size, rows with any ids, indices, values and proofs of
//! any length. It never panics, and it accepts none of them.

use dcwatt_verify::check::{
    self, ConsistencyProof, Inputs, Proofs, ProvenRow, ServiceView, StatementView,
};
use dcwatt_verify::checkpoint;
use dcwatt_verify::row::{delivery_digest, Delivery, DeliveryEntry, Row, GENESIS};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

fn hex_hash() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 32).prop_map(hex::encode),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(hex::encode),
        "[0-9a-zA-Z]{0,70}",
    ]
}

fn row() -> impl Strategy<Value = (Row, u64, Option<Vec<String>>)> {
    (
        any::<i64>(),
        any::<i64>(),
        prop_oneof![
            Just(1.0f64),
            any::<f64>().prop_filter("finite", |f| f.is_finite())
        ],
        any::<i64>(),
        any::<bool>(),
        any::<u64>(),
        prop::option::of(prop::collection::vec(hex_hash(), 0..70)),
        prop::option::of((
            prop::array::uniform4(any::<i64>()),
            prop::collection::vec((any::<i64>(), 0..4usize), 0..4),
            any::<bool>(),
        )),
    )
        .prop_map(
            |(id, minute_ms, it_joules, gpu_ms, late, leaf_index, proof, delivery)| {
                let mut r = Row {
                    id,
                    minute_ms,
                    tenant: "lab-a".into(),
                    it_joules,
                    facility_joules: None,
                    pue: None,
                    pue_basis: "none".into(),
                    gpu_ms,
                    late,
                    util_mean: None,
                    peak_watts: None,
                    excursions: 0,
                    node_joules: None,
                    // Hostile activity, idle and module energy (v4).
                    sm_active_mean: late.then_some(it_joules),
                    tensor_active_mean: None,
                    idle_joules: (gpu_ms % 3 == 0).then_some(it_joules),
                    module_joules: (gpu_ms % 2 == 0).then_some(f64::MAX),
                    // Hostile delivery counts and lists, their digest right
                    // or not.
                    delivery: delivery.map(|(ms, gpus, right)| {
                        let gpus: Vec<DeliveryEntry> = gpus
                            .into_iter()
                            .map(|(ms, s)| DeliveryEntry {
                                uuid: format!("GPU-{s}"),
                                state: ["degraded", "down", "unknown", "bogus"][s].into(),
                                reason: "r".into(),
                                cause: "gpu".into(),
                                ms,
                            })
                            .collect();
                        Delivery {
                            available_ms: ms[0],
                            degraded_ms: ms[1],
                            down_ms: ms[2],
                            unknown_ms: ms[3],
                            digest: if right {
                                delivery_digest(&gpus)
                            } else {
                                "00".into()
                            },
                            gpus,
                        }
                    }),
                    prev_hash: GENESIS.into(),
                    hash: String::new(),
                };
                r.hash = r.compute_hash();
                (r, leaf_index, proof)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn hostile_statements_are_refused_without_panicking(
        hour_ms in any::<i64>(),
        tree_size in any::<u64>(),
        root in prop::collection::vec(any::<u8>(), 32),
        saved in prop::collection::vec((any::<i64>(), any::<u64>()), 0..4),
        rows in prop::collection::vec(row(), 1..6),
        consistency in prop::collection::vec((any::<u64>(), any::<u64>(), prop::collection::vec(hex_hash(), 0..70)), 0..4),
        totals in (any::<f64>(), any::<f64>(), any::<usize>()),
    ) {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let root: [u8; 32] = root.try_into().unwrap();
        let cp = checkpoint::sign(&key, "c", hour_ms, tree_size, &root).unwrap();
        let saved = saved
            .into_iter()
            .map(|(h, n)| ("saved".to_owned(), checkpoint::sign(&key, "c", h, n, &root).unwrap()))
            .collect();
        let statement = StatementView {
            tenant: "lab-a".into(),
            month: "2026-11".into(),
            it_kwh: totals.0,
            facility_kwh: 0.0,
            gpu_hours: totals.1,
            late_rows: totals.2,
            days: vec![],
            service: Some(ServiceView {
                available_gpu_minutes: totals.0,
                degraded_gpu_minutes: totals.1,
                down_gpu_minutes: 0.0,
                unknown_gpu_minutes: f64::MAX,
                leases: Vec::new(),
            }),
            activity: Some(dcwatt_verify::activity::Activity {
                sm_active_mean: Some(totals.0),
                idle_kwh: Some(f64::MAX),
                ..Default::default()
            }),
            proofs: Proofs {
                checkpoint_choice: "latest".into(),
                checkpoint: Some(cp),
                rows: rows
                    .into_iter()
                    .map(|(row, leaf_index, inclusion_proof)| ProvenRow { row, leaf_index, inclusion_proof })
                    .collect(),
                unproven_rows: 0,
            },
        };
        let inputs = Inputs {
            public_key: key.verifying_key(),
            checkpoints: saved,
            statement,
            consistency: consistency
                .into_iter()
                .map(|(from_size, to_size, proof)| ("c.json".to_owned(), ConsistencyProof { from_size, to_size, proof }))
                .collect(),
            allow_unproven: false,
        };
        let mut said = Vec::new();
        // A random root never has a valid inclusion proof for these rows.
        prop_assert!(check::verify(&inputs, &mut said).is_err());
    }
}
