//! Energy with bounds: what the collector cannot know about a meter's energy
//! is recorded as an event, and any period's energy is given with the most
//! those events (and the time no reading covers) can move it.
//!
//! # What is stored
//! - `meter_events`: one row per unclean stretch between two consecutive
//!   points of a meter's counted-energy curve, `[from_ms, to_ms]`, with the
//!   energy counted in it (`joules`, spread evenly over its minutes by the
//!   minute cutter) and the most energy in it that was *not* counted
//!   (`unknown_joules`; NULL when that needs a rating the meter does not have):
//!   - `gap`: a counter silent for longer than `stale_after`: the counter's
//!     difference is exact, only its split between the minutes is unknown
//!     (`unknown_joules` 0);
//!   - `reset`: the energy between the last reading and the reset is unknown:
//!     at most the rating × Δt less what was counted after the reset;
//!   - `swap`: a replaced meter (three consistent glitches, a rebase): the
//!     new meter's counting from its first reading is kept; from the old
//!     meter's last reading to the new one's first, at most the rating × Δt;
//!   - `power_gap`: a power-only meter not integrated across a gap longer
//!     than `max_gap`: at most the rating × Δt unknown;
//!   - `glitch`: refused counter readings, one row per meter and UTC hour
//!     with their `count`; they add nothing unknown (the previous reading stays
//!     the base, so the next accepted one counts the whole difference).
//! - `meter_span`: per meter, the first and last minute it has been cut into
//!   (a meter's minutes are contiguous from its first whole minute on): the
//!   time a period spends outside it was not measured at all.
//!
//! # How bounds compose over a period `[a, b)` (minute edges)
//! The period's energy is the sum of its minute rows, as before. Then per
//! counted meter (not a sub-meter):
//! - an event wholly inside the period adds `[0, unknown_joules]`: its counted
//!   energy is wholly in the period's minutes, whatever their split;
//! - an event cut by an edge, whose minutes inside hold `J × φ` (φ the share
//!   of its duration inside), has really put between
//!   `max(0, J − R·outside)` and `min(J + unknown, R·inside)` inside (R the
//!   meter's rating; without one, between 0 and `J + unknown`);
//! - time outside the meter's span adds `[0, R × that time]`.
//!
//! Without a rating (`nominal_max_watts`, `nominal_max_cubic_meters_per_hour`)
//! anything that needs one is unbounded: the default rating the counter
//! judgement uses (100 MW) would give bounds of no use. A counter gap needs no
//! rating: a period holding it whole is exact, one cutting it is bounded by
//! the gap's own energy.
//!
//! The tables, a batch's rows and a period's bounds read from them are in
//! `store::bounds`; this module holds the events and the arithmetic.
//!
//! # A database from before bounds
//! It has no events and no spans for its past. When the tables are created in
//! a database that already holds energy, `bounds_since_ms` (in `meta`) is set
//! to the end of the last UTC day holding any: before it, a period is judged
//! as before, by its complete minutes (all complete: exact; else unbounded).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::energy::max_step;
use crate::site::{Meter, Role};

/// What kind of event left something unknown (or was refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A counter silent for longer than `stale_after`.
    Gap,
    /// A counter reset.
    Reset,
    /// A replaced meter: its counter rebased at a new level.
    Swap,
    /// A power-only meter not integrated across a gap longer than `max_gap`.
    PowerGap,
    /// Counter readings refused as glitches.
    Glitch,
}

impl EventKind {
    /// Every kind, in label order.
    pub const ALL: [EventKind; 5] = [
        EventKind::Gap,
        EventKind::Reset,
        EventKind::Swap,
        EventKind::PowerGap,
        EventKind::Glitch,
    ];

