//! PUE over fixed UTC periods, from the stored minute, hour and day energies:
//! the trailing windows exported as `dcwatt_pue_ratio{window}` and any
//! `[from, to)` asked through `GET /v1/pue`.
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

use crate::config::{Role, Site};
use crate::pue::{self, NoPue};
use crate::store::{Resolution, Store, StoreError};

/// The trailing windows: label, length, resolution. The minute-resolution ones
/// end at the last closed minute, the hour-resolution ones at the last closed hour.
pub const TRAILING: [(&str, i64, Resolution); 5] = [
    ("1h", 3_600_000, Resolution::Minute),
    ("24h", 86_400_000, Resolution::Minute),
    ("7d", 7 * 86_400_000, Resolution::Hour),
    ("30d", 30 * 86_400_000, Resolution::Hour),
    ("365d", 365 * 86_400_000, Resolution::Hour),
];

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
    /// Energy by role over all zones, J.
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
    /// Per zone with IT meters.
    pub zones: Vec<ZonePeriod>,
}

/// Energies and PUE over `[from_ms, to_ms)`, both aligned to `resolution`.
pub fn period(
    store: &Store,
    site: &Site,
    from_ms: i64,
    to_ms: i64,
    resolution: Resolution,
) -> Result<Period, StoreError> {
    let minutes = ((to_ms - from_ms) / 60_000).max(1) as f64;
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
    for (zone, role, joules) in &rows {
        let Some(role) = role_of(role) else { continue };
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
    let total_it: f64 = zone_it.values().sum();
    let mut zones = Vec::new();
    for (zone, zit) in &zone_it {
        let infra = zone_infra.get(zone).copied().unwrap_or(0.0);
        let share = if total_it > 0.0 { zit / total_it } else { 0.0 };
        let zone_minutes = store.complete_minutes(resolution, zone, from_ms, to_ms)?;
        zones.push(ZonePeriod {
            zone: (*zone).to_owned(),
            it_joules: *zit,
            infrastructure_joules: infra,
            shared_joules: shared * share,
            partial_pue: pue::partial_pue(*zit, infra, shared, share, floor * share),
            coverage_ratio: (zone_minutes as f64 / minutes).clamp(0.0, 1.0),
            complete: zone_minutes as f64 >= minutes,
        });
    }
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
        zones,
    })
}

/// The trailing windows at `now_ms`. A minute is closed once every meter can
/// have reported past its end: `stale_after` after it.
pub fn trailing(store: &Store, site: &Site, now_ms: i64) -> Result<Vec<Period>, StoreError> {
    let closed = now_ms - site.stale_after_ms;
    TRAILING
        .iter()
        .map(|&(label, len_ms, resolution)| {
            let to = resolution.floor(closed);
            let mut p = period(store, site, to - len_ms, to, resolution)?;
            p.window = Some(label);
            Ok(p)
        })
        .collect()
}
