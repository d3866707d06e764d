//! The collector's durable state, in SQLite (WAL): each agent's highest applied
//! sequence number, each meter's and GPU's counted energy and counter state, and
//! the meters' energy curves for the trailing windows.
//!
//! Exactly once: a batch's effects and its agent's new `last_seq` are written in
//! one transaction before the batch is acknowledged. A collector killed at any
//! moment restarts from the last committed batch; the agent re-sends what was
//! not acknowledged, and whatever was committed answers as a duplicate.
//!
//! Durability: `journal_mode = WAL`. With `[ledger] synchronous = "full"` (the
//! default) a transaction is synced to disk before its batches are
//! acknowledged, so an acknowledged batch survives a power cut; the group
//! commit shares that one sync among every batch in the group. With
//! `"normal"` a committed transaction survives the process being killed
//! (kill -9, OOM, panic) but a power cut may lose the last ones. WAL
//! checkpoints (copying the WAL into the database file, and syncing it) run on
//! their own thread and connection, never inside a commit.
//!
//! The store's parts: `migrate` (the schema and its migrations), `write`
//! (a batch's rows and their transaction, hours booked), [`ledger`] (the
//! tenant ledger, its minute close and totals), `silence` (silent GPUs'
//! unknown minutes). This file: the connection,
//! load, the group commit and the reads.

pub mod bounds;
pub mod delivery;
pub mod ledger;
mod migrate;
pub mod modules;
mod rows;
mod silence;
pub mod tree;
mod write;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use dcwatt_wire::time::{DAY_MS, HOUR_MS, MINUTE_MS};

use crate::energy::Curve;
use crate::site::Site;
use crate::state::{AgentState, Changes, State};
use crate::thermal::{Excursion, Kind};

pub use migrate::SCHEMA_VERSION;
pub use write::{prepare, MeterHour, Prepared};

/// The resolution of stored energy periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// One UTC minute (kept [`MINUTE_RETENTION_MS`]).
    Minute,
    /// One UTC hour (kept [`HOUR_RETENTION_MS`]).
    Hour,
    /// One UTC day (kept).
    Day,
}

impl Resolution {
    /// The period length, ms.
    pub fn ms(self) -> i64 {
        match self {
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS,
            Resolution::Day => DAY_MS,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Resolution::Minute => "minute",
            Resolution::Hour => "hour",
            Resolution::Day => "day",
        }
    }

    /// The coverage kind counting the minutes every water meter completed.
    fn water_key(self) -> &'static str {
        match self {
            Resolution::Minute => "water_minute",
            Resolution::Hour => "water_hour",
            Resolution::Day => "water_day",
        }
    }

    /// The start of the period holding `ts_ms`.
    pub fn floor(self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.ms()) * self.ms()
    }
}

/// How long minute rows are kept: late data older than this lands only in hours and days.
pub const MINUTE_RETENTION_MS: i64 = 8 * DAY_MS;
/// How long hour rows are kept.
pub const HOUR_RETENTION_MS: i64 = 400 * DAY_MS;

/// A store failure, naming the file or the record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or set up.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored record does not decode.
    #[error("stored state of {what} is unreadable: {source}")]
    Decode {
        /// Which record.
        what: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The database was written by a newer collector.
    #[error("schema version {found} is newer than this collector's ({SCHEMA_VERSION})")]
    Version {
        /// The version found.
        found: i64,
    },
    /// A value does not fit the database's integers.
    #[error("{0} does not fit in a 64-bit signed integer")]
    Range(u64),
    /// The ledger's Merkle tree or its checkpoints (see `transparency`).
    #[error("ledger tree: {0}")]
    Tree(String),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(String),
    /// A row to book is not acceptable (it names the field).
    #[error("{0}")]
    Invalid(String),
}

