//! The write path: one applied batch's rows ([`Prepared`], serialized right
//! after it was applied) and their transaction, and booking whole hours
//! ([`Store::book_hour`]). Each meter-minute is added to its minute, hour and
//! day, and counted towards the complete minutes of its zone and the site.

use rusqlite::params;

use super::{Resolution, Store, StoreError};
use crate::energy::{CurveEdit, MinuteEnergy};
use crate::site::{Role, Site};
use crate::state::{Changes, ExcursionEdit, State};

/// One meter's energy over one whole UTC hour, for [`Store::book_hour`].
#[derive(Debug, Clone, Copy)]
pub struct MeterHour<'a> {
    /// The meter (configured).
    pub meter: &'a str,
    /// Its energy over the hour, J (m³ for a water meter).
    pub joules: f64,
    /// Minutes of the hour it completed (0 to 60).
    pub complete_minutes: i64,
}

/// One applied batch's rows, serialized from the state right after it was
/// applied: what the store must write for it, independent of later batches.
#[derive(Debug, Default)]
pub struct Prepared {
    agent: Option<(String, i64, i64)>,
    meters: Vec<(String, String)>,
    minutes: Vec<(Role, String, MinuteEnergy)>,
    curves: Vec<(String, CurveEdit)>,
    gpus: Vec<(String, String)>,
    gpu_minutes: Vec<(String, String, MinuteEnergy)>,
    gpu_stats: Vec<(String, String, crate::state::GpuMinuteStats)>,
    gpu_delivery: Vec<(String, String, crate::delivery::DeliveredMinute)>,
    excursions: Vec<ExcursionEdit>,
    /// (node, minute, the GPUs its agent reports).
    node_minutes: Vec<(String, MinuteEnergy, i64)>,
    /// Meter events and spans (energy bounds).
    bounds: super::bounds::Prepared,
    /// Superchip modules: (node, id, state JSON).
    modules: Vec<(String, String, String)>,
    /// Modules' minutes: (node, id, minute, the GPUs naming the module).
    module_minutes: Vec<(String, String, MinuteEnergy, i64)>,
    /// The minutes of GPUs in a module.
    gpu_module_minutes: Vec<crate::store::modules::GpuModuleMinute>,
}

/// Serializes what one applied batch changed (call right after applying it).
pub fn prepare(agent: &str, state: &State, changes: &Changes) -> Result<Prepared, StoreError> {
    let mut p = Prepared::default();
    if let Some(a) = state.agents.get(agent) {
        let seq = i64::try_from(a.last_seq).map_err(|_| StoreError::Range(a.last_seq))?;
        p.agent = Some((agent.to_owned(), seq, a.last_seen_ms));
    }
    for id in &changes.meters {
        if let Some(m) = state.meters.get(id) {
            let json = serde_json::to_string(&m.acc).map_err(|source| StoreError::Decode {
                what: format!("meter {id}"),
                source,
            })?;
            p.meters.push((id.clone(), json));
        }
    }
    for (id, w) in &changes.minutes {
        if let Some(m) = state.meters.get(id).filter(|m| m.meter.parent.is_none()) {
            p.minutes.push((m.meter.role, m.meter.zone.clone(), *w));
        }
        if let Some(node) = state.meters.get(id).and_then(|m| m.meter.node.as_ref()) {
            if w.complete {
                let gpus = i64::try_from(state.gpus_of(node)).unwrap_or(i64::MAX);
                p.node_minutes.push((node.clone(), *w, gpus));
            }
        }
    }
    p.curves.clone_from(&changes.curves);
    for uuid in &changes.gpus {
        if let Some(g) = state.gpus.get(uuid) {
            let json = serde_json::to_string(g).map_err(|source| StoreError::Decode {
                what: format!("gpu {uuid}"),
                source,
            })?;
            p.gpus.push((uuid.clone(), json));
        }
    }
    p.gpu_minutes.clone_from(&changes.gpu_minutes);
    for (node, id) in &changes.modules {
        if let Some(m) = state.modules.get(&(node.clone(), id.clone())) {
            let json = serde_json::to_string(m).map_err(|source| StoreError::Decode {
                what: format!("module {id} of node {node}"),
                source,
            })?;
            p.modules.push((node.clone(), id.clone(), json));
        }
    }
    for (node, id, w) in &changes.module_minutes {
        let gpus = state
            .modules
            .get(&(node.clone(), id.clone()))
            .map_or(0, |m| i64::try_from(m.gpus.len()).unwrap_or(i64::MAX));
        p.module_minutes.push((node.clone(), id.clone(), *w, gpus));
    }
    for (uuid, node, w) in &changes.gpu_minutes {
        if let Some(m) = state.gpus.get(uuid).and_then(|g| g.module.as_ref()) {
            p.gpu_module_minutes
                .push((uuid.clone(), node.clone(), m.clone(), *w));
        }
    }
    p.excursions.clone_from(&changes.excursions);
    p.gpu_stats.clone_from(&changes.gpu_stats);
    p.gpu_delivery.clone_from(&changes.gpu_delivery);
    p.bounds = super::bounds::prepare(state, changes);
    Ok(p)
}

