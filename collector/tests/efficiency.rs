//! The efficiency report over a simulated year: hour rows booked through the
//! store's own code (`Store::book_hour`) from a known truth, with a counter
//! gap, a reset and glitches stored as events; the report (CLI in JSON, CSV
//! and HTML, and the API) must give every figure within 0.01 % of the truth,
//! the right category and coverage, list the events, and agree with itself
//! across formats. The HTML page is opened in a real headless Chromium.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcwatt_collector::bounds::{EventKind, MeterEvent};
use dcwatt_collector::config::{token_hash, Config, Site};
use dcwatt_collector::store::{MeterHour, Store};
use dcwatt_wire::time::days_from_civil;
use serde_json::Value;
use sha2::Digest as _;

mod common;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
const OPERATOR: &str = "operator-token";
const CARBON: f64 = 0.3;
/// The facility meter's rating, W.
const UTILITY_RATING: f64 = 5.0e6;

fn year_start() -> i64 {
    days_from_civil(2025, 1, 1) * DAY
}

fn year_end() -> i64 {
    days_from_civil(2026, 1, 1) * DAY
}

fn config(dir: &Path) -> String {
    let key = dir.join("ledger.key");
    if !key.exists() {
        dcwatt_collector::transparency::write_new_key(&key).unwrap();
    }
    format!(
        r#"listen = "127.0.0.1:0"
carbon_intensity_kg_per_kwh = {CARBON}
[ledger]
path = "{db}"
signing_key_file = "{key}"
collector_id = "hall-1.collector"
synchronous = "normal"
[operator]
token_sha256 = "{op}"
[[tenants]]
id = "lab-a"
token_sha256 = "{lab}"
[report]
reference_pue = [{{ name = "Uptime Institute 2024 industry average", pue = 1.56 }}, {{ name = "hyperscale, say \"typical\"", pue = 1.25 }}]
[[meters]]
id = "utility"
role = "facility"
zone = "site"
nominal_max_watts = {UTILITY_RATING}
[[meters]]
id = "it-a"
role = "it"
zone = "hall-a"
it_point = "it_input"
nominal_max_watts = 2.0e6
[[meters]]
id = "it-a-row1"
role = "it"
zone = "hall-a"
it_point = "it_input"
parent = "it-a"
[[meters]]
id = "it-b"
role = "it"
zone = "hall-b"
it_point = "pdu_output"
nominal_max_watts = 2.0e6
[[meters]]
id = "cdu-a"
role = "cooling"
zone = "hall-a"
nominal_max_watts = 1.0e6
[[meters]]
id = "chiller"
role = "cooling"
zone = "site"
nominal_max_watts = 1.0e6
[[meters]]
id = "heat"
role = "reused"
zone = "site"
nominal_max_watts = 2.0e6
[[meters]]
id = "pv"
role = "renewable"
zone = "site"
nominal_max_watts = 2.0e6
[[meters]]
id = "water"
role = "water"
zone = "site"
nominal_max_cubic_meters_per_hour = 10.0
"#,
        db = dir.join("c.sqlite").display(),
        key = key.display(),
        op = hex::encode(token_hash(OPERATOR)),
        lab = hex::encode(token_hash("lab-a-token")),
    )
}

/// One hour's true energies (J; water m³) per meter.
fn truth(h: i64) -> BTreeMap<&'static str, f64> {
    use std::f64::consts::PI;
    let day = (2.0 * PI * (h % 24) as f64 / 24.0).sin();
    let season = (2.0 * PI * h as f64 / 8760.0).sin();
    let j = |kw: f64| kw * 1000.0 * 3600.0;
    let it_a = 600.0 + 100.0 * day + 50.0 * season;
    let it_b = 400.0 + 50.0 * (2.0 * PI * (h % 24) as f64 / 24.0).cos();
    let cdu_a = 0.08 * it_a;
    let chiller = 0.10 * (it_a + it_b) * (1.0 + 0.3 * season);
    let facility = it_a + it_b + cdu_a + chiller + 20.0;
    let pv = (300.0 * (PI * ((h % 24) as f64 - 6.0) / 12.0).sin()).max(0.0);
    let water = 0.2 * (it_a + it_b) * (1.0 + 0.5 * season) / 1000.0; // m³ per hour
    BTreeMap::from([
        ("utility", j(facility)),
        ("it-a", j(it_a)),
        ("it-a-row1", j(0.5 * it_a)),
        ("it-b", j(it_b)),
        ("cdu-a", j(cdu_a)),
        ("chiller", j(chiller)),
        ("heat", j(0.25 * (it_a + it_b))),
        ("pv", j(pv)),
        ("water", water),
    ])
}

