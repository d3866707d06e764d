//! Energy from readings: counters with resets, power integration with a gap
//! limit, and per-minute buckets so any window's energy is a sum.
//!
//! Rules (DESIGN "Energy and PUE rules"): energy comes from counters where a
//! counter exists; a decrease is a reset, and the post-reset value is the energy
//! since the reset, counted once; power is integrated (trapezoid) only where no
//! counter exists, and never across a gap longer than `max_gap`.

use std::collections::VecDeque;

/// Energy attributed to a time span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    /// Start of the span, Unix ms.
    pub from_ms: i64,
    /// End of the span, Unix ms.
    pub to_ms: i64,
    /// Energy in the span, J (never negative).
    pub joules: f64,
}

/// What one counter reading meant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CounterStep {
    /// The first reading: the base, no energy yet.
    Baseline,
    /// A normal increase (or no change).
    Delta(Span),
    /// The counter went down: a reset; the span's energy is the post-reset value.
    Reset(Span),
    /// Not after the previous reading (out of order or repeated): ignored.
    OutOfOrder,
}

/// Tracks one energy counter.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    last: Option<(i64, f64)>,
}

impl Counter {
    /// Feeds one reading (Unix ms, J).
    pub fn observe(&mut self, ts_ms: i64, value: f64) -> CounterStep {
        let Some((t0, v0)) = self.last else {
            self.last = Some((ts_ms, value));
            return CounterStep::Baseline;
        };
        if ts_ms <= t0 {
            return CounterStep::OutOfOrder;
        }
        self.last = Some((ts_ms, value));
        if value >= v0 {
            CounterStep::Delta(Span {
                from_ms: t0,
                to_ms: ts_ms,
                joules: value - v0,
            })
        } else {
            CounterStep::Reset(Span {
                from_ms: t0,
                to_ms: ts_ms,
                joules: value,
            })
        }
    }

    /// The last reading, if any.
    pub fn last(&self) -> Option<(i64, f64)> {
        self.last
    }
}

/// What one power reading meant for a power-only meter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PowerStep {
    /// The first reading, or the first after a gap: the base, no energy yet.
    Baseline,
    /// Integrated since the previous reading.
    Energy(Span),
    /// The previous reading is older than `max_gap`: not integrated.
    Gap,
    /// Not after the previous reading: ignored.
    OutOfOrder,
}

/// Integrates one power series (trapezoid).
#[derive(Debug, Clone, Default)]
pub struct Integrator {
    last: Option<(i64, f64)>,
}

impl Integrator {
    /// Feeds one reading (Unix ms, W).
    pub fn observe(&mut self, ts_ms: i64, watts: f64, max_gap_ms: i64) -> PowerStep {
        let Some((t0, w0)) = self.last else {
            self.last = Some((ts_ms, watts));
            return PowerStep::Baseline;
        };
        if ts_ms <= t0 {
            return PowerStep::OutOfOrder;
        }
        self.last = Some((ts_ms, watts));
        if ts_ms - t0 > max_gap_ms {
            return PowerStep::Gap;
        }
        let dt = (ts_ms - t0) as f64 / 1000.0;
        PowerStep::Energy(Span {
            from_ms: t0,
            to_ms: ts_ms,
            joules: (w0 + watts) / 2.0 * dt,
        })
    }
}

/// The bucket width: one minute, aligned to UTC.
pub const BUCKET_MS: i64 = 60_000;

/// Energy per UTC minute, for trailing windows. Spans are spread over the
/// minutes they cover in proportion to time (energy is taken as evenly spread
/// within one reading interval).
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    /// (minute start, J), ascending, contiguous is not required.
    minutes: VecDeque<(i64, f64)>,
}

impl Buckets {
    /// How many minutes are kept (a little over one day).
    pub const KEEP: usize = 24 * 60 + 5;

