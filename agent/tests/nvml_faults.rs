//! Every NVML reading and every GPU fault, through the fake
//! `libnvidia-ml.so.1` and the real agent: readings against the state file,
//! "not supported" left out, T.Limit offsets (signed) and NVML's margin, the
//! deprecated calls as fallback on an older driver, GPM utilization, NVLink,
//! remapped rows and PCIe replays, RESET_REQUIRED/UNKNOWN/NO_PERMISSION with
//! their reasons, XID events, an
//! energy counter reset, a lost GPU, a hung call, and the XID thread ending
//! with the agent. The library reads `DCWATT_FAKE_NVML_STATE` at init, a
//! process-global: this binary holds exactly one test function.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use dcwatt_wire::{Batch, Entity, Quantity};

use common::{must, value, Agent};
use dcwatt_fake_nvml::{
    write_state, FakeError, FakeGpm, FakeGpu, FakeNvlinkCounter, FakeNvlinkError, FakeRemappedRows,
    FakeThresholds, FakeTlimit, FakeXid, DEFAULT_DRIVER, LIB_PATH, STATE_ENV,
};

const UUIDS: [&str; 3] = [
    "GPU-3c000000-0000-0000-0000-000000000000",
    "GPU-3c000000-0000-0000-0000-000000000001",
    "GPU-3c000000-0000-0000-0000-000000000002",
];

fn base(index: u32) -> FakeGpu {
    FakeGpu {
        index,
        uuid: UUIDS[index as usize].into(),
        power_mw: 1_000_000 + index * 1000,
        energy_mj: 500_000_000 + u64::from(index),
        temp_c: 70 + index,
        mem_temp_c: 60 + index,
        util_gpu_pct: 90,
        util_mem_pct: 30,
        mem_total_bytes: 288_000_000_000,
        mem_used_bytes: 100_000_000_000,
        power_limit_mw: 1_400_000,
        throttle_reasons: 0,
        lost: false,
        name: "NVIDIA GB300".into(),
        ..FakeGpu::default()
    }
}

/// GPU 0: every optional reading. GPU 1: liquid-cooled, thresholds only as
/// field values, no power usage and no memory temperature. GPU 2: defaults.
fn node() -> Vec<FakeGpu> {
    let mut g0 = base(0);
    g0.power_instant_mw = Some(1_234_000);
    g0.power_default_limit_mw = Some(1_200_000);
    g0.thresholds = Some(FakeThresholds {
        shutdown: 96,
        slowdown: 88,
        mem_max: 97,
        gpu_max: 85,
    });
    g0.sm_clock_mhz = Some(1980);
    g0.mem_clock_mhz = Some(3996);
    g0.fans_pct = vec![55, 60];
    g0.ecc_corrected = Some(3);
    g0.ecc_uncorrected = Some(1);
    g0.violation_power_ns = Some(2_500_000_000);
    g0.violation_thermal_ns = Some(500_000_000);
    g0.pcie_gen = Some(5);
    g0.pcie_width = Some(16);
    g0.recovery_action = Some(1); // NVML asks for a GPU reset
    g0.throttle_reasons = 0x4 | 0x40; // sw_power_cap, hw_thermal_slowdown
    g0.nvlink_links = Some(4);
    g0.nvlink_errors = vec![
        FakeNvlinkError {
            link: 2,
            counter: FakeNvlinkCounter::RcvErrors,
            value: 5,
        },
        FakeNvlinkError {
            link: 3,
            counter: FakeNvlinkCounter::RecoveryFailed,
            value: 1,
        },
    ];
    g0.remapped_rows = Some(FakeRemappedRows {
        corrected: 2,
        uncorrected: 1,
        pending: true,
        failure: false,
    });
    g0.pcie_replay = Some(12);
    g0.gpm = Some(FakeGpm {
        sm_active_pct: 81,
        sm_occupancy_pct: 42,
        tensor_active_pct: 67,
        dram_active_pct: 35,
    });

    // GPU 1: a T.Limit part (Blackwell): no classic thresholds, signed
    // offsets from T.Limit as field values, NVML's own margin; and an older
    // driver for the rest: NVML 13's calls missing, the deprecated ones answer.
    let mut g1 = base(1);
    g1.tlimit_offsets = Some(FakeTlimit {
        shutdown: -5,
        slowdown: -2,
        mem_max: 0,
        gpu_max: 3,
    });
    g1.tlimit_c = Some(-4);
    g1.thresholds_fields_only = true;
    g1.violation_power_ns = Some(7_000_000_000);
    g1.unsupported = vec![
        "nvmlDeviceGetPowerUsage".into(),
        "field:82".into(),
        "nvmlDeviceGetTemperatureV".into(),
        "nvmlDeviceGetCurrentClocksEventReasons".into(),
        "nvmlDeviceGetSupportedClocksEventReasons".into(),
        "field:74".into(),
    ];
    g1.throttle_reasons = 0x20; // sw_thermal_slowdown, through the deprecated call
    vec![g0, g1, base(2)]
}

