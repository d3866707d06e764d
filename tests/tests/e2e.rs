//! The whole pipeline as real processes on 127.0.0.1: the simulator (Redfish
//! meters over HTTP, fake NVML state), one agent per node loading the fake
//! `libnvidia-ml.so.1` through nvml-wrapper, a gateway agent for the facility
//! meters, and the collector. The collector's energies and PUE are checked
//! against the simulator's ground truth, across a meter counter reset and a GPU
//! counter reset.

use std::time::Duration;

use dcwatt_sim::launch::{launch, LaunchOptions};
use dcwatt_tests::{get_json, get_text, promtool_check_metrics, spawn_sim, wait_for};
use serde_json::{json, Value};

async fn truth(sim: &str, entity: &str, from_ms: i64, to_ms: i64) -> f64 {
    let v = get_json(&format!(
        "{sim}/sim/truth?entity={entity}&from_ms={from_ms}&to_ms={to_ms}"
    ))
    .await;
    // Energy in J; a water meter's volume in m³.
    v["joules"]
        .as_f64()
        .or_else(|| v["cubic_meters"].as_f64())
        .unwrap_or_else(|| panic!("truth for {entity}: {v}"))
}

async fn fault(sim: &str, body: Value) -> i64 {
    let v: Value = reqwest::Client::new()
        .post(format!("{sim}/sim/fault"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["at_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("fault {body}: {v}"))
}

fn rel_err(got: f64, want: f64) -> f64 {
    ((got - want) / want).abs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hall_energy_and_pue_match_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _) = spawn_sim(dir.path(), 2, 1, 4, 7);
    let sim_url = sim.url();
    let opts = LaunchOptions {
        dir: dir.path().to_path_buf(),
        interval: "200ms".into(),
        log_filter: "info".into(),
        mirror: false,
        collector_extra: String::new(),
    };
    let mut dep = launch(&sim_url, &opts).await.unwrap();
    assert!(dep.agents.len() >= 3, "two node agents and a gateway");
    let summary_url = format!("{}/v1/summary", dep.collector.url());
    let gpu_count: usize = dep.site.nodes.iter().map(|n| n.gpus.len()).sum();

    // Every meter and every GPU reporting.
    wait_for("full coverage", Duration::from_secs(60), || async {
        let s = get_json(&summary_url).await;
        let ready = s["meters_reporting_ratio"].as_f64() == Some(1.0)
            && s["gpus"]["reporting"].as_u64() == Some(gpu_count as u64);
        ready.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Faults: a rack PDU's energy counter and one GPU's NVML counter restart from zero.
    let reset_meter = "pdu-r1";
    let meter_reset_at = fault(
        &sim_url,
        json!({"kind": "reset_meter_counter", "meter": reset_meter}),
    )
    .await;
    let gpu = dep.site.nodes[0].gpus[0].clone();
    fault(&sim_url, json!({"kind": "reset_gpu_counter", "gpu": gpu})).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Every exporter's /metrics passes promtool.
    let collector_metrics = get_text(&format!("{}/metrics", dep.collector.url())).await;
    promtool_check_metrics(&collector_metrics)
        .unwrap_or_else(|e| panic!("collector /metrics: {e}\n{collector_metrics}"));
    for a in &dep.agents {
        let text = get_text(&format!("{}/metrics", a.url())).await;
        promtool_check_metrics(&text)
            .unwrap_or_else(|e| panic!("{} /metrics: {e}\n{text}", a.name));
        assert!(text.contains("dcwatt_source_up"), "{}: {text}", a.name);
    }
    let node_metrics = get_text(&format!("{}/metrics", dep.agents[0].url())).await;
    assert!(
        node_metrics.contains("dcwatt_gpu_energy_joules_total{"),
        "{node_metrics}"
    );

    // Stop the agents, then compare what the collector counted with the truth.
    for a in &mut dep.agents {
        a.terminate();
    }
    let s = get_json(&summary_url).await;
    let mut by_role: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for m in s["meters"].as_array().unwrap() {
        let id = m["id"].as_str().unwrap();
        // The water meter (http_json, litres) counts m³ and no energy.
        let water = m["role"] == "water";
        let got = if water {
            assert_eq!(m["energy_joules"].as_f64(), Some(0.0), "{m}");
            m["water_cubic_meters"].as_f64().unwrap()
        } else {
            m["energy_joules"].as_f64().unwrap()
        };
        let entity = format!("{}:{id}", if water { "water" } else { "meter" });
        let (from, to) = (
            m["energy_from_ms"].as_i64().unwrap(),
            m["energy_to_ms"].as_i64().unwrap(),
        );
        assert!(to - from > 5_000, "{id}: counted over {from}..{to} only");
        let mut want = truth(&sim_url, &entity, from, to).await;
        if id == reset_meter {
            // The energy between the last reading before the reset and the reset
            // itself is unknowable from a counter: what the collector must count
            // is everything else, once.
            assert_eq!(m["resets"].as_u64(), Some(1), "{m}");
            let before = m["last_reset"]["before_ms"].as_i64().unwrap();
            let after = m["last_reset"]["after_ms"].as_i64().unwrap();
            assert!(
                before <= meter_reset_at && meter_reset_at <= after,
                "{m} vs reset at {meter_reset_at}"
            );
            want -= truth(&sim_url, &format!("meter:{id}"), before, meter_reset_at).await;
        } else {
            assert_eq!(m["resets"].as_u64(), Some(0), "{m}");
        }
        assert!(
            rel_err(got, want) < 0.002,
            "{id}: collector {got}, truth {want} (J, or m³ for water)"
        );
        let e = by_role
            .entry(m["role"].as_str().unwrap().to_owned())
            .or_default();
        e.0 += got;
        e.1 += want;
    }
    for (role, (got, want)) in &by_role {
        assert!(
            rel_err(*got, *want) < 0.005,
            "{role}: collector {got} J, truth {want} J"
        );
    }

    // The live PUE over the span the collector cut, every meter at the same
    // instants, against the truth over that very span.
    let hour = &s["pue_live"];
    let (a, b) = (
        hour["from_ms"].as_i64().unwrap(),
        hour["to_ms"].as_i64().unwrap(),
    );
    let mut want = std::collections::BTreeMap::<&str, f64>::new();
    for m in dep.site.meters.iter() {
        *want.entry(m.role.as_str()).or_default() +=
            truth(&sim_url, &format!("meter:{}", m.id), a, b).await;
    }
    // Less the slice before the reset that no counter can show.
    let reset = s["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == reset_meter)
        .unwrap();
    let before = reset["last_reset"]["before_ms"].as_i64().unwrap();
    *want.get_mut("it").unwrap() -= truth(
        &sim_url,
        &format!("meter:{reset_meter}"),
        before,
        meter_reset_at,
    )
    .await;
    // Facility and IT always (they bound the span); other roles where their
    // meters cover it.
    let roles = hour["energy_joules"].as_object().unwrap();
    assert!(
        roles.contains_key("facility") && roles.contains_key("it"),
        "{hour}"
    );
    for (role, got) in roles {
        let got = got.as_f64().unwrap();
        let want = want[role.as_str()];
        assert!(
            rel_err(got, want) < 0.005,
            "window {role}: collector {got} J, truth {want} J"
        );
    }
    let pue = hour["pue"]
        .as_f64()
        .unwrap_or_else(|| panic!("no PUE: {hour}"));
    let true_pue = want["facility"] / want["it"];
    assert!(
        rel_err(pue, true_pue) < 0.005,
        "PUE {pue}, truth {true_pue}"
    );
    assert!((1.1..1.4).contains(&true_pue), "simulated PUE {true_pue}");
    assert_eq!(
        hour["complete"], false,
        "a few seconds are not five minutes: {hour}"
    );
    assert_eq!(
        s["category"].as_u64(),
        Some(2),
        "IT measured at PDU outputs"
    );
    assert_eq!(s["gpus"]["count"].as_u64(), Some(gpu_count as u64));
    assert_eq!(
        s["gpus"]["counter_resets"].as_u64(),
        Some(1),
        "{}",
        s["gpus"]
    );
}
