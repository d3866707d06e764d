//! Service levels as stored: the tables of GPUs not available per
//! tenant-minute (open, then booked with the ledger row), the attribution of
//! delivered minutes in the ingest transaction, and a tenant's service
//! levels read back (the rules and the report types are in
//! [`crate::delivery`]; the booking of silent GPUs' unknown minutes in
//! [`super::silence`]).

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use dcwatt_wire::time::MINUTE_MS;

use super::{Store, StoreError};
use crate::delivery::{
    in_power_event, ByCause, DeliveredMinute, DeliveryState, Incident, IncidentKind, LeaseService,
    Levels, Service, UNMATCHED_LEASE,
};
use crate::site::Site;

/// Tables: each tenant-minute's GPUs not available until it is booked
/// (`delivery_open`), and once booked (`ledger_delivery`, keyed by the
/// ledger row, append-only like the ledger).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS delivery_open (
    minute_ms INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    uuid TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    cause TEXT NOT NULL,
    ms INTEGER NOT NULL,
    PRIMARY KEY (minute_ms, tenant, uuid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_delivery (
    row_id INTEGER NOT NULL,
    uuid TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    cause TEXT NOT NULL,
    ms INTEGER NOT NULL,
    PRIMARY KEY (row_id, uuid)
) WITHOUT ROWID;
-- Every booked silence stretch [from_ms, through_ms) of a GPU (not only
-- its latest: late data for an older stretch must find it), pruned once
-- no reading old enough to fall in it can be accepted.
CREATE TABLE IF NOT EXISTS delivery_silence (
    uuid TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    through_ms INTEGER NOT NULL,
    PRIMARY KEY (uuid, from_ms)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS ledger_delivery_no_update BEFORE UPDATE ON ledger_delivery
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: delivery rows cannot be updated'); END;
CREATE TRIGGER IF NOT EXISTS ledger_delivery_no_delete BEFORE DELETE ON ledger_delivery
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: delivery rows cannot be deleted'); END;
";

/// Books judged GPU-minutes into the open table, split among their leases
/// (tenants only: unleased time has no service level).
pub fn attribute(
    tx: &rusqlite::Transaction<'_>,
    site: &Site,
    minutes: &[(String, String, DeliveredMinute)],
) -> Result<(), StoreError> {
    for (uuid, node, d) in minutes {
        if booked_silent(tx, uuid, d.minute_ms)? {
            // Booked `unknown` while the GPU was silent (data that come
            // later for it, e.g. replayed from a spool, change nothing).
            continue;
        }
        for (owner, ms) in site
            .leases
            .split(node, uuid, d.minute_ms, d.minute_ms + MINUTE_MS)
        {
            if ms <= 0 || owner.starts_with('_') {
                continue;
            }
            let col = d.state.column();
            // A declared power event of its zone: the facility's doing.
            let cause =
                if d.state != DeliveryState::Available && in_power_event(site, node, d.minute_ms) {
                    "facility"
                } else {
                    d.cause
                };
            tx.prepare_cached(&format!(
                "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms, {col}) VALUES (?1, ?2, 0, 0, ?3)
                 ON CONFLICT (minute_ms, tenant) DO UPDATE SET {col} = COALESCE({col}, 0) + excluded.{col}"
            ))?
            .execute(params![d.minute_ms, owner, ms])?;
            if d.state != DeliveryState::Available {
                tx.prepare_cached(
                    "INSERT INTO delivery_open (minute_ms, tenant, uuid, state, reason, cause, ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (minute_ms, tenant, uuid) DO UPDATE SET ms = ms + excluded.ms",
                )?
                .execute(params![
                    d.minute_ms,
                    owner,
                    uuid,
                    d.state.as_str(),
                    d.reason,
                    cause,
                    ms
                ])?;
            }
        }
    }
    Ok(())
}

/// True when the silence booking booked this GPU-minute.
fn booked_silent(
    tx: &rusqlite::Transaction<'_>,
    uuid: &str,
    minute_ms: i64,
) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT 1 FROM delivery_silence WHERE uuid = ?1 AND from_ms <= ?2 AND ?2 < through_ms",
        )?
        .query_row(params![uuid, minute_ms], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The open list of a tenant-minute's GPUs not available, sorted.
pub fn open_entries(
    tx: &rusqlite::Transaction<'_>,
    minute_ms: i64,
    tenant: &str,
) -> Result<Vec<dcwatt_verify::row::DeliveryEntry>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT uuid, state, reason, cause, ms FROM delivery_open WHERE minute_ms = ?1 AND tenant = ?2",
    )?;
    let mut v: Vec<_> = stmt
        .query_map(params![minute_ms, tenant], entry)?
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<dcwatt_verify::row::DeliveryEntry> {
    Ok(dcwatt_verify::row::DeliveryEntry {
        uuid: r.get(0)?,
        state: r.get(1)?,
        reason: r.get(2)?,
        cause: r.get(3)?,
        ms: r.get(4)?,
    })
}

/// Stores a booked row's list (in the booking transaction).
pub fn book(
    tx: &rusqlite::Transaction<'_>,
    row_id: i64,
    entries: &[dcwatt_verify::row::DeliveryEntry],
) -> Result<(), StoreError> {
    for e in entries {
        tx.prepare_cached(
            "INSERT INTO ledger_delivery (row_id, uuid, state, reason, cause, ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![row_id, e.uuid, e.state, e.reason, e.cause, e.ms])?;
    }
    Ok(())
}

/// Drops the open lists of the minutes booked.
pub fn close(tx: &rusqlite::Transaction<'_>, cutoff: i64) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM delivery_open WHERE minute_ms <= ?1",
        params![cutoff],
    )?;
    Ok(())
}

impl Store {
    /// A booked row's list of GPUs not available, sorted.
    pub fn delivery_entries(
        &self,
        row_id: i64,
    ) -> Result<Vec<dcwatt_verify::row::DeliveryEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT uuid, state, reason, cause, ms FROM ledger_delivery WHERE row_id = ?1",
        )?;
        let mut v: Vec<_> = stmt
            .query_map(params![row_id], entry)?
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    }
}

