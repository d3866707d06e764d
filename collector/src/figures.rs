//! The hall's derived figures at one instant, computed once from the state and
//! shared by `/metrics` and `/v1/summary` so the two never disagree.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Role, Site};
use crate::energy::BUCKET_MS;
use crate::pue::{self, NoPue};
use crate::state::State;

/// The trailing windows PUE is given for: (label, length in ms).
pub const WINDOWS: [(&str, i64); 1] = [("1h", 3_600_000)];

/// One energy-based PUE figure.
#[derive(Debug, Clone, Serialize)]
pub struct WindowPue {
    /// Window label (`1h`).
    pub window: &'static str,
    /// Facility energy in the window, J.
    pub facility_joules: f64,
    /// IT energy in the window, J.
    pub it_joules: f64,
    /// The PUE, when it can be given.
    pub pue: Option<f64>,
    /// Why not, otherwise.
    pub missing_reason: Option<String>,
}

/// The derived figures.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Collector clock, Unix ms.
    pub now_ms: i64,
    /// Power of fresh meters by role, W.
    pub power_watts: BTreeMap<&'static str, f64>,
    /// Power of fresh meters by (role, zone), W.
    #[serde(skip)]
    pub zone_power_watts: BTreeMap<(Role, String), f64>,
    /// ISO/IEC 30134-2 category of the IT measurement (1, 2, 3), if there are IT meters.
    pub category: Option<u8>,
    /// Share of the facility and IT meters that are fresh.
    pub coverage_ratio: f64,
    /// Instantaneous PUE from fresh powers (only with full coverage).
    pub pue_instant: Option<f64>,
    /// Energy-based PUE per trailing window.
    pub pue_windows: Vec<WindowPue>,
}

/// Computes the figures at `now_ms`.
pub fn compute(state: &State, site: &Site, now_ms: i64) -> Figures {
    let fresh = |last: Option<i64>| last.is_some_and(|t| now_ms - t <= site.stale_after_ms);
    let mut zone_power_watts: BTreeMap<(Role, String), f64> = BTreeMap::new();
    let mut power_watts: BTreeMap<&'static str, f64> = BTreeMap::new();
    let (mut required, mut reporting) = (0usize, 0usize);
    for m in state.meters.values() {
        let is_fresh = fresh(m.last_ms);
        if matches!(m.role, Role::Facility | Role::It) {
            required += 1;
            reporting += usize::from(is_fresh);
        }
        if let Some((t, w)) = m.power {
            if fresh(Some(t)) {
                *zone_power_watts
                    .entry((m.role, m.zone.clone()))
                    .or_default() += w;
                *power_watts.entry(m.role.as_str()).or_default() += w;
            }
        }
    }
    let coverage_ratio = if required == 0 {
        0.0
    } else {
        reporting as f64 / required as f64
    };
    let complete = required > 0 && reporting == required;
    let category = pue::category(state.meters.values().filter_map(|m| m.it_point));
    let has_facility = state.meters.values().any(|m| m.role == Role::Facility);

    let pue_instant = if complete && has_facility && category.is_some() {
        let f = power_watts.get("facility").copied().unwrap_or(0.0);
        let i = power_watts.get("it").copied().unwrap_or(0.0);
        pue::pue(f, i, site.pue_it_floor_watts).ok()
    } else {
        None
    };

    let current_minute = now_ms.div_euclid(BUCKET_MS) * BUCKET_MS;
    let pue_windows = WINDOWS
        .iter()
        .map(|&(window, len_ms)| {
            let from = current_minute + BUCKET_MS - len_ms;
            let sum = |role: Role| -> f64 {
                state
                    .energy
                    .iter()
                    .filter(|((r, _), _)| *r == role)
                    .map(|(_, e)| e.buckets.sum(from, i64::MAX))
                    .sum()
            };
            let (facility_joules, it_joules) = (sum(Role::Facility), sum(Role::It));
            // At least one minute of IT power above the floor.
            let floor = site.pue_it_floor_watts * 60.0;
            let (pue, missing_reason) = if !has_facility || category.is_none() {
                (
                    None,
                    Some("no facility or no IT meter configured".to_owned()),
                )
            } else if !complete {
                (
                    None,
                    Some(format!(
                        "incomplete: {reporting} of {required} facility and IT meters reporting"
                    )),
                )
            } else {
                match pue::pue(facility_joules, it_joules, floor) {
                    Ok(p) => (Some(p), None),
                    Err(NoPue::ItBelowFloor) => {
                        (None, Some("IT energy below the floor".to_owned()))
                    }
                    Err(NoPue::Invalid(r)) => (
                        None,
                        Some(format!("invalid ratio {r:.4}: check the meters' roles")),
                    ),
                }
            };
            WindowPue {
                window,
                facility_joules,
                it_joules,
                pue,
                missing_reason,
            }
        })
        .collect();

    Figures {
        now_ms,
        power_watts,
        zone_power_watts,
        category,
        coverage_ratio,
        pue_instant,
        pue_windows,
    }
}
