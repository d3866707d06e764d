//! Reads the node's GPUs through NVML (`libnvidia-ml.so.1`, via `nvml-wrapper`).
//!
//! NVML calls block, so a dedicated thread owns the library handle and answers
//! one collection request at a time. Units are converted here, at the edge:
//! mW → W, mJ → J, percent → ratio 0..1.
//!
//! Failures are data: "not supported" skips that reading; a lost GPU is reported
//! down while the others keep going; an init failure fails the source and init
//! is retried on the next tick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Duration;

use dcwatt_wire::{Entity, GpuInfo, Quantity, Reading};
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::NVML_FI_DEV_MEMORY_TEMP;
use nvml_wrapper::{Device, Nvml};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{now_ms, Collected, GpuStatus, SourceError};
use crate::config::{NvmlLibrary, NvmlSpec};

/// The NVML source: a handle on its worker thread.
#[derive(Debug)]
pub struct NvmlSource {
    requests: mpsc::SyncSender<oneshot::Sender<Collected>>,
    timeout: Duration,
}

impl NvmlSource {
    /// Starts the worker thread. NVML itself is initialized on the first collection.
    pub fn start(spec: NvmlSpec, timeout: Duration) -> Result<Self, SourceError> {
        // One request in flight at most: a hung driver must not pile up requests.
        let (tx, rx) = mpsc::sync_channel::<oneshot::Sender<Collected>>(1);
        let mut worker = Worker {
            library: spec.library,
            nvml: None,
            info: BTreeMap::new(),
            lost: BTreeSet::new(),
        };
        std::thread::Builder::new()
            .name("dcwatt-nvml".to_owned())
            .spawn(move || {
                // Ends when the source (the sender) is dropped; Nvml's drop shuts it down.
                while let Ok(reply) = rx.recv() {
                    let _ = reply.send(worker.collect());
                }
            })
            .map_err(SourceError::NvmlThread)?;
        Ok(Self {
            requests: tx,
            timeout,
        })
    }

    /// How long one collection may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks the worker for one collection of every GPU.
    pub async fn collect(&self) -> Collected {
        let (tx, rx) = oneshot::channel();
        match self.requests.try_send(tx) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                return Collected::failed("nvml: the previous collection is still running")
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Collected::failed("nvml: the worker thread is gone")
            }
        }
        rx.await
            .unwrap_or_else(|_| Collected::failed("nvml: the worker thread is gone"))
    }
}

/// State owned by the NVML thread.
struct Worker {
    library: NvmlLibrary,
    nvml: Option<Nvml>,
    /// Static facts per index, cached after the first successful read.
    info: BTreeMap<u32, GpuInfo>,
    /// Indexes currently lost, so that a loss is logged once.
    lost: BTreeSet<u32>,
}

impl Worker {
    fn collect(&mut self) -> Collected {
        if self.nvml.is_none() {
            match init(&self.library) {
                Ok(n) => {
                    info!(library = %library_name(&self.library), "NVML initialized.");
                    self.nvml = Some(n);
                }
                Err(e) => {
                    return Collected::failed(format!(
                        "nvml init ({}): {e}",
                        library_name(&self.library)
                    ))
                }
            }
        }
        let Some(nvml) = self.nvml.as_ref() else {
            return Collected::failed("nvml: not initialized");
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => {
                // Re-initialize on the next tick: the driver may have been reloaded.
                self.nvml = None;
                return Collected::failed(format!("nvml device count: {e}"));
            }
        };

        let mut out = Collected::default();
        for index in 0..count {
            let result = nvml
                .device_by_index(index)
                .and_then(|dev| read_gpu(&dev, index, &mut self.info, &mut out.readings));
            let up = match result {
                Ok(()) => {
                    if self.lost.remove(&index) {
                        info!(gpu = index, "GPU is back.");
                    }
                    true
                }
                Err(e) => {
                    if self.lost.insert(index) {
                        warn!(gpu = index, error = %e, "GPU read failed; marking it down.");
                    }
                    false
                }
            };
            match self.info.get(&index) {
                Some(info) => out.gpus.push(GpuStatus {
                    info: info.clone(),
                    up,
                }),
                // Lost before we ever learned its UUID: nothing to name it by.
                None => debug!(gpu = index, "GPU without known identity skipped."),
            }
        }
        out
    }
}

