//! The schema and its migrations: the tables every store has (the ledger's,
//! service levels', modules' and bounds' included), created at every open so
//! an existing database gains the tables it lacks, and the columns and
//! version a database of an older collector gains on open.

use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;

/// The schema version this collector writes.
pub const SCHEMA_VERSION: i64 = 3;

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
-- once, to its minute, hour and day. Water meters count a volume, not an
-- energy: theirs is in `water`.
CREATE TABLE IF NOT EXISTS energy (
    resolution TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    zone TEXT NOT NULL,
    role TEXT NOT NULL,
    joules REAL NOT NULL,
    PRIMARY KEY (resolution, start_ms, zone, role)
) WITHOUT ROWID;
-- Water volume per fixed UTC period and zone (m³), from the `water` meters,
-- added like energy (schema version 3; before, rows of role 'water' in
-- `energy`, their volume under `joules`).
CREATE TABLE IF NOT EXISTS water (
    resolution TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    zone TEXT NOT NULL,
    volume_m3 REAL NOT NULL,
    PRIMARY KEY (resolution, start_ms, zone)
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
/// (a newer one is refused) and records the version in a new one. The
/// version-3 step and the new version are written in one transaction.
pub(super) fn upgrade(conn: &Connection) -> Result<(), StoreError> {
    add_columns(conn)?;
    let tx = conn.unchecked_transaction()?;
    let found: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match found.and_then(|v| v.parse::<i64>().ok()) {
        Some(v) if v > SCHEMA_VERSION => return Err(StoreError::Version { found: v }),
        Some(v) if v < SCHEMA_VERSION => {
            if v < 3 {
                water_apart(&tx)?;
            }
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
                params![SCHEMA_VERSION.to_string()],
            )?;
        }
        Some(_) => {}
        None => {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
                params![SCHEMA_VERSION.to_string()],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Version 3: water under its own names. The `water` meters' volume moves
/// from the `energy` rows of role `water` (under `joules`) to `water`
/// (`volume_m3`), and each meter's stored account names what it counted
/// `counted` (J, or m³ for a water meter) instead of `energy_joules`.
fn water_apart(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "INSERT INTO water (resolution, start_ms, zone, volume_m3)
           SELECT resolution, start_ms, zone, joules FROM energy WHERE role = 'water';
         DELETE FROM energy WHERE role = 'water';",
    )?;
    let accounts: Vec<(String, String)> = tx
        .prepare("SELECT id, account FROM meters")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, json) in accounts {
        let decode = |source| StoreError::Decode {
            what: format!("meter {id}"),
            source,
        };
        let mut account: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).map_err(decode)?;
        let Some(counted) = account.remove("energy_joules") else {
            continue;
        };
        account.insert("counted".into(), counted);
        let json = serde_json::to_string(&account).map_err(decode)?;
        tx.execute(
            "UPDATE meters SET account = ?2 WHERE id = ?1",
            params![id, json],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dcwatt_wire::time::{DAY_MS, HOUR_MS, MINUTE_MS};

    use super::*;
    use crate::config::Config;
    use crate::state::{MeterAccount, State};
    use crate::store::{MeterHour, Resolution, Store};

    fn site() -> crate::site::Site {
        Config::from_toml(
            "[[meters]]\nid = \"f\"\nrole = \"facility\"\n[[meters]]\nid = \"i\"\nrole = \"it\"\nit_point = \"ups_output\"\n\
             [[meters]]\nid = \"w\"\nrole = \"water\"",
        )
        .unwrap()
        .build()
        .unwrap()
    }

    /// A meter's account as version 2 stored it: what it counted under
    /// `energy_joules` (m³ for a water meter).
    fn account_v2(counted: f64) -> String {
        let mut v = serde_json::to_value(MeterAccount {
            counted,
            ..MeterAccount::default()
        })
        .unwrap();
        let map = v.as_object_mut().unwrap();
        let n = map.remove("counted").unwrap();
        map.insert("energy_joules".into(), n);
        v.to_string()
    }

    fn figures(store: &Store, t: i64) -> Vec<Vec<(String, String, f64)>> {
        [
            (Resolution::Minute, t),
            (Resolution::Hour, t - t % HOUR_MS),
            (Resolution::Day, t - t % DAY_MS),
        ]
        .into_iter()
        .map(|(r, start)| {
            let mut rows = store.energy(r, start, start + r.ms()).unwrap();
            rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            rows
        })
        .collect()
    }

    /// A version-2 database, written as version 2 did (water volume in
    /// `energy` rows of role `water`, under `joules`; accounts with
    /// `energy_joules`), opens with the same water and energy figures, the
    /// volume moved under its own names.
    #[test]
    fn a_version_2_database_keeps_its_figures_with_water_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.sqlite");
        let t = 100 * DAY_MS + 5 * HOUR_MS + 7 * MINUTE_MS;
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema_version', '2');
                 CREATE TABLE meters (id TEXT PRIMARY KEY, account TEXT NOT NULL);
                 CREATE TABLE energy (resolution TEXT NOT NULL, start_ms INTEGER NOT NULL,
                   zone TEXT NOT NULL, role TEXT NOT NULL, joules REAL NOT NULL,
                   PRIMARY KEY (resolution, start_ms, zone, role)) WITHOUT ROWID;
                 CREATE TABLE coverage (kind TEXT NOT NULL, start_ms INTEGER NOT NULL,
                   zone TEXT NOT NULL, complete INTEGER NOT NULL,
                   PRIMARY KEY (kind, start_ms, zone)) WITHOUT ROWID;
                 CREATE TABLE meter_span (meter TEXT PRIMARY KEY, first_ms INTEGER NOT NULL,
                   end_ms INTEGER NOT NULL) WITHOUT ROWID;",
            )
            .unwrap();
            for (res, start) in [
                ("minute", t),
                ("hour", t - t % HOUR_MS),
                ("day", t - t % DAY_MS),
            ] {
                for (role, amount) in [("facility", 1.2e6), ("it", 1.0e6), ("water", 0.25)] {
                    c.execute(
                        "INSERT INTO energy VALUES (?1, ?2, 'default', ?3, ?4)",
                        params![res, start, role, amount],
                    )
                    .unwrap();
                }
                c.execute(
                    "INSERT INTO coverage VALUES (?1, ?2, '*', 1)",
                    params![format!("water_{res}"), start],
                )
                .unwrap();
            }
            for (id, counted) in [("f", 3.6e6), ("i", 3.0e6), ("w", 0.75)] {
                c.execute(
                    "INSERT INTO meters VALUES (?1, ?2)",
                    params![id, account_v2(counted)],
                )
                .unwrap();
            }
        }
        let expected = |water: f64| {
            vec![
                ("default".to_owned(), "facility".to_owned(), 1.2e6),
                ("default".to_owned(), "it".to_owned(), 1.0e6),
                ("default".to_owned(), "water".to_owned(), water),
            ]
        };
        let site = site();
        for _ in 0..2 {
            // Opening again changes nothing.
            let store = Store::open(&path).unwrap();
            assert_eq!(figures(&store, t), vec![expected(0.25); 3]);
            let complete = store
                .complete_water_minutes(Resolution::Day, t - t % DAY_MS, t + DAY_MS)
                .unwrap();
            assert_eq!(complete, 1);
            let mut state = State::new(&site);
            store.load(&mut state).unwrap();
            assert_eq!(state.meters["w"].water_cubic_meters(), Some(0.75));
            assert_eq!(state.meters["w"].energy_joules(), 0.0);
            assert_eq!(state.meters["f"].energy_joules(), 3.6e6);
            assert_eq!(state.meters["i"].energy_joules(), 3.0e6);
            let (version, water_in_energy, volume): (String, i64, f64) = store
                .conn
                .query_row(
                    "SELECT (SELECT value FROM meta WHERE key = 'schema_version'),
                            (SELECT count(*) FROM energy WHERE role = 'water'),
                            (SELECT volume_m3 FROM water WHERE resolution = 'minute')",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            assert_eq!((version.as_str(), water_in_energy, volume), ("3", 0, 0.25));
            let accounts: i64 = store
                .conn
                .query_row(
                    "SELECT count(*) FROM meters WHERE account LIKE '%energy_joules%'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(accounts, 0);
        }
        // Water booked from now on goes to its own table too.
        let mut store = Store::open(&path).unwrap();
        let hour = t - t % HOUR_MS;
        let booked = [MeterHour {
            meter: "w",
            joules: 0.5,
            complete_minutes: 60,
        }];
        store
            .book_hour(&site, hour + HOUR_MS, &booked, &[])
            .unwrap();
        let day = figures(&store, t).pop().unwrap();
        assert_eq!(day, expected(0.75));
        let water_in_energy: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM energy WHERE role = 'water'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(water_in_energy, 0);
    }
}
