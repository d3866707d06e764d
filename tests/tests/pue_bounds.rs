//! PUE that survives real operations: a simulated day of a small hall (exact
//! ground truth), read every 10 s on the simulation's clock and fed through
//! the collector's real `State::apply` and store, with a five-minute outage of
//! the utility meter across a quarter-hour edge, a PDU counter reset 5 s
//! before a full hour, a PDU swapped for a new meter, a power-only cooling
//! meter silent for two minutes and a refused glitch. Every trailing window
//! and every hour and quarter hour is checked: the truth lies inside
//! `[lower, upper]`; the day, its month to date and the last hour and quarter
//! are exported with a bound under 0.1 %; what no reading covers (the days
//! before the hall started) is unbounded and not exported.
//!
//! Readings fall on whole 10 s, so every minute edge has a reading on it and a
//! cleanly measured minute is exact: the only differences from the truth are
//! the unknowns the bounds describe (and float rounding, 10⁻⁹ here), except
//! for the power-only cooling meter, whose trapezoid integration is not exact
//! (its tolerance is said where it is used).

use std::collections::BTreeMap;

use dcwatt_collector::config::{Config, Site};
use dcwatt_collector::export;
use dcwatt_collector::figures;
use dcwatt_collector::state::State;
use dcwatt_collector::store::{Resolution, Store};
use dcwatt_collector::windows::{self, Period};
use dcwatt_sim::hall::{Entity as SimEntity, Hall};
use dcwatt_sim::SimConfig;
use dcwatt_wire::time::days_from_civil;
use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
const STEP: i64 = 10_000;
/// Float rounding over a day's sums.
const ROUNDING: f64 = 1e-9;

/// Ratings: each meter's most power (a 2-node rack draws at most 7.04 kW; the
/// facility at most 15.7 kW; cooling 1.08 kW).
const RATINGS: [(&str, &str, f64); 4] = [
    ("utility-a", "facility", 16_000.0),
    ("pdu-r1", "it", 7_500.0),
    ("pdu-r2", "it", 7_500.0),
    ("cooling-1", "cooling", 1_200.0),
];

fn site() -> Site {
    let mut toml = String::new();
    for (id, role, watts) in RATINGS {
        toml += &format!(
            "[[meters]]\nid = \"{id}\"\nrole = \"{role}\"\nzone = \"hall-1\"\nnominal_max_watts = {watts:.1}\n"
        );
        if role == "it" {
            toml += "it_point = \"pdu_output\"\n";
        }
    }
    Config::from_toml(&toml).unwrap().build().unwrap()
}

fn batch(seq: u64, t: i64, readings: Vec<Reading>) -> Batch {
    Batch {
        version: VERSION,
        agent: "gw".into(),
        seq,
        first_seq: None,
        node: "gw".into(),
        created_ms: t,
        gpus: vec![],
        readings,
    }
}

/// The truth per minute: (facility, IT, cooling) J, by minute start.
type Truth = BTreeMap<i64, [f64; 3]>;

fn truth_over(truth: &Truth, from: i64, to: i64) -> [f64; 3] {
    truth.range(from..to).fold([0.0; 3], |mut acc, (_, m)| {
        for (a, v) in acc.iter_mut().zip(m) {
            *a += v;
        }
        acc
    })
}

/// Checks the truth lies inside a period's energy and PUE bounds.
fn check_inside(p: &Period, truth: &Truth, what: &str) {
    let [f, it, _] = truth_over(truth, p.from_ms, p.to_ms);
    for (role, want) in [("facility", f), ("it", it)] {
        let b = p.energy_bounds_joules[role];
        let upper = b.upper.unwrap_or(f64::INFINITY);
        assert!(
            b.lower <= want * (1.0 + ROUNDING) && want <= upper * (1.0 + ROUNDING),
            "{what}: {role} truth {want} J outside [{}, {upper}] ({p:?})",
            b.lower
        );
    }
    let Some(pue) = p.pue else {
        assert!(!p.pue_exported, "{what}: exported without a PUE");
        return;
    };
    let true_pue = if it > 0.0 { f / it } else { pue };
    let (lo, hi) = (
        p.pue_lower.expect("a lower bound"),
        p.pue_upper.unwrap_or(f64::INFINITY),
    );
    assert!(
        lo <= true_pue * (1.0 + ROUNDING) && true_pue <= hi * (1.0 + ROUNDING),
        "{what}: PUE truth {true_pue} outside [{lo}, {hi}] (estimate {:?})",
        p.pue
    );
}