/// The open database.
pub struct Store {
    pub(crate) conn: Connection,
    /// The database file; `None` in memory.
    path: Option<PathBuf>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate::create(&conn).map_err(open_err)?;
        migrate::upgrade(&conn)?;
        Ok(Store {
            conn,
            path: Some(path.to_path_buf()),
        })
    }

    /// A read-only connection to the same database file, for readers that
    /// must not wait for (or hold up) the writer: in WAL mode a reader sees
    /// the last committed transaction and blocks nobody. `None` for an
    /// in-memory store, whose only connection is this one.
    pub fn reader(&self) -> Result<Option<Store>, StoreError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        Self::open_reader(path).map(Some)
    }

    /// Opens a read-only connection to the database at `path` (see [`Store::reader`]).
    pub fn open_reader(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        Ok(Store { conn, path: None })
    }

    /// Fills a fresh state (from [`State::new`]) with what was stored. Meters no
    /// longer in the config are left out; their rows stay.
    pub fn load(&self, state: &mut State) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, last_seq, last_seen_ms FROM agents")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (id, last_seq, last_seen_ms) = row?;
            let last_seq = u64::try_from(last_seq).unwrap_or(0);
            state.agents.insert(
                id,
                AgentState {
                    last_seq,
                    last_seen_ms,
                },
            );
        }
        let mut stmt = self.conn.prepare("SELECT id, account FROM meters")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, json) = row?;
            if let Some(m) = state.meters.get_mut(&id) {
                m.acc = serde_json::from_str(&json).map_err(|source| StoreError::Decode {
                    what: format!("meter {id}"),
                    source,
                })?;
            }
        }
        let mut stmt = self
            .conn
            .prepare("SELECT ts_ms, joules FROM meter_curve WHERE meter = ?1 ORDER BY ts_ms")?;
        for (id, m) in state.meters.iter_mut() {
            let points = stmt
                .query_map(params![id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            m.curve = Curve::from_points(points);
        }
        let mut stmt = self.conn.prepare("SELECT uuid, state FROM gpus")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (uuid, json) = row?;
            let gpu = serde_json::from_str(&json).map_err(|source| StoreError::Decode {
                what: format!("gpu {uuid}"),
                source,
            })?;
            state.gpus.insert(uuid, gpu);
        }
        state.recount_agent_gpus();
        let mut stmt = self.conn.prepare("SELECT node, id, state FROM modules")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (node, id, json) = row?;
            let m = serde_json::from_str(&json).map_err(|source| StoreError::Decode {
                what: format!("module {id} of node {node}"),
                source,
            })?;
            state.modules.insert((node, id), m);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT zone, kind, count(*) FROM excursions GROUP BY zone, kind")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (zone, kind, n) = row?;
            if let Some(kind) = Kind::parse(&kind) {
                state
                    .excursions_opened
                    .insert((zone, kind), u64::try_from(n).unwrap_or(0));
            }
        }
        let mut stmt = self.conn.prepare(
            "SELECT tenant, count(*) FROM excursions WHERE tenant NOT LIKE '\\_%' ESCAPE '\\' GROUP BY tenant",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (tenant, n) = row?;
            state
                .tenant_excursions
                .insert(tenant, u64::try_from(n).unwrap_or(0));
        }
        Ok(())
    }

    /// An in-memory database: the same code path without persistence.
    pub fn in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        migrate::create(&conn)?;
        Ok(Store { conn, path: None })
    }

    /// Writes one applied batch's effects and its agent's state, atomically.
    pub fn commit(
        &mut self,
        agent: &str,
        state: &State,
        changes: &Changes,
        site: &Site,
    ) -> Result<(), StoreError> {
        let prepared = prepare(agent, state, changes)?;
        self.commit_group([&prepared], site)
    }

    /// Sets when a transaction counts as committed (see [`crate::site::Synchronous`]).
    pub fn set_synchronous(&self, sync: crate::site::Synchronous) -> Result<(), StoreError> {
        let value = match sync {
            crate::site::Synchronous::Full => "FULL",
            crate::site::Synchronous::Normal => "NORMAL",
        };
        self.conn.pragma_update(None, "synchronous", value)?;
        Ok(())
    }

    /// Moves WAL checkpoints off this connection: automatic checkpoints stop
    /// here, and a thread with its own connection copies the WAL into the
    /// database every `every` (PASSIVE: it never waits for, nor blocks, the
    /// writer). A checkpoint syncs the database file; run inside a commit it
    /// stalled every batch in flight for tens of milliseconds. An in-memory
    /// store has no WAL: no thread.
    pub fn checkpoint_in_background(
        &self,
        every: std::time::Duration,
    ) -> Result<Option<Checkpointer>, StoreError> {
        let Some(path) = self
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
        else {
            return Ok(None);
        };
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::Builder::new()
                .name("dcwatt-checkpoint".into())
                .spawn(move || {
                    let checkpoint = |mode: &str| {
                        if let Err(e) = conn.query_row(
                            &format!("PRAGMA wal_checkpoint({mode})"),
                            [],
                            |_| Ok(()),
                        ) {
                            tracing::warn!(error = %e, "WAL checkpoint failed; retried later.");
                        }
                    };
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::park_timeout(every);
                        checkpoint("PASSIVE");
                    }
                    checkpoint("PASSIVE");
                })
                .map_err(|e| StoreError::Thread(e.to_string()))?
        };
        Ok(Some(Checkpointer {
            stop,
            thread: Some(thread),
        }))
    }

    /// Writes several prepared batches, in order, in one transaction: all or none.
    pub fn commit_group<'a>(
        &mut self,
        group: impl IntoIterator<Item = &'a Prepared>,
        site: &Site,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for p in group {
            write::write_prepared(&tx, p, site)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// The background checkpoint thread; stopped (after one last checkpoint) when dropped.
pub struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Store {
    /// The excursions that started in `[from_ms, to_ms)`, oldest first; only
    /// one tenant's when `tenant` is given.
    /// At most `limit` are read: a caller that gets `limit` back may be missing some.
    pub fn excursions(
        &self,
        tenant: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Excursion>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT entity_kind, entity, node, kind, zone, tenant, opened_ms, closed_ms FROM excursions
             WHERE opened_ms >= ?1 AND opened_ms < ?2 AND (?3 IS NULL OR tenant = ?3)
             ORDER BY opened_ms, entity, kind",
        )?;
        let rows = stmt.query_map(params![from_ms, to_ms, tenant], |r| {
            let kind: String = r.get(3)?;
            let Some(kind) = Kind::parse(&kind) else {
                return Ok(None);
            };
            let entity_kind: String = r.get(0)?;
            Ok(Some(Excursion {
                entity_kind: if entity_kind == "gpu" { "gpu" } else { "meter" },
                entity: r.get(1)?,
                node: r.get(2)?,
                kind,
                zone: r.get(4)?,
                tenant: r.get(5)?,
                opened_ms: r.get(6)?,
                closed_ms: r.get(7)?,
            }))
        })?;
        let mut out = Vec::new();
        for row in rows {
            // A kind this collector does not know (a newer one wrote it) is left out.
            if let Some(e) = row? {
                if out.len() == limit {
                    break;
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Energy per (zone, role) over the periods of `resolution` that start in
    /// `[from_ms, to_ms)`; for the `water` role, the volume (m³).
    pub fn energy(
        &self,
        resolution: Resolution,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, String, f64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT zone, role, SUM(amount) FROM (
               SELECT zone, role, joules AS amount FROM energy
               WHERE resolution = ?1 AND start_ms >= ?2 AND start_ms < ?3
               UNION ALL
               SELECT zone, 'water', volume_m3 FROM water
               WHERE resolution = ?1 AND start_ms >= ?2 AND start_ms < ?3
             ) GROUP BY zone, role",
        )?;
        let rows = stmt
            .query_map(params![resolution.key(), from_ms, to_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Complete minutes of `zone` (or `*`, the whole site) in the periods of
    /// `resolution` that start in `[from_ms, to_ms)`.
    pub fn complete_minutes(
        &self,
        resolution: Resolution,
        zone: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError> {
        self.covered(resolution.key(), zone, from_ms, to_ms)
    }

    /// Σ `complete` of the coverage rows of `kind` and `zone` starting in `[from_ms, to_ms)`.
    fn covered(&self, kind: &str, zone: &str, from_ms: i64, to_ms: i64) -> Result<i64, StoreError> {
        let n: Option<i64> = self.conn.prepare_cached(
            "SELECT SUM(complete) FROM coverage WHERE kind = ?1 AND zone = ?2 AND start_ms >= ?3 AND start_ms < ?4",
        )?
        .query_row(params![kind, zone, from_ms, to_ms], |r| r.get(0))?;
        Ok(n.unwrap_or(0))
    }

    /// Minutes in the periods of `resolution` that start in `[from_ms, to_ms)`
    /// in which every water meter was complete.
    pub fn complete_water_minutes(
        &self,
        resolution: Resolution,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError> {
        self.covered(resolution.water_key(), "*", from_ms, to_ms)
    }

    /// Complete minutes whose PUE was invalid (below 1 or above the maximum), ever.
    pub fn invalid_pue_minutes(&self) -> Result<i64, StoreError> {
        let n: Option<i64> = self
            .conn
            .query_row(
                "SELECT complete FROM coverage WHERE kind = 'invalid_pue'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.unwrap_or(0))
    }

    /// Metered nodes' energy beyond their GPUs that could not be booked to
    /// anyone (no GPU time to share it by), J, since the database began.
    pub fn unbooked_node_joules(&self) -> Result<f64, StoreError> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'unbooked_node_joules'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0.0))
    }

    /// Drops minute rows older than [`MINUTE_RETENTION_MS`] and hour rows older
    /// than [`HOUR_RETENTION_MS`] before `now_ms`.
    pub fn prune(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let (minutes, hours) = (now_ms - MINUTE_RETENTION_MS, now_ms - HOUR_RETENTION_MS);
        tx.execute(
            "DELETE FROM energy WHERE resolution = 'minute' AND start_ms < ?1",
            params![minutes],
        )?;
        tx.execute(
            "DELETE FROM water WHERE resolution = 'minute' AND start_ms < ?1",
            params![minutes],
        )?;
        tx.execute(
            "DELETE FROM coverage WHERE kind IN ('minute', 'meters', 'water_minute', 'water_meters') AND start_ms < ?1",
            params![minutes],
        )?;
        tx.execute(
            "DELETE FROM energy WHERE resolution = 'hour' AND start_ms < ?1",
            params![hours],
        )?;
        tx.execute(
            "DELETE FROM water WHERE resolution = 'hour' AND start_ms < ?1",
            params![hours],
        )?;
        tx.execute(
            "DELETE FROM coverage WHERE kind IN ('hour', 'water_hour') AND start_ms < ?1",
            params![hours],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// Adds node or module energy that was never shared among GPUs (positive
/// only) to the `unbooked_node_joules` total read by
/// [`Store::unbooked_node_joules`], in the caller's transaction.
pub(crate) fn add_unbooked_node_joules(
    tx: &rusqlite::Transaction<'_>,
    joules: f64,
) -> Result<(), StoreError> {
    if joules > 0.0 {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('unbooked_node_joules', ?1)
             ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS REAL) + CAST(excluded.value AS REAL) AS TEXT)",
            rusqlite::params![joules.to_string()],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};

    #[test]
    fn a_version_1_database_gains_the_new_columns_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema_version', '1');
                 CREATE TABLE tenant_open (minute_ms INTEGER NOT NULL, tenant TEXT NOT NULL,
                   it_joules REAL NOT NULL, gpu_ms INTEGER NOT NULL, PRIMARY KEY (minute_ms, tenant)) WITHOUT ROWID;
                 CREATE TABLE ledger (id INTEGER PRIMARY KEY, minute_ms INTEGER NOT NULL, tenant TEXT NOT NULL,
                   it_joules REAL NOT NULL, facility_joules REAL, pue REAL, pue_basis TEXT NOT NULL,
                   gpu_ms INTEGER NOT NULL, late INTEGER NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);",
            )
            .unwrap();
            // A version-1 row, hashed as version 1 did.
            let mut row = crate::store::ledger::Row {
                id: 1,
                minute_ms: MINUTE_MS,
                tenant: "lab-a".into(),
                it_joules: 1.0,
                facility_joules: None,
                pue: None,
                pue_basis: "none".into(),
                gpu_ms: MINUTE_MS,
                late: false,
                prev_hash: crate::store::ledger::GENESIS.into(),
                hash: String::new(),
                util_mean: None,
                peak_watts: None,
                excursions: 0,
                node_joules: None,
                sm_active_mean: None,
                tensor_active_mean: None,
                idle_joules: None,
                module_joules: None,
                delivery: None,
            };
            row.hash = row.compute_hash();
            c.execute(
                "INSERT INTO ledger VALUES (1, 60000, 'lab-a', 1.0, NULL, NULL, 'none', 60000, 0, ?1, ?2)",
                params![row.prev_hash, row.hash],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let v = store.verify_ledger().unwrap();
        assert_eq!((v.rows, v.broken), (1, None));
        let version: String = store
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
        // Opening again changes nothing.
        drop(store);
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.verify_ledger().unwrap().rows, 1);
        // The upgraded database books a row with service levels (v3) after
        // the version-1 row; the chain verifies across both.
        store
            .conn
            .execute_batch(
                "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms, available_ms, down_ms)
                 VALUES (120000, 'lab-a', 2.0, 120000, 60000, 60000);
                 INSERT INTO delivery_open VALUES (120000, 'lab-a', 'GPU-1', 'down', 'gpu_down', 'gpu', 60000);",
            )
            .unwrap();
        assert_eq!(store.close_minutes(&site(), 1_000_000, None).unwrap(), 1);
        let v = store.verify_ledger().unwrap();
        assert_eq!((v.rows, v.broken), (2, None));
        let rows = store.tenant_rows("lab-a", 0, 1_000_000).unwrap();
        let d = rows[1].delivery.clone().unwrap();
        assert_eq!((d.available_ms, d.down_ms), (MINUTE_MS, MINUTE_MS));
        let listed = store.delivery_entries(2).unwrap();
        assert_eq!(d.digest, dcwatt_verify::row::delivery_digest(&listed));
        assert_eq!(listed[0].uuid, "GPU-1");
        assert!(rows[1]
            .canonical()
            .starts_with("dcwatt-ledger-v3|dcwatt-ledger-v1|2|"));
        // A state count changed behind the triggers' back breaks the chain.
        store
            .conn
            .execute_batch(
                "DROP TRIGGER ledger_no_update;
                 UPDATE ledger SET down_ms = 0, available_ms = 120000 WHERE id = 2;",
            )
            .unwrap();
        let v = store.verify_ledger().unwrap();
        assert!(v.broken.unwrap().starts_with("row 2:"));
    }

    /// A bad hour row is refused naming its field, and nothing is written;
    /// a good one lands in its hour and day with the hour's complete minutes.
    #[test]
    fn booking_an_hour_checks_every_row_first() {
        let site = site();
        let mut store = Store::in_memory().unwrap();
        let h = 1_795_000_000_000i64.div_euclid(HOUR_MS) * HOUR_MS;
        let row = |meter, joules, complete_minutes| MeterHour {
            meter,
            joules,
            complete_minutes,
        };
        for (hour, rows, needle) in [
            (h + 1, vec![row("m", 1.0, 60)], "hour_ms"),
            (
                h,
                vec![row("m", 1.0, 60), row("x", 1.0, 60)],
                "meters[1].meter",
            ),
            (
                h,
                vec![row("m", 1.0, 60), row("m", 1.0, 60)],
                "meters[1].meter",
            ),
            (h, vec![row("m", -1.0, 60)], "meters[0].joules"),
            (h, vec![row("m", f64::NAN, 60)], "meters[0].joules"),
            (h, vec![row("m", 1.0, 61)], "meters[0].complete_minutes"),
        ] {
            let e = store.book_hour(&site, hour, &rows, &[]).unwrap_err();
            assert!(e.to_string().starts_with(needle), "{e}");
        }
        assert!(store
            .energy(Resolution::Day, 0, i64::MAX)
            .unwrap()
            .is_empty());
        store
            .book_hour(&site, h, &[row("m", 3.6e6, 45), row("p", 1.0e5, 60)], &[])
            .unwrap();
        let mut day = store.energy(Resolution::Day, 0, i64::MAX).unwrap();
        day.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            day,
            vec![
                ("default".into(), "facility".into(), 3.6e6),
                ("default".into(), "other".into(), 1.0e5)
            ]
        );
        assert_eq!(
            store
                .complete_minutes(Resolution::Hour, "*", h, h + 1)
                .unwrap(),
            45
        );
        assert_eq!(
            store
                .complete_minutes(Resolution::Day, "default", 0, i64::MAX)
                .unwrap(),
            45
        );
        let spans = bounds::meter_spans(&store).unwrap();
        assert_eq!(spans["m"], (h, h + HOUR_MS));
    }

    fn site() -> crate::site::Site {
        Config::from_toml(
            "[[meters]]\nid = \"m\"\nrole = \"facility\"\n[[meters]]\nid = \"p\"\nrole = \"other\"",
        )
        .unwrap()
        .build()
        .unwrap()
    }

    fn batch(seq: u64, ts: i64, joules: f64) -> Batch {
        let r = |entity, quantity, value| Reading {
            ts_ms: ts,
            entity,
            quantity,
            value,
        };
        Batch {
            version: VERSION,
            agent: "a".into(),
            seq,
            first_seq: None,
            node: "a".into(),
            created_ms: ts,
            gpus: vec![],
            readings: vec![
                r(Entity::Meter("m".into()), Quantity::EnergyJoules, joules),
                r(Entity::Meter("p".into()), Quantity::PowerWatts, 100.0),
                r(
                    Entity::Gpu("GPU-1".into()),
                    Quantity::EnergyJoules,
                    joules / 10.0,
                ),
            ],
        }
    }

    /// With checkpoints in the background, the writer never checkpoints, and
    /// what it committed still reaches the database file itself (a copy of the
    /// file alone, without its WAL, holds it).
    #[test]
    fn background_checkpoints_copy_the_wal_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let site = site();
        let mut state = State::new(&site);
        let mut store = Store::open(&path).unwrap();
        let checkpointer = store
            .checkpoint_in_background(std::time::Duration::from_millis(20))
            .unwrap()
            .expect("a file store checkpoints");
        let auto: i64 = store
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto, 0);
        for seq in 1..=30u64 {
            let (_, changes) = state.apply(
                &batch(seq, 1_000_000 + seq as i64 * 1000, 5_000.0),
                &site,
                0,
            );
            store.commit("a", &state, &changes, &site).unwrap();
        }
        drop(checkpointer); // a last checkpoint, then the thread ends
        let copy = dir.path().join("copy.sqlite");
        std::fs::copy(&path, &copy).unwrap();
        let seq: i64 = Connection::open(&copy)
            .unwrap()
            .query_row("SELECT last_seq FROM agents WHERE id = 'a'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(seq, 30);
        assert!(Store::in_memory()
            .unwrap()
            .checkpoint_in_background(std::time::Duration::from_millis(20))
            .unwrap()
            .is_none());
    }

    #[test]
    fn what_was_committed_is_what_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let site = site();
        let mut state = State::new(&site);
        let mut store = Store::open(&path).unwrap();
        for (seq, k) in (1..=40u64).zip(0..) {
            let (_, changes) = state.apply(
                &batch(seq, 1_000_000 + k * 700, 5_000.0 + 90.0 * k as f64),
                &site,
                0,
            );
            store.commit("a", &state, &changes, &site).unwrap();
        }
        drop(store);
        let mut loaded = State::new(&site);
        Store::open(&path).unwrap().load(&mut loaded).unwrap();
        assert_eq!(loaded.agents, state.agents);
        assert_eq!(loaded.gpus, state.gpus);
        for (id, m) in &state.meters {
            assert_eq!(loaded.meters[id].acc, m.acc, "{id}");
            let span = m.curve.span().unwrap();
            assert_eq!(loaded.meters[id].curve.span(), Some(span), "{id}");
            for t in (span.0..=span.1).step_by(333) {
                assert_eq!(loaded.meters[id].curve.at(t), m.curve.at(t), "{id} at {t}");
            }
        }
        assert_eq!(loaded.meters["m"].acc.counted, 39.0 * 90.0);
        assert_eq!(loaded.meters["p"].acc.counted, 100.0 * 39.0 * 0.7);
        // The GPUs each agent owns are counted again on load: the cap holds
        // across a restart (agent "a" owns GPU-1; a second one makes two).
        let mut another = batch(41, 2_000_000, 9_000.0);
        another.readings[2].entity = Entity::Gpu("GPU-2".into());
        assert_eq!(loaded.gpu_cap_exceeded(&another, 1), Some(2));
        assert_eq!(loaded.gpu_cap_exceeded(&another, 2), None);
        assert_eq!(
            loaded.gpu_cap_exceeded(&batch(41, 2_000_000, 9_000.0), 1),
            None
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(conn);
        let e = Store::open(&path).err().unwrap().to_string();
        assert!(e.contains("schema version 99"), "{e}");
    }
}
