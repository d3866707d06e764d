//! Outages against the real processes: the simulator, a primary and a mirror
//! collector, and one spooling agent per node plus the facility gateway.
//!
//! The mirror is frozen (SIGSTOP) for a long time; inside that time the primary
//! is frozen too, while the agents keep measuring. The primary must catch up on
//! its own while the mirror is still frozen; then the mirror catches up. The
//! agents are then restarted without sources, so they replay whatever their
//! spool still holds and add no readings; at the end both collectors hold every
//! batch, once, with the same energies, and the primary's energies equal the
//! simulator's ground truth. The agents send the primary JSON and the mirror
//! the binary encoding, so the comparison also holds the two encodings equal.

use std::time::Duration;

use dcwatt_agent::spool::{Fsync, Spool, SpoolSpec, Storage};
use dcwatt_sim::launch::{launch, LaunchOptions, Proc};
use dcwatt_tests::{get_json, get_text, sample, spawn_sim, wait_for};
use serde_json::Value;

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

fn rel_err(got: f64, want: f64) -> f64 {
    ((got - want) / want).abs()
}

/// Per agent: batches waiting for `collector` (`dcwatt_ship_queue_batches`).
async fn queued(agents: &[Proc], collector: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for a in agents {
        let text = get_text(&format!("{}/metrics", a.url())).await;
        let series = format!("dcwatt_ship_queue_batches{{collector=\"{collector}\"}}");
        out.push(sample(&text, &series).unwrap_or(f64::MAX));
    }
    out
}

