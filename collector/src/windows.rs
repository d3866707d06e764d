//! PUE over fixed UTC periods, from the stored minute, hour and day energies:
//! the trailing windows exported as `dcwatt_pue_ratio{window}` and any
//! `[from, to)` asked through `GET /v1/pue`.
//!
//! The windows ([`TRAILING`]): `15m` is the last closed UTC quarter hour;
//! `1h` and `24h` end at the last closed minute, `7d`, `30d` and `365d` at the
//! last closed hour; `month` is the UTC calendar month to date, from its first
//! instant to the last closed hour (its coverage is that of the elapsed part),
//! and `previous_month` the last whole UTC calendar month.
//!
//! WUE (ISO/IEC 30134-9) = site water (L) / IT energy (kWh) over the same
//! minutes, from the `water` meters' volumes, stored beside the energies under
//! role `water` (in m³, never counted as energy). It is complete when the
//! period is and every water meter completed every minute.
//!
//! A period's PUE is Σ facility energy / Σ IT energy over its minutes, a ratio
//! of sums. Its coverage is the share of its minutes that are complete (every
//! facility and IT meter measured both edges); only a fully covered period is
//! `complete`, and only a complete period is exported as the plain PUE.
//!
//! Partial PUE per zone: (zone IT + zone infrastructure + a share of the shared
//! infrastructure) / zone IT. Infrastructure is every cooling, power_infra and
//! other meter; meters in zones without IT meters are shared, allocated to the
//! IT zones in proportion to their IT energy.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use dcwatt_wire::time::{month_of, DAY_MS, HOUR_MS, MINUTE_MS};

use crate::bounds::Spread;
use crate::pue::{self, NoPue};
use crate::site::{Role, Site};
use crate::store::{Resolution, Store, StoreError};

/// How a trailing window's edges follow from the last closed instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// This many ms up to the last closed period of the window's resolution.
    Last(i64),
    /// The last closed block of this many ms, blocks aligned to the Unix epoch
    /// (UTC quarter hours for 15 minutes).
    Aligned(i64),
    /// From the start of the UTC calendar month holding the last closed hour to
    /// that hour: the elapsed part of the month, empty in its first hour.
    MonthToDate,
    /// The last UTC calendar month whose every hour is closed.
    PreviousMonth,
}

/// One trailing window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The `window` label.
    pub label: &'static str,
    /// Its edges.
    pub span: Span,
    /// The stored periods it sums.
    pub resolution: Resolution,
}

/// The trailing windows, refreshed off the scrape path and exported.
pub const TRAILING: [Window; 8] = [
    Window {
        label: "15m",
        span: Span::Aligned(15 * MINUTE_MS),
        resolution: Resolution::Minute,
    },
    Window {
        label: "1h",
        span: Span::Last(HOUR_MS),
        resolution: Resolution::Minute,
    },
    Window {
        label: "24h",
        span: Span::Last(DAY_MS),
        resolution: Resolution::Minute,
    },
    Window {
        label: "7d",
        span: Span::Last(7 * DAY_MS),
        resolution: Resolution::Hour,
    },
    Window {
        label: "30d",
        span: Span::Last(30 * DAY_MS),
        resolution: Resolution::Hour,
    },
    Window {
        label: "365d",
        span: Span::Last(365 * DAY_MS),
        resolution: Resolution::Hour,
    },
    Window {
        label: "month",
        span: Span::MonthToDate,
        resolution: Resolution::Hour,
    },
    // Day rows are kept for good and months start at UTC midnight.
    Window {
        label: "previous_month",
        span: Span::PreviousMonth,
        resolution: Resolution::Day,
    },
];

impl Window {
    /// `[from, to)` of the window when everything before `closed_ms` is closed.
    pub fn edges(&self, closed_ms: i64) -> (i64, i64) {
        match self.span {
            Span::Last(len) => {
                let to = self.resolution.floor(closed_ms);
                (to - len, to)
            }
            Span::Aligned(len) => {
                let to = closed_ms.div_euclid(len) * len;
                (to - len, to)
            }
            Span::MonthToDate => {
                let to = Resolution::Hour.floor(closed_ms);
                (month_start(to), to)
            }
            Span::PreviousMonth => {
                let this = month_start(Resolution::Hour.floor(closed_ms));
                (month_start(this - 1), this)
            }
        }
    }
}

/// The first instant (Unix ms) of the UTC calendar month holding `ts_ms`.
fn month_start(ts_ms: i64) -> i64 {
    month_of(ts_ms).0
}

