//! Superchip module energy billed to the leases holding its GPUs.
//!
//! A Grace-Blackwell module's power scope holds its two GPUs, its Grace CPU,
//! its LPDDR and the board. Per closed UTC minute, the module's energy (its
//! agent-integrated counter, judged by [`crate::energy::Counter::observe`]
//! and cut into minutes like a GPU's) **less its GPUs' energy of that
//! minute** (never below 0: the *module remainder*) is split among the
//! owners of its GPUs by GPU time, the unleased share to `_unleased`, and
//! added to their IT energy (`module_joules` in the ledger row).
//!
//! - Only complete module minutes are billed (readings bracket both edges,
//!   no gap, reset or rebase), as for node meters.
//! - A module-minute is shared once every GPU that names the module has its
//!   minute (GPU time ≥ its GPUs × 1 min), or [`NODE_WAIT_MS`] after a close
//!   first saw it; a later change (a late GPU minute) books only the
//!   difference, as an adjustment row.
//! - **Never twice with a node meter**: a metered node's remainder is the
//!   node meter's minute less its GPUs' energy **and less the module
//!   remainders shared for that node-minute** (never below 0), so the node's
//!   owners are billed the node meter's energy exactly when it exceeds the
//!   GPUs and modules. A module remainder shared after its node-minute marks
//!   the node-minute for an adjustment.
//! - [`NODE_KEEP_MS`] after a close first saw them, its rows go; a remainder
//!   never shared is added to the `unbooked_node_joules` total (exported as
//!   unbooked energy), never dropped in silence.
//!
//! Everything here runs in the ingest transaction (the minutes) or the
//! ledger's close (the sharing): a restart loses nothing.

use rusqlite::params;

use dcwatt_wire::time::{HOUR_MS, MINUTE_MS};

use crate::energy::MinuteEnergy;
use crate::store::{add_unbooked_node_joules, StoreError};

/// How long after the close that first saw a metered node-minute it is
/// kept, so that late GPU minutes adjust its share (ms).
pub const NODE_KEEP_MS: i64 = HOUR_MS;
/// How long after the close that first saw it a node-minute waits for GPUs
/// of the node that have not reported their minute (then taken as down), ms.
pub const NODE_WAIT_MS: i64 = 300_000;