/// Per-lease ms per state, in [`DeliveryState::ALL`] order.
fn per_lease(
    store: &Store,
    site: &Site,
    tenant: &str,
    rows: &[dcwatt_verify::row::Row],
) -> Result<Vec<LeaseService>, StoreError> {
    let leases = site.leases.snapshot();
    let mine: Vec<&crate::tenants::Lease> =
        leases.all().iter().filter(|l| l.tenant == tenant).collect();
    let nodes: BTreeMap<String, String> = store
        .conn
        .prepare_cached("SELECT uuid, COALESCE(json_extract(state, '$.node'), '') FROM gpus")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    // The GPUs the collector knows each lease to cover.
    let gpus: Vec<i64> = mine
        .iter()
        .map(|l| nodes.iter().filter(|(u, n)| l.covers(n, u)).count() as i64)
        .collect();
    let mut ms: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    for r in rows {
        let Some(d) = r.delivery.as_ref() else {
            continue;
        };
        let (m, end) = (r.minute_ms, r.minute_ms + MINUTE_MS);
        // Each lease's non-available time in this minute.
        let mut not_available: BTreeMap<&str, i64> = BTreeMap::new();
        for e in &d.gpus {
            let node = nodes.get(&e.uuid).map_or("", String::as_str);
            let lease = [m, end - 1].into_iter().find_map(|t| {
                leases
                    .lease_at(node, &e.uuid, t)
                    .filter(|l| l.tenant == tenant)
            });
            let id = lease.map_or(UNMATCHED_LEASE, |l| l.id.as_str());
            *not_available.entry(id).or_default() += e.ms;
            let k = match e.state.as_str() {
                "degraded" => 1,
                "down" => 2,
                "unknown" => 3,
                _ => 0,
            };
            let slot = &mut ms.entry(id.to_owned()).or_default()[k];
            *slot = slot.saturating_add(e.ms);
        }
        // The available time, by the leases' GPU time in the minute less
        // their non-available time.
        let weights: Vec<(&str, i64)> = mine
            .iter()
            .zip(&gpus)
            .filter(|(l, _)| l.from_ms < end && m < l.to_ms)
            .map(|(l, n)| {
                let time = n * (l.to_ms.min(end) - l.from_ms.max(m));
                let off = not_available.get(l.id.as_str()).copied().unwrap_or(0);
                (l.id.as_str(), (time - off).max(0))
            })
            .collect();
        let total: i64 = weights.iter().map(|w| w.1).sum();
        let mut left = d.available_ms;
        if total <= 0 {
            let id = weights.first().map_or(UNMATCHED_LEASE, |w| w.0);
            ms.entry(id.to_owned()).or_default()[0] += left;
            continue;
        }
        for (i, (id, w)) in weights.iter().enumerate() {
            let part = if i + 1 == weights.len() {
                left
            } else {
                (i128::from(d.available_ms) * i128::from(*w) / i128::from(total)) as i64
            };
            left -= part;
            ms.entry((*id).to_owned()).or_default()[0] += part;
        }
    }
    let min = |v: i64| v as f64 / MINUTE_MS as f64;
    Ok(ms
        .into_iter()
        .map(|(id, [a, dg, dn, u])| {
            let lease = mine.iter().find(|l| l.id == id);
            let observed = a.saturating_add(dg).saturating_add(dn);
            LeaseService {
                from_ms: lease.map(|l| l.from_ms),
                to_ms: lease.map(|l| l.to_ms),
                id,
                leased_gpu_minutes: min(observed.saturating_add(u)),
                available_gpu_minutes: min(a),
                degraded_gpu_minutes: min(dg),
                down_gpu_minutes: min(dn),
                unknown_gpu_minutes: min(u),
                availability_ratio: (observed > 0)
                    .then(|| a.saturating_add(dg) as f64 / observed as f64),
            }
        })
        .collect())
}

