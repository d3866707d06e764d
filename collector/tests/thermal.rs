//! Thermal excursions end to end through the collector's HTTP API: GPUs judged
//! against their own thresholds, thermal throttling, a CDU's coolant; opened
//! only after the minimum duration, closed only after the all-clear holds;
//! booked to the tenant leasing the GPU, and still there after a restart.

use dcwatt_collector::config::{token_hash, Config};
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};
use serde_json::Value;

mod common;
use common::sample;

const OPERATOR: &str = "operator-token";
const LAB_A: &str = "lab-a-token";
const LAB_B: &str = "lab-b-token";
/// (agent id = node, token, zone, GPU).
const AGENTS: [(&str, &str, &str, &str); 2] = [
    ("r1-n1", "agent-1-token", "hall-a", "GPU-a1"),
    ("r2-n1", "agent-2-token", "hall-b", "GPU-b1"),
];

fn config(db: &std::path::Path) -> String {
    let h = |t: &str| hex::encode(token_hash(t));
    let mut c = format!(
        "[ledger]\npath = \"{}\"\n[operator]\ntoken_sha256 = \"{}\"\n[thermal]\nmin_duration = \"20s\"\n",
        db.display(),
        h(OPERATOR)
    );
    for (id, token, zone, _) in AGENTS {
        c += &format!(
            "[[agents]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\nzone = \"{zone}\"\nmeters = [\"cdu-1\"]\n",
            h(token)
        );
    }
    c += "[[meters]]\nid = \"cdu-1\"\nrole = \"cooling\"\nzone = \"hall-a\"\n";
    c += &format!(
        "[[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\n[[tenants]]\nid = \"lab-b\"\ntoken_sha256 = \"{}\"\n",
        h(LAB_A),
        h(LAB_B)
    );
    c += "[[leases]]\ntenant = \"lab-a\"\nnodes = [\"r1-*\"]\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2030-01-01T00:00:00Z\"\n";
    c
}

async fn start(db: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    common::start(&config(db)).await
}

fn r(ts_ms: i64, entity: Entity, quantity: Quantity, value: f64) -> Reading {
    Reading {
        ts_ms,
        entity,
        quantity,
        value,
    }
}

/// Step `k` (10 s apart) of the script, per agent.
fn readings(k: i64, ts: i64, agent: usize) -> Vec<Reading> {
    let gpu = |q, v| r(ts, Entity::Gpu(AGENTS[agent].3.into()), q, v);
    match agent {
        0 => {
            // Slowdown at 90 °C, margin 5: 86 °C from step 3 to 6, 84 °C (between
            // the levels) at 7, then 82 °C: clear from step 8, closed at step 10.
            let core = match k {
                3..=6 => 86.0,
                7 => 84.0,
                8.. => 82.0,
                _ => 80.0,
            };
            let cdu = |q, v| r(ts, Entity::Meter("cdu-1".into()), q, v);
            // Coolant supply 47 °C (above 45) from step 5: open at step 7, stays open.
            let supply = if k >= 5 { 47.0 } else { 30.0 };
            vec![
                gpu(Quantity::TemperatureCelsius, core),
                gpu(Quantity::TemperatureSlowdownCelsius, 90.0),
                gpu(Quantity::MemoryTemperatureCelsius, 70.0),
                gpu(Quantity::TemperatureMemoryMaxCelsius, 95.0),
                gpu(Quantity::ThrottleHwThermalSlowdown, 0.0),
                gpu(Quantity::ThrottleSwThermalSlowdown, 0.0),
                cdu(Quantity::CoolantSupplyTemperatureCelsius, supply),
                cdu(Quantity::CoolantReturnTemperatureCelsius, supply + 8.0),
            ]
        }
        _ => vec![
            // 86 °C is fine for this GPU: it slows down at 95 °C.
            gpu(Quantity::TemperatureCelsius, 86.0),
            gpu(Quantity::TemperatureSlowdownCelsius, 95.0),
            // One throttled reading (step 1) is too short; steps 4.. hold.
            gpu(
                Quantity::ThrottleHwThermalSlowdown,
                f64::from(u8::from(k == 1)),
            ),
            gpu(
                Quantity::ThrottleSwThermalSlowdown,
                f64::from(u8::from(k >= 4)),
            ),
        ],
    }
}

async fn post(http: &reqwest::Client, url: &str, agent: usize, k: i64, ts: i64) -> Value {
    let (id, token, _, uuid) = AGENTS[agent];
    let batch = Batch {
        version: VERSION,
        agent: id.into(),
        seq: k as u64 + 1,
        first_seq: None,
        node: id.into(),
        created_ms: ts,
        gpus: vec![GpuInfo {
            uuid: uuid.into(),
            index: 0,
            model: "NVIDIA GB300".into(),
            module: None,
        }],
        readings: readings(k, ts, agent),
    };
    let resp = http
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "step {k} agent {id}");
    resp.json().await.unwrap()
}