/// The module tables.
pub const SCHEMA: &str = "
-- Superchip modules: their persisted state (counter, minute cutter, GPUs).
CREATE TABLE IF NOT EXISTS modules (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (node, id)
) WITHOUT ROWID;
-- A module's complete minutes (J) with the GPUs that name it
-- (`gpus_expected`); `shared` as node_open; `rest`: the module remainder
-- last shared, J (what a node-minute's remainder is reduced by).
CREATE TABLE IF NOT EXISTS module_open (
    minute_ms INTEGER NOT NULL,
    node TEXT NOT NULL,
    module TEXT NOT NULL,
    module_joules REAL NOT NULL,
    gpus_expected INTEGER,
    shared INTEGER NOT NULL DEFAULT 0,
    rest REAL NOT NULL DEFAULT 0,
    seen_ms INTEGER,
    PRIMARY KEY (minute_ms, node, module)
) WITHOUT ROWID;
-- Each owner's GPU energy and time in a module-minute; `booked`: its share
-- of the module remainder booked so far, J.
CREATE TABLE IF NOT EXISTS module_gpu (
    minute_ms INTEGER NOT NULL,
    node TEXT NOT NULL,
    module TEXT NOT NULL,
    owner TEXT NOT NULL,
    gpu_joules REAL NOT NULL,
    gpu_ms INTEGER NOT NULL,
    booked REAL NOT NULL DEFAULT 0,
    seen_ms INTEGER,
    PRIMARY KEY (minute_ms, node, module, owner)
) WITHOUT ROWID;
";

/// One GPU-minute of a GPU in a module: (UUID, node, module, minute).
pub type GpuModuleMinute = (String, String, String, MinuteEnergy);

/// Writes one batch's module rows (inside its transaction): the modules'
/// state, their complete minutes `(node, module, minute, GPUs naming it)`
/// and their GPUs' minutes, split among the GPUs' owners.
pub fn write(
    tx: &rusqlite::Transaction<'_>,
    site: &crate::site::Site,
    states: &[(String, String, String)],
    minutes: &[(String, String, MinuteEnergy, i64)],
    gpu_minutes: &[GpuModuleMinute],
) -> Result<(), StoreError> {
    for (node, id, json) in states {
        tx.prepare_cached(
            "INSERT INTO modules (node, id, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (node, id) DO UPDATE SET state = excluded.state",
        )?
        .execute(params![node, id, json])?;
    }
    for (node, module, w, gpus) in minutes.iter().filter(|m| m.2.complete) {
        tx.prepare_cached(
            "INSERT INTO module_open (minute_ms, node, module, module_joules, gpus_expected) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (minute_ms, node, module) DO UPDATE SET module_joules = module_joules + excluded.module_joules,
             shared = CASE WHEN shared = 1 THEN 2 ELSE shared END",
        )?
        .execute(params![w.minute_ms, node, module, w.joules, gpus])?;
    }
    for (uuid, node, module, w) in gpu_minutes {
        let end = w.minute_ms + MINUTE_MS;
        for (owner, joules, ms) in site
            .leases
            .attribute(node, uuid, w.minute_ms, end, w.joules)
        {
            tx.prepare_cached(
                "INSERT INTO module_gpu (minute_ms, node, module, owner, gpu_joules, gpu_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (minute_ms, node, module, owner) DO UPDATE SET
                 gpu_joules = gpu_joules + excluded.gpu_joules, gpu_ms = gpu_ms + excluded.gpu_ms",
            )?
            .execute(params![w.minute_ms, node, module, owner, joules, ms])?;
        }
        tx.prepare_cached(
            "UPDATE module_open SET shared = 2 WHERE minute_ms = ?1 AND node = ?2 AND module = ?3 AND shared = 1",
        )?
        .execute(params![w.minute_ms, node, module])?;
    }
    Ok(())
}

/// Shares each module-minute up to `cutoff` among the owners of its GPUs
/// (see the module documentation); runs in the ledger's close, before the
/// node remainders.
pub fn share(tx: &rusqlite::Transaction<'_>, cutoff: i64, now_ms: i64) -> Result<(), StoreError> {
    for table in ["module_open", "module_gpu"] {
        tx.execute(
            &format!("UPDATE {table} SET seen_ms = ?1 WHERE seen_ms IS NULL AND minute_ms <= ?2"),
            params![now_ms, cutoff],
        )?;
    }
    type ModuleMinute = (i64, String, String, f64, Option<i64>, i64, i64, f64);
    let open: Vec<ModuleMinute> = tx
        .prepare_cached(
            "SELECT minute_ms, node, module, module_joules, gpus_expected, shared, seen_ms, rest FROM module_open
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
                r.get(6)?,
                r.get(7)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (minute, node, module, module_joules, expected, shared, seen, old_rest) in open {
        let owners: Vec<(String, f64, i64, f64)> = tx
            .prepare_cached(
                "SELECT owner, gpu_joules, gpu_ms, booked FROM module_gpu
                 WHERE minute_ms = ?1 AND node = ?2 AND module = ?3 ORDER BY owner",
            )?
            .query_map(params![minute, node, module], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let gpu_joules: f64 = owners.iter().map(|o| o.1).sum();
        let gpu_ms: i64 = owners.iter().map(|o| o.2).sum();
        let all_in = expected.is_some_and(|n| n > 0 && gpu_ms >= n.saturating_mul(MINUTE_MS));
        let ready = shared == 2 || all_in || seen <= now_ms.saturating_sub(NODE_WAIT_MS);
        if !ready || gpu_ms <= 0 {
            continue;
        }
        let rest = (module_joules - gpu_joules).max(0.0);
        let split = split_by_time(rest, &owners);
        for ((owner, _, _, booked), share) in owners.iter().zip(split) {
            let delta = share - booked;
            if delta != 0.0 {
                tx.prepare_cached(
                    "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms, module_joules) VALUES (?1, ?2, ?3, 0, ?3)
                     ON CONFLICT (minute_ms, tenant) DO UPDATE SET
                     it_joules = it_joules + excluded.it_joules,
                     module_joules = COALESCE(module_joules, 0) + excluded.module_joules",
                )?
                .execute(params![minute, owner, delta])?;
                tx.prepare_cached(
                    "UPDATE module_gpu SET booked = ?5 WHERE minute_ms = ?1 AND node = ?2 AND module = ?3 AND owner = ?4",
                )?
                .execute(params![minute, node, module, owner, share])?;
            }
        }
        tx.prepare_cached(
            "UPDATE module_open SET shared = 1, rest = ?4 WHERE minute_ms = ?1 AND node = ?2 AND module = ?3",
        )?
        .execute(params![minute, node, module, rest])?;
        if rest != old_rest {
            // The node-minute's remainder leaves the module remainders out:
            // share it again if it was shared.
            tx.prepare_cached(
                "UPDATE node_open SET shared = 2 WHERE minute_ms = ?1 AND node = ?2 AND shared = 1",
            )?
            .execute(params![minute, node])?;
        }
    }
    let expired = now_ms.saturating_sub(NODE_KEEP_MS);
    let unbooked: f64 = tx.query_row(
        "SELECT COALESCE(SUM(MAX(o.module_joules - COALESCE(
             (SELECT SUM(g.gpu_joules) FROM module_gpu g
              WHERE g.minute_ms = o.minute_ms AND g.node = o.node AND g.module = o.module), 0), 0)), 0)
         FROM module_open o WHERE o.shared = 0 AND o.seen_ms <= ?1",
        params![expired],
        |r| r.get(0),
    )?;
    add_unbooked_node_joules(tx, unbooked)?;
    tx.execute(
        "DELETE FROM module_open WHERE seen_ms <= ?1",
        params![expired],
    )?;
    tx.execute(
        "DELETE FROM module_gpu WHERE seen_ms <= ?1",
        params![expired],
    )?;
    Ok(())
}

