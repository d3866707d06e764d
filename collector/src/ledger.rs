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
//!
//! Facility-burdened energy = IT energy × the PUE of the same minute when that
//! minute is complete (`pue_basis = "minute"`); otherwise the trailing 24 h PUE
//! if that window is complete (`"24h"`); otherwise none (`"none"`, no
//! facility energy in the row).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Site;
use crate::energy::MinuteEnergy;
use crate::pue;
use crate::store::{Store, StoreError};

/// The ledger's tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenant_open (
    minute_ms INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    it_joules REAL NOT NULL,
    gpu_ms INTEGER NOT NULL,
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
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_tenant ON ledger (tenant, minute_ms);
CREATE INDEX IF NOT EXISTS ledger_minute ON ledger (minute_ms);
";

/// The previous hash of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One booked row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Position in the chain, from 1.
    pub id: i64,
    /// The UTC minute, Unix ms.
    pub minute_ms: i64,
    /// Tenant, `_unleased` or `_unattributed`.
    pub tenant: String,
    /// IT energy of its GPUs in the minute, J.
    pub it_joules: f64,
    /// IT energy × PUE, J, when a PUE was available.
    pub facility_joules: Option<f64>,
    /// The PUE applied.
    pub pue: Option<f64>,
    /// Where the PUE came from: `minute`, `24h` or `none`.
    pub pue_basis: String,
    /// GPU time leased in the minute, ms.
    pub gpu_ms: i64,
    /// Booked after an earlier row for the same minute (late data).
    pub late: bool,
    /// The previous row's hash.
    pub prev_hash: String,
    /// This row's hash.
    pub hash: String,
}

impl Row {
    /// The hash of this row's id and content after `prev_hash`.
    pub fn compute_hash(&self) -> String {
        let fac = self
            .facility_joules
            .map_or("-".to_owned(), |f| format!("{:016x}", f.to_bits()));
        let pue = self
            .pue
            .map_or("-".to_owned(), |p| format!("{:016x}", p.to_bits()));
        let content = format!(
            "dcwatt-ledger-v1|{}|{}|{}|{:016x}|{fac}|{pue}|{}|{}|{}|{}",
            self.id,
            self.minute_ms,
            self.tenant,
            self.it_joules.to_bits(),
            self.pue_basis,
            self.gpu_ms,
            u8::from(self.late),
            self.prev_hash
        );
        hex::encode(Sha256::digest(content.as_bytes()))
    }
}

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
        let end = w.minute_ms + 60_000;
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
        }
    }
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
        let cutoff = now_ms - 60_000 - site.close_after_ms;
        let open: Vec<(i64, String, f64, i64)> = tx
            .prepare_cached(
                "SELECT minute_ms, tenant, it_joules, gpu_ms FROM tenant_open
                 WHERE minute_ms <= ?1 ORDER BY minute_ms, tenant",
            )?
            .query_map(params![cutoff], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
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
        let mut booked = 0;
        let mut pue_of_minute: Option<(i64, Option<f64>, bool)> = None;
        for (minute_ms, tenant, it_joules, gpu_ms) in open {
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
            };
            row.hash = row.compute_hash();
            tx.prepare_cached(
                "INSERT INTO ledger (id, minute_ms, tenant, it_joules, facility_joules, pue, pue_basis, gpu_ms, late, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                row.hash
            ])?;
            prev_hash = row.hash;
            booked += 1;
        }
        tx.execute(
            "DELETE FROM tenant_open WHERE minute_ms <= ?1",
            params![cutoff],
        )?;
        tx.commit()?;
        Ok(booked)
    }

    /// Walks the whole chain and says where it first breaks.
    pub fn verify_ledger(&self) -> Result<Verification, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, minute_ms, tenant, it_joules, facility_joules, pue, pue_basis, gpu_ms, late, prev_hash, hash
             FROM ledger ORDER BY id",
        )?;
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
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, minute_ms, tenant, it_joules, facility_joules, pue, pue_basis, gpu_ms, late, prev_hash, hash
             FROM ledger WHERE tenant = ?1 AND minute_ms >= ?2 AND minute_ms < ?3 ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![tenant, from_ms, to_ms], read_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Totals per owner over the whole ledger: (owner, IT J, facility J, GPU ms).
    pub fn ledger_totals(&self) -> Result<Vec<(String, f64, f64, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT tenant, SUM(it_joules), COALESCE(SUM(facility_joules), 0), SUM(gpu_ms) FROM ledger GROUP BY tenant",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
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

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        minute_ms: r.get(1)?,
        tenant: r.get(2)?,
        it_joules: r.get(3)?,
        facility_joules: r.get(4)?,
        pue: r.get(5)?,
        pue_basis: r.get(6)?,
        gpu_ms: r.get(7)?,
        late: r.get(8)?,
        prev_hash: r.get(9)?,
        hash: r.get(10)?,
    })
}

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
