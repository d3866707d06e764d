//! The booking of silent GPUs' unknown minutes: GPUs whose agent has gone
//! quiet get their closed minutes booked `unknown` (`no_data`) as they
//! close, once, without waiting for the GPU to report again. The scan of
//! every GPU runs on a read connection; the booking, checked again, under
//! the write lock.

use rusqlite::{params, OptionalExtension};

use dcwatt_wire::time::MINUTE_MS;

use super::delivery::attribute;
use super::{Store, StoreError};
use crate::delivery::{floor_minute, DeliveredMinute, DeliveryState, UNKNOWN_GAP_MAX_MINUTES};
use crate::site::Site;

/// (UUID, node, agent, last reading, booked stretch's start and end) of a
/// GPU the silence booking looks at.
type SilentGpu = (
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// The GPUs whose owning agent the collector has not heard from (no batch
/// applied, committed) since `?1`: [`SilentGpu`] rows. Agents that still
/// send are catching up, or report the GPU down.
macro_rules! silent_gpus_sql {
    () => {
        "SELECT g.uuid, COALESCE(json_extract(g.state, '$.node'), ''),
         COALESCE(json_extract(g.state, '$.agent'), ''),
         json_extract(g.state, '$.delivery.last_ms'), s.from_ms, s.through_ms
         FROM gpus g LEFT JOIN delivery_silence s ON s.uuid = g.uuid
         AND s.from_ms = (SELECT MAX(from_ms) FROM delivery_silence WHERE uuid = g.uuid)
         LEFT JOIN agents a ON a.id = json_extract(g.state, '$.agent')
         WHERE COALESCE(a.last_seen_ms, 0) <= ?1"
    };
}

fn silent_gpu(r: &rusqlite::Row<'_>) -> rusqlite::Result<SilentGpu> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

/// A booking pass's (heard after, end): agents heard from before the first
/// are silent; minutes before the second are closed for silence.
fn silence_bounds(site: &Site, now_ms: i64) -> (i64, i64) {
    let after = i64::try_from(site.sla.silence_after.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms - MINUTE_MS - site.close_after_ms.max(after);
    (
        now_ms.saturating_sub(after),
        floor_minute(cutoff) + MINUTE_MS,
    )
}

/// The (stretch start, first minute to book) of a silent GPU, or `None`
/// when it has nothing to book before `end` (never read, released by the
/// operator, or booked up to `end` already). The same silence goes on where
/// the last pass stopped; a new one starts after the last reading (at most
/// a day back).
fn silence_stretch(g: &SilentGpu, end: i64) -> Option<(i64, i64)> {
    let (_, _, agent, last_ms, from, through) = g;
    let last_ms = last_ms.filter(|t| *t > 0)?;
    if agent.is_empty() {
        return None;
    }
    let silent_from = floor_minute(last_ms) + MINUTE_MS;
    let (from, begin) = match (from, through) {
        (Some(f), Some(t)) if *t >= silent_from => (*f, *t),
        _ => {
            let b = silent_from.max(end - UNKNOWN_GAP_MAX_MINUTES * MINUTE_MS);
            (b, b)
        }
    };
    (begin < end).then_some((from, begin))
}

/// The most GPU-minutes of silence one booking pass books (a bound on the
/// pass's work after a long stop of the collector; the rest follows in the
/// next passes).
pub const SILENCE_MINUTES_PER_PASS: usize = 100_000;

impl Store {
    /// Books the closed minutes of GPUs that stopped reporting as
    /// `unknown` (`no_data`), as they close, without waiting for the GPU to
    /// report again: every GPU the collector knows whose owning agent it
    /// has not heard from (no batch applied) for `[sla] silence_after`
    /// (one released by the operator is not booked), from the minute after
    /// its last reading's to the last minute ended `[sla] silence_after`
    /// (at least `close_after`) before `now_ms` (one silence booked for at most
    /// [`UNKNOWN_GAP_MAX_MINUTES`] before it is first seen), split among
    /// the leases covering each minute (none: nothing booked). Each GPU's
    /// booked stretch is kept (`delivery_silence`, in the same
    /// transaction), so a minute is never booked twice: not by the next
    /// pass, not after a restart, not when the GPU reports again (its
    /// tracker's unknown minutes and any late data for the stretch are
    /// skipped by [`attribute`]). Returns the GPU-minutes booked.
    pub fn book_silences(&mut self, site: &Site, now_ms: i64) -> Result<usize, StoreError> {
        let candidates = self.silence_candidates(site, now_ms)?;
        self.book_silences_among(site, now_ms, &candidates)
    }

    /// The GPUs a booking pass at `now_ms` would book minutes for, read
    /// without a write transaction (on a read connection, the committer goes
    /// on meanwhile: the scan reads every GPU's state). A GPU that falls
    /// silent after this read is found by the next pass.
    pub fn silence_candidates(&self, site: &Site, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let (heard_after, end) = silence_bounds(site, now_ms);
        let rows: Vec<SilentGpu> = self
            .conn
            .prepare_cached(concat!(silent_gpus_sql!(), " ORDER BY g.uuid"))?
            .query_map(params![heard_after], silent_gpu)?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .filter(|g| silence_stretch(g, end).is_some())
            .map(|g| g.0)
            .collect())
    }

    /// [`Self::book_silences`] for the given GPUs only (each checked again
    /// inside the booking transaction, on the committed state).
    pub fn book_silences_among(
        &mut self,
        site: &Site,
        now_ms: i64,
        uuids: &[String],
    ) -> Result<usize, StoreError> {
        let (heard_after, end) = silence_bounds(site, now_ms);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Committed state only: an ingest that is not committed has not
        // booked its minutes either.
        let mut gpus: Vec<SilentGpu> = Vec::new();
        for uuid in uuids {
            gpus.extend(
                tx.prepare_cached(concat!(silent_gpus_sql!(), " AND g.uuid = ?2"))?
                    .query_row(params![heard_after, uuid], silent_gpu)
                    .optional()?,
            );
        }
        let mut budget = SILENCE_MINUTES_PER_PASS;
        let mut booked = 0;
        for g in gpus {
            let Some((from, begin)) = silence_stretch(&g, end) else {
                continue;
            };
            if budget == 0 {
                break;
            }
            let (uuid, node) = (g.0, g.1);
            let stop = end.min(begin.saturating_add(budget as i64 * MINUTE_MS));
            let mut minutes = Vec::new();
            let mut m = begin;
            while m < stop {
                minutes.push((
                    uuid.clone(),
                    node.clone(),
                    DeliveredMinute {
                        minute_ms: m,
                        state: DeliveryState::Unknown,
                        reason: "no_data",
                        cause: "unknown",
                    },
                ));
                m += MINUTE_MS;
            }
            budget = budget.saturating_sub(minutes.len());
            booked += minutes.len();
            attribute(&tx, site, &minutes)?;
            tx.prepare_cached(
                "INSERT INTO delivery_silence (uuid, from_ms, through_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (uuid, from_ms) DO UPDATE SET through_ms = excluded.through_ms",
            )?
            .execute(params![uuid, from, stop])?;
        }
        // Stretches no acceptable reading can fall in any more (readings
        // older than `max_reading_age` are refused at ingest) go.
        tx.prepare_cached("DELETE FROM delivery_silence WHERE through_ms < ?1")?
            .execute(params![now_ms
                .saturating_sub(site.max_age_ms)
                .saturating_sub(2 * MINUTE_MS)])?;
        tx.commit()?;
        Ok(booked)
    }
}
