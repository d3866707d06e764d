//! PUE over fixed UTC periods through `GET /v1/pue`: three hours of steady,
//! known load posted over HTTP, one meter with a five-minute gap, and the
//! energies, PUE, partial PUE per zone and coverage checked exactly.

use dcwatt_collector::config::{token_hash, Config};
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};
use serde_json::Value;

mod common;

const TOKEN: &str = "gateway-token";
const HOUR: i64 = 3_600_000;

/// The gateway agent's batch `seq` at `t`.
fn gateway_batch(seq: u64, t: i64, readings: Vec<Reading>) -> Batch {
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

/// Meter `id`'s reading of `quantity` at `t`.
fn meter_reading(t: i64, id: &str, quantity: Quantity, value: f64) -> Reading {
    Reading {
        ts_ms: t,
        entity: Entity::Meter(id.into()),
        quantity,
        value,
    }
}

/// (meter, role, zone, it_point, watts, parent)
type MeterSpec = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    f64,
    Option<&'static str>,
);
const METERS: [MeterSpec; 10] = [
    ("utility", "facility", "site", None, 50_000.0, None),
    ("pdu-1", "it", "hall-1", Some("pdu_output"), 20_000.0, None),
    ("pdu-2", "it", "hall-2", Some("pdu_output"), 20_000.0, None),
    ("cdu-1", "cooling", "hall-1", None, 4_000.0, None),
    ("chiller", "cooling", "plant", None, 5_000.0, None),
    // Sub-meters: pdu-1's two feeds add up to it; pdu-2's one reads 5 % high.
    (
        "pdu-1a",
        "it",
        "hall-1",
        Some("pdu_output"),
        12_000.0,
        Some("pdu-1"),
    ),
    (
        "pdu-1b",
        "it",
        "hall-1",
        Some("pdu_output"),
        8_000.0,
        Some("pdu-1"),
    ),
    (
        "pdu-2a",
        "it",
        "hall-2",
        Some("pdu_output"),
        21_000.0,
        Some("pdu-2"),
    ),
    ("heat-export", "reused", "site", None, 3_000.0, None),
    ("solar", "renewable", "site", None, 10_000.0, None),
];

