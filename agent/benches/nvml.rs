//! NVML benchmark: what one collection tick of 8 GPUs costs the agent, through
//! the real `nvml-wrapper` path and the fake `libnvidia-ml.so.1` (every
//! optional reading on, so every call the agent makes is made), what one
//! `/metrics` render of that node costs, and how many NVML calls a
//! steady-state tick makes per GPU, by symbol (counted by the fake library).
//!
//! `cargo bench -p dcwatt-agent --bench nvml [-- TICKS]` prints a table.
//! CPU time is the process's (user + system, every thread) from `getrusage`;
//! peak RSS is the process's `VmHWM` (`/proc/self/status`) at the end
//! (`ru_maxrss` would carry over the peak of `cargo`, which execs the bench). The fake library's own
//! work (a `stat` of its state file per call) is included, as a real driver's
//! ioctls would be.

use std::time::{Duration, Instant};

use dcwatt_agent::config::{NvmlLibrary, NvmlSpec};
use dcwatt_agent::metrics::{render, Snapshot};
use dcwatt_agent::sources::nvml::NvmlSource;
use dcwatt_fake_nvml::{
    write_state, FakeGpm, FakeGpu, FakeRemappedRows, FakeThresholds, FakeTlimit, DEFAULT_DRIVER,
    LIB_PATH, STATE_ENV,
};

