//! The collector's live state: latest values, energy accumulated per meter, per
//! role and zone, and per GPU, and which batch each agent sent last. Everything
//! here is in memory; a restart starts from zero (the durable form is the
//! ledger's job).

use std::collections::{BTreeMap, HashMap};

use dcwatt_wire::{Batch, Entity, Quantity};

use crate::config::{ItPoint, Role, Site};
use crate::energy::{Counter, CounterStep, Curve, Integrator, PowerStep};
use crate::figures::LONGEST_WINDOW_MS;

/// One configured meter's state.
#[derive(Debug, Clone)]
pub struct MeterState {
    /// Role from the config.
    pub role: Role,
    /// Zone from the config.
    pub zone: String,
    /// IT measurement point (role `it`).
    pub it_point: Option<ItPoint>,
    /// Latest power reading (Unix ms, W).
    pub power: Option<(i64, f64)>,
    /// The energy counter, when the meter has one.
    pub counter: Counter,
    /// Power integration, for a meter without a counter.
    pub integrator: Integrator,
    /// Energy counted since the collector first saw the meter, J.
    pub energy_joules: f64,
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
    /// Counted energy over time (cumulative J), for windows cut at the same
    /// instants for every meter. Flat across a gap: no energy is invented.
    pub curve: Curve,
}

/// One GPU's latest values, as its agent reported them.
#[derive(Debug, Clone, Default)]
pub struct GpuState {
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
    /// The last reading of any kind (Unix ms).
    pub last_ms: i64,
}

/// One agent's delivery state.
#[derive(Debug, Clone, Default)]
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
}

impl Ignored {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::UnknownMeter => "unknown_meter",
            Ignored::UnknownQuantity => "unknown_quantity",
            Ignored::OutOfOrder => "out_of_order",
            Ignored::UnusedEntity => "unused_entity",
        }
    }
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
    /// Energy per (role, zone) since start, J; every configured pair is present from the start.
    pub energy: BTreeMap<(Role, String), f64>,
    /// GPU energy from NVML counters since start, J.
    pub gpu_energy_joules: f64,
    /// GPU counter resets seen.
    pub gpu_resets: u64,
    /// Batches by result label.
    pub batches: BTreeMap<&'static str, u64>,
    /// Readings applied.
    pub readings: u64,
    /// Readings ignored, by reason.
    pub ignored: BTreeMap<Ignored, u64>,
}

impl State {
    /// An empty state with every configured meter and (role, zone) in place.
    pub fn new(site: &Site) -> State {
        let mut state = State::default();
        for (id, m) in &site.meters {
            state.meters.insert(
                id.clone(),
                MeterState {
                    role: m.role,
                    zone: m.zone.clone(),
                    it_point: m.it_point,
                    power: None,
                    counter: Counter::default(),
                    integrator: Integrator::default(),
                    energy_joules: 0.0,
                    energy_from_ms: None,
                    energy_to_ms: None,
                    last_ms: None,
                    resets: 0,
                    last_reset: None,
                    gaps: 0,
                    curve: Curve::default(),
                },
            );
            state.energy.entry((m.role, m.zone.clone())).or_default();
        }
        state
    }

    /// Counts one batch result.
    pub fn count_batch(&mut self, result: &'static str) {
        *self.batches.entry(result).or_default() += 1;
    }

    /// Applies a validated, authenticated, not-yet-applied batch. Returns the
    /// number of readings applied.
    pub fn apply(&mut self, batch: &Batch, max_gap_ms: i64, now_ms: i64) -> usize {
        let agent = self.agents.entry(batch.agent.clone()).or_default();
        agent.last_seq = batch.seq;
        agent.last_seen_ms = now_ms;
        for g in &batch.gpus {
            let gpu = self.gpus.entry(g.uuid.clone()).or_default();
            gpu.node.clone_from(&batch.node);
            gpu.index = g.index;
            gpu.model.clone_from(&g.model);
        }
        let mut applied = 0;
        for r in &batch.readings {
            let outcome = match (&r.entity, r.quantity) {
                (_, Quantity::Other) => Err(Ignored::UnknownQuantity),
                (Entity::Meter(id), q) => self.apply_meter(id, q, r.ts_ms, r.value, max_gap_ms),
                (Entity::Gpu(uuid), q) => self.apply_gpu(uuid, &batch.node, q, r.ts_ms, r.value),
                (Entity::Node(_), _) => Err(Ignored::UnusedEntity),
            };
            match outcome {
                Ok(()) => applied += 1,
                Err(why) => *self.ignored.entry(why).or_default() += 1,
            }
        }
        self.readings += applied as u64;
        applied
    }