impl Store {
    /// The non-available GPUs of a tenant's rows of minutes in
    /// `[from_ms, to_ms)`, by row id, each list sorted.
    pub fn tenant_delivery_entries(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<std::collections::BTreeMap<i64, Vec<dcwatt_verify::row::DeliveryEntry>>, StoreError>
    {
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.row_id, d.uuid, d.state, d.reason, d.cause, d.ms FROM ledger_delivery d
             JOIN ledger l ON l.id = d.row_id
             WHERE l.tenant = ?1 AND l.minute_ms >= ?2 AND l.minute_ms < ?3",
        )?;
        let mut out: std::collections::BTreeMap<i64, Vec<_>> = Default::default();
        for r in stmt.query_map(params![tenant, from_ms, to_ms], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                dcwatt_verify::row::DeliveryEntry {
                    uuid: r.get(1)?,
                    state: r.get(2)?,
                    reason: r.get(3)?,
                    cause: r.get(4)?,
                    ms: r.get(5)?,
                },
            ))
        })? {
            let (id, e) = r?;
            out.entry(id).or_default().push(e);
        }
        for v in out.values_mut() {
            v.sort();
        }
        Ok(out)
    }
}

/// Fills the rows' lists of non-available GPUs (statements carry them, so
/// a tenant can check each row's digest) and sums the tenant's service
/// levels; `None` when no row has delivery data.
pub fn service(
    store: &Store,
    site: &Site,
    tenant: &str,
    from_ms: i64,
    to_ms: i64,
    rows: &mut [dcwatt_verify::row::Row],
) -> Result<Option<Service>, StoreError> {
    if rows.iter().all(|r| r.delivery.is_none()) {
        return Ok(None);
    }
    let mut lists = store.tenant_delivery_entries(tenant, from_ms, to_ms)?;
    let mut ms = [0i64; 4];
    let (mut facility, mut gpu) = (ByCause::default(), ByCause::default());
    // (uuid, state, reason, cause) -> minutes (with ms)
    let mut runs: BTreeMap<IncidentKind, Vec<(i64, i64)>> = BTreeMap::new();
    for r in rows.iter_mut() {
        let Some(d) = r.delivery.as_mut() else {
            continue;
        };
        for (a, b) in ms
            .iter_mut()
            .zip([d.available_ms, d.degraded_ms, d.down_ms, d.unknown_ms])
        {
            *a = a.saturating_add(b);
        }
        d.gpus = lists.remove(&r.id).unwrap_or_default();
        for e in &d.gpus {
            let by = match e.cause.as_str() {
                "facility" => &mut facility,
                "gpu" => &mut gpu,
                _ => &mut ByCause::default(),
            };
            match e.state.as_str() {
                "degraded" => by.degraded_gpu_minutes += e.ms as f64 / MINUTE_MS as f64,
                "down" => by.down_gpu_minutes += e.ms as f64 / MINUTE_MS as f64,
                "unknown" => by.unknown_gpu_minutes += e.ms as f64 / MINUTE_MS as f64,
                _ => {}
            }
            runs.entry((
                e.uuid.clone(),
                e.state.clone(),
                e.reason.clone(),
                e.cause.clone(),
            ))
            .or_default()
            .push((r.minute_ms, e.ms));
        }
    }
    // Each GPU's consecutive minutes of one kind, then GPUs sharing a stretch.
    let mut merged: BTreeMap<(i64, i64, IncidentKind), (Vec<String>, i64)> = BTreeMap::new();
    for ((uuid, state, reason, cause), mut minutes) in runs {
        minutes.sort_unstable();
        let mut i = 0;
        while i < minutes.len() {
            let (start, mut total) = minutes[i];
            let mut end = start + MINUTE_MS;
            let mut j = i + 1;
            while j < minutes.len() && minutes[j].0 <= end {
                end = end.max(minutes[j].0 + MINUTE_MS);
                total += minutes[j].1;
                j += 1;
            }
            let kind = (String::new(), state.clone(), reason.clone(), cause.clone());
            let entry = merged.entry((start, end, kind)).or_default();
            entry.0.push(uuid.clone());
            entry.1 += total;
            i = j;
        }
    }
    let leases = per_lease(store, site, tenant, rows)?;
    let incidents = merged
        .into_iter()
        .map(
            |((start_ms, end_ms, (_, state, reason, cause)), (gpus, total))| Incident {
                start_ms,
                end_ms,
                state,
                reason,
                cause,
                gpus,
                gpu_minutes: total as f64 / MINUTE_MS as f64,
            },
        )
        .collect();
    let min = |v: i64| v as f64 / MINUTE_MS as f64;
    let [a, dg, dn, u] = ms;
    let observed = a.saturating_add(dg).saturating_add(dn);
    let ratio = |num: i64| (observed > 0).then(|| num as f64 / observed as f64);
    let availability_ratio = ratio(a.saturating_add(dg));
    let availability_target = site.availability_targets.get(tenant).copied();
    Ok(Some(Service {
        levels: Levels {
            leased_gpu_minutes: min(observed.saturating_add(u)),
            available_gpu_minutes: min(a),
            degraded_gpu_minutes: min(dg),
            down_gpu_minutes: min(dn),
            unknown_gpu_minutes: min(u),
            availability_ratio,
            undegraded_ratio: ratio(a),
            availability_target,
            target_met: availability_ratio
                .zip(availability_target)
                .map(|(r, t)| r >= t),
            facility,
            gpu,
        },
        incidents,
        leases,
    }))
}
