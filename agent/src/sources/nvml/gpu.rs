//! One GPU's reads, on the reader thread ([`super`]): a call that hangs in the
//! driver stalls this GPU only (a new reader takes the others).
//!
//! Units are converted here, at the edge: mW → W, mJ → J, percent → ratio,
//! MHz → Hz, ns → s. A call that answers "not supported" is learned once per
//! NVML init (logged once) and not made again; its series stay absent.
//!
//! # Calls per tick
//! Static facts (limits, thresholds, PCIe link, MIG, supported clock-event
//! reasons, fans) are read on the first tick and again every
//! [`STATIC_REFRESH`]; between refreshes they are repeated from the cache.
//! The dynamic readings that NVML serves as field values (power by scope,
//! energy, memory temperature, violation time, ECC, PCIe replays, remapped
//! rows) come from one `nvmlDeviceGetFieldValues` call; each falls back to
//! its classic call only where the field is not supported. The GPU
//! temperature (`nvmlDeviceGetTemperatureV`) is read every tick too. The
//! readings that have no field ([`Task`]: GPM, clock-event reasons,
//! utilization, memory, the margin, clocks, fans, NVLink counters) share
//! the [`CALL_BUDGET`]'s remaining calls, the most overdue first: each is
//! read at least every other tick while few are due, and its last value is
//! repeated in between.
//!
//! # Errors
//! See [`Failure`]: a GPU is reported down, with a reason, when its core
//! call (the field values, else the temperature) fails, or when any call
//! answers an error that means the GPU as a whole is unusable.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcwatt_wire::{Entity, GpuInfo, Quantity, Reading};
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PerformancePolicy, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_ECC_DBE_AGG_TOTAL, NVML_FI_DEV_ECC_SBE_AGG_TOTAL, NVML_FI_DEV_MEMORY_TEMP,
    NVML_FI_DEV_PCIE_REPLAY_COUNTER, NVML_FI_DEV_PERF_POLICY_POWER,
    NVML_FI_DEV_PERF_POLICY_THERMAL, NVML_FI_DEV_POWER_AVERAGE, NVML_FI_DEV_POWER_INSTANT,
    NVML_FI_DEV_TEMPERATURE_GPU_MAX_TLIMIT, NVML_FI_DEV_TEMPERATURE_MEM_MAX_TLIMIT,
    NVML_FI_DEV_TEMPERATURE_SHUTDOWN_TLIMIT, NVML_FI_DEV_TEMPERATURE_SLOWDOWN_TLIMIT,
    NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
};
use nvml_wrapper::{Device, Nvml};
use tracing::{debug, info, warn};

use super::detail::{Fam, GpuDetail, Sample};
use super::raw;
use crate::names as n;
use crate::sources::now_ms;

/// How often static facts are read again.
pub const STATIC_REFRESH: Duration = Duration::from_secs(300);

/// NVML calls per GPU per steady-state tick (static refreshes aside, and
/// on a driver that serves the field values and NVML 13's calls): the
/// field-values call, the temperature, and two [`Task`] calls.
pub const CALL_BUDGET: u32 = 4;

/// The calls a tick has for [`Task`]s.
const TASK_SLOTS: u32 = CALL_BUDGET - 2;

/// A reading without a field value, read when its turn comes (the most
/// overdue first, [`Task::period`]) within [`TASK_SLOTS`] calls a tick;
/// its last value is repeated in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Task {
    /// `nvmlGpmSampleGet` + `nvmlGpmMetricsGet` (two calls): the GPM
    /// ratios over the time since the previous sample.
    Gpm,
    /// `nvmlGpmMigSampleGet` + `nvmlGpmMetricsGet` (two calls) for one MIG
    /// instance: the instances of a GPU in MIG mode take turns.
    GpmMig,
    /// `nvmlDeviceGetCurrentClocksEventReasons`.
    Reasons,
    /// `nvmlDeviceGetUtilizationRates`.
    Utilization,
    /// `nvmlDeviceGetMemoryInfo_v2`.
    Memory,
    /// `nvmlDeviceGetMarginTemperature`.
    Margin,
    /// `nvmlDeviceGetClockInfo` (SM).
    ClockSm,
    /// `nvmlDeviceGetClockInfo` (memory).
    ClockMem,
    /// `nvmlDeviceGetFanSpeed_v2` of one fan.
    Fan(u32),
    /// One NVLink field-values call ([`NVLINK_FIELDS_PER_CALL`] fields).
    Nvlink,
}

impl Task {
    /// The wanted interval, ticks: the share of the budget each gets when
    /// more is due than fits (every reading's interval then stretches alike).
    fn period(self) -> f64 {
        match self {
            Task::Gpm | Task::GpmMig | Task::Reasons | Task::Utilization => 2.0,
            Task::Memory | Task::Margin | Task::ClockSm | Task::ClockMem | Task::Fan(_) => 10.0,
            Task::Nvlink => 1.0,
        }
    }

    fn cost(self) -> u32 {
        if matches!(self, Task::Gpm | Task::GpmMig) {
            2
        } else {
            1
        }
    }
}

/// The last values of the [`Task`] readings, repeated between reads.
#[derive(Debug, Default)]
struct Held {
    /// The tick each task last ran.
    last: std::collections::BTreeMap<Task, u64>,
    reasons: Option<u64>,
    /// `(gpu, memory)`, percent.
    utilization: Option<(u32, u32)>,
    /// `(used, total, reserved)`, bytes.
    memory: Option<(u64, u64, u64)>,
    /// The margin NVML gave, °C, and the GPU temperature of that tick.
    margin: Option<(f64, Option<f64>)>,
    /// SM and memory clocks, MHz.
    clocks: [Option<u32>; 2],
    /// Fan speeds, percent, by fan.
    fans: std::collections::BTreeMap<u32, u32>,
}

/// How often the NVLink error counters are read: their own field-values
/// calls ([`NVLINK_FIELDS_PER_CALL`] fields each), apart from the tick's core
/// call, so that a driver refusing them loses NVLink only.
pub const NVLINK_REFRESH: Duration = Duration::from_secs(10);

/// Fields per NVLink field-values call (18 links × 7 counters take 4 calls).
const NVLINK_FIELDS_PER_CALL: usize = 32;

/// `NVML_FI_DEV_NVLINK_LINK_COUNT`.
const FI_NVLINK_LINK_COUNT: u32 = 91;

/// `NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`: what NVML asks the operator to do
/// (`nvmlDeviceGpuRecoveryAction_t`: 0 none, 1 GPU reset, 2 node reboot, 3
/// drain P2P, 4 drain and reset, 5 recover the IMEX domain).
const FI_RECOVERY_ACTION: u32 = 230;

/// NVLink error counters, per link (`scopeId` = link): field id and the
/// `counter` label. 161–163 are the pre-Blackwell data-link counters
/// ("unsupported for Blackwell+" in the header), 208–221 Blackwell's.
const NVLINK_COUNTERS: [(u32, &str); 7] = [
    (161, "dl_replay"),
    (162, "dl_recovery"),
    (163, "dl_crc"),
    (208, "rcv_errors"),
    (213, "recovery_successful"),
    (214, "recovery_failed"),
    (221, "symbol_errors"),
];

/// The shortest interval between two GPM samples NVML accepts.
pub const GPM_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// GPM metrics the agent reads (`nvmlGpmMetricId_t`, percent) and the family
/// each becomes (a ratio).
const GPM_METRICS: [(u32, Fam); 4] = [
    (2, Fam::GpmSmActive),     // NVML_GPM_METRIC_SM_UTIL
    (3, Fam::GpmSmOccupancy),  // NVML_GPM_METRIC_SM_OCCUPANCY
    (5, Fam::GpmTensorActive), // NVML_GPM_METRIC_ANY_TENSOR_UTIL
    (10, Fam::GpmDramActive),  // NVML_GPM_METRIC_DRAM_BW_UTIL
];

/// A GPU's two GPM sample buffers: the earlier sample, the buffer the next
/// one goes into, when the earlier was taken, and the last metrics computed.
#[derive(Debug)]
struct GpmState {
    earlier: raw::GpmSample,
    spare: raw::GpmSample,
    at: Instant,
    values: Vec<(Fam, f64)>,
}