/// The simulated day, 1 November 2026 (so that the month to date is the day).
struct Day {
    site: Site,
    state: State,
    store: Store,
    truth: Truth,
    start: i64,
    /// True energy of the events' unknown stretches, J.
    cooling_gap_joules: f64,
}

fn simulate() -> Day {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        racks: 2,
        nodes_per_rack: 2,
        gpus_per_node: 2,
        seed: 19,
        state_dir: dir.path().to_path_buf(),
    };
    let start = days_from_civil(2026, 11, 1) * DAY;
    let end = start + DAY;
    let mut hall = Hall::new(&config, start).unwrap();
    let site = site();
    let mut state = State::new(&site);
    let mut store = Store::in_memory().unwrap();

    // The utility meter is silent for five minutes across 06:15.
    let outage = (start + 6 * HOUR + 12 * MINUTE)..(start + 6 * HOUR + 17 * MINUTE);
    // pdu-r2's counter restarts from zero 5 s before 10:00.
    let reset_at = start + 10 * HOUR - 5_000;
    // pdu-r1 is replaced at 14:40:05: the new meter's counter starts at 5 GJ.
    let swap_at = start + 14 * HOUR + 40 * MINUTE + 5_000;
    let mut swap_base: Option<f64> = None;
    // The power-only cooling meter is silent for two minutes from 18:00.
    let cooling_gap = (start + 18 * HOUR)..(start + 18 * HOUR + 2 * MINUTE);
    // A spike on the utility meter at 20:00:20, refused (off a minute edge:
    // a refused reading on an edge would leave the edge interpolated over
    // 20 s, which is measurement, not an unknown the bounds describe).
    let spike_at = start + 20 * HOUR + 20_000;

    let mut truth = Truth::new();
    let mut reset_done = false;
    let mut seq = 0;
    let mut t = start;
    while t <= end {
        // One-second ticks: coarse, and exact (powers constant in a tick).
        while hall.tick_start_ms() < t {
            hall.advance_to((hall.tick_start_ms() + 1000).min(t));
        }
        if !reset_done && t >= reset_at {
            hall.reset_meter_counter("pdu-r2", reset_at).unwrap();
            reset_done = true;
        }
        if t > start && t % MINUTE == 0 {
            let m = t - MINUTE;
            let e = |id: &str| hall.truth(&SimEntity::Meter(id.into()), m, t).unwrap();
            truth.insert(
                m,
                [e("utility-a"), e("pdu-r1") + e("pdu-r2"), e("cooling-1")],
            );
        }
        let mut readings = Vec::new();
        for (id, _, _) in RATINGS {
            let r = hall.meter_reading(id, t).unwrap();
            let reading = |quantity, value| Reading {
                ts_ms: t,
                entity: Entity::Meter(id.into()),
                quantity,
                value,
            };
            match id {
                "utility-a" if outage.contains(&t) => {}
                "utility-a" if t == spike_at => {
                    readings.push(reading(Quantity::EnergyJoules, r.energy_joules + 1e12))
                }
                "pdu-r1" if t >= swap_at => {
                    let base = *swap_base.get_or_insert_with(|| {
                        hall.meter_reading(id, swap_at).unwrap().energy_joules
                    });
                    readings.push(reading(
                        Quantity::EnergyJoules,
                        5e9 + r.energy_joules - base,
                    ));
                }
                "cooling-1" if cooling_gap.contains(&t) => {}
                "cooling-1" => readings.push(reading(Quantity::PowerWatts, r.power_watts)),
                _ => readings.push(reading(Quantity::EnergyJoules, r.energy_joules)),
            }
        }
        seq += 1;
        let (_, changes) = state.apply(&batch(seq, t, readings), &site, t);
        store.commit("gw", &state, &changes, &site).unwrap();
        t += STEP;
    }
    let cooling_gap_joules = hall
        .truth(
            &SimEntity::Meter("cooling-1".into()),
            cooling_gap.start - STEP,
            cooling_gap.end,
        )
        .unwrap();
    // Every event happened as planned.
    let acc = |id: &str| state.meters[id].acc.clone();
    assert_eq!(acc("pdu-r2").resets, 1);
    assert_eq!((acc("pdu-r1").swaps, acc("pdu-r1").glitches), (1, 3));
    assert_eq!(
        (acc("utility-a").counter_gaps, acc("utility-a").glitches),
        (1, 1)
    );
    assert_eq!(acc("cooling-1").gaps, 1);
    // The ratings hold: no reading was refused but the spike and the swap's.
    let most = |i: usize| truth.values().map(|m| m[i] / 60.0).fold(0.0, f64::max);
    assert!(most(0) < 16_000.0 && most(2) < 1_200.0);
    Day {
        site,
        state,
        store,
        truth,
        start,
        cooling_gap_joules,
    }
}

