//! The tenant ledger: an append-only, hash-chained table of energy booked per
//! UTC minute and owner (tenant, unleased, unattributed), in the collector's
//! SQLite file.
//!
//! GPU-minutes are attributed as their batches are committed, into an open
//! table (`tenant_open`). Once a minute is `close_after` old, its open rows are
//! booked into `ledger` with the minute's PUE and the hash of the previous row,
//! and removed from the open table, in one transaction. GPU data arriving for a
//! minute already booked is booked in a later row for the same minute, flagged
//! `late`; conservation holds over all rows of a minute.
//!
//! Each row's hash is SHA-256 over its id, content and the previous row's hash,
//! so an edited, deleted or reordered row breaks the chain where it happened.
//! The same canonical bytes ([`Row::canonical`]) are the leaves of an RFC 9162
//! Merkle tree whose signed heads tenants keep ([`crate::transparency`]).
//!
//! Append-only: triggers refuse every UPDATE and DELETE of booked rows, of the
//! tree's nodes and of the signed checkpoints, in new and existing databases
//! alike (the schema below runs at every open). Nothing prunes them.
//!
//! Facility-burdened energy = IT energy × the PUE of the same minute when that
//! minute is complete (`pue_basis = "minute"`); otherwise the trailing 24 h PUE
//! if that window is complete (`"24h"`); otherwise none (`"none"`, no
//! facility energy in the row).
//!
//! Size: the ledger's schema, row format, chaining, the minute close that
//! books it and the totals read from it share one table and its invariants.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use dcwatt_wire::time::MINUTE_MS;

use crate::energy::MinuteEnergy;
use crate::pue;
use crate::site::Site;
use crate::store::{add_unbooked_node_joules, Store, StoreError};

