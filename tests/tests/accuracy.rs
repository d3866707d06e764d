//! Audit-grade accuracy: a simulated day of the hall on an accelerated clock
//! (timestamps are the simulation's), read by per-meter "agents" every 2 s
//! with fixed clock skews of up to ±2 s, a counter reset, a five-minute meter
//! gap and a ten-minute late delivery, fed through the collector's real
//! `State::apply` and store.
//!
//! What a collector can know is time as the meters stamp it: a meter whose
//! clock is 2 s fast puts its hour 2 s early. So each complete hour is checked
//! within 0.01 % against the truth of the hour *as each meter's clock cut it*
//! (that is the integration's accuracy), and the whole day, where a skew of
//! seconds no longer matters, against the true day. Every hour touched by the
//! gap or the reset is flagged incomplete.
//!
//! The site water meter is read the same way (its own skew, a counter reset of
//! its own): the WUE of every complete hour is checked against the truth too.

use std::collections::BTreeMap;

use dcwatt_collector::config::{Config, Site};
use dcwatt_collector::state::State;
use dcwatt_collector::store::{Resolution, Store};
use dcwatt_collector::windows;
use dcwatt_sim::hall::{Entity as SimEntity, Hall, MeterRole, WATER_METER};
use dcwatt_sim::SimConfig;
use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};

const HOUR: i64 = 3_600_000;
const READ_EVERY_MS: i64 = 2_000;
const HOURS: i64 = 24;

fn role(r: MeterRole) -> &'static str {
    match r {
        MeterRole::Facility => "facility",
        MeterRole::It => "it",
        MeterRole::Cooling => "cooling",
    }
}

fn site(hall: &Hall) -> Site {
    let mut toml = String::new();
    for m in hall.meters() {
        toml += &format!(
            "[[meters]]\nid = \"{}\"\nrole = \"{}\"\nzone = \"hall-1\"\n",
            m.id,
            role(m.role)
        );
        if m.role == MeterRole::It {
            toml += "it_point = \"pdu_output\"\n";
        }
    }
    toml += &format!("[[meters]]\nid = \"{WATER_METER}\"\nrole = \"water\"\nzone = \"hall-1\"\n");
    Config::from_toml(&toml).unwrap().build().unwrap()
}

