//! # dcwatt-fake-nvml: a fake `libnvidia-ml.so.1`
//!
//! `fake_nvml.c`, built by `build.rs` into [`LIB_PATH`], answers the NVML calls
//! that `nvml-wrapper` makes, from a text state file named by the environment
//! variable [`STATE_ENV`]. This crate writes that file ([`write_state`]) and
//! reads nothing; the C library reads it. The format is the contract in
//! `docs/interfaces.md` ("Fake NVML"); its optional per-GPU lines are in
//! `docs/nvml.md`.
//!
//! Load it with `nvml_wrapper::Nvml::builder().lib_path(LIB_PATH.as_ref()).init()`
//! after setting [`STATE_ENV`]. One process loads one instance of the library
//! per path, and reads the variable at `nvmlInit`.
//!
//! # Semantics
//! - The library re-reads the file whenever its mtime, size or inode changes;
//!   a file that does not parse keeps the last good state (zero GPUs if none).
//! - Missing file at init: `nvmlInit_v2` answers `NVML_ERROR_DRIVER_NOT_LOADED`.
//! - The energy counter (mJ) read at wall time `now` is
//!   `energy_mj + power_mw * (now_ms - time_ms) / 1000`, floored; a read
//!   before `time_ms` answers `energy_mj` (writers may publish slightly ahead).
//! - A GPU with `lost = true` answers `NVML_ERROR_GPU_IS_LOST` to every call.
//! - Every other [`FakeGpu`] field after `name` is optional: left at its
//!   default, the library answers `NVML_ERROR_NOT_SUPPORTED` for that reading
//!   (as before those fields existed). They are written as
//!   `set <index> <key> <value…>` lines after the GPU's `gpu` line.
//! - Memory temperature is served as field `NVML_FI_DEV_MEMORY_TEMP` (82) of
//!   `nvmlDeviceGetFieldValues`; classic temperature thresholds default to
//!   shutdown 95, slowdown 90, memory max 95, GPU max 87 °C; T.Limit offsets
//!   (fields 193–196, signed) and the margin only where set ([`FakeTlimit`]).
//!
//! # Layout
//! - [`LIB_PATH`], [`STATE_ENV`], [`DEFAULT_DRIVER`]: where and how to load it.
//! - [`FakeGpu`], [`render_state`], [`write_state`]: the one writer of state files.
//! - [`FakeThresholds`], [`FakeMig`], [`FakeXid`]: optional parts of a GPU.
//! - [`FakeNode`]: a whole state file, with node-wide faults (`init_fail`).
//! - [`FakeTlimit`], [`FakeRemappedRows`], [`FakeError`]: Grace-Blackwell parts
//!   (T.Limit offsets, remapped rows, error codes).
//! - [`profiles`]: GB300 and GB200 trays transcribed from real `nvidia-smi -q -x`
//!   captures (`captures/`).
//! - [`capture`]: a tag extractor for the captures.
//! - [`introspect`]: the loaded library's call counts per symbol and its struct
//!   layout table.

pub mod capture;
pub mod introspect;
pub mod profiles;

use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// The built fake library, `$OUT_DIR/libnvidia-ml.so.1`.
pub const LIB_PATH: &str = concat!(env!("OUT_DIR"), "/libnvidia-ml.so.1");

/// The environment variable naming the state file the library reads.
pub const STATE_ENV: &str = "DCWATT_FAKE_NVML_STATE";

/// The driver version the simulator reports (an R580 driver, CUDA 13.0 U1
/// field-id numbering in `nvml-wrapper`).
pub const DEFAULT_DRIVER: &str = "580.95.05";

/// The first line of every state file.
pub const HEADER: &str = "# dcwatt-fake-nvml state v1";