/// The ledger's tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenant_open (
    minute_ms INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    it_joules REAL NOT NULL,
    gpu_ms INTEGER NOT NULL,
    util_sum REAL NOT NULL DEFAULT 0,
    util_n REAL NOT NULL DEFAULT 0,
    peak_w REAL,
    excursions INTEGER NOT NULL DEFAULT 0,
    node_joules REAL,
    available_ms INTEGER,
    degraded_ms INTEGER,
    down_ms INTEGER,
    unknown_ms INTEGER,
    sm_sum REAL NOT NULL DEFAULT 0,
    sm_n REAL NOT NULL DEFAULT 0,
    tensor_sum REAL NOT NULL DEFAULT 0,
    tensor_n REAL NOT NULL DEFAULT 0,
    idle_joules REAL,
    module_joules REAL,
    PRIMARY KEY (minute_ms, tenant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    minute_ms INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    it_joules REAL NOT NULL,
    facility_joules REAL,
    pue REAL,
    pue_basis TEXT NOT NULL,
    gpu_ms INTEGER NOT NULL,
    late INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    util_mean REAL,
    peak_watts REAL,
    excursions INTEGER NOT NULL DEFAULT 0,
    node_joules REAL,
    available_ms INTEGER,
    degraded_ms INTEGER,
    down_ms INTEGER,
    unknown_ms INTEGER,
    delivery_digest TEXT,
    sm_active_mean REAL,
    tensor_active_mean REAL,
    idle_joules REAL,
    module_joules REAL
);
CREATE INDEX IF NOT EXISTS ledger_tenant ON ledger (tenant, minute_ms);
-- Metered nodes: the node meter's energy per minute (with the GPUs its agent
-- reports: `gpus_expected`), and each owner's GPU energy and time on the
-- node, kept NODE_KEEP_MS after a close first saw them (`seen_ms`) so that
-- late GPU minutes adjust what was shared. `shared`: 0 not yet, 1 shared,
-- 2 shared but changed since (to be adjusted); `booked`: the owner's share
-- booked so far, J.
CREATE TABLE IF NOT EXISTS node_open (
    minute_ms INTEGER NOT NULL,
    node TEXT NOT NULL,
    meter_joules REAL NOT NULL,
    gpus_expected INTEGER,
    shared INTEGER NOT NULL DEFAULT 0,
    seen_ms INTEGER,
    PRIMARY KEY (minute_ms, node)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS node_gpu (
    minute_ms INTEGER NOT NULL,
    node TEXT NOT NULL,
    owner TEXT NOT NULL,
    gpu_joules REAL NOT NULL,
    gpu_ms INTEGER NOT NULL,
    booked REAL NOT NULL DEFAULT 0,
    seen_ms INTEGER,
    PRIMARY KEY (minute_ms, node, owner)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_minute ON ledger (minute_ms);
-- Append-only for real: booked rows are never updated nor deleted (a
-- correction is a new row); created at every open, so an existing database
-- gains them too. Retention never prunes the ledger.
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: booked rows cannot be updated'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: booked rows cannot be deleted'); END;
-- The ledger's Merkle tree (RFC 9162) over the rows (leaf index = row id -
-- 1): every complete node of levels 4, 8, 12, ... (one per 16 rows, fewer
-- above); leaves and the levels between come from the rows themselves.
-- Append-only like the ledger.
CREATE TABLE IF NOT EXISTS ledger_tree (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS ledger_tree_no_update BEFORE UPDATE ON ledger_tree
BEGIN SELECT RAISE(ABORT, 'the ledger tree is append-only: nodes cannot be updated'); END;
CREATE TRIGGER IF NOT EXISTS ledger_tree_no_delete BEFORE DELETE ON ledger_tree
BEGIN SELECT RAISE(ABORT, 'the ledger tree is append-only: nodes cannot be deleted'); END;
-- Signed checkpoints (tree heads), one per closed UTC hour; append-only.
CREATE TABLE IF NOT EXISTS ledger_checkpoint (
    hour_ms INTEGER PRIMARY KEY,
    tree_size INTEGER NOT NULL,
    root_hash TEXT NOT NULL,
    collector_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS ledger_checkpoint_no_update BEFORE UPDATE ON ledger_checkpoint
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: they cannot be updated'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoint_no_delete BEFORE DELETE ON ledger_checkpoint
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: they cannot be deleted'); END;
";

pub use dcwatt_verify::row::{Row, GENESIS};

use super::rows::{read_row, ROW_COLUMNS};

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    /// Rows checked.
    pub rows: i64,
    /// The last row's hash (the head), or the genesis hash.
    pub head: String,
    /// The first break, if any: which row and what is wrong.
    pub broken: Option<String>,
}

/// Attributes GPU-minutes into the open table (inside the batch's transaction).
pub fn attribute(
    tx: &rusqlite::Transaction<'_>,
    site: &Site,
    minutes: &[(String, String, MinuteEnergy)],
) -> Result<(), StoreError> {
    for (uuid, node, w) in minutes {
        let end = w.minute_ms + MINUTE_MS;
        for (owner, joules, ms) in site
            .leases
            .attribute(node, uuid, w.minute_ms, end, w.joules)
        {
            // Time is counted for tenants only: unleased GPU time is not "leased".
            let leased_ms = if owner.starts_with('_') { 0 } else { ms };
            tx.prepare_cached(
                "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (minute_ms, tenant) DO UPDATE SET
                 it_joules = it_joules + excluded.it_joules, gpu_ms = gpu_ms + excluded.gpu_ms",
            )?
            .execute(params![w.minute_ms, owner, joules, leased_ms])?;
            if site.metered_nodes.contains(node) {
                tx.prepare_cached(
                    "INSERT INTO node_gpu (minute_ms, node, owner, gpu_joules, gpu_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (minute_ms, node, owner) DO UPDATE SET
                     gpu_joules = gpu_joules + excluded.gpu_joules, gpu_ms = gpu_ms + excluded.gpu_ms",
                )?
                .execute(params![w.minute_ms, node, owner, joules, ms])?;
                tx.prepare_cached(
                    "UPDATE node_open SET shared = 2 WHERE minute_ms = ?1 AND node = ?2 AND shared = 1",
                )?
                .execute(params![w.minute_ms, node])?;
            }
        }
    }
    Ok(())
}

pub use crate::store::modules::{NODE_KEEP_MS, NODE_WAIT_MS};

/// Shares each metered node-minute up to `cutoff` among the owners of its
/// GPUs: the node meter's energy less its GPUs' energy (never below 0), split
/// by GPU time, added to the owners' IT energy (`node_joules`).
///
/// - A minute is shared once every GPU its agent reports has its minute
///   (GPU time ≥ the GPUs × 1 min), or [`NODE_WAIT_MS`] after a close first
///   saw it (the silent ones are taken as down).
/// - A shared minute that changes (a late GPU minute, more meter energy)
///   is shared again and only the difference is booked: an adjustment row
///   (booked late), never a second full count.
/// - [`NODE_KEEP_MS`] after a close first saw them, its rows go; a
///   remainder never shared (no GPU time to share it by) is added to the
///   `unbooked_node_joules` total, never dropped in silence.
fn share_nodes(tx: &rusqlite::Transaction<'_>, cutoff: i64, now_ms: i64) -> Result<(), StoreError> {
    for table in ["node_open", "node_gpu"] {
        tx.execute(
            &format!("UPDATE {table} SET seen_ms = ?1 WHERE seen_ms IS NULL AND minute_ms <= ?2"),
            params![now_ms, cutoff],
        )?;
    }
    type NodeMinute = (i64, String, f64, Option<i64>, i64, i64);
    let nodes: Vec<NodeMinute> = tx
        .prepare_cached(
            "SELECT minute_ms, node, meter_joules, gpus_expected, shared, seen_ms FROM node_open
             WHERE minute_ms <= ?1 AND shared != 1",
        )?
        .query_map(params![cutoff], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (minute, node, meter_joules, expected, shared, seen) in nodes {
        let owners: Vec<(String, f64, i64, f64)> = tx
            .prepare_cached(
                "SELECT owner, gpu_joules, gpu_ms, booked FROM node_gpu WHERE minute_ms = ?1 AND node = ?2 ORDER BY owner",
            )?
            .query_map(params![minute, node], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let gpu_joules: f64 = owners.iter().map(|o| o.1).sum();
        let gpu_ms: i64 = owners.iter().map(|o| o.2).sum();
        let all_in = expected.is_some_and(|n| gpu_ms >= n.saturating_mul(MINUTE_MS));
        let ready = shared == 2 || all_in || seen <= now_ms.saturating_sub(NODE_WAIT_MS);
        if !ready || gpu_ms <= 0 {
            continue;
        }
        // The module remainders of the node-minute are billed as module
        // energy (crate::store::modules): never twice.
        let modules = crate::store::modules::shared_rest(tx, minute, &node)?;
        let rest = (meter_joules - gpu_joules - modules).max(0.0);
        // Exact: the last owner takes the remainder.
        let split = crate::store::modules::split_by_time(rest, &owners);
        for ((owner, _, _, booked), share) in owners.iter().zip(split) {
            let delta = share - booked;
            if delta != 0.0 {
                tx.prepare_cached(
                    "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms, node_joules) VALUES (?1, ?2, ?3, 0, ?3)
                     ON CONFLICT (minute_ms, tenant) DO UPDATE SET
                     it_joules = it_joules + excluded.it_joules,
                     node_joules = COALESCE(node_joules, 0) + excluded.node_joules",
                )?
                .execute(params![minute, owner, delta])?;
                tx.prepare_cached(
                    "UPDATE node_gpu SET booked = ?4 WHERE minute_ms = ?1 AND node = ?2 AND owner = ?3",
                )?
                .execute(params![minute, node, owner, share])?;
            }
        }
        tx.prepare_cached("UPDATE node_open SET shared = 1 WHERE minute_ms = ?1 AND node = ?2")?
            .execute(params![minute, node])?;
    }
    // Rows past keeping go; what was never shared is counted, not dropped.
    let expired = now_ms.saturating_sub(NODE_KEEP_MS);
    let unbooked: f64 = tx.query_row(
        "SELECT COALESCE(SUM(MAX(o.meter_joules - COALESCE(
             (SELECT SUM(g.gpu_joules) FROM node_gpu g WHERE g.minute_ms = o.minute_ms AND g.node = o.node), 0), 0)), 0)
         FROM node_open o WHERE o.shared = 0 AND o.seen_ms <= ?1",
        params![expired],
        |r| r.get(0),
    )?;
    add_unbooked_node_joules(tx, unbooked)?;
    tx.execute(
        "DELETE FROM node_open WHERE seen_ms <= ?1",
        params![expired],
    )?;
    tx.execute("DELETE FROM node_gpu WHERE seen_ms <= ?1", params![expired])?;
    Ok(())
}

