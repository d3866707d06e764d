//! The physics of the simulated hall: GPU and node power, thermals, the IT,
//! cooling and facility meters, and the ground truth of every joule. Pure and
//! deterministic for a seed and a sequence of tick instants; reads and writes
//! nothing (the server publishes it over HTTP and in fake NVML state files).
//!
//! # Model
//! - Time advances in ticks ([`Hall::advance_to`], nominally [`TICK_MS`]);
//!   during a tick every power is constant, so energy is exactly P × dt and the
//!   cumulative energy inside a tick is a straight line.
//! - GPU power is whole watts, so GPU energy is an exact integer of mJ at every
//!   whole millisecond (what the fake NVML counter serves).
//! - Node power = its GPUs + ~700 W of CPUs, NICs and fans. Rack PDU (IT) = its
//!   nodes. Cooling = 0.06 × IT + 0.02 × IT nominal; power-infrastructure
//!   losses = 0.03 × IT + 0.01 × IT nominal; facility = IT + cooling + losses.
//! - Site water (`water-1`): make-up water of the dry coolers' adiabatic
//!   pre-cooling, 0.18 L per kWh of IT energy plus 0.02 L per kWh of nominal IT
//!   load (evaporation and blow-down that go on at idle): a WUE of about
//!   0.2 L/kWh, as liquid-cooled halls with dry coolers run. Its flow is constant
//!   during a tick, like the powers, so its volume is exact too.
//! - A counter reset subtracts the cumulative energy (or volume) at the reset
//!   instant from what is served; the truth never resets.

use std::collections::{HashMap, VecDeque};

use dcwatt_fake_nvml::FakeGpu;

use crate::load::{self, NodeLoad, Phase, Prng};
use crate::SimConfig;

mod types;
pub use types::{
    Entity, HallError, MeterInfo, MeterReading, MeterRole, NodeInfo, PowerSummary, WaterReading,
};

/// The nominal tick, ms.
pub const TICK_MS: i64 = 100;
/// The zone every meter belongs to.
pub const ZONE: &str = "hall-1";
/// The GPU model name NVML reports.
pub const GPU_MODEL: &str = "NVIDIA GB300";
/// The simulated GPUs' own temperature thresholds, °C.
pub const GPU_THRESHOLDS: dcwatt_fake_nvml::FakeThresholds = dcwatt_fake_nvml::FakeThresholds {
    shutdown: 95,
    slowdown: 90,
    mem_max: 95,
    gpu_max: 87,
};
/// NVML's `clocksEventReasonHwThermalSlowdown` bit.
const NVML_HW_THERMAL_SLOWDOWN: u64 = 0x40;
/// The facility meter's id.
pub const FACILITY_METER: &str = "utility-a";
/// The cooling meter's id.
pub const COOLING_METER: &str = "cooling-1";
/// The site water meter's id (served as JSON, not Redfish: Redfish has no
/// water-volume sensor).
pub const WATER_METER: &str = "water-1";
/// Make-up water per kWh of IT energy, L.
const WATER_L_PER_IT_KWH: f64 = 0.18;
/// Make-up water per kWh of nominal IT load, L (goes on at idle).
const WATER_L_PER_NOMINAL_KWH: f64 = 0.02;
/// GPU memory installed, bytes.
pub const GPU_MEM_TOTAL_BYTES: u64 = 288_000_000_000;
/// The most GPUs a node can have (the fake NVML library's limit).
pub const MAX_GPUS_PER_NODE: u32 = 64;
/// NVML's "GPU idle" clocks-event reason.
const THROTTLE_GPU_IDLE: u64 = 0x1;
/// How far back the truth is kept, ms (less for very large halls, see [`Hall::new`]).
const HISTORY_MS: i64 = 2 * 3600 * 1000;
/// The memory the history may use, bytes.
const HISTORY_BUDGET_BYTES: usize = 256 << 20;
/// Fewest ticks kept, whatever the hall's size (one minute).
const HISTORY_MIN_TICKS: usize = 600;
/// A node's overhead (CPUs, NICs, fans) when its GPUs idle, W.
const NODE_BASE_W: f64 = 650.0;
/// Extra node overhead at full GPU utilization, W.
const NODE_LOAD_W: f64 = 60.0;
/// Per-node design power used for the nominal IT load: GPUs at this, plus overhead, W.
const GPU_NOMINAL_W: f64 = 1100.0;
const NODE_NOMINAL_OVERHEAD_W: f64 = 700.0;