/// Energies and PUE of one zone over a period.
#[derive(Debug, Clone, Serialize)]
pub struct ZonePeriod {
    /// The zone.
    pub zone: String,
    /// IT energy, J.
    pub it_joules: f64,
    /// The zone's own infrastructure energy, J.
    pub infrastructure_joules: f64,
    /// Its share of the shared infrastructure, J.
    pub shared_joules: f64,
    /// Partial PUE, when IT energy is above the floor.
    pub partial_pue: Option<f64>,
    /// Complete minutes of the zone / minutes in the period.
    pub coverage_ratio: f64,
    /// Every minute of the zone complete.
    pub complete: bool,
    /// The least partial PUE the zone's energy bounds allow.
    pub partial_pue_lower: Option<f64>,
    /// The most; `null`: unbounded.
    pub partial_pue_upper: Option<f64>,
    /// The partial PUE is within `[pue] max_uncertainty` of its bounds: exported.
    pub partial_pue_exported: bool,
}

/// The bounds of an energy (or volume) over a period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bounds {
    /// The least it can be.
    pub lower: f64,
    /// The most it can be; `null`: unbounded.
    pub upper: Option<f64>,
}

/// (lower, upper) of a counted value and its spread; upper infinite when unbounded.
fn bounded(value: f64, s: &Spread) -> (f64, f64) {
    ((value - s.below).max(0.0), value + s.above)
}