/// `agent id → last_seq` as a collector's summary reports it.
fn last_seqs(summary: &Value) -> std::collections::BTreeMap<String, u64> {
    summary["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["last_seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Sets every collector cursor in a spool directory `by` batches back.
fn rewind_cursors(spool_dir: &std::path::Path, by: u64) {
    let mut found = 0;
    for entry in std::fs::read_dir(spool_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("cursor-") || name.ends_with(".tmp") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (seq, rest) = text.split_once('\n').unwrap();
        let seq: u64 = seq.trim().parse().unwrap();
        std::fs::write(&path, format!("{}\n{rest}", seq - by)).unwrap();
        found += 1;
    }
    assert_eq!(
        found,
        2,
        "one cursor per collector in {}",
        spool_dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_lose_nothing_and_the_mirror_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _) = spawn_sim(dir.path(), 2, 1, 2, 11);
    let sim_url = sim.url();
    let opts = LaunchOptions {
        dir: dir.path().to_path_buf(),
        interval: "200ms".into(),
        log_filter: "info".into(),
        mirror: true,
        collector_extra: String::new(),
    };
    let mut dep = launch(&sim_url, &opts).await.unwrap();
    let primary = dep.collector.url();
    let mirror = dep.mirror.as_ref().unwrap().url();
    let gpu_count: usize = dep.site.nodes.iter().map(|n| n.gpus.len()).sum();
    for url in [&primary, &mirror] {
        wait_for("full coverage", Duration::from_secs(60), || async {
            let s = get_json(&format!("{url}/v1/summary")).await;
            let ready = s["meters_reporting_ratio"].as_f64() == Some(1.0)
                && s["gpus"]["reporting"].as_u64() == Some(gpu_count as u64);
            ready.then_some(())
        })
        .await;
    }

    // The mirror goes away for a long time; inside that, the primary for a while.
    dep.mirror.as_ref().unwrap().pause();
    tokio::time::sleep(Duration::from_secs(2)).await;
    dep.collector.pause();
    tokio::time::sleep(Duration::from_secs(6)).await;
    dep.collector.resume();

    // The primary catches up while the mirror is still down, far behind.
    wait_for("primary caught up", Duration::from_secs(60), || async {
        let q = queued(&dep.agents, &primary).await;
        q.iter().all(|v| *v <= 2.0).then_some(())
    })
    .await;
    let behind = queued(&dep.agents, &mirror).await;
    assert!(
        behind.iter().all(|v| *v >= 30.0),
        "the mirror is frozen, its batches wait: {behind:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    dep.mirror.as_ref().unwrap().resume();
    wait_for("mirror caught up", Duration::from_secs(90), || async {
        let q = queued(&dep.agents, &mirror).await;
        q.iter().all(|v| *v <= 2.0).then_some(())
    })
    .await;

    // Stop the agents; restart them without sources: they replay what their
    // spool still holds (the last batches) and add no readings. Before that,
    // every cursor is set back 10 batches, as a power cut can leave it (cursors
    // are not synced): those batches are sent again, and each collector must
    // answer them as duplicates, not count them twice (checked below against
    // the other collector and the simulator's truth).
    for a in &mut dep.agents {
        a.terminate();
    }
    let mut want_seq = std::collections::BTreeMap::new();
    let mut restarted = Vec::new();
    for a in &dep.agents {
        let id = a.name.strip_prefix("agent ").unwrap().to_owned();
        let spec = SpoolSpec {
            storage: Storage::Disk {
                dir: dir.path().join(format!("spool-{id}")),
                fsync: Fsync::Never,
            },
            max_bytes: 1 << 30,
        };
        let collectors = [primary.clone(), mirror.clone()];
        let spool = Spool::open(&spec, &collectors).unwrap();
        assert_eq!(spool.stats().dropped_batches, 0);
        want_seq.insert(id.clone(), spool.next_seq() - 1);
        let pending = |s: &Spool| s.pending(0) + s.pending(1);
        let before = pending(&spool);
        drop(spool);
        rewind_cursors(&dir.path().join(format!("spool-{id}")), 10);
        let spool = Spool::open(&spec, &collectors).unwrap();
        assert_eq!(pending(&spool), before + 20, "{id}: rewound cursors resend");
        drop(spool);
        let conf = std::fs::read_to_string(dir.path().join(format!("agent-{id}.toml"))).unwrap();
        let no_sources = &conf[..conf.find("[[sources]]").unwrap_or(conf.len())];
        let path = dir.path().join(format!("agent-{id}-replay.toml"));
        std::fs::write(&path, no_sources).unwrap();
        restarted.push(
            Proc::spawn(
                &format!("replay {id}"),
                "dcwatt-agent",
                &["--config".into(), path.into()],
                &[("RUST_LOG", "info".into())],
                &dir.path().join(format!("agent-{id}-replay.log")),
            )
            .unwrap(),
        );
    }
    for url in [&primary, &mirror] {
        wait_for(
            "every spooled batch applied",
            Duration::from_secs(60),
            || async {
                let got = last_seqs(&get_json(&format!("{url}/v1/summary")).await);
                want_seq
                    .iter()
                    .all(|(id, want)| got.get(id).is_some_and(|g| g >= want))
                    .then_some(())
            },
        )
        .await;
    }
    for a in &mut restarted {
        a.terminate();
    }

    let p = get_json(&format!("{primary}/v1/summary")).await;
    let m = get_json(&format!("{mirror}/v1/summary")).await;
    // The same batches, so the same readings, the same counted spans and the
    // same energies (up to the order of float sums across agents).
    let p_metrics = get_text(&format!("{primary}/metrics")).await;
    let m_metrics = get_text(&format!("{mirror}/metrics")).await;
    let readings = |t: &str| sample(t, "dcwatt_ingest_readings_total").unwrap();
    assert_eq!(readings(&p_metrics), readings(&m_metrics));
    let same = |a: &Value, b: &Value| rel_err(a.as_f64().unwrap(), b.as_f64().unwrap()) < 1e-12;
    assert!(
        same(&p["gpus"]["energy_joules"], &m["gpus"]["energy_joules"]),
        "{} vs {}",
        p["gpus"],
        m["gpus"]
    );
    assert_eq!(p["gpus"]["count"], m["gpus"]["count"]);
    let (pm, mm) = (
        p["meters"].as_array().unwrap(),
        m["meters"].as_array().unwrap(),
    );
    assert_eq!(pm.len(), mm.len());
    for (a, b) in pm.iter().zip(mm) {
        for key in [
            "id",
            "energy_from_ms",
            "energy_to_ms",
            "last_ms",
            "resets",
            "gaps",
        ] {
            assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
        }
        // (A water meter's energy is 0 on both.)
        assert!(
            a["energy_joules"] == b["energy_joules"]
                || same(&a["energy_joules"], &b["energy_joules"]),
            "{a} vs {b}"
        );
        if a["role"] == "water" {
            assert!(
                same(&a["water_cubic_meters"], &b["water_cubic_meters"]),
                "{a} vs {b}"
            );
        }
    }

    // And the primary's energies are the simulator's ground truth.
    for meter in p["meters"].as_array().unwrap() {
        let id = meter["id"].as_str().unwrap();
        // The water meter counts m³ (its truth is a volume), the others J.
        let water = meter["role"] == "water";
        let got = meter[if water {
            "water_cubic_meters"
        } else {
            "energy_joules"
        }]
        .as_f64()
        .unwrap();
        let (from, to) = (
            meter["energy_from_ms"].as_i64().unwrap(),
            meter["energy_to_ms"].as_i64().unwrap(),
        );
        assert!(to - from > 10_000, "{id}: counted over {from}..{to} only");
        assert_eq!(meter["resets"].as_u64(), Some(0), "{meter}");
        assert_eq!(meter["gaps"].as_u64(), Some(0), "{meter}");
        let kind = if water { "water" } else { "meter" };
        let want = truth(&sim_url, &format!("{kind}:{id}"), from, to).await;
        assert!(
            rel_err(got, want) < 0.002,
            "{id}: collector {got}, truth {want} (J, or m³ for water)"
        );
    }
}
