//! The collector's durable state, in SQLite (WAL): each agent's highest applied
//! sequence number, each meter's and GPU's counted energy and counter state, and
//! the meters' energy curves for the trailing windows.
//!
//! Exactly once: a batch's effects and its agent's new `last_seq` are written in
//! one transaction before the batch is acknowledged. A collector killed at any
//! moment restarts from the last committed batch; the agent re-sends what was
//! not acknowledged, and whatever was committed answers as a duplicate.
//!
//! Durability: `journal_mode = WAL`, `synchronous = NORMAL`. A committed
//! transaction survives the process being killed (kill -9, OOM, panic). A power
//! loss of the whole machine may lose the transactions since the last WAL sync,
//! batches the agents were already told were applied; `synchronous = FULL`
//! closes that at the cost of one fsync per batch (docs/status.md).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::energy::{Curve, CurveEdit};
use crate::state::{AgentState, Changes, State};

/// The schema version this collector writes.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meters (id TEXT PRIMARY KEY, account TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meter_curve (
    meter TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    joules REAL NOT NULL,
    PRIMARY KEY (meter, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gpus (uuid TEXT PRIMARY KEY, state TEXT NOT NULL);
";

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
}

/// The open database.
pub struct Store {
    conn: Connection,
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
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let found: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match found.and_then(|v| v.parse::<i64>().ok()) {
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::Version { found: v }),
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )?;
            }
        }
        Ok(Store { conn })
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
        Ok(())
    }

    /// Writes one applied batch's effects and its agent's state, atomically.
    pub fn commit(
        &mut self,
        agent: &str,
        state: &State,
        changes: &Changes,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        if let Some(a) = state.agents.get(agent) {
            let seq = i64::try_from(a.last_seq).map_err(|_| StoreError::Range(a.last_seq))?;
            tx.prepare_cached(
                "INSERT INTO agents (id, last_seq, last_seen_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq, last_seen_ms = excluded.last_seen_ms",
            )?
            .execute(params![agent, seq, a.last_seen_ms])?;
        }
        for id in &changes.meters {
            if let Some(m) = state.meters.get(id) {
                let json = serde_json::to_string(&m.acc).map_err(|source| StoreError::Decode {
                    what: format!("meter {id}"),
                    source,
                })?;
                tx.prepare_cached("INSERT OR REPLACE INTO meters (id, account) VALUES (?1, ?2)")?
                    .execute(params![id, json])?;
            }
        }
        for (id, edit) in &changes.curves {
            match *edit {
                CurveEdit::Add(ts, joules) => tx
                    .prepare_cached("INSERT OR REPLACE INTO meter_curve (meter, ts_ms, joules) VALUES (?1, ?2, ?3)")?
                    .execute(params![id, ts, joules])?,
                CurveEdit::Remove(ts) => tx
                    .prepare_cached("DELETE FROM meter_curve WHERE meter = ?1 AND ts_ms = ?2")?
                    .execute(params![id, ts])?,
                CurveEdit::TrimBefore(ts) => tx
                    .prepare_cached("DELETE FROM meter_curve WHERE meter = ?1 AND ts_ms < ?2")?
                    .execute(params![id, ts])?,
            };
        }
        for uuid in &changes.gpus {
            if let Some(g) = state.gpus.get(uuid) {
                let json = serde_json::to_string(g).map_err(|source| StoreError::Decode {
                    what: format!("gpu {uuid}"),
                    source,
                })?;
                tx.prepare_cached("INSERT OR REPLACE INTO gpus (uuid, state) VALUES (?1, ?2)")?
                    .execute(params![uuid, json])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};

    fn site() -> crate::config::Site {
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
                10_000,
                0,
            );
            store.commit("a", &state, &changes).unwrap();
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
        assert_eq!(loaded.meters["m"].acc.energy_joules, 39.0 * 90.0);
        assert_eq!(loaded.meters["p"].acc.energy_joules, 100.0 * 39.0 * 0.7);
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
