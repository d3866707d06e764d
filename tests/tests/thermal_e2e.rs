//! Thermal excursions through every real part: the simulator heats one GPU
//! (a blocked cold plate), the fake NVML reports its temperature, its own
//! thresholds and hardware thermal slowdown, the agent ships them, and the
//! collector opens excursions for that GPU only, then closes them when it
//! cools down.

use std::collections::BTreeSet;
use std::time::Duration;

use dcwatt_sim::launch::{launch, LaunchOptions};
use dcwatt_tests::{get_json, get_text, sample, spawn_sim, wait_for};
use serde_json::{json, Value};

async fn heat(sim: &str, gpu: &str, celsius: f64) {
    let r = reqwest::Client::new()
        .post(format!("{sim}/sim/fault"))
        .json(&json!({"kind": "heat_gpu", "gpu": gpu, "celsius": celsius}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The open excursions: (GPU, kind).
fn open(summary: &Value) -> BTreeSet<(String, String)> {
    summary["thermal_excursions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["entity"].as_str().unwrap_or_default().to_owned(),
                e["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_gpu_opens_and_closes_excursions_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _) = spawn_sim(dir.path(), 1, 2, 4, 3);
    let opts = LaunchOptions {
        dir: dir.path().to_path_buf(),
        interval: "500ms".into(),
        log_filter: "info".into(),
        mirror: false,
        collector_extra: "\n[thermal]\nmin_duration = \"1s\"\n".into(),
    };
    let dep = launch(&sim.url(), &opts).await.unwrap();
    let summary_url = format!("{}/v1/summary", dep.collector.url());
    let hot = dep.site.nodes[0].gpus[1].clone();
    let gpus: usize = dep.site.nodes.iter().map(|n| n.gpus.len()).sum();

    // Every GPU reports, with its own slowdown threshold, and none is hot.
    wait_for("every GPU reporting", Duration::from_secs(60), || async {
        let s = get_json(&summary_url).await;
        (s["gpus"]["reporting"].as_u64()? as usize == gpus).then_some(())
    })
    .await;
    let m = get_text(&format!("{}/metrics", dep.agents[0].url())).await;
    assert!(
        m.lines().any(
            |l| l.starts_with("dcwatt_gpu_temperature_threshold_celsius{")
                && l.contains(&hot)
                && l.contains("threshold=\"slowdown\"")
                && l.ends_with(" 90")
        ),
        "{m}"
    );
    assert!(open(&get_json(&summary_url).await).is_empty());

    // 60 °C more: past its slowdown threshold, so thermally throttled too.
    heat(&sim.url(), &hot, 60.0).await;
    let found = wait_for("excursions open", Duration::from_secs(60), || async {
        let o = open(&get_json(&summary_url).await);
        o.contains(&(hot.clone(), "thermal_slowdown".into()))
            .then_some(o)
    })
    .await;
    assert!(
        found.contains(&(hot.clone(), "gpu_temperature".into())),
        "{found:?}"
    );
    assert!(
        found.iter().all(|(gpu, _)| *gpu == hot),
        "only the heated GPU: {found:?}"
    );
    let m = get_text(&format!("{}/metrics", dep.agents[0].url())).await;
    let throttled = m.lines().any(|l| {
        l.starts_with("dcwatt_gpu_throttle_active{")
            && l.contains(&hot)
            && l.contains("reason=\"hw_thermal_slowdown\"")
            && l.ends_with(" 1")
    });
    assert!(throttled, "{m}");
    let c = get_text(&format!("{}/metrics", dep.collector.url())).await;
    assert_eq!(
        sample(&c, "dcwatt_gpus_in_thermal_excursion{zone=\"default\"}"),
        Some(1.0),
        "{c}"
    );

    // Cooled: every excursion closes, each counted once.
    heat(&sim.url(), &hot, 0.0).await;
    wait_for("excursions closed", Duration::from_secs(60), || async {
        open(&get_json(&summary_url).await).is_empty().then_some(())
    })
    .await;
    let c = get_text(&format!("{}/metrics", dep.collector.url())).await;
    for kind in ["gpu_temperature", "thermal_slowdown"] {
        assert_eq!(
            sample(
                &c,
                &format!("dcwatt_thermal_excursions_total{{zone=\"default\",kind=\"{kind}\"}}")
            ),
            Some(1.0),
            "{kind}: {c}"
        );
    }
    assert_eq!(
        sample(&c, "dcwatt_gpus_in_thermal_excursion{zone=\"default\"}"),
        Some(0.0)
    );
}