/// One GPU as the fake library reports it. Units are NVML's own (mW, mJ, °C,
/// percent, bytes, MHz, ns), so the file carries exactly what NVML would answer.
///
/// The fields after `name` are optional readings and faults; their defaults
/// keep the library's original behaviour (build with `..Default::default()`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeGpu {
    /// NVML device index on the node, `0..n` without holes.
    pub index: u32,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`; no whitespace.
    pub uuid: String,
    /// Power draw, milliwatts; it holds from the file's `time_ms` until the next write.
    pub power_mw: u32,
    /// The total-energy counter at the file's `time_ms`, millijoules.
    pub energy_mj: u64,
    /// Core temperature, °C.
    pub temp_c: u32,
    /// Memory (HBM) temperature, °C.
    pub mem_temp_c: u32,
    /// GPU busy, percent 0..=100.
    pub util_gpu_pct: u32,
    /// Memory-bandwidth busy, percent 0..=100.
    pub util_mem_pct: u32,
    /// Memory installed, bytes.
    pub mem_total_bytes: u64,
    /// Memory in use, bytes (at most `mem_total_bytes`).
    pub mem_used_bytes: u64,
    /// Enforced power limit, milliwatts.
    pub power_limit_mw: u32,
    /// Current clocks-event (throttle) reasons, NVML's bitmask.
    pub throttle_reasons: u64,
    /// The GPU fell off the bus: every call on it answers `GPU_IS_LOST`.
    pub lost: bool,
    /// Model name (`NVIDIA GB300`); no line break.
    pub name: String,
    /// Instantaneous power, milliwatts (field `NVML_FI_DEV_POWER_INSTANT`); `None`: not supported.
    pub power_instant_mw: Option<u32>,
    /// Default power limit, milliwatts; `None`: not supported.
    pub power_default_limit_mw: Option<u32>,
    /// Temperature thresholds; `None`: the fixed 95/90/95/87 °C.
    pub thresholds: Option<FakeThresholds>,
    /// The classic threshold call answers `NOT_SUPPORTED`; the field values
    /// `NVML_FI_DEV_TEMPERATURE_*_TLIMIT` (193..=196) carry the thresholds instead.
    pub thresholds_fields_only: bool,
    /// SM clock, MHz; `None`: not supported.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock, MHz; `None`: not supported.
    pub mem_clock_mhz: Option<u32>,
    /// Fan speeds, percent 0..=100, one per fan; empty: no fans (liquid-cooled,
    /// `nvmlDeviceGetNumFans` answers `NOT_SUPPORTED`).
    pub fans_pct: Vec<u32>,
    /// Corrected ECC errors (aggregate); `None`: not supported.
    pub ecc_corrected: Option<u64>,
    /// Uncorrected ECC errors (aggregate); `None`: not supported.
    pub ecc_uncorrected: Option<u64>,
    /// Cumulative power-violation time, nanoseconds; `None`: not supported.
    pub violation_power_ns: Option<u64>,
    /// Cumulative thermal-violation time, nanoseconds; `None`: not supported.
    pub violation_thermal_ns: Option<u64>,
    /// Current PCIe link generation; `None`: not supported.
    pub pcie_gen: Option<u32>,
    /// Current PCIe link width, lanes; `None`: not supported.
    pub pcie_width: Option<u32>,
    /// NVML symbols (`nvmlDeviceGetPowerUsage`) that answer `NOT_SUPPORTED` on
    /// this GPU, and field ids as `field:<id>` (`field:82`); no whitespace.
    pub unsupported: Vec<String>,
    /// Every per-device call on this GPU first sleeps this long (0: none),
    /// outside the library's lock: a hung driver call.
    pub hang_ms: u32,
    /// MIG mode; `None`: MIG not supported.
    pub mig_mode: Option<bool>,
    /// MIG instances (served while `mig_mode` is `Some(true)`).
    pub mig_instances: Vec<FakeMig>,
    /// XID events. The library delivers each through the event API once per
    /// event set, in `id` order, if its id is above every id the state held
    /// when the set was created; keep ids unique across the node.
    pub xids: Vec<FakeXid>,
    /// Module (superchip: GPUs, Grace CPU, LPDDR) power, 1 s average, milliwatts
    /// (field `NVML_FI_DEV_POWER_AVERAGE`, scope `NVML_POWER_SCOPE_MODULE`); `None`: not supported.
    pub module_power_mw: Option<u32>,
    /// Module instantaneous power, milliwatts (field `NVML_FI_DEV_POWER_INSTANT`, module scope).
    pub module_power_instant_mw: Option<u32>,
    /// GPU memory power, 1 s average, milliwatts (field `NVML_FI_DEV_POWER_AVERAGE`, memory scope).
    pub memory_power_mw: Option<u32>,
    /// PCI domain (`0x0008` in `00000008:06:00.0`); `None`: 0.
    pub pci_domain: Option<u32>,
    /// PCI bus; `None`: `0x18 + index * 0x10`.
    pub pci_bus: Option<u32>,
    /// `nvmlDeviceGetModuleId`: the GPU's id within the node (1..4 on a GB300 tray).
    pub module_id: Option<u32>,
    /// Board serial (`nvmlDeviceGetSerial`); the two GPUs of a superchip share it. No whitespace.
    pub serial: Option<String>,
    /// Memory reserved by the driver and firmware, bytes (`nvmlMemory_v2_t.reserved`;
    /// the old `nvmlDeviceGetMemoryInfo` counts it as used).
    pub mem_reserved_bytes: Option<u64>,
    /// The margin to the nearest slowdown threshold, °C, signed
    /// (`nvmlDeviceGetMarginTemperature`; nvidia-smi's "GPU T.Limit Temp").
    pub tlimit_c: Option<i32>,
    /// Thresholds as signed offsets from T.Limit (fields 193–196).
    pub tlimit_offsets: Option<FakeTlimit>,
    /// The energy counter runs this many parts per million faster than
    /// power × time (negative: slower): a real counter and the 1 s average disagree.
    pub energy_skew_ppm: Option<i32>,
    /// PCIe replay counter; `None`: not supported.
    pub pcie_replay: Option<u32>,
    /// The recovery action NVML asks for (field
    /// `NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`: 0 none, 1 GPU reset, 2 node
    /// reboot, 3 drain P2P, 4 drain and reset); `None`: not supported.
    pub recovery_action: Option<u32>,
    /// Remapped rows; `None`: not supported.
    pub remapped_rows: Option<FakeRemappedRows>,
    /// Every call on the GPU but its identity (UUID, name, PCI info, serial,
    /// index, module id) answers this error.
    pub error: Option<FakeError>,
    /// Single calls (`nvmlDeviceGetUtilizationRates`) that answer an error,
    /// the rest of the GPU answering as usual.
    pub failing: Vec<(String, FakeError)>,
    /// GPM utilization (`nvmlGpmMetricsGet`); `None`: GPM not supported.
    pub gpm: Option<FakeGpm>,
    /// NVLink links (field `NVML_FI_DEV_NVLINK_LINK_COUNT`); `None`: no NVLink.
    pub nvlink_links: Option<u32>,
    /// NVLink error counters that are not 0.
    pub nvlink_errors: Vec<FakeNvlinkError>,
}

/// An NVLink error counter of Blackwell, per link (field values with
/// `scopeId` = link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeNvlinkCounter {
    /// `NVML_FI_DEV_NVLINK_COUNT_RCV_ERRORS` (208).
    RcvErrors,
    /// `NVML_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_SUCCESSFUL_EVENTS` (213).
    RecoverySuccessful,
    /// `NVML_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_FAILED_EVENTS` (214).
    RecoveryFailed,
    /// `NVML_FI_DEV_NVLINK_COUNT_SYMBOL_ERRORS` (221).
    SymbolErrors,
}

impl FakeNvlinkCounter {
    /// The NVML field id.
    pub fn field_id(self) -> u32 {
        match self {
            FakeNvlinkCounter::RcvErrors => 208,
            FakeNvlinkCounter::RecoverySuccessful => 213,
            FakeNvlinkCounter::RecoveryFailed => 214,
            FakeNvlinkCounter::SymbolErrors => 221,
        }
    }
}

/// One NVLink error counter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeNvlinkError {
    /// The link, below `nvlink_links`.
    pub link: u32,
    /// Which counter.
    pub counter: FakeNvlinkCounter,
    /// Its value.
    pub value: u64,
}

/// GPM metrics, percent 0..=100, constant over any interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeGpm {
    /// `NVML_GPM_METRIC_SM_UTIL`.
    pub sm_active_pct: u32,
    /// `NVML_GPM_METRIC_SM_OCCUPANCY`.
    pub sm_occupancy_pct: u32,
    /// `NVML_GPM_METRIC_ANY_TENSOR_UTIL`.
    pub tensor_active_pct: u32,
    /// `NVML_GPM_METRIC_DRAM_BW_UTIL`.
    pub dram_active_pct: u32,
}

/// Temperature thresholds as offsets from T.Limit, °C, signed (what fields
/// `NVML_FI_DEV_TEMPERATURE_*_TLIMIT` answer on Blackwell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeTlimit {
    /// Shutdown (`gpu_temp_max_tlimit_threshold`).
    pub shutdown: i32,
    /// Slowdown (`gpu_temp_slow_tlimit_threshold`).
    pub slowdown: i32,
    /// Memory maximum (`gpu_temp_max_mem_tlimit_threshold`).
    pub mem_max: i32,
    /// GPU maximum (`gpu_temp_max_gpu_tlimit_threshold`).
    pub gpu_max: i32,
}

/// `nvmlDeviceGetRemappedRows`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeRemappedRows {
    /// Rows remapped for correctable errors.
    pub corrected: u32,
    /// Rows remapped for uncorrectable errors.
    pub uncorrected: u32,
    /// A remapping waits for a GPU reset.
    pub pending: bool,
    /// A remapping failed.
    pub failure: bool,
}

/// An NVML error code a GPU answers with (`set <i> error NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeError {
    /// `NVML_ERROR_NO_PERMISSION` (4).
    NoPermission,
    /// `NVML_ERROR_RESET_REQUIRED` (16).
    ResetRequired,
    /// `NVML_ERROR_UNKNOWN` (999).
    Unknown,
    /// `NVML_ERROR_CORRUPTED_INFOROM` (14).
    CorruptedInforom,
    /// `NVML_ERROR_GPU_IS_LOST` (15), on every call but identity.
    GpuIsLost,
    /// Any other code, by number (1..=999).
    Code(u32),
}

