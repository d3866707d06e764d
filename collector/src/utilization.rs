//! GPU utilization aggregates, idle energy, XID counts and superchip modules.
//!
//! Every utilization kind the agents ship (NVML's utilization and memory
//! utilization, GPM's SM activity, SM occupancy, tensor activity and DRAM
//! activity) is averaged per zone and for the site, weighted by GPU time:
//! - **live**: the mean of the latest value of every GPU that reported the
//!   kind within `stale_after` (at one instant each GPU weighs the same);
//! - **1h**: Σ value × span / Σ span over the last hour, where a reading's
//!   span is the time since the GPU's previous reading of that kind (a
//!   reading is a mean over that span: NVML's sample period, the agent's GPM
//!   window), counted only up to `stale_after` (a GPU that went silent adds
//!   no time). Kept in minute buckets in memory: after a restart the 1 h
//!   mean fills again over an hour.
//!
//! **Idle energy**: the GPU energy (NVML counter deltas, as counted for the
//! GPU's own energy) of every stretch that ends while the GPU's latest SM
//! activity, no older than `stale_after`, is below
//! `[utilization] idle_sm_active_below` (default 0.05). A GPU without GPM
//! has no idle energy: absent, never guessed from `utilization`.
//!
//! **XID errors**: each GPU's shipped `xid_errors_total` counter is judged
//! like an energy counter ([`crate::energy::Counter::observe`], rated at
//! [`XID_MAX_PER_SECOND`]): a step up within the rating is counted, a
//! decrease to a value countable since the last reading is a reset (the
//! agent restarted; the new value counted whole), anything else a glitch,
//! counted (`xid_glitches`, and the reading ignored as `glitch`), never
//! added. The first value is counted whole up to an hour at the rating. The
//! sums per zone and for the site let site-wide alerts fire.
//!
//! **Modules**: a superchip module's power and agent-integrated energy
//! (`Entity::Module`), per node and module. Its counted energy is cut into
//! UTC minutes like a GPU's and persisted with the module (table `modules`),
//! so the ledger bills the module's energy beyond its GPUs
//! ([`crate::store::modules`]); the power and the exported energy total restart
//! with the collector (a counter reset to Prometheus).

use std::collections::{BTreeMap, VecDeque};

use dcwatt_wire::Quantity;
use serde::{Deserialize, Serialize};

use dcwatt_wire::time::{HOUR_MS, MINUTE_MS};

use crate::site::Site;

/// The utilization kinds, with the `kind` label each has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// NVML `utilization.gpu`: the share of time a kernel ran.
    Utilization,
    /// NVML `utilization.memory`.
    MemoryUtilization,
    /// GPM SM activity.
    SmActive,
    /// GPM SM occupancy.
    SmOccupancy,
    /// GPM tensor activity.
    TensorActive,
    /// GPM DRAM bandwidth activity.
    DramActive,
}

impl Kind {
    /// Every kind, in label order.
    pub const ALL: [Kind; 6] = [
        Kind::Utilization,
        Kind::MemoryUtilization,
        Kind::SmActive,
        Kind::SmOccupancy,
        Kind::TensorActive,
        Kind::DramActive,
    ];

    /// The kind a wire quantity is, if it is one.
    pub fn of(q: Quantity) -> Option<Kind> {
        Some(match q {
            Quantity::UtilizationRatio => Kind::Utilization,
            Quantity::MemoryUtilizationRatio => Kind::MemoryUtilization,
            Quantity::SmActiveRatio => Kind::SmActive,
            Quantity::SmOccupancyRatio => Kind::SmOccupancy,
            Quantity::TensorActiveRatio => Kind::TensorActive,
            Quantity::DramActiveRatio => Kind::DramActive,
            _ => return None,
        })
    }

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Utilization => "utilization",
            Kind::MemoryUtilization => "memory_utilization",
            Kind::SmActive => "sm_active",
            Kind::SmOccupancy => "sm_occupancy",
            Kind::TensorActive => "tensor_active",
            Kind::DramActive => "dram_active",
        }
    }
}