/// GPM of one MIG instance: its MIG UUID (a label) and its buffers, once
/// its first sample is taken.
#[derive(Debug)]
struct MigGpm {
    uuid: String,
    gpm: Option<GpmState>,
}

/// The `unsupported` key of one MIG instance's GPM (by GPU instance id).
fn mig_gpm_call(gpu_instance: u32) -> String {
    format!("gpm_mig:{gpu_instance}")
}

/// The per-instance family of a board GPM family.
fn mig_fam(board: Fam) -> Fam {
    match board {
        Fam::GpmSmActive => Fam::MigSmActive,
        Fam::GpmSmOccupancy => Fam::MigSmOccupancy,
        Fam::GpmTensorActive => Fam::MigTensorActive,
        _ => Fam::MigDramActive,
    }
}

/// GPM metrics as ratios, the ones NVML answered (finite), by board family.
fn gpm_values(values: Vec<Result<f64, NvmlError>>) -> Vec<(Fam, f64)> {
    GPM_METRICS
        .iter()
        .zip(values)
        .filter_map(|((_, fam), v)| v.ok().filter(|v| v.is_finite()).map(|v| (*fam, v / 100.0)))
        .collect()
}

/// `nvmlPowerScopeType_t`: the GPU alone, the whole module (superchip: GPUs,
/// Grace CPU, LPDDR), the GPU's memory.
const SCOPE_GPU: u32 = 0;
const SCOPE_MODULE: u32 = 1;
const SCOPE_MEMORY: u32 = 2;

/// Clock-event (throttle) reason bits, NVML's `nvmlClocksEventReason*`, with
/// the label each gets and the wire quantity it is shipped as (if any).
pub const THROTTLE_REASONS: [(u64, &str, Option<Quantity>); 9] = [
    (0x1, "gpu_idle", None),
    (0x2, "applications_clocks_setting", None),
    (0x4, "sw_power_cap", Some(Quantity::ThrottleSwPowerCap)),
    (0x8, "hw_slowdown", Some(Quantity::ThrottleHwSlowdown)),
    (0x10, "sync_boost", None),
    (
        0x20,
        "sw_thermal_slowdown",
        Some(Quantity::ThrottleSwThermalSlowdown),
    ),
    (
        0x40,
        "hw_thermal_slowdown",
        Some(Quantity::ThrottleHwThermalSlowdown),
    ),
    (
        0x80,
        "hw_power_brake_slowdown",
        Some(Quantity::ThrottleHwPowerBrakeSlowdown),
    ),
    (0x100, "display_clock_setting", None),
];

/// Thresholds: label, classic enum, T.Limit field id, wire quantity.
const THRESHOLDS: [(&str, TemperatureThreshold, u32, Quantity); 4] = [
    (
        "slowdown",
        TemperatureThreshold::Slowdown,
        NVML_FI_DEV_TEMPERATURE_SLOWDOWN_TLIMIT,
        Quantity::TemperatureSlowdownCelsius,
    ),
    (
        "shutdown",
        TemperatureThreshold::Shutdown,
        NVML_FI_DEV_TEMPERATURE_SHUTDOWN_TLIMIT,
        Quantity::TemperatureShutdownCelsius,
    ),
    (
        "gpu_max",
        TemperatureThreshold::GpuMax,
        NVML_FI_DEV_TEMPERATURE_GPU_MAX_TLIMIT,
        Quantity::TemperatureGpuMaxCelsius,
    ),
    (
        "memory_max",
        TemperatureThreshold::MemoryMax,
        NVML_FI_DEV_TEMPERATURE_MEM_MAX_TLIMIT,
        Quantity::TemperatureMemoryMaxCelsius,
    ),
];

/// What ended a GPU's read: the GPU is reported down with [`Failure::reason`].
///
/// | NVML error | where | result |
/// |---|---|---|
/// | `NOT_SUPPORTED`, missing symbol | any call or field | series absent, learned once |
/// | `NO_PERMISSION` | a non-core call or a field | series absent, learned once |
/// | `GPU_IS_LOST`, `RESET_REQUIRED`, `LIB_RM_VERSION_MISMATCH`, `UNINITIALIZED`, `DRIVER_NOT_LOADED` | any call (a field: `GPU_IS_LOST` only) | down |
/// | anything but "not supported" (`UNKNOWN`, `NO_PERMISSION`, `CORRUPTED_INFOROM`, …) | the core call | down |
/// | anything else | a non-core call or a field | reading skipped this tick |
#[derive(Debug)]
pub struct Failure(pub NvmlError);

impl Failure {
    /// The `reason` label.
    pub fn reason(&self) -> String {
        reason(&self.0)
    }
}

/// The `reason` label of an NVML error (`dcwatt_gpu_down_info`).
pub fn reason(e: &NvmlError) -> String {
    match e {
        NvmlError::GpuLost => "gpu_lost".into(),
        NvmlError::ResetRequired => "reset_required".into(),
        NvmlError::Unknown => "unknown".into(),
        NvmlError::NoPermission => "no_permission".into(),
        NvmlError::CorruptedInfoROM => "corrupted_inforom".into(),
        NvmlError::IrqIssue => "irq_issue".into(),
        NvmlError::InsufficientPower => "insufficient_power".into(),
        NvmlError::LibRmVersionMismatch => "lib_rm_version_mismatch".into(),
        NvmlError::OperatingSystem => "operating_system".into(),
        NvmlError::Uninitialized => "uninitialized".into(),
        NvmlError::DriverNotLoaded => "driver_not_loaded".into(),
        NvmlError::Timeout => "timeout".into(),
        NvmlError::InUse => "in_use".into(),
        NvmlError::InsufficientMemory => "insufficient_memory".into(),
        NvmlError::NoData => "no_data".into(),
        NvmlError::NotSupported => "not_supported".into(),
        NvmlError::InvalidArg => "invalid_argument".into(),
        NvmlError::NotFound => "not_found".into(),
        NvmlError::UnexpectedVariant(27) => "not_ready".into(),
        NvmlError::UnexpectedVariant(c) => format!("nvml_error_{c}"),
        _ => "other".into(),
    }
}

/// Errors that make the GPU as a whole unusable, on whichever call. Others
/// (`UNKNOWN`, `CORRUPTED_INFOROM`, …) put a GPU down only when its core call
/// answers them: one reading that fails must not hide every other.
fn is_fatal(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::GpuLost
            | NvmlError::ResetRequired
            | NvmlError::LibRmVersionMismatch
            | NvmlError::Uninitialized
            | NvmlError::DriverNotLoaded
    )
}

/// "This GPU or library does not have it": learned once.
fn is_lacking(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound
    )
}

/// The GPU's thresholds once read: `(label, °C, wire quantity)`.
type Thresholds = Vec<(&'static str, f64, Quantity)>;

/// Module power as one GPU read it (only the module's designated reader asks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModuleRead {
    /// 1 s average, watts.
    pub power_w: Option<f64>,
    /// Instantaneous, watts.
    pub power_instant_w: Option<f64>,
}

/// What one read of one GPU yielded.
#[derive(Debug, Clone, Default)]
pub struct GpuRead {
    /// Identity, once known (a GPU lost before its first read has none).
    pub info: Option<GpuInfo>,
    /// False when the GPU is lost or failed as a whole.
    pub up: bool,
    /// Why it is down (`dcwatt_gpu_down_info{reason}`); `None` while up.
    pub down_reason: Option<String>,
    /// The superchip module it belongs to (see `docs/nvml.md`), once known.
    pub module_key: Option<String>,
    /// Module power, when this GPU read it this tick.
    pub module: Option<ModuleRead>,
    /// Shipped readings (wire quantities), SI units.
    pub readings: Vec<Reading>,
    /// Agent-only values.
    pub detail: GpuDetail,
}