impl FakeError {
    /// The word the state file carries.
    pub fn word(self) -> String {
        match self {
            FakeError::NoPermission => "NO_PERMISSION".into(),
            FakeError::ResetRequired => "RESET_REQUIRED".into(),
            FakeError::Unknown => "UNKNOWN".into(),
            FakeError::CorruptedInforom => "CORRUPTED_INFOROM".into(),
            FakeError::GpuIsLost => "GPU_IS_LOST".into(),
            FakeError::Code(c) => c.to_string(),
        }
    }
}

/// A GPU's own temperature thresholds, °C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeThresholds {
    /// Shutdown.
    pub shutdown: u32,
    /// Slowdown (hardware throttling starts).
    pub slowdown: u32,
    /// Memory maximum operating.
    pub mem_max: u32,
    /// GPU maximum operating.
    pub gpu_max: u32,
}

/// One MIG instance of a GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeMig {
    /// GPU instance id (`nvmlDeviceGetGpuInstanceId`); the MIG UUID is
    /// `MIG-<parent uuid without GPU->-<id>`.
    pub gpu_instance: u32,
    /// Profile (`1g.35gb`); its name is `<model> MIG <profile>`. No whitespace.
    pub profile: String,
    /// The instance's GPM metrics (`nvmlGpmMigSampleGet`); `None`: not supported.
    pub gpm: Option<FakeGpm>,
}

