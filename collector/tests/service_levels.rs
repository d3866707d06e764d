//! GPU service levels end to end through the real collector (in-process, its
//! HTTP ingest, refresher and booking job): crafted batches at past
//! timestamps (22 minutes of 10 s ticks, ending 8 minutes ago) take one of
//! lab-a's GPUs down for 7 minutes, throttle another thermally for 4, stop
//! one node's agent for 3 minutes, and power-brake a GPU for 2 minutes while
//! its zone's CDU is in a supply-temperature excursion; lab-b's GPU goes
//! down for 2 minutes. GPU-a1's agent says why (RESET_REQUIRED); two
//! declared power events of zone z2 make a minute of n2's silence and one
//! of GPU-c0's down minutes the facility's. The statements must show
//! exactly those GPU-minutes in those states with those reasons and
//! causes, per lease and in total, availability computed from them, each
//! tenant only its own incidents; the ledger verifies (chain and
//! `dcwatt-verify`'s checks of the statement), and a statement with one
//! state count or one listed GPU changed fails verification.

use std::time::{Duration, Instant};

use dcwatt_collector::config::token_hash;
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};
use serde_json::Value;

mod common;
use common::{get_as, get_json_as, sample};

const OPERATOR: &str = "operator-token";
const LAB_A: &str = "lab-a-token";
const LAB_B: &str = "lab-b-token";
const MIN: i64 = 60_000;
/// (agent/node, token, zone, GPUs).
const NODES: [(&str, &str, &str, &[&str]); 3] = [
    (
        "n1",
        "n1-token",
        "z1",
        &["GPU-a0", "GPU-a1", "GPU-a2", "GPU-a3"],
    ),
    ("n2", "n2-token", "z2", &["GPU-b0", "GPU-b1"]),
    ("n3", "n3-token", "z2", &["GPU-c0"]),
];
const FAC: (&str, &str) = ("fac", "fac-token");