/// Peak resident set size of this process image, KiB (`VmHWM`); 0 if unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Process CPU time (user + system) in seconds.
fn usage() -> f64 {
    // SAFETY: getrusage fills the struct we pass; no other memory is involved.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

fn gpus() -> Vec<FakeGpu> {
    (0..8u32)
        .map(|i| FakeGpu {
            index: i,
            uuid: format!("GPU-be000000-0000-0000-0000-00000000000{i}"),
            power_mw: 1_000_000,
            energy_mj: 1_000_000_000,
            temp_c: 70,
            mem_temp_c: 65,
            util_gpu_pct: 90,
            util_mem_pct: 40,
            mem_total_bytes: 288_000_000_000,
            mem_used_bytes: 200_000_000_000,
            power_limit_mw: 1_400_000,
            throttle_reasons: 0x4,
            lost: false,
            name: "NVIDIA GB300".into(),
            power_instant_mw: Some(1_010_000),
            power_default_limit_mw: Some(1_400_000),
            thresholds: Some(FakeThresholds {
                shutdown: 95,
                slowdown: 90,
                mem_max: 95,
                gpu_max: 87,
            }),
            sm_clock_mhz: Some(1900),
            mem_clock_mhz: Some(3996),
            ecc_corrected: Some(0),
            ecc_uncorrected: Some(0),
            violation_power_ns: Some(0),
            violation_thermal_ns: Some(0),
            pcie_gen: Some(6),
            pcie_width: Some(16),
            mig_mode: Some(false),
            // Grace-Blackwell: scoped power, superchip pairs, T.Limit, GPM, NVLink.
            module_power_mw: Some(2_400_000),
            module_power_instant_mw: Some(2_410_000),
            memory_power_mw: Some(90_000),
            serial: Some(format!("16500000000{}", i / 2)),
            mem_reserved_bytes: Some(947 << 20),
            tlimit_c: Some(20),
            tlimit_offsets: Some(FakeTlimit {
                shutdown: -5,
                slowdown: -2,
                mem_max: 0,
                gpu_max: 0,
            }),
            pcie_replay: Some(0),
            remapped_rows: Some(FakeRemappedRows::default()),
            gpm: Some(FakeGpm {
                sm_active_pct: 80,
                sm_occupancy_pct: 40,
                tensor_active_pct: 60,
                dram_active_pct: 30,
            }),
            nvlink_links: Some(18),
            ..FakeGpu::default()
        })
        .collect()
}

fn main() {
    let ticks: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot make a temporary directory: {e}");
            std::process::exit(1);
        }
    };
    let state = dir.path().join("node.state");
    let ahead = dcwatt_agent::sources::now_ms() + 3_600_000;
    if let Err(e) = write_state(&state, DEFAULT_DRIVER, ahead, &gpus()) {
        eprintln!("cannot write the fake NVML state: {e}");
        std::process::exit(1);
    }
    std::env::set_var(STATE_ENV, &state);

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let spec = NvmlSpec {
        library: NvmlLibrary::Path(LIB_PATH.into()),
        ship_modules: true,
    };
    let source = match NvmlSource::start(spec, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start the NVML source: {e}");
            std::process::exit(1);
        }
    };

    // Warm-up: init, threads, learning what is unsupported.
    let first = rt.block_on(source.collect());
    if let Some(e) = &first.error {
        eprintln!("the first collection failed: {e}");
        std::process::exit(1);
    }
    let readings = first.readings.len();

    // NVML calls of the steady state only: the warm-up's static reads are not counted.
    if let Err(e) = dcwatt_fake_nvml::introspect::reset_call_counts() {
        eprintln!("cannot reset the fake library's call counts: {e}");
        std::process::exit(1);
    }
    let mut walls = Vec::with_capacity(ticks);
    let mut snap = Snapshot::default();
    let cpu0 = usage();
    let start = Instant::now();
    for _ in 0..ticks {
        let t = Instant::now();
        let mut c = rt.block_on(source.collect());
        let took = t.elapsed();
        walls.push(took.as_secs_f64());
        snap.apply("nvml", None, &mut c, took);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = usage();
    let calls = match dcwatt_fake_nvml::introspect::call_counts() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot read the fake library's call counts: {e}");
            std::process::exit(1);
        }
    };

    let renders = ticks.max(1);
    let r0 = Instant::now();
    let mut bytes = 0;
    for _ in 0..renders {
        bytes = render("r12-n03", &snap, None).len();
    }
    let render_s = r0.elapsed().as_secs_f64();
    let cpu2 = usage();
    let rss_kib = peak_rss_kib();

    walls.sort_by(f64::total_cmp);
    let p99 = walls
        .get((walls.len() * 99 / 100).min(walls.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    let n = ticks.max(1) as f64;
    println!("| what | per op, wall | p99 wall | CPU per op | notes |");
    println!("|---|---|---|---|---|");
    println!(
        "| collect, 8 GPUs ({ticks} ticks) | {:.3} ms | {:.3} ms | {:.3} ms | {readings} wire readings per tick |",
        wall / n * 1e3,
        p99 * 1e3,
        (cpu1 - cpu0) / n * 1e3
    );
    println!(
        "| render /metrics ({renders} scrapes) | {:.3} ms | | {:.3} ms | {bytes} bytes |",
        render_s / renders as f64 * 1e3,
        (cpu2 - cpu1) / renders as f64 * 1e3
    );
    println!(
        "| peak RSS (process) | {:.1} MiB | | | |",
        rss_kib as f64 / 1024.0
    );
    print_calls(
        &format!("back to back, {ticks} ticks (GPM not due: its samples are 100 ms apart)"),
        &calls,
        ticks,
    );

    // The call table of ticks 100 ms apart (GPM due): what a node at a
    // short interval makes.
    let paced = 50;
    if let Err(e) = dcwatt_fake_nvml::introspect::reset_call_counts() {
        eprintln!("cannot reset the fake library's call counts: {e}");
        std::process::exit(1);
    }
    for _ in 0..paced {
        std::thread::sleep(Duration::from_millis(100));
        let _ = rt.block_on(source.collect());
    }
    match dcwatt_fake_nvml::introspect::call_counts() {
        Ok(c) => print_calls(&format!("ticks 100 ms apart, {paced} ticks"), &c, paced),
        Err(e) => {
            eprintln!("cannot read the fake library's call counts: {e}");
            std::process::exit(1);
        }
    }
}

/// Calls made once per node per tick, or by the XID thread: not per GPU.
const NODE_CALLS: [&str; 2] = ["nvmlDeviceGetCount_v2", "nvmlEventSetWait_v2"];

/// Prints NVML calls per GPU per tick, by symbol, and the node's calls apart.
fn print_calls(what: &str, calls: &std::collections::BTreeMap<String, u64>, ticks: usize) {
    let per_tick = |n: u64| n as f64 / (n_ticks_gpus(ticks) as f64);
    let gpu_calls: Vec<(&String, &u64)> = calls
        .iter()
        .filter(|(name, n)| !NODE_CALLS.contains(&name.as_str()) && **n > 0)
        .collect();
    let total: u64 = gpu_calls.iter().map(|(_, n)| **n).sum();
    println!();
    println!(
        "NVML calls per GPU per tick, {what}: {:.2} (budget {})",
        per_tick(total),
        dcwatt_agent::sources::nvml::gpu::CALL_BUDGET
    );
    for (name, n) in gpu_calls {
        println!("  {name}: {:.2}", per_tick(*n));
    }
    let node = calls.get("nvmlDeviceGetCount_v2").copied().unwrap_or(0);
    println!(
        "  per node per tick: nvmlDeviceGetCount_v2 {:.2}",
        node as f64 / ticks.max(1) as f64
    );
}

/// GPU-ticks in a run of `ticks` collections of the 8 GPUs.
fn n_ticks_gpus(ticks: usize) -> usize {
    ticks.max(1) * 8
}
