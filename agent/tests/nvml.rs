//! NVML through the fake `libnvidia-ml.so.1` (`sim/fake-nvml`), driven by a
//! state file. The library reads `DCWATT_FAKE_NVML_STATE` at init, a
//! process-global: this binary holds exactly one test function.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use dcwatt_wire::{Batch, Entity, Quantity};

use common::{must, value, Agent};
use dcwatt_fake_nvml::{write_state, FakeGpu, DEFAULT_DRIVER, LIB_PATH, STATE_ENV};

const UUID0: &str = "GPU-2b7f0000-0000-0000-0000-000000000000";
const UUID1: &str = "GPU-2b7f0000-0000-0000-0000-000000000001";
const UUID2: &str = "GPU-2b7f0000-0000-0000-0000-000000000002";

fn gpus(lost1: bool) -> Vec<FakeGpu> {
    vec![
        FakeGpu {
            index: 0,
            uuid: UUID0.into(),
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
        },
        FakeGpu {
            index: 1,
            uuid: UUID1.into(),
            power_mw: 250_500,
            energy_mj: 1_234_567,
            temp_c: 45,
            mem_temp_c: 50,
            util_gpu_pct: 7,
            util_mem_pct: 0,
            mem_total_bytes: 288_000_000_000,
            mem_used_bytes: 1_000_000,
            power_limit_mw: 1_200_000,
            throttle_reasons: 0,
            lost: lost1,
            name: "NVIDIA GB300".into(),
            ..FakeGpu::default()
        },
    ]
}

/// Publishes GPU state whose energy counters hold still: `time_ms` lies an hour
/// ahead, and a read before `time_ms` answers `energy_mj` exactly.
fn publish(path: &Path, gpus: &[FakeGpu]) {
    let ahead = dcwatt_agent::sources::now_ms() + 3_600_000;
    write_state(path, DEFAULT_DRIVER, ahead, gpus).unwrap();
}

