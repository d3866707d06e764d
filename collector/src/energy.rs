//! Energy from readings: counters with resets, power integration with a gap
//! limit, and per-minute buckets so any window's energy is a sum.
//!
//! Rules: energy comes from counters where a counter exists; a counter step is
//! judged against the most the counter can have counted since the previous
//! reading ([`Counter::observe`]): a decrease to a value it can have counted
//! from zero is a reset (the value counted once), a tiny dip is rounding
//! noise, anything else a glitch (nothing counted); power is integrated
//! (trapezoid) only where no counter exists, and never across a gap longer
//! than `max_gap`.

use std::collections::VecDeque;

use dcwatt_wire::time::MINUTE_MS;

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
    /// A normal increase, no change, or a dip held as noise (0 J).
    Delta(Span),
    /// The counter went down to a value it can have counted up from zero
    /// since the previous reading: a reset; the span's energy is that value.
    Reset(Span),
    /// A jump up beyond the rating, or down to a value no reset explains:
    /// nothing counted, the previous reading stays the base.
    Glitch,
    /// The [`GLITCH_STREAK_REBASE`]th glitch in a row at one consistent new
    /// level: a replaced meter. Its reading is the new base; the span is what
    /// the new meter counted from its first reading of the streak to this
    /// one; nothing is counted from the old meter's last reading to the new
    /// meter's first.
    Rebased(Span),
    /// Not after the previous reading (out of order or repeated): ignored.
    OutOfOrder,
}

/// After this many consecutive glitches at one consistent new level (each a
/// believable step from the one before), the level is taken as a new base.
pub const GLITCH_STREAK_REBASE: u32 = 3;

/// A decrease of at most this fraction of the counter's value is rounding
/// noise (a gateway keeping the counter as a 32-bit float is off by up to
/// 2⁻²³ ≈ 1.2 × 10⁻⁷ of it): held, nothing counted, not a reset.
pub const DIP_RELATIVE: f64 = 1e-6;

/// A counter step may exceed the rating × Δt by this factor (meter accuracy,
/// averaging) ...
pub const RATE_SLACK: f64 = 1.1;
/// ... plus the rating over this long (readings stamped a little before or
/// after the counter was read), ms.
pub const STAMP_SLACK_MS: f64 = 100.0;

/// Tracks one energy (or volume) counter and judges each reading against the
/// most the counter can have moved since the previous one.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    last: Option<(i64, f64)>,
    /// The glitches in a row so far: (Unix ms, value) of the last, and how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    streak: Option<(i64, f64, u32)>,
    /// The first glitch of the streak (Unix ms, value): where a new meter's
    /// counting starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    streak_start: Option<(i64, f64)>,
}

/// The most a counter rated at `max_rate` (its unit per second: W, m³/s) can
/// move in `dt_ms`.
pub fn max_step(max_rate: f64, dt_ms: i64) -> f64 {
    max_rate * (dt_ms as f64 * RATE_SLACK + STAMP_SLACK_MS) / 1000.0
}

impl Counter {
    /// Feeds one reading (Unix ms, counter value); `max_rate` is the most the
    /// counter can count per second (a meter's rating, a GPU's power limit,
    /// or a documented default).
    ///
    /// - up by at most `max_step`: counted;
    /// - down by at most [`DIP_RELATIVE`] of the value: noise, held (0 J);
    /// - down to at most `max_step`: a reset, the value counted;
    /// - anything else: a glitch, nothing counted, until
    ///   [`GLITCH_STREAK_REBASE`] in a row hold one level ([`CounterStep::Rebased`]).
    pub fn observe(&mut self, ts_ms: i64, value: f64, max_rate: f64) -> CounterStep {
        let Some((t0, v0)) = self.last else {
            self.last = Some((ts_ms, value));
            return CounterStep::Baseline;
        };
        if ts_ms <= t0 {
            return CounterStep::OutOfOrder;
        }
        let limit = max_step(max_rate, ts_ms - t0);
        let span = |joules| Span {
            from_ms: t0,
            to_ms: ts_ms,
            joules,
        };
        if value >= v0 && value - v0 <= limit {
            self.last = Some((ts_ms, value));
            self.streak = None;
            self.streak_start = None;
            return CounterStep::Delta(span(value - v0));
        }
        if value < v0 && v0 - value <= v0 * DIP_RELATIVE {
            self.last = Some((ts_ms, v0));
            self.streak = None;
            self.streak_start = None;
            return CounterStep::Delta(span(0.0));
        }
        if value < v0 && value <= limit {
            self.last = Some((ts_ms, value));
            self.streak = None;
            self.streak_start = None;
            return CounterStep::Reset(span(value));
        }
        // A glitch. Several in a row, each a believable step from the one
        // before, are a new level.
        let n = match self.streak {
            Some((tg, vg, n))
                if ts_ms > tg && value >= vg && value - vg <= max_step(max_rate, ts_ms - tg) =>
            {
                n + 1
            }
            _ => 1,
        };
        if n == 1 {
            self.streak_start = Some((ts_ms, value));
        }
        if n >= GLITCH_STREAK_REBASE {
            let (t1, v1) = self.streak_start.take().unwrap_or((ts_ms, value));
            self.last = Some((ts_ms, value));
            self.streak = None;
            return CounterStep::Rebased(Span {
                from_ms: t1,
                to_ms: ts_ms,
                joules: (value - v1).max(0.0),
            });
        }
        self.streak = Some((ts_ms, value, n));
        CounterStep::Glitch
    }

