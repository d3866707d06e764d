//! The annual efficiency (KPI) report: PUE with its ISO/IEC 30134-2 category
//! and bounds, partial PUE per zone, WUE, ERF, REF, CUE, energy by role,
//! water, the share of the period measured, every event that moved the
//! figures, the meter inventory they rest on, the monthly and quarterly
//! breakdown, the comparison with reference PUE values, and the provenance
//! that ties the report to the data (collector version, configuration hash,
//! ledger checkpoint and chain head).
//!
//! Every figure comes from [`crate::windows::period`] over the stored day
//! rows (kept for good), and the events from [`crate::bounds`]: nothing is
//! derived here that the live windows do not derive the same way. The report
//! is read from the ledger database: `dcwatt-collector report efficiency`
//! (offline) and `GET /v1/reports/efficiency` (operator) give the same one.
//! [`crate::efficiency_html`] renders it as one self-contained page.
//!
//! Size: one report: its periods, figures, provenance and CSV; each part is
//! short and they share private functions.

use std::collections::BTreeMap;

use serde::Serialize;

use dcwatt_wire::time::{civil_from_days, days_from_civil, month_of, DAY_MS, HOUR_MS};

use crate::bounds::EventView;
use crate::site::{Role, Site};
use crate::store::{Resolution, Store, StoreError};
use crate::windows::{self, Period};

const JOULES_PER_KWH: f64 = 3.6e6;

/// The most events a report lists (the rest are counted in `events_left_out`).
pub const MAX_REPORT_EVENTS: usize = 10_000;
/// The longest period a report covers: 400 days (a year and a bit).
pub const MAX_REPORT_SPAN_MS: i64 = 400 * DAY_MS;
/// The last day a report may name: 9999-12-31.
const MAX_DAY_MS: i64 = 253_402_214_400_000;

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A parameter is not acceptable: its name and why.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A day of a report's period: `YYYY-MM-DD`, or an RFC 3339 instant or Unix
/// ms at a UTC midnight, as Unix ms. `key` names the parameter in the error.
pub fn parse_day(key: &'static str, text: &str) -> Result<i64, ReportError> {
    let bad = |why: String| ReportError::Invalid(key, why);
    let ms = if let Some(ms) = date_ms(text) {
        ms
    } else if let Ok(ms) = text.parse::<i64>() {
        ms
    } else {
        dcwatt_wire::time::parse_rfc3339_ms(text)
            .filter(|ms| *ms >= 0)
            .ok_or_else(|| {
                bad(format!(
                    "{text:?} is neither a date (2026-01-01), RFC 3339 (2026-01-01T00:00:00Z) nor Unix milliseconds"
                ))
            })?
    };
    if !(0..=MAX_DAY_MS).contains(&ms) {
        return Err(bad(format!("{ms} is outside 1970-01-01 to 9999-12-31")));
    }
    if ms % DAY_MS != 0 {
        return Err(bad(format!(
            "{text:?} is not a UTC midnight: the report covers whole UTC days"
        )));
    }
    Ok(ms)
}

/// `YYYY-MM-DD` as Unix ms, when it is a real date.
fn date_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let days = days_from_civil(y, m, d);
    // A day that does not exist (02-30) does not come back the same.
    (civil_from_days(days) == (y, m, d)).then_some(days * DAY_MS)
}

/// The report's period: `to` after `from`, by at most [`MAX_REPORT_SPAN_MS`].
pub fn check_period(from_ms: i64, to_ms: i64) -> Result<(), ReportError> {
    if to_ms <= from_ms || to_ms - from_ms > MAX_REPORT_SPAN_MS {
        return Err(ReportError::Invalid(
            "to",
            "must be after from, by at most 400 days".into(),
        ));
    }
    Ok(())
}

