//! NVML calls `nvml-wrapper` 0.13 does not make as the agent needs them,
//! made through the wrapper's own library handle (`Nvml::lib()`, the
//! `nvml-wrapper-sys` function table), so the same loaded library answers:
//! - `nvmlDeviceGetFieldValues` with a `scopeId` per field (the wrapper's
//!   `field_values_for` zeroes it, so module and memory power cannot be asked);
//! - `nvmlDeviceGetTemperatureV` and `nvmlDeviceGetMarginTemperature`
//!   (versioned structs, NVML 13);
//! - `nvmlDeviceGetCurrentClocksEventReasons` and
//!   `nvmlDeviceGetSupportedClocksEventReasons` (the wrapper calls the
//!   deprecated `…ClocksThrottleReasons` names);
//! - GPM (`nvmlGpmSample*`, `nvmlGpmMigSampleGet`, `nvmlGpmMetricsGet`) on
//!   buffers the agent keeps across ticks, and `nvmlDeviceGetGpuInstanceId`.
//!
//! A symbol the loaded library lacks answers
//! `NvmlError::FailedToLoadSymbol`, as in the wrapper, never a panic. The
//! structs are `nvml-wrapper-sys`'s; `sim/fake-nvml/tests/layout.rs` checks
//! them against NVIDIA's header.

use std::mem::size_of;

use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::Device;
use nvml_wrapper_sys::bindings as b;

/// `NVML_STRUCT_VERSION(T, v)`: the struct's size with the version in the top byte.
fn struct_version<T>(v: u32) -> u32 {
    u32::try_from(size_of::<T>()).unwrap_or(0) | (v << 24)
}

/// One field to ask for: `(fieldId, scopeId)`.
pub type FieldRequest = (u32, u32);

/// One `nvmlDeviceGetFieldValues` call for `requests`, in order. The outer
/// error is the call's; each inner one is that field's own return code.
pub fn field_values(
    dev: &Device<'_>,
    requests: &[FieldRequest],
) -> Result<Vec<Result<f64, NvmlError>>, NvmlError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let f = nvml_sym(dev.nvml().lib().nvmlDeviceGetFieldValues.as_ref())?;
    let count = i32::try_from(requests.len()).map_err(|_| NvmlError::InvalidArg)?;
    let mut values: Vec<b::nvmlFieldValue_t> = requests
        .iter()
        .map(|&(field, scope)| {
            // SAFETY: a plain C struct; all-zero is a valid value of every field.
            let mut v: b::nvmlFieldValue_t = unsafe { std::mem::zeroed() };
            v.fieldId = field;
            v.scopeId = scope;
            v
        })
        .collect();
    // SAFETY: a live device handle of this library, and `count` initialized
    // structs of the layout the header defines (tests/layout.rs).
    nvml_try(unsafe { f(dev.handle(), count, values.as_mut_ptr()) })?;
    Ok(values.iter().map(decode).collect())
}

/// A field's value as f64, or its own error.
fn decode(v: &b::nvmlFieldValue_t) -> Result<f64, NvmlError> {
    nvml_try(v.nvmlReturn)?;
    // SAFETY: `valueType` names the union member NVML wrote.
    let x = unsafe {
        match v.valueType {
            b::nvmlValueType_enum_NVML_VALUE_TYPE_DOUBLE => v.value.dVal,
            b::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT => f64::from(v.value.uiVal),
            b::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG => v.value.ulVal as f64,
            b::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG => v.value.ullVal as f64,
            b::nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_LONG_LONG => v.value.sllVal as f64,
            b::nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_INT => f64::from(v.value.siVal),
            b::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_SHORT => f64::from(v.value.usVal),
            other => return Err(NvmlError::UnexpectedVariant(other)),
        }
    };
    Ok(x)
}