/// Facts read at most every [`STATIC_REFRESH`].
#[derive(Debug, Default, Clone)]
struct Statics {
    /// Classic (absolute) thresholds.
    thresholds: Thresholds,
    /// T.Limit threshold offsets, `(label, °C)`, signed.
    tlimit: Vec<(&'static str, f64)>,
    power_limit_w: Option<f64>,
    default_limit_w: Option<f64>,
    supported_reasons: Option<u64>,
    fans: u32,
    /// PCIe link, remapped rows, MIG: samples repeated as read.
    samples: Vec<Sample>,
    /// MIG instances whose GPU instance id NVML gave: `(id, MIG UUID)`.
    mig: Vec<(u32, String)>,
}

/// A GPU's state that outlives one read: identity, static facts, what it
/// lacks, the energy counter's last value and resets.
#[derive(Debug, Default)]
pub struct GpuState {
    index: u32,
    /// The NVML init this state's learned facts belong to.
    generation: u64,
    /// The device handle (`nvmlDevice_t` as an address), valid for this init.
    handle: Option<usize>,
    info: Option<GpuInfo>,
    pci_bus_id: String,
    module_key: Option<String>,
    statics: Option<Statics>,
    statics_at: Option<Instant>,
    /// Calls this GPU answered "not supported" (or "no permission") to, or
    /// that the library lacks.
    unsupported: BTreeSet<String>,
    /// `(field id, scope)` this GPU answered "not supported" to.
    unsupported_fields: BTreeSet<(u32, u32)>,
    /// Last energy counter value, J, and the UUID it belongs to.
    last_energy: Option<(String, f64)>,
    energy_resets: u64,
    /// The reason of the last failed read, so that a failure is logged once.
    down: Option<String>,
    /// Whether this GPU reads its module's power (set by the control thread:
    /// one GPU per module).
    pub module_reader: bool,
    /// NVLink links (from the static refresh) and when their error counters
    /// were last read, with the samples then read.
    nvlink_links: u32,
    nvlink_at: Option<Instant>,
    nvlink_samples: Vec<Sample>,
    /// GPM sample buffers, once allocated; freed by [`GpuState::release`]
    /// before NVML is shut down for a re-init.
    gpm: Option<GpmState>,
    /// GPM per MIG instance, by GPU instance id (instances of the last
    /// static refresh); freed like `gpm`.
    mig_gpm: std::collections::BTreeMap<u32, MigGpm>,
    /// The GPU instance whose GPM was read last (instances take turns).
    mig_cursor: Option<u32>,
    /// Ticks read, for [`Task`] turns.
    ticks: u64,
    held: Held,
    /// The next NVLink chunk to read (0: a new round) and the samples of
    /// the round so far.
    nvlink_cursor: usize,
    nvlink_pending: Vec<Sample>,
}

/// Dynamic field values of one tick, by what they are.
#[derive(Debug, Default)]
struct Fields {
    power_mw: Option<f64>,
    power_instant_mw: Option<f64>,
    memory_power_mw: Option<f64>,
    module_power_mw: Option<f64>,
    module_power_instant_mw: Option<f64>,
    energy_mj: Option<f64>,
    mem_temp: Option<f64>,
    violation_power_ns: Option<f64>,
    violation_thermal_ns: Option<f64>,
    ecc_corrected: Option<f64>,
    ecc_uncorrected: Option<f64>,
    pcie_replays: Option<f64>,
    /// Remapped rows: correctable, uncorrectable, pending, failure.
    remapped: [Option<f64>; 4],
    /// `NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`.
    recovery_action: Option<f64>,
    tlimit: Vec<(&'static str, f64)>,
    nvlink_links: Option<f64>,
}

impl GpuState {
    /// State for the GPU at `index`.
    pub fn new(index: u32) -> Self {
        Self {
            index,
            module_reader: true,
            ..Self::default()
        }
    }

    /// Frees what this GPU holds of the NVML instance `nvml` (the GPM sample
    /// buffers), before that instance is shut down. A GPU whose state is
    /// busy in a hung call keeps them: freeing under a running call is worse.
    pub fn release(&mut self, nvml: &Nvml) {
        if let Some(g) = self.gpm.take() {
            let _ = raw::gpm_sample_free(nvml, g.earlier);
            let _ = raw::gpm_sample_free(nvml, g.spare);
        }
        for (_, m) in std::mem::take(&mut self.mig_gpm) {
            if let Some(g) = m.gpm {
                let _ = raw::gpm_sample_free(nvml, g.earlier);
                let _ = raw::gpm_sample_free(nvml, g.spare);
            }
        }
    }

    /// Counter samples the agent keeps itself, for a GPU that did not answer.
    pub fn kept_samples(&self) -> Vec<Sample> {
        vec![Sample::plain(Fam::EnergyResets, self.energy_resets as f64)]
    }

    /// Reads the GPU once. `generation` changes when NVML was re-initialized:
    /// then what was learned about the GPU is forgotten (the energy history is
    /// kept, so a driver reload's counter drop counts as a reset).
    pub fn read(&mut self, nvml: &Arc<Nvml>, generation: u64, driver: &str) -> GpuRead {
        if generation != self.generation {
            let (last_energy, resets) = (self.last_energy.take(), self.energy_resets);
            *self = Self::new(self.index);
            self.generation = generation;
            self.last_energy = last_energy;
            self.energy_resets = resets;
        }
        let dev = match self.handle {
            // SAFETY: the handle came from this NVML init (`generation`), and
            // NVML's device handles stay valid until nvmlShutdown.
            Some(h) => {
                Ok(unsafe { Device::new(h as nvml_wrapper_sys::bindings::nvmlDevice_t, nvml) })
            }
            None => nvml.device_by_index(self.index).inspect(|d| {
                // SAFETY: reading the handle's address only.
                self.handle = Some(unsafe { d.handle() } as usize);
            }),
        };
        let result = dev
            .map_err(Failure)
            .and_then(|dev| self.read_device(&dev, driver));
        match result {
            Ok(read) => {
                if self.down.take().is_some() {
                    info!(gpu = self.index, "GPU is back.");
                }
                read
            }
            Err(f) => {
                let reason = f.reason();
                if self.down.as_deref() != Some(reason.as_str()) {
                    warn!(gpu = self.index, error = %f.0, reason = %reason, "GPU read failed; marking it down.");
                }
                self.down = Some(reason.clone());
                // Back up, it is read whole (a burst) before anything is repeated.
                self.held = Held::default();
                self.statics_at = None;
                let mut samples = self.kept_samples();
                samples.push(Sample::labelled(
                    Fam::DownInfo,
                    n::REASON,
                    reason.clone(),
                    1.0,
                ));
                GpuRead {
                    info: self.info.clone(),
                    up: false,
                    down_reason: Some(reason),
                    module_key: self.module_key.clone(),
                    module: None,
                    readings: Vec::new(),
                    detail: GpuDetail {
                        driver_version: driver.to_owned(),
                        pci_bus_id: self.pci_bus_id.clone(),
                        samples,
                    },
                }
            }
        }
    }

    /// `Ok(None)` when the call is known or found to be unsupported (or not
    /// permitted, or the loaded library lacks it), or failed for this tick;
    /// `Err` when the error means the GPU is unusable.
    fn optional<T>(
        &mut self,
        call: &str,
        f: impl FnOnce() -> Result<T, NvmlError>,
    ) -> Result<Option<T>, Failure> {
        if self.unsupported.contains(call) {
            return Ok(None);
        }
        match f() {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_fatal(&e) => Err(Failure(e)),
            Err(e) if is_lacking(&e) || matches!(e, NvmlError::NoPermission) => {
                info!(
                    gpu = self.index,
                    call,
                    error = %e,
                    "NVML reading not available on this GPU; its series is left out."
                );
                self.unsupported.insert(call.to_owned());
                Ok(None)
            }
            Err(e) => {
                // Transient (or unexpected): skip this time, try again next tick.
                debug!(gpu = self.index, call, error = %e, "NVML query failed; reading skipped.");
                Ok(None)
            }
        }
    }

    /// Like [`Self::optional`] for a core call: anything but "not supported"
    /// (learned once) means the GPU is down.
    fn core<T>(
        &mut self,
        call: &str,
        f: impl FnOnce() -> Result<T, NvmlError>,
    ) -> Result<Option<T>, Failure> {
        if self.unsupported.contains(call) {
            return Ok(None);
        }
        match f() {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_lacking(&e) => {
                info!(
                    gpu = self.index,
                    call, "NVML call not supported on this GPU; using the fallback."
                );
                self.unsupported.insert(call.to_owned());
                Ok(None)
            }
            Err(e) => Err(Failure(e)),
        }
    }