/// One XID event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeXid {
    /// Event id, unique on the node; delivery order.
    pub id: u64,
    /// The XID code (79: fallen off the bus, 48: double-bit ECC, …).
    pub code: u64,
}

/// A whole state file: what [`render_state_with_horizon`] takes, plus node-wide faults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeNode {
    /// Driver version, no whitespace.
    pub driver: String,
    /// The Unix-ms instant the energy counters refer to.
    pub time_ms: i64,
    /// Cap on the energy extrapolation past `time_ms`, ms.
    pub horizon_ms: Option<i64>,
    /// `nvmlInit` answers `NVML_ERROR_DRIVER_NOT_LOADED` while set.
    pub init_fail: bool,
    /// The GPUs.
    pub gpus: Vec<FakeGpu>,
}

impl FakeNode {
    /// The state file's text (see [`render_state_with_horizon`]).
    pub fn render(&self) -> io::Result<String> {
        let mut text =
            render_state_with_horizon(&self.driver, self.time_ms, self.horizon_ms, &self.gpus)?;
        if self.init_fail {
            text.push_str("init_fail 1\n");
        }
        Ok(text)
    }

    /// Writes the state file atomically (see [`write_state`]).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        write_atomically(path, &self.render()?)
    }
}

/// Renders a state file's text. Fails with `InvalidInput` on a field the
/// format cannot carry (whitespace in a UUID or driver, a line break or an
/// empty model name, memory used above total).
pub fn render_state(driver: &str, time_ms: i64, gpus: &[FakeGpu]) -> io::Result<String> {
    render_state_with_horizon(driver, time_ms, None, gpus)
}

