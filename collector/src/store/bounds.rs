//! The energy bounds' tables (`meter_events`, `meter_span`; see
//! [`crate::bounds`] for what they hold and how bounds compose), a batch's
//! rows for them, and a period's bounds read from them.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use dcwatt_wire::time::{DAY_MS, HOUR_MS, MINUTE_MS};

use super::{Resolution, Store, StoreError};
use crate::bounds::{
    event_spread, finite, rating, EventKind, EventView, MeterEvent, PeriodBounds, Spread,
    MAX_EVENTS_LISTED,
};
use crate::energy::RATE_SLACK;
use crate::site::{Meter, Role, Site};
use crate::state::{Changes, State};

/// The tables (created on open: an existing database gains them).
pub const SCHEMA: &str = "
-- Events that leave a meter's energy uncertain, or were refused (see bounds.rs).
-- joules: energy counted in [from_ms, to_ms] (m³ for a water meter);
-- unknown_joules: the most not counted, NULL when unbounded (no rating);
-- glitches: one row per meter and UTC hour (from_ms), count of readings.
CREATE TABLE IF NOT EXISTS meter_events (
    meter TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER NOT NULL,
    joules REAL NOT NULL,
    unknown_joules REAL,
    count INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (meter, kind, from_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS meter_events_to ON meter_events (to_ms);
-- Per meter, [first_ms, end_ms): the minutes it has been cut into.
CREATE TABLE IF NOT EXISTS meter_span (
    meter TEXT PRIMARY KEY,
    first_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Creates the tables; in a database that held energy before them, records
/// where the bounds' history starts (see the module docs).
pub fn migrate(conn: &rusqlite::Connection) -> Result<(), rusqlite::Error> {
    let had: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meter_span')",
        [],
        |r| r.get(0),
    )?;
    conn.execute_batch(SCHEMA)?;
    if had {
        return Ok(());
    }
    let last_day: Option<i64> = conn.query_row(
        "SELECT MAX(start_ms) FROM energy WHERE resolution = 'day'",
        [],
        |r| r.get(0),
    )?;
    if let Some(day) = last_day {
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('bounds_since_ms', ?1)",
            params![day.saturating_add(DAY_MS).to_string()],
        )?;
    }
    Ok(())
}

/// Where the bounds' history starts in a database from before them.
fn bounds_since(store: &Store) -> Result<Option<i64>, StoreError> {
    let v: Option<String> = store
        .conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'bounds_since_ms'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()))
}

/// One batch's events and minute spans, for the store.
#[derive(Debug, Default)]
pub struct Prepared {
    events: Vec<(String, MeterEvent)>,
    spans: BTreeMap<String, (i64, i64)>,
}

/// What one applied batch adds to the event and span tables.
pub fn prepare(state: &State, changes: &Changes) -> Prepared {
    let mut p = Prepared::default();
    for (id, e) in &changes.meter_events {
        if state.meters.contains_key(id) {
            p.events.push((id.clone(), *e));
        }
    }
    for (id, w) in &changes.minutes {
        let span = p
            .spans
            .entry(id.clone())
            .or_insert((w.minute_ms, w.minute_ms + MINUTE_MS));
        span.0 = span.0.min(w.minute_ms);
        span.1 = span.1.max(w.minute_ms + MINUTE_MS);
    }
    p
}