/// `nvmlDeviceGetTemperatureV` for the GPU die sensor, °C.
pub fn temperature_v(dev: &Device<'_>) -> Result<i32, NvmlError> {
    let f = nvml_sym(dev.nvml().lib().nvmlDeviceGetTemperatureV.as_ref())?;
    let mut t = b::nvmlTemperature_v1_t {
        version: struct_version::<b::nvmlTemperature_v1_t>(1),
        sensorType: b::nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU,
        temperature: 0,
    };
    // SAFETY: a live handle and an initialized, versioned struct.
    nvml_try(unsafe { f(dev.handle(), &mut t) })?;
    Ok(t.temperature)
}

/// `nvmlDeviceGetMarginTemperature`: the margin to the nearest slowdown
/// threshold, °C, signed (negative: past it).
pub fn margin_temperature(dev: &Device<'_>) -> Result<i32, NvmlError> {
    let f = nvml_sym(dev.nvml().lib().nvmlDeviceGetMarginTemperature.as_ref())?;
    let mut m = b::nvmlMarginTemperature_v1_t {
        version: struct_version::<b::nvmlMarginTemperature_v1_t>(1),
        marginTemperature: 0,
    };
    // SAFETY: a live handle and an initialized, versioned struct.
    nvml_try(unsafe { f(dev.handle(), &mut m) })?;
    Ok(m.marginTemperature)
}

/// `nvmlDeviceGetCurrentClocksEventReasons` (`supported` false) or
/// `nvmlDeviceGetSupportedClocksEventReasons` (true): the reason bitmask.
pub fn clocks_event_reasons(dev: &Device<'_>, supported: bool) -> Result<u64, NvmlError> {
    let lib = dev.nvml().lib();
    let f = if supported {
        nvml_sym(lib.nvmlDeviceGetSupportedClocksEventReasons.as_ref())?
    } else {
        nvml_sym(lib.nvmlDeviceGetCurrentClocksEventReasons.as_ref())?
    };
    let mut bits: u64 = 0;
    // SAFETY: a live handle and a valid out-pointer.
    nvml_try(unsafe { f(dev.handle(), &mut bits) })?;
    Ok(bits)
}

/// `nvmlDeviceGetRemappedRows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemappedRows {
    /// Rows remapped for correctable errors.
    pub corrected: u32,
    /// Rows remapped for uncorrectable errors.
    pub uncorrected: u32,
    /// A remapping waits for a GPU reset.
    pub pending: bool,
    /// A remapping failed.
    pub failure: bool,
}

/// `nvmlDeviceGetRemappedRows`.
pub fn remapped_rows(dev: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let f = nvml_sym(dev.nvml().lib().nvmlDeviceGetRemappedRows.as_ref())?;
    let (mut c, mut u, mut p, mut x) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: a live handle and four valid out-pointers.
    nvml_try(unsafe { f(dev.handle(), &mut c, &mut u, &mut p, &mut x) })?;
    Ok(RemappedRows {
        corrected: c,
        uncorrected: u,
        pending: p != 0,
        failure: x != 0,
    })
}

/// Metric slots in [`GpmMetricsGet`]: NVML 13.3's `NVML_GPM_METRIC_MAX`.
/// `nvml-wrapper-sys` 0.10 has 210 under the same struct version; NVML reads
/// and writes only `numMetrics` slots, and the larger buffer is safe with both.
pub const GPM_METRIC_SLOTS: usize = 333;

/// `nvmlGpmMetricsGet_t` as NVML 13.3's header lays it out
/// (`tests/nvml_layout.rs` checks it against the header).
#[repr(C)]
pub struct GpmMetricsGet {
    /// `NVML_GPM_METRICS_GET_VERSION`.
    pub version: u32,
    /// Slots used.
    pub num_metrics: u32,
    /// The earlier sample.
    pub sample1: b::nvmlGpmSample_t,
    /// The later sample.
    pub sample2: b::nvmlGpmSample_t,
    /// In: `metricId`; out: `nvmlReturn`, `value`.
    pub metrics: [b::nvmlGpmMetric_t; GPM_METRIC_SLOTS],
}

/// A GPM sample buffer (`nvmlGpmSample_t`), as an address so that a GPU's
/// state can keep it across ticks; valid for the NVML init that allocated it.
pub type GpmSample = usize;