pub(super) fn write_prepared(
    tx: &rusqlite::Transaction<'_>,
    p: &Prepared,
    site: &Site,
) -> Result<(), StoreError> {
    for (role, zone, w) in &p.minutes {
        add_minute(tx, site, *role, zone, w)?;
    }
    super::bounds::write(tx, &p.bounds)?;
    crate::store::ledger::attribute(tx, site, &p.gpu_minutes)?;
    crate::store::modules::write(
        tx,
        site,
        &p.modules,
        &p.module_minutes,
        &p.gpu_module_minutes,
    )?;
    crate::store::ledger::attribute_stats(tx, site, &p.gpu_stats)?;
    super::delivery::attribute(tx, site, &p.gpu_delivery)?;
    for (node, w, gpus) in &p.node_minutes {
        // A change to a minute already shared marks it for an adjustment.
        tx.prepare_cached(
            "INSERT INTO node_open (minute_ms, node, meter_joules, gpus_expected) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (minute_ms, node) DO UPDATE SET meter_joules = meter_joules + excluded.meter_joules,
             shared = CASE WHEN shared = 1 THEN 2 ELSE shared END",
        )?
        .execute(params![w.minute_ms, node, w.joules, gpus])?;
    }
    if let Some((agent, seq, seen)) = &p.agent {
        tx.prepare_cached(
            "INSERT INTO agents (id, last_seq, last_seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq, last_seen_ms = excluded.last_seen_ms",
        )?
        .execute(params![agent, seq, seen])?;
    }
    for (id, json) in &p.meters {
        tx.prepare_cached("INSERT INTO meters (id, account) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET account = excluded.account")?
            .execute(params![id, json])?;
    }
    for (id, edit) in &p.curves {
        match *edit {
            CurveEdit::Add(ts, joules) => tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO meter_curve (meter, ts_ms, joules) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, ts, joules])?,
            CurveEdit::Remove(ts) => tx
                .prepare_cached("DELETE FROM meter_curve WHERE meter = ?1 AND ts_ms = ?2")?
                .execute(params![id, ts])?,
            CurveEdit::TrimBefore(ts) => tx
                .prepare_cached("DELETE FROM meter_curve WHERE meter = ?1 AND ts_ms < ?2")?
                .execute(params![id, ts])?,
        };
    }
    for (uuid, json) in &p.gpus {
        tx.prepare_cached("INSERT INTO gpus (uuid, state) VALUES (?1, ?2) ON CONFLICT (uuid) DO UPDATE SET state = excluded.state")?
            .execute(params![uuid, json])?;
    }
    for edit in &p.excursions {
        match edit {
            ExcursionEdit::Open(e) => {
                if let Some(t) = e.tenant.as_deref().filter(|t| !t.starts_with('_')) {
                    crate::store::ledger::attribute_excursion(tx, t, e.opened_ms)?;
                }
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO excursions (entity, kind, opened_ms, entity_kind, node, zone, tenant)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    e.entity,
                    e.kind.as_str(),
                    e.opened_ms,
                    e.entity_kind,
                    e.node,
                    e.zone,
                    e.tenant
                ])?
            }
            ExcursionEdit::Close(entity, kind, opened, closed) => tx
                .prepare_cached(
                    "UPDATE excursions SET closed_ms = ?4 WHERE entity = ?1 AND kind = ?2 AND opened_ms = ?3",
                )?
                .execute(params![entity, kind.as_str(), opened, closed])?,
        };
    }
    Ok(())
}

