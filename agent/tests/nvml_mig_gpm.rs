//! GPM per MIG instance: a GB300 in MIG mode with three GPU instances, two
//! with GPM values of their own and one whose `nvmlGpmMigSampleGet` answers
//! "not supported". The real agent reads the fake library; its `/metrics`
//! carries each instance's ratios (`dcwatt_gpu_mig_*_ratio{mig_uuid,
//! gpu_instance}`) equal to what the library was given, the board's own GPM
//! beside them, nothing for the instance without GPM. Then the NVML calls
//! of a steady tick, counted by the library: still at most 4 per GPU with
//! the instances' GPM in the rotating slots, each instance read often
//! enough; and every GPM buffer freed when the agent stops.
//!
//! The library reads `DCWATT_FAKE_NVML_STATE` at init, a process-global: this
//! binary holds exactly one test function.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{must, promtool_check_metrics, value, Agent};
use dcwatt_fake_nvml::introspect::{call_counts, reset_call_counts};
use dcwatt_fake_nvml::profiles::gb300_tray;
use dcwatt_fake_nvml::{FakeGpm, FakeMig, FakeNode, LIB_PATH, STATE_ENV};

const NODE: &str = "mig-n1";

/// Calls made once per node per tick, by the XID thread, or at the stop.
const NODE_CALLS: [&str; 4] = [
    "nvmlDeviceGetCount_v2",
    "nvmlEventSetWait_v2",
    "nvmlGpmSampleFree",
    "nvmlShutdown",
];