    /// The last reading taken as the base, if any.
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
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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

    /// The last reading (Unix ms, W), if any.
    pub fn last(&self) -> Option<(i64, f64)> {
        self.last
    }
}

/// One change to a curve, so a store can mirror it row by row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CurveEdit {
    /// A point was added.
    Add(i64, f64),
    /// The point at this instant was removed (merged into a newer one).
    Remove(i64),
    /// Every point before this instant was dropped.
    TrimBefore(i64),
}

/// A meter's counted energy as a function of time: cumulative joules at
/// reading instants, linear in between. Energy over any span the curve covers is
/// `at(b) - at(a)`, so every meter can be cut at the same instants, and a PUE is
/// a ratio of energies over one and the same interval.
#[derive(Debug, Clone, Default)]
pub struct Curve {
    /// (Unix ms, cumulative J), ascending in time.
    points: VecDeque<(i64, f64)>,
}

impl Curve {
    /// Points closer together than this are merged (the newer one kept), which
    /// bounds memory at one point per second per meter.
    pub const MIN_SPACING_MS: i64 = 1000;

    /// Appends the cumulative energy at `ts_ms` (after the last point) and says
    /// what changed.
    pub fn push(&mut self, ts_ms: i64, joules: f64) -> Vec<CurveEdit> {
        if self.points.back().is_some_and(|&(last, _)| ts_ms <= last) {
            return Vec::new();
        }
        let n = self.points.len();
        let mut edits = Vec::with_capacity(2);
        if n >= 2 && ts_ms - self.points[n - 2].0 < Self::MIN_SPACING_MS {
            edits.push(CurveEdit::Remove(self.points[n - 1].0));
            self.points[n - 1] = (ts_ms, joules);
        } else {
            self.points.push_back((ts_ms, joules));
        }
        edits.push(CurveEdit::Add(ts_ms, joules));
        edits
    }

    /// Drops points no longer needed to bracket `keep_from_ms`.
    pub fn trim(&mut self, keep_from_ms: i64) -> Option<CurveEdit> {
        let mut trimmed = false;
        while self.points.len() >= 2 && self.points[1].0 <= keep_from_ms {
            self.points.pop_front();
            trimmed = true;
        }
        let first = self.points.front()?.0;
        trimmed.then_some(CurveEdit::TrimBefore(first))
    }

    /// Rebuilds a curve from stored points (ascending).
    pub fn from_points(points: impl IntoIterator<Item = (i64, f64)>) -> Curve {
        Curve {
            points: points.into_iter().collect(),
        }
    }

    /// The first and last instants covered.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((self.points.front()?.0, self.points.back()?.0))
    }

    /// Cumulative energy at `ts_ms`, interpolated; `None` outside the curve.
    pub fn at(&self, ts_ms: i64) -> Option<f64> {
        let (first, last) = self.span()?;
        if ts_ms < first || ts_ms > last {
            return None;
        }
        let i = self.points.partition_point(|(t, _)| *t < ts_ms);
        let (t1, e1) = self.points[i];
        if t1 == ts_ms || i == 0 {
            return Some(e1);
        }
        let (t0, e0) = self.points[i - 1];
        Some(e0 + (e1 - e0) * (ts_ms - t0) as f64 / (t1 - t0) as f64)
    }

    /// The length of the step between the two points around `ts_ms`, ms (0
    /// on a point); `None` outside the curve. A long step is a stretch the
    /// curve only interpolates (a gap).
    pub fn step_at(&self, ts_ms: i64) -> Option<i64> {
        let (first, last) = self.span()?;
        if ts_ms < first || ts_ms > last {
            return None;
        }
        let i = self.points.partition_point(|(t, _)| *t < ts_ms);
        let t1 = self.points[i].0;
        if t1 == ts_ms || i == 0 {
            return Some(0);
        }
        Some(t1 - self.points[i - 1].0)
    }

    /// Energy in `[from_ms, to_ms]`, if the curve covers it.
    pub fn between(&self, from_ms: i64, to_ms: i64) -> Option<f64> {
        Some(self.at(to_ms)? - self.at(from_ms)?)
    }
}