/// Books GPU-minute statistics (utilization, peak power) into the open table,
/// shared among the minute's owners by time (utilization) or in full (peak:
/// who held the GPU at its peak is not known within the minute).
pub fn attribute_stats(
    tx: &rusqlite::Transaction<'_>,
    site: &Site,
    stats: &[(String, String, crate::state::GpuMinuteStats)],
) -> Result<(), StoreError> {
    for (uuid, node, st) in stats {
        for (owner, ms) in site
            .leases
            .split(node, uuid, st.minute_ms, st.minute_ms + MINUTE_MS)
        {
            if ms <= 0 {
                continue;
            }
            let frac = ms as f64 / MINUTE_MS as f64;
            // Activity: each GPU's minute mean weighted by the owner's GPU
            // time of it; idle energy shared by time like the GPU's energy,
            // present wherever the GPU has GPM.
            let mean = |sum: f64, n: u32| (n > 0).then(|| sum / f64::from(n));
            let (sm, tensor) = (mean(st.sm_sum, st.sm_n), mean(st.tensor_sum, st.tensor_n));
            let idle = (st.sm_n > 0 || st.idle_joules > 0.0).then_some(st.idle_joules * frac);
            tx.prepare_cached(
                "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms, util_sum, util_n, peak_w,
                 sm_sum, sm_n, tensor_sum, tensor_n, idle_joules)
                 VALUES (?1, ?2, 0, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (minute_ms, tenant) DO UPDATE SET
                 util_sum = util_sum + excluded.util_sum, util_n = util_n + excluded.util_n,
                 peak_w = CASE WHEN excluded.peak_w IS NULL THEN peak_w
                               ELSE COALESCE(peak_w, 0) + excluded.peak_w END,
                 sm_sum = sm_sum + excluded.sm_sum, sm_n = sm_n + excluded.sm_n,
                 tensor_sum = tensor_sum + excluded.tensor_sum, tensor_n = tensor_n + excluded.tensor_n,
                 idle_joules = CASE WHEN excluded.idle_joules IS NULL THEN idle_joules
                               ELSE COALESCE(idle_joules, 0) + excluded.idle_joules END",
            )?
            .execute(params![
                st.minute_ms,
                owner,
                st.util_sum * frac,
                f64::from(st.util_n) * frac,
                st.peak_w,
                sm.map_or(0.0, |m| m * frac),
                if sm.is_some() { frac } else { 0.0 },
                tensor.map_or(0.0, |m| m * frac),
                if tensor.is_some() { frac } else { 0.0 },
                idle
            ])?;
        }
    }
    Ok(())
}

