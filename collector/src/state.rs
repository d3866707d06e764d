//! The collector's live state: latest values, energy counted per meter and per
//! GPU, and the last batch each agent had applied. [`State::apply`] changes it
//! and reports what it changed ([`Changes`]), so the store can persist exactly
//! that in the same transaction as the agent's sequence number.
//!
//! Totals per role and zone, and over all GPUs, are sums over the meters and
//! GPUs: derived at export, never kept twice.
//!
//! Size: the live state and `apply`, the one place a batch changes memory;
//! the functions around it share the state's private fields.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dcwatt_wire::{Batch, Entity, Quantity};
use serde::{Deserialize, Serialize};

use dcwatt_wire::time::MINUTE_MS;

use crate::bounds::{EventKind, MeterEvent};
use crate::energy::{
    max_step, Counter, CounterStep, Curve, CurveEdit, Integrator, MinuteEnergy, Minutes, PowerStep,
    Span,
};
use crate::site::Site;
use crate::site::{Meter, Role};
use crate::thermal::{self, Coolant, Excursion, GpuThermals, Kind, Transition};
use crate::utilization::{self as util, Aggregates, GpuUtil, ModuleState};

/// What a meter has counted: the part of its state that is persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeterAccount {
    /// Latest power reading (Unix ms, W).
    pub power: Option<(i64, f64)>,
    /// The energy counter, when the meter has one.
    pub counter: Counter,
    /// Power integration, for a meter without a counter.
    pub integrator: Integrator,
    /// What the meter counted since the collector first saw it, in its
    /// counter's unit: energy in J, or for a `water` meter volume in m³ (the
    /// same code cuts and stores both; read it through
    /// [`MeterState::energy_joules`] and [`MeterState::water_cubic_meters`]).
    /// Stored as `counted` (schema version 3; `energy_joules` before).
    pub counted: f64,
    /// The instant energy counting started from (the first counter or power reading).
    pub energy_from_ms: Option<i64>,
    /// The instant of the last reading that added energy.
    pub energy_to_ms: Option<i64>,
    /// The last reading of any kind (Unix ms).
    pub last_ms: Option<i64>,
    /// Counter resets seen.
    pub resets: u64,
    /// The last reset: (last reading before it, first reading after it), Unix ms.
    pub last_reset: Option<(i64, i64)>,
    /// Gaps longer than `max_gap` in a power-only series.
    pub gaps: u64,
    /// Counter readings refused as glitches (see [`Counter::observe`]).
    pub glitches: u64,
    /// Replaced meters: counters rebased at a new level.
    #[serde(default)]
    pub swaps: u64,
    /// The last swap: (last reading before it, the rebasing reading), Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_swap: Option<(i64, i64)>,
    /// Counter steps longer than `stale_after` (the counter brackets them).
    #[serde(default)]
    pub counter_gaps: u64,
    /// The fixed UTC minutes cut so far.
    pub minutes: Minutes,
    /// Coolant values and excursions, for a CDU.
    #[serde(default, skip_serializing_if = "is_default")]
    pub coolant: Coolant,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The rating a meter without `nominal_max_watts` is judged against, W: more
/// than any one meter of a 30 MW hall reads, so that only the absurd is refused.
pub const DEFAULT_METER_MAX_WATTS: f64 = 100e6;
/// The flow a water meter without `nominal_max_cubic_meters_per_hour` is
/// judged against, m³/s (3,600 m³/h).
pub const DEFAULT_WATER_MAX_CUBIC_METERS_PER_SECOND: f64 = 1.0;
/// The power a GPU that reports no power limit is judged against, W.
pub const DEFAULT_GPU_MAX_WATTS: f64 = 2000.0;
/// A reported power limit above this is not believed (the default is used), W.
pub use crate::utilization::GPU_MAX_WATTS_CEILING;

/// The live window's length: how much of its energy curve each meter keeps.
pub const LIVE_WINDOW_MS: i64 = 300_000;

/// An open thermal excursion of a GPU or a meter (a CDU). Ordered by
/// zone, entity kind, entity, kind and start.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct OpenExcursion {
    /// The entity's zone.
    pub zone: String,
    /// `gpu` or `meter`.
    pub entity_kind: &'static str,
    /// The GPU's UUID or the meter's id.
    pub entity: String,
    /// What is out of range.
    pub kind: Kind,
    /// When it opened, Unix ms.
    pub since_ms: i64,
}

/// One configured meter's state.
#[derive(Debug, Clone)]
pub struct MeterState {
    /// The meter as configured (role, zone, rating, parent, node).
    pub meter: Meter,
    /// What it has counted.
    pub acc: MeterAccount,
    /// Counted energy over time (cumulative J) for the trailing windows, cut at
    /// the same instants for every meter. Flat across a gap: no energy is invented.
    pub curve: Curve,
}

impl MeterState {
    /// The counter quantity this meter counts: a volume for a `water` meter,
    /// energy otherwise.
    pub fn counter_quantity(&self) -> Quantity {
        if self.meter.role == Role::Water {
            Quantity::WaterVolumeCubicMeters
        } else {
            Quantity::EnergyJoules
        }
    }

    /// Energy counted, J (0 for a `water` meter: it counts volume).
    pub fn energy_joules(&self) -> f64 {
        if self.meter.role == Role::Water {
            0.0
        } else {
            self.acc.counted
        }
    }

    /// Volume counted, m³, for a `water` meter.
    pub fn water_cubic_meters(&self) -> Option<f64> {
        (self.meter.role == Role::Water).then_some(self.acc.counted)
    }

    /// The largest believable counter increase per second, in the counter's
    /// unit (J/s = W, or m³/s): the rating, else a default.
    /// The meter's configured rating in its counter's unit per second (W, or
    /// m³/s), if any: what bounds the energy it may have missed.
    pub fn rating(&self) -> Option<f64> {
        if self.meter.role == Role::Water {
            self.meter
                .nominal_max_cubic_meters_per_hour
                .map(|q| q / 3600.0)
        } else {
            self.meter.nominal_max_watts
        }
    }