#[test]
fn a_day_of_gaps_resets_and_swaps_keeps_its_pue_within_bounds() {
    let day = simulate();
    let (site, store, truth, start) = (&day.site, &day.store, &day.truth, day.start);
    let end = start + DAY;
    let period =
        |from: i64, to: i64, r: Resolution| windows::period(store, site, from, to, r).unwrap();

    // The whole day, from minutes and from hours (what GET /v1/pue gives):
    // exported, truth inside, the bound under 0.1 %.
    for r in [Resolution::Minute, Resolution::Hour] {
        let p = period(start, end, r);
        let what = format!("day from {r:?} rows");
        check_inside(&p, truth, &what);
        assert!(p.pue_exported, "{what}: {p:?}");
        let u = p.pue_uncertainty_ratio.unwrap();
        assert!(u > 0.0 && u < 0.001, "{what}: uncertainty {u}");
        eprintln!(
            "{what}: PUE {:.6} in [{:.6}, {:.6}], uncertainty {:.4} %, measured {:.4} %",
            p.pue.unwrap(),
            p.pue_lower.unwrap(),
            p.pue_upper.unwrap(),
            u * 100.0,
            p.measured_ratio * 100.0
        );
        assert!(!p.complete, "{what}: minutes are incomplete");
        // The events that made the bounds are listed.
        let kinds: Vec<(&str, &str)> = p
            .events
            .iter()
            .map(|e| (e.meter.as_str(), e.kind))
            .collect();
        for want in [
            ("utility-a", "gap"),
            ("pdu-r2", "reset"),
            ("pdu-r1", "swap"),
            ("cooling-1", "power_gap"),
            ("utility-a", "glitch"),
        ] {
            assert!(kinds.contains(&want), "{what}: no {want:?} in {kinds:?}");
        }
        // The outage costs nothing over the day; the reset and swap only
        // above (energy was missed, never invented).
        let gap = p.events.iter().find(|e| e.kind == "gap").unwrap();
        assert_eq!((gap.below_joules, gap.above_joules), (0.0, Some(0.0)));
        let it = p.energy_bounds_joules["it"];
        assert!(it.lower == p.energy_joules["it"] && it.upper.unwrap() > it.lower);
        // Most of the energy was measured directly.
        assert!(p.measured_ratio > 0.99 && p.measured_ratio < 1.0, "{p:?}");
        // The cooling meter's gap is bounded by its rating: the partial PUE
        // has bounds and is exported. Its trapezoid integration is not exact
        // (not part of the bound): the truth is checked within 10⁻⁵ of them.
        let z = &p.zones[0];
        assert!(z.partial_pue_exported, "{z:?}");
        let [f, it_true, cooling] = truth_over(truth, start, end);
        let _ = f;
        let true_ppue = (it_true + cooling) / it_true;
        let (lo, hi) = (z.partial_pue_lower.unwrap(), z.partial_pue_upper.unwrap());
        assert!(
            lo - 1e-5 <= true_ppue && true_ppue <= hi + 1e-5,
            "{lo} {true_ppue} {hi}"
        );
        let cooling_bounds = p.energy_bounds_joules["cooling"];
        assert!(cooling_bounds.upper.unwrap() - cooling_bounds.lower >= day.cooling_gap_joules);
    }

    // Every hour and quarter hour: truth inside, whatever is exported.
    for h in 0..24 {
        let p = period(start + h * HOUR, start + (h + 1) * HOUR, Resolution::Minute);
        check_inside(&p, truth, &format!("hour {h}"));
        // The outage (06:11:50–06:17) lies wholly in hour 6: it is exact.
        if h == 6 {
            assert_eq!(p.pue_uncertainty_ratio, Some(0.0), "{p:?}");
            assert!(p.pue_exported && !p.complete);
        }
        for q in 0..4 {
            let from = start + h * HOUR + q * 15 * MINUTE;
            let p = period(from, from + 15 * MINUTE, Resolution::Minute);
            check_inside(&p, truth, &format!("hour {h} quarter {q}"));
        }
    }
    // The outage straddles 06:15: both quarters are cut by it, and bounded
    // by the gap's own energy and the meter's rating; neither is exported.
    for q in [0, 1] {
        let from = start + 6 * HOUR + q * 15 * MINUTE;
        let p = period(from, from + 15 * MINUTE, Resolution::Minute);
        assert!(p.pue_uncertainty_ratio.unwrap() > 0.001, "{p:?}");
        assert!(!p.pue_exported);
    }
    // The reset (09:59:50–10:00:00) is at the end of hour 9 and its last
    // quarter: they are widened, the next hour and quarter are not.
    let widened = |from: i64, len: i64| {
        period(from, from + len, Resolution::Minute)
            .pue_uncertainty_ratio
            .unwrap()
    };
    assert!(widened(start + 9 * HOUR, HOUR) > 0.0);
    assert!(widened(start + 10 * HOUR - 15 * MINUTE, 15 * MINUTE) > 0.0);
    assert_eq!(widened(start + 10 * HOUR, HOUR), 0.0);
    assert_eq!(widened(start + 10 * HOUR, 15 * MINUTE), 0.0);

    // The trailing windows 40 s after the day (stale_after 30 s).
    let now = end + 40_000;
    let trailing = windows::trailing(store, site, now).unwrap();
    for w in &trailing {
        let label = w.window.unwrap();
        check_inside(w, truth, label);
        match label {
            "15m" | "1h" | "24h" | "month" => {
                assert!(w.pue_exported, "{label}: {w:?}");
                assert!(w.pue_uncertainty_ratio.unwrap() < 0.001, "{label}");
            }
            // Days before the hall started: nobody read them; the ratings
            // bound what they can have held, far too loosely to export.
            _ => {
                assert!(!w.pue_exported, "{label}: {w:?}");
                // (October, before the hall: no energy, no PUE at all.)
                assert!(
                    w.pue_uncertainty_ratio.is_none_or(|u| u > 1.0),
                    "{label}: {w:?}"
                );
                assert!(w.events.iter().any(|e| e.kind == "not_reported"));
            }
        }
    }
    let p24 = trailing.iter().find(|w| w.window == Some("24h")).unwrap();
    assert_eq!((p24.from_ms, p24.to_ms), (start, end));

    // Exported with its bounds beside it; the windows nobody could bound are not.
    let text = export::render(
        &day.state,
        site,
        &figures::compute(&day.state, site, now, trailing.clone()),
        &[],
    );
    for window in ["15m", "1h", "24h", "month"] {
        for family in [
            "dcwatt_pue_ratio",
            "dcwatt_pue_lower_ratio",
            "dcwatt_pue_upper_ratio",
        ] {
            let line = format!("{family}{{window=\"{window}\",category=\"2\"}} ");
            assert!(text.contains(&line), "missing {line}in\n{text}");
        }
    }
    for window in ["7d", "30d", "365d", "previous_month"] {
        let line = format!("dcwatt_pue_ratio{{window=\"{window}\"");
        assert!(!text.contains(&line), "unexpected {line}");
    }
    for line in [
        "dcwatt_meter_events_total{meter=\"pdu-r1\",kind=\"swap\"} 1\n",
        "dcwatt_meter_events_total{meter=\"pdu-r2\",kind=\"reset\"} 1\n",
        "dcwatt_meter_events_total{meter=\"utility-a\",kind=\"gap\"} 1\n",
        "dcwatt_meter_events_total{meter=\"cooling-1\",kind=\"power_gap\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line}in\n{text}");
    }

    // The efficiency report over the day, from the same store (its day
    // rows): the truth inside its bounds, every event behind them listed,
    // each meter's coverage below 1 where it had an event.
    let r = dcwatt_collector::efficiency::report(store, site, start, end, None, now).unwrap();
    let t = &r.total;
    let [f, it, _] = truth_over(truth, start, end);
    let (lo, hi) = (t.pue_lower.unwrap(), t.pue_upper.unwrap());
    assert!(
        lo <= f / it * (1.0 + ROUNDING) && f / it <= hi * (1.0 + ROUNDING),
        "report: PUE truth {} outside [{lo}, {hi}]",
        f / it
    );
    let day_rows = period(start, end, Resolution::Day);
    assert_eq!((t.pue, t.pue_upper), (day_rows.pue, day_rows.pue_upper));
    assert_eq!(t.category, Some(2));
    assert!(!r.period_open);
    for kind in ["gap", "reset", "swap", "power_gap", "glitch"] {
        assert!(
            r.event_counts.contains_key(kind),
            "{kind}: {:?}",
            r.event_counts
        );
    }
    assert_eq!(r.months.len(), 1);
    assert_eq!(r.months[0].days.len(), 1);
    assert_eq!(r.months[0].days[0].pue, t.pue);
    for m in &r.meters {
        assert!(m.coverage_ratio < 1.0 && m.coverage_ratio > 0.99, "{m:?}");
        assert_eq!(
            m.first_reported.as_deref(),
            Some("2026-11-01T00:00:00Z"),
            "{m:?}"
        );
    }
}

