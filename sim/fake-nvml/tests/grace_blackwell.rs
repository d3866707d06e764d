//! The fake library's Grace-Blackwell answers, through nvml-wrapper and its
//! raw function table (the agent's two paths), on the GB300 profile: scoped
//! power field values, NVML 13's versioned calls, identity, reserved memory,
//! a skewed energy counter, remapped rows, GPM's 100 ms rule, GPM per MIG
//! instance, injected error codes, and the call counts. Reads and writes only a temporary directory.
//!
//! One process loads one instance of the library and has one environment, so
//! everything runs in one test function, in order.

use std::ffi::OsStr;

use dcwatt_fake_nvml::introspect::{call_counts, reset_call_counts};
use dcwatt_fake_nvml::profiles::{gb300_tray, ENERGY_SKEW_PPM, ENERGY_START_MJ, GB300};
use dcwatt_fake_nvml::{FakeError, FakeGpm, FakeMig, FakeNode, LIB_PATH, STATE_ENV};
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings as b;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `(fieldId, scopeId)` → the field's return code and value (as f64).
fn fields(dev: &Device<'_>, req: &[(u32, u32)]) -> Vec<(i64, f64)> {
    let f = dev
        .nvml()
        .lib()
        .nvmlDeviceGetFieldValues
        .as_ref()
        .expect("the symbol");
    let mut v: Vec<b::nvmlFieldValue_t> = req
        .iter()
        .map(|&(id, scope)| {
            // SAFETY: a plain C struct; zero is valid.
            let mut x: b::nvmlFieldValue_t = unsafe { std::mem::zeroed() };
            x.fieldId = id;
            x.scopeId = scope;
            x
        })
        .collect();
    // SAFETY: a live handle and `len` initialized structs.
    nvml_try(unsafe { f(dev.handle(), v.len() as i32, v.as_mut_ptr()) }).unwrap();
    v.iter()
        .map(|x| {
            // SAFETY: valueType names the member written.
            let val = unsafe {
                match x.valueType {
                    1 => f64::from(x.value.uiVal),
                    3 => x.value.ullVal as f64,
                    5 => f64::from(x.value.siVal),
                    _ => f64::NAN,
                }
            };
            (i64::from(x.nvmlReturn), val)
        })
        .collect()
}