    fn max_counter_rate(&self) -> f64 {
        if self.meter.role == Role::Water {
            self.meter
                .nominal_max_cubic_meters_per_hour
                .map_or(DEFAULT_WATER_MAX_CUBIC_METERS_PER_SECOND, |q| q / 3600.0)
        } else {
            self.meter
                .nominal_max_watts
                .unwrap_or(DEFAULT_METER_MAX_WATTS)
        }
    }
}

/// One GPU's latest values, as its agent reported them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuState {
    /// The agent that first reported it: the only one that may report it since.
    #[serde(default)]
    pub agent: String,
    /// The node it is in.
    pub node: String,
    /// NVML index on the node.
    pub index: u32,
    /// Model name.
    pub model: String,
    /// Latest power (Unix ms, W).
    pub power: Option<(i64, f64)>,
    /// Latest core temperature (Unix ms, °C).
    pub temperature: Option<(i64, f64)>,
    /// Latest utilization (Unix ms, ratio).
    pub utilization: Option<(i64, f64)>,
    /// The NVML energy counter.
    pub counter: Counter,
    /// Energy counted since the collector first saw the GPU, J.
    pub energy_joules: f64,
    /// Counter resets seen.
    pub resets: u64,
    /// Counter readings refused as glitches (see [`Counter::observe`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub glitches: u64,
    /// The enforced power limit last reported, W: what its counter is judged against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_watts: Option<f64>,
    /// The last reading of any kind (Unix ms).
    pub last_ms: i64,
    /// The fixed UTC minutes of its energy, for the tenant ledger.
    pub minutes: Minutes,
    /// Thermal values besides the core temperature, and excursions.
    #[serde(default, skip_serializing_if = "is_default")]
    pub thermals: GpuThermals,
    /// Utilization and peak power of the UTC minute in progress.
    #[serde(default, skip_serializing_if = "is_default")]
    pub minute_stats: GpuMinuteStats,
    /// Its delivery gauges and minute in progress (GPU service levels).
    #[serde(default, skip_serializing_if = "is_default")]
    pub delivery: crate::delivery::Tracker,
    /// Latest utilization of every kind, idle energy, XID count
    /// ([`crate::utilization`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub util: GpuUtil,
    /// The superchip module its agent says it belongs to (`GpuInfo::module`),
    /// once the module reports on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl GpuState {
    /// The power its energy counter is judged against: its enforced limit if
    /// believable, else [`DEFAULT_GPU_MAX_WATTS`].
    pub fn max_watts(&self) -> f64 {
        self.power_limit_watts
            .filter(|w| *w > 0.0 && *w <= GPU_MAX_WATTS_CEILING)
            .unwrap_or(DEFAULT_GPU_MAX_WATTS)
    }
}

/// One GPU's utilization and peak power over one UTC minute, from its readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuMinuteStats {
    /// Start of the minute, Unix ms.
    pub minute_ms: i64,
    /// Sum of the utilization readings (0..1) in the minute.
    pub util_sum: f64,
    /// Number of utilization readings in the minute.
    pub util_n: u32,
    /// The highest power reading in the minute, W.
    pub peak_w: Option<f64>,
    /// Sum and number of the GPM SM activity readings (0..1) in the minute.
    #[serde(default, skip_serializing_if = "is_default")]
    pub sm_sum: f64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub sm_n: u32,
    /// Sum and number of the GPM tensor activity readings in the minute.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tensor_sum: f64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub tensor_n: u32,
    /// Energy counted in the minute while the GPU was idle (SM activity
    /// below `[utilization] idle_sm_active_below`), J.
    #[serde(default, skip_serializing_if = "is_default")]
    pub idle_joules: f64,
}

/// One value a GPU-minute's statistics take in.
#[derive(Debug, Clone, Copy)]
pub enum MinuteValue {
    /// A utilization reading.
    Util(f64),
    /// A power reading, W.
    Power(f64),
    /// A GPM SM activity reading.
    SmActive(f64),
    /// A GPM tensor activity reading.
    TensorActive(f64),
    /// Energy counted while idle, J.
    Idle(f64),
}

impl GpuMinuteStats {
    /// Adds a reading at `ts`; returns the previous minute's statistics when
    /// this reading starts a later minute. Readings of an earlier minute
    /// than the one in progress are left out.
    fn add(&mut self, ts: i64, util: Option<f64>, power: Option<f64>) -> Option<GpuMinuteStats> {
        let v = match (util, power) {
            (Some(u), _) => MinuteValue::Util(u),
            (None, Some(w)) => MinuteValue::Power(w),
            (None, None) => return None,
        };
        self.take(ts, v)
    }

    /// Whether the minute holds anything to book.
    fn any(&self) -> bool {
        self.util_n > 0
            || self.peak_w.is_some()
            || self.sm_n > 0
            || self.tensor_n > 0
            || self.idle_joules > 0.0
    }

    /// As [`GpuMinuteStats::add`], for any kind of value.
    pub fn take(&mut self, ts: i64, v: MinuteValue) -> Option<GpuMinuteStats> {
        let minute = ts.div_euclid(MINUTE_MS) * MINUTE_MS;
        let mut done = None;
        if minute > self.minute_ms {
            if self.any() {
                done = Some(*self);
            }
            *self = GpuMinuteStats {
                minute_ms: minute,
                ..GpuMinuteStats::default()
            };
        } else if minute < self.minute_ms {
            return None;
        }
        let (util, power) = match v {
            MinuteValue::Util(u) => (Some(u), None),
            MinuteValue::Power(w) => (None, Some(w)),
            MinuteValue::SmActive(x) => {
                self.sm_sum += x;
                self.sm_n += 1;
                (None, None)
            }
            MinuteValue::TensorActive(x) => {
                self.tensor_sum += x;
                self.tensor_n += 1;
                (None, None)
            }
            MinuteValue::Idle(j) => {
                self.idle_joules += j;
                (None, None)
            }
        };
        if let Some(u) = util {
            self.util_sum += u;
            self.util_n += 1;
        }
        if let Some(w) = power {
            self.peak_w = Some(self.peak_w.map_or(w, |p| p.max(w)));
        }
        done
    }
}