/// The instant PUE: meters read at different instants (the facility meter at
/// each whole second, the PDUs 300 and 600 ms later), as agents do. The
/// instant figure cuts every meter's energy curve at the same two instants,
/// so it never falls below 1 and follows the hall's true PUE over the same
/// span; a ratio of the latest powers, read at different instants, does not
/// (checked too, so this test can fail).
#[test]
fn the_instant_pue_cuts_every_meter_at_the_same_instants() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        racks: 2,
        nodes_per_rack: 2,
        gpus_per_node: 2,
        seed: 7,
        state_dir: dir.path().to_path_buf(),
    };
    let start = days_from_civil(2026, 11, 1) * DAY;
    let mut hall = Hall::new(&config, start).unwrap();
    let site = site();
    let mut state = State::new(&site);
    let order = [("utility-a", 0), ("pdu-r1", 300), ("pdu-r2", 600)];
    let (mut seq, mut checked) = (0, 0);
    let (mut worst, mut worst_latest): (f64, f64) = (0.0, 0.0);
    let mut latest_below_one = 0;
    let mut previous: Option<(f64, f64)> = None;
    for s in 0..1800 {
        let t = start + s * 1000;
        for (id, offset) in order {
            let at = t + offset;
            while hall.tick_start_ms() + 100 <= at {
                hall.step();
            }
            let r = hall.meter_reading(id, at).unwrap();
            let reading = |quantity, value| Reading {
                ts_ms: at,
                entity: Entity::Meter(id.into()),
                quantity,
                value,
            };
            seq += 1;
            let readings = vec![
                reading(Quantity::EnergyJoules, r.energy_joules),
                reading(Quantity::PowerWatts, r.power_watts),
            ];
            state.apply(&batch(seq, at, readings), &site, at);
        }
        // (The cooling meter is no PUE meter: silent here.)
        let now = t + 700;
        let f = figures::compute(&state, &site, now, Vec::new());
        // The latest powers as they were read (the old instant PUE).
        let w = |role: &str| f.power_watts.get(role).copied().unwrap_or(0.0);
        if w("it") > 0.0 {
            let latest = w("facility") / w("it");
            let truth_now = {
                let p = hall.power(t).unwrap();
                p.facility_watts / p.it_watts
            };
            worst_latest = worst_latest.max((latest - truth_now).abs());
            latest_below_one += usize::from(latest < 1.0);
        }
        let Some(instant) = f.pue_instant else {
            assert!(s < 11, "no instant PUE at {s} s");
            continue;
        };
        // Its span: the last 10 s up to the facility meter's latest reading
        // (the oldest latest point of the three).
        let e = |id: &str| {
            hall.truth(&SimEntity::Meter(id.into()), t - 10_000, t)
                .unwrap()
        };
        let truth = e("utility-a") / (e("pdu-r1") + e("pdu-r2"));
        assert!(instant >= 1.0, "{s} s: instant PUE {instant}");
        worst = worst.max((instant - truth).abs());
        // It moves no more than the hall's true PUE over the same spans did,
        // up to the interpolation at the spans' ends (a PDU's curve is cut
        // between two of its readings a second apart).
        if let Some((was, truth_was)) = previous {
            let (moved, truly) = (instant - was, truth - truth_was);
            assert!(
                (moved - truly).abs() < 0.02,
                "{s} s: instant PUE moved {moved:+.4}, the truth {truly:+.4}"
            );
        }
        previous = Some((instant, truth));
        checked += 1;
    }
    eprintln!(
        "instant PUE: worst |error| {worst:.5} over {checked} s; latest powers: {worst_latest:.5}, {latest_below_one} below 1"
    );
    assert!(checked > 1700);
    // Off the truth of its span only by the interpolation at its ends (the
    // hall's load steps between two GPU phases within a second).
    assert!(worst < 0.02, "instant PUE off the truth by {worst}");
    // The old figure, a ratio of readings taken at different instants, is
    // far off the truth of its instant, and not always above 1.
    assert!(worst_latest > 0.1 && latest_below_one > 0, "{worst_latest}");
}