impl Store {
    /// Books one whole UTC hour of meters' energy at hour resolution, in one
    /// transaction: each meter-hour added to its hour and day rows (as
    /// [`Store::commit`] adds each meter-minute to its minute, hour and day),
    /// each listed meter's span widened over the hour, `events` written as the
    /// minute cutter writes them, and the hour's complete minutes counted for
    /// each zone and the site: the fewest the meters' own counts allow (60 −
    /// the minutes any required meter missed, summed; exact when every
    /// required meter completed all 60). A required meter not listed completed
    /// none. For history kept at hour resolution (an import, a simulated
    /// year); minute rows are not written.
    pub fn book_hour(
        &mut self,
        site: &Site,
        hour_ms: i64,
        meters: &[MeterHour<'_>],
        events: &[(&str, crate::bounds::MeterEvent)],
    ) -> Result<(), StoreError> {
        if hour_ms.rem_euclid(Resolution::Hour.ms()) != 0 {
            return Err(StoreError::Invalid(format!(
                "hour_ms: {hour_ms} is not the start of a UTC hour"
            )));
        }
        for (i, m) in meters.iter().enumerate() {
            if !site.meters.contains_key(m.meter) {
                return Err(StoreError::Invalid(format!(
                    "meters[{i}].meter: no meter {:?} in the site",
                    m.meter
                )));
            }
            if meters[..i].iter().any(|o| o.meter == m.meter) {
                return Err(StoreError::Invalid(format!(
                    "meters[{i}].meter: {:?} listed twice",
                    m.meter
                )));
            }
            if !(m.joules.is_finite() && m.joules >= 0.0) {
                return Err(StoreError::Invalid(format!(
                    "meters[{i}].joules: must be a finite number ≥ 0"
                )));
            }
            if !(0..=60).contains(&m.complete_minutes) {
                return Err(StoreError::Invalid(format!(
                    "meters[{i}].complete_minutes: must be 0 to 60"
                )));
            }
        }
        for (i, (meter, _)) in events.iter().enumerate() {
            if !site.meters.contains_key(*meter) {
                return Err(StoreError::Invalid(format!(
                    "events[{i}].meter: no meter {meter:?} in the site"
                )));
            }
        }
        let hour_end = hour_ms + Resolution::Hour.ms();
        let tx = self.conn.transaction()?;
        let mut missed: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        let (mut site_missed, mut water_missed) = (0, 0);
        for (id, m) in site.meters.iter().filter(|(_, m)| m.counted()) {
            let done = meters
                .iter()
                .find(|h| h.meter == id)
                .map_or(0, |h| h.complete_minutes);
            match m.role {
                Role::Facility | Role::It => {
                    *missed.entry(m.zone.as_str()).or_default() += 60 - done;
                    site_missed += 60 - done;
                }
                Role::Water => water_missed += 60 - done,
                _ => {}
            }
        }
        for h in meters {
            let m = &site.meters[h.meter];
            if m.counted() {
                for r in [Resolution::Hour, Resolution::Day] {
                    add_energy(&tx, r, r.floor(hour_ms), &m.zone, m.role, h.joules)?;
                }
            }
            super::bounds::write_one(&tx, h.meter, None, Some((hour_ms, hour_end)))?;
        }
        for (meter, e) in events {
            super::bounds::write_one(&tx, meter, Some(e), None)?;
        }
        let covered = |kind: &str, start: i64, zone: &str, minutes: i64| {
            tx.prepare_cached(
                "INSERT INTO coverage (kind, start_ms, zone, complete) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, start_ms, zone) DO UPDATE SET complete = complete + excluded.complete",
            )?
            .execute(params![kind, start, zone, minutes])
            .map(|_| ())
        };
        for r in [Resolution::Hour, Resolution::Day] {
            let start = r.floor(hour_ms);
            for (zone, missed) in &missed {
                covered(r.key(), start, zone, (60 - missed).max(0))?;
            }
            if !missed.is_empty() {
                covered(r.key(), start, "*", (60 - site_missed).max(0))?;
            }
            if site.water_meters > 0 {
                covered(r.water_key(), start, "*", (60 - water_missed).max(0))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn bump(
    tx: &rusqlite::Transaction<'_>,
    kind: &str,
    start_ms: i64,
    zone: &str,
) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "INSERT INTO coverage (kind, start_ms, zone, complete) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (kind, start_ms, zone) DO UPDATE SET complete = complete + 1",
    )?
    .execute(params![kind, start_ms, zone])?;
    let n = tx
        .prepare_cached(
            "SELECT complete FROM coverage WHERE kind = ?1 AND start_ms = ?2 AND zone = ?3",
        )?
        .query_row(params![kind, start_ms, zone], |r| r.get(0))?;
    Ok(n)
}

/// Adds a meter's count to one stored period of a zone and role: energy (J),
/// or for the `water` role volume (m³, in its own table).
fn add_energy(
    tx: &rusqlite::Transaction<'_>,
    r: Resolution,
    start_ms: i64,
    zone: &str,
    role: Role,
    joules: f64,
) -> Result<(), StoreError> {
    if role == Role::Water {
        tx.prepare_cached(
            "INSERT INTO water (resolution, start_ms, zone, volume_m3) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (resolution, start_ms, zone) DO UPDATE SET volume_m3 = volume_m3 + excluded.volume_m3",
        )?
        .execute(params![r.key(), start_ms, zone, joules])?;
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO energy (resolution, start_ms, zone, role, joules) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (resolution, start_ms, zone, role) DO UPDATE SET joules = joules + excluded.joules",
    )?
    .execute(params![r.key(), start_ms, zone, role.as_str(), joules])?;
    Ok(())
}

/// Adds one meter-minute to its minute, hour and day, and when it completes
/// the zone's or the site's set of facility and IT meters for that minute,
/// counts a complete minute; when it completes the site's set of water
/// meters, a complete water minute.
fn add_minute(
    tx: &rusqlite::Transaction<'_>,
    site: &Site,
    role: Role,
    zone: &str,
    w: &MinuteEnergy,
) -> Result<(), StoreError> {
    let periods = [Resolution::Minute, Resolution::Hour, Resolution::Day];
    for r in periods {
        add_energy(tx, r, r.floor(w.minute_ms), zone, role, w.joules)?;
    }
    if w.complete && role == Role::Water {
        if bump(tx, "water_meters", w.minute_ms, "*")? == site.water_meters as i64 {
            for r in periods {
                bump(tx, r.water_key(), r.floor(w.minute_ms), "*")?;
            }
        }
        return Ok(());
    }
    if !(w.complete && matches!(role, Role::Facility | Role::It)) {
        return Ok(());
    }
    let in_zone = bump(tx, "meters", w.minute_ms, zone)?;
    if in_zone != site.required_per_zone.get(zone).copied().unwrap_or(0) as i64 {
        return Ok(());
    }
    for r in periods {
        bump(tx, r.key(), r.floor(w.minute_ms), zone)?;
    }
    let site_wide: i64 = tx
        .prepare_cached(
            "SELECT SUM(complete) FROM coverage WHERE kind = 'meters' AND start_ms = ?1",
        )?
        .query_row(params![w.minute_ms], |r| r.get(0))?;
    if site_wide == site.required_per_zone.values().sum::<usize>() as i64 {
        for r in periods {
            bump(tx, r.key(), r.floor(w.minute_ms), "*")?;
        }
        // A complete minute whose PUE is impossible or implausible is counted.
        let (facility, it): (Option<f64>, Option<f64>) = tx
            .prepare_cached(
                "SELECT SUM(CASE WHEN role = 'facility' THEN joules END), SUM(CASE WHEN role = 'it' THEN joules END)
                 FROM energy WHERE resolution = 'minute' AND start_ms = ?1",
            )?
            .query_row(params![w.minute_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let floor = site.pue_it_floor_watts * 60.0;
        if let Err(crate::pue::NoPue::Invalid(_)) = crate::pue::pue(
            facility.unwrap_or(0.0),
            it.unwrap_or(0.0),
            floor,
            site.pue_max_ratio,
        ) {
            bump(tx, "invalid_pue", 0, "*")?;
        }
    }
    Ok(())
}