/// it-b's counter is silent from 2025-03-10 10:20 to 13:40 (a gap: the
/// difference is exact, its minutes incomplete).
fn gap() -> (i64, i64) {
    let d = days_from_civil(2025, 3, 10) * DAY;
    (d + 10 * HOUR + 20 * 60_000, d + 13 * HOUR + 40 * 60_000)
}

/// The utility meter resets after being dark from 2025-07-14 02:00 to 08:00:
/// those six hours count only what it counted after the reset (1 MJ), and
/// at most its rating × the time is unknown.
fn reset() -> (i64, i64, f64, f64) {
    let d = days_from_civil(2025, 7, 14) * DAY;
    let (f, t) = (d + 2 * HOUR, d + 8 * HOUR);
    let counted = 1.0e6;
    let unknown = UTILITY_RATING * 6.0 * 3600.0 - counted;
    (f, t, counted, unknown)
}

/// Three refused readings of the PV meter on 2025-05-02 at 12:xx.
fn glitch_hour() -> i64 {
    days_from_civil(2025, 5, 2) * DAY + 12 * HOUR
}

/// it-b's energy inside the gap (its power is constant within each hour).
fn gap_joules() -> f64 {
    let (gf, gt) = gap();
    let mut j = 0.0;
    let mut h = HOUR * (gf / HOUR);
    while h < gt {
        let inside = (gt.min(h + HOUR) - gf.max(h)) as f64 / HOUR as f64;
        j += truth((h - year_start()) / HOUR)["it-b"] * inside;
        h += HOUR;
    }
    j
}

/// What the year booked, per meter, over `[a, b)` (hour edges).
fn booked(a: i64, b: i64) -> BTreeMap<&'static str, f64> {
    let mut sum = BTreeMap::new();
    let mut h = a;
    while h < b {
        for (m, v) in hour_rows(h) {
            *sum.entry(m).or_insert(0.0) += v.0;
        }
        h += HOUR;
    }
    sum
}

/// One hour's rows: meter → (booked energy, complete minutes).
fn hour_rows(hour_ms: i64) -> BTreeMap<&'static str, (f64, i64)> {
    let h = (hour_ms - year_start()) / HOUR;
    let mut rows: BTreeMap<&str, (f64, i64)> =
        truth(h).into_iter().map(|(m, j)| (m, (j, 60))).collect();
    let (gf, gt) = gap();
    let missed = |f: i64, t: i64| (t.min(hour_ms + HOUR) - f.max(hour_ms)).max(0) / 60_000;
    rows.get_mut("it-b").unwrap().1 -= missed(gf, gt);
    let (rf, rt, counted, _) = reset();
    if hour_ms >= rf && hour_ms < rt {
        // Dark: what was counted after the reset, spread over its hours.
        *rows.get_mut("utility").unwrap() = (counted / 6.0, 0);
    }
    rows
}