/// One agent's delivery state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentState {
    /// The highest applied sequence number.
    pub last_seq: u64,
    /// When its last batch was applied (collector clock, Unix ms).
    pub last_seen_ms: i64,
}

/// Why readings were ignored (not rejected: the batch was valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ignored {
    /// A meter the site config does not list.
    UnknownMeter,
    /// A quantity this collector does not know.
    UnknownQuantity,
    /// A reading not newer than the entity's previous one.
    OutOfOrder,
    /// An entity kind the collector does not use yet (nodes).
    UnusedEntity,
    /// A counter jump bigger than the meter can measure.
    Glitch,
    /// Energy or power of a `water` meter, or a water volume of any other meter.
    NotForRole,
    /// An entity kind this collector does not know (sent by a newer agent).
    UnknownEntity,
    /// A new module of a node that already has [`MAX_MODULES_PER_NODE`].
    TooManyModules,
    /// A GPU naming a module that its node does not report
    /// (`gpus[].module`): the GPU is taken as in no module.
    UnknownModule,
}

/// The most superchip modules the collector keeps for one node (a GB300
/// tray has 2): module ids past it are ignored, so no agent can grow the
/// collector's memory by inventing ids.
pub const MAX_MODULES_PER_NODE: usize = 16;

impl Ignored {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::UnknownMeter => "unknown_meter",
            Ignored::UnknownQuantity => "unknown_quantity",
            Ignored::OutOfOrder => "out_of_order",
            Ignored::UnusedEntity => "unused_entity",
            Ignored::Glitch => "glitch",
            Ignored::NotForRole => "not_for_role",
            Ignored::UnknownEntity => "unknown_entity",
            Ignored::TooManyModules => "too_many_modules",
            Ignored::UnknownModule => "unknown_module",
        }
    }
}

/// What one applied batch changed, for the store.
#[derive(Debug, Default)]
pub struct Changes {
    /// Meters whose account changed.
    pub meters: BTreeSet<String>,
    /// GPUs whose state changed.
    pub gpus: BTreeSet<String>,
    /// Edits of meters' energy curves, in order.
    pub curves: Vec<(String, CurveEdit)>,
    /// Fixed UTC minutes that meters completed, in order.
    pub minutes: Vec<(String, MinuteEnergy)>,
    /// Meters' gaps, resets, swaps and glitches, in order (see [`crate::bounds`]).
    pub meter_events: Vec<(String, MeterEvent)>,
    /// Fixed UTC minutes that GPUs completed: (UUID, node, minute).
    pub gpu_minutes: Vec<(String, String, MinuteEnergy)>,
    /// Thermal excursions opened or closed, in order.
    pub excursions: Vec<ExcursionEdit>,
    /// GPU-minute statistics that GPUs completed: (UUID, node, statistics).
    pub gpu_stats: Vec<(String, String, GpuMinuteStats)>,
    /// GPU-minutes judged for service levels: (UUID, node, minute).
    pub gpu_delivery: Vec<(String, String, crate::delivery::DeliveredMinute)>,
    /// Superchip modules whose state changed: (node, module id).
    pub modules: BTreeSet<(String, String)>,
    /// Fixed UTC minutes that modules completed: (node, module id, minute).
    pub module_minutes: Vec<(String, String, MinuteEnergy)>,
}

/// A change to the excursion log.
#[derive(Debug, Clone, PartialEq)]
pub enum ExcursionEdit {
    /// A new excursion.
    Open(Excursion),
    /// An open excursion ended: (entity, kind, opened_ms, closed_ms).
    Close(String, Kind, i64, i64),
}

/// The whole live state.
#[derive(Debug, Default)]
pub struct State {
    /// Configured meters by id.
    pub meters: BTreeMap<String, MeterState>,
    /// GPUs by UUID.
    pub gpus: HashMap<String, GpuState>,
    /// Agents by id.
    pub agents: BTreeMap<String, AgentState>,
    /// Batches by result label (since this process started).
    pub batches: BTreeMap<&'static str, u64>,
    /// Readings applied (since this process started).
    pub readings: u64,
    /// Readings ignored, by reason (since this process started).
    pub ignored: BTreeMap<Ignored, u64>,
    /// Thermal excursions opened, per (zone, kind), as booked in the store.
    pub excursions_opened: BTreeMap<(String, Kind), u64>,
    /// Thermal excursions of leased GPUs opened, per tenant, as booked in the store.
    pub tenant_excursions: BTreeMap<String, u64>,
    /// GPUs per owning agent (kept as GPUs are first claimed, recounted on
    /// load), so the per-agent GPU cap is checked without scanning every GPU.
    agent_gpus: HashMap<String, usize>,
    /// GPU-time-weighted utilization per zone, the last hour (in memory).
    pub utilization: Aggregates,
    /// Superchip modules by (node, module id) (in memory).
    pub modules: BTreeMap<(String, String), ModuleState>,
    /// The meters that may carry coolant state (a coolant reading or an
    /// episode), built from every meter on first use (after the store has
    /// loaded the accounts) and kept as coolant readings arrive: a batch
    /// checks its zone's CDUs without scanning every meter of the hall.
    coolant_index: Option<BTreeSet<String>>,
}

impl State {
    /// An empty state with every configured meter in place.
    pub fn new(site: &Site) -> State {
        let mut state = State::default();
        for (id, m) in &site.meters {
            state.meters.insert(
                id.clone(),
                MeterState {
                    meter: m.clone(),
                    acc: MeterAccount::default(),
                    curve: Curve::default(),
                },
            );
        }
        state
    }

    /// Counts one batch result.
    pub fn count_batch(&mut self, result: &'static str) {
        *self.batches.entry(result).or_default() += 1;
    }

    /// Energy since start per (role, zone), J: the sum over the meters that are
    /// not sub-meters. Every such (role, zone) is present; water meters are not
    /// (they count volume).
    pub fn energy_by_role_zone(&self) -> BTreeMap<(Role, &str), f64> {
        let mut out = BTreeMap::new();
        for m in self
            .meters
            .values()
            .filter(|m| m.meter.parent.is_none() && m.meter.role != Role::Water)
        {
            *out.entry((m.meter.role, m.meter.zone.as_str()))
                .or_default() += m.acc.counted;
        }
        out
    }