async fn get(http: &reqwest::Client, url: &str, path: &str, token: &str) -> (u16, String) {
    common::get_as(http, &format!("{url}{path}"), token).await
}

fn check_final_metrics(m: &str) {
    let expect = [
        (r#"dcwatt_gpus_in_thermal_excursion{zone="hall-a"}"#, 0.0),
        (r#"dcwatt_gpus_in_thermal_excursion{zone="hall-b"}"#, 1.0),
        (r#"dcwatt_cdus_in_thermal_excursion{zone="hall-a"}"#, 1.0),
        (
            r#"dcwatt_thermal_excursions_total{zone="hall-a",kind="gpu_temperature"}"#,
            1.0,
        ),
        (
            r#"dcwatt_thermal_excursions_total{zone="hall-a",kind="memory_temperature"}"#,
            0.0,
        ),
        (
            r#"dcwatt_thermal_excursions_total{zone="hall-a",kind="thermal_slowdown"}"#,
            0.0,
        ),
        (
            r#"dcwatt_thermal_excursions_total{zone="hall-a",kind="coolant_supply_temperature"}"#,
            1.0,
        ),
        (
            r#"dcwatt_thermal_excursions_total{zone="hall-a",kind="coolant_delta_t"}"#,
            0.0,
        ),
        (
            r#"dcwatt_thermal_excursions_total{zone="hall-b",kind="gpu_temperature"}"#,
            0.0,
        ),
        (
            r#"dcwatt_thermal_excursions_total{zone="hall-b",kind="thermal_slowdown"}"#,
            1.0,
        ),
        (
            r#"dcwatt_tenant_thermal_excursions_total{tenant="lab-a"}"#,
            1.0,
        ),
        (
            r#"dcwatt_tenant_thermal_excursions_total{tenant="lab-b"}"#,
            0.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(sample(m, series), Some(want), "{series}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excursions_open_close_are_booked_to_tenants_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let (url, stop) = start(&db).await;
    let http = reqwest::Client::new();
    let t0 = now_ms().div_euclid(1000) * 1000 - 5 * 60_000;
    let ts = |k: i64| t0 + k * 10_000;
    for k in 0..=12 {
        for agent in 0..AGENTS.len() {
            post(&http, &url, agent, k, ts(k)).await;
        }
        if k == 4 {
            // GPU-a1 has been hot for 10 s only, GPU-b1's single throttled
            // reading was too short: nothing is open yet.
            let (_, m) = get(&http, &url, "/metrics", OPERATOR).await;
            assert_eq!(
                sample(&m, r#"dcwatt_gpus_in_thermal_excursion{zone="hall-a"}"#),
                Some(0.0)
            );
            assert_eq!(
                sample(&m, r#"dcwatt_gpus_in_thermal_excursion{zone="hall-b"}"#),
                Some(0.0)
            );
        }
        if k == 7 {
            let (_, m) = get(&http, &url, "/metrics", OPERATOR).await;
            assert_eq!(
                sample(&m, r#"dcwatt_gpus_in_thermal_excursion{zone="hall-a"}"#),
                Some(1.0),
                "84 °C is between the levels: still open"
            );
        }
    }
    let (_, m) = get(&http, &url, "/metrics", OPERATOR).await;
    check_final_metrics(&m);

    // The summary lists what is open (by zone), with when it started.
    let (code, body) = get(&http, &url, "/v1/summary", OPERATOR).await;
    assert_eq!(code, 200);
    let open: Value = serde_json::from_str::<Value>(&body).unwrap()["thermal_excursions"].clone();
    let open: Vec<(String, String, i64)> = open
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["entity"].as_str().unwrap().to_owned(),
                e["kind"].as_str().unwrap().to_owned(),
                e["since_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        open,
        vec![
            ("cdu-1".into(), "coolant_supply_temperature".into(), ts(5)),
            ("GPU-b1".into(), "thermal_slowdown".into(), ts(4)),
        ]
    );

    // lab-a's GPU excursion, with its start and end, to lab-a and the operator only.
    let path = format!("/v1/tenants/lab-a/excursions?from={}&to={}", t0, ts(13));
    for token in [LAB_A, OPERATOR] {
        let (code, body) = get(&http, &url, &path, token).await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let list = v["excursions"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{body}");
        assert_eq!(list[0]["entity"], "GPU-a1");
        assert_eq!(list[0]["kind"], "gpu_temperature");
        assert_eq!(list[0]["opened_ms"].as_i64(), Some(ts(3)));
        assert_eq!(list[0]["closed_ms"].as_i64(), Some(ts(8)));
        assert_eq!(list[0]["tenant"], "lab-a");
    }
    assert_eq!(get(&http, &url, &path, LAB_B).await.0, 403);
    // The ledger books it to lab-a in the minute it started.
    let energy = format!(
        "/v1/tenants/lab-a/energy?from={}&to={}",
        t0 - 60_000,
        ts(13)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, body) = get(&http, &url, &energy, LAB_A).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        let booked: i64 = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["thermal_excursions"].as_i64().unwrap_or(0))
            .sum();
        if booked == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not booked: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(get(&http, &url, &path, "nobody").await.0, 401);

    // A replayed batch changes nothing; a restart keeps counts and open excursions.
    let ack = post(&http, &url, 1, 12, ts(12)).await;
    assert_eq!(ack["duplicate"], true);
    let _ = stop.send(());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (url, stop) = start(&db).await;
    let (_, m) = get(&http, &url, "/metrics", OPERATOR).await;
    check_final_metrics(&m);
    // GPU-b1 cools down: the all-clear must hold 20 s before it closes.
    for k in 13..=15 {
        let (id, token, _, uuid) = AGENTS[1];
        let batch = Batch {
            version: VERSION,
            agent: id.into(),
            seq: k as u64 + 1,
            first_seq: None,
            node: id.into(),
            created_ms: ts(k),
            gpus: vec![],
            readings: vec![
                r(
                    ts(k),
                    Entity::Gpu(uuid.into()),
                    Quantity::ThrottleSwThermalSlowdown,
                    0.0,
                ),
                r(
                    ts(k),
                    Entity::Gpu(uuid.into()),
                    Quantity::ThrottleHwThermalSlowdown,
                    0.0,
                ),
            ],
        };
        let resp = http
            .post(format!("{url}/v1/batches"))
            .bearer_auth(token)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (_, m) = get(&http, &url, "/metrics", OPERATOR).await;
        let want = if k < 15 { 1.0 } else { 0.0 };
        assert_eq!(
            sample(&m, r#"dcwatt_gpus_in_thermal_excursion{zone="hall-b"}"#),
            Some(want),
            "step {k}"
        );
        assert_eq!(
            sample(
                &m,
                r#"dcwatt_thermal_excursions_total{zone="hall-b",kind="thermal_slowdown"}"#
            ),
            Some(1.0)
        );
    }
    let _ = stop.send(());
}

#[test]
fn thermal_config_errors_name_the_key() {
    for (toml, key) in [
        (
            "[thermal]\ngpu_margin_celsius = -1.0",
            "thermal.gpu_margin_celsius",
        ),
        (
            "[thermal]\ncoolant_delta_t_min_celsius = 30.0",
            "thermal.coolant_delta_t_min_celsius",
        ),
        (
            "[thermal]\ncoolant_supply_max_celsius = 1000.0",
            "thermal.coolant_supply_max_celsius",
        ),
        (
            "[[agents]]\nid = \"a\"\ntoken_sha256 = \"{H}\"\nzone = \"../x\"",
            "agents[0].zone",
        ),
    ] {
        let toml = toml.replace("{H}", &"ab".repeat(32));
        let err = Config::from_toml(&toml)
            .unwrap()
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{toml}: {err}");
    }
    let err = Config::from_toml("[thermal]\nmargin = 3.0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("margin"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_utilization_is_the_mean_over_the_gpus_it_leases_now() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop) = start(&dir.path().join("c.sqlite")).await;
    let http = reqwest::Client::new();
    let ts = now_ms();
    // r1-n1's GPUs are lab-a's (node glob); r2-n1's are nobody's.
    for (agent, gpus) in [
        (0, vec![("GPU-a1", 0.5), ("GPU-a2", 0.9)]),
        (1, vec![("GPU-b1", 0.1)]),
    ] {
        let (id, token, _, _) = AGENTS[agent];
        let batch = Batch {
            version: VERSION,
            agent: id.into(),
            seq: 1,
            first_seq: None,
            node: id.into(),
            created_ms: ts,
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, (uuid, _))| GpuInfo {
                    uuid: (*uuid).into(),
                    index: i as u32,
                    model: "NVIDIA GB300".into(),
                    module: None,
                })
                .collect(),
            readings: gpus
                .iter()
                .map(|(uuid, u)| {
                    r(
                        ts,
                        Entity::Gpu((*uuid).into()),
                        Quantity::UtilizationRatio,
                        *u,
                    )
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
    let (_, m) = get(&http, &url, "/metrics", OPERATOR).await;
    let got = sample(&m, r#"dcwatt_tenant_gpu_utilization_ratio{tenant="lab-a"}"#).unwrap();
    assert!((got - 0.7).abs() < 1e-12, "{got}");
    assert!(!m.contains(r#"dcwatt_tenant_gpu_utilization_ratio{tenant="lab-b"}"#));
    assert!(!m.contains(r#"dcwatt_tenant_gpu_utilization_ratio{tenant="_unleased"}"#));
    let _ = stop.send(());
}