    fn apply_meter(
        &mut self,
        id: &str,
        q: Quantity,
        ts: i64,
        v: f64,
        max_gap_ms: i64,
    ) -> Result<(), Ignored> {
        let m = self.meters.get_mut(id).ok_or(Ignored::UnknownMeter)?;
        if m.last_ms.is_none_or(|l| ts > l) {
            m.last_ms = Some(ts);
        }
        let span = match q {
            Quantity::EnergyJoules => match m.counter.observe(ts, v) {
                CounterStep::Baseline => {
                    if m.energy_joules == 0.0 {
                        m.energy_from_ms = Some(ts);
                        m.curve = Curve::default();
                        m.curve.push(ts, 0.0);
                    }
                    None
                }
                CounterStep::Delta(s) => Some(s),
                CounterStep::Reset(s) => {
                    m.resets += 1;
                    m.last_reset = Some((s.from_ms, s.to_ms));
                    Some(s)
                }
                CounterStep::OutOfOrder => return Err(Ignored::OutOfOrder),
            },
            Quantity::PowerWatts => {
                if m.power.is_some_and(|(t, _)| ts <= t) {
                    return Err(Ignored::OutOfOrder);
                }
                m.power = Some((ts, v));
                if m.counter.last().is_some() {
                    None // the counter is the energy source
                } else {
                    match m.integrator.observe(ts, v, max_gap_ms) {
                        PowerStep::Baseline => {
                            m.energy_from_ms.get_or_insert(ts);
                            m.curve.push(ts, m.energy_joules);
                            None
                        }
                        PowerStep::Energy(s) => Some(s),
                        PowerStep::Gap => {
                            m.gaps += 1;
                            m.curve.push(ts, m.energy_joules);
                            None
                        }
                        PowerStep::OutOfOrder => return Err(Ignored::OutOfOrder),
                    }
                }
            }
            _ => None, // temperatures and the like: latest value only, nothing to keep yet
        };
        if let Some(s) = span {
            m.energy_joules += s.joules;
            m.energy_to_ms = Some(s.to_ms);
            m.curve.push(s.to_ms, m.energy_joules);
            m.curve.trim(s.to_ms - LONGEST_WINDOW_MS - 60_000);
            *self.energy.entry((m.role, m.zone.clone())).or_default() += s.joules;
        }
        Ok(())
    }

    fn apply_gpu(
        &mut self,
        uuid: &str,
        node: &str,
        q: Quantity,
        ts: i64,
        v: f64,
    ) -> Result<(), Ignored> {
        let g = self.gpus.entry(uuid.to_owned()).or_default();
        if g.node.is_empty() {
            g.node = node.to_owned();
        }
        g.last_ms = g.last_ms.max(ts);
        match q {
            Quantity::PowerWatts => g.power = Some((ts, v)),
            Quantity::TemperatureCelsius => g.temperature = Some((ts, v)),
            Quantity::UtilizationRatio => g.utilization = Some((ts, v)),
            Quantity::EnergyJoules => match g.counter.observe(ts, v) {
                CounterStep::Baseline => {}
                CounterStep::Delta(s) => {
                    g.energy_joules += s.joules;
                    self.gpu_energy_joules += s.joules;
                }
                CounterStep::Reset(s) => {
                    g.resets += 1;
                    self.gpu_resets += 1;
                    g.energy_joules += s.joules;
                    self.gpu_energy_joules += s.joules;
                }
                CounterStep::OutOfOrder => return Err(Ignored::OutOfOrder),
            },
            _ => {}
        }
        Ok(())
    }
}
