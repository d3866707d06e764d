//! Nothing lost across a collector crash: the collector is killed with SIGKILL
//! while the agents keep measuring and spooling, stays down for seconds, and
//! restarts on its database. Every agent's backlog is replayed, and each
//! meter's energy as the collector counted it equals the simulator's ground
//! truth over the same span: nothing lost in the outage, nothing counted twice
//! by the replay.

use std::time::Duration;

use dcwatt_sim::launch::{launch, LaunchOptions, Proc};
use dcwatt_tests::{get_json, get_text, sample, spawn_sim, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_collector_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _) = spawn_sim(dir.path(), 2, 1, 2, 3);
    let sim_url = sim.url();
    let opts = LaunchOptions {
        dir: dir.path().to_path_buf(),
        interval: "200ms".into(),
        log_filter: "info".into(),
        mirror: false,
        collector_extra: String::new(),
    };
    let mut dep = launch(&sim_url, &opts).await.unwrap();
    let summary = |url: String| async move { get_json(&format!("{url}/v1/summary")).await };
    let url = dep.collector.url();
    wait_for("every meter reporting", Duration::from_secs(60), || {
        let url = url.clone();
        async move { (summary(url).await["meters_reporting_ratio"].as_f64() == Some(1.0)).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Down for four seconds: twenty ticks per agent pile up in the spools.
    let crashed_at = dcwatt_sim::now_ms();
    dep.crash_and_restart_collector(Duration::from_secs(4))
        .unwrap();
    assert_eq!(dep.collector.url(), url, "restarted on the same address");
    let agent_urls: Vec<String> = dep.agents.iter().map(Proc::url).collect();
    wait_for("every backlog delivered", Duration::from_secs(60), || {
        let agent_urls = agent_urls.clone();
        async move {
            for a in &agent_urls {
                let m = get_text(&format!("{a}/metrics")).await;
                assert_eq!(
                    sample(&m, "dcwatt_spool_dropped_batches_total"),
                    Some(0.0),
                    "{a}"
                );
                let waiting = m
                    .lines()
                    .filter(|l| l.starts_with("dcwatt_ship_queue_batches{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>();
                if waiting > 2.0 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    for a in &mut dep.agents {
        a.terminate();
    }
    let s = summary(url.clone()).await;
    for m in s["meters"].as_array().unwrap() {
        let id = m["id"].as_str().unwrap();
        // The water meter counts m³: its truth is a volume.
        let water = m["role"] == "water";
        let got = if water {
            m["water_cubic_meters"].as_f64().unwrap()
        } else {
            m["energy_joules"].as_f64().unwrap()
        };
        let (from, to) = (
            m["energy_from_ms"].as_i64().unwrap(),
            m["energy_to_ms"].as_i64().unwrap(),
        );
        // Counting began before the crash: the state came back from the database.
        assert!(
            from < crashed_at - 1_000 && to > crashed_at + 4_000,
            "{id}: counted over {from}..{to}, crash at {crashed_at}"
        );
        let kind = if water { "water" } else { "meter" };
        let truth = get_json(&format!(
            "{sim_url}/sim/truth?entity={kind}:{id}&from_ms={from}&to_ms={to}"
        ))
        .await;
        let want = truth[if water { "cubic_meters" } else { "joules" }]
            .as_f64()
            .unwrap();
        assert!(
            ((got - want) / want).abs() < 0.002,
            "{id}: collector {got} J, truth {want} J"
        );
        assert_eq!(m["gaps"].as_u64(), Some(0), "{m}");
    }
    // The restart was real: the new process applied each agent's backlog (as
    // one or a few merged requests), and at most the one batch per agent whose
    // answer the crash cut off came back as a duplicate (its sequence number
    // was in the database).
    let metrics = get_text(&format!("{url}/metrics")).await;
    let agents = dep.agents.len() as f64;
    let ok = sample(&metrics, r#"dcwatt_ingest_batches_total{result="ok"}"#).unwrap_or(0.0);
    let duplicates = sample(
        &metrics,
        r#"dcwatt_ingest_batches_total{result="duplicate"}"#,
    )
    .unwrap_or(0.0);
    assert!(
        ok >= agents && duplicates <= agents,
        "ok {ok}, duplicates {duplicates}\n{metrics}"
    );
}