    fn field_ok(&self, field: u32, scope: u32) -> bool {
        !self.unsupported.contains("field_values")
            && !self.unsupported_fields.contains(&(field, scope))
    }

    fn identify(&mut self, dev: &Device<'_>) -> Result<GpuInfo, Failure> {
        if let Some(i) = &self.info {
            return Ok(i.clone());
        }
        let uuid = dev.uuid().map_err(Failure)?;
        let model = self
            .optional("name", || dev.name())?
            .unwrap_or_else(|| "unknown".into());
        let info = GpuInfo {
            uuid,
            index: self.index,
            model,
            module: None,
        };
        let pci = self.optional("pci_info", || dev.pci_info())?;
        let serial = self
            .optional("serial", || dev.serial())?
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        self.pci_bus_id = pci.as_ref().map(|p| p.bus_id.clone()).unwrap_or_default();
        self.module_key = module_key(
            serial.as_deref(),
            pci.as_ref().map(|p| p.domain),
            &self.pci_bus_id,
        );
        self.info = Some(info.clone());
        Ok(info)
    }

    fn read_device(&mut self, dev: &Device<'_>, driver: &str) -> Result<GpuRead, Failure> {
        let info = self.identify(dev)?;
        let refresh = self
            .statics_at
            .is_none_or(|t| t.elapsed() >= STATIC_REFRESH);
        let fields = self.read_fields(dev, refresh)?;

        let entity = Entity::Gpu(info.uuid.clone());
        let mut readings = Vec::with_capacity(24);
        let mut samples = Vec::with_capacity(32);
        let mut push = |quantity: Quantity, value: f64| {
            readings.push(Reading {
                ts_ms: now_ms(),
                entity: entity.clone(),
                quantity,
                value,
            });
        };

        // Temperature: NVML 13's versioned call, else the deprecated one. It
        // is the core call when the field values are not supported.
        let core_temp = self.unsupported.contains("field_values");
        let t = if core_temp {
            self.core("temperature_v", || raw::temperature_v(dev))?
        } else {
            self.optional("temperature_v", || raw::temperature_v(dev))?
        };
        let gpu_temp = match t {
            Some(c) => Some(f64::from(c)),
            None if self.unsupported.contains("temperature_v") => self
                .optional("temperature", || dev.temperature(TemperatureSensor::Gpu))?
                .map(f64::from),
            None => None,
        };
        if let Some(c) = gpu_temp {
            push(Quantity::TemperatureCelsius, c);
        }
        if let Some(c) = fields.mem_temp {
            push(Quantity::MemoryTemperatureCelsius, c);
        }

        // Power: the field (1 s average, GPU scope), else the classic call.
        let power_mw = match fields.power_mw {
            Some(p) => Some(p),
            None if !self.field_ok(NVML_FI_DEV_POWER_AVERAGE, SCOPE_GPU) => self
                .optional("power_usage", || dev.power_usage())?
                .map(f64::from),
            None => None,
        };
        if let Some(mw) = power_mw {
            push(Quantity::PowerWatts, mw / 1000.0);
        }
        if let Some(mw) = fields.power_instant_mw {
            samples.push(Sample::plain(Fam::PowerInstant, mw / 1000.0));
        }
        if let Some(mw) = fields.memory_power_mw {
            samples.push(Sample::plain(Fam::MemoryPower, mw / 1000.0));
        }

        let energy_mj = match fields.energy_mj {
            Some(e) => Some(e),
            None if !self.field_ok(NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, SCOPE_GPU) => self
                .optional("total_energy_consumption", || {
                    dev.total_energy_consumption()
                })?
                .map(|v| v as f64),
            None => None,
        };
        if let Some(mj) = energy_mj {
            // f64 mJ → J: exact below 2^53 mJ (≈ 285 years at 1 kW).
            let joules = mj / 1000.0;
            match &self.last_energy {
                Some((uuid, last)) if *uuid == info.uuid && joules < *last => {
                    self.energy_resets += 1;
                    info!(
                        gpu = self.index,
                        before = last,
                        after = joules,
                        "GPU energy counter reset."
                    );
                }
                _ => {}
            }
            self.last_energy = Some((info.uuid.clone(), joules));
            push(Quantity::EnergyJoules, joules);
        }
        samples.push(Sample::plain(Fam::EnergyResets, self.energy_resets as f64));

        if let Some(links) = fields.nvlink_links {
            self.nvlink_links = links.clamp(0.0, 64.0) as u32;
        }
        if refresh {
            let statics = self.read_statics(dev, fields.tlimit.clone())?;
            self.prune_mig_gpm(dev.nvml(), &statics);
            self.statics = Some(statics);
            self.statics_at = Some(Instant::now());
        }
        let statics = self.statics.clone().unwrap_or_default();
        self.ticks += 1;
        self.run_tasks(dev, refresh, &statics, gpu_temp)?;
        samples.extend(self.nvlink_samples.iter().cloned());

        for (label, c, q) in &statics.thresholds {
            push(*q, *c);
            samples.push(Sample::labelled(Fam::Threshold, n::THRESHOLD, *label, *c));
        }
        for (label, c) in &statics.tlimit {
            samples.push(Sample::labelled(
                Fam::TlimitOffset,
                n::THRESHOLD,
                *label,
                *c,
            ));
        }
        // The margin to slowdown: NVML's own (T.Limit parts), carried between
        // its reads by the change of the GPU temperature (T.Limit is fixed);
        // else the classic slowdown threshold minus the temperature.
        let classic_slowdown = statics
            .thresholds
            .iter()
            .find(|t| t.0 == "slowdown")
            .map(|t| t.1);
        match (self.held.margin, classic_slowdown, gpu_temp) {
            (Some((m, Some(then))), _, Some(now)) => {
                samples.push(Sample::plain(Fam::SlowdownMargin, m - (now - then)));
            }
            (Some((m, _)), _, _) => samples.push(Sample::plain(Fam::SlowdownMargin, m)),
            (None, Some(s), Some(t)) => samples.push(Sample::plain(Fam::SlowdownMargin, s - t)),
            _ => {}
        }

        if let Some((gpu, mem)) = self.held.utilization {
            push(Quantity::UtilizationRatio, f64::from(gpu) / 100.0);
            push(Quantity::MemoryUtilizationRatio, f64::from(mem) / 100.0);
        }
        if let Some((used, total, reserved)) = self.held.memory {
            push(Quantity::MemoryUsedBytes, used as f64);
            push(Quantity::MemoryTotalBytes, total as f64);
            samples.push(Sample::plain(Fam::MemoryReserved, reserved as f64));
        }
        if let Some(w) = statics.power_limit_w {
            push(Quantity::PowerLimitWatts, w);
        }
        if let Some(w) = statics.default_limit_w {
            push(Quantity::PowerDefaultLimitWatts, w);
            samples.push(Sample::plain(Fam::PowerDefaultLimit, w));
        }

        // Clock-event (throttle) reasons: every reason the GPU supports, 0 or 1.
        if let (Some(supported), Some(bits)) = (statics.supported_reasons, self.held.reasons) {
            for (bit, label, q) in THROTTLE_REASONS {
                if supported & bit == 0 {
                    continue;
                }
                let v = if bits & bit == 0 { 0.0 } else { 1.0 };
                samples.push(Sample::labelled(Fam::ThrottleActive, n::REASON, label, v));
                if let Some(q) = q {
                    push(q, v);
                }
            }
        }

        // Violation time: the fields, else the deprecated call.
        for (policy, ns, field, p, call) in [
            (
                "power",
                fields.violation_power_ns,
                NVML_FI_DEV_PERF_POLICY_POWER,
                PerformancePolicy::Power,
                "violation_status:power",
            ),
            (
                "thermal",
                fields.violation_thermal_ns,
                NVML_FI_DEV_PERF_POLICY_THERMAL,
                PerformancePolicy::Thermal,
                "violation_status:thermal",
            ),
        ] {
            let ns = match ns {
                Some(v) => Some(v),
                None if !self.field_ok(field, SCOPE_GPU) => self
                    .optional(call, || dev.violation_status(p))?
                    .map(|v| v.violation_time as f64),
                None => None,
            };
            if let Some(ns) = ns {
                samples.push(Sample::labelled(
                    Fam::ViolationSeconds,
                    n::POLICY,
                    policy,
                    ns / 1e9,
                ));
            }
        }

        for (label, mhz) in ["sm", "memory"].into_iter().zip(self.held.clocks) {
            if let Some(mhz) = mhz {
                samples.push(Sample::labelled(
                    Fam::Clock,
                    n::CLOCK,
                    label,
                    f64::from(mhz) * 1e6,
                ));
            }
        }
        for (fan, pct) in &self.held.fans {
            samples.push(Sample::labelled(
                Fam::FanSpeed,
                n::FAN,
                fan.to_string(),
                f64::from(*pct) / 100.0,
            ));
        }

        // ECC (aggregate): the fields, else the classic call.
        for (label, count, field, kind, call) in [
            (
                "corrected",
                fields.ecc_corrected,
                NVML_FI_DEV_ECC_SBE_AGG_TOTAL,
                MemoryError::Corrected,
                "total_ecc_errors:corrected",
            ),
            (
                "uncorrected",
                fields.ecc_uncorrected,
                NVML_FI_DEV_ECC_DBE_AGG_TOTAL,
                MemoryError::Uncorrected,
                "total_ecc_errors:uncorrected",
            ),
        ] {
            let count = match count {
                Some(c) => Some(c),
                None if !self.field_ok(field, SCOPE_GPU) => self
                    .optional(call, || dev.total_ecc_errors(kind, EccCounter::Aggregate))?
                    .map(|c| c as f64),
                None => None,
            };
            if let Some(c) = count {
                samples.push(Sample::labelled(Fam::EccErrors, n::ERROR, label, c));
            }
        }
        if let Some(g) = &self.gpm {
            for (fam, v) in &g.values {
                samples.push(Sample::plain(*fam, *v));
                let q = match fam {
                    Fam::GpmSmActive => Quantity::SmActiveRatio,
                    Fam::GpmSmOccupancy => Quantity::SmOccupancyRatio,
                    Fam::GpmTensorActive => Quantity::TensorActiveRatio,
                    _ => Quantity::DramActiveRatio,
                };
                // NVML's percent can round past 100: the wire's range is 0..=1.
                push(q, v.clamp(0.0, 1.0));
            }
        }
        // Per MIG instance: agent-only families (the wire's GPM quantities
        // are per GPU), labelled as `dcwatt_gpu_mig_instance_info`.
        for (gi, m) in &self.mig_gpm {
            for (fam, v) in m.gpm.iter().flat_map(|g| &g.values) {
                samples.push(Sample {
                    fam: mig_fam(*fam),
                    labels: vec![
                        (n::MIG_UUID, m.uuid.clone().into()),
                        (n::GPU_INSTANCE, gi.to_string().into()),
                    ],
                    value: *v,
                });
            }
        }
        if let Some(r) = fields.pcie_replays {
            samples.push(Sample::plain(Fam::PcieReplays, r));
        }
        if let Some(a) = fields.recovery_action {
            samples.push(Sample::plain(Fam::RecoveryAction, a));
        }
        if let [Some(corr), Some(unc), Some(pending), Some(failure)] = fields.remapped {
            samples.extend(remapped_samples(corr, unc, pending != 0.0, failure != 0.0));
        }
        samples.extend(statics.samples.iter().cloned());

        let module = self.module_reader.then(|| ModuleRead {
            power_w: fields.module_power_mw.map(|mw| mw / 1000.0),
            power_instant_w: fields.module_power_instant_mw.map(|mw| mw / 1000.0),
        });
        Ok(GpuRead {
            info: Some(info),
            up: true,
            down_reason: None,
            module_key: self.module_key.clone(),
            module,
            readings,
            detail: GpuDetail {
                driver_version: driver.to_owned(),
                pci_bus_id: self.pci_bus_id.clone(),
                samples,
            },
        })
    }

