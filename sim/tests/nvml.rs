//! The simulator's fake NVML state files read through the fake library and
//! `nvml-wrapper`, as an agent reads them: the energy counter never runs
//! backwards across the per-tick rewrites, and it agrees with `/sim/truth`.
//! Writes only a temporary directory. One test: one library instance and one
//! environment per process.

use std::ffi::OsStr;
use std::time::Duration;

use dcwatt_fake_nvml::{LIB_PATH, STATE_ENV};
use dcwatt_sim::{now_ms, Sim, SimConfig};
use nvml_wrapper::Nvml;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_counters_are_monotonic_and_true() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimConfig {
        racks: 1,
        nodes_per_rack: 2,
        gpus_per_node: 4,
        seed: 11,
        state_dir: dir.path().to_path_buf(),
    })
    .unwrap();
    let state_file = sim.state_files()[1].clone();
    let uuid = sim.hall().nodes().nth(1).unwrap().gpus[3].clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sim.serve(listener, async {
        let _ = stopped.await;
    }));

    std::env::set_var(STATE_ENV, &state_file);
    let nvml = Nvml::builder()
        .lib_path(OsStr::new(LIB_PATH))
        .init()
        .unwrap();
    assert_eq!(nvml.device_count().unwrap(), 4);
    let device = nvml.device_by_index(3).unwrap();
    assert_eq!(device.uuid().unwrap(), uuid);
    assert_eq!(device.name().unwrap(), "NVIDIA GB300");

    // Read fast across ~25 tick rewrites.
    let read = || {
        let before = now_ms();
        let mj = device.total_energy_consumption().unwrap();
        (before, mj, now_ms() + 1)
    };
    let first = read();
    let mut last = first;
    let deadline = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < deadline {
        let r = read();
        assert!(
            r.1 >= last.1,
            "counter went back from {} to {} mJ",
            last.1,
            r.1
        );
        last = r;
        let p = device.power_usage().unwrap();
        assert!((100_000..=1_400_000).contains(&p), "{p} mW");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    // Against the truth: exact but for a publication lead (ms at ≤ 1400 W) at each end.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let client = reqwest::Client::new();
    let truth = |from: i64, to: i64| {
        let url = format!("{base}/sim/truth?entity=gpu:{uuid}&from_ms={from}&to_ms={to}");
        let client = client.clone();
        async move {
            let body: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            body["joules"].as_f64().unwrap()
        }
    };
    let counted = (last.1 - first.1) as f64 / 1000.0;
    let most = truth(first.0, last.2).await + 20.0;
    let least = truth(first.2, last.0).await - 20.0;
    assert!(
        least <= counted && counted <= most,
        "{least} <= {counted} <= {most}"
    );

    nvml.shutdown().unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
