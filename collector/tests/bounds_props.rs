//! Property test of energy bounds, through the collector's real
//! `State::apply` and store: two rated meters (facility and IT) read every
//! 10 s for two hours, with random gaps, counter resets and meter swaps; for
//! any period of whole minutes, the true energies and PUE lie inside the
//! period's `[lower, upper]`.
//!
//! The ground truth: power is constant within each 10 s slot, so cumulative
//! energy is linear between readings and known at every instant; readings
//! fall on slot edges, so a cleanly measured minute is exact.

use dcwatt_collector::config::{Config, Site};
use dcwatt_collector::state::State;
use dcwatt_collector::store::{Resolution, Store};
use dcwatt_collector::windows;
use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};
use proptest::prelude::*;

const SLOT: i64 = 10_000;
const SLOTS: usize = 720; // two hours
const METERS: [(&str, f64); 2] = [("f", 2_000.0), ("i", 1_500.0)];

fn site() -> Site {
    Config::from_toml(
        "[[meters]]\nid = \"f\"\nrole = \"facility\"\nnominal_max_watts = 2000.0\n\
         [[meters]]\nid = \"i\"\nrole = \"it\"\nit_point = \"it_input\"\nnominal_max_watts = 1500.0\n",
    )
    .unwrap()
    .build()
    .unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Event {
    /// No readings for this many slots.
    Gap(usize),
    /// The counter restarts from zero at this fraction of the slot.
    Reset(f64),
    /// A new meter from this fraction of the slot on, its counter at 1 GJ.
    Swap(f64),
}

fn events() -> impl Strategy<Value = Vec<(usize, usize, Event)>> {
    let event = prop_oneof![
        (2usize..40).prop_map(Event::Gap),
        (0.0f64..0.9).prop_map(Event::Reset),
        (0.0f64..0.9).prop_map(Event::Swap),
    ];
    prop::collection::vec((0usize..2, 1usize..SLOTS - 1, event), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn truth_lies_inside_every_periods_bounds(
        seed in any::<u64>(),
        events in events(),
        periods in prop::collection::vec((0i64..120, 1i64..=120), 8),
    ) {
        let site = site();
        let mut state = State::new(&site);
        let mut store = Store::in_memory().unwrap();
        let start = 1_795_000_000_000i64.div_euclid(3_600_000) * 3_600_000;
        // Powers per slot: IT 300–1000 W, facility 1.1–1.5 × IT.
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let it_w: Vec<f64> = (0..SLOTS).map(|_| 300.0 + 700.0 * next()).collect();
        let watts = [
            it_w.iter().map(|w| w * (1.1 + 0.4 * next())).collect::<Vec<_>>(),
            it_w,
        ];
        // Events at least 50 slots apart on each meter.
        let mut plan: [Vec<(usize, Event)>; 2] = [Vec::new(), Vec::new()];
        for (m, slot, e) in events {
            if plan[m].iter().all(|(s, _)| s.abs_diff(slot) >= 50) {
                plan[m].push((slot, e));
            }
        }
        // Cumulative truth at slot edges.
        let cum: Vec<Vec<f64>> = watts
            .iter()
            .map(|w| {
                let mut c = vec![0.0];
                for p in w {
                    c.push(c.last().unwrap() + p * SLOT as f64 / 1000.0);
                }
                c
            })
            .collect();
        let at = |m: usize, slot: usize, frac: f64| {
            cum[m][slot] + watts[m][slot] * frac * SLOT as f64 / 1000.0
        };
        // Served counter = cumulative truth − offset (+ base after a swap).
        let mut offset = [-1e6f64; 2];
        for (seq, k) in (1u64..).zip(0..=SLOTS) {
            let t = start + k as i64 * SLOT;
            let mut readings = Vec::new();
            for m in 0..2 {
                // Events in the slot just ended take effect before this reading.
                for (slot, e) in &plan[m] {
                    match *e {
                        Event::Reset(f) if slot + 1 == k => offset[m] = at(m, *slot, f),
                        Event::Swap(f) if slot + 1 == k => offset[m] = at(m, *slot, f) - 1e9,
                        _ => {}
                    }
                }
                let silent = plan[m].iter().any(|(slot, e)| {
                    matches!(e, Event::Gap(len) if k > *slot && k < slot + len)
                });
                if !silent && k < cum[m].len() {
                    readings.push(Reading {
                        ts_ms: t,
                        entity: Entity::Meter(METERS[m].0.into()),
                        quantity: Quantity::EnergyJoules,
                        value: cum[m][k] - offset[m],
                    });
                }
            }
            let batch = Batch {
                version: VERSION,
                agent: "gw".into(),
                seq,
                first_seq: None,
                node: "gw".into(),
                created_ms: t,
                gpus: vec![],
                readings,
            };
            let (_, changes) = state.apply(&batch, &site, t);
            store.commit("gw", &state, &changes, &site).unwrap();
        }
        for (from_min, len) in periods {
            let len = len.min(120 - from_min).max(1);
            let (a, b) = (start + from_min * 60_000, start + (from_min + len) * 60_000);
            let p = windows::period(&store, &site, a, b, Resolution::Minute).unwrap();
            let slot = |ms: i64| ((ms - start) / SLOT) as usize;
            let truth = |m: usize| cum[m][slot(b)] - cum[m][slot(a)];
            for (m, role) in [(0, "facility"), (1, "it")] {
                let bounds = p.energy_bounds_joules[role];
                let upper = bounds.upper.unwrap_or(f64::INFINITY);
                let want = truth(m);
                prop_assert!(
                    bounds.lower <= want * (1.0 + 1e-9) + 1e-6 && want <= upper * (1.0 + 1e-9) + 1e-6,
                    "{role} over minutes {from_min}+{len}: truth {want} outside [{}, {upper}]; events {:?}",
                    bounds.lower,
                    p.events
                );
            }
            if let Some(pue) = p.pue {
                let true_pue = truth(0) / truth(1);
                let lo = p.pue_lower.unwrap_or(0.0);
                let hi = p.pue_upper.unwrap_or(f64::INFINITY);
                prop_assert!(
                    lo <= true_pue * (1.0 + 1e-9) && true_pue <= hi * (1.0 + 1e-9),
                    "PUE {pue} over minutes {from_min}+{len}: truth {true_pue} outside [{lo}, {hi}]"
                );
                // Exported only within the configured uncertainty.
                if p.pue_exported {
                    prop_assert!((true_pue - pue).abs() / pue <= 0.001 * (1.0 + 1e-6));
                }
            }
        }
    }
}