    /// The [`Task`]s this GPU has, with how overdue each is (`None`: not
    /// due at all).
    fn due_tasks(&self, statics: &Statics) -> Vec<(f64, Task)> {
        let mut tasks = vec![
            Task::Gpm,
            Task::GpmMig,
            Task::Reasons,
            Task::Utilization,
            Task::Memory,
            Task::Margin,
            Task::ClockSm,
            Task::ClockMem,
        ];
        tasks.extend((0..statics.fans).map(Task::Fan));
        let mut out = Vec::with_capacity(tasks.len() + 1);
        for task in tasks {
            let available = match task {
                Task::Gpm => {
                    !self.unsupported.contains("gpm")
                        && !self.unsupported.contains("gpm_metrics")
                        && self
                            .gpm
                            .as_ref()
                            .is_none_or(|g| g.at.elapsed() >= GPM_MIN_INTERVAL)
                }
                Task::GpmMig => !self.mig_gpm_due(statics).is_empty(),
                Task::Reasons => {
                    statics.supported_reasons.is_some()
                        && !(self.unsupported.contains("clocks_event_reasons")
                            && self.unsupported.contains("current_throttle_reasons"))
                }
                Task::Utilization => !self.unsupported.contains("utilization_rates"),
                Task::Memory => !self.unsupported.contains("memory_info"),
                Task::Margin => !self.unsupported.contains("margin_temperature"),
                Task::ClockSm => !self.unsupported.contains("clock_info:sm"),
                Task::ClockMem => !self.unsupported.contains("clock_info:memory"),
                Task::Fan(_) => !self.unsupported.contains("fan_speed"),
                Task::Nvlink => false,
            };
            if available {
                let score = match self.held.last.get(&task) {
                    None => f64::INFINITY,
                    Some(&t) => self.ticks.saturating_sub(t) as f64 / task.period(),
                };
                out.push((score, task));
            }
        }
        if self.nvlink_links > 0 && !self.unsupported.contains("nvlink_fields") {
            let score = match self.nvlink_at {
                _ if self.nvlink_cursor > 0 => Some(Task::Nvlink.period()),
                None => Some(f64::INFINITY),
                Some(t) => {
                    let s = t.elapsed().as_secs_f64() / NVLINK_REFRESH.as_secs_f64();
                    (s >= 1.0).then_some(s)
                }
            };
            if let Some(s) = score {
                out.push((s, Task::Nvlink));
            }
        }
        out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        out
    }

    /// Reads the [`Task`]s whose turn it is: the most overdue first, within
    /// [`TASK_SLOTS`] calls; every task (every NVLink chunk) when `burst`
    /// (the first tick and each static refresh), so that every series is
    /// there from the first tick.
    fn run_tasks(
        &mut self,
        dev: &Device<'_>,
        burst: bool,
        statics: &Statics,
        gpu_temp: Option<f64>,
    ) -> Result<(), Failure> {
        let mut slots = TASK_SLOTS;
        for (_, task) in self.due_tasks(statics) {
            if !burst {
                if task.cost() > slots {
                    continue;
                }
                slots -= task.cost();
            }
            match task {
                // A burst takes every instance's turn (each one's first
                // sample, or its window so far).
                Task::GpmMig => {
                    for gi in self.mig_gpm_due(statics) {
                        self.read_gpm_mig(dev, gi, statics)?;
                        if !burst {
                            break;
                        }
                    }
                }
                _ => self.run_task(dev, task, gpu_temp)?,
            }
            if burst && task == Task::Nvlink {
                while self.nvlink_cursor > 0 {
                    self.run_task(dev, task, gpu_temp)?;
                }
            }
            self.held.last.insert(task, self.ticks);
            if !burst && slots == 0 {
                break;
            }
        }
        Ok(())
    }