    /// The first GPU of a batch (in `gpus`, then in `readings`) that another
    /// agent owns, as (field, UUID, owner): a rogue or misconfigured agent must
    /// not report (and so bill, or rename) another node's GPUs. A GPU that
    /// really moved is released by the operator first ([`State::release_gpu`]).
    pub fn foreign_gpu<'a>(&'a self, batch: &'a Batch) -> Option<(String, &'a str, &'a str)> {
        let owner = |uuid: &str| -> Option<&'a str> {
            let owner = self
                .gpus
                .get(uuid)
                .map(|g| g.agent.as_str())
                .filter(|a| !a.is_empty())?;
            (owner != batch.agent).then_some(owner)
        };
        let listed =
            batch.gpus.iter().enumerate().find_map(|(i, g)| {
                Some((format!("gpus[{i}].uuid"), g.uuid.as_str(), owner(&g.uuid)?))
            });
        listed.or_else(|| {
            batch
                .readings
                .iter()
                .enumerate()
                .find_map(|(i, r)| match &r.entity {
                    Entity::Gpu(uuid) => {
                        Some((format!("readings[{i}].entity"), uuid.as_str(), owner(uuid)?))
                    }
                    _ => None,
                })
        })
    }

    /// How many GPUs the agent `id` reports (for a node's agent: the node's GPUs).
    pub fn gpus_of(&self, id: &str) -> usize {
        self.agent_gpus.get(id).copied().unwrap_or(0)
    }

    /// Forgets which agent owns a GPU (the operator moved it to another node):
    /// the next agent to report it owns it. Its energy and minutes stay.
    /// Returns the agent that owned it, or `None` when no agent did.
    pub fn release_gpu(&mut self, uuid: &str) -> Option<String> {
        let g = self.gpus.get_mut(uuid)?;
        if g.agent.is_empty() {
            return None;
        }
        let owner = std::mem::take(&mut g.agent);
        if let Some(n) = self.agent_gpus.get_mut(&owner) {
            *n = n.saturating_sub(1);
        }
        Some(owner)
    }

    /// With the GPUs this batch names for the first time, how many GPUs its
    /// agent would report, when that is more than `cap`. Scans only when a
    /// batch names a new GPU.
    pub fn gpu_cap_exceeded(&self, batch: &Batch, cap: usize) -> Option<usize> {
        let mut new: BTreeSet<&str> = batch
            .gpus
            .iter()
            .map(|g| g.uuid.as_str())
            .filter(|u| !self.gpus.contains_key(*u))
            .collect();
        for r in &batch.readings {
            if let Entity::Gpu(u) = &r.entity {
                if !self.gpus.contains_key(u) {
                    new.insert(u);
                }
            }
        }
        if new.is_empty() {
            return None;
        }
        let have = self.agent_gpus.get(&batch.agent).copied().unwrap_or(0);
        (have + new.len() > cap).then_some(have + new.len())
    }

    /// Recounts the GPUs each agent owns (after the GPUs were loaded).
    pub fn recount_agent_gpus(&mut self) {
        self.agent_gpus.clear();
        for g in self.gpus.values().filter(|g| !g.agent.is_empty()) {
            *self.agent_gpus.entry(g.agent.clone()).or_default() += 1;
        }
    }

    /// Energy of every GPU since start (J) and the counter resets seen.
    pub fn gpu_totals(&self) -> (f64, u64) {
        self.gpus
            .values()
            .fold((0.0, 0), |(j, r), g| (j + g.energy_joules, r + g.resets))
    }

    /// Applies a validated, authenticated, not-yet-applied batch. Returns the
    /// number of readings applied and what changed.
    pub fn apply(&mut self, batch: &Batch, site: &Site, now_ms: i64) -> (usize, Changes) {
        let mut changes = Changes::default();
        let agent = self.agents.entry(batch.agent.clone()).or_default();
        agent.last_seq = batch.seq;
        agent.last_seen_ms = now_ms;
        for g in &batch.gpus {
            let gpu = self.gpus.entry(g.uuid.clone()).or_default();
            if gpu.agent.is_empty() {
                gpu.agent.clone_from(&batch.agent);
                *self.agent_gpus.entry(batch.agent.clone()).or_default() += 1;
            }
            if gpu.node != batch.node || gpu.index != g.index || gpu.model != g.model {
                gpu.node.clone_from(&batch.node);
                gpu.index = g.index;
                gpu.model.clone_from(&g.model);
                changes.gpus.insert(g.uuid.clone());
            }
        }
        let mut applied = 0;
        let mut coolant_meters = BTreeSet::new();
        for r in &batch.readings {
            let outcome = match (&r.entity, r.quantity) {
                (Entity::Other(_), _) => Err(Ignored::UnknownEntity),
                (_, Quantity::Other) => Err(Ignored::UnknownQuantity),
                (Entity::Module(id), _)
                    if !self.modules.contains_key(&(batch.node.clone(), id.clone()))
                        && self
                            .modules
                            .range((batch.node.clone(), String::new())..)
                            .take_while(|((n, _), _)| *n == batch.node)
                            .count()
                            >= MAX_MODULES_PER_NODE =>
                {
                    Err(Ignored::TooManyModules)
                }
                (Entity::Module(id), q) => {
                    let m = self
                        .modules
                        .entry((batch.node.clone(), id.clone()))
                        .or_default();
                    m.agent.clone_from(&batch.agent);
                    match q {
                        Quantity::PowerWatts => {
                            if m.power.is_some_and(|(t, _)| t > r.ts_ms) {
                                Err(Ignored::OutOfOrder)
                            } else {
                                m.power = Some((r.ts_ms, r.value));
                                Ok(())
                            }
                        }
                        Quantity::IntegratedEnergyJoules => {
                            let before = m.glitches;
                            let done = m.energy(r.ts_ms, r.value, site.stale_after_ms);
                            let key = (batch.node.clone(), id.clone());
                            changes.module_minutes.extend(
                                done.into_iter().map(|w| (key.0.clone(), key.1.clone(), w)),
                            );
                            changes.modules.insert(key);
                            if m.glitches > before {
                                Err(Ignored::Glitch)
                            } else {
                                Ok(())
                            }
                        }
                        _ => Err(Ignored::UnusedEntity),
                    }
                }
                (Entity::Meter(id), q) => {
                    let out = self.apply_meter(id, q, r.ts_ms, r.value, site, &mut changes);
                    if out.is_ok() && coolant_quantity(q) {
                        coolant_meters.insert(id.as_str());
                    }
                    out
                }
                (Entity::Gpu(uuid), q) => {
                    let stale = site.stale_after_ms;
                    let out = self.apply_gpu(
                        uuid,
                        &batch.agent,
                        &batch.node,
                        q,
                        r.ts_ms,
                        r.value,
                        site,
                        &mut changes,
                    );
                    let out = match out {
                        Ok(()) => {
                            let zone = util::zone_of(site, &batch.agent);
                            changes.gpus.insert(uuid.clone());
                            self.apply_gpu_util(uuid, zone, q, r.ts_ms, r.value, stale)
                        }
                        e => e,
                    };
                    if out != Err(Ignored::OutOfOrder) {
                        self.observe_delivery(uuid, q, r.ts_ms, r.value, site, &mut changes);
                    }
                    out
                }
                (Entity::Node(_), _) => Err(Ignored::UnusedEntity),
            };
            match outcome {
                Ok(()) => applied += 1,
                Err(why) => *self.ignored.entry(why).or_default() += 1,
            }
        }
        self.readings += applied as u64;
        self.apply_gpu_modules(batch, &mut changes);
        self.judge_thermals(batch, &coolant_meters, site, &mut changes);
        (applied, changes)
    }

    /// The module each GPU of the batch names (`gpus[].module`), kept when
    /// its node reports that module (after this batch's readings); a module
    /// the node does not report is ignored (`unknown_module`, or
    /// `too_many_modules` when the node is at its cap) and the GPU taken as
    /// in none. A GPU whose agent names no module is in none.
    fn apply_gpu_modules(&mut self, batch: &Batch, changes: &mut Changes) {
        for g in &batch.gpus {
            let module = match &g.module {
                Some(m) if self.modules.contains_key(&(batch.node.clone(), m.clone())) => {
                    Some(m.clone())
                }
                Some(_) => {
                    let at_cap = self
                        .modules
                        .range((batch.node.clone(), String::new())..)
                        .take_while(|((n, _), _)| *n == batch.node)
                        .count()
                        >= MAX_MODULES_PER_NODE;
                    let why = if at_cap {
                        Ignored::TooManyModules
                    } else {
                        Ignored::UnknownModule
                    };
                    *self.ignored.entry(why).or_default() += 1;
                    None
                }
                None => None,
            };
            if let Some(gpu) = self.gpus.get_mut(&g.uuid) {
                if gpu.module != module {
                    let node = gpu.node.clone();
                    if let Some(old) = gpu.module.take() {
                        if let Some(m) = self.modules.get_mut(&(node.clone(), old.clone())) {
                            m.gpus.remove(&g.uuid);
                            changes.modules.insert((node.clone(), old));
                        }
                    }
                    if let Some(new) = &module {
                        if let Some(m) = self.modules.get_mut(&(node.clone(), new.clone())) {
                            m.gpus.insert(g.uuid.clone());
                            changes.modules.insert((node, new.clone()));
                        }
                    }
                    gpu.module = module;
                    changes.gpus.insert(g.uuid.clone());
                }
            }
        }
    }

    /// Judges the thermal state of the GPUs and CDUs this batch reported on.
    fn judge_thermals(
        &mut self,
        batch: &Batch,
        coolant_meters: &BTreeSet<&str>,
        site: &Site,
        changes: &mut Changes,
    ) {
        let zone = site
            .agent_zones
            .get(&batch.agent)
            .map_or("default", String::as_str);
        let mut events = Vec::new();
        for uuid in &changes.gpus {
            let Some(g) = self.gpus.get_mut(uuid) else {
                continue;
            };
            for (kind, t) in
                thermal::judge_gpu(&mut g.thermals, g.temperature, g.last_ms, &site.thermal)
            {
                let tenant = match t {
                    Transition::Opened(at) => site
                        .leases
                        .split(&g.node, uuid, at, at + 1)
                        .into_iter()
                        .next()
                        .map(|(owner, _)| owner),
                    Transition::Closed(..) => None,
                };
                events.push((
                    ("gpu", uuid.clone(), Some(g.node.clone())),
                    zone.to_owned(),
                    kind,
                    t,
                    tenant,
                ));
            }
        }
        for id in coolant_meters {
            let Some(m) = self.meters.get_mut(*id) else {
                continue;
            };
            let ts = m.acc.last_ms.unwrap_or(0);
            for (kind, t) in thermal::judge_coolant(&mut m.acc.coolant, ts, &site.thermal) {
                events.push((
                    ("meter", (*id).to_owned(), None),
                    m.meter.zone.clone(),
                    kind,
                    t,
                    None,
                ));
            }
            changes.meters.insert((*id).to_owned());
        }
        // Service levels: whether each GPU and its zone's CDUs are in excursion.
        let facility = self.zone_coolant_in_excursion(zone, coolant_meters);
        for uuid in &changes.gpus {
            if let Some(g) = self.gpus.get_mut(uuid) {
                g.delivery.excursion = g.thermals.episodes.values().any(in_excursion);
                g.delivery.facility = facility;
            }
        }
        for ((entity_kind, entity, node), zone, kind, t, tenant) in events {
            match t {
                Transition::Opened(at) => {
                    *self
                        .excursions_opened
                        .entry((zone.clone(), kind))
                        .or_default() += 1;
                    if let Some(t) = tenant.as_ref().filter(|t| !t.starts_with('_')) {
                        *self.tenant_excursions.entry(t.clone()).or_default() += 1;
                    }
                    changes.excursions.push(ExcursionEdit::Open(Excursion {
                        entity_kind,
                        entity,
                        node,
                        kind,
                        zone,
                        tenant,
                        opened_ms: at,
                        closed_ms: None,
                    }));
                }
                Transition::Closed(opened, closed) => {
                    changes
                        .excursions
                        .push(ExcursionEdit::Close(entity, kind, opened, closed));
                }
            }
        }
    }

    /// Feeds one GPU reading to the GPU's delivery tracker.
    fn observe_delivery(
        &mut self,
        uuid: &str,
        q: Quantity,
        ts: i64,
        v: f64,
        site: &Site,
        changes: &mut Changes,
    ) {
        let Some(g) = self.gpus.get_mut(uuid) else {
            return;
        };
        let before = changes.gpu_delivery.len();
        let mut done = Vec::new();
        g.delivery
            .observe(ts, q, v, site.stale_after_ms, &site.sla, &mut done);
        changes.gpu_delivery.extend(
            done.into_iter()
                .map(|d| (uuid.to_owned(), g.node.clone(), d)),
        );
        if changes.gpu_delivery.len() > before {
            changes.gpus.insert(uuid.to_owned());
        }
    }

    /// The open excursions, GPUs first, each with its zone.
    pub fn open_excursions(&self, site: &Site) -> Vec<OpenExcursion> {
        let mut out = Vec::new();
        for (uuid, g) in &self.gpus {
            let zone = site
                .agent_zones
                .get(&g.agent)
                .map_or("default", String::as_str);
            for (kind, e) in &g.thermals.episodes {
                if let Some(at) = e.open_ms {
                    out.push(OpenExcursion {
                        zone: zone.to_owned(),
                        entity_kind: "gpu",
                        entity: uuid.clone(),
                        kind: *kind,
                        since_ms: at,
                    });
                }
            }
        }
        for (id, m) in &self.meters {
            for (kind, e) in &m.acc.coolant.episodes {
                if let Some(at) = e.open_ms {
                    out.push(OpenExcursion {
                        zone: m.meter.zone.clone(),
                        entity_kind: "meter",
                        entity: id.clone(),
                        kind: *kind,
                        since_ms: at,
                    });
                }
            }
        }
        out.sort();
        out
    }

    fn apply_meter(
        &mut self,
        id: &str,
        q: Quantity,
        ts: i64,
        v: f64,
        site: &Site,
        changes: &mut Changes,
    ) -> Result<(), Ignored> {
        let m = self.meters.get_mut(id).ok_or(Ignored::UnknownMeter)?;
        let before = m.acc.clone();
        let mut out = Outputs::default();
        let result = meter_reading(m, q, ts, v, site, &mut out);
        if m.acc != before {
            changes.meters.insert(id.to_owned());
        }
        changes
            .curves
            .extend(out.edits.into_iter().map(|e| (id.to_owned(), e)));
        changes
            .minutes
            .extend(out.minutes.into_iter().map(|w| (id.to_owned(), w)));
        changes
            .meter_events
            .extend(out.events.into_iter().map(|e| (id.to_owned(), e)));
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_gpu(
        &mut self,
        uuid: &str,
        agent: &str,
        node: &str,
        q: Quantity,
        ts: i64,
        v: f64,
        site: &Site,
        changes: &mut Changes,
    ) -> Result<(), Ignored> {
        let (stale_ms, idle_below) = (site.stale_after_ms, site.idle_sm_active_below);
        let g = match self.gpus.get_mut(uuid) {
            Some(g) => g,
            None => self.gpus.entry(uuid.to_owned()).or_default(),
        };
        if g.node.is_empty() {
            g.node = node.to_owned();
        }
        if g.agent.is_empty() {
            g.agent = agent.to_owned();
            *self.agent_gpus.entry(agent.to_owned()).or_default() += 1;
        }
        g.last_ms = g.last_ms.max(ts);
        let clean = match q {
            Quantity::PowerWatts => {
                g.power = Some((ts, v));
                if let Some(done) = g.minute_stats.add(ts, None, Some(v)) {
                    changes
                        .gpu_stats
                        .push((uuid.to_owned(), g.node.clone(), done));
                }
                return Ok(());
            }
            Quantity::TemperatureCelsius => {
                g.temperature = Some((ts, v));
                return Ok(());
            }
            Quantity::UtilizationRatio => {
                g.utilization = Some((ts, v));
                if let Some(done) = g.minute_stats.add(ts, Some(v), None) {
                    changes
                        .gpu_stats
                        .push((uuid.to_owned(), g.node.clone(), done));
                }
                return Ok(());
            }
            Quantity::MemoryTemperatureCelsius => {
                g.thermals.memory_temperature = Some((ts, v));
                return Ok(());
            }
            Quantity::TemperatureSlowdownCelsius => {
                g.thermals.slowdown = Some((ts, v));
                return Ok(());
            }
            Quantity::TemperatureMemoryMaxCelsius => {
                g.thermals.memory_max = Some((ts, v));
                return Ok(());
            }
            Quantity::ThrottleHwThermalSlowdown => {
                g.thermals.hw_thermal = Some((ts, v));
                return Ok(());
            }
            Quantity::ThrottleSwThermalSlowdown => {
                g.thermals.sw_thermal = Some((ts, v));
                return Ok(());
            }
            Quantity::PowerLimitWatts => {
                g.power_limit_watts = Some(v);
                return Ok(());
            }
            Quantity::SmActiveRatio | Quantity::TensorActiveRatio => {
                // Per tenant-minute activity (the zone means are kept by
                // apply_gpu_util).
                let value = if q == Quantity::SmActiveRatio {
                    MinuteValue::SmActive(v)
                } else {
                    MinuteValue::TensorActive(v)
                };
                if let Some(done) = g.minute_stats.take(ts, value) {
                    changes
                        .gpu_stats
                        .push((uuid.to_owned(), g.node.clone(), done));
                }
                return Ok(());
            }
            Quantity::EnergyJoules => match g.counter.observe(ts, v, g.max_watts()) {
                CounterStep::Baseline => false,
                CounterStep::Rebased(s) => {
                    // A replaced board: what its counter counted since its
                    // first reading is kept.
                    g.energy_joules += s.joules;
                    false
                }
                CounterStep::Glitch => {
                    g.glitches += 1;
                    return Err(Ignored::Glitch);
                }
                CounterStep::Delta(s) => {
                    g.energy_joules += s.joules;
                    if g.util.idle_at(s.to_ms, stale_ms, idle_below) {
                        g.util.idle_joules += s.joules;
                        if let Some(done) = g.minute_stats.take(ts, MinuteValue::Idle(s.joules)) {
                            changes
                                .gpu_stats
                                .push((uuid.to_owned(), g.node.clone(), done));
                        }
                    }
                    s.to_ms - s.from_ms <= stale_ms
                }
                CounterStep::Reset(s) => {
                    g.resets += 1;
                    g.energy_joules += s.joules;
                    if g.util.idle_at(s.to_ms, stale_ms, idle_below) {
                        g.util.idle_joules += s.joules;
                        if let Some(done) = g.minute_stats.take(ts, MinuteValue::Idle(s.joules)) {
                            changes
                                .gpu_stats
                                .push((uuid.to_owned(), g.node.clone(), done));
                        }
                    }
                    false
                }
                CounterStep::OutOfOrder => return Err(Ignored::OutOfOrder),
            },
            _ => return Ok(()),
        };
        let mut minutes = Vec::new();
        g.minutes.push(ts, g.energy_joules, clean, &mut minutes);
        let node = g.node.clone();
        changes.gpu_minutes.extend(
            minutes
                .into_iter()
                .map(|w| (uuid.to_owned(), node.clone(), w)),
        );
        Ok(())
    }
}

