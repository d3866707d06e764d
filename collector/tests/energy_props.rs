//! Property tests of the energy integration, through the collector's real
//! `State::apply`: for any sequence of counter readings with resets and gaps,
//! the energy counted is exactly the ground truth of the time the counter
//! shows, and every complete UTC minute holds exactly that minute's energy.
//!
//! The ground truth: power is constant between two readings, so the true
//! cumulative energy is linear between them and known at every instant.

use dcwatt_collector::config::{token_hash, Config, Site};
use dcwatt_collector::state::State;
use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};
use proptest::prelude::*;

fn site() -> Site {
    Config::from_toml(&format!(
        "[[agents]]\nid = \"a\"\ntoken_sha256 = \"{}\"\n[[meters]]\nid = \"m\"\nrole = \"facility\"\n",
        hex::encode(token_hash("t"))
    ))
    .unwrap()
    .build()
    .unwrap()
}

/// One step: time since the previous reading (ms), power over it (W), and
/// whether the counter resets somewhere inside it (at this fraction of it).
#[derive(Debug, Clone)]
struct Step {
    dt_ms: i64,
    watts: f64,
    reset_at: Option<f64>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (
        prop_oneof![4 => 500i64..15_000, 1 => 30_001i64..400_000],
        0.0f64..2.0e6,
        prop::option::weighted(0.05, 0.0f64..1.0),
    )
        .prop_map(|(dt_ms, watts, reset_at)| Step {
            dt_ms,
            watts,
            reset_at,
        });
    prop::collection::vec(step, 1..120)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn counted_energy_and_minutes_match_the_truth(start_offset in 0i64..60_000, steps in steps()) {
        let site = site();
        let mut state = State::new(&site);
        let t0 = 1_795_000_000_000 + start_offset;
        // Truth: (time, cumulative J) at each reading; the counter's own value.
        let (mut t, mut truth, mut counter) = (t0, 0.0f64, 123_456.0f64);
        let mut knots = vec![(t, truth)];
        let (mut unknowable, mut resets) = (0.0, 0u64);
        let mut minutes = Vec::new();
        let reading = |seq: u64, t: i64, v: f64| Batch {
            version: VERSION,
            agent: "a".into(),
            seq,
            first_seq: None,
            node: "a".into(),
            created_ms: t,
            gpus: vec![],
            readings: vec![Reading { ts_ms: t, entity: Entity::Meter("m".into()), quantity: Quantity::EnergyJoules, value: v }],
        };
        let (_, c) = state.apply(&reading(1, t, counter), &site, t);
        minutes.extend(c.minutes);
        for (i, s) in steps.iter().enumerate() {
            let step_joules = s.watts * s.dt_ms as f64 / 1000.0;
            match s.reset_at {
                // The counter restarts from zero inside the step: only the part
                // after the reset is shown by the next reading. A reset is seen
                // only as a decrease; one whose next reading is above the old
                // value cannot be told from the counter alone, so none is made.
                Some(f) if step_joules * (1.0 - f) < counter => {
                    unknowable += step_joules * f;
                    counter = step_joules * (1.0 - f);
                    resets += 1;
                }
                _ => counter += step_joules,
            }
            t += s.dt_ms;
            truth += step_joules;
            knots.push((t, truth));
            let (_, c) = state.apply(&reading(i as u64 + 2, t, counter), &site, t);
            minutes.extend(c.minutes);
        }
        let m = &state.meters["m"];
        let counted = m.acc.counted;
        let want = truth - unknowable;
        prop_assert!((counted - want).abs() <= 1e-9 * want.max(1.0), "counted {counted}, truth {want}");
        prop_assert_eq!(m.acc.resets, resets);

        // Truth of a minute: linear between knots.
        let at = |x: i64| -> f64 {
            let i = knots.partition_point(|(k, _)| *k < x);
            if knots[i].0 == x || i == 0 { return knots[i].1; }
            let ((ta, ea), (tb, eb)) = (knots[i - 1], knots[i]);
            ea + (eb - ea) * (x - ta) as f64 / (tb - ta) as f64
        };
        for w in &minutes {
            let end = w.1.minute_ms + 60_000;
            prop_assert_eq!(w.1.minute_ms % 60_000, 0);
            prop_assert!(w.1.minute_ms >= t0 && end <= t, "minute {} outside the readings", w.1.minute_ms);
            if w.1.complete {
                let truth = at(end) - at(w.1.minute_ms);
                prop_assert!((w.1.joules - truth).abs() <= 1e-6 * truth.max(1.0), "minute {}: {} vs {truth}", w.1.minute_ms, w.1.joules);
            }
        }
        // Every whole minute between the first and last reading is emitted once.
        let first = (t0 + 59_999).div_euclid(60_000) * 60_000;
        let whole = ((t.div_euclid(60_000) * 60_000 - first) / 60_000).max(0) as usize;
        prop_assert_eq!(minutes.len(), whole);
    }
}