/// The instances: GPU instance id, GPM (`None`: not supported).
fn instances() -> Vec<(u32, Option<FakeGpm>)> {
    vec![
        (
            1,
            Some(FakeGpm {
                sm_active_pct: 71,
                sm_occupancy_pct: 52,
                tensor_active_pct: 43,
                dram_active_pct: 34,
            }),
        ),
        (
            2,
            Some(FakeGpm {
                sm_active_pct: 12,
                sm_occupancy_pct: 9,
                tensor_active_pct: 0,
                dram_active_pct: 88,
            }),
        ),
        (5, None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpm_per_mig_instance() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    std::env::set_var(STATE_ENV, &state);
    // One GB300 of the tray profile, in MIG mode, its board busy too.
    let mut gpu = gb300_tray().remove(0);
    let uuid = gpu.uuid.clone();
    gpu.gpm = Some(FakeGpm {
        sm_active_pct: 40,
        sm_occupancy_pct: 30,
        tensor_active_pct: 20,
        dram_active_pct: 10,
    });
    gpu.mig_mode = Some(true);
    gpu.mig_instances = instances()
        .into_iter()
        .map(|(gi, gpm)| FakeMig {
            gpu_instance: gi,
            profile: "2g.70gb".into(),
            gpm,
        })
        .collect();
    FakeNode {
        driver: "580.95.05".into(),
        time_ms: dcwatt_agent::sources::now_ms() + 3_600_000,
        horizon_ms: None,
        init_fail: false,
        gpus: vec![gpu],
    }
    .write(&state)
    .unwrap();

    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "{NODE}"
[[sources]]
type = "nvml"
library = "{LIB_PATH}"
"#
    ))
    .await;
    let gpu_labels = format!(r#"node="{NODE}",gpu="0",uuid="{uuid}",model="NVIDIA GB300""#);
    let mig_uuid = |gi: u32| format!("MIG-{}-{gi}", &uuid[4..]);
    let series = |name: &str, gi: u32| {
        format!(
            r#"{name}{{{gpu_labels},mig_uuid="{}",gpu_instance="{gi}"}}"#,
            mig_uuid(gi)
        )
    };
    let text = agent
        .wait_for(Duration::from_secs(20), |t| {
            [1, 2]
                .iter()
                .all(|gi| value(t, &series("dcwatt_gpu_mig_dram_active_ratio", *gi)).is_some())
                && t.contains("dcwatt_gpu_sm_active_ratio{")
        })
        .await;

    // Each instance's ratios are its own values; the instance without GPM
    // is listed but has no ratios (absent, not 0).
    for (gi, gpm) in instances() {
        let info = format!(
            r#"dcwatt_gpu_mig_instance_info{{{gpu_labels},mig_uuid="{}",gpu_instance="{gi}",profile="2g.70gb"}}"#,
            mig_uuid(gi)
        );
        assert_eq!(must(&text, &info), 1.0, "{text}");
        let families = [
            "dcwatt_gpu_mig_sm_active_ratio",
            "dcwatt_gpu_mig_sm_occupancy_ratio",
            "dcwatt_gpu_mig_tensor_active_ratio",
            "dcwatt_gpu_mig_dram_active_ratio",
        ];
        match gpm {
            Some(p) => {
                let want = [
                    p.sm_active_pct,
                    p.sm_occupancy_pct,
                    p.tensor_active_pct,
                    p.dram_active_pct,
                ];
                for (fam, pct) in families.iter().zip(want) {
                    assert_eq!(
                        must(&text, &series(fam, gi)),
                        f64::from(pct) / 100.0,
                        "{fam} of instance {gi}\n{text}"
                    );
                }
            }
            None => {
                for fam in families {
                    assert!(
                        !text.contains(&series(fam, gi)),
                        "{fam} of instance {gi} without GPM\n{text}"
                    );
                }
            }
        }
    }
    // Two instances with GPM, four families each: nothing more.
    assert_eq!(text.matches("dcwatt_gpu_mig_sm_active_ratio{").count(), 2);
    assert_eq!(text.matches("gpu_instance=\"5\"").count(), 1, "{text}");
    // The board's GPM stays the board's, in its own families.
    assert_eq!(
        must(
            &text,
            &format!("dcwatt_gpu_sm_active_ratio{{{gpu_labels}}}")
        ),
        0.4
    );
    assert_eq!(text.matches("dcwatt_gpu_sm_active_ratio{").count(), 1);
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));

    // The budget of a steady tick with MIG on: the instances' GPM shares the
    // two rotating slots, so a tick stays at 4 calls.
    reset_call_counts().unwrap();
    let field_calls =
        |c: &BTreeMap<String, u64>| c.get("nvmlDeviceGetFieldValues").copied().unwrap_or(0);
    let mut counts = call_counts().unwrap();
    while field_calls(&counts) < 60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts = call_counts().unwrap();
    }
    agent.stop().await;
    let counts = call_counts().unwrap();
    let ticks = field_calls(&counts) as f64;
    let per_tick: BTreeMap<&String, f64> = counts
        .iter()
        .filter(|(name, _)| !NODE_CALLS.contains(&name.as_str()))
        .map(|(name, n)| (name, *n as f64 / ticks))
        .collect();
    let total: f64 = per_tick.values().sum();
    assert!(
        total <= 4.0 + 1e-9,
        "{total:.2} NVML calls per tick on a MIG GPU, budget 4: {per_tick:#?}"
    );
    eprintln!("calls per tick: {per_tick:#?}");
    let per = |name: &str| per_tick.get(&name.to_owned()).copied().unwrap_or(0.0);
    // The instance without GPM was asked once (learned), so every steady
    // instance sample is one of the two others': each at least every 10th
    // tick, and the board's GPM still at least every 5th.
    assert!(
        per("nvmlGpmMigSampleGet") >= 2.0 / 10.0,
        "instance GPM too rare: {per_tick:#?}"
    );
    assert!(
        per("nvmlGpmSampleGet") >= 1.0 / 5.0,
        "board GPM too rare: {per_tick:#?}"
    );
    // Every GPM buffer (the board's two, two per instance with GPM) is freed
    // at the stop (the control thread ends after the stop returns).
    let count = |name: &str| call_counts().unwrap().get(name).copied().unwrap_or(0);
    let alloc = count("nvmlGpmSampleAlloc");
    assert_eq!(alloc, 0, "no allocation in steady ticks: {counts:#?}");
    let mut freed = count("nvmlGpmSampleFree");
    for _ in 0..100 {
        if freed >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        freed = count("nvmlGpmSampleFree");
    }
    assert_eq!(freed, 6, "{:#?}", call_counts().unwrap());
}