/// Writes a batch's events and spans, in its transaction.
pub fn write(tx: &rusqlite::Transaction<'_>, p: &Prepared) -> Result<(), StoreError> {
    for (id, e) in &p.events {
        if e.kind == EventKind::Glitch {
            tx.prepare_cached(
                "INSERT INTO meter_events (meter, kind, from_ms, to_ms, joules, unknown_joules, count)
                 VALUES (?1, 'glitch', ?2, ?3, 0, 0, 1)
                 ON CONFLICT (meter, kind, from_ms) DO UPDATE SET count = count + 1,
                 to_ms = max(to_ms, excluded.to_ms)",
            )?
            .execute(params![id, e.from_ms.div_euclid(HOUR_MS) * HOUR_MS, e.to_ms])?;
        } else {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO meter_events (meter, kind, from_ms, to_ms, joules, unknown_joules, count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
            )?
            .execute(params![
                id,
                e.kind.as_str(),
                e.from_ms,
                e.to_ms,
                e.joules,
                e.unknown_joules
            ])?;
        }
    }
    for (id, (first, end)) in &p.spans {
        tx.prepare_cached(
            "INSERT INTO meter_span (meter, first_ms, end_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (meter) DO UPDATE SET first_ms = min(first_ms, excluded.first_ms),
             end_ms = max(end_ms, excluded.end_ms)",
        )?
        .execute(params![id, first, end])?;
    }
    Ok(())
}

/// The bounds of every counted meter's energy over `[from_ms, to_ms)` (edges
/// of `resolution`), and the events behind them.
pub fn period_bounds(
    store: &Store,
    site: &Site,
    from_ms: i64,
    to_ms: i64,
    resolution: Resolution,
) -> Result<PeriodBounds, StoreError> {
    period_bounds_listing(store, site, from_ms, to_ms, resolution, MAX_EVENTS_LISTED)
}

/// Each meter's span `[first_ms, end_ms)`: the minutes it has been cut into.
pub fn meter_spans(store: &Store) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
    Ok(store
        .conn
        .prepare_cached("SELECT meter, first_ms, end_ms FROM meter_span")?
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
        .collect::<Result<_, _>>()?)
}

/// Writes one meter's event and widens its span to `[first_ms, end_ms)`, in
/// the caller's transaction: for a store booking at hour resolution.
pub fn write_one(
    tx: &rusqlite::Transaction<'_>,
    meter: &str,
    event: Option<&MeterEvent>,
    span: Option<(i64, i64)>,
) -> Result<(), StoreError> {
    let mut p = Prepared::default();
    if let Some(e) = event {
        p.events.push((meter.to_owned(), *e));
    }
    if let Some(s) = span {
        p.spans.insert(meter.to_owned(), s);
    }
    write(tx, &p)
}

