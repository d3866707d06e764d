//! The collection loop: one tick per interval, every source collected
//! concurrently under its own timeout, then the cached state updated and one
//! batch handed to the shipper.
//!
//! A late tick is delayed, not bunched (`MissedTickBehavior::Delay`). A source
//! that fails is logged once when it goes down and once when it recovers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcwatt_wire::GpuInfo;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::metrics::State;
use crate::ship::{stopped, Shipper};
use crate::sources::{Collected, Source};

/// Runs ticks until `stop` turns true.
pub async fn run(
    sources: Vec<Arc<Source>>,
    interval: Duration,
    state: Arc<State>,
    mut shipper: Option<Shipper>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Per source label: was it up at the last tick (absent before the first).
    let mut was_up: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let results = collect_all(&sources).await;

        let mut gpus: Vec<GpuInfo> = Vec::new();
        let mut readings = Vec::new();
        state.update(|snap| {
            for (source, (took, c)) in sources.iter().zip(&results) {
                snap.apply(&source.label(), source.meter(), c, *took);
            }
        });
        for (source, (_, c)) in sources.iter().zip(results) {
            log_transition(source, &c, &mut was_up);
            gpus.extend(c.gpus.into_iter().map(|g| g.info));
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
