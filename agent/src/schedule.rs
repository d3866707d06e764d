//! The collection loop: one tick per interval, every source collected
//! concurrently under its own timeout, then the cached state updated and one
//! batch handed to the shipper.
//!
//! A late tick is delayed, not bunched (`MissedTickBehavior::Delay`). A source
//! that fails is logged once when it goes down and once when it recovers.
//!
//! Facility-meter sources are started by the tick (when due: each may have its
//! own `interval`) as tasks of their own, under their own timeout. The tick
//! waits at most three quarters of an interval for the reads it started itself
//! (never for older ones): a fast meter lands in the same batch as the GPUs, a
//! slow one (a BMC can take 30 s) lands in the batch of the tick at which it
//! finishes, and is not started again until then. So a slow meter never delays
//! the GPUs' sampling, another meter or `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcwatt_wire::GpuInfo;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::metrics::State;
use crate::ship::{stopped, Shipper};
use crate::sources::meter::{ErrorKind, MeterError, MeterStatus};
use crate::sources::{Collected, Source};

/// One meter source and its read in flight, if any.
struct MeterSlot {
    source: Arc<Source>,
    last_start: Option<Instant>,
    inflight: Option<JoinHandle<(Duration, Collected)>>,
    was_up: BTreeMap<String, bool>,
}

/// Runs ticks until `stop` turns true.
pub async fn run(
    sources: Vec<Arc<Source>>,
    interval: Duration,
    state: Arc<State>,
    mut shipper: Option<Shipper>,
    mut stop: watch::Receiver<bool>,
) {
    let (meter_sources, sources): (Vec<_>, Vec<_>) =
        sources.into_iter().partition(|s| s.is_meter_source());
    let mut meters: Vec<MeterSlot> = meter_sources
        .into_iter()
        .map(|source| MeterSlot {
            source,
            last_start: None,
            inflight: None,
            was_up: BTreeMap::new(),
        })
        .collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Per source label: was it up at the last tick (absent before the first).
    let mut was_up: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped(&mut stop) => {
                for m in &meters {
                    if let Some(h) = &m.inflight {
                        h.abort();
                    }
                }
                return;
            }
        }
        let tick_start = Instant::now();
        start_due_meters(&mut meters, interval, tick_start);
        let mut results = collect_all(&sources).await;
        let meter_results = finished_meters(&mut meters, tick_start, interval * 3 / 4).await;

        let mut gpus: Vec<GpuInfo> = Vec::new();
        let mut readings = Vec::new();
        state.update(|snap| {
            for (source, (took, c)) in sources.iter().zip(results.iter_mut()) {
                snap.apply(&source.label(), source.meter(), c, *took);
            }
        });
        for (source, (_, c)) in sources.iter().zip(results) {
            log_transition(source, &c, &mut was_up);
            gpus.extend(c.gpus.into_iter().map(|g| g.info));
            readings.extend(c.readings);
        }
        if !meter_results.is_empty() {
            state.update(|snap| {
                for (i, took, c) in &meter_results {
                    snap.apply_meters(&meters[*i].source.label(), c, *took);
                }
            });
        }
        for (i, _, c) in meter_results {
            let label = meters[i].source.label();
            log_meters(&label, &c, &mut meters[i].was_up);
            readings.extend(c.readings);
        }
        debug!(readings = readings.len(), "Tick collected.");
        if let Some(s) = shipper.as_mut() {
            s.submit(gpus, readings).await;
        }
    }
}