    fn run_task(
        &mut self,
        dev: &Device<'_>,
        task: Task,
        gpu_temp: Option<f64>,
    ) -> Result<(), Failure> {
        match task {
            Task::Gpm => self.read_gpm(dev)?,
            // Read by `run_tasks`, which has the instances.
            Task::GpmMig => {}
            Task::Reasons => {
                let current = match self.optional("clocks_event_reasons", || {
                    raw::clocks_event_reasons(dev, false)
                })? {
                    Some(b) => Some(b),
                    None if self.unsupported.contains("clocks_event_reasons") => self
                        .optional("current_throttle_reasons", || {
                            dev.current_throttle_reasons()
                        })?
                        .map(|r| r.bits()),
                    None => None,
                };
                self.held.reasons = current;
            }
            Task::Utilization => {
                self.held.utilization = self
                    .optional("utilization_rates", || dev.utilization_rates())?
                    .map(|u| (u.gpu, u.memory));
            }
            Task::Memory => {
                self.held.memory = self
                    .optional("memory_info", || dev.memory_info())?
                    .map(|m| (m.used, m.total, m.reserved));
            }
            Task::Margin => {
                self.held.margin = self
                    .optional("margin_temperature", || raw::margin_temperature(dev))?
                    .map(|m| (f64::from(m), gpu_temp));
            }
            Task::ClockSm | Task::ClockMem => {
                let (i, clock, call) = if task == Task::ClockSm {
                    (0, Clock::SM, "clock_info:sm")
                } else {
                    (1, Clock::Memory, "clock_info:memory")
                };
                self.held.clocks[i] = self.optional(call, || dev.clock_info(clock))?;
            }
            Task::Fan(fan) => {
                match self.optional("fan_speed", || dev.fan_speed(fan))? {
                    Some(pct) => self.held.fans.insert(fan, pct),
                    None => self.held.fans.remove(&fan),
                };
            }
            Task::Nvlink => self.read_nvlink_chunk(dev)?,
        }
        Ok(())
    }

    /// One chunk of the NVLink error counters of every link, in a
    /// field-values call of its own (not the core call: a refusal loses
    /// NVLink only). A round of chunks ends with the samples replaced. A
    /// counter a link does not support is learned once, like any field.
    fn read_nvlink_chunk(&mut self, dev: &Device<'_>) -> Result<(), Failure> {
        let req: Vec<(u32, u32)> = (0..self.nvlink_links.min(64))
            .flat_map(|link| NVLINK_COUNTERS.iter().map(move |(id, _)| (*id, link)))
            .filter(|r| !self.unsupported_fields.contains(r))
            .collect();
        let start = self.nvlink_cursor.min(req.len());
        let chunk = &req[start..req.len().min(start + NVLINK_FIELDS_PER_CALL)];
        if self.nvlink_cursor == 0 {
            self.nvlink_pending.clear();
        }
        let values = if chunk.is_empty() {
            Some(Vec::new())
        } else {
            self.optional("nvlink_fields", || raw::field_values(dev, chunk))?
        };
        let Some(values) = values else {
            // Unsupported (learned) or failed this time: keep the last round.
            self.nvlink_cursor = 0;
            self.nvlink_at = Some(Instant::now());
            return Ok(());
        };
        let mut consumed = 0;
        for (&(id, link), value) in chunk.iter().zip(values) {
            consumed += 1;
            match value {
                Ok(v) if v.is_finite() => {
                    if let Some((_, label)) = NVLINK_COUNTERS.iter().find(|c| c.0 == id) {
                        self.nvlink_pending.push(Sample {
                            fam: Fam::NvlinkErrors,
                            labels: vec![
                                (n::LINK, link.to_string().into()),
                                (n::COUNTER, Cow::Borrowed(*label)),
                            ],
                            value: v,
                        });
                    }
                }
                Ok(_) => {}
                Err(NvmlError::GpuLost) => return Err(Failure(NvmlError::GpuLost)),
                Err(e) if is_lacking(&e) || matches!(e, NvmlError::NoPermission) => {
                    // Learned: the next rounds leave it out, so this chunk's
                    // later fields shift left; they are read again next chunk.
                    if self.unsupported_fields.insert((id, link)) {
                        debug!(
                            gpu = self.index,
                            field = id,
                            link,
                            "NVLink counter not available."
                        );
                    }
                    consumed -= 1;
                }
                Err(_) => {}
            }
        }
        let next = start + consumed;
        let left = (0..self.nvlink_links.min(64))
            .flat_map(|link| NVLINK_COUNTERS.iter().map(move |(id, _)| (*id, link)))
            .filter(|r| !self.unsupported_fields.contains(r))
            .count();
        if next >= left || chunk.is_empty() {
            self.nvlink_samples = std::mem::take(&mut self.nvlink_pending);
            self.nvlink_cursor = 0;
            self.nvlink_at = Some(Instant::now());
        } else {
            self.nvlink_cursor = next;
        }
        Ok(())
    }

    /// GPM utilization over the time since the previous sample (at least
    /// [`GPM_MIN_INTERVAL`]: else nothing is read), metrics between the two,
    /// buffers swapped: two calls. The first time, the buffers are allocated
    /// and the first sample taken. Absent where GPM is not supported
    /// (learned once).
    fn read_gpm(&mut self, dev: &Device<'_>) -> Result<(), Failure> {
        if self.unsupported.contains("gpm") {
            return Ok(());
        }
        let nvml = dev.nvml();
        let Some(mut g) = self.gpm.take() else {
            let a = self.optional("gpm", || raw::gpm_sample_alloc(nvml))?;
            let b = self.optional("gpm", || raw::gpm_sample_alloc(nvml))?;
            let first = match a {
                Some(a) => self.optional("gpm", || raw::gpm_sample_get(dev, a))?,
                None => None,
            };
            match (a, b, first) {
                (Some(earlier), Some(spare), Some(())) => {
                    self.gpm = Some(GpmState {
                        earlier,
                        spare,
                        at: Instant::now(),
                        values: Vec::new(),
                    });
                }
                _ => {
                    for s in [a, b].into_iter().flatten() {
                        let _ = raw::gpm_sample_free(nvml, s);
                    }
                }
            }
            return Ok(());
        };
        if g.at.elapsed() >= GPM_MIN_INTERVAL
            && self
                .optional("gpm", || raw::gpm_sample_get(dev, g.spare))?
                .is_some()
        {
            let at = Instant::now();
            let ids: Vec<u32> = GPM_METRICS.iter().map(|m| m.0).collect();
            if let Some(values) = self.optional("gpm_metrics", || {
                raw::gpm_metrics_get(nvml, g.earlier, g.spare, &ids)
            })? {
                g.values = gpm_values(values);
            }
            std::mem::swap(&mut g.earlier, &mut g.spare);
            g.at = at;
        }
        if self.unsupported.contains("gpm") {
            let _ = raw::gpm_sample_free(nvml, g.earlier);
            let _ = raw::gpm_sample_free(nvml, g.spare);
        } else {
            self.gpm = Some(g);
        }
        Ok(())
    }

    /// The MIG instances whose GPM can be read now (listed by the last
    /// static refresh, not known to lack GPM, their previous sample at least
    /// [`GPM_MIN_INTERVAL`] old), in turn order: those after the one read
    /// last first.
    fn mig_gpm_due(&self, statics: &Statics) -> Vec<u32> {
        if self.unsupported.contains("gpm_metrics") {
            return Vec::new();
        }
        let mut ids: Vec<u32> = statics
            .mig
            .iter()
            .map(|(gi, _)| *gi)
            .filter(|gi| !self.unsupported.contains(&mig_gpm_call(*gi)))
            .filter(|gi| {
                self.mig_gpm
                    .get(gi)
                    .and_then(|m| m.gpm.as_ref())
                    .is_none_or(|g| g.at.elapsed() >= GPM_MIN_INTERVAL)
            })
            .collect();
        if let Some(c) = self.mig_cursor {
            ids.sort_by_key(|gi| (*gi <= c, *gi));
        }
        ids
    }