/// One GPU's latest value of each kind, its idle energy and its XID count;
/// persisted with the GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuUtil {
    /// Latest reading of each kind: (Unix ms, ratio).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub last: BTreeMap<Kind, (i64, f64)>,
    /// Energy counted while the GPU was idle, J.
    #[serde(default)]
    pub idle_joules: f64,
    /// The agent's XID counter as last shipped, as collectors before the
    /// judged counter kept it (read once after an upgrade, then dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid_last: Option<f64>,
    /// The agent's XID counter, judged.
    #[serde(default, skip_serializing_if = "crate::utilization::counter_is_empty")]
    pub xid_counter: crate::energy::Counter,
    /// XID counter values judged glitches (not counted).
    #[serde(default)]
    pub xid_glitches: u64,
    /// XID errors counted by the collector (resets of the agent's counter
    /// folded in).
    #[serde(default)]
    pub xid_errors: f64,
    /// Decreases of the agent's XID counter seen.
    #[serde(default)]
    pub xid_resets: u64,
}

impl GpuUtil {
    /// Whether the GPU was idle at `ts_ms`: its latest SM activity, no older
    /// than `stale_ms`, is below `below`.
    pub fn idle_at(&self, ts_ms: i64, stale_ms: i64, below: f64) -> bool {
        self.last
            .get(&Kind::SmActive)
            .is_some_and(|(t, v)| ts_ms - t <= stale_ms && *v < below)
    }

    /// One shipped XID counter value at `ts_ms`, judged (see the module
    /// documentation). Returns false for a glitch.
    pub fn xid(&mut self, ts_ms: i64, v: f64) -> bool {
        use crate::energy::CounterStep as S;
        // After an upgrade: the last value an older collector kept.
        let legacy = self
            .xid_last
            .take()
            .filter(|_| self.xid_counter.last().is_none());
        match self.xid_counter.observe(ts_ms, v, XID_MAX_PER_SECOND) {
            S::Baseline => {
                let add = match legacy {
                    Some(l) if v >= l => v - l,
                    _ => v,
                };
                if add > crate::energy::max_step(XID_MAX_PER_SECOND, XID_FIRST_SPAN_MS) {
                    self.xid_glitches += 1;
                    return false;
                }
                self.xid_errors += add;
            }
            S::Delta(s) | S::Rebased(s) => self.xid_errors += s.joules,
            S::Reset(s) => {
                self.xid_resets += 1;
                self.xid_errors += s.joules;
            }
            S::Glitch => {
                self.xid_glitches += 1;
                return false;
            }
            S::OutOfOrder => {}
        }
        true
    }
}

/// The most XID errors a GPU is taken to log per second (a storm of one
/// code repeating logs a few per second): a counter step beyond it is a
/// glitch.
pub const XID_MAX_PER_SECOND: f64 = 100.0;

/// The first XID counter value seen is counted whole up to this long at
/// [`XID_MAX_PER_SECOND`] (what an agent up for an hour can have counted
/// before its first batch), ms.
pub const XID_FIRST_SPAN_MS: i64 = HOUR_MS;

/// Whether a counter has never been fed (left out of the GPU's JSON).
pub fn counter_is_empty(c: &crate::energy::Counter) -> bool {
    *c == crate::energy::Counter::default()
}

/// GPU time and value × time of one zone, one kind, one UTC minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    minute_ms: i64,
    weighted: f64,
    ms: f64,
}

/// Time-weighted utilization per zone and kind, in minute buckets over the
/// last hour.
#[derive(Debug, Default)]
pub struct Aggregates {
    buckets: BTreeMap<(String, Kind), VecDeque<Bucket>>,
}

impl Aggregates {
    /// A reading `v` of `kind` at `ts_ms` that stands for the `span_ms`
    /// before it, in `zone`.
    pub fn add(&mut self, zone: &str, kind: Kind, ts_ms: i64, span_ms: i64, v: f64) {
        if span_ms <= 0 || !v.is_finite() {
            return;
        }
        let minute_ms = ts_ms - ts_ms.rem_euclid(MINUTE_MS);
        let q = self.buckets.entry((zone.to_owned(), kind)).or_default();
        match q.iter_mut().rev().find(|b| b.minute_ms == minute_ms) {
            Some(b) => {
                b.weighted += v * span_ms as f64;
                b.ms += span_ms as f64;
            }
            None => {
                let at = q.partition_point(|b| b.minute_ms < minute_ms);
                q.insert(
                    at,
                    Bucket {
                        minute_ms,
                        weighted: v * span_ms as f64,
                        ms: span_ms as f64,
                    },
                );
            }
        }
        // Keep an hour and a minute behind the newest bucket.
        let newest = q.back().map_or(minute_ms, |b| b.minute_ms);
        while q
            .front()
            .is_some_and(|b| b.minute_ms < newest - HOUR_MS - MINUTE_MS)
        {
            q.pop_front();
        }
    }