/// What happens to the counter in one step of the second property.
#[derive(Debug, Clone)]
enum Event {
    /// A clean reading.
    Clean,
    /// The gateway reports a value slightly below the true one (a float32
    /// rounding the other way), at most 10⁻⁷ of it.
    Dip(f64),
    /// An absurd value (up by this many times the most the meter can count,
    /// or down to this fraction of the value), then a clean reading.
    Glitch { up: bool, factor: f64 },
    /// The counter restarts from zero at this fraction of the step.
    Reset(f64),
}

fn judged_steps() -> impl Strategy<Value = Vec<(i64, f64, Event)>> {
    let event = prop_oneof![
        10 => Just(Event::Clean),
        2 => (0.0f64..1e-7).prop_map(Event::Dip),
        2 => (any::<bool>(), 2.0f64..1000.0).prop_map(|(up, factor)| Event::Glitch { up, factor }),
        1 => (0.0f64..1.0).prop_map(Event::Reset),
    ];
    prop::collection::vec((500i64..15_000, 0.0f64..RATING, event), 1..120)
}

/// The meter's rating in the second property, W.
const RATING: f64 = 5.0e5;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random counter series with dips, glitches and resets, on a meter rated
    /// [`RATING`]: what is counted never exceeds the true energy (dips and
    /// glitches add nothing), and falls short of it only by what a reset
    /// hides (the energy between the last reading and the reset).
    #[test]
    fn dips_and_glitches_add_nothing(start in 1.0e6f64..1.0e12, steps in judged_steps()) {
        let site = Config::from_toml(&format!(
            "[[agents]]\nid = \"a\"\ntoken_sha256 = \"{}\"\nmeters = [\"m\"]\n[[meters]]\nid = \"m\"\nrole = \"facility\"\nnominal_max_watts = {RATING:?}\n",
            hex::encode(token_hash("t"))
        ))
        .unwrap()
        .build()
        .unwrap();
        let mut state = State::new(&site);
        let mut seq = 0u64;
        let mut feed = |state: &mut State, t: i64, v: f64| {
            seq += 1;
            let b = Batch {
                version: VERSION,
                agent: "a".into(),
                seq,
                first_seq: None,
                node: "a".into(),
                created_ms: t,
                gpus: vec![],
                readings: vec![Reading { ts_ms: t, entity: Entity::Meter("m".into()), quantity: Quantity::EnergyJoules, value: v }],
            };
            state.apply(&b, &site, t);
        };
        let mut t = 1_795_000_000_000i64;
        let (mut counter, mut truth, mut hidden) = (start, 0.0f64, 0.0f64);
        feed(&mut state, t, counter);
        for (dt, watts, event) in &steps {
            let step = watts * *dt as f64 / 1000.0;
            truth += step;
            match event {
                Event::Reset(f) if step * (1.0 - f) < counter => {
                    hidden += step * f;
                    counter = step * (1.0 - f);
                }
                _ => counter += step,
            }
            t += dt;
            match event {
                Event::Dip(d) => feed(&mut state, t, counter * (1.0 - d)),
                Event::Glitch { up, factor } => {
                    let most = RATING * (*dt as f64 * 1.1 + 100.0) / 1000.0;
                    let absurd = if *up { counter + most * factor } else { counter / factor };
                    // A value down to what the meter can count from zero looks
                    // like a reset: not a glitch this test can make.
                    if *up || absurd > most {
                        feed(&mut state, t, absurd);
                    }
                    // Then a clean reading, a second later.
                    t += 1000;
                    let more = watts;
                    truth += more;
                    counter += more;
                    feed(&mut state, t, counter);
                }
                _ => feed(&mut state, t, counter),
            }
        }
        let counted = state.meters["m"].acc.counted;
        let tol = 1e-9 * truth.max(1.0) + 1e-7 * (start + truth);
        prop_assert!(counted <= truth + tol, "counted {counted} > truth {truth}");
        prop_assert!(counted >= truth - hidden - tol, "counted {counted} < truth {truth} - hidden {hidden}");
    }
}