/// Unix ms as RFC 3339 (UTC, whole seconds).
fn rfc3339(ms: i64) -> String {
    let (y, m, d) = dcwatt_wire::time::civil_from_days(ms.div_euclid(86_400_000));
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The leases end with the run (`lease_end_ms`): the GPUs' silence after
/// it is not booked. Silent minutes are booked an hour after they end (the
/// batches of this test are older; n2's 3 minutes are booked when its
/// agent reports again, not raced by the silence booking while the test
/// posts; `tests/silence.rs` tests the silence booking).
/// Two site power events in zone z2 (declared by the operator): minute 15
/// (n2 silent) and minute 3 (GPU-c0 down) have cause `facility`.
fn config(db: &std::path::Path, key: &std::path::Path, t0: i64) -> String {
    let lease_end_ms = t0 + 22 * MIN;
    let h = |t: &str| hex::encode(token_hash(t));
    let mut c = format!(
        "agent_batches_per_second = 1000.0\nagent_batch_burst = 1000\n\
         [ledger]\npath = \"{}\"\nsigning_key_file = \"{}\"\n[operator]\ntoken_sha256 = \"{}\"\n\
         [sla]\nsilence_after = \"1h\"\n",
        db.display(),
        key.display(),
        h(OPERATOR)
    );
    for (id, token, zone, _) in NODES {
        c += &format!(
            "[[agents]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\nzone = \"{zone}\"\n",
            h(token)
        );
    }
    c += &format!(
        "[[agents]]\nid = \"{}\"\ntoken_sha256 = \"{}\"\nzone = \"z1\"\nmeters = [\"cdu1\"]\n",
        FAC.0,
        h(FAC.1)
    );
    c += "[[meters]]\nid = \"cdu1\"\nrole = \"cooling\"\nzone = \"z1\"\n";
    for m in [15, 3] {
        c += &format!(
            "[[power_events]]\nzone = \"z2\"\nfrom = \"{}\"\nto = \"{}\"\nnote = \"PDU B tripped\"\n",
            rfc3339(t0 + m * MIN),
            rfc3339(t0 + (m + 1) * MIN)
        );
    }
    c += &format!(
        "[[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\navailability_target = 0.995\n\
         [[tenants]]\nid = \"lab-b\"\ntoken_sha256 = \"{}\"\n",
        h(LAB_A),
        h(LAB_B)
    );
    let to = rfc3339(lease_end_ms);
    // lab-a: two leases, one with an id, one with the default (lab-a.2).
    c += &format!("[[leases]]\nid = \"a-n1\"\ntenant = \"lab-a\"\nnodes = [\"n1\"]\nfrom = \"2020-01-01T00:00:00Z\"\nto = \"{to}\"\n");
    c += &format!("[[leases]]\ntenant = \"lab-a\"\nnodes = [\"n2\"]\nfrom = \"2020-01-01T00:00:00Z\"\nto = \"{to}\"\n");
    c += &format!("[[leases]]\ntenant = \"lab-b\"\nnodes = [\"n3\"]\nfrom = \"2020-01-01T00:00:00Z\"\nto = \"{to}\"\n");
    c
}

/// Minute `m` of the run, relative to its start, as (from, to) in seconds.
fn within(s: i64, from_min: i64, to_min: i64) -> bool {
    (from_min * 60..to_min * 60).contains(&s)
}

/// One GPU's readings at `s` seconds into the run.
fn gpu_readings(uuid: &str, ts: i64, s: i64) -> Vec<Reading> {
    let down = (uuid == "GPU-a1" && within(s, 5, 12)) || (uuid == "GPU-c0" && within(s, 2, 4));
    let r = |quantity, value| Reading {
        ts_ms: ts,
        entity: Entity::Gpu(uuid.into()),
        quantity,
        value,
    };
    if down {
        // What the agent sends for a GPU down: up 0 and why (GPU-a1: code 2,
        // RESET_REQUIRED; GPU-c0 as an older agent: no code).
        if uuid == "GPU-a1" {
            return vec![r(Quantity::GpuDownReasonCode, 2.0), r(Quantity::GpuUp, 0.0)];
        }
        return vec![r(Quantity::GpuUp, 0.0)];
    }
    let thermal = uuid == "GPU-a2" && within(s, 8, 12);
    let brake = uuid == "GPU-a3" && within(s, 18, 20);
    vec![
        r(Quantity::GpuUp, 1.0),
        r(Quantity::EnergyJoules, 500.0 * s as f64),
        r(Quantity::PowerWatts, 500.0),
        r(Quantity::UtilizationRatio, 0.9),
        r(Quantity::PowerLimitWatts, 700.0),
        r(Quantity::PowerDefaultLimitWatts, 700.0),
        // At its limit all the time, at the default limit: not degraded.
        r(Quantity::ThrottleSwPowerCap, 1.0),
        r(
            Quantity::ThrottleHwThermalSlowdown,
            f64::from(u8::from(thermal)),
        ),
        r(Quantity::ThrottleSwThermalSlowdown, 0.0),
        r(Quantity::ThrottleHwSlowdown, f64::from(u8::from(brake))),
        r(
            Quantity::ThrottleHwPowerBrakeSlowdown,
            f64::from(u8::from(brake)),
        ),
    ]
}

async fn post(http: &reqwest::Client, url: &str, token: &str, batch: &Batch) {
    let resp = http
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .json(batch)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap());
}

fn service(statement: &Value) -> &Value {
    &statement["service"]
}

fn minutes(statement: &Value, state: &str) -> f64 {
    service(statement)[format!("{state}_gpu_minutes")]
        .as_f64()
        .unwrap_or_else(|| panic!("{state}: {statement}"))
}