/// [`render_state`] with a `horizon_ms` line: the library extrapolates the energy
/// at most this far past `time_ms` (a writer's tick), so a writer that falls
/// behind holds the counter instead of letting it overshoot and step back.
pub fn render_state_with_horizon(
    driver: &str,
    time_ms: i64,
    horizon_ms: Option<i64>,
    gpus: &[FakeGpu],
) -> io::Result<String> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    if driver.is_empty() || driver.chars().any(char::is_whitespace) {
        return Err(invalid(format!(
            "driver version {driver:?} is empty or has whitespace"
        )));
    }
    let mut out = String::with_capacity(64 + gpus.len() * 160);
    let _ = writeln!(out, "{HEADER}");
    let _ = writeln!(out, "driver {driver}");
    let _ = writeln!(out, "time_ms {time_ms}");
    if let Some(h) = horizon_ms {
        let _ = writeln!(out, "horizon_ms {}", h.max(0));
    }
    for g in gpus {
        if g.uuid.is_empty() || g.uuid.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "gpu {}: uuid {:?} is empty or has whitespace",
                g.index, g.uuid
            )));
        }
        let name = g.name.trim();
        if name.is_empty() || name.contains(['\n', '\r']) {
            return Err(invalid(format!(
                "gpu {}: model name {:?} is empty or has a line break",
                g.index, g.name
            )));
        }
        if g.mem_used_bytes > g.mem_total_bytes || g.util_gpu_pct > 100 || g.util_mem_pct > 100 {
            return Err(invalid(format!(
                "gpu {}: memory or utilization out of range",
                g.index
            )));
        }
        let _ = writeln!(
            out,
            "gpu {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
            g.index,
            g.uuid,
            g.power_mw,
            g.energy_mj,
            g.temp_c,
            g.mem_temp_c,
            g.util_gpu_pct,
            g.util_mem_pct,
            g.mem_total_bytes,
            g.mem_used_bytes,
            g.power_limit_mw,
            g.throttle_reasons,
            u8::from(g.lost),
            name,
        );
        render_optional(&mut out, g)?;
    }
    Ok(out)
}

