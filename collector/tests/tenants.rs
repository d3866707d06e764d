//! Tenants: GPU energy booked per lease into the hash-chained ledger, read
//! back through the scoped API by every kind of caller, and tampered with.

use std::time::{Duration, Instant};

use dcwatt_collector::config::{token_hash, Config};
use dcwatt_collector::store::Store;
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};
use proptest::prelude::*;
use serde_json::Value;

mod common;
use common::sample;

const OPERATOR: &str = "operator-token";
const LAB_A: &str = "lab-a-token";
const LAB_B: &str = "lab-b-token";
const AGENTS: [(&str, &str, &str); 2] = [
    ("r1-n1", "r1-n1", "agent-1-token"),
    ("r2-n1", "r2-n1", "agent-2-token"),
];
/// (node, GPU, watts): GPU-a1 is lab-a's by a node glob, GPU-b1 lab-b's by UUID, GPU-x nobody's.
const GPUS: [(&str, &str, f64); 3] = [
    ("r1-n1", "GPU-a1", 1000.0),
    ("r2-n1", "GPU-b1", 500.0),
    ("r2-n1", "GPU-x", 250.0),
];

fn config(db: &std::path::Path) -> String {
    let h = |t: &str| hex::encode(token_hash(t));
    let mut c = format!(
        "[ledger]\npath = \"{}\"\n[operator]\ntoken_sha256 = \"{}\"\n",
        db.display(),
        h(OPERATOR)
    );
    for (id, _, token) in AGENTS {
        c += &format!(
            "[[agents]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n",
            h(token)
        );
    }
    c += &format!(
        "[[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\n[[tenants]]\nid = \"lab-b\"\ntoken_sha256 = \"{}\"\n",
        h(LAB_A),
        h(LAB_B)
    );
    c += "[[leases]]\ntenant = \"lab-a\"\nnodes = [\"r1-*\"]\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2030-01-01T00:00:00Z\"\n";
    c += "[[leases]]\ntenant = \"lab-b\"\ngpus = [\"GPU-b1\"]\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2030-01-01T00:00:00Z\"\n";
    c
}

