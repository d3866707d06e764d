//! The hall's derived figures at one instant, computed once from the state and
//! shared by `/metrics` and `/v1/summary` so the two never disagree.
//!
//! The live PUE (`5m`) is a ratio of energies over one and the same span for
//! every meter, to the millisecond: it is cut at the instants that *all* facility
//! and IT meters cover (their energy curves interpolated there); the covered part
//! of the window is its coverage. The longer windows come from the stored UTC
//! minutes ([`crate::windows`]). Only a complete window is exported as the plain
//! `dcwatt_pue_ratio`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use dcwatt_wire::time::HOUR_MS;

use crate::pue::{self, NoPue};
use crate::site::{Role, Site};
use crate::state::{MeterState, State};
use crate::utilization::{zone_of, Kind, Means, UtilizationFigures};

/// The live window's label.
pub const LIVE_WINDOW: &str = "5m";

pub use crate::state::LIVE_WINDOW_MS;

/// One energy-based PUE figure over a trailing window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowPue {
    /// Window label (`5m`, `1h`).
    pub window: &'static str,
    /// Start of the covered span, Unix ms.
    pub from_ms: Option<i64>,
    /// End of the covered span, Unix ms (the latest instant every required meter reached).
    pub to_ms: Option<i64>,
    /// Covered span / window length, 0..=1.
    pub coverage_ratio: f64,
    /// True when the whole window is covered (up to the normal reporting lag) and
    /// every required meter is fresh: only then is the PUE exported as plain PUE.
    pub complete: bool,
    /// Energy per role over the covered span, J (roles whose every meter covers it).
    pub energy_joules: BTreeMap<&'static str, f64>,
    /// The PUE over the covered span, when it can be given.
    pub pue: Option<f64>,
    /// Why not, otherwise.
    pub missing_reason: Option<String>,
    /// Site water, m³, over the part of the covered span that every water
    /// meter covers too, where water meters are configured.
    pub water_cubic_meters: Option<f64>,
    /// WUE over that part, L/kWh of IT energy over the same part, when IT
    /// energy is above the floor.
    pub wue_litres_per_kwh: Option<f64>,
    /// The window is complete and every water meter is fresh: only then is the
    /// WUE exported.
    pub wue_complete: bool,
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
    /// Share of the facility and IT meters that reported within `stale_after`.
    pub meters_reporting_ratio: f64,
    /// Instantaneous PUE: facility / IT energy over the last
    /// [`INSTANT_SPAN_MS`] that every facility and IT meter's energy curve
    /// covers, all cut at the same two instants (their mean powers over one
    /// and the same span), while every one of them is fresh and none reset or
    /// was replaced in it; never a ratio of readings taken at different times.
    pub pue_instant: Option<f64>,
    /// Energy-based PUE over the last five minutes, to the millisecond.
    pub pue_live: WindowPue,
    /// Energy-based PUE over the stored trailing windows (1h … 365d).
    pub windows: Vec<crate::windows::Period>,
    /// Per meter with sub-meters: (parent − Σ children) / parent over the live
    /// span; negative beyond the tolerance means the children read more than
    /// their parent (a meter or the tree is wrong).
    pub tree_residual_ratio: BTreeMap<String, f64>,
    /// What an operator should look at.
    pub warnings: Vec<String>,
    /// Complete minutes whose PUE was invalid, ever (set from the store by the caller).
    pub invalid_pue_minutes: i64,
    /// Metered nodes' energy beyond their GPUs that could not be booked to
    /// anyone, J (from the store, as last read).
    pub unbooked_node_joules: f64,
    /// GPU utilization means, idle energy, XID errors and modules, per zone
    /// and for the site ([`crate::utilization`]).
    pub gpu_utilization: UtilizationFigures,
}

fn required(m: &MeterState) -> bool {
    m.meter.parent.is_none() && matches!(m.meter.role, Role::Facility | Role::It)
}

