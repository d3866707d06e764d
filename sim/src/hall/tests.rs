//! Unit tests of the hall's physics: conservation, truth, resets, PUE, determinism.

use super::*;

const START: i64 = 1_764_340_000_000;

fn config(seed: u64) -> SimConfig {
    SimConfig {
        racks: 2,
        nodes_per_rack: 2,
        gpus_per_node: 4,
        seed,
        state_dir: std::env::temp_dir(),
    }
}

fn hall(seed: u64) -> Hall {
    Hall::new(&config(seed), START).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn names_follow_the_contract() {
    let h = hall(1);
    let names: Vec<&str> = h.nodes().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]);
    let ids: Vec<&str> = h.meters().iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["utility-a", "pdu-r1", "pdu-r2", "cooling-1"]);
    for node in h.nodes() {
        assert_eq!(node.gpus.len(), 4);
        for uuid in &node.gpus {
            let parts: Vec<usize> = uuid
                .trim_start_matches("GPU-")
                .split('-')
                .map(str::len)
                .collect();
            assert!(uuid.starts_with("GPU-"), "{uuid}");
            assert_eq!(parts, [8, 4, 4, 4, 12], "{uuid}");
        }
    }
    assert_ne!(
        hall(2).nodes().next().unwrap().gpus,
        h.nodes().next().unwrap().gpus
    );
    assert!(Hall::new(
        &SimConfig {
            racks: 0,
            ..config(1)
        },
        START
    )
    .is_err());
    assert!(Hall::new(
        &SimConfig {
            gpus_per_node: 65,
            ..config(1)
        },
        START
    )
    .is_err());
}

#[test]
fn energy_is_conserved() {
    let mut h = hall(3);
    for _ in 0..1200 {
        h.step();
    }
    for (from, to) in [
        (START, START + 120_000),
        (START + 1234, START + 98_765),
        (START + 50, START + 51),
    ] {
        let [facility, it, cooling, losses] = h.energy_balance(from, to).unwrap();
        assert!(
            close(facility, it + cooling + losses, 1e-9),
            "{facility} vs {}",
            it + cooling + losses
        );
        let racks: f64 = ["pdu-r1", "pdu-r2"]
            .iter()
            .map(|id| h.truth(&Entity::Meter((*id).into()), from, to).unwrap())
            .sum();
        assert!(close(racks, it, 1e-9));
        let utility = h
            .truth(&Entity::Meter("utility-a".into()), from, to)
            .unwrap();
        assert!(close(utility, facility, 1e-12));
        // The GPUs are part of the IT load, not all of it.
        let gpus: f64 = h
            .nodes()
            .flat_map(|n| n.gpus.clone())
            .map(|u| h.truth(&Entity::Gpu(u), from, to).unwrap())
            .sum();
        assert!(gpus > 0.5 * it && gpus < it, "{gpus} of {it}");
    }
}

#[test]
fn truth_interpolates_inside_a_tick() {
    let mut h = hall(4);
    h.step();
    h.step();
    let pdu = Entity::Meter("pdu-r1".into());
    let tick = h.tick_at(START + 100).unwrap();
    let (p, e0) = (tick.channel_w[CH_RACK0], tick.channel_j[CH_RACK0]);
    // Inside the second tick: exactly P × dt.
    let got = h.truth(&pdu, START + 100, START + 137).unwrap();
    assert!(close(got, p * 0.037, 1e-12), "{got} vs {}", p * 0.037);
    // Additive across ticks.
    let a = h.truth(&pdu, START + 20, START + 150).unwrap();
    let b = h.truth(&pdu, START + 20, START + 100).unwrap()
        + h.truth(&pdu, START + 100, START + 150).unwrap();
    assert!(close(a, b, 1e-12));
    // The served counter at an instant is the same line.
    let r = h.meter_reading("pdu-r1", START + 137).unwrap();
    assert!(close(r.energy_joules, e0 + p * 0.037, 1e-12));
    assert_eq!(r.power_watts, p);
    // GPUs: whole watts × whole ms, so exact mJ.
    let uuid = h.nodes().next().unwrap().gpus[0].clone();
    let w = f64::from(h.tick_at(START + 100).unwrap().gpu_w[0]);
    let got = h
        .truth(&Entity::Gpu(uuid), START + 100, START + 137)
        .unwrap();
    assert_eq!(got, w * 37.0 / 1000.0);
    // Out of range.
    assert!(matches!(
        h.truth(&pdu, START - 1, START + 5),
        Err(HallError::BeforeHistory { .. })
    ));
    assert!(matches!(
        h.truth(&pdu, START + 5, START),
        Err(HallError::Reversed { .. })
    ));
    assert!(matches!(
        h.truth(&Entity::Meter("x".into()), START, START),
        Err(HallError::UnknownMeter(_))
    ));
    assert!("pdu:1".parse::<Entity>().is_err());
    assert_eq!(
        "gpu:GPU-1".parse::<Entity>().unwrap(),
        Entity::Gpu("GPU-1".into())
    );
}

