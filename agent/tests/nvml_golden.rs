//! An 8-GPU node through the fake `libnvidia-ml.so.1`: NVML missing at start
//! (the meter keeps being read, init is retried), then the golden `/metrics`
//! of the node (`tests/golden/nvml_8gpu_metrics.txt`, volatile lines
//! filtered; `UPDATE_GOLDEN=1` rewrites it), `promtool check metrics` clean,
//! and MIG: power and energy once per board, instances listed.
//!
//! The library reads `DCWATT_FAKE_NVML_STATE` at init, a process-global: this
//! binary holds exactly one test function.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{must, pdu_fixture, promtool_check_metrics, serve, value, Agent};
use dcwatt_fake_nvml::{FakeGpu, FakeMig, FakeNode, FakeXid, DEFAULT_DRIVER, LIB_PATH, STATE_ENV};

const METRICS: &str = "/redfish/v1/PowerEquipment/RackPDUs/1/Metrics";
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/nvml_8gpu_metrics.txt"
);

fn uuid(i: u32) -> String {
    format!("GPU-8e000000-0000-0000-0000-00000000000{i}")
}

/// Eight GB300s: mixed load; GPU 3 had an XID; GPU 5 has fans (an air-cooled
/// variant); GPUs 6 and 7 run MIG with two instances each.
fn gpus() -> Vec<FakeGpu> {
    (0..8u32)
        .map(|i| {
            let mut g = FakeGpu {
                index: i,
                uuid: uuid(i),
                power_mw: 900_000 + i * 25_000,
                energy_mj: 4_000_000_000 + u64::from(i) * 1_000_000,
                temp_c: 60 + i,
                mem_temp_c: 55 + i,
                util_gpu_pct: 50 + i * 5,
                util_mem_pct: 20 + i,
                mem_total_bytes: 288_000_000_000,
                mem_used_bytes: 150_000_000_000,
                power_limit_mw: 1_400_000,
                throttle_reasons: if i == 4 { 0x4 } else { 0 },
                lost: false,
                name: "NVIDIA GB300".into(),
                power_instant_mw: Some(910_000 + i * 25_000),
                power_default_limit_mw: Some(1_400_000),
                sm_clock_mhz: Some(1800 + i * 10),
                mem_clock_mhz: Some(3996),
                ecc_corrected: Some(u64::from(i)),
                ecc_uncorrected: Some(0),
                violation_power_ns: Some(u64::from(i) * 1_000_000_000),
                violation_thermal_ns: Some(0),
                pcie_gen: Some(6),
                pcie_width: Some(16),
                mig_mode: Some(i >= 6),
                ..FakeGpu::default()
            };
            if i == 5 {
                g.fans_pct = vec![40];
            }
            if i >= 6 {
                g.mig_instances = vec![
                    FakeMig {
                        gpu_instance: 1,
                        profile: "3g.141gb".into(),
                        gpm: None,
                    },
                    FakeMig {
                        gpu_instance: 2,
                        profile: "3g.141gb".into(),
                        gpm: None,
                    },
                ];
            }
            g
        })
        .collect()
}

fn write(path: &Path, init_fail: bool, gpus: Vec<FakeGpu>) {
    FakeNode {
        driver: DEFAULT_DRIVER.into(),
        // Energy counters hold still: a read before time_ms answers energy_mj.
        time_ms: dcwatt_agent::sources::now_ms() + 3_600_000,
        horizon_ms: None,
        init_fail,
        gpus,
    }
    .write(path)
    .unwrap();
}

/// Lines that change from run to run, or belong to the meter.
fn stable(text: &str) -> String {
    text.lines()
        .filter(|l| {
            !l.contains("dcwatt_source_duration_seconds")
                && !l.contains("dcwatt_source_errors_total")
                && !l.contains("dcwatt_meter_")
                && !l.contains("source=\"redfish")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_gpu_node_golden_and_mig() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    std::env::set_var(STATE_ENV, &state);
    let fixture = pdu_fixture();
    let meters = serve(Router::new().route(METRICS, get(move || async move { fixture }))).await;

    // NVML's driver is not loaded: the meter is read all the same.
    write(&state, true, gpus());
    let agent = Agent::start(&format!(
        r#"
interval = "200ms"
node = "r12-n03"
[[sources]]
type = "nvml"
library = "{LIB_PATH}"
[[sources]]
type = "redfish"
meter = "pdu-1"
url = "http://{meters}{METRICS}"
"#
    ))
    .await;
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, r#"dcwatt_source_errors_total{source="nvml"}"#).is_some_and(|v| v >= 2.0)
                && value(t, r#"dcwatt_meter_up{meter="pdu-1"}"#) == Some(1.0)
        })
        .await;
    assert_eq!(must(&text, r#"dcwatt_source_up{source="nvml"}"#), 0.0);
    assert!(!text.contains("dcwatt_gpu_up"), "{text}");

    // The driver loads: a later init attempt (after backoff) succeeds.
    write(&state, false, gpus());
    let text = agent
        .wait_for(Duration::from_secs(20), |t| {
            value(t, r#"dcwatt_source_up{source="nvml"}"#) == Some(1.0)
                && (0..8).all(|i| {
                    value(
                        t,
                        &format!(
                            r#"dcwatt_gpu_up{{node="r12-n03",gpu="{i}",uuid="{}"}}"#,
                            uuid(i)
                        ),
                    ) == Some(1.0)
                })
        })
        .await;

    // MIG: energy and power once per board, never per instance.
    let energy: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("dcwatt_gpu_energy_joules_total{"))
        .collect();
    assert_eq!(energy.len(), 8, "{text}");
    assert!(energy.iter().all(|l| !l.contains("MIG-")), "{text}");
    let power = text
        .lines()
        .filter(|l| l.starts_with("dcwatt_gpu_power_watts{"))
        .count();
    assert_eq!(power, 8, "{text}");
    let instances: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("dcwatt_gpu_mig_instance_info{"))
        .collect();
    assert_eq!(instances.len(), 4, "{text}");
    let mig_uuid = format!("MIG-{}-1", &uuid(6)[4..]);
    assert!(
        instances.iter().any(|l| l.contains(&format!(
            r#"gpu="6",uuid="{}",model="NVIDIA GB300",mig_uuid="{mig_uuid}",gpu_instance="1",profile="3g.141gb"}} 1"#,
            uuid(6)
        ))),
        "{text}"
    );

    // An XID on GPU 3 so that the golden file shows the family.
    let mut with_xid = gpus();
    with_xid[3].xids = vec![FakeXid { id: 1, code: 94 }];
    write(&state, false, with_xid);
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            t.contains(r#"dcwatt_gpu_xid_errors_total{node="r12-n03",gpu="3""#)
        })
        .await;
    agent.stop().await;

    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    let got = stable(&text);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(Path::new(GOLDEN).parent().unwrap()).unwrap();
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN)
        .unwrap_or_else(|e| panic!("{GOLDEN}: {e}; run with UPDATE_GOLDEN=1"));
    assert!(
        got == want,
        "/metrics changed: rerun with UPDATE_GOLDEN=1 and review the diff\n--- got ---\n{got}"
    );
}