/// Computes the figures at `now_ms`; `windows` are the stored trailing windows
/// as last computed.
pub fn compute(
    state: &State,
    site: &Site,
    now_ms: i64,
    windows: Vec<crate::windows::Period>,
) -> Figures {
    let fresh = |last: Option<i64>| last.is_some_and(|t| now_ms - t <= site.stale_after_ms);
    let mut zone_power_watts: BTreeMap<(Role, String), f64> = BTreeMap::new();
    let mut power_watts: BTreeMap<&'static str, f64> = BTreeMap::new();
    let (mut n_required, mut reporting) = (0usize, 0usize);
    for m in state.meters.values() {
        if required(m) {
            n_required += 1;
            reporting += usize::from(fresh(m.acc.last_ms));
        }
        if let Some((t, w)) = m.acc.power.filter(|_| m.meter.parent.is_none()) {
            if fresh(Some(t)) {
                *zone_power_watts
                    .entry((m.meter.role, m.meter.zone.clone()))
                    .or_default() += w;
                *power_watts.entry(m.meter.role.as_str()).or_default() += w;
            }
        }
    }
    let all_fresh = n_required > 0 && reporting == n_required;
    let category = pue::category(state.meters.values().filter_map(|m| m.meter.it_point));
    let has_facility = state
        .meters
        .values()
        .any(|m| m.meter.role == Role::Facility);
    let model_ok = has_facility && category.is_some();

    let pue_instant = if all_fresh && model_ok {
        instant_pue(state, site, now_ms)
    } else {
        None
    };
    let pue_live = window_pue(
        state,
        site,
        now_ms,
        LIVE_WINDOW,
        LIVE_WINDOW_MS,
        model_ok,
        all_fresh,
    );
    let (tree_residual_ratio, warnings) = tree_residuals(state, site, &pue_live);
    Figures {
        tree_residual_ratio,
        warnings,
        invalid_pue_minutes: 0,
        unbooked_node_joules: 0.0,
        now_ms,
        power_watts,
        zone_power_watts,
        category,
        meters_reporting_ratio: if n_required == 0 {
            0.0
        } else {
            reporting as f64 / n_required as f64
        },
        pue_instant,
        pue_live,
        windows,
        gpu_utilization: utilization(state, site, now_ms),
    }
}

/// The span the instant PUE is taken over, ms: every meter's energy curve cut
/// at the same two instants this far apart.
pub const INSTANT_SPAN_MS: i64 = 10_000;

/// Facility / IT energy over the last [`INSTANT_SPAN_MS`] that every facility
/// and IT meter covers (ending at the oldest of their latest points), or
/// `None` when one is stale, does not cover it, reset or was replaced in it,
/// or was silent around either end.
fn instant_pue(state: &State, site: &Site, now_ms: i64) -> Option<f64> {
    let meters: Vec<&MeterState> = state.meters.values().filter(|m| required(m)).collect();
    let spans = meters
        .iter()
        .map(|m| m.curve.span())
        .collect::<Option<Vec<_>>>()?;
    let end = spans.iter().map(|s| s.1).min()?;
    let start = end - INSTANT_SPAN_MS;
    if now_ms - end > site.stale_after_ms || spans.iter().any(|s| s.0 > start) {
        return None;
    }
    let (mut facility, mut it) = (0.0, 0.0);
    for m in meters {
        // A reset or swap in the span, or a gap around either end (the curve
        // only interpolates there): no instant figure.
        let broken = [m.acc.last_reset, m.acc.last_swap]
            .into_iter()
            .flatten()
            .any(|(_, after)| after > start)
            || [start, end]
                .into_iter()
                .any(|t| m.curve.step_at(t).is_none_or(|s| s > site.stale_after_ms));
        if broken {
            return None;
        }
        let e = m.curve.between(start, end)?;
        match m.meter.role {
            Role::Facility => facility += e,
            Role::It => it += e,
            _ => {}
        }
    }
    let floor = site.pue_it_floor_watts * INSTANT_SPAN_MS as f64 / 1000.0;
    pue::pue(facility, it, floor, site.pue_max_ratio).ok()
}