/// [`period_bounds`], listing at most `max_listed` events.
pub fn period_bounds_listing(
    store: &Store,
    site: &Site,
    from_ms: i64,
    to_ms: i64,
    resolution: Resolution,
    max_listed: usize,
) -> Result<PeriodBounds, StoreError> {
    let (a, b) = (from_ms, to_ms);
    let mut out = PeriodBounds::default();
    let mut views = Vec::new();
    // Before the bounds' history (a database from before them): complete
    // minutes only, as before.
    let since = bounds_since(store)?.filter(|s| *s > a);
    if let Some(since) = since {
        let end = since.min(b);
        let minutes = (end - a) / MINUTE_MS;
        let complete = store.complete_minutes(resolution, "*", a, end)?;
        let water_complete = if site.water_meters > 0 {
            store.complete_water_minutes(resolution, a, end)? >= minutes
        } else {
            true
        };
        let pue_complete = complete >= minutes;
        let unbounded = Spread {
            below: 0.0,
            above: f64::INFINITY,
            unmeasured: 0.0,
        };
        for m in site.meters.values().filter(|m| m.parent.is_none()) {
            let whole = match m.role {
                Role::Facility | Role::It => pue_complete,
                Role::Water => water_complete,
                _ => true, // not judged before either
            };
            if !whole {
                out.spreads
                    .entry((m.zone.clone(), m.role))
                    .or_default()
                    .add(unbounded);
            }
        }
        if !(pue_complete && water_complete) {
            views.push(EventView {
                meter: "*".into(),
                kind: "incomplete_before_bounds",
                from_ms: a,
                to_ms: end,
                joules: 0.0,
                unknown_joules: None,
                count: complete,
                below_joules: 0.0,
                above_joules: None,
            });
        }
    }
    // From here on, events and spans.
    let a = since.map_or(a, |s| s.max(a));
    if a >= b {
        out.events = views;
        return Ok(out);
    }
    let counted = |id: &str| site.meters.get(id).filter(|m| m.parent.is_none());
    let rate = |m: &Meter| rating(m).unwrap_or(f64::INFINITY);
    let mut stmt = store.conn.prepare_cached(
        "SELECT meter, kind, from_ms, to_ms, joules, unknown_joules, count FROM meter_events
         WHERE to_ms >= ?1 AND from_ms < ?2 ORDER BY from_ms, meter, kind",
    )?;
    let rows = stmt.query_map(params![a, b], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, f64>(4)?,
            r.get::<_, Option<f64>>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    for row in rows {
        let (meter, kind, f, t, j, unknown, count) = row?;
        let Some(kind) = EventKind::parse(&kind) else {
            continue; // written by a newer collector
        };
        if kind != EventKind::Glitch && t <= a {
            continue; // ended at the period's start: nothing of it inside
        }
        let spread = match counted(&meter) {
            Some(m) => {
                let s = event_spread(
                    kind,
                    (f, t),
                    j,
                    unknown.unwrap_or(f64::INFINITY),
                    rate(m),
                    (a, b),
                );
                out.spreads
                    .entry((m.zone.clone(), m.role))
                    .or_default()
                    .add(s);
                s
            }
            None => Spread::default(),
        };
        views.push(EventView {
            meter,
            kind: kind.as_str(),
            from_ms: f,
            to_ms: t,
            joules: j,
            unknown_joules: unknown,
            count,
            below_joules: spread.below,
            above_joules: finite(spread.above),
        });
    }
    // Time no reading of the meter covers.
    let spans: std::collections::HashMap<String, (i64, i64)> = store
        .conn
        .prepare_cached("SELECT meter, first_ms, end_ms FROM meter_span")?
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
        .collect::<Result<_, _>>()?;
    for (id, m) in site.meters.iter().filter(|(_, m)| m.parent.is_none()) {
        let span = spans.get(id).copied();
        let mut holes = Vec::new();
        match span {
            Some((first, end)) if first < b && end > a => {
                if first > a {
                    holes.push((a, first));
                }
                if end < b {
                    holes.push((end, b));
                }
            }
            _ => holes.push((a, b)),
        }
        for (f, t) in holes {
            let r = rate(m);
            let above = if r.is_finite() {
                r * (t - f) as f64 * RATE_SLACK / 1000.0
            } else {
                f64::INFINITY
            };
            out.spreads
                .entry((m.zone.clone(), m.role))
                .or_default()
                .add(Spread {
                    below: 0.0,
                    above,
                    unmeasured: 0.0,
                });
            views.push(EventView {
                meter: id.clone(),
                kind: "not_reported",
                from_ms: f,
                to_ms: t,
                joules: 0.0,
                unknown_joules: finite(above),
                count: 1,
                below_joules: 0.0,
                above_joules: finite(above),
            });
        }
    }
    views.sort_by(|x, y| (x.from_ms, &x.meter).cmp(&(y.from_ms, &y.meter)));
    out.events_left_out = views.len().saturating_sub(max_listed);
    views.truncate(max_listed);
    out.events = views;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database from before energy bounds (no `meter_events`, no
    /// `meter_span`) gains both when opened, and keeps what it held.
    #[test]
    fn an_older_database_gains_the_event_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        drop(Store::open(&path).unwrap());
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE meter_events; DROP TABLE meter_span;
                 INSERT INTO agents VALUES ('gw', 7, 0);",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let tables: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('meter_events', 'meter_span')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2);
        let seq: i64 = store
            .conn
            .query_row("SELECT last_seq FROM agents WHERE id = 'gw'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(seq, 7);
        let site = crate::config::Config::from_toml(
            "[[meters]]\nid = \"m\"\nrole = \"facility\"\nnominal_max_watts = 1000.0",
        )
        .unwrap()
        .build()
        .unwrap();
        // Nothing reported yet: the whole period is unreported, bounded by the rating.
        let b = period_bounds(&store, &site, 0, MINUTE_MS, Resolution::Minute).unwrap();
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].kind, "not_reported");
        let s = b.spreads[&("default".to_owned(), Role::Facility)];
        assert!((s.above - 1000.0 * 60.0 * RATE_SLACK).abs() < 1e-6, "{s:?}");
    }

    /// A database that held energy before the bounds: its past is judged by
    /// complete minutes (exact when all are, else unbounded), not taken as
    /// "not reported".
    #[test]
    fn a_database_from_before_bounds_keeps_its_complete_past() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        let t = 1_795_000_000_000i64.div_euclid(DAY_MS) * DAY_MS + HOUR_MS;
        {
            let store = Store::open(&path).unwrap();
            store
                .conn
                .execute_batch("DROP TABLE meter_events; DROP TABLE meter_span;")
                .unwrap();
            for (k, complete) in [(0, true), (1, true), (2, false)] {
                let m = t + k * MINUTE_MS;
                for (res, start) in [("minute", m), ("hour", t), ("day", t - HOUR_MS)] {
                    for (role, joules) in [("facility", 1.2e6), ("it", 1.0e6)] {
                        store
                            .conn
                            .execute(
                                "INSERT INTO energy VALUES (?1, ?2, 'default', ?3, ?4)
                                 ON CONFLICT DO UPDATE SET joules = joules + excluded.joules",
                                params![res, start, role, joules],
                            )
                            .unwrap();
                    }
                }
                if complete {
                    store
                        .conn
                        .execute(
                            "INSERT INTO coverage VALUES ('minute', ?1, '*', 1)",
                            params![m],
                        )
                        .unwrap();
                }
            }
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(bounds_since(&store).unwrap(), Some(t - HOUR_MS + DAY_MS));
        let site = crate::config::Config::from_toml(
            "[[meters]]\nid = \"f\"\nrole = \"facility\"\n\
             [[meters]]\nid = \"i\"\nrole = \"it\"\nit_point = \"it_input\"",
        )
        .unwrap()
        .build()
        .unwrap();
        let p = crate::windows::period(&store, &site, t, t + 2 * MINUTE_MS, Resolution::Minute)
            .unwrap();
        assert_eq!((p.pue, p.pue_exported), (Some(1.2), true), "{p:?}");
        assert_eq!(p.pue_uncertainty_ratio, Some(0.0));
        assert!(p.events.is_empty(), "{:?}", p.events);
        let p = crate::windows::period(&store, &site, t, t + 3 * MINUTE_MS, Resolution::Minute)
            .unwrap();
        assert!(!p.pue_exported && p.pue_upper.is_none(), "{p:?}");
        assert_eq!(p.events[0].kind, "incomplete_before_bounds");
        // Opening again keeps the instant.
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(bounds_since(&store).unwrap(), Some(t - HOUR_MS + DAY_MS));
    }

    /// A reset and a swap are stored with their times: after a restart the
    /// loaded meter still counts them and a period still lists them.
    #[test]
    fn events_survive_a_restart() {
        use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let site = crate::config::Config::from_toml(
            "[[meters]]\nid = \"m\"\nrole = \"facility\"\nnominal_max_watts = 1000.0",
        )
        .unwrap()
        .build()
        .unwrap();
        let t0 = 1_795_000_000_000i64.div_euclid(HOUR_MS) * HOUR_MS;
        // 500 W, read every 10 s; a reset at 100 s, a new meter from 200 s.
        let value = |k: i64| match k {
            ..=9 => 1e6 + 5000.0 * k as f64,
            10..=19 => 5000.0 * (k - 10) as f64 + 2500.0,
            _ => 9e9 + 5000.0 * (k - 20) as f64,
        };
        let mut state = State::new(&site);
        let mut store = Store::open(&path).unwrap();
        for k in 0..=30 {
            let t = t0 + k * 10_000;
            let batch = Batch {
                version: VERSION,
                agent: "gw".into(),
                seq: k as u64 + 1,
                first_seq: None,
                node: "gw".into(),
                created_ms: t,
                gpus: vec![],
                readings: vec![Reading {
                    ts_ms: t,
                    entity: Entity::Meter("m".into()),
                    quantity: Quantity::EnergyJoules,
                    value: value(k),
                }],
            };
            let (_, changes) = state.apply(&batch, &site, t);
            store.commit("gw", &state, &changes, &site).unwrap();
        }
        drop(store);
        let store = Store::open(&path).unwrap();
        let mut loaded = State::new(&site);
        store.load(&mut loaded).unwrap();
        let acc = &loaded.meters["m"].acc;
        assert_eq!((acc.resets, acc.swaps), (1, 1));
        assert_eq!(acc.last_swap, Some((t0 + 190_000, t0 + 220_000)));
        let b = period_bounds(&store, &site, t0, t0 + 300_000, Resolution::Minute).unwrap();
        let kinds: Vec<(&str, i64, i64)> = b
            .events
            .iter()
            .filter(|e| e.kind != "glitch")
            .map(|e| (e.kind, e.from_ms, e.to_ms))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("reset", t0 + 90_000, t0 + 100_000),
                ("swap", t0 + 190_000, t0 + 220_000),
            ]
        );
        // The reset's tail: at most 1 kW × 11.1 s less the 2.5 kJ counted
        // after it; the swap: from the old meter's last reading to the new
        // one's first, 1 kW × 11.1 s (the new meter's 10 kJ from 200 s to
        // 220 s are counted).
        let s = b.spreads[&("default".to_owned(), Role::Facility)];
        assert!(
            (s.above - (11_100.0 - 2_500.0 + 11_100.0)).abs() < 1e-6,
            "{s:?}"
        );
        assert_eq!((s.below, s.unmeasured), (0.0, 12_500.0));
        assert_eq!(
            loaded.meters["m"].acc.counted,
            45_000.0 + 47_500.0 + 50_000.0
        );
    }

    #[test]
    fn an_event_inside_a_period_costs_only_its_unknown_part() {
        // A 100 s counter gap of 10 kJ, 0 unknown, meter rated 1 kW.
        let s = event_spread(
            EventKind::Gap,
            (100_000, 200_000),
            10_000.0,
            0.0,
            1000.0,
            (MINUTE_MS, 240_000),
        );
        assert_eq!(
            s,
            Spread {
                below: 0.0,
                above: 0.0,
                unmeasured: 10_000.0
            }
        );
        // Cut in the middle: 5 kJ counted inside; really between 0 (all of it
        // could fall outside: 50 s × 1.1 kW ≥ 10 kJ? no: 55.1 kJ, so 0) and
        // min(10 kJ, 55.1 kJ) = 10 kJ.
        let s = event_spread(
            EventKind::Gap,
            (100_000, 200_000),
            10_000.0,
            0.0,
            1000.0,
            (150_000, 240_000),
        );
        assert_eq!(
            (s.below, s.above, s.unmeasured),
            (5_000.0, 5_000.0, 5_000.0)
        );
        // A meter rated at the gap's mean power (100 W) bounds the cut part:
        // between 10 kJ − 100 W × (50 s × 1.1 + 0.1 s) and 100 W × 55.1 s.
        let s = event_spread(
            EventKind::Gap,
            (100_000, 200_000),
            10_000.0,
            0.0,
            100.0,
            (150_000, 240_000),
        );
        assert!(
            (s.below - 510.0).abs() < 1e-9 && (s.above - 510.0).abs() < 1e-9,
            "{s:?}"
        );
        // A reset's tail: unbounded without a rating, even inside.
        let s = event_spread(
            EventKind::Reset,
            (100_000, 110_000),
            500.0,
            f64::INFINITY,
            f64::INFINITY,
            (0, 240_000),
        );
        assert!(s.above.is_infinite() && s.below == 0.0);
        // Not in the period at all: nothing.
        let s = event_spread(
            EventKind::Gap,
            (100_000, 200_000),
            10_000.0,
            0.0,
            1000.0,
            (200_000, 240_000),
        );
        assert_eq!(s, Spread::default());
    }
}