/// `YYYY-MM-DD` of the UTC day holding `ms`.
pub fn date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SSZ` of `ms` (seconds floored).
pub fn instant(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        date(ms),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn kwh(joules: f64) -> f64 {
    joules / JOULES_PER_KWH
}

/// The bounds of an energy, kWh.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KwhBounds {
    /// The least it can be.
    pub lower: f64,
    /// The most; `null`: unbounded.
    pub upper: Option<f64>,
}

/// One zone's partial PUE over a period.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneFigures {
    /// The zone.
    pub zone: String,
    /// Partial PUE: (zone IT + zone infrastructure + its share of the shared
    /// infrastructure) / zone IT.
    pub partial_pue: Option<f64>,
    /// The least partial PUE the bounds allow.
    pub partial_pue_lower: Option<f64>,
    /// The most; `null`: unbounded.
    pub partial_pue_upper: Option<f64>,
    /// IT energy, kWh.
    pub it_kwh: f64,
    /// The zone's own infrastructure energy, kWh.
    pub infrastructure_kwh: f64,
    /// Its share of the shared infrastructure, kWh.
    pub shared_kwh: f64,
    /// Complete minutes of the zone / minutes in the period.
    pub coverage_ratio: f64,
}

/// One UTC day of a month, for its chart.
#[derive(Debug, Clone, Serialize)]
pub struct DayFigures {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The day's PUE.
    pub pue: Option<f64>,
    /// Its least value within the bounds.
    pub pue_lower: Option<f64>,
    /// Its most; `null`: unbounded.
    pub pue_upper: Option<f64>,
    /// Complete minutes / minutes of the day.
    pub coverage_ratio: f64,
    /// Facility energy, kWh.
    pub facility_kwh: f64,
    /// IT energy, kWh.
    pub it_kwh: f64,
}

/// The figures of one period (the whole report, a quarter, a month).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// `2026`, `2026-Q1`, `2026-01` (or the dates, for a partial one).
    pub label: String,
    /// First day, `YYYY-MM-DD`.
    pub from: String,
    /// The day after the last, `YYYY-MM-DD` (exclusive).
    pub to: String,
    /// Start, Unix ms.
    pub from_ms: i64,
    /// End (exclusive), Unix ms.
    pub to_ms: i64,
    /// PUE (ISO/IEC 30134-2) = facility / IT energy, a ratio of sums.
    pub pue: Option<f64>,
    /// The least PUE the energy bounds allow.
    pub pue_lower: Option<f64>,
    /// The most; `null`: unbounded.
    pub pue_upper: Option<f64>,
    /// max(PUE − lower, upper − PUE) / PUE; `null`: unbounded.
    pub pue_uncertainty_ratio: Option<f64>,
    /// The PUE is within `[pue] max_uncertainty` of its bounds.
    pub pue_within_max_uncertainty: bool,
    /// ISO/IEC 30134-2 category of the IT measurement (1, 2, 3).
    pub category: Option<u8>,
    /// DCiE = 1 / PUE.
    pub dcie_ratio: Option<f64>,
    /// Complete minutes / minutes in the period.
    pub coverage_ratio: f64,
    /// Every minute complete.
    pub complete: bool,
    /// Share of the facility and IT energy measured directly.
    pub measured_ratio: f64,
    /// WUE (ISO/IEC 30134-9), L/kWh of IT energy.
    pub wue_litres_per_kwh: Option<f64>,
    /// Its least value within the bounds.
    pub wue_lower_litres_per_kwh: Option<f64>,
    /// Its most; `null`: unbounded.
    pub wue_upper_litres_per_kwh: Option<f64>,
    /// ERF (ISO/IEC 30134-6) = reused / facility energy.
    pub erf_ratio: Option<f64>,
    /// REF (ISO/IEC 30134-3) = renewable / facility energy.
    pub ref_ratio: Option<f64>,
    /// CUE (ISO/IEC 30134-8), kg CO2e per kWh of IT energy; `null` when no
    /// `carbon_intensity_kg_per_kwh` is configured.
    pub cue_kg_per_kwh: Option<f64>,
    /// Energy by role over all zones, kWh.
    pub energy_kwh: BTreeMap<&'static str, f64>,
    /// Bounds of the energy by role, kWh.
    pub energy_bounds_kwh: BTreeMap<&'static str, KwhBounds>,
    /// Site water input, m³, where a water meter is configured.
    pub water_cubic_meters: Option<f64>,
    /// Minutes every water meter completed / minutes in the period.
    pub water_coverage_ratio: Option<f64>,
    /// Partial PUE per zone with IT meters (only the asked zone with `zone`).
    pub zones: Vec<ZoneFigures>,
    /// Why there is no PUE, or why it is not the period's own.
    pub missing_reason: Option<String>,
    /// Events that affected the period (gaps, resets, swaps, glitches,
    /// unreported stretches).
    pub events: usize,
    /// Per UTC day (months only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<DayFigures>,
}

impl Figures {
    fn from_period(label: String, p: &Period, zone: Option<&str>) -> Figures {
        Figures {
            label,
            from: date(p.from_ms),
            to: date(p.to_ms),
            from_ms: p.from_ms,
            to_ms: p.to_ms,
            pue: p.pue,
            pue_lower: p.pue_lower,
            pue_upper: p.pue_upper,
            pue_uncertainty_ratio: p.pue_uncertainty_ratio,
            pue_within_max_uncertainty: p.pue_exported,
            category: p.category,
            dcie_ratio: p.dcie_ratio,
            coverage_ratio: p.coverage_ratio,
            complete: p.complete,
            measured_ratio: p.measured_ratio,
            wue_litres_per_kwh: p.wue_litres_per_kwh,
            wue_lower_litres_per_kwh: p.wue_lower_litres_per_kwh,
            wue_upper_litres_per_kwh: p.wue_upper_litres_per_kwh,
            erf_ratio: p.erf_ratio,
            ref_ratio: p.ref_ratio,
            cue_kg_per_kwh: p.cue_kg_per_kwh,
            energy_kwh: p.energy_joules.iter().map(|(r, j)| (*r, kwh(*j))).collect(),
            energy_bounds_kwh: p
                .energy_bounds_joules
                .iter()
                .map(|(r, b)| {
                    (
                        *r,
                        KwhBounds {
                            lower: kwh(b.lower),
                            upper: b.upper.map(kwh),
                        },
                    )
                })
                .collect(),
            water_cubic_meters: p.water_cubic_meters,
            water_coverage_ratio: p.water_coverage_ratio,
            zones: p
                .zones
                .iter()
                .filter(|z| zone.is_none_or(|want| want == z.zone))
                .map(|z| ZoneFigures {
                    zone: z.zone.clone(),
                    partial_pue: z.partial_pue,
                    partial_pue_lower: z.partial_pue_lower,
                    partial_pue_upper: z.partial_pue_upper,
                    it_kwh: kwh(z.it_joules),
                    infrastructure_kwh: kwh(z.infrastructure_joules),
                    shared_kwh: kwh(z.shared_joules),
                    coverage_ratio: z.coverage_ratio,
                })
                .collect(),
            missing_reason: p.missing_reason.clone(),
            events: p.events.len() + p.events_left_out,
            days: Vec::new(),
        }
    }
}

/// The measured PUE against one reference value.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The reference's name.
    pub name: String,
    /// The reference PUE.
    pub reference_pue: f64,
    /// The measured PUE of the period.
    pub pue: Option<f64>,
    /// (reference − PUE) / reference, %; negative: above the reference.
    pub below_percent: Option<f64>,
    /// The same with the PUE's upper bound: the least it is below;
    /// `null`: unbounded.
    pub below_percent_least: Option<f64>,
    /// The same with the PUE's lower bound: the most it is below.
    pub below_percent_most: Option<f64>,
    /// The claim in words.
    pub statement: String,
}

fn below(reference: f64, pue: f64) -> f64 {
    (reference - pue) / reference * 100.0
}

fn compare(name: &str, reference: f64, total: &Figures) -> Comparison {
    let below_percent = total.pue.map(|p| below(reference, p));
    let least = total.pue.and(total.pue_upper).map(|p| below(reference, p));
    let most = total.pue.and(total.pue_lower).map(|p| below(reference, p));
    let word = |x: f64| if x >= 0.0 { "below" } else { "above" };
    let statement = match (total.pue, below_percent) {
        (Some(p), Some(b)) => {
            let bound = match (total.pue_lower, total.pue_upper, least, most) {
                (Some(lo), Some(hi), Some(l), Some(m)) => format!(
                    "within the bounds [{lo:.4}, {hi:.4}]: {:.2} % {} to {:.2} % {}",
                    l.abs(),
                    word(l),
                    m.abs(),
                    word(m)
                ),
                _ => "its upper bound is unknown (a meter without a rating left something unknown)"
                    .into(),
            };
            format!(
                "PUE {p:.4} is {:.2} % {} the {name} ({reference:.2}), {bound}",
                b.abs(),
                word(b)
            )
        }
        _ => format!("no PUE for the period: nothing to compare with the {name} ({reference:.2})"),
    };
    Comparison {
        name: name.to_owned(),
        reference_pue: reference,
        pue: total.pue,
        below_percent,
        below_percent_least: least,
        below_percent_most: most,
        statement,
    }
}

/// One meter the figures rest on.
#[derive(Debug, Clone, Serialize)]
pub struct MeterRow {
    /// The meter's id.
    pub meter: String,
    /// Its role.
    pub role: &'static str,
    /// Its zone.
    pub zone: String,
    /// Where it measures IT energy (role `it`).
    pub it_point: Option<&'static str>,
    /// The ISO/IEC 30134-2 category of that point.
    pub category: Option<u8>,
    /// The meter it is a sub-meter of (then it counts in no total).
    pub parent: Option<String>,
    /// Its rating, W (energy meters).
    pub nominal_max_watts: Option<f64>,
    /// Its rating, m³/h (water meters).
    pub nominal_max_cubic_meters_per_hour: Option<f64>,
    /// The first minute it was measured in, ever (RFC 3339).
    pub first_reported: Option<String>,
    /// The end of the last minute it was measured in, ever (RFC 3339).
    pub last_reported: Option<String>,
    /// Share of the report's period it measured cleanly: inside its span
    /// and outside its gaps, resets, swaps and power gaps.
    pub coverage_ratio: f64,
    /// Its events in the period (unreported stretches included).
    pub events: usize,
}

fn point_name(p: crate::site::ItPoint) -> &'static str {
    match p {
        crate::site::ItPoint::UpsOutput => "ups_output",
        crate::site::ItPoint::PduOutput => "pdu_output",
        crate::site::ItPoint::ItInput => "it_input",
    }
}

/// An event as the report lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    /// The event, as `GET /v1/pue` lists it.
    #[serde(flatten)]
    pub view: EventView,
    /// Its start, RFC 3339.
    pub from: String,
    /// Its end, RFC 3339.
    pub to: String,
    /// The meter's zone (`null` for the site-wide `incomplete_before_bounds`).
    pub zone: Option<String>,
}

/// The ledger state the report is tied to.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerAnchor {
    /// Ledger rows (Merkle leaves) when the report was made.
    pub tree_size: u64,
    /// The hash of the last ledger row (the chain head) when the report was made.
    pub chain_head: String,
    /// The first signed checkpoint at or after the report's end (every
    /// ledger minute before it was booked when it was signed), else the
    /// latest; `null` when none is signed (no `[ledger] signing_key_file`).
    pub checkpoint: Option<dcwatt_verify::checkpoint::Checkpoint>,
    /// Whether that checkpoint is at or after the report's end.
    pub checkpoint_covers_end: bool,
}

/// What ties the report to the data.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    /// The collector's version.
    pub collector_version: &'static str,
    /// `[ledger] collector_id`.
    pub collector_id: String,
    /// SHA-256 of the configuration file as read, hex.
    pub config_sha256: Option<String>,
    /// The ledger.
    pub ledger: LedgerAnchor,
}

/// The efficiency report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `efficiency`.
    pub report: &'static str,
    /// First day, `YYYY-MM-DD`.
    pub from: String,
    /// The day after the last (exclusive).
    pub to: String,
    /// The zone asked for: zones, meters and events of it only (the site
    /// figures stay the site's).
    pub zone: Option<String>,
    /// When it was made, RFC 3339.
    pub generated: String,
    /// When it was made, Unix ms.
    pub generated_ms: i64,
    /// The period had not ended (closed: `stale_after` past its end) when
    /// the report was made: its figures are to date, the rest of it counts
    /// as not reported.
    pub period_open: bool,
    /// The whole period.
    pub total: Figures,
    /// Calendar quarters (cut at the period's edges).
    pub quarters: Vec<Figures>,
    /// Calendar months (cut at the period's edges), each with its days.
    pub months: Vec<Figures>,
    /// The measured PUE against each configured reference.
    pub references: Vec<Comparison>,
    /// The meters the figures rest on.
    pub meters: Vec<MeterRow>,
    /// Every event that affected the figures, oldest first (at most
    /// [`MAX_REPORT_EVENTS`]).
    pub events: Vec<EventRow>,
    /// Events not listed.
    pub events_left_out: usize,
    /// Events per kind (all of them, listed or not).
    pub event_counts: BTreeMap<String, usize>,
    /// Collector version, configuration hash, ledger checkpoint and head.
    pub provenance: Provenance,
}

/// `[from, to)` cut at the calendar boundaries `next(start)` gives.
fn cuts(from_ms: i64, to_ms: i64, next: impl Fn(i64) -> i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut at = from_ms;
    while at < to_ms {
        let end = next(at).min(to_ms);
        out.push((at, end));
        at = end;
    }
    out
}

fn next_month(ms: i64) -> i64 {
    month_of(ms).1
}

fn next_quarter(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
    let first = (m - 1) / 3 * 3 + 1;
    let (y, m) = if first + 3 > 12 {
        (y + 1, first + 3 - 12)
    } else {
        (y, first + 3)
    };
    days_from_civil(y, m, 1) * DAY_MS
}

fn whole(from: i64, to: i64, start: i64, end: i64) -> bool {
    from == start && to == end
}

fn month_label(from: i64, to: i64) -> String {
    let (y, m, _) = civil_from_days(from.div_euclid(DAY_MS));
    let (start, end) = month_of(from);
    if whole(from, to, start, end) {
        format!("{y:04}-{m:02}")
    } else {
        format!("{}..{}", date(from), date(to))
    }
}

fn quarter_label(from: i64, to: i64) -> String {
    let (y, m, _) = civil_from_days(from.div_euclid(DAY_MS));
    let q = (m - 1) / 3 + 1;
    let start = days_from_civil(y, (q - 1) * 3 + 1, 1) * DAY_MS;
    if whole(from, to, start, next_quarter(from)) {
        format!("{y:04}-Q{q}")
    } else {
        format!("{}..{}", date(from), date(to))
    }
}

fn total_label(from: i64, to: i64) -> String {
    let (y, m, d) = civil_from_days(from.div_euclid(DAY_MS));
    if (m, d) == (1, 1) && to == days_from_civil(y + 1, 1, 1) * DAY_MS {
        format!("{y:04}")
    } else {
        format!("{}..{}", date(from), date(to))
    }
}

/// Overlap of `[a, b)` and `[c, d)`, ms.
fn overlap((a, b): (i64, i64), (c, d): (i64, i64)) -> i64 {
    (b.min(d) - a.max(c)).max(0)
}

/// The report over `[from_ms, to_ms)` (UTC midnights), for `zone` or the
/// whole site, made at `now_ms`.
pub fn report(
    store: &Store,
    site: &Site,
    from_ms: i64,
    to_ms: i64,
    zone: Option<&str>,
    now_ms: i64,
) -> Result<Report, ReportError> {
    if from_ms % DAY_MS != 0 {
        return Err(ReportError::Invalid(
            "from",
            "must be a UTC midnight".into(),
        ));
    }
    if to_ms % DAY_MS != 0 {
        return Err(ReportError::Invalid("to", "must be a UTC midnight".into()));
    }
    check_period(from_ms, to_ms)?;
    if let Some(z) = zone {
        if !site.zones.contains(z) {
            return Err(ReportError::Invalid(
                "zone",
                format!("no zone {z:?} in the configuration"),
            ));
        }
    }
    let period = |a: i64, b: i64| windows::period(store, site, a, b, Resolution::Day);
    let total_period = period(from_ms, to_ms)?;
    let total = Figures::from_period(total_label(from_ms, to_ms), &total_period, zone);
    let mut quarters = Vec::new();
    for (a, b) in cuts(from_ms, to_ms, next_quarter) {
        quarters.push(Figures::from_period(
            quarter_label(a, b),
            &period(a, b)?,
            zone,
        ));
    }
    let mut months = Vec::new();
    for (a, b) in cuts(from_ms, to_ms, next_month) {
        let mut f = Figures::from_period(month_label(a, b), &period(a, b)?, zone);
        for (d, e) in cuts(a, b, |t| t + DAY_MS) {
            let p = period(d, e)?;
            let j = |r: &str| kwh(p.energy_joules.get(r).copied().unwrap_or(0.0));
            f.days.push(DayFigures {
                date: date(d),
                pue: p.pue,
                pue_lower: p.pue_lower,
                pue_upper: p.pue_upper,
                coverage_ratio: p.coverage_ratio,
                facility_kwh: j("facility"),
                it_kwh: j("it"),
            });
        }
        months.push(f);
    }
    let references = site
        .reference_pue
        .iter()
        .map(|r| compare(&r.name, r.pue, &total))
        .collect();
    // Every event of the period, not only the hundred a window lists.
    let listed = crate::store::bounds::period_bounds_listing(
        store,
        site,
        from_ms,
        to_ms,
        Resolution::Day,
        usize::MAX,
    )?;
    let zone_of = |meter: &str| site.meters.get(meter).map(|m| m.zone.clone());
    let mut all: Vec<EventRow> = listed
        .events
        .into_iter()
        .filter(|e| zone.is_none_or(|z| zone_of(&e.meter).is_none_or(|mz| mz == z)))
        .map(|view| EventRow {
            from: instant(view.from_ms),
            to: instant(view.to_ms),
            zone: zone_of(&view.meter),
            view,
        })
        .collect();
    let mut event_counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in &all {
        *event_counts.entry(e.view.kind.to_owned()).or_default() += 1;
    }
    let spans = crate::store::bounds::meter_spans(store)?;
    let span_of = |id: &str| spans.get(id).copied();
    let mut meters: Vec<MeterRow> = site
        .meters
        .iter()
        .filter(|(_, m)| zone.is_none_or(|z| z == m.zone))
        .map(|(id, m)| {
            let span = span_of(id);
            let inside = span.map_or(0, |s| overlap(s, (from_ms, to_ms)));
            let lost: i64 = all
                .iter()
                .filter(|e| e.view.meter == *id)
                .filter(|e| !matches!(e.view.kind, "glitch" | "not_reported"))
                .map(|e| {
                    span.map_or(0, |(s0, s1)| {
                        overlap(
                            (e.view.from_ms, e.view.to_ms),
                            (from_ms.max(s0), to_ms.min(s1)),
                        )
                    })
                })
                .sum();
            MeterRow {
                meter: id.clone(),
                role: m.role.as_str(),
                zone: m.zone.clone(),
                it_point: m.it_point.map(point_name),
                category: m.it_point.map(crate::site::ItPoint::category),
                parent: m.parent.clone(),
                nominal_max_watts: m.nominal_max_watts,
                nominal_max_cubic_meters_per_hour: m.nominal_max_cubic_meters_per_hour,
                first_reported: span.map(|s| instant(s.0)),
                last_reported: span.map(|s| instant(s.1)),
                coverage_ratio: ((inside - lost).max(0) as f64 / (to_ms - from_ms) as f64)
                    .clamp(0.0, 1.0),
                events: all.iter().filter(|e| e.view.meter == *id).count(),
            }
        })
        .collect();
    meters.sort_by(|a, b| {
        let order = |r: &str| Role::ALL.iter().position(|x| x.as_str() == r);
        (order(a.role), &a.zone, &a.meter).cmp(&(order(b.role), &b.zone, &b.meter))
    });
    let events_left_out = all.len().saturating_sub(MAX_REPORT_EVENTS);
    all.truncate(MAX_REPORT_EVENTS);
    let (tree_size, latest) = store.tree_head()?;
    let closing = store
        .checkpoints(to_ms - HOUR_MS, i64::MAX, 1)?
        .into_iter()
        .next();
    let checkpoint_covers_end = closing.is_some();
    let provenance = Provenance {
        collector_version: env!("CARGO_PKG_VERSION"),
        collector_id: site.collector_id.clone(),
        config_sha256: site.config_sha256.clone(),
        ledger: LedgerAnchor {
            tree_size,
            chain_head: store.ledger_head()?,
            checkpoint: closing.or(latest),
            checkpoint_covers_end,
        },
    };
    Ok(Report {
        report: "efficiency",
        from: date(from_ms),
        to: date(to_ms),
        zone: zone.map(str::to_owned),
        generated: instant(now_ms),
        generated_ms: now_ms,
        period_open: to_ms.saturating_add(site.stale_after_ms) > now_ms,
        total,
        quarters,
        months,
        references,
        meters,
        events: all,
        events_left_out,
        event_counts,
        provenance,
    })
}

/// One CSV field, quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn num(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn line(fields: &[String]) -> String {
    let mut out = fields
        .iter()
        .map(|f| field(f))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    out
}

/// The roles whose energy the CSV lists, in column order.
const ENERGY_ROLES: [Role; 7] = [
    Role::Facility,
    Role::It,
    Role::Cooling,
    Role::PowerInfra,
    Role::Other,
    Role::Reused,
    Role::Renewable,
];

impl Report {
    /// The report as CSV: sections (`# figures`, `# zones`, `# references`,
    /// `# meters`, `# events`, `# provenance`), each a header line and its
    /// rows, separated by an empty line. Numbers in full precision (kWh, L/kWh,
    /// ratios); empty: not available.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("# figures\n");
        let mut header: Vec<String> = [
            "period",
            "kind",
            "from",
            "to",
            "pue",
            "pue_lower",
            "pue_upper",
            "category",
            "coverage_ratio",
            "measured_ratio",
            "complete",
            "dcie_ratio",
            "wue_litres_per_kwh",
            "erf_ratio",
            "ref_ratio",
            "cue_kg_per_kwh",
        ]
        .map(str::to_owned)
        .to_vec();
        header.extend(ENERGY_ROLES.map(|r| format!("{}_kwh", r.as_str())));
        header.extend(["water_cubic_meters".to_owned(), "events".to_owned()]);
        out += &line(&header);
        let periods = std::iter::once(("total", &self.total))
            .chain(self.quarters.iter().map(|f| ("quarter", f)))
            .chain(self.months.iter().map(|f| ("month", f)));
        for (kind, f) in periods.clone() {
            let mut row = vec![
                f.label.clone(),
                kind.to_owned(),
                f.from.clone(),
                f.to.clone(),
                num(f.pue),
                num(f.pue_lower),
                num(f.pue_upper),
                f.category.map(|c| c.to_string()).unwrap_or_default(),
                f.coverage_ratio.to_string(),
                f.measured_ratio.to_string(),
                f.complete.to_string(),
                num(f.dcie_ratio),
                num(f.wue_litres_per_kwh),
                num(f.erf_ratio),
                num(f.ref_ratio),
                num(f.cue_kg_per_kwh),
            ];
            row.extend(ENERGY_ROLES.map(|r| num(f.energy_kwh.get(r.as_str()).copied())));
            row.extend([num(f.water_cubic_meters), f.events.to_string()]);
            out += &line(&row);
        }
        out += "\n# zones\nperiod,zone,partial_pue,partial_pue_lower,partial_pue_upper,it_kwh,infrastructure_kwh,shared_kwh,coverage_ratio\n";
        for (_, f) in periods {
            for z in &f.zones {
                out += &line(&[
                    f.label.clone(),
                    z.zone.clone(),
                    num(z.partial_pue),
                    num(z.partial_pue_lower),
                    num(z.partial_pue_upper),
                    z.it_kwh.to_string(),
                    z.infrastructure_kwh.to_string(),
                    z.shared_kwh.to_string(),
                    z.coverage_ratio.to_string(),
                ]);
            }
        }
        out += "\n# references\nname,reference_pue,pue,below_percent,below_percent_least,below_percent_most,statement\n";
        for c in &self.references {
            out += &line(&[
                c.name.clone(),
                c.reference_pue.to_string(),
                num(c.pue),
                num(c.below_percent),
                num(c.below_percent_least),
                num(c.below_percent_most),
                c.statement.clone(),
            ]);
        }
        out += "\n# meters\nmeter,role,zone,it_point,category,parent,first_reported,last_reported,coverage_ratio,events\n";
        for m in &self.meters {
            out += &line(&[
                m.meter.clone(),
                m.role.to_owned(),
                m.zone.clone(),
                m.it_point.unwrap_or_default().to_owned(),
                m.category.map(|c| c.to_string()).unwrap_or_default(),
                m.parent.clone().unwrap_or_default(),
                m.first_reported.clone().unwrap_or_default(),
                m.last_reported.clone().unwrap_or_default(),
                m.coverage_ratio.to_string(),
                m.events.to_string(),
            ]);
        }
        out += "\n# events\nmeter,zone,kind,from,to,joules,unknown_joules,count,below_joules,above_joules\n";
        for e in &self.events {
            let v = &e.view;
            out += &line(&[
                v.meter.clone(),
                e.zone.clone().unwrap_or_default(),
                v.kind.to_owned(),
                e.from.clone(),
                e.to.clone(),
                v.joules.to_string(),
                num(v.unknown_joules),
                v.count.to_string(),
                v.below_joules.to_string(),
                num(v.above_joules),
            ]);
        }
        let p = &self.provenance;
        let cp = p.ledger.checkpoint.as_ref();
        out += "\n# provenance\nkey,value\n";
        for (k, v) in [
            ("report", self.report.to_owned()),
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("zone", self.zone.clone().unwrap_or_default()),
            ("generated", self.generated.clone()),
            ("period_open", self.period_open.to_string()),
            ("collector_version", p.collector_version.to_owned()),
            ("collector_id", p.collector_id.clone()),
            ("config_sha256", p.config_sha256.clone().unwrap_or_default()),
            ("ledger_tree_size", p.ledger.tree_size.to_string()),
            ("ledger_chain_head", p.ledger.chain_head.clone()),
            (
                "checkpoint_hour",
                cp.map(|c| instant(c.hour_ms)).unwrap_or_default(),
            ),
            (
                "checkpoint_tree_size",
                cp.map(|c| c.tree_size.to_string()).unwrap_or_default(),
            ),
            (
                "checkpoint_root_hash",
                cp.map(|c| c.root_hash.clone()).unwrap_or_default(),
            ),
            (
                "checkpoint_signature",
                cp.map(|c| c.signature.clone()).unwrap_or_default(),
            ),
            (
                "checkpoint_covers_end",
                p.ledger.checkpoint_covers_end.to_string(),
            ),
            ("events_left_out", self.events_left_out.to_string()),
        ] {
            out += &line(&[k.to_owned(), v]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse_and_bad_ones_name_the_parameter() {
        assert_eq!(parse_day("from", "2026-01-01").unwrap(), 1_767_225_600_000);
        assert_eq!(
            parse_day("from", "2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000
        );
        assert_eq!(parse_day("to", "1767225600000").unwrap(), 1_767_225_600_000);
        for (text, needle) in [
            ("2026-02-30", "neither"),
            ("2026-01-01T12:00:00Z", "UTC midnight"),
            ("-86400000", "outside"),
            ("99999-01-01", "neither"),
            ("", "neither"),
            ("2026-1-01", "neither"),
        ] {
            let e = parse_day("from", text).unwrap_err().to_string();
            assert!(
                e.starts_with("from: ") && e.contains(needle),
                "{text:?}: {e}"
            );
        }
        assert!(check_period(0, DAY_MS).is_ok());
        assert!(check_period(0, 401 * DAY_MS).is_err());
        assert!(check_period(DAY_MS, DAY_MS).is_err());
    }

    #[test]
    fn calendar_cuts() {
        let y = days_from_civil(2026, 1, 1) * DAY_MS;
        let next = days_from_civil(2027, 1, 1) * DAY_MS;
        let q = cuts(y, next, next_quarter);
        assert_eq!(q.len(), 4);
        assert_eq!(
            q.iter()
                .map(|(a, b)| quarter_label(*a, *b))
                .collect::<Vec<_>>(),
            ["2026-Q1", "2026-Q2", "2026-Q3", "2026-Q4"]
        );
        let m = cuts(y, next, next_month);
        assert_eq!(m.len(), 12);
        assert_eq!(month_label(m[1].0, m[1].1), "2026-02");
        assert_eq!((m[1].1 - m[1].0) / DAY_MS, 28);
        assert_eq!(total_label(y, next), "2026");
        // A period cut mid-month: partial months and quarters say their dates.
        let mid = days_from_civil(2026, 2, 15) * DAY_MS;
        let m = cuts(mid, next, next_month);
        assert_eq!(month_label(m[0].0, m[0].1), "2026-02-15..2026-03-01");
        assert_eq!(
            quarter_label(mid, days_from_civil(2026, 4, 1) * DAY_MS),
            "2026-02-15..2026-04-01"
        );
        assert_eq!(instant(y + 3_723_000), "2026-01-01T01:02:03Z");
    }

    #[test]
    fn csv_fields_are_quoted() {
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn the_claim_states_the_bound() {
        let mut f = Figures {
            label: "2026".into(),
            from: String::new(),
            to: String::new(),
            from_ms: 0,
            to_ms: 0,
            pue: Some(1.2),
            pue_lower: Some(1.19),
            pue_upper: Some(1.25),
            pue_uncertainty_ratio: None,
            pue_within_max_uncertainty: false,
            category: Some(3),
            dcie_ratio: None,
            coverage_ratio: 1.0,
            complete: true,
            measured_ratio: 1.0,
            wue_litres_per_kwh: None,
            wue_lower_litres_per_kwh: None,
            wue_upper_litres_per_kwh: None,
            erf_ratio: None,
            ref_ratio: None,
            cue_kg_per_kwh: None,
            energy_kwh: BTreeMap::new(),
            energy_bounds_kwh: BTreeMap::new(),
            water_cubic_meters: None,
            water_coverage_ratio: None,
            zones: vec![],
            missing_reason: None,
            events: 0,
            days: vec![],
        };
        let c = compare("x", 1.5, &f);
        assert!((c.below_percent.unwrap() - 20.0).abs() < 1e-9);
        assert!((c.below_percent_least.unwrap() - 100.0 * 0.25 / 1.5).abs() < 1e-9);
        assert!((c.below_percent_most.unwrap() - 100.0 * 0.31 / 1.5).abs() < 1e-9);
        assert!(
            c.statement.contains("20.00 % below the x (1.50)"),
            "{}",
            c.statement
        );
        assert!(c.statement.contains("[1.1900, 1.2500]"), "{}", c.statement);
        // Above a reference, and unbounded.
        f.pue_upper = None;
        let c = compare("y", 1.1, &f);
        assert!(c.statement.contains("9.09 % above"), "{}", c.statement);
        assert!(c.statement.contains("unknown"), "{}", c.statement);
        assert_eq!(c.below_percent_least, None);
    }
}