// Internal channels; rack PDUs follow from `CH_RACK0`. Each holds a cumulative
// quantity and its rate: J and W, except `CH_WATER`: m³ and m³/s.
const CH_FACILITY: usize = 0;
const CH_COOLING: usize = 1;
const CH_LOSSES: usize = 2;
const CH_IT: usize = 3;
const CH_WATER: usize = 4;
const CH_RACK0: usize = 5;

/// One recorded tick: cumulative energies (water: volume) at its start and
/// powers (water: flow) during it.
#[derive(Debug, Clone)]
struct Tick {
    start_ms: i64,
    channel_j: Box<[f64]>,
    channel_w: Box<[f64]>,
    gpu_mj: Box<[u64]>,
    gpu_w: Box<[u32]>,
}

impl Tick {
    fn channel_at(&self, c: usize, at_ms: i64) -> f64 {
        self.channel_j[c] + self.channel_w[c] * (at_ms - self.start_ms) as f64 / 1000.0
    }

    /// mJ; exact: whole watts × whole ms.
    fn gpu_mj_at(&self, g: usize, at_ms: i64) -> i128 {
        i128::from(self.gpu_mj[g]) + i128::from(self.gpu_w[g]) * i128::from(at_ms - self.start_ms)
    }
}

#[derive(Debug, Clone)]
struct Node {
    info: NodeInfo,
    load: NodeLoad,
    jitter: Prng,
    /// First global GPU number.
    first_gpu: usize,
}

/// The simulated hall. See the module docs for the model.
#[derive(Debug, Clone)]
pub struct Hall {
    nodes: Vec<Node>,
    meters: Vec<MeterInfo>,
    meter_channel: Vec<usize>,
    meter_by_id: HashMap<String, usize>,
    gpu_by_uuid: HashMap<String, usize>,
    gpu_temp_c: Vec<f64>,
    it_nominal_w: f64,
    history: VecDeque<Tick>,
    history_cap: usize,
    meter_offset_j: Vec<f64>,
    water_offset_m3: f64,
    gpu_offset_mj: Vec<u64>,
    gpu_reset_pending: Vec<bool>,
    gpu_reset_ms: Vec<Option<i64>>,
    gpu_heat_c: Vec<f64>,
    /// GPUs NVML reports lost (`GPU_IS_LOST`).
    gpu_lost: Vec<bool>,
    /// Each GPU's XID events (the last [`MAX_XIDS_PER_GPU`]), ids hall-wide.
    gpu_xids: Vec<Vec<dcwatt_fake_nvml::FakeXid>>,
    next_xid: u64,
}

/// XID events a GPU's state file keeps (the fake library's limit).
pub const MAX_XIDS_PER_GPU: usize = 64;