/// Appends the `set` lines of a GPU's optional fields.
fn render_optional(out: &mut String, g: &FakeGpu) -> io::Result<()> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let i = g.index;
    let word_ok = |w: &str| !w.is_empty() && w.len() < 128 && !w.chars().any(char::is_whitespace);
    let mut set = |key: &str, v: Option<u64>| {
        if let Some(v) = v {
            let _ = writeln!(out, "set {i} {key} {v}");
        }
    };
    set("power_instant_mw", g.power_instant_mw.map(u64::from));
    set(
        "power_default_limit_mw",
        g.power_default_limit_mw.map(u64::from),
    );
    if let Some(t) = g.thresholds {
        set("threshold_shutdown", Some(u64::from(t.shutdown)));
        set("threshold_slowdown", Some(u64::from(t.slowdown)));
        set("threshold_mem_max", Some(u64::from(t.mem_max)));
        set("threshold_gpu_max", Some(u64::from(t.gpu_max)));
    }
    set(
        "thresholds_fields_only",
        g.thresholds_fields_only.then_some(1),
    );
    set("sm_clock_mhz", g.sm_clock_mhz.map(u64::from));
    set("mem_clock_mhz", g.mem_clock_mhz.map(u64::from));
    set("ecc_corrected", g.ecc_corrected);
    set("ecc_uncorrected", g.ecc_uncorrected);
    set("violation_power_ns", g.violation_power_ns);
    set("violation_thermal_ns", g.violation_thermal_ns);
    set("pcie_gen", g.pcie_gen.map(u64::from));
    set("pcie_width", g.pcie_width.map(u64::from));
    set("hang_ms", (g.hang_ms > 0).then_some(u64::from(g.hang_ms)));
    set("mig_mode", g.mig_mode.map(u64::from));
    set("module_power_mw", g.module_power_mw.map(u64::from));
    set(
        "module_power_instant_mw",
        g.module_power_instant_mw.map(u64::from),
    );
    set("memory_power_mw", g.memory_power_mw.map(u64::from));
    set("pci_domain", g.pci_domain.map(u64::from));
    set("pci_bus", g.pci_bus.map(u64::from));
    set("module_id", g.module_id.map(u64::from));
    set("mem_reserved_bytes", g.mem_reserved_bytes);
    set("pcie_replay", g.pcie_replay.map(u64::from));
    set("recovery_action", g.recovery_action.map(u64::from));
    set("nvlink_links", g.nvlink_links.map(u64::from));
    if let Some(r) = g.remapped_rows {
        set("remapped_corr", Some(u64::from(r.corrected)));
        set("remapped_unc", Some(u64::from(r.uncorrected)));
        set("remapped_pending", Some(u64::from(r.pending)));
        set("remapped_failure", Some(u64::from(r.failure)));
    }
    if let Some(g) = g.gpm {
        set("gpm_sm_active_pct", Some(u64::from(g.sm_active_pct)));
        set("gpm_sm_occupancy_pct", Some(u64::from(g.sm_occupancy_pct)));
        set(
            "gpm_tensor_active_pct",
            Some(u64::from(g.tensor_active_pct)),
        );
        set("gpm_dram_active_pct", Some(u64::from(g.dram_active_pct)));
    }
    if g.nvlink_errors.len() > 64 {
        return Err(invalid(format!("gpu {i}: at most 64 NVLink counters")));
    }
    for e in &g.nvlink_errors {
        let _ = writeln!(
            out,
            "set {i} nvlink {} {} {}",
            e.link,
            e.counter.field_id(),
            e.value
        );
    }
    let mut signed = |key: &str, v: Option<i32>| {
        if let Some(v) = v {
            let _ = writeln!(out, "set {i} {key} {v}");
        }
    };
    signed("tlimit_c", g.tlimit_c);
    if let Some(t) = g.tlimit_offsets {
        signed("tlimit_shutdown", Some(t.shutdown));
        signed("tlimit_slowdown", Some(t.slowdown));
        signed("tlimit_mem_max", Some(t.mem_max));
        signed("tlimit_gpu_max", Some(t.gpu_max));
    }
    signed("energy_skew_ppm", g.energy_skew_ppm);
    if let Some(serial) = &g.serial {
        if !word_ok(serial) || serial.len() >= 32 {
            return Err(invalid(format!(
                "gpu {i}: serial {serial:?} is not one short word"
            )));
        }
        let _ = writeln!(out, "set {i} serial {serial}");
    }
    for (sym, e) in &g.failing {
        if !word_ok(sym) {
            return Err(invalid(format!(
                "gpu {i}: failing call {sym:?} is not one word"
            )));
        }
        let _ = writeln!(out, "set {i} fail {sym} {}", e.word());
    }
    if let Some(e) = g.error {
        if matches!(e, FakeError::Code(c) if c == 0 || c > 999) {
            return Err(invalid(format!("gpu {i}: error code out of 1..=999")));
        }
        let _ = writeln!(out, "set {i} error {}", e.word());
    }
    if g.fans_pct.len() > 8 || g.fans_pct.iter().any(|&p| p > 100) {
        return Err(invalid(format!(
            "gpu {i}: at most 8 fans, each 0..=100 percent"
        )));
    }
    for p in &g.fans_pct {
        let _ = writeln!(out, "set {i} fan {p}");
    }
    for u in &g.unsupported {
        if !word_ok(u) {
            return Err(invalid(format!(
                "gpu {i}: unsupported call {u:?} is not one word"
            )));
        }
        let _ = writeln!(out, "set {i} unsupported {u}");
    }
    if g.mig_instances.len() > 8 {
        return Err(invalid(format!("gpu {i}: at most 8 MIG instances")));
    }
    for m in &g.mig_instances {
        if !word_ok(&m.profile) || m.profile.len() >= 32 {
            return Err(invalid(format!(
                "gpu {i}: MIG profile {:?} is not one short word",
                m.profile
            )));
        }
        let _ = writeln!(out, "set {i} mig_instance {} {}", m.gpu_instance, m.profile);
        if let Some(p) = m.gpm {
            let pcts = [
                p.sm_active_pct,
                p.sm_occupancy_pct,
                p.tensor_active_pct,
                p.dram_active_pct,
            ];
            if pcts.iter().any(|&v| v > 100) {
                return Err(invalid(format!(
                    "gpu {i}: MIG instance {} GPM percent above 100",
                    m.gpu_instance
                )));
            }
            let _ = writeln!(
                out,
                "set {i} mig_gpm {} {} {} {} {}",
                m.gpu_instance, pcts[0], pcts[1], pcts[2], pcts[3]
            );
        }
    }
    if g.xids.len() > 64 {
        return Err(invalid(format!("gpu {i}: at most 64 XID events")));
    }
    for x in &g.xids {
        let _ = writeln!(out, "set {i} xid {} {}", x.id, x.code);
    }
    Ok(())
}