/// `nvmlGpmSampleAlloc`.
pub fn gpm_sample_alloc(nvml: &nvml_wrapper::Nvml) -> Result<GpmSample, NvmlError> {
    let f = nvml_sym(nvml.lib().nvmlGpmSampleAlloc.as_ref())?;
    let mut s: b::nvmlGpmSample_t = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    nvml_try(unsafe { f(&mut s) })?;
    Ok(s as usize)
}

/// `nvmlGpmSampleFree`.
pub fn gpm_sample_free(nvml: &nvml_wrapper::Nvml, s: GpmSample) -> Result<(), NvmlError> {
    let f = nvml_sym(nvml.lib().nvmlGpmSampleFree.as_ref())?;
    // SAFETY: a sample this library allocated, freed once.
    nvml_try(unsafe { f(s as b::nvmlGpmSample_t) })
}

/// `nvmlGpmSampleGet`: fills `s` with the GPU's counters now.
pub fn gpm_sample_get(dev: &Device<'_>, s: GpmSample) -> Result<(), NvmlError> {
    let f = nvml_sym(dev.nvml().lib().nvmlGpmSampleGet.as_ref())?;
    // SAFETY: a live handle and a sample this library allocated.
    nvml_try(unsafe { f(dev.handle(), s as b::nvmlGpmSample_t) })
}

/// `nvmlGpmMigSampleGet`: fills `s` with the counters of the GPU instance
/// `gpu_instance` (its id, `nvmlDeviceGetGpuInstanceId`) of the board `dev`.
pub fn gpm_mig_sample_get(
    dev: &Device<'_>,
    gpu_instance: u32,
    s: GpmSample,
) -> Result<(), NvmlError> {
    let f = nvml_sym(dev.nvml().lib().nvmlGpmMigSampleGet.as_ref())?;
    // SAFETY: a live board handle and a sample this library allocated.
    nvml_try(unsafe { f(dev.handle(), gpu_instance, s as b::nvmlGpmSample_t) })
}

/// `nvmlDeviceGetGpuInstanceId` of a MIG device handle.
pub fn gpu_instance_id(mig: &Device<'_>) -> Result<u32, NvmlError> {
    let f = nvml_sym(mig.nvml().lib().nvmlDeviceGetGpuInstanceId.as_ref())?;
    let mut id = 0u32;
    // SAFETY: a live MIG device handle and a valid out-pointer.
    nvml_try(unsafe { f(mig.handle(), &mut id) })?;
    Ok(id)
}

/// `nvmlGpmMetricsGet` between two filled samples: each metric's value
/// (percent) or its own error.
pub fn gpm_metrics_get(
    nvml: &nvml_wrapper::Nvml,
    earlier: GpmSample,
    later: GpmSample,
    metrics: &[u32],
) -> Result<Vec<Result<f64, NvmlError>>, NvmlError> {
    if metrics.len() > GPM_METRIC_SLOTS {
        return Err(NvmlError::InvalidArg);
    }
    let f = nvml_sym(nvml.lib().nvmlGpmMetricsGet.as_ref())?;
    // SAFETY: plain C data; all-zero is valid (null samples and name pointers).
    let mut req: Box<GpmMetricsGet> = Box::new(unsafe { std::mem::zeroed() });
    req.version = b::NVML_GPM_METRICS_GET_VERSION;
    req.num_metrics = u32::try_from(metrics.len()).map_err(|_| NvmlError::InvalidArg)?;
    req.sample1 = earlier as b::nvmlGpmSample_t;
    req.sample2 = later as b::nvmlGpmSample_t;
    for (slot, id) in req.metrics.iter_mut().zip(metrics) {
        slot.metricId = *id;
    }
    // SAFETY: the header's layout (tests/nvml_layout.rs), two samples of this
    // library; NVML writes only the first `num_metrics` slots.
    nvml_try(unsafe { f((&mut *req as *mut GpmMetricsGet).cast()) })?;
    Ok(req.metrics[..metrics.len()]
        .iter()
        .map(|m| nvml_try(m.nvmlReturn).map(|()| m.value))
        .collect())
}