/// The module remainders shared for a node-minute, J: what its node
/// meter's remainder leaves out.
pub fn shared_rest(
    tx: &rusqlite::Transaction<'_>,
    minute_ms: i64,
    node: &str,
) -> Result<f64, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT COALESCE(SUM(rest), 0) FROM module_open WHERE minute_ms = ?1 AND node = ?2 AND shared != 0",
        )?
        .query_row(params![minute_ms, node], |r| r.get(0))?)
}

/// `rest` split by the owners' GPU time (`.2`), exactly: the last owner
/// takes what the others leave.
pub fn split_by_time(rest: f64, owners: &[(String, f64, i64, f64)]) -> Vec<f64> {
    let total: i64 = owners.iter().map(|o| o.2).sum();
    let mut given = 0.0;
    let mut out = Vec::with_capacity(owners.len());
    for (i, (_, _, ms, _)) in owners.iter().enumerate() {
        let share = if i + 1 == owners.len() {
            rest - given
        } else if total > 0 {
            rest * *ms as f64 / total as f64
        } else {
            0.0
        };
        given += share;
        out.push(share);
    }
    out
}

/// A statement's activity section as CSV lines (after the daily lines).
pub fn activity_csv(a: &dcwatt_verify::activity::Activity) -> String {
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let (names, values): (Vec<&str>, Vec<String>) =
        a.fields().into_iter().map(|(n, v)| (n, opt(v))).unzip();
    format!("# activity\n{}\n{}\n", names.join(","), values.join(","))
}