/// The incidents as (start minute, end minute, state, reason, cause, GPUs).
fn incidents(statement: &Value, t0: i64) -> Vec<(i64, i64, String, String, String, String)> {
    service(statement)["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap().to_owned();
            (
                (i["start_ms"].as_i64().unwrap() - t0) / MIN,
                (i["end_ms"].as_i64().unwrap() - t0) / MIN,
                s("state"),
                s("reason"),
                s("cause"),
                i["gpus"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect()
}

fn verify(statement: &Value, public_key: &str) -> Result<Vec<String>, String> {
    let inputs = dcwatt_verify::check::Inputs {
        public_key: dcwatt_verify::checkpoint::parse_public_key(public_key).unwrap(),
        checkpoints: Vec::new(),
        statement: serde_json::from_value(statement.clone()).map_err(|e| e.to_string())?,
        consistency: Vec::new(),
        allow_unproven: true,
    };
    let mut said = Vec::new();
    dcwatt_verify::check::verify(&inputs, &mut said).map(|()| said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_throttling_and_silence_are_booked_as_gpu_minutes_per_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let key = dir.path().join("signing.key");
    dcwatt_collector::transparency::write_new_key(&key).unwrap();
    // 22 minutes of ticks ending 8 minutes ago, all in one UTC month.
    let now = now_ms();
    let mut t0 = now.div_euclid(MIN) * MIN - 30 * MIN;
    let month_start = dcwatt_wire::time::month_of(now).0;
    if t0 < month_start {
        t0 = month_start - 30 * MIN;
    }
    let (url, stop) = common::start(&config(&db, &key, t0)).await;
    let http = reqwest::Client::new();
    let (y, m, _) = dcwatt_wire::time::civil_from_days(t0.div_euclid(86_400_000));
    let month = format!("{y:04}-{m:02}");
    for k in 0..=132i64 {
        let s = k * 10;
        let ts = t0 + s * 1000;
        let seq = k as u64 + 1;
        // The CDU of zone z1: supply at 50 °C (above the 45 °C limit) from
        // 17:30 to 20:30 into the run.
        let supply = if (17 * 60 + 30..20 * 60 + 30).contains(&s) {
            50.0
        } else {
            30.0
        };
        let fac = Batch {
            version: VERSION,
            agent: FAC.0.into(),
            seq,
            first_seq: None,
            node: FAC.0.into(),
            created_ms: ts,
            gpus: Vec::new(),
            readings: vec![
                Reading {
                    ts_ms: ts,
                    entity: Entity::Meter("cdu1".into()),
                    quantity: Quantity::CoolantSupplyTemperatureCelsius,
                    value: supply,
                },
                Reading {
                    ts_ms: ts,
                    entity: Entity::Meter("cdu1".into()),
                    quantity: Quantity::CoolantReturnTemperatureCelsius,
                    value: supply + 8.0,
                },
            ],
        };
        post(&http, &url, FAC.1, &fac).await;
        for (node, token, _, gpus) in NODES {
            // n2's agent is stopped from 14:00 to 17:00 into the run.
            if node == "n2" && within(s, 14, 17) {
                continue;
            }
            let batch = Batch {
                version: VERSION,
                agent: node.into(),
                seq,
                first_seq: None,
                node: node.into(),
                created_ms: ts,
                gpus: gpus
                    .iter()
                    .enumerate()
                    .map(|(i, g)| GpuInfo {
                        uuid: (*g).into(),
                        index: i as u32,
                        model: "NVIDIA GB300".into(),
                        module: None,
                    })
                    .collect(),
                readings: gpus.iter().flat_map(|g| gpu_readings(g, ts, s)).collect(),
            };
            post(&http, &url, token, &batch).await;
        }
    }

    // The refresher books closed minutes every 10 s: wait for all 22.
    let statement_url = |t: &str| format!("{url}/v1/tenants/{t}/statement?month={month}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (a, b) = loop {
        let a = get_json_as(&http, &statement_url("lab-a"), LAB_A).await;
        let b = get_json_as(&http, &statement_url("lab-b"), LAB_B).await;
        let done = |s: &Value, n: f64| s["service"]["leased_gpu_minutes"].as_f64() == Some(n);
        if done(&a, 22.0 * 6.0) && done(&b, 22.0) {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "not booked in time:\n{}\n{}",
            a["service"],
            b["service"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // lab-a: 6 GPUs × 22 minutes; GPU-a1 down 7, GPU-a2 degraded 4
    // (thermal), GPU-a3 degraded 2 (power brake, the facility's CDU), n2's
    // two GPUs unknown 3 each.
    assert_eq!(minutes(&a, "down"), 7.0, "{a}");
    assert_eq!(minutes(&a, "degraded"), 6.0, "{a}");
    assert_eq!(minutes(&a, "unknown"), 6.0, "{a}");
    assert_eq!(minutes(&a, "available"), 132.0 - 19.0, "{a}");
    let sa = service(&a);
    let availability = (113.0 + 6.0) / (132.0 - 6.0);
    assert!(
        (sa["availability_ratio"].as_f64().unwrap() - availability).abs() < 1e-12,
        "{sa}"
    );
    assert!(
        (sa["undegraded_ratio"].as_f64().unwrap() - 113.0 / 126.0).abs() < 1e-12,
        "{sa}"
    );
    assert_eq!(sa["availability_target"], 0.995);
    assert_eq!(sa["target_met"], false);
    assert_eq!(sa["facility"]["degraded_gpu_minutes"], 2.0, "{sa}");
    assert_eq!(sa["gpu"]["degraded_gpu_minutes"], 4.0, "{sa}");
    assert_eq!(sa["gpu"]["down_gpu_minutes"], 7.0, "{sa}");
    assert_eq!(sa["facility"]["down_gpu_minutes"], 0.0, "{sa}");
    // n2's minute 15 fell in a declared power event of its zone.
    assert_eq!(sa["facility"]["unknown_gpu_minutes"], 2.0, "{sa}");
    let s = |x: &str| x.to_owned();
    assert_eq!(
        incidents(&a, t0),
        vec![
            (5, 12, s("down"), s("reset_required"), s("gpu"), s("GPU-a1")),
            (8, 12, s("degraded"), s("thermal"), s("gpu"), s("GPU-a2")),
            (
                14,
                15,
                s("unknown"),
                s("no_data"),
                s("unknown"),
                s("GPU-b0 GPU-b1")
            ),
            (
                15,
                16,
                s("unknown"),
                s("no_data"),
                s("facility"),
                s("GPU-b0 GPU-b1")
            ),
            (
                16,
                17,
                s("unknown"),
                s("no_data"),
                s("unknown"),
                s("GPU-b0 GPU-b1")
            ),
            (
                18,
                20,
                s("degraded"),
                s("power_brake"),
                s("facility"),
                s("GPU-a3")
            ),
        ],
        "{sa}"
    );
    // Per lease: n1's 4 GPUs (a-n1) took the down and degraded minutes,
    // n2's 2 GPUs (lab-a.2) the unknown ones; each state adds up to the
    // tenant's.
    let leases: Vec<(String, [f64; 5])> = sa["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let f = |k: &str| l[format!("{k}_gpu_minutes")].as_f64().unwrap();
            (
                l["id"].as_str().unwrap().to_owned(),
                [
                    f("leased"),
                    f("available"),
                    f("degraded"),
                    f("down"),
                    f("unknown"),
                ],
            )
        })
        .collect();
    assert_eq!(
        leases,
        vec![
            (s("a-n1"), [88.0, 75.0, 6.0, 7.0, 0.0]),
            (s("lab-a.2"), [44.0, 38.0, 0.0, 0.0, 6.0]),
        ],
        "{sa}"
    );
    for (k, state) in ["leased", "available", "degraded", "down", "unknown"]
        .iter()
        .enumerate()
    {
        let sum: f64 = leases.iter().map(|l| l.1[k]).sum();
        assert_eq!(sum, minutes(&a, state), "{state}");
    }
    // lab-b: its own GPU's 2 minutes down, nothing of lab-a's.
    assert_eq!(minutes(&b, "down"), 2.0, "{b}");
    assert_eq!(minutes(&b, "available"), 20.0, "{b}");
    assert_eq!(service(&b)["availability_target"], Value::Null);
    assert_eq!(
        incidents(&b, t0),
        vec![
            (2, 3, s("down"), s("gpu_down"), s("gpu"), s("GPU-c0")),
            (3, 4, s("down"), s("gpu_down"), s("facility"), s("GPU-c0"))
        ]
    );
    assert_eq!(service(&b)["facility"]["down_gpu_minutes"], 1.0);
    assert_eq!(service(&b)["gpu"]["down_gpu_minutes"], 1.0);
    assert!(!b.to_string().contains("GPU-a"), "{b}");
    assert!(!a.to_string().contains("GPU-c0"), "{a}");
    // A tenant reads only its own statement.
    let (status, _) = get_as(&http, &statement_url("lab-a"), LAB_B).await;
    assert_eq!(status, 403);
    // The CSV carries the same.
    let (status, csv) = get_as(&http, &(statement_url("lab-a") + "&format=csv"), LAB_A).await;
    assert_eq!(status, 200);
    assert!(csv.contains("\ndown,7,0,7\n"), "{csv}");
    assert!(csv.contains("\nunknown,6,2,\n"), "{csv}");
    assert!(csv.contains("\na-n1,88,75,6,7,0\n"), "{csv}");

    // The ledger verifies: the chain, and the statement's rows, digests
    // and totals as dcwatt-verify checks them.
    let v = get_json_as(&http, &format!("{url}/v1/ledger/verify"), OPERATOR).await;
    assert_eq!(v["broken"], Value::Null, "{v}");
    let (_, public_key) = get_as(&http, &format!("{url}/v1/ledger/public-key"), LAB_A).await;
    let said = verify(&a, &public_key).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        said.iter().any(|l| l.starts_with("ok: service levels")),
        "{said:?}"
    );
    verify(&b, &public_key).unwrap();

    // Tampering: one state count of one row, one listed GPU's state, the
    // totals. Each fails and says what.
    let rows = a["proofs"]["rows"].as_array().unwrap();
    let i = rows
        .iter()
        .position(|r| r["row"]["delivery"]["down_ms"].as_i64() == Some(60_000))
        .expect("a row with a GPU down");
    let mut t = a.clone();
    t["proofs"]["rows"][i]["row"]["delivery"]["down_ms"] = 0.into();
    t["proofs"]["rows"][i]["row"]["delivery"]["available_ms"] =
        (rows[i]["row"]["delivery"]["available_ms"].as_i64().unwrap() + 60_000).into();
    let e = verify(&t, &public_key).unwrap_err();
    assert!(e.contains("chain hash does not match"), "{e}");
    let mut t = a.clone();
    t["proofs"]["rows"][i]["row"]["delivery"]["gpus"][0]["state"] = "degraded".into();
    let e = verify(&t, &public_key).unwrap_err();
    assert!(e.contains("delivery digest"), "{e}");
    let mut t = a.clone();
    t["service"]["leases"][0]["down_gpu_minutes"] = 0.0.into();
    let e = verify(&t, &public_key).unwrap_err();
    assert!(e.contains("service.leases"), "{e}");
    let mut t = a.clone();
    t["service"]["down_gpu_minutes"] = 0.0.into();
    let e = verify(&t, &public_key).unwrap_err();
    assert!(e.contains("service.down_gpu_minutes"), "{e}");

    // Metrics: the ledger's GPU-seconds per state, the month to date, the target.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = get_as(&http, &format!("{url}/metrics"), OPERATOR).await;
        let got = |name: &str, state: &str| {
            sample(&m, &format!("{name}{{tenant=\"lab-a\",state=\"{state}\"}}"))
        };
        if got("dcwatt_tenant_gpu_delivery_seconds_total", "down") == Some(7.0 * 60.0) {
            assert_eq!(
                got("dcwatt_tenant_gpu_delivery_seconds_total", "unknown"),
                Some(6.0 * 60.0)
            );
            assert_eq!(
                got("dcwatt_tenant_gpu_delivery_seconds_total", "degraded"),
                Some(6.0 * 60.0)
            );
            assert_eq!(
                got("dcwatt_tenant_gpu_delivery_seconds_total", "available"),
                Some(113.0 * 60.0)
            );
            if t0 >= month_start {
                assert_eq!(
                    got("dcwatt_tenant_gpu_delivery_month_seconds", "down"),
                    Some(7.0 * 60.0)
                );
            }
            assert_eq!(
                sample(
                    &m,
                    "dcwatt_tenant_availability_target_ratio{tenant=\"lab-a\"}"
                ),
                Some(0.995)
            );
            assert_eq!(
                sample(
                    &m,
                    "dcwatt_tenant_gpu_delivery_seconds_total{tenant=\"lab-b\",state=\"down\"}"
                ),
                Some(2.0 * 60.0)
            );
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop.send(());

    // `dcwatt-collector report` builds the same statement offline from the
    // database: the same service levels.
    let site = dcwatt_collector::config::Config::from_toml(&config(&db, &key, t0))
        .unwrap()
        .build()
        .unwrap();
    let store = dcwatt_collector::store::Store::open(&db).unwrap();
    let offline = dcwatt_collector::statement::statement(&store, &site, "lab-a", &month, now_ms())
        .unwrap()
        .unwrap();
    let offline = serde_json::to_value(&offline).unwrap();
    assert_eq!(offline["service"], a["service"]);
}