#[test]
fn served_counters_restart_at_a_reset() {
    let mut h = hall(5);
    for _ in 0..50 {
        h.step();
    }
    let at = START + 5_033;
    assert_eq!(h.reset_meter_counter("utility-a", at).unwrap(), at);
    for _ in 0..30 {
        h.step();
    }
    let now = START + 7_777;
    let served = h.meter_reading("utility-a", now).unwrap().energy_joules;
    let truth = h
        .truth(&Entity::Meter("utility-a".into()), at, now)
        .unwrap();
    assert!(close(served, truth, 1e-9), "{served} vs {truth}");
    assert!(
        h.meter_reading("pdu-r1", now).unwrap().energy_joules > served,
        "others keep counting"
    );

    // A GPU restarts at the next tick boundary; the NVML file shows it.
    let uuid = h.nodes().nth(1).unwrap().gpus[2].clone();
    h.request_gpu_reset(&uuid).unwrap();
    assert!(h.gpu_reset_pending(&uuid).unwrap());
    h.step();
    let reset_at = h.gpu_reset_ms(&uuid).unwrap().unwrap();
    assert_eq!(reset_at, h.tick_start_ms());
    assert!(!h.gpu_reset_pending(&uuid).unwrap());
    assert_eq!(h.fake_nvml_gpus(1)[2].energy_mj, 0);
    for _ in 0..17 {
        h.step();
    }
    let file = &h.fake_nvml_gpus(1)[2];
    let truth = h
        .truth(&Entity::Gpu(uuid), reset_at, h.tick_start_ms())
        .unwrap();
    assert_eq!(file.energy_mj as f64 / 1000.0, truth);
    assert!(h.fake_nvml_gpus(1)[1].energy_mj > file.energy_mj);
}

#[test]
fn pue_stays_in_range_over_a_minute() {
    for seed in [1, 2, 3, 99, 12345] {
        let mut h = hall(seed);
        for _ in 0..600 {
            h.step();
        }
        let to = START + 60_000;
        let facility = h
            .truth(&Entity::Meter("utility-a".into()), START, to)
            .unwrap();
        let it: f64 = ["pdu-r1", "pdu-r2"]
            .iter()
            .map(|id| h.truth(&Entity::Meter((*id).into()), START, to).unwrap())
            .sum();
        let pue = facility / it;
        assert!((1.1..1.4).contains(&pue), "seed {seed}: PUE {pue}");
        // WUE: litres of site water per kWh of IT energy, as dry coolers run.
        let water = h
            .truth(&Entity::Water(WATER_METER.into()), START, to)
            .unwrap();
        let wue = water * 1000.0 / (it / 3.6e6);
        assert!((0.18..0.3).contains(&wue), "seed {seed}: WUE {wue}");
        // Also every instant.
        for t in (START..to).step_by(1000) {
            let p = h.power(t).unwrap();
            assert!((1.05..1.4).contains(&(p.facility_watts / p.it_watts)));
            assert!(p.gpu_watts < p.it_watts);
        }
    }
}

#[test]
fn gpus_look_like_gb300s() {
    let mut h = hall(6);
    let (mut max_w, mut min_w, mut max_t) = (0u32, u32::MAX, 0u32);
    for _ in 0..3000 {
        h.step();
        for n in 0..4 {
            for g in h.fake_nvml_gpus(n) {
                max_w = max_w.max(g.power_mw / 1000);
                min_w = min_w.min(g.power_mw / 1000);
                max_t = max_t.max(g.temp_c);
                assert!(g.power_mw <= g.power_limit_mw);
                assert!(g.mem_temp_c < g.temp_c);
                assert!(g.mem_used_bytes <= g.mem_total_bytes);
            }
        }
    }
    assert!((1000..=1400).contains(&max_w), "{max_w}");
    assert!((100..=200).contains(&min_w), "{min_w}");
    assert!((60..=80).contains(&max_t), "{max_t}");
}