fn window_pue(
    state: &State,
    site: &Site,
    now_ms: i64,
    window: &'static str,
    len_ms: i64,
    model_ok: bool,
    all_fresh: bool,
) -> WindowPue {
    let mut out = WindowPue {
        window,
        from_ms: None,
        to_ms: None,
        coverage_ratio: 0.0,
        complete: false,
        energy_joules: BTreeMap::new(),
        pue: None,
        missing_reason: None,
        water_cubic_meters: None,
        wue_litres_per_kwh: None,
        wue_complete: false,
    };
    if !model_ok {
        out.missing_reason = Some("no facility or no IT meter configured".into());
        return out;
    }
    // The span every facility and IT meter covers, inside the window.
    let spans: Option<Vec<(i64, i64)>> = state
        .meters
        .values()
        .filter(|m| required(m))
        .map(|m| m.curve.span())
        .collect();
    let Some(spans) = spans else {
        out.missing_reason = Some("a facility or IT meter has not reported energy yet".into());
        return out;
    };
    let start = spans.iter().map(|s| s.0).max().unwrap_or(i64::MAX);
    let end = spans.iter().map(|s| s.1).min().unwrap_or(i64::MIN);
    let (a, b) = ((now_ms - len_ms).max(start), end.min(now_ms));
    if b <= a {
        out.missing_reason = Some("the meters' energy spans do not overlap in this window".into());
        return out;
    }
    out.from_ms = Some(a);
    out.to_ms = Some(b);
    out.coverage_ratio = ((b - a) as f64 / len_ms as f64).clamp(0.0, 1.0);
    let lag_allowance = site.stale_after_ms as f64 / len_ms as f64;
    out.complete = all_fresh && out.coverage_ratio >= 1.0 - lag_allowance;

    let mut roles: BTreeMap<Role, Option<f64>> = BTreeMap::new();
    for m in state.meters.values().filter(|m| m.meter.parent.is_none()) {
        if m.meter.role == Role::Water {
            continue; // a volume, not an energy: below
        }
        let e = roles.entry(m.meter.role).or_insert(Some(0.0));
        *e = e.and_then(|sum| Some(sum + m.curve.between(a, b)?));
    }
    out.energy_joules = roles
        .iter()
        .filter_map(|(r, e)| Some((r.as_str(), (*e)?)))
        .collect();
    let facility = out.energy_joules.get("facility").copied().unwrap_or(0.0);
    let it = out.energy_joules.get("it").copied().unwrap_or(0.0);
    let floor = site.pue_it_floor_watts * (b - a) as f64 / 1000.0;
    if site.water_meters > 0 {
        live_wue(state, site, now_ms, len_ms, (a, b), &mut out);
    }
    match pue::pue(facility, it, floor, site.pue_max_ratio) {
        Ok(p) => out.pue = Some(p),
        Err(NoPue::ItBelowFloor) => out.missing_reason = Some("IT energy below the floor".into()),
        Err(NoPue::Invalid(r)) => {
            out.missing_reason = Some(format!("invalid ratio {r:.4}: check the meters' roles"))
        }
    }
    if out.pue.is_some() && !out.complete {
        out.missing_reason = Some(format!(
            "incomplete: {:.1} % of the window covered{}",
            out.coverage_ratio * 100.0,
            if all_fresh {
                ""
            } else {
                ", a facility or IT meter is stale"
            }
        ));
    }
    out
}