    /// Adds a span's energy.
    pub fn add(&mut self, span: Span) {
        if span.to_ms <= span.from_ms {
            self.add_to(span.to_ms.div_euclid(BUCKET_MS) * BUCKET_MS, span.joules);
            return;
        }
        let len = (span.to_ms - span.from_ms) as f64;
        let mut t = span.from_ms;
        while t < span.to_ms {
            let start = t.div_euclid(BUCKET_MS) * BUCKET_MS;
            let end = (start + BUCKET_MS).min(span.to_ms);
            self.add_to(start, span.joules * (end - t) as f64 / len);
            t = end;
        }
    }

    fn add_to(&mut self, minute: i64, joules: f64) {
        // Spans arrive roughly in time order: search from the back.
        let pos = self.minutes.iter().rposition(|(m, _)| *m <= minute);
        match pos {
            Some(i) if self.minutes[i].0 == minute => self.minutes[i].1 += joules,
            Some(i) => self.minutes.insert(i + 1, (minute, joules)),
            None => self.minutes.push_front((minute, joules)),
        }
        while self.minutes.len() > Self::KEEP {
            self.minutes.pop_front();
        }
    }

    /// Energy in the minutes that start in `[from_ms, to_ms)`.
    pub fn sum(&self, from_ms: i64, to_ms: i64) -> f64 {
        self.minutes
            .iter()
            .filter(|(m, _)| *m >= from_ms && *m < to_ms)
            .map(|(_, j)| j)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_deltas_and_reset_count_once() {
        let mut c = Counter::default();
        assert_eq!(c.observe(1000, 500.0), CounterStep::Baseline);
        assert_eq!(
            c.observe(2000, 800.0),
            CounterStep::Delta(Span {
                from_ms: 1000,
                to_ms: 2000,
                joules: 300.0
            })
        );
        // Reset: the counter restarted from zero and counted 40 J since.
        assert_eq!(
            c.observe(3000, 40.0),
            CounterStep::Reset(Span {
                from_ms: 2000,
                to_ms: 3000,
                joules: 40.0
            })
        );
        assert_eq!(c.observe(3000, 90.0), CounterStep::OutOfOrder);
        assert_eq!(c.observe(2500, 90.0), CounterStep::OutOfOrder);
        assert_eq!(
            c.observe(4000, 100.0),
            CounterStep::Delta(Span {
                from_ms: 3000,
                to_ms: 4000,
                joules: 60.0
            })
        );
    }

    #[test]
    fn integrator_is_trapezoid_and_refuses_gaps() {
        let mut p = Integrator::default();
        assert_eq!(p.observe(0, 100.0, 10_000), PowerStep::Baseline);
        assert_eq!(
            p.observe(2000, 300.0, 10_000),
            PowerStep::Energy(Span {
                from_ms: 0,
                to_ms: 2000,
                joules: 400.0
            })
        );
        assert_eq!(p.observe(20_000, 300.0, 10_000), PowerStep::Gap);
        assert_eq!(
            p.observe(21_000, 100.0, 10_000),
            PowerStep::Energy(Span {
                from_ms: 20_000,
                to_ms: 21_000,
                joules: 200.0
            })
        );
    }

    #[test]
    fn buckets_split_spans_across_minutes() {
        let mut b = Buckets::default();
        // 90 J over [30 s, 120 s): 30 s in minute 0, 60 s in minute 1.
        b.add(Span {
            from_ms: 30_000,
            to_ms: 120_000,
            joules: 90.0,
        });
        b.add(Span {
            from_ms: 120_000,
            to_ms: 121_000,
            joules: 5.0,
        });
        assert!((b.sum(0, 60_000) - 30.0).abs() < 1e-9);
        assert!((b.sum(60_000, 120_000) - 60.0).abs() < 1e-9);
        assert!((b.sum(120_000, 180_000) - 5.0).abs() < 1e-9);
        assert!((b.sum(0, 1_000_000) - 95.0).abs() < 1e-9);
        // Out-of-order minute goes in its place.
        b.add(Span {
            from_ms: 0,
            to_ms: 1000,
            joules: 1.0,
        });
        assert!((b.sum(0, 60_000) - 31.0).abs() < 1e-9);
    }
}