    /// GPM of the MIG instance `gi`, as [`Self::read_gpm`] for the board:
    /// the first time two buffers and the first sample
    /// (`nvmlGpmMigSampleGet`); then a sample and the metrics since the
    /// previous one (two calls). Absent where the instance has no GPM
    /// (learned once per instance); a sample that fails otherwise leaves the
    /// instance's ratios absent until its next read.
    fn read_gpm_mig(
        &mut self,
        dev: &Device<'_>,
        gi: u32,
        statics: &Statics,
    ) -> Result<(), Failure> {
        let call = mig_gpm_call(gi);
        let nvml = dev.nvml();
        self.mig_cursor = Some(gi);
        let uuid = statics
            .mig
            .iter()
            .find(|(id, _)| *id == gi)
            .map(|(_, u)| u.clone())
            .unwrap_or_default();
        let Some(mut g) = self.mig_gpm.get_mut(&gi).and_then(|m| m.gpm.take()) else {
            let a = self.optional(&call, || raw::gpm_sample_alloc(nvml))?;
            let b = match a {
                Some(_) => self.optional(&call, || raw::gpm_sample_alloc(nvml)),
                None => Ok(None),
            };
            let first = match (a, &b) {
                (Some(a), Ok(Some(_))) => {
                    self.optional(&call, || raw::gpm_mig_sample_get(dev, gi, a))
                }
                _ => Ok(None),
            };
            match (a, b, first) {
                (Some(earlier), Ok(Some(spare)), Ok(Some(()))) => {
                    let gpm = Some(GpmState {
                        earlier,
                        spare,
                        at: Instant::now(),
                        values: Vec::new(),
                    });
                    self.mig_gpm.insert(gi, MigGpm { uuid, gpm });
                }
                (a, b, first) => {
                    let b_buf = b.as_ref().ok().copied().flatten();
                    for s in [a, b_buf].into_iter().flatten() {
                        let _ = raw::gpm_sample_free(nvml, s);
                    }
                    b?;
                    first?;
                }
            }
            return Ok(());
        };
        let mut result = Ok(());
        match self.optional(&call, || raw::gpm_mig_sample_get(dev, gi, g.spare)) {
            Ok(Some(())) => {
                let at = Instant::now();
                let ids: Vec<u32> = GPM_METRICS.iter().map(|m| m.0).collect();
                match self.optional("gpm_metrics", || {
                    raw::gpm_metrics_get(nvml, g.earlier, g.spare, &ids)
                }) {
                    Ok(Some(values)) => g.values = gpm_values(values),
                    Ok(None) => g.values.clear(),
                    Err(e) => result = Err(e),
                }
                std::mem::swap(&mut g.earlier, &mut g.spare);
                g.at = at;
            }
            Ok(None) => g.values.clear(),
            Err(e) => result = Err(e),
        }
        if self.unsupported.contains(&call) || self.unsupported.contains("gpm_metrics") {
            let _ = raw::gpm_sample_free(nvml, g.earlier);
            let _ = raw::gpm_sample_free(nvml, g.spare);
            self.mig_gpm.remove(&gi);
        } else {
            self.mig_gpm.insert(gi, MigGpm { uuid, gpm: Some(g) });
        }
        result
    }

    /// Frees the GPM buffers of MIG instances the static refresh no longer
    /// lists (destroyed, or MIG turned off).
    fn prune_mig_gpm(&mut self, nvml: &Nvml, statics: &Statics) {
        let gone: Vec<u32> = self
            .mig_gpm
            .keys()
            .filter(|gi| !statics.mig.iter().any(|(id, _)| id == *gi))
            .copied()
            .collect();
        for gi in gone {
            if let Some(g) = self.mig_gpm.remove(&gi).and_then(|m| m.gpm) {
                let _ = raw::gpm_sample_free(nvml, g.earlier);
                let _ = raw::gpm_sample_free(nvml, g.spare);
            }
        }
    }