/// Collects every source at once; each result comes back with its duration.
async fn collect_all(sources: &[Arc<Source>]) -> Vec<(Duration, Collected)> {
    let handles: Vec<_> = sources
        .iter()
        .map(|s| {
            let s = Arc::clone(s);
            tokio::spawn(async move {
                let start = Instant::now();
                let limit = s.timeout();
                let c = tokio::time::timeout(limit, s.collect())
                    .await
                    .unwrap_or_else(|_| {
                        Collected::failed(format!(
                            "{}: timed out after {}",
                            s.label(),
                            humantime_serde::re::humantime::format_duration(limit)
                        ))
                    });
                (start.elapsed(), c)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| {
            (
                Duration::ZERO,
                Collected::failed(format!("collection task failed: {e}")),
            )
        }));
    }
    out
}

fn log_transition(source: &Source, c: &Collected, was_up: &mut BTreeMap<String, bool>) {
    let label = source.label();
    let up = c.error.is_none();
    let before = was_up.insert(label.clone(), up);
    match (&c.error, before) {
        (Some(e), Some(true) | None) => match source.meter() {
            Some(meter) => warn!(meter = %meter, error = %e, "Meter read failed."),
            None => warn!(source = %label, error = %e, "Source collection failed."),
        },
        (Some(e), Some(false)) => debug!(source = %label, error = %e, "Source still failing."),
        (None, Some(false)) => info!(source = %label, "Source recovered."),
        (None, _) => {}
    }
}

/// Starts a read of every meter source that is idle and due.
fn start_due_meters(meters: &mut [MeterSlot], tick: Duration, now: Instant) {
    for m in meters.iter_mut() {
        if m.inflight.is_some() {
            continue;
        }
        // Due when its own interval (less half a tick of jitter) has passed.
        let every = m.source.interval().unwrap_or(tick);
        let due = m
            .last_start
            .is_none_or(|t| now.duration_since(t) + tick / 2 >= every);
        if !due {
            continue;
        }
        m.last_start = Some(now);
        let source = Arc::clone(&m.source);
        m.inflight = Some(tokio::spawn(async move {
            let start = Instant::now();
            let limit = source.timeout();
            let c = tokio::time::timeout(limit, source.collect())
                .await
                .unwrap_or_else(|_| timed_out(&source, limit));
            (start.elapsed(), c)
        }));
    }
}

/// Collects the meter reads that finished: those started at this tick
/// (`tick_start`) are waited for until `tick_start + grace`, older ones only if
/// already done. Returns them by slot index; the others stay in flight.
async fn finished_meters(
    meters: &mut [MeterSlot],
    tick_start: Instant,
    grace: Duration,
) -> Vec<(usize, Duration, Collected)> {
    let deadline = tick_start + grace;
    let mut out = Vec::new();
    for (i, m) in meters.iter_mut().enumerate() {
        let started_now = m.last_start == Some(tick_start);
        let Some(h) = m.inflight.as_mut() else {
            continue;
        };
        let joined = if h.is_finished() {
            Some(h.await)
        } else if started_now {
            tokio::time::timeout_at(deadline.into(), h).await.ok()
        } else {
            None
        };
        let Some(joined) = joined else { continue };
        m.inflight = None;
        let (took, c) = joined.unwrap_or_else(|e| {
            (
                Duration::ZERO,
                Collected::failed(format!("collection task failed: {e}")),
            )
        });
        out.push((i, took, c));
    }
    out
}

/// What a source that ran past its timeout reports: each of its meters down.
fn timed_out(source: &Source, limit: Duration) -> Collected {
    let e = MeterError::new(
        ErrorKind::Timeout,
        format!(
            "{}: timed out after {}",
            source.label(),
            humantime_serde::re::humantime::format_duration(limit)
        ),
    );
    let mut c = Collected::failed(e.to_string());
    c.meters = source
        .meters()
        .into_iter()
        .map(|id| MeterStatus::down(id, e.clone()))
        .collect();
    c
}

/// Logs each meter once when it goes down and once when it recovers.
fn log_meters(label: &str, c: &Collected, was_up: &mut BTreeMap<String, bool>) {
    if c.meters.is_empty() {
        let up = c.error.is_none();
        let before = was_up.insert(label.to_owned(), up);
        match (&c.error, before) {
            (Some(e), Some(true) | None) => {
                warn!(source = %label, error = %e, "Source collection failed.")
            }
            (None, Some(false)) => info!(source = %label, "Source recovered."),
            _ => {}
        }
        return;
    }
    for m in &c.meters {
        let before = was_up.insert(m.id.clone(), m.error.is_none());
        match (&m.error, before) {
            (Some(e), Some(true) | None) => {
                warn!(meter = %m.id, kind = e.kind.as_str(), error = %e, "Meter read failed.")
            }
            (Some(e), Some(false)) => debug!(meter = %m.id, error = %e, "Meter still failing."),
            (None, Some(false)) => info!(meter = %m.id, "Meter recovered."),
            (None, _) => {}
        }
    }
}