impl State {
    /// Whether a coolant meter of `zone` is in excursion. `fresh` are the
    /// meters that have just had a coolant reading (added to the index).
    fn zone_coolant_in_excursion(&mut self, zone: &str, fresh: &BTreeSet<&str>) -> bool {
        let meters = &self.meters;
        let index = self.coolant_index.get_or_insert_with(|| {
            meters
                .iter()
                .filter(|(_, m)| m.acc.coolant.has_state())
                .map(|(id, _)| id.clone())
                .collect()
        });
        for id in fresh {
            if !index.contains(*id) {
                index.insert((*id).to_owned());
            }
        }
        index
            .iter()
            .filter_map(|id| meters.get(id))
            .any(|m| m.meter.zone == zone && m.acc.coolant.episodes.values().any(in_excursion))
    }
}

/// An episode is open and its all-clear has not begun (the hysteresis tail
/// of an excursion is not counted against a GPU's service level).
fn in_excursion(e: &thermal::Episode) -> bool {
    e.open_ms.is_some() && e.clearing_ms.is_none()
}

impl State {
    /// A GPU's utilization reading (into the zone's time-weighted means: its
    /// span is the time since the GPU's previous reading of that kind, up to
    /// `stale_ms`) or XID counter (a glitch of which is ignored: `Err`).
    fn apply_gpu_util(
        &mut self,
        uuid: &str,
        zone: &str,
        q: Quantity,
        ts: i64,
        v: f64,
        stale_ms: i64,
    ) -> Result<(), Ignored> {
        let Some(g) = self.gpus.get_mut(uuid) else {
            return Ok(());
        };
        if q == Quantity::XidErrorsTotal {
            return if g.util.xid(ts, v) {
                Ok(())
            } else {
                Err(Ignored::Glitch)
            };
        }
        let Some(kind) = util::Kind::of(q) else {
            return Ok(());
        };
        let prev = g.util.last.get(&kind).map(|(t, _)| *t);
        if prev.is_some_and(|t| t > ts) {
            return Ok(()); // out of order: the later value stays
        }
        g.util.last.insert(kind, (ts, v));
        if let Some(t) = prev.filter(|t| ts - t <= stale_ms) {
            self.utilization.add(zone, kind, ts, ts - t, v);
        }
        Ok(())
    }
}