/// Books a thermal excursion to the tenant it belongs to, in the minute it started.
pub fn attribute_excursion(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    opened_ms: i64,
) -> Result<(), StoreError> {
    let minute = opened_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
    tx.prepare_cached(
        "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms, excursions) VALUES (?1, ?2, 0, 0, 1)
         ON CONFLICT (minute_ms, tenant) DO UPDATE SET excursions = excursions + 1",
    )?
    .execute(params![minute, tenant])?;
    Ok(())
}

impl Store {
    /// Books every open minute at least `close_after` old into the chain.
    /// `fallback_pue` is the trailing 24 h PUE, when that window is complete.
    /// Returns the number of rows booked.
    pub fn close_minutes(
        &mut self,
        site: &Site,
        now_ms: i64,
        fallback_pue: Option<f64>,
    ) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let cutoff = now_ms - MINUTE_MS - site.close_after_ms;
        crate::store::modules::share(&tx, cutoff, now_ms)?;
        share_nodes(&tx, cutoff, now_ms)?;
        let open: Vec<OpenRow> = tx
            .prepare_cached(
                "SELECT minute_ms, tenant, it_joules, gpu_ms, util_sum, util_n, peak_w, excursions, node_joules,
                 available_ms, degraded_ms, down_ms, unknown_ms, sm_sum, sm_n, tensor_sum, tensor_n, idle_joules, module_joules
                 FROM tenant_open
                 WHERE minute_ms <= ?1 ORDER BY minute_ms, tenant",
            )?
            .query_map(params![cutoff], |r| {
                Ok(OpenRow {
                    minute_ms: r.get(0)?,
                    tenant: r.get(1)?,
                    it_joules: r.get(2)?,
                    gpu_ms: r.get(3)?,
                    util_sum: r.get(4)?,
                    util_n: r.get(5)?,
                    peak_w: r.get(6)?,
                    excursions: r.get(7)?,
                    node_joules: r.get(8)?,
                    delivery: [r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?],
                    activity: [r.get(13)?, r.get(14)?, r.get(15)?, r.get(16)?],
                    idle_joules: r.get(17)?,
                    module_joules: r.get(18)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let (mut last_id, mut prev_hash): (i64, String) = tx
            .query_row(
                "SELECT id, hash FROM ledger ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, GENESIS.to_owned()));
        let mut leaves = Vec::new();
        let mut pue_of_minute: Option<(i64, Option<f64>, bool)> = None;
        for o in open {
            let OpenRow {
                minute_ms,
                tenant,
                it_joules,
                gpu_ms,
                ..
            } = o;
            if pue_of_minute.is_none_or(|(m, ..)| m != minute_ms) {
                let was_booked: bool = tx
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM ledger WHERE minute_ms = ?1)")?
                    .query_row(params![minute_ms], |r| r.get(0))?;
                pue_of_minute = Some((minute_ms, minute_pue(&tx, site, minute_ms)?, was_booked));
            }
            let (_, minute, late) = pue_of_minute.unwrap_or((minute_ms, None, false));
            let (pue, basis) = match (minute, fallback_pue) {
                (Some(p), _) => (Some(p), "minute"),
                (None, Some(p)) => (Some(p), "24h"),
                (None, None) => (None, "none"),
            };
            last_id += 1;
            // Service levels: the counts, and the list of GPUs not available
            // (hashed into the row through its digest).
            let (delivery, entries) = if o.delivery.iter().any(Option::is_some) {
                let entries = super::delivery::open_entries(&tx, minute_ms, &tenant)?;
                let [a, dg, dn, u] = o.delivery.map(|v| v.unwrap_or(0));
                let d = dcwatt_verify::row::Delivery {
                    available_ms: a,
                    degraded_ms: dg,
                    down_ms: dn,
                    unknown_ms: u,
                    digest: dcwatt_verify::row::delivery_digest(&entries),
                    gpus: Vec::new(),
                };
                (Some(d), entries)
            } else {
                (None, Vec::new())
            };
            let mut row = Row {
                id: last_id,
                minute_ms,
                tenant,
                it_joules,
                facility_joules: pue.map(|p| it_joules * p),
                pue,
                pue_basis: basis.to_owned(),
                gpu_ms,
                late,
                prev_hash: prev_hash.clone(),
                hash: String::new(),
                util_mean: (o.util_n > 0.0).then(|| (o.util_sum / o.util_n).clamp(0.0, 1.0)),
                peak_watts: o.peak_w,
                excursions: o.excursions,
                node_joules: o.node_joules,
                delivery,
                sm_active_mean: (o.activity[1] > 0.0)
                    .then(|| (o.activity[0] / o.activity[1]).clamp(0.0, 1.0)),
                tensor_active_mean: (o.activity[3] > 0.0)
                    .then(|| (o.activity[2] / o.activity[3]).clamp(0.0, 1.0)),
                idle_joules: o.idle_joules,
                module_joules: o.module_joules,
            };
            let (hash, leaf) = row.hashes();
            row.hash = hash;
            leaves.push((row.id, leaf));
            tx.prepare_cached(
                "INSERT INTO ledger (id, minute_ms, tenant, it_joules, facility_joules, pue, pue_basis, gpu_ms, late, prev_hash, hash, util_mean, peak_watts, excursions, node_joules,
                 available_ms, degraded_ms, down_ms, unknown_ms, delivery_digest, sm_active_mean, tensor_active_mean, idle_joules, module_joules)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
            )?
            .execute(params![
                row.id,
                row.minute_ms,
                row.tenant,
                row.it_joules,
                row.facility_joules,
                row.pue,
                row.pue_basis,
                row.gpu_ms,
                row.late,
                row.prev_hash,
                row.hash,
                row.util_mean,
                row.peak_watts,
                row.excursions,
                row.node_joules,
                row.delivery.as_ref().map(|d| d.available_ms),
                row.delivery.as_ref().map(|d| d.degraded_ms),
                row.delivery.as_ref().map(|d| d.down_ms),
                row.delivery.as_ref().map(|d| d.unknown_ms),
                row.delivery.as_ref().map(|d| d.digest.clone()),
                row.sm_active_mean,
                row.tensor_active_mean,
                row.idle_joules,
                row.module_joules
            ])?;
            super::delivery::book(&tx, row.id, &entries)?;
            prev_hash = row.hash;
        }
        tx.execute(
            "DELETE FROM tenant_open WHERE minute_ms <= ?1",
            params![cutoff],
        )?;
        super::delivery::close(&tx, cutoff)?;
        // The Merkle tree grows with the rows, in the same transaction.
        super::tree::extend_tree(&tx, &leaves)?;
        tx.commit()?;
        Ok(leaves.len())
    }

    /// Walks the whole chain and says where it first breaks.
    pub fn verify_ledger(&self) -> Result<Verification, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {ROW_COLUMNS} FROM ledger ORDER BY id"))?;
        let rows = stmt.query_map([], read_row)?;
        let (mut expected_prev, mut expected_id, mut n) = (GENESIS.to_owned(), 1i64, 0i64);
        for row in rows {
            let row = row?;
            n += 1;
            let broken = if row.id != expected_id {
                Some(format!(
                    "row {}: expected row {expected_id} here: rows were deleted or reordered",
                    row.id
                ))
            } else if row.prev_hash != expected_prev {
                Some(format!(
                    "row {}: its previous hash does not match row {}'s hash",
                    row.id,
                    row.id - 1
                ))
            } else if row.compute_hash() != row.hash {
                Some(format!(
                    "row {}: its content does not match its hash: the row was edited",
                    row.id
                ))
            } else {
                None
            };
            if broken.is_some() {
                return Ok(Verification {
                    rows: n,
                    head: expected_prev,
                    broken,
                });
            }
            expected_prev = row.hash;
            expected_id += 1;
        }
        Ok(Verification {
            rows: n,
            head: expected_prev,
            broken: None,
        })
    }

    /// A tenant's rows in `[from_ms, to_ms)`, in chain order.
    pub fn tenant_rows(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM ledger WHERE tenant = ?1 AND minute_ms >= ?2 AND minute_ms < ?3 ORDER BY id"
        ))?;
        let rows = stmt
            .query_map(params![tenant, from_ms, to_ms], read_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Calls `f` with each of a tenant's rows booked for minutes in
    /// `[from_ms, to_ms)`, in booking order, one at a time (nothing is
    /// collected: a 400-day query holds one row in memory).
    pub fn for_each_tenant_row(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
        mut f: impl FnMut(Row),
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM ledger WHERE tenant = ?1 AND minute_ms >= ?2 AND minute_ms < ?3 ORDER BY id"
        ))?;
        for row in stmt.query_map(params![tenant, from_ms, to_ms], read_row)? {
            f(row?);
        }
        Ok(())
    }

    /// Totals per owner over the whole ledger.
    pub fn ledger_totals(&self) -> Result<Vec<TenantTotal>, StoreError> {
        Ok(self.ledger_totals_after(0)?.0)
    }

    /// Totals per owner of the rows after row `after_id`, and the last row's
    /// id (`after_id` when there is none). The ledger is append-only, so a
    /// reader keeps running totals by adding what was booked since.
    pub fn ledger_totals_after(
        &self,
        after_id: i64,
    ) -> Result<(Vec<TenantTotal>, i64), StoreError> {
        self.ledger_totals_since(after_id, i64::MAX)
    }

    /// As [`Store::ledger_totals_after`], with the GPU time per delivery
    /// state of the rows whose minute is at or after `month_ms` (the month
    /// to date) counted apart.
    pub fn ledger_totals_since(
        &self,
        after_id: i64,
        month_ms: i64,
    ) -> Result<(Vec<TenantTotal>, i64), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT tenant, SUM(it_joules), COALESCE(SUM(facility_joules), 0), SUM(gpu_ms), MAX(id),
             COALESCE(SUM(available_ms), 0), COALESCE(SUM(degraded_ms), 0), COALESCE(SUM(down_ms), 0), COALESCE(SUM(unknown_ms), 0),
             COALESCE(SUM(CASE WHEN minute_ms >= ?2 THEN available_ms END), 0),
             COALESCE(SUM(CASE WHEN minute_ms >= ?2 THEN degraded_ms END), 0),
             COALESCE(SUM(CASE WHEN minute_ms >= ?2 THEN down_ms END), 0),
             COALESCE(SUM(CASE WHEN minute_ms >= ?2 THEN unknown_ms END), 0)
             FROM ledger WHERE id > ?1 GROUP BY tenant",
        )?;
        let mut last = after_id;
        let rows = stmt
            .query_map(params![after_id, month_ms], |r| {
                Ok((
                    TenantTotal {
                        owner: r.get(0)?,
                        it_joules: r.get(1)?,
                        facility_joules: r.get(2)?,
                        gpu_ms: r.get(3)?,
                        delivery_ms: [r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?],
                        month_ms,
                        month_delivery_ms: [r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?],
                    },
                    r.get::<_, i64>(4)?,
                ))
            })?
            .map(|row| {
                row.map(|(t, id)| {
                    last = last.max(id);
                    t
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, last))
    }

    /// The hash of the last row (the head), or the genesis hash.
    pub fn ledger_head(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT hash FROM ledger ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_else(|| GENESIS.to_owned()))
    }
}

