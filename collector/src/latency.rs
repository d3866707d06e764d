//! The ingest latency histogram: fixed buckets, updated without a lock,
//! read by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// A latency histogram with fixed buckets, updated without a lock.
#[derive(Default)]
pub struct Latency {
    /// Observations per bucket of [`LATENCY_BUCKETS_S`] (not cumulative), then above the last.
    counts: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    /// Sum of the observations, µs.
    sum_us: AtomicU64,
}

/// Upper bounds of the ingest latency buckets, seconds.
pub const LATENCY_BUCKETS_S: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative histogram, as [`Latency::snapshot`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// `(upper bound s, count ≤ it)` per bucket of [`LATENCY_BUCKETS_S`].
    pub buckets: Vec<(f64, u64)>,
    /// The sum of the observations, s.
    pub sum_s: f64,
    /// How many observations.
    pub count: u64,
}

impl Latency {
    /// Counts one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|le| s <= *le)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The cumulative buckets, the sum and the count.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS_S
            .iter()
            .zip(&self.counts)
            .map(|(le, n)| {
                acc += n.load(Ordering::Relaxed);
                (*le, acc)
            })
            .collect();
        let count = acc + self.counts[LATENCY_BUCKETS_S.len()].load(Ordering::Relaxed);
        LatencySnapshot {
            buckets,
            sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count,
        }
    }
}