    /// The stored name and `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Gap => "gap",
            EventKind::Reset => "reset",
            EventKind::Swap => "swap",
            EventKind::PowerGap => "power_gap",
            EventKind::Glitch => "glitch",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event of one meter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterEvent {
    /// What happened.
    pub kind: EventKind,
    /// The last reading before it, Unix ms (a glitch: its reading).
    pub from_ms: i64,
    /// The first reading after it, Unix ms (a glitch: its reading).
    pub to_ms: i64,
    /// Energy counted in `[from_ms, to_ms]`, J (m³ for a water meter).
    pub joules: f64,
    /// The most energy in `[from_ms, to_ms]` that was not counted, J (m³);
    /// `None`: unbounded (the meter has no rating).
    pub unknown_joules: Option<f64>,
}

/// The most events a period lists (the rest are counted in `events_left_out`).
pub const MAX_EVENTS_LISTED: usize = 100;

/// The most a meter's counter can count per second (W, or m³/s for a water
/// meter), when it has a rating.
pub fn rating(m: &Meter) -> Option<f64> {
    if m.role == Role::Water {
        m.nominal_max_cubic_meters_per_hour.map(|q| q / 3600.0)
    } else {
        m.nominal_max_watts
    }
}

/// How far one (zone, role)'s energy over a period can be from what was
/// counted, J (m³ for water).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    /// The true energy can be this much lower (≥ 0).
    pub below: f64,
    /// ... or this much higher (≥ 0; infinite: unbounded).
    pub above: f64,
    /// Counted energy of the period that was not measured directly (spread
    /// over an unclean stretch's minutes).
    pub unmeasured: f64,
}

impl Spread {
    /// Adds another spread to this one.
    pub fn add(&mut self, o: Spread) {
        self.below += o.below;
        self.above += o.above;
        self.unmeasured += o.unmeasured;
    }
}

/// An event as a period lists it, with what it does to that period.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    /// The meter.
    pub meter: String,
    /// `gap`, `reset`, `swap`, `power_gap`, `glitch`, or `not_reported`
    /// (part of the period the meter's readings do not cover at all).
    pub kind: &'static str,
    /// Start, Unix ms (for glitches: the UTC hour).
    pub from_ms: i64,
    /// End, Unix ms.
    pub to_ms: i64,
    /// Energy counted over the whole event, J (m³ for a water meter).
    pub joules: f64,
    /// The most energy of the whole event not counted; `null`: unbounded.
    pub unknown_joules: Option<f64>,
    /// Readings (glitches), else 1.
    pub count: i64,
    /// How much lower this period's energy of the meter can be for it.
    pub below_joules: f64,
    /// How much higher; `null`: unbounded.
    pub above_joules: Option<f64>,
}

/// What is unknown about a period's energies, and why.
#[derive(Debug, Clone, Default)]
pub struct PeriodBounds {
    /// Per (zone, role) of counted meters.
    pub spreads: BTreeMap<(String, Role), Spread>,
    /// The events, oldest first (at most [`MAX_EVENTS_LISTED`]).
    pub events: Vec<EventView>,
    /// Events not listed.
    pub events_left_out: usize,
}

pub(crate) fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// What one event does to the period `[a, b)`, for a meter rated `r` (per s;
/// infinite without a rating).
pub(crate) fn event_spread(
    kind: EventKind,
    (f, t): (i64, i64),
    j: f64,
    unknown: f64,
    r: f64,
    (a, b): (i64, i64),
) -> Spread {
    if kind == EventKind::Glitch || t <= f {
        return Spread::default();
    }
    if f >= a && t <= b {
        return Spread {
            below: 0.0,
            above: unknown,
            unmeasured: j,
        };
    }
    let inside = (t.min(b) - f.max(a)).max(0);
    if inside == 0 {
        return Spread::default();
    }
    let outside = (t - f) - inside;
    let counted_inside = j * inside as f64 / (t - f) as f64;
    let most_inside = (j + unknown).min(max_step(r, inside));
    let least_inside = (j - max_step(r, outside)).max(0.0);
    Spread {
        below: (counted_inside - least_inside).max(0.0),
        above: (most_inside - counted_inside).max(0.0),
        unmeasured: counted_inside,
    }
}