/// Publishes GPU state whose energy counters hold still (`time_ms` an hour ahead).
fn publish(path: &Path, gpus: &[FakeGpu]) {
    let ahead = dcwatt_agent::sources::now_ms() + 3_600_000;
    write_state(path, DEFAULT_DRIVER, ahead, gpus).unwrap();
}

fn labels(gpu: usize) -> String {
    format!(
        r#"node="n1",gpu="{gpu}",uuid="{}",model="NVIDIA GB300""#,
        UUIDS[gpu]
    )
}

fn s(name: &str, gpu: usize) -> String {
    format!("{name}{{{}}}", labels(gpu))
}

fn sl(name: &str, gpu: usize, key: &str, v: &str) -> String {
    format!(r#"{name}{{{},{key}="{v}"}}"#, labels(gpu))
}

fn up(gpu: usize) -> String {
    format!(
        r#"dcwatt_gpu_up{{node="n1",gpu="{gpu}",uuid="{}"}}"#,
        UUIDS[gpu]
    )
}

fn thr_active_name() -> &'static str {
    "dcwatt_gpu_throttle_active"
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_readings_and_faults() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    // Set before any NVML init; this binary's only test.
    std::env::set_var(STATE_ENV, &state);

    let received: Arc<Mutex<Vec<Batch>>> = Arc::default();
    let collector = common::serve(
        Router::new()
            .route(
                "/v1/batches",
                post(
                    |State(r): State<Arc<Mutex<Vec<Batch>>>>, body: String| async move {
                        let b: Batch = serde_json::from_str(&body).unwrap();
                        r.lock().unwrap().push(b);
                        r#"{"accepted":1,"duplicate":false}"#
                    },
                ),
            )
            .with_state(Arc::clone(&received)),
    )
    .await;
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();

    let mut gpus = node();
    publish(&state, &gpus);
    let agent = Agent::start(&format!(
        r#"
interval = "500ms"
node = "n1"
[[collectors]]
url = "http://{collector}"
token_file = "{token}"
[[sources]]
type = "nvml"
library = "{LIB_PATH}"
"#,
        token = token.display()
    ))
    .await;

    // --- Every reading, against the state file.
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            (0..3).all(|g| value(t, &up(g)) == Some(1.0))
        })
        .await;
    assert_eq!(must(&text, &s("dcwatt_gpu_power_watts", 0)), 1000.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_power_instant_watts", 0)), 1234.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_power_limit_watts", 0)), 1400.0);
    assert_eq!(
        must(&text, &s("dcwatt_gpu_power_default_limit_watts", 0)),
        1200.0
    );
    assert_eq!(
        must(&text, &s("dcwatt_gpu_energy_joules_total", 0)),
        500_000.0
    );
    assert_eq!(must(&text, &s("dcwatt_gpu_energy_resets_total", 0)), 0.0);
    let temp = "dcwatt_gpu_temperature_celsius";
    assert_eq!(must(&text, &sl(temp, 0, "sensor", "gpu")), 70.0);
    assert_eq!(must(&text, &sl(temp, 0, "sensor", "memory")), 60.0);
    let thr = "dcwatt_gpu_temperature_threshold_celsius";
    for (gpu, expect) in [
        (0, [88.0, 96.0, 85.0, 97.0]),
        // GPU 2: the library's defaults.
        (2, [90.0, 95.0, 87.0, 95.0]),
    ] {
        for (label, v) in ["slowdown", "shutdown", "gpu_max", "memory_max"]
            .into_iter()
            .zip(expect)
        {
            assert_eq!(must(&text, &sl(thr, gpu, "threshold", label)), v);
        }
    }
    assert_eq!(
        must(
            &text,
            &s("dcwatt_gpu_temperature_slowdown_margin_celsius", 0)
        ),
        18.0
    );
    // GPM utilization over the tick (samples ≥ 100 ms apart, else the fake
    // refuses them); absent, not 0, where GPM is not supported (GPU 2).
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &s("dcwatt_gpu_sm_active_ratio", 0)).is_some()
        })
        .await;
    for (name, v) in [
        ("dcwatt_gpu_sm_active_ratio", 0.81),
        ("dcwatt_gpu_sm_occupancy_ratio", 0.42),
        ("dcwatt_gpu_tensor_active_ratio", 0.67),
        ("dcwatt_gpu_dram_active_ratio", 0.35),
    ] {
        assert_eq!(must(&text, &s(name, 0)), v, "{name}");
        assert_eq!(value(&text, &s(name, 2)), None, "{name}");
    }
    // Health for on-call: NVLink error counters per link (Blackwell's; the
    // pre-Blackwell data-link counters are not supported and absent),
    // remapped rows, PCIe replays; absent on a GPU without them.
    let nvl = |gpu: usize, link: u32, counter: &str| {
        format!(
            r#"dcwatt_gpu_nvlink_errors_total{{{},link="{link}",counter="{counter}"}}"#,
            labels(gpu)
        )
    };
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &nvl(0, 2, "rcv_errors")).is_some()
        })
        .await;
    assert_eq!(must(&text, &nvl(0, 2, "rcv_errors")), 5.0);
    assert_eq!(must(&text, &nvl(0, 3, "recovery_failed")), 1.0);
    assert_eq!(must(&text, &nvl(0, 0, "symbol_errors")), 0.0);
    assert_eq!(value(&text, &nvl(0, 0, "dl_replay")), None);
    assert_eq!(value(&text, &nvl(0, 4, "rcv_errors")), None);
    assert_eq!(
        text.matches(&format!("dcwatt_gpu_nvlink_errors_total{{{}", labels(0)))
            .count(),
        16
    );
    assert!(!text.contains(&format!("dcwatt_gpu_nvlink_errors_total{{{}", labels(2))));
    let rows = "dcwatt_gpu_remapped_rows_total";
    assert_eq!(must(&text, &sl(rows, 0, "cause", "correctable")), 2.0);
    assert_eq!(must(&text, &sl(rows, 0, "cause", "uncorrectable")), 1.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_remapped_rows_pending", 0)), 1.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_remapped_rows_failure", 0)), 0.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_pcie_replays_total", 0)), 12.0);
    assert_eq!(value(&text, &s("dcwatt_gpu_pcie_replays_total", 2)), None);
    assert!(!text.contains(&format!("{rows}{{{}", labels(2))));

    // GPU 1: thresholds as T.Limit offsets, signed, never taken for degrees;
    // the margin is NVML's (negative: past the slowdown threshold).
    assert!(
        !text.contains(&format!("{thr}{{{}", labels(1))),
        "offsets are not absolute thresholds: {text}"
    );
    let off = "dcwatt_gpu_temperature_tlimit_offset_celsius";
    for (label, v) in [
        ("slowdown", -2.0),
        ("shutdown", -5.0),
        ("gpu_max", 3.0),
        ("memory_max", 0.0),
    ] {
        assert_eq!(must(&text, &sl(off, 1, "threshold", label)), v, "{label}");
    }
    assert!(!text.contains(&format!("{off}{{{}", labels(0))), "{text}");
    assert_eq!(
        must(
            &text,
            &s("dcwatt_gpu_temperature_slowdown_margin_celsius", 1)
        ),
        -4.0
    );
    // GPU 1's older driver: the deprecated calls answer where NVML 13's are
    // missing (temperature, clock-event reasons, violation time).
    assert_eq!(
        must(
            &text,
            &sl(thr_active_name(), 1, "reason", "sw_thermal_slowdown")
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            &sl(
                "dcwatt_gpu_throttle_violation_seconds_total",
                1,
                "policy",
                "power"
            )
        ),
        7.0
    );
    let thr_active = "dcwatt_gpu_throttle_active";
    for (reason, v) in [
        ("gpu_idle", 0.0),
        ("applications_clocks_setting", 0.0),
        ("sw_power_cap", 1.0),
        ("hw_slowdown", 0.0),
        ("sync_boost", 0.0),
        ("sw_thermal_slowdown", 0.0),
        ("hw_thermal_slowdown", 1.0),
        ("hw_power_brake_slowdown", 0.0),
        ("display_clock_setting", 0.0),
    ] {
        assert_eq!(
            must(&text, &sl(thr_active, 0, "reason", reason)),
            v,
            "{reason}"
        );
        assert_eq!(must(&text, &sl(thr_active, 2, "reason", reason)), 0.0);
    }
    let viol = "dcwatt_gpu_throttle_violation_seconds_total";
    assert_eq!(must(&text, &sl(viol, 0, "policy", "power")), 2.5);
    assert_eq!(must(&text, &sl(viol, 0, "policy", "thermal")), 0.5);
    let clock = "dcwatt_gpu_clock_hertz";
    assert_eq!(must(&text, &sl(clock, 0, "clock", "sm")), 1.98e9);
    assert_eq!(must(&text, &sl(clock, 0, "clock", "memory")), 3.996e9);
    let fan = "dcwatt_gpu_fan_speed_ratio";
    assert_eq!(must(&text, &sl(fan, 0, "fan", "0")), 0.55);
    assert_eq!(must(&text, &sl(fan, 0, "fan", "1")), 0.6);
    let ecc = "dcwatt_gpu_ecc_errors_total";
    assert_eq!(must(&text, &sl(ecc, 0, "error", "corrected")), 3.0);
    assert_eq!(must(&text, &sl(ecc, 0, "error", "uncorrected")), 1.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_pcie_link_generation", 0)), 5.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_pcie_link_width_lanes", 0)), 16.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_recovery_action", 0)), 1.0);
    // A GPU whose driver lacks the field: absent, not 0.
    assert_eq!(value(&text, &s("dcwatt_gpu_recovery_action", 2)), None);
    assert_eq!(must(&text, &s("dcwatt_gpu_utilization_ratio", 1)), 0.9);
    assert_eq!(must(&text, &s("dcwatt_gpu_memory_used_bytes", 2)), 100e9);
    assert_eq!(
        must(
            &text,
            &format!(
                r#"dcwatt_gpu_info{{{},driver_version="{DEFAULT_DRIVER}",pci_bus_id="00000000:28:00.0"}}"#,
                labels(1)
            )
        ),
        1.0
    );

    // Not supported: absent, never a made-up 0.
    assert_eq!(value(&text, &s("dcwatt_gpu_power_watts", 1)), None);
    assert_eq!(value(&text, &sl(temp, 1, "sensor", "memory")), None);
    assert_eq!(value(&text, &sl(temp, 1, "sensor", "gpu")), Some(71.0));
    assert_eq!(value(&text, &s("dcwatt_gpu_power_instant_watts", 1)), None);
    assert!(!text.contains(&format!("{fan}{{{}", labels(1))), "{text}");
    assert!(!text.contains(&format!("{fan}{{{}", labels(2))), "{text}");
    assert!(!text.contains(&format!("{ecc}{{{}", labels(2))), "{text}");
    assert!(!text.contains("dcwatt_gpu_mig_enabled"), "{text}");
    assert!(!text.contains("dcwatt_gpu_xid_errors_total{"), "{text}");
    assert_eq!(must(&text, r#"dcwatt_source_up{source="nvml"}"#), 1.0);

    // The wire quantities went to the collector.
    let batch = wait_batch(&received, |b| {
        b.readings
            .iter()
            .any(|r| r.quantity == Quantity::ThrottleHwThermalSlowdown)
    })
    .await;
    let get = |gpu: usize, q: Quantity| {
        batch
            .readings
            .iter()
            .find(|r| r.entity == Entity::Gpu(UUIDS[gpu].into()) && r.quantity == q)
            .map(|r| r.value)
    };
    assert_eq!(get(0, Quantity::PowerWatts), Some(1000.0));
    assert_eq!(get(1, Quantity::PowerWatts), None);
    assert_eq!(get(0, Quantity::TemperatureSlowdownCelsius), Some(88.0));
    // Offsets are not shipped as thresholds.
    assert_eq!(get(1, Quantity::TemperatureShutdownCelsius), None);
    assert_eq!(get(1, Quantity::TemperatureGpuMaxCelsius), None);
    assert_eq!(get(1, Quantity::ThrottleSwThermalSlowdown), Some(1.0));
    assert_eq!(get(2, Quantity::TemperatureMemoryMaxCelsius), Some(95.0));
    assert_eq!(get(0, Quantity::ThrottleSwPowerCap), Some(1.0));
    assert_eq!(get(0, Quantity::ThrottleHwThermalSlowdown), Some(1.0));
    assert_eq!(get(0, Quantity::ThrottleHwSlowdown), Some(0.0));
    assert_eq!(get(0, Quantity::ThrottleSwThermalSlowdown), Some(0.0));
    assert_eq!(get(0, Quantity::ThrottleHwPowerBrakeSlowdown), Some(0.0));
    assert_eq!(get(2, Quantity::GpuUp), Some(1.0));
    assert_eq!(get(0, Quantity::MemoryTemperatureCelsius), Some(60.0));
    assert_eq!(get(1, Quantity::MemoryTemperatureCelsius), None);
    assert_eq!(get(0, Quantity::EnergyJoules), Some(500_000.0));

    // --- XID events: each counted exactly once, per code.
    gpus[0].xids = vec![
        FakeXid { id: 1, code: 79 },
        FakeXid { id: 2, code: 79 },
        FakeXid { id: 3, code: 48 },
    ];
    gpus[2].xids = vec![FakeXid { id: 4, code: 31 }];
    publish(&state, &gpus);
    let xid = "dcwatt_gpu_xid_errors_total";
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &sl(xid, 0, "xid", "79")) == Some(2.0)
                && value(t, &sl(xid, 0, "xid", "48")) == Some(1.0)
                && value(t, &sl(xid, 2, "xid", "31")) == Some(1.0)
        })
        .await;
    assert!(
        text.contains("# TYPE dcwatt_gpu_xid_errors_total counter"),
        "{text}"
    );
    gpus[0].xids.push(FakeXid { id: 5, code: 79 });
    publish(&state, &gpus);
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &sl(xid, 0, "xid", "79")) == Some(3.0)
        })
        .await;
    assert_eq!(must(&text, &sl(xid, 0, "xid", "48")), 1.0);
    assert_eq!(must(&text, &sl(xid, 2, "xid", "31")), 1.0);
    assert_eq!(value(&text, &sl(xid, 1, "xid", "79")), None);

    // --- The energy counter drops (driver reload): the agent reports what
    // the GPU says, and counts the reset once.
    gpus[0].energy_mj = 1_000;
    gpus[0].power_mw = 900_000; // a marker to wait for
    publish(&state, &gpus);
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &s("dcwatt_gpu_power_watts", 0)) == Some(900.0)
        })
        .await;
    assert_eq!(must(&text, &s("dcwatt_gpu_energy_joules_total", 0)), 1.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_energy_resets_total", 0)), 1.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_energy_resets_total", 1)), 0.0);
    gpus[0].energy_mj = 2_000;
    gpus[0].power_mw = 950_000;
    publish(&state, &gpus);
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &s("dcwatt_gpu_power_watts", 0)) == Some(950.0)
        })
        .await;
    assert_eq!(must(&text, &s("dcwatt_gpu_energy_joules_total", 0)), 2.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_energy_resets_total", 0)), 1.0);
    let batch = wait_batch(&received, |b| {
        b.readings.iter().any(|r| {
            r.entity == Entity::Gpu(UUIDS[0].into())
                && r.quantity == Quantity::EnergyJoules
                && r.value == 2.0
        })
    })
    .await;
    assert!(!batch.readings.is_empty());

    // --- GPU 2 falls off the bus: down, still listed, the others keep going.
    gpus[2].lost = true;
    gpus[0].power_mw = 960_000;
    publish(&state, &gpus);
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &up(2)) == Some(0.0)
                && value(t, &s("dcwatt_gpu_power_watts", 0)) == Some(960.0)
        })
        .await;
    assert_eq!(must(&text, &up(0)), 1.0);
    assert_eq!(must(&text, &up(1)), 1.0);
    assert_eq!(value(&text, &s("dcwatt_gpu_power_watts", 2)), None);
    assert_eq!(value(&text, &sl(temp, 2, "sensor", "gpu")), None);
    // The counters the agent keeps stay, under the GPU's identity.
    assert_eq!(must(&text, &sl(xid, 2, "xid", "31")), 1.0);
    assert_eq!(must(&text, &s("dcwatt_gpu_energy_resets_total", 2)), 0.0);
    assert!(
        text.contains(&format!(r#"dcwatt_gpu_info{{{}"#, labels(2))),
        "{text}"
    );
    assert_eq!(must(&text, r#"dcwatt_source_up{source="nvml"}"#), 1.0);
    let batch = wait_batch(&received, |b| {
        b.readings.iter().any(|r| {
            r.entity == Entity::Gpu(UUIDS[2].into())
                && r.quantity == Quantity::GpuUp
                && r.value == 0.0
        })
    })
    .await;
    assert!(!batch
        .readings
        .iter()
        .any(|r| r.entity == Entity::Gpu(UUIDS[2].into()) && r.quantity == Quantity::PowerWatts));
    // The reason travels with it, as a code (1: GPU_IS_LOST); the up GPUs
    // carry none.
    let code = |b: &Batch, gpu: usize| {
        b.readings
            .iter()
            .find(|r| {
                r.entity == Entity::Gpu(UUIDS[gpu].into())
                    && r.quantity == Quantity::GpuDownReasonCode
            })
            .map(|r| r.value)
    };
    assert_eq!(code(&batch, 2), Some(1.0));
    assert_eq!(code(&batch, 0), None);
    let down = |gpu: usize, reason: &str| sl("dcwatt_gpu_down_info", gpu, "reason", reason);
    assert_eq!(must(&text, &down(2, "gpu_lost")), 1.0);
    assert!(!text.contains(&format!("dcwatt_gpu_down_info{{{}", labels(0))));

    // --- Every other error that makes a GPU unusable puts it down too, with
    // its reason, while its identity stays readable (RESET_REQUIRED after an
    // uncorrectable error, UNKNOWN, NO_PERMISSION on every call); the other
    // GPUs go on.
    gpus[2].lost = false;
    for (err, reason) in [
        (FakeError::ResetRequired, "reset_required"),
        (FakeError::Unknown, "unknown"),
        (FakeError::NoPermission, "no_permission"),
    ] {
        gpus[2].error = Some(err);
        gpus[0].power_mw += 1_000;
        let p0 = f64::from(gpus[0].power_mw) / 1000.0;
        publish(&state, &gpus);
        let text = agent
            .wait_for(Duration::from_secs(10), |t| {
                value(t, &down(2, reason)) == Some(1.0)
                    && value(t, &s("dcwatt_gpu_power_watts", 0)) == Some(p0)
            })
            .await;
        assert_eq!(must(&text, &up(2)), 0.0, "{reason}");
        assert_eq!(must(&text, &up(0)), 1.0, "{reason}");
        assert_eq!(
            value(&text, &s("dcwatt_gpu_power_watts", 2)),
            None,
            "{reason}"
        );
        assert_eq!(
            value(&text, &sl(temp, 2, "sensor", "gpu")),
            None,
            "{reason}"
        );
        let want = f64::from(dcwatt_wire::down_reason_code(reason));
        assert!(want > 0.0, "{reason}");
        wait_batch(&received, |b| code(b, 2) == Some(want)).await;
        // One reason at a time.
        assert_eq!(
            text.matches(&format!("dcwatt_gpu_down_info{{{}", labels(2)))
                .count(),
            1,
            "{text}"
        );
    }
    gpus[2].error = None;
    // One call failing with UNKNOWN (not the core call) skips that reading
    // only: the GPU stays up with everything else.
    gpus[2].failing = vec![("nvmlDeviceGetUtilizationRates".into(), FakeError::Unknown)];
    gpus[0].power_mw += 1_000;
    let p0 = f64::from(gpus[0].power_mw) / 1000.0;
    publish(&state, &gpus);
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &up(2)) == Some(1.0) && value(t, &s("dcwatt_gpu_power_watts", 0)) == Some(p0)
        })
        .await;
    assert_eq!(value(&text, &s("dcwatt_gpu_utilization_ratio", 2)), None);
    assert_eq!(must(&text, &s("dcwatt_gpu_utilization_ratio", 0)), 0.9);
    assert!(value(&text, &s("dcwatt_gpu_power_watts", 2)).is_some());
    assert!(!text.contains(&format!("dcwatt_gpu_down_info{{{}", labels(2))));
    gpus[2].failing.clear();
    gpus[2].lost = true;
    publish(&state, &gpus);

    // --- GPU 2 is back but every call on it hangs for seconds: the tick ends
    // at its deadline, GPU 2 is down, the other GPUs keep being read.
    gpus[2].lost = false;
    gpus[2].hang_ms = 3_000;
    gpus[0].power_mw = 970_000;
    publish(&state, &gpus);
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &up(2)) == Some(0.0)
                && value(t, &s("dcwatt_gpu_power_watts", 0)) == Some(970.0)
        })
        .await;
    gpus[0].power_mw = 980_000;
    publish(&state, &gpus);
    let text2 = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &s("dcwatt_gpu_power_watts", 0)) == Some(980.0)
        })
        .await;
    for t in [&text, &text2] {
        assert_eq!(must(t, &up(2)), 0.0, "{t}");
        assert_eq!(must(t, &up(1)), 1.0);
        assert_eq!(must(t, r#"dcwatt_source_up{source="nvml"}"#), 1.0);
        // The collection ended by its own deadline, inside the tick.
        assert!(must(t, r#"dcwatt_source_duration_seconds{source="nvml"}"#) < 0.5);
    }
    // The batches say the same: GPU 2 down, GPU 0 read.
    let reading = |b: &Batch, gpu: usize, q: Quantity| {
        b.readings
            .iter()
            .find(|r| r.entity == Entity::Gpu(UUIDS[gpu].into()) && r.quantity == q)
            .map(|r| r.value)
    };
    let batch = wait_batch(&received, |b| {
        reading(b, 0, Quantity::PowerWatts) == Some(980.0)
    })
    .await;
    assert_eq!(reading(&batch, 2, Quantity::GpuUp), Some(0.0));
    // A hung GPU's reason: the agent's own timeout (13, `no_answer`).
    assert_eq!(reading(&batch, 2, Quantity::GpuDownReasonCode), Some(13.0));
    assert_eq!(reading(&batch, 2, Quantity::PowerWatts), None);
    assert_eq!(reading(&batch, 1, Quantity::GpuUp), Some(1.0));

    // The hang ends: GPU 2 answers again, on /metrics and in the batches.
    gpus[2].hang_ms = 0;
    publish(&state, &gpus);
    agent
        .wait_for(Duration::from_secs(15), |t| {
            value(t, &up(2)) == Some(1.0)
                && value(t, &s("dcwatt_gpu_power_watts", 2)) == Some(1002.0)
        })
        .await;
    let batch = wait_batch(&received, |b| {
        reading(b, 2, Quantity::GpuUp) == Some(1.0)
            && reading(b, 0, Quantity::PowerWatts) == Some(980.0)
    })
    .await;
    assert_eq!(reading(&batch, 2, Quantity::PowerWatts), Some(1002.0));

    // --- The first GPU hangs: the GPUs are read one after another, so the
    // reader is left inside GPU 0 and another one reads GPUs 1 and 2, in the
    // same collection (GPU 1 has no power reading: its utilization changes).
    gpus[0].hang_ms = 3_000;
    let from = received.lock().unwrap().len();
    for (u1, p2) in [(40, 1_003_000), (50, 1_004_000)] {
        gpus[1].util_gpu_pct = u1;
        gpus[2].power_mw = p2;
        publish(&state, &gpus);
        let t = agent
            .wait_for(Duration::from_secs(10), |t| {
                // Utilization is a rotating reading (every other tick), so
                // it is waited for, not assumed to land with the power.
                value(t, &up(0)) == Some(0.0)
                    && value(t, &s("dcwatt_gpu_power_watts", 2)) == Some(p2 as f64 / 1000.0)
                    && value(t, &s("dcwatt_gpu_utilization_ratio", 1))
                        == Some(f64::from(u1) / 100.0)
            })
            .await;
        assert_eq!(must(&t, &up(1)), 1.0, "{t}");
        assert_eq!(must(&t, &up(2)), 1.0, "{t}");
        assert_eq!(
            must(&t, &s("dcwatt_gpu_utilization_ratio", 1)),
            f64::from(u1) / 100.0,
            "{t}"
        );
        assert!(must(&t, r#"dcwatt_source_duration_seconds{source="nvml"}"#) < 0.5);
    }
    // No collection in the batches missed GPU 1 or 2 while GPU 0 hung: the
    // takeover happens inside the collection, not at its deadline.
    wait_batch(&received, |b| reading(b, 0, Quantity::GpuUp) == Some(0.0)).await;
    let shipped: Vec<Batch> = received.lock().unwrap()[from..].to_vec();
    let ups = |gpu: usize| -> Vec<f64> {
        shipped
            .iter()
            .flat_map(|b| &b.readings)
            .filter(|r| r.entity == Entity::Gpu(UUIDS[gpu].into()) && r.quantity == Quantity::GpuUp)
            .map(|r| r.value)
            .collect()
    };
    assert!(ups(0).contains(&0.0), "GPU 0 hung in the batches");
    for gpu in [1, 2] {
        assert!(
            ups(gpu).iter().all(|v| *v == 1.0),
            "GPU {gpu}: {:?}",
            ups(gpu)
        );
    }
    gpus[0].hang_ms = 0;
    publish(&state, &gpus);
    agent
        .wait_for(Duration::from_secs(15), |t| value(t, &up(0)) == Some(1.0))
        .await;

    // --- The agent stops: so do the XID event thread, the GPU threads and
    // the control thread.
    let names = thread_names();
    for name in ["dcwatt-nvml-xid", "dcwatt-nvml-gpu", "dcwatt-nvml"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    agent.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = thread_names()
            .into_iter()
            .filter(|n| n.starts_with("dcwatt-nvml"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The latest batch matching `pred`, waiting for it.
async fn wait_batch(received: &Mutex<Vec<Batch>>, pred: impl Fn(&Batch) -> bool) -> Batch {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = received
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|b| pred(b))
            .cloned();
        match found {
            Some(b) => return b,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => panic!("no matching batch"),
        }
    }
}