async fn start() -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut config = format!(
        "carbon_intensity_kg_per_kwh = 0.3\n# A day of history posted as fast as it goes.\nagent_batches_per_second = 1e6\nagent_batch_burst = 100000\n[[agents]]\nid = \"gw\"\ntoken_sha256 = \"{}\"\nmeters = [{}, \"water-1\"]\n",
        hex::encode(token_hash(TOKEN)),
        METERS
            .iter()
            .map(|m| format!("{:?}", m.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (id, role, zone, point, _, parent) in METERS {
        config += &format!("[[meters]]\nid = \"{id}\"\nrole = \"{role}\"\nzone = \"{zone}\"\n");
        if let Some(p) = point {
            config += &format!("it_point = \"{p}\"\n");
        }
        if let Some(p) = parent {
            config += &format!("parent = \"{p}\"\n");
        }
    }
    config += "[[meters]]\nid = \"water-1\"\nrole = \"water\"\nzone = \"site\"\n";
    common::start(&config).await
}

#[tokio::test]
async fn fixed_periods_give_exact_energies_pue_partial_pue_and_coverage() {
    let (url, _stop) = start().await;
    let http = reqwest::Client::new();
    let now = now_ms();
    let t_start = now.div_euclid(HOUR) * HOUR - 3 * HOUR;
    // pdu-2 is silent for five minutes in the second hour.
    let gap = (t_start + HOUR + 600_000)..(t_start + HOUR + 900_000);
    let mut seq = 0;
    let mut t = t_start;
    while t <= now {
        seq += 1;
        let mut readings: Vec<Reading> = METERS
            .iter()
            .filter(|(id, ..)| !(*id == "pdu-2" && gap.contains(&t)))
            .map(|(id, _, _, _, watts, _)| {
                let joules = 1.0e9 + watts * (t - t_start) as f64 / 1000.0;
                meter_reading(t, id, Quantity::EnergyJoules, joules)
            })
            .collect();
        // Site water: 0.5 m³ an hour.
        let water = 2.0 + 0.5 * (t - t_start) as f64 / HOUR as f64;
        readings.push(meter_reading(
            t,
            "water-1",
            Quantity::WaterVolumeCubicMeters,
            water,
        ));
        let batch = gateway_batch(seq, t, readings);
        let resp = http
            .post(format!("{url}/v1/batches"))
            .bearer_auth(TOKEN)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
        t += 10_000;
    }
    let pue = |from: String, to: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let resp = http
                .get(format!("{url}/v1/pue?from={from}&to={to}"))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);

    // Hour 1: every meter clean.
    let (status, h1) = pue(t_start.to_string(), (t_start + HOUR).to_string()).await;
    assert_eq!(status, 200, "{h1}");
    assert_eq!(
        (h1["complete"].as_bool(), h1["coverage_ratio"].as_f64()),
        (Some(true), Some(1.0)),
        "{h1}"
    );
    assert_eq!(h1["resolution"], "minute");
    let e = &h1["energy_joules"];
    assert!(
        close(e["facility"].as_f64().unwrap(), 50_000.0 * 3600.0),
        "{e}"
    );
    assert!(close(e["it"].as_f64().unwrap(), 40_000.0 * 3600.0), "{e}");
    assert!(
        close(e["cooling"].as_f64().unwrap(), 9_000.0 * 3600.0),
        "{e}"
    );
    assert!(close(h1["pue"].as_f64().unwrap(), 1.25), "{h1}");
    assert!(close(h1["dcie_ratio"].as_f64().unwrap(), 0.8), "{h1}");
    assert_eq!(h1["category"].as_u64(), Some(2));
    // WUE: 500 L over 40 kWh of IT energy; water is no energy.
    assert!(
        close(h1["water_cubic_meters"].as_f64().unwrap(), 0.5),
        "{h1}"
    );
    assert!(
        close(h1["wue_litres_per_kwh"].as_f64().unwrap(), 12.5),
        "{h1}"
    );
    assert_eq!(
        (
            h1["wue_complete"].as_bool(),
            h1["water_coverage_ratio"].as_f64()
        ),
        (Some(true), Some(1.0)),
        "{h1}"
    );
    assert!(e.get("water").is_none(), "{e}");
    // Sub-meters are not counted twice (IT is still 40 kW), and the EU KPIs.
    assert!(close(h1["erf_ratio"].as_f64().unwrap(), 3.0 / 50.0), "{h1}");
    assert!(
        close(h1["ref_ratio"].as_f64().unwrap(), 10.0 / 50.0),
        "{h1}"
    );
    assert!(
        close(h1["cue_kg_per_kwh"].as_f64().unwrap(), 0.3 * 1.25),
        "{h1}"
    );
    // Hall 1: (20 + 4 + 5 × ½) / 20; hall 2: (20 + 5 × ½) / 20. The chiller in
    // the plant zone is shared by IT energy.
    let zones = h1["zones"].as_array().unwrap();
    let zone = |name: &str| zones.iter().find(|z| z["zone"] == name).unwrap().clone();
    assert!(
        close(zone("hall-1")["partial_pue"].as_f64().unwrap(), 1.325),
        "{zones:?}"
    );
    assert!(
        close(zone("hall-2")["partial_pue"].as_f64().unwrap(), 1.125),
        "{zones:?}"
    );
    assert_eq!(zone("hall-2")["complete"], true);

    // The same hour in RFC 3339 gives the same answer.
    let (_, again) = pue(rfc3339(t_start), rfc3339(t_start + HOUR)).await;
    assert_eq!(again, h1);

    // Hour 2: pdu-2's gap touches six minutes (the one holding its last reading
    // before the gap, and the five of the gap). The counter still tells the
    // energy across the gap, so the energies are right and exact: the hour is
    // not complete, but its PUE has no uncertainty and is exported.
    let (_, h2) = pue(
        (t_start + HOUR).to_string(),
        (t_start + 2 * HOUR).to_string(),
    )
    .await;
    assert_eq!(h2["complete"], false, "{h2}");
    assert!(
        close(h2["coverage_ratio"].as_f64().unwrap(), 54.0 / 60.0),
        "{h2}"
    );
    assert!(
        close(
            h2["energy_joules"]["it"].as_f64().unwrap(),
            40_000.0 * 3600.0
        ),
        "{h2}"
    );
    assert_eq!(h2["missing_reason"], Value::Null, "{h2}");
    assert_eq!(h2["pue_exported"], true, "{h2}");
    assert_eq!(h2["pue_lower"], h2["pue"], "{h2}");
    assert_eq!(h2["pue_upper"], h2["pue"], "{h2}");
    assert_eq!(h2["pue_uncertainty_ratio"].as_f64(), Some(0.0), "{h2}");
    // The gap is listed: pdu-2, from its last reading before to the first after.
    let gap_event = h2["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["meter"] == "pdu-2" && e["kind"] == "gap")
        .unwrap_or_else(|| panic!("no gap event in {h2}"));
    assert_eq!(gap_event["from_ms"].as_i64(), Some(gap.start - 10_000));
    assert_eq!(gap_event["to_ms"].as_i64(), Some(gap.end));
    assert!(close(
        gap_event["joules"].as_f64().unwrap(),
        20_000.0 * 310.0
    ));
    assert_eq!(gap_event["above_joules"].as_f64(), Some(0.0));
    // Only half of the gap's span in a period cut in it: bounded by the gap's
    // own energy (no rating needed), so not exported.
    let (_, cut) = pue(
        (t_start + HOUR).to_string(),
        (t_start + HOUR + 720_000).to_string(),
    )
    .await;
    assert_eq!(cut["pue_exported"], false, "{cut}");
    let (lo, hi) = (
        cut["pue_lower"].as_f64().unwrap(),
        cut["pue_upper"].as_f64().unwrap(),
    );
    assert!(lo < 1.25 && hi > 1.25, "{cut}");
    assert_eq!(zone_of(&h2, "hall-2")["complete"], false);
    // The water meter was whole, IT was not: no complete WUE.
    assert_eq!(
        (
            h2["wue_complete"].as_bool(),
            h2["water_coverage_ratio"].as_f64()
        ),
        (Some(false), Some(1.0)),
        "{h2}"
    );
    assert_eq!(zone_of(&h2, "hall-1")["complete"], true);

    // The meter tree, live: pdu-1's feeds add up; pdu-2's sub-meter reads 5 % more
    // than pdu-2 itself, which is flagged.
    let summary: Value = http
        .get(format!("{url}/v1/summary"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let residual = &summary["tree_residual_ratio"];
    assert!(
        residual["pdu-1"].as_f64().unwrap().abs() < 1e-9,
        "{residual}"
    );
    assert!(
        close(residual["pdu-2"].as_f64().unwrap(), -0.05),
        "{residual}"
    );
    let warnings = summary["warnings"].as_array().unwrap();
    assert!(
        warnings.len() == 1 && warnings[0].as_str().unwrap().contains("pdu-2"),
        "{warnings:?}"
    );

    // Bad questions are refused with the parameter named.
    let (status, body) = pue((t_start + HOUR).to_string(), t_start.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("to"), "{body}");
    let (status, body) = pue("yesterday".into(), t_start.to_string()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("from"), "{body}");
}

fn zone_of(period: &Value, name: &str) -> Value {
    period["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == name)
        .unwrap()
        .clone()
}

/// Unix ms → RFC 3339 (UTC, seconds), without a date crate.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Unix ms of a UTC date and time (Python's calendar.timegm agrees:
/// 2028-02-29T22:00:00Z is 1835474400000).
fn utc(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
    use dcwatt_wire::time::days_from_civil;
    days_from_civil(y, mo, d) * 86_400_000 + h * HOUR + mi * 60_000
}

/// Four hours across the end of February 2028 (a leap year), read every 10 s:
/// facility 1.25 MW, IT 1 MW, site water 1/1024 m³ per 10 s. The water counter
/// resets in the second hour and is silent for five minutes in the third; a
/// spike beyond its rating is refused. Volumes, WUE, coverage and the calendar
/// windows are checked exactly (every value is a binary fraction).
#[test]
fn water_counters_and_calendar_windows_are_exact() {
    use dcwatt_collector::energy::max_step;
    use dcwatt_collector::state::{Ignored, State};
    use dcwatt_collector::store::{Resolution, Store};
    use dcwatt_collector::{export, figures, windows};

    let site = Config::from_toml(
        "[[meters]]\nid = \"utility\"\nrole = \"facility\"\nzone = \"hall-1\"\n\
         [[meters]]\nid = \"pdu\"\nrole = \"it\"\nzone = \"hall-1\"\nit_point = \"pdu_output\"\n\
         [[meters]]\nid = \"water-1\"\nrole = \"water\"\nzone = \"hall-1\"\n\
         nominal_max_cubic_meters_per_hour = 1.0\n",
    )
    .unwrap()
    .build()
    .unwrap();
    let mut state = State::new(&site);
    let mut store = Store::in_memory().unwrap();
    let start = utc(2028, 2, 29, 22, 0);
    assert_eq!(start, 1_835_474_400_000);
    let end = utc(2028, 3, 1, 2, 0);
    const STEP: i64 = 10_000;
    const SLICE: f64 = 1.0 / 1024.0; // m³ per 10 s
                                     // The water meter restarts from zero 5 s before this reading: it then
                                     // shows half a slice, and the half slice before the restart is unknowable.
    let reset_at = utc(2028, 2, 29, 23, 20) + 30_000;
    // Silent for five minutes: readings at 00:09:50, then 00:15:00.
    let gap = utc(2028, 3, 1, 0, 10)..utc(2028, 3, 1, 0, 15);
    let spike_at = utc(2028, 3, 1, 1, 30);
    let mut seq = 0;
    let mut t = start;
    while t <= end {
        let k = ((t - start) / STEP) as f64;
        let water = if t >= reset_at {
            ((t - reset_at) / STEP) as f64 * SLICE + SLICE / 2.0
        } else {
            1000.0 + k * SLICE
        };
        let r = |id: &str, quantity, value| meter_reading(t, id, quantity, value);
        let mut readings = vec![
            r("utility", Quantity::EnergyJoules, 1.0e9 + k * 1.25e7),
            r("pdu", Quantity::EnergyJoules, 2.0e9 + k * 1.0e7),
        ];
        if !gap.contains(&t) {
            let v = if t == spike_at { water + 1000.0 } else { water };
            readings.push(r("water-1", Quantity::WaterVolumeCubicMeters, v));
        }
        if t == start {
            // Neither is counted: a water meter has no power, a facility
            // meter no water.
            readings.push(r("water-1", Quantity::PowerWatts, 5.0));
            readings.push(r("utility", Quantity::WaterVolumeCubicMeters, 1.0));
        }
        seq += 1;
        let batch = gateway_batch(seq, t, readings);
        let (_, changes) = state.apply(&batch, &site, t);
        store.commit("gw", &state, &changes, &site).unwrap();
        t += STEP;
    }
    assert_eq!(state.ignored[&Ignored::NotForRole], 2);
    assert_eq!(state.ignored[&Ignored::Glitch], 1);
    let w = &state.meters["water-1"];
    assert_eq!((w.acc.resets, w.acc.glitches), (1, 1));
    // Everything but the half slice before the restart.
    let total = 1440.0 * SLICE - SLICE / 2.0;
    assert_eq!(w.water_cubic_meters(), Some(total));
    assert_eq!(w.energy_joules(), 0.0);

    let hour = |h: i64, resolution| {
        windows::period(
            &store,
            &site,
            start + h * HOUR,
            start + (h + 1) * HOUR,
            resolution,
        )
        .unwrap()
    };
    let per_hour = 360.0 * SLICE; // 0.3515625 m³ = 351.5625 L per 1000 kWh
    for (h, water, water_coverage) in [
        (0, per_hour, 1.0),
        (1, per_hour - SLICE / 2.0, 59.0 / 60.0), // the restart's minute
        (2, per_hour, 54.0 / 60.0),               // the gap's six minutes
        (3, per_hour, 1.0),                       // the spike was refused
    ] {
        for resolution in [Resolution::Minute, Resolution::Hour] {
            let p = hour(h, resolution);
            let what = format!("hour {h} from {resolution:?} rows");
            assert!(p.complete, "{what}: PUE meters complete");
            assert_eq!(p.energy_joules["facility"], 4.5e9, "{what}");
            assert_eq!(p.energy_joules["it"], 3.6e9, "{what}");
            assert_eq!(p.energy_joules.get("water"), None, "{what}");
            assert_eq!(p.pue, Some(1.25), "{what}");
            assert_eq!(p.water_cubic_meters, Some(water), "{what}");
            assert_eq!(p.water_coverage_ratio, Some(water_coverage), "{what}");
            assert_eq!(
                p.wue_litres_per_kwh,
                Some(water * 1000.0 / 1000.0),
                "{what}"
            );
            assert_eq!(p.wue_complete, water_coverage == 1.0, "{what}");
        }
    }
    assert_eq!(
        hour(0, Resolution::Minute).wue_litres_per_kwh,
        Some(0.3515625)
    );
    // The reset's hour: the half slice before the restart is unknown, at most
    // the meter's rating (1 m³/h) over the 10 s step, less what was counted
    // after the restart; the truth (a whole hour's water) lies inside.
    for resolution in [Resolution::Minute, Resolution::Hour] {
        let p = hour(1, resolution);
        let b = p.water_bounds_cubic_meters.unwrap();
        let most = max_step(1.0 / 3600.0, STEP) - SLICE / 2.0;
        assert_eq!(b.lower, per_hour - SLICE / 2.0);
        assert!(
            (b.upper.unwrap() - (per_hour - SLICE / 2.0 + most)).abs() < 1e-12,
            "{b:?}"
        );
        assert!(b.lower < per_hour && per_hour < b.upper.unwrap());
        // 0.7 % of the hour's water: WUE not exported; PUE exact and exported.
        assert!(!p.wue_exported && p.pue_exported, "{p:?}");
        assert!(p
            .events
            .iter()
            .any(|e| e.meter == "water-1" && e.kind == "reset"));
    }
    // The gap's hour: the counter brackets it, the WUE is exact and exported.
    let p = hour(2, Resolution::Minute);
    assert!(p.wue_exported && !p.wue_complete, "{p:?}");
    assert_eq!(p.wue_lower_litres_per_kwh, p.wue_litres_per_kwh);
    assert_eq!(p.wue_upper_litres_per_kwh, p.wue_litres_per_kwh);

    // A period across the month edge, from hours: Feb 29 23:00 to Mar 1 01:00.
    let edge = windows::period(
        &store,
        &site,
        utc(2028, 2, 29, 23, 0),
        utc(2028, 3, 1, 1, 0),
        Resolution::Hour,
    )
    .unwrap();
    assert_eq!(edge.energy_joules["it"], 7.2e9);
    assert_eq!(edge.water_cubic_meters, Some(2.0 * per_hour - SLICE / 2.0));
    assert_eq!(edge.water_coverage_ratio, Some(113.0 / 120.0));

    // The trailing windows at 02:00:40 (stale_after 30 s: closed at 02:00:10).
    let now = end + 40_000;
    let trailing = windows::trailing(&store, &site, now).unwrap();
    let window = |label: &str| {
        trailing
            .iter()
            .find(|p| p.window == Some(label))
            .unwrap_or_else(|| panic!("no window {label}"))
            .clone()
    };
    // 15m: the quarter hour 01:45–02:00.
    let q = window("15m");
    assert_eq!(
        (q.from_ms, q.to_ms),
        (utc(2028, 3, 1, 1, 45), utc(2028, 3, 1, 2, 0))
    );
    assert_eq!(q.energy_joules["it"], 9.0e8);
    assert_eq!(q.water_cubic_meters, Some(90.0 * SLICE));
    assert_eq!(q.wue_litres_per_kwh, Some(0.3515625));
    assert!(q.complete && q.wue_complete);
    // March to date: two hours, PUE complete, water not (the gap).
    let m = window("month");
    assert_eq!(
        (m.from_ms, m.to_ms, m.resolution),
        (utc(2028, 3, 1, 0, 0), end, Resolution::Hour)
    );
    assert_eq!(m.energy_joules["facility"], 9.0e9);
    assert_eq!(m.water_cubic_meters, Some(2.0 * per_hour));
    assert_eq!((m.complete, m.coverage_ratio), (true, 1.0));
    assert_eq!(
        (m.wue_complete, m.water_coverage_ratio),
        (false, Some(114.0 / 120.0))
    );
    // February 2028, all 29 days, from day rows: two hours of it measured.
    let feb = window("previous_month");
    assert_eq!(
        (feb.from_ms, feb.to_ms, feb.resolution),
        (
            utc(2028, 2, 1, 0, 0),
            utc(2028, 3, 1, 0, 0),
            Resolution::Day
        )
    );
    assert_eq!(feb.to_ms - feb.from_ms, 29 * 86_400_000);
    assert_eq!(feb.energy_joules["it"], 7.2e9);
    assert_eq!(feb.water_cubic_meters, Some(2.0 * per_hour - SLICE / 2.0));
    assert_eq!(feb.coverage_ratio, 120.0 / (29.0 * 1440.0));
    assert!(!feb.complete && !feb.wue_complete);
    assert_eq!(feb.pue, Some(1.25)); // of the covered part, not exported

    // /metrics: WUE only where complete; water never as energy.
    let text = export::render(
        &state,
        &site,
        &figures::compute(&state, &site, now, trailing),
        &[],
    );
    for line in [
        "dcwatt_wue_litres_per_kilowatt_hour{window=\"15m\"} 0.3515625\n",
        // 01:00–02:00: the spike was refused, the hour is whole.
        "dcwatt_wue_litres_per_kilowatt_hour{window=\"1h\"} 0.3515625\n",
        "dcwatt_pue_ratio{window=\"15m\",category=\"2\"} 1.25\n",
        "dcwatt_pue_ratio{window=\"month\",category=\"2\"} 1.25\n",
        "dcwatt_pue_coverage_ratio{window=\"month\"} 1\n",
        // February: 120 of its 29 × 1440 minutes were measured.
        &format!(
            "dcwatt_pue_coverage_ratio{{window=\"previous_month\"}} {}\n",
            120.0 / (29.0 * 1440.0)
        ),
        "dcwatt_partial_pue_ratio{zone=\"hall-1\",window=\"month\"} 1\n",
        // The water gap in March is bracketed by the counter: exact, exported.
        "dcwatt_wue_litres_per_kilowatt_hour{window=\"month\"} 0.3515625\n",
        "dcwatt_pue_lower_ratio{window=\"month\",category=\"2\"} 1.25\n",
        "dcwatt_pue_upper_ratio{window=\"month\",category=\"2\"} 1.25\n",
        "dcwatt_wue_lower_litres_per_kilowatt_hour{window=\"month\"} 0.3515625\n",
        "dcwatt_wue_upper_litres_per_kilowatt_hour{window=\"month\"} 0.3515625\n",
        "dcwatt_partial_pue_lower_ratio{zone=\"hall-1\",window=\"month\"} 1\n",
        "dcwatt_partial_pue_upper_ratio{zone=\"hall-1\",window=\"month\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line}in\n{text}");
    }
    let water_total = format!("dcwatt_water_cubic_meters_total{{zone=\"hall-1\"}} {total}\n");
    assert!(text.contains(&water_total), "missing {water_total}");
    for absent in [
        // Twenty hours before the meters started are not bounded (no rating).
        "dcwatt_wue_litres_per_kilowatt_hour{window=\"24h\"}",
        "dcwatt_pue_ratio{window=\"24h\"",
        "dcwatt_pue_ratio{window=\"previous_month\"",
        "dcwatt_power_watts{role=\"water\"",
        "dcwatt_energy_joules_total{role=\"water\"",
        "dcwatt_meter_energy_joules_total{meter=\"water-1\"",
    ] {
        assert!(!text.contains(absent), "unexpected {absent} in\n{text}");
    }
}

/// The live (5 min) WUE is taken over the part of the PUE's span that the
/// water meters cover too: a water meter that started a minute late gives a
/// WUE at once, complete once it covers the window up to the reporting lag.
#[test]
fn live_wue_covers_what_the_water_meters_cover() {
    use dcwatt_collector::figures;
    use dcwatt_collector::state::State;

    let site = Config::from_toml(
        "[[meters]]\nid = \"utility\"\nrole = \"facility\"\n\
         [[meters]]\nid = \"pdu\"\nrole = \"it\"\nit_point = \"it_input\"\n\
         [[meters]]\nid = \"water-1\"\nrole = \"water\"\n",
    )
    .unwrap()
    .build()
    .unwrap();
    let mut state = State::new(&site);
    let t0 = utc(2026, 11, 5, 10, 0);
    // 1 MW of IT, 1/1024 m³ of water a second from 60 s on.
    let feed = |state: &mut State, seq: u64, t: i64| {
        let k = ((t - t0) / 1000) as f64;
        let r = |id: &str, quantity, value| meter_reading(t, id, quantity, value);
        let mut readings = vec![
            r("utility", Quantity::EnergyJoules, k * 1.25e6),
            r("pdu", Quantity::EnergyJoules, k * 1.0e6),
        ];
        if t >= t0 + 60_000 {
            readings.push(r("water-1", Quantity::WaterVolumeCubicMeters, k / 1024.0));
        }
        let batch = gateway_batch(seq, t, readings);
        state.apply(&batch, &site, t);
    };
    for (seq, s) in (1..).zip(0..=300) {
        feed(&mut state, seq, t0 + s * 1000);
    }
    let live = figures::compute(&state, &site, t0 + 300_000, Vec::new()).pue_live;
    assert_eq!((live.from_ms, live.to_ms), (Some(t0), Some(t0 + 300_000)));
    assert!(live.complete, "{live:?}");
    // 240 s of water over the same 240 s of IT energy: 240/1024 m³ per 240 MJ.
    assert_eq!(live.water_cubic_meters, Some(240.0 / 1024.0));
    let wue = live.wue_litres_per_kwh.unwrap();
    assert!((wue - 1000.0 / 1024.0 * 3.6).abs() < 1e-12, "{wue}");
    // 80 % of the window: not complete for WUE.
    assert!(!live.wue_complete);
    // Thirty seconds on, 270 s of 300 are covered: within the 30 s lag.
    for (seq, s) in (302..).zip(301..=330) {
        feed(&mut state, seq, t0 + s * 1000);
    }
    let live = figures::compute(&state, &site, t0 + 330_000, Vec::new()).pue_live;
    assert_eq!(live.water_cubic_meters, Some(270.0 / 1024.0));
    assert!(live.wue_complete, "{live:?}");
}
