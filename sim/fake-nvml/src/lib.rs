//! # dcwatt-fake-nvml: a fake `libnvidia-ml.so.1`
//!
//! `fake_nvml.c`, built by `build.rs` into [`LIB_PATH`], answers the NVML calls
//! that `nvml-wrapper` makes, from a text state file named by the environment
//! variable [`STATE_ENV`]. This crate writes that file ([`write_state`]) and
//! reads nothing; the C library reads it. The format is the contract in
//! `docs/interfaces.md` ("Fake NVML").
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
//! - Memory temperature is served as field `NVML_FI_DEV_MEMORY_TEMP` (82) of
//!   `nvmlDeviceGetFieldValues`; temperature thresholds are fixed
//!   (shutdown 95, slowdown 90, memory max 95, GPU max 87 °C).
//!
//! # Layout
//! - [`LIB_PATH`], [`STATE_ENV`], [`DEFAULT_DRIVER`]: where and how to load it.
//! - [`FakeGpu`], [`render_state`], [`write_state`]: the one writer of state files.

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
/// percent, bytes), so the file carries exactly what NVML would answer.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    }
    Ok(out)
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
        }
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