    /// Facts that change rarely, read on the first tick and every
    /// [`STATIC_REFRESH`]. `tlimit`: the T.Limit offsets the field call of
    /// this tick brought.
    fn read_statics(
        &mut self,
        dev: &Device<'_>,
        tlimit: Vec<(&'static str, f64)>,
    ) -> Result<Statics, Failure> {
        let mut s = Statics {
            tlimit,
            ..Statics::default()
        };
        for (label, t, _, q) in THRESHOLDS {
            let call = format!("temperature_threshold:{label}");
            if let Some(v) = self.optional(&call, || dev.temperature_threshold(t))? {
                s.thresholds.push((label, f64::from(v), q));
            }
        }
        s.power_limit_w = self
            .optional("enforced_power_limit", || dev.enforced_power_limit())?
            .map(|mw| f64::from(mw) / 1000.0);
        s.default_limit_w = self
            .optional("power_management_limit_default", || {
                dev.power_management_limit_default()
            })?
            .map(|mw| f64::from(mw) / 1000.0);
        s.supported_reasons = match self.optional("supported_clocks_event_reasons", || {
            raw::clocks_event_reasons(dev, true)
        })? {
            Some(b) => Some(b),
            None if self.unsupported.contains("supported_clocks_event_reasons") => self
                .optional("supported_throttle_reasons", || {
                    dev.supported_throttle_reasons()
                })?
                .map(|r| r.bits()),
            None => None,
        };
        s.fans = self.optional("num_fans", || dev.num_fans())?.unwrap_or(0);
        if let Some(g) = self.optional("current_pcie_link_gen", || dev.current_pcie_link_gen())? {
            s.samples
                .push(Sample::plain(Fam::PcieGeneration, f64::from(g)));
        }
        if let Some(w) =
            self.optional("current_pcie_link_width", || dev.current_pcie_link_width())?
        {
            s.samples.push(Sample::plain(Fam::PcieWidth, f64::from(w)));
        }
        // Remapped rows: the fields every tick; the call (static) only on a
        // GPU that does not serve them.
        let fielded = REMAPPED_FIELDS.iter().all(|&f| self.field_ok(f, SCOPE_GPU));
        if !fielded {
            if let Some(r) = self.optional("remapped_rows", || raw::remapped_rows(dev))? {
                s.samples.extend(remapped_samples(
                    f64::from(r.corrected),
                    f64::from(r.uncorrected),
                    r.pending,
                    r.failure,
                ));
            }
        }
        s.mig = self.read_mig(dev, &mut s.samples)?;
        Ok(s)
    }

    /// MIG mode and instances. Power and energy are read from the board only,
    /// so they are never repeated per instance. Returns the instances whose
    /// GPU instance id NVML gave (`nvmlDeviceGetGpuInstanceId`), for GPM.
    fn read_mig(
        &mut self,
        dev: &Device<'_>,
        samples: &mut Vec<Sample>,
    ) -> Result<Vec<(u32, String)>, Failure> {
        let mut listed = Vec::new();
        let Some(mode) = self.optional("mig_mode", || dev.mig_mode())? else {
            return Ok(listed);
        };
        let on = mode.current == 1;
        samples.push(Sample::plain(Fam::MigEnabled, if on { 1.0 } else { 0.0 }));
        if !on {
            return Ok(listed);
        }
        let slots = self.optional("mig_device_count", || dev.mig_device_count())?;
        for slot in 0..slots.unwrap_or(0) {
            // An empty slot answers NOT_FOUND: not a GPU failure, not "unsupported".
            let mig = match dev.mig_device_by_index(slot) {
                Ok(m) => m,
                Err(e) if is_fatal(&e) => return Err(Failure(e)),
                Err(_) => continue,
            };
            let (Ok(uuid), Ok(name)) = (mig.uuid(), mig.name()) else {
                continue;
            };
            // "NVIDIA GB300 MIG 1g.35gb" → "1g.35gb".
            let profile = name
                .rsplit_once("MIG ")
                .map_or(name.as_str(), |(_, p)| p)
                .trim()
                .to_owned();
            // The GPU instance id NVML gives the MIG device; a library
            // without the call: the UUID's last dash-separated part, as before.
            let instance = match self.optional("gpu_instance_id", || raw::gpu_instance_id(&mig))? {
                Some(gi) => {
                    listed.push((gi, uuid.clone()));
                    gi.to_string()
                }
                None => uuid.rsplit('-').next().unwrap_or("").to_owned(),
            };
            samples.push(Sample {
                fam: Fam::MigInstance,
                labels: vec![
                    (n::MIG_UUID, uuid.clone().into()),
                    (n::GPU_INSTANCE, instance.into()),
                    (n::PROFILE, profile.into()),
                ],
                value: 1.0,
            });
        }
        Ok(listed)
    }

    /// One `nvmlDeviceGetFieldValues` call (through the library handle, so
    /// that each field carries its scope) for every dynamic field not known to
    /// be unsupported; the T.Limit offsets too when `refresh`. The core call:
    /// a GPU that cannot answer it is down.
    fn read_fields(&mut self, dev: &Device<'_>, refresh: bool) -> Result<Fields, Failure> {
        let mut req: Vec<(u32, u32)> = vec![
            (NVML_FI_DEV_POWER_AVERAGE, SCOPE_GPU),
            (NVML_FI_DEV_POWER_INSTANT, SCOPE_GPU),
            (NVML_FI_DEV_POWER_AVERAGE, SCOPE_MEMORY),
            (NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, SCOPE_GPU),
            (NVML_FI_DEV_MEMORY_TEMP, SCOPE_GPU),
            (NVML_FI_DEV_PERF_POLICY_POWER, SCOPE_GPU),
            (NVML_FI_DEV_PERF_POLICY_THERMAL, SCOPE_GPU),
            (NVML_FI_DEV_ECC_SBE_AGG_TOTAL, SCOPE_GPU),
            (NVML_FI_DEV_ECC_DBE_AGG_TOTAL, SCOPE_GPU),
            (NVML_FI_DEV_PCIE_REPLAY_COUNTER, SCOPE_GPU),
        ];
        req.extend(REMAPPED_FIELDS.iter().map(|&f| (f, SCOPE_GPU)));
        req.push((FI_RECOVERY_ACTION, SCOPE_GPU));
        if self.module_reader {
            req.push((NVML_FI_DEV_POWER_AVERAGE, SCOPE_MODULE));
            req.push((NVML_FI_DEV_POWER_INSTANT, SCOPE_MODULE));
        }
        if refresh {
            req.extend(THRESHOLDS.iter().map(|t| (t.2, SCOPE_GPU)));
            req.push((FI_NVLINK_LINK_COUNT, SCOPE_GPU));
        }
        req.retain(|r| !self.unsupported_fields.contains(r));
        let mut out = Fields::default();
        if req.is_empty() {
            return Ok(out);
        }
        let Some(values) = self.core("field_values", || raw::field_values(dev, &req))? else {
            return Ok(out);
        };
        for (&(id, scope), value) in req.iter().zip(values) {
            let v = match value {
                Ok(v) if v.is_finite() => v,
                Ok(_) => continue,
                Err(NvmlError::GpuLost) => return Err(Failure(NvmlError::GpuLost)),
                Err(e) if is_lacking(&e) || matches!(e, NvmlError::NoPermission) => {
                    if self.unsupported_fields.insert((id, scope)) {
                        info!(
                            gpu = self.index,
                            field = id,
                            scope,
                            error = %e,
                            "NVML field not available on this GPU; its series is left out (or read by its classic call)."
                        );
                    }
                    continue;
                }
                Err(_) => continue,
            };
            match (id, scope) {
                (NVML_FI_DEV_POWER_AVERAGE, SCOPE_GPU) => out.power_mw = Some(v),
                (NVML_FI_DEV_POWER_INSTANT, SCOPE_GPU) => out.power_instant_mw = Some(v),
                (NVML_FI_DEV_POWER_AVERAGE, SCOPE_MEMORY) => out.memory_power_mw = Some(v),
                (NVML_FI_DEV_POWER_AVERAGE, SCOPE_MODULE) => out.module_power_mw = Some(v),
                (NVML_FI_DEV_POWER_INSTANT, SCOPE_MODULE) => out.module_power_instant_mw = Some(v),
                (NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, _) => out.energy_mj = Some(v),
                // 0 °C is what drivers answer for "no sensor"; no HBM runs at 0.
                (NVML_FI_DEV_MEMORY_TEMP, _) if v > 0.0 => out.mem_temp = Some(v),
                (NVML_FI_DEV_PERF_POLICY_POWER, _) => out.violation_power_ns = Some(v),
                (NVML_FI_DEV_PERF_POLICY_THERMAL, _) => out.violation_thermal_ns = Some(v),
                (NVML_FI_DEV_ECC_SBE_AGG_TOTAL, _) => out.ecc_corrected = Some(v),
                (NVML_FI_DEV_ECC_DBE_AGG_TOTAL, _) => out.ecc_uncorrected = Some(v),
                (NVML_FI_DEV_PCIE_REPLAY_COUNTER, _) => out.pcie_replays = Some(v),
                (FI_NVLINK_LINK_COUNT, _) => out.nvlink_links = Some(v),
                (FI_RECOVERY_ACTION, _) => out.recovery_action = Some(v),
                (f, _) if REMAPPED_FIELDS.contains(&f) => {
                    if let Some(i) = REMAPPED_FIELDS.iter().position(|&r| r == f) {
                        out.remapped[i] = Some(v);
                    }
                }
                (other, _) => {
                    // T.Limit offsets: signed, kept as NVML gives them.
                    if let Some(t) = THRESHOLDS.iter().find(|t| t.2 == other) {
                        out.tlimit.push((t.0, v));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `NVML_FI_DEV_REMAPPED_COR`, `_UNC`, `_PENDING`, `_FAILURE`.
const REMAPPED_FIELDS: [u32; 4] = [142, 143, 144, 145];

/// The remapped-row series of one GPU.
fn remapped_samples(corr: f64, unc: f64, pending: bool, failure: bool) -> [Sample; 4] {
    [
        Sample::labelled(Fam::RemappedRows, n::CAUSE, "correctable", corr),
        Sample::labelled(Fam::RemappedRows, n::CAUSE, "uncorrectable", unc),
        Sample::plain(Fam::RemappedRowsPending, if pending { 1.0 } else { 0.0 }),
        Sample::plain(Fam::RemappedRowsFailure, if failure { 1.0 } else { 0.0 }),
    ]
}

/// The superchip module a GPU belongs to (`docs/nvml.md`, "Module power"):
/// the board serial where NVML gives one (the two GPUs of a Grace-Blackwell
/// superchip share it), else the PCI domain pair where the domain is not 0
/// (GB300 trays: 0008/0009, 0018/0019), else the GPU alone. `nvmlDeviceGetModuleId`
/// is not used: it numbers the GPU within the node (1..4), not the superchip.
pub fn module_key(serial: Option<&str>, pci_domain: Option<u32>, bus_id: &str) -> Option<String> {
    if let Some(s) = serial {
        return Some(format!("sn-{s}"));
    }
    match pci_domain {
        Some(d) if d != 0 => Some(format!("pci-{:08x}", d & !1)),
        _ if !bus_id.is_empty() => Some(format!("gpu-{bus_id}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_key_prefers_the_serial_then_the_domain_pair() {
        assert_eq!(
            module_key(Some("1650000000001"), Some(8), "00000008:06:00.0").as_deref(),
            Some("sn-1650000000001")
        );
        let a = module_key(None, Some(0x18), "00000018:06:00.0");
        let b = module_key(None, Some(0x19), "00000019:06:00.0");
        assert_eq!(a, b);
        assert_eq!(a.as_deref(), Some("pci-00000018"));
        assert_ne!(a, module_key(None, Some(0x8), "00000008:06:00.0"));
        // Domain 0 everywhere (GB200 trays, PCIe boards): no pairing by domain.
        assert_ne!(
            module_key(None, Some(0), "00000000:29:00.0"),
            module_key(None, Some(0), "00000000:3F:00.0")
        );
        assert_eq!(module_key(None, None, ""), None);
    }

    #[test]
    fn every_error_has_a_reason() {
        assert_eq!(reason(&NvmlError::ResetRequired), "reset_required");
        assert_eq!(reason(&NvmlError::NoPermission), "no_permission");
        assert_eq!(reason(&NvmlError::Unknown), "unknown");
        assert_eq!(reason(&NvmlError::GpuLost), "gpu_lost");
        assert_eq!(reason(&NvmlError::UnexpectedVariant(29)), "nvml_error_29");
        assert!(is_fatal(&NvmlError::ResetRequired) && !is_fatal(&NvmlError::NoPermission));
        assert!(!is_fatal(&NvmlError::Unknown), "down only on the core call");
    }
}