/// Writes a state file atomically: the text goes to `<path>.tmp` in the same
/// directory, then is renamed over `path`, so the library never reads half a file.
/// `time_ms` is the Unix-ms instant the `energy_mj` counters refer to.
pub fn write_state(path: &Path, driver: &str, time_ms: i64, gpus: &[FakeGpu]) -> io::Result<()> {
    write_state_with_horizon(path, driver, time_ms, None, gpus)
}

/// [`write_state`] with a `horizon_ms` line (see [`render_state_with_horizon`]).
pub fn write_state_with_horizon(
    path: &Path,
    driver: &str,
    time_ms: i64,
    horizon_ms: Option<i64>,
    gpus: &[FakeGpu],
) -> io::Result<()> {
    let text = render_state_with_horizon(driver, time_ms, horizon_ms, gpus)?;
    write_atomically(path, &text)
}

/// Writes `text` to `<path>.tmp`, then renames it over `path`.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> FakeGpu {
        FakeGpu {
            index: 0,
            uuid: "GPU-2b7f0000-0000-0000-0000-000000000000".into(),
            power_mw: 1_100_000,
            energy_mj: 523_000_000,
            temp_c: 71,
            mem_temp_c: 66,
            util_gpu_pct: 95,
            util_mem_pct: 40,
            mem_total_bytes: 288_000_000_000,
            mem_used_bytes: 190_000_000_000,
            power_limit_mw: 1_400_000,
            throttle_reasons: 0,
            lost: false,
            name: "NVIDIA GB300".into(),
            ..FakeGpu::default()
        }
    }

    #[test]
    fn optional_fields_render_as_set_lines() {
        let mut g = gpu();
        g.power_instant_mw = Some(1_150_000);
        g.fans_pct = vec![40, 41];
        g.unsupported = vec!["nvmlDeviceGetPowerUsage".into()];
        g.xids = vec![FakeXid { id: 1, code: 79 }];
        g.mig_mode = Some(true);
        g.mig_instances = vec![FakeMig {
            gpu_instance: 1,
            profile: "1g.35gb".into(),
            gpm: Some(FakeGpm {
                sm_active_pct: 61,
                sm_occupancy_pct: 42,
                tensor_active_pct: 33,
                dram_active_pct: 24,
            }),
        }];
        let text = render_state(DEFAULT_DRIVER, 1, &[g]).unwrap();
        for line in [
            "set 0 power_instant_mw 1150000\n",
            "set 0 fan 40\nset 0 fan 41\n",
            "set 0 unsupported nvmlDeviceGetPowerUsage\n",
            "set 0 xid 1 79\n",
            "set 0 mig_mode 1\n",
            "set 0 mig_instance 1 1g.35gb\nset 0 mig_gpm 1 61 42 33 24\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let node = FakeNode {
            driver: DEFAULT_DRIVER.into(),
            init_fail: true,
            ..FakeNode::default()
        };
        assert!(node.render().unwrap().ends_with("init_fail 1\n"));
        let mut g = gpu();
        g.fans_pct = vec![101];
        assert!(render_state(DEFAULT_DRIVER, 1, &[g]).is_err());
    }

    #[test]
    fn renders_the_documented_format() {
        let text = render_state(DEFAULT_DRIVER, 1_764_340_000_000, &[gpu()]).unwrap();
        assert_eq!(
            text,
            "# dcwatt-fake-nvml state v1\ndriver 580.95.05\ntime_ms 1764340000000\n\
             gpu 0 GPU-2b7f0000-0000-0000-0000-000000000000 1100000 523000000 71 66 95 40 \
             288000000000 190000000000 1400000 0 0 NVIDIA GB300\n"
        );
    }

    #[test]
    fn rejects_what_the_format_cannot_carry() {
        let mut g = gpu();
        g.uuid = "GPU 1".into();
        assert!(render_state(DEFAULT_DRIVER, 0, &[g]).is_err());
        let mut g = gpu();
        g.name = "a\nb".into();
        assert!(render_state(DEFAULT_DRIVER, 0, &[g]).is_err());
        assert!(render_state("5 8", 0, &[]).is_err());
        let mut g = gpu();
        g.mig_mode = Some(true);
        g.mig_instances = vec![FakeMig {
            gpu_instance: 1,
            profile: "1g.35gb".into(),
            gpm: Some(FakeGpm {
                dram_active_pct: 101,
                ..FakeGpm::default()
            }),
        }];
        assert!(render_state(DEFAULT_DRIVER, 0, &[g]).is_err());
    }

    #[test]
    fn write_state_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.state");
        write_state(&path, DEFAULT_DRIVER, 1, &[gpu()]).unwrap();
        write_state(&path, DEFAULT_DRIVER, 2, &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("time_ms 2\n"));
        assert!(!text.contains("gpu "));
        assert!(!dir.path().join("node.state.tmp").exists());
    }
}
