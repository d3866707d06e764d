//! The schema and its migrations: the tables every store has (the ledger's,
//! service levels', modules' and bounds' included), created at every open so
//! an existing database gains the tables it lacks, and the columns and
//! version a database of an older collector gains on open.

use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;

/// The schema version this collector writes.
pub const SCHEMA_VERSION: i64 = 2;

pub(super) const SCHEMA: &str = "
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
-- Energy per fixed UTC period, zone and role (J); every meter-minute is added
-- once, to its minute, hour and day. Role 'water' holds a volume: its `joules`
-- are cubic metres (the same counter machinery, another unit).
CREATE TABLE IF NOT EXISTS energy (
    resolution TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    zone TEXT NOT NULL,
    role TEXT NOT NULL,
    joules REAL NOT NULL,
    PRIMARY KEY (resolution, start_ms, zone, role)
) WITHOUT ROWID;
-- Coverage: `meters` counts the facility and IT meters complete in a minute of
-- a zone; `minute`/`hour`/`day` count the complete minutes of a period, per zone
-- and for the whole site (zone '*'). `water_meters` counts the water meters
-- complete in a minute (zone '*'); `water_minute`/`water_hour`/`water_day` the
-- minutes of a period in which every water meter was complete.
CREATE TABLE IF NOT EXISTS coverage (
    kind TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    zone TEXT NOT NULL,
    complete INTEGER NOT NULL,
    PRIMARY KEY (kind, start_ms, zone)
) WITHOUT ROWID;
-- Thermal excursions, one row each, booked to the tenant leasing the GPU
-- when it started; closed_ms is NULL while open.
CREATE TABLE IF NOT EXISTS excursions (
    entity TEXT NOT NULL,
    kind TEXT NOT NULL,
    opened_ms INTEGER NOT NULL,
    entity_kind TEXT NOT NULL,
    node TEXT,
    zone TEXT NOT NULL,
    tenant TEXT,
    closed_ms INTEGER,
    PRIMARY KEY (entity, kind, opened_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS excursions_tenant ON excursions (tenant, opened_ms);
";

/// Adds the columns of later schema versions that an older database lacks.
fn add_columns(conn: &Connection) -> Result<(), StoreError> {
    for (table, column, decl) in crate::store::ledger::MIGRATIONS {
        let has: bool = conn.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1)"),
            params![column],
            |r| r.get(0),
        )?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}

/// Creates the tables a database lacks (all of them in a new one).
pub(super) fn create(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(super::ledger::SCHEMA)?;
    conn.execute_batch(super::delivery::SCHEMA)?;
    conn.execute_batch(super::modules::SCHEMA)?;
    // Energy bounds: events and meter spans (an older database gains them).
    super::bounds::migrate(conn)?;
    Ok(())
}

/// Brings a database written by an older collector to [`SCHEMA_VERSION`]
/// (a newer one is refused) and records the version in a new one.
pub(super) fn upgrade(conn: &Connection) -> Result<(), StoreError> {
    add_columns(conn)?;
    let found: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match found.and_then(|v| v.parse::<i64>().ok()) {
        Some(v) if v > SCHEMA_VERSION => return Err(StoreError::Version { found: v }),
        Some(v) if v < SCHEMA_VERSION => {
            conn.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
                params![SCHEMA_VERSION.to_string()],
            )?;
        }
        Some(_) => {}
        None => {
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
                params![SCHEMA_VERSION.to_string()],
            )?;
        }
    }
    Ok(())
}