/// Books the simulated year into a database of its own, with its config
/// file (`c.toml`) beside it.
fn year_db() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    {
        let dir = tmp.path();
        std::fs::write(dir.join("c.toml"), config(dir)).unwrap();
        let site = site(dir);
        let db = dir.join("c.sqlite");
        let mut store = Store::open(&db).unwrap();
        store
            .set_synchronous(dcwatt_collector::config::Synchronous::Normal)
            .unwrap();
        let (gf, gt) = gap();
        let (rf, rt, counted, unknown) = reset();
        let mut hour = year_start();
        while hour < year_end() {
            let rows = hour_rows(hour);
            let meters: Vec<MeterHour<'_>> = rows
                .iter()
                .map(|(m, (j, c))| MeterHour {
                    meter: m,
                    joules: *j,
                    complete_minutes: *c,
                })
                .collect();
            let mut events = Vec::new();
            if hour == HOUR * (gt / HOUR) {
                let joules = gap_joules();
                events.push((
                    "it-b",
                    MeterEvent {
                        kind: EventKind::Gap,
                        from_ms: gf,
                        to_ms: gt,
                        joules,
                        unknown_joules: Some(0.0),
                    },
                ));
            }
            if hour == rf {
                events.push((
                    "utility",
                    MeterEvent {
                        kind: EventKind::Reset,
                        from_ms: rf,
                        to_ms: rt,
                        joules: counted,
                        unknown_joules: Some(unknown),
                    },
                ));
            }
            if hour == glitch_hour() {
                for k in 0..3 {
                    let t = hour + 600_000 * (k + 1);
                    events.push((
                        "pv",
                        MeterEvent {
                            kind: EventKind::Glitch,
                            from_ms: t,
                            to_ms: t,
                            joules: 0.0,
                            unknown_joules: Some(0.0),
                        },
                    ));
                }
            }
            store.book_hour(&site, hour, &meters, &events).unwrap();
            hour += HOUR;
        }
        // Ledger rows of the year's last hour, booked and signed, so the
        // report has a checkpoint and a chain head to tie itself to.
        {
            let c = rusqlite::Connection::open(&db).unwrap();
            for m in 0..10 {
                c.execute(
                    "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms) VALUES (?1, 'lab-a', 600000.0, 60000)",
                    rusqlite::params![year_end() - HOUR + m * 60_000],
                )
                .unwrap();
            }
        }
        let now = year_end() + 10 * 60_000;
        assert_eq!(store.close_minutes(&site, now, None).unwrap(), 10);
        assert!(store.checkpoint_due(&site, now).unwrap().is_some());
    }
    tmp
}

fn site(dir: &Path) -> Site {
    Config::from_toml(&config(dir)).unwrap().build().unwrap()
}