    /// The GPU-time-weighted mean of `kind` over the minutes that start in
    /// `(now − window, now]`, in `zone` (or every zone): `None` without GPU time.
    pub fn mean(&self, zone: Option<&str>, kind: Kind, now_ms: i64, window_ms: i64) -> Option<f64> {
        let (mut weighted, mut ms) = (0.0, 0.0);
        for ((z, k), q) in &self.buckets {
            if *k != kind || zone.is_some_and(|zone| zone != z) {
                continue;
            }
            for b in q.iter().filter(|b| b.minute_ms > now_ms - window_ms) {
                weighted += b.weighted;
                ms += b.ms;
            }
        }
        (ms > 0.0).then(|| (weighted / ms).clamp(0.0, 1.0))
    }
}

/// A kind's means: live and over the last hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Means {
    /// Mean of the fresh GPUs' latest values.
    pub live: Option<f64>,
    /// GPU-time-weighted mean over the last hour.
    #[serde(rename = "1h")]
    pub hour: Option<f64>,
}

/// One zone's (or the site's) utilization figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScopeFigures {
    /// Means by kind (`utilization`, `sm_active`, …); a kind no GPU reports
    /// is absent.
    pub ratios: BTreeMap<&'static str, Means>,
    /// GPU energy spent while idle, J (GPUs with GPM only).
    pub idle_energy_joules: f64,
    /// XID errors counted, every GPU and code together.
    pub xid_errors: f64,
    /// Power of the fresh superchip modules, W (shipped by agents with
    /// `ship_modules`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_power_watts: Option<f64>,
    /// Modules' energy integrated by their agents, J.
    pub module_energy_joules: f64,
}

/// The utilization figures of `/metrics` and `/v1/summary`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UtilizationFigures {
    /// `[utilization] idle_sm_active_below`.
    pub idle_sm_active_below: f64,
    /// The whole site.
    pub site: ScopeFigures,
    /// Per zone (of the agent that reports the GPU).
    pub zones: BTreeMap<String, ScopeFigures>,
}

/// A superchip module as the collector keeps it (persisted, but for its
/// power and `energy_joules`, which restart with the collector).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModuleState {
    /// The agent that reports it.
    #[serde(default)]
    pub agent: String,
    /// Latest power (Unix ms, W).
    #[serde(skip)]
    pub power: Option<(i64, f64)>,
    /// The agent's integrated energy counter, judged like every other
    /// counter against [`MODULE_MAX_WATTS`].
    #[serde(default)]
    pub counter: crate::energy::Counter,
    /// Energy counted since the collector started, J.
    #[serde(skip)]
    pub energy_joules: f64,
    /// Energy counted since the module was first seen, J (the curve its
    /// minutes are cut from).
    #[serde(default)]
    pub counted_joules: f64,
    /// The fixed UTC minutes of its energy, for the tenant ledger.
    #[serde(default)]
    pub minutes: crate::energy::Minutes,
    /// Counter glitches seen (not counted).
    #[serde(default)]
    pub glitches: u64,
    /// The GPUs that name it (`GpuInfo::module`), by UUID.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub gpus: std::collections::BTreeSet<String>,
}

impl ModuleState {
    /// One shipped integrated-energy value at `ts_ms`, judged by
    /// [`crate::energy::Counter::observe`]: a believable increase or reset
    /// (agent restart) is counted, a glitch counts nothing; the first value
    /// is the baseline. Returns the UTC minutes this value completed (a
    /// minute is complete when no stretch in it was longer than `stale_ms`,
    /// a reset or a rebase).
    pub fn energy(
        &mut self,
        ts_ms: i64,
        v: f64,
        stale_ms: i64,
    ) -> Vec<crate::energy::MinuteEnergy> {
        use crate::energy::CounterStep as S;
        let clean = match self.counter.observe(ts_ms, v, MODULE_MAX_WATTS) {
            S::Delta(span) => {
                self.energy_joules += span.joules;
                self.counted_joules += span.joules;
                span.to_ms - span.from_ms <= stale_ms
            }
            S::Reset(span) | S::Rebased(span) => {
                self.energy_joules += span.joules;
                self.counted_joules += span.joules;
                false
            }
            S::Baseline => false,
            S::Glitch => {
                self.glitches += 1;
                return Vec::new();
            }
            S::OutOfOrder => return Vec::new(),
        };
        let mut out = Vec::new();
        self.minutes
            .push(ts_ms, self.counted_joules, clean, &mut out);
        out
    }
}

/// A reported power limit above this is not believed (the default is used), W.
pub const GPU_MAX_WATTS_CEILING: f64 = 5000.0;

