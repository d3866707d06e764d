//! One GPU's reads, on the reader thread ([`super`]): a call that hangs in the
//! driver stalls this GPU only (a new reader takes the others).
//!
//! Units are converted here, at the edge: mW → W, mJ → J, percent → ratio,
//! MHz → Hz, ns → s. A call that answers "not supported" is learned once per
//! NVML init (logged once) and not made again; its series stay absent.

use std::collections::BTreeSet;
use std::sync::Arc;

use dcwatt_wire::{Entity, GpuInfo, Quantity, Reading};
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PerformancePolicy, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_MEMORY_TEMP, NVML_FI_DEV_POWER_INSTANT, NVML_FI_DEV_TEMPERATURE_GPU_MAX_TLIMIT,
    NVML_FI_DEV_TEMPERATURE_MEM_MAX_TLIMIT, NVML_FI_DEV_TEMPERATURE_SHUTDOWN_TLIMIT,
    NVML_FI_DEV_TEMPERATURE_SLOWDOWN_TLIMIT,
};
use nvml_wrapper::{Device, Nvml};
use tracing::{info, warn};

use super::detail::{Fam, GpuDetail, Sample};
use crate::names as n;
use crate::sources::now_ms;

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

/// Thresholds: label, classic enum, field id, wire quantity.
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