#[test]
fn a_simulated_day_matches_ground_truth_hour_by_hour() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        racks: 2,
        nodes_per_rack: 2,
        gpus_per_node: 4,
        seed: 11,
        state_dir: dir.path().to_path_buf(),
    };
    // A day that ended an hour ago, so every timestamp is plausible.
    let now = dcwatt_sim::now_ms();
    let start = now.div_euclid(HOUR) * HOUR - (HOURS + 1) * HOUR;
    // The hall runs from 10 s before the first hour, so every meter's clock has
    // a reading before it.
    let mut hall = Hall::new(&config, start - 10_000).unwrap();
    let site = site(&hall);
    let mut state = State::new(&site);
    let mut store = Store::in_memory().unwrap();
    let meters: Vec<(String, &'static str)> = hall
        .meters()
        .iter()
        .map(|m| (m.id.clone(), role(m.role)))
        .collect();
    // Fixed clock skew per meter's agent, -2 s ..= +2 s.
    let mut skew: BTreeMap<String, i64> = meters
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.clone(), (i as i64 * 1_337) % 4_001 - 2_000))
        .collect();
    skew.insert(WATER_METER.to_owned(), 1_750);
    let water_entity = SimEntity::Water(WATER_METER.into());
    // The water meter restarts from zero in hour 17.
    let water_reset_at = start + 17 * HOUR + 2_345_678;
    let it_meter = meters.iter().find(|(_, r)| *r == "it").unwrap().0.clone();
    let facility_meter = meters
        .iter()
        .find(|(_, r)| *r == "facility")
        .unwrap()
        .0
        .clone();
    let reset_at = start + 5 * HOUR + 1_234_567;
    let gap = (start + 9 * HOUR + 600_000)..(start + 9 * HOUR + 900_000);
    let late = (start + 14 * HOUR)..(start + 14 * HOUR + 600_000);
    let mut seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut held: Vec<Batch> = Vec::new();
    // Truth per hour as each meter's clock cuts it, and in true time, taken
    // while the simulator still holds it.
    let mut truth: BTreeMap<i64, BTreeMap<&'static str, f64>> = BTreeMap::new();
    let mut true_day: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut water_reset_done = false;
    let end = start + HOURS * HOUR + 10 * READ_EVERY_MS;
    let mut t = start - 10_000;
    let mut reset_done = false;
    while t <= end {
        while hall.tick_start_ms() < t {
            hall.step();
        }
        if !reset_done && t >= reset_at {
            hall.reset_meter_counter(&it_meter, reset_at).unwrap();
            reset_done = true;
        }
        if !water_reset_done && t >= water_reset_at {
            hall.reset_meter_counter(WATER_METER, water_reset_at)
                .unwrap();
            water_reset_done = true;
        }
        // 4 s past each hour: the hour as every meter's clock saw it has ended.
        if t % HOUR == 4_000 && t > start + HOUR {
            let h = t - 4_000;
            let mut by_role: BTreeMap<&'static str, f64> = BTreeMap::new();
            for (id, r) in &meters {
                let m = SimEntity::Meter(id.clone());
                let s = skew[id];
                *by_role.entry(r).or_default() += hall.truth(&m, h - HOUR - s, h - s).unwrap();
                *true_day.entry(r).or_default() += hall.truth(&m, h - HOUR, h).unwrap();
            }
            let s = skew[WATER_METER];
            by_role.insert(
                "water",
                hall.truth(&water_entity, h - HOUR - s, h - s).unwrap(),
            );
            *true_day.entry("water").or_default() +=
                hall.truth(&water_entity, h - HOUR, h).unwrap();
            truth.insert(h - HOUR, by_role);
        }
        for (id, _) in &meters {
            if *id == facility_meter && gap.contains(&t) {
                continue;
            }
            let reading = hall.meter_reading(id, t).unwrap();
            let n = seq.entry(id.clone()).or_default();
            *n += 1;
            let stamp = t + skew[id];
            let batch = Batch {
                version: VERSION,
                agent: id.clone(),
                seq: *n,
                first_seq: None,
                node: id.clone(),
                created_ms: stamp,
                gpus: vec![],
                readings: vec![Reading {
                    ts_ms: stamp,
                    entity: Entity::Meter(id.clone()),
                    quantity: Quantity::EnergyJoules,
                    value: reading.energy_joules,
                }],
            };
            // The IT meter's agent cannot reach the collector for ten minutes,
            // then delivers everything it held, in order.
            if *id == it_meter && late.contains(&t) {
                held.push(batch);
                continue;
            }
            for b in std::mem::take(&mut held).iter().chain([&batch]) {
                let (_, changes) = state.apply(b, &site, stamp);
                store.commit(&b.agent, &state, &changes, &site).unwrap();
            }
        }
        // The water meter's own agent, on time.
        let stamp = t + skew[WATER_METER];
        let n = seq.entry(WATER_METER.to_owned()).or_default();
        *n += 1;
        let batch = Batch {
            version: VERSION,
            agent: WATER_METER.into(),
            seq: *n,
            first_seq: None,
            node: WATER_METER.into(),
            created_ms: stamp,
            gpus: vec![],
            readings: vec![Reading {
                ts_ms: stamp,
                entity: Entity::Meter(WATER_METER.into()),
                quantity: Quantity::WaterVolumeCubicMeters,
                value: hall.water_reading(t).unwrap().volume_cubic_meters,
            }],
        };
        let (_, changes) = state.apply(&batch, &site, stamp);
        store.commit(WATER_METER, &state, &changes, &site).unwrap();
        t += READ_EVERY_MS;
    }

    let mut worst: f64 = 0.0;
    let mut worst_wue: f64 = 0.0;
    let mut incomplete = Vec::new();
    let mut wue_incomplete = Vec::new();
    for (hour, want) in &truth {
        let p = windows::period(&store, &site, *hour, hour + HOUR, Resolution::Minute).unwrap();
        let n = (hour - start) / HOUR;
        if p.wue_complete {
            // Water within 0.01 % of the truth as the water meter's clock cut
            // the hour; WUE = litres / kWh of IT energy, each as its meter cut it.
            let water = p.water_cubic_meters.unwrap();
            let err = (water - want["water"]).abs() / want["water"];
            assert!(
                err < 1e-4,
                "hour {n}: water {water} m³, truth {} m³",
                want["water"]
            );
            let true_wue = want["water"] * 1000.0 / (want["it"] / 3.6e6);
            let wue = p.wue_litres_per_kwh.unwrap();
            let err = (wue - true_wue).abs() / true_wue;
            worst_wue = worst_wue.max(err);
            assert!(err < 1e-4, "hour {n}: WUE {wue}, truth {true_wue}");
            assert!((0.18..0.3).contains(&wue), "hour {n}: WUE {wue} L/kWh");
        } else {
            wue_incomplete.push(n);
        }
        if !p.complete {
            incomplete.push(n);
            continue;
        }
        for r in ["facility", "it"] {
            let got = p.energy_joules[r];
            let err = (got - want[r]).abs() / want[r];
            worst = worst.max(err);
            assert!(
                err < 1e-4,
                "hour {}: {r} collector {got} J, truth {} J",
                (hour - start) / HOUR,
                want[r]
            );
        }
        let true_pue = want["facility"] / want["it"];
        let err = (p.pue.unwrap() - true_pue).abs() / true_pue;
        assert!(
            err < 1e-4,
            "hour {}: PUE {:?}, truth {true_pue}",
            (hour - start) / HOUR,
            p.pue
        );
    }
    // Exactly the hours holding the reset (hour 5) and the gap (hour 9) are
    // incomplete; the late delivery (hour 14) completed once it arrived.
    assert_eq!(incomplete, vec![5, 9], "worst relative error {worst:e}");
    // WUE needs the PUE's meters and the water meter: its reset (hour 17) too.
    assert_eq!(wue_incomplete, vec![5, 9, 17]);
    assert_eq!(truth.len() as i64, HOURS);
    // The whole day against true time, gap and reset included: the counter
    // carries the energy across the gap, and only the few seconds before the
    // reset are unknowable.
    let day =
        windows::period(&store, &site, start, start + HOURS * HOUR, Resolution::Hour).unwrap();
    let err = (day.water_cubic_meters.unwrap() - true_day["water"]).abs() / true_day["water"];
    assert!(
        err < 1e-4,
        "day water: collector {:?} m³, truth {} m³",
        day.water_cubic_meters,
        true_day["water"]
    );
    eprintln!("day water: relative error {err:e}");
    assert_eq!(day.energy_joules.get("water"), None);
    for r in ["facility", "it"] {
        let err = (day.energy_joules[r] - true_day[r]).abs() / true_day[r];
        assert!(
            err < 1e-4,
            "day {r}: collector {} J, truth {} J",
            day.energy_joules[r],
            true_day[r]
        );
        eprintln!("day {r}: relative error {err:e}");
    }
    eprintln!("worst relative error over complete hours: {worst:e}");
    eprintln!("worst relative WUE error over complete hours: {worst_wue:e}");
}