fn init(library: &NvmlLibrary) -> Result<Nvml, NvmlError> {
    match library {
        NvmlLibrary::System => Nvml::init(),
        NvmlLibrary::Path(p) => Nvml::builder().lib_path(p.as_os_str()).init(),
    }
}

fn library_name(library: &NvmlLibrary) -> String {
    match library {
        NvmlLibrary::System => "system libnvidia-ml".to_owned(),
        NvmlLibrary::Path(p) => p.display().to_string(),
    }
}

/// A value NVML may legitimately not have: `Ok(None)` for "not supported" (and
/// for a symbol the loaded library lacks); `Err` only for a lost GPU.
fn optional<T>(what: &str, index: u32, r: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::GpuLost) => Err(NvmlError::GpuLost),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => {
            debug!(gpu = index, call = what, error = %e, "NVML query failed; reading skipped.");
            Ok(None)
        }
    }
}

/// Reads one GPU into `out`. `Err` means the GPU as a whole is unusable.
fn read_gpu(
    dev: &Device<'_>,
    index: u32,
    infos: &mut BTreeMap<u32, GpuInfo>,
    out: &mut Vec<Reading>,
) -> Result<(), NvmlError> {
    let info = match infos.get(&index) {
        Some(i) => i.clone(),
        None => {
            let uuid = dev.uuid()?;
            let model = optional("name", index, dev.name())?.unwrap_or_else(|| "unknown".into());
            let info = GpuInfo { uuid, index, model };
            infos.insert(index, info.clone());
            info
        }
    };
    let entity = Entity::Gpu(info.uuid);
    let mut push = |quantity: Quantity, value: f64, ts_ms: i64| {
        out.push(Reading {
            ts_ms,
            entity: entity.clone(),
            quantity,
            value,
        })
    };

    let ts = now_ms();
    if let Some(mw) = optional("power_usage", index, dev.power_usage())? {
        push(Quantity::PowerWatts, f64::from(mw) / 1000.0, ts);
    }
    let ts = now_ms();
    if let Some(mj) = optional(
        "total_energy_consumption",
        index,
        dev.total_energy_consumption(),
    )? {
        // u64 mJ → f64 J: exact below 2^53 mJ (≈ 285 years at 1 kW).
        push(Quantity::EnergyJoules, mj as f64 / 1000.0, ts);
    }
    let ts = now_ms();
    if let Some(c) = optional(
        "temperature",
        index,
        dev.temperature(TemperatureSensor::Gpu),
    )? {
        push(Quantity::TemperatureCelsius, f64::from(c), ts);
    }
    let ts = now_ms();
    if let Some(c) = optional("memory_temperature", index, memory_temperature(dev))?.flatten() {
        push(Quantity::MemoryTemperatureCelsius, c, ts);
    }
    let ts = now_ms();
    if let Some(u) = optional("utilization_rates", index, dev.utilization_rates())? {
        push(Quantity::UtilizationRatio, f64::from(u.gpu) / 100.0, ts);
        push(
            Quantity::MemoryUtilizationRatio,
            f64::from(u.memory) / 100.0,
            ts,
        );
    }
    let ts = now_ms();
    if let Some(m) = optional("memory_info", index, dev.memory_info())? {
        push(Quantity::MemoryUsedBytes, m.used as f64, ts);
        push(Quantity::MemoryTotalBytes, m.total as f64, ts);
    }
    let ts = now_ms();
    if let Some(mw) = optional("enforced_power_limit", index, dev.enforced_power_limit())? {
        push(Quantity::PowerLimitWatts, f64::from(mw) / 1000.0, ts);
    }
    Ok(())
}

/// HBM temperature, °C, through the field-values API (`NVML_FI_DEV_MEMORY_TEMP`).
/// `Ok(None)` when the field holds no usable value.
fn memory_temperature(dev: &Device<'_>) -> Result<Option<f64>, NvmlError> {
    let samples = dev.field_values_for(&[FieldId(NVML_FI_DEV_MEMORY_TEMP)])?;
    let Some(sample) = samples.into_iter().next() else {
        return Ok(None);
    };
    let value = match sample?.value? {
        SampleValue::F64(v) => v,
        SampleValue::U32(v) => f64::from(v),
        SampleValue::U64(v) => v as f64,
        SampleValue::I64(v) => v as f64,
    };
    // 0 °C is what drivers answer for "no sensor"; no liquid-cooled HBM runs at 0.
    Ok((value.is_finite() && value > 0.0).then_some(value))
}