/// The live WUE: site water over IT energy, both over the part of the PUE's
/// span `(a, b)` that every water meter covers too (a water meter that started
/// reporting later shortens it; the window is then not complete for WUE).
fn live_wue(
    state: &State,
    site: &Site,
    now_ms: i64,
    len_ms: i64,
    (a, b): (i64, i64),
    out: &mut WindowPue,
) {
    let counted = |m: &&MeterState| m.meter.parent.is_none();
    let water: Vec<&MeterState> = state
        .meters
        .values()
        .filter(counted)
        .filter(|m| m.meter.role == Role::Water)
        .collect();
    let Some(spans) = water
        .iter()
        .map(|m| m.curve.span())
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let wa = spans.iter().map(|s| s.0).fold(a, i64::max);
    let wb = spans.iter().map(|s| s.1).fold(b, i64::min);
    if wb <= wa {
        return;
    }
    let volume: Option<f64> = water.iter().map(|m| m.curve.between(wa, wb)).sum();
    let it: Option<f64> = state
        .meters
        .values()
        .filter(counted)
        .filter(|m| m.meter.role == Role::It)
        .map(|m| m.curve.between(wa, wb))
        .sum();
    let (Some(volume), Some(it)) = (volume, it) else {
        return;
    };
    out.water_cubic_meters = Some(volume);
    let floor = site.pue_it_floor_watts * (wb - wa) as f64 / 1000.0;
    out.wue_litres_per_kwh = pue::wue(volume, it, floor);
    let fresh = |m: &&MeterState| {
        m.acc
            .last_ms
            .is_some_and(|t| now_ms - t <= site.stale_after_ms)
    };
    let covered = (wb - wa) as f64 / len_ms as f64;
    out.wue_complete = out.complete
        && out.wue_litres_per_kwh.is_some()
        && water.iter().all(fresh)
        && covered >= 1.0 - site.stale_after_ms as f64 / len_ms as f64;
}

/// Residual of every meter with sub-meters over the live span (the span every
/// facility and IT meter covers), where the parent and all its children cover it.
fn tree_residuals(
    state: &State,
    site: &Site,
    live: &WindowPue,
) -> (BTreeMap<String, f64>, Vec<String>) {
    let (mut out, mut warnings) = (BTreeMap::new(), Vec::new());
    let (Some(a), Some(b)) = (live.from_ms, live.to_ms) else {
        return (out, warnings);
    };
    for (id, parent) in &state.meters {
        let children: Vec<&MeterState> = state
            .meters
            .values()
            .filter(|m| m.meter.parent.as_deref() == Some(id))
            .collect();
        if children.is_empty() {
            continue;
        }
        let Some(p) = parent.curve.between(a, b) else {
            continue;
        };
        let Some(c) = children
            .iter()
            .map(|m| m.curve.between(a, b))
            .sum::<Option<f64>>()
        else {
            continue;
        };
        if p <= 0.0 {
            continue;
        }
        let ratio = (p - c) / p;
        if ratio < -site.meter_tree_tolerance {
            warnings.push(format!(
                "meter {id}: its sub-meters read {:.1} % more than it does",
                -ratio * 100.0
            ));
        }
        out.insert(id.clone(), ratio);
    }
    (out, warnings)
}