async fn start(db: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    common::start(&config(db)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_book_gpu_energy_and_only_the_right_caller_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let (url, stop) = start(&db).await;
    let http = reqwest::Client::new();
    // Before anything is booked, the label-less counters are there, at 0.
    let m0 = http
        .get(format!("{url}/metrics"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "dcwatt_unleased_energy_joules_total",
        "dcwatt_unattributed_energy_joules_total",
    ] {
        assert_eq!(sample(&m0, name), Some(0.0), "{name}: {m0}");
    }
    // Eight minutes of readings every 10 s, ending 4 minutes ago (booked after 2).
    let t0 = now_ms().div_euclid(60_000) * 60_000 - 12 * 60_000;
    for k in 0..=48i64 {
        let ts = t0 + k * 10_000;
        for (agent, node, token) in AGENTS.iter() {
            let mine: Vec<_> = GPUS.iter().filter(|g| g.0 == *node).collect();
            let batch = Batch {
                version: VERSION,
                agent: (*agent).into(),
                seq: k as u64 + 1,
                first_seq: None,
                node: (*node).into(),
                created_ms: ts,
                gpus: mine
                    .iter()
                    .enumerate()
                    .map(|(i, g)| GpuInfo {
                        uuid: g.1.into(),
                        index: i as u32,
                        model: "NVIDIA GB300".into(),
                        module: None,
                    })
                    .collect(),
                // Energy at constant power; power readings with a 100 W spike
                // once a minute; utilization alternating 0.6 and 0.8.
                readings: mine
                    .iter()
                    .flat_map(|g| {
                        let gpu = Entity::Gpu(g.1.into());
                        let r = |quantity, value| Reading {
                            ts_ms: ts,
                            entity: gpu.clone(),
                            quantity,
                            value,
                        };
                        [
                            r(Quantity::EnergyJoules, g.2 * (k * 10) as f64),
                            r(
                                Quantity::PowerWatts,
                                g.2 + if k % 6 == 3 { 100.0 } else { 0.0 },
                            ),
                            r(
                                Quantity::UtilizationRatio,
                                if k % 2 == 0 { 0.6 } else { 0.8 },
                            ),
                        ]
                    })
                    .collect(),
            };
            let resp = http
                .post(format!("{url}/v1/batches"))
                .bearer_auth(token)
                .json(&batch)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    }
    // The refresher books closed minutes every 10 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = http
            .get(format!("{url}/metrics"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("dcwatt_tenant_energy_joules_total{tenant=\"lab-b\"") {
            break m;
        }
        assert!(Instant::now() < deadline, "nothing booked: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Eight whole minutes of each GPU: lab-a 1 kW, lab-b 0.5 kW, unleased 0.25 kW.
    let it = |t: &str| {
        sample(
            &metrics,
            &format!("dcwatt_tenant_energy_joules_total{{tenant=\"{t}\",basis=\"it\"}}"),
        )
    };
    assert_eq!(it("lab-a"), Some(8.0 * 60_000.0), "{metrics}");
    assert_eq!(it("lab-b"), Some(8.0 * 30_000.0));
    assert_eq!(
        sample(&metrics, "dcwatt_unleased_energy_joules_total"),
        Some(8.0 * 15_000.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "dcwatt_tenant_gpu_seconds_total{tenant=\"lab-a\"}"
        ),
        Some(480.0)
    );

    // Who may read what.
    let range = format!("from={t0}&to={}", t0 + 15 * 60_000);
    let cases: [(&str, Option<&str>, u16); 12] = [
        ("/v1/tenants/lab-a/energy", Some(LAB_A), 200),
        ("/v1/tenants/lab-a/energy", Some(LAB_B), 403),
        ("/v1/tenants/lab-a/energy", None, 401),
        ("/v1/tenants/lab-a/energy", Some(OPERATOR), 200),
        ("/v1/tenants/lab-a/energy", Some(AGENTS[0].2), 401),
        ("/v1/tenants/lab-b/energy", Some(LAB_B), 200),
        ("/v1/tenants/lab-b/energy", Some(LAB_A), 403),
        ("/v1/tenants/lab-c/energy", Some(OPERATOR), 404),
        ("/v1/tenants/lab-c/energy", Some(LAB_A), 403),
        ("/v1/ledger/verify", Some(OPERATOR), 200),
        ("/v1/ledger/verify", Some(LAB_A), 401),
        ("/v1/summary", Some(LAB_A), 401),
    ];
    for (path, token, want) in cases {
        let mut req = http.get(format!("{url}{path}?{range}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(
            resp.status().as_u16(),
            want,
            "{path} with {token:?}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let body: Value = common::get_json_as(
        &http,
        &format!("{url}/v1/tenants/lab-a/energy?{range}&step=5m"),
        LAB_A,
    )
    .await;
    let steps = body["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    let total: f64 = steps.iter().map(|s| s["it_joules"].as_f64().unwrap()).sum();
    assert_eq!(total, 8.0 * 60_000.0);
    assert_eq!(body["ledger_head"].as_str().map(str::len), Some(64));
    // Each booked minute carries its GPUs' mean utilization and peak power.
    for s in steps.iter().filter(|s| s["rows"].as_u64() > Some(0)) {
        let u = s["mean_utilization"].as_f64().unwrap();
        assert!((u - 0.7).abs() < 1e-9, "{s}");
        assert_eq!(s["peak_watts"].as_f64(), Some(1100.0), "{s}");
        assert_eq!(s["thermal_excursions"].as_i64(), Some(0), "{s}");
    }
    let (_, csv) = common::get_as(
        &http,
        &format!("{url}/v1/tenants/lab-b/energy?{range}&format=csv"),
        LAB_B,
    )
    .await;
    assert!(csv.starts_with("from_ms,to_ms,it_joules,"), "{csv}");
    assert!(csv.contains(",240000,"), "{csv}");
    // The monthly statement, online and offline, agree.
    let month = {
        let (y, m, _) = dcwatt_wire::time::civil_from_days(t0 / 86_400_000);
        format!("{y:04}-{m:02}")
    };
    let statement: Value = common::get_json_as(
        &http,
        &format!("{url}/v1/tenants/lab-a/statement?month={month}"),
        LAB_A,
    )
    .await;
    assert!(
        (statement["it_kwh"].as_f64().unwrap() - 8.0 * 60_000.0 / 3.6e6).abs() < 1e-12,
        "{statement}"
    );
    assert!((statement["gpu_hours"].as_f64().unwrap() - 480.0 / 3600.0).abs() < 1e-12);
    let gaps = statement["gaps"].as_array().unwrap();
    let booked = t0..t0 + 8 * 60_000;
    assert!(
        gaps.iter()
            .all(|g| g["to_ms"].as_i64().unwrap() <= booked.start
                || g["from_ms"].as_i64().unwrap() >= booked.end),
        "a booked minute reported as a gap: {gaps:?}"
    );
    let (b_statement, _) = common::get_as(
        &http,
        &format!("{url}/v1/tenants/lab-a/statement?month={month}"),
        LAB_B,
    )
    .await;
    assert_eq!(b_statement, 403);
    let conf = dir.path().join("collector.toml");
    std::fs::write(&conf, config(&db)).unwrap();
    let verify: Value =
        common::get_json_as(&http, &format!("{url}/v1/ledger/verify"), OPERATOR).await;
    assert_eq!(verify["broken"], Value::Null, "{verify}");
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Tampering: each on its own copy of the database, by someone with write
    // access, who drops the append-only triggers first.
    let source = rusqlite::Connection::open(&db).unwrap();
    let tampered = |name: &str, sql: &str| {
        let copy = dir.path().join(name);
        source
            .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
        rusqlite::Connection::open(&copy)
            .unwrap()
            .execute_batch(&format!(
                "DROP TRIGGER ledger_no_update; DROP TRIGGER ledger_no_delete; {sql}"
            ))
            .unwrap();
        copy
    };
    let broken = |db: &std::path::Path| {
        Store::open(db)
            .unwrap()
            .verify_ledger()
            .unwrap()
            .broken
            .unwrap_or_default()
    };
    let edited = tampered(
        "edited.sqlite",
        "UPDATE ledger SET it_joules = it_joules * 0.9 WHERE id = 3",
    );
    assert!(
        broken(&edited).starts_with("row 3: its content"),
        "{}",
        broken(&edited)
    );
    let deleted = tampered("deleted.sqlite", "DELETE FROM ledger WHERE id = 2");
    assert!(
        broken(&deleted).starts_with("row 3: expected row 2"),
        "{}",
        broken(&deleted)
    );
    let reordered = tampered(
        "reordered.sqlite",
        "UPDATE ledger SET id = -2 WHERE id = 2; UPDATE ledger SET id = 2 WHERE id = 3; UPDATE ledger SET id = 3 WHERE id = -2;",
    );
    assert!(
        broken(&reordered).starts_with("row 2:"),
        "{}",
        broken(&reordered)
    );
    // The offline command says the same, and exits 1 on a broken chain.
    let cli = |db: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dcwatt-collector"))
            .args(["ledger", "verify"])
            .arg(db)
            .output()
            .unwrap()
    };
    let out = cli(&edited);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("row 3"));
    assert_eq!(cli(&db).status.code(), Some(0));
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_dcwatt-collector"))
        .args([
            "report", "--tenant", "lab-a", "--month", &month, "--format", "json", "--config",
        ])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let offline: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(offline["it_kwh"], statement["it_kwh"]);
    assert_eq!(offline["ledger_head"], statement["ledger_head"]);
    assert_eq!(
        offline["days"].as_array().map(Vec::len),
        statement["days"].as_array().map(Vec::len)
    );
}

proptest! {
    /// Conservation: for any leases and any GPU-minute, the owners' parts add
    /// up to the minute's energy and its time.
    #[test]
    fn attribution_conserves_energy_and_time(
        leases in prop::collection::vec((0usize..3, 0i64..120, 1i64..120, any::<bool>()), 0..6),
        joules in 0.0f64..1e7,
        minute in 0i64..2,
    ) {
        use dcwatt_collector::config::LeaseConfig;
        use dcwatt_collector::tenants::{totals, Leases};
        let base = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
        let rfc = |s: i64| format!("2026-01-01T00:{:02}:{:02}Z", s / 60, s % 60);
        let tenants: std::collections::HashSet<&str> = ["t0", "t1", "t2"].into();
        let configs: Vec<LeaseConfig> = leases
            .iter()
            .map(|(t, from, len, by_glob)| LeaseConfig {
                id: None,
                tenant: format!("t{t}"),
                nodes: if *by_glob { vec!["r1-*".into()] } else { vec![] },
                gpus: if *by_glob { vec![] } else { vec![format!("GPU-{t}")] },
                from: rfc(*from),
                to: rfc(from + len),
            })
            .collect();
        // Configurations the static check refuses are not the point here.
        let Ok(leases) = Leases::build(&configs, &tenants) else { return Ok(()) };
        for gpu in ["GPU-0", "GPU-1", "GPU-9"] {
            let from = base + minute * 60_000;
            let parts = leases.attribute("r1-n1", gpu, from, from + 60_000, joules);
            let sum: f64 = parts.iter().map(|p| p.1).sum();
            prop_assert!((sum - joules).abs() <= 1e-9 * joules.max(1.0), "{sum} vs {joules}");
            let t = totals(parts);
            prop_assert_eq!(t.values().map(|v| v.1).sum::<i64>(), 60_000);
            prop_assert!(t.values().all(|v| v.0 >= -1e-9 && v.1 >= 0));
        }
    }
}

/// A lease of GPU-x to lab-b, from 2026 on.
const LEASE_X: &str = "[[leases]]\ntenant = \"lab-b\"\ngpus = [\"GPU-x\"]\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2030-01-01T00:00:00Z\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_reload_without_a_restart_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let file = dir.path().join("collector.toml");
    std::fs::write(&file, config(&db)).unwrap();
    let mut site = Config::from_file(&file).unwrap().build().unwrap();
    site.config_path = Some(file.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(dcwatt_collector::run(site, listener, async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let mut seq = 0;
    let mut post_utilization = || {
        seq += 1;
        let ts = now_ms();
        let batch = Batch {
            version: VERSION,
            agent: "r2-n1".into(),
            seq,
            first_seq: None,
            node: "r2-n1".into(),
            created_ms: ts,
            gpus: vec![],
            readings: vec![Reading {
                ts_ms: ts,
                entity: Entity::Gpu("GPU-x".into()),
                quantity: Quantity::UtilizationRatio,
                value: 0.25,
            }],
        };
        http.post(format!("{url}/v1/batches"))
            .bearer_auth(AGENTS[1].2)
            .json(&batch)
            .send()
    };
    let reload = |token: &'static str| {
        http.post(format!("{url}/v1/admin/leases/reload"))
            .bearer_auth(token)
            .send()
    };
    let metrics = || async {
        http.get(format!("{url}/metrics"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let lab_b = r#"dcwatt_tenant_gpu_utilization_ratio{tenant="lab-b"}"#;
    assert_eq!(post_utilization().await.unwrap().status(), 200);
    assert_eq!(
        sample(&metrics().await, lab_b),
        None,
        "GPU-x is nobody's yet"
    );
    // Only the operator may reload.
    assert_eq!(reload(LAB_A).await.unwrap().status(), 401);
    // A file with an overlapping lease: refused, naming both; nothing changes.
    let overlapping = format!(
        "{}{LEASE_X}[[leases]]\ntenant = \"lab-a\"\ngpus = [\"GPU-x\"]\nfrom = \"2027-01-01T00:00:00Z\"\nto = \"2028-01-01T00:00:00Z\"\n",
        config(&db)
    );
    std::fs::write(&file, overlapping).unwrap();
    let r = reload(OPERATOR).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let why = body["error"].as_str().unwrap();
    assert!(
        why.contains("leases[2]") && why.contains("leases[3]"),
        "{why}"
    );
    assert_eq!(post_utilization().await.unwrap().status(), 200);
    assert_eq!(
        sample(&metrics().await, lab_b),
        None,
        "a refused file changed the leases"
    );
    // A good file: GPU-x becomes lab-b's from now on.
    std::fs::write(&file, format!("{}{LEASE_X}", config(&db))).unwrap();
    let r = reload(OPERATOR).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["leases"], 3);
    assert_eq!(post_utilization().await.unwrap().status(), 200);
    assert_eq!(sample(&metrics().await, lab_b), Some(0.25));
    // A file that adds a tenant needs a restart: refused, the leases in force stay.
    std::fs::write(
        &file,
        format!(
            "{}{LEASE_X}[[tenants]]\nid = \"lab-c\"\ntoken_sha256 = \"{}\"\n",
            config(&db),
            hex::encode(token_hash("lab-c-token"))
        ),
    )
    .unwrap();
    let r = reload(OPERATOR).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(post_utilization().await.unwrap().status(), 200);
    assert_eq!(sample(&metrics().await, lab_b), Some(0.25));
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_nodes_energy_beyond_its_gpus_is_shared_by_gpu_time() {
    let dir = tempfile::tempdir().unwrap();
    let h = |t: &str| hex::encode(token_hash(t));
    // Node r1-n1: GPU-a1 (lab-a's) at 1000 W, GPU-a2 (nobody's) at 500 W, and a
    // node input meter at 1800 W: 300 W beyond the GPUs, half to each GPU's owner.
    let config = format!(
        "[ledger]\npath = \"{}\"\n[operator]\ntoken_sha256 = \"{}\"\n\
         [[agents]]\nid = \"r1-n1\"\ntoken_sha256 = \"{}\"\nmeters = [\"psu-r1-n1\"]\n\
         [[meters]]\nid = \"psu-r1-n1\"\nrole = \"it\"\nit_point = \"it_input\"\nnode = \"r1-n1\"\n\
         [[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\n\
         [[leases]]\ntenant = \"lab-a\"\ngpus = [\"GPU-a1\"]\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2030-01-01T00:00:00Z\"\n",
        dir.path().join("c.sqlite").display(),
        h(OPERATOR),
        h("node-token"),
        h(LAB_A)
    );
    let site = Config::from_toml(&config).unwrap().build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(dcwatt_collector::run(site, listener, async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let t0 = now_ms().div_euclid(60_000) * 60_000 - 12 * 60_000;
    for k in 0..=48i64 {
        let ts = t0 + k * 10_000;
        let s = (k * 10) as f64;
        let r = |entity: Entity, value: f64| Reading {
            ts_ms: ts,
            entity,
            quantity: Quantity::EnergyJoules,
            value,
        };
        let batch = Batch {
            version: VERSION,
            agent: "r1-n1".into(),
            seq: k as u64 + 1,
            first_seq: None,
            node: "r1-n1".into(),
            created_ms: ts,
            gpus: ["GPU-a1", "GPU-a2"]
                .iter()
                .enumerate()
                .map(|(i, u)| GpuInfo {
                    uuid: (*u).into(),
                    index: i as u32,
                    model: "NVIDIA GB300".into(),
                    module: None,
                })
                .collect(),
            readings: vec![
                r(Entity::Gpu("GPU-a1".into()), 1000.0 * s),
                r(Entity::Gpu("GPU-a2".into()), 500.0 * s),
                r(Entity::Meter("psu-r1-n1".into()), 1800.0 * s),
            ],
        };
        let resp = http
            .post(format!("{url}/v1/batches"))
            .bearer_auth("node-token")
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let range = format!("from={t0}&to={}", t0 + 15 * 60_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let body: Value = common::get_json_as(
            &http,
            &format!("{url}/v1/tenants/lab-a/energy?{range}"),
            LAB_A,
        )
        .await;
        if body["steps"][0]["rows"].as_u64() == Some(8) {
            break body;
        }
        assert!(Instant::now() < deadline, "not booked: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let step = &body["steps"][0];
    // Eight minutes: 60 kJ of GPU and 9 kJ of node share a minute.
    assert_eq!(step["node_joules"].as_f64(), Some(8.0 * 9_000.0), "{step}");
    assert_eq!(step["it_joules"].as_f64(), Some(8.0 * 69_000.0), "{step}");
    let m = http
        .get(format!("{url}/metrics"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The unleased GPU's owner gets its half too: everything the meter saw is booked.
    assert_eq!(
        sample(&m, "dcwatt_unleased_energy_joules_total"),
        Some(8.0 * 39_000.0),
        "{m}"
    );
    let v: Value = common::get_json_as(&http, &format!("{url}/v1/ledger/verify"), OPERATOR).await;
    assert_eq!(v["broken"], Value::Null, "{v}");
    let _ = stop.send(());
}