#[test]
fn gb300_profile_through_nvml() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    std::env::set_var(STATE_ENV, &state);
    // The counter's instant lies 10 s back with a 5 s horizon: it reads as
    // energy_mj + power × 5 s × (1 + skew), whenever it is read.
    let write = |gpus| {
        FakeNode {
            driver: GB300.driver_version.into(),
            time_ms: now_ms() - 10_000,
            horizon_ms: Some(5_000),
            init_fail: false,
            gpus,
        }
        .write(&state)
        .unwrap()
    };
    write(gb300_tray());
    let nvml = Nvml::builder()
        .lib_path(OsStr::new(LIB_PATH))
        .init()
        .unwrap();
    assert_eq!(nvml.device_count().unwrap(), 4);
    let d0 = nvml.device_by_index(0).unwrap();
    let d3 = nvml.device_by_index(3).unwrap();

    // Identity as the capture shows it.
    assert_eq!(d0.name().unwrap(), "NVIDIA GB300");
    assert_eq!(d0.uuid().unwrap(), GB300.gpus[0].uuid);
    assert_eq!(d0.serial().unwrap(), "1650000000001");
    assert_eq!(d3.pci_info().unwrap().bus_id, "00000019:06:00.0");
    assert_eq!(d3.pci_info().unwrap().domain, 0x19);

    // Memory: reserved apart from used (v2).
    let m = d0.memory_info().unwrap();
    assert_eq!(m.total, 284_208 << 20);
    assert_eq!(m.reserved, 947 << 20);
    assert_eq!(m.used, 0);
    assert_eq!(m.free, (284_208 - 947) << 20);

    // Power by scope, in one call; memory has no instant reading.
    let v = fields(
        &d0,
        &[(185, 0), (185, 1), (185, 2), (186, 0), (186, 1), (186, 2)],
    );
    assert_eq!(
        v,
        vec![
            (0, 180_360.0),
            (0, 488_290.0),
            (0, 35_700.0),
            (0, 180_290.0),
            (0, 487_680.0),
            (3, 0.0)
        ]
    );
    // T.Limit offsets, signed.
    let v = fields(&d0, &[(193, 0), (194, 0), (195, 0), (196, 0)]);
    assert_eq!(v, vec![(0, -5.0), (0, -2.0), (0, 0.0), (0, 0.0)]);
    // The classic threshold call is not the interface here.
    assert!(matches!(
        d0.temperature_threshold(
            nvml_wrapper::enum_wrappers::device::TemperatureThreshold::Slowdown
        ),
        Err(NvmlError::NotSupported)
    ));

    // The energy counter is not power × time: 700 ppm fast.
    let e = d0.total_energy_consumption().unwrap();
    let plain = ENERGY_START_MJ + 180_360 * 5;
    let skewed = ENERGY_START_MJ
        + (180_360.0 * 5_000.0 * (1.0 + f64::from(ENERGY_SKEW_PPM) / 1e6) / 1000.0) as u64;
    assert_eq!(e, skewed);
    assert_ne!(e, plain);
    assert_eq!(fields(&d0, &[(83, 0)]), vec![(0, skewed as f64)]);

    // NVML 13's versioned calls.
    let lib = nvml.lib();
    let mut t = b::nvmlTemperature_v1_t {
        version: (std::mem::size_of::<b::nvmlTemperature_v1_t>() | 1 << 24) as u32,
        sensorType: 0,
        temperature: 0,
    };
    // SAFETY: a live handle and a versioned struct.
    let r = unsafe { lib.nvmlDeviceGetTemperatureV.as_ref().unwrap()(d0.handle(), &mut t) };
    assert_eq!((r, t.temperature), (0, 38));
    t.version = 1 << 24; // wrong size: refused
                         // SAFETY: as above.
    let r = unsafe { lib.nvmlDeviceGetTemperatureV.as_ref().unwrap()(d0.handle(), &mut t) };
    assert_eq!(r, 25, "ARGUMENT_VERSION_MISMATCH");
    let mut m = b::nvmlMarginTemperature_v1_t {
        version: (std::mem::size_of::<b::nvmlMarginTemperature_v1_t>() | 1 << 24) as u32,
        marginTemperature: 0,
    };
    // SAFETY: as above.
    let r = unsafe { lib.nvmlDeviceGetMarginTemperature.as_ref().unwrap()(d0.handle(), &mut m) };
    assert_eq!((r, m.marginTemperature), (0, 49));

    // GPM: two samples under 100 ms apart are refused; 100 ms later, fine.
    let s1 = d0.gpm_sample().unwrap();
    let s2 = d0.gpm_sample().unwrap();
    let ids = [nvml_wrapper::enums::gpm::GpmMetricId::SmUtil];
    assert!(matches!(
        nvml_wrapper::gpm::gpm_metrics_get(&nvml, &s1, &s2, &ids),
        Err(NvmlError::InvalidArg)
    ));
    std::thread::sleep(std::time::Duration::from_millis(120));
    let s3 = d0.gpm_sample().unwrap();
    let got = nvml_wrapper::gpm::gpm_metrics_get(&nvml, &s1, &s3, &ids).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].as_ref().unwrap().value, 0.0);

    // GPM per MIG instance: GPU 1 in MIG mode, instance 1 with its own
    // values, instance 2 without GPM; GPU 0 not in MIG mode.
    let mut gpus = gb300_tray();
    gpus[1].mig_mode = Some(true);
    gpus[1].mig_instances = vec![
        FakeMig {
            gpu_instance: 1,
            profile: "3g.139gb".into(),
            gpm: Some(FakeGpm {
                sm_active_pct: 71,
                sm_occupancy_pct: 52,
                tensor_active_pct: 43,
                dram_active_pct: 34,
            }),
        },
        FakeMig {
            gpu_instance: 2,
            profile: "3g.139gb".into(),
            gpm: None,
        },
    ];
    write(gpus);
    let d1 = nvml.device_by_index(1).unwrap();
    assert!(matches!(d0.gpm_mig_sample(1), Err(NvmlError::NotSupported)));
    assert!(matches!(d1.gpm_mig_sample(9), Err(NvmlError::NotFound)));
    assert!(matches!(d1.gpm_mig_sample(2), Err(NvmlError::NotSupported)));
    let m1 = d1.gpm_mig_sample(1).unwrap();
    let board = d1.gpm_sample().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(120));
    let m2 = d1.gpm_mig_sample(1).unwrap();
    use nvml_wrapper::enums::gpm::GpmMetricId as G;
    let ids = [G::SmUtil, G::SmOccupancy, G::AnyTensorUtil, G::DramBwUtil];
    let got: Vec<f64> = nvml_wrapper::gpm::gpm_metrics_get(&nvml, &m1, &m2, &ids)
        .unwrap()
        .into_iter()
        .map(|m| m.unwrap().value)
        .collect();
    assert_eq!(got, vec![71.0, 52.0, 43.0, 34.0]);
    // An instance's sample and the board's do not pair.
    assert!(matches!(
        nvml_wrapper::gpm::gpm_metrics_get(&nvml, &board, &m2, &ids),
        Err(NvmlError::InvalidArg)
    ));
    // The instance id of a MIG device handle.
    let mig = d1.mig_device_by_index(1).unwrap();
    let mut gi = 0u32;
    // SAFETY: a live MIG handle and a valid out-pointer.
    let r = unsafe { lib.nvmlDeviceGetGpuInstanceId.as_ref().unwrap()(mig.handle(), &mut gi) };
    assert_eq!((r, gi), (0, 2));
    drop((m1, m2, board));
    write(gb300_tray());

    // Counts per symbol.
    reset_call_counts().unwrap();
    let _ = d0.power_usage();
    let _ = d0.power_usage();
    let _ = fields(&d0, &[(185, 1)]);
    let c = call_counts().unwrap();
    assert_eq!(c.get("nvmlDeviceGetPowerUsage"), Some(&2));
    assert_eq!(c.get("nvmlDeviceGetFieldValues"), Some(&1));
    assert_eq!(c.get("nvmlDeviceGetTemperatureV"), Some(&0));

    // An injected error: every call but identity answers it.
    let mut gpus = gb300_tray();
    gpus[3].error = Some(FakeError::ResetRequired);
    write(gpus);
    assert_eq!(d3.uuid().unwrap(), GB300.gpus[3].uuid);
    assert!(matches!(d3.power_usage(), Err(NvmlError::ResetRequired)));
    assert!(matches!(d3.memory_info(), Err(NvmlError::ResetRequired)));
    assert_eq!(d0.power_usage().unwrap(), 180_360);
}