fn coolant_quantity(q: Quantity) -> bool {
    matches!(
        q,
        Quantity::CoolantSupplyTemperatureCelsius
            | Quantity::CoolantReturnTemperatureCelsius
            | Quantity::CoolantFlowCubicMetersPerSecond
    )
}

/// What one meter reading produced besides its account.
#[derive(Default)]
struct Outputs {
    edits: Vec<CurveEdit>,
    minutes: Vec<MinuteEnergy>,
    events: Vec<MeterEvent>,
}

impl Outputs {
    /// A new point of the counted-energy curve; `clean` says whether the stretch
    /// since the previous point was measured.
    fn point(&mut self, m: &mut MeterState, ts: i64, clean: bool) {
        let joules = m.acc.counted;
        self.edits.extend(m.curve.push(ts, joules));
        self.edits
            .extend(m.curve.trim(ts - LIVE_WINDOW_MS - MINUTE_MS));
        m.acc.minutes.push(ts, joules, clean, &mut self.minutes);
    }
}

/// One reading of one meter: counters (with glitch and reset handling) and
/// power integration, then its energy, curve and minutes. A `water` meter's
/// volume counter takes the energy counter's path (resets, glitches, minutes),
/// in m³; its energy and power readings, and any other meter's volume, are
/// ignored.
fn meter_reading(
    m: &mut MeterState,
    q: Quantity,
    ts: i64,
    v: f64,
    site: &Site,
    out: &mut Outputs,
) -> Result<(), Ignored> {
    let counter = m.counter_quantity();
    let max_rate = m.max_counter_rate();
    let rating = m.rating();
    // The most a meter can have counted over `ms` and that was not counted.
    let unknown = |ms: i64, counted: f64| rating.map(|r| (max_step(r, ms) - counted).max(0.0));
    let misplaced = match q {
        Quantity::EnergyJoules | Quantity::PowerWatts => m.meter.role == Role::Water,
        Quantity::WaterVolumeCubicMeters => m.meter.role != Role::Water,
        _ => false,
    };
    if misplaced {
        return Err(Ignored::NotForRole);
    }
    let acc = &mut m.acc;
    if acc.last_ms.is_none_or(|l| ts > l) {
        acc.last_ms = Some(ts);
    }
    let base = acc.counter.last();
    let (span, clean) = match q {
        q if q == counter => match acc.counter.observe(ts, v, max_rate) {
            CounterStep::Baseline => {
                if acc.counted == 0.0 {
                    acc.energy_from_ms = Some(ts);
                }
                out.point(m, ts, false);
                return Ok(());
            }
            CounterStep::Delta(s) => {
                let clean = s.to_ms - s.from_ms <= site.stale_after_ms;
                if !clean {
                    // The counter brackets the gap: its energy is exact.
                    acc.counter_gaps += 1;
                    out.events.push(MeterEvent {
                        kind: EventKind::Gap,
                        from_ms: s.from_ms,
                        to_ms: s.to_ms,
                        joules: s.joules,
                        unknown_joules: Some(0.0),
                    });
                }
                (s, clean)
            }
            CounterStep::Reset(s) => {
                acc.resets += 1;
                acc.last_reset = Some((s.from_ms, s.to_ms));
                out.events.push(MeterEvent {
                    kind: EventKind::Reset,
                    from_ms: s.from_ms,
                    to_ms: s.to_ms,
                    joules: s.joules,
                    unknown_joules: unknown(s.to_ms - s.from_ms, s.joules),
                });
                (s, false)
            }
            CounterStep::Glitch => {
                acc.glitches += 1;
                out.events.push(MeterEvent {
                    kind: EventKind::Glitch,
                    from_ms: ts,
                    to_ms: ts,
                    joules: 0.0,
                    unknown_joules: Some(0.0),
                });
                return Err(Ignored::Glitch);
            }
            CounterStep::Rebased(s) => {
                // The new level held: a replaced meter. What the new meter
                // counted since its first reading is kept; from the old
                // meter's last reading to the new one's first is unknown.
                acc.glitches += 1;
                acc.swaps += 1;
                let from = base.map_or(s.from_ms, |(t, _)| t);
                acc.last_swap = Some((from, ts));
                out.events.push(MeterEvent {
                    kind: EventKind::Swap,
                    from_ms: from,
                    to_ms: ts,
                    joules: s.joules,
                    unknown_joules: unknown(s.from_ms - from, 0.0),
                });
                (
                    Span {
                        from_ms: from,
                        to_ms: ts,
                        joules: s.joules,
                    },
                    false,
                )
            }
            CounterStep::OutOfOrder => return Err(Ignored::OutOfOrder),
        },
        Quantity::PowerWatts => {
            if acc.power.is_some_and(|(t, _)| ts <= t) {
                return Err(Ignored::OutOfOrder);
            }
            acc.power = Some((ts, v));
            if acc.counter.last().is_some() {
                return Ok(()); // the counter is the energy source
            }
            let before = acc.integrator.last();
            match acc.integrator.observe(ts, v, site.max_gap_ms) {
                PowerStep::Baseline => {
                    acc.energy_from_ms.get_or_insert(ts);
                    out.point(m, ts, false);
                    return Ok(());
                }
                PowerStep::Energy(s) => (s, true),
                PowerStep::Gap => {
                    acc.gaps += 1;
                    let from = before.map_or(ts, |(t, _)| t);
                    out.events.push(MeterEvent {
                        kind: EventKind::PowerGap,
                        from_ms: from,
                        to_ms: ts,
                        joules: 0.0,
                        unknown_joules: unknown(ts - from, 0.0),
                    });
                    out.point(m, ts, false);
                    return Ok(());
                }
                PowerStep::OutOfOrder => return Err(Ignored::OutOfOrder),
            }
        }
        Quantity::CoolantSupplyTemperatureCelsius => {
            acc.coolant.supply = Some((ts, v));
            return Ok(());
        }
        Quantity::CoolantReturnTemperatureCelsius => {
            acc.coolant.ret = Some((ts, v));
            return Ok(());
        }
        Quantity::CoolantFlowCubicMetersPerSecond => {
            acc.coolant.flow = Some((ts, v));
            return Ok(());
        }
        _ => return Ok(()), // temperatures and the like: latest value only, nothing to keep yet
    };
    acc.counted += span.joules;
    acc.energy_to_ms = Some(span.to_ms);
    out.point(m, span.to_ms, clean);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use dcwatt_wire::{Reading, VERSION};

    fn counter_batch(seq: u64, ts: i64, joules: f64) -> Batch {
        Batch {
            version: VERSION,
            agent: "a".into(),
            seq,
            first_seq: None,
            node: "a".into(),
            created_ms: ts,
            gpus: vec![],
            readings: vec![Reading {
                ts_ms: ts,
                entity: Entity::Meter("m".into()),
                quantity: Quantity::EnergyJoules,
                value: joules,
            }],
        }
    }

    #[test]
    fn counter_jumps_beyond_the_rating_are_glitches_until_they_hold() {
        let site = Config::from_toml(
            "[[meters]]\nid = \"m\"\nrole = \"facility\"\nnominal_max_watts = 1000.0",
        )
        .unwrap()
        .build()
        .unwrap();
        let mut state = State::new(&site);
        let mut seq = 0;
        let mut feed = |state: &mut State, ts: i64, j: f64| {
            seq += 1;
            state.apply(&counter_batch(seq, ts, j), &site, ts).0
        };
        feed(&mut state, 0, 0.0);
        assert_eq!(feed(&mut state, 1000, 900.0), 1); // 900 W: fine
        assert_eq!(feed(&mut state, 2000, 1e9), 0); // a spike: rejected
        assert_eq!(feed(&mut state, 3000, 2000.0), 1); // back to normal: 1100 J over 2 s
        let acc = &state.meters["m"].acc;
        assert_eq!((acc.counted, acc.glitches), (2000.0, 1));
        // A new level that holds three readings is a replaced meter: rebased;
        // what it counted from its first reading is kept, nothing across the jump.
        for (i, ts) in [4000, 5000, 6000].into_iter().enumerate() {
            let applied = feed(&mut state, ts, 5e9 + i as f64 * 500.0);
            assert_eq!(applied, usize::from(i == 2), "reading {i}");
        }
        feed(&mut state, 7000, 5e9 + 1500.0);
        let acc = &state.meters["m"].acc;
        // Four jumps seen (the spike, three at the new level); three readings
        // refused. The new meter's 1000 J from its first reading are kept.
        assert_eq!((acc.counted, acc.glitches), (3500.0, 4));
        assert_eq!(state.ignored[&Ignored::Glitch], 3);
    }
}
