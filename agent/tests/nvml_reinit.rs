//! NVML re-initialisation frees what the agent held of the old library
//! instance: the GPM sample buffers of every GPU. The driver "goes away"
//! (`nvmlDeviceGetCount_v2` fails), comes back, and the agent initialises
//! NVML again; the fake library counts `nvmlGpmSampleAlloc` and
//! `nvmlGpmSampleFree`, so a leak shows as more allocations than frees plus
//! the two live buffers per GPU.
//!
//! The library reads `DCWATT_FAKE_NVML_STATE` at init, a process-global: this
//! binary holds exactly one test function.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{value, Agent};
use dcwatt_fake_nvml::introspect::call_counts;
use dcwatt_fake_nvml::profiles::gb300_tray;
use dcwatt_fake_nvml::{FakeNode, LIB_PATH, STATE_ENV};

fn write(path: &Path, count_fail: bool) {
    let tmp = path.with_extension("build");
    FakeNode {
        driver: "580.95.05".into(),
        time_ms: dcwatt_agent::sources::now_ms() + 3_600_000,
        horizon_ms: None,
        init_fail: false,
        gpus: gb300_tray(),
    }
    .write(&tmp)
    .unwrap();
    let mut text = std::fs::read_to_string(&tmp).unwrap();
    if count_fail {
        text.push_str("count_fail 1\n");
    }
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn count(name: &str) -> u64 {
    call_counts().unwrap().get(name).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpm_buffers_are_freed_on_reinit() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    std::env::set_var(STATE_ENV, &state);
    write(&state, false);
    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "n1"
[[sources]]
type = "nvml"
library = "{LIB_PATH}"
"#
    ))
    .await;
    let gpm_up = |t: &str| t.matches("dcwatt_gpu_sm_active_ratio{").count() == 4;
    agent.wait_for(Duration::from_secs(20), gpm_up).await;
    assert_eq!(count("nvmlGpmSampleAlloc"), 8);
    assert_eq!(count("nvmlGpmSampleFree"), 0);

    // The driver goes away under the agent: the source fails, NVML is let go.
    write(&state, true);
    agent
        .wait_for(Duration::from_secs(20), |t| {
            value(t, r#"dcwatt_source_up{source="nvml"}"#) == Some(0.0)
        })
        .await;
    // Back: a new init, new buffers; the old ones were freed first.
    write(&state, false);
    agent
        .wait_for(Duration::from_secs(30), |t| {
            value(t, r#"dcwatt_source_up{source="nvml"}"#) == Some(1.0) && gpm_up(t)
        })
        .await;
    let (alloc, free) = (count("nvmlGpmSampleAlloc"), count("nvmlGpmSampleFree"));
    assert!(count("nvmlInit_v2") >= 2, "no re-init");
    assert_eq!(alloc, 16, "allocated {alloc}, freed {free}");
    assert_eq!(alloc - free, 8, "allocated {alloc}, freed {free}");
    agent.stop().await;
}