/// A meter's energy in one UTC minute `[minute_ms, minute_ms + 60 s)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinuteEnergy {
    /// Start of the minute, Unix ms.
    pub minute_ms: i64,
    /// Energy in the minute, J: the counted-energy curve interpolated at both edges.
    pub joules: f64,
    /// True when readings bracket both edges with no gap, reset or stale stretch
    /// in between: the minute is measured, not estimated.
    pub complete: bool,
}

/// Cuts one meter's counted-energy curve into fixed UTC minutes. Each minute is
/// emitted once, when the first point after its end arrives.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Minutes {
    /// The last point of the curve (Unix ms, cumulative J).
    last_point: Option<(i64, f64)>,
    /// The last minute edge crossed (Unix ms, cumulative J there, and whether
    /// everything since it was measured cleanly).
    last_edge: Option<(i64, f64, bool)>,
}

impl Minutes {
    /// Feeds the next point of the curve. `clean` says whether the stretch since
    /// the previous point was measured (readings close enough, no gap, no reset).
    pub fn push(&mut self, ts_ms: i64, joules: f64, clean: bool, out: &mut Vec<MinuteEnergy>) {
        let Some((t0, e0)) = self.last_point else {
            self.last_point = Some((ts_ms, joules));
            if ts_ms.rem_euclid(MINUTE_MS) == 0 {
                // The very first reading sits on an edge: its minute is whole.
                self.last_edge = Some((ts_ms, joules, true));
            }
            return;
        };
        if ts_ms <= t0 {
            return;
        }
        let mut edge = (t0.div_euclid(MINUTE_MS) + 1) * MINUTE_MS;
        let crossed = edge <= ts_ms;
        while edge <= ts_ms {
            let at_edge = e0 + (joules - e0) * (edge - t0) as f64 / (ts_ms - t0) as f64;
            if let Some((prev, prev_joules, prev_clean)) = self.last_edge {
                if prev == edge - MINUTE_MS {
                    out.push(MinuteEnergy {
                        minute_ms: prev,
                        joules: at_edge - prev_joules,
                        complete: prev_clean && clean,
                    });
                }
            }
            // The running minute holds the rest of this stretch, if any is left.
            self.last_edge = Some((edge, at_edge, clean || edge == ts_ms));
            edge += MINUTE_MS;
        }
        if !crossed {
            if let Some(last) = &mut self.last_edge {
                last.2 &= clean;
            }
        }
        self.last_point = Some((ts_ms, joules));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_deltas_and_reset_count_once() {
        let mut c = Counter::default();
        let w = 1000.0; // rating, W
        assert_eq!(c.observe(1000, 500.0, w), CounterStep::Baseline);
        assert_eq!(
            c.observe(2000, 800.0, w),
            CounterStep::Delta(Span {
                from_ms: 1000,
                to_ms: 2000,
                joules: 300.0
            })
        );
        // Reset: the counter restarted from zero and counted 40 J since.
        assert_eq!(
            c.observe(3000, 40.0, w),
            CounterStep::Reset(Span {
                from_ms: 2000,
                to_ms: 3000,
                joules: 40.0
            })
        );
        assert_eq!(c.observe(3000, 90.0, w), CounterStep::OutOfOrder);
        assert_eq!(c.observe(2500, 90.0, w), CounterStep::OutOfOrder);
        assert_eq!(
            c.observe(4000, 100.0, w),
            CounterStep::Delta(Span {
                from_ms: 3000,
                to_ms: 4000,
                joules: 60.0
            })
        );
    }

    #[test]
    fn decreases_are_judged_against_the_rating() {
        let w = 1000.0;
        let mut c = Counter::default();
        c.observe(0, 1e12, w);
        // A float32 dip: noise, held; the next reading counts from the old value.
        let dip = CounterStep::Delta(Span {
            from_ms: 0,
            to_ms: 1000,
            joules: 0.0,
        });
        assert_eq!(c.observe(1000, 1e12 - 1.0, w), dip);
        assert_eq!(
            c.observe(2000, 1e12 + 100.0, w),
            CounterStep::Delta(Span {
                from_ms: 1000,
                to_ms: 2000,
                joules: 100.0
            })
        );
        // Down to far more than 1000 W × 1 s can have counted from zero: a glitch.
        assert_eq!(c.observe(3000, 5e11, w), CounterStep::Glitch);
        assert_eq!(c.last(), Some((2000, 1e12 + 100.0)));
        // Down to what 1 s can have counted: a reset.
        assert_eq!(
            c.observe(4000, 500.0, w),
            CounterStep::Reset(Span {
                from_ms: 2000,
                to_ms: 4000,
                joules: 500.0
            })
        );
        // Up beyond the rating: a glitch; three in a row, but not at one
        // consistent level (the second is below the first): no rebase.
        assert_eq!(c.observe(5000, 9e9, w), CounterStep::Glitch);
        assert_eq!(c.observe(6000, 8e9, w), CounterStep::Glitch);
        assert_eq!(c.observe(7000, 8e9 + 10.0, w), CounterStep::Glitch);
        // The third believable step at the new level: rebased there; the
        // new meter's counting from its first reading (6000) is kept.
        assert_eq!(
            c.observe(8000, 8e9 + 20.0, w),
            CounterStep::Rebased(Span {
                from_ms: 6000,
                to_ms: 8000,
                joules: 20.0
            })
        );
        assert_eq!(c.last(), Some((8000, 8e9 + 20.0)));
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
    fn minutes_are_cut_at_utc_edges_and_flag_unclean_stretches() {
        let mut m = Minutes::default();
        let mut out = Vec::new();
        // 100 W from 30 s: cumulative J = 100 × (t − 30 s).
        for t in (30..=200).step_by(10) {
            m.push(t * 1000, 100.0 * (t - 30) as f64, true, &mut out);
        }
        // Minutes [60, 120) and [120, 180) are complete; [0, 60) started mid-way.
        assert_eq!(
            out,
            vec![
                MinuteEnergy {
                    minute_ms: MINUTE_MS,
                    joules: 6000.0,
                    complete: true
                },
                MinuteEnergy {
                    minute_ms: 120_000,
                    joules: 6000.0,
                    complete: true
                },
            ]
        );
        out.clear();
        // A 100 s stretch that was not measured cleanly (a gap): the minutes it
        // touches are emitted, flagged incomplete.
        m.push(300_000, 100.0 * 270.0, false, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|w| !w.complete), "{out:?}");
        assert!((out.iter().map(|w| w.joules).sum::<f64>() - 100.0 * 120.0).abs() < 1e-9);
        out.clear();
        // The unclean stretch ended on an edge: the next minute is clean.
        m.push(360_000, 100.0 * 330.0, true, &mut out);
        assert_eq!(
            out,
            vec![MinuteEnergy {
                minute_ms: 300_000,
                joules: 6000.0,
                complete: true
            }]
        );
    }

    #[test]
    fn curve_interpolates_and_merges_close_points() {
        let mut c = Curve::default();
        assert_eq!(c.at(0), None);
        c.push(0, 0.0);
        c.push(2_000, 200.0);
        c.push(2_500, 250.0); // 2.5 s after 0: kept
        assert_eq!(
            c.push(2_600, 260.0), // within 1 s of 2_000: replaces 2_500
            vec![CurveEdit::Remove(2_500), CurveEdit::Add(2_600, 260.0)]
        );
        assert_eq!(c.span(), Some((0, 2_600)));
        assert_eq!(c.at(1_000), Some(100.0));
        assert_eq!(c.at(2_300), Some(230.0));
        assert_eq!(c.between(1_000, 2_600), Some(160.0));
        assert_eq!(c.at(2_601), None);
        assert_eq!(
            (c.step_at(1_000), c.step_at(2_000), c.step_at(2_601)),
            (Some(2_000), Some(0), None)
        );
        assert_eq!(c.at(-1), None);
        assert!(c.push(2_600, 999.0).is_empty()); // not after the last point: ignored
        assert_eq!(c.at(2_600), Some(260.0));
        assert_eq!(c.trim(2_100), Some(CurveEdit::TrimBefore(2_000)));
        assert_eq!(c.trim(2_100), None);
        assert_eq!(c.span(), Some((2_000, 2_600)));
        assert_eq!(c.at(2_100), Some(210.0));
    }
}