fn series(name: &str, gpu: u32, uuid: &str) -> String {
    format!(r#"{name}{{node="r1-n1",gpu="{gpu}",uuid="{uuid}",model="NVIDIA GB300"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_through_the_fake_library() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    // Set before any NVML init; this binary's only test.
    std::env::set_var(STATE_ENV, &state);

    // A collector that records every batch.
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

    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "r1-n1"
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

    // No state file yet: the driver is "not loaded"; the source is down and
    // init is retried each tick.
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, r#"dcwatt_source_errors_total{source="nvml"}"#).is_some_and(|v| v >= 2.0)
        })
        .await;
    assert_eq!(must(&text, r#"dcwatt_source_up{source="nvml"}"#), 0.0);
    assert!(!text.contains("dcwatt_gpu_up"), "{text}");

    // The driver appears: init succeeds on a later tick.
    publish(&state, &gpus(false));
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, r#"dcwatt_source_up{source="nvml"}"#) == Some(1.0)
                && value(t, &series("dcwatt_gpu_power_watts", 1, UUID1)).is_some()
        })
        .await;
    assert_eq!(
        must(&text, &series("dcwatt_gpu_power_watts", 0, UUID0)),
        1100.0
    );
    assert_eq!(
        must(&text, &series("dcwatt_gpu_power_watts", 1, UUID1)),
        250.5
    );
    assert_eq!(
        must(&text, &series("dcwatt_gpu_energy_joules_total", 0, UUID0)),
        523_000.0
    );
    assert_eq!(
        must(&text, &series("dcwatt_gpu_energy_joules_total", 1, UUID1)),
        1_234.567
    );
    let temp = |gpu, uuid, sensor: &str| {
        format!(
            r#"dcwatt_gpu_temperature_celsius{{node="r1-n1",gpu="{gpu}",uuid="{uuid}",model="NVIDIA GB300",sensor="{sensor}"}}"#
        )
    };
    assert_eq!(must(&text, &temp(0, UUID0, "gpu")), 71.0);
    assert_eq!(must(&text, &temp(0, UUID0, "memory")), 66.0);
    assert_eq!(must(&text, &temp(1, UUID1, "gpu")), 45.0);
    assert_eq!(
        must(&text, &series("dcwatt_gpu_utilization_ratio", 0, UUID0)),
        0.95
    );
    assert_eq!(
        must(&text, &series("dcwatt_gpu_utilization_ratio", 1, UUID1)),
        0.07
    );
    assert_eq!(
        must(
            &text,
            &series("dcwatt_gpu_memory_utilization_ratio", 0, UUID0)
        ),
        0.4
    );
    assert_eq!(
        must(&text, &series("dcwatt_gpu_memory_used_bytes", 0, UUID0)),
        190e9
    );
    assert_eq!(
        must(&text, &series("dcwatt_gpu_memory_total_bytes", 0, UUID0)),
        288e9
    );
    assert_eq!(
        must(&text, &series("dcwatt_gpu_power_limit_watts", 0, UUID0)),
        1400.0
    );
    assert_eq!(
        must(&text, &series("dcwatt_gpu_power_limit_watts", 1, UUID1)),
        1200.0
    );
    let up = |gpu, uuid| format!(r#"dcwatt_gpu_up{{node="r1-n1",gpu="{gpu}",uuid="{uuid}"}}"#);
    assert_eq!(must(&text, &up(0, UUID0)), 1.0);
    assert_eq!(must(&text, &up(1, UUID1)), 1.0);
    assert!(
        text.contains("# TYPE dcwatt_gpu_energy_joules_total counter"),
        "{text}"
    );

    // The same values went to the collector, with the GPUs' identities.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let batch = loop {
        let found = received
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|b| b.gpus.len() == 2)
            .cloned();
        match found {
            Some(b) => break b,
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            None => panic!("no batch with both GPUs"),
        }
    };
    assert_eq!(batch.gpus[0].uuid, UUID0);
    assert_eq!(batch.gpus[1].index, 1);
    assert_eq!(batch.gpus[1].model, "NVIDIA GB300");
    let get = |uuid: &str, q: Quantity| {
        batch
            .readings
            .iter()
            .find(|r| r.entity == Entity::Gpu(uuid.into()) && r.quantity == q)
            .map(|r| r.value)
    };
    assert_eq!(get(UUID0, Quantity::PowerWatts), Some(1100.0));
    assert_eq!(get(UUID0, Quantity::EnergyJoules), Some(523_000.0));
    assert_eq!(get(UUID0, Quantity::MemoryTemperatureCelsius), Some(66.0));
    assert_eq!(get(UUID1, Quantity::UtilizationRatio), Some(0.07));
    assert_eq!(get(UUID1, Quantity::MemoryTotalBytes), Some(288e9));

    // GPU 1 falls off the bus: it goes down, GPU 0 and the source keep going.
    publish(&state, &gpus(true));
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &up(1, UUID1)) == Some(0.0)
        })
        .await;
    assert_eq!(must(&text, &up(0, UUID0)), 1.0);
    assert_eq!(
        must(&text, &series("dcwatt_gpu_power_watts", 0, UUID0)),
        1100.0
    );
    assert_eq!(
        value(&text, &series("dcwatt_gpu_power_watts", 1, UUID1)),
        None
    );
    assert_eq!(must(&text, r#"dcwatt_source_up{source="nvml"}"#), 1.0);

    // It comes back.
    publish(&state, &gpus(false));
    agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &up(1, UUID1)) == Some(1.0)
                && value(t, &series("dcwatt_gpu_power_watts", 1, UUID1)) == Some(250.5)
        })
        .await;

    // A third GPU appears (hot-plugged, or the driver finished enumerating):
    // it is picked up, and registered for XID events.
    let mut three = gpus(false);
    let mut g2 = three[1].clone();
    g2.index = 2;
    g2.uuid = UUID2.into();
    three.push(g2.clone());
    publish(&state, &three);
    agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, &up(2, UUID2)) == Some(1.0)
                && value(t, &series("dcwatt_gpu_power_watts", 2, UUID2)) == Some(250.5)
        })
        .await;
    three[2].xids = vec![dcwatt_fake_nvml::FakeXid { id: 1, code: 13 }];
    publish(&state, &three);
    agent
        .wait_for(Duration::from_secs(10), |t| {
            value(
                t,
                &format!(
                    r#"dcwatt_gpu_xid_errors_total{{node="r1-n1",gpu="2",uuid="{UUID2}",model="NVIDIA GB300",xid="13"}}"#
                ),
            ) == Some(1.0)
        })
        .await;

    agent.stop().await;
}