/// The most a superchip module can draw (two GPUs at the GPU ceiling, CPU
/// and memory within it), W: a module counter step beyond it is a glitch.
pub const MODULE_MAX_WATTS: f64 = 2.0 * GPU_MAX_WATTS_CEILING;

/// The zone of an agent's GPUs and modules.
pub fn zone_of<'a>(site: &'a Site, agent: &str) -> &'a str {
    site.agent_zones
        .get(agent)
        .map_or("default", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_their_own_place_in_all() {
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
    }

    #[test]
    fn means_weigh_gpu_time() {
        let mut a = Aggregates::default();
        let t0 = 1_800_000_000_000;
        // Zone a: 0.2 for 9 s and 1.0 for 1 s; zone b: 0.5 for 10 s.
        a.add("a", Kind::SmActive, t0 + 9_000, 9_000, 0.2);
        a.add("a", Kind::SmActive, t0 + 10_000, 1_000, 1.0);
        a.add("b", Kind::SmActive, t0 + 10_000, 10_000, 0.5);
        let now = t0 + 20_000;
        let m = |z, k| a.mean(z, k, now, HOUR_MS);
        assert!((m(Some("a"), Kind::SmActive).unwrap() - 0.28).abs() < 1e-12);
        assert!((m(Some("b"), Kind::SmActive).unwrap() - 0.5).abs() < 1e-12);
        assert!((m(None, Kind::SmActive).unwrap() - 0.39).abs() < 1e-12);
        assert_eq!(m(Some("a"), Kind::TensorActive), None);
        // An hour later those minutes are out of the window.
        assert_eq!(
            a.mean(None, Kind::SmActive, now + HOUR_MS + MINUTE_MS, HOUR_MS),
            None
        );
        // No span: nothing counted.
        a.add("c", Kind::SmActive, t0, 0, 1.0);
        assert_eq!(a.mean(Some("c"), Kind::SmActive, now, HOUR_MS), None);
    }

    #[test]
    fn xid_counter_counts_resets_whole() {
        let mut u = GpuUtil::default();
        for (i, v) in [2.0, 2.0, 5.0, 1.0, 3.0].into_iter().enumerate() {
            assert!(u.xid(1_000 * (i as i64 + 1), v));
        }
        // 2 (first) + 3 + reset to 1 (counted whole) + 2.
        assert_eq!(u.xid_errors, 8.0);
        assert_eq!(u.xid_resets, 1);
    }

    #[test]
    fn xid_glitches_are_counted_not_added() {
        let mut u = GpuUtil::default();
        let steps = [
            (1_000, 1000.0, true),
            // 1e12 XIDs in a second: a glitch, nothing counted.
            (2_000, 1e12, false),
            (3_000, 1010.0, true),
            // Down to more than can have been counted since a restart: a
            // glitch, not a reset.
            (4_000, 500.0, false),
            (5_000, 1015.0, true),
            // Down to what a restarted agent can have counted: a reset.
            (6_000, 3.0, true),
            (7_000, 5.0, true),
        ];
        let mut seen = Vec::new();
        for (ts, v, _) in steps {
            seen.push(u.xid(ts, v));
        }
        assert_eq!(seen, steps.map(|s| s.2).to_vec());
        assert_eq!(u.xid_glitches, 2);
        assert_eq!(u.xid_resets, 1);
        assert_eq!(u.xid_errors, 1000.0 + 10.0 + 5.0 + 3.0 + 2.0);
        // A first value beyond an hour at the rating is a glitch too.
        let mut v = GpuUtil::default();
        assert!(!v.xid(1_000, 1e9));
        assert_eq!((v.xid_errors, v.xid_glitches), (0.0, 1));
        // After an upgrade, the first value counts on top of the kept one.
        let mut w = GpuUtil {
            xid_last: Some(7.0),
            xid_errors: 7.0,
            ..GpuUtil::default()
        };
        assert!(w.xid(1_000, 9.0));
        assert_eq!(w.xid_errors, 9.0);
        assert_eq!(w.xid_last, None);
    }

    #[test]
    fn module_energy_starts_at_its_baseline() {
        let mut m = ModuleState::default();
        // A glitch (1 PJ in a second) counts nothing and keeps the base.
        for (i, v) in [100.0, 150.0, 20.0, 1e15, 50.0].into_iter().enumerate() {
            m.energy(1_000 * (i as i64 + 1), v, MINUTE_MS);
        }
        assert_eq!(m.energy_joules, 50.0 + 20.0 + 30.0);
        assert_eq!(m.glitches, 1);
    }
}