/// The GPU utilization figures at `now_ms`.
fn utilization(state: &State, site: &Site, now_ms: i64) -> UtilizationFigures {
    let fresh = |t: i64| now_ms - t <= site.stale_after_ms;
    let mut out = UtilizationFigures {
        idle_sm_active_below: site.idle_sm_active_below,
        ..UtilizationFigures::default()
    };
    // Per zone (one hash lookup per GPU or module, no allocation): the
    // counters, and the live sums per kind (indexed by `Kind as usize`).
    // Each sum adds in the same order as before, so the figures are
    // bit-identical.
    #[derive(Default)]
    struct Acc {
        idle: f64,
        xid: f64,
        module_energy: f64,
        module_power: Option<f64>,
        live: [(f64, usize); Kind::ALL.len()],
    }
    let mut acc: HashMap<&str, Acc> = HashMap::new();
    for g in state.gpus.values() {
        let a = acc.entry(zone_of(site, &g.agent)).or_default();
        a.idle += g.util.idle_joules;
        a.xid += g.util.xid_errors;
        out.site.idle_energy_joules += g.util.idle_joules;
        out.site.xid_errors += g.util.xid_errors;
        for (kind, (t, v)) in &g.util.last {
            if fresh(*t) {
                let e = &mut a.live[*kind as usize];
                e.0 += v;
                e.1 += 1;
            }
        }
    }
    for m in state.modules.values() {
        let a = acc.entry(zone_of(site, &m.agent)).or_default();
        a.module_energy += m.energy_joules;
        out.site.module_energy_joules += m.energy_joules;
        if let Some((_, w)) = m.power.filter(|(t, _)| fresh(*t)) {
            *a.module_power.get_or_insert(0.0) += w;
            *out.site.module_power_watts.get_or_insert(0.0) += w;
        }
    }
    for (zone, a) in &acc {
        let z = out.zones.entry((*zone).to_owned()).or_default();
        z.idle_energy_joules += a.idle;
        z.xid_errors += a.xid;
        z.module_energy_joules += a.module_energy;
        z.module_power_watts = a.module_power;
    }
    let live = |zone: &str, kind: Kind| {
        acc.get(zone)
            .map(|a| a.live[kind as usize])
            .filter(|(_, n)| *n > 0)
    };
    let zones: Vec<String> = out.zones.keys().cloned().collect();
    for kind in Kind::ALL {
        let mut site_live = (0.0, 0usize);
        for zone in &zones {
            let l = live(zone, kind);
            if let Some((sum, n)) = l {
                site_live.0 += sum;
                site_live.1 += n;
            }
            let means = Means {
                live: l.map(|(sum, n)| sum / n as f64),
                hour: state.utilization.mean(Some(zone), kind, now_ms, HOUR_MS),
            };
            if means != Means::default() {
                if let Some(z) = out.zones.get_mut(zone) {
                    z.ratios.insert(kind.as_str(), means);
                }
            }
        }
        let means = Means {
            live: (site_live.1 > 0).then(|| site_live.0 / site_live.1 as f64),
            hour: state.utilization.mean(None, kind, now_ms, HOUR_MS),
        };
        if means != Means::default() {
            out.site.ratios.insert(kind.as_str(), means);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};

    /// Facility 1.25 kW and IT 1 kW, read every second; IT silent from 20 s to
    /// 60 s. Right after it is back, the last 10 s every meter covers lie in
    /// its gap (interpolated, not measured): no instant PUE; ten seconds later
    /// it is 1.25 again.
    #[test]
    fn no_instant_pue_across_a_gap() {
        let site = Config::from_toml(
            "[[meters]]\nid = \"f\"\nrole = \"facility\"\n\
             [[meters]]\nid = \"i\"\nrole = \"it\"\nit_point = \"it_input\"\n",
        )
        .unwrap()
        .build()
        .unwrap();
        let mut state = State::new(&site);
        let t0 = 1_795_000_000_000;
        let instant_after = |state: &mut State, s: i64| {
            let t = t0 + s * 1000;
            let r = |id: &str, joules: f64| Reading {
                ts_ms: t,
                entity: Entity::Meter(id.into()),
                quantity: Quantity::EnergyJoules,
                value: joules,
            };
            let mut readings = vec![r("f", 1250.0 * s as f64)];
            if !(20..60).contains(&s) {
                readings.push(r("i", 1000.0 * s as f64));
            }
            let batch = Batch {
                version: VERSION,
                agent: "gw".into(),
                seq: s as u64 + 1,
                first_seq: None,
                node: "gw".into(),
                created_ms: t,
                gpus: vec![],
                readings,
            };
            state.apply(&batch, &site, t);
            compute(state, &site, t, Vec::new()).pue_instant
        };
        let got: Vec<Option<f64>> = (0..=75).map(|s| instant_after(&mut state, s)).collect();
        assert_eq!(got[9], None, "not 10 s covered yet");
        assert_eq!(got[19], Some(1.25));
        assert_eq!(got[60], None, "IT's last 10 s are its gap");
        assert_eq!(got[69], None);
        assert_eq!(got[70], Some(1.25));
    }
}
