//! Loads the fake library through `nvml-wrapper`, exactly as the agent does,
//! and checks every answer against a state file written with `write_state`.
//! Reads and writes only a temporary directory.
//!
//! One process loads one instance of the library and has one environment, so
//! everything runs in one test function, in order.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dcwatt_fake_nvml::{write_state, FakeGpu, DEFAULT_DRIVER, LIB_PATH, STATE_ENV};
use nvml_wrapper::enum_wrappers::device::{TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::Nvml;

const GIB: u64 = 1 << 30;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn now_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn gpu(index: u32, power_w: u32, energy_mj: u64) -> FakeGpu {
    FakeGpu {
        index,
        uuid: format!("GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd"),
        power_mw: power_w * 1000,
        energy_mj,
        temp_c: 70 + index,
        mem_temp_c: 66 + index,
        util_gpu_pct: 95,
        util_mem_pct: 40,
        mem_total_bytes: 288 * GIB,
        mem_used_bytes: 190 * GIB,
        power_limit_mw: 1_400_000,
        throttle_reasons: 0x4,
        lost: false,
        name: "NVIDIA GB300".into(),
        ..FakeGpu::default()
    }
}

fn init() -> Result<Nvml, NvmlError> {
    Nvml::builder().lib_path(OsStr::new(LIB_PATH)).init()
}

/// Writes atomically; each rename brings a new inode, so the library notices.
fn write(path: &Path, time_ms: i64, gpus: &[FakeGpu]) {
    write_state(path, DEFAULT_DRIVER, time_ms, gpus).unwrap();
}

#[test]
fn nvml_wrapper_reads_the_fake_library() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");

    // No variable, then a missing file: the driver is "not loaded".
    std::env::remove_var(STATE_ENV);
    assert!(matches!(init(), Err(NvmlError::DriverNotLoaded)));
    std::env::set_var(STATE_ENV, &state);
    assert!(matches!(init(), Err(NvmlError::DriverNotLoaded)));

    // A hall node with two GPUs.
    let t0 = now_ms();
    let e0 = 523_000_000;
    write(&state, t0, &[gpu(0, 1100, e0), gpu(1, 150, 7)]);
    let nvml = init().expect("init with a state file");
    assert_eq!(nvml.sys_driver_version().unwrap(), DEFAULT_DRIVER);
    assert_eq!(nvml.device_count().unwrap(), 2);

    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();
    assert!(nvml.device_by_index(2).is_err());
    assert_eq!(d0.name().unwrap(), "NVIDIA GB300");
    assert_eq!(
        d0.uuid().unwrap(),
        "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd"
    );
    assert_eq!(
        d1.uuid().unwrap(),
        "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"
    );
    assert_eq!(d1.index().unwrap(), 1);
    assert_eq!(f64::from(d0.power_usage().unwrap()) / 1000.0, 1100.0);
    assert_eq!(f64::from(d1.power_usage().unwrap()) / 1000.0, 150.0);
    assert_eq!(d0.enforced_power_limit().unwrap(), 1_400_000);
    assert_eq!(d0.power_management_limit().unwrap(), 1_400_000);
    assert_eq!(d0.temperature(TemperatureSensor::Gpu).unwrap(), 70);
    assert_eq!(d1.temperature(TemperatureSensor::Gpu).unwrap(), 71);
    assert_eq!(
        d0.temperature_threshold(TemperatureThreshold::Slowdown)
            .unwrap(),
        90
    );
    assert_eq!(
        d0.temperature_threshold(TemperatureThreshold::Shutdown)
            .unwrap(),
        95
    );
    let util = d0.utilization_rates().unwrap();
    assert_eq!((util.gpu, util.memory), (95, 40));
    let mem = d0.memory_info().unwrap();
    assert_eq!(
        (mem.total, mem.used, mem.free),
        (288 * GIB, 190 * GIB, 98 * GIB)
    );
    assert_eq!(d0.current_throttle_reasons().unwrap().bits(), 0x4);

    // Memory temperature through the field-values API.
    let fields = d1.field_values_for(&[FieldId(82), FieldId(1)]).unwrap();
    match &fields[0] {
        Ok(FieldValueSample {
            value: Ok(SampleValue::U32(t)),
            ..
        }) => assert_eq!(*t, 67),
        other => panic!("memory temperature field: {other:?}"),
    }
    assert!(matches!(
        fields[1],
        Ok(FieldValueSample {
            value: Err(NvmlError::NotSupported),
            ..
        })
    ));

    // Energy is extrapolated to the read instant: power × elapsed time.
    let before = now_ms_f64();
    let first = d0.total_energy_consumption().unwrap();
    let after = now_ms_f64();
    let expect = |t: f64| e0 as f64 + 1100.0 * (t - t0 as f64);
    assert!(
        first as f64 >= expect(before) - 1.0 && first as f64 <= expect(after) + 1.0,
        "{first}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let start = now_ms_f64();
    let second = d0.total_energy_consumption().unwrap();
    let end = now_ms_f64();
    assert!(
        second as f64 >= expect(start) - 1.0 && second as f64 <= expect(end) + 1.0,
        "{second}"
    );
    let joules = (second - first) as f64 / 1000.0;
    assert!(
        (320.0..=400.0).contains(&joules),
        "1100 W over ~0.3 s gave {joules} J"
    );

    // A file published ahead of its instant: the counter holds at energy_mj.
    let ahead = now_ms() + 60_000;
    write(
        &state,
        ahead,
        &[gpu(0, 1100, e0 + 1_000_000), gpu(1, 150, 7)],
    );
    assert_eq!(d0.total_energy_consumption().unwrap(), e0 + 1_000_000);

    // A lost GPU answers GPU_IS_LOST to every call; its neighbour is fine.
    let mut lost = gpu(1, 150, 7);
    lost.lost = true;
    write(&state, now_ms(), &[gpu(0, 1000, 0), lost]);
    assert!(matches!(d1.power_usage(), Err(NvmlError::GpuLost)));
    assert!(matches!(
        d1.total_energy_consumption(),
        Err(NvmlError::GpuLost)
    ));
    assert!(matches!(d1.uuid(), Err(NvmlError::GpuLost)));
    assert!(matches!(d1.memory_info(), Err(NvmlError::GpuLost)));
    assert_eq!(d0.power_usage().unwrap(), 1_000_000);
    // The counter restarted (a driver reload): a small value now.
    assert!(d0.total_energy_consumption().unwrap() < 1_000_000);

    // Garbage keeps the last good state; so does a vanished file.
    std::fs::write(&state, "garbage\n\0\x01 gpu x y z\n").unwrap();
    assert_eq!(nvml.device_count().unwrap(), 2);
    assert_eq!(d0.power_usage().unwrap(), 1_000_000);
    std::fs::remove_file(&state).unwrap();
    assert_eq!(d0.power_usage().unwrap(), 1_000_000);

    // Fewer GPUs: the missing one is lost, the count follows the file.
    write(&state, now_ms(), &[gpu(0, 900, 0)]);
    assert_eq!(nvml.device_count().unwrap(), 1);
    assert!(matches!(d1.power_usage(), Err(NvmlError::GpuLost)));

    // Many threads reading while the file changes: no crash, sane answers.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..2000 {
                    let p = d0.power_usage().unwrap();
                    assert!(p == 900_000 || p == 800_000, "{p}");
                    let _ = d0.total_energy_consumption().unwrap();
                }
            });
        }
        for i in 0..200 {
            let p = if i % 2 == 0 { 800 } else { 900 };
            write(&state, now_ms(), &[gpu(0, p, 0)]);
        }
    });

    nvml.shutdown().unwrap();
}