/// max(x − lower, upper − x) / x, infinite when unbounded.
fn uncertainty(x: f64, lower: f64, upper: f64) -> f64 {
    if x > 0.0 {
        ((x - lower).max(upper - x) / x).max(0.0)
    } else {
        f64::INFINITY
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Energies and PUE over `[from_ms, to_ms)`.
#[derive(Debug, Clone, Serialize)]
pub struct Period {
    /// The trailing window's label, if this is one.
    pub window: Option<&'static str>,
    /// Start, Unix ms (aligned to the resolution).
    pub from_ms: i64,
    /// End (exclusive), Unix ms.
    pub to_ms: i64,
    /// The stored periods summed.
    pub resolution: Resolution,
    /// Energy by role over all zones, J (water meters are not energy: see
    /// `water_cubic_meters`).
    pub energy_joules: BTreeMap<&'static str, f64>,
    /// Complete minutes / minutes in the period.
    pub coverage_ratio: f64,
    /// Every minute complete.
    pub complete: bool,
    /// ISO/IEC 30134-2 category of the IT measurement.
    pub category: Option<u8>,
    /// Σ facility / Σ IT, when it can be given (also for an incomplete period:
    /// then it is the PUE of the covered part, not the period's).
    pub pue: Option<f64>,
    /// DCiE = IT / facility = 1 / PUE.
    pub dcie_ratio: Option<f64>,
    /// ERF (ISO/IEC 30134-6) = reused / facility energy, where a reuse meter exists.
    pub erf_ratio: Option<f64>,
    /// REF (ISO/IEC 30134-3) = renewable / facility energy, where a renewable meter exists.
    pub ref_ratio: Option<f64>,
    /// CUE (ISO/IEC 30134-8) = carbon intensity × facility / IT, kg CO2e per kWh
    /// of IT energy, where a carbon intensity is configured.
    pub cue_kg_per_kwh: Option<f64>,
    /// Why there is no PUE, or why it is not the period's.
    pub missing_reason: Option<String>,
    /// Site water input over the period, m³ (every `water` meter that is not a
    /// sub-meter), where a water meter is configured.
    pub water_cubic_meters: Option<f64>,
    /// Minutes in which every water meter was complete / minutes in the
    /// period, where a water meter is configured.
    pub water_coverage_ratio: Option<f64>,
    /// WUE (ISO/IEC 30134-9) = water (L) / IT energy (kWh), where a water
    /// meter is configured and IT energy is above the floor (also for an
    /// incomplete period: then see `wue_complete`).
    pub wue_litres_per_kwh: Option<f64>,
    /// The period is complete and so is every water meter's every minute:
    /// only then is the WUE the period's.
    pub wue_complete: bool,
    /// Per zone with IT meters.
    pub zones: Vec<ZonePeriod>,
    /// Bounds of the energy by role, J, from what is unknown (see
    /// [`crate::bounds`]).
    pub energy_bounds_joules: BTreeMap<&'static str, Bounds>,
    /// Bounds of the site water, m³, where a water meter is configured.
    pub water_bounds_cubic_meters: Option<Bounds>,
    /// The least PUE the energy bounds allow: least facility / most IT.
    pub pue_lower: Option<f64>,
    /// The most: most facility / least IT; `null`: unbounded (or no PUE).
    pub pue_upper: Option<f64>,
    /// max(PUE − lower, upper − PUE) / PUE; `null`: unbounded (or no PUE).
    pub pue_uncertainty_ratio: Option<f64>,
    /// The PUE is within `[pue] max_uncertainty`: exported as `dcwatt_pue_ratio`.
    pub pue_exported: bool,
    /// Share of the facility and IT energy measured directly (not spread over
    /// a gap, reset or swap).
    pub measured_ratio: f64,
    /// The least WUE the bounds allow, L/kWh.
    pub wue_lower_litres_per_kwh: Option<f64>,
    /// The most, L/kWh; `null`: unbounded (or no WUE).
    pub wue_upper_litres_per_kwh: Option<f64>,
    /// The WUE is within `[pue] max_uncertainty`: exported.
    pub wue_exported: bool,
    /// The gaps, resets, swaps, glitches and unreported stretches that made
    /// the bounds, oldest first (at most [`crate::bounds::MAX_EVENTS_LISTED`]).
    pub events: Vec<crate::bounds::EventView>,
    /// Events not listed.
    pub events_left_out: usize,
}

/// Energies and PUE over `[from_ms, to_ms)`, both aligned to `resolution`.
pub fn period(
    store: &Store,
    site: &Site,
    from_ms: i64,
    to_ms: i64,
    resolution: Resolution,
) -> Result<Period, StoreError> {
    let minutes = ((to_ms - from_ms) / MINUTE_MS).max(1) as f64;
    let rows = store.energy(resolution, from_ms, to_ms)?;
    let role_of = |r: &str| Role::ALL.into_iter().find(|x| x.as_str() == r);
    let mut energy_joules: BTreeMap<&'static str, f64> = BTreeMap::new();
    let it_zones: BTreeSet<&str> = site
        .meters
        .values()
        .filter(|m| m.role == Role::It)
        .map(|m| m.zone.as_str())
        .collect();
    let mut zone_it: BTreeMap<&str, f64> = it_zones.iter().map(|z| (*z, 0.0)).collect();
    let mut zone_infra: BTreeMap<&str, f64> = BTreeMap::new();
    let mut shared = 0.0;
    let mut water = 0.0;
    for (zone, role, joules) in &rows {
        let Some(role) = role_of(role) else { continue };
        if role == Role::Water {
            water += joules; // m³
            continue;
        }
        *energy_joules.entry(role.as_str()).or_default() += joules;
        match (role, it_zones.get(zone.as_str())) {
            (Role::It, Some(z)) => *zone_it.entry(z).or_default() += joules,
            (Role::Cooling | Role::PowerInfra | Role::Other, Some(z)) => {
                *zone_infra.entry(z).or_default() += joules
            }
            (Role::Cooling | Role::PowerInfra | Role::Other, None) => shared += joules,
            _ => {}
        }
    }
    let complete_minutes = store.complete_minutes(resolution, "*", from_ms, to_ms)?;
    let coverage_ratio = (complete_minutes as f64 / minutes).clamp(0.0, 1.0);
    let complete = complete_minutes as f64 >= minutes;
    let category = pue::category(site.meters.values().filter_map(|m| m.it_point));
    let facility = energy_joules.get("facility").copied().unwrap_or(0.0);
    let it = energy_joules.get("it").copied().unwrap_or(0.0);
    // At least the floor power over the covered minutes.
    let floor = site.pue_it_floor_watts * 60.0 * (complete_minutes.max(1) as f64);
    let has_facility = site.meters.values().any(|m| m.role == Role::Facility);
    let (pue, mut missing_reason) = if !has_facility || category.is_none() {
        (
            None,
            Some("no facility or no IT meter configured".to_owned()),
        )
    } else {
        match pue::pue(facility, it, floor, site.pue_max_ratio) {
            Ok(p) => (Some(p), None),
            Err(NoPue::ItBelowFloor) => (None, Some("IT energy below the floor".to_owned())),
            Err(NoPue::Invalid(r)) => (
                None,
                Some(format!(
                    "invalid ratio {r:.4}: check the meters and their roles"
                )),
            ),
        }
    };
    if pue.is_some() && !complete {
        missing_reason = Some(format!(
            "incomplete: {:.2} % of the minutes complete",
            coverage_ratio * 100.0
        ));
    }
    let has_role = |r: Role| site.meters.values().any(|m| m.role == r && m.counted());
    let share = |role: &str| -> Option<f64> {
        let r = [Role::Reused, Role::Renewable]
            .into_iter()
            .find(|r| r.as_str() == role)?;
        (has_role(r) && facility > 0.0)
            .then(|| energy_joules.get(role).copied().unwrap_or(0.0) / facility)
    };
    let (erf_ratio, ref_ratio) = (share("reused"), share("renewable"));
    let has_water = site.water_meters > 0;
    let water_minutes = if has_water {
        store.complete_water_minutes(resolution, from_ms, to_ms)?
    } else {
        0
    };
    let wue_litres_per_kwh = pue::wue(water, it, floor).filter(|_| has_water);
    // What is unknown, per role and zone as the energies above are summed.
    let unknown = crate::store::bounds::period_bounds(store, site, from_ms, to_ms, resolution)?;
    let mut role_spread: BTreeMap<Role, Spread> = BTreeMap::new();
    let mut zone_it_spread: BTreeMap<&str, Spread> = BTreeMap::new();
    let mut zone_infra_spread: BTreeMap<&str, Spread> = BTreeMap::new();
    let mut shared_spread = Spread::default();
    for ((zone, role), s) in &unknown.spreads {
        role_spread.entry(*role).or_default().add(*s);
        match (role, it_zones.get(zone.as_str())) {
            (Role::It, Some(z)) => zone_it_spread.entry(z).or_default().add(*s),
            (Role::Cooling | Role::PowerInfra | Role::Other, Some(z)) => {
                zone_infra_spread.entry(z).or_default().add(*s)
            }
            (Role::Cooling | Role::PowerInfra | Role::Other, None) => shared_spread.add(*s),
            _ => {}
        }
    }
    let spread_of = |r: Role| role_spread.get(&r).copied().unwrap_or_default();
    let max_u = site.pue_max_uncertainty;
    let (it_lo, it_hi) = bounded(it, &spread_of(Role::It));
    let total_it: f64 = zone_it.values().sum();
    let (total_lo, total_hi) = bounded(total_it, &spread_of(Role::It));
    let (shared_lo, shared_hi) = bounded(shared, &shared_spread);
    let mut zones = Vec::new();
    for (zone, zit) in &zone_it {
        let infra = zone_infra.get(zone).copied().unwrap_or(0.0);
        let share = if total_it > 0.0 { zit / total_it } else { 0.0 };
        let zone_minutes = store.complete_minutes(resolution, zone, from_ms, to_ms)?;
        let partial_pue = pue::partial_pue(*zit, infra, shared, share, floor * share);
        // pPUE = 1 + infrastructure / zone IT + shared / all IT: each term at
        // its extremes (conservative: zone and site IT move together).
        let (zlo, zhi) = bounded(*zit, &zone_it_spread.get(zone).copied().unwrap_or_default());
        let (ilo, ihi) = bounded(
            infra,
            &zone_infra_spread.get(zone).copied().unwrap_or_default(),
        );
        let (lower, upper) = match partial_pue {
            Some(_) => (
                1.0 + ilo / zhi + shared_lo / total_hi,
                if zlo > 0.0 && total_lo > 0.0 {
                    1.0 + ihi / zlo + shared_hi / total_lo
                } else {
                    f64::INFINITY
                },
            ),
            None => (f64::NAN, f64::INFINITY),
        };
        let exported = partial_pue.is_some_and(|p| uncertainty(p, lower, upper) <= max_u);
        zones.push(ZonePeriod {
            zone: (*zone).to_owned(),
            it_joules: *zit,
            infrastructure_joules: infra,
            shared_joules: shared * share,
            partial_pue,
            coverage_ratio: (zone_minutes as f64 / minutes).clamp(0.0, 1.0),
            complete: zone_minutes as f64 >= minutes,
            partial_pue_lower: partial_pue.and(finite(lower)),
            partial_pue_upper: partial_pue.and(finite(upper)),
            partial_pue_exported: exported,
        });
    }
    // Every role with energy or with something unknown (a meter that did not
    // report at all has no energy rows, only an upper bound).
    let energy_bounds_joules = Role::ALL
        .into_iter()
        .filter(|r| *r != Role::Water)
        .filter(|r| energy_joules.contains_key(r.as_str()) || role_spread.contains_key(r))
        .map(|role| {
            let e = energy_joules.get(role.as_str()).copied().unwrap_or(0.0);
            let (lower, upper) = bounded(e, &spread_of(role));
            (
                role.as_str(),
                Bounds {
                    lower,
                    upper: finite(upper),
                },
            )
        })
        .collect();
    let (f_lo, f_hi) = bounded(facility, &spread_of(Role::Facility));
    let (pue_lower, pue_upper) = match pue {
        Some(_) => (
            f_lo / it_hi,
            if it_lo > 0.0 {
                f_hi / it_lo
            } else {
                f64::INFINITY
            },
        ),
        None => (f64::NAN, f64::INFINITY),
    };
    let pue_uncertainty = pue.map(|p| uncertainty(p, pue_lower, pue_upper));
    let pue_exported = pue_uncertainty.is_some_and(|u| u <= max_u);
    if pue_exported {
        missing_reason = None;
    } else if let Some(u) = pue_uncertainty {
        missing_reason = Some(if u.is_finite() {
            format!(
                "uncertain: within {:.3} %, more than the {:.3} % allowed ({:.2} % of the minutes complete)",
                u * 100.0,
                max_u * 100.0,
                coverage_ratio * 100.0
            )
        } else {
            format!(
                "unbounded: a meter has no rating for what is unknown ({:.2} % of the minutes complete)",
                coverage_ratio * 100.0
            )
        });
    }
    let unmeasured = spread_of(Role::Facility).unmeasured + spread_of(Role::It).unmeasured;
    let measured_ratio = if facility + it > 0.0 {
        (1.0 - unmeasured / (facility + it)).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (w_lo, w_hi) = bounded(water, &spread_of(Role::Water));
    let (wue_lower, wue_upper) = match wue_litres_per_kwh {
        Some(_) => (
            pue::wue(w_lo, it_hi, 0.0).unwrap_or(0.0),
            pue::wue(w_hi, it_lo, 0.0).unwrap_or(f64::INFINITY),
        ),
        None => (f64::NAN, f64::INFINITY),
    };
    let wue_exported =
        wue_litres_per_kwh.is_some_and(|w| uncertainty(w, wue_lower, wue_upper) <= max_u);
    Ok(Period {
        window: None,
        from_ms,
        to_ms,
        resolution,
        energy_joules,
        coverage_ratio,
        complete,
        category,
        pue,
        dcie_ratio: pue.map(|p| 1.0 / p),
        erf_ratio,
        ref_ratio,
        cue_kg_per_kwh: pue.and_then(|p| Some(p * site.carbon_intensity_kg_per_kwh?)),
        missing_reason,
        water_cubic_meters: has_water.then_some(water),
        water_coverage_ratio: has_water.then(|| (water_minutes as f64 / minutes).clamp(0.0, 1.0)),
        wue_complete: wue_litres_per_kwh.is_some() && complete && water_minutes as f64 >= minutes,
        wue_litres_per_kwh,
        zones,
        energy_bounds_joules,
        water_bounds_cubic_meters: has_water.then_some(Bounds {
            lower: w_lo,
            upper: finite(w_hi),
        }),
        pue_lower: pue.and(finite(pue_lower)),
        pue_upper: pue.and(finite(pue_upper)),
        pue_uncertainty_ratio: pue_uncertainty.and_then(finite),
        pue_exported,
        measured_ratio,
        wue_lower_litres_per_kwh: wue_litres_per_kwh.and(finite(wue_lower)),
        wue_upper_litres_per_kwh: wue_litres_per_kwh.and(finite(wue_upper)),
        wue_exported,
        events: unknown.events,
        events_left_out: unknown.events_left_out,
    })
}

/// The trailing windows at `now_ms`. A minute is closed once every meter can
/// have reported past its end: `stale_after` after it.
pub fn trailing(store: &Store, site: &Site, now_ms: i64) -> Result<Vec<Period>, StoreError> {
    let closed = now_ms - site.stale_after_ms;
    TRAILING
        .iter()
        .map(|w| {
            let (from, to) = w.edges(closed);
            let mut p = period(store, site, from, to, w.resolution)?;
            p.window = Some(w.label);
            Ok(p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcwatt_wire::time::days_from_civil;

    /// Unix ms of a UTC date and time.
    fn utc(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * DAY_MS + h * HOUR_MS + mi * MINUTE_MS
    }

    fn window(label: &str) -> Window {
        *TRAILING.iter().find(|w| w.label == label).unwrap()
    }

    #[test]
    fn month_edges_follow_the_calendar() {
        // Anchors computed independently (Python's calendar.timegm).
        assert_eq!(utc(2028, 2, 1, 0, 0), 1_832_976_000_000);
        assert_eq!(utc(2028, 3, 1, 0, 0), 1_835_481_600_000);
        assert_eq!(utc(2026, 12, 1, 0, 0), 1_796_083_200_000);
        assert_eq!(utc(2027, 1, 1, 0, 0), 1_798_761_600_000);
        // Leap years: 2028 (divisible by 4), 2000 (by 400); not 2100 (by 100).
        for (y, feb_days) in [(2028, 29), (2000, 29), (2100, 28), (2026, 28)] {
            let feb = utc(y, 2, 1, 0, 0);
            assert_eq!(month_start(utc(y, 2, 17, 13, 5)), feb);
            assert_eq!(month_of(feb).1, utc(y, 3, 1, 0, 0));
            assert_eq!((month_of(feb).1 - feb) / DAY_MS, feb_days, "{y}");
            // The last millisecond of February is still February.
            assert_eq!(month_start(utc(y, 3, 1, 0, 0) - 1), feb);
        }
        // December → January crosses the year.
        let dec = utc(2026, 12, 1, 0, 0);
        assert_eq!(month_start(utc(2026, 12, 31, 23, 59)), dec);
        assert_eq!(month_of(dec).1, utc(2027, 1, 1, 0, 0));
        assert_eq!(month_start(utc(2027, 1, 1, 0, 0) - 1), dec);
        assert_eq!(utc(2027, 1, 1, 0, 0) - dec, 31 * DAY_MS);
        // Before 1970 too (the arithmetic is proleptic Gregorian).
        assert_eq!(month_start(-1), utc(1969, 12, 1, 0, 0));
    }

    #[test]
    fn calendar_windows_end_at_the_last_closed_hour() {
        let (month, previous) = (window("month"), window("previous_month"));
        // 29 Feb 2028, 13:47: February to 13:00, and all of January.
        let closed = utc(2028, 2, 29, 13, 47);
        assert_eq!(
            month.edges(closed),
            (utc(2028, 2, 1, 0, 0), utc(2028, 2, 29, 13, 0))
        );
        assert_eq!(
            previous.edges(closed),
            (utc(2028, 1, 1, 0, 0), utc(2028, 2, 1, 0, 0))
        );
        // The last hour of February is not closed yet: still February to date.
        let closed = utc(2028, 2, 29, 23, 59);
        assert_eq!(
            month.edges(closed),
            (utc(2028, 2, 1, 0, 0), utc(2028, 2, 29, 23, 0))
        );
        assert_eq!(previous.edges(closed).1, utc(2028, 2, 1, 0, 0));
        // Once it is, March to date is empty and February is the whole month.
        let closed = utc(2028, 3, 1, 0, 0);
        assert_eq!(month.edges(closed), (closed, closed));
        assert_eq!(
            previous.edges(closed),
            (utc(2028, 2, 1, 0, 0), utc(2028, 3, 1, 0, 0))
        );
        // New year: December is the previous month.
        let closed = utc(2027, 1, 1, 5, 30);
        assert_eq!(
            previous.edges(closed),
            (utc(2026, 12, 1, 0, 0), utc(2027, 1, 1, 0, 0))
        );
        assert_eq!(
            month.edges(closed),
            (utc(2027, 1, 1, 0, 0), utc(2027, 1, 1, 5, 0))
        );
    }

    #[test]
    fn fifteen_minutes_are_utc_quarter_hours() {
        let q = window("15m");
        assert_eq!(q.resolution, Resolution::Minute);
        let closed = utc(2026, 11, 5, 10, 44) + 59_999;
        assert_eq!(
            q.edges(closed),
            (utc(2026, 11, 5, 10, 15), utc(2026, 11, 5, 10, 30))
        );
        let closed = utc(2026, 11, 5, 10, 45);
        assert_eq!(
            q.edges(closed),
            (utc(2026, 11, 5, 10, 30), utc(2026, 11, 5, 10, 45))
        );
        // 1h is not aligned: the last sixty closed minutes.
        assert_eq!(
            window("1h").edges(utc(2026, 11, 5, 10, 44) + 30_000),
            (utc(2026, 11, 5, 9, 44), utc(2026, 11, 5, 10, 44))
        );
    }
}