impl Hall {
    /// A hall of `config`'s topology whose first tick starts at `start_ms`
    /// (Unix ms), all counters at zero. The truth is kept for two hours, or for
    /// as many ticks as 256 MiB hold in a very large hall (at least one minute).
    pub fn new(config: &SimConfig, start_ms: i64) -> Result<Self, HallError> {
        if config.racks == 0 || config.nodes_per_rack == 0 || config.gpus_per_node == 0 {
            return Err(HallError::Config(
                "racks, nodes_per_rack and gpus_per_node must be at least 1".into(),
            ));
        }
        if config.gpus_per_node > MAX_GPUS_PER_NODE {
            return Err(HallError::Config(format!(
                "gpus_per_node {} is above {MAX_GPUS_PER_NODE}",
                config.gpus_per_node
            )));
        }
        let mut nodes = Vec::new();
        let mut gpu_by_uuid = HashMap::new();
        for rack in 1..=config.racks {
            for n in 1..=config.nodes_per_rack {
                let name = format!("r{rack}-n{n}");
                let node_seed = load::mix(config.seed, (u64::from(rack) << 32) | u64::from(n));
                let first_gpu = gpu_by_uuid.len();
                let gpus: Vec<String> = (0..config.gpus_per_node)
                    .map(|i| gpu_uuid(node_seed, i))
                    .collect();
                for (i, uuid) in gpus.iter().enumerate() {
                    gpu_by_uuid.insert(uuid.clone(), first_gpu + i);
                }
                nodes.push(Node {
                    info: NodeInfo { name, rack, gpus },
                    load: NodeLoad::new(load::mix(node_seed, 1), start_ms),
                    jitter: Prng::new(load::mix(node_seed, 2)),
                    first_gpu,
                });
            }
        }
        let gpu_count = gpu_by_uuid.len();
        if gpu_count != nodes.len() * config.gpus_per_node as usize {
            return Err(HallError::Config(
                "two GPUs drew the same uuid; try another seed".into(),
            ));
        }

        let mut meters = vec![MeterInfo {
            id: FACILITY_METER.into(),
            role: MeterRole::Facility,
            rack: None,
        }];
        let mut meter_channel = vec![CH_FACILITY];
        for rack in 1..=config.racks {
            meters.push(MeterInfo {
                id: format!("pdu-r{rack}"),
                role: MeterRole::It,
                rack: Some(rack),
            });
            meter_channel.push(CH_RACK0 + rack as usize - 1);
        }
        meters.push(MeterInfo {
            id: COOLING_METER.into(),
            role: MeterRole::Cooling,
            rack: None,
        });
        meter_channel.push(CH_COOLING);
        let meter_by_id = meters
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i))
            .collect();

        let channels = CH_RACK0 + config.racks as usize;
        let per_tick = channels * 16 + gpu_count * 12 + 96;
        let history_cap = (HISTORY_BUDGET_BYTES / per_tick)
            .min((HISTORY_MS / TICK_MS) as usize)
            .max(HISTORY_MIN_TICKS);
        let it_nominal_w = nodes.len() as f64
            * (f64::from(config.gpus_per_node) * GPU_NOMINAL_W + NODE_NOMINAL_OVERHEAD_W);

        let mut hall = Self {
            nodes,
            meter_offset_j: vec![0.0; meters.len()],
            water_offset_m3: 0.0,
            meters,
            meter_channel,
            meter_by_id,
            gpu_by_uuid,
            gpu_temp_c: vec![0.0; gpu_count],
            it_nominal_w,
            history: VecDeque::with_capacity(history_cap.min(4096)),
            history_cap,
            gpu_offset_mj: vec![0; gpu_count],
            gpu_reset_pending: vec![false; gpu_count],
            gpu_reset_ms: vec![None; gpu_count],
            gpu_heat_c: vec![0.0; gpu_count],
            gpu_lost: vec![false; gpu_count],
            gpu_xids: vec![Vec::new(); gpu_count],
            next_xid: 1,
        };
        let (channel_w, gpu_w) = hall.powers(channels, gpu_count);
        for (t, w) in hall.gpu_temp_c.iter_mut().zip(gpu_w.iter()) {
            *t = load::steady_temp_c(f64::from(*w));
        }
        hall.history.push_back(Tick {
            start_ms,
            channel_j: vec![0.0; channels].into(),
            channel_w,
            gpu_mj: vec![0; gpu_count].into(),
            gpu_w,
        });
        Ok(hall)
    }

    /// Draws this tick's powers from the nodes' current phases.
    fn powers(&mut self, channels: usize, gpu_count: usize) -> (Box<[f64]>, Box<[u32]>) {
        let mut channel_w = vec![0.0; channels];
        let mut gpu_w = vec![0u32; gpu_count];
        for node in &mut self.nodes {
            let phase = node.load.phase();
            let target = node.load.gpu_target_w();
            let rel = if phase == Phase::Idle { 0.03 } else { 0.02 };
            let mut node_w = 0.0;
            for i in 0..node.info.gpus.len() {
                let w = (target * node.jitter.jitter(rel))
                    .clamp(0.0, load::POWER_LIMIT_W)
                    .round();
                gpu_w[node.first_gpu + i] = w as u32;
                node_w += w;
            }
            let util = f64::from(phase.util_pct()) / 100.0;
            node_w += NODE_BASE_W + NODE_LOAD_W * util + node.jitter.range(-10.0, 10.0);
            channel_w[CH_RACK0 + node.info.rack as usize - 1] += node_w;
        }
        let it: f64 = channel_w[CH_RACK0..].iter().sum();
        let cooling = 0.06 * it + 0.02 * self.it_nominal_w;
        let losses = 0.03 * it + 0.01 * self.it_nominal_w;
        channel_w[CH_IT] = it;
        channel_w[CH_COOLING] = cooling;
        channel_w[CH_LOSSES] = losses;
        channel_w[CH_FACILITY] = it + cooling + losses;
        // L/kWh × W / (3.6e6 J/kWh) = L/s; × 1e-3 = m³/s.
        channel_w[CH_WATER] =
            (WATER_L_PER_IT_KWH * it + WATER_L_PER_NOMINAL_KWH * self.it_nominal_w) * 1e-3 / 3.6e6;
        (channel_w.into(), gpu_w.into())
    }

    /// Ends the current tick at `t_ms` and starts the next one there: energies
    /// integrate the old powers exactly, thermals and loads move on, new powers
    /// are drawn, and pending GPU counter resets take effect at `t_ms`.
    /// Does nothing unless `t_ms` is after the current tick's start.
    pub fn advance_to(&mut self, t_ms: i64) {
        let Some(last) = self.history.back() else {
            return;
        };
        let dt = t_ms - last.start_ms;
        if dt <= 0 {
            return;
        }
        let channels = last.channel_j.len();
        let channel_j: Box<[f64]> = (0..channels).map(|c| last.channel_at(c, t_ms)).collect();
        let gpu_mj: Box<[u64]> = (0..last.gpu_mj.len())
            .map(|g| last.gpu_mj[g] + u64::from(last.gpu_w[g]) * dt as u64)
            .collect();
        for (temp, w) in self.gpu_temp_c.iter_mut().zip(last.gpu_w.iter()) {
            *temp = load::next_temp_c(*temp, f64::from(*w), dt);
        }
        for node in &mut self.nodes {
            node.load.advance(t_ms);
        }
        let (channel_w, gpu_w) = self.powers(channels, gpu_mj.len());
        for g in 0..gpu_mj.len() {
            if std::mem::take(&mut self.gpu_reset_pending[g]) {
                self.gpu_offset_mj[g] = gpu_mj[g];
                self.gpu_reset_ms[g] = Some(t_ms);
            }
        }
        self.history.push_back(Tick {
            start_ms: t_ms,
            channel_j,
            channel_w,
            gpu_mj,
            gpu_w,
        });
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
    }

    /// Advances one nominal tick.
    pub fn step(&mut self) {
        let next = self.tick_start_ms() + TICK_MS;
        self.advance_to(next);
    }

    /// When the current (latest) tick started, Unix ms.
    pub fn tick_start_ms(&self) -> i64 {
        self.history.back().map_or(0, |t| t.start_ms)
    }

    /// The oldest instant the truth still knows, Unix ms.
    pub fn oldest_ms(&self) -> i64 {
        self.history.front().map_or(0, |t| t.start_ms)
    }

    /// The nodes, rack by rack.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &NodeInfo> {
        self.nodes.iter().map(|n| &n.info)
    }

    /// The served meters: `utility-a`, `pdu-r1…`, `cooling-1`.
    pub fn meters(&self) -> &[MeterInfo] {
        &self.meters
    }

    /// The meter with this id.
    pub fn meter(&self, id: &str) -> Option<&MeterInfo> {
        self.meter_by_id.get(id).map(|&m| &self.meters[m])
    }

    /// The tick that holds `at_ms` (the latest one for later instants).
    fn tick_at(&self, at_ms: i64) -> Result<&Tick, HallError> {
        self.history
            .iter()
            .rev()
            .find(|t| t.start_ms <= at_ms)
            .ok_or(HallError::BeforeHistory {
                at_ms,
                oldest_ms: self.oldest_ms(),
            })
    }

    fn meter_index(&self, id: &str) -> Result<usize, HallError> {
        self.meter_by_id
            .get(id)
            .copied()
            .ok_or_else(|| HallError::UnknownMeter(id.to_owned()))
    }

    fn gpu_index(&self, uuid: &str) -> Result<usize, HallError> {
        self.gpu_by_uuid
            .get(uuid)
            .copied()
            .ok_or_else(|| HallError::UnknownGpu(uuid.to_owned()))
    }

    /// A meter as it reads at `at_ms`: its power and its counter (true
    /// cumulative energy less the energy at its last reset).
    pub fn meter_reading(&self, id: &str, at_ms: i64) -> Result<MeterReading, HallError> {
        let m = self.meter_index(id)?;
        let c = self.meter_channel[m];
        let tick = self.tick_at(at_ms)?;
        Ok(MeterReading {
            power_watts: tick.channel_w[c],
            energy_joules: (tick.channel_at(c, at_ms) - self.meter_offset_j[m]).max(0.0),
        })
    }

    /// The site water meter as it reads at `at_ms`: its flow and its counter
    /// (true cumulative volume less the volume at its last reset).
    pub fn water_reading(&self, at_ms: i64) -> Result<WaterReading, HallError> {
        let tick = self.tick_at(at_ms)?;
        Ok(WaterReading {
            flow_cubic_meters_per_second: tick.channel_w[CH_WATER],
            volume_cubic_meters: (tick.channel_at(CH_WATER, at_ms) - self.water_offset_m3).max(0.0),
        })
    }

    /// What `entity` really spent from `from_ms` to `to_ms`, whatever its
    /// counter did: energy in J, or for [`Entity::Water`] volume in m³.
    /// Instants after the latest tick's start extrapolate its power (flow),
    /// which holds until the next tick.
    pub fn truth(&self, entity: &Entity, from_ms: i64, to_ms: i64) -> Result<f64, HallError> {
        if from_ms > to_ms {
            return Err(HallError::Reversed { from_ms, to_ms });
        }
        let (from, to) = (self.tick_at(from_ms)?, self.tick_at(to_ms)?);
        match entity {
            Entity::Meter(id) => {
                let c = self.meter_channel[self.meter_index(id)?];
                Ok(to.channel_at(c, to_ms) - from.channel_at(c, from_ms))
            }
            Entity::Gpu(uuid) => {
                let g = self.gpu_index(uuid)?;
                Ok((to.gpu_mj_at(g, to_ms) - from.gpu_mj_at(g, from_ms)) as f64 / 1000.0)
            }
            Entity::Water(id) if id == WATER_METER => {
                Ok(to.channel_at(CH_WATER, to_ms) - from.channel_at(CH_WATER, from_ms))
            }
            Entity::Water(id) => Err(HallError::UnknownMeter(id.clone())),
        }
    }

    /// Energy of the internal channels over an interval, J: `(facility, it,
    /// cooling, power-infrastructure losses)`. The losses have no served meter.
    pub fn energy_balance(&self, from_ms: i64, to_ms: i64) -> Result<[f64; 4], HallError> {
        if from_ms > to_ms {
            return Err(HallError::Reversed { from_ms, to_ms });
        }
        let (from, to) = (self.tick_at(from_ms)?, self.tick_at(to_ms)?);
        let e = |c| to.channel_at(c, to_ms) - from.channel_at(c, from_ms);
        Ok([e(CH_FACILITY), e(CH_IT), e(CH_COOLING), e(CH_LOSSES)])
    }

    /// Powers at `at_ms`.
    pub fn power(&self, at_ms: i64) -> Result<PowerSummary, HallError> {
        let tick = self.tick_at(at_ms)?;
        Ok(PowerSummary {
            facility_watts: tick.channel_w[CH_FACILITY],
            it_watts: tick.channel_w[CH_IT],
            cooling_watts: tick.channel_w[CH_COOLING],
            gpu_watts: tick.gpu_w.iter().map(|&w| f64::from(w)).sum(),
        })
    }

    /// Restarts a meter's served counter (the water meter's too) from zero at
    /// `at_ms`; returns `at_ms`.
    pub fn reset_meter_counter(&mut self, id: &str, at_ms: i64) -> Result<i64, HallError> {
        if id == WATER_METER {
            self.water_offset_m3 = self.tick_at(at_ms)?.channel_at(CH_WATER, at_ms);
            return Ok(at_ms);
        }
        let m = self.meter_index(id)?;
        let c = self.meter_channel[m];
        self.meter_offset_j[m] = self.tick_at(at_ms)?.channel_at(c, at_ms);
        Ok(at_ms)
    }

    /// Asks for a GPU's counter to restart from zero at the start of the next
    /// tick (so the fake NVML file and the truth agree on the instant); see
    /// [`Hall::gpu_reset_ms`] once the tick is taken.
    pub fn request_gpu_reset(&mut self, uuid: &str) -> Result<(), HallError> {
        let g = self.gpu_index(uuid)?;
        self.gpu_reset_pending[g] = true;
        Ok(())
    }

    /// Adds `celsius` to a GPU's temperature from the next state file on (a
    /// blocked cold plate); 0 ends it. Past the slowdown threshold the GPU
    /// also reports hardware thermal slowdown.
    pub fn heat_gpu(&mut self, uuid: &str, celsius: f64) -> Result<(), HallError> {
        let g = self.gpu_index(uuid)?;
        self.gpu_heat_c[g] = celsius.clamp(0.0, 60.0);
        Ok(())
    }

    /// Makes NVML report a GPU lost (`GPU_IS_LOST`, fallen off the bus)
    /// from the next state file on, or found again.
    pub fn lose_gpu(&mut self, uuid: &str, lost: bool) -> Result<(), HallError> {
        let g = self.gpu_index(uuid)?;
        self.gpu_lost[g] = lost;
        Ok(())
    }

    /// Raises an XID event with `code` on a GPU from the next state file on;
    /// the agent reads it through NVML's event API. Returns the event's id.
    pub fn xid_gpu(&mut self, uuid: &str, code: u64) -> Result<u64, HallError> {
        let g = self.gpu_index(uuid)?;
        let id = self.next_xid;
        self.next_xid += 1;
        let xids = &mut self.gpu_xids[g];
        xids.push(dcwatt_fake_nvml::FakeXid { id, code });
        if xids.len() > MAX_XIDS_PER_GPU {
            xids.remove(0);
        }
        Ok(id)
    }

    /// Whether a requested GPU counter reset still waits for the next tick.
    pub fn gpu_reset_pending(&self, uuid: &str) -> Result<bool, HallError> {
        Ok(self.gpu_reset_pending[self.gpu_index(uuid)?])
    }

    /// When the GPU's counter last restarted from zero, Unix ms.
    pub fn gpu_reset_ms(&self, uuid: &str) -> Result<Option<i64>, HallError> {
        Ok(self.gpu_reset_ms[self.gpu_index(uuid)?])
    }

    /// The fake NVML view of a node's GPUs at the start of the current tick
    /// (`index` into [`Hall::nodes`]): what its state file says, with
    /// `time_ms` = [`Hall::tick_start_ms`]. Empty for an unknown node.
    pub fn fake_nvml_gpus(&self, node: usize) -> Vec<FakeGpu> {
        let (Some(node), Some(tick)) = (self.nodes.get(node), self.history.back()) else {
            return Vec::new();
        };
        let phase = node.load.phase();
        let throttle = if phase == Phase::Idle {
            THROTTLE_GPU_IDLE
        } else {
            0
        };
        (0..node.info.gpus.len())
            .map(|i| {
                let g = node.first_gpu + i;
                let temp = self.gpu_temp_c[g] + self.gpu_heat_c[g];
                let hot = temp >= f64::from(GPU_THRESHOLDS.slowdown);
                let throttle = if hot {
                    throttle | NVML_HW_THERMAL_SLOWDOWN
                } else {
                    throttle
                };
                FakeGpu {
                    index: i as u32,
                    uuid: node.info.gpus[i].clone(),
                    power_mw: tick.gpu_w[g] * 1000,
                    energy_mj: tick.gpu_mj[g].saturating_sub(self.gpu_offset_mj[g]),
                    temp_c: temp.round().max(0.0) as u32,
                    mem_temp_c: (temp - load::MEM_TEMP_OFFSET_C).round().max(0.0) as u32,
                    util_gpu_pct: phase.util_pct(),
                    util_mem_pct: phase.mem_util_pct(),
                    mem_total_bytes: GPU_MEM_TOTAL_BYTES,
                    mem_used_bytes: node.load.mem_used_bytes().min(GPU_MEM_TOTAL_BYTES),
                    power_limit_mw: load::POWER_LIMIT_W as u32 * 1000,
                    throttle_reasons: throttle,
                    lost: self.gpu_lost[g],
                    name: GPU_MODEL.into(),
                    thresholds: Some(GPU_THRESHOLDS),
                    xids: self.gpu_xids[g].clone(),
                    ..FakeGpu::default()
                }
            })
            .collect()
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` from a node's seed and the index.
fn gpu_uuid(node_seed: u64, index: u32) -> String {
    let mut rng = Prng::new(load::mix(node_seed, 0x6770_7500 + u64::from(index)));
    let (a, b) = (rng.next_u64(), rng.next_u64());
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests;