fn run_report(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dcwatt-collector"))
        .args(["report", "efficiency", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn close(got: f64, want: f64, what: &str) {
    let rel = ((got - want) / want).abs();
    assert!(rel <= 1e-4, "{what}: {got} vs truth {want} ({rel:e})");
}

/// Equal to the last digit or two (the JSON parser rounds within an ulp).
fn same(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-14 * want.abs(),
        "{what}: {got} vs {want}"
    );
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// The truth's figures over `[a, b)`.
struct Truth {
    facility: f64,
    it: f64,
    it_a: f64,
    it_b: f64,
    cdu_a: f64,
    chiller: f64,
    heat: f64,
    pv: f64,
    water: f64,
}

fn truth_over(a: i64, b: i64) -> Truth {
    let s = booked(a, b);
    Truth {
        facility: s["utility"],
        it: s["it-a"] + s["it-b"],
        it_a: s["it-a"],
        it_b: s["it-b"],
        cdu_a: s["cdu-a"],
        chiller: s["chiller"],
        heat: s["heat"],
        pv: s["pv"],
        water: s["water"],
    }
}

fn check_figures(v: &Value, t: &Truth, what: &str) {
    let kwh = |j: f64| j / 3.6e6;
    let pue = t.facility / t.it;
    close(f(v, "pue"), pue, &format!("{what} pue"));
    close(f(v, "dcie_ratio"), 1.0 / pue, &format!("{what} dcie"));
    close(
        f(v, "wue_litres_per_kwh"),
        t.water * 1000.0 / kwh(t.it),
        &format!("{what} wue"),
    );
    close(
        f(v, "erf_ratio"),
        t.heat / t.facility,
        &format!("{what} erf"),
    );
    close(f(v, "ref_ratio"), t.pv / t.facility, &format!("{what} ref"));
    close(f(v, "cue_kg_per_kwh"), CARBON * pue, &format!("{what} cue"));
    let e = &v["energy_kwh"];
    close(
        f(e, "facility"),
        kwh(t.facility),
        &format!("{what} facility"),
    );
    close(f(e, "it"), kwh(t.it), &format!("{what} it"));
    close(
        f(e, "cooling"),
        kwh(t.cdu_a + t.chiller),
        &format!("{what} cooling"),
    );
    close(f(e, "reused"), kwh(t.heat), &format!("{what} reused"));
    close(f(e, "renewable"), kwh(t.pv), &format!("{what} renewable"));
    close(
        f(v, "water_cubic_meters"),
        t.water,
        &format!("{what} water"),
    );
    assert_eq!(v["category"], 2, "{what}: pdu_output is the lowest point");
    // Partial PUE: the shared chiller split by IT energy.
    let zones = v["zones"].as_array().unwrap();
    let zone = |z: &str| zones.iter().find(|x| x["zone"] == z).unwrap();
    let shared_a = t.chiller * t.it_a / t.it;
    close(
        f(zone("hall-a"), "partial_pue"),
        (t.it_a + t.cdu_a + shared_a) / t.it_a,
        &format!("{what} ppue a"),
    );
    close(
        f(zone("hall-b"), "partial_pue"),
        (t.it_b + t.chiller - shared_a) / t.it_b,
        &format!("{what} ppue b"),
    );
}

#[test]
fn a_simulated_year_reports_the_truth_in_json_csv_and_html() {
    let dir = year_db();
    let cfg = dir.path().join("c.toml");
    let started = Instant::now();
    let (code, json, err) = run_report(&cfg, &["--from", "2025-01-01", "--to", "2026-01-01"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("report over the year: {:?}", started.elapsed());
    let r: Value = serde_json::from_str(&json).unwrap();
    let (a, b) = (year_start(), year_end());
    let total = &r["total"];
    assert_eq!(total["label"], "2025");
    assert_eq!(r["period_open"], false);
    check_figures(total, &truth_over(a, b), "year");
    // Bounds: the gap costs nothing (its difference is exact), the reset's
    // dark hours at most the meter's rating × 6 h on the facility side.
    let t = truth_over(a, b);
    let (_, _, counted, unknown) = reset();
    close(f(total, "pue_lower"), t.facility / t.it, "pue lower");
    close(
        f(total, "pue_upper"),
        (t.facility + unknown) / t.it,
        "pue upper",
    );
    assert!(f(total, "pue_upper") > f(total, "pue") * 1.002, "{total}");
    // Coverage: 200 minutes of it-b's gap and 360 of the reset, of 525,600.
    let minutes = 365.0 * 1440.0;
    close(
        f(total, "coverage_ratio"),
        (minutes - 560.0) / minutes,
        "coverage",
    );
    assert_eq!(total["complete"], false);
    close(
        f(total, "measured_ratio"),
        1.0 - (gap_joules() + counted) / (t.facility + t.it),
        "measured",
    );
    let zones = total["zones"].as_array().unwrap();
    let hall_b = zones.iter().find(|z| z["zone"] == "hall-b").unwrap();
    close(
        f(hall_b, "coverage_ratio"),
        (minutes - 200.0) / minutes,
        "hall-b coverage",
    );
    // Months and quarters, each against the truth.
    let months = r["months"].as_array().unwrap();
    assert_eq!(months.len(), 12);
    for (i, m) in months.iter().enumerate() {
        let (mf, mt) = (
            days_from_civil(2025, i as i64 + 1, 1) * DAY,
            if i == 11 {
                b
            } else {
                days_from_civil(2025, i as i64 + 2, 1) * DAY
            },
        );
        assert_eq!(m["label"], format!("2025-{:02}", i + 1));
        check_figures(m, &truth_over(mf, mt), &format!("month {}", i + 1));
        assert_eq!(
            m["days"].as_array().unwrap().len() as i64,
            (mt - mf) / DAY,
            "month {}",
            i + 1
        );
    }
    let quarters = r["quarters"].as_array().unwrap();
    assert_eq!(quarters.len(), 4);
    for (q, v) in quarters.iter().enumerate() {
        let qf = days_from_civil(2025, 3 * q as i64 + 1, 1) * DAY;
        let qt = if q == 3 {
            b
        } else {
            days_from_civil(2025, 3 * q as i64 + 4, 1) * DAY
        };
        assert_eq!(v["label"], format!("2025-Q{}", q + 1));
        check_figures(v, &truth_over(qf, qt), &format!("Q{}", q + 1));
    }
    // A day's figures too: the gap's day is exact, its coverage 1 − 200/1440.
    let march = &months[2]["days"][9];
    assert_eq!(march["date"], "2025-03-10");
    let d = days_from_civil(2025, 3, 10) * DAY;
    let dt = truth_over(d, d + DAY);
    close(f(march, "pue"), dt.facility / dt.it, "2025-03-10 pue");
    close(
        f(march, "coverage_ratio"),
        1.0 - 200.0 / 1440.0,
        "2025-03-10 coverage",
    );
    // The events: the gap, the reset and the three glitches, nothing else.
    let events = r["events"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["meter"].as_str().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("it-b", "gap"), ("pv", "glitch"), ("utility", "reset")],
        "{events:?}"
    );
    assert_eq!(events[0]["from"], "2025-03-10T10:20:00Z");
    assert_eq!(events[0]["to"], "2025-03-10T13:40:00Z");
    assert_eq!(events[0]["zone"], "hall-b");
    assert_eq!(events[1]["count"], 3);
    assert_eq!(r["event_counts"]["gap"], 1);
    assert_eq!(months[2]["events"], 1);
    assert_eq!(months[0]["events"], 0);
    // The inventory: every meter, with its coverage.
    let meters = r["meters"].as_array().unwrap();
    assert_eq!(meters.len(), 9);
    let meter = |id: &str| meters.iter().find(|m| m["meter"] == id).unwrap();
    assert_eq!(meter("it-b")["it_point"], "pdu_output");
    assert_eq!(meter("it-b")["category"], 2);
    assert_eq!(meter("it-a-row1")["parent"], "it-a");
    assert_eq!(meter("it-b")["first_reported"], "2025-01-01T00:00:00Z");
    assert_eq!(meter("it-b")["last_reported"], "2026-01-01T00:00:00Z");
    close(
        f(meter("it-b"), "coverage_ratio"),
        (minutes - 200.0) / minutes,
        "it-b",
    );
    close(
        f(meter("utility"), "coverage_ratio"),
        (minutes - 360.0) / minutes,
        "utility",
    );
    assert_eq!(f(meter("pv"), "coverage_ratio"), 1.0);
    // The claim against each reference, with the bound.
    let refs = r["references"].as_array().unwrap();
    assert_eq!(refs.len(), 2);
    let pue = f(total, "pue");
    close(
        f(&refs[0], "below_percent"),
        (1.56 - pue) / 1.56 * 100.0,
        "claim",
    );
    close(
        f(&refs[0], "below_percent_least"),
        (1.56 - f(total, "pue_upper")) / 1.56 * 100.0,
        "claim least",
    );
    let statement = refs[0]["statement"].as_str().unwrap();
    assert!(
        statement.contains(&format!("{:.2} % below", (1.56 - pue) / 1.56 * 100.0))
            && statement.contains("within the bounds"),
        "{statement}"
    );
    // Provenance: version, the config file's hash, the closing checkpoint.
    let p = &r["provenance"];
    assert_eq!(p["collector_version"], env!("CARGO_PKG_VERSION"));
    let text = std::fs::read(&cfg).unwrap();
    assert_eq!(p["config_sha256"], hex::encode(sha2::Sha256::digest(&text)));
    assert_eq!(p["ledger"]["tree_size"], 10);
    assert_eq!(p["ledger"]["checkpoint"]["tree_size"], 10);
    assert_eq!(p["ledger"]["checkpoint_covers_end"], true);
    let head = Store::open(&dir.path().join("c.sqlite"))
        .unwrap()
        .ledger_head()
        .unwrap();
    assert_eq!(p["ledger"]["chain_head"], head.as_str());

    // CSV: the same numbers, to the last digit.
    let (code, csv, err) = run_report(
        &cfg,
        &[
            "--from",
            "2025-01-01",
            "--to",
            "2026-01-01",
            "--format",
            "csv",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let sections = csv_sections(&csv);
    let figures = &sections["figures"];
    assert_eq!(figures.len(), 1 + 4 + 12, "{csv}");
    let by_label: BTreeMap<&str, &BTreeMap<String, String>> =
        figures.iter().map(|r| (r["period"].as_str(), r)).collect();
    for v in std::iter::once(total).chain(quarters).chain(months) {
        let row = by_label[v["label"].as_str().unwrap()];
        for key in [
            "pue",
            "pue_lower",
            "pue_upper",
            "coverage_ratio",
            "measured_ratio",
            "wue_litres_per_kwh",
            "erf_ratio",
            "ref_ratio",
            "cue_kg_per_kwh",
        ] {
            same(
                row[key].parse::<f64>().unwrap(),
                f(v, key),
                &format!("{} {key}", v["label"]),
            );
        }
        same(
            row["it_kwh"].parse::<f64>().unwrap(),
            f(&v["energy_kwh"], "it"),
            "it_kwh",
        );
        assert_eq!(row["category"], "2");
    }
    assert_eq!(sections["meters"].len(), 9);
    assert_eq!(sections["events"].len(), 3);
    assert_eq!(
        sections["references"][1]["name"],
        "hyperscale, say \"typical\""
    );
    let prov: BTreeMap<&str, &str> = sections["provenance"]
        .iter()
        .map(|r| (r["key"].as_str(), r["value"].as_str()))
        .collect();
    assert_eq!(prov["config_sha256"], p["config_sha256"].as_str().unwrap());
    assert_eq!(prov["ledger_chain_head"], head.as_str());

    // HTML: the same figures, rounded for reading, exact in data-value.
    let (code, html, err) = run_report(
        &cfg,
        &[
            "--from",
            "2025-01-01",
            "--to",
            "2026-01-01",
            "--format",
            "html",
        ],
    );
    assert_eq!(code, 0, "{err}");
    for (id, key) in [
        ("pue", "pue"),
        ("pue-lower", "pue_lower"),
        ("pue-upper", "pue_upper"),
        ("wue", "wue_litres_per_kwh"),
        ("erf", "erf_ratio"),
        ("ref", "ref_ratio"),
        ("cue", "cue_kg_per_kwh"),
    ] {
        let (text, value) = shown(&html, id);
        same(value.parse::<f64>().unwrap(), f(total, key), id);
        assert_eq!(text, format!("{:.4}", f(total, key)), "{id}");
    }
    assert_eq!(shown(&html, "category").0, "Category 2");
    // One chart for the months, one per month; no external asset, no script.
    assert_eq!(html.matches("<svg").count(), 13);
    for m in months {
        assert!(html.contains(&format!("id=\"month-{}\"", m["label"].as_str().unwrap())));
    }
    for banned in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(banned), "{banned}");
    }
    assert!(html.contains("hyperscale, say &quot;typical&quot;"));
    assert!(html.contains(head.as_str()));
}

/// The text and `data-value` of the element with `id` in an HTML page.
fn shown(html: &str, id: &str) -> (String, String) {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no id {id}"));
    let rest = &html[at..];
    let value = rest
        .split("data-value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap_or_default()
        .to_owned();
    let text = rest[rest.find('>').unwrap() + 1..]
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    (text, value)
}

/// A CSV field list, honouring quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The report's CSV sections: name → rows keyed by the section's header.
fn csv_sections(csv: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out = BTreeMap::new();
    for block in csv.split("\n\n") {
        let mut lines = block.lines();
        let name = lines.next().unwrap().trim_start_matches("# ").to_owned();
        let header = csv_fields(lines.next().unwrap());
        let rows = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let fields = csv_fields(l);
                assert_eq!(fields.len(), header.len(), "{name}: {l}");
                header.iter().cloned().zip(fields).collect()
            })
            .collect();
        out.insert(name, rows);
    }
    out
}

#[test]
fn bad_options_are_refused_naming_them() {
    let dir = year_db();
    let cfg = dir.path().join("c.toml");
    for (args, needle) in [
        (
            vec!["--from", "2025-13-01", "--to", "2026-01-01"],
            "--from: ",
        ),
        (
            vec!["--from", "2025-01-01", "--to", "2027-01-01"],
            "--to: must be after from, by at most 400 days",
        ),
        (vec!["--from", "2025-01-01", "--to", "2025-01-01"], "--to: "),
        (
            vec!["--from", "2025-01-01T06:00:00Z", "--to", "2026-01-01"],
            "--from: ",
        ),
        (
            vec![
                "--from",
                "2025-01-01",
                "--to",
                "2026-01-01",
                "--format",
                "pdf",
            ],
            "--format: ",
        ),
        (
            vec![
                "--from",
                "2025-01-01",
                "--to",
                "2026-01-01",
                "--zone",
                "hall-z",
            ],
            "--zone: no zone \"hall-z\"",
        ),
    ] {
        let (code, out, err) = run_report(&cfg, &args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty());
    }
    // No database where the config says: nothing to read, nothing created.
    let other = dir.path().join("other.toml");
    let text = config(dir.path()).replace("c.sqlite", "missing.sqlite");
    std::fs::write(&other, text).unwrap();
    let (code, _, err) = run_report(&other, &["--from", "2025-01-01", "--to", "2026-01-01"]);
    assert_eq!(code, 2);
    assert!(err.contains("[ledger] path: no database to read"), "{err}");
    assert!(!dir.path().join("missing.sqlite").exists());
    // A period still open, after the data: no PUE, and why; every counted
    // meter not reported over it.
    let today = dcwatt_wire::time::now_ms().div_euclid(DAY) * DAY;
    let (from, to) = (
        dcwatt_collector::efficiency::date(today - 10 * DAY),
        dcwatt_collector::efficiency::date(today + DAY),
    );
    let (code, json, err) = run_report(&cfg, &["--from", &from, "--to", &to]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r["period_open"], true);
    assert_eq!(r["total"]["pue"], Value::Null);
    assert_eq!(r["total"]["coverage_ratio"], 0.0);
    assert!(r["total"]["missing_reason"].is_string(), "{}", r["total"]);
    assert_eq!(
        r["event_counts"]["not_reported"], 8,
        "{}",
        r["event_counts"]
    );
    assert_eq!(r["references"][0]["below_percent"], Value::Null);
    // One zone: its partial PUE, meters and events only.
    let (code, json, err) = run_report(
        &cfg,
        &[
            "--from",
            "2025-01-01",
            "--to",
            "2026-01-01",
            "--zone",
            "hall-b",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r["total"]["zones"].as_array().unwrap().len(), 1);
    assert_eq!(r["meters"].as_array().unwrap().len(), 1);
    assert_eq!(r["events"].as_array().unwrap().len(), 1);
    assert_eq!(r["events"][0]["meter"], "it-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_gives_the_operator_the_same_report() {
    let dir = year_db();
    let cfg = dir.path().join("c.toml");
    let (code, json, err) = run_report(&cfg, &["--from", "2025-01-01", "--to", "2026-01-01"]);
    assert_eq!(code, 0, "{err}");
    let cli: Value = serde_json::from_str(&json).unwrap();
    let (url, _stop) = common::start(&config(dir.path())).await;
    let http = reqwest::Client::new();
    let path = format!("{url}/v1/reports/efficiency");
    let q = "from=2025-01-01&to=2026-01-01";
    // No token, a tenant's token: refused.
    let resp = http.get(format!("{path}?{q}")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let (status, _) = common::get_as(&http, &format!("{path}?{q}"), "lab-a-token").await;
    assert_eq!(status, 401);
    for (query, needle) in [
        ("from=2025-01-01", "query: "),
        ("from=yesterday&to=2026-01-01", "from: "),
        ("from=2025-01-01&to=2025-01-01T01:00:00Z", "to: "),
        (
            "from=2025-01-01&to=2027-02-01",
            "to: must be after from, by at most 400 days",
        ),
        ("from=2025-01-01&to=2026-01-01&format=xml", "format: "),
        ("from=2025-01-01&to=2026-01-01&zone=nowhere", "zone: "),
        ("from=-5&to=2026-01-01", "from: "),
        ("from=99999999999999999999&to=2026-01-01", "from: "),
    ] {
        let (status, body) = common::get_as(&http, &format!("{path}?{query}"), OPERATOR).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(needle), "{query}: {body}");
    }
    let api = common::get_json_as(&http, &format!("{path}?{q}"), OPERATOR).await;
    for key in [
        "total",
        "quarters",
        "months",
        "references",
        "meters",
        "events",
    ] {
        assert_eq!(api[key], cli[key], "{key}");
    }
    assert_eq!(api["provenance"]["ledger"], cli["provenance"]["ledger"]);
    // The running collector has no file to hash: from_toml in the test.
    assert_eq!(api["provenance"]["config_sha256"], Value::Null);
    let resp = http
        .get(format!("{path}?{q}&format=html"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let html = resp.text().await.unwrap();
    same(
        shown(&html, "pue").1.parse::<f64>().unwrap(),
        f(&cli["total"], "pue"),
        "api html pue",
    );
    let (status, csv) = common::get_as(&http, &format!("{path}?{q}&format=csv"), OPERATOR).await;
    assert_eq!(status, 200);
    assert_eq!(csv_sections(&csv)["figures"].len(), 17);
}

/// Chromium in a process group of its own, the whole group killed when
/// dropped (its renderer and helper processes too).
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs headless Chromium with `args` on `page`; its stdout. Fails after 90 s.
fn chromium(profile: &Path, args: &[String], page: &Path) -> String {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("chromium is not installed (scripts/test installs it)");
    let out_path = profile.join("stdout.txt");
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut browser = Browser(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = browser.0.try_wait().unwrap() {
            assert!(status.success(), "chromium: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "chromium did not finish in 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(out_path).unwrap()
}

#[test]
fn the_page_in_headless_chromium_shows_the_json_pue() {
    let dir = year_db();
    let cfg = dir.path().join("c.toml");
    let args = ["--from", "2025-01-01", "--to", "2026-01-01"];
    let (code, json, err) = run_report(&cfg, &args);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&json).unwrap();
    let (code, html, err) = run_report(&cfg, &[&args[..], &["--format", "html"]].concat());
    assert_eq!(code, 0, "{err}");
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    // The DOM as Chromium rendered it: the PUE shown is the JSON's.
    let dom = chromium(dir.path(), &["--dump-dom".to_owned()], &page);
    let (text, value) = shown(&dom, "pue");
    assert_eq!(text, format!("{:.4}", f(&r["total"], "pue")), "{dom:.2000}");
    same(
        value.parse::<f64>().unwrap(),
        f(&r["total"], "pue"),
        "dom pue",
    );
    assert_eq!(dom.matches("<svg").count(), 13);
    // The screenshot: not blank, and the charts' bars are drawn.
    let shot = dir.path().join("shot.png");
    chromium(
        dir.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,1800".to_owned(),
        ],
        &page,
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1200, 1800));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let luma: Vec<f64> = pixels
        .iter()
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect();
    let mean = luma.iter().sum::<f64>() / luma.len() as f64;
    let var = luma.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / luma.len() as f64;
    assert!(var > 100.0, "blank screenshot: luma variance {var}");
    // The bars' blue (#3b7dd8), within a little anti-aliasing.
    let blue = pixels
        .iter()
        .filter(|p| {
            (i32::from(p[0]) - 0x3b).abs() < 8
                && (i32::from(p[1]) - 0x7d).abs() < 8
                && (i32::from(p[2]) - 0xd8).abs() < 8
        })
        .count();
    assert!(
        blue > 2_000,
        "no chart bars in the screenshot: {blue} blue pixels"
    );
    eprintln!("screenshot: luma variance {var:.0}, {blue} bar pixels");
    if let Ok(keep) = std::env::var("DCWATT_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
