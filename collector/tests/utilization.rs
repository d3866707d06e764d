//! GPU utilization aggregates, idle energy, XID counts, modules and unknown
//! entities, through the collector's real HTTP API on 127.0.0.1:0: batches in
//! the wire format go in, `/metrics` and `/v1/summary` come out, and every
//! figure is checked against what the readings add up to by hand.

use dcwatt_collector::config::token_hash;
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};
use serde_json::Value;

mod common;
use common::sample;

const A: &str = "token-a";
const B: &str = "token-b";

fn config(extra: &str) -> String {
    format!(
        r#"
        listen = "127.0.0.1:0"
        [[agents]]
        id = "n1"
        token_sha256 = "{}"
        zone = "hall-1"
        [[agents]]
        id = "n2"
        token_sha256 = "{}"
        zone = "hall-2"
        {extra}
        "#,
        hex::encode(token_hash(A)),
        hex::encode(token_hash(B))
    )
}

fn gpu(uuid: &str, ts_ms: i64, quantity: Quantity, value: f64) -> Reading {
    Reading {
        ts_ms,
        entity: Entity::Gpu(uuid.into()),
        quantity,
        value,
    }
}

fn batch(agent: &str, seq: u64, readings: Vec<Reading>) -> Batch {
    Batch {
        version: VERSION,
        agent: agent.into(),
        seq,
        first_seq: None,
        node: agent.into(),
        created_ms: now_ms(),
        gpus: vec![],
        readings,
    }
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = http
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn utilization_idle_energy_xid_and_modules() {
    let (url, _stop) = common::start(&config("")).await;
    let http = reqwest::Client::new();
    // 200 one-second ticks ending now, 20 a batch. n1's GPU-A draws 1 kW
    // (its counter +1000 J a tick): SM activity 1 % for ticks 1..=100, 60 %
    // after; NVML utilization 100 % throughout (a kernel always runs). Its
    // XID counter: 0, 3 from tick 150, then 1 from tick 180 (the agent
    // restarted and counts from 0 again). Its module draws 1.4 kW. n2's
    // GPU-B has no GPM (no idle energy, no SM activity), utilization 80 %.
    let t0 = now_ms() - 200_000;
    for chunk in 0..10u64 {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in chunk * 20..chunk * 20 + 20 {
            let ts = t0 + i as i64 * 1000;
            let k = i as f64;
            let sm = if i <= 100 { 0.01 } else { 0.6 };
            let xid = match i {
                0..150 => 0.0,
                150..180 => 3.0,
                _ => 1.0,
            };
            a.extend([
                gpu("GPU-A", ts, Quantity::PowerWatts, 1000.0),
                gpu("GPU-A", ts, Quantity::UtilizationRatio, 1.0),
                gpu("GPU-A", ts, Quantity::SmActiveRatio, sm),
                gpu("GPU-A", ts, Quantity::TensorActiveRatio, sm / 2.0),
                gpu("GPU-A", ts, Quantity::XidErrorsTotal, xid),
                gpu("GPU-A", ts, Quantity::EnergyJoules, 1.0e6 + k * 1000.0),
                Reading {
                    ts_ms: ts,
                    entity: Entity::Module("sn-1".into()),
                    quantity: Quantity::PowerWatts,
                    value: 1400.0,
                },
                Reading {
                    ts_ms: ts,
                    entity: Entity::Module("sn-1".into()),
                    quantity: Quantity::IntegratedEnergyJoules,
                    value: k * 1400.0,
                },
            ]);
            b.extend([
                gpu("GPU-B", ts, Quantity::PowerWatts, 500.0),
                gpu("GPU-B", ts, Quantity::UtilizationRatio, 0.8),
                gpu("GPU-B", ts, Quantity::EnergyJoules, 2.0e6 + k * 500.0),
            ]);
        }
        let body = serde_json::to_vec(&batch("n1", chunk + 1, a)).unwrap();
        assert_eq!(post(&http, &url, A, body).await.0, 200);
        let body = serde_json::to_vec(&batch("n2", chunk + 1, b)).unwrap();
        assert_eq!(post(&http, &url, B, body).await.0, 200);
    }

    let metrics = get(&http, &format!("{url}/metrics")).await;
    let m =
        |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("{series}\n{metrics}"));
    // Idle: exactly the 100 one-second stretches at 1 kW that end at 1 %.
    assert_eq!(
        m(r#"dcwatt_zone_gpus_idle_energy_joules_total{zone="hall-1"}"#),
        100_000.0
    );
    assert_eq!(
        m(r#"dcwatt_zone_gpus_idle_energy_joules_total{zone="hall-2"}"#),
        0.0
    );
    assert_eq!(m("dcwatt_gpus_idle_energy_joules_total"), 100_000.0);
    // 1 h means weighted by GPU time: ticks 1..=199 each stand for 1 s.
    let sm_hour = (100.0 * 0.01 + 99.0 * 0.6) / 199.0;
    let near = |got: f64, want: f64| assert!((got - want).abs() < 1e-12, "{got} != {want}");
    near(
        m(r#"dcwatt_zone_gpus_utilization_ratio{zone="hall-1",kind="sm_active",window="1h"}"#),
        sm_hour,
    );
    near(
        m(r#"dcwatt_gpus_utilization_ratio{kind="sm_active",window="1h"}"#),
        sm_hour,
    );
    near(
        m(r#"dcwatt_gpus_utilization_ratio{kind="tensor_active",window="1h"}"#),
        sm_hour / 2.0,
    );
    // Utilization: both GPUs, the same GPU time each.
    near(
        m(r#"dcwatt_gpus_utilization_ratio{kind="utilization",window="1h"}"#),
        0.9,
    );
    near(
        m(r#"dcwatt_gpus_utilization_ratio{kind="utilization",window="live"}"#),
        0.9,
    );
    near(
        m(r#"dcwatt_zone_gpus_utilization_ratio{zone="hall-2",kind="utilization",window="live"}"#),
        0.8,
    );
    near(
        m(r#"dcwatt_gpus_utilization_ratio{kind="sm_active",window="live"}"#),
        0.6,
    );
    // No GPU reports DRAM activity: absent, not 0.
    assert!(!metrics.contains(r#"kind="dram_active""#), "{metrics}");
    assert!(sample(
        &metrics,
        r#"dcwatt_zone_gpus_utilization_ratio{zone="hall-2",kind="sm_active",window="1h"}"#
    )
    .is_none());
    // XID: 3, then a reset to 1 counted whole.
    assert_eq!(
        m(r#"dcwatt_zone_gpus_xid_errors_total{zone="hall-1"}"#),
        4.0
    );
    assert_eq!(
        m(r#"dcwatt_zone_gpus_xid_errors_total{zone="hall-2"}"#),
        0.0
    );
    assert_eq!(m("dcwatt_gpus_xid_errors_total"), 4.0);
    // The module: 199 s at 1.4 kW after its baseline.
    assert_eq!(m("dcwatt_modules_energy_joules_total"), 199.0 * 1400.0);
    assert_eq!(m("dcwatt_modules_power_watts"), 1400.0);

    // The summary says the same.
    let summary: Value =
        serde_json::from_str(&get(&http, &format!("{url}/v1/summary")).await).unwrap();
    let u = &summary["gpu_utilization"];
    assert_eq!(u["idle_sm_active_below"], 0.05);
    assert_eq!(u["site"]["idle_energy_joules"], 100_000.0);
    assert_eq!(u["zones"]["hall-1"]["xid_errors"], 4.0);
    near(
        u["site"]["ratios"]["sm_active"]["1h"].as_f64().unwrap(),
        sm_hour,
    );
    near(
        u["zones"]["hall-2"]["ratios"]["utilization"]["live"]
            .as_f64()
            .unwrap(),
        0.8,
    );

    // Out of range: refused whole, naming the reading, nothing changes.
    let ts = now_ms();
    let bad = batch(
        "n1",
        11,
        vec![
            gpu("GPU-A", ts, Quantity::EnergyJoules, 9.0e6),
            gpu("GPU-A", ts, Quantity::SmActiveRatio, 1.5),
        ],
    );
    let (status, body) = post(&http, &url, A, serde_json::to_vec(&bad).unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("readings[1].value"),
        "{body}"
    );
    let after = get(&http, &format!("{url}/metrics")).await;
    assert_eq!(
        sample(&after, "dcwatt_gpus_energy_joules_total"),
        sample(&metrics, "dcwatt_gpus_energy_joules_total")
    );
    assert_eq!(
        sample(&after, "dcwatt_gpus_idle_energy_joules_total"),
        Some(100_000.0)
    );
}

#[tokio::test]
async fn unknown_entity_is_ignored_and_counted_today_format_still_works() {
    let (url, _stop) = common::start(&config("")).await;
    let http = reqwest::Client::new();
    let ts = now_ms();
    // A batch of a later agent: an entity kind this collector does not know
    // (its id an object, even) beside a GPU reading of today's format.
    let body = format!(
        r#"{{"version":{VERSION},"agent":"n1","seq":1,"node":"n1","created_ms":{ts},"readings":[
        {{"ts_ms":{ts},"entity":{{"rack":{{"row":3}}}},"quantity":"power_watts","value":5000}},
        {{"ts_ms":{ts},"entity":{{"gpu":"GPU-A"}},"quantity":"power_watts","value":700}}]}}"#
    );
    let (status, ack) = post(&http, &url, A, body.into_bytes()).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["accepted"], 1, "{ack}");
    // Today's format, as an older agent sends it.
    let old = batch(
        "n1",
        2,
        vec![gpu("GPU-A", ts + 1, Quantity::PowerWatts, 800.0)],
    );
    let (status, ack) = post(&http, &url, A, serde_json::to_vec(&old).unwrap()).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["accepted"], 1, "{ack}");
    let metrics = get(&http, &format!("{url}/metrics")).await;
    assert_eq!(
        sample(
            &metrics,
            r#"dcwatt_ingest_ignored_readings_total{reason="unknown_entity"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, "dcwatt_gpus_power_watts"), Some(800.0));
    // Invented module ids cannot grow the collector's memory: past 16 per
    // node they are ignored and counted.
    let many = batch(
        "n1",
        3,
        (0..20)
            .map(|i| Reading {
                ts_ms: ts + 2,
                entity: Entity::Module(format!("sn-{i}")),
                quantity: Quantity::PowerWatts,
                value: 100.0,
            })
            .collect(),
    );
    let (status, ack) = post(&http, &url, A, serde_json::to_vec(&many).unwrap()).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["accepted"], 16, "{ack}");
    let metrics = get(&http, &format!("{url}/metrics")).await;
    assert_eq!(
        sample(
            &metrics,
            r#"dcwatt_ingest_ignored_readings_total{reason="too_many_modules"}"#
        ),
        Some(4.0)
    );
    assert_eq!(sample(&metrics, "dcwatt_modules_power_watts"), Some(1600.0));
    // A module id outside the id alphabet is refused like any entity id.
    let bad = batch(
        "n1",
        4,
        vec![Reading {
            ts_ms: ts + 2,
            entity: Entity::Module("sn/1".into()),
            quantity: Quantity::PowerWatts,
            value: 1.0,
        }],
    );
    let (status, body) = post(&http, &url, A, serde_json::to_vec(&bad).unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("readings[0].entity"),
        "{body}"
    );
}