#[test]
fn same_seed_same_hall() {
    let (mut a, mut b, mut c) = (hall(7), hall(7), hall(8));
    for _ in 0..500 {
        a.step();
        b.step();
        c.step();
    }
    let now = START + 49_999;
    for m in ["utility-a", "pdu-r1", "pdu-r2", "cooling-1"] {
        assert_eq!(
            a.meter_reading(m, now).unwrap(),
            b.meter_reading(m, now).unwrap()
        );
    }
    for n in 0..4 {
        assert_eq!(a.fake_nvml_gpus(n), b.fake_nvml_gpus(n));
    }
    assert_ne!(
        a.meter_reading("utility-a", now).unwrap(),
        c.meter_reading("utility-a", now).unwrap()
    );
}

#[test]
fn history_is_bounded() {
    let mut h = hall(9);
    let cap = h.history_cap;
    assert_eq!(cap, 72_000);
    h.history_cap = 100;
    for _ in 0..250 {
        h.step();
    }
    assert_eq!(h.history.len(), 100);
    assert_eq!(
        h.oldest_ms(),
        START + 151 * TICK_MS,
        "251 ticks taken, 100 kept"
    );
    assert!(h
        .truth(&Entity::Meter("pdu-r1".into()), START, START + 1)
        .is_err());
}

#[test]
fn the_water_meter_serves_its_volume_exactly_and_restarts_at_a_reset() {
    let mut h = hall(7);
    for _ in 0..50 {
        h.step();
    }
    let water = Entity::Water(WATER_METER.into());
    // The served counter is the truth since the start, at any instant.
    let r = h.water_reading(START + 4_321).unwrap();
    assert!(close(
        r.volume_cubic_meters,
        h.truth(&water, START, START + 4_321).unwrap(),
        1e-12
    ));
    let tick = h.tick_at(START + 4_321).unwrap();
    assert_eq!(r.flow_cubic_meters_per_second, tick.channel_w[CH_WATER]);
    // Flow × time inside one tick, exactly.
    let got = h.truth(&water, START + 4_300, START + 4_337).unwrap();
    assert!(close(got, r.flow_cubic_meters_per_second * 0.037, 1e-12));
    // The flow follows the IT load: 0.18 L/kWh of it, 0.02 L/kWh of nominal.
    let it = tick.channel_w[CH_IT];
    let want = (0.18 * it + 0.02 * h.it_nominal_w) * 1e-3 / 3.6e6;
    assert!(close(r.flow_cubic_meters_per_second, want, 1e-12));
    // A reset restarts the served volume; the truth goes on.
    let at = START + 4_500;
    assert_eq!(h.reset_meter_counter(WATER_METER, at).unwrap(), at);
    for _ in 0..20 {
        h.step();
    }
    let now = START + 6_789;
    let served = h.water_reading(now).unwrap().volume_cubic_meters;
    assert!(close(served, h.truth(&water, at, now).unwrap(), 1e-9));
    assert!(h.truth(&water, START, now).unwrap() > served);
    // Not an energy meter, and no other water meter.
    assert!(h.meter(WATER_METER).is_none());
    assert!(matches!(
        h.truth(&Entity::Water("water-9".into()), START, now),
        Err(HallError::UnknownMeter(_))
    ));
    assert_eq!(
        "water:water-1".parse::<Entity>().unwrap().to_string(),
        "water:water-1"
    );
}

#[test]
fn xids_reach_the_gpus_state_with_increasing_ids() {
    let mut h = hall(3);
    h.step();
    let gpu = h.nodes().nth(1).unwrap().gpus[2].clone();
    let other = h.nodes().nth(2).unwrap().gpus[0].clone();
    assert!(h.fake_nvml_gpus(1)[2].xids.is_empty());
    assert_eq!(h.xid_gpu(&gpu, 79).unwrap(), 1);
    assert_eq!(h.xid_gpu(&other, 48).unwrap(), 2);
    assert_eq!(h.xid_gpu(&gpu, 79).unwrap(), 3);
    let ids: Vec<(u64, u64)> = h.fake_nvml_gpus(1)[2]
        .xids
        .iter()
        .map(|x| (x.id, x.code))
        .collect();
    assert_eq!(ids, [(1, 79), (3, 79)]);
    assert!(h.fake_nvml_gpus(1)[1].xids.is_empty());
    assert!(h.xid_gpu("GPU-nope", 79).is_err());
    for _ in 0..100 {
        h.xid_gpu(&gpu, 13).unwrap();
    }
    let xids = &h.fake_nvml_gpus(1)[2].xids;
    assert_eq!(xids.len(), MAX_XIDS_PER_GPU);
    assert_eq!(xids.last().unwrap().id, 103);
}