/// What the ledger booked to one owner: the running totals `/metrics` exports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantTotal {
    /// Tenant, `_unleased` or `_unattributed`.
    pub owner: String,
    /// IT energy, J.
    pub it_joules: f64,
    /// Facility energy (IT × PUE where a PUE was known), J.
    pub facility_joules: f64,
    /// Leased GPU time, ms.
    pub gpu_ms: i64,
    /// Leased GPU time per delivery state (available, degraded, down,
    /// unknown), ms.
    pub delivery_ms: [i64; 4],
    /// The start of the month `month_delivery_ms` counts (Unix ms).
    pub month_ms: i64,
    /// As `delivery_ms`, for the minutes of the month from `month_ms`.
    pub month_delivery_ms: [i64; 4],
}

impl TenantTotal {
    /// Adds another total of the same owner; a total of a later month
    /// starts the month's counts again.
    pub fn add(&mut self, other: &TenantTotal) {
        self.it_joules += other.it_joules;
        self.facility_joules += other.facility_joules;
        self.gpu_ms = self.gpu_ms.saturating_add(other.gpu_ms);
        for (a, b) in self.delivery_ms.iter_mut().zip(other.delivery_ms) {
            *a = a.saturating_add(b);
        }
        if other.month_ms > self.month_ms {
            self.month_ms = other.month_ms;
            self.month_delivery_ms = other.month_delivery_ms;
        } else if other.month_ms == self.month_ms {
            for (a, b) in self
                .month_delivery_ms
                .iter_mut()
                .zip(other.month_delivery_ms)
            {
                *a = a.saturating_add(b);
            }
        }
    }
}