/// The GPU's thresholds once read: `(label, °C, wire quantity)`.
type Thresholds = Vec<(&'static str, f64, Quantity)>;

/// What one read of one GPU yielded.
#[derive(Debug, Clone, Default)]
pub struct GpuRead {
    /// Identity, once known (a GPU lost before its first read has none).
    pub info: Option<GpuInfo>,
    /// False when the GPU is lost or failed as a whole.
    pub up: bool,
    /// Shipped readings (wire quantities), SI units.
    pub readings: Vec<Reading>,
    /// Agent-only values.
    pub detail: GpuDetail,
}

/// A GPU's state that outlives one read: identity, static facts, what it
/// lacks, the energy counter's last value and resets.
#[derive(Debug, Default)]
pub struct GpuState {
    index: u32,
    /// The NVML init this state's learned facts belong to.
    generation: u64,
    info: Option<GpuInfo>,
    pci_bus_id: String,
    /// `(label, °C, quantity)` once read; thresholds do not change.
    thresholds: Option<Thresholds>,
    supported_throttle: Option<u64>,
    default_limit_w: Option<f64>,
    fans: Option<u32>,
    /// Calls this GPU answered "not supported" to (or the library lacks).
    unsupported: BTreeSet<String>,
    /// Field ids this GPU answered "not supported" to.
    unsupported_fields: BTreeSet<u32>,
    /// Last energy counter value, J, and the UUID it belongs to.
    last_energy: Option<(String, f64)>,
    energy_resets: u64,
    /// Whether the last read failed, so that a loss is logged once.
    down: bool,
}

impl GpuState {
    /// State for the GPU at `index`.
    pub fn new(index: u32) -> Self {
        Self {
            index,
            ..Self::default()
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
        let result = nvml
            .device_by_index(self.index)
            .and_then(|dev| self.read_device(&dev, driver));
        match result {
            Ok(read) => {
                if std::mem::take(&mut self.down) {
                    info!(gpu = self.index, "GPU is back.");
                }
                read
            }
            Err(e) => {
                if !std::mem::replace(&mut self.down, true) {
                    warn!(gpu = self.index, error = %e, "GPU read failed; marking it down.");
                }
                GpuRead {
                    info: self.info.clone(),
                    up: false,
                    readings: Vec::new(),
                    detail: GpuDetail {
                        driver_version: driver.to_owned(),
                        pci_bus_id: self.pci_bus_id.clone(),
                        samples: self.kept_samples(),
                    },
                }
            }
        }
    }

    /// `Ok(None)` when the call is known or found to be unsupported (or the
    /// loaded library lacks it); `Err` only when the GPU is lost.
    fn optional<T>(
        &mut self,
        call: &str,
        f: impl FnOnce() -> Result<T, NvmlError>,
    ) -> Result<Option<T>, NvmlError> {
        if self.unsupported.contains(call) {
            return Ok(None);
        }
        match f() {
            Ok(v) => Ok(Some(v)),
            Err(NvmlError::GpuLost) => Err(NvmlError::GpuLost),
            Err(e) => {
                let lacking = matches!(
                    e,
                    NvmlError::NotSupported
                        | NvmlError::FailedToLoadSymbol(_)
                        | NvmlError::FunctionNotFound
                );
                if lacking {
                    info!(
                        gpu = self.index,
                        call, "NVML reading not supported on this GPU; its series is left out."
                    );
                    self.unsupported.insert(call.to_owned());
                } else {
                    // Transient (or unexpected): skip this time, try again next tick.
                    tracing::debug!(gpu = self.index, call, error = %e, "NVML query failed; reading skipped.");
                }
                Ok(None)
            }
        }
    }

    fn read_device(&mut self, dev: &Device<'_>, driver: &str) -> Result<GpuRead, NvmlError> {
        let info = match &self.info {
            Some(i) => i.clone(),
            None => {
                let uuid = dev.uuid()?;
                let model = self
                    .optional("name", || dev.name())?
                    .unwrap_or_else(|| "unknown".into());
                let info = GpuInfo {
                    uuid,
                    index: self.index,
                    model,
                };
                self.pci_bus_id = self
                    .optional("pci_info", || dev.pci_info())?
                    .map(|p| p.bus_id)
                    .unwrap_or_default();
                self.info = Some(info.clone());
                info
            }
        };
        let entity = Entity::Gpu(info.uuid.clone());
        let mut readings = Vec::with_capacity(24);
        let mut samples = Vec::with_capacity(24);
        let mut push = |quantity: Quantity, value: f64| {
            readings.push(Reading {
                ts_ms: now_ms(),
                entity: entity.clone(),
                quantity,
                value,
            });
        };

        if let Some(mw) = self.optional("power_usage", || dev.power_usage())? {
            push(Quantity::PowerWatts, f64::from(mw) / 1000.0);
        }
        if let Some(mj) = self.optional("total_energy_consumption", || {
            dev.total_energy_consumption()
        })? {
            // u64 mJ → f64 J: exact below 2^53 mJ (≈ 285 years at 1 kW).
            let joules = mj as f64 / 1000.0;
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

        let gpu_temp = self.optional("temperature", || dev.temperature(TemperatureSensor::Gpu))?;
        if let Some(c) = gpu_temp {
            push(Quantity::TemperatureCelsius, f64::from(c));
        }

        // One field-values call: memory temperature, instantaneous power, and
        // the thresholds where the classic call is unsupported.
        let fields = self.read_fields(dev)?;
        if let Some(c) = fields.mem_temp {
            push(Quantity::MemoryTemperatureCelsius, c);
        }
        if let Some(mw) = fields.power_instant_mw {
            samples.push(Sample::plain(Fam::PowerInstant, mw / 1000.0));
        }
        if self.thresholds.is_none() {
            self.thresholds = self.read_thresholds(dev, &fields.thresholds)?;
        }
        if let Some(thresholds) = &self.thresholds {
            for (label, c, q) in thresholds {
                push(*q, *c);
                samples.push(Sample::labelled(Fam::Threshold, n::THRESHOLD, *label, *c));
                if *label == "slowdown" {
                    if let Some(t) = gpu_temp {
                        samples.push(Sample::plain(Fam::SlowdownMargin, c - f64::from(t)));
                    }
                }
            }
        }

        if let Some(u) = self.optional("utilization_rates", || dev.utilization_rates())? {
            push(Quantity::UtilizationRatio, f64::from(u.gpu) / 100.0);
            push(
                Quantity::MemoryUtilizationRatio,
                f64::from(u.memory) / 100.0,
            );
        }
        if let Some(m) = self.optional("memory_info", || dev.memory_info())? {
            push(Quantity::MemoryUsedBytes, m.used as f64);
            push(Quantity::MemoryTotalBytes, m.total as f64);
        }
        if let Some(mw) = self.optional("enforced_power_limit", || dev.enforced_power_limit())? {
            push(Quantity::PowerLimitWatts, f64::from(mw) / 1000.0);
        }
        // The default limit is a property of the board: read once.
        if self.default_limit_w.is_none() {
            self.default_limit_w = self
                .optional("power_management_limit_default", || {
                    dev.power_management_limit_default()
                })?
                .map(|mw| f64::from(mw) / 1000.0);
        }
        if let Some(w) = self.default_limit_w {
            samples.push(Sample::plain(Fam::PowerDefaultLimit, w));
        }

        // Throttle reasons: every reason the GPU supports, 0 or 1.
        if self.supported_throttle.is_none() {
            self.supported_throttle = self
                .optional("supported_throttle_reasons", || {
                    dev.supported_throttle_reasons()
                })?
                .map(|r| r.bits());
        }
        if let Some(supported) = self.supported_throttle {
            if let Some(current) = self.optional("current_throttle_reasons", || {
                dev.current_throttle_reasons()
            })? {
                let bits = current.bits();
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
        }
        for (policy, p, call) in [
            ("power", PerformancePolicy::Power, "violation_status:power"),
            (
                "thermal",
                PerformancePolicy::Thermal,
                "violation_status:thermal",
            ),
        ] {
            if let Some(v) = self.optional(call, || dev.violation_status(p))? {
                let secs = v.violation_time as f64 / 1e9;
                samples.push(Sample::labelled(
                    Fam::ViolationSeconds,
                    n::POLICY,
                    policy,
                    secs,
                ));
            }
        }

        for (label, clock, call) in [
            ("sm", Clock::SM, "clock_info:sm"),
            ("memory", Clock::Memory, "clock_info:memory"),
        ] {
            if let Some(mhz) = self.optional(call, || dev.clock_info(clock))? {
                samples.push(Sample::labelled(
                    Fam::Clock,
                    n::CLOCK,
                    label,
                    f64::from(mhz) * 1e6,
                ));
            }
        }
        if self.fans.is_none() {
            self.fans = self.optional("num_fans", || dev.num_fans())?;
        }
        for fan in 0..self.fans.unwrap_or(0) {
            if let Some(pct) = self.optional("fan_speed", || dev.fan_speed(fan))? {
                let ratio = f64::from(pct) / 100.0;
                samples.push(Sample::labelled(
                    Fam::FanSpeed,
                    n::FAN,
                    fan.to_string(),
                    ratio,
                ));
            }
        }
        for (label, kind, call) in [
            (
                "corrected",
                MemoryError::Corrected,
                "total_ecc_errors:corrected",
            ),
            (
                "uncorrected",
                MemoryError::Uncorrected,
                "total_ecc_errors:uncorrected",
            ),
        ] {
            if let Some(count) =
                self.optional(call, || dev.total_ecc_errors(kind, EccCounter::Aggregate))?
            {
                samples.push(Sample::labelled(
                    Fam::EccErrors,
                    n::ERROR,
                    label,
                    count as f64,
                ));
            }
        }
        if let Some(g) = self.optional("current_pcie_link_gen", || dev.current_pcie_link_gen())? {
            samples.push(Sample::plain(Fam::PcieGeneration, f64::from(g)));
        }
        if let Some(w) =
            self.optional("current_pcie_link_width", || dev.current_pcie_link_width())?
        {
            samples.push(Sample::plain(Fam::PcieWidth, f64::from(w)));
        }
        self.read_mig(dev, &mut samples)?;

        Ok(GpuRead {
            info: Some(info),
            up: true,
            readings,
            detail: GpuDetail {
                driver_version: driver.to_owned(),
                pci_bus_id: self.pci_bus_id.clone(),
                samples,
            },
        })
    }

    /// MIG mode and instances. Power and energy are read from the board only,
    /// so they are never repeated per instance.
    fn read_mig(&mut self, dev: &Device<'_>, samples: &mut Vec<Sample>) -> Result<(), NvmlError> {
        let Some(mode) = self.optional("mig_mode", || dev.mig_mode())? else {
            return Ok(());
        };
        let on = mode.current == 1;
        samples.push(Sample::plain(Fam::MigEnabled, if on { 1.0 } else { 0.0 }));
        if !on {
            return Ok(());
        }
        let slots = self.optional("mig_device_count", || dev.mig_device_count())?;
        for slot in 0..slots.unwrap_or(0) {
            // An empty slot answers NOT_FOUND: not a GPU failure, not "unsupported".
            let mig = match dev.mig_device_by_index(slot) {
                Ok(m) => m,
                Err(NvmlError::GpuLost) => return Err(NvmlError::GpuLost),
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
            let instance = uuid.rsplit('-').next().unwrap_or("").to_owned();
            samples.push(Sample {
                fam: Fam::MigInstance,
                labels: vec![
                    (n::MIG_UUID, uuid.clone()),
                    (n::GPU_INSTANCE, instance),
                    (n::PROFILE, profile),
                ],
                value: 1.0,
            });
        }
        Ok(())
    }

    /// The thresholds: the classic call first; where a GPU does not support
    /// it, the field values read this tick.
    fn read_thresholds(
        &mut self,
        dev: &Device<'_>,
        from_fields: &[(&'static str, f64)],
    ) -> Result<Option<Thresholds>, NvmlError> {
        let mut out = Vec::new();
        for (label, t, _, q) in THRESHOLDS {
            let call = format!("temperature_threshold:{label}");
            let classic = self.optional(&call, || dev.temperature_threshold(t))?;
            let value = classic
                .map(f64::from)
                .or_else(|| from_fields.iter().find(|(l, _)| *l == label).map(|f| f.1));
            if let Some(v) = value {
                out.push((label, v, q));
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// One `nvmlDeviceGetFieldValues` call for every field not known to be
    /// unsupported. Threshold fields are asked only until thresholds are known.
    fn read_fields(&mut self, dev: &Device<'_>) -> Result<Fields, NvmlError> {
        let mut ids = vec![NVML_FI_DEV_MEMORY_TEMP, NVML_FI_DEV_POWER_INSTANT];
        if self.thresholds.is_none() {
            ids.extend(THRESHOLDS.iter().map(|t| t.2));
        }
        ids.retain(|id| !self.unsupported_fields.contains(id));
        let mut out = Fields::default();
        if ids.is_empty() {
            return Ok(out);
        }
        let request: Vec<FieldId> = ids.iter().map(|id| FieldId(*id)).collect();
        let Some(samples) = self.optional("field_values", || dev.field_values_for(&request))?
        else {
            return Ok(out);
        };
        for (id, sample) in ids.iter().zip(samples) {
            let value = match sample.and_then(|s| s.value) {
                Ok(v) => sample_f64(&v),
                Err(NvmlError::GpuLost) => return Err(NvmlError::GpuLost),
                Err(NvmlError::NotSupported) => {
                    if self.unsupported_fields.insert(*id) {
                        info!(
                            gpu = self.index,
                            field = id,
                            "NVML field not supported on this GPU; its series is left out."
                        );
                    }
                    continue;
                }
                Err(_) => continue,
            };
            match *id {
                // 0 °C is what drivers answer for "no sensor"; no HBM runs at 0.
                NVML_FI_DEV_MEMORY_TEMP if value.is_finite() && value > 0.0 => {
                    out.mem_temp = Some(value);
                }
                NVML_FI_DEV_POWER_INSTANT if value.is_finite() => {
                    out.power_instant_mw = Some(value);
                }
                other => {
                    if let Some(t) = THRESHOLDS.iter().find(|t| t.2 == other) {
                        if value.is_finite() && value > 0.0 {
                            out.thresholds.push((t.0, value));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Field values read in one call.
#[derive(Debug, Default)]
struct Fields {
    mem_temp: Option<f64>,
    power_instant_mw: Option<f64>,
    thresholds: Vec<(&'static str, f64)>,
}

fn sample_f64(v: &SampleValue) -> f64 {
    match *v {
        SampleValue::F64(v) => v,
        SampleValue::U32(v) => f64::from(v),
        SampleValue::U64(v) => v as f64,
        SampleValue::I64(v) => v as f64,
    }
}
