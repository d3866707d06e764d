//! A GB200 tray (`sim/fake-nvml/captures/qx-gb200.xml`): every GPU in PCI
//! domain 0000, so only the board serial tells the two superchips apart. The
//! agent must group GPUs 0+1 and 2+3 (as the capture's serials do), not all
//! four (as pairing by PCI domain would), and report each module's power once,
//! as the capture gives it.
//!
//! The library reads `DCWATT_FAKE_NVML_STATE` at init, a process-global: this
//! binary holds exactly one test function.

mod common;

use std::time::Duration;

use common::{must, Agent};
use dcwatt_fake_nvml::capture::{self, number, path};
use dcwatt_fake_nvml::profiles::gb200_tray;
use dcwatt_fake_nvml::{FakeNode, LIB_PATH, STATE_ENV};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gb200_modules_by_serial() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    std::env::set_var(STATE_ENV, &state);
    let xml = capture::read("qx-gb200.xml").expect("the GB200 capture");
    FakeNode {
        driver: path(&xml, "driver_version").unwrap().to_owned(),
        time_ms: dcwatt_agent::sources::now_ms() + 3_600_000,
        horizon_ms: None,
        init_fail: false,
        gpus: gb200_tray(),
    }
    .write(&state)
    .unwrap();
    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "gb200-n1"
[[sources]]
type = "nvml"
library = "{LIB_PATH}"
"#
    ))
    .await;
    let text = agent
        .wait_for(Duration::from_secs(20), |t| {
            t.matches("dcwatt_module_power_watts{").count() == 2
        })
        .await;
    agent.stop().await;

    let gpus = capture::gpus(&xml);
    let serial = |i: usize| path(gpus[i], "serial").unwrap();
    assert_eq!(serial(0), serial(1));
    assert_eq!(serial(2), serial(3));
    for (members, first) in [("0,1", 0), ("2,3", 2)] {
        let id = format!("sn-{}", serial(first));
        assert_eq!(
            must(
                &text,
                &format!(r#"dcwatt_module_info{{node="gb200-n1",module="{id}",gpus="{members}"}}"#)
            ),
            1.0,
            "{text}"
        );
        let want = number(
            path(gpus[first], "module_power_readings/average_power_draw").unwrap(),
            "W",
        )
        .unwrap();
        let got = must(
            &text,
            &format!(r#"dcwatt_module_power_watts{{node="gb200-n1",module="{id}"}}"#),
        );
        assert!((got - want).abs() < 1e-9, "{id}: {got} W, capture {want} W");
    }
}