/// One open (not yet booked) row of `tenant_open`.
struct OpenRow {
    minute_ms: i64,
    tenant: String,
    it_joules: f64,
    gpu_ms: i64,
    util_sum: f64,
    util_n: f64,
    peak_w: Option<f64>,
    excursions: i64,
    node_joules: Option<f64>,
    /// GPU time per delivery state (available, degraded, down, unknown), ms.
    delivery: [Option<i64>; 4],
    /// SM activity Σ and weight, tensor activity Σ and weight.
    activity: [f64; 4],
    idle_joules: Option<f64>,
    module_joules: Option<f64>,
}

/// Columns added in schema version 2, added to a version-1 database on open.
pub const MIGRATIONS: &[(&str, &str, &str)] = &[
    ("tenant_open", "util_sum", "REAL NOT NULL DEFAULT 0"),
    ("tenant_open", "util_n", "REAL NOT NULL DEFAULT 0"),
    ("tenant_open", "peak_w", "REAL"),
    ("tenant_open", "excursions", "INTEGER NOT NULL DEFAULT 0"),
    ("ledger", "util_mean", "REAL"),
    ("ledger", "peak_watts", "REAL"),
    ("ledger", "excursions", "INTEGER NOT NULL DEFAULT 0"),
    ("tenant_open", "node_joules", "REAL"),
    ("ledger", "node_joules", "REAL"),
    ("node_open", "gpus_expected", "INTEGER"),
    ("node_open", "shared", "INTEGER NOT NULL DEFAULT 0"),
    ("node_open", "seen_ms", "INTEGER"),
    ("node_gpu", "booked", "REAL NOT NULL DEFAULT 0"),
    ("node_gpu", "seen_ms", "INTEGER"),
    // GPU service levels (ledger v3): leased GPU time per delivery state.
    ("tenant_open", "available_ms", "INTEGER"),
    ("tenant_open", "degraded_ms", "INTEGER"),
    ("tenant_open", "down_ms", "INTEGER"),
    ("tenant_open", "unknown_ms", "INTEGER"),
    ("ledger", "available_ms", "INTEGER"),
    ("ledger", "degraded_ms", "INTEGER"),
    ("ledger", "down_ms", "INTEGER"),
    ("ledger", "unknown_ms", "INTEGER"),
    ("ledger", "delivery_digest", "TEXT"),
    // Activity, idle and module energy (ledger v4).
    ("tenant_open", "sm_sum", "REAL NOT NULL DEFAULT 0"),
    ("tenant_open", "sm_n", "REAL NOT NULL DEFAULT 0"),
    ("tenant_open", "tensor_sum", "REAL NOT NULL DEFAULT 0"),
    ("tenant_open", "tensor_n", "REAL NOT NULL DEFAULT 0"),
    ("tenant_open", "idle_joules", "REAL"),
    ("tenant_open", "module_joules", "REAL"),
    ("ledger", "sm_active_mean", "REAL"),
    ("ledger", "tensor_active_mean", "REAL"),
    ("ledger", "idle_joules", "REAL"),
    ("ledger", "module_joules", "REAL"),
];

/// The PUE of one complete minute, if it is complete and valid.
fn minute_pue(
    tx: &rusqlite::Transaction<'_>,
    site: &Site,
    minute_ms: i64,
) -> Result<Option<f64>, StoreError> {
    let complete: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM coverage WHERE kind = 'minute' AND zone = '*' AND start_ms = ?1)")?
        .query_row(params![minute_ms], |r| r.get(0))?;
    if !complete {
        return Ok(None);
    }
    let (facility, it): (Option<f64>, Option<f64>) = tx
        .prepare_cached(
            "SELECT SUM(CASE WHEN role = 'facility' THEN joules END), SUM(CASE WHEN role = 'it' THEN joules END)
             FROM energy WHERE resolution = 'minute' AND start_ms = ?1",
        )?
        .query_row(params![minute_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let floor = site.pue_it_floor_watts * 60.0;
    Ok(pue::pue(
        facility.unwrap_or(0.0),
        it.unwrap_or(0.0),
        floor,
        site.pue_max_ratio,
    )
    .ok())
}
